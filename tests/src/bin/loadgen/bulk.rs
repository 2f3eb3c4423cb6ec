//! `loadgen bulk-server` and `loadgen bulk`: one TLS stream of a given size, for the passthrough
//! benchmark. The server names a host that is not Snowflake's, so an agent on the way carries the
//! stream untouched (passthrough) instead of terminating it.
//!
//! The client sends the number of bytes it wants as one line; the server answers with that many
//! bytes and closes. The client reports the stream's throughput.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use snowtrail_tests::fake_snowflake::tls::TestCa;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Largest request line the server reads.
const MAX_LINE: u64 = 64;
/// Bytes written per call.
const CHUNK: usize = 256 * 1024;

/// Options of `loadgen bulk-server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Where to listen.
    #[arg(long)]
    listen: SocketAddr,
    /// Directory of the CA that signs the server's certificate (`ca.pem`, created if missing).
    #[arg(long)]
    ca_dir: PathBuf,
    /// The host name the certificate names.
    #[arg(long, default_value = "bulk.example.test")]
    host: String,
}

/// Options of `loadgen bulk`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// `host:port` of the server (a name is resolved through `/etc/hosts`).
    #[arg(long)]
    connect: String,
    /// TLS server name.
    #[arg(long, default_value = "bulk.example.test")]
    host: String,
    /// PEM file of the CA that signed the server's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Bytes to receive.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
}

/// What `bulk` measured.
#[derive(Debug, serde::Serialize)]
pub struct BulkReport {
    bytes: u64,
    seconds: f64,
    mb_per_s: f64,
}

/// Serves streams until killed.
pub async fn serve(args: &ServerArgs) -> anyhow::Result<()> {
    let ca = TestCa::load_or_create(&args.ca_dir)?;
    let config = ca.server_config(std::slice::from_ref(&args.host), args.listen.ip(), false)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
        "{}",
        serde_json::json!({ "listening": args.listen.to_string(), "ca": ca.cert_path })
    );
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Err(e) = stream(acceptor, tcp).await {
                eprintln!("bulk-server: {e:#}");
            }
        });
    }
}

async fn stream(acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let tls = acceptor.accept(tcp).await.context("TLS handshake")?;
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    (&mut reader).take(MAX_LINE).read_line(&mut line).await?;
    let mut left: u64 = line.trim().parse().context("bad request line")?;
    let mut tls = reader.into_inner();
    let buf = vec![0x5a_u8; CHUNK];
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        tls.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    tls.shutdown().await?;
    Ok(())
}

/// Receives one stream and measures it.
pub async fn run(args: &ClientArgs) -> anyhow::Result<BulkReport> {
    let addr = tokio::net::lookup_host(&args.connect)
        .await
        .with_context(|| format!("resolving {}", args.connect))?
        .next()
        .with_context(|| format!("{} resolves to no address", args.connect))?;
    let pem = std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let started = Instant::now();
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(args.host.clone())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    tls.write_all(format!("{}\n", args.bytes).as_bytes())
        .await?;
    tls.flush().await?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            // The server closes without close_notify when it is done; what counts is the size.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e).context("reading the stream"),
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    anyhow::ensure!(
        got == args.bytes,
        "received {got} bytes, asked for {}",
        args.bytes
    );
    Ok(BulkReport {
        bytes: got,
        seconds,
        mb_per_s: got as f64 / 1e6 / seconds,
    })
}
