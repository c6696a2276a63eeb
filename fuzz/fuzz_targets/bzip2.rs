//! See imprint::fuzzing::bzip2.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imprint::fuzzing::bzip2(data));
