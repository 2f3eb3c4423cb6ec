//! Statement round trips: a small `query-request` (`select 1`) against the fake Snowflake, direct
//! and through snowtrail, nginx and mitmproxy, at several numbers of closed-loop clients, over
//! HTTP/1.1 and h2.
//!
//! - direct: loadgen to the fake over TLS.
//! - snowtrail: a daemon of the bench's own (audit on; once with the default
//!   `durability = "before_forward"`, once with `"async"`); loadgen runs under `snowtrail exec`,
//!   connects to the account's host name on port 443 (resolved through a private mount
//!   namespace's `/etc/hosts`) and is redirected by the kernel and intercepted; it trusts the
//!   agent's CA.
//! - nginx: TLS-terminating, re-encrypting reverse proxy (upstream keep-alive, upstream certificate
//!   verified) with as many worker processes as the daemon has runtime worker threads (tokio's
//!   default: one per core).
//! - mitmproxy: `mitmdump` in reverse mode, the upstream verified against the fake's CA.
//!
//! The fake runs with `--lean` (no request log) so its own bookkeeping does not cap the direct
//! figure. Each combination runs every target back to back, so drift on a shared machine hits them
//! alike; the table gives throughput, the p50/p99 latency added over direct, and throughput ratios.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use super::procs::{Daemon, DaemonSpec, Proc, hosts_file, lean_fake, wait_listening, with_hosts};
use super::{Ctx, Row, build_bin, capture, last_json, num};
use crate::util::step;

const SECTION: &str = "roundtrip";
/// The account host name loadgen speaks to.
const HOST: &str = "xy12345.snowflakecomputing.com";
/// Where the fake listens (port 443: the port the daemon redirects).
const FAKE_IP: &str = "127.0.0.61";
const NGINX_PORT: u16 = 18_441;
const MITM_PORT: u16 = 18_442;
const DURABLE_LISTEN_PORT: u16 = 18_943;
const ASYNC_LISTEN_PORT: u16 = 18_944;

/// One way to reach the fake.
struct Target {
    /// Its name in the table.
    name: &'static str,
    /// How to run loadgen against it (`loadgen http` arguments are appended).
    how: How,
}

enum How {
    /// loadgen as is, to this address, trusting this CA.
    Plain { connect: String, ca: PathBuf },
    /// loadgen under `snowtrail exec` of this daemon, with the hosts file.
    Enrolled { daemon: Daemon, hosts: PathBuf },
}

/// The nginx configuration of the reverse proxy.
pub struct NginxConf<'a> {
    /// The prefix directory (pid, logs, temp files).
    pub dir: &'a Path,
    /// Where it listens (TLS, h2 and HTTP/1.1).
    pub listen: SocketAddr,
    /// The upstream (the fake).
    pub upstream: SocketAddr,
    /// Server name, and the name verified upstream.
    pub host: &'a str,
    /// Worker processes.
    pub workers: usize,
    /// Certificate chain and key it serves.
    pub cert: &'a Path,
    /// Its key.
    pub key: &'a Path,
    /// The CA the upstream's certificate is verified against.
    pub upstream_ca: &'a Path,
    /// nginx 1.25.1 and later spell h2 `http2 on;`; earlier ones `listen ... http2`.
    pub http2_directive: bool,
}

/// nginx.conf for [`NginxConf`].
pub fn nginx_conf(c: &NginxConf<'_>) -> String {
    let d = c.dir.display();
    let (listen_h2, http2_on) = if c.http2_directive {
        ("", "        http2 on;\n")
    } else {
        (" http2", "")
    };
    format!(
        "worker_processes {workers};\n\
         daemon off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         worker_rlimit_nofile 65536;\n\
         events {{\n    worker_connections 8192;\n}}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {d}/tmp/body;\n\
         \x20   proxy_temp_path {d}/tmp/proxy;\n\
         \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n\
         \x20   scgi_temp_path {d}/tmp/scgi;\n\
         \x20   upstream snowflake {{\n\
         \x20       server {upstream};\n\
         \x20       keepalive 1024;\n\
         \x20       keepalive_requests 1000000;\n\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen {listen} ssl{listen_h2};\n\
         {http2_on}\
         \x20       server_name {host};\n\
         \x20       ssl_certificate {cert};\n\
         \x20       ssl_certificate_key {key};\n\
         \x20       keepalive_requests 1000000;\n\
         \x20       keepalive_timeout 300s;\n\
         \x20       location / {{\n\
         \x20           proxy_pass https://snowflake;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20           proxy_set_header Host $host;\n\
         \x20           proxy_ssl_server_name on;\n\
         \x20           proxy_ssl_name {host};\n\
         \x20           proxy_ssl_verify on;\n\
         \x20           proxy_ssl_trusted_certificate {ca};\n\
         \x20           proxy_ssl_session_reuse on;\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        workers = c.workers,
        upstream = c.upstream,
        listen = c.listen,
        host = c.host,
        cert = c.cert.display(),
        key = c.key.display(),
        ca = c.upstream_ca.display(),
    )
}

/// Whether `nginx -v` output names a version that takes `http2 on;` (1.25.1 and later).
pub fn nginx_has_http2_directive(version_text: &str) -> bool {
    let Some(v) = version_text
        .split("nginx/")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
    else {
        return false;
    };
    let parts: Vec<u32> = v.split('.').filter_map(|p| p.parse().ok()).collect();
    let (major, minor, patch) = (
        parts.first().copied().unwrap_or(0),
        parts.get(1).copied().unwrap_or(0),
        parts.get(2).copied().unwrap_or(0),
    );
    (major, minor, patch) >= (1, 25, 1)
}

/// `mitmdump` arguments for a reverse proxy on `listen` to `https://upstream`, serving `certs`
/// (key and chain in one PEM), verifying the upstream against `upstream_ca`.
pub fn mitmdump_args(
    listen: SocketAddr,
    upstream: SocketAddr,
    certs: &Path,
    upstream_ca: &Path,
    confdir: &Path,
) -> Vec<String> {
    vec![
        "--mode".into(),
        format!("reverse:https://{upstream}"),
        "--listen-host".into(),
        listen.ip().to_string(),
        "--listen-port".into(),
        listen.port().to_string(),
        "--certs".into(),
        format!("*={}", certs.display()),
        "--set".into(),
        format!("ssl_verify_upstream_trusted_ca={}", upstream_ca.display()),
        "--set".into(),
        format!("confdir={}", confdir.display()),
        "--set".into(),
        "keep_host_header=true".into(),
        "--set".into(),
        "flow_detail=0".into(),
        "--quiet".into(),
    ]
}

/// The worker threads of the daemon's runtime: tokio's multi-threaded default, one per core.
fn daemon_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs the section.
pub fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let loadgen = build_bin(ctx, "loadgen")?;
    let fake_bin = build_bin(ctx, "fake-snowflake")?;
    let snowtrail = build_bin(ctx, "snowtrail")?;
    let dir = &ctx.scratch;
    let fake_ca_dir = dir.join("fake-ca");
    let fake_addr: SocketAddr = format!("{FAKE_IP}:443").parse()?;
    let fake_ca = fake_ca_dir.join("ca.pem");

    step("the fake Snowflake (lean: no request log)");
    let _fake = lean_fake(
        &fake_bin,
        fake_addr,
        &fake_ca_dir,
        4096,
        &dir.join("fake.log"),
    )?;

    // One certificate for both reverse proxies, for the account host, from the fake's CA: loadgen
    // trusts the same CA whether it talks to the fake directly or to a proxy.
    let leaf_dir = dir.join("leaf");
    capture(
        Command::new(&loadgen)
            .args(["leaf", "--host", HOST, "--ip", "127.0.0.1", "--ca-dir"])
            .arg(&fake_ca_dir)
            .arg("--out")
            .arg(&leaf_dir),
    )?;

    let workers = daemon_worker_threads();
    step(&format!(
        "nginx: {workers} worker processes (the daemon's runtime threads)"
    ));
    let nginx_dir = dir.join("nginx");
    std::fs::create_dir_all(nginx_dir.join("tmp"))?;
    let version = Command::new("nginx")
        .arg("-v")
        .output()
        .context("nginx is missing (cargo xtask setup --bench installs it)")?;
    let nginx_listen: SocketAddr = format!("127.0.0.1:{NGINX_PORT}").parse()?;
    let conf = nginx_conf(&NginxConf {
        dir: &nginx_dir,
        listen: nginx_listen,
        upstream: fake_addr,
        host: HOST,
        workers,
        cert: &leaf_dir.join("leaf.pem"),
        key: &leaf_dir.join("leaf-key.pem"),
        upstream_ca: &fake_ca,
        http2_directive: nginx_has_http2_directive(&String::from_utf8_lossy(&version.stderr)),
    });
    let conf_path = nginx_dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut nginx = Proc::spawn(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(&nginx_dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(nginx_dir.join("error.log")),
        Some(&nginx_dir.join("stderr.log")),
    )?
    .graceful();
    let nginx_log = || std::fs::read_to_string(nginx_dir.join("error.log")).unwrap_or_default();
    wait_listening(nginx_listen, Duration::from_secs(10)).with_context(nginx_log)?;
    std::thread::sleep(Duration::from_millis(300));
    nginx.ensure_running().with_context(nginx_log)?;

    step("mitmproxy: mitmdump in reverse mode");
    let mitm_listen: SocketAddr = format!("127.0.0.1:{MITM_PORT}").parse()?;
    let mut mitm = Proc::spawn(
        "mitmdump",
        Command::new(&ctx.mitmdump).args(mitmdump_args(
            mitm_listen,
            fake_addr,
            &leaf_dir.join("leaf-combined.pem"),
            &fake_ca,
            &dir.join("mitmproxy"),
        )),
        Some(&dir.join("mitmdump.log")),
    )?;
    wait_listening(mitm_listen, Duration::from_secs(30))?;
    mitm.ensure_running()?;

    step("snowtrail: two daemons, durable-before-forward and async audit");
    let hosts = hosts_file(dir, FAKE_IP, &[HOST])?;
    let upstream_roots = format!(
        "[tls]\nupstream_extra_roots = [{:?}]\n",
        fake_ca.display().to_string()
    );
    let durable = Daemon::start(DaemonSpec {
        bin: &snowtrail,
        dir: dir.join("durable"),
        listen_port: DURABLE_LISTEN_PORT,
        extra: format!("{upstream_roots}[audit]\ndurability = \"before_forward\"\n"),
    })?;
    let asynchronous = Daemon::start(DaemonSpec {
        bin: &snowtrail,
        dir: dir.join("async"),
        listen_port: ASYNC_LISTEN_PORT,
        extra: format!("{upstream_roots}[audit]\ndurability = \"async\"\n"),
    })?;

    let direct_connect = fake_addr.to_string();
    let targets = [
        Target {
            name: "direct",
            how: How::Plain {
                connect: direct_connect,
                ca: fake_ca.clone(),
            },
        },
        Target {
            name: "snowtrail",
            how: How::Enrolled {
                daemon: durable,
                hosts: hosts.clone(),
            },
        },
        Target {
            name: "snowtrail async",
            how: How::Enrolled {
                daemon: asynchronous,
                hosts,
            },
        },
        Target {
            name: "nginx",
            how: How::Plain {
                connect: nginx_listen.to_string(),
                ca: fake_ca.clone(),
            },
        },
        Target {
            name: "mitmproxy",
            how: How::Plain {
                connect: mitm_listen.to_string(),
                ca: fake_ca.clone(),
            },
        },
    ];
    let seconds = if ctx.quick { "2" } else { "5" };
    let levels: &[usize] = &[1, 16, 256];
    let mut rows = Vec::new();
    for h2 in [false, true] {
        let proto = if h2 { "h2" } else { "h1" };
        for &clients in levels {
            let mut results: Vec<(&str, Value)> = Vec::new();
            for t in &targets {
                step(&format!("{proto}, {clients} clients: {}", t.name));
                let report = run_loadgen(&loadgen, t, h2, clients, seconds)
                    .with_context(|| format!("{} ({proto}, {clients} clients)", t.name))?;
                results.push((t.name, report));
            }
            rows.extend(rows_for(proto, clients, &results)?);
        }
    }
    Ok(rows)
}

fn run_loadgen(
    loadgen: &Path,
    t: &Target,
    h2: bool,
    clients: usize,
    seconds: &str,
) -> anyhow::Result<Value> {
    let mut args = vec!["http".to_owned(), "--host".into(), HOST.into()];
    args.extend([
        "--clients".into(),
        clients.to_string(),
        "--seconds".into(),
        seconds.into(),
    ]);
    if h2 {
        args.push("--h2".into());
    }
    let mut cmd = match &t.how {
        How::Plain { connect, ca } => {
            args.extend([
                "--connect".into(),
                connect.clone(),
                "--ca".into(),
                ca.display().to_string(),
            ]);
            let mut c = Command::new(loadgen);
            c.args(&args);
            c
        }
        How::Enrolled { daemon, hosts } => {
            args.extend([
                "--connect".into(),
                format!("{HOST}:443"),
                "--ca".into(),
                daemon.state_dir.join("ca.pem").display().to_string(),
            ]);
            daemon.exec_command(&with_hosts(hosts, loadgen, &args))
        }
    };
    let report = last_json(&capture(&mut cmd)?)?;
    let errors = num(&report, "errors")?;
    anyhow::ensure!(
        num(&report, "requests")? > 0.0,
        "no request succeeded ({errors} errors)"
    );
    Ok(report)
}

/// The rows of one (protocol, clients) combination from every target's report.
fn rows_for(proto: &str, clients: usize, results: &[(&str, Value)]) -> anyhow::Result<Vec<Row>> {
    let get = |name: &str| {
        results
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .with_context(|| format!("no result for {name}"))
    };
    let direct = get("direct")?;
    let (d50, d99) = (num(direct, "p50_us")?, num(direct, "p99_us")?);
    let mut rows = Vec::new();
    let mut rates = std::collections::BTreeMap::new();
    for (name, r) in results {
        let rate = num(r, "requests_per_s")?;
        rates.insert(*name, rate);
        let (p50, p99) = (num(r, "p50_us")?, num(r, "p99_us")?);
        let errors = num(r, "errors")?;
        let errs = if errors > 0.0 {
            format!(", {errors} errors")
        } else {
            String::new()
        };
        let note = if *name == "direct" {
            format!("p50 {p50:.0} us, p99 {p99:.0} us{errs}")
        } else {
            format!(
                "p50 {:+.0} us, p99 {:+.0} us over direct{errs}",
                p50 - d50,
                p99 - d99
            )
        };
        rows.push(
            Row::new(
                SECTION,
                format!("{proto} {clients:>3}c {name}"),
                rate,
                "req/s",
                note,
            )
            .with("p50_us", p50)
            .with("p99_us", p99)
            .with("added_p50_us", p50 - d50)
            .with("added_p99_us", p99 - d99)
            .with("errors", errors),
        );
    }
    for peer in ["nginx", "mitmproxy"] {
        if let (Some(ours), Some(theirs)) = (rates.get("snowtrail"), rates.get(peer)) {
            rows.push(Row::new(
                SECTION,
                format!("{proto} {clients:>3}c snowtrail/{peer}"),
                ours / theirs,
                "x",
                "throughput ratio, durable audit",
            ));
        }
    }
    if clients == 1 {
        for (name, r) in results.iter().filter(|(n, _)| *n != "direct") {
            rows.push(Row::new(
                SECTION,
                format!("{proto}   1c {name} added p50"),
                num(r, "p50_us")? - d50,
                "us",
                "p50 latency added over direct, one client",
            ));
        }
    }
    Ok(rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(http2_directive: bool) -> String {
        nginx_conf(&NginxConf {
            dir: Path::new("/b/nginx"),
            listen: "127.0.0.1:18441".parse().unwrap(),
            upstream: "127.0.0.61:443".parse().unwrap(),
            host: HOST,
            workers: 2,
            cert: Path::new("/b/leaf.pem"),
            key: Path::new("/b/leaf-key.pem"),
            upstream_ca: Path::new("/b/ca.pem"),
            http2_directive,
        })
    }

    #[test]
    fn nginx_reencrypts_with_verification_and_keepalive() {
        let c = conf(false);
        assert!(c.starts_with("worker_processes 2;\n"));
        assert!(c.contains("listen 127.0.0.1:18441 ssl http2;\n"));
        assert!(!c.contains("http2 on;"));
        assert!(c.contains("server 127.0.0.61:443;"));
        assert!(c.contains("proxy_pass https://snowflake;"));
        assert!(c.contains("proxy_ssl_verify on;"));
        assert!(c.contains("proxy_ssl_name xy12345.snowflakecomputing.com;"));
        assert!(c.contains("proxy_ssl_trusted_certificate /b/ca.pem;"));
        assert!(c.contains("keepalive 1024;"));
        assert!(c.contains("pid /b/nginx/nginx.pid;"));
        // Braces balance: the format string's escapes are right.
        assert_eq!(c.matches('{').count(), c.matches('}').count());
        let c = conf(true);
        assert!(c.contains("listen 127.0.0.1:18441 ssl;\n        http2 on;\n"));
    }

    #[test]
    fn nginx_versions_pick_the_http2_spelling() {
        assert!(!nginx_has_http2_directive("nginx version: nginx/1.22.1"));
        assert!(nginx_has_http2_directive("nginx version: nginx/1.25.1"));
        assert!(nginx_has_http2_directive(
            "nginx version: nginx/1.26.3 (Debian)"
        ));
        assert!(!nginx_has_http2_directive("nginx version: nginx/1.25.0"));
        assert!(!nginx_has_http2_directive("no nginx here"));
    }

    #[test]
    fn mitmdump_is_a_verifying_reverse_proxy() {
        let a = mitmdump_args(
            "127.0.0.1:18442".parse().unwrap(),
            "127.0.0.61:443".parse().unwrap(),
            Path::new("/b/leaf-combined.pem"),
            Path::new("/b/ca.pem"),
            Path::new("/b/mitm"),
        );
        let s = a.join(" ");
        assert!(s.starts_with("--mode reverse:https://127.0.0.61:443 "));
        assert!(s.contains("--listen-host 127.0.0.1 --listen-port 18442"));
        assert!(s.contains("--certs *=/b/leaf-combined.pem"));
        assert!(s.contains("--set ssl_verify_upstream_trusted_ca=/b/ca.pem"));
        assert!(!s.contains("ssl_insecure"));
    }

    #[test]
    fn rows_give_added_latency_and_ratios() {
        let r = |rate: f64, p50: f64, p99: f64| json!({"requests_per_s": rate, "p50_us": p50, "p99_us": p99, "errors": 0});
        let results = vec![
            ("direct", r(10_000.0, 100.0, 300.0)),
            ("snowtrail", r(8_000.0, 150.0, 400.0)),
            ("nginx", r(9_000.0, 120.0, 330.0)),
            ("mitmproxy", r(400.0, 2_000.0, 5_000.0)),
        ];
        let rows = rows_for("h2", 1, &results).unwrap();
        let find = |n: &str| rows.iter().find(|r| r.name == n).unwrap();
        let s = find("h2   1c snowtrail");
        assert_eq!(s.value, 8_000.0);
        assert!(s.note.starts_with("p50 +50 us, p99 +100 us"));
        assert!((find("h2   1c snowtrail/nginx").value - 8.0 / 9.0).abs() < 1e-9);
        assert_eq!(find("h2   1c snowtrail/mitmproxy").value, 20.0);
        assert_eq!(find("h2   1c nginx added p50").value, 20.0);
        assert_eq!(find("h2   1c direct").note, "p50 100 us, p99 300 us");
        // Past one client, no latency rows of their own.
        let rows = rows_for("h1", 16, &results).unwrap();
        assert!(rows.iter().all(|r| !r.name.contains("added")));
    }
}
