//! Passthrough: bytes both ways between the client and its original destination, untouched.
//!
//! Bounded buffers (one per direction), half-close carried across, an idle timeout, and a forced
//! close when the daemon's drain period ends. Bytes are counted as they pass so that a connection
//! cut short still reports what it carried.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// How a spliced connection ended; the `close_reason` column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides finished normally.
    Completed,
    /// A side reset the connection or an I/O error ended it.
    Error(String),
    /// No bytes moved for the idle timeout.
    IdleTimeout,
    /// The daemon stopped and the drain period ran out.
    Shutdown,
}

impl CloseReason {
    /// The text stored in the audit.
    pub fn as_audit(&self) -> String {
        match self {
            CloseReason::Completed => "completed".into(),
            CloseReason::Error(e) => format!("error: {e}"),
            CloseReason::IdleTimeout => "idle_timeout".into(),
            CloseReason::Shutdown => "shutdown".into(),
        }
    }
}

/// What a splice carried.
#[derive(Debug, Clone)]
pub struct Carried {
    /// Client to upstream.
    pub bytes_in: u64,
    /// Upstream to client.
    pub bytes_out: u64,
    /// How it ended.
    pub reason: CloseReason,
}

/// A stream that counts the bytes read from it and stamps the time of the last activity.
pub(crate) struct Metered<S> {
    inner: S,
    read: Arc<AtomicU64>,
    activity: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S> Metered<S> {
    /// Wraps `inner`, adding bytes read to `read` and stamping `activity` (ms since `epoch`).
    pub(crate) fn new(
        inner: S,
        read: Arc<AtomicU64>,
        activity: Arc<AtomicU64>,
        epoch: Instant,
    ) -> Self {
        Metered {
            inner,
            read,
            activity,
            epoch,
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Splices `client` and `upstream` until both sides are done, the idle timeout passes, or
/// `force_close` turns true.
pub async fn splice<C: AsyncRead + AsyncWrite + Unpin>(
    client: C,
    upstream: TcpStream,
    buffer_bytes: usize,
    idle_timeout: Duration,
    mut force_close: watch::Receiver<bool>,
) -> Carried {
    let epoch = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let bytes_in = Arc::new(AtomicU64::new(0));
    let bytes_out = Arc::new(AtomicU64::new(0));
    let mut a = Metered {
        inner: client,
        read: bytes_in.clone(),
        activity: activity.clone(),
        epoch,
    };
    let mut b = Metered {
        inner: upstream,
        read: bytes_out.clone(),
        activity: activity.clone(),
        epoch,
    };
    let reason = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, buffer_bytes, buffer_bytes) => match r {
            Ok(_) => CloseReason::Completed,
            Err(e) => CloseReason::Error(e.kind().to_string()),
        },
        _ = idle(&activity, epoch, idle_timeout) => CloseReason::IdleTimeout,
        _ = crate::drain::signalled(&mut force_close) => CloseReason::Shutdown,
    };
    Carried {
        bytes_in: bytes_in.load(Ordering::Relaxed),
        bytes_out: bytes_out.load(Ordering::Relaxed),
        reason,
    }
}

/// Resolves once no activity has been stamped for `timeout`.
pub(crate) async fn idle(activity: &AtomicU64, epoch: Instant, timeout: Duration) {
    loop {
        let last = epoch + Duration::from_millis(activity.load(Ordering::Relaxed));
        let deadline = last + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn carries_bytes_and_half_close_both_ways() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut server) = pair().await;
        let (_tx, rx) = watch::channel(false);
        let task = tokio::spawn(splice(
            client_side,
            upstream_side,
            1024,
            Duration::from_secs(60),
            rx,
        ));
        client.write_all(b"hello upstream").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello upstream");
        // The client half-closed; the server can still answer.
        server.write_all(&[7u8; 5000]).await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back.len(), 5000);
        let carried = task.await.unwrap();
        assert_eq!(carried.bytes_in, 14);
        assert_eq!(carried.bytes_out, 5000);
        assert_eq!(carried.reason, CloseReason::Completed);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        let (_client, client_side) = pair().await;
        let (upstream_side, _server) = pair().await;
        let (_tx, rx) = watch::channel(false);
        let carried = splice(client_side, upstream_side, 1024, Duration::from_secs(5), rx).await;
        assert_eq!(carried.reason, CloseReason::IdleTimeout);
    }

    #[tokio::test]
    async fn forced_close_ends_the_splice() {
        let (_client, client_side) = pair().await;
        let (upstream_side, _server) = pair().await;
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(splice(
            client_side,
            upstream_side,
            1024,
            Duration::from_secs(600),
            rx,
        ));
        tx.send(true).unwrap();
        assert_eq!(task.await.unwrap().reason, CloseReason::Shutdown);
    }
}
