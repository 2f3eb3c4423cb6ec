//! `cargo xtask`: the project's tasks, one module per subcommand.
//!
//! `setup` installs what a fresh machine lacks (the nightly's rust-src, bpf-linker against an LLVM 22
//! library, a Python venv with the test tools); `demo` and `test` call it first, `fuzz` the part it
//! needs.

mod bench;
mod demo;
mod fuzz;
mod package;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

/// Project tasks for snowtrail.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the build and test prerequisites (idempotent; instant when all is present).
    Setup(setup::Options),
    /// Build everything and show an enrolled workload being intercepted and audited.
    Demo(demo::Options),
    /// Build once and run every test: formatting, lints, unit, kernel and end-to-end tests.
    Test(test::Options),
    /// Build the .deb and the .rpm (systemd unit, default config, maintainer scripts).
    Package(package::Options),
    /// Measure snowtrail against its peers in one run and report ratios (`--quick` for a short run).
    Bench(bench::Options),
    /// Run the fuzz targets (one, or all in turn) for N seconds each and print the executions each
    /// reached; a failing input is saved under `fuzz/artifacts/<target>/`, which `test` replays.
    Fuzz(fuzz::Options),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(o) => setup::run(&o).map(|_| ()),
        Command::Demo(o) => demo::run(&o),
        Command::Test(o) => test::run(&o),
        Command::Package(o) => package::run(&o).map(|_| ()),
        Command::Bench(o) => bench::run(&o),
        Command::Fuzz(o) => fuzz::run(&o),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
