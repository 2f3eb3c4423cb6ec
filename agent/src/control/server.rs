//! The daemon's side of the control socket: bind, accept, check the peer, frame lines.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{Instrument as _, debug, info_span, warn};

use super::{MAX_LINE, Request, Response};

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another daemon answers on the socket.
    #[error("another snowtrail daemon is already listening on {0}")]
    AlreadyRunning(PathBuf),
    /// Creating, binding or securing the socket failed.
    #[error("control socket {0}: {1}")]
    Bind(PathBuf, #[source] std::io::Error),
}

/// Per-connection state the handler may keep (the exec cgroups begun on this connection).
#[derive(Debug, Default)]
pub struct Session {
    /// The peer's uid (`SO_PEERCRED`).
    pub peer_uid: u32,
    /// The peer's pid, when the kernel reported one.
    pub peer_pid: Option<u32>,
    /// Exec cgroups begun on this connection and not yet ended.
    pub exec_cgroups: Vec<String>,
}

/// What the daemon does with requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Runs on a blocking thread: it may do file and bpf syscalls.
    fn handle(&self, request: Request, session: &mut Session) -> Response;
    /// The connection ended (the CLI exited or died).
    fn closed(&self, session: Session);
}

/// Binds the control socket at `path`, root-only, replacing a stale socket file.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    let err = |e| Error::Bind(path.to_owned(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::AlreadyRunning(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves connections until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    handler: Arc<dyn Handler>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = crate::drain::signalled(&mut shutdown) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                continue;
            }
        };
        next_id += 1;
        let handler = handler.clone();
        let span = info_span!("control", id = next_id);
        tokio::spawn(serve_one(stream, handler).instrument(span));
    }
}

async fn serve_one(stream: UnixStream, handler: Arc<dyn Handler>) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "no peer credentials; closing");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    if cred.uid() != 0 {
        warn!(
            uid = cred.uid(),
            "refused a control connection from a non-root user"
        );
        let _ = write_response(
            &mut write,
            &Response::Error {
                message: "the control socket is for root only".into(),
            },
        )
        .await;
        return;
    }
    let mut session = Session {
        peer_uid: cred.uid(),
        peer_pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
        exec_cgroups: Vec::new(),
    };
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
        {
            Ok(0) => break,
            Ok(_) if !line.ends_with('\n') => {
                let _ = write_response(
                    &mut write,
                    &Response::Error {
                        message: "request too long".into(),
                    },
                )
                .await;
                break;
            }
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "control read failed");
                break;
            }
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                debug!(?request, "control request");
                let h = handler.clone();
                let mut s = std::mem::take(&mut session);
                match tokio::task::spawn_blocking(move || {
                    let r = h.handle(request, &mut s);
                    (r, s)
                })
                .await
                {
                    Ok((r, s)) => {
                        session = s;
                        r
                    }
                    Err(e) => Response::Error {
                        message: format!("internal error: {e}"),
                    },
                }
            }
            Err(e) => Response::Error {
                message: format!("malformed request: {e}"),
            },
        };
        if write_response(&mut write, &response).await.is_err() {
            break;
        }
    }
    let h = handler.clone();
    let _ = tokio::task::spawn_blocking(move || h.closed(session)).await;
}

async fn write_response(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await
}
