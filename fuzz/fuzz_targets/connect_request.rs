//! The `connect_request` fuzz target: [`snowtrail_fuzz::connect_request`] says what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snowtrail_fuzz::connect_request(data));
