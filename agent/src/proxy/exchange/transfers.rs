//! Stage transfers of a PUT/GET statement: the requests to the stage's storage stream both ways,
//! their bytes counted for the statement (and listed in its recording). The statement's wait for
//! them is in [`super::state::transfer_book`].

use std::sync::Arc;

use http::{Request, Response};
use tracing::debug;

use super::state::transfer_book::PendingTransfer;
use crate::proxy::transport::body::{Body, Counted};

/// A request of a PUT/GET statement's transfer: streamed both ways, its bytes counted for the
/// statement (and listed in its recording, without the query of the URL).
pub(super) async fn stage_transfer<F, Fut>(
    req: Request<Body>,
    transfer: Arc<PendingTransfer>,
    host: String,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    debug!(method = %req.method(), path = req.uri().path(), "stage transfer");
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    transfer.begin();
    let sent_here = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (sent, counter) = (transfer.clone(), sent_here.clone());
    let req = req.map(|body| {
        Counted::counting(body, move |bytes| {
            counter.store(bytes, std::sync::atomic::Ordering::Relaxed);
            sent.sent(bytes);
        })
    });
    let resp = send(req).await;
    let status = resp.status().as_u16();
    resp.map(|body| {
        Counted::counting(body, move |bytes| {
            let file = crate::recording::payload::TransferFile {
                method,
                host,
                path,
                status: Some(status),
                bytes_sent: sent_here.load(std::sync::atomic::Ordering::Relaxed),
                bytes_received: bytes,
            };
            transfer.end(bytes, file);
        })
    })
}
