//! Passthrough: bytes both ways between the client and its original destination, untouched.
//!
//! [`relay`] moves them inside the kernel: `splice(2)` from one socket into a pipe and from the
//! pipe into the other socket, one pipe per direction, driven by tokio's readiness, so the bytes
//! never cross into the agent's memory (the daemon's CPU per GB carried is what a user-space copy
//! costs twice over). The bytes read while peeking at the ClientHello are written first, and where
//! no pipe can be had (the open-files limit) [`splice`] copies through bounded user-space buffers
//! instead. Either way: half-close carried across, an idle timeout, and a forced close when the
//! daemon's drain period ends. Bytes are counted as they pass so that a connection cut short still
//! reports what it carried.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

/// How a spliced connection ended: `Completed`, `Error`, `IdleTimeout` or `Shutdown` of the
/// audit's `close_reason` vocabulary.
pub use crate::audit::CloseReason;

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

/// Bytes that must move, either way, for a connection to count as active again: a trickle below
/// this per idle timeout (a byte every few minutes) does not keep a connection, and the slot it
/// holds, alive.
pub const KEEPALIVE_BYTES: u64 = 1024;

/// When a connection last showed life, for its idle timeout: stamped each time another
/// [`KEEPALIVE_BYTES`] moved since the last stamp (and at the start).
pub(crate) struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    since: AtomicU64,
}

impl Activity {
    /// A connection's activity, starting now.
    pub(crate) fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }
    }

    /// `n` bytes moved.
    pub(crate) fn moved(&self, n: usize) {
        let total = self.since.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total >= KEEPALIVE_BYTES {
            self.since.store(0, Ordering::Relaxed);
            let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// Resolves once no activity has been stamped for `timeout`.
    pub(crate) async fn idle(&self, timeout: Duration) {
        loop {
            let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that counts the bytes read from it (and, if asked, written to it) and stamps its
/// connection's [`Activity`].
pub(crate) struct Metered<S> {
    inner: S,
    read: Arc<AtomicU64>,
    written: Option<Arc<AtomicU64>>,
    activity: Arc<Activity>,
}

impl<S> Metered<S> {
    /// Wraps `inner`, adding bytes read to `read` and stamping `activity`.
    pub(crate) fn new(inner: S, read: Arc<AtomicU64>, activity: Arc<Activity>) -> Self {
        Metered {
            inner,
            read,
            written: None,
            activity,
        }
    }

    /// Also adds the bytes written to `written`, stamping activity as reads do.
    pub(crate) fn counting_writes(mut self, written: Arc<AtomicU64>) -> Self {
        self.written = Some(written);
        self
    }

    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        if let (Some(w), Poll::Ready(Ok(n))) = (&self.written, r)
            && *n > 0
        {
            w.fetch_add(*n as u64, Ordering::Relaxed);
            self.activity.moved(*n);
        }
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
            self.activity.moved(n);
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
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&r);
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Relays a TCP `client` and `upstream` in the kernel until both sides are done, the idle timeout
/// passes, or `force_close` turns true. `prefix` (the client's bytes already read) goes upstream
/// first. Falls back to [`splice`]'s user-space copy when the pipes cannot be made.
pub async fn relay(
    prefix: Vec<u8>,
    client: TcpStream,
    upstream: TcpStream,
    buffer_bytes: usize,
    idle_timeout: Duration,
    mut force_close: watch::Receiver<bool>,
) -> Carried {
    let (to_upstream, to_client) = match (Pipe::new(buffer_bytes), Pipe::new(buffer_bytes)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            debug!(error = %e, "no pipe for splice(2); copying through user space");
            let client = super::replay::Prefixed::new(prefix, client);
            return splice(client, upstream, buffer_bytes, idle_timeout, force_close).await;
        }
    };
    let activity = Activity::new();
    let bytes_in = AtomicU64::new(0);
    let bytes_out = AtomicU64::new(0);
    let meter_in = Meter {
        read: &bytes_in,
        activity: &activity,
    };
    let meter_out = Meter {
        read: &bytes_out,
        activity: &activity,
    };
    let both = async {
        tokio::try_join!(
            pump(&client, &upstream, &to_upstream, &prefix, &meter_in),
            pump(&upstream, &client, &to_client, &[], &meter_out),
        )
    };
    let reason = until_closed(both, &activity, idle_timeout, &mut force_close).await;
    Carried {
        bytes_in: bytes_in.load(Ordering::Relaxed),
        bytes_out: bytes_out.load(Ordering::Relaxed),
        reason,
    }
}

/// Runs a relay's `transfer` until it ends, the connection has been idle for `idle_timeout`, or
/// `force_close` turns true, and says which of them closed it.
async fn until_closed<T>(
    transfer: impl std::future::Future<Output = io::Result<T>>,
    activity: &Activity,
    idle_timeout: Duration,
    force_close: &mut watch::Receiver<bool>,
) -> CloseReason {
    tokio::select! {
        r = transfer => match r {
            Ok(_) => CloseReason::Completed,
            Err(e) => CloseReason::Error(e.kind().to_string()),
        },
        _ = activity.idle(idle_timeout) => CloseReason::IdleTimeout,
        _ = crate::drain::signalled(force_close) => CloseReason::Shutdown,
    }
}

/// Where one direction of a relay counts its bytes and stamps its activity.
struct Meter<'a> {
    read: &'a AtomicU64,
    activity: &'a Activity,
}

impl Meter<'_> {
    fn add(&self, n: usize) {
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        self.activity.moved(n);
    }
}

/// One direction's pipe: what `splice(2)` moves bytes through between two sockets.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its capacity: the most one splice moves.
    size: usize,
}

impl Pipe {
    /// A non-blocking pipe of about `bytes` (the kernel's default where it cannot be resized).
    fn new(bytes: usize) -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let wanted = i32::try_from(bytes).unwrap_or(i32::MAX);
        let size = nix::fcntl::fcntl(&write, FcntlArg::F_SETPIPE_SZ(wanted))
            .or_else(|_| nix::fcntl::fcntl(&write, FcntlArg::F_GETPIPE_SZ))?;
        Ok(Pipe {
            read,
            write,
            size: usize::try_from(size).unwrap_or(4096).max(4096),
        })
    }
}

/// Moves one direction from `src` to `dst` until `src` ends, then half-closes `dst`.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    prefix: &[u8],
    meter: &Meter<'_>,
) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    if !prefix.is_empty() {
        meter.add(prefix.len());
        let mut rest = prefix;
        while !rest.is_empty() {
            dst.writable().await?;
            match dst.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    loop {
        // Socket to pipe. The pipe is empty here, so "would block" can only be the socket's.
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                nix::fcntl::splice(src, None, &pipe.write, None, pipe.size, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return match nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(dst),
                nix::sys::socket::Shutdown::Write,
            ) {
                Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        meter.add(n);
        // Pipe to socket, until the pipe is empty again.
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                nix::fcntl::splice(&pipe.read, None, dst, None, left, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Copies `client` and `upstream` through user-space buffers until both sides are done, the idle
/// timeout passes, or `force_close` turns true.
pub async fn splice<C: AsyncRead + AsyncWrite + Unpin>(
    client: C,
    upstream: TcpStream,
    buffer_bytes: usize,
    idle_timeout: Duration,
    mut force_close: watch::Receiver<bool>,
) -> Carried {
    let activity = Arc::new(Activity::new());
    let bytes_in = Arc::new(AtomicU64::new(0));
    let bytes_out = Arc::new(AtomicU64::new(0));
    let mut a = Metered::new(client, bytes_in.clone(), activity.clone());
    let mut b = Metered::new(upstream, bytes_out.clone(), activity.clone());
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, buffer_bytes, buffer_bytes);
    let reason = until_closed(copy, &activity, idle_timeout, &mut force_close).await;
    Carried {
        bytes_in: bytes_in.load(Ordering::Relaxed),
        bytes_out: bytes_out.load(Ordering::Relaxed),
        reason,
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

    /// Which of the two ways a test runs the passthrough.
    #[derive(Clone, Copy)]
    enum Way {
        Kernel,
        Copy,
    }

    async fn run(
        way: Way,
        prefix: &[u8],
        client_side: TcpStream,
        upstream_side: TcpStream,
        buffer: usize,
        idle: Duration,
        rx: watch::Receiver<bool>,
    ) -> Carried {
        match way {
            Way::Kernel => {
                relay(
                    prefix.to_vec(),
                    client_side,
                    upstream_side,
                    buffer,
                    idle,
                    rx,
                )
                .await
            }
            Way::Copy => {
                let client = super::super::replay::Prefixed::new(prefix.to_vec(), client_side);
                splice(client, upstream_side, buffer, idle, rx).await
            }
        }
    }

    async fn carries_bytes_and_half_close(way: Way) {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut server) = pair().await;
        let (_tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            run(
                way,
                b"",
                client_side,
                upstream_side,
                1024,
                Duration::from_secs(60),
                rx,
            )
            .await
        });
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

    #[tokio::test]
    async fn carries_bytes_and_half_close_both_ways() {
        carries_bytes_and_half_close(Way::Kernel).await;
        carries_bytes_and_half_close(Way::Copy).await;
    }

    /// A pattern that shows a byte out of place: position-dependent, not a multiple of the pipe.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 11) as u8))
            .collect()
    }

    #[tokio::test]
    async fn relay_moves_megabytes_both_ways_after_the_peeked_prefix() {
        let (client, client_side) = pair().await;
        let (upstream_side, server) = pair().await;
        let (_tx, rx) = watch::channel(false);
        let prefix = b"\x16\x03\x01peeked hello".to_vec();
        let up = pattern(3 * 1024 * 1024 + 17, 1);
        let down = pattern(5 * 1024 * 1024 + 3, 2);
        let task = tokio::spawn(relay(
            prefix.clone(),
            client_side,
            upstream_side,
            16 * 1024,
            Duration::from_secs(60),
            rx,
        ));
        let (mut client_r, mut client_w) = client.into_split();
        let (mut server_r, mut server_w) = server.into_split();
        let sent_up = up.clone();
        let writer_up = tokio::spawn(async move {
            client_w.write_all(&sent_up).await.unwrap();
            client_w.shutdown().await.unwrap();
        });
        let sent_down = down.clone();
        let writer_down = tokio::spawn(async move {
            server_w.write_all(&sent_down).await.unwrap();
            server_w.shutdown().await.unwrap();
        });
        let mut at_server = Vec::new();
        let mut at_client = Vec::new();
        let (a, b) = tokio::join!(
            server_r.read_to_end(&mut at_server),
            client_r.read_to_end(&mut at_client)
        );
        a.unwrap();
        b.unwrap();
        writer_up.await.unwrap();
        writer_down.await.unwrap();
        let mut expected_up = prefix.clone();
        expected_up.extend_from_slice(&up);
        assert!(at_server == expected_up, "upstream got other bytes");
        assert!(at_client == down, "client got other bytes");
        let carried = task.await.unwrap();
        assert_eq!(carried.bytes_in, expected_up.len() as u64);
        assert_eq!(carried.bytes_out, down.len() as u64);
        assert_eq!(carried.reason, CloseReason::Completed);
    }

    #[tokio::test]
    async fn a_reset_upstream_ends_the_relay_with_an_error() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, server) = pair().await;
        let (_tx, rx) = watch::channel(false);
        let task = tokio::spawn(relay(
            Vec::new(),
            client_side,
            upstream_side,
            4096,
            Duration::from_secs(60),
            rx,
        ));
        // A linger of zero makes the close a reset.
        nix::sys::socket::setsockopt(
            &server,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .unwrap();
        drop(server);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        let carried = task.await.unwrap();
        assert!(
            matches!(carried.reason, CloseReason::Error(_)),
            "{:?}",
            carried.reason
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        for way in [Way::Kernel, Way::Copy] {
            let (_client, client_side) = pair().await;
            let (upstream_side, _server) = pair().await;
            let (_tx, rx) = watch::channel(false);
            let carried = run(
                way,
                b"",
                client_side,
                upstream_side,
                1024,
                Duration::from_secs(5),
                rx,
            )
            .await;
            assert_eq!(carried.reason, CloseReason::IdleTimeout);
        }
    }

    /// Writes `chunk` bytes every `every` to `stream`, `times` times, then closes it; stops early
    /// when the other side closed.
    async fn trickle(mut stream: TcpStream, chunk: usize, every: Duration, times: usize) {
        for _ in 0..times {
            if stream.write_all(&vec![b'x'; chunk]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
        let _ = stream.shutdown().await;
    }

    #[tokio::test]
    async fn a_trickle_does_not_keep_a_connection_alive_but_traffic_does() {
        for way in [Way::Kernel, Way::Copy] {
            // A byte every 200 ms for a minute: never KEEPALIVE_BYTES within the 1 s idle timeout.
            let (client, client_side) = pair().await;
            let (upstream_side, mut server) = pair().await;
            let (_tx, rx) = watch::channel(false);
            let drip = tokio::spawn(trickle(client, 1, Duration::from_millis(200), 300));
            let sink = tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while matches!(server.read(&mut buf).await, Ok(n) if n > 0) {}
            });
            let carried = run(
                way,
                b"",
                client_side,
                upstream_side,
                1024,
                Duration::from_secs(1),
                rx,
            )
            .await;
            assert_eq!(carried.reason, CloseReason::IdleTimeout);
            assert!(carried.bytes_in >= 2, "{carried:?}");
            drip.abort();
            sink.abort();

            // 2 KiB every 200 ms for a second and a half: alive until the client closes.
            let (client, client_side) = pair().await;
            let (upstream_side, mut server) = pair().await;
            let (_tx, rx) = watch::channel(false);
            let flow = tokio::spawn(trickle(client, 2048, Duration::from_millis(200), 8));
            let sink = tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while matches!(server.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = server.shutdown().await;
            });
            let carried = run(
                way,
                b"",
                client_side,
                upstream_side,
                1024,
                Duration::from_secs(1),
                rx,
            )
            .await;
            assert_eq!(carried.reason, CloseReason::Completed, "{carried:?}");
            assert_eq!(carried.bytes_in, 8 * 2048);
            flow.await.unwrap();
            sink.await.unwrap();
        }
    }

    #[tokio::test]
    async fn forced_close_ends_the_splice() {
        for way in [Way::Kernel, Way::Copy] {
            let (_client, client_side) = pair().await;
            let (upstream_side, _server) = pair().await;
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(async move {
                run(
                    way,
                    b"",
                    client_side,
                    upstream_side,
                    1024,
                    Duration::from_secs(600),
                    rx,
                )
                .await
            });
            tx.send(true).unwrap();
            assert_eq!(task.await.unwrap().reason, CloseReason::Shutdown);
        }
    }
}
