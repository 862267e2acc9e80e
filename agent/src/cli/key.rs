//! `nhi-agent key show|export-public`: the host's journal signing key (public half only).
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::{config, evidence};

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print the public key (PEM, base64url), its fingerprint and the host id.
    Show {
        #[arg(long, short, help = super::CONFIG_HELP)]
        config: Option<PathBuf>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the public key as PEM to a file (for `nhi-agent verify --key`).
    ExportPublic {
        #[arg(long, short, help = super::CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Where to write the PEM.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

pub fn run(args: &KeyArgs) -> anyhow::Result<ExitCode> {
    let config_path = match &args.command {
        KeyCommand::Show { config, .. } | KeyCommand::ExportPublic { config, .. } => config,
    };
    let config = config::load(&super::config_path(config_path.as_deref()))?;
    let (key, host_id, key_path) =
        evidence::host_identity(&config.evidence, &config.agent.state_dir, false)
            .context("the agent creates the key and host id at its first start")?;
    let public = key.public();
    match &args.command {
        KeyCommand::Show { json: true, .. } => {
            let out = serde_json::json!({
                "host_id": host_id,
                "key_file": key_path,
                "fingerprint": public.fingerprint(),
                "public_key_base64url": public.to_base64url(),
                "public_key_pem": public.to_pem(),
            });
            println!("{out}");
        }
        KeyCommand::Show { .. } => {
            println!("host id:     {host_id}");
            println!("key file:    {}", key_path.display());
            println!("fingerprint: {}", public.fingerprint());
            println!("public key:  {}", public.to_base64url());
            print!("{}", public.to_pem());
        }
        KeyCommand::ExportPublic { out, .. } => {
            std::fs::write(out, public.to_pem())
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "wrote the public key ({}) to {}",
                public.fingerprint(),
                out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
