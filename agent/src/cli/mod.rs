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
pub mod preflight;
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

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The configuration file the systemd unit runs with: the default of every subcommand
/// that reads the agent's configuration.
pub const DEFAULT_CONFIG: &str = "/etc/nhi-agent/agent.toml";
/// The default of earlier releases, still read when [`DEFAULT_CONFIG`] does not exist.
pub const LEGACY_CONFIG: &str = "/etc/nhi-agent/config.toml";

/// The help text of a `--config` option defaulting through [`config_path`].
pub const CONFIG_HELP: &str = "The agent's configuration file [default: \
/etc/nhi-agent/agent.toml, or /etc/nhi-agent/config.toml when agent.toml does not exist]";

/// The configuration file to read: `explicit` when given, else [`DEFAULT_CONFIG`], or
/// [`LEGACY_CONFIG`] when only that one exists.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    default_config_in(
        explicit,
        Path::new(DEFAULT_CONFIG),
        Path::new(LEGACY_CONFIG),
    )
}

fn default_config_in(explicit: Option<&Path>, default: &Path, legacy: &Path) -> PathBuf {
    match explicit {
        Some(path) => path.to_path_buf(),
        None if !default.exists() && legacy.exists() => legacy.to_path_buf(),
        None => default.to_path_buf(),
    }
}

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
    /// Show one session's timeline with the originals of its masked values, opened with
    /// an auditor's age identity (`[evidence] auditor_recipients`).
    Reveal(replay::RevealArgs),
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
        Command::Reveal(a) => replay::reveal(a),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_to_agent_toml_and_falls_back_to_config_toml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (agent, legacy) = (
            dir.path().join("agent.toml"),
            dir.path().join("config.toml"),
        );
        let explicit = dir.path().join("other.toml");
        let pick = |explicit: Option<&Path>| default_config_in(explicit, &agent, &legacy);
        // Neither exists: the unit's name, so the error names the file to create.
        assert_eq!(pick(None), agent);
        std::fs::write(&legacy, "").expect("write");
        assert_eq!(pick(None), legacy, "only config.toml: the fallback");
        std::fs::write(&agent, "").expect("write");
        assert_eq!(pick(None), agent, "both: agent.toml wins");
        assert_eq!(pick(Some(&explicit)), explicit, "--config always wins");
    }

    #[test]
    fn config_help_names_both_files() {
        assert!(CONFIG_HELP.contains(DEFAULT_CONFIG) && CONFIG_HELP.contains(LEGACY_CONFIG));
    }
}
