//! `nhi-agent ship --once` and `nhi-agent ship status`: the shipper of a running
//! agent, run by hand (the two take turns through a lock file in the state directory).
use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};

use crate::{
    config,
    ship::{budget::human, Budget, Shipper, Status},
};

#[derive(Debug, Args)]
pub struct ShipArgs {
    #[arg(long, short, global = true, help = super::CONFIG_HELP)]
    pub config: Option<PathBuf>,
    /// Ship every pending sealed segment, apply retention, and exit: 0 when everything
    /// is shipped, 1 with the reason otherwise.
    #[arg(long)]
    pub once: bool,
    #[command(subcommand)]
    pub command: Option<ShipCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ShipCommand {
    /// Show the cursor, pending segments, the high-water mark and disk use vs budget.
    Status {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Do not read the high-water mark from the bucket.
        #[arg(long)]
        local: bool,
    },
}

pub fn run(args: &ShipArgs) -> anyhow::Result<ExitCode> {
    let config = match config::load(&super::config_path(args.config.as_deref())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(super::run::EXIT_BAD_CONFIG));
        }
    };
    let shipper = match Shipper::new(
        &config.ship,
        &config.agent.journal,
        &config.agent.state_dir,
        Budget::new(),
    ) {
        Ok(s) => s.with_streams_opt(crate::stream::positions(
            &config.streams,
            &config.agent.state_dir,
        )),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    match (&args.command, args.once) {
        (Some(ShipCommand::Status { json, local }), _) => {
            let status = shipper.status(!local)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        (None, true) => {
            if config.ship.shipping.is_none() {
                eprintln!("note: no [shipping] section: nothing is uploaded (retention only)");
            }
            match shipper.pass() {
                Ok(report) => {
                    println!(
                        "shipped {} segment(s), deleted {} by retention",
                        report.uploaded.len(),
                        report.deleted.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: shipping failed: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        (None, false) => {
            eprintln!("error: say what to do: `nhi-agent ship --once` or `nhi-agent ship status`");
            Ok(ExitCode::from(super::run::EXIT_BAD_CONFIG))
        }
    }
}

fn render(status: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if !status.shipping {
        out.push_str("shipping: not configured (no [shipping] section)\n");
    }
    for j in &status.journals {
        let _ = writeln!(
            out,
            "journal {} (host {}): shipped through segment {} (seal sha256 {}), {} local segment(s), {} pending{}",
            j.journal_id,
            j.host_id,
            j.cursor.segment_seq,
            j.cursor.seal_sha256.as_deref().unwrap_or("-"),
            j.local_segments,
            j.pending_segments.len(),
            if j.pending_segments.is_empty() {
                String::new()
            } else {
                format!(
                    " ({:?}, {})",
                    j.pending_segments,
                    human(j.pending_bytes)
                )
            }
        );
        if !j.cursor.beyond_gap.is_empty() {
            let _ = writeln!(
                out,
                "  shipped after a gap (not covered by the high-water mark): {:?}",
                j.cursor.beyond_gap.keys().collect::<Vec<_>>()
            );
        }
    }
    if status.journals.is_empty() {
        out.push_str("no sealed segments\n");
    }
    for p in &status.problems {
        let _ = writeln!(out, "problem: {p}");
    }
    if let Some(hwm) = &status.remote_hwm {
        let _ = writeln!(out, "upstream high-water mark: {hwm}");
    }
    match (status.used_bytes, status.disk_budget) {
        (Some(used), Some(budget)) => {
            let _ = writeln!(
                out,
                "disk: {} used of a {} budget{}",
                human(used),
                human(budget),
                if used > budget {
                    " (EXCEEDED: new sessions are refused)"
                } else {
                    ""
                }
            );
        }
        (Some(used), None) => {
            let _ = writeln!(out, "disk: {} used (no budget)", human(used));
        }
        (None, _) => {}
    }
    out
}
