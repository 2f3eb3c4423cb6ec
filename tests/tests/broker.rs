//! Credential brokering end to end: the Python connector (5.2.0 and 4.8.1) runs under
//! `snowtrail exec --identity <brokered>` and logs in with a placeholder user and password; the
//! agent logs in for it with the identity's key pair, and the fake Snowflake verifies the JWT
//! against the user's public key. The workload sees only handles, renewal and logout work, a
//! handle replayed from another run is refused, and broken keys or a key Snowflake does not know
//! give the driver its normal authentication error and a failed login in the audit. Root only.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use snowtrail_tests::fake_snowflake::drivers::{self, Driver};
use snowtrail_tests::fake_snowflake::{FakeOptions, FakeSnowflake};
use snowtrail_tests::{Daemon, DaemonOptions, unique_port, workspace_root};

const PORT_BASE: u16 = 29_990;
const ACCOUNT_HOST: &str = "xy12345.snowflakecomputing.com";
const PLACEHOLDER_USER: &str = "placeholder";
const PLACEHOLDER_PW: &str = "placeholder-pw-6f1c";
const HANDLE_PREFIX: &str = "snowtrail-handle.";
/// Where the fake serves result chunks (a storage host the agent learns from the response).
const STORAGE_HOST: &str = "stage.fake-snowflake.test";
/// A statement the driver polls for (`333333`, then the result URL).
const SLOW: &str = "/*slow:2*/ select 42 as answer";
/// A result that comes partly in chunks from the storage host.
const CHUNKED: &str = "/*sf_chunks*/ /*rows:3000*/ select id, name from big";

fn fixture(name: &str) -> PathBuf {
    workspace_root()
        .join("agent/tests/fixtures/keypair")
        .join(name)
}

fn key_file(dir: &Path, name: &str, content: &[u8], mode: u32) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.display().to_string()
}

/// Runs the session script under `snowtrail exec --identity <identity>` and returns its lines.
fn run(d: &Daemon, hosts: &Path, driver: Driver, identity: &str, extra: &[&str]) -> Vec<Value> {
    let mut args: Vec<String> = [
        "--host",
        ACCOUNT_HOST,
        "--user",
        PLACEHOLDER_USER,
        "--password",
        PLACEHOLDER_PW,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let inner = drivers::session_command(driver, hosts, Path::new("/nonexistent"), &args).unwrap();
    let out = d.exec_command(identity, &inner).output().unwrap();
    let lines = drivers::json_lines(&out.stdout);
    assert!(
        !lines.is_empty(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.logs()
    );
    lines
}

/// A Python script that sends a statement with `Authorization: Snowflake Token="$REPLAY_TOKEN"` to
/// the account host and prints the answer. (The token is not an argument: the audit records
/// command lines.)
const REPLAY: &str = r#"
import json, os, urllib.request
req = urllib.request.Request("https://xy12345.snowflakecomputing.com/queries/v1/query-request?requestId=r1",
    data=b'{"sqlText": "select 4242 as replayed"}', method="POST",
    headers={"Authorization": 'Snowflake Token="%s"' % os.environ["REPLAY_TOKEN"], "Content-Type": "application/json",
             "Accept": "application/json"})
print(json.dumps({"step": "replay", "answer": json.load(urllib.request.urlopen(req, timeout=30))}))
"#;

fn replay_answer(out: &std::process::Output) -> Value {
    drivers::json_lines(&out.stdout)
        .into_iter()
        .find(|l| l["step"] == "replay")
        .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&out.stderr)))["answer"]
        .clone()
}

#[test]
fn brokered_logins_use_the_agents_key_and_hand_out_only_handles() {
    let dir = tempfile::Builder::new()
        .prefix("snowtrail-broker-")
        .tempdir()
        .unwrap();
    let key_a = std::fs::read(fixture("rsa-a.p8")).unwrap();
    let good = key_file(dir.path(), "good.p8", &key_a, 0o600);
    let open = key_file(dir.path(), "open.p8", &key_a, 0o644);
    let garbage = key_file(dir.path(), "garbage.p8", b"not a key\n", 0o600);
    let unknown = key_file(
        dir.path(),
        "unknown.p8",
        &std::fs::read(fixture("rsa-b.p8")).unwrap(),
        0o600,
    );
    let fake = FakeSnowflake::start(FakeOptions {
        addr: SocketAddr::from(([127, 78, 3, 1], 443)),
        tls: true,
        hosts: vec![ACCOUNT_HOST.to_owned(), STORAGE_HOST.to_owned()],
        ca_dir: dir.path().join("fake-ca"),
        storage_host: Some(STORAGE_HOST.to_owned()),
        jwt_public_keys: vec![(
            "ETL_SVC".to_owned(),
            std::fs::read_to_string(fixture("rsa-a.pub.pem")).unwrap(),
        )],
        ..FakeOptions::default()
    })
    .unwrap();
    let mut broker = String::new();
    for (identity, key) in [
        ("etl-brokered", &good),
        ("etl-open-key", &open),
        ("etl-garbage-key", &garbage),
        ("etl-unknown-key", &unknown),
    ] {
        broker.push_str(&format!(
            "[broker.identities.{identity}]\nuser = \"ETL_SVC\"\nprivate_key = {key:?}\n"
        ));
    }
    let opts = DaemonOptions {
        extra_top: format!(
            "[tls]\nupstream_extra_roots = [{:?}]\n{broker}",
            fake.ca_pem_path().display().to_string()
        ),
        ..DaemonOptions::default()
    };
    let d = Daemon::start("broker", unique_port(PORT_BASE), &opts).unwrap();
    let hosts =
        drivers::write_hosts_file(dir.path(), fake.addr().ip(), &[ACCOUNT_HOST, STORAGE_HOST])
            .unwrap();

    // A whole session with each connector: login, statements, a poll, chunk downloads, a
    // renewal, logout.
    let mut jwts = Vec::new();
    for driver in [Driver::Py5, Driver::Py4] {
        fake.clear_requests();
        let verified_before = fake.jwt_checks().0.len();
        let lines = run(
            &d,
            &hosts,
            driver,
            "etl-brokered",
            &[
                "--show-tokens",
                "select 1",
                "select 2 as two /*expire_token*/",
                "select 3 as three",
                SLOW,
                CHUNKED,
            ],
        );
        let name = driver.name();
        assert!(
            lines.iter().filter(|l| l["step"] == "statement").count() == 5
                && lines.iter().all(|l| l["error"].is_null())
                && lines
                    .iter()
                    .any(|l| l["step"] == "close" && l["ok"] == true),
            "{name}: {lines:#?}\n{}",
            d.logs()
        );
        // The workload held handles only: never a token the fake issued; a new one after renewal.
        let issued = fake.issued_tokens();
        let tokens: Vec<&Value> = lines.iter().filter(|l| l["step"] == "tokens").collect();
        assert_eq!(tokens.len(), 2, "{name}: {lines:#?}");
        for t in &tokens {
            for k in ["token", "master_token"] {
                let v = t[k].as_str().unwrap_or_default();
                assert!(v.starts_with(HANDLE_PREFIX), "{name}: {k} = {v}");
                assert!(
                    !issued.iter().any(|i| i == v),
                    "{name}: {k} is a real token"
                );
            }
        }
        assert_ne!(
            tokens[0]["token"], tokens[1]["token"],
            "{name}: the renewal handed out a new session handle"
        );

        // What reached Snowflake: a key-pair login as ETL_SVC that verified against the public
        // key, a renewal and a logout; no placeholder password and no handle anywhere.
        let reqs = fake.requests();
        let login = reqs
            .iter()
            .find(|r| r.path == "/session/v1/login-request")
            .unwrap();
        let data = &login.json().unwrap()["data"];
        assert_eq!(data["AUTHENTICATOR"], "SNOWFLAKE_JWT", "{name}: {data}");
        assert_eq!(data["LOGIN_NAME"], "ETL_SVC");
        assert!(data.get("PASSWORD").is_none(), "{name}: {data}");
        jwts.push(data["TOKEN"].as_str().unwrap().to_owned());
        assert_eq!(
            fake.jwt_checks().0.len(),
            verified_before + 1,
            "{name}: the JWT verified against ETL_SVC's public key"
        );
        assert!(
            reqs.iter().any(|r| r.path == "/session/token-request"),
            "{name}: no renewal reached Snowflake"
        );
        assert!(
            reqs.iter().any(|r| r.path == "/session"
                && r.query.as_deref().unwrap_or("").contains("delete=true")),
            "{name}: no logout reached Snowflake"
        );
        for r in &reqs {
            let seen = format!(
                "{} {:?} {:?} {}",
                r.path,
                r.query,
                r.headers,
                String::from_utf8_lossy(&r.body)
            );
            assert!(!seen.contains(PLACEHOLDER_PW), "{name}: {seen}");
            assert!(!seen.contains(HANDLE_PREFIX), "{name}: {seen}");
        }
        let rows = |sql: &str| {
            lines
                .iter()
                .find(|l| l["step"] == "statement" && l["sql"] == sql)
                .and_then(|l| l["rows"].as_array())
                .map(Vec::len)
        };
        assert_eq!(rows(SLOW), Some(1), "{name}: {lines:#?}");
        assert_eq!(rows(CHUNKED), Some(3000), "{name}");
        assert!(
            reqs.iter()
                .any(|r| r.host.starts_with(STORAGE_HOST)
                    && r.path.starts_with("/fake-stage-results/")),
            "{name}: no chunk download"
        );
        assert!(
            reqs.iter()
                .any(|r| r.method == "GET" && r.path.ends_with("/result")),
            "{name}: no result poll"
        );
        let fake_sqls = fake.sql_texts();
        assert!(
            fake_sqls.iter().any(|s| s == "select 3 as three"),
            "{fake_sqls:?}"
        );
    }

    // The audit: brokered logins as ETL_SVC, the placeholder named in the detail; the session's
    // statements flagged brokered; and no secret anywhere.
    let logins: Vec<Value> = snowtrail_tests::wait_for(Duration::from_secs(20), || {
        let l: Vec<Value> = d
            .events()
            .into_iter()
            .filter(|e| e["event_kind"] == "login" && e["workload_identity"] == "etl-brokered")
            .collect();
        (l.len() == 2).then_some(l)
    })
    .unwrap_or_else(|| panic!("two brokered logins: {:#?}", d.events()));
    for login in &logins {
        assert_eq!(login["brokered"], true, "{login}");
        assert_eq!(login["success"], true, "{login}");
        assert_eq!(login["login_user"], "ETL_SVC");
        assert_eq!(login["authenticator"], "SNOWFLAKE_JWT");
        assert!(
            login["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(PLACEHOLDER_USER),
            "{login}"
        );
        let q = d
            .wait_event(|e| {
                e["event_kind"] == "query"
                    && e["session_id"] == login["session_id"]
                    && e["sql_text"] == "select 3 as three"
            })
            .unwrap();
        assert_eq!(q["brokered"], true, "{q}");
        assert_eq!(q["success"], true, "{q}");
        d.wait_event(|e| e["event_kind"] == "logout" && e["session_id"] == login["session_id"])
            .unwrap();
    }

    // A handle replayed from another run (another cgroup) is refused and never forwarded; from
    // outside any enrolled cgroup it reaches Snowflake, which does not know it.
    let lines = run(
        &d,
        &hosts,
        Driver::Py5,
        "etl-brokered",
        &["--show-tokens", "--keep-session", "select 1"],
    );
    let handle = lines
        .iter()
        .find(|l| l["step"] == "tokens")
        .and_then(|l| l["token"].as_str())
        .unwrap_or_else(|| panic!("{lines:#?}"))
        .to_owned();
    assert!(handle.starts_with(HANDLE_PREFIX));
    fake.clear_requests();
    let mut replay = drivers::with_hosts(
        &hosts,
        &drivers::py5().unwrap(),
        &["-c".to_owned(), REPLAY.to_owned()],
    );
    replay.env("REPLAY_TOKEN", &handle);
    let out = d.exec_command("etl-brokered", &replay).output().unwrap();
    let answer = replay_answer(&out);
    assert_eq!(answer["success"], false, "{answer}");
    assert_eq!(answer["code"], "390111", "{answer}");
    assert!(
        fake.requests().is_empty(),
        "a foreign handle reached Snowflake: {:?}",
        fake.requests()
    );
    let denial = d
        .wait_event(|e| e["event_kind"] == "denial" && e["detail"] == "foreign_handle")
        .unwrap();
    assert_eq!(denial["workload_identity"], "etl-brokered");
    let mut direct = drivers::with_hosts(
        &hosts,
        &drivers::py5().unwrap(),
        &["-c".to_owned(), REPLAY.to_owned()],
    );
    direct.env("REPLAY_TOKEN", &handle);
    drivers::trust_only(&mut direct, Driver::Py5, fake.ca_pem_path());
    let answer = replay_answer(&direct.output().unwrap());
    assert_eq!(answer["code"], "390111", "{answer}");
    assert_eq!(
        fake.sql_texts(),
        vec!["select 4242 as replayed".to_owned()],
        "the direct replay reached Snowflake (and was refused there)"
    );

    // Broken keys: the driver's normal authentication error, a failed login in the audit, and
    // nothing sent upstream. A key Snowflake does not know: Snowflake refuses the JWT.
    for (identity, says, upstream) in [
        ("etl-open-key", "open to other users", false),
        ("etl-garbage-key", "PKCS#8", false),
        ("etl-unknown-key", "JWT token is invalid", true),
    ] {
        fake.clear_requests();
        let refused_before = fake.jwt_checks().1.len();
        let lines = run(&d, &hosts, Driver::Py5, identity, &["select 1"]);
        let connect = lines.iter().find(|l| l["step"] == "connect").unwrap();
        assert_eq!(connect["ok"], false, "{identity}: {lines:#?}");
        assert_eq!(connect["error"]["errno"], 390144, "{identity}: {connect}");
        assert_eq!(
            connect["error"]["type"], "DatabaseError",
            "{identity}: {connect}"
        );
        let msg = connect["error"]["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{identity}: {msg}");
        let logins = fake
            .requests()
            .iter()
            .filter(|r| r.path == "/session/v1/login-request")
            .count();
        assert_eq!(logins, usize::from(upstream), "{identity}");
        assert_eq!(
            fake.jwt_checks().1.len(),
            refused_before + usize::from(upstream),
            "{identity}"
        );
        let e = d
            .wait_event(|e| e["event_kind"] == "login" && e["workload_identity"] == identity)
            .unwrap();
        assert_eq!(e["success"], false, "{e}");
        assert_eq!(e["brokered"], true, "{e}");
        assert_eq!(e["error_code"], "390144", "{e}");
        assert_eq!(e["login_user"], "ETL_SVC", "{e}");
        assert!(!e["error_message"].is_null(), "{e}");
    }
    let open_login = d
        .wait_event(|e| e["event_kind"] == "login" && e["workload_identity"] == "etl-open-key")
        .unwrap();
    assert!(
        open_login["error_message"]
            .as_str()
            .unwrap_or_default()
            .contains("open.p8"),
        "the audit names the key file: {open_login}"
    );

    // No password, key, JWT or Snowflake token in the audit or the daemon's log.
    let everything = format!(
        "{}\n{}",
        serde_json::to_string(&d.events()).unwrap(),
        d.logs()
    );
    let around = |needle: &str| {
        everything.find(needle).map(|i| {
            let lo = everything.floor_char_boundary(i.saturating_sub(300));
            let hi = everything.ceil_char_boundary((i + 300).min(everything.len()));
            everything[lo..hi].to_owned()
        })
    };
    assert!(!everything.contains(PLACEHOLDER_PW));
    assert!(!everything.contains("PRIVATE KEY"));
    for jwt in &jwts {
        assert!(!everything.contains(jwt.as_str()), "a JWT was recorded");
    }
    for t in fake.issued_tokens() {
        assert!(!everything.contains(&t), "a Snowflake token was recorded");
    }
    assert_eq!(around(&handle), None, "a handle was recorded");

    // A brokered session cannot turn the agent's key into a credential of its own: statements
    // that set a key, a password or a token are denied and never reach Snowflake.
    let mint = "alter user etl_svc set rsa_public_key_2 = 'MIIBIjANBgkq'";
    let lines = run(&d, &hosts, Driver::Py5, "etl-brokered", &[mint]);
    let line = lines
        .iter()
        .find(|l| l["step"] == "statement" && l["sql"] == mint)
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(
        line["error"]["msg"]
            .as_str()
            .is_some_and(|e| e.contains("brokered-credentials")),
        "{line}"
    );
    assert!(
        !fake
            .sql_texts()
            .iter()
            .any(|s| s.contains("rsa_public_key_2")),
        "the upstream received {:?}",
        fake.sql_texts()
    );
}
