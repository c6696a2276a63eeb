//! See imprint::fuzzing::device_conf.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imprint::fuzzing::device_conf(data));
