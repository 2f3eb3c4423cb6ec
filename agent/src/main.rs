//! The `snowtrail` binary: parses the command line and hands it to [`snowtrail::cli`].

#[global_allocator]
static ALLOC: snowtrail::alloc::Allocator = snowtrail::alloc::Allocator;

fn main() -> std::process::ExitCode {
    snowtrail::alloc::configure();
    snowtrail::cli::main()
}
