//! `nhi-agent status`: what this host offers the agent. Today one section, the kernel
//! features the agent probes at start (`ebpf::probe`); exit 0 when the agent can run
//! here, 1 when a required feature is missing.
use std::process::ExitCode;

use clap::Args;

use crate::ebpf::probe::{Need, Report, Status, MINIMUM_KERNEL};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let report = Report::probe();
    let refusal = report.refusal();
    if args.json {
        let value = serde_json::json!({
            "kernel": report.kernel,
            "minimum_kernel": MINIMUM_KERNEL,
            "features": report.features,
            "can_run": refusal.is_none(),
            "lineage_available": report.lineage_unavailable().is_none(),
        });
        println!("{value}");
    } else {
        print!("{}", render(&report));
    }
    Ok(if refusal.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The text form: one line per probe, then what follows from them.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "kernel features (probed on {}; nhi-agent needs Linux {MINIMUM_KERNEL} or newer)\n",
        report.kernel
    );
    for f in &report.features {
        let (word, detail) = match &f.status {
            Status::Present => ("ok", String::new()),
            Status::Missing(d) => ("MISSING", format!(": {d}")),
            Status::Unknown(d) => ("unknown", format!(": {d}")),
        };
        let need = match f.need {
            Need::Required => "required",
            Need::Lineage => "lineage",
        };
        out.push_str(&format!(
            "  {word:<8} {} [{need}, Linux {}]{detail}\n",
            f.name, f.since
        ));
    }
    match report.refusal() {
        Some(why) => out.push_str(&format!("interception: unavailable: {why}\n")),
        None => out.push_str("interception: available\n"),
    }
    match report.lineage_unavailable() {
        Some(why) => out.push_str(&format!("lineage: off (interception goes on): {why}\n")),
        None => out.push_str("lineage: available\n"),
    }
    out
}
