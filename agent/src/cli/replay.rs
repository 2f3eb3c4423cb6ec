//! `snowtrail replay`: a session's timeline from the audit and, with the auditor's key, the
//! results its statements returned, from the recordings table.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use crate::audit::readback;
use crate::config::Config;
use crate::recording::replay::{self as rec, ReplayOptions};

/// The arguments of `replay`.
#[derive(Debug, Args)]
pub(super) struct ReplayArgs {
    /// The agent's session id (or a connection id).
    #[arg(long, value_name = "ID")]
    session: String,
    /// The private key from `snowtrail recording keygen`, to decrypt the recorded results;
    /// without it they are listed as encrypted.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Show every recorded row, not only the first 10 of each result.
    #[arg(long)]
    full: bool,
    /// Only this statement's result (its Snowflake query id).
    #[arg(long, value_name = "QID")]
    query_id: Option<String>,
    /// Print one JSON document (the events and the results) instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(super) dir: super::AuditDir,
    /// Recordings directory (default: the configuration's recording_dir).
    #[arg(long, value_name = "DIR", alias = "recordings-dir")]
    recording_dir: Option<PathBuf>,
}

pub(super) fn run(config: Option<&std::path::Path>, a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let dir = a.dir.clone().given();
    let cfg = if dir.is_none() || a.recording_dir.is_none() {
        Some(Config::load(config)?)
    } else {
        None
    };
    let audit_dir = dir
        .or_else(|| cfg.as_ref().map(|c| c.audit_dir.clone()))
        .context("no audit directory")?;
    let recording_dir = a
        .recording_dir
        .clone()
        .or_else(|| cfg.as_ref().map(|c| c.recording_dir.clone()))
        .context("no recordings directory")?;
    let rows = rec::session_rows(&recording_dir, &a.session, a.query_id.as_deref())?;
    let opts = ReplayOptions {
        key: a.key.clone(),
        full: a.full,
        query_id: a.query_id.clone(),
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        let events: Vec<serde_json::Value> = readback::read_events(&audit_dir)?
            .iter()
            .filter(|e| {
                e.session_id.as_deref() == Some(a.session.as_str())
                    || e.connection_id.is_some_and(|c| c.to_string() == a.session)
            })
            .map(readback::event_json)
            .collect();
        if events.is_empty() && rows.is_empty() {
            anyhow::bail!(
                "no events of session {} under {}",
                a.session,
                audit_dir.display()
            );
        }
        let ids = opts
            .key
            .as_deref()
            .map(crate::recording::keys::read_identities)
            .transpose()?;
        let results: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let t = ids.as_ref().map(|ids| rec::decrypt_row(ids, r));
                rec::result_json(r, t.as_ref(), opts.full)
            })
            .collect();
        let doc = serde_json::json!({
            "session": a.session,
            "events": events,
            "results_encrypted": ids.is_none(),
            "results": results,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let n = readback::replay(&audit_dir, &a.session, &mut out)?;
    if n == 0 && rows.is_empty() {
        anyhow::bail!(
            "no events of session {} under {}",
            a.session,
            audit_dir.display()
        );
    }
    writeln!(out)?;
    rec::print_results(&rows, &opts, &mut out)?;
    Ok(ExitCode::SUCCESS)
}
