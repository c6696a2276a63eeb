//! Replays every seed and every past crash in testdata/fuzz/<target>/
//! through the fuzz harnesses (src/fuzzing.rs), so CI checks them on stable
//! without libFuzzer. New fuzzing runs: fuzz/run.sh.

use std::fs;
use std::path::Path;

#[test]
fn every_corpus_input_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fuzz");
    let mut ran = 0;
    for target in fs::read_dir(&root).unwrap() {
        let target = target.unwrap();
        let name = target.file_name().to_string_lossy().into_owned();
        let harness = imprint::fuzzing::harness(&name)
            .unwrap_or_else(|| panic!("testdata/fuzz/{name} has no harness"));
        for input in fs::read_dir(target.path()).unwrap() {
            let path = input.unwrap().path();
            let data = fs::read(&path).unwrap();
            // Each input also with its tail cut off: truncation is the most
            // common damage in practice.
            harness(&data);
            harness(&data[..data.len() / 2]);
            ran += 1;
        }
    }
    assert!(ran >= 6, "only {ran} corpus inputs");
}
