//! Rule files, decisions and the classifier over a corpus of Snowflake statements.

use super::*;
use proptest::prelude::*;

fn ctx() -> NameContext {
    NameContext {
        database: Some("ANALYTICS".into()),
        schema: Some("PUBLIC".into()),
    }
}

fn obj(d: &str, s: &str, n: &str) -> ObjectRef {
    ObjectRef {
        database: Some(d.into()),
        schema: Some(s.into()),
        name: n.into(),
    }
}

fn names(set: &std::collections::BTreeSet<ObjectRef>) -> Vec<String> {
    set.iter().map(ToString::to_string).collect()
}

/// Statement, expected type, expected reads, expected writes (as `DB.SCHEMA.NAME`).
const CORPUS: &[(&str, &str, &[&str], &[&str])] = &[
    (
        "select * from orders",
        "SELECT",
        &["ANALYTICS.PUBLIC.ORDERS"],
        &[],
    ),
    (
        "WITH x AS (SELECT * FROM raw.events) SELECT * FROM x JOIN \"Sales\".\"eu\".\"Q1\" ON true",
        "SELECT",
        &["ANALYTICS.RAW.EVENTS", "ANALYTICS.PUBLIC.X", "Sales.eu.Q1"],
        &[],
    ),
    (
        "insert into prod.core.orders select * from staging.orders",
        "INSERT",
        &["ANALYTICS.STAGING.ORDERS"],
        &["PROD.CORE.ORDERS"],
    ),
    (
        "update t set a = 1 where b in (select b from u)",
        "UPDATE",
        &["ANALYTICS.PUBLIC.U"],
        &["ANALYTICS.PUBLIC.T"],
    ),
    (
        "delete from t where a = 2",
        "DELETE",
        &[],
        &["ANALYTICS.PUBLIC.T"],
    ),
    (
        "MERGE INTO target t USING src s ON t.id = s.id \
         WHEN MATCHED THEN UPDATE SET t.v = s.v WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v)",
        "MERGE",
        &["ANALYTICS.PUBLIC.SRC"],
        &["ANALYTICS.PUBLIC.TARGET"],
    ),
    (
        "drop table prod.core.orders",
        "DROP_TABLE",
        &[],
        &["PROD.CORE.ORDERS"],
    ),
    (
        "DROP TABLE IF EXISTS \"Mixed\"",
        "DROP_TABLE",
        &[],
        &["ANALYTICS.PUBLIC.Mixed"],
    ),
    ("drop schema s1", "DROP_SCHEMA", &[], &[]),
    (
        "create or replace table t2 (a int, b varchar)",
        "CREATE_TABLE",
        &[],
        &["ANALYTICS.PUBLIC.T2"],
    ),
    (
        "create table t3 as select * from t1",
        "CREATE_TABLE",
        &["ANALYTICS.PUBLIC.T1"],
        &["ANALYTICS.PUBLIC.T3"],
    ),
    (
        "alter table t add column c int",
        "ALTER_TABLE",
        &[],
        &["ANALYTICS.PUBLIC.T"],
    ),
    ("truncate table t", "TRUNCATE", &[], &["ANALYTICS.PUBLIC.T"]),
    (
        "copy into mytable from @my_stage file_format = (type = csv)",
        "COPY_INTO_TABLE",
        &[],
        &["ANALYTICS.PUBLIC.MYTABLE"],
    ),
    (
        "copy into @my_stage/out/ from (select * from secret.pii)",
        "COPY_INTO_LOCATION",
        &["ANALYTICS.SECRET.PII"],
        &[],
    ),
    (
        "copy into 's3://bucket/x/' from secret.pii storage_integration = s3i",
        "COPY_INTO_LOCATION",
        &[],
        &[],
    ),
    ("put file:///tmp/data.csv @~/staged", "PUT", &[], &[]),
    ("get @~/staged file:///tmp/out/", "GET", &[], &[]),
    ("call my_proc(1, 'a')", "CALL", &[], &[]),
    (
        "execute immediate $$ begin drop table t; end; $$",
        "EXECUTE_IMMEDIATE",
        &[],
        &[],
    ),
    ("use warehouse wh", "USE", &[], &[]),
    ("show tables", "SHOW", &[], &[]),
    ("grant select on table t to role r", "GRANT", &[], &[]),
    (
        "-- leading comment\n/* block */ select 1",
        "SELECT",
        &[],
        &[],
    ),
    (
        "create or replace function f() returns int language sql as $$ select 1; $$",
        "CREATE_FUNCTION",
        &[],
        &[],
    ),
    ("undrop table t", "UNDROP_TABLE", &[], &[]),
    ("describe table t", "DESCRIBE", &[], &[]),
    (
        "alter session set query_tag = 'x'",
        "ALTER_SESSION",
        &[],
        &[],
    ),
];

#[test]
fn corpus_gets_known_types_and_objects() {
    for (sql, ty, reads, writes) in CORPUS {
        let c = classify::classify(sql, &ctx());
        assert_eq!(&c.statement_type, ty, "{sql}: {c:?}");
        for r in *reads {
            assert!(
                names(&c.reads).contains(&r.to_string()),
                "{sql}: read {r} in {c:?}"
            );
        }
        for w in *writes {
            assert!(
                names(&c.writes).contains(&w.to_string()),
                "{sql}: write {w} in {c:?}"
            );
        }
    }
}

#[test]
fn unparseable_sql_falls_back_to_keywords() {
    let c = classify::classify("DROP TABLE prod.core.orders SOMETHING ODD ((", &ctx());
    assert!(c.unparsed);
    assert_eq!(c.statement_type, "DROP_TABLE");
    assert!(c.writes.contains(&obj("PROD", "CORE", "ORDERS")));
    let c = classify::classify("frobnicate the warehouse", &ctx());
    assert!(c.unparsed);
    assert_eq!(c.statement_type, "FROBNICATE");
}

#[test]
fn multi_statement_requests_are_judged_per_statement() {
    let p = Policy::parse(
        r#"
[default]
action = "allow"

[[rule]]
name = "no-drop"
action = "deny"
message = "no drops"
[rule.when]
statement = ["DROP"]
"#,
    )
    .unwrap();
    let j = p.judge(
        &Subject::default(),
        "select 1; /* ; */ drop table t; select ';'",
        &ctx(),
        0,
    );
    assert_eq!(j.statements.len(), 3);
    assert_eq!(j.statements[0].1.rule, "default");
    assert_eq!(j.statements[1].1.rule, "no-drop");
    assert_eq!(j.verdict().unwrap().rule, "no-drop");
    assert_eq!(
        j.verdict().unwrap().action,
        Action::Deny {
            message: Some("no drops".into())
        }
    );
}

/// A policy of the size a team writes, every action and most conditions.
const FULL: &str = include_str!("../../tests/fixtures/policy/team.toml");

#[test]
fn first_matching_rule_decides() {
    let p = Policy::parse(FULL).unwrap();
    assert_eq!(p.rules().len(), 6);
    assert_eq!(p.rules()[0].line, 5);
    assert!(p.shapes_results());
    let mut etl = Subject {
        identity: Some("etl-nightly".into()),
        ..Subject::default()
    };
    etl.labels.insert("env".into(), "prod".into());
    let d = |who: &Subject, sql: &str, t: i64| {
        let j = p.judge(who, sql, &ctx(), t);
        j.verdict().unwrap().clone()
    };
    assert_eq!(d(&etl, "drop table prod.a.b", 0).rule, "etl-prod-drops");
    assert_eq!(d(&etl, "drop table dev.a.b", 0).rule, "default");
    assert_eq!(d(&etl, "drop table dev.a.b", 0).action, Action::Alert);
    let mut staging = etl.clone();
    staging.labels.insert("env".into(), "staging".into());
    assert_eq!(d(&staging, "drop table prod.a.b", 0).rule, "default");

    let analyst = Subject {
        role: Some("ANALYST_EU".into()),
        ..Subject::default()
    };
    assert_eq!(
        d(&analyst, "insert into \"Sales\".x.y values (1)", 0).action,
        Action::RequireApproval {
            timeout: Duration::from_secs(120)
        }
    );
    assert_eq!(
        d(&analyst, "insert into sales.x.y values (1)", 0).rule,
        "default"
    );
    assert_eq!(
        d(&analyst, "select * from CUSTOMERS", 0).action,
        Action::Mask {
            columns: vec!["SSN".into(), "email".into()]
        }
    );

    let rep = Subject {
        user: Some("REPORTING".into()),
        account: Some("acme-eu".into()),
        ..Subject::default()
    };
    // 2026-11-22 23:30 UTC is a Monday 00:30 at +01:00; 2026-11-22 12:00 UTC a Sunday.
    let sunday_noon = 1_795_392_000 - 12 * 3600;
    assert_eq!(d(&rep, "select 1", sunday_noon).rule, "cap");
    assert_eq!(d(&rep, "select 1", 1_795_392_000 - 30 * 60).rule, "default");

    let contractor = Subject {
        human: Some("carol".into()),
        groups: vec!["staff".into(), "contractors".into()],
        ..Subject::default()
    };
    assert_eq!(d(&contractor, "gibberish ((", 0).rule, "unparsed-by-humans");
    assert_eq!(d(&contractor, "select 1", 0).rule, "default");
    let bob = Subject {
        human: Some("bob".into()),
        ..Subject::default()
    };
    assert_eq!(d(&bob, "gibberish ((", 0).rule, "everything-else-from-bob");
}

fn err_of(text: &str) -> PolicyError {
    Policy::parse(text).unwrap_err()
}

#[test]
fn mistakes_are_reported_with_line_and_column() {
    let e = err_of("[[rule]]\nname = \"a\"\naction = \"allow\"\n");
    assert!(e.message.contains("default"), "{e}");

    let e = err_of("[default]\naction = \"allow\"\n\n[[rule]]\nname = \"x\"\naction = \"block\"\n");
    assert_eq!((e.line, e.column), (6, 10), "{e}");
    assert!(e.message.contains("unknown action"), "{e}");

    let e = err_of(
        "[default]\naction = \"allow\"\n[[rule]]\nname = \"x\"\naction = \"deny\"\n[rule.when]\nsql = \"(unclosed\"\n",
    );
    assert_eq!(e.line, 7, "{e}");
    assert!(e.message.contains("regex"), "{e}");

    let e = err_of(
        "[default]\naction = \"allow\"\n[[rule]]\nname = \"x\"\naction = \"deny\"\n[rule.when]\nobjects = [\"a..b\"]\n",
    );
    assert_eq!((e.line, e.column), (7, 12), "{e}");

    let e = err_of("[default]\naction = \"allow\"\nbogus = 1\n");
    assert_eq!(e.line, 3, "{e}");

    let e = err_of(
        "[default]\naction = \"allow\"\n[[rule]]\nname = \"x\"\naction = \"deny\"\n[rule.when]\ncolour = [\"red\"]\n",
    );
    assert_eq!(e.line, 7, "{e}");

    let e = err_of("[default]\naction = \"require_approval\"\n");
    assert!(e.message.contains("timeout_s"), "{e}");
    let e = err_of("[default]\naction = \"require_approval\"\ntimeout_s = 99999\n");
    assert_eq!(e.line, 3, "{e}");
    let e = err_of("[default]\naction = \"allow\"\nmessage = \"hi\"\n");
    assert!(e.message.contains("does not apply"), "{e}");

    let e = err_of(
        "[default]\naction = \"allow\"\n[[rule]]\nname = \"x\"\naction = \"allow\"\n[[rule]]\nname = \"x\"\naction = \"deny\"\n",
    );
    assert_eq!(e.line, 7, "{e}");
    let e = err_of(
        "[default]\naction = \"allow\"\n[[rule]]\nname = \"x\"\naction = \"allow\"\n[rule.when]\ntime = { hours = \"9-5\" }\n",
    );
    assert_eq!(e.line, 7, "{e}");
    let e = err_of("this is = not toml");
    assert_eq!(e.line, 1, "{e}");
    assert_eq!(e.to_string().split(':').next(), Some("line 1, column 6"));
}

/// Pieces of Snowflake SQL that the generator strings together.
fn piece() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "select",
        "from",
        "where",
        "insert",
        "into",
        "update",
        "delete",
        "merge",
        "using",
        "copy",
        "@stage",
        "put",
        "get",
        "file:///tmp/x",
        "call",
        "execute",
        "immediate",
        "drop",
        "table",
        "create",
        "or",
        "replace",
        "with",
        "as",
        "(",
        ")",
        ";",
        ",",
        ".",
        "*",
        "=",
        "'str;ing'",
        "'it''s'",
        "$$ a; b $$",
        "\"Quoted Id\"",
        "\"a\"\"b\"",
        "-- c;\n",
        "/* x; */",
        "/* open",
        "'open",
        "\"open",
        "$$open",
        "begin",
        "end",
        "1",
        "t",
        "db.s.t",
        "\\",
    ])
    .prop_map(str::to_owned);
    prop_oneof![4 => fixed, 1 => "\\PC{0,8}"]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// Whatever the text, classification returns (never panics) and every statement has a type.
    #[test]
    fn classification_never_panics(parts in prop::collection::vec(piece(), 0..40)) {
        let sql = parts.join(" ");
        for c in classify_request(&sql, &ctx()) {
            prop_assert!(!c.statement_type.is_empty());
        }
        let _ = classify_request(&sql, &NameContext::default());
    }

    /// Arbitrary bytes, too.
    #[test]
    fn classification_never_panics_on_any_text(sql in "\\PC{0,200}") {
        let _ = classify_request(&sql, &ctx());
    }

    /// Corpus statements keep their type wherever they stand in a multi-statement request and
    /// whatever comments surround them.
    #[test]
    fn corpus_statements_keep_their_type_in_requests(
        picks in prop::collection::vec(0..CORPUS.len(), 1..5),
        comment in prop::sample::select(vec!["", "-- note; here\n", "/* a; b */ "]),
    ) {
        let sql: Vec<String> = picks.iter().map(|i| format!("{comment}{}", CORPUS[*i].0)).collect();
        let sql = sql.join(";\n");
        let got = classify_request(&sql, &ctx());
        prop_assert_eq!(got.len(), picks.len());
        for (c, i) in got.iter().zip(&picks) {
            prop_assert_eq!(&c.statement_type, CORPUS[*i].1);
        }
    }

    /// Unquoted identifiers match patterns whatever their case; quoted ones only as written.
    #[test]
    fn identifier_case_rules(name in "[a-zA-Z][a-zA-Z0-9_]{0,10}") {
        let upper = ObjectPattern::parse(&name).unwrap();
        let quoted = ObjectPattern::parse(&format!("\"{name}\"")).unwrap();
        let unq = classify::classify(&format!("select * from {name}"), &ctx());
        let q = classify::classify(&format!("select * from \"{name}\""), &ctx());
        if !unq.unparsed {
            prop_assert!(unq.reads.iter().any(|o| upper.matches(o)));
        }
        if !q.unparsed {
            prop_assert!(q.reads.iter().any(|o| quoted.matches(o)));
            prop_assert_eq!(
                q.reads.iter().any(|o| upper.matches(o)),
                name == name.to_uppercase()
            );
        }
    }
}

#[test]
fn a_rule_can_turn_recording_off() {
    let p = Policy::parse(
        "[default]\naction = \"allow\"\n\n[[rule]]\nname = \"quiet\"\naction = \"allow\"\nrecord = false\n[rule.when]\nsql = \"from payroll\"\n\n[[rule]]\nname = \"loud\"\naction = \"allow\"\n",
    )
    .unwrap();
    assert!(!p.rules()[0].record);
    assert!(p.rules()[1].record, "recorded unless a rule says otherwise");
    assert!(
        Policy::parse("[[rule]]\nname = \"x\"\naction = \"allow\"\nrecord = \"no\"\n").is_err()
    );
}

#[test]
fn rules_on_requests_decide_requests_and_never_statements() {
    let p = Policy::parse(
        r#"
        [default]
        action = "deny"
        [[rule]]
        name = "reads-of-resources"
        action = "alert"
        when.identity = ["etl"]
        when.requests = ["get /api/v2/*"]
        [[rule]]
        name = "no-drops"
        action = "deny"
        when.requests = ["DELETE /api/v2/databases/*"]
        "#,
    )
    .unwrap();
    let etl = Subject {
        identity: Some("etl".into()),
        ..Subject::default()
    };
    let other = Subject::default();
    let rule =
        |who: &Subject, m: &str, path: &str| p.decide_request(who, m, path, 0).map(|d| d.rule);
    assert_eq!(
        rule(&etl, "GET", "/api/v2/databases/x").as_deref(),
        Some("reads-of-resources")
    );
    assert_eq!(rule(&other, "GET", "/api/v2/databases/x"), None);
    assert_eq!(
        rule(&other, "DELETE", "/api/v2/databases/x").as_deref(),
        Some("no-drops")
    );
    assert_eq!(rule(&other, "DELETE", "/api/v2/warehouses/w"), None);
    // Statements are decided by the other rules and the default alone.
    let d = p.decide(&etl, &classify_request("select 1", &ctx())[0], 0);
    assert_eq!(d.rule, DEFAULT_RULE);
}

#[test]
fn a_rule_on_requests_is_checked_when_read() {
    for (text, says) in [
        (
            "[[rule]]\nname = \"r\"\naction = \"deny\"\nwhen.requests = [\"GET\"]\n",
            "write METHOD PATH",
        ),
        (
            "[[rule]]\nname = \"r\"\naction = \"mask\"\ncolumns = [\"a\"]\nwhen.requests = [\"GET /x\"]\n",
            "can allow, alert or deny",
        ),
        (
            "[[rule]]\nname = \"r\"\naction = \"deny\"\nwhen.requests = [\"GET /x\"]\nwhen.statement = [\"DROP\"]\n",
            "`requests` and `statement` in one rule",
        ),
    ] {
        let text = format!("[default]\naction = \"allow\"\n{text}");
        let e = Policy::parse(&text).unwrap_err();
        assert!(e.to_string().contains(says), "{text}: {e}");
    }
}

#[test]
fn brokered_sessions_cannot_mint_credentials() {
    let p = Policy::parse("[default]\naction = \"allow\"\n").unwrap();
    let brokered = Subject {
        brokered: true,
        ..Subject::default()
    };
    let rule = |who: &Subject, sql: &str| p.judge(who, sql, &ctx(), 0).verdict().unwrap().clone();
    for sql in [
        "ALTER USER etl ADD PROGRAMMATIC ACCESS TOKEN t1",
        "alter user etl rotate pat t1",
        "alter user etl set rsa_public_key_2 = 'MIIB...'",
        "ALTER USER IF EXISTS etl SET PASSWORD = 'x'",
        "create or replace user backdoor password = 'x'",
        "create secret s type = password username = 'u' password = 'p'",
        "alter secret s set password = 'q'",
        "select system$generate_scim_access_token('OKTA')",
        "execute immediate $$alter user etl set password = 'x'$$",
    ] {
        let d = rule(&brokered, sql);
        assert_eq!(d.rule, BROKERED_CREDENTIALS_RULE, "{sql}");
        assert!(matches!(d.action, Action::Deny { .. }), "{sql}");
        // Outside a brokered session, the file decides.
        assert_eq!(rule(&Subject::default(), sql).rule, DEFAULT_RULE, "{sql}");
    }
    for sql in [
        "select password from users",
        "alter user etl set default_role = analyst",
        "create table secrets (a int)",
    ] {
        assert_eq!(rule(&brokered, sql).rule, DEFAULT_RULE, "{sql}");
    }
    // A rule of that name replaces the built-in one.
    let own = Policy::parse(
        "[default]\naction = \"allow\"\n[[rule]]\nname = \"brokered-credentials\"\naction = \"alert\"\nwhen.statement = [\"ALTER_USER\"]\n",
    )
    .unwrap();
    let d = own.judge(&brokered, "alter user etl set password = 'x'", &ctx(), 0);
    assert_eq!(d.verdict().unwrap().action, Action::Alert);
}
