//! See imprint::fuzzing::cache_index.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imprint::fuzzing::cache_index(data));
