//! `nhi-agent policy`: work with configuration files without running the agent.
//!
//! `nhi-agent policy check FILE` validates a file the way the agent would at start,
//! so SREs can check a change (in CI, or before a reload) and get every error with
//! its line and column.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{self, Config, ConfigError, FailMode, Mode};

/// sysexits.h EX_USAGE: the configuration is invalid.
pub const EX_USAGE: u8 = 64;
/// sysexits.h EX_NOINPUT: the configuration file cannot be read.
pub const EX_NOINPUT: u8 = 66;

/// `nhi-agent policy ...`
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub cmd: PolicyCmd,
}

/// The `policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Validate a configuration file and summarise it. Exits 0 if it is valid,
    /// 64 if it is invalid, 66 if it cannot be read.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
}

/// Runs a `policy` subcommand, printing to stdout and stderr.
pub fn run(args: &PolicyArgs) -> anyhow::Result<ExitCode> {
    match &args.cmd {
        PolicyCmd::Check { file } => {
            let code = check(
                file,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            )?;
            Ok(ExitCode::from(code))
        }
    }
}

/// `policy check`: returns the exit code; fails only if writing the output fails.
fn check(file: &Path, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<u8> {
    match config::load(file) {
        Ok(config) => {
            write_summary(&config, file, out)?;
            Ok(0)
        }
        Err(e @ ConfigError::Io { .. }) => {
            writeln!(err, "error: {e}")?;
            Ok(EX_NOINPUT)
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            writeln!(err, "error: {e}")?;
            Ok(EX_USAGE)
        }
    }
}

/// A short, human summary of what the configuration will do.
fn write_summary(config: &Config, file: &Path, out: &mut dyn Write) -> std::io::Result<()> {
    let agent = &config.agent;
    writeln!(out, "{}: valid", file.display())?;
    let mode = match agent.mode {
        Mode::Enforce => "enforce",
        Mode::Observe => "observe",
    };
    let fail = match agent.fail {
        FailMode::Closed => "closed",
        FailMode::Open => "open",
    };
    writeln!(
        out,
        "mode: {mode} (fail {fail} while the agent is not running)"
    )?;
    writeln!(out, "journal: {}", agent.journal.display())?;
    writeln!(
        out,
        "proxy: 127.0.0.1:{port} and [::1]:{port}",
        port = agent.listen_port
    )?;

    let workloads = &config.workloads;
    writeln!(out, "{}:", plural(workloads.len(), "workload"))?;
    if workloads.is_empty() {
        writeln!(out, "  (none: no connection will be intercepted)")?;
    }
    let width = workloads
        .iter()
        .map(|w| w.name.as_deref().map_or(0, str::len))
        .max()
        .unwrap_or(0)
        .max("(derived)".len());
    for w in workloads {
        let name = w.name.as_deref().unwrap_or("(derived)");
        let uid = w.uid.map(|u| format!(", uid {u}")).unwrap_or_default();
        writeln!(out, "  {name:<width$}  cgroup {}{uid}", w.cgroup.as_str())?;
    }

    let targets = &config.targets;
    writeln!(out, "{}:", plural(targets.len(), "target"))?;
    let width = targets.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in targets {
        writeln!(
            out,
            "  {:<width$}  {} ({})",
            t.name, t.destination, t.protocol
        )?;
    }

    let policies = &config.policies.policies;
    writeln!(
        out,
        "{}:",
        plural(policies.len(), "policy").replace("policys", "policies")
    )?;
    for (i, p) in policies.iter().enumerate() {
        let name = p.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
        let mode = p.mode.map(|m| m.as_str()).unwrap_or("agent mode");
        writeln!(
            out,
            "  {name}  ({mode}, results recorded: {})",
            p.record_results.as_str()
        )?;
    }
    writeln!(out, "{}:", plural(config.masks.len(), "mask"))?;
    for m in &config.masks {
        writeln!(out, "  {}  ({})", m.name(), m.strategy_name())?;
    }
    Ok(())
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_check(path: &Path) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = check(path, &mut out, &mut err).expect("writing to a Vec cannot fail");
        let text = |v: Vec<u8>| String::from_utf8(v).expect("utf-8 output");
        (code, text(out), text(err))
    }

    #[test]
    fn valid_file_is_summarised() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/example.toml"
        ));
        let (code, out, err) = run_check(path);
        assert_eq!(code, 0, "{err}");
        assert!(err.is_empty(), "{err}");
        assert!(out.contains("mode: enforce (fail closed"), "{out}");
        assert!(out.contains("2 workloads:"), "{out}");
        assert!(out.contains("cgroup system.slice/backup*.service"), "{out}");
        assert!(out.contains("2 targets:"), "{out}");
        assert!(out.contains("127.0.0.1:5432 (postgres)"), "{out}");
        assert!(out.contains("[::1]:5432 (postgres)"), "{out}");
        assert!(out.contains("1 policy:\n  bots  (agent mode"), "{out}");
        assert!(out.contains("1 mask:\n  pii  (redact)"), "{out}");
    }

    #[test]
    fn invalid_file_exits_64_with_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        let text = "[agent]\nmode = \"enforce\"\njournal = \"/j\"\n\n[[target]]\nname = \"db\"\naddress = \"db.local:5432\"\n";
        std::fs::write(&path, text).expect("write");
        let (code, out, err) = run_check(&path);
        assert_eq!(code, EX_USAGE);
        assert!(out.is_empty(), "{out}");
        assert!(err.contains(&format!("{}:7:11: ", path.display())), "{err}");
        assert!(err.contains("host name"), "{err}");
    }

    #[test]
    fn unreadable_file_exits_66() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing.toml");
        let (code, _, err) = run_check(&path);
        assert_eq!(code, EX_NOINPUT);
        assert!(err.contains("cannot read configuration file"), "{err}");
        assert!(err.contains("missing.toml"), "{err}");
    }
}
