//! SQL redaction in both modes: never panics, and redacting every literal never keeps more text
//! than it was given plus the replacement marks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowtrail::snowflake::{RedactMode, redact_sql};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let cred = redact_sql(sql, RedactMode::Credentials);
    let all = redact_sql(sql, RedactMode::AllLiterals);
    // Each replaced literal is at least two bytes and becomes five.
    assert!(cred.len() <= sql.len() * 3 + 5);
    assert!(all.len() <= sql.len() * 3 + 5);
    let _ = redact_sql(&all, RedactMode::AllLiterals);
});
