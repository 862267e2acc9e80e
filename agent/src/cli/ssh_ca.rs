//! `nhi-agent ssh-ca`: the line that makes OpenSSH clients trust the agent's SSH host
//! certificates (`@cert-authority * ssh-ed25519 AAAA...`), for `/etc/ssh/ssh_known_hosts`.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use crate::config;
use crate::proxy::ssh::{ca::SshCa, runtime::SSH_DIR};

#[derive(Debug, Args)]
pub struct SshCaArgs {
    /// The agent's configuration file (its `state_dir` holds the CA) [default:
    /// /etc/nhi-agent/agent.toml, or /etc/nhi-agent/config.toml when agent.toml does not
    /// exist].
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// Prints the `@cert-authority` line, creating the CA (0600, in `<state_dir>/ssh`) if
/// the agent has not yet.
pub fn run(args: &SshCaArgs) -> anyhow::Result<ExitCode> {
    let config_path = super::config_path(args.config.as_deref());
    let config = config::load(&config_path)?;
    let dir = config.agent.state_dir.join(SSH_DIR);
    let ca = SshCa::load_or_create(&dir)
        .with_context(|| format!("the agent's SSH CA in {}", dir.display()))?;
    println!("{}", ca.known_hosts_line());
    Ok(ExitCode::SUCCESS)
}
