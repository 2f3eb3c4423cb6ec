//! Result shaping in the data path: a statement whose rule masks columns or limits rows
//! has its response rewritten before the driver reads it (JSON `rowset` or Arrow
//! `rowsetBase64`), and its chunk downloads (JSON rows or Arrow IPC streams) buffered, rewritten
//! and re-encoded as they came (gzip'd or not). The rewriting itself is
//! [`crate::snowflake::shaping`]; this module moves the bytes and fails closed (docs/decisions.md §2): a
//! result that cannot be read whole within `limits.max_response_inspect_bytes`, or cannot be
//! shaped, becomes a Snowflake-shaped error naming the rule, never the unshaped rows; a chunk
//! that cannot be is answered with the envelope's withheld chunk (`502`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use tracing::warn;

use super::context::{Buffered, ConnCtx, read_response, reply};
use super::state::chunks::chunk_key;
use super::state::{ChunkMasking, PendingResult};
use crate::audit::{Decision, Event, Flag};
use crate::policy::{Action, OnExceed};
use crate::proxy::transport::body::Body;
use crate::proxy::transport::body::full;
use crate::snowflake::envelope::ChunkWithheld;
use crate::snowflake::shaping::{LimitMode, Shape, ShapeError};
use crate::snowflake::sql_api::PartitionShape;
use crate::snowflake::{self, ContentEncoding, QueryResponse, Refusal};

/// A statement's shaping: its rule, and the shape (`None` when the rule is no longer in the
/// policy, so no result of it passes).
pub(super) struct Shaping {
    rule: String,
    shape: Option<Shape>,
}

/// The shaping a statement's event calls for: its decision is `mask` or `row_limit`, and the
/// rule's current action says how.
pub(super) fn shaping(ctx: &ConnCtx, event: &Event) -> Option<Shaping> {
    if !matches!(event.decision?, Decision::Mask | Decision::RowLimit) {
        return None;
    }
    let rule = event.policy_rule.clone().unwrap_or_default();
    let policy = ctx.shared.policy.current();
    let action = policy.as_ref().and_then(|p| {
        if rule == crate::policy::DEFAULT_RULE {
            Some(p.default_action().clone())
        } else {
            p.rules()
                .iter()
                .find(|r| r.name == rule)
                .map(|r| r.action.clone())
        }
    });
    let shape = match action {
        Some(Action::Mask { columns }) => Some(Shape {
            mask: columns,
            row_limit: None,
        }),
        Some(Action::RowLimit { rows, on_exceed }) => Some(Shape {
            mask: Vec::new(),
            row_limit: Some((
                rows,
                match on_exceed {
                    OnExceed::Refuse => LimitMode::Refuse,
                    OnExceed::Truncate => LimitMode::Truncate,
                },
            )),
        }),
        _ => None,
    };
    Some(Shaping { rule, shape })
}

impl Shaping {
    fn refusal(&self, why: impl Into<String>) -> Refusal {
        Refusal::PolicyDenied {
            rule: self.rule.clone(),
            message: Some(why.into()),
        }
    }

    fn shape_error(&self, e: &ShapeError) -> Refusal {
        self.refusal(format!("{e}, so it is withheld"))
    }

    /// Requests whose results the agent cannot follow are refused before they are sent: the rows
    /// of a multi-statement request's statements and of an asynchronous statement are fetched
    /// later by query id, outside the statement the rule was decided on.
    pub(super) fn unsupported(&self, statements: usize, async_exec: bool) -> Option<Refusal> {
        if statements > 1 {
            return Some(self.refusal(
                "results of multi-statement requests cannot be masked or limited; send the statements one by one",
            ));
        }
        if async_exec {
            return Some(self.refusal(
                "results of asynchronous statements cannot be masked or limited; run it synchronously",
            ));
        }
        None
    }

    /// Rewrites a SQL API answer by the rule: the new body (`None` when nothing changed) and how
    /// its later partitions are answered.
    pub(super) fn sql_api_answer(
        &self,
        parts: &mut http::response::Parts,
        decoded: Option<&[u8]>,
        event: &mut Event,
    ) -> Result<(Option<Body>, PartitionShape), Refusal> {
        let Some(shape) = &self.shape else {
            return Err(
                self.refusal("the rule is no longer in the policy, so the result is withheld")
            );
        };
        let decoded = decoded.ok_or_else(|| self.uninspectable())?;
        let shaped =
            snowflake::sql_api::shape_answer(decoded, shape).map_err(|e| self.shape_error(&e))?;
        if let Some(delivered) = shaped.truncated {
            event.add_flag(Flag::RowsTruncated);
            event.rows_produced = Some(delivered);
        }
        let body = shaped.body.map(|b| full(encode_like(parts, b)));
        Ok((body, shaped.partitions))
    }

    /// The refusal for a response too large to inspect, or one that could not be decoded.
    pub(super) fn uninspectable(&self) -> Refusal {
        self.refusal("the result is too large for the agent to inspect, so it is withheld")
    }

    /// Rewrites a query response by the rule: the new body for the driver (`None` when nothing
    /// changed), `r.chunks` reduced to the chunks kept, their shapes for the downloads, and the
    /// new body decoded (for the recording).
    pub(super) fn response(
        &self,
        parts: &mut http::response::Parts,
        decoded: Option<&[u8]>,
        r: &mut QueryResponse,
        event: &mut Event,
    ) -> Result<Shaped, Refusal> {
        let Some(shape) = &self.shape else {
            return Err(
                self.refusal("the rule is no longer in the policy, so the result is withheld")
            );
        };
        let decoded = decoded.ok_or_else(|| self.uninspectable())?;
        let shaped =
            snowflake::shaping::shape_response(decoded, shape).map_err(|e| self.shape_error(&e))?;
        if let Some(delivered) = shaped.truncated {
            event.add_flag(Flag::RowsTruncated);
            // The event counts the rows the workload received; the flag says there were more.
            event.rows_produced = Some(delivered);
        }
        let mut by_path = HashMap::new();
        let mut kept = Vec::new();
        for k in shaped.chunks {
            if let Some(c) = r.chunks.get(k.index) {
                if k.shape.rewrites() {
                    by_path.insert(chunk_key(&c.url.host, &c.url.path), k.shape);
                }
                kept.push(c.clone());
            }
        }
        r.chunks = kept;
        let masking = (!by_path.is_empty()).then(|| ChunkMasking {
            rule: self.rule.clone(),
            by_path,
        });
        // The rewritten body as the workload reads it (decoded), for its recording.
        let plain = shaped.body.map(Bytes::from);
        let body = plain.as_ref().map(|b| full(encode_like(parts, b.to_vec())));
        Ok((body, masking, plain))
    }
}

/// A rewritten response: the body for the driver (`None` when nothing changed), how its chunk
/// downloads are rewritten, and the body decoded (for its recording).
pub(super) type Shaped = (Option<Body>, Option<ChunkMasking>, Option<Bytes>);

/// Encodes a rewritten body as the upstream's was (gzip or not) and fixes the length headers.
fn encode_like(parts: &mut http::response::Parts, body: Vec<u8>) -> Bytes {
    let gzipped = matches!(
        ContentEncoding::from_header(
            parts
                .headers
                .get(header::CONTENT_ENCODING)
                .map(HeaderValue::as_bytes)
        ),
        Ok(ContentEncoding::Gzip)
    );
    let bytes = if gzipped {
        snowflake::gzip(&body)
    } else {
        body
    };
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Bytes::from(bytes)
}

/// Records a statement whose result is withheld and answers the driver with the refusal: the
/// statement ran, so the event keeps its query id and its decision, flagged `result_refused`.
pub(super) fn withhold(ctx: &ConnCtx, event: Event, refusal: &Refusal) -> Response<Body> {
    let qid = record_withheld(ctx, event, refusal);
    reply(snowflake::envelope::query_error(refusal, &qid))
}

/// Records a statement whose result is withheld (flagged `result_refused`); returns its query id
/// for the answer in its API's shape.
pub(super) fn record_withheld(ctx: &ConnCtx, mut event: Event, refusal: &Refusal) -> String {
    warn!(rule = ?event.policy_rule, "result withheld by policy");
    event.success = Some(false);
    event.error_message = Some(refusal.message());
    event.detail = Some(Flag::ResultRefused.as_str().to_owned());
    event.recording = Some(crate::recording::Status::Off);
    event.add_flag(Flag::ResultRefused);
    let qid = event
        .query_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    drop(ctx.shared.sink.submit(event));
    qid
}

/// The SQL API's error answer (HTTP 422) for a result or partition the rule withholds.
pub(super) fn sql_api_withheld(rule: &str, why: &str, handle: &str) -> Response<Body> {
    let refusal = Refusal::PolicyDenied {
        rule: rule.to_owned(),
        message: Some(why.to_owned()),
    };
    reply(snowflake::envelope::sql_api_refused(&refusal, handle))
}

/// Rewrites a later partition of a shaped SQL API result; one that cannot be is withheld (the
/// SQL API's error answer, HTTP 422).
pub(super) async fn sql_api_partition(
    ctx: &ConnCtx,
    rule: &str,
    shape: &PartitionShape,
    handle: &str,
    resp: Response<Body>,
) -> Response<Body> {
    let withheld = |why: &str| sql_api_withheld(rule, why, handle);
    match read_response(resp, ctx).await {
        Buffered::Read {
            mut parts, decoded, ..
        } => match decoded
            .as_deref()
            .map(|d| snowflake::sql_api::shape_partition(d, shape))
        {
            Some(Ok(body)) => {
                let body = full(encode_like(&mut parts, body));
                Response::from_parts(parts, body)
            }
            _ => withheld("the partition could not be read to apply the rule, so it is withheld"),
        },
        Buffered::Streamed(_) => {
            withheld("the partition is too large for the agent to inspect, so it is withheld")
        }
    }
}

/// A chunk download of a shaped result: read whole (within the inspection limit and budget),
/// rewritten, re-encoded. One that cannot be is answered as the envelope withholds a chunk (a
/// `502`, so the driver's fetch fails), and the statement's event is flagged `result_refused`.
pub(super) async fn chunk(
    ctx: &ConnCtx,
    pending: Arc<PendingResult>,
    host: &str,
    path: &str,
    resp: Response<Body>,
) -> Response<Body> {
    let ins = &ctx.shared;
    let Some(masking) = pending.masking() else {
        return resp;
    };
    // A retried download is rewritten too.
    ins.tracker.expect_chunk(host, path, pending.clone());
    // A chunk the rule leaves as it is (no masked column in it, not cut) passes untouched.
    let Some(shape) = masking.by_path.get(&chunk_key(host, path)) else {
        return super::recording_tee::tee_chunk(ctx.shared.clone(), pending, host, path, resp);
    };
    let status = resp.status();
    let out = match read_response(resp, ctx).await {
        Buffered::Read {
            mut parts,
            decoded: Some(decoded),
            ..
        } if status.is_success() => {
            snowflake::shaping::shape_chunk(&decoded, shape, ins.limits.max_response_inspect_bytes)
                .map(|b| {
                    if let Some((index, _)) = pending.chunk_info(host, path) {
                        pending.with_recording(|r| r.chunk(index, &b));
                    }
                    (encode_like(&mut parts, b), parts)
                })
                .map_err(ChunkWithheld::Unshapeable)
        }
        Buffered::Read { .. } if !status.is_success() => Err(ChunkWithheld::UpstreamFailed(status)),
        _ => Err(ChunkWithheld::TooLarge),
    };
    match out {
        Ok((body, parts)) => {
            let len = u64::try_from(body.len()).unwrap_or(u64::MAX);
            if let Some(event) = pending.chunk_done(len) {
                super::recording_tee::chunk_finished(ins, &pending, event);
            }
            Response::from_parts(parts, full(body))
        }
        Err(why) => {
            warn!(rule = %masking.rule, %why, "result chunk withheld by policy");
            pending.flag(Flag::ResultRefused);
            if let Some(event) = pending.chunk_done(0) {
                super::recording_tee::chunk_finished(ins, &pending, event);
            }
            reply(snowflake::envelope::chunk_withheld(&masking.rule, &why))
        }
    }
}
