//! Load generator of `cargo xtask bench`: drives one part of snowtrail as hard as it goes and
//! prints one JSON line with what it measured, for the bench task to put beside its peers'.
//!
//! `loadgen audit` streams statement events (realistic rows: identity, connection, session and
//! SQL columns filled) through a real [`AuditWriter`] with the journal on, from `--tasks`
//! concurrent submitters each keeping `--window` acknowledgements in flight (as many connections
//! of a busy proxy would), then shuts the writer down so every event is in a published Parquet
//! file. The time covers the whole of it: journal, fdatasyncs, Parquet encoding and publishing.
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

mod bulk;
mod connect;
mod http;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use snowtrail::audit::{
    AuditConfig, AuditWriter, Event, EventKind, EventSink, OnAuditFailure, SystemClock,
    WriterOptions,
};

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
    Audit(AuditArgs),
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

#[derive(Debug, clap::Args)]
struct AuditArgs {
    /// A fresh directory; the journal goes to `<dir>/state`, Parquet files to `<dir>/audit`.
    #[arg(long)]
    dir: PathBuf,
    /// Events to write in all.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 64)]
    tasks: u64,
    /// Acknowledgements each submitter keeps in flight before waiting for its oldest.
    #[arg(long, default_value_t = 64)]
    window: usize,
}

/// What one `audit` run measured; the bench task reads this JSON line.
#[derive(Debug, serde::Serialize)]
struct AuditReport {
    events: u64,
    seconds: f64,
    events_per_s: f64,
    parquet_bytes: u64,
    parquet_files: u64,
    bytes_per_event: f64,
    journal_syncs: u64,
}

/// A statement's completed event as the proxy writes it.
fn statement(task: u64, i: u64) -> Event {
    let mut e = Event::new(EventKind::Query, SystemTime::now(), "bench-host");
    e.pid = Some(4000 + task as u32);
    e.tgid = e.pid;
    e.uid = Some(1000);
    e.comm = Some("python3".into());
    e.exe = Some("/usr/bin/python3.12".into());
    e.cgroup_path = Some("/system.slice/etl-nightly.service".into());
    e.cgroup_id = Some(12_345);
    e.workload_identity = Some("etl-nightly".into());
    e.labels.insert("env".into(), "prod".into());
    e.labels.insert("team".into(), "data".into());
    e.src_ip = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));
    e.src_port = Some(40_000 + (task as u16 % 20_000));
    e.dst_ip = Some(IpAddr::V4(Ipv4Addr::new(52, 1, 2, 3)));
    e.dst_port = Some(443);
    e.sni = Some("xy12345.eu-west-1.snowflakecomputing.com".into());
    e.connection_mode = Some("intercepted".into());
    e.connection_id = Some(task);
    e.account = Some("XY12345".into());
    e.login_user = Some("ETL_USER".into());
    e.role = Some("TRANSFORMER".into());
    e.warehouse = Some("COMPUTE_WH".into());
    e.database = Some("ANALYTICS".into());
    e.schema = Some("PUBLIC".into());
    e.session_id = Some(format!("session-{task}"));
    e.request_id = Some(uuid::Uuid::now_v7().to_string());
    e.query_id = Some(format!("01b2c3d4-0000-{task:04x}-0000-{i:012x}"));
    e.driver = Some("PythonConnector".into());
    e.driver_version = Some("3.12.0".into());
    e.sql_text = Some(format!(
        "insert into analytics.public.orders select * from staging.orders where batch = {i}"
    ));
    e.statement_type = Some("INSERT".into());
    e.decision = Some("allow".into());
    e.success = Some(true);
    e.rows_produced = Some(i % 1000);
    e.duration_ms = Some(12);
    e
}

fn parquet_size(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "parquet") {
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                files += 1;
            }
        }
    }
    (bytes, files)
}

async fn audit(args: AuditArgs) -> anyhow::Result<AuditReport> {
    anyhow::ensure!(
        args.tasks > 0 && args.window > 0,
        "--tasks and --window must be positive"
    );
    let audit_dir = args.dir.join("audit");
    let (writer, task) = AuditWriter::start(WriterOptions {
        state_dir: args.dir.join("state"),
        audit_dir: audit_dir.clone(),
        host: "bench-host".into(),
        config: AuditConfig::default(),
        on_failure: OnAuditFailure::Block,
        recordings_dir: None,
        clock: Arc::new(SystemClock),
    })
    .await
    .context("starting the audit writer")?;
    let started = Instant::now();
    let per_task = args.events / args.tasks;
    let mut handles = Vec::new();
    for t in 0..args.tasks {
        let writer = writer.clone();
        let n = per_task + u64::from(t < args.events % args.tasks);
        let window = args.window;
        handles.push(tokio::spawn(async move {
            let mut acks = VecDeque::with_capacity(window);
            for i in 0..n {
                if acks.len() == window
                    && let Some(ack) = acks.pop_front()
                {
                    ack.await?;
                }
                acks.push_back(writer.submit(statement(t, i)));
            }
            for ack in acks {
                ack.await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let journal_syncs = writer.journal_syncs();
    drop(writer);
    let report = task.shutdown().await.context("shutting the writer down")?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    anyhow::ensure!(
        report.gap_events == 0 && report.left_in_journal == 0,
        "the writer lost events: {report:?}"
    );
    let (parquet_bytes, parquet_files) = parquet_size(&audit_dir);
    Ok(AuditReport {
        events: args.events,
        seconds,
        events_per_s: args.events as f64 / seconds,
        parquet_bytes,
        parquet_files,
        bytes_per_event: parquet_bytes as f64 / args.events.max(1) as f64,
        journal_syncs,
    })
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
    let cli = Cli::parse();
    let line = match cli.command {
        Command::Audit(a) => serde_json::to_string(&audit(a).await?)?,
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
