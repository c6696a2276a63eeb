//! See imprint::fuzzing::ext4.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imprint::fuzzing::ext4(data));
