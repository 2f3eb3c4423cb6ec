//! `fake-snowflake`: the scripted fake Snowflake of the tests, as a process (for `cargo xtask demo`).
//!
//! Prints `listening <scheme>://<addr>` and `ca <path>` on standard output, then serves until
//! SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use snowtrail_tests::fake_snowflake::{FakeOptions, FakeSnowflake};

/// A scripted fake Snowflake REST server (HTTP/1.1 and HTTP/2, TLS with a test CA).
#[derive(Debug, Parser)]
#[command(name = "fake-snowflake", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Serve HTTPS with the test CA (else plain HTTP).
    #[arg(long)]
    tls: bool,
    /// Host names the certificate names (repeatable; wildcards allowed).
    #[arg(long = "host", default_values_t = [
        "xy12345.snowflakecomputing.com".to_owned(),
        "*.snowflakecomputing.com".to_owned(),
    ])]
    hosts: Vec<String>,
    /// Directory of the test CA (`ca.pem`); created if missing, reused if there.
    #[arg(long, default_value = "target/fake-snowflake-ca")]
    ca_dir: PathBuf,
    /// Host name for chunk and stage URLs (else the request's own host).
    #[arg(long)]
    storage_host: Option<String>,
    /// A password that login refuses.
    #[arg(long, default_value = "wrong-password")]
    bad_password: String,
    /// Serve HTTP/1.1 only (no ALPN h2).
    #[arg(long)]
    no_http2: bool,
    /// A key-pair user and its public key file, as USER=PEMFILE (repeatable): the user's
    /// SNOWFLAKE_JWT logins are then verified against it.
    #[arg(long = "jwt-public-key", value_name = "USER=PEMFILE")]
    jwt_public_keys: Vec<String>,
    /// Print each request (method, path) on standard error.
    #[arg(long)]
    verbose: bool,
    /// Keep no request log (for load tests: the log's lock would cap the throughput measured).
    #[arg(long, conflicts_with = "verbose")]
    lean: bool,
    /// Connections served at once; more wait in the accept queue.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut hosts = args.hosts.clone();
    if let Some(h) = &args.storage_host
        && !hosts.contains(h)
    {
        hosts.push(h.clone());
    }
    let mut jwt_public_keys = Vec::new();
    for spec in &args.jwt_public_keys {
        let Some((user, file)) = spec.split_once('=') else {
            anyhow::bail!("--jwt-public-key takes USER=PEMFILE, got {spec:?}");
        };
        let pem = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("cannot read the public key {file}: {e}"))?;
        jwt_public_keys.push((user.to_owned(), pem));
    }
    let fake = FakeSnowflake::start(FakeOptions {
        jwt_public_keys,
        addr: args.listen,
        tls: args.tls,
        hosts,
        ca_dir: args.ca_dir.clone(),
        http2: !args.no_http2,
        bad_password: Some(args.bad_password.clone()),
        storage_host: args.storage_host.clone(),
        record_requests: !args.lean,
        max_connections: args.max_connections,
        ..FakeOptions::default()
    })?;
    println!("listening {}://{}", fake.scheme(), fake.addr());
    println!("ca {}", fake.ca_pem_path().display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut seen = 0;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tick.tick() => {
                    if args.verbose {
                        let reqs = fake.requests();
                        for r in reqs.iter().skip(seen) {
                            eprintln!("{} {} {}{}", r.version, r.method, r.path,
                                r.sql_text().map(|s| format!("  {s}")).unwrap_or_default());
                        }
                        seen = reqs.len();
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    fake.stop();
    Ok(())
}
