//! The proxy's layers, checked on its source: the transport (`src/proxy/transport/`) refers to
//! nothing of the Snowflake-aware layer above it, nor to the protocol, policy, broker or
//! recording modules of the crate; the Snowflake-aware layer's state (`exchange/state/`) calls no
//! handler; the hold registry does not call the statement handler back; and nothing in
//! `src/proxy/` refers to the control socket (`crate::control`), which sits above the proxy.
//!
//! Run it with `cargo test -p snowtrail --test layers`.

use std::path::{Path, PathBuf};

/// Modules of the crate the transport must not refer to.
const NOT_IN_TRANSPORT: &[&str] = &["snowflake", "policy", "enforce", "broker", "recording"];

/// One rule: files whose path (relative to `src/proxy/`) starts with `scope` must not refer to
/// any of `paths` (a path such as `crate::snowflake` or `super::exchange`).
struct Rule {
    scope: &'static str,
    forbidden: Vec<String>,
    why: &'static str,
}

fn rules() -> Vec<Rule> {
    let mut transport: Vec<String> = NOT_IN_TRANSPORT
        .iter()
        .map(|m| format!("crate::{m}"))
        .collect();
    transport.extend(
        [
            "crate::proxy::exchange",
            "proxy::exchange",
            "super::exchange",
            "super::super::exchange",
        ]
        .map(String::from),
    );
    vec![
        Rule {
            scope: "transport/",
            forbidden: transport,
            why: "the transport knows nothing of Snowflake nor of the layer above it",
        },
        Rule {
            scope: "exchange/state/",
            forbidden: [
                "super::super",
                "crate::proxy::exchange::context",
                "crate::proxy::exchange::router",
                "crate::proxy::exchange::statement",
                "crate::proxy::exchange::login",
                "crate::proxy::exchange::holds",
                "crate::proxy::exchange::masking",
                "crate::proxy::exchange::recording_tee",
                "crate::proxy::exchange::transfers",
                "crate::proxy::exchange::tagging",
                "crate::proxy::exchange::brokering",
                "crate::proxy::exchange::gate",
            ]
            .map(String::from)
            .to_vec(),
            why: "state owns its types and calls no handler",
        },
        Rule {
            scope: "exchange/holds.rs",
            forbidden: ["statement::"].map(String::from).to_vec(),
            why: "holds return an outcome to the statement handler instead of calling it",
        },
        Rule {
            scope: "",
            forbidden: ["crate::control", "super::control", "super::super::control"]
                .map(String::from)
                .to_vec(),
            why: "the control socket sits above the proxy",
        },
    ]
}

/// The code of a source file with its comments removed (doc comments may name anything).
fn code_of(source: &str) -> String {
    let mut out = String::new();
    for line in source.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        // A trailing comment; `://` (a URL in a string) is not one.
        let mut end = line.len();
        let bytes = line.as_bytes();
        let mut i = 0;
        while i + 1 < bytes.len() {
            if bytes[i] == b'/' && bytes[i + 1] == b'/' && (i == 0 || bytes[i - 1] != b':') {
                end = i;
                break;
            }
            i += 1;
        }
        out.push_str(&line[..end]);
        out.push('\n');
    }
    out
}

/// Every path the code names, with `use a::{b, c::{d}}` groups spelled out as `a::b`, `a::c::d`.
fn paths_in(code: &str) -> Vec<String> {
    // One space between words, none around `::` and group punctuation: a group split over
    // lines reads as one path.
    let mut flat = code.split_whitespace().collect::<Vec<_>>().join(" ");
    for (from, to) in [
        (" ::", "::"),
        (":: ", "::"),
        (" {", "{"),
        ("{ ", "{"),
        (" }", "}"),
        (", ", ","),
        (" ,", ","),
    ] {
        while flat.contains(from) {
            flat = flat.replace(from, to);
        }
    }
    let mut out = Vec::new();
    let bytes = flat.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_ident = (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_')
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts_ident {
            let (paths, next) = path_at(&flat, i, "");
            out.extend(paths);
            i = next.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// The paths starting at `at` (`prefix` is the group's path so far); returns them and where
/// the path ended.
fn path_at(s: &str, at: usize, prefix: &str) -> (Vec<String>, usize) {
    let bytes = s.as_bytes();
    let mut i = at;
    let mut path = prefix.to_owned();
    loop {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        path.push_str(&s[start..i]);
        if s[i..].starts_with("::{") {
            path.push_str("::");
            i += 3;
            let mut out = Vec::new();
            loop {
                if i >= bytes.len() {
                    return (out, i);
                }
                match bytes[i] {
                    b'}' => return (out, i + 1),
                    b',' => i += 1,
                    _ => {
                        let (inner, next) = path_at(s, i, &path);
                        out.extend(inner);
                        i = if next > i { next } else { i + 1 };
                    }
                }
            }
        }
        if s[i..].starts_with("::") {
            path.push_str("::");
            i += 2;
            continue;
        }
        return (vec![path], i);
    }
}

/// Whether `path` is `forbidden` or inside it.
fn names(path: &str, forbidden: &str) -> bool {
    if forbidden.ends_with("::") {
        return path.contains(forbidden);
    }
    path == forbidden
        || path.starts_with(&format!("{forbidden}::"))
        || path.contains(&format!("::{forbidden}::"))
        || path.ends_with(&format!("::{forbidden}"))
}

/// What `source`, the file at `rel` under `src/proxy/`, breaks.
fn violations_in(rel: &str, source: &str) -> Vec<String> {
    let paths = paths_in(&code_of(source));
    let mut out = Vec::new();
    for rule in rules() {
        if !rel.starts_with(rule.scope) {
            continue;
        }
        for p in &paths {
            if rule.forbidden.iter().any(|f| names(p, f)) {
                out.push(format!("{rel}: refers to `{p}`: {}", rule.why));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_proxy_layers_import_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proxy");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("transport/listener.rs")),
        "the transport layer is where this check looks for it"
    );
    let mut found = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .expect("under src/proxy")
            .to_string_lossy()
            .replace('\\', "/");
        let source = std::fs::read_to_string(f).expect("readable source file");
        found.extend(violations_in(&rel, &source));
    }
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
}

#[test]
fn a_violation_is_found_however_it_is_written() {
    let direct = "use crate::snowflake::Endpoint;\n";
    assert_eq!(violations_in("transport/tls.rs", direct).len(), 1);
    let grouped = "use crate::{\n    audit::Event,\n    broker::Owner,\n};\n";
    assert_eq!(violations_in("transport/listener.rs", grouped).len(), 1);
    let inline = "let x = super::super::exchange::context::reply(r);\n";
    assert_eq!(violations_in("transport/pool.rs", inline).len(), 1);
    let control = "fn f(h: &crate::control::HoldInfo) {}\n";
    assert_eq!(violations_in("exchange/holds.rs", control).len(), 1);
    let upward = "use super::super::statement::query;\n";
    assert!(!violations_in("exchange/state/chunks.rs", upward).is_empty());
    let callback = "return super::statement::query(req, id, ctx, send).await;\n";
    assert_eq!(violations_in("exchange/holds.rs", callback).len(), 1);
    // Comments and the layer's own modules are not violations.
    let fine = "//! Unlike crate::snowflake, this is bytes.\nuse crate::audit::Event; // not crate::broker\nuse super::body::Body;\n";
    assert!(violations_in("transport/tls.rs", fine).is_empty());
    assert!(violations_in("exchange/router.rs", "use crate::snowflake::Endpoint;\n").is_empty());
}
