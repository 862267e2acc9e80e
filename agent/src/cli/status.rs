//! `nhi-agent status`: this host's kernel features (probed now, as the agent does at
//! start) and the running agent's state, asked on its control socket (programs and pins,
//! mode, listeners, workloads and targets in force, the last reload, the journal,
//! shipping, holds). Exit 0 when the agent runs and nothing is wrong, 1 when something
//! is (each problem is printed), 3 when no agent answers (LSB: "not running").
use std::{path::PathBuf, process::ExitCode};

use clap::Args;
use serde_json::Value;

use crate::ebpf::probe::{Need, Report, Status, MINIMUM_KERNEL};

/// Exit status when no agent answers on the control socket (LSB "program is not
/// running", as `systemctl status` uses it).
pub const EXIT_NOT_RUNNING: u8 = 3;

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 the agent runs and nothing is wrong; 1 something is \
    wrong (listed under problems), this kernel cannot run the agent, or the agent refused \
    the caller; 3 no agent listens on the control socket."
)]
pub struct StatusArgs {
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The agent's configuration, to find its control socket (`[agent]
    /// approvals_socket`); default /etc/nhi-agent/agent.toml when it exists.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The control socket, instead of the one the configuration names.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Only the kernel features (no agent needed).
    #[arg(long)]
    pub kernel_only: bool,
}

/// The configuration file `status` and `reload` read when none is given.
pub const DEFAULT_CONFIG: &str = "/etc/nhi-agent/agent.toml";

/// The control socket: `socket`, else the one `config` (or the default configuration,
/// when it exists) names, else the default path.
pub fn control_socket(
    socket: Option<&PathBuf>,
    config: Option<&PathBuf>,
) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s.clone());
    }
    let default = PathBuf::from(DEFAULT_CONFIG);
    let path = match config {
        Some(c) => c.clone(),
        None if default.exists() => default,
        None => return Ok(PathBuf::from(crate::config::DEFAULT_APPROVALS_SOCKET)),
    };
    let config = crate::config::load(&path)?;
    Ok(config.agent.approvals_socket)
}

/// Whether no agent listens on `socket` (absent, or nobody accepting): "not running",
/// as opposed to an agent that refuses the caller.
pub fn not_running(socket: &std::path::Path) -> bool {
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ),
    }
}

pub fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let report = Report::probe();
    let refusal = report.refusal();
    let kernel = serde_json::json!({
        "kernel": report.kernel,
        "minimum_kernel": MINIMUM_KERNEL,
        "features": report.features,
        "can_run": refusal.is_none(),
        "lineage_available": report.lineage_unavailable().is_none(),
    });
    if args.kernel_only {
        if args.json {
            println!("{kernel}");
        } else {
            print!("{}", render(&report));
        }
        return Ok(if refusal.is_some() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    let socket = control_socket(args.socket.as_ref(), args.config.as_ref())?;
    let agent = super::approvals::ask(&socket, &crate::approvals::wire::Request::Status).and_then(
        |answer| match (answer.ok, answer.status, answer.error) {
            (true, Some(status), _) => Ok(status),
            (_, _, Some(e)) => anyhow::bail!("{e}"),
            _ => anyhow::bail!("the agent's answer has no status"),
        },
    );
    let problems: Vec<String> = match &agent {
        Ok(status) => status["problems"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    if args.json {
        let mut out = kernel;
        match &agent {
            Ok(status) => out["agent"] = status.clone(),
            Err(e) => {
                out["agent"] = Value::Null;
                out["agent_error"] = Value::String(format!("{e:#}"));
            }
        }
        println!("{out}");
    } else {
        print!("{}", render(&report));
        match &agent {
            Ok(status) => print!("{}", render_agent(status)),
            Err(e) if not_running(&socket) => println!("agent: not running ({e:#})"),
            Err(e) => println!("agent: no status ({e:#})"),
        }
    }
    Ok(match (&agent, refusal.is_some() || !problems.is_empty()) {
        (Err(_), _) if not_running(&socket) => ExitCode::from(EXIT_NOT_RUNNING),
        (Err(_), _) => ExitCode::FAILURE,
        (Ok(_), true) => ExitCode::FAILURE,
        (Ok(_), false) => ExitCode::SUCCESS,
    })
}

/// The agent's state as text.
pub fn render_agent(s: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let mut out = format!(
        "agent: running, pid {}, version {}, since {}\n  config {} (mode {}, fail {})\n",
        text(&s["pid"]),
        text(&s["version"]),
        text(&s["started"]),
        text(&s["config"]),
        text(&s["mode"]),
        text(&s["fail"]),
    );
    let k = &s["kernel"];
    let programs: Vec<String> = k["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match p["pinned"].as_str() {
            Some(_) => format!("{} (pinned)", text(&p["name"])),
            None => text(&p["name"]),
        })
        .collect();
    out.push_str(&format!(
        "  programs at {}: {}\n  pins {} (map layout v{}), {} cgroups classified, {} target entries\n",
        text(&k["cgroup_root"]),
        programs.join(", "),
        text(&k["pin_dir"]),
        text(&k["map_layout"]),
        text(&k["cgroups_classified"]),
        text(&k["target_entries"]),
    ));
    let l = &s["listeners"];
    out.push_str(&format!(
        "  listening: proxy {}; control socket {}; attest {}; approvals http {}; metrics {}\n",
        l["proxy"]
            .as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        text(&l["approvals_socket"]),
        text(&l["attest_socket"]),
        text(&l["approvals_http"]),
        text(&l["metrics"]),
    ));
    out.push_str(&format!(
        "  workloads: {}\n  targets: {}\n  lineage: {}; active connections: {}\n",
        s["workloads"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| match w["name"].as_str() {
                Some(n) => n.to_string(),
                None => format!("cgroup {}", text(&w["cgroup"])),
            })
            .collect::<Vec<_>>()
            .join(", "),
        s["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| format!(
                "{} ({} {})",
                text(&t["name"]),
                text(&t["protocol"]),
                text(&t["address"])
            ))
            .collect::<Vec<_>>()
            .join(", "),
        if s["lineage"] == true { "on" } else { "off" },
        text(&s["active_connections"]),
    ));
    if let Some(r) = s["last_reload"].as_object() {
        out.push_str(&format!(
            "  last reload {}: {} ({})\n",
            text(&r["at"]),
            if r["applied"] == true {
                "applied"
            } else {
                "REJECTED"
            },
            text(&r["message"]),
        ));
    }
    let j = &s["journal"];
    let seg = &j["segments"];
    out.push_str(&format!(
        "  journal {} (fsync {}): live segment {}, last checkpoint {}, last seal {}\n    writer: {} commits, {} failed batches, queue {}, pre-log {} bytes\n",
        text(&j["path"]),
        text(&j["fsync"]),
        text(&seg["live"]["segment_seq"]),
        match seg["live"]["checkpoint"].as_object() {
            Some(c) => format!("#{} at {}", text(&c["n"]), text(&c["at"])),
            None => "-".into(),
        },
        match seg["last_seal"].as_object() {
            Some(c) => format!("segment {} at {} ({} events)", text(&c["segment_seq"]), text(&c["sealed_at"]), text(&c["events"])),
            None => "-".into(),
        },
        text(&j["commits"]),
        text(&j["failed_batches"]),
        text(&j["queue_depth"]),
        text(&j["prelog_bytes"]),
    ));
    let sh = &s["shipping"];
    if sh["configured"] == true {
        out.push_str(&format!(
            "  shipping: {} segments pending\n",
            text(&sh["pending_segments"])
        ));
    } else {
        out.push_str("  shipping: not configured\n");
    }
    for st in s["streams"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  stream {} ({} {}): delivered up to event {}{}\n",
            text(&st["name"]),
            text(&st["type"]),
            text(&st["format"]),
            text(&st["cursor"]["event_id"]),
            match st["failing"].as_str() {
                Some(e) => format!(", FAILING: {e}"),
                None => String::new(),
            }
        ));
    }
    let h = &s["holds"];
    out.push_str(&format!(
        "  holds: {} pending, {} grants\n",
        text(&h["pending"]),
        text(&h["grants"])
    ));
    match s["problems"].as_array() {
        Some(p) if !p.is_empty() => {
            out.push_str("problems:\n");
            for problem in p {
                out.push_str(&format!("  - {}\n", text(problem)));
            }
        }
        _ => out.push_str("problems: none\n"),
    }
    out
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
