//! `nhi-agent verify PATH... --key KEY [--hwm FILE] [--json]`: checks journal segments
//! offline (see [`crate::journal::verify`]). Exit 0 only when everything is intact.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;

use crate::evidence::PublicKey;
use crate::journal::verify::{self, HighWaterMark};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Segment files and/or directories (searched recursively for `*.db` and
    /// `*.checkpoint`, so the journal's directory covers the live file, `segments/` and
    /// the checkpoints).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The host's public key: a PEM file (`nhi-agent key export-public`) or the base64url
    /// raw key (`nhi-agent key show`).
    #[arg(long, value_name = "KEY")]
    pub key: String,
    /// The upstream high-water mark (JSON written by shipping): the journal must reach it.
    #[arg(long, value_name = "FILE")]
    pub hwm: Option<PathBuf>,
    /// One JSON report instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let key_text = match std::fs::read_to_string(&args.key) {
        Ok(text) => text,
        Err(_) => args.key.clone(),
    };
    let key = PublicKey::parse(&key_text)?;
    let hwm: Option<HighWaterMark> = match &args.hwm {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a high-water mark", path.display()))?,
            )
        }
    };
    let files = verify::collect_files(&args.paths);
    let checkpoints = crate::journal::checkpoint::collect(&args.paths);
    let started = Instant::now();
    let report = verify::verify_files(&files, &checkpoints, &key, hwm.as_ref());
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for j in &report.journals {
            println!(
                "journal {} (host {}): {} segments, {} events",
                j.journal_id,
                j.host_id.as_deref().unwrap_or("?"),
                j.segments.len(),
                j.events
            );
            for s in &j.segments {
                println!(
                    "  segment {:>4}  {:>9} events  {:<17}  {}",
                    s.segment_seq,
                    s.events,
                    s.status,
                    s.path.display()
                );
                if let Some(c) = &s.checkpoint {
                    println!(
                        "                checkpoint {} at event {}",
                        c.n,
                        c.last_event_id
                            .map_or("none".to_string(), |e| e.to_string())
                    );
                }
            }
        }
        for note in &report.notes {
            println!("note: {note}");
        }
        match &report.first_damage {
            None if report.intact => println!("OK: intact"),
            None => println!("FAILED: nothing to verify"),
            Some(d) => {
                println!(
                    "DAMAGE: {}{} in {} (segment {}){}: {}",
                    d.kind.as_str(),
                    match (d.kind, d.checkpoint) {
                        (verify::DamageKind::TruncatedBeforeCheckpoint, Some(n)) => format!(" {n}"),
                        _ => String::new(),
                    },
                    d.segment
                        .as_ref()
                        .map_or("-".to_string(), |p| p.display().to_string()),
                    d.segment_seq.map_or("?".to_string(), |s| s.to_string()),
                    match (d.event_id, d.session_id) {
                        (Some(e), _) => format!(" at event {e}"),
                        (None, Some(s)) => format!(" at session {s}"),
                        _ => String::new(),
                    },
                    d.detail
                );
                println!("FAILED: {} findings in total", report.damages.len());
            }
        }
        eprintln!(
            "verified {} bytes in {:.3}s ({:.1} MB/s)",
            report.bytes,
            secs,
            report.bytes as f64 / 1e6 / secs.max(1e-9)
        );
    }
    Ok(if report.intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
