//! `nhi-agent verify PATH... --key KEY [--hwm FILE] [--json]`: checks journal segments
//! offline (see [`crate::journal::verify`]). Exit 0 only when everything is intact, 1
//! when damage is found, 2 when nothing could be verified (bad usage, an unreadable key,
//! high-water mark or input, no segment or checkpoint in the paths given).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;

use crate::evidence::PublicKey;
use crate::journal::verify::{self, HighWaterMark};

/// Exit status: damage found (the chain, a seal, a link or a checkpoint does not hold).
pub const EXIT_DAMAGE: u8 = 1;
/// Exit status: nothing verified (bad usage, an unreadable input, no segment or checkpoint found);
/// clap's own usage errors exit 2 too.
pub const EXIT_CANNOT_VERIFY: u8 = 2;

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 intact; 1 damage found; 2 nothing verified (bad usage, \
an unreadable key, high-water mark or path, no segment or checkpoint in the paths given)."
)]
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
    match inputs(args) {
        Ok((key, hwm, files)) => report(args, &key, hwm.as_ref(), &files),
        Err(e) => {
            eprintln!("{}error: {e:#}", super::logging::error_prefix());
            Ok(ExitCode::from(EXIT_CANNOT_VERIFY))
        }
    }
}

/// The key, the high-water mark and the segment files, or why nothing can be verified.
fn inputs(args: &VerifyArgs) -> anyhow::Result<(PublicKey, Option<HighWaterMark>, Vec<PathBuf>)> {
    let key_text = match std::fs::read_to_string(&args.key) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => args.key.clone(),
        Err(e) => anyhow::bail!("cannot read the key file {}: {e}", args.key),
    };
    let key = PublicKey::parse(&key_text).with_context(|| {
        format!(
            "--key {}: neither a readable PEM file nor a base64url public key",
            args.key
        )
    })?;
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
    for path in &args.paths {
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    }
    let files = verify::collect_files(&args.paths);
    for file in &files {
        if let Err(e) = std::fs::File::open(file) {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                anyhow::bail!("cannot read {}: {e}", file.display());
            }
        }
    }
    // Checkpoints alone are evidence: they say which segment is gone.
    if files.is_empty() && crate::journal::checkpoint::collect(&args.paths).is_empty() {
        anyhow::bail!(
            "no journal segment (*.db) or checkpoint in {}",
            args.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok((key, hwm, files))
}

fn report(
    args: &VerifyArgs,
    key: &PublicKey,
    hwm: Option<&HighWaterMark>,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let checkpoints = crate::journal::checkpoint::collect(&args.paths);
    let started = Instant::now();
    let report = verify::verify_files(files, &checkpoints, key, hwm);
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
        ExitCode::from(EXIT_DAMAGE)
    })
}
