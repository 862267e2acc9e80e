//! Command line: one module per subcommand. `main` parses, sets up logging and
//! dispatches; every subcommand returns its exit status.
pub mod approvals;
pub mod attest;
pub mod detach;
pub mod events;
pub mod export;
pub mod filter;
pub mod generate;
pub mod key;
pub mod kube_ca;
pub mod lineage;
mod logging;
pub mod ocsf;
pub mod policy;
pub mod reload;
pub mod replay;
pub mod run;
pub mod select;
pub mod sessions;
pub mod ship;
pub mod ssh_ca;
pub mod status;
pub mod stream_format;
pub mod verify;
pub mod views;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "nhi-agent",
    version = generate::version(),
    about = "Audit trail and guardrails for non-human identities",
    long_about = "Intercepts the TCP connections of selected workloads with eBPF, relays them \
                  through a local proxy and journals who connected where, before forwarding."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Run(run::RunArgs),
    /// List journaled sessions.
    Sessions(sessions::SessionsArgs),
    /// Show one session's timeline.
    Replay(replay::ReplayArgs),
    /// List events across sessions and journals (statements, chunks, approvals, ...).
    Events(events::EventsArgs),
    /// Export events as OCSF or JSON lines.
    Export(export::ExportArgs),
    /// Work with policy/config files.
    Policy(policy::PolicyArgs),
    /// Stop intercepting: remove the pinned programs a fail-closed agent left behind.
    Detach(detach::DetachArgs),
    /// List, approve or deny statements held for approval (talks to the running agent).
    Approvals(approvals::ApprovalsArgs),
    /// Upload sealed journal segments (`--once`), or show where shipping stands (`status`).
    Ship(ship::ShipArgs),
    /// Present a CI job's OIDC token: bind its claims to this process's cgroup.
    Attest(attest::AttestArgs),
    /// Show or export the host's journal signing key (public half).
    Key(key::KeyArgs),
    /// Verify journal segments: hash chain, seals, links (exit 0 only when intact).
    Verify(verify::VerifyArgs),
    /// The kernel features this host offers and the running agent's state (exit 0:
    /// healthy, 1: something is wrong, 3: not running).
    Status(status::StatusArgs),
    /// Ask the running agent to re-read its configuration and wait for the verdict.
    Reload(reload::ReloadArgs),
    /// Print the known_hosts line that makes SSH clients trust the agent's host
    /// certificates (`@cert-authority * ssh-ed25519 ...`).
    SshCa(ssh_ca::SshCaArgs),
    /// Print the PEM bundle a bot's kubeconfig trusts (`certificate-authority`): the
    /// agent CA, then the Kubernetes targets' cluster CAs.
    KubeCa(kube_ca::KubeCaArgs),
    /// Write the man pages and shell completions (for packaging).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    let result = match &cli.command {
        Command::Run(a) => run::run(a),
        Command::Sessions(a) => sessions::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Events(a) => events::run(a),
        Command::Export(a) => export::run(a),
        Command::Policy(a) => policy::run(a),
        Command::Detach(a) => detach::run(a),
        Command::Approvals(a) => approvals::run(a),
        Command::Ship(a) => ship::run(a),
        Command::Attest(a) => attest::run(a),
        Command::Key(a) => key::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Status(a) => status::run(a),
        Command::Reload(a) => reload::run(a),
        Command::SshCa(a) => ssh_ca::run(a),
        Command::KubeCa(a) => kube_ca::run(a),
        Command::Generate(a) => generate::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}error: {e:#}", logging::error_prefix());
            ExitCode::FAILURE
        }
    }
}
