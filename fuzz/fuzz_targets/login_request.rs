//! Login request parsing; the parsed value's Debug never shows the token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowtrail::snowflake::{driver_from_user_agent, parse_login_request};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_login_request(data) {
        let dbg = format!("{req:?}");
        if let Some(token) = req.token_for_validation() {
            // Short tokens can occur in the rest of the Debug text by chance.
            if token.len() >= 12 {
                assert!(!dbg.contains(token));
            }
        }
        let _ = req.driver(None);
    }
    if let Ok(ua) = std::str::from_utf8(data) {
        let _ = driver_from_user_agent(ua);
    }
});
