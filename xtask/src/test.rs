//! `cargo xtask test`: the whole suite, as CI runs it.
//!
//! Every step runs even when an earlier one failed (fmt, clippy, then every test binary
//! with `--no-fail-fast`, the Debian package of the debug build (`package --debug`, about
//! half a minute), then each fuzz target for [`FUZZ_SECONDS`]), and the run ends
//! with one summary naming each failure, so one broken test never hides the others.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{fuzz, package, setup, util};

/// How long `cargo xtask test` runs each fuzz target (ten targets: about 4 minutes,
/// plus building them with nightly the first time).
const FUZZ_SECONDS: u64 = 20;

pub fn test(extra: &[String]) -> anyhow::Result<()> {
    setup::setup()?;
    let cargo = util::cargo();
    let mut failed: Vec<String> = Vec::new();
    let mut step = |name: &str, cmd: &mut Command| {
        if let Err(e) = util::run(cmd) {
            eprintln!("error: {name}: {e:#}");
            failed.push(format!("{name}: {e:#}"));
        }
    };
    step(
        "cargo fmt --check",
        Command::new(&cargo).args(["fmt", "--all", "--", "--check"]),
    );
    step(
        "cargo clippy",
        Command::new(&cargo).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    );
    if !util::is_root() {
        eprintln!(
            "note: not root: the eBPF integration tests will be skipped (with NHI_REQUIRE_PRIVILEGED=1 they fail)"
        );
    }
    // Unit tests run in parallel; the integration tests serialise themselves.
    let mut cmd = Command::new(&cargo);
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .args(extra);
    let tests = run_tests(&mut cmd)?;
    failed.extend(tests.failures());

    // The Debian package, from the debug build the tests just used (no release build:
    // `cargo xtask package` and `cargo xtask vm unit` do that): staged, packed
    // uncompressed and read back (files, conffile, unit path, `--version`'s commit).
    if let Err(e) = package::package(package::Profile::Debug) {
        eprintln!("error: package: {e:#}");
        failed.push(format!("package (debug build): {e:#}"));
    }

    // A short run of every fuzz target: a crash, a hang or an OOM is a failure.
    match fuzz::run_targets(fuzz::TARGETS, FUZZ_SECONDS, None) {
        Ok(runs) => {
            fuzz::print_summary(&runs);
            for run in &runs {
                if let Some(why) = &run.failure {
                    failed.push(format!("fuzz target {}: {why}", run.target));
                }
            }
        }
        Err(e) => {
            eprintln!("error: fuzz: {e:#}");
            failed.push(format!("fuzz: {e:#}"));
        }
    }

    eprintln!();
    eprintln!("==== cargo xtask test: summary ====");
    eprintln!(
        "test binaries run: {}; tests passed: {}, failed: {}, ignored: {}",
        tests.binaries, tests.passed, tests.failed_count, tests.ignored
    );
    if failed.is_empty() {
        eprintln!("everything passed");
        return Ok(());
    }
    eprintln!("{} failure(s):", failed.len());
    for f in &failed {
        eprintln!("  FAILED {f}");
    }
    bail!("{} failure(s), listed above", failed.len())
}

/// What one `cargo test --no-fail-fast` run reported, read from its output.
#[derive(Default, Debug)]
struct TestRun {
    /// Test binaries (and doc-test runs) started.
    binaries: usize,
    passed: usize,
    failed_count: usize,
    ignored: usize,
    /// (binary, test name) of every failed test.
    failed_tests: Vec<(String, String)>,
    /// Targets cargo reports as failed (a binary that crashed has no failed test line).
    failed_targets: Vec<String>,
    /// cargo's own exit status was not success.
    exit_failed: Option<String>,
}

impl TestRun {
    fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .failed_tests
            .iter()
            .map(|(binary, test)| format!("{binary}: {test}"))
            .collect();
        // A failed target with no failed test line: it crashed, did not build, or
        // failed outside a test (the target line from cargo says which).
        for target in &self.failed_targets {
            let named = self
                .failed_tests
                .iter()
                .any(|(binary, _)| target_matches(target, binary));
            if !named {
                out.push(format!("{target} (the binary failed without a failing test line: see its output above)"));
            }
        }
        if out.is_empty() {
            if let Some(status) = &self.exit_failed {
                out.push(format!("cargo test exited with {status}"));
            }
        }
        out
    }

    /// Reads one line of cargo test output (stdout and stderr, in order).
    fn line(&mut self, line: &str, current: &mut String) {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("Running ") {
            // "Running tests/forensics.rs (target/debug/deps/forensics-1234)": the name as
            // cargo shows it, and the crate from the file name (`nhi_agent-1234`).
            let (shown, file) = rest.split_once(" (").unwrap_or((rest, ""));
            let stem = file.trim_end_matches(')').rsplit('/').next().unwrap_or("");
            let krate = stem.rsplit_once('-').map_or(stem, |(name, _)| name);
            *current = if krate.is_empty() {
                shown.to_string()
            } else {
                format!("{shown} [{krate}]")
            };
            self.binaries += 1;
        } else if let Some(rest) = trimmed.strip_prefix("Doc-tests ") {
            *current = format!("doc-tests {rest}");
            self.binaries += 1;
        } else if let Some(name) = trimmed
            .strip_prefix("test ")
            .and_then(|r| r.strip_suffix(" ... FAILED"))
        {
            self.failed_tests.push((current.clone(), name.to_string()));
        } else if let Some(rest) = trimmed.strip_prefix("test result: ") {
            // "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ..."
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: usize = n.parse().unwrap_or(0);
                match what.trim_end_matches('.') {
                    "passed" => self.passed += n,
                    "failed" => self.failed_count += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        } else if trimmed.starts_with('`') && trimmed.ends_with('`') && trimmed.contains(" --") {
            // cargo's closing list: "error: 2 targets failed:" then "`-p nhi-tests --test forensics`".
            let target = trimmed.trim_matches('`').to_string();
            if !self.failed_targets.contains(&target) {
                self.failed_targets.push(target);
            }
        } else if let Some(rest) = trimmed.strip_prefix("error: test failed, to rerun pass ") {
            let target = rest.trim_matches('`').to_string();
            if !self.failed_targets.contains(&target) {
                self.failed_targets.push(target);
            }
        }
    }
}

/// Whether cargo's target argument (`-p nhi-tests --test forensics`, `-p nhi-agent --lib`)
/// names the binary of a "Running" line (`tests/forensics.rs`, `unittests src/lib.rs`).
fn target_matches(target: &str, binary: &str) -> bool {
    let word_after = |flag: &str| {
        target
            .split(flag)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    };
    if let Some(test) = word_after("--test ") {
        return binary.starts_with(&format!("tests/{test}.rs"));
    }
    // `-p nhi-agent --lib`: the unit tests of crate nhi_agent.
    let krate = word_after("-p ").map(|p| p.replace('-', "_"));
    match krate {
        Some(krate) if target.contains("--lib") || target.contains("--bin") => {
            binary.starts_with("unittests") && binary.ends_with(&format!("[{krate}]"))
        }
        _ => false,
    }
}

/// Runs `cmd` with stdout and stderr on one pipe (so "Running X" and X's results stay in
/// order), echoing every line, and parses what it reports.
fn run_tests(cmd: &mut Command) -> anyhow::Result<TestRun> {
    eprintln!("+ {}", util::describe(cmd));
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    cmd.current_dir(util::root())
        .stdout(writer.try_clone().context("duplicating the pipe")?)
        .stderr(writer);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", util::describe(cmd)))?;
    // The parent's copies of the write end must go, or the read never sees EOF.
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut run = TestRun::default();
    let mut current = String::new();
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(reader).lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                // Non-UTF-8 output from a test: still echo what can be shown.
                eprintln!("(unreadable output line: {e})");
                continue;
            }
        };
        let _ = writeln!(out, "{line}");
        run.line(&line, &mut current);
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        run.exit_failed = Some(status.to_string());
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_named_with_their_binary() {
        let output = "\
     Running unittests src/lib.rs (target/debug/deps/nhi_agent-1)
test journal::tests::a ... ok
test result: ok. 1 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s
     Running tests/forensics.rs (target/debug/deps/forensics-2)
test replay_of_a_psql_session_matches_the_golden_transcript ... FAILED
test normalising_replaces_whole_values_only ... ok
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.1s
error: test failed, to rerun pass `-p nhi-tests --test forensics`
     Running tests/lineage.rs (target/debug/deps/lineage-3)
error: test failed, to rerun pass `-p nhi-tests --test lineage`
Caused by:
  process didn't exit successfully: `target/debug/deps/lineage-3` (signal: 6, SIGABRT: process abort signal)
   Doc-tests nhi_agent
test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s
error: 2 targets failed:
    `-p nhi-tests --test forensics`
    `-p nhi-tests --test lineage`
";
        let mut run = TestRun::default();
        let mut current = String::new();
        for line in output.lines() {
            run.line(line, &mut current);
        }
        assert_eq!(run.binaries, 4);
        assert_eq!((run.passed, run.failed_count, run.ignored), (2, 1, 2));
        assert_eq!(
            run.failures(),
            vec![
                "tests/forensics.rs [forensics]: replay_of_a_psql_session_matches_the_golden_transcript"
                    .to_string(),
                "-p nhi-tests --test lineage (the binary failed without a failing test line: see its output above)"
                    .to_string(),
            ]
        );
        // A failed unit test names its crate's `--lib` target.
        let mut run = TestRun::default();
        let mut current = String::new();
        for line in [
            "     Running unittests src/lib.rs (target/debug/deps/nhi_agent-1)",
            "test config::tests::x ... FAILED",
            "error: 1 target failed:",
            "    `-p nhi-agent --lib`",
        ] {
            run.line(line, &mut current);
        }
        assert_eq!(
            run.failures(),
            vec!["unittests src/lib.rs [nhi_agent]: config::tests::x".to_string()]
        );
    }
}
