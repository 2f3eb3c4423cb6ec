//! A statement's completion: its event recorded at once, or once what it waits for came (its
//! result chunks, its stage transfers, the fetch of its result) or the wait ran out.

use std::sync::Arc;

use crate::audit::{ConnectionIdentity, Event, Flag};
use crate::proxy::exchange::context::{ConnCtx, Shared};
use crate::proxy::exchange::state::{ChunkMasking, PendingResult, PendingTransfer, Recording};
use crate::proxy::exchange::{gate, recording_tee};
use crate::snowflake;

/// A multi-statement request: one event per statement, each with its own query id and the
/// request's in `parent_query_id` (docs/decisions.md §10). The first keeps the request's event id, so the
/// intent journaled before forwarding is completed by it. Each completes when the driver fetches
/// its result, which its recording holds ([`await_result`]). The request's own answer names the
/// statements and holds no row of theirs; it is no statement's result and is not recorded.
pub(super) fn complete_children(
    ins: &Arc<Shared>,
    parent: Event,
    r: &snowflake::QueryResponse,
    sql: &str,
    each: &gate::PerStatement,
) {
    let texts = snowflake::statements::split_statements(sql);
    let split_ok = texts.len() == r.result_ids.len();
    for (i, child_id) in r.result_ids.iter().enumerate() {
        let mut e = parent.clone();
        if i > 0 {
            e.event_id = uuid::Uuid::now_v7();
        }
        e.parent_query_id.clone_from(&parent.query_id);
        e.query_id = Some(child_id.clone());
        e.rows_produced = None;
        e.result_bytes = None;
        e.chunk_count = None;
        e.statement_type = r.result_types.get(i).map(|t| t.as_str().to_owned());
        if split_ok {
            e.sql_text = Some(snowflake::redact_sql(texts[i], ins.redact).into_owned());
            gate::mark_child(each, i, &mut e);
        }
        await_result(ins, child_id, e);
    }
}

/// Holds a statement whose outcome is known until the driver fetches its result
/// (`GET /queries/<query_id>/result`, handled by [`poll`]), or until `chunk_wait` passes (then
/// it completes without its result).
pub(super) fn await_result(ins: &Arc<Shared>, query_id: &str, event: Event) {
    let event_id = event.event_id;
    ins.tracker.await_result(query_id, event);
    let ins = ins.clone();
    let query_id = query_id.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(ins.chunk_wait).await;
        if let Some(e) = ins.tracker.take_due(&query_id) {
            if e.event_id == event_id {
                complete(&ins, e);
            } else {
                // Held again since (a later monitoring answer): its own wait decides.
                ins.tracker.await_result(&query_id, e);
            }
        }
    });
}

/// A session logged out: the results of its statements that the driver did not fetch will not
/// be fetched on it; their events complete without them.
pub(in crate::proxy::exchange) fn session_ended(ins: &Shared, session_id: &str) {
    for e in ins.tracker.take_due_of_session(session_id) {
        complete(ins, e);
    }
}

/// Intercepts, for this cgroup, the storage hosts a response points the driver at (docs/decisions.md §3).
pub(super) fn learn_hosts(ins: &Shared, base: &ConnectionIdentity, r: &snowflake::QueryResponse) {
    let Some(cgroup_id) = base.cgroup_id else {
        return;
    };
    for h in snowflake::hosts_to_learn(r) {
        ins.tracker.learn_host(cgroup_id, &h.host);
    }
}

/// Holds a chunked result's event until its chunks were downloaded (their bytes are added), or
/// until `chunk_wait` passes (then it is flagged `chunks_unseen`).
pub(super) fn await_chunks(
    ctx: &ConnCtx,
    event: Event,
    r: &snowflake::QueryResponse,
    masking: Option<ChunkMasking>,
    rec: Option<Recording>,
) {
    let ins = ctx.shared.clone();
    let pending = PendingResult::masked(event, r.chunks.len(), masking, rec, &r.chunks);
    for c in &r.chunks {
        ins.tracker
            .expect_chunk(&c.url.host, &c.url.path, pending.clone());
    }
    let wait = ins.chunk_wait;
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        if let Some(event) = pending.finish(true) {
            // Chunks not seen are not in the recording either.
            pending.with_recording(Recording::incomplete);
            recording_tee::chunk_finished(&ins, &pending, event);
        }
    });
}

/// Holds a PUT/GET statement's event while its stage transfers run, and completes it with their
/// totals once they have gone quiet, or when `chunk_wait` passes. Its recording (the answer, the
/// file command and the transfers seen) waits and completes with it.
pub(super) fn await_transfers(
    ctx: &ConnCtx,
    event: Event,
    r: &snowflake::QueryResponse,
    rec: Option<Recording>,
) {
    let ins = &ctx.shared;
    let part = crate::recording::payload::TransferPart {
        command: r.command.as_ref().map(|c| c.as_str().to_owned()),
        location: r.stage_info.as_ref().and_then(|s| s.location.clone()),
        sources: r.src_locations.clone(),
        ..Default::default()
    };
    let (Some(cgroup_id), Some(stage)) = (event.cgroup_id, r.stage_info.as_ref()) else {
        complete_with(ins, event, rec.map(|r| with_transfer(r, part)));
        return;
    };
    let targets = snowflake::transfer_targets(r);
    if targets.is_empty() {
        complete_with(ins, event, rec.map(|r| with_transfer(r, part)));
        return;
    }
    let pending = PendingTransfer::recorded(event, rec.map(|r| (r, part)));
    let location = stage.location.as_deref().unwrap_or_default();
    for (done, rec) in ins
        .tracker
        .transfers
        .register(cgroup_id, location, targets, pending.clone())
    {
        complete_with(ins, done, rec);
    }
    let ins = ctx.shared.clone();
    let deadline = tokio::time::Instant::now() + ins.chunk_wait;
    let quiet = ins.transfer_quiet;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(quiet.min(TRANSFER_POLL)).await;
            if pending.settled(quiet) || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        ins.tracker.transfers.remove(&pending);
        if let Some((event, rec)) = pending.finish(true) {
            complete_with(&ins, event, rec);
        }
    });
}

/// A PUT/GET recording whose transfers are not followed: the file command alone.
fn with_transfer(mut rec: Recording, part: crate::recording::payload::TransferPart) -> Recording {
    rec.transfer(part);
    rec
}

/// How often a held PUT/GET event checks whether its transfers are over.
const TRANSFER_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Records a finished statement; its durability is not waited on (docs/decisions.md §12).
pub(in crate::proxy::exchange) fn complete(ins: &Shared, event: Event) {
    complete_with(ins, event, None);
}

/// Records a finished statement with its recorded result, once that is durable. A failure of a
/// statement the client aborted is flagged `aborted`; one that succeeded before the abort took
/// effect is not.
pub(super) fn complete_with(ins: &Shared, mut event: Event, rec: Option<Recording>) {
    let aborted = ins
        .tracker
        .take_aborted(event.query_id.as_deref(), event.request_id.as_deref());
    if aborted && event.success == Some(false) {
        event.add_flag(Flag::Aborted);
    }
    recording_tee::submit(ins, event, rec);
}
