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
    match std::fs::symlink_metadata(&pin_dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("nothing pinned at {}", pin_dir.display());
            return Ok(ExitCode::SUCCESS);
        }
        // A non-root user cannot even look into /sys/fs/bpf (0700): saying "nothing
        // pinned" would be a guess, and a wrong one while a fail-closed agent is down.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "error: cannot read the pins under {}: {e}; detach needs root (CAP_SYS_ADMIN \
                 and access to the bpf filesystem)",
                pin_dir.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            eprintln!(
                "error: cannot read the pins under {}: {e}",
                pin_dir.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    ebpf::remove_pins(&pin_dir);
    let layout = pin_dir.join(format!("v{}", nhi_agent_common::MAP_LAYOUT_VERSION));
    if layout.exists() {
        eprintln!(
            "error: could not remove the pins under {}: connections are still intercepted",
            layout.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "removed the pins under {}: connections are no longer intercepted",
        pin_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
