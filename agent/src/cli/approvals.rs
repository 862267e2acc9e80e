//! `nhi-agent approvals`: list, show, approve and deny statements held for approval,
//! submit signed decision tokens, list and revoke grants, through the running agent's
//! control socket (see `crate::approvals::server`).
use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use crate::{
    approvals::wire::{Answer, Grant, Pending, Request, Scope},
    config::DEFAULT_APPROVALS_SOCKET,
};

#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    /// The agent's approvals socket (`[agent] approvals_socket`).
    #[arg(long, global = true, default_value = DEFAULT_APPROVALS_SOCKET)]
    pub socket: PathBuf,
    /// Print the server's JSON answer instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: ApprovalsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List the statements waiting for a decision.
    List,
    /// Show one waiting statement in full.
    Show { id: String },
    /// Let a waiting statement through.
    Approve {
        id: String,
        /// Why (logged by the agent).
        #[arg(long)]
        reason: Option<String>,
        /// How far the approval reaches: once (this statement), session (later
        /// statements of the same rule in this session) or grant (same workload, target
        /// and rule, any session, for --for).
        #[arg(long, value_parser = parse_scope)]
        scope: Option<Scope>,
        /// The length of a grant ("15m"; at most `[approvals] max_grant`).
        #[arg(long = "for")]
        grant_for: Option<String>,
    },
    /// Refuse a waiting statement (the client gets SQLSTATE 42501 with the reason).
    Deny {
        id: String,
        /// Why (shown to the client and journaled).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Hand in a signed decision token (TOKEN, or - to read it from stdin).
    Submit { token: String },
    /// List the active grants.
    Grants,
    /// End a grant before its time.
    Revoke { id: String },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.parse()
}

pub fn run(args: &ApprovalsArgs) -> anyhow::Result<ExitCode> {
    let request = match &args.command {
        ApprovalsCommand::List => Request::List,
        ApprovalsCommand::Show { id } => Request::Show { id: id.clone() },
        ApprovalsCommand::Approve {
            id,
            reason,
            scope,
            grant_for,
        } => Request::Approve {
            id: id.clone(),
            reason: reason.clone(),
            scope: *scope,
            grant_for: grant_for.clone(),
        },
        ApprovalsCommand::Submit { token } => {
            let token = if token == "-" {
                let mut t = String::new();
                std::io::stdin()
                    .take(64 * 1024)
                    .read_to_string(&mut t)
                    .context("reading the token from stdin")?;
                t
            } else {
                token.clone()
            };
            Request::Submit {
                token: token.trim().to_owned(),
            }
        }
        ApprovalsCommand::Grants => Request::Grants,
        ApprovalsCommand::Revoke { id } => Request::Revoke { id: id.clone() },
        ApprovalsCommand::Deny { id, reason } => Request::Deny {
            id: id.clone(),
            reason: reason.clone(),
        },
    };
    let answer = ask(&args.socket, &request)?;
    if args.json {
        println!("{}", serde_json::to_string(&answer)?);
        return Ok(if answer.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    if !answer.ok {
        bail!(
            "the agent refused: {}",
            answer.error.as_deref().unwrap_or("no reason given")
        );
    }
    match &args.command {
        ApprovalsCommand::List => {
            let pending = answer.pending.unwrap_or_default();
            if pending.is_empty() {
                println!("no statement is waiting for approval");
            }
            for p in &pending {
                println!(
                    "{}  session {} seq {}  {} -> {}  rule {}  expires {}\n    {}",
                    p.id,
                    p.session,
                    p.seq,
                    p.workload,
                    p.target,
                    p.rule.as_deref().unwrap_or("default"),
                    p.expires_at,
                    one_line(&p.statement, 100)
                );
            }
        }
        ApprovalsCommand::Show { .. } => {
            if let Some(p) = &answer.request {
                show(p);
            }
        }
        ApprovalsCommand::Approve { id, .. } | ApprovalsCommand::Deny { id, .. } => {
            let verb = if matches!(args.command, ApprovalsCommand::Approve { .. }) {
                "approved"
            } else {
                "denied"
            };
            println!(
                "{id} {verb} by {}",
                answer.by.as_deref().unwrap_or("unknown")
            );
            if let Some(g) = &answer.grant {
                println!("grant {} until {}", g.id, g.until);
            }
        }
        ApprovalsCommand::Submit { .. } => {
            let id = answer
                .request
                .as_ref()
                .map(|p| p.id.as_str())
                .unwrap_or("?");
            println!(
                "{id} decided by {}",
                answer.by.as_deref().unwrap_or("unknown")
            );
            if let Some(g) = &answer.grant {
                println!("grant {} until {}", g.id, g.until);
            }
        }
        ApprovalsCommand::Grants => {
            let grants = answer.grants.unwrap_or_default();
            if grants.is_empty() {
                println!("no active grant");
            }
            for g in &grants {
                show_grant(g);
            }
        }
        ApprovalsCommand::Revoke { id } => println!("{id} revoked"),
    }
    Ok(ExitCode::SUCCESS)
}

fn show(p: &Pending) {
    println!("id:           {}", p.id);
    println!("session:      {} (statement {})", p.session, p.seq);
    println!("workload:     {}", p.workload);
    println!(
        "process:      pid {} {}{}",
        p.process.pid,
        p.process.exe.as_deref().unwrap_or("?"),
        p.process
            .cmdline
            .as_ref()
            .map(|c| format!(" ({})", one_line(&c.join(" "), 200)))
            .unwrap_or_default()
    );
    println!("target:       {}", p.target);
    println!("rule:         {}", p.rule.as_deref().unwrap_or("default"));
    println!("requested at: {}", p.requested_at);
    println!("expires at:   {}", p.expires_at);
    println!("statement:\n{}", p.statement);
}

fn show_grant(g: &Grant) {
    println!(
        "{}  {} -> {}  rule {}  until {}  (on {} by {})",
        g.id,
        g.workload,
        g.target,
        g.rule.as_deref().unwrap_or("default"),
        g.until,
        g.approval_id,
        g.approver
    );
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}...", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

/// Sends one request and reads one answer, with errors that say what to do.
pub(crate) fn ask(socket: &Path, request: &Request) -> anyhow::Result<Answer> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            bail!(
                "the agent is not running (no approvals socket at {}; see `[agent] approvals_socket`, or pass --socket)",
                socket.display()
            )
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
            "permission refused on {}: only root and members of `[agent] approver_group` may use it",
            socket.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("connecting to {}", socket.display()));
        }
    };
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .with_context(|| format!("writing to {}", socket.display()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .with_context(|| format!("reading from {}", socket.display()))?;
    if answer.is_empty() {
        bail!("the agent closed the approvals socket without answering");
    }
    serde_json::from_str(&answer).context("the agent's answer is not JSON")
}
