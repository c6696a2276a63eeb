//! See imprint::fuzzing::lzma2_chunks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imprint::fuzzing::lzma2_chunks(data));
