//! The `redact` fuzz target: [`snowtrail_fuzz::redact`] says what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snowtrail_fuzz::redact(data));
