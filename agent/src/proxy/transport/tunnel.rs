//! HTTP CONNECT, both ways: the request a workload sends to its proxy (read by the listener on a
//! `redirect.proxy_ports` connection), and the tunnel the agent opens through that proxy for an
//! intercepted connection's upstream ([`Tunnel`], used by `pool`). Heads are read within a size
//! cap and a deadline; nothing here decides what a tunnel may carry (`listener` does).

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The most a CONNECT request or a proxy's answer head may take.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most headers either head may have.
const MAX_HEADERS: usize = 64;

/// Why a head could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    /// The peer closed before the head's end.
    #[error("closed before the end of the head")]
    Closed,
    /// The head did not end within the deadline.
    #[error("the head did not arrive in time")]
    Timeout,
    /// The head is longer than [`MAX_HEAD`].
    #[error("the head is longer than {MAX_HEAD} bytes")]
    Oversized,
    /// Not HTTP/1.x.
    #[error("not an HTTP/1.x head: {0}")]
    Malformed(String),
    /// An HTTP request other than CONNECT (plain proxying), or a CONNECT without `host:port`.
    #[error("not a CONNECT to host:port: {0}")]
    NotConnect(String),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(String),
}

/// A workload's CONNECT request, as read from its connection to the proxy port.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The target as written (`host:port`), what the proxy is asked to connect to.
    pub authority: String,
    /// The target's host, lower-cased, without brackets.
    pub host: String,
    /// The target's port.
    pub port: u16,
    /// `Proxy-Authorization`, replayed in the agent's own CONNECT; a credential, never logged.
    pub authorization: Option<String>,
    /// The request's bytes exactly as received (replayed when the tunnel is the workload's own).
    pub head: Vec<u8>,
}

impl fmt::Debug for ConnectRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectRequest")
            .field("authority", &self.authority)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<hidden>"),
            )
            .finish_non_exhaustive()
    }
}

/// What the agent's upstream for an intercepted connection goes through: an HTTP proxy at the
/// connection's original destination, asked to CONNECT to `authority`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tunnel {
    /// `host:port` the proxy connects to.
    pub authority: String,
    /// The workload's `Proxy-Authorization`, so the proxy admits the agent's tunnel as it would
    /// the workload's; part of the pool's key, so no workload rides another's credential.
    pub authorization: Option<String>,
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("authority", &self.authority)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<hidden>"),
            )
            .finish()
    }
}

/// Why the agent's own tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The proxy's answer head could not be read.
    #[error("reading the proxy's answer: {0}")]
    Head(#[from] HeadError),
    /// The proxy refused the CONNECT.
    #[error("the proxy answered the CONNECT to {authority} with {status}")]
    Refused {
        /// The target.
        authority: String,
        /// The proxy's status code.
        status: u16,
    },
    /// Bytes came after the proxy's answer before the TLS handshake began.
    #[error("the proxy sent bytes after its answer")]
    Trailing,
}

/// An HTTP answer head read from a proxy: its status, and every byte read (the head and whatever
/// followed it in the same reads).
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The length of the head within `bytes`.
    pub head_len: usize,
    /// Everything read.
    pub bytes: Vec<u8>,
}

/// Reads a CONNECT request (everything up to its blank line) within `timeout`.
pub async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> (Vec<u8>, Result<ConnectRequest, HeadError>) {
    let mut buf = Vec::with_capacity(1024);
    let head_len = match read_head(stream, &mut buf, timeout).await {
        Ok(n) => n,
        Err(e) => return (buf, Err(e)),
    };
    let parsed = parse_connect(&buf[..head_len]);
    if parsed.is_ok() && head_len < buf.len() {
        // A client speaks inside the tunnel only once the proxy has answered.
        return (
            buf,
            Err(HeadError::Malformed(
                "bytes after the CONNECT before the proxy's answer".into(),
            )),
        );
    }
    (buf, parsed)
}

/// Parses one CONNECT request head (ending with its blank line).
pub fn parse_connect(head: &[u8]) -> Result<ConnectRequest, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(HeadError::Malformed("incomplete request head".into())),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    }
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    if !method.eq_ignore_ascii_case("CONNECT") {
        return Err(HeadError::NotConnect(format!("{method} {target}")));
    }
    let (host, port) = split_authority(target)
        .ok_or_else(|| HeadError::NotConnect(format!("CONNECT {target}")))?;
    let authorization = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    Ok(ConnectRequest {
        authority: target.to_owned(),
        host,
        port,
        authorization,
        head: head.to_vec(),
    })
}

/// Splits `host:port` (`[v6]:port` for IPv6) into a lower-cased host and a port.
fn split_authority(target: &str) -> Option<(String, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// Reads an HTTP answer head (a proxy's) within `timeout`.
pub async fn read_answer<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Answer, HeadError> {
    let mut bytes = Vec::with_capacity(512);
    let head_len = read_head(stream, &mut bytes, timeout).await?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&bytes[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HeadError::Malformed("incomplete answer head".into()));
        }
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    }
    let status = resp
        .code
        .ok_or_else(|| HeadError::Malformed("no status".into()))?;
    Ok(Answer {
        status,
        head_len,
        bytes,
    })
}

/// Opens the agent's own tunnel through the proxy on `stream`: sends the CONNECT and reads a 2xx
/// answer within `timeout`.
pub async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    tunnel: &Tunnel,
    timeout: Duration,
) -> Result<(), TunnelError> {
    let mut head = format!(
        "CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n",
        a = tunnel.authority
    );
    if let Some(auth) = &tunnel.authorization {
        head.push_str("Proxy-Authorization: ");
        head.push_str(auth);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| HeadError::Io(e.to_string()))?;
    let answer = read_answer(stream, timeout).await?;
    if !(200..300).contains(&answer.status) {
        return Err(TunnelError::Refused {
            authority: tunnel.authority.clone(),
            status: answer.status,
        });
    }
    if answer.head_len < answer.bytes.len() {
        return Err(TunnelError::Trailing);
    }
    Ok(())
}

/// The answer the agent gives a workload's CONNECT it serves itself.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// The answer to a proxy request the agent refuses.
pub fn refusal(status: u16, reason: &str) -> Vec<u8> {
    let body = format!("snowtrail: {reason}\n");
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        if status == 403 { "Forbidden" } else { "Bad Request" },
        body.len()
    )
    .into_bytes()
}

/// Reads into `buf` until it holds a whole head (`\r\n\r\n`); returns the head's length.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<usize, HeadError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(end) = find_head_end(buf) {
            return Ok(end);
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::Oversized);
        }
        let mut chunk = [0u8; 2048];
        let room = (MAX_HEAD - buf.len()).min(chunk.len());
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..room])).await {
            Ok(Ok(0)) => return Err(HeadError::Closed),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(HeadError::Io(e.to_string())),
            Err(_) => return Err(HeadError::Timeout),
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn reads_a_connect_with_its_credential() {
        let head = b"CONNECT XY12345.snowflakecomputing.com:443 HTTP/1.1\r\nHost: xy12345.snowflakecomputing.com:443\r\nProxy-Authorization: Basic dTpw\r\n\r\n";
        let req = parse_connect(head).unwrap();
        assert_eq!(req.host, "xy12345.snowflakecomputing.com");
        assert_eq!(req.port, 443);
        assert_eq!(req.authority, "XY12345.snowflakecomputing.com:443");
        assert_eq!(req.authorization.as_deref(), Some("Basic dTpw"));
        assert!(
            !format!("{req:?}").contains("dTpw"),
            "the credential stays out of logs"
        );
        let v6 = parse_connect(b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("2001:db8::1", 8443));
    }

    #[test]
    fn refuses_what_is_not_a_connect() {
        assert!(matches!(
            parse_connect(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            Err(HeadError::NotConnect(_))
        ));
        for bad in [
            &b"CONNECT example.com HTTP/1.1\r\n\r\n"[..],
            b"CONNECT example.com:0 HTTP/1.1\r\n\r\n",
            b"CONNECT :443 HTTP/1.1\r\n\r\n",
            b"CONNECT u@example.com:443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_connect(bad), Err(HeadError::NotConnect(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse_connect(b"\x16\x03\x01\x00\x05hello\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn heads_are_read_whole_within_limits() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            a.write_all(b"CONNECT h:443 HTTP/1.1\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.write_all(b"\r\n").await.unwrap();
        });
        let (bytes, req) = read_connect(&mut b, Duration::from_secs(5)).await;
        assert_eq!(req.unwrap().host, "h");
        assert_eq!(bytes, b"CONNECT h:443 HTTP/1.1\r\n\r\n");

        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        a.write_all(&[b'a'; MAX_HEAD + 10]).await.unwrap();
        let (_, req) = read_connect(&mut b, Duration::from_secs(5)).await;
        assert_eq!(req.unwrap_err(), HeadError::Oversized);

        let (_a, mut b) = tokio::io::duplex(1024);
        let (_, req) = read_connect(&mut b, Duration::from_millis(50)).await;
        assert_eq!(req.unwrap_err(), HeadError::Timeout);
    }

    #[tokio::test]
    async fn opens_a_tunnel_and_reports_a_refusal() {
        let tunnel = Tunnel {
            authority: "xy.snowflakecomputing.com:443".into(),
            authorization: Some("Basic abc".into()),
        };
        let (mut agent, mut proxy) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(async move {
            let (_, req) = read_connect(&mut proxy, Duration::from_secs(5)).await;
            let req = req.unwrap();
            proxy
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .unwrap();
            req
        });
        open(&mut agent, &tunnel, Duration::from_secs(5))
            .await
            .unwrap();
        let req = served.await.unwrap();
        assert_eq!(req.authority, tunnel.authority);
        assert_eq!(req.authorization.as_deref(), Some("Basic abc"));

        let (mut agent, mut proxy) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let _ = read_connect(&mut proxy, Duration::from_secs(5)).await;
            proxy
                .write_all(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
                )
                .await
                .unwrap();
        });
        let err = open(&mut agent, &tunnel, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, TunnelError::Refused { status: 407, .. }),
            "{err}"
        );
    }
}
