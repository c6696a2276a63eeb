//! See imprint::fuzzing::overlay.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imprint::fuzzing::overlay(data));
