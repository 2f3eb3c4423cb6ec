//! Load generator of `cargo xtask bench`: drives one part of snowtrail as hard as it goes and
//! prints one JSON line with what it measured, for the bench task to put beside its peers'.
//!
//! `loadgen audit` streams statement events (realistic rows: identity, connection, session and
//! SQL columns filled) through a real [`AuditWriter`] with the journal on, from `--tasks`
//! concurrent submitters each keeping `--window` acknowledgements in flight (as many connections
//! of a busy proxy would), then shuts the writer down so every event is in a published Parquet
//! file. The time covers the whole of it: journal, fdatasyncs, Parquet encoding and publishing.
//! With `--recording`, each statement's result (a small JSON result) first goes through a real
//! recordings writer (age encryption, spool, fdatasync), and its event is submitted once that is
//! durable, as the proxy does. `loadgen fsync` is the floor: one small write and one fdatasync at
//! a time on the same filesystem.
//!
//! `loadgen http` is a closed-loop HTTPS load generator speaking Snowflake's REST protocol: it logs
//! in once, then `--clients` clients, each on its own keep-alive connection (HTTP/1.1, or HTTP/2
//! with `--h2`), send a small `query-request` and wait for its answer before sending the next, for
//! `--seconds`. It reports requests per second and the p50/p99 latency. `loadgen hold` opens
//! many such connections and keeps them idle, for the agent's memory per connection.
//!
//! `loadgen connect` times `connect()` calls (with the agent's programs attached or not);
//! `loadgen bulk` receives one TLS stream from `loadgen bulk-server` (passthrough throughput);
//! `loadgen sink` and `loadgen leaf` are the listener and the certificate those runs need.

mod audit;
mod bulk;
mod connect;
mod http;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// The agent's allocator, set up as the agent sets it up, so `loadgen audit` measures the writer as
/// it runs there.
#[global_allocator]
static ALLOC: snowtrail::alloc::Allocator = snowtrail::alloc::Allocator;

/// Load generator for `cargo xtask bench`.
#[derive(Debug, Parser)]
#[command(name = "loadgen", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream statement events into a real audit writer (journal on) and report events per
    /// second and Parquet bytes per event.
    Audit(audit::AuditArgs),
    /// The floor of durable writes: one small append and one fdatasync at a time on a
    /// filesystem; report syncs per second and p50/p99 latency.
    Fsync(audit::FsyncArgs),
    /// Closed-loop statement round trips against a Snowflake endpoint (the fake, or a proxy in
    /// front of it); report throughput and p50/p99 latency.
    Http(http::HttpArgs),
    /// Open many connections to a Snowflake endpoint, send one statement on each, report, and
    /// hold them idle until standard input ends.
    Hold(http::HoldArgs),
    /// Time nonblocking connect() calls to a loopback address (each socket reset at once).
    Connect(connect::ConnectArgs),
    /// Accept and drop connections (the listener `connect` reaches when not redirected).
    Sink(connect::SinkArgs),
    /// Serve TLS streams of the size each client asks for, under a host name that is not
    /// Snowflake's.
    BulkServer(bulk::ServerArgs),
    /// Receive one TLS stream from `bulk-server` and report its throughput.
    Bulk(bulk::ClientArgs),
    /// Write a certificate for the given hosts signed by a test CA: `leaf.pem` (chain),
    /// `leaf-key.pem`, and `leaf-combined.pem` (key then chain).
    Leaf(LeafArgs),
}

#[derive(Debug, clap::Args)]
struct LeafArgs {
    /// Directory of the CA (`ca.pem`, `ca-key.pem`; created if missing).
    #[arg(long)]
    ca_dir: PathBuf,
    /// Host names the certificate names (repeatable).
    #[arg(long = "host", required = true)]
    hosts: Vec<String>,
    /// An IP address the certificate names as well.
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Where the files go.
    #[arg(long)]
    out: PathBuf,
}

fn leaf(args: &LeafArgs) -> anyhow::Result<serde_json::Value> {
    let ca = snowtrail_tests::fake_snowflake::tls::TestCa::load_or_create(&args.ca_dir)?;
    let (chain, key) = ca.leaf_pem(&args.hosts, args.ip)?;
    std::fs::create_dir_all(&args.out)?;
    let files = [
        ("leaf.pem", chain.clone()),
        ("leaf-key.pem", key.clone()),
        ("leaf-combined.pem", format!("{key}{chain}")),
    ];
    for (name, text) in files {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(serde_json::json!({ "ca": ca.cert_path, "out": args.out }))
}

/// Raises the soft open-files limit towards `want` (and the hard one, which root may), and
/// returns the soft limit now in force.
fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: lim.rlim_max.max(want),
    };
    // SAFETY: setrlimit reads the struct we own. Raising the hard limit needs root; without it,
    // the soft limit goes as far as the hard one allows.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(want);
    }
    let capped = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } == 0 {
        return Ok(lim.rlim_max);
    }
    Ok(lim.rlim_cur)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    snowtrail::alloc::configure();
    let cli = Cli::parse();
    // `audit` runs the agent's writer and says when its start-up is over, as the daemon does.
    if !matches!(cli.command, Command::Audit(_)) {
        snowtrail::alloc::started();
    }
    let line = match cli.command {
        Command::Audit(a) => serde_json::to_string(&audit::run(a).await?)?,
        Command::Fsync(a) => serde_json::to_string(
            &tokio::task::spawn_blocking(move || audit::fsync_floor(&a)).await??,
        )?,
        Command::Http(a) => serde_json::to_string(&http::run(a).await?)?,
        // `hold` prints its report as soon as the connections are open, then holds them.
        Command::Hold(a) => {
            http::hold(a).await?;
            return Ok(());
        }
        Command::Connect(a) => {
            serde_json::to_string(&tokio::task::spawn_blocking(move || connect::run(&a)).await??)?
        }
        Command::Sink(a) => {
            connect::sink(&a).await?;
            return Ok(());
        }
        Command::BulkServer(a) => {
            bulk::serve(&a).await?;
            return Ok(());
        }
        Command::Bulk(a) => serde_json::to_string(&bulk::run(&a).await?)?,
        Command::Leaf(a) => serde_json::to_string(&leaf(&a)?)?,
    };
    println!("{line}");
    Ok(())
}

/// The percentile `p` (0..=100) of sorted latencies in nanoseconds, in microseconds; 0 when empty.
fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted_ns.len() - 1) as f64).round() as usize;
    sorted_ns[rank.min(sorted_ns.len() - 1)] as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::percentile_us;

    #[test]
    fn percentiles_pick_the_ranked_latency() {
        let ns: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_us(&ns, 50.0), 51.0);
        assert_eq!(percentile_us(&ns, 99.0), 99.0);
        assert_eq!(percentile_us(&ns, 100.0), 100.0);
        assert_eq!(percentile_us(&ns, 0.0), 1.0);
        assert_eq!(percentile_us(&[], 50.0), 0.0);
        assert_eq!(percentile_us(&[7000], 99.0), 7.0);
    }
}
