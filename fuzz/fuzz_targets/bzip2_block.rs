//! See imprint::fuzzing::bzip2_block.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imprint::fuzzing::bzip2_block(data));
