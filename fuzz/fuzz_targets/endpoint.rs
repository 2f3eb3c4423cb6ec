//! The `endpoint` fuzz target: [`snowtrail_fuzz::endpoint`] says what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snowtrail_fuzz::endpoint(data));
