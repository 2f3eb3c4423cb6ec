//! A statement's answer read: the event filled from it, the result shaped by the statement's rule
//! and its recording started; shared by the first answer and every poll.

use std::ops::ControlFlow::{self, Break, Continue};

use http::Response;

use super::completion::complete_with;
use crate::audit::{Event, Flag};
use crate::proxy::exchange::context::ConnCtx;
use crate::proxy::exchange::state::{ChunkMasking, Recording, TrackedSession};
use crate::proxy::exchange::{masking, recording_tee};
use crate::proxy::transport::body::Body;
use crate::snowflake::{self, QueryStatus};
use crate::sync::lock;

/// Fills a query event from Snowflake's answer.
pub(super) fn apply_query_response(
    event: &mut Event,
    r: &snowflake::QueryResponse,
    body_len: usize,
    session: Option<&TrackedSession>,
) {
    event.query_id = r.query_id.clone().or(event.query_id.take());
    match r.status {
        QueryStatus::Complete => event.success = Some(true),
        QueryStatus::Failed => {
            event.success = Some(false);
            event.error_code = r.error_code.clone().or_else(|| r.code.clone());
            event.sql_state.clone_from(&r.sql_state);
            event.error_message.clone_from(&r.message);
        }
        _ => {}
    }
    if let Some(t) = &r.statement_type {
        event.statement_type = Some(t.as_str().to_owned());
    }
    if matches!(r.status, QueryStatus::Complete) {
        event.rows_produced = r.total.or(r.returned).or(r.rowset_rows);
        event.result_bytes = Some(u64::try_from(body_len).unwrap_or(u64::MAX));
        event.chunk_count = u32::try_from(r.chunks.len()).ok();
    }
    if let Some(s) = session {
        let mut c = lock(&s.context);
        if r.final_role.is_some() {
            c.role.clone_from(&r.final_role);
        }
        if r.final_warehouse.is_some() {
            c.warehouse.clone_from(&r.final_warehouse);
        }
        if r.final_database.is_some() {
            c.database.clone_from(&r.final_database);
        }
        if r.final_schema.is_some() {
            c.schema.clone_from(&r.final_schema);
        }
    }
}

/// What an inspected answer to a statement becomes: the body for the driver when a rule
/// rewrote it, how its chunk downloads are rewritten, and its recording.
pub(super) struct Answered {
    pub(super) body: Option<Body>,
    pub(super) masking: Option<ChunkMasking>,
    pub(super) rec: Option<Recording>,
}

/// What a statement's answers are read with: its connection, its session, and the rule that
/// shapes its result, if any.
pub(super) struct Answering<'a> {
    pub(super) ctx: &'a ConnCtx,
    pub(super) session: Option<&'a TrackedSession>,
    pub(super) shaping: Option<&'a masking::Shaping>,
}

impl Answering<'_> {
    /// Applies an answer (`parts`, its size on the wire and its decoded body, parsed as `r`) to
    /// the statement's event, shapes a complete result when a rule asks for it, and starts the
    /// recording of the answer as the workload receives it; the first answer and every poll
    /// share it. A `Break` is the answer that replaces a result the rule cannot shape.
    pub(super) fn answer(
        &self,
        mut event: Event,
        (parts, wire_len, decoded): (&mut http::response::Parts, usize, Option<&[u8]>),
        r: &mut snowflake::QueryResponse,
    ) -> ControlFlow<Response<Body>, (Event, Answered)> {
        apply_query_response(&mut event, r, wire_len, self.session);
        let (mut body, mut masking, mut plain) = (None, None, None);
        if let Some(s) = self.shaping
            && r.status == QueryStatus::Complete
        {
            match s.response(parts, decoded, r, &mut event) {
                Ok(shaped) => (body, masking, plain) = shaped,
                Err(refusal) => return Break(masking::withhold(self.ctx, event, &refusal)),
            }
        }
        let rec = recording(self.ctx, &event, self.session, r, || {
            plain.as_deref().or(decoded)
        });
        Continue((event, Answered { body, masking, rec }))
    }
}

/// Starts the recording of a statement whose outcome is in `r` (not of one still running),
/// capturing `body()`, the response as the workload receives it.
pub(super) fn recording<'a>(
    ctx: &ConnCtx,
    event: &Event,
    session: Option<&TrackedSession>,
    r: &snowflake::QueryResponse,
    body: impl FnOnce() -> Option<&'a [u8]>,
) -> Option<Recording> {
    if !matches!(r.status, QueryStatus::Complete | QueryStatus::Failed) {
        return None;
    }
    let mut rec = recording_tee::begin(&ctx.shared, event, session)?;
    match body() {
        Some(b) => rec.response(b),
        None => rec.incomplete(),
    }
    Some(rec)
}

/// A statement's answer too large to inspect: passed on as it streams (withheld instead when a
/// rule must shape it), and recorded as `uninspected`, its recording saying nothing was kept.
pub(super) fn uninspected(
    ctx: &ConnCtx,
    mut event: Event,
    session: Option<&TrackedSession>,
    shaping: Option<&masking::Shaping>,
    resp: Response<Body>,
) -> Response<Body> {
    event.add_flag(Flag::Uninspected);
    if let Some(s) = shaping {
        return masking::withhold(ctx, event, &s.uninspectable());
    }
    let rec = recording_tee::begin(&ctx.shared, &event, session).map(|mut rec| {
        rec.incomplete();
        rec
    });
    complete_with(&ctx.shared, event, rec);
    resp
}
