//! `nhi-agent detach`: remove the pins a fail-closed agent leaves behind, so
//! intercepted workloads connect directly again. Refuses while an agent is serving
//! (its listener answers), since that would silently end auditing.
use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::{config, ebpf};

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Take the pin directory and port from this config file.
    #[arg(long, short, conflicts_with = "bpffs")]
    pub config: Option<PathBuf>,
    /// Pin directory (default /sys/fs/bpf/nhi-agent).
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// Detach even if an agent is answering on the proxy port.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &DetachArgs) -> anyhow::Result<ExitCode> {
    let (pin_dir, port) = match &args.config {
        Some(path) => match config::load(path) {
            Ok(c) => (c.agent.bpffs, Some(c.agent.listen_port)),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(super::run::EXIT_BAD_CONFIG));
            }
        },
        None => (
            args.bpffs
                .clone()
                .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/nhi-agent")),
            None,
        ),
    };
    if let Some(port) = port {
        if !args.force && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            eprintln!(
                "error: an agent is listening on 127.0.0.1:{port}; stop it first (or pass --force)"
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    if !pin_dir.exists() {
        println!("nothing pinned at {}", pin_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    ebpf::remove_pins(&pin_dir);
    println!(
        "removed the pins under {}: connections are no longer intercepted",
        pin_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
