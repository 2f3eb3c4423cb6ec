//! `snowtrail recording keygen`: the key pair of session recording (docs/decisions.md §21). The daemon
//! encrypts each recorded result to the public key (`recording.recipient`); the private key is
//! for whoever reads recordings (`snowtrail replay --key`), and belongs off the host.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// The `recording` subcommands.
#[derive(Debug, Subcommand)]
pub(super) enum RecordingCommand {
    /// Write a new age X25519 private key to FILE (mode 0600; an existing file is never
    /// overwritten) and print its public key as the last line: the value for
    /// `recording.recipient`. Take FILE off the host: the daemon never needs it.
    Keygen {
        /// Where the private key goes.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

pub(super) fn run(command: RecordingCommand) -> anyhow::Result<ExitCode> {
    match command {
        RecordingCommand::Keygen { out } => {
            let created = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
            let public = crate::recording::keys::keygen(&out, &created)?;
            let mut o = std::io::stdout().lock();
            writeln!(
                o,
                "private key written to {} (mode 0600); keep it off this host",
                out.display()
            )?;
            writeln!(
                o,
                "set in the [recording] section: recipient = \"{public}\""
            )?;
            writeln!(o, "{public}")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
