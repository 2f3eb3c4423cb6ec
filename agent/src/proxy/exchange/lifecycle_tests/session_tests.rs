//! A login, and the session it opens carried onto the next statement.

use serde_json::json;

use super::wire;
use super::{EventKind, IDENTITY, Setup, harness};

#[tokio::test(start_paused = true)]
async fn a_password_login_is_recorded_and_its_session_carries_onto_statements() {
    let h = harness(Setup::default());

    let got = h.login("tok-1").await;

    // The client gets Snowflake's answer, its token untouched (the session is not brokered).
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["data"]["token"], "tok-1");
    // Snowflake got the login with its credentials, and the agent's tag in the session's
    // QUERY_TAG beside the workload's own.
    let sent = h.upstream.received_at(wire::LOGIN);
    assert_eq!(sent.len(), 1);
    let data = &sent[0].json()["data"];
    assert_eq!(data["PASSWORD"], "snow-secret");
    assert_eq!(data["LOGIN_NAME"], "fake");
    let tag = data["SESSION_PARAMETERS"]["QUERY_TAG"].as_str().unwrap();
    assert!(tag.contains("login-tag"), "{tag}");
    assert!(tag.contains(IDENTITY), "{tag}");
    // One login event: who logged in, with which driver, and no secret.
    let logins = h.sink.of_kind(EventKind::Login);
    assert_eq!(logins.len(), 1, "{:?}", h.sink.events());
    let login = &logins[0];
    assert_eq!(login.success, Some(true));
    assert_eq!(login.login_user.as_deref(), Some("fake"));
    assert_eq!(login.account.as_deref(), Some("xy12345"));
    assert_eq!(login.authenticator.as_deref(), Some("SNOWFLAKE"));
    assert_eq!(login.driver.as_deref(), Some("PythonConnector"));
    assert_eq!(login.driver_version.as_deref(), Some("5.2.0"));
    assert_eq!(login.snowflake_session_id.as_deref(), Some("1234"));
    assert_eq!(login.role.as_deref(), Some("ANALYST"));
    assert_eq!(login.warehouse.as_deref(), Some("WH_ETL"));
    assert_eq!(login.workload_identity.as_deref(), Some(IDENTITY));
    let session_id = login.session_id.clone().unwrap();
    assert!(tag.contains(&session_id), "{tag}");
    let detail: serde_json::Value = serde_json::from_str(login.detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["QUERY_TAG"], "login-tag");
    let row = serde_json::to_string(login).unwrap();
    assert!(!row.contains("snow-secret"), "{row}");
    // Connection-only columns stay on the connection's row.
    assert_eq!(login.connection_mode, None);

    // The next statement on the session's token carries the session's columns.
    h.upstream.answer(
        wire::QUERY,
        wire::rows("q-1", &[wire::column("N", "fixed")], json!([["1"]])),
    );
    h.query("tok-1", "select 1").await;
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1);
    let q = &queries[0];
    assert_eq!(q.session_id.as_deref(), Some(session_id.as_str()));
    assert_eq!(q.correlation_id, login.correlation_id);
    assert_eq!(q.snowflake_session_id.as_deref(), Some("1234"));
    assert_eq!(q.login_user.as_deref(), Some("fake"));
    assert_eq!(q.account.as_deref(), Some("xy12345"));
    assert_eq!(q.authenticator.as_deref(), Some("SNOWFLAKE"));
    assert_eq!(q.driver.as_deref(), Some("PythonConnector"));
    assert_eq!(q.role.as_deref(), Some("ANALYST"));
    assert_eq!(q.database.as_deref(), Some("DB1"));
    // The statement's tag names the session too.
    let sent = &h.upstream.received_at(wire::QUERY)[0];
    let tag = sent.json()["parameters"]["QUERY_TAG"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(tag.contains(&session_id), "{tag}");
}

#[tokio::test(start_paused = true)]
async fn a_statement_on_an_unknown_token_has_no_session_columns() {
    let h = harness(Setup::default());
    h.login("tok-1").await;
    h.upstream.answer(
        wire::QUERY,
        wire::rows("q-1", &[wire::column("N", "fixed")], json!([["1"]])),
    );

    h.query("tok-other", "select 1").await;

    let q = &h.sink.queries()[0];
    assert_eq!(q.session_id, None);
    assert_eq!(q.login_user, None);
    assert_eq!(q.workload_identity.as_deref(), Some(IDENTITY));
}
