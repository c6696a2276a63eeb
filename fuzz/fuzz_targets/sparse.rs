//! See imprint::fuzzing::sparse.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imprint::fuzzing::sparse(data));
