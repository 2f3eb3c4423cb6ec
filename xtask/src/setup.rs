//! `cargo xtask setup`: everything the build and the tests need that cargo does not fetch itself.
//!
//! Each step checks first and does nothing when its piece is present, so a second run takes a
//! fraction of a second:
//! 1. the nightly toolchain's `rust-src` (the eBPF crate builds `core` from source);
//! 2. `bpf-linker` 0.13, built against the nightly's own LLVM 22 shared library (the default
//!    feature wants an LLVM this machine does not have);
//! 3. Python venvs under `target/snowtrail-env/`: `venv` with the test tools (DuckDB, pyarrow), and
//!    `py4` / `py5` with the two generations of Snowflake's Python connector (they cannot share one);
//! 4. Snowflake's Node driver under `target/snowtrail-env/node`;
//! 5. stunnel from Debian, the TLS terminator put in front of fakesnow in the tests;
//! 6. the packaging tools: cargo-deb and cargo-generate-rpm (pinned), and from Debian lintian and
//!    rpm (the package tests check the .deb with lintian and read the .rpm with `rpm -qp`).
//!
//! With `--bench` (and always before `cargo xtask bench`), also the benchmark's peers, which the
//! tests do not need: nginx and the DejaVu fonts (the charts' text) from Debian, and mitmproxy
//! (pinned) in a venv of its own under `target/snowtrail-env/mitmproxy`. `cargo xtask fuzz` needs
//! only steps 1 and 2, and cargo-fuzz (pinned), which it installs itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::util::{output, root, sh, step};

/// bpf-linker release the eBPF build is known to work with.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Python packages the tests use to read the audit, pinned.
const PYTHON_REQUIREMENTS: &[&str] = &["duckdb==2.0.0", "pyarrow==26.0.1"];
/// The classic, pure-Python connector (HTTP/1.1, gzip bodies, trusts REQUESTS_CA_BUNDLE), and
/// fakesnow, the third-party fake Snowflake that needs a connector before 5.
const PY4_REQUIREMENTS: &[&str] = &[
    "snowflake-connector-python==4.8.1",
    "fakesnow[server]==0.12.1",
];
/// The current connector with its Rust core (HTTP/2, trusts SSL_CERT_FILE and the system store).
const PY5_REQUIREMENTS: &[&str] = &["snowflake-connector-python==5.2.0"];
/// Snowflake's Node driver (trusts NODE_EXTRA_CA_CERTS).
const NODE_PACKAGE: &str = "snowflake-sdk@3.3.0";
/// cargo-deb release `cargo xtask package` is known to work with.
const CARGO_DEB_VERSION: &str = "3.8.0";
/// cargo-generate-rpm release `cargo xtask package` is known to work with.
const CARGO_GENERATE_RPM_VERSION: &str = "0.21.1";
/// cargo-fuzz release `cargo xtask fuzz` is known to work with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// mitmproxy for the bench's round-trip section: the last release that runs on Python 3.11.
const MITMPROXY_REQUIREMENTS: &[&str] = &["mitmproxy==11.0.2"];

/// Options of `setup`.
#[derive(Debug, Args, Default)]
pub struct Options {
    /// Reinstall every piece even when present.
    #[arg(long)]
    pub force: bool,
    /// Also install the benchmark's peers (nginx, mitmproxy) and the charts' font.
    #[arg(long)]
    pub bench: bool,
}

/// Paths the other tasks hand to tests.
pub struct Env {
    /// The Python with DuckDB and pyarrow.
    pub python: PathBuf,
    /// The Python with connector 4.8.1.
    pub py4: PathBuf,
    /// The Python with connector 5.2.0.
    pub py5: PathBuf,
    /// The `node_modules` holding snowflake-sdk.
    pub node_modules: PathBuf,
}

/// Installs what is missing.
pub fn run(opts: &Options) -> anyhow::Result<Env> {
    build_tools(opts.force)?;
    let python = venv(
        "venv",
        PYTHON_REQUIREMENTS,
        "the audit read-back tools (DuckDB, pyarrow)",
        opts.force,
    )?;
    let py4 = venv(
        "py4",
        PY4_REQUIREMENTS,
        "snowflake-connector-python 4.8.1",
        opts.force,
    )?;
    let py5 = venv(
        "py5",
        PY5_REQUIREMENTS,
        "snowflake-connector-python 5.2.0",
        opts.force,
    )?;
    let node_modules = node(opts.force)?;
    stunnel()?;
    packaging_tools(opts.force)?;
    if opts.bench {
        bench_peers(opts.force)?;
    }
    Ok(Env {
        python,
        py4,
        py5,
        node_modules,
    })
}

/// What building the agent needs beyond cargo: the nightly's rust-src and bpf-linker (the eBPF
/// programs are built by the agent's build script).
pub fn build_tools(force: bool) -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    rust_src(&sysroot, force)?;
    bpf_linker(&sysroot, force)
}

/// cargo-fuzz at its pinned version, built with the default toolchain and run on the nightly.
pub fn cargo_fuzz(force: bool) -> anyhow::Result<()> {
    let present = output(Command::new("cargo").args(["+nightly", "fuzz", "--version"]))
        .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_FUZZ_VERSION));
    if present && !force {
        return Ok(());
    }
    step(&format!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} from crates.io (a minute or two)"
    ));
    sh(Command::new("cargo")
        .args([
            "install",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
            "--locked",
            "--force",
        ])
        .env_remove("RUSTUP_TOOLCHAIN"))
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

fn venv(name: &str, requirements: &[&str], what: &str, force: bool) -> anyhow::Result<PathBuf> {
    let dir = root().join("target/snowtrail-env").join(name);
    let python = dir.join("bin/python");
    let stamp = dir.join(".snowtrail-requirements");
    let wanted = requirements.join("\n");
    if !force && python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    step(&format!(
        "installing {what} into target/snowtrail-env/{name}"
    ));
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
        .args(requirements))?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

fn stunnel() -> anyhow::Result<()> {
    if output(Command::new("stunnel").arg("-version")).is_some()
        || Path::new("/usr/bin/stunnel").exists()
    {
        return Ok(());
    }
    step("installing stunnel4 from Debian");
    apt_install(&["stunnel4"])
}

/// The benchmark's peers: nginx and the DejaVu fonts from Debian, mitmproxy in its own venv.
/// Returns the path of `mitmdump`.
pub fn bench_peers(force: bool) -> anyhow::Result<PathBuf> {
    let mut missing = Vec::new();
    if output(Command::new("sh").args(["-c", "command -v nginx"])).is_none() {
        missing.push("nginx");
    }
    if !Path::new(crate::bench::CHART_FONT).exists() {
        missing.push("fonts-dejavu-core");
    }
    if !missing.is_empty() {
        step(&format!("installing {} from Debian", missing.join(", ")));
        apt_install(&missing)?;
    }
    let python = venv(
        "mitmproxy",
        MITMPROXY_REQUIREMENTS,
        "mitmproxy (the bench's Python peer)",
        force,
    )?;
    Ok(python.with_file_name("mitmdump"))
}

/// Installs Debian packages, refreshing the package lists once if the first try fails.
fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let install = || {
        sh(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        install()?;
    }
    Ok(())
}

/// cargo-deb and cargo-generate-rpm at their pinned versions, and lintian and rpm from Debian.
pub fn packaging_tools(force: bool) -> anyhow::Result<()> {
    for (name, version) in [
        ("cargo-deb", CARGO_DEB_VERSION),
        ("cargo-generate-rpm", CARGO_GENERATE_RPM_VERSION),
    ] {
        let present = output(Command::new(name).arg("--version"))
            .is_some_and(|v| v.split_whitespace().any(|w| w == version));
        if present && !force {
            continue;
        }
        step(&format!("installing {name} {version} (a minute or two)"));
        sh(Command::new("cargo")
            .args([
                "install",
                &format!("{name}@{version}"),
                "--locked",
                "--force",
            ])
            .env_remove("RUSTUP_TOOLCHAIN"))?;
    }
    let missing: Vec<&str> = [("lintian", "lintian"), ("rpm", "rpm")]
        .into_iter()
        .filter(|(_, bin)| {
            output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_none()
        })
        .map(|(pkg, _)| pkg)
        .collect();
    if !missing.is_empty() {
        step(&format!("installing {} from Debian", missing.join(", ")));
        apt_install(&missing)?;
    }
    Ok(())
}

fn node(force: bool) -> anyhow::Result<PathBuf> {
    let dir = root().join("target/snowtrail-env/node");
    let modules = dir.join("node_modules");
    let stamp = dir.join(".snowtrail-requirements");
    if !force
        && modules.join("snowflake-sdk/package.json").exists()
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s == NODE_PACKAGE)
    {
        return Ok(modules);
    }
    step(&format!(
        "installing {NODE_PACKAGE} into target/snowtrail-env/node"
    ));
    std::fs::create_dir_all(&dir)?;
    sh(Command::new("npm")
        .arg("install")
        .arg("--prefix")
        .arg(&dir)
        .args([
            "--save-exact",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            NODE_PACKAGE,
        ]))
    .context("npm is needed for the Node driver tests")?;
    std::fs::write(&stamp, NODE_PACKAGE)?;
    Ok(modules)
}
