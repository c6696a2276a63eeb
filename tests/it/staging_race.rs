//! A staging tree is often writable by a build user while imprint runs as
//! root. Here a thread plays that user: it keeps swapping a directory that
//! imprint walks through (`etc/azaion`, then `etc`) with a symlink to a
//! directory outside the tree, while the real binary provisions the tree
//! hundreds of times. Nothing outside the tree may ever change, and every
//! run either writes device.conf inside the tree or fails with a clear
//! error.

use crate::common;

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;

/// A swap has to land in a window of microseconds. On a busy two-CPU
/// machine a path-based chmod put back into imprint was caught after 0 to
/// about 300 runs, so the slow tier's 600 leave a margin; the fast tier
/// runs a tenth of that on every `cargo test`.
const LONG: (u32, Duration) = (600, Duration::from_secs(60));
const SHORT: (u32, Duration) = (60, Duration::from_secs(6));

/// What a failed run may say: each names the component that was in the
/// way or was swapped under imprint (a symlinked etc also hides the image's
/// passwd, so the owner's name is unknown).
const CLEAR_ERRORS: [&str; 7] = [
    "is a symbolic link in the staging tree, not a directory",
    // A link seen when resolving: followed inside the tree, where the
    // host's path it names is not.
    "lies behind a symlink in the image: ",
    "is a symbolic link, not a directory",
    "is to be created inside /etc, which neither the image nor the overlay provides",
    "was replaced while imprint was using it",
    "user \"azaion\" is not in the image's /etc/passwd (the image has no /etc/passwd)",
    "group \"video\" is not in the image's /etc/group (the image has no /etc/group)",
];

/// Swaps two names in one directory with renameat2(RENAME_EXCHANGE): the
/// swap is atomic, so one of them is always the real directory and the
/// other the symlink. From a held directory, so each try is quick.
fn exchange(dir: &fs::File, a: &CStr, b: &CStr) -> io::Result<()> {
    let fd = dir.as_raw_fd();
    // SAFETY: both are valid C strings and `fd` is open for the call.
    let ret = unsafe { libc::renameat2(fd, a.as_ptr(), fd, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The racing thread: swaps `a` and `b` as fast as it can (when `a` is
/// absent, right after imprint creates it), pausing a varying while after
/// each swap so imprint meets every phase.
struct Racer {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    parked: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Racer {
    /// Swaps the names `a` and `b` inside `dir`.
    fn start(dir: &Path, a: &str, b: &str) -> Racer {
        let dir = fs::File::open(dir).unwrap();
        let (a, b) = (CString::new(a).unwrap(), CString::new(b).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(true));
        let parked = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, pause, parked, swaps) =
                (stop.clone(), pause.clone(), parked.clone(), swaps.clone());
            thread::spawn(move || {
                pin_to_cpu(0);
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    if pause.load(Ordering::Acquire) {
                        parked.store(true, Ordering::Release);
                        while pause.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
                            thread::yield_now();
                        }
                        parked.store(false, Ordering::Release);
                        continue;
                    }
                    if exchange(&dir, &a, &b).is_ok() {
                        n += 1;
                        swaps.fetch_add(1, Ordering::Relaxed);
                        for _ in 0..(n % 32) * 200 {
                            std::hint::spin_loop();
                        }
                    }
                }
            })
        };
        let racer = Racer {
            stop,
            pause,
            parked,
            swaps,
            thread: Some(thread),
        };
        racer.hold();
        racer
    }

    /// Stops the swapping until [`Racer::go`].
    fn hold(&self) {
        self.pause.store(true, Ordering::Release);
        while !self.parked.load(Ordering::Acquire) {
            thread::yield_now();
        }
    }

    fn go(&self) {
        self.pause.store(false, Ordering::Release);
        while self.parked.load(Ordering::Acquire) {
            thread::yield_now();
        }
    }
}

/// Keeps the calling thread (and the processes it starts) on the `nth`
/// CPU it may use, so the racer and imprint run side by side instead of
/// taking turns on one. With a single CPU it changes nothing.
fn pin_to_cpu(nth: usize) {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: the sets are plain data, read and filled by the kernel and
    // the CPU_* helpers within their size.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            return;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &allowed))
            .collect();
        if cpus.len() < 2 {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpus[nth % cpus.len()], &mut set);
        libc::sched_setaffinity(0, size, &set);
    }
}

impl Drop for Racer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// A staging tree and, beside it, the host directory the symlink points
/// to: root-owned 0700 (a chmod through the symlink would show), holding a
/// root-owned 0600 canary, a passwd and group that would give `azaion`
/// other ids if imprint read them, and a 0700 `azaion` directory (where a
/// symlinked etc would lead imprint).
struct Scene {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    host: PathBuf,
    canary: PathBuf,
}

fn scene() -> Scene {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let root = make_rootfs(&dir, "staging");
    let host = dir.join("host");
    fs::create_dir(&host).unwrap();
    let canary = host.join("canary");
    fs::write(&canary, "root's secret\n").unwrap();
    fs::write(
        host.join("passwd"),
        "root:x:0:0:root:/root:/bin/bash\nazaion:x:4242:4242::/:/bin/sh\n",
    )
    .unwrap();
    fs::write(host.join("group"), "root:x:0:\nvideo:x:4243:\n").unwrap();
    fs::create_dir(host.join("azaion")).unwrap();
    sh(&format!(
        "chown -R 0:0 {h} && chmod 0700 {h} {h}/azaion && chmod 0644 {h}/passwd {h}/group && chmod 0600 {c}",
        h = host.display(),
        c = canary.display()
    ));
    Scene {
        _tmp: tmp,
        dir,
        root,
        host,
        canary,
    }
}

/// Everything about the host directory that a write through a symlink
/// could change: its own mode, owner and mtime, and every entry in it.
fn snapshot(host: &Path) -> (u32, u32, u32, i64, Tree) {
    let m = fs::symlink_metadata(host).unwrap();
    (m.mode(), m.uid(), m.gid(), m.mtime(), read_tree(host))
}

/// A password of its own for each run, so its device.conf is told apart
/// from an earlier run's.
fn password(run: u32) -> String {
    format!("{:032x}", 0x5f0c_2a9e_8b7d_6c4e_u128 + u128::from(run))
}

fn provision(s: &Scene, pw: &str) -> Output {
    let pw_file = write_password(&s.dir, pw);
    run(bin()
        .args([
            "provision",
            "--offline",
            "--password-file",
            pw_file.to_str().unwrap(),
            "--serial",
            SERIAL,
            "--owner",
            "azaion:video",
            "--rootfs-dir",
        ])
        .arg(&s.root))
}

/// Checks one run: the host untouched, no temp file left in the tree, and
/// this run's device.conf written once at one of `allowed` (with its owner
/// and mode) if the run succeeded, nowhere if it failed. Returns whether it
/// succeeded.
fn check_run(
    s: &Scene,
    run: u32,
    o: &Output,
    pw: &str,
    host_before: &(u32, u32, u32, i64, Tree),
    allowed: &[&str],
) -> bool {
    let err = stderr(o);
    assert_eq!(
        &snapshot(&s.host),
        host_before,
        "run {run}: the host directory changed\nstderr: {err}"
    );
    let canary = fs::symlink_metadata(&s.canary).unwrap();
    assert_eq!(
        (canary.mode() & 0o7777, canary.uid(), canary.gid()),
        (0o600, 0, 0),
        "run {run}: the canary changed"
    );
    let tree = read_tree(&s.root);
    let temps: Vec<_> = tree.keys().filter(|p| p.contains(".imprint-")).collect();
    assert!(temps.is_empty(), "run {run}: temp files left: {temps:?}");
    let conf = conf_text(EMAIL, pw);
    let written: Vec<_> = tree
        .iter()
        .filter(|(_, (kind, .., data))| *kind == 'f' && *data == conf.as_bytes())
        .collect();
    if o.status.success() {
        assert_eq!(
            written.len(),
            1,
            "run {run}: device.conf written {written:?}"
        );
        let (path, (_, mode, uid, gid, ..)) = written[0];
        assert!(
            allowed.contains(&path.as_str()),
            "run {run}: written at {path}"
        );
        assert_eq!((*mode, *uid, *gid), (0o600, 1001, 44), "run {run}: {path}");
        true
    } else {
        assert_eq!(o.status.code(), Some(1), "run {run}: {err}");
        assert!(
            CLEAR_ERRORS.iter().any(|e| err.contains(e)),
            "run {run}: unclear error: {err}"
        );
        assert!(
            written.is_empty(),
            "run {run}: failed but wrote {written:?}"
        );
        false
    }
}

/// Removes whatever is at `path`: a directory tree, a file or a symlink.
fn remove(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).unwrap(),
        Ok(_) => fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

fn root_can_chown() -> bool {
    // SAFETY: geteuid has no preconditions.
    require(
        unsafe { libc::geteuid() } == 0,
        "staging race: giving device.conf its owner needs root",
    )
}

/// Prints how the runs went; the harness shows it with --nocapture.
fn summary(what: &str, runs: u32, ok: u32, swaps: u64, started: Instant) {
    eprintln!(
        "{what}: {runs} runs, {ok} succeeded, {} refused, {swaps} swaps in {:.1?}",
        runs - ok,
        started.elapsed()
    );
}

#[test]
fn swapping_etc_azaion_for_a_symlink_never_escapes_the_tree() {
    swap_etc_azaion(SHORT);
}

#[test]
#[ignore = "slow tier: up to 600 runs or 60 s against the racer"]
fn swapping_etc_azaion_for_a_symlink_never_escapes_the_tree_long() {
    swap_etc_azaion(LONG);
}

fn swap_etc_azaion((max_runs, max_time): (u32, Duration)) {
    if !root_can_chown() {
        return;
    }
    let s = scene();
    let azaion = s.root.join("etc/azaion");
    let decoy = s.root.join("etc/azaion.decoy");
    let racer = Racer::start(&s.root.join("etc"), "azaion", "azaion.decoy");
    pin_to_cpu(1);
    let host_before = snapshot(&s.host);
    let (started, mut runs, mut ok) = (Instant::now(), 0, 0);
    while runs < max_runs && started.elapsed() < max_time {
        // Racer held: etc/azaion absent (imprint creates it, the racer swaps
        // it out right after) or, one run in four, already a directory. The
        // symlink points at the host directory, or at the canary itself
        // (what a chmod through it would hit).
        remove(&azaion);
        remove(&decoy);
        let target = if runs % 2 == 0 { &s.host } else { &s.canary };
        symlink(target, &decoy).unwrap();
        if runs % 4 == 3 {
            fs::create_dir(&azaion).unwrap();
            fs::set_permissions(&azaion, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let pw = password(runs);
        racer.go();
        let o = provision(&s, &pw);
        racer.hold();
        let allowed = ["etc/azaion/device.conf", "etc/azaion.decoy/device.conf"];
        ok += u32::from(check_run(&s, runs, &o, &pw, &host_before, &allowed));
        runs += 1;
    }
    let swaps = racer.swaps.load(Ordering::Relaxed);
    summary("etc/azaion", runs, ok, swaps, started);
    assert!(swaps > 0, "the racer never swapped");
}

#[test]
fn swapping_etc_for_a_symlink_never_escapes_the_tree() {
    swap_etc(SHORT);
}

#[test]
#[ignore = "slow tier: up to 600 runs or 60 s against the racer"]
fn swapping_etc_for_a_symlink_never_escapes_the_tree_long() {
    swap_etc(LONG);
}

fn swap_etc((max_runs, max_time): (u32, Duration)) {
    if !root_can_chown() {
        return;
    }
    let s = scene();
    let etc = s.root.join("etc");
    let decoy = s.root.join("etc.decoy");
    symlink(&s.host, &decoy).unwrap();
    let racer = Racer::start(&s.root, "etc", "etc.decoy");
    pin_to_cpu(1);
    let host_before = snapshot(&s.host);
    let (started, mut runs, mut ok) = (Instant::now(), 0, 0);
    while runs < max_runs && started.elapsed() < max_time {
        // Racer held: the real etc back under its name, etc/azaion absent
        // or, one run in four, left from the run before.
        if fs::symlink_metadata(&etc).unwrap().file_type().is_symlink() {
            fs::rename(&etc, s.dir.join("etc.link")).unwrap();
            fs::rename(&decoy, &etc).unwrap();
            fs::rename(s.dir.join("etc.link"), &decoy).unwrap();
        }
        if runs % 4 != 3 {
            remove(&etc.join("azaion"));
        }
        let pw = password(runs);
        racer.go();
        let o = provision(&s, &pw);
        racer.hold();
        // The real etc is inside the tree under one of the two names.
        let allowed = ["etc/azaion/device.conf", "etc.decoy/azaion/device.conf"];
        ok += u32::from(check_run(&s, runs, &o, &pw, &host_before, &allowed));
        runs += 1;
    }
    let swaps = racer.swaps.load(Ordering::Relaxed);
    summary("etc", runs, ok, swaps, started);
    assert!(swaps > 0, "the racer never swapped");
}
