//! Which names are secrets: the one table the agent consults wherever a value is kept or dropped
//! by the name it comes under (SQL options, login fields, session parameters, command-line flags
//! and `NAME=value` arguments).
//!
//! A name marks its value as a secret when, read without surrounding `"`, leading `$` or `-`,
//! upper-cased and with `-` read as `_`, it
//! - contains one of [`SECRET_WORDS`] (`PASSWORD`, `PASSWD`, `PASSCODE`, `PASSPHRASE`, `SECRET`,
//!   `TOKEN`, `CREDENTIAL`): `AWS_SECRET_KEY`, `AZURE_SAS_TOKEN`, `PRIVATE_KEY_PASSPHRASE`,
//!   `CREDENTIALS`;
//! - or has one of [`SECRET_PARTS`] (`KEY`, `KEYS`, `PASS`, `PWD`) as a `_`-separated part, or
//!   ends with `KEY`: `API_KEY`, `APIKEY`, `MASTER_KEY`, `PRIVATE_KEY_PATH`, `KEYSTORE_PASS`.
//!   A public key (`RSA_PUBLIC_KEY`, `RSA_PUBLIC_KEY_2`) or a key id (`AWS_KEY_ID`, `KMS_KEY_ID`)
//!   names an identifier, not a secret, so this rule leaves them out (a secret word still counts);
//! - or is one of the login body's secret fields, [`LOGIN_SECRET_FIELDS`] (`RAW_SAML_RESPONSE`).
//!
//! Where a value is kept whole under its name alone (a session parameter, a command-line flag or
//! `NAME=value` argument), [`hides_value`] also hides every name that mentions a key other than a
//! public key (`KEYFILE`, `KMS_KEY_ID`): only SQL, where the literal after a key id says which key
//! encrypted a stage, needs the finer rule.
//!
//! Near misses stay readable (`KEYWORD`, `KEYFILE`, `PASSENGER`, `BYPASS`), while a secret word
//! inside a longer one still counts (`TOKENIZE`): the table errs on the side of hiding.
//!
//! What it does not do: find secrets in values (SQL redaction in `redact` decides which literal a
//! name governs), or read anything (no I/O).

use serde_json::{Map, Value};

/// Words that make any name containing them a secret.
pub const SECRET_WORDS: [&str; 7] = [
    "PASSWORD",
    "PASSWD",
    "PASSCODE",
    "PASSPHRASE",
    "SECRET",
    "TOKEN",
    "CREDENTIAL",
];

/// Parts that make a name a secret when they stand alone between `_` (`API_KEY`, `DB_PWD`).
pub const SECRET_PARTS: [&str; 4] = ["KEY", "KEYS", "PASS", "PWD"];

/// Keys of a login request's `data` object that carry the workload's credentials.
pub const LOGIN_SECRET_FIELDS: [&str; 6] = [
    "PASSWORD",
    "TOKEN",
    "PASSCODE",
    "PRIVATE_KEY",
    "RAW_SAML_RESPONSE",
    "PROOF_KEY",
];

/// What replaces a secret value that is kept by name (session parameters, command lines).
pub const MASK: &str = "***";

/// The short flag whose next argument is a password in snowsql and most database clients.
const SHORT_PASSWORD_FLAG: &str = "-p";

/// True when a name (SQL option or parameter, login field, session parameter, command-line flag
/// or variable) marks its value as a secret.
pub fn is_secret_name(name: &str) -> bool {
    let n = name
        .trim_matches('"')
        .trim_start_matches(['$', '-'])
        .to_ascii_uppercase()
        .replace('-', "_");
    if SECRET_WORDS.iter().any(|w| n.contains(w)) || LOGIN_SECRET_FIELDS.contains(&n.as_str()) {
        return true;
    }
    if n.contains("PUBLIC_KEY") || n.ends_with("KEY_ID") {
        return false;
    }
    n.ends_with("KEY") || n.split('_').any(|part| SECRET_PARTS.contains(&part))
}

/// True when a value kept whole under this name alone (a session parameter, a command-line flag
/// or variable) is hidden: a secret name, or any name that mentions a key other than a public key.
pub fn hides_value(name: &str) -> bool {
    let n = name.to_ascii_uppercase().replace('-', "_");
    is_secret_name(name) || (n.contains("KEY") && !n.contains("PUBLIC_KEY"))
}

/// Session parameters as the audit keeps them: the value of every parameter [`hides_value`]
/// names is replaced by [`MASK`] unless it is a boolean or null; the others are kept as sent,
/// and an object or a list among them is read the same way all the way down (a secret-named key
/// nested under an innocent one is hidden too).
pub fn mask_secret_values(params: &Map<String, Value>) -> Map<String, Value> {
    params
        .iter()
        .map(|(k, v)| (k.clone(), mask_value(k, v)))
        .collect()
}

/// `v`, found under the name `name`, as the audit keeps it.
fn mask_value(name: &str, v: &Value) -> Value {
    // A flag under a secret-sounding name (`CLIENT_STORE_TEMPORARY_CREDENTIAL: false`) carries
    // no secret and says how the session behaves: it is kept. A number may be a passcode: it is
    // hidden like a string, and so is a whole object or list under a secret name.
    let carries_secret = !matches!(v, Value::Bool(_) | Value::Null);
    if carries_secret && hides_value(name) {
        return Value::String(MASK.to_owned());
    }
    match v {
        Value::Object(m) => Value::Object(mask_secret_values(m)),
        Value::Array(items) => Value::Array(items.iter().map(|x| mask_value(name, x)).collect()),
        other => other.clone(),
    }
}

/// A command line's arguments with secret values replaced by [`MASK`]: `--password X`,
/// `--password=X`, `PASSWORD=X`, and `-p X` (the short password flag of snowsql and most
/// database clients).
pub fn hide_secret_args(args: &[&str]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push(MASK.to_owned());
            hide_next = false;
            continue;
        }
        match a.split_once('=') {
            Some((name, _)) if hides_value(name) => out.push(format!("{name}={MASK}")),
            _ => {
                hide_next = (a.starts_with('-') && hides_value(a)) || *a == SHORT_PASSWORD_FLAG;
                out.push((*a).to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for secret in [
            // Passwords and their spellings.
            "PASSWORD",
            "password",
            "\"PASSWORD\"",
            "$password",
            "MUST_CHANGE_PASSWORD",
            "SNOWFLAKE_PASSWORD",
            "PASSWD",
            "DB_PASS",
            "KEYSTORE_PASS",
            "DB_PWD",
            "PWD",
            // MFA, passphrases, credentials.
            "PASSCODE",
            "MFA_PASSCODE",
            "PRIVATE_KEY_PASSPHRASE",
            "PASSPHRASE",
            "CREDENTIAL",
            "CREDENTIALS",
            "CLIENT_STORE_TEMPORARY_CREDENTIAL",
            // Tokens.
            "TOKEN",
            "AWS_TOKEN",
            "AZURE_SAS_TOKEN",
            "OAUTH_REFRESH_TOKEN",
            "CLIENT_REQUEST_MFA_TOKEN",
            "Sso_Token",
            // Secrets and keys.
            "SECRET",
            "AWS_SECRET_KEY",
            "SECRET_STRING",
            "OAUTH_CLIENT_SECRET",
            "API_KEY",
            "my_api_key",
            "APIKEY",
            "MASTER_KEY",
            "PRIVATE_KEY",
            "PROOF_KEY",
            "SSH_KEYS",
            "RAW_SAML_RESPONSE",
            // A public key or key id that also says secret is a secret.
            "RSA_PUBLIC_KEY_PASSWORD",
            "SECRET_KEY_ID",
            // Command-line spellings.
            "--password",
            "--api-token",
            "--private-key-path",
            "--private_key_file",
            "-key",
        ] {
            assert!(is_secret_name(secret), "{secret} is a secret");
        }
    }

    #[test]
    fn near_misses_are_not_secrets() {
        for public in [
            "RSA_PUBLIC_KEY",
            "RSA_PUBLIC_KEY_2",
            "--rsa-public-key",
            "AWS_KEY_ID",
            "KMS_KEY_ID",
            "--key-id",
            "KEYWORD",
            "KEYFILE",
            "PASSENGER",
            "PASSING",
            "BYPASS",
            "COMMENT",
            "URL",
            "TYPE",
            "QUERY_TAG",
            "CLIENT_SESSION_KEEP_ALIVE",
            "ACCOUNT_NAME",
            "LOGIN_NAME",
            "AUTHENTICATOR",
            "--user",
            "",
        ] {
            assert!(!is_secret_name(public), "{public} is not a secret");
        }
    }

    #[test]
    fn values_kept_by_name_alone_hide_every_key_but_public_ones() {
        for hidden in [
            "KEYFILE",
            "--keyfile",
            "KMS_KEY_ID",
            "--key-id",
            "AWS_ACCESS_KEY_ID",
            "KEYWORD",
            "PASSWORD",
            "Sso_Token",
            "PRIVATE_KEY_PASSPHRASE",
        ] {
            assert!(hides_value(hidden), "{hidden} is hidden");
        }
        for kept in [
            "RSA_PUBLIC_KEY",
            "--rsa-public-key",
            "QUERY_TAG",
            "CLIENT_SESSION_KEEP_ALIVE",
            "--user",
            "PASSENGER",
        ] {
            assert!(!hides_value(kept), "{kept} is kept");
        }
    }

    #[test]
    fn every_login_secret_field_is_a_secret_name() {
        for f in LOGIN_SECRET_FIELDS {
            assert!(is_secret_name(f), "{f}");
        }
    }

    #[test]
    fn a_secret_nested_under_an_innocent_name_is_hidden_too() {
        let params: Map<String, Value> = serde_json::from_str(
            r#"{"OUTER": {"INNER_TOKEN": "n-clear-7", "LIST": [{"PASSWORD": "n-clear-8"}],
                "KEEP": "ok", "FLAG_SECRET": true}, "API_KEY": {"a": "n-clear-9"}}"#,
        )
        .unwrap();
        let kept = mask_secret_values(&params);
        let text = serde_json::to_string(&kept).unwrap();
        assert!(!text.contains("-clear-"), "{text}");
        assert_eq!(kept["OUTER"]["KEEP"], "ok");
        assert_eq!(kept["OUTER"]["INNER_TOKEN"], MASK);
        assert_eq!(kept["OUTER"]["LIST"][0]["PASSWORD"], MASK);
        assert_eq!(kept["OUTER"]["FLAG_SECRET"], true, "a flag is no secret");
        assert_eq!(
            kept["API_KEY"], MASK,
            "a whole object under a secret name is hidden"
        );
    }

    #[test]
    fn session_parameters_keep_only_what_is_not_secret() {
        let params: Map<String, Value> = serde_json::from_str(
            r#"{"QUERY_TAG":"etl","CLIENT_SESSION_KEEP_ALIVE":true,"my_api_key":"k","Sso_Token":"t",
                "PRIVATE_KEY_PASSPHRASE":"pp","MFA_PASSCODE":123456,"CLIENT_STORE_TEMPORARY_CREDENTIAL":false,
                "ROWS_PER_RESULTSET":0,"KMS_KEY_ID":"k1"}"#,
        )
        .unwrap();
        let kept = mask_secret_values(&params);
        assert_eq!(kept.len(), params.len());
        assert_eq!(kept["QUERY_TAG"], "etl");
        assert_eq!(kept["CLIENT_SESSION_KEEP_ALIVE"], true);
        assert_eq!(kept["ROWS_PER_RESULTSET"], 0);
        assert_eq!(
            kept["CLIENT_STORE_TEMPORARY_CREDENTIAL"], false,
            "a flag is no secret"
        );
        for k in [
            "my_api_key",
            "Sso_Token",
            "PRIVATE_KEY_PASSPHRASE",
            "MFA_PASSCODE",
            "KMS_KEY_ID",
        ] {
            assert_eq!(kept[k], MASK, "{k}");
        }
    }

    #[test]
    fn command_line_secrets_are_hidden() {
        let args = [
            "python",
            "load.py",
            "--password",
            "hunter2",
            "--api-token=abc",
            "SNOWFLAKE_PASSWORD=x",
            "-p",
            "pw",
            "--rsa-public-key",
            "pub",
            "--private-key-passphrase",
            "pp",
            "--keystore-pass",
            "ks",
            "--key-id",
            "id-1",
            "--user",
            "bob",
            "--query=select 1",
        ];
        assert_eq!(
            hide_secret_args(&args).join(" "),
            "python load.py --password *** --api-token=*** SNOWFLAKE_PASSWORD=*** -p *** \
             --rsa-public-key pub --private-key-passphrase *** --keystore-pass *** \
             --key-id *** --user bob --query=select 1"
        );
        // A secret flag as the last argument hides nothing more, and nothing is lost.
        assert_eq!(hide_secret_args(&["x", "--password"]), ["x", "--password"]);
    }
}
