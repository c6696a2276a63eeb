//! See imprint::fuzzing::luks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imprint::fuzzing::luks(data));
