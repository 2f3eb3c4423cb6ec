//! Body decoding: gzip under a limit never yields more than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowtrail::snowflake::{BodyError, decode_body};

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    match decode_body(Some(b"gzip"), data, LIMIT) {
        Ok(body) => assert!(body.len() <= LIMIT),
        Err(BodyError::TooLarge { limit, .. }) => assert_eq!(limit, LIMIT),
        Err(_) => {}
    }
    if let Ok(body) = decode_body(None, data, LIMIT) {
        assert_eq!(body.len(), data.len());
    }
});
