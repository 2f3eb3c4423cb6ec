//! The `query_response` fuzz target: [`snowtrail_fuzz::query_response`] says what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snowtrail_fuzz::query_response(data));
