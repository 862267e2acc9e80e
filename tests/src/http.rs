//! Helpers of the HTTP integration tests: curl in a cgroup, the journal's events of a
//! kind, and a check that a value is in none of the agent's files.
use std::path::Path;
use std::process::Output;

use crate::{Agent, TestCgroup};

/// curl in the cgroup (`-sS`, 30 s at most): the status code and the body followed by
/// curl's stderr.
pub fn curl_in(cg: &TestCgroup, args: &[&str]) -> (u16, String) {
    let out: Output = cg
        .command("curl")
        .args(["-sS", "--max-time", "30", "-w", "\nSTATUS %{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once("\nSTATUS ").unwrap_or((&text, "0"));
    (
        status.trim().parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// The journal's events of `kind` (`events --json --kind`), oldest first.
pub fn journal_events(agent: &Agent, kind: &str) -> Vec<serde_json::Value> {
    let out = agent.cli(&[
        "events",
        agent.journal.to_str().unwrap(),
        "--json",
        "--kind",
        kind,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// Asserts that no file under `dir` (journal, -wal, .prelog, segments, log, state)
/// holds any of `values`; at least three files must have been read.
pub fn assert_in_no_file(dir: &Path, values: &[&str]) {
    let mut files = vec![dir.to_path_buf()];
    let mut read = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            read += 1;
            for value in values {
                assert!(
                    !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                    "{value:?} is in {}",
                    path.display()
                );
            }
        }
    }
    assert!(read > 2, "the agent's files were read");
}
