//! Login response parsing and token rewriting: a rewritten response still parses, as the same
//! response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowtrail::snowflake::{parse_login_response, rewrite_login_tokens};

fuzz_target!(|data: &[u8]| {
    let parsed = parse_login_response(data);
    if let Ok((body, _upstream)) = rewrite_login_tokens(data, "agent-session", "agent-master") {
        if let Ok(before) = parsed {
            let after = parse_login_response(&body).expect("a rewritten response parses");
            assert_eq!(before, after);
        }
    }
});
