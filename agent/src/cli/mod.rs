//! Command line: one module per subcommand.
//!
//! This dispatcher only wires the journal subcommands, for testing on the `journal` branch;
//! the integrator replaces it. Its contract with the subcommands: each `run` returns the
//! exit code on success, and an error is printed on ONE line with its causes (`{:#}`) before
//! exiting with status 1.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod replay;
pub mod sessions;

#[derive(Debug, Parser)]
#[command(name = "nhi-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the sessions recorded in a journal.
    Sessions(sessions::SessionsArgs),
    /// Show one session's identity and timeline.
    Replay(replay::ReplayArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Sessions(args) => sessions::run(args),
        Command::Replay(args) => replay::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nhi-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
