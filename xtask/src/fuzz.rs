//! `cargo xtask fuzz [--seconds N] [--runs N] [TARGET]`: the libFuzzer targets of `fuzz/`
//! (cargo-fuzz, nightly toolchain), each seeded from the golden captures and run one
//! after the other in one process at the lowest CPU priority, then one summary line per
//! target (executions, exec/s, peak RSS, corpus size) and the crashes, if any.
//!
//! Corpora live in `fuzz/corpus/<target>/` (not committed; the seeds are written there
//! again at every run, so a fresh clone starts from them) and crashing inputs in
//! `fuzz/artifacts/<target>/`. Each run uses `-timeout` (a slow input is a hang) and
//! `-rss_limit_mb` (an OOM), so either is a failure like a panic.
//!
//! The targets build without a sanitizer (`-s none`): the code under test is safe Rust
//! (a panic is what the fuzzer looks for; libFuzzer catches it either way), ASan would
//! not instrument the bundled C SQLite anyway, and uninstrumented runs are twice as
//! fast. Debug assertions and overflow checks are on (cargo-fuzz's default).
use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _};

use crate::util::{self, output, run};

/// cargo-fuzz release known to work here.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Every target of `fuzz/Cargo.toml`, in the order they run.
pub const TARGETS: &[&str] = &[
    "pg_frontend",
    "pg_backend",
    "pg_auth",
    "pg_flow",
    "mysql_flow",
    "sql_analyze",
    "mask_row",
    "config",
    "journal",
    "http_request",
    "aws_request",
    "ssh",
    "kubernetes",
    "redis",
    "mysql",
];

/// An input taking longer than this (seconds) is reported as a hang.
const TIMEOUT_SECS: u32 = 10;
/// A run whose resident memory exceeds this (MiB) is reported as an OOM.
const RSS_LIMIT_MB: u32 = 2048;

/// What one target's run reported.
#[derive(Debug, Default)]
pub struct FuzzRun {
    pub target: String,
    pub runs: u64,
    pub exec_per_sec: u64,
    pub peak_rss_mb: u64,
    pub corpus: usize,
    pub seconds: f64,
    /// Why the run failed (crash, hang, OOM, build failure), with the artifact.
    pub failure: Option<String>,
}

/// `cargo xtask fuzz`: set up, then run `target` (or every target) for `seconds` each,
/// or until `runs` executions.
pub fn fuzz(seconds: u64, runs: Option<u64>, target: Option<&str>) -> anyhow::Result<()> {
    crate::setup::setup()?;
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("unknown fuzz target {t:?}; targets: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    let results = run_targets(&targets, seconds, runs)?;
    print_summary(&results);
    let failed: Vec<&FuzzRun> = results.iter().filter(|r| r.failure.is_some()).collect();
    if !failed.is_empty() {
        bail!("{} fuzz target(s) failed, listed above", failed.len());
    }
    Ok(())
}

/// Installs cargo-fuzz, builds the targets, writes the seeds and runs each target.
/// Errors only for what prevents fuzzing at all; a crashing target is a failed
/// [`FuzzRun`].
pub fn run_targets(
    targets: &[&str],
    seconds: u64,
    runs: Option<u64>,
) -> anyhow::Result<Vec<FuzzRun>> {
    cargo_fuzz()?;
    let fuzz_dir = util::root().join("fuzz");
    eprintln!("fuzz: building the targets (nightly, no sanitizer, debug assertions)");
    build(targets)?;
    seeds(&fuzz_dir, targets)?;
    let mut results = Vec::new();
    for target in targets {
        results.push(run_one(&fuzz_dir, target, seconds, runs)?);
    }
    Ok(results)
}

/// Builds the targets. A failed build is tried once more (what the first attempt built
/// is kept, so a deterministic error fails again within seconds; a transient one, such
/// as a crate download cut short, does not fail the suite), and the error says why: the
/// compiler's error lines and the free disk space, which a run whose output is seen only
/// in part (CI) would otherwise lose among cargo's progress lines.
fn build(targets: &[&str]) -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 2;
    make_room();
    let mut attempt = 1;
    loop {
        // `cargo` from PATH (rustup's proxy, which understands `+nightly`), not $CARGO.
        let mut cmd = Command::new("nice");
        cmd.args([
            "-n", "19", "cargo", "+nightly", "fuzz", "build", "-s", "none",
        ]);
        if let [one] = targets {
            cmd.arg(one);
        }
        let Err(failure) = run_echoing(&mut cmd) else {
            return Ok(());
        };
        let disk = output(
            Command::new("df")
                .args(["-h", "--output=avail,target"])
                .arg(
                    std::env::var_os("CARGO_TARGET_DIR")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| util::root().join("fuzz")),
                ),
        )
        .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
        let why = format!("{failure}; disk: {disk}");
        if attempt == ATTEMPTS {
            bail!("{why}");
        }
        eprintln!("fuzz: the build failed ({why}); trying once more");
        attempt += 1;
    }
}

/// The fuzz build needs about 4 GiB. When the disk has less than [`ROOM`] free, the
/// workspace's incremental compilation caches (`target/debug/incremental`, often
/// several GiB; they only speed up the next debug build) are removed first, and that is
/// said.
fn make_room() {
    const ROOM: u64 = 6 << 30;
    let fuzz = util::root().join("fuzz");
    let free = || {
        output(
            Command::new("df")
                .args(["-B1", "--output=avail"])
                .arg(&fuzz),
        )
        .and_then(|out| {
            out.lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<u64>().ok())
        })
    };
    let Some(before) = free() else { return };
    let incremental = util::target_dir().join("debug/incremental");
    if before >= ROOM || !incremental.is_dir() {
        return;
    }
    match fs::remove_dir_all(&incremental) {
        Ok(()) => eprintln!(
            "fuzz: {:.1} GiB free, less than the build needs; removed {} (now {:.1} GiB free)",
            before as f64 / f64::from(1 << 30),
            incremental.display(),
            free().unwrap_or(before) as f64 / f64::from(1 << 30)
        ),
        Err(e) => eprintln!("fuzz: cannot remove {}: {e}", incremental.display()),
    }
}

/// Runs `cmd` from the workspace root with its stderr echoed; on a non-zero exit the
/// error holds the lines that say why (`error...`, `warning: ... No space`, a signal),
/// else the last lines.
fn run_echoing(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", util::describe(cmd));
    let mut child = cmd
        .current_dir(util::root())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", util::describe(cmd)))?;
    let stderr = child.stderr.take().context("the build's stderr")?;
    let mut telling = Vec::new();
    let mut last = std::collections::VecDeque::new();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { continue };
        eprintln!("{line}");
        if telling_line(&line) && telling.len() < 20 {
            telling.push(line.clone());
        }
        if last.len() == 8 {
            last.pop_front();
        }
        last.push_back(line);
    }
    let status = child.wait()?;
    if status.success() {
        return Ok(());
    }
    let lines: Vec<String> = if telling.is_empty() {
        last.into()
    } else {
        telling
    };
    bail!(
        "{} failed ({status}): {}",
        util::describe(cmd),
        lines.join(" | ")
    )
}

/// A line of cargo's or rustc's output that says why a build failed.
fn telling_line(line: &str) -> bool {
    let l = line.trim_start();
    l.starts_with("error")
        || l.contains("No space left")
        || l.contains("SIGKILL")
        || l.contains("signal:")
}

/// One line per target.
pub fn print_summary(results: &[FuzzRun]) {
    eprintln!();
    eprintln!("==== cargo xtask fuzz: summary ====");
    for r in results {
        eprintln!(
            "{:<12} {:>11} runs in {:>6.1}s  {:>8} exec/s  peak RSS {:>5} MiB  corpus {:>5}  {}",
            r.target,
            r.runs,
            r.seconds,
            r.exec_per_sec,
            r.peak_rss_mb,
            r.corpus,
            r.failure.as_deref().unwrap_or("ok")
        );
    }
}

/// cargo-fuzz, installed with cargo when missing or of another version.
fn cargo_fuzz() -> anyhow::Result<()> {
    let works = output(Command::new("cargo").args(["fuzz", "--version"]))
        .is_some_and(|v| v.contains(CARGO_FUZZ_VERSION));
    if works {
        return Ok(());
    }
    eprintln!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} (a minute)");
    run(Command::new(util::cargo()).args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

fn run_one(
    fuzz_dir: &Path,
    target: &str,
    seconds: u64,
    runs: Option<u64>,
) -> anyhow::Result<FuzzRun> {
    let corpus = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    fs::create_dir_all(&artifacts)?;
    // cargo-fuzz builds where cargo would: `$CARGO_TARGET_DIR` when set (one target
    // directory for the workspace and the fuzz build, where disk is short), else the fuzz
    // workspace's own `target/`.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| fuzz_dir.join("target"));
    let binary = target_dir
        .join("x86_64-unknown-linux-gnu/release")
        .join(target);
    let mut cmd = Command::new("nice");
    cmd.env("NHI_FUZZ_JOURNAL_KEY", journal_key(fuzz_dir))
        .args(["-n", "19"])
        .arg(&binary)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={TIMEOUT_SECS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg(&corpus);
    if let Some(runs) = runs {
        cmd.arg(format!("-runs={runs}"));
    }
    eprintln!("+ {}", util::describe(&cmd));
    let started = Instant::now();
    let mut child = cmd
        .current_dir(fuzz_dir)
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stderr = child.stderr.take().context("libFuzzer's stderr")?;
    let mut result = FuzzRun {
        target: target.to_string(),
        ..FuzzRun::default()
    };
    let mut artifact = None;
    let mut reason = None;
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { continue };
        // Progress lines and newly covered functions are many; the rest (errors, stats)
        // is worth showing.
        let noise = line.starts_with('#') || line.trim_start().starts_with("NEW_FUNC");
        if !noise || line.contains("DONE") {
            eprintln!("{line}");
        }
        read_line(&line, &mut result, &mut artifact, &mut reason);
    }
    let status = child.wait().context("waiting for the fuzzer")?;
    result.seconds = started.elapsed().as_secs_f64();
    result.corpus = fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
    if !status.success() {
        result.failure = Some(format!(
            "FAILED ({}): {}; reproduce with: cargo +nightly fuzz run -s none {target} {}",
            reason.as_deref().unwrap_or("libFuzzer"),
            status,
            artifact.as_deref().unwrap_or("<artifact>")
        ));
    }
    Ok(result)
}

/// Reads libFuzzer's final stats and failure report.
fn read_line(
    line: &str,
    result: &mut FuzzRun,
    artifact: &mut Option<String>,
    reason: &mut Option<String>,
) {
    let number = |s: &str| s.trim().parse::<u64>().unwrap_or(0);
    if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
        result.runs = number(n);
    } else if let Some(n) = line.strip_prefix("stat::average_exec_per_sec:") {
        result.exec_per_sec = number(n);
    } else if let Some(n) = line.strip_prefix("stat::peak_rss_mb:") {
        result.peak_rss_mb = number(n);
    } else if let Some(rest) = line.split("Test unit written to ").nth(1) {
        *artifact = Some(rest.trim().to_string());
    } else if line.starts_with("==") && line.contains("ERROR: libFuzzer:") {
        // "==123== ERROR: libFuzzer: deadly signal" / "timeout after 10 seconds" /
        // "out-of-memory (used: 2100Mb; exceeds: 2048Mb)"
        let what = line.split("ERROR: libFuzzer:").nth(1).unwrap_or("").trim();
        reason.get_or_insert_with(|| what.to_string());
    } else if line.contains("panicked at") {
        *reason = Some(line.trim().to_string());
    }
}

/// Writes each target's seeds into its corpus directory (`seed-*` files, overwritten).
/// Client byte streams for `http_request`: what curl and the tests of
/// tests/tests/http_proxy.rs send (pipelining, chunked bodies with extensions and
/// trailers, the smuggling shapes, an upgrade, h2's preface, tricky paths).
const HTTP_SEEDS: &[(&str, &str)] = &[
    (
        "pipelined",
        "GET /hello?x=1 HTTP/1.1\r\nHost: api.corp\r\nX-Env: prod-eu\r\n\r\n\
         POST /v1/a/keys HTTP/1.1\r\nHost: api.corp\r\nContent-Length: 5\r\n\r\nhello\
         DELETE /admin/users/7 HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "chunked",
        "POST /upload HTTP/1.1\r\nHost: billing.internal\r\nTransfer-Encoding: chunked\r\n\r\n\
         3;ext=1\r\nabc\r\nA \r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n\
         GET /after HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "cl-te",
        "POST /both HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "te-cl",
        "POST /both HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    ),
    (
        "two-lengths",
        "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ),
    (
        "websocket",
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ),
    ("h2-preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    (
        "paths",
        "GET /admin/../admin HTTP/1.1\r\n\r\nGET /%61dmin HTTP/1.1\r\n\r\n\
         GET //admin;jsessionid=1 HTTP/1.1\r\n\r\nGET /x/%2e%2e/admin HTTP/1.1\r\n\r\n\
         GET http://billing.internal/v1/a/secrets/b1 HTTP/1.1\r\n\r\nOPTIONS * HTTP/1.1\r\n\r\n",
    ),
];

fn seeds(fuzz_dir: &Path, targets: &[&str]) -> anyhow::Result<()> {
    let root = util::root();
    let captures = root.join("agent/src/protocol/postgres/testdata");
    let mut frontend = Vec::new();
    let mut backend = Vec::new();
    for entry in fs::read_dir(&captures).context("reading the golden captures")? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if let Some(stem) = name.strip_suffix(".frontend.bin") {
            frontend.push((stem.to_string(), fs::read(&path)?));
        } else if let Some(stem) = name.strip_suffix(".backend.bin") {
            backend.push((stem.to_string(), fs::read(&path)?));
        }
    }
    frontend.sort();
    backend.sort();
    // A connection whose client opened with an SSLRequest: its server stream starts
    // with the one-byte answer.
    let ssl_first = |stem: &str| {
        frontend
            .iter()
            .find(|(s, _)| s == stem)
            .is_some_and(|(_, f)| f.get(4..8) == Some(&[0x04, 0xd2, 0x16, 0x2f][..]))
    };
    let mut sql = sql_seeds(&root, &frontend)?;
    sql.sort();
    sql.dedup();

    for target in targets {
        let dir = fuzz_dir.join("corpus").join(target);
        fs::create_dir_all(&dir)?;
        let put = |name: &str, bytes: &[u8]| fs::write(dir.join(format!("seed-{name}")), bytes);
        match *target {
            "pg_frontend" => {
                for (stem, bytes) in &frontend {
                    // Whole, and in 7-byte reads.
                    put(stem, &[&[0x00], &bytes[..]].concat())?;
                    put(&format!("{stem}-7"), &[&[0x07], &bytes[..]].concat())?;
                }
            }
            "pg_backend" => {
                for (stem, bytes) in backend.iter().filter(|(_, b)| !b.is_empty()) {
                    let ssl = if ssl_first(stem) { 0x80 } else { 0x00 };
                    put(stem, &[&[ssl], &bytes[..]].concat())?;
                    put(&format!("{stem}-3"), &[&[ssl | 0x03], &bytes[..]].concat())?;
                }
            }
            "pg_auth" => {
                for (stem, bytes) in &backend {
                    if stem.contains("login") {
                        let bytes = strip_ssl_answer(bytes, ssl_first(stem));
                        put(stem, &[&[0x00], bytes].concat())?;
                        // The same exchange with one PBKDF2 round (same length: "0001").
                        let cheap = replace(bytes, b"i=4096", b"i=0001");
                        put(&format!("{stem}-i1"), &[&[0x00], &cheap[..]].concat())?;
                    }
                }
            }
            "pg_flow" => {
                // Both directions of a capture: client part, then server part.
                for (stem, client) in &frontend {
                    let Some((_, server)) = backend.iter().find(|(s, _)| s == stem) else {
                        continue;
                    };
                    let server = strip_ssl_answer(server, ssl_first(stem));
                    let Ok(len) = u16::try_from(client.len()) else {
                        continue;
                    };
                    for control in [0x00, 0x05] {
                        let seed = [&[control][..], &len.to_le_bytes(), client, server].concat();
                        put(&format!("{stem}-{control:02x}"), &seed)?;
                    }
                }
            }
            "mysql_flow" => {
                for (name, seed) in mysql_flow_seeds() {
                    put(&name, &seed)?;
                }
            }
            "sql_analyze" => {
                for (i, text) in sql.iter().enumerate() {
                    put(&format!("{i:03}"), text.as_bytes())?;
                }
            }
            "mask_row" => {
                // Control 0x01: two rules, whole reads. Rule 1: every detector, columns
                // email and *_email, redact. Rule 2: column "name", hash. Then partial
                // with keep = 2 over every column.
                let headers: [(&str, &[u8]); 3] = [
                    (
                        "redact-hash",
                        &[0x01, 0xff, 0x03, 0x03, 0x00, 0x00, 0x80, 0x08, 0x00],
                    ),
                    ("partial", &[0x00, 0xff, 0x43, 0x10, 0x84]),
                    ("detect-3", &[0x0c, 0xff, 0x03, 0x00, 0x00]),
                ];
                for (stem, bytes) in &backend {
                    let bytes = strip_ssl_answer(bytes, ssl_first(stem));
                    if bytes.is_empty() {
                        continue;
                    }
                    for (name, header) in headers {
                        put(&format!("{stem}-{name}"), &[header, bytes].concat())?;
                    }
                }
            }
            "config" => {
                for entry in fs::read_dir(root.join("policies"))? {
                    let path = entry?.path();
                    if path.extension().is_some_and(|e| e == "toml") {
                        let name = path.file_name().unwrap_or_default().to_string_lossy();
                        put(&name, &fs::read(&path)?)?;
                    }
                }
                // The README's TOML examples: fragments, but every key the agent knows.
                let readme = fs::read_to_string(root.join("README.md"))?;
                for (i, block) in readme.split("```toml\n").skip(1).enumerate() {
                    let block = block.split("```").next().unwrap_or("");
                    put(&format!("readme-{i:02}.toml"), block.as_bytes())?;
                }
            }
            "journal" => {
                let seed = dir.join("seed-journal.db");
                if !seed.exists() || !journal_key(fuzz_dir).exists() {
                    journal_seed(&seed, &journal_key(fuzz_dir))?;
                }
            }
            "http_request" => {
                for (name, bytes) in HTTP_SEEDS {
                    // Whole, and in 5-byte reads.
                    put(name, &[&[0x00], bytes.as_bytes()].concat())?;
                    put(&format!("{name}-5"), &[&[0x05], bytes.as_bytes()].concat())?;
                }
            }
            "aws_request" => {
                for (name, bytes) in aws_seeds() {
                    put(&name, &bytes)?;
                }
            }
            "ssh" => {
                for (name, bytes) in ssh_seeds() {
                    put(&name, &bytes)?;
                }
            }
            "kubernetes" => {
                for (name, bytes) in kubernetes_seeds()? {
                    put(&name, &bytes)?;
                }
            }
            "redis" => {
                // The decoders' golden captures, whole and in 3-byte reads.
                let testdata = fuzz_dir.join("../agent/src/protocol/redis/testdata");
                for entry in std::fs::read_dir(&testdata)? {
                    let path = entry?.path();
                    let name = path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    if name.ends_with(".c2s") || name.ends_with(".s2c") {
                        let bytes = std::fs::read(&path)?;
                        put(&name, &[&[0x00], &bytes[..]].concat())?;
                        put(&format!("{name}-3"), &[&[0x03], &bytes[..]].concat())?;
                    }
                }
            }
            "mysql" => {
                for (name, seed) in mysql_seeds() {
                    put(&name, &seed)?;
                }
            }
            other => bail!("no seeds for fuzz target {other}"),
        }
    }
    Ok(())
}

/// A MySQL packet: 3-byte length, sequence id, payload (seeds of `mysql`, `mysql_flow`).
fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    [
        &[n as u8, (n >> 8) as u8, (n >> 16) as u8, seq][..],
        payload,
    ]
    .concat()
}

/// A short length-encoded string.
fn lenenc(b: &[u8]) -> Vec<u8> {
    [&[b.len() as u8][..], b].concat()
}

/// A column definition of `shop.users` named `name`, of type `ty` (utf8mb4).
fn column(name: &[u8], ty: u8) -> Vec<u8> {
    let mut c = Vec::new();
    for part in [&b"def"[..], b"shop", b"users", b"users", name, name] {
        c.extend(lenenc(part));
    }
    c.push(0x0c);
    c.extend_from_slice(&45u16.to_le_bytes());
    c.extend_from_slice(&80u32.to_le_bytes());
    c.extend_from_slice(&[ty, 0, 0, 0, 0, 0]);
    c
}

/// Seeds of the `mysql_flow` target (fuzz/fuzz_targets/mysql_flow.rs: a control byte,
/// the client part's length (u16, little-endian), the client stream, the server stream,
/// both after authentication): a COM_QUERY answered by a text result set with a masked
/// `email` column, a COM_STMT_PREPARE then COM_STMT_EXECUTE answered by a binary row, a
/// DROP the policy denies (never sent: the agent answers it) then a SELECT, and an ALTER
/// held for approval; each with and without CLIENT_DEPRECATE_EOF, whole and in 5-byte
/// reads, enforced and observed.
fn mysql_flow_seeds() -> Vec<(String, Vec<u8>)> {
    // EOF (status AUTOCOMMIT); with CLIENT_DEPRECATE_EOF the end of rows is an OK with
    // the 0xFE header and no EOF follows the column definitions.
    let eof = [0xfe, 0, 0, 0x02, 0];
    let end = [0xfe, 0, 0, 0x02, 0, 0, 0];
    let ok = [0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00];
    // Server packets of an answer, from sequence id 1; `columns_eof`: where the EOF
    // after the column definitions goes (the packet index), when not deprecated.
    let answer = |payloads: &[Vec<u8>], columns_eof: Option<usize>, deprecate: bool| {
        let mut out = Vec::new();
        let mut seq = 1u8;
        for (i, p) in payloads.iter().enumerate() {
            if !deprecate && columns_eof == Some(i) {
                out.extend(packet(seq, &eof));
                seq += 1;
            }
            let p: &[u8] = if deprecate && p[..] == eof[..] {
                &end
            } else {
                p
            };
            out.extend(packet(seq, p));
            seq += 1;
        }
        out
    };
    const SECRET: &[u8] = b"fuzz.secret@example.com";
    let text_query = |deprecate: bool| {
        let client = packet(0, b"\x03select id, email from users");
        let server = answer(
            &[
                vec![2],
                column(b"id", 0x08),
                column(b"email", 0xfd),
                [lenenc(b"1"), lenenc(SECRET)].concat(),
                [&[0xfb][..], &lenenc(b"bob@example.org")].concat(),
                eof.to_vec(),
            ],
            Some(3),
            deprecate,
        );
        (client, server)
    };
    let prepared = |deprecate: bool| {
        let mut client = packet(0, b"\x16select id, email from users where id = ?");
        let mut execute = vec![0x17];
        execute.extend_from_slice(&1u32.to_le_bytes());
        // No cursor, iteration count 1, NULL bitmap, types bound: LONGLONG.
        execute.extend_from_slice(&[0, 1, 0, 0, 0, 0b0, 1, 0x08, 0]);
        execute.extend_from_slice(&7i64.to_le_bytes());
        client.extend(packet(0, &execute));
        // COM_STMT_PREPARE OK: statement 1, two columns, one parameter.
        let mut prepare_ok = vec![0x00];
        prepare_ok.extend_from_slice(&1u32.to_le_bytes());
        prepare_ok.extend_from_slice(&[2, 0, 1, 0, 0, 0, 0]);
        // Parameter definitions, then column definitions, each group followed by an
        // EOF unless deprecated.
        let mut payloads = vec![prepare_ok, column(b"?", 0x08)];
        if !deprecate {
            payloads.push(eof.to_vec());
        }
        payloads.extend([column(b"id", 0x08), column(b"email", 0xfd)]);
        if !deprecate {
            payloads.push(eof.to_vec());
        }
        let mut server = answer(&payloads, None, false);
        // Binary row: header, NULL bitmap (offset 2), LONGLONG 7, the e-mail.
        let mut row = vec![0x00, 0x00];
        row.extend_from_slice(&7i64.to_le_bytes());
        row.extend(lenenc(SECRET));
        server.extend(answer(
            &[
                vec![2],
                column(b"id", 0x08),
                column(b"email", 0xfd),
                row,
                eof.to_vec(),
            ],
            Some(3),
            deprecate,
        ));
        (client, server)
    };
    let denied = |deprecate: bool| {
        let client = [
            packet(0, b"\x03drop table users"),
            packet(0, b"\x03select 1"),
            packet(0, &[0x01]),
        ]
        .concat();
        // The server sees only the SELECT.
        let server = answer(
            &[vec![1], column(b"1", 0x08), lenenc(b"1"), eof.to_vec()],
            Some(2),
            deprecate,
        );
        (client, server)
    };
    let held = |_deprecate: bool| {
        let client = [
            packet(0, b"\x03alter table users add column card_no text"),
            packet(0, &[0x0e]),
        ]
        .concat();
        let server = [packet(1, &ok), packet(1, &ok)].concat();
        (client, server)
    };
    let mut seeds = Vec::new();
    for (name, make) in [
        (
            "text-result",
            &text_query as &dyn Fn(bool) -> (Vec<u8>, Vec<u8>),
        ),
        ("prepare-execute", &prepared),
        ("denied-drop", &denied),
        ("held-alter", &held),
    ] {
        for deprecate in [false, true] {
            let (client, server) = make(deprecate);
            let Ok(len) = u16::try_from(client.len()) else {
                continue;
            };
            let eof_bit = if deprecate { 0x80 } else { 0x00 };
            // Whole, 5-byte reads, observe mode, a hold denied.
            for control in [0x00, 0x05, 0x10, 0x20] {
                let control = control | eof_bit;
                let seed = [&[control][..], &len.to_le_bytes(), &client, &server].concat();
                seeds.push((format!("{name}-{control:02x}"), seed));
            }
        }
    }
    seeds
}

/// Seeds of the `mysql` target (fuzz/fuzz_targets/mysql.rs: a control byte, a header
/// byte with the number of column types, the types, then packets): a MySQL 8 start-up
/// (greeting offering caching_sha2_password, HandshakeResponse41 with attributes, full
/// authentication with the RSA key request, OK), a text result set, and a
/// COM_STMT_EXECUTE with bound parameters answered by a binary row; each whole and in
/// 3-byte reads.
fn mysql_seeds() -> Vec<(String, Vec<u8>)> {
    // Greeting: v10, version, connection id, scramble (8 + 12 + NUL), capabilities
    // (PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH | CONNECT_ATTRS | DEPRECATE_EOF
    // | lenenc auth data | CONNECT_WITH_DB | SSL), charset, status, plugin.
    let caps: u32 =
        0x0200 | 0x8000 | 0x0008_0000 | 0x0010_0000 | 0x0100_0000 | 0x0020_0000 | 0x8 | 0x800;
    let mut greeting = vec![10];
    greeting.extend_from_slice(b"8.0.36-fixture\0");
    greeting.extend_from_slice(&9u32.to_le_bytes());
    greeting.extend_from_slice(b"abcdefgh\0");
    greeting.extend_from_slice(&(caps as u16).to_le_bytes());
    greeting.push(255);
    greeting.extend_from_slice(&2u16.to_le_bytes());
    greeting.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    greeting.push(21);
    greeting.extend_from_slice(&[0; 10]);
    greeting.extend_from_slice(b"ijklmnopqrst\0caching_sha2_password\0");
    let mut response = Vec::new();
    response.extend_from_slice(&(caps & !0x800).to_le_bytes());
    response.extend_from_slice(&(16u32 << 20).to_le_bytes());
    response.push(45);
    response.extend_from_slice(&[0; 23]);
    response.extend_from_slice(b"bot\0");
    response.extend(lenenc(&[0x5a; 32]));
    response.extend_from_slice(b"shop\0caching_sha2_password\0");
    let attrs = [lenenc(b"_client_name"), lenenc(b"pymysql")].concat();
    response.extend(lenenc(&attrs));
    let ok = [0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00];
    let pem = b"\x01-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----\n";
    let startup = [
        packet(0, &greeting),
        packet(1, &response),
        packet(2, &[0x01, 0x04]),
        packet(3, &[0x02]),
        packet(4, pem),
        packet(5, &[0xa5; 256]),
        packet(6, &ok),
    ]
    .concat();
    let eof = [0xfe, 0, 0, 0x02, 0];
    let text = [
        packet(0, b"\x03select id, email from users"),
        packet(1, &[2]),
        packet(2, &column(b"id", 0x03)),
        packet(3, &column(b"email", 0xfd)),
        packet(4, &eof),
        packet(5, &[lenenc(b"1"), lenenc(b"ada@example.com")].concat()),
        packet(6, &[&[0xfb][..], &lenenc(b"bob@example.org")].concat()),
        packet(7, &eof),
    ]
    .concat();
    // Columns LONG, VAR_STRING, DATETIME (type indexes 2, 11, 8).
    let mut execute = vec![0x17];
    execute.extend_from_slice(&1u32.to_le_bytes());
    execute.extend_from_slice(&[0, 1, 0, 0, 0]);
    execute.extend_from_slice(&[0b000, 1, 0x03, 0, 0xfd, 0, 0x0c, 0]);
    execute.extend_from_slice(&7i32.to_le_bytes());
    execute.extend(lenenc(b"ada@example.com"));
    execute.extend_from_slice(&[7, 0xea, 0x07, 12, 7, 21, 30, 5]);
    let mut row = vec![0x00, 0x00];
    row.extend_from_slice(&7i32.to_le_bytes());
    row.extend(lenenc(b"ada@example.com"));
    row.extend_from_slice(&[11, 0xea, 0x07, 12, 7, 21, 30, 5, 0x40, 0xe2, 0x01, 0x00]);
    let binary = [packet(0, &execute), packet(1, &row)].concat();
    let mut seeds = Vec::new();
    for (name, header, stream) in [
        ("startup", vec![0x00], startup),
        ("text-result", vec![0x00], text),
        ("binary", vec![0x03, 2, 11, 8], binary),
    ] {
        for control in [0x00u8, 0x03] {
            seeds.push((
                format!("{name}-{control}"),
                [&[control][..], &header, &stream].concat(),
            ));
        }
    }
    seeds
}

/// Seeds of the `kubernetes` target (fuzz/fuzz_targets/kubernetes.rs: bit 7 of the
/// control byte chooses): SPDY/3.1 control frames that need no header block (SETTINGS,
/// PING, GOAWAY), whole and in 3-byte reads; and every request real kubectl made in
/// tests/kube/testdata/kubectl-requests.jsonl, as `METHOD target`.
fn kubernetes_seeds() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let control = |kind: u16, flags: u8, body: &[u8]| -> Vec<u8> {
        let mut frame = vec![0x80, 0x03];
        frame.extend_from_slice(&kind.to_be_bytes());
        frame.push(flags);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(body);
        frame
    };
    let settings = control(4, 0, &[0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 100]);
    let ping = control(6, 0, &1u32.to_be_bytes());
    let goaway = control(7, 0, &[0, 0, 0, 0, 0, 0, 0, 0]);
    let frames = [settings, ping, goaway].concat();
    let mut seeds = vec![
        ("spdy-control".to_owned(), [&[0x00u8][..], &frames].concat()),
        (
            "spdy-control-3".to_owned(),
            [&[0x03u8][..], &frames].concat(),
        ),
    ];
    let golden = util::root().join("tests/kube/testdata/kubectl-requests.jsonl");
    let text = fs::read_to_string(&golden).with_context(|| golden.display().to_string())?;
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let capture: serde_json::Value = serde_json::from_str(line)?;
        let text = |k: &str| capture[k].as_str().unwrap_or("").to_owned();
        let target = match capture["query"].as_str().filter(|q| !q.is_empty()) {
            Some(q) => format!("{}?{q}", text("path")),
            None => text("path"),
        };
        let request = format!("{} {target}", text("method"));
        seeds.push((
            format!("kubectl-{i:02}"),
            [&[0x80u8][..], request.as_bytes()].concat(),
        ));
    }
    Ok(seeds)
}

/// Seeds of the `ssh` target (fuzz/fuzz_targets/ssh.rs: a control byte, bits 6-7 the
/// mode): an SFTP session's client and server packets, a known_hosts file with every
/// line form, command lines.
fn ssh_seeds() -> Vec<(String, Vec<u8>)> {
    fn packet(kind: u8, fields: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = std::iter::once(kind)
            .chain(fields.iter().flat_map(|f| f.iter().copied()))
            .collect();
        [(body.len() as u32).to_be_bytes().as_slice(), &body].concat()
    }
    fn string(s: &[u8]) -> Vec<u8> {
        [(s.len() as u32).to_be_bytes().as_slice(), s].concat()
    }
    let id = |n: u32| n.to_be_bytes().to_vec();
    let client = [
        packet(1, &[&3u32.to_be_bytes()]),
        packet(
            3,
            &[
                &id(1),
                &string(b"/srv/up.bin"),
                &0x1au32.to_be_bytes(),
                &0u32.to_be_bytes(),
            ],
        ),
        packet(
            6,
            &[
                &id(2),
                &string(b"h1"),
                &0u64.to_be_bytes(),
                &string(&[7u8; 64]),
            ],
        ),
        packet(4, &[&id(3), &string(b"h1")]),
        packet(18, &[&id(4), &string(b"/a"), &string(b"/b")]),
        packet(
            200,
            &[
                &id(5),
                &string(b"posix-rename@openssh.com"),
                &string(b"/a"),
                &string(b"/b"),
            ],
        ),
        packet(13, &[&id(6), &string(b"/tmp/x")]),
    ]
    .concat();
    let server = [
        packet(2, &[&3u32.to_be_bytes()]),
        packet(102, &[&id(1), &string(b"h1")]),
        packet(
            101,
            &[&id(2), &0u32.to_be_bytes(), &string(b"ok"), &string(b"en")],
        ),
        packet(103, &[&id(7), &string(&[1u8; 100])]),
        packet(104, &[&id(8), &1u32.to_be_bytes()]),
    ]
    .concat();
    let known_hosts = "# comment
[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl
                       *.internal,!bad.internal ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl
                       |1|c2FsdHNhbHRzYWx0c2FsdHNhbHQ=|aGFzaGhhc2hoYXNoaGFzaGhhc2g= ssh-rsa AAAAB3NzaC1yc2E=
                       @cert-authority * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl
                       @revoked * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl
";
    let mut seeds = vec![
        ("sftp-client".to_owned(), [&[0x00u8][..], &client].concat()),
        (
            "sftp-client-7".to_owned(),
            [&[0x07u8][..], &client].concat(),
        ),
        ("sftp-server".to_owned(), [&[0x40u8][..], &server].concat()),
        (
            "known-hosts".to_owned(),
            [&[0x80u8][..], known_hosts.as_bytes()].concat(),
        ),
    ];
    for (i, command) in [
        "uname -a",
        "cd /srv && rm -rf build",
        "echo 'rm -rf /' ; /bin/rm  -rf /",
        "sudo systemctl restart nginx",
        "dd if=/dev/zero of=/dev/sda bs=1M",
        "sh -c \"systemctl stop x\" | tee `date` & (true)",
    ]
    .iter()
    .enumerate()
    {
        seeds.push((
            format!("command-{i}"),
            [&[0xc0u8][..], command.as_bytes()].concat(),
        ));
    }
    seeds
}

/// A signature of the right form (64 lowercase hex digits) that nothing verifies.
const SIG: &str = "a3f1f7d0c4b5e6a7980123456789abcdef0123456789abcdef0123456789abcd";

/// Requests as the AWS CLI and SDKs send them, in the `aws_request` target's layout
/// (fuzz/fuzz_targets/aws_request.rs: a control byte; method, host, path, `?query`
/// lines; headers; an empty line; the body): S3 PutObject and GetObject path- and
/// virtual-host-style, a presigned URL, IAM and STS query calls, Secrets Manager JSON,
/// the aws-chunked bodies of the S3 documentation's two examples (whose signatures the
/// target verifies with the documentation's key) and a small unverified one, and AWS's
/// XML and JSON answers (errors, credentials) as bodies for the error-code reader and the
/// XML masker.
fn aws_seeds() -> Vec<(String, Vec<u8>)> {
    let auth = |service: &str, signed: &str| {
        format!(
            "x-amz-date: 20261206T233806Z\n\
             authorization: AWS4-HMAC-SHA256 Credential=AKIANHIAGENTPLACEHLD/20261206/us-east-1/{service}/aws4_request, \
             SignedHeaders={signed}, Signature={SIG}\n"
        )
    };
    let request = |control: u8, head: &str, headers: &str, body: &[u8]| {
        [
            &[control][..],
            head.as_bytes(),
            headers.as_bytes(),
            b"\n",
            body,
        ]
        .concat()
    };
    // The documented aws-chunked bodies: 64 KiB and 1 KiB of 'a', the final chunk, and in
    // the trailer example the CRC32C trailer and its signature.
    let chunk = |size: usize, signature: &str| {
        let mut c = format!("{size:x};chunk-signature={signature}\r\n").into_bytes();
        if size > 0 {
            c.extend(std::iter::repeat_n(b'a', size));
            c.extend_from_slice(b"\r\n");
        }
        c
    };
    let documented = [
        chunk(
            65536,
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        ),
        chunk(
            1024,
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        ),
        chunk(
            0,
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
        ),
        b"\r\n".to_vec(),
    ]
    .concat();
    let with_trailer = [
        chunk(65536, "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2"),
        chunk(1024, "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7"),
        chunk(0, "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"),
        b"x-amz-checksum-crc32c:sOO8/Q==\r\n\
          x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n\r\n"
            .to_vec(),
    ]
    .concat();
    let documented_head = |seed: &str, mode: &str, length: usize, trailer: bool| {
        let (signed, header) = if trailer {
            (";x-amz-trailer", "x-amz-trailer: x-amz-checksum-crc32c\n")
        } else {
            ("", "")
        };
        format!(
            "PUT\ns3.amazonaws.com\n/examplebucket/chunkObject.txt\n\n\
             host: s3.amazonaws.com\nx-amz-date: 20130524T000000Z\n\
             x-amz-storage-class: REDUCED_REDUNDANCY\n\
             authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;\
             x-amz-decoded-content-length;x-amz-storage-class{signed},Signature={seed}\n\
             x-amz-content-sha256: {mode}\ncontent-encoding: aws-chunked\n\
             x-amz-decoded-content-length: 66560\ncontent-length: {length}\n{header}"
        )
    };
    let small = format!(
        "5;chunk-signature={SIG}\r\nhello\r\n0;chunk-signature={SIG}\r\n\
         x-amz-checksum-crc32:NhCmhg==\r\nx-amz-trailer-signature:{SIG}\r\n\r\n"
    );
    let s3_host = "host: 127.0.0.1:9000\n";
    let empty_sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let mut seeds: Vec<(String, Vec<u8>)> = vec![
        (
            "s3-put-path".into(),
            request(
                0x00,
                "PUT\n127.0.0.1:9000\n/artifacts/build/app.bin\n\n",
                &format!(
                    "{s3_host}content-type: application/octet-stream\n\
                     x-amz-content-sha256: UNSIGNED-PAYLOAD\ncontent-length: 11\n{}",
                    auth("s3", "content-length;content-type;host;x-amz-content-sha256;x-amz-date")
                ),
                b"hello world",
            ),
        ),
        (
            "s3-get-virtual-host".into(),
            request(
                0x00,
                "GET\nartifacts.s3.us-east-1.amazonaws.com\n/build/app.bin\n?versionId=3&partNumber=1\n",
                &format!(
                    "host: artifacts.s3.us-east-1.amazonaws.com\nrange: bytes=0-1023\n\
                     x-amz-content-sha256: {empty_sha}\n{}",
                    auth("s3", "host;range;x-amz-content-sha256;x-amz-date")
                ),
                b"",
            ),
        ),
        (
            "s3-presigned".into(),
            request(
                0x00,
                &format!(
                    "GET\nartifacts.s3.amazonaws.com\n/reports/2026/q4.csv\n\
                     ?X-Amz-Algorithm=AWS4-HMAC-SHA256\
                     &X-Amz-Credential=AKIANHIAGENTPLACEHLD%2F20261206%2Fus-east-1%2Fs3%2Faws4_request\
                     &X-Amz-Date=20261206T233806Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host\
                     &X-Amz-Signature={SIG}\n"
                ),
                "host: artifacts.s3.amazonaws.com\n",
                b"",
            ),
        ),
        (
            "s3-delete-objects".into(),
            request(
                0x00,
                "POST\n127.0.0.1:9000\n/artifacts\n?delete\n",
                &format!(
                    "{s3_host}content-type: application/xml\ncontent-md5: 1B2M2Y8AsgTpgAmY7PhCfg==\n\
                     x-amz-content-sha256: UNSIGNED-PAYLOAD\n{}",
                    auth("s3", "content-md5;content-type;host;x-amz-content-sha256;x-amz-date")
                ),
                b"<Delete><Object><Key>build/app.bin</Key></Object><Quiet>true</Quiet></Delete>",
            ),
        ),
        (
            "iam-query".into(),
            request(
                0x00,
                "POST\niam.amazonaws.com\n/\n\n",
                &format!(
                    "host: iam.amazonaws.com\n\
                     content-type: application/x-www-form-urlencoded; charset=utf-8\n{}",
                    auth("iam", "content-type;host;x-amz-date")
                ),
                b"Action=CreateUser&UserName=mallory&Path=%2Fbots%2F&Version=2010-05-08",
            ),
        ),
        (
            "sts-query-in-url".into(),
            request(
                0x00,
                "GET\nsts.amazonaws.com\n/\n?Action=GetCallerIdentity&Version=2011-06-15\n",
                &format!("host: sts.amazonaws.com\n{}", auth("sts", "host;x-amz-date")),
                b"",
            ),
        ),
        (
            "secretsmanager-json".into(),
            request(
                0x00,
                "POST\nsecretsmanager.us-east-1.amazonaws.com\n/\n\n",
                &format!(
                    "host: secretsmanager.us-east-1.amazonaws.com\n\
                     content-type: application/x-amz-json-1.1\n\
                     x-amz-target: secretsmanager.GetSecretValue\n\
                     x-amz-security-token: FwoGZXIvYXdzEPLACEHOLDER\n{}",
                    auth("secretsmanager", "content-type;host;x-amz-date;x-amz-security-token;x-amz-target")
                ),
                br#"{"SecretId":"db-password","VersionStage":"AWSCURRENT"}"#,
            ),
        ),
        (
            "dynamodb-json".into(),
            request(
                0x00,
                "POST\ndynamodb.us-east-1.amazonaws.com\n/\n\n",
                &format!(
                    "host: dynamodb.us-east-1.amazonaws.com\n\
                     content-type: application/x-amz-json-1.0\n\
                     x-amz-target: DynamoDB_20120810.TransactWriteItems\n{}",
                    auth("dynamodb", "content-type;host;x-amz-date;x-amz-target")
                ),
                br#"{"TransactItems":[{"Put":{"TableName":"orders","Item":{"id":{"S":"1"}}}},{"Delete":{"TableName":"carts","Key":{"id":{"S":"1"}}}}]}"#,
            ),
        ),
        (
            "s3-chunked-small".into(),
            request(
                0x05,
                "PUT\n127.0.0.1:9000\n/artifacts/hello.txt\n\n",
                &format!(
                    "{s3_host}content-encoding: aws-chunked\nx-amz-decoded-content-length: 5\n\
                     x-amz-trailer: x-amz-checksum-crc32\n\
                     x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER\n{}",
                    auth("s3", "content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-trailer")
                ),
                small.as_bytes(),
            ),
        ),
    ];
    for (control, suffix) in [(0x80, "verify"), (0xc0, "identity"), (0x87, "verify-7")] {
        seeds.push((
            format!("s3-chunked-documented-{suffix}"),
            request(
                control,
                &documented_head(
                    "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
                    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                    documented.len(),
                    false,
                ),
                "",
                &documented,
            ),
        ));
    }
    seeds.push((
        "s3-chunked-documented-trailer".into(),
        request(
            0xc0,
            &documented_head(
                "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
                with_trailer.len(),
                true,
            ),
            "",
            &with_trailer,
        ),
    ));
    // AWS's answers, as bodies (and their headers), for the error-code reader and the
    // XML masker.
    let answers: [(&str, &str, &[u8]); 5] = [
        (
            "sts-credentials-xml",
            "x-amzn-requestid: 4c7b2f3a-0000-4000-8000-000000000000\ncontent-type: text/xml\n",
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
              <GetSessionTokenResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
              <GetSessionTokenResult><Credentials>\
              <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>\
              <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>\
              <SessionToken><![CDATA[AQoEXAMPLEH4aoAH0gNCAPy&amp;]]></SessionToken>\
              <Expiration>2026-12-07T11:00:00Z</Expiration></Credentials>\
              </GetSessionTokenResult><ResponseMetadata><RequestId>58c5dbae</RequestId>\
              </ResponseMetadata></GetSessionTokenResponse>",
        ),
        (
            "iam-error-xml",
            "x-amzn-requestid: nhi-3-2\ncontent-type: text/xml\n",
            b"<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error>\
              <Type>Sender</Type><Code>AccessDenied</Code>\
              <Message>nhi-agent: request refused by policy rule &quot;no-iam-users&quot; \
              (owner mallory@example.com, key AKIAFUZZSECRETVALUE)</Message></Error>\
              <RequestId>nhi-3-2</RequestId></ErrorResponse>",
        ),
        (
            "s3-error-xml",
            "x-amz-request-id: 4442587FB7D0A2F9\ncontent-type: application/xml\n",
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>\
              <Message>The specified key does not exist.</Message><Key>build/app.bin</Key>\
              <RequestId>4442587FB7D0A2F9</RequestId></Error>",
        ),
        (
            "s3-list-xml",
            "x-amz-request-id: 4442587FB7D0A2FA\n",
            b"<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>artifacts</Name>\
              <Contents><Key>a&#x26;b.txt</Key><Size>5</Size><Owner><ID>75aa57f09aa0c8ca</ID>\
              <DisplayName>ops@example.com</DisplayName></Owner></Contents>\
              <!-- card 4111 1111 1111 1111 --></ListBucketResult>",
        ),
        (
            "json-error",
            "x-amzn-errortype: ResourceNotFoundException:http://internal.amazon.com/\n\
             x-amzn-requestid: 1f2e3d4c\ncontent-type: application/x-amz-json-1.1\n",
            br#"{"__type":"com.amazonaws.secretsmanager#ResourceNotFoundException","Message":"Secrets Manager can't find the specified secret."}"#,
        ),
    ];
    for (name, headers, body) in answers {
        seeds.push((
            name.into(),
            request(0x00, "HTTP/1.1\n\n/\n\n", headers, body),
        ));
    }
    seeds
}

/// The server stream without the SSLRequest answer (the targets that decode it as a
/// plain server stream start past it).
fn strip_ssl_answer(bytes: &[u8], ssl_first: bool) -> &[u8] {
    if ssl_first {
        bytes.get(1..).unwrap_or_default()
    } else {
        bytes
    }
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    match bytes.windows(from.len()).position(|w| w == from) {
        Some(i) => [&bytes[..i], to, &bytes[i + from.len()..]].concat(),
        None => bytes.to_vec(),
    }
}

/// SQL texts: psql's catalog queries (agent/src/policy/testdata, separated by `-- next`
/// lines) and every Query/Parse text of the golden frontend captures.
fn sql_seeds(root: &Path, frontend: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let meta = fs::read_to_string(root.join("agent/src/policy/testdata/psql_meta_commands.sql"))?;
    for query in meta.split("\n-- next\n") {
        out.push(query.trim().to_string());
    }
    for (_, bytes) in frontend {
        out.extend(query_texts(bytes));
    }
    out.retain(|q| !q.is_empty());
    Ok(out)
}

/// The texts of the 'Q' and 'P' messages of a client stream: start-up packets
/// (untagged: Int32 length first) are skipped until the StartupMessage, then messages
/// are a tag and an Int32 length. Only for seeds: a stream it cannot follow gives what
/// it found so far.
fn query_texts(stream: &[u8]) -> Vec<String> {
    let be32 = |at: usize| -> Option<usize> {
        let b = stream.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let mut texts = Vec::new();
    let mut pos = 0;
    // Untagged packets: SSLRequest (code 80877103), then the StartupMessage (3.0).
    while let (Some(len), Some(code)) = (be32(pos), be32(pos + 4)) {
        pos += len.max(8);
        if code >> 16 == 3 {
            break;
        }
    }
    while let (Some(&tag), Some(len)) = (stream.get(pos), be32(pos + 1)) {
        let Some(body) = stream.get(pos + 5..pos + 1 + len) else {
            break;
        };
        let cstr = |b: &[u8]| -> Option<(String, usize)> {
            let end = b.iter().position(|&c| c == 0)?;
            Some((String::from_utf8_lossy(&b[..end]).into_owned(), end + 1))
        };
        match tag {
            b'Q' => texts.extend(cstr(body).map(|(s, _)| s)),
            b'P' => {
                if let Some((_, skip)) = cstr(body) {
                    texts.extend(cstr(&body[skip..]).map(|(s, _)| s));
                }
            }
            _ => {}
        }
        pos += 1 + len;
    }
    texts
}

/// The public key of the seed journal's seal (outside the corpus directory: libFuzzer
/// reads every file there as an input).
fn journal_key(fuzz_dir: &Path) -> PathBuf {
    fuzz_dir.join("corpus/journal-key.pub")
}

/// A small real journal, written by the agent's own writer
/// (agent/examples/fuzz_journal_seed.rs), and its key.
fn journal_seed(seed: &Path, key: &Path) -> anyhow::Result<()> {
    let dir: PathBuf = std::env::temp_dir().join(format!("nhi-fuzz-seed-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    run(Command::new(util::cargo())
        .args([
            "run",
            "-q",
            "-p",
            "nhi-agent",
            "--example",
            "fuzz_journal_seed",
            "--",
        ])
        .arg(&dir))?;
    fs::copy(dir.join("journal.db"), seed).context("copying the seed journal")?;
    fs::copy(dir.join("key.pub"), key).context("copying the seed journal's key")?;
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_texts_of_a_capture() {
        let mut stream = Vec::new();
        // SSLRequest, StartupMessage (user=u), Query, Parse, Sync.
        stream.extend([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        stream.extend([
            0, 0, 0, 16, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0, b'u', 0, 0,
        ]);
        stream.push(b'Q');
        stream.extend(14u32.to_be_bytes());
        stream.extend(b"select 1;\0");
        stream.push(b'P');
        stream.extend(19u32.to_be_bytes());
        stream.extend(b"s1\0select $1\0\0\0");
        stream.extend([b'S', 0, 0, 0, 4]);
        assert_eq!(query_texts(&stream), vec!["select 1;", "select $1"]);
    }

    /// Each `mysql_flow` seed: the client part its length says, and both parts whole
    /// MySQL packets (client commands from sequence id 0).
    #[test]
    fn mysql_flow_seeds_are_whole_packets() {
        fn packets(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
            let mut out = Vec::new();
            while !bytes.is_empty() {
                assert!(bytes.len() >= 4, "a partial header");
                let n = usize::from(bytes[0])
                    | usize::from(bytes[1]) << 8
                    | usize::from(bytes[2]) << 16;
                let payload = bytes.get(4..4 + n).expect("a partial payload");
                out.push((bytes[3], payload.to_vec()));
                bytes = &bytes[4 + n..];
            }
            out
        }
        let seeds = mysql_flow_seeds();
        assert_eq!(seeds.len(), 4 * 2 * 4);
        for (name, seed) in seeds {
            let len = usize::from(u16::from_le_bytes([seed[1], seed[2]]) & 0x7fff);
            let (client, server) = seed[3..].split_at(len);
            let commands = packets(client);
            assert!(!commands.is_empty(), "{name}");
            assert!(commands.iter().all(|(seq, _)| *seq == 0), "{name}");
            assert!(!packets(server).is_empty(), "{name}");
        }
    }

    #[test]
    fn reads_libfuzzer_reports() {
        let mut r = FuzzRun::default();
        let (mut artifact, mut reason) = (None, None);
        for line in [
            "==42== ERROR: libFuzzer: timeout after 10 seconds",
            "artifact_prefix='fuzz/artifacts/x/'; Test unit written to fuzz/artifacts/x/timeout-abc",
            "stat::number_of_executed_units: 12345",
            "stat::average_exec_per_sec:     678",
            "stat::peak_rss_mb:              90",
        ] {
            read_line(line, &mut r, &mut artifact, &mut reason);
        }
        assert_eq!((r.runs, r.exec_per_sec, r.peak_rss_mb), (12345, 678, 90));
        assert_eq!(artifact.as_deref(), Some("fuzz/artifacts/x/timeout-abc"));
        assert_eq!(reason.as_deref(), Some("timeout after 10 seconds"));
    }

    #[test]
    fn a_failed_build_keeps_the_lines_that_say_why() {
        for telling in [
            "error[E0425]: cannot find value `x` in this scope",
            "error: could not compile `nhi-agent` (lib) due to 1 previous error",
            "  error: failed to download `fiat-crypto v0.2.9`",
            "warning: failed to write cache: No space left on device (os error 28)",
            "  process didn't exit successfully: `rustc ...` (signal: 9, SIGKILL: kill)",
        ] {
            assert!(telling_line(telling), "{telling}");
        }
        for progress in [
            "   Compiling nhi-agent v0.1.0 (/work/main/agent)",
            "warning: unused variable: `errors`",
            "    Finished `release` profile [optimized + debuginfo] target(s) in 10m 08s",
        ] {
            assert!(!telling_line(progress), "{progress}");
        }
    }
}
