//! Query request parsing and QUERY_TAG merging: a tagged request parses, with the same statement
//! and a tag within Snowflake's limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowtrail::snowflake::{QUERY_TAG_MAX_CHARS, parse_query_request, set_query_tag};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_query_request(data) else {
        return;
    };
    let _ = format!("{req:?}");
    let mut agent = serde_json::Map::new();
    agent.insert("id".into(), "0199-fuzz".into());
    if let Ok((body, tag)) = set_query_tag(data, Some("session-tag"), &agent) {
        assert!(tag.chars().count() <= QUERY_TAG_MAX_CHARS);
        let again = parse_query_request(&body).expect("a tagged request parses");
        assert_eq!(again.sql_text, req.sql_text);
        assert_eq!(again.query_tag(), Some(tag.as_str()));
    }
});
