//! The `sql_api` fuzz target: [`snowtrail_fuzz::sql_api`] says what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snowtrail_fuzz::sql_api(data));
