//! The `session` fuzz target: [`snowtrail_fuzz::session`] says what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snowtrail_fuzz::session(data));
