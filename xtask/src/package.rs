//! `cargo xtask package`: the `.deb` (cargo-deb) and the `.rpm` (cargo-generate-rpm).
//!
//! Both read `[package.metadata.deb]` and `[package.metadata.generate-rpm]` in `agent/Cargo.toml`,
//! which name the files under `packaging/` (unit, default config, maintainer scripts). The binary
//! carries its eBPF programs (the agent's build.rs embeds them), so the packages hold one
//! executable. `--profile dev --no-build` packages the debug binary a test run has already built:
//! CI checks the packages without a release build. cargo-deb packages named profiles only (it
//! refuses `dev`), so the debug binary is linked into `target/dev-package/`, the directory of the
//! workspace's `dev-package` profile (the dev profile's settings), and packaged from there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::util::{root, sh, step};

/// Options of `package`.
#[derive(Debug, Args)]
pub struct Options {
    /// Cargo profile whose binary is packaged: `release` for a release, `dev` for tests.
    #[arg(long, default_value = "release")]
    pub profile: String,
    /// Package the binary already built for the profile instead of building it.
    #[arg(long)]
    pub no_build: bool,
    /// Where the packages go.
    #[arg(long, value_name = "DIR", default_value = "target/package")]
    pub out: PathBuf,
    /// Build only the .deb.
    #[arg(long, conflicts_with = "rpm_only")]
    pub deb_only: bool,
    /// Build only the .rpm.
    #[arg(long)]
    pub rpm_only: bool,
}

/// The packages built.
#[derive(Debug)]
pub struct Built {
    /// The .deb, unless `--rpm-only`.
    pub deb: Option<PathBuf>,
    /// The .rpm, unless `--deb-only`.
    pub rpm: Option<PathBuf>,
}

/// Builds the packages.
pub fn run(opts: &Options) -> anyhow::Result<Built> {
    crate::setup::packaging_tools(false)?;
    let root = root();
    let out = if opts.out.is_absolute() {
        opts.out.clone()
    } else {
        root.join(&opts.out)
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    if !opts.no_build {
        step(&format!("building the agent ({} profile)", opts.profile));
        sh(Command::new("cargo").current_dir(&root).args([
            "build",
            "-p",
            "snowtrail",
            "--profile",
            &opts.profile,
        ]))?;
    }
    let bin = root
        .join("target")
        .join(profile_dir(&opts.profile))
        .join("snowtrail");
    if !bin.exists() {
        bail!(
            "{} is missing: build it first, or leave out --no-build",
            bin.display()
        );
    }
    let deb = if opts.rpm_only {
        None
    } else {
        let profile = deb_profile(&root, &opts.profile, &bin)?;
        Some(deb(&root, &profile, &out)?)
    };
    let rpm = if opts.deb_only {
        None
    } else {
        Some(rpm(&root, &opts.profile, &bin, &out)?)
    };
    for p in deb.iter().chain(rpm.iter()) {
        step(&format!("built {}", p.display()));
    }
    Ok(Built { deb, rpm })
}

/// The directory under `target/` a profile builds into.
fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    }
}

/// The named profile of the dev build's package, which cargo-deb takes in the dev profile's place.
const DEV_PACKAGE_PROFILE: &str = "dev-package";

/// The profile cargo-deb packages `bin` (built with `profile`) as: the profile itself, or for the
/// dev profile [`DEV_PACKAGE_PROFILE`], with `bin` linked (or copied) into its directory.
fn deb_profile(root: &Path, profile: &str, bin: &Path) -> anyhow::Result<String> {
    if profile_dir(profile) != "debug" {
        return Ok(profile.to_owned());
    }
    let dir = root.join("target").join(DEV_PACKAGE_PROFILE);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let staged = dir.join("snowtrail");
    match std::fs::remove_file(&staged) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot replace {}", staged.display())),
    }
    if std::fs::hard_link(bin, &staged).is_err() {
        std::fs::copy(bin, &staged)
            .with_context(|| format!("cannot copy {} to {}", bin.display(), staged.display()))?;
    }
    Ok(DEV_PACKAGE_PROFILE.to_owned())
}

fn deb(root: &Path, profile: &str, out: &Path) -> anyhow::Result<PathBuf> {
    step("cargo deb");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args([
        "deb",
        "-p",
        "snowtrail",
        "--no-build",
        "--profile",
        profile,
        "-o",
    ]);
    cmd.arg(out);
    if profile != "release" {
        // A test package: fast compression (xz at its best level takes most of a minute).
        cmd.arg("--fast");
    }
    sh(&mut cmd)?;
    newest(out, "deb").context("cargo deb wrote no .deb")
}

fn rpm(root: &Path, profile: &str, bin: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    // cargo-generate-rpm packages files as they are: it gets a stripped copy beside the binary
    // (the name the rpm metadata gives as its source).
    let stripped = bin.with_file_name("snowtrail.stripped");
    step("stripping the binary for the rpm");
    sh(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(bin)
        .arg(&stripped))
    .context("objcopy (binutils) is needed to strip the binary")?;
    step("cargo generate-rpm");
    sh(Command::new("cargo")
        .current_dir(root)
        .args(["generate-rpm", "-p", "agent", "--profile", profile])
        .arg("-o")
        .arg(out)
        .args(["--payload-compress", "gzip"]))?;
    newest(out, "rpm").context("cargo generate-rpm wrote no .rpm")
}

/// The most recently modified file in `dir` with extension `ext`.
fn newest(dir: &Path, ext: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == ext))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p)
}
