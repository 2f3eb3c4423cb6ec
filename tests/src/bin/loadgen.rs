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
//! `--seconds`. It reports requests per second and the p50/p99 latency.

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
    Http(HttpArgs),
}

#[derive(Debug, clap::Args)]
struct HttpArgs {
    /// Address to connect to (the endpoint, or a proxy in front of it).
    #[arg(long)]
    connect: std::net::SocketAddr,
    /// The Snowflake host name: TLS server name and `Host` header.
    #[arg(long, default_value = "xy12345.snowflakecomputing.com")]
    host: String,
    /// PEM file of the CA that signed the endpoint's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Speak HTTP/2 (else HTTP/1.1).
    #[arg(long)]
    h2: bool,
    /// Concurrent clients, each on its own connection.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// How long to measure, after a one-second warm-up.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// The statement each query-request carries.
    #[arg(long, default_value = "select 1")]
    sql: String,
}

/// What one `http` run measured.
#[derive(Debug, serde::Serialize)]
struct HttpReport {
    clients: usize,
    h2: bool,
    requests: u64,
    errors: u64,
    seconds: f64,
    requests_per_s: f64,
    p50_us: f64,
    p99_us: f64,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let line = match cli.command {
        Command::Audit(a) => serde_json::to_string(&audit(a).await?)?,
        Command::Http(a) => serde_json::to_string(&http::run(a).await?)?,
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

mod http {
    //! The HTTPS side of `loadgen http`.

    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use anyhow::Context as _;
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper::Request;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;

    use super::{HttpArgs, HttpReport, percentile_us};

    /// One keep-alive connection, either protocol.
    enum Sender {
        H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
        H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    }

    impl Sender {
        async fn send(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<(u16, Bytes)> {
            let resp = match self {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
            };
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok((status, body))
        }
    }

    async fn connect(args: &HttpArgs, tls: &TlsConnector) -> anyhow::Result<Sender> {
        let tcp = TcpStream::connect(args.connect)
            .await
            .with_context(|| format!("connecting to {}", args.connect))?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(args.host.clone())?;
        let io = TokioIo::new(tls.connect(name, tcp).await.context("TLS handshake")?);
        Ok(if args.h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(s)
        })
    }

    fn request(
        args: &HttpArgs,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Request<Full<Bytes>> {
        let mut b = Request::post(path)
            .header("content-type", "application/json")
            .header("accept", "application/snowflake")
            .header("user-agent", "PythonConnector/3.12.0 (loadgen)");
        // HTTP/2 takes the authority from the URI; HTTP/1.1 from the Host header.
        if args.h2 {
            b = b.uri(format!("https://{}{path}", args.host));
        } else {
            b = b.header("host", &args.host);
        }
        if let Some(t) = token {
            b = b.header("authorization", format!("Snowflake Token=\"{t}\""));
        }
        b.body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }

    fn tls(args: &HttpArgs) -> anyhow::Result<TlsConnector> {
        let pem =
            std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            roots.add(cert?)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![if args.h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// Logs in, runs the clients, and measures.
    pub async fn run(args: HttpArgs) -> anyhow::Result<HttpReport> {
        anyhow::ensure!(
            args.clients > 0 && args.seconds > 0.0,
            "--clients and --seconds must be positive"
        );
        let args = Arc::new(args);
        let tls = tls(&args)?;
        let mut login = connect(&args, &tls).await?;
        let body = serde_json::json!({"data": {
            "ACCOUNT_NAME": "XY12345", "LOGIN_NAME": "bench", "PASSWORD": "bench",
            "CLIENT_APP_ID": "PythonConnector", "CLIENT_APP_VERSION": "3.12.0",
        }});
        let (status, reply) = login
            .send(request(
                &args,
                "/session/v1/login-request",
                None,
                serde_json::to_vec(&body)?,
            ))
            .await?;
        let reply: serde_json::Value = serde_json::from_slice(&reply)
            .with_context(|| format!("login answered {status} with no JSON"))?;
        let token: Arc<str> = reply["data"]["token"]
            .as_str()
            .with_context(|| format!("login failed: {reply}"))?
            .into();
        let warm_up = Duration::from_secs(1);
        let measure = Duration::from_secs_f64(args.seconds);
        let start = Instant::now() + Duration::from_millis(200);
        let mut tasks = Vec::new();
        for _ in 0..args.clients {
            let mut conn = connect(&args, &tls).await?;
            let args = args.clone();
            let token = token.clone();
            let tls = tls.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                tokio::time::sleep_until(start.into()).await;
                let (from, until) = (start + warm_up, start + warm_up + measure);
                let mut seq = 0u64;
                loop {
                    let t = Instant::now();
                    if t >= until {
                        break;
                    }
                    seq += 1;
                    let body = serde_json::json!({
                        "sqlText": args.sql, "asyncExec": false, "sequenceId": seq,
                        "querySubmissionTime": 0, "parameters": {},
                    });
                    let req = request(
                        &args,
                        &format!(
                            "/queries/v1/query-request?requestId={}",
                            uuid::Uuid::now_v7()
                        ),
                        Some(&token),
                        serde_json::to_vec(&body).unwrap_or_default(),
                    );
                    let ok = matches!(conn.send(req).await, Ok((200, _)));
                    let done = Instant::now();
                    if t >= from {
                        if ok {
                            lat.push(done.duration_since(t).as_nanos() as u64);
                        } else {
                            errors += 1;
                        }
                    }
                    if !ok {
                        // A broken connection is replaced, so one failure does not end the client.
                        conn = connect(&args, &tls).await?;
                    }
                }
                anyhow::Ok((lat, errors))
            }));
        }
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (lat, e) = t.await??;
            all.extend(lat);
            errors += e;
        }
        all.sort_unstable();
        let seconds = measure.as_secs_f64();
        Ok(HttpReport {
            clients: args.clients,
            h2: args.h2,
            requests: all.len() as u64,
            errors,
            seconds,
            requests_per_s: all.len() as f64 / seconds,
            p50_us: percentile_us(&all, 50.0),
            p99_us: percentile_us(&all, 99.0),
        })
    }
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
