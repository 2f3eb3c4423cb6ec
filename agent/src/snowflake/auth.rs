//! Where a session's token appears on the wire, so the proxy can tell which session a request
//! belongs to. The values returned here are used only to key sessions (the proxy hashes them at
//! once); they never reach the audit.

use serde_json::Value;

/// The token of an `Authorization: Snowflake Token="<token>"` header; `None` for the `"None"`
/// placeholder drivers send before login.
pub fn authorization_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let rest = value.trim().strip_prefix("Snowflake")?.trim_start();
    let rest = rest.strip_prefix("Token=")?.trim();
    let token = rest
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(rest);
    (!token.is_empty() && token != "None").then_some(token)
}

/// The session token a login (`data.token`) or renewal (`data.sessionToken`) response hands out.
pub fn issued_session_token(decoded_body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(decoded_body).ok()?;
    let data = v.get("data")?;
    data.get("token")
        .or_else(|| data.get("sessionToken"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_token_forms() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "Snowflake Token=\"abc.def\"".parse().unwrap(),
        );
        assert_eq!(authorization_token(&h), Some("abc.def"));
        h.insert(
            http::header::AUTHORIZATION,
            "Snowflake Token=\"None\"".parse().unwrap(),
        );
        assert_eq!(authorization_token(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(authorization_token(&h), None);
        assert_eq!(
            issued_session_token(br#"{"data":{"token":"t1","masterToken":"m"},"success":true}"#)
                .as_deref(),
            Some("t1")
        );
        assert_eq!(
            issued_session_token(br#"{"data":{"sessionToken":"t2"},"success":true}"#).as_deref(),
            Some("t2")
        );
        assert_eq!(issued_session_token(b"{}"), None);
    }
}
