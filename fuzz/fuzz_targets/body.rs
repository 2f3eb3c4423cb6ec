//! The `body` fuzz target: [`snowtrail_fuzz::body`] says what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snowtrail_fuzz::body(data));
