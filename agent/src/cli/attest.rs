//! `nhi-agent attest`: present a CI job's OIDC token to the running agent, which binds
//! the token's claims to the caller's cgroup (see [`crate::attest`]); or list bindings.
//!
//! The token is read from a file or stdin, never from the command line (where `ps` would
//! show it), and is never printed.
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;

use crate::attest::config::DEFAULT_ATTEST_SOCKET;
use crate::attest::server::{Answer, Request};
use crate::attest::Binding;

/// Arguments of `nhi-agent attest`.
#[derive(Debug, Clone, Args)]
pub struct AttestArgs {
    /// File holding the OIDC token (a JWT); `-` reads it from stdin.
    #[arg(
        long,
        value_name = "FILE|-",
        required_unless_present = "status",
        conflicts_with = "status"
    )]
    pub token: Option<PathBuf>,

    /// List the bindings instead (root sees all; anyone else the one governing their cgroup).
    #[arg(long)]
    pub status: bool,

    /// The agent's attest socket (`[attest] socket`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_ATTEST_SOCKET)]
    pub socket: PathBuf,

    /// Print the agent's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `nhi-agent attest`: exit 0 when bound (or listed), 1 when the agent refuses.
pub fn run(args: &AttestArgs) -> anyhow::Result<ExitCode> {
    let request = match &args.token {
        Some(path) => Request::Attest {
            token: read_token(path)?,
        },
        None => Request::Status,
    };
    let answer = ask(&args.socket, &request)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer(&mut out, &answer).context("encoding the answer")?;
        writeln!(out)?;
    }
    if !answer.ok {
        let reason = answer.error.as_deref().unwrap_or("no reason given");
        eprintln!("attestation rejected: {reason}");
        return Ok(ExitCode::FAILURE);
    }
    if !args.json {
        if let Some(binding) = &answer.binding {
            writeln!(
                out,
                "attested: claims bound to cgroup {}",
                describe(binding)
            )?;
            write_claims(&mut out, binding)?;
        }
        if let Some(bindings) = &answer.bindings {
            if bindings.is_empty() {
                writeln!(out, "no attested cgroup")?;
            }
            for binding in bindings {
                writeln!(out, "{}", describe(binding))?;
                write_claims(&mut out, binding)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(b: &Binding) -> String {
    let path = if b.cgroup.is_empty() { "/" } else { &b.cgroup };
    format!(
        "{} (id {}), issuer {}{}",
        crate::cli::sessions::sanitize(path),
        b.cgroup_id,
        crate::cli::sessions::sanitize(&b.issuer),
        b.subject
            .as_deref()
            .map(|s| format!(", subject {}", crate::cli::sessions::sanitize(s)))
            .unwrap_or_default()
    )
}

fn write_claims(out: &mut dyn Write, b: &Binding) -> std::io::Result<()> {
    for (name, value) in &b.claims {
        let text = match crate::policy::claim_text(value) {
            Some(t) => t.into_owned(),
            None => value.to_string(),
        };
        writeln!(
            out,
            "  {} = {}",
            crate::cli::sessions::sanitize(name),
            crate::cli::sessions::sanitize(&text)
        )?;
    }
    Ok(())
}

/// The token text, trimmed; refuses an empty one.
fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .take(crate::attest::server::MAX_LINE as u64)
            .read_to_string(&mut text)
            .context("reading the token from stdin")?;
        text
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the token from {}", path.display()))?
    };
    let token = text.trim().to_string();
    if token.is_empty() {
        bail!("the token is empty");
    }
    Ok(token)
}

/// Sends one request line and reads one answer line.
fn ask(socket: &Path, request: &Request) -> anyhow::Result<Answer> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the agent's attest socket {} (is the agent running with an [[oidc_issuer]]?)",
            socket.display()
        )
    })?;
    let timeout = Some(Duration::from_secs(30));
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    let mut line = serde_json::to_vec(request).context("encoding the request")?;
    line.push(b'\n');
    stream.write_all(&line).context("sending the request")?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .context("reading the agent's answer")?;
    serde_json::from_str(&answer).context("the agent's answer is not valid JSON")
}
