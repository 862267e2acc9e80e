//! `cargo xtask vm unit`: the Debian package and its systemd unit under real systemd, in
//! the VM. The checks themselves run in the guest (`guest/unit.sh`: they are dpkg,
//! systemctl and journalctl calls); this side builds the package (`cargo xtask
//! package`, or takes `--deb`), lays out the payload, boots and reads the report.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::bail;

use super::{image, qemu};
use crate::{package, util};

const UNIT_SCRIPT: &str = include_str!("guest/unit.sh");

pub fn unit(kernel: Option<&str>, deb: Option<&Path>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let image = image::ensure(false)?;
    let kernel = image.kernel(kernel)?.clone();
    let deb: PathBuf = match deb {
        Some(d) => d.to_path_buf(),
        None => package::package(package::Profile::Release)?,
    };
    let payload = qemu::payload_dir("unit")?;
    qemu::add(&payload, "nhi-agent.deb", &deb, 0o644)?;
    // What the packaged `nhi-agent --version` must name (empty outside git: not checked).
    let commit = util::output(Command::new("git").args(["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_default();
    qemu::write(&payload, "commit", commit.trim(), 0o644)?;
    qemu::write(&payload, "run.sh", UNIT_SCRIPT, 0o755)?;
    let outcome = qemu::boot(&image, &kernel, &payload, Duration::from_secs(600), "vm: ")?;
    let checks = Checks::parse(&outcome.report);
    let secs = started.elapsed().as_secs();
    let verdict = if checks.failed.is_empty() && outcome.status == Some(0) && checks.passed > 0 {
        "passed"
    } else {
        "FAILED"
    };
    println!(
        "vm unit on {}: {verdict}: {} checks passed, {} failed ({secs} s)",
        kernel.release,
        checks.passed,
        checks.failed.len()
    );
    for f in &checks.failed {
        println!("  FAILED {f}");
    }
    if verdict != "passed" {
        if let Some(crash) = outcome.crash() {
            eprintln!("the guest kernel crashed: {crash}");
        }
        if outcome.status.is_none() {
            eprintln!(
                "the guest never reported an end; console tail:\n{}",
                outcome.console_tail(40)
            );
        }
        bail!("vm unit failed");
    }
    Ok(())
}

/// The `NHI-CHECK` lines of a report.
#[derive(Debug, Default, PartialEq)]
pub struct Checks {
    pub passed: usize,
    pub failed: Vec<String>,
}

impl Checks {
    pub fn parse(report: &str) -> Checks {
        let mut c = Checks::default();
        for line in report.lines() {
            if line.starts_with("NHI-CHECK ok ") {
                c.passed += 1;
            } else if let Some(f) = line.strip_prefix("NHI-CHECK FAIL ") {
                c.failed.push(f.to_string());
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_counted_from_their_lines() {
        let report = "NHI-VM-BEGIN 6.1.0\nNHI-CHECK ok enable --now\nnoise\n\
                      NHI-CHECK FAIL kill -9: while dead: []\nNHI-CHECK ok stop\nNHI-VM-END 1\n";
        assert_eq!(
            Checks::parse(report),
            Checks {
                passed: 2,
                failed: vec!["kill -9: while dead: []".into()]
            }
        );
    }
}
