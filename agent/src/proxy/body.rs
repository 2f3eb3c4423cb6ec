//! Response and request bodies as the exchange inspector handles them: read up to a limit (or
//! handed back whole as a stream when larger), counted as they pass, chained back together.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};

use super::intercept::Body;

/// A body that counts its bytes and reports the total once, at its end (or when dropped early).
pub(super) struct Counted {
    pub(super) inner: Body,
    pub(super) bytes: u64,
    pub(super) on_end: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            std::task::Poll::Ready(None) => {
                if let Some(f) = self.on_end.take() {
                    f(self.bytes);
                }
            }
            _ => {}
        }
        polled
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes);
        }
    }
}

/// A body read whole, or too big to hold (then handed back as a stream replaying what was read).
pub(super) enum Collected {
    Whole(Bytes),
    TooLarge(Body),
    Failed(String),
}

/// Reads `body` up to `limit` bytes.
pub(super) async fn collect(mut body: Body, limit: usize) -> Collected {
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Collected::Whole(buf.freeze()),
            Some(Err(e)) => return Collected::Failed(e.to_string()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        let head = Full::new(buf.freeze()).map_err(|never| match never {});
                        let rest = chain(head.boxed(), body);
                        return Collected::TooLarge(rest);
                    }
                }
            }
        }
    }
}

/// `first`, then `second`, as one body.
pub(super) fn chain(first: Body, second: Body) -> Body {
    Chain {
        first: Some(first),
        second,
    }
    .boxed()
}

/// Two bodies, one after the other.
struct Chain {
    first: Option<Body>,
    second: Body,
}

impl hyper::body::Body for Chain {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        if let Some(first) = self.first.as_mut() {
            match std::pin::Pin::new(first).poll_frame(cx) {
                std::task::Poll::Ready(None) => self.first = None,
                other => return other,
            }
        }
        std::pin::Pin::new(&mut self.second).poll_frame(cx)
    }
}

pub(super) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}
