//! Session recording in the data path: what a statement's result looked like to the workload is
//! captured here (after masking), within the caps, and handed to the recordings writer; the
//! statement's audit row is submitted once its recording is durable, saying what became of it.
//! Capturing and the payload format are [`crate::recording`]; this module moves bytes.
//!
//! Chunk downloads are teed: the workload gets every byte as it arrives, and a copy is kept only
//! while it fits in what the chunk reserved of the statement's cap (its uncompressed size); a
//! chunk that does not fit is counted, not kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::BodyExt as _;
use tracing::warn;

use super::exchange::Inspector;
use super::intercept::Body;
use super::sessions::{PendingResult, Session};
use crate::audit::Event;
use crate::recording::{Capture, RecordingConfig, RecordingWriter, Status, Submission};
use crate::snowflake::ContentEncoding;

/// The recordings writer and what decides which statements it records.
pub struct Recorder {
    /// Where recordings go.
    pub writer: RecordingWriter,
    /// The `[recording]` section.
    pub config: RecordingConfig,
    /// Statements whose audit row waits for their recording to be durable; the daemon's stop
    /// waits for them before it closes the audit.
    pub in_flight: Arc<AtomicUsize>,
}

/// A statement's recording in progress.
#[derive(Debug)]
pub struct Recording {
    capture: Capture,
    session: Option<Arc<AtomicU64>>,
}

impl Recording {
    /// Captures the statement response the workload receives (decoded).
    pub(super) fn response(&mut self, body: &[u8]) {
        self.capture.response(body);
    }

    /// Marks the recording as missing part of the result (not inspected, or chunks not seen).
    pub(super) fn incomplete(&mut self) {
        self.capture.passed(0);
    }

    /// Captures a chunk the workload receives, already decoded (a rewritten chunk).
    pub(super) fn chunk(&mut self, index: usize, body: &[u8]) {
        self.capture.chunk(index, body, false);
    }
}

/// Starts recording a statement, unless recording is off (no recipient, or off for the event's
/// identity).
pub(super) fn begin(
    ins: &Inspector,
    event: &Event,
    session: Option<&Session>,
) -> Option<Recording> {
    let r = ins.recorder.as_ref()?;
    if !r
        .config
        .records_identity(event.workload_identity.as_deref())
    {
        return None;
    }
    // A rule with `record = false` decided the statement.
    if let (Some(rule), Some(policy)) = (event.policy_rule.as_deref(), ins.policy.current())
        && policy.rules().iter().any(|x| x.name == rule && !x.record)
    {
        return None;
    }
    let kept = session.map_or(0, |s| s.recorded.load(Ordering::Relaxed));
    Some(Recording {
        capture: Capture::new(r.config.statement_limit(kept)),
        session: session.map(|s| s.recorded.clone()),
    })
}

/// Submits a finished statement's event: with its recording, once that is durable (the
/// `recording` columns say how it went); without one, at once with `recording = "off"`.
pub(super) fn submit(ins: &Inspector, mut event: Event, rec: Option<Recording>) {
    let (Some(rec), Some(recorder)) = (rec, ins.recorder.as_ref()) else {
        if event.recording.is_none() {
            event.recording = Some(Status::Off.as_str().to_owned());
        }
        drop(ins.sink.submit(event));
        return;
    };
    let captured = rec.capture.finish();
    if let Some(s) = &rec.session {
        s.fetch_add(captured.bytes_kept, Ordering::Relaxed);
    }
    event.recording = Some(captured.status.as_str().to_owned());
    event.recording_bytes_kept = Some(captured.bytes_kept);
    event.recording_bytes_seen = Some(captured.bytes_seen);
    let durable = recorder.writer.submit(Submission {
        event_id: event.event_id.to_string(),
        query_id: event.query_id.clone(),
        session_id: event.session_id.clone(),
        event_time: event.event_time,
        captured,
    });
    let sink = ins.sink.clone();
    let in_flight = recorder.in_flight.clone();
    in_flight.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        if let Err(e) = durable.await {
            warn!(error = %e, query_id = ?event.query_id, "statement result not recorded");
            event.recording = Some(Status::Failed.as_str().to_owned());
            event.recording_bytes_kept = Some(0);
        }
        drop(sink.submit(event));
        in_flight.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Completes a chunked result's event once its last chunk is in, with its recording.
pub(super) fn chunk_finished(ins: &Inspector, pending: &PendingResult, event: Event) {
    submit(ins, event, pending.take_recording());
}

/// Streams a chunk download of a statement to the workload, keeping a copy for its recording
/// when the chunk fits in what the cap leaves; the statement's event completes with the last
/// chunk.
pub(super) fn tee_chunk(
    ins: Arc<Inspector>,
    pending: Arc<PendingResult>,
    host: &str,
    path: &str,
    resp: Response<Body>,
) -> Response<Body> {
    let gzip = matches!(
        ContentEncoding::from_header(
            resp.headers()
                .get(header::CONTENT_ENCODING)
                .map(HeaderValue::as_bytes)
        ),
        Ok(ContentEncoding::Gzip)
    );
    let ok = resp.status().is_success();
    // Reserve the chunk's uncompressed size (its transferred bytes are never more).
    let info = pending.chunk_info(host, path);
    let reserved = match info {
        Some((_, size)) if ok => pending
            .with_recording(|r| {
                let want = size.unwrap_or_else(|| r.capture.remaining());
                r.capture.reserve(want).then_some(want)
            })
            .flatten(),
        _ => None,
    };
    let index = info.map_or(usize::MAX, |(i, _)| i);
    resp.map(|body| {
        Tee {
            inner: body,
            bytes: 0,
            buf: reserved.map(|_| Vec::new()),
            room: reserved.map_or(0, |r| usize::try_from(r).unwrap_or(usize::MAX)),
            on_end: Some(Box::new(move |bytes, buf: Option<Vec<u8>>| {
                pending.with_recording(|r| {
                    if let Some(n) = reserved {
                        r.capture.release(n);
                    }
                    match buf {
                        Some(b) if ok => r.capture.chunk(index, &b, gzip),
                        _ if ok => r.capture.passed(bytes),
                        _ => {}
                    }
                });
                if let Some(event) = pending.chunk_done(bytes) {
                    chunk_finished(&ins, &pending, event);
                }
            })),
        }
        .boxed()
    })
}

type OnEnd = Box<dyn FnOnce(u64, Option<Vec<u8>>) + Send + Sync>;

/// A body passed through as it comes, a copy of it kept while it fits in `room`; `on_end` gets
/// the byte count and the copy (when the body ended whole and fit).
struct Tee {
    inner: Body,
    bytes: u64,
    buf: Option<Vec<u8>>,
    room: usize,
    on_end: Option<OnEnd>,
}

impl hyper::body::Body for Tee {
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
                    let n = d.len();
                    self.bytes += n as u64;
                    let room = self.room;
                    if let Some(b) = self.buf.as_mut() {
                        if b.len() + n <= room {
                            b.extend_from_slice(d);
                        } else {
                            self.buf = None;
                        }
                    }
                }
            }
            std::task::Poll::Ready(None) => {
                if let Some(f) = self.on_end.take() {
                    let buf = self.buf.take();
                    f(self.bytes, buf);
                }
            }
            std::task::Poll::Ready(Some(Err(_))) => self.buf = None,
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            // Not read to the end: nothing of it is kept.
            f(self.bytes, None);
        }
    }
}
