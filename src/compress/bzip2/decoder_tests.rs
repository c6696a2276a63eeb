//! imprint's block decoder against the bzip2 tools: every file the
//! compressors write decodes to what `bzip2 -dc` gives, byte for byte, and
//! damage is an error. Also the per-core speed measurement of the decoders
//! (`IMPRINT_BZIP2_SPEED=FILE`, an ignored test).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::inverse::BlockDecoder;
use super::scan::Scanner;
use super::test_data::{parallel, sample_runs};
use crate::require::require_tools;

/// `data` through `cmd` (a shell command reading stdin).
fn pipe(cmd: &str, data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap().unwrap();
    assert!(child.wait().unwrap().success(), "{cmd}");
    out
}

/// Runs of every length 1..=300 of one byte, each between other bytes:
/// the run-length step's counts 0..=251 and its runs of 4 or more cut
/// into several.
fn every_run_length() -> Vec<u8> {
    let mut data = Vec::new();
    for len in 1..=300usize {
        data.extend(std::iter::repeat_n(b'r', len));
        data.push(b'x');
        data.extend(std::iter::repeat_n((len % 256) as u8, len % 9));
    }
    data
}

fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

#[test]
fn decodes_what_the_bzip2_tools_write_as_bzip2_does() {
    require_tools(&["bzip2", "pbzip2", "lbzip2"]);
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("one byte", vec![b'q']),
        ("four equal bytes", vec![b'q'; 4]),
        ("five equal bytes", vec![b'q'; 5]),
        ("every run length", every_run_length()),
        ("noise", noise(1_300_000)),
        ("runs and noise", sample_runs(2_000_000, 5_000)),
        ("zeros", vec![0; 3_000_000]),
        (
            "two symbols",
            (0..700_000u32).map(|i| (i % 3 == 0) as u8).collect(),
        ),
    ];
    for (what, data) in &inputs {
        for cmd in [
            "bzip2 -1 -c",
            "bzip2 -9 -c",
            "bzip2 -4 -c",
            "pbzip2 -1 -p2 -c",
            "lbzip2 -9 -n2 -c",
        ] {
            let stream = pipe(cmd, data);
            let want = pipe("bzip2 -dc", &stream);
            assert!(want == *data, "{what}: bzip2 -dc disagrees with itself");
            let (back, _) = parallel(stream).unwrap_or_else(|e| panic!("{what}, {cmd}: {e}"));
            assert!(back == want, "{what}, {cmd}: other bytes than bzip2 -dc");
        }
    }
}

#[test]
fn a_block_crc_mismatch_is_an_error() {
    require_tools(&["bzip2"]);
    let data = sample_runs(300_000, 50);
    let stream = pipe("bzip2 -1 -c", &data);
    // The first block's CRC sits right after its magic (bytes 10..14).
    let mut bad = stream.clone();
    bad[12] ^= 0x01;
    let err = parallel(bad).unwrap_err();
    assert!(err.to_string().contains("CRC"), "{err}");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

/// Prints the decoders' speed on one core, in MB/s of output:
/// `IMPRINT_BZIP2_SPEED=file.tbz2 cargo test --release --lib decoder_speed -- --ignored --nocapture`.
#[test]
#[ignore = "slow tier: a measurement (IMPRINT_BZIP2_SPEED=FILE, else 16 MB of /usr/bin by lbzip2)"]
fn decoder_speed() {
    // Without a file named, the measurement runs on real binaries made
    // into a .bz2 by lbzip2 here, so the slow tier always runs it.
    let made;
    let path = match std::env::var("IMPRINT_BZIP2_SPEED") {
        Ok(path) => path,
        Err(_) => {
            require_tools(&["lbzip2"]);
            let mut data = Vec::new();
            for entry in std::fs::read_dir("/usr/bin").unwrap().flatten() {
                if data.len() >= 16 << 20 {
                    break;
                }
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    data.extend_from_slice(&bytes);
                }
            }
            made = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(made.path(), pipe("lbzip2 -9 -n2", &data)).unwrap();
            made.path().to_str().unwrap().to_string()
        }
    };
    let mut scanner = Scanner::new(std::fs::File::open(&path).unwrap(), None);
    let mut blocks = Vec::new();
    while let Some(b) = scanner.next_block().unwrap() {
        blocks.push(b.stream);
    }
    let cpu = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let secs = |a: Duration, b: Duration| b - a;
    for round in 0..2 {
        let (t0, w0) = (cpu(), Instant::now());
        let mut own = 0usize;
        let mut d = BlockDecoder::default();
        let mut stages = [Duration::ZERO; 3];
        for b in &blocks {
            d.decode_stream_timed(b, &mut stages, |p| {
                own += p.len();
                true
            })
            .unwrap();
        }
        let own_t = secs(t0, cpu());
        let own_w = w0.elapsed();
        let t1 = cpu();
        let mut lib = 0usize;
        for b in &blocks {
            let mut out = Vec::new();
            ::bzip2::read::BzDecoder::new(&b[..])
                .read_to_end(&mut out)
                .unwrap();
            lib += out.len();
        }
        let lib_t = secs(t1, cpu());
        assert_eq!(own, lib);
        let mb = own as f64 / 1e6;
        println!(
            "round {round}: {} blocks, {mb:.0} MB: own {:.1} MB/s per core (cpu {:.2} s, wall {:.2} s; symbols {:.2} s, inverse BWT {:.2} s, runs+CRC {:.2} s), libbz2 {:.1} MB/s per core (cpu {:.2} s)",
            blocks.len(),
            mb / own_t.as_secs_f64(),
            own_t.as_secs_f64(),
            own_w.as_secs_f64(),
            stages[0].as_secs_f64(),
            stages[1].as_secs_f64(),
            stages[2].as_secs_f64(),
            mb / lib_t.as_secs_f64(),
            lib_t.as_secs_f64(),
        );
    }
}
