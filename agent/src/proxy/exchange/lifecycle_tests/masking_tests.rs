//! Masking by policy: an inline JSON result and a chunked one whose downloads pass the proxy.

use serde_json::json;

use super::fake_upstream::Answer;
use super::wire;
use super::{Harness, Setup, harness};

const TOKEN: &str = "tok-1";

/// The EMAIL column of every SELECT is masked.
pub(super) const MASK_POLICY: &str = r#"
[default]
action = "allow"

[[rule]]
name = "mask-email"
action = "mask"
columns = ["email"]
[rule.when]
statement = ["SELECT"]
"#;

/// The storage host that serves result chunks.
pub(super) const STAGE_HOST: &str = "sfc-eu-ds1-customer-stage.s3.eu-west-1.amazonaws.com";

#[tokio::test(start_paused = true)]
async fn an_inline_result_reaches_the_client_masked() {
    let h = Harness::with_policy(MASK_POLICY).logged_in(TOKEN).await;
    h.upstream.answer(
        wire::QUERY,
        wire::rows(
            "q-1",
            &[wire::column("ID", "fixed"), wire::column("EMAIL", "text")],
            json!([["1", "ann@example.com"], ["2", "bob@example.com"]]),
        ),
    );

    let got = h.query(TOKEN, "select id, email from users").await;

    assert_eq!(
        got.json()["data"]["rowset"],
        json!([["1", "***"], ["2", "***"]])
    );
    assert!(!got.text().contains("@example.com"), "{}", got.text());
    assert_eq!(h.upstream.received_at(wire::QUERY).len(), 1);
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.decision.map(|d| d.as_str()), Some("mask"));
    assert_eq!(q.policy_rule.as_deref(), Some("mask-email"));
    assert_eq!(q.success, Some(true));
    assert_eq!(q.rows_produced, Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_chunked_result_is_masked_in_every_download_and_recorded_after_the_last() {
    let h = Harness::with_policy(MASK_POLICY).logged_in(TOKEN).await;
    let chunk_0 = br#"["3","cat@example.com"],["4","dan@example.com"]"#;
    let chunk_1 = br#"["5","eve@example.com"]"#;
    let paths = [
        "/results/q-1_0/main/data_0_0_1",
        "/results/q-1_0/main/data_0_0_2",
    ];
    h.upstream.answer(
        wire::QUERY,
        wire::chunked(
            "q-1",
            &[wire::column("ID", "fixed"), wire::column("EMAIL", "text")],
            json!([["1", "ann@example.com"], ["2", "bob@example.com"]]),
            STAGE_HOST,
            &[(paths[0], 2, chunk_0.len()), (paths[1], 1, chunk_1.len())],
        ),
    );
    h.upstream.answer(paths[0], Answer::bytes(chunk_0));
    h.upstream.answer(paths[1], Answer::bytes(chunk_1));

    let got = h.query(TOKEN, "select id, email from users").await;

    assert_eq!(
        got.json()["data"]["rowset"],
        json!([["1", "***"], ["2", "***"]])
    );
    assert_eq!(got.json()["data"]["chunks"].as_array().unwrap().len(), 2);
    assert!(!got.text().contains("@example.com"), "{}", got.text());
    // The statement waits for its chunks.
    assert!(h.sink.queries().is_empty(), "{:?}", h.sink.queries());

    let first = h.exchange(wire::chunk_download(STAGE_HOST, paths[0])).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), r#"["3","***"],["4","***"]"#);
    assert!(
        h.sink.queries().is_empty(),
        "recorded before its last chunk"
    );
    let second = h.exchange(wire::chunk_download(STAGE_HOST, paths[1])).await;
    assert_eq!(second.text(), r#"["5","***"]"#);

    // The storage host served the raw rows; none reached the client.
    for path in paths {
        let sent = h.upstream.received_at(path);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].method, "GET");
        assert_eq!(
            sent[0].headers["x-amz-server-side-encryption-customer-algorithm"],
            "AES256"
        );
    }
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.decision.map(|d| d.as_str()), Some("mask"));
    assert_eq!(q.success, Some(true));
    assert_eq!(q.rows_produced, Some(5));
    assert_eq!(q.chunk_count, Some(2));
    assert!(q.flags.is_empty(), "{:?}", q.flags);
}

#[tokio::test(start_paused = true)]
async fn an_unmasked_chunked_result_streams_through_and_is_recorded_after_the_last_chunk() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    let chunk_0 = br#"["3","cat@example.com"],["4","dan@example.com"]"#;
    let path = "/results/q-1_0/main/data_0_0_1";
    let answer = wire::chunked(
        "q-1",
        &[wire::column("ID", "fixed"), wire::column("EMAIL", "text")],
        json!([["1", "ann@example.com"]]),
        STAGE_HOST,
        &[(path, 2, chunk_0.len())],
    );
    let answer_bytes = answer.wire_bytes();
    h.upstream.answer(wire::QUERY, answer);
    h.upstream.answer(path, Answer::bytes(chunk_0));

    let got = h.query(TOKEN, "select id, email from users").await;
    assert_eq!(got.body, answer_bytes);
    assert!(h.sink.queries().is_empty(), "{:?}", h.sink.queries());

    let chunk = h.exchange(wire::chunk_download(STAGE_HOST, path)).await;

    // The chunk's bytes pass as the storage host sent them; its bytes count for the statement.
    assert_eq!(chunk.body, chunk_0);
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.decision, None);
    assert_eq!(q.rows_produced, Some(3));
    assert_eq!(q.chunk_count, Some(1));
    assert_eq!(
        q.result_bytes,
        Some((answer_bytes.len() + chunk_0.len()) as u64)
    );
}
