//! `cargo xtask test`: the whole test suite, as CI runs it.
//!
//! One debug build serves every step. Kernel and end-to-end tests need root and a cgroup v2 mount;
//! they use the real kernel hooks.

use std::process::Command;

use anyhow::bail;
use clap::Args;

use crate::util::{root, sh, step};

/// Options of `test`.
#[derive(Debug, Args, Default)]
pub struct Options {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments for the test harness (a name filter, `--nocapture`, ...).
    #[arg(last = true)]
    pub harness_args: Vec<String>,
}

/// Runs the suite.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let env = crate::setup::run(&crate::setup::Options::default())?;
    if !nix_is_root() {
        bail!("the tests attach eBPF programs and make cgroups: run them as root");
    }
    let root = root();
    if !opts.no_lint {
        step("cargo fmt --check");
        sh(Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--", "--check"]))?;
        step("cargo clippy -D warnings");
        sh(Command::new("cargo").current_dir(&root).args([
            "clippy",
            "-p",
            "snowtrail",
            "-p",
            "snowtrail-common",
            "-p",
            "snowtrail-tests",
            "-p",
            "xtask",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    step("building the agent");
    sh(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "-p", "snowtrail"]))?;
    // The package tests install the .deb built from this debug binary (no release build in CI).
    let packages = crate::package::run(&crate::package::Options {
        profile: "dev".into(),
        no_build: true,
        out: root.join("target/package"),
        deb_only: false,
        rpm_only: false,
    })?;
    step("running the tests");
    let bin = root.join("target/debug/snowtrail");
    sh(Command::new("cargo")
        .current_dir(&root)
        .args([
            "test",
            "-p",
            "snowtrail",
            "-p",
            "snowtrail-common",
            "-p",
            "snowtrail-tests",
            "-p",
            "xtask",
            "--",
        ])
        .args(&opts.harness_args)
        .env("SNOWTRAIL_PYTHON", &env.python)
        .env("SNOWTRAIL_PY4", &env.py4)
        .env("SNOWTRAIL_PY5", &env.py5)
        .env("SNOWTRAIL_NODE_MODULES", &env.node_modules)
        .env("SNOWTRAIL_BIN", &bin)
        .envs(packages.deb.map(|p| ("SNOWTRAIL_DEB", p)))
        .envs(packages.rpm.map(|p| ("SNOWTRAIL_RPM", p))))?;
    step("all tests passed");
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
