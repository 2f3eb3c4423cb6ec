//! The `client_hello` fuzz target: [`snowtrail_fuzz::client_hello`] says what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snowtrail_fuzz::client_hello(data));
