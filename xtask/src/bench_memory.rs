//! The memory part of `cargo xtask bench`: the agent's resident set (VmRSS from
//! /proc/PID/status) idle, and with N idle connections held open through it.
//!
//! Measured first, right after the agent started, so that "idle" is the agent at rest
//! rather than what the allocator kept after the bulk and pgbench phases. A short
//! warm-up (a hundred connections opened and closed) comes before it: thread pools,
//! caches and the journal's first pages reach their size, as they would within minutes
//! on a real host. Then `nhi-testclient hold` opens N connections to the echo target
//! (each with one echoed byte, so each session is established, journaled and relaying)
//! and keeps them open while the RSS is read.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, ChildStdout, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nhi_tests::TestCgroup;
use serde_json::Value;

use crate::bench_targets::Memory;

/// Connections of the warm-up.
const WARM_UP: u64 = 100;

pub(crate) fn measure(
    pid: u32,
    client_bin: &Path,
    cg: &TestCgroup,
    echo: SocketAddr,
    conns: u64,
) -> anyhow::Result<Memory> {
    // The echo server runs in this process: N accepted sockets here too.
    raise_nofile();
    let warm = Held::start(cg, client_bin, echo, WARM_UP)?;
    warm.release()?;
    settle(pid);
    let idle_kib = rss_kib(pid).context("the agent's VmRSS")?;
    println!(
        "agent memory (VmRSS): idle {:.1} MiB (after start-up and {WARM_UP} connections opened and closed)",
        idle_kib as f64 / 1024.0
    );
    if conns == 0 {
        return Ok(Memory {
            idle_kib,
            held: None,
        });
    }
    let held = Held::start(cg, client_bin, echo, conns)?;
    let open = held.first["open"].as_u64().unwrap_or(0);
    if open != conns {
        println!(
            "  only {open} of {conns} idle connections opened ({}): no per-connection figure",
            held.first["errors"]
        );
        held.release()?;
        settle(pid);
        return Ok(Memory {
            idle_kib,
            held: None,
        });
    }
    // The agent has echoed on every one; let its journal writer catch up with the
    // session events before reading.
    thread::sleep(Duration::from_secs(1));
    let held_kib = rss_kib(pid).context("the agent's VmRSS")?;
    println!(
        "  with {conns} idle connections: {:.1} MiB, {:.1} KiB per connection (opened in {} ms)",
        held_kib as f64 / 1024.0,
        (held_kib as f64 - idle_kib as f64) / conns as f64,
        held.first["elapsed_ms"]
    );
    let last = held.release()?;
    if last["alive"].as_u64() != Some(conns) {
        println!("  (not every held connection echoed once more before closing: {last})");
    }
    // Every session ended in the agent before the next phase measures.
    settle(pid);
    Ok(Memory {
        idle_kib,
        held: Some((conns, held_kib)),
    })
}

/// `nhi-testclient hold`: connections opened and held until its stdin closes.
struct Held {
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// Its first JSON line: `{"phase": "open", "open": N, ...}`.
    first: Value,
}

impl Held {
    fn start(cg: &TestCgroup, bin: &Path, echo: SocketAddr, conns: u64) -> anyhow::Result<Self> {
        let mut child = cg
            .command(bin)
            .args(["hold", &echo.to_string(), "--conns", &conns.to_string()])
            .args(["--threads", "64"])
            // A bound, should this process die without closing the client's stdin.
            .args(["--hold-secs", "600"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running nhi-testclient hold")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let first: Option<Value> = serde_json::from_str(line.trim()).ok();
        match (read, first) {
            (Ok(_), Some(first)) if first.get("error").is_none() => Ok(Self {
                child,
                stdout,
                first,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("nhi-testclient hold said: {line}")
            }
        }
    }

    /// Closes the client's stdin (it makes one more round trip on each connection, then
    /// closes them all) and returns its last JSON line.
    fn release(mut self) -> anyhow::Result<Value> {
        drop(self.child.stdin.take());
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        let _ = self.child.wait();
        serde_json::from_str(line.trim()).with_context(|| format!("nhi-testclient said: {line}"))
    }
}

/// VmRSS of a process, KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits (30 s at most) until the agent's open descriptors have held still for a second:
/// the connections just closed are closed in the agent too.
fn settle(pid: u32) {
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut still) = (fds(), 0);
    while still < 10 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let now = fds();
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
}

/// Raises this process's soft open-file limit to the hard one.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, correctly sized struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
