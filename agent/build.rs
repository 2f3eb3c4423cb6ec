//! Builds the eBPF programs (`ebpf/programs`) with the nightly toolchain through aya-build, so that a
//! plain `cargo build` produces an agent with its kernel half embedded.
//!
//! aya-build passes every line of the eBPF crate's build on as a cargo warning. So the build runs in
//! a child process (this build script again, told so by [`CHILD`]) whose output is held back: the
//! directives pass through, the eBPF build's lines are shown only when it fails (then all of them).
use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow, bail};

/// Set in the child process that runs aya-build.
const CHILD: &str = "SNOWTRAIL_BUILD_EBPF_CHILD";
/// aya-build's own note that the eBPF build was skipped on request: always worth showing.
const SKIPPED: &str = "cargo:warning=AYA_BUILD_SKIP=";

fn main() -> anyhow::Result<()> {
    if std::env::var_os(CHILD).is_some() {
        return build_ebpf();
    }
    let me = std::env::current_exe().context("the build script's own path")?;
    let out = Command::new(&me)
        .env(CHILD, "1")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", me.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut shown = std::io::stdout().lock();
    for line in stdout.lines() {
        if !out.status.success() || !line.starts_with("cargo:warning=") || line.starts_with(SKIPPED)
        {
            writeln!(shown, "{line}")?;
        }
    }
    if !out.status.success() {
        std::io::stderr().write_all(&out.stderr)?;
        bail!(
            "the eBPF build failed ({}); its output is above",
            out.status
        );
    }
    Ok(())
}

/// What the child runs: aya-build, printing as it always does.
fn build_ebpf() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?;
    let programs = root.join("ebpf/programs");
    let common = root.join("ebpf/common");
    println!("cargo:rerun-if-changed={}", programs.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        programs.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-changed={}", common.join("src").display());
    let package = aya_build::Package {
        name: "snowtrail-ebpf",
        root_dir: programs
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 path {}", programs.display()))?,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
