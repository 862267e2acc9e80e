//! `nhi-agent kube-ca`: the PEM bundle a bot's kubeconfig names as its
//! `certificate-authority`, so kubectl trusts the agent, which answers for the API
//! servers of `protocol = "kubernetes"` targets with leaves of its local CA.
//!
//! The bundle holds the agent CA and then each Kubernetes target's cluster CA
//! (`ca_file`), so the same kubeconfig works whether or not the workload is intercepted.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Args;

use crate::config::{self, Protocol};
use crate::tls::AgentCa;

#[derive(Debug, Args)]
pub struct KubeCaArgs {
    /// The agent's configuration file (its `state_dir` holds the CA) [default:
    /// /etc/nhi-agent/agent.toml, or /etc/nhi-agent/config.toml when agent.toml does not
    /// exist].
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Only this target's cluster CA after the agent CA (default: every Kubernetes
    /// target's).
    #[arg(long)]
    pub target: Option<String>,
    /// The agent CA alone, without the cluster CAs.
    #[arg(long)]
    pub agent_only: bool,
}

/// Prints the bundle, creating the agent CA (0600, in `<state_dir>/tls`) if the agent
/// has not yet.
pub fn run(args: &KubeCaArgs) -> anyhow::Result<ExitCode> {
    let config_path = super::config_path(args.config.as_deref());
    let config = config::load(&config_path)?;
    let targets: Vec<_> = config
        .targets
        .iter()
        .filter(|t| t.protocol == Protocol::Kubernetes)
        .filter(|t| args.target.as_ref().is_none_or(|name| &t.name == name))
        .collect();
    if targets.is_empty() {
        match &args.target {
            Some(name) => bail!(
                "{}: no target \"{name}\" with protocol = \"kubernetes\"",
                config_path.display()
            ),
            None => bail!(
                "{}: no target with protocol = \"kubernetes\"",
                config_path.display()
            ),
        }
    }
    let dir = config.agent.state_dir.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = AgentCa::load_or_create(&dir)
        .with_context(|| format!("the agent's TLS CA in {}", dir.display()))?;
    let mut bundle = String::new();
    push_pem(&mut bundle, ca.ca_cert_pem());
    if !args.agent_only {
        for target in targets {
            if let Some(path) = target.http.as_ref().and_then(|h| h.ca_file.as_ref()) {
                let pem = std::fs::read_to_string(path).with_context(|| {
                    format!("target \"{}\": ca_file {}", target.name, path.display())
                })?;
                push_pem(&mut bundle, &pem);
            }
        }
    }
    print!("{bundle}");
    Ok(ExitCode::SUCCESS)
}

fn push_pem(bundle: &mut String, pem: &str) {
    bundle.push_str(pem.trim_end());
    bundle.push('\n');
}
