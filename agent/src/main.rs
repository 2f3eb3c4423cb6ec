//! The `snowtrail` binary: parses the command line and hands it to [`snowtrail::cli`].

/// The process allocator (see the workspace's Cargo.toml for why).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    snowtrail::cli::main()
}
