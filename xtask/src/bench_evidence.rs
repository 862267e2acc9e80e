//! `cargo xtask bench`, evidence part: journal ingest with the hash chain and seals on,
//! `nhi-agent verify` speed, and search latency over the resulting journal. Figures are
//! printed with a baseline from the same run where one exists: `sha256sum` over the same
//! files for verify (hashing is most of verify's work), the `sqlite3` shell running the
//! equivalent query for search.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::util::{self, run};

/// Runs the evidence figures with `events` statement events (release binaries).
pub fn bench(events: u64, runs: usize, work: &Path) -> anyhow::Result<()> {
    run(Command::new(util::cargo()).args([
        "build",
        "--release",
        "-p",
        "nhi-agent",
        "--bin",
        "nhi-agent",
        "--example",
        "evidence_bench",
    ]))?;
    let root = util::root();
    let agent = root.join("target/release/nhi-agent");
    let example = root.join("target/release/examples/evidence_bench");
    let dir = work.join("evidence");
    let _ = fs::remove_dir_all(&dir);

    println!("\njournal evidence ({events} statement events over 100 sessions, 64 MiB segments)");
    let out = Command::new(&example)
        .arg(&dir)
        .arg(events.to_string())
        .arg((64u64 << 20).to_string())
        .output()
        .context("running evidence_bench")?;
    if !out.status.success() {
        bail!(
            "evidence_bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let figures: Value = serde_json::from_slice(&out.stdout).context("evidence_bench output")?;
    println!(
        "ingest (pre-log -> SQLite, SHA-256 chain, rotation + Ed25519 seals): {:.0} events/s \
         ({} sealed segments, {} commits; target >= 200000 events/s)",
        figures["events_per_second"].as_f64().unwrap_or(0.0),
        figures["sealed_segments"],
        figures["commits"],
    );

    let files = segment_files(&dir)?;
    let bytes: u64 = files
        .iter()
        .map(|f| fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let key = dir.join("key.pub");
    let mut verify = Vec::new();
    let mut hash = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let status = Command::new(&agent)
            .arg("verify")
            .arg(&dir)
            .arg("--key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("nhi-agent verify found the bench journal damaged");
        }
        verify.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        run(Command::new("sha256sum")
            .args(&files)
            .stdout(std::process::Stdio::null()))?;
        hash.push(started.elapsed().as_secs_f64());
    }
    let mb = bytes as f64 / 1e6;
    let (v, h) = (median(verify), median(hash));
    println!(
        "verify ({mb:.0} MB): {:.0} MB/s   sha256sum of the same files {:.0} MB/s   ratio {:.2}x",
        mb / v,
        mb / h,
        h / v
    );

    // A needle that occurs once: the statement text of event number events/2.
    let needle = format!("aid = {}\"", events / 2);
    let needle = needle.trim_end_matches('"').to_string();
    let searches: [(&str, Vec<String>); 3] = [
        (
            "events --text (1 match)",
            vec![
                "events".into(),
                "--text".into(),
                needle.clone(),
                "--json".into(),
            ],
        ),
        (
            "events --workload bot-3 --text",
            vec![
                "events".into(),
                "--workload".into(),
                "bot-3".into(),
                "--text".into(),
                needle.clone(),
            ],
        ),
        (
            "sessions --text",
            vec!["sessions".into(), "--text".into(), needle.clone()],
        ),
    ];
    for (label, args) in &searches {
        let mut times = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            let out = Command::new(&agent).args(args).arg(&dir).output()?;
            times.push(started.elapsed().as_secs_f64());
            if !out.status.success() {
                bail!(
                    "nhi-agent {label} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        println!(
            "search over {events} events, {label:<32} {:>7.0} ms",
            median(times) * 1e3
        );
    }
    // Baseline: the same substring search by the sqlite3 shell over every segment.
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        for f in &files {
            run(Command::new("sqlite3")
                .arg("-readonly")
                .arg(f)
                .arg(format!(
                    "SELECT count(*) FROM events WHERE kind = 'statement' AND \
                     instr(json_extract(data, '$.text'), '{needle}') > 0;"
                ))
                .stdout(std::process::Stdio::null()))?;
        }
        times.push(started.elapsed().as_secs_f64());
    }
    println!(
        "search baseline: sqlite3 shell, same substring query over the segments {:>7.0} ms",
        median(times) * 1e3
    );
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// The journal's database files: sealed segments and the live file.
fn segment_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if let Ok(entries) = fs::read_dir(dir.join("segments")) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "db") {
                files.push(e.path());
            }
        }
    }
    files.sort();
    let live = dir.join("journal.db");
    if live.exists() {
        files.push(live);
    }
    Ok(files)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
