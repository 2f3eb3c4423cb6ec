//! Endpoint classification: any method, path and query string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowtrail::snowflake::classify;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (method, rest) = text.split_once(' ').unwrap_or(("POST", text));
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let (endpoint, _params) = classify(method, path, query);
    let _ = endpoint.name();
});
