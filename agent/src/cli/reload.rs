//! `nhi-agent reload`: asks the running agent, on its control socket, to re-read its
//! configuration, and waits for the verdict. Exit 0 when the new file is in force, 1
//! when the agent rejected it or refused the caller (the reason, with file, line and column, is printed; the
//! previous configuration stays in force), 3 when no agent answers. Unlike `kill -HUP`,
//! it cannot report success for a file the agent refused. Root only.
use std::{path::PathBuf, process::ExitCode};

use clap::Args;

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 reloaded; 1 the agent rejected the file (the \
    previous configuration stays in force); 3 no agent answers on the control socket."
)]
pub struct ReloadArgs {
    /// The agent's configuration, to find its control socket (`[agent]
    /// approvals_socket`); default /etc/nhi-agent/agent.toml when it exists.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The control socket, instead of the one the configuration names.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

pub fn run(args: &ReloadArgs) -> anyhow::Result<ExitCode> {
    let socket = super::status::control_socket(args.socket.as_ref(), args.config.as_ref())?;
    let answer = match super::approvals::ask(&socket, &crate::approvals::wire::Request::Reload) {
        Ok(a) => a,
        Err(e) if super::status::not_running(&socket) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(super::status::EXIT_NOT_RUNNING));
        }
        Err(e) => return Err(e),
    };
    if answer.ok {
        println!(
            "{}",
            answer
                .reload
                .unwrap_or_else(|| "configuration reloaded".into())
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "reload rejected; the previous configuration stays in force: {}",
            answer.error.unwrap_or_default()
        );
        Ok(ExitCode::FAILURE)
    }
}
