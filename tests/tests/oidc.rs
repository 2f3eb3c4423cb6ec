//! Human identity end to end: the Python connector logs in with `authenticator="oauth"` and a JWT
//! from a test issuer (its JWKS in a file), under `snowtrail exec`, through the agent to the fake
//! Snowflake. A valid token names the human on the login and on every statement; an expired token
//! under a `deny` rule gets the driver's normal authentication error and never reaches Snowflake;
//! under `allow_flag` it works, flagged `identity_unverified`. Root only.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use snowtrail_tests::fake_snowflake::drivers::{self, Driver};
use snowtrail_tests::fake_snowflake::{FakeOptions, FakeSnowflake};
use snowtrail_tests::{Daemon, DaemonOptions, unique_port};

const PORT_BASE: u16 = 29_940;
const ACCOUNT_HOST: &str = "xy12345.snowflakecomputing.com";
const ISS: &str = "https://idp.oidc.test";
const AUD: &str = "snowflake";

struct Issuer {
    key: rcgen::KeyPair,
}

impl Issuer {
    fn jwks(&self) -> String {
        let raw = self.key.public_key_raw();
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "test-1",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
        }]})
        .to_string()
    }

    fn token(&self, exp_from_now: i64) -> String {
        let now = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        let claims = json!({
            "iss": ISS, "aud": AUD, "sub": "00u-ada", "email": "ada@example.com",
            "groups": ["analysts", "finance"], "iat": now - 7200, "exp": now + exp_from_now,
        });
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("test-1".into());
        let key = jsonwebtoken::EncodingKey::from_ec_der(&self.key.serialize_der());
        jsonwebtoken::encode(&h, &claims, &key).unwrap()
    }
}

/// Runs the connector under `snowtrail exec --identity <identity>` with an OAuth token and
/// returns its step lines.
fn run(d: &Daemon, hosts: &Path, identity: &str, token: &str, sql: &str) -> Vec<Value> {
    let args: Vec<String> = [
        "--host",
        ACCOUNT_HOST,
        "--authenticator",
        "oauth",
        "--token",
        token,
        sql,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let inner =
        drivers::session_command(Driver::Py5, hosts, Path::new("/nonexistent"), &args).unwrap();
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

#[test]
fn oauth_logins_carry_the_verified_human_or_are_refused() {
    let dir = tempfile::Builder::new()
        .prefix("snowtrail-oidc-")
        .tempdir()
        .unwrap();
    let issuer = Issuer {
        key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
    };
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, issuer.jwks()).unwrap();
    let fake = FakeSnowflake::start(FakeOptions {
        addr: SocketAddr::from(([127, 78, 2, 1], 443)),
        tls: true,
        hosts: vec![ACCOUNT_HOST.to_owned()],
        ca_dir: dir.path().join("fake-ca"),
        ..FakeOptions::default()
    })
    .unwrap();
    let opts = DaemonOptions {
        extra_top: format!(
            "[tls]\nupstream_extra_roots = [{ca:?}]\n\
             [oidc]\non_invalid = \"allow_flag\"\n\
             [[oidc.issuers]]\nissuer = {ISS:?}\naudiences = [{AUD:?}]\njwks_file = {jwks:?}\n\
             [[oidc.require]]\nidentity = \"etl-*\"\non_invalid = \"deny\"\n",
            ca = fake.ca_pem_path().display().to_string(),
            jwks = jwks.display().to_string(),
        ),
        ..DaemonOptions::default()
    };
    let d = Daemon::start("oidc", unique_port(PORT_BASE), &opts).unwrap();
    let hosts = drivers::write_hosts_file(dir.path(), fake.addr().ip(), &[ACCOUNT_HOST]).unwrap();
    let oauth_logins = |fake: &FakeSnowflake| {
        fake.requests()
            .iter()
            .filter(|r| r.path == "/session/v1/login-request")
            .count()
    };

    // A valid token: the human is on the login and on the statement.
    let lines = run(&d, &hosts, "etl-nightly", &issuer.token(600), "select 1");
    assert!(
        lines.iter().all(|l| l["error"].is_null()),
        "{lines:#?}\n{}",
        d.logs()
    );
    let login = d
        .wait_event(|e| e["event_kind"] == "login" && e["workload_identity"] == "etl-nightly")
        .unwrap();
    assert_eq!(login["human_identity"], "ada@example.com", "{login}");
    assert_eq!(login["human_groups"], json!(["analysts", "finance"]));
    assert_eq!(login["flags"], json!([]));
    let q = d
        .wait_event(|e| e["event_kind"] == "query" && e["session_id"] == login["session_id"])
        .unwrap();
    assert_eq!(q["human_identity"], "ada@example.com", "{q}");
    assert_eq!(q["human_groups"], json!(["analysts", "finance"]));
    assert_eq!(oauth_logins(&fake), 1);

    // An expired token under the deny rule: the driver's normal authentication error, a denial
    // naming the reason, and nothing reached Snowflake.
    let expired = issuer.token(-3600);
    let lines = run(&d, &hosts, "etl-nightly", &expired, "select 2");
    let connect = lines.iter().find(|l| l["step"] == "connect").unwrap();
    assert_eq!(connect["ok"], false, "{lines:#?}");
    assert_eq!(connect["error"]["errno"], 390303, "{connect}");
    assert_eq!(connect["error"]["type"], "DatabaseError", "{connect}");
    let msg = connect["error"]["msg"].as_str().unwrap();
    assert!(
        msg.contains("snowtrail refused the login") && msg.contains("expired"),
        "{msg}"
    );
    assert!(!msg.contains(&expired));
    let denial = d
        .wait_event(|e| e["event_kind"] == "denial" && e["workload_identity"] == "etl-nightly")
        .unwrap();
    assert_eq!(denial["detail"], "oidc_expired", "{denial}");
    assert_eq!(denial["authenticator"], "OAUTH");
    assert_eq!(
        oauth_logins(&fake),
        1,
        "the refused login never went upstream"
    );

    // The same token for a workload under the default allow_flag: it works, flagged.
    let lines = run(&d, &hosts, "bi-report", &expired, "select 3");
    assert!(
        lines.iter().all(|l| l["error"].is_null()),
        "{lines:#?}\n{}",
        d.logs()
    );
    let login = d
        .wait_event(|e| e["event_kind"] == "login" && e["workload_identity"] == "bi-report")
        .unwrap();
    assert_eq!(login["flags"], json!(["identity_unverified"]), "{login}");
    assert!(login["human_identity"].is_null());
    let q = d
        .wait_event(|e| e["event_kind"] == "query" && e["session_id"] == login["session_id"])
        .unwrap();
    assert_eq!(q["flags"], json!(["identity_unverified"]), "{q}");
    assert_eq!(oauth_logins(&fake), 2);

    // The token is nowhere in the audit.
    let all = serde_json::to_string(&d.events()).unwrap();
    assert!(!all.contains(&expired));
}
