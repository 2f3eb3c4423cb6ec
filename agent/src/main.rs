//! The `snowtrail` binary: parses the command line and hands it to [`snowtrail::cli`].
fn main() -> std::process::ExitCode {
    snowtrail::cli::main()
}
