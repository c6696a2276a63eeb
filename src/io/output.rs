//! Emitting an image safely: a 0600 temp file beside the final name, SHA-256
//! of what is written, fsync, atomic rename, and the `.sha256` sidecar.
//!
//! Temp files are registered so that a SIGINT/SIGTERM handler can remove
//! them; a dropped, uncommitted [`TempOutput`] removes its file too. So no
//! half-written image ever appears under the final name.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::io::sha256::Sha256;

static LIVE_TEMPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// What every temp and scratch name has: `.NAME.imprint-PID-RANDOM.KIND`.
const TEMP_MARK: &str = ".imprint-";

/// Registers a temp file for removal if the process is interrupted.
pub fn register(path: &Path) {
    crate::sync::lock(&LIVE_TEMPS).push(path.to_path_buf());
}

/// Forgets a temp file that was renamed or removed.
pub fn unregister(path: &Path) {
    crate::sync::lock(&LIVE_TEMPS).retain(|p| p != path);
}

/// Removes every live temp file. Called from the signal handler thread.
pub fn remove_live_temps() {
    let paths = std::mem::take(&mut *crate::sync::lock(&LIVE_TEMPS));
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// Installs handlers so SIGINT, SIGTERM, SIGHUP and SIGQUIT remove temp
/// files and exit with 128 + the signal number (130 for Ctrl-C, 143 for
/// SIGTERM). SIGQUIT would otherwise dump core with the password inside.
pub fn install_signal_cleanup() -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            remove_live_temps();
            eprintln!("imprint: interrupted by signal {sig}; removed unfinished output");
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}

/// Creates a file with mode 0600 whatever the umask (the umask can only
/// remove bits, and we fchmod after creating anyway).
pub fn create_private(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// The result of a committed output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// An output image under construction.
pub struct TempOutput {
    temp_path: PathBuf,
    final_path: PathBuf,
    file: File,
    hasher: Sha256,
    written: u64,
    committed: bool,
    /// Digest and size once sealed, so commit does not hash again.
    sealed: Option<(String, u64)>,
    /// Files that describe the image (a block map), written after it.
    sidecars: Vec<(PathBuf, Vec<u8>)>,
}

impl TempOutput {
    /// Creates `.<name>.imprint-<pid>-<n>.tmp` beside `final_path`.
    pub fn create(final_path: &Path) -> io::Result<TempOutput> {
        let dir = final_path.parent().filter(|p| !p.as_os_str().is_empty());
        let name = final_path.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "output has no file name")
        })?;
        let (temp_path, file) = create_registered(
            dir.unwrap_or(Path::new(".")),
            &name.to_string_lossy(),
            "tmp",
        )?;
        Ok(TempOutput {
            temp_path,
            final_path: final_path.to_path_buf(),
            file,
            hasher: Sha256::new(),
            written: 0,
            committed: false,
            sealed: None,
            sidecars: Vec::new(),
        })
    }

    #[cfg(test)]
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// The directory the output is written in: where scratch files its
    /// writer needs belong (same filesystem, same privacy).
    pub fn dir(&self) -> &Path {
        self.temp_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    /// Appends `len` zero bytes as a hole: hashed, never written.
    pub fn skip_zeros(&mut self, len: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            self.hasher.update(&ZEROS[..n]);
            left -= n as u64;
        }
        self.written += len;
        // Extending the file makes the hole; the next write lands after it.
        self.file.set_len(self.written)?;
        self.file.seek(SeekFrom::Start(self.written))?;
        Ok(())
    }

    /// Starts the output with the first `len` bytes of `src`, copied in the
    /// kernel; `hashed` is the SHA-256 state after those bytes (see
    /// [`hash_range`]), so they are not read again.
    pub fn splice_prefix(&mut self, src: &File, len: u64, hashed: Sha256) -> io::Result<()> {
        assert_eq!(self.written, 0, "splice_prefix must come first");
        self.splice(src, 0, len, hashed)
    }

    /// [`TempOutput::splice_prefix`] in two steps, for a prefix copied on
    /// another thread while this one works on what follows (see
    /// `io::prefix`): that thread copies into this handle, which writes
    /// the output's start at fixed offsets and never moves the file
    /// position; once it is done, [`TempOutput::adopt_prefix`].
    pub fn prefix_copier(&self) -> io::Result<PrefixCopier> {
        assert_eq!(self.written, 0, "the prefix must come first");
        Ok(PrefixCopier(self.file.try_clone()?))
    }

    /// Counts the `len` bytes a [`PrefixCopier`] copied as the output's
    /// start; `hashed` is the SHA-256 state after them.
    pub fn adopt_prefix(&mut self, len: u64, hashed: Sha256) -> io::Result<()> {
        assert_eq!(self.written, 0, "the prefix must come first");
        self.written = len;
        self.file.seek(SeekFrom::Start(len))?;
        self.hasher = hashed;
        Ok(())
    }

    /// Starts the output with `head` and then the bytes of `src` from
    /// `head.len()` to `len`: `src`'s own first bytes are copied and then
    /// overwritten, so that the rest lies at the offsets it has in `src`
    /// and the kernel can share it (a reflink on XFS or btrfs) instead of
    /// copying. `hashed` is the SHA-256 state after `head` and those bytes.
    pub fn splice_prefix_with_head(
        &mut self,
        src: &File,
        len: u64,
        head: &[u8],
        hashed: Sha256,
    ) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        assert!(head.len() as u64 <= len, "the head is part of the prefix");
        self.splice_prefix(src, len, hashed)?;
        self.file.write_all_at(head, 0)
    }

    /// Appends `len` bytes of `src` from offset `from`, copied in the
    /// kernel; `hashed` is the SHA-256 state after everything written so
    /// far and those bytes.
    pub fn splice(&mut self, src: &File, from: u64, len: u64, hashed: Sha256) -> io::Result<()> {
        copy_range(src, from, &self.file, self.written, len)?;
        self.written += len;
        self.file.seek(SeekFrom::Start(self.written))?;
        self.hasher = hashed;
        Ok(())
    }

    /// Flushes and fsyncs the temp file and returns its digest and size,
    /// without renaming it yet.
    pub fn seal(&mut self) -> io::Result<(String, u64)> {
        if let Some(done) = &self.sealed {
            return Ok(done.clone());
        }
        self.file.flush()?;
        self.file.sync_all()?;
        // Every byte went through `Write`, `splice` or `skip_zeros`, which
        // keep the digest: nothing is read back.
        let done = (hex::encode(self.hasher.clone().finalize()), self.written);
        self.sealed = Some(done.clone());
        Ok(done)
    }

    /// A file to write beside the image when it is committed (a block
    /// map): it describes the image, so it must not appear before it.
    pub fn add_sidecar(&mut self, path: PathBuf, contents: Vec<u8>) {
        self.sidecars.push((path, contents));
    }

    /// Renames the temp file to its final name and writes the sidecars.
    /// Call only after the admin API accepted the password.
    pub fn commit(mut self) -> io::Result<Emitted> {
        let final_path = self.final_path.clone();
        let sidecars = std::mem::take(&mut self.sidecars);
        let emitted = self.commit_without_sidecar()?;
        for (path, contents) in sidecars {
            write_atomic(&path, &contents)?;
        }
        write_sidecar(&final_path, &emitted.sha256)?;
        Ok(emitted)
    }

    /// Renames the temp file to its final name (for files that need no
    /// sidecar, such as a batch manifest).
    pub fn commit_without_sidecar(mut self) -> io::Result<Emitted> {
        let (sha256, size) = self.seal()?;
        std::fs::rename(&self.temp_path, &self.final_path)?;
        unregister(&self.temp_path);
        self.committed = true;
        sync_parent(&self.final_path);
        Ok(Emitted {
            path: self.final_path.clone(),
            sha256,
            size,
        })
    }
}

impl Write for TempOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp_path);
            unregister(&self.temp_path);
        }
    }
}

/// Creates `.<name>.imprint-<pid>-<random>.<suffix>` in `dir`, 0600,
/// registered for removal on interrupt. The random part comes from the OS
/// generator and the file is created with O_EXCL|O_NOFOLLOW, so a name
/// planted in advance (a symlink, another user's file) can neither be
/// guessed nor followed.
fn create_registered(dir: &Path, name: &str, suffix: &str) -> io::Result<(PathBuf, File)> {
    let mut random = [0u8; 8];
    getrandom::getrandom(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
    let path = dir.join(format!(
        ".{name}{TEMP_MARK}{}-{}.{suffix}",
        std::process::id(),
        hex::encode(random)
    ));
    register(&path);
    match create_private(&path) {
        Ok(file) => Ok((path, file)),
        Err(e) => {
            unregister(&path);
            Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        }
    }
}

/// Removes temp and scratch files that earlier imprint runs left in `dir`
/// when they were killed (SIGKILL leaves no chance to clean up): files of
/// ours by name, owned by this user, whose process is gone. Returns what
/// was removed.
pub fn remove_stale_temps(dir: &Path) -> io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let uid = rustix::process::geteuid().as_raw();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = stale_candidate_pid(&name.to_string_lossy()) else {
            continue;
        };
        let meta = entry.path().symlink_metadata()?;
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if meta.file_type().is_file() && meta.uid() == uid && !alive {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// The pid in a name of the form `.NAME.imprint-PID-HEX16.(tmp|scratch)`.
fn stale_candidate_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(TEMP_MARK)?;
    let (stem, kind) = tail.rsplit_once('.')?;
    if kind != "tmp" && kind != "scratch" {
        return None;
    }
    let (pid, random) = stem.split_once('-')?;
    let hex = random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then(|| pid.parse().ok()).flatten()
}

/// A private scratch file (0600, removed when dropped or on interrupt),
/// e.g. a compressed raw image decompressed so libext2fs can edit it, or
/// a sparse image expanded for e2fsck.
pub struct Scratch {
    path: PathBuf,
    file: File,
}

impl Scratch {
    /// Creates a scratch file in `dir` named after `name`.
    pub fn create_in(dir: &Path, name: &str) -> io::Result<Scratch> {
        let (path, file) = create_registered(dir, name, "scratch")?;
        Ok(Scratch { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file with its name removed: what only this process reads
    /// through its descriptor (or hands to a child) leaves nothing behind
    /// even after SIGKILL.
    pub fn into_unlinked(self) -> io::Result<File> {
        std::fs::remove_file(&self.path)?;
        unregister(&self.path);
        let file = self.file.try_clone()?;
        drop(self);
        Ok(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        unregister(&self.path);
    }
}

/// Copies an output's prefix from another thread (see
/// [`TempOutput::prefix_copier`]).
pub struct PrefixCopier(File);

impl PrefixCopier {
    /// Copies the first `len` bytes of `src` to the output's start, then
    /// writes them to disk: the output's final fsync would otherwise wait
    /// for all of them at the end of the run.
    pub fn copy(&self, src: &File, len: u64) -> io::Result<()> {
        copy_range(src, 0, &self.0, 0, len)?;
        self.0.sync_data()
    }
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Copies `len` bytes from `input` at `from` to `out` at `to` in the kernel
/// (copy_file_range, which may share extents instead of copying), or
/// through a buffer where the kernel cannot.
fn copy_range(input: &File, from: u64, out: &File, to: u64, len: u64) -> io::Result<()> {
    use rustix::io::Errno;
    let mut done = 0u64;
    while done < len {
        let mut off_in = from + done;
        let mut off_out = to + done;
        let chunk = (len - done).min(1 << 30) as usize;
        let copied =
            rustix::fs::copy_file_range(input, Some(&mut off_in), out, Some(&mut off_out), chunk);
        let n = match copied {
            Ok(n) => n,
            // A signal whose handler does not ask for restarted calls
            // may end the call before it copied anything: go on.
            Err(Errno::INTR) => continue,
            Err(Errno::NOSYS | Errno::XDEV | Errno::INVAL | Errno::OPNOTSUPP) => {
                return copy_buffered(input, from + done, out, to + done, len - done)
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the input shrank while it was copied",
            ));
        }
        done += n as u64;
        crate::io::progress::advance(n as u64);
    }
    Ok(())
}

fn copy_buffered(input: &File, from: u64, out: &File, to: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        input.read_exact_at(&mut buf[..n], from + done)?;
        out.write_all_at(&buf[..n], to + done)?;
        done += n as u64;
        crate::io::progress::advance(n as u64);
    }
    Ok(())
}

/// `hasher` continued over `len` bytes of `file` from `from` (e.g. the SHA-256
/// state of a kept prefix, cloned by every output that starts with it).
pub fn hash_range(mut hasher: Sha256, file: &File, from: u64, len: u64) -> io::Result<Sha256> {
    let mut reader = file.try_clone()?;
    reader.seek(SeekFrom::Start(from))?;
    let copied = hash_reader(&mut reader.take(len), &mut hasher)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the input shrank",
        ));
    }
    Ok(hasher)
}

/// Writes `NAME.sha1sum` beside `image`: the SHA-1 digest alone, the form
/// NVIDIA's kernel-flash tools write (l4t_create_images_for_kernel_flash.sh)
/// and compare (l4t_flash_from_kernel.sh).
pub fn write_sha1sum(image: &Path) -> io::Result<PathBuf> {
    use sha1::Digest as _;
    let mut hasher = sha1::Sha1::new();
    let mut file = File::open(image)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut name = image.as_os_str().to_owned();
    name.push(".sha1sum");
    let path = PathBuf::from(name);
    write_atomic(
        &path,
        format!("{}\n", hex::encode(hasher.finalize())).as_bytes(),
    )?;
    Ok(path)
}

/// Feeds everything `reader` yields into `hasher`; returns the byte count.
pub fn hash_reader(reader: &mut impl Read, hasher: &mut Sha256) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        crate::io::progress::advance(n as u64);
    }
}

/// SHA-256 of a whole file, as lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    hash_reader(&mut File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// `IMAGE.sha256` beside `IMAGE`.
pub fn sidecar_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Writes `<hex>  <file name>\n`, which `sha256sum -c` checks when run in
/// the image's directory.
pub fn write_sidecar(image: &Path, sha256: &str) -> io::Result<()> {
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    write_atomic(
        &sidecar_path(image),
        format!("{sha256}  {name}\n").as_bytes(),
    )
}

/// Writes a small file whole or not at all: a 0600 temp file beside
/// `path`, fsynced, then renamed over it. Every file imprint writes that
/// is not an image (sidecars, checksums, manifests) goes through here.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temp = TempOutput::create(path)?;
    temp.write_all(bytes)?;
    temp.commit_without_sidecar()?;
    Ok(())
}

/// Reads a sidecar and returns the digest it records for `image`, if it
/// names that file.
pub fn read_sidecar(image: &Path) -> io::Result<Option<String>> {
    let text = match std::fs::read_to_string(sidecar_path(image)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    Ok(text.lines().find_map(|line| {
        let (digest, file) = line.split_once(' ')?;
        let file = file.trim_start_matches([' ', '*']);
        (file == name).then(|| digest.to_ascii_lowercase())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_of_dead_runs_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let live = TempOutput::create(&d.join("mine.img")).unwrap();
        // pid 2^22+1 is above Linux's pid_max: never alive.
        let dead = ".AZ-1-rootfs.tar.imprint-4194305-0123456789abcdef.tmp";
        let keep = [
            ".AZ-1-rootfs.tar.imprint-4194305-0123456789abcdeX.tmp",
            ".notours.tmp",
            "AZ-1-rootfs.tar",
        ];
        for name in std::iter::once(dead).chain(keep) {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        let removed = remove_stale_temps(d).unwrap();
        assert_eq!(removed, vec![d.join(dead)]);
        assert!(live.temp_path().exists(), "a live run's temp file stays");
        for name in keep {
            assert!(d.join(name).exists(), "{name}");
        }
    }

    #[test]
    fn temp_names_cannot_be_planted() {
        let dir = tempfile::tempdir().unwrap();
        let a = TempOutput::create(&dir.path().join("o.img")).unwrap();
        let b = TempOutput::create(&dir.path().join("o.img")).unwrap();
        assert_ne!(a.temp_path(), b.temp_path());
        // A symlink at a temp name is never followed: creation fails.
        let planted = dir.path().join("planted");
        std::os::unix::fs::symlink("/etc/passwd", &planted).unwrap();
        let err = create_private(&planted).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn temp_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.img");
        let mut t = TempOutput::create(&target).unwrap();
        t.write_all(b"abc").unwrap();
        let temp = t.temp_path().to_path_buf();
        assert!(temp.exists());
        drop(t);
        assert!(!temp.exists());
        assert!(!target.exists());

        let mut t = TempOutput::create(&target).unwrap();
        t.write_all(b"abc").unwrap();
        let e = t.commit().unwrap();
        assert_eq!(
            e.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            read_sidecar(&target).unwrap().as_deref(),
            Some(&e.sha256[..])
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
