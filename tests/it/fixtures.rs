//! Base images built once per test binary and copied into each test that
//! uses them, instead of built again by every test.
//!
//! What is worth sharing is what is slow to make: GPT disks, because
//! every `sgdisk` write ends in sync(2), which takes about a second on a
//! busy machine (jetson_sd_card's seven writes took 8.6 s of wall time
//! for 0.05 s of CPU here), and the LUKS containers cryptsetup encrypts.
//! A test gets its own copy (`cp`, which keeps holes where the original
//! has them), so it may change or damage it freely; what the tests prove
//! is unchanged, as each copy is byte for byte what the builder made.
//!
//! The fixtures live in `CARGO_TARGET_TMPDIR/fixtures/<pid>`; a run
//! removes the directories of runs whose process is gone.

use std::any::Any;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

type Built = Arc<OnceLock<Box<dyn Any + Send + Sync>>>;

fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
        fs::create_dir_all(&base).unwrap();
        for entry in fs::read_dir(&base).unwrap().flatten() {
            let name = entry.file_name();
            let alive = name
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let dir = base.join(std::process::id().to_string());
        fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// The directory of fixture `name`, built by `build` (given that empty
/// directory) the first time any test asks for it; later and concurrent
/// callers wait for that build and get what it returned.
pub fn shared<T: Clone + Send + Sync + 'static>(
    name: &str,
    build: impl FnOnce(&Path) -> T,
) -> (PathBuf, T) {
    static BUILT: OnceLock<Mutex<HashMap<String, Built>>> = OnceLock::new();
    let cell = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone();
    let dir = root().join(name);
    let value = cell.get_or_init(|| {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Box::new(build(&dir))
    });
    let value = value
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("fixture {name} asked for with another type"))
        .clone();
    (dir, value)
}

/// Copies `file` of fixture directory `from` to `to` (holes kept).
pub fn copy(from: &Path, file: &str, to: &Path) {
    let _ = fs::remove_file(to);
    let status = Command::new("cp")
        .arg("--sparse=auto")
        .arg(from.join(file))
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "cp {file} to {}", to.display());
}
