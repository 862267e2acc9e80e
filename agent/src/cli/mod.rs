//! Command line: one module per subcommand.
//!
//! This dispatcher is minimal (it only knows `policy`) and is rewritten at
//! integration; the subcommands' logic lives in their own modules.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod policy;

/// nhi-agent: audit trail and guardrails for non-human identities.
#[derive(Debug, Parser)]
#[command(name = "nhi-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with configuration files.
    Policy(policy::PolicyArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Policy(args) => policy::run(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
