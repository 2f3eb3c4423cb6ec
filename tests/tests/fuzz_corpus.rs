//! The fuzz targets' saved inputs, replayed as ordinary tests on the stable toolchain: every file
//! under `fuzz/corpus/<target>/` (seed inputs) and `fuzz/artifacts/<target>/` (inputs that once
//! crashed a target or failed its checks) goes through the target's body, so a crash once fixed
//! stays fixed. Needs no root and no nightly.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    snowtrail_tests::workspace_root().join("fuzz")
}

/// The files of a directory, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_saved_fuzz_input_passes_its_target() {
    let mut failures = Vec::new();
    for (name, check) in fuzz::TARGETS {
        let seeds = files(&fuzz_dir().join("corpus").join(name));
        assert!(!seeds.is_empty(), "fuzz target {name} has no seed input");
        let crashes = files(&fuzz_dir().join("artifacts").join(name));
        for path in seeds.iter().chain(&crashes) {
            let data = std::fs::read(path).unwrap();
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "inputs that fail their fuzz target: {failures:#?}"
    );
}

/// Every `[[bin]]` of `fuzz/Cargo.toml` is in the replayed list and the other way round, so a new
/// target's saved inputs are replayed too.
#[test]
fn every_fuzz_target_is_replayed() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let mut bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|section| {
            let line = section
                .lines()
                .find(|l| l.trim_start().starts_with("name"))?;
            line.split('"').nth(1)
        })
        .collect();
    bins.sort_unstable();
    let mut replayed: Vec<&str> = fuzz::TARGETS.iter().map(|(name, _)| *name).collect();
    replayed.sort_unstable();
    assert_eq!(bins, replayed);
}
