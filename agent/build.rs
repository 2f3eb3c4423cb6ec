//! Builds the eBPF programs (`ebpf/programs`) with the nightly toolchain through aya-build, so that a
//! plain `cargo build` produces an agent with its kernel half embedded.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
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
