//! Session upkeep parsing: token request and answer (with its rewrite), abort, plain envelopes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowtrail::snowflake::{
    parse_abort_request, parse_renewal_response, parse_simple_response, parse_token_request,
    rewrite_renewal_tokens,
};

fuzz_target!(|data: &[u8]| {
    let _ = parse_token_request(data);
    let _ = parse_abort_request(data);
    let _ = parse_simple_response(data);
    if parse_renewal_response(data).is_ok() {
        if let Ok((body, _)) = rewrite_renewal_tokens(data, "h1", "h2") {
            parse_renewal_response(&body).expect("a rewritten answer parses");
        }
    }
});
