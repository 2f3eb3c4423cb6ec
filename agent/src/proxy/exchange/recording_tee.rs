//! The recording tee of the data path: what a statement's result looked like to the workload is
//! captured here (after masking), within the caps, and handed to the recordings writer; the
//! statement's audit row is submitted once its recording is durable, saying what became of it.
//! Capturing and the payload format are [`crate::recording`]; this module moves bytes.
//!
//! Chunk downloads pass through a [`Counted`] body: the workload gets every byte as it arrives,
//! and a copy is kept only while it fits in what the chunk reserved of the statement's cap (its
//! uncompressed size); a chunk that does not fit is counted, not kept.
//!
//! Results fetched by a request of their own (an asynchronous statement's, each statement's of
//! a multi-statement request) are recorded by the statement handler when the fetch comes, as a
//! synchronous statement's; a PUT/GET statement's recording waits with its event for the
//! transfers ([`super::state::transfer_book`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{HeaderValue, Response, header};
use tracing::warn;

use super::context::Shared;
use super::state::{PendingResult, Recording, TrackedSession};
use crate::audit::Event;
use crate::proxy::transport::body::Body;
use crate::proxy::transport::body::Counted;
use crate::recording::{Capture, Status, Submission};
use crate::snowflake::ContentEncoding;

/// Starts recording a statement, unless recording is off (no recipient, or off for the event's
/// identity).
pub(super) fn begin(
    ins: &Shared,
    event: &Event,
    session: Option<&TrackedSession>,
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
pub(super) fn submit(ins: &Shared, mut event: Event, rec: Option<Recording>) {
    let (Some(rec), Some(recorder)) = (rec, ins.recorder.as_ref()) else {
        if event.recording.is_none() {
            event.recording = Some(Status::Off);
        }
        drop(ins.sink.submit(event));
        return;
    };
    let captured = rec.capture.finish();
    if let Some(s) = &rec.session {
        s.fetch_add(captured.bytes_kept, Ordering::Relaxed);
    }
    event.recording = Some(captured.status);
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
            event.recording = Some(Status::Failed);
            event.recording_bytes_kept = Some(0);
        }
        drop(sink.submit(event));
        in_flight.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Completes a chunked result's event once its last chunk is in, with its recording.
pub(super) fn chunk_finished(ins: &Shared, pending: &PendingResult, event: Event) {
    submit(ins, event, pending.take_recording());
}

/// Streams a chunk download of a statement to the workload, keeping a copy for its recording
/// when the chunk fits in what the cap leaves; the statement's event completes with the last
/// chunk.
pub(super) fn tee_chunk(
    ins: Arc<Shared>,
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
    let room = reserved.map(|r| usize::try_from(r).unwrap_or(usize::MAX));
    resp.map(|body| {
        Counted::copied(
            body,
            room,
            Box::new(move |bytes, copy: Option<Vec<u8>>| {
                pending.with_recording(|r| {
                    if let Some(n) = reserved {
                        r.capture.release(n);
                    }
                    match copy {
                        Some(b) if ok => r.capture.chunk(index, &b, gzip),
                        _ if ok => r.capture.passed(bytes),
                        _ => {}
                    }
                });
                if let Some(event) = pending.chunk_done(bytes) {
                    chunk_finished(&ins, &pending, event);
                }
            }),
        )
    })
}
