//! See imprint::fuzzing::ext4_write.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imprint::fuzzing::ext4_write(data));
