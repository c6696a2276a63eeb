//! See imprint::fuzzing::tarball.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imprint::fuzzing::tarball(data));
