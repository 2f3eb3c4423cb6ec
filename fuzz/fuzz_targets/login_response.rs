//! The `login_response` fuzz target: [`snowtrail_fuzz::login_response`] says what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snowtrail_fuzz::login_response(data));
