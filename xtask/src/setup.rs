//! `cargo xtask setup`: everything the build and the tests need that cargo does not fetch itself.
//!
//! Each step checks first and does nothing when its piece is present, so a second run takes a
//! fraction of a second:
//! 1. the nightly toolchain's `rust-src` (the eBPF crate builds `core` from source);
//! 2. `bpf-linker` 0.13, built against the nightly's own LLVM 22 shared library (the default
//!    feature wants an LLVM this machine does not have);
//! 3. a Python venv under `target/snowtrail-env/venv` with the pinned test tools (DuckDB, pyarrow).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::util::{output, root, sh, step};

/// bpf-linker release the eBPF build is known to work with.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Python packages the tests use, pinned.
const PYTHON_REQUIREMENTS: &[&str] = &["duckdb==2.0.0", "pyarrow==26.0.1"];

/// Options of `setup`.
#[derive(Debug, Args, Default)]
pub struct Options {
    /// Reinstall every piece even when present.
    #[arg(long)]
    pub force: bool,
}

/// Paths the other tasks hand to tests.
pub struct Env {
    /// The venv's Python.
    pub python: PathBuf,
}

/// Installs what is missing.
pub fn run(opts: &Options) -> anyhow::Result<Env> {
    let sysroot = nightly_sysroot()?;
    rust_src(&sysroot, opts.force)?;
    bpf_linker(&sysroot, opts.force)?;
    let python = venv(opts.force)?;
    Ok(Env { python })
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    match output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])) {
        Some(s) if !s.is_empty() => Ok(PathBuf::from(s)),
        _ => bail!(
            "the nightly toolchain is missing: the eBPF programs need it (`rustup toolchain install nightly`)"
        ),
    }
}

fn rust_src(sysroot: &Path, force: bool) -> anyhow::Result<()> {
    if !force
        && sysroot
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .exists()
    {
        return Ok(());
    }
    step("installing rust-src for the nightly toolchain");
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker(sysroot: &Path, force: bool) -> anyhow::Result<()> {
    let working = output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if working && !force {
        return Ok(());
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM 22 (about a minute)"
    ));
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot read {}", lib.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .context("the nightly toolchain ships no libLLVM shared library")?;
    // A prefix that looks like an LLVM install: lib/libLLVM.so, lib/<soname> and a bin/llvm-config
    // that only has to exist. The built linker's RUNPATH points here, so it lives outside target/.
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let prefix = home.join(".cache/snowtrail/llvm22-prefix");
    let _ = std::fs::remove_dir_all(&prefix);
    std::fs::create_dir_all(prefix.join("lib"))?;
    std::fs::create_dir_all(prefix.join("bin"))?;
    let target = lib.join(&llvm);
    std::os::unix::fs::symlink(&target, prefix.join("lib/libLLVM.so"))?;
    if llvm != "libLLVM.so" {
        std::os::unix::fs::symlink(&target, prefix.join("lib").join(&llvm))?;
    }
    for entry in std::fs::read_dir(&lib)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM") && name != llvm && !prefix.join("lib").join(&name).exists() {
            std::os::unix::fs::symlink(entry.path(), prefix.join("lib").join(&name))?;
        }
    }
    let config = prefix.join("bin/llvm-config");
    std::fs::write(&config, "#!/bin/sh\nexit 0\n")?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o755))?;
    sh(Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN"))
}

fn venv(force: bool) -> anyhow::Result<PathBuf> {
    let dir = root().join("target/snowtrail-env/venv");
    let python = dir.join("bin/python");
    let stamp = dir.join(".snowtrail-requirements");
    let wanted = PYTHON_REQUIREMENTS.join("\n");
    if !force && python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    step("creating the Python test venv (DuckDB, pyarrow)");
    if !python.exists() || force {
        let _ = std::fs::remove_dir_all(&dir);
        sh(Command::new("python3").arg("-m").arg("venv").arg(&dir))?;
    }
    sh(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PYTHON_REQUIREMENTS))?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}
