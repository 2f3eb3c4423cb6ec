//! The command line (placeholder until the CLI lands).
/// Entry point of the `snowtrail` binary.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
