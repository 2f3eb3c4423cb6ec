//! The command line: `snowtrail run` starts the daemon; every other command is a thin client of the
//! daemon's control socket, except `detach`, which works on the pinned programs with the daemon down.

mod doctor;
mod exec;
mod output;
mod policy;
mod recording;
mod replay;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_FILE};
use crate::control::{Client, Reply, Request};
use crate::enroll::Selector;
use crate::telemetry::LogFormat;

/// snowtrail: audit and police the Snowflake traffic of this host's workloads.
#[derive(Debug, Parser)]
#[command(name = "snowtrail", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Configuration file (also tells the CLI where the control socket is).
    #[arg(long, global = true, value_name = "FILE", env = "SNOWTRAIL_CONFIG")]
    config: Option<PathBuf>,
    /// Control socket of the daemon, overriding the configuration.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "SNOWTRAIL_CONTROL_SOCKET"
    )]
    control_socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground (what the systemd unit starts).
    Run {
        /// Log line format.
        #[arg(long, value_enum, default_value = "plain")]
        log_format: LogFormat,
    },
    /// Enroll an existing cgroup: its connections on intercepted ports go through the agent.
    #[command(group = clap::ArgGroup::new("target").required(true))]
    Enroll {
        /// The cgroup, as a path under the cgroup2 mount or relative to it (e.g. system.slice/etl.service).
        #[arg(long, group = "target", value_name = "PATH")]
        cgroup: Option<String>,
        /// Enroll the cgroup this process is in.
        #[arg(long, group = "target", value_name = "PID")]
        pid: Option<u32>,
        /// Egress lockdown: the cgroup may connect (TCP) and send (UDP) only to intercepted and
        /// proxy ports and to `redirect.lockdown_allow` (and this host's DNS resolvers); anything
        /// else fails with EPERM and is recorded as a `denial`.
        #[arg(long)]
        lockdown: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Run a command in a new enrolled cgroup; its output and exit code pass through.
    ///
    /// The command's environment gets REQUESTS_CA_BUNDLE, SSL_CERT_FILE and NODE_EXTRA_CA_CERTS
    /// pointing at a bundle of the system's roots plus the agent's CA, so Python (4.x and 5.x)
    /// and Node drivers trust the agent's certificates.
    ///
    /// Run the workload as an unprivileged user (`--user`): a process running as root can move
    /// itself out of its cgroup, and read the agent's keys.
    Exec {
        #[command(flatten)]
        who: Who,
        /// Leave the command's CA environment variables alone.
        #[arg(long)]
        no_ca_env: bool,
        /// Run the command as this user (name or uid), with the user's groups, once it is in
        /// its cgroup; HOME, USER and LOGNAME are set to the user's.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// The command's primary group (name or gid); default: the user's own.
        #[arg(long, value_name = "GROUP", requires = "user")]
        group: Option<String>,
        /// The command and its arguments (after `--`).
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
    /// Stop intercepting a cgroup, or every cgroup of an identity.
    #[command(group = clap::ArgGroup::new("target").required(true))]
    Unenroll {
        /// The cgroup.
        #[arg(long, group = "target", value_name = "PATH")]
        cgroup: Option<String>,
        /// Every cgroup enrolled under this identity.
        #[arg(long, group = "target", value_name = "NAME")]
        identity: Option<String>,
    },
    /// List enrollments: identity, cgroup, live processes, since, connections seen.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show whether the daemon runs and what it does.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Read the audit trail: list files, show recent events, verify the files and their digests.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Show one session's events in order, as a timeline, and with --key the results its
    /// statements returned (recorded, encrypted, when `recording.recipient` is set).
    Replay(replay::ReplayArgs),
    /// Session recording: make the key pair whose public half `recording.recipient` names.
    Recording {
        #[command(subcommand)]
        command: recording::RecordingCommand,
    },
    /// The agent's certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Check or try a policy rule file (works without the daemon).
    Policy {
        #[command(subcommand)]
        command: Box<policy::PolicyCommand>,
    },
    /// List the statements waiting for approval (their rule says `require_approval`).
    Pending {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a held statement: it goes to Snowflake and the workload gets its answer.
    Approve {
        /// The hold id, as `snowtrail pending` shows it.
        id: String,
    },
    /// Reject a held statement: the workload's driver raises an access control error.
    Reject {
        /// The hold id, as `snowtrail pending` shows it.
        id: String,
    },
    /// Check the host and the daemon: kernel features, privileges, directories, the CA, the daemon.
    ///
    /// Prints each check as PASS, WARN or FAIL with the fix; exits non-zero when one fails.
    /// Works with the daemon down (that is one failing check).
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Detach every pinned program (works with the daemon stopped; enrolled traffic then goes direct).
    Detach {
        /// bpffs directory of the pins (default: the configuration's redirect.pin_dir).
        #[arg(long, value_name = "DIR")]
        pin_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Files by hour: how many, how many events, how many bytes.
    Ls {
        #[command(flatten)]
        dir: AuditDir,
    },
    /// The most recent events as a table; with -f, keep showing new ones.
    Tail {
        /// Keep following new files.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only this workload identity.
        #[arg(long, value_name = "NAME")]
        identity: Option<String>,
        /// Only this kind: connection, login, logout, query, denial, lifecycle.
        #[arg(long, value_name = "KIND", value_parser = parse_kind)]
        kind: Option<crate::audit::EventKind>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// How many recent events to show first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        #[command(flatten)]
        dir: AuditDir,
    },
    /// Check every file (readable, known schema, event counts, no leftover temporary files) and
    /// walk the signed digest chains: a removed, changed or added file, or a removed, reordered
    /// or foreign-signed digest is reported and the exit code is 1.
    Verify {
        #[command(flatten)]
        dir: AuditDir,
        /// The public key every digest must be signed with (a file holding the line
        /// `snowtrail audit pubkey` printed); without it, each chain's own first key.
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
        /// The agent's state directory, to find a removed newest digest and tell files not yet
        /// digested from added ones (default: the configuration's state_dir when DIR is not given).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// The recordings directory, whose files the digests name under `recordings` (default:
        /// the configuration's recording_dir when DIR is not given and it exists).
        #[arg(long, value_name = "DIR", alias = "recording-dir")]
        recordings_dir: Option<PathBuf>,
    },
    /// Print this host's digest-signing public key (`ed25519:` and 64 hex digits), creating the
    /// key in the state directory if there is none yet.
    Pubkey {
        /// The agent's state directory (default: the configuration's state_dir).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

/// The audit directory a read-back command reads, as an argument or as `--dir` (either works, so
/// every command takes it the same way).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct AuditDir {
    /// Audit directory (default: the configuration's audit_dir).
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Audit directory, as an option: the same as DIR.
    #[arg(long = "dir", value_name = "DIR", conflicts_with = "dir")]
    dir_option: Option<PathBuf>,
}

impl AuditDir {
    /// The directory given, in either form.
    pub(crate) fn given(self) -> Option<PathBuf> {
        self.dir.or(self.dir_option)
    }
}

fn parse_kind(s: &str) -> Result<crate::audit::EventKind, String> {
    crate::audit::EventKind::parse(s).ok_or_else(|| {
        let all: Vec<&str> = crate::audit::EventKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        format!("unknown kind {s:?}; one of {}", all.join(", "))
    })
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create the CA in the state directory unless it exists (works without the daemon).
    Init,
    /// Print the CA certificate (PEM), e.g. to add it to a trust store.
    Export,
}

/// Who a workload is: its identity and labels.
#[derive(Debug, Args)]
struct Who {
    /// Workload identity recorded with each of its connections and statements.
    #[arg(long, value_name = "NAME", value_parser = parse_identity)]
    identity: String,
    /// A label key=value recorded with each event (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    crate::enroll::parse_label(s).map_err(|e| e.to_string())
}

fn parse_identity(s: &str) -> Result<String, String> {
    crate::enroll::check_identity(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

/// Entry point of the `snowtrail` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("snowtrail: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { log_format } => {
            require_root("run the daemon")?;
            crate::telemetry::init(log_format, "info");
            let config = Config::load(cli.config.as_deref())?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("snowtrail")
                .build()
                .context("cannot start the runtime")?;
            rt.block_on(async move {
                let app = crate::app::build(config).await?;
                app.run_until_signalled().await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command } => policy::run(*command),
        Command::Pending { json } => policy::pending(
            connect(&cli.config, &cli.control_socket, "list held statements")?,
            json,
        ),
        Command::Approve { id } => policy::decide(
            connect(&cli.config, &cli.control_socket, "approve statements")?,
            id,
            true,
        ),
        Command::Reject { id } => policy::decide(
            connect(&cli.config, &cli.control_socket, "reject statements")?,
            id,
            false,
        ),
        Command::Audit { command } => audit_command(cli.config.as_deref(), command),
        Command::Replay(args) => replay::run(cli.config.as_deref(), args),
        Command::Recording { command } => recording::run(command),
        Command::Ca { command } => {
            let config = Config::load(cli.config.as_deref())?;
            match command {
                CaCommand::Init => {
                    require_root("create the CA")?;
                    let host = crate::app::host_name();
                    let (ca, outcome) = crate::tls::Ca::init(&config.state_dir, &host)?;
                    let verb = match outcome {
                        crate::tls::ca::InitOutcome::Created => "created",
                        crate::tls::ca::InitOutcome::Existing => "kept the existing",
                    };
                    println!(
                        "{verb} CA {}; bundle for workloads: {}",
                        config
                            .state_dir
                            .join(crate::tls::ca::CA_CERT_FILE)
                            .display(),
                        ca.bundle_path().display()
                    );
                }
                CaCommand::Export => {
                    let path = config.state_dir.join(crate::tls::ca::CA_CERT_FILE);
                    let pem = std::fs::read_to_string(&path).with_context(|| {
                        format!(
                            "no CA at {} (run `snowtrail ca init` or start the daemon)",
                            path.display()
                        )
                    })?;
                    print!("{pem}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { json } => {
            doctor::run(cli.config.as_deref(), cli.control_socket.as_deref(), json)
        }
        Command::Detach { pin_dir } => {
            require_root("detach the kernel programs")?;
            let pin_dir = match pin_dir {
                Some(d) => d,
                None => Config::load(cli.config.as_deref())?.redirect.pin_dir,
            };
            let n = crate::redirect::detach_pinned(&pin_dir)?;
            println!("detached {n} pinned link(s) under {}", pin_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Enroll {
            cgroup,
            pid,
            lockdown,
            who,
        } => {
            let mut client = connect(&cli.config, &cli.control_socket, "enroll")?;
            let labels = crate::enroll::labels_from(who.labels)?;
            let reply = client.call(&Request::Enroll {
                cgroup,
                pid,
                identity: who.identity.clone(),
                labels,
                lockdown,
            })?;
            if let Reply::Enrolled { cgroup, .. } = reply {
                println!("enrolled {cgroup} as {}", who.identity);
                println!("{}", output::TRUST_HINT);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            who,
            no_ca_env,
            user,
            group,
            command,
        } => {
            // Who the command runs as is settled before anything is enrolled.
            let run_as = user
                .map(|u| exec::RunAs::lookup(&u, group.as_deref()))
                .transpose()?;
            let client = connect(&cli.config, &cli.control_socket, "exec")?;
            let labels = crate::enroll::labels_from(who.labels)?;
            exec::run(
                client,
                exec::Spec {
                    identity: who.identity,
                    labels,
                    ca_env: !no_ca_env,
                    run_as,
                },
                &command,
            )
        }
        Command::Unenroll { cgroup, identity } => {
            let mut client = connect(&cli.config, &cli.control_socket, "unenroll")?;
            let selector = match (cgroup, identity) {
                (Some(c), _) => Selector::Cgroup(c),
                (None, Some(i)) => Selector::Identity(i),
                (None, None) => anyhow::bail!("name a --cgroup or an --identity"),
            };
            if let Reply::Removed { removed } = client.call(&Request::Unenroll { selector })? {
                for c in removed {
                    println!("unenrolled {c}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List { json } => {
            let mut client = connect(&cli.config, &cli.control_socket, "list")?;
            if let Reply::List { enrollments } = client.call(&Request::List)? {
                let out = if json {
                    serde_json::to_string_pretty(&enrollments)?
                } else {
                    output::enrollment_table(&enrollments)
                };
                println!("{out}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let mut client = connect(&cli.config, &cli.control_socket, "status")?;
            if let Reply::Status(s) = client.call(&Request::Status)? {
                if json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    print!("{}", output::status_text(&s));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The audit directory a command reads: the one given, else the configuration's.
fn audit_dir(config: Option<&std::path::Path>, dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match dir {
        Some(d) => Ok(d),
        None => Ok(Config::load(config)?.audit_dir),
    }
}

fn audit_command(
    config: Option<&std::path::Path>,
    command: AuditCommand,
) -> anyhow::Result<ExitCode> {
    use crate::audit::readback;
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match command {
        AuditCommand::Ls { dir } => {
            readback::ls(&audit_dir(config, dir.given())?, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Tail {
            follow,
            identity,
            kind,
            json,
            lines,
            dir,
        } => {
            let opts = readback::TailOptions {
                follow,
                identity,
                kind,
                json,
                n: lines,
                ..readback::TailOptions::default()
            };
            readback::tail(&audit_dir(config, dir.given())?, &opts, &mut out, &|| false)?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            dir,
            pubkey,
            state_dir,
            recordings_dir,
        } => {
            let dir = dir.given();
            let state_dir = match (state_dir, &dir) {
                (Some(s), _) => Some(s),
                (None, Some(_)) => None,
                (None, None) => Some(Config::load(config)?.state_dir),
            };
            let recordings_dir = match (recordings_dir, &dir) {
                (Some(r), _) => Some(r),
                (None, Some(_)) => None,
                (None, None) => Some(Config::load(config)?.recording_dir).filter(|d| d.is_dir()),
            };
            let pubkey = match pubkey {
                Some(p) => {
                    let text = std::fs::read_to_string(&p)
                        .with_context(|| format!("cannot read public key {}", p.display()))?;
                    Some(
                        crate::audit::digest::parse_public_key(&text)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
                    )
                }
                None => None,
            };
            let opts = readback::VerifyOptions {
                chain: crate::audit::digest_verify::ChainOptions {
                    pubkey,
                    state_dir,
                    recordings_dir,
                },
            };
            let report = readback::verify_with(&audit_dir(config, dir)?, &opts, &mut out)?;
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Pubkey { state_dir } => {
            let state_dir = match state_dir {
                Some(s) => s,
                None => Config::load(config)?.state_dir,
            };
            let key = crate::audit::digest::load_or_create_key(&state_dir)?;
            writeln!(
                out,
                "{}",
                crate::audit::digest::public_key_text(&key.verifying_key())
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Refuses to go on unless the effective user is root.
fn require_root(what: &str) -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        anyhow::bail!("must be root to {what}")
    }
}

/// Checks the preconditions every client command shares, then connects to the daemon.
fn connect(
    config: &Option<PathBuf>,
    socket: &Option<PathBuf>,
    what: &str,
) -> anyhow::Result<Client> {
    require_root(what)?;
    crate::cgroup::mount_point()?;
    let path = match socket {
        Some(p) => p.clone(),
        None => {
            let explicit = config.is_some() || std::path::Path::new(DEFAULT_CONFIG_FILE).exists();
            if explicit {
                Config::load(config.as_deref())?.control_socket
            } else {
                Config::default().control_socket
            }
        }
    };
    Ok(Client::connect(&path)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("snowtrail").chain(args.iter().copied()))
    }

    /// The audit directory a parsed read-back command names.
    fn dir_of(cli: Cli) -> Option<PathBuf> {
        match cli.command {
            Command::Audit {
                command:
                    AuditCommand::Ls { dir }
                    | AuditCommand::Tail { dir, .. }
                    | AuditCommand::Verify { dir, .. },
            } => dir.given(),
            Command::Replay(a) => a.dir.given(),
            other => panic!("not a read-back command: {other:?}"),
        }
    }

    #[test]
    fn the_commands_are_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_read_back_command_takes_the_directory_both_ways() {
        let commands: [&[&str]; 4] = [
            &["audit", "ls"],
            &["audit", "tail", "-n", "5"],
            &["audit", "verify"],
            &["replay", "--session", "s1"],
        ];
        for cmd in commands {
            for form in [&["/a"][..], &["--dir", "/a"], &["--dir=/a"]] {
                let cli = parse(&[cmd, form].concat()).unwrap();
                assert_eq!(dir_of(cli), Some(PathBuf::from("/a")), "{cmd:?} {form:?}");
            }
            assert_eq!(dir_of(parse(cmd).unwrap()), None, "{cmd:?}");
            let both = parse(&[cmd, &["/a", "--dir", "/b"]].concat()).unwrap_err();
            assert_eq!(both.kind(), ErrorKind::ArgumentConflict, "{cmd:?}");
        }
        // The forms the tests and the docs use keep working.
        let cli = parse(&["audit", "tail", "--dir", "/a", "--kind", "query", "--json"]).unwrap();
        assert_eq!(dir_of(cli), Some(PathBuf::from("/a")));
        let cli = parse(&[
            "audit",
            "verify",
            "/a",
            "--pubkey",
            "/k",
            "--state-dir",
            "/s",
        ])
        .unwrap();
        assert_eq!(dir_of(cli), Some(PathBuf::from("/a")));
    }

    #[test]
    fn help_names_the_directory_in_both_forms() {
        for path in [
            &["audit", "ls"][..],
            &["audit", "tail"],
            &["audit", "verify"],
            &["replay"],
        ] {
            let mut cmd = Cli::command();
            let mut sub = &mut cmd;
            for name in path {
                sub = sub.find_subcommand_mut(name).unwrap();
            }
            let help = sub.render_help().to_string();
            assert!(help.contains("[DIR]"), "{path:?}: {help}");
            assert!(help.contains("--dir <DIR>"), "{path:?}: {help}");
        }
    }
}
