//! `cargo xtask vm kernels`: the privileged integration tests (interception and
//! fail-closed, lineage, a PostgreSQL session, containers' network namespaces) on the
//! host's own kernel and on every kernel of the VM image, one summary line per kernel.
//! The test binaries are built once on the host and run unchanged in each VM (same
//! Debian release, same libc).
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{image, qemu};
use crate::util::{self, run};

/// The test binaries (tests/tests/<name>.rs) every kernel runs.
pub const TESTS: &[&str] = &["interception", "lineage", "postgres", "netns"];

const KERNELS_SCRIPT: &str = include_str!("guest/kernels.sh");

pub fn kernels(host: bool, only: &[String]) -> anyhow::Result<()> {
    let image = image::ensure(false)?;
    let bins = build()?;
    let root = util::root();
    let agent = root.join("target/debug/nhi-agent");
    let mut lines = Vec::new();
    if host && (only.is_empty() || only.iter().any(|k| k == "host")) {
        let started = Instant::now();
        let report = run_on_host(&bins, &agent)?;
        let r = Summary::parse(&report);
        lines.push(r.line(&format!("{} (host)", host_release()), started.elapsed()));
        eprintln!("{}", lines.last().unwrap());
    }
    for kernel in &image.kernels {
        if !only.is_empty() && !only.contains(&kernel.release) {
            continue;
        }
        let started = Instant::now();
        let payload = qemu::payload_dir("kernels")?;
        qemu::add(&payload, "target/nhi-agent", &agent, 0o755)?;
        qemu::add(
            &payload,
            "target/nhi-testclient",
            &root.join("target/debug/nhi-testclient"),
            0o755,
        )?;
        let mut names = String::new();
        for (name, path) in &bins {
            qemu::add(&payload, &format!("target/deps/{name}"), path, 0o755)?;
            writeln!(names, "{name}")?;
        }
        qemu::write(&payload, "tests.txt", &names, 0o644)?;
        qemu::write(&payload, "run.sh", KERNELS_SCRIPT, 0o755)?;
        let prefix = format!("[{}] ", kernel.release);
        let line = match qemu::boot(&image, kernel, &payload, Duration::from_secs(1800), &prefix) {
            Ok(outcome) => {
                let mut s = Summary::parse(&outcome.report);
                if outcome.status.is_none() && s.first_failure.is_none() {
                    s.first_failure = Some(match outcome.crash() {
                        Some(line) => format!("the guest kernel crashed ({line})"),
                        None => "the guest never reported an end (see its console log)".into(),
                    });
                }
                s.line(&format!("{} (vm)", kernel.release), started.elapsed())
            }
            Err(e) => format!("{} (vm): FAILED: {e:#}", kernel.release),
        };
        eprintln!("{line}");
        lines.push(line);
    }
    println!("==== cargo xtask vm kernels ====");
    for l in &lines {
        println!("{l}");
    }
    let failed = lines.iter().filter(|l| !l.contains(": passed")).count();
    println!(
        "vm kernels: {} kernels, {} passed, {failed} failed",
        lines.len(),
        lines.len() - failed
    );
    if lines.is_empty() {
        bail!("no kernel matched");
    }
    if failed > 0 {
        bail!("{failed} kernel(s) failed");
    }
    Ok(())
}

/// Builds the agent, the test client and the test binaries; returns (name, path) of each
/// binary in [`TESTS`].
fn build() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let cargo = util::cargo();
    run(Command::new(&cargo).args(["build", "-p", "nhi-agent", "--bin", "nhi-agent"]))?;
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "test",
        "-p",
        "nhi-tests",
        "--no-run",
        "--message-format=json",
    ]);
    for t in TESTS {
        cmd.args(["--test", t]);
    }
    eprintln!("+ {}", util::describe(&cmd));
    let out = cmd
        .current_dir(util::root())
        .stderr(Stdio::inherit())
        .output()
        .context("building the test binaries")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(name)) = (v["executable"].as_str(), v["target"]["name"].as_str())
        else {
            continue;
        };
        if TESTS.contains(&name) && v["profile"]["test"].as_bool() == Some(true) {
            bins.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    if bins.len() != TESTS.len() {
        bail!("expected test binaries {TESTS:?}, cargo built {bins:?}");
    }
    Ok(bins)
}

/// Runs the binaries here, producing the report the guest script would.
fn run_on_host(bins: &[(String, PathBuf)], agent: &Path) -> anyhow::Result<String> {
    let mut report = String::new();
    for (name, path) in bins {
        writeln!(report, "NHI-BIN {name}")?;
        eprintln!("+ (host) {} --test-threads=1", path.display());
        let out = Command::new(path)
            .arg("--test-threads=1")
            .env("NHI_REQUIRE_PRIVILEGED", "1")
            .env("NHI_AGENT_BIN", agent)
            .current_dir(util::root())
            .output()
            .with_context(|| format!("running {}", path.display()))?;
        report.push_str(&String::from_utf8_lossy(&out.stdout));
        report.push_str(&String::from_utf8_lossy(&out.stderr));
        writeln!(
            report,
            "NHI-BIN-END {name} {}",
            out.status.code().unwrap_or(-1)
        )?;
    }
    Ok(report)
}

fn host_release() -> String {
    util::output(Command::new("uname").arg("-r"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "host".into())
}

/// What one kernel's report says.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub binaries_run: usize,
    /// `binary::test` of the first failing test, or the binary that failed without one.
    pub first_failure: Option<String>,
}

impl Summary {
    pub fn parse(report: &str) -> Summary {
        let mut s = Summary::default();
        let mut current = String::new();
        for line in report.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("NHI-BIN ") {
                current = name.to_string();
            } else if let Some(rest) = line.strip_prefix("NHI-BIN-END ") {
                s.binaries_run += 1;
                let status = rest.split_whitespace().nth(1).unwrap_or("?");
                if status != "0" && s.first_failure.is_none() {
                    s.first_failure = Some(format!("{current} (exit status {status})"));
                }
            } else if let Some(test) = line
                .strip_prefix("test ")
                .and_then(|r| r.strip_suffix(" ... FAILED"))
            {
                s.failed += 1;
                if s.first_failure.is_none() {
                    s.first_failure = Some(format!("{current}::{test}"));
                }
            } else if line.starts_with("test ") && line.ends_with(" ... ok") {
                s.passed += 1;
            }
        }
        s
    }

    pub fn line(&self, kernel: &str, took: Duration) -> String {
        let secs = took.as_secs();
        match &self.first_failure {
            None if self.binaries_run == TESTS.len() && self.passed > 0 => format!(
                "{kernel}: passed ({} tests in {} binaries, {secs} s)",
                self.passed, self.binaries_run
            ),
            None => format!(
                "{kernel}: FAILED: only {} of {} test binaries ran ({secs} s)",
                self.binaries_run,
                TESTS.len()
            ),
            Some(first) => format!(
                "{kernel}: FAILED: first failing test {first} ({} passed, {} failed, {secs} s)",
                self.passed, self.failed
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failing_test_is_named_with_its_binary() {
        let report = "NHI-BIN interception\ntest a ... ok\ntest b ... FAILED\ntest c ... FAILED\n\
                      NHI-BIN-END interception 101\nNHI-BIN lineage\ntest d ... ok\n\
                      NHI-BIN-END lineage 0\nNHI-BIN postgres\nNHI-BIN-END postgres 0\n";
        let s = Summary::parse(report);
        assert_eq!(s.first_failure.as_deref(), Some("interception::b"));
        assert_eq!((s.passed, s.failed, s.binaries_run), (2, 2, 3));
        assert!(s
            .line("6.1.0", Duration::from_secs(5))
            .starts_with("6.1.0: FAILED: first failing test interception::b"));
    }

    #[test]
    fn a_binary_that_dies_without_a_failed_line_still_fails() {
        let report = "NHI-BIN interception\ntest a ... ok\nNHI-BIN-END interception 134\n\
                      NHI-BIN lineage\nNHI-BIN-END lineage 0\nNHI-BIN postgres\nNHI-BIN-END postgres 0\n";
        let s = Summary::parse(report);
        assert_eq!(
            s.first_failure.as_deref(),
            Some("interception (exit status 134)")
        );
        let ok = "NHI-BIN interception\ntest a ... ok\nNHI-BIN-END interception 0\n\
                  NHI-BIN lineage\nNHI-BIN-END lineage 0\nNHI-BIN postgres\nNHI-BIN-END postgres 0\n\
                  NHI-BIN netns\nNHI-BIN-END netns 0\n";
        assert_eq!(TESTS.len(), 4, "the reports above list every test binary");
        assert!(Summary::parse(ok)
            .line("k", Duration::ZERO)
            .starts_with("k: passed (1 tests in 4 binaries"));
        // A guest that stopped half-way is no pass.
        let half = "NHI-BIN interception\ntest a ... ok\nNHI-BIN-END interception 0\n";
        assert!(Summary::parse(half)
            .line("k", Duration::ZERO)
            .contains("FAILED: only 1 of 4"));
    }
}
