//! The HTTPS side of `loadgen`: closed-loop statement round trips (`http`) and idle connections
//! held open (`hold`), both speaking Snowflake's REST protocol to the fake or a proxy before it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::percentile_us;

/// Where to connect and how: shared by `http` and `hold`.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// `host:port` to connect to (the endpoint, or a proxy in front of it); a name is resolved
    /// once, through `/etc/hosts` like any client.
    #[arg(long)]
    connect: String,
    /// The Snowflake host name: TLS server name and `Host` header.
    #[arg(long, default_value = "xy12345.snowflakecomputing.com")]
    host: String,
    /// PEM file of the CA that signed the endpoint's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Speak HTTP/2 (else HTTP/1.1).
    #[arg(long)]
    h2: bool,
}

/// Options of `loadgen http`.
#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    #[command(flatten)]
    target: Target,
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
pub struct HttpReport {
    clients: usize,
    h2: bool,
    requests: u64,
    errors: u64,
    seconds: f64,
    requests_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Options of `loadgen hold`.
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    #[command(flatten)]
    target: Target,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
}

/// What `hold` reports once every connection is open (then it waits for standard input to end).
#[derive(Debug, serde::Serialize)]
pub struct HoldReport {
    held: usize,
    errors: u64,
    seconds_to_open: f64,
}

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

/// A resolved target with its TLS client config.
struct Peer {
    addr: SocketAddr,
    host: String,
    h2: bool,
    tls: TlsConnector,
}

impl Peer {
    async fn new(t: &Target) -> anyhow::Result<Peer> {
        let addr = tokio::net::lookup_host(&t.connect)
            .await
            .with_context(|| format!("resolving {}", t.connect))?
            .next()
            .with_context(|| format!("{} resolves to no address", t.connect))?;
        Ok(Peer {
            addr,
            host: t.host.clone(),
            h2: t.h2,
            tls: tls(&t.ca, t.h2)?,
        })
    }

    async fn connect(&self) -> anyhow::Result<Sender> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())?;
        let io = TokioIo::new(self.tls.connect(name, tcp).await.context("TLS handshake")?);
        Ok(if self.h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(s)
        })
    }

    fn request(&self, path: &str, token: Option<&str>, body: Vec<u8>) -> Request<Full<Bytes>> {
        let mut b = Request::post(path)
            .header("content-type", "application/json")
            .header("accept", "application/snowflake")
            .header("user-agent", "PythonConnector/3.12.0 (loadgen)");
        // HTTP/2 takes the authority from the URI; HTTP/1.1 from the Host header.
        if self.h2 {
            b = b.uri(format!("https://{}{path}", self.host));
        } else {
            b = b.header("host", &self.host);
        }
        if let Some(t) = token {
            b = b.header("authorization", format!("Snowflake Token=\"{t}\""));
        }
        b.body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }

    /// Logs in on a connection of its own and returns the session token.
    async fn login(&self) -> anyhow::Result<Arc<str>> {
        let mut login = self.connect().await?;
        let body = serde_json::json!({"data": {
            "ACCOUNT_NAME": "XY12345", "LOGIN_NAME": "bench", "PASSWORD": "bench",
            "CLIENT_APP_ID": "PythonConnector", "CLIENT_APP_VERSION": "3.12.0",
        }});
        let (status, reply) = login
            .send(self.request(
                "/session/v1/login-request",
                None,
                serde_json::to_vec(&body)?,
            ))
            .await?;
        let reply: serde_json::Value = serde_json::from_slice(&reply)
            .with_context(|| format!("login answered {status} with no JSON"))?;
        Ok(reply["data"]["token"]
            .as_str()
            .with_context(|| format!("login failed: {reply}"))?
            .into())
    }

    /// A query-request carrying `sql`.
    fn query(&self, token: &str, sql: &str, seq: u64) -> Request<Full<Bytes>> {
        let body = serde_json::json!({
            "sqlText": sql, "asyncExec": false, "sequenceId": seq,
            "querySubmissionTime": 0, "parameters": {},
        });
        self.request(
            &format!(
                "/queries/v1/query-request?requestId={}",
                uuid::Uuid::now_v7()
            ),
            Some(token),
            serde_json::to_vec(&body).unwrap_or_default(),
        )
    }
}

fn tls(ca: &std::path::Path, h2: bool) -> anyhow::Result<TlsConnector> {
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
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
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Logs in, opens every client's connection, then runs the clients and measures.
pub async fn run(args: HttpArgs) -> anyhow::Result<HttpReport> {
    anyhow::ensure!(
        args.clients > 0 && args.seconds > 0.0,
        "--clients and --seconds must be positive"
    );
    let peer = Arc::new(Peer::new(&args.target).await?);
    let token = peer.login().await?;
    let sql: Arc<str> = args.sql.as_str().into();
    // Every connection is open before the clock starts, so slow handshakes (a Python proxy's,
    // 256 of them) do not eat into the measured time.
    let mut conns = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        conns.push(peer.connect().await?);
    }
    let warm_up = Duration::from_secs(1);
    let measure = Duration::from_secs_f64(args.seconds);
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for mut conn in conns {
        let peer = peer.clone();
        let token = token.clone();
        let sql = sql.clone();
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
                let ok = matches!(conn.send(peer.query(&token, &sql, seq)).await, Ok((200, _)));
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
                    conn = peer.connect().await?;
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
        h2: args.target.h2,
        requests: all.len() as u64,
        errors,
        seconds,
        requests_per_s: all.len() as f64 / seconds,
        p50_us: percentile_us(&all, 50.0),
        p99_us: percentile_us(&all, 99.0),
    })
}

/// Opens `--connections` connections, sends one statement on each (so each is a live,
/// intercepted session connection), prints the report, and holds them until standard input ends.
pub async fn hold(args: HoldArgs) -> anyhow::Result<HoldReport> {
    anyhow::ensure!(
        args.connections > 0 && args.parallel > 0,
        "--connections and --parallel must be positive"
    );
    let want = u64::try_from(args.connections)
        .unwrap_or(u64::MAX)
        .saturating_add(256);
    let limit = super::raise_nofile(want)?;
    anyhow::ensure!(
        limit >= want,
        "open-files limit is {limit}, {want} are needed: raise it (ulimit -n)"
    );
    let started = Instant::now();
    let peer = Arc::new(Peer::new(&args.target).await?);
    let token = peer.login().await?;
    let gate = Arc::new(tokio::sync::Semaphore::new(args.parallel));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let peer = peer.clone();
        let token = token.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut conn = peer.connect().await?;
            let (status, _) = conn.send(peer.query(&token, "select 1", i as u64)).await?;
            anyhow::ensure!(status == 200, "statement answered {status}");
            anyhow::Ok(conn)
        }));
    }
    let mut held = Vec::with_capacity(args.connections);
    let mut errors = 0u64;
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            Ok(c) => held.push(c),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("loadgen: {errors} connection(s) failed, the first: {e:#}");
    }
    let report = HoldReport {
        held: held.len(),
        errors,
        seconds_to_open: started.elapsed().as_secs_f64(),
    };
    println!("{}", serde_json::to_string(&report)?);
    // Hold until whoever started us closes our standard input.
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
        .await??;
    drop(held);
    Ok(report)
}
