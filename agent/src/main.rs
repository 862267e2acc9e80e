//! `nhi-agent`: parse the command line and hand over to `cli`.
fn main() -> std::process::ExitCode {
    nhi_agent::cli::main()
}
