//! See imprint::fuzzing::userdb.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imprint::fuzzing::userdb(data));
