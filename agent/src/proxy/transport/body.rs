//! HTTP bodies as both sides of the proxy carry them ([`Body`]), and as the layer above reads them
//! for inspection: read up to a limit (or handed back whole as a stream when larger), counted as
//! they pass, chained back together. Nothing here knows what a body says.
//!
//! Every byte held for inspection is paid for from one [`Budget`] shared by all connections
//! (docs/decisions.md §2): when it is spent, a new inspection waits until others hand their bytes on,
//! for at most the budget's wait (then the body is [`Collected::Unaffordable`] or a payment
//! [`Unpaid::Busy`]). The bytes keep their share of the budget until the body carrying them
//! onward has been dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The body type both sides of the proxy use.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// The unit the budget is counted in.
const UNIT: usize = 1024;

/// How long an inspection waits for its share of a [`Budget`] by default.
pub const DEFAULT_BUDGET_WAIT: Duration = Duration::from_secs(10);

/// The memory all inspections share, or one workload's share of it: a share pays from its own
/// semaphore and from the whole budget's, so no workload holds more than its share and none
/// more than the whole.
#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    units: usize,
    wait: Duration,
    whole: Option<Arc<Budget>>,
}

/// Why bytes could not be paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::proxy) enum Unpaid {
    /// The budget could never hold them (or it closed): waiting would never end.
    Never,
    /// The budget did not free enough within its wait.
    Busy,
}

impl Budget {
    /// A budget of `bytes` (rounded down to whole KiB, at least one), waited for at most
    /// [`DEFAULT_BUDGET_WAIT`].
    pub fn new(bytes: usize) -> Budget {
        Budget::with_wait(bytes, DEFAULT_BUDGET_WAIT)
    }

    /// A budget of `bytes` whose share an inspection waits at most `wait` for.
    pub fn with_wait(bytes: usize, wait: Duration) -> Budget {
        let units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Budget {
            sem: Arc::new(Semaphore::new(units)),
            units,
            wait,
            whole: None,
        }
    }

    /// A share of this budget of at most `bytes` (rounded down to whole KiB, at least one, at
    /// most the whole): what it holds is paid from both.
    pub fn share(&self, bytes: usize) -> Budget {
        let units = (bytes / UNIT).clamp(1, self.units);
        Budget {
            sem: Arc::new(Semaphore::new(units)),
            units,
            wait: self.wait,
            whole: Some(Arc::new(self.clone())),
        }
    }

    /// The budget in bytes.
    pub fn bytes(&self) -> usize {
        self.units * UNIT
    }

    /// Bytes not held by any inspection now.
    pub fn available(&self) -> usize {
        self.sem.available_permits() * UNIT
    }

    /// Waits (at most the budget's wait, for the share and the whole together) for `units`
    /// more of the budget and adds them to `held`.
    async fn reserve(&self, held: &mut Permits, units: usize) -> Result<(), Unpaid> {
        let Ok(n) = u32::try_from(units) else {
            return Err(Unpaid::Never);
        };
        let both = async {
            let own = self.sem.clone().acquire_many_owned(n).await;
            let whole = match &self.whole {
                Some(w) => Some(w.sem.clone().acquire_many_owned(n).await),
                None => None,
            };
            (own, whole)
        };
        match tokio::time::timeout(self.wait, both).await {
            Ok((Ok(p), None)) => {
                held.add(p, None);
                Ok(())
            }
            Ok((Ok(p), Some(Ok(w)))) => {
                held.add(p, Some(w));
                Ok(())
            }
            Ok(_) => Err(Unpaid::Never),
            Err(_) => Err(Unpaid::Busy),
        }
    }
}

/// The budget shares bytes held for inspection have paid: a workload's share and the whole's.
#[derive(Default)]
pub(in crate::proxy) struct Permits {
    own: Option<OwnedSemaphorePermit>,
    whole: Option<OwnedSemaphorePermit>,
}

impl Permits {
    fn add(&mut self, own: OwnedSemaphorePermit, whole: Option<OwnedSemaphorePermit>) {
        for (slot, p) in [(&mut self.own, Some(own)), (&mut self.whole, whole)] {
            if let Some(p) = p {
                match slot {
                    Some(h) => h.merge(p),
                    None => *slot = Some(p),
                }
            }
        }
    }

    /// Units held (of the share, which is never less than of the whole).
    fn units(&self) -> usize {
        self.own.as_ref().map_or(0, |p| p.num_permits())
    }
}

/// Bytes read for inspection, with their share of the budget.
pub(in crate::proxy) struct Held {
    /// The bytes.
    pub(in crate::proxy) bytes: Bytes,
    permit: Permits,
}

impl Held {
    /// How many bytes.
    pub(in crate::proxy) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Pays, from `budget`, for `bytes` more held alongside these (their decoded copy): the
    /// share is returned with this one's. [`Unpaid::Never`] when the budget closed or could
    /// never hold them together with these bytes, [`Unpaid::Busy`] when it did not free them
    /// within its wait.
    pub(in crate::proxy) async fn pay_for(
        &mut self,
        budget: &Budget,
        bytes: usize,
    ) -> Result<(), Unpaid> {
        let units = bytes.div_ceil(UNIT);
        if units == 0 {
            return Ok(());
        }
        let held = self.permit.units();
        if held.saturating_add(units) > budget.units {
            return Err(Unpaid::Never);
        }
        budget.reserve(&mut self.permit, units).await
    }

    /// A body carrying the bytes onward; the budget share is returned when it is dropped.
    pub(in crate::proxy) fn into_body(self) -> Body {
        Passing {
            inner: full(self.bytes),
            watch: self.permit,
        }
        .boxed()
    }
}

/// A whole body keeps its share of the budget while it lives, and passes its end on.
impl Watch for Permits {
    // Said, so that h2 ends the stream on the data frame, not with an empty one after it.
    const SAYS_END: bool = true;

    fn saw(&mut self, _: &Polled) {}
}

/// One poll of a body for its next frame.
type Polled = Poll<Option<Result<Frame<Bytes>, hyper::Error>>>;

/// What a [`Passing`] body keeps or does besides handing its inner body's frames on.
trait Watch: Send + Sync + Unpin + 'static {
    /// Whether the body says it has ended when its inner body does. A watch that must see the
    /// end of the body (the last poll) says no, so that the body is polled to its end.
    const SAYS_END: bool;

    /// Sees each poll of the inner body before it is handed on.
    fn saw(&mut self, polled: &Polled);
}

/// A body handing `inner`'s frames on as they come, `watch` seeing each poll: the polling that
/// held bytes ([`Held::into_body`]) and [`Counted`] bodies share.
struct Passing<W> {
    inner: Body,
    watch: W,
}

impl<W: Watch> hyper::body::Body for Passing<W> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.watch.saw(&polled);
        polled
    }

    fn is_end_stream(&self) -> bool {
        W::SAYS_END && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What a [`Counted`] body reports at its end: the bytes that passed, and its copy when it kept
/// one (the body ended whole and fit in the room it was given).
pub(in crate::proxy) type OnEnd = Box<dyn FnOnce(u64, Option<Vec<u8>>) + Send + Sync>;

/// A body passed on as it comes, its bytes counted, and optionally a copy of it kept while it
/// fits in a bounded room: one type serves stage transfers (counted), and result chunks (counted
/// for their statement, copied for its recording). The total and the copy are reported once, at
/// the end (or when dropped early, then without a copy).
pub(in crate::proxy) struct Counted {
    bytes: u64,
    copy: Option<Vec<u8>>,
    room: usize,
    on_end: Option<OnEnd>,
}

impl Counted {
    /// `inner`, counted; `on_end` gets the total.
    pub(in crate::proxy) fn counting(
        inner: Body,
        on_end: impl FnOnce(u64) + Send + Sync + 'static,
    ) -> Body {
        Passing {
            inner,
            watch: Counted {
                bytes: 0,
                copy: None,
                room: 0,
                on_end: Some(Box::new(move |n, _| on_end(n))),
            },
        }
        .boxed()
    }

    /// `inner`, counted, with a copy kept while it fits in `room` bytes (none kept when `room`
    /// is `None`); `on_end` gets the total and the copy.
    pub(in crate::proxy) fn copied(inner: Body, room: Option<usize>, on_end: OnEnd) -> Body {
        Passing {
            inner,
            watch: Counted {
                bytes: 0,
                copy: room.map(|_| Vec::new()),
                room: room.unwrap_or(0),
                on_end: Some(on_end),
            },
        }
        .boxed()
    }
}

impl Watch for Counted {
    // Polled to its end, which reports the total and the copy.
    const SAYS_END: bool = false;

    fn saw(&mut self, polled: &Polled) {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len();
                    self.bytes += n as u64;
                    let room = self.room;
                    if let Some(c) = self.copy.as_mut() {
                        if c.len() + n <= room {
                            c.extend_from_slice(d);
                        } else {
                            // Past its room: the copy is given up, the counting goes on.
                            self.copy = None;
                        }
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = self.on_end.take() {
                    let copy = self.copy.take();
                    f(self.bytes, copy);
                }
            }
            Poll::Ready(Some(Err(_))) => self.copy = None,
            Poll::Pending => {}
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            // Not read to the end: counted as far as it went, nothing of it kept.
            f(self.bytes, None);
        }
    }
}

/// A body read whole, or too big to hold (then handed back as a stream replaying what was read).
pub(in crate::proxy) enum Collected {
    /// Read whole, and paid for.
    Whole(Held),
    /// Larger than the limit: the whole body, as a stream.
    TooLarge(Body),
    /// The budget did not free room for it within its wait: the whole body, as a stream.
    Unaffordable(Body),
    /// Reading it failed.
    Failed(String),
}

/// Reads `body` up to `limit` bytes, paying for what it holds from `budget`.
pub(in crate::proxy) async fn collect(mut body: Body, limit: usize, budget: &Budget) -> Collected {
    let limit = limit.min(budget.bytes());
    let mut buf = BytesMut::new();
    let mut permit = Permits::default();
    let mut units = 0usize;
    loop {
        match body.frame().await {
            None => {
                return Collected::Whole(Held {
                    bytes: buf.freeze(),
                    permit,
                });
            }
            Some(Err(e)) => return Collected::Failed(e.to_string()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        // Too big to inspect: hand everything on as a stream, holding nothing.
                        drop(permit);
                        let head = Full::new(buf.freeze()).map_err(|never| match never {});
                        return Collected::TooLarge(chain(head.boxed(), body));
                    }
                    let needed = buf.len().div_ceil(UNIT);
                    if needed > units {
                        match budget.reserve(&mut permit, needed - units).await {
                            Ok(()) => units = needed,
                            Err(Unpaid::Busy) => {
                                drop(permit);
                                let head = Full::new(buf.freeze()).map_err(|never| match never {});
                                return Collected::Unaffordable(chain(head.boxed(), body));
                            }
                            Err(Unpaid::Never) => {
                                return Collected::Failed("inspection budget closed".into());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `first`, then `second`, as one body.
pub(in crate::proxy) fn chain(first: Body, second: Body) -> Body {
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

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        if let Some(first) = self.first.as_mut() {
            match Pin::new(first).poll_frame(cx) {
                Poll::Ready(None) => self.first = None,
                other => return other,
            }
        }
        Pin::new(&mut self.second).poll_frame(cx)
    }
}

pub(in crate::proxy) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn body_of(n: usize) -> Body {
        Full::new(Bytes::from(vec![7u8; n]))
            .map_err(|never| match never {})
            .boxed()
    }

    #[tokio::test]
    async fn a_decoded_copy_pays_too_and_is_refused_when_it_could_never_fit() {
        let budget = Budget::new(8 * 1024);
        let Collected::Whole(mut held) = collect(body_of(3 * 1024), 1 << 20, &budget).await else {
            panic!("not whole");
        };
        assert_eq!(held.pay_for(&budget, 4 * 1024).await, Ok(()));
        assert_eq!(budget.available(), 1024);
        assert_eq!(
            held.pay_for(&budget, 2 * 1024).await,
            Err(Unpaid::Never),
            "9 KiB can never fit an 8 KiB budget"
        );
        assert_eq!(budget.available(), 1024, "a refused payment holds nothing");
        drop(held.into_body());
        assert_eq!(
            budget.available(),
            8 * 1024,
            "both shares come back together"
        );
    }

    #[tokio::test]
    async fn held_bytes_pay_from_the_budget_until_their_body_is_dropped() {
        let budget = Budget::new(8 * 1024);
        let Collected::Whole(held) = collect(body_of(6 * 1024), 1 << 20, &budget).await else {
            panic!("not whole");
        };
        assert_eq!(held.len(), 6 * 1024);
        assert_eq!(budget.available(), 2 * 1024);

        // A second inspection needing more than is left waits...
        let b2 = budget.clone();
        let waiting = tokio::spawn(async move { collect(body_of(4 * 1024), 1 << 20, &b2).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // ...until the first body has been carried on and dropped.
        let body = held.into_body();
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 6 * 1024);
        let Collected::Whole(second) = waiting.await.unwrap() else {
            panic!("not whole");
        };
        assert_eq!(second.len(), 4 * 1024);
        drop(second);
        assert_eq!(budget.available(), 8 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_the_budget_ends_at_its_deadline() {
        let budget = Budget::with_wait(8 * 1024, Duration::from_secs(3));
        let Collected::Whole(mut held) = collect(body_of(6 * 1024), 1 << 20, &budget).await else {
            panic!("not whole");
        };
        // Another inspection that needs more than is left gets the whole body back, unread, once
        // the wait passed: the budget stays as the first holds it.
        let Collected::Unaffordable(body) = collect(body_of(4 * 1024), 1 << 20, &budget).await
        else {
            panic!("waited past the deadline or was not handed back");
        };
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 4 * 1024);
        assert_eq!(budget.available(), 2 * 1024);
        // So does a payment for a decoded copy.
        let other = Budget::with_wait(8 * 1024, Duration::from_secs(3));
        let Collected::Whole(hog) = collect(body_of(7 * 1024), 1 << 20, &other).await else {
            panic!("not whole");
        };
        let Collected::Whole(mut small) = collect(body_of(1024), 1 << 20, &other).await else {
            panic!("not whole");
        };
        assert_eq!(small.pay_for(&other, 1024).await, Err(Unpaid::Busy));
        drop(hog);
        assert_eq!(small.pay_for(&other, 1024).await, Ok(()));
        assert_eq!(held.pay_for(&budget, 1024).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_workloads_share_bounds_it_and_leaves_the_rest_to_others() {
        let whole = Budget::with_wait(8 * 1024, Duration::from_secs(3));
        let (a, b) = (whole.share(4 * 1024), whole.share(4 * 1024));
        let Collected::Whole(held) = collect(body_of(4 * 1024), 1 << 20, &a).await else {
            panic!("not whole");
        };
        assert_eq!(whole.available(), 4 * 1024);
        // Workload A is at its share: its next inspection waits, then gets its body back.
        assert!(matches!(
            collect(body_of(1024), 1 << 20, &a).await,
            Collected::Unaffordable(_)
        ));
        // Workload B is served from what the whole has left.
        let Collected::Whole(other) = collect(body_of(4 * 1024), 1 << 20, &b).await else {
            panic!("B was starved by A");
        };
        assert_eq!(whole.available(), 0);
        drop((held, other));
        assert_eq!(whole.available(), 8 * 1024);
        assert_eq!(a.available(), 4 * 1024);
    }

    /// A body of several data frames.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }

    fn frames(parts: &[&'static [u8]]) -> Body {
        Frames(parts.iter().map(|p| Bytes::from_static(p)).collect()).boxed()
    }

    type Seen = Arc<std::sync::Mutex<Option<(u64, Option<Vec<u8>>)>>>;

    fn reporting(seen: &Seen) -> OnEnd {
        let seen = seen.clone();
        Box::new(move |n, copy| *seen.lock().unwrap() = Some((n, copy)))
    }

    #[tokio::test]
    async fn counted_bodies_count_and_copy_within_their_room() {
        // Fits: the copy is the whole body.
        let seen = Seen::default();
        let body = Counted::copied(frames(&[b"abc", b"defg"]), Some(7), reporting(&seen));
        assert_eq!(body.collect().await.unwrap().to_bytes(), &b"abcdefg"[..]);
        assert_eq!(
            seen.lock().unwrap().take(),
            Some((7, Some(b"abcdefg".to_vec())))
        );
        // Past the room: everything passes and is counted, nothing is kept.
        let body = Counted::copied(frames(&[b"abc", b"defg"]), Some(5), reporting(&seen));
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 7);
        assert_eq!(seen.lock().unwrap().take(), Some((7, None)));
        // No room asked for: counted only.
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let t = total.clone();
        let body = Counted::counting(frames(&[b"ab", b"c"]), move |n| {
            t.store(n, std::sync::atomic::Ordering::SeqCst);
        });
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 3);
        assert_eq!(total.load(std::sync::atomic::Ordering::SeqCst), 3);
        // Dropped before its end: reported once, as far as it went, without a copy.
        let mut body = Counted::copied(frames(&[b"abc", b"defg"]), Some(100), reporting(&seen));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, &b"abc"[..]);
        drop(body);
        assert_eq!(seen.lock().unwrap().take(), Some((3, None)));
    }

    #[tokio::test]
    async fn too_large_streams_on_and_holds_nothing() {
        let budget = Budget::new(64 * 1024);
        let Collected::TooLarge(rest) = collect(body_of(10_000), 4096, &budget).await else {
            panic!("not too large");
        };
        assert_eq!(budget.available(), 64 * 1024);
        assert_eq!(rest.collect().await.unwrap().to_bytes().len(), 10_000);
    }
}
