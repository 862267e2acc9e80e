//! `cargo xtask soak --minutes N`: mixed traffic through a real agent (release build, real
//! eBPF, real cgroups) for N minutes, one line of figures per minute, then a summary and
//! pass/fail bounds. Figures, not timed assertions: what fails the soak is a leak (RSS or
//! open fds growing after warm-up beyond the bounds below), a client that saw something
//! it did not expect, or a journal that does not verify after a clean stop.
//!
//! All at once, each from its own intercepted cgroup (workload):
//! - `soak-opaque`: `nhi-testclient many` every second (8 echo connections of 1 B to
//!   1 MiB, sizes in turn), and three long connections (`nhi-testclient stream`, a round
//!   trip every 200 ms, reconnecting every 5 minutes), to an echo server, `protocol = "tcp"`;
//! - `soak-pg`: pgbench -c 4, rate-limited, in one-minute runs cycling the simple,
//!   extended and prepared protocols (a transaction: SELECT + UPDATE by key), and psql every
//!   two seconds with two statements the policy refuses, one masked result and a
//!   transaction, `protocol = "postgres"`;
//! - `soak-http`: curl every second, five requests on one keep-alive connection (HTTP/1.1
//!   or h2 prior knowledge in turn: GET, POST, DELETE, a DELETE under `/admin` the policy
//!   refuses with 403, GET) against a local JSON app, `protocol = "http"`.
//!
//! The journal rotates small segments (`segment_max_bytes = 4MiB`) with checkpoints every
//! 5 s, so rotation, sealing and checkpointing run hundreds of times an hour.
use std::{
    fs,
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nhi_tests::TestCgroup;
use serde_json::Value;

use crate::{
    bench::{AgentProcess, TempDir},
    setup,
    util::{self, run},
};

/// RSS may grow by this much after warm-up (or `RSS_BOUND_FRACTION` of the RSS at the end
/// of warm-up, whichever is larger). The load is periodic and bounded: at most about 30
/// connections at once, each holding at most two 64 KiB relay buffers (~4 MiB if all were
/// busy at the same instant), and the SQLite writer's page cache is bounded by the segment
/// size (4 MiB) since every rotation opens a new file. One table fills for longer than
/// warm-up by design: process lineage keeps the last 4,096 exited processes of the
/// intercepted cgroups (`lineage::table`, argv included), reached after ~25 minutes at the
/// soak's ~2.5 execs/s, a few MiB. 8 MiB covers both; a leak passes it within the hour.
const RSS_BOUND_KIB: u64 = 8 * 1024;
const RSS_BOUND_FRACTION: f64 = 0.10;
/// Open fds once the clients have stopped may exceed those before the traffic began by
/// at most this many. Both are taken idle (no client connected, count stable for 3 s),
/// so sessions in flight do not blur them; the slack covers a file the agent opens
/// lazily at first use. Every session's sockets and splice pipes must be gone.
const FD_SLACK: usize = 4;
/// How often the agent is sampled (the per-minute line shows the latest sample).
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

pub fn soak(minutes: u64, warmup: Option<u64>, pg_tps: u32) -> anyhow::Result<()> {
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    if !util::is_root() {
        bail!("the soak attaches eBPF programs and creates cgroups: run it as root");
    }
    let warmup = warmup.unwrap_or((minutes / 5).clamp(1, 5)).min(minutes);
    setup::setup()?;
    run(Command::new(util::cargo()).args([
        "build",
        "--release",
        "-p",
        "nhi-agent",
        "-p",
        "nhi-tests",
        "--bins",
    ]))?;
    let root = util::root();
    let agent_bin = root.join("target/release/nhi-agent");
    let client_bin = root.join("target/release/nhi-testclient");

    let pg = nhi_tests::PgServer::start();
    let echo = nhi_tests::EchoServer::start("127.0.0.2:0").addr;
    let base = format!("nhi-soak-{}", std::process::id());
    let work = TempDir::create(std::env::temp_dir().join(&base))?;
    let app = JsonApp::start(&work.path().join("app.log"))?;
    let parent = TestCgroup::create(&base);
    let cgroups = Cgroups {
        opaque: parent.child("opaque"),
        pg: parent.child("pg"),
        http: parent.child("http"),
    };
    let pins = PathBuf::from("/sys/fs/bpf").join(&base);
    let journal_dir = work.path().join("journal");
    let journal = journal_dir.join("journal.db");
    let config = work.path().join("soak.toml");
    fs::write(
        &config,
        SoakConfig {
            journal: &journal,
            listen_port: nhi_tests::free_port(),
            pins: &pins,
            base: &base,
            echo: &echo.to_string(),
            pg_port: pg.port,
            app_port: app.port,
        }
        .render(),
    )?;
    prepare_database(&pg, work.path())?;

    let log = work.path().join("agent.log");
    let mut agent = AgentProcess::start(&agent_bin, &config, &log, &pins)?;
    let pid = agent.pid().context("the agent's pid")?;
    // Warnings from here on: the start helper's readiness probe (a connection to the
    // proxy port that no kernel redirected) is refused and logged before this.
    let log_from = fs::metadata(&log).map_or(0, |m| m.len());
    let fds_idle_before = idle_fds(pid, Duration::from_secs(20));
    println!(
        "nhi-agent soak: {minutes} min (warm-up {warmup} min), release build, agent pid {pid}; \
         opaque echo (8 short connections/s, 3 long), PostgreSQL (pgbench -c 4 -R {pg_tps}, psql \
         every 2 s), HTTP (curl every 1 s); segments of 4 MiB, checkpoints every 5 s"
    );
    println!("idle before traffic: {fds_idle_before} open fds\n");
    println!(
        "{:>6}  {:>9}  {:>17}  {:>7}  {:>5}  {:>16}  {:>8}  {:>9}  {:>13}",
        "time",
        "RSS MiB",
        "anon / file MiB",
        "threads",
        "fds",
        "journal MiB",
        "events/s",
        "sessions",
        "client errors"
    );

    let started = Instant::now();
    let deadline = started + Duration::from_secs(minutes * 60);
    // The clients go on a little past the last sample, so that it is taken under load.
    let clients_until = deadline + Duration::from_secs(10);
    let tallies = Tallies::default();
    let drive = Drive {
        cgroups: &cgroups,
        client_bin: &client_bin,
        echo: &echo.to_string(),
        pg_port: pg.port,
        pg_tps,
        app_port: app.port,
        work: work.path(),
        deadline: clients_until,
        tallies: &tallies,
    };
    let samples = thread::scope(|s| {
        drive.spawn_all(s);
        monitor(pid, &journal, started, deadline, &tallies)
    });
    println!();

    let fds_idle_after = idle_fds(pid, Duration::from_secs(60));
    let final_counts = journal_counts(&journal).unwrap_or_default();
    agent.stop();
    let verify = verify_journal(&agent_bin, &config, &journal_dir, work.path());
    let (warnings, first_warnings) = agent_warnings(&log, log_from);

    let report = Report {
        minutes,
        warmup,
        samples: &samples,
        fds_idle_before,
        fds_idle_after,
        events: final_counts.events,
        sessions: final_counts.sessions,
        journal_bytes: dir_size(&journal_dir),
        tallies: &tallies,
        verify: &verify,
        warnings,
        first_warnings: &first_warnings,
    };
    report.print()
}

/// The three workloads' cgroups (children of one removed at the end).
struct Cgroups {
    opaque: TestCgroup,
    pg: TestCgroup,
    http: TestCgroup,
}

/// The soak's agent configuration.
struct SoakConfig<'a> {
    journal: &'a Path,
    listen_port: u16,
    pins: &'a Path,
    base: &'a str,
    echo: &'a str,
    pg_port: u16,
    app_port: u16,
}

impl SoakConfig<'_> {
    fn render(&self) -> String {
        format!(
            r#"[agent]
mode = "enforce"
journal = "{journal}"
listen_port = {listen_port}
bpffs = "{pins}"
approvals_socket = "{approvals}"

[evidence]
segment_max_bytes = "4MiB"
checkpoint_interval = "5s"

[[workload]]
name = "soak-opaque"
cgroup = "{base}/opaque"

[[workload]]
name = "soak-pg"
cgroup = "{base}/pg"

[[workload]]
name = "soak-http"
cgroup = "{base}/http"

[[target]]
name = "echo"
address = "{echo}"
protocol = "tcp"

[[target]]
name = "pg"
address = "127.0.0.1:{pg_port}"
protocol = "postgres"

[[target]]
name = "api"
address = "127.0.0.1:{app_port}"
protocol = "http"

[[policy]]
name = "soak-sql"
target = "pg"
default = "allow"
unparsed = "deny"
record_results = "summary"

[[policy.rule]]
name = "no-drop"
verdict = "deny"
kinds = ["drop", "truncate"]

[[policy.rule]]
name = "no-unbounded-delete"
verdict = "deny"
kinds = ["delete", "update"]
without_where = true

[[mask]]
name = "pii"
target = "pg"
columns = ["email"]
detectors = ["credit_card"]
strategy = "redact"

[[policy]]
name = "soak-http"
target = "api"
default = "allow"

[[policy.rule]]
name = "no-admin-deletes"
verdict = "deny"
methods = ["DELETE"]
paths = ["/admin/**"]
"#,
            journal = self.journal.display(),
            listen_port = self.listen_port,
            pins = self.pins.display(),
            // Its own socket: another agent on the host (a test's, the installed
            // service) may hold the default one.
            approvals = self
                .journal
                .parent()
                .and_then(Path::parent)
                .unwrap_or(self.journal)
                .join("approvals.sock")
                .display(),
            base = self.base,
            echo = self.echo,
            pg_port = self.pg_port,
            app_port = self.app_port,
        )
    }
}

/// pgbench's tables (scale 1) and a small table with e-mail addresses for the mask,
/// created directly (the soak's own process is not intercepted).
fn prepare_database(pg: &nhi_tests::PgServer, work: &Path) -> anyhow::Result<()> {
    let out = Command::new("pgbench")
        .args(["-i", "-s", "1", "-q", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &pg.port.to_string(), "postgres"])
        .output()
        .context("running pgbench -i")?;
    if !out.status.success() {
        bail!("pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
    }
    pg.sql(
        "CREATE TABLE soak_customers (id int PRIMARY KEY, name text, email text);\
         INSERT INTO soak_customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Bob', 'bob@example.com');",
    );
    fs::write(work.join("pgbench.sql"), PGBENCH_SCRIPT)?;
    fs::write(work.join("psql.sql"), PSQL_SCRIPT)?;
    Ok(())
}

/// A transaction that reads and writes one row by key: no table grows during the soak.
const PGBENCH_SCRIPT: &str = "\\set aid random(1, 100000 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
END;
";

/// One psql session: two statements the policy refuses (the session goes on), a masked
/// result, a transaction.
const PSQL_SCRIPT: &str = "SELECT count(*) FROM pgbench_branches;
DROP TABLE pgbench_branches;
DELETE FROM pgbench_history;
SELECT email FROM soak_customers WHERE id = 1;
BEGIN;
UPDATE soak_customers SET name = name WHERE id = 2;
COMMIT;
SELECT 'done';
";
/// What the script prints with `-q -At` when everything went as expected.
const PSQL_EXPECTED_OUT: &str = "1\n[redacted]\ndone\n";

/// A JSON app on Python's http.server (HTTP/1.1, keep-alive, a thread per connection):
/// answers GET, POST and DELETE with `{"method", "path", "n"}`.
const APP: &str = r#"
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    served = 0
    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        H.served += 1
        body = json.dumps({"method": self.command, "path": self.path, "n": H.served}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_DELETE = answer
    def log_message(self, *a):
        pass

class S(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// The JSON app, killed on drop.
struct JsonApp {
    child: Child,
    port: u16,
}

impl JsonApp {
    fn start(log: &Path) -> anyhow::Result<Self> {
        let port = nhi_tests::free_port();
        let child = Command::new("python3")
            .arg("-c")
            .arg(APP)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log)?)
            .spawn()
            .context("starting the JSON app (python3)")?;
        let mut this = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = this.child.try_wait() {
                bail!(
                    "the JSON app exited ({status}): {}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("the JSON app did not listen within 20 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(this)
    }
}

impl Drop for JsonApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one kind of client did: operations that went as expected, and the others.
struct Tally {
    name: &'static str,
    unit: &'static str,
    ok: AtomicU64,
    errors: AtomicU64,
    /// The first few unexpected outcomes, as the client reported them.
    first_errors: Mutex<Vec<String>>,
}

impl Tally {
    const fn new(name: &'static str, unit: &'static str) -> Self {
        Self {
            name,
            unit,
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_errors: Mutex::new(Vec::new()),
        }
    }

    fn ok(&self, n: u64) {
        self.ok.fetch_add(n, Ordering::Relaxed);
    }

    fn fail(&self, n: u64, what: impl Into<String>) {
        self.errors.fetch_add(n, Ordering::Relaxed);
        let mut first = self.first_errors.lock().unwrap();
        if first.len() < 5 {
            first.push(what.into());
        }
    }
}

struct Tallies {
    opaque_short: Tally,
    opaque_long: Tally,
    pgbench: Tally,
    psql: Tally,
    http: Tally,
}

impl Default for Tallies {
    fn default() -> Self {
        Self {
            opaque_short: Tally::new("opaque short connections", "connections"),
            opaque_long: Tally::new("opaque long connections", "round trips"),
            pgbench: Tally::new("pgbench", "transactions"),
            psql: Tally::new("psql sessions", "sessions"),
            http: Tally::new("curl", "requests"),
        }
    }
}

impl Tallies {
    fn all(&self) -> [&Tally; 5] {
        [
            &self.opaque_short,
            &self.opaque_long,
            &self.pgbench,
            &self.psql,
            &self.http,
        ]
    }

    fn errors(&self) -> u64 {
        self.all()
            .iter()
            .map(|t| t.errors.load(Ordering::Relaxed))
            .sum()
    }
}

/// The clients: each loop runs in its own thread until the deadline, starting processes
/// in the workloads' cgroups.
struct Drive<'a> {
    cgroups: &'a Cgroups,
    client_bin: &'a Path,
    echo: &'a str,
    pg_port: u16,
    pg_tps: u32,
    app_port: u16,
    work: &'a Path,
    deadline: Instant,
    tallies: &'a Tallies,
}

impl<'a> Drive<'a> {
    fn spawn_all<'s>(&'s self, s: &'s thread::Scope<'s, '_>) {
        s.spawn(|| self.opaque_short());
        for i in 0..3u64 {
            s.spawn(move || self.opaque_long(i));
        }
        s.spawn(|| self.pgbench());
        s.spawn(|| self.psql());
        s.spawn(|| self.http());
    }

    /// Sleeps until `next` (then moves it on by `period`); false once the deadline is
    /// this close.
    fn pace(&self, next: &mut Instant, period: Duration) -> bool {
        let now = Instant::now();
        if *next > now {
            thread::sleep(*next - now);
        }
        *next = (*next + period).max(Instant::now());
        Instant::now() + Duration::from_secs(1) < self.deadline
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Runs the test client in the opaque workload's cgroup; its JSON answer or its error.
    fn client(&self, args: &[&str]) -> Result<Value, String> {
        let out = self
            .cgroups
            .opaque
            .command(self.client_bin)
            .args(args)
            .output()
            .map_err(|e| format!("running nhi-testclient: {e}"))?;
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "nhi-testclient {args:?} said ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        match v.get("error") {
            Some(e) => Err(format!("nhi-testclient {}: {e}", args[0])),
            None => Ok(v),
        }
    }

    fn opaque_short(&self) {
        const SIZES: [u64; 5] = [1, 300, 4096, 65536, 1 << 20];
        const CONNS: u64 = 8;
        let tally = &self.tallies.opaque_short;
        let mut next = Instant::now();
        let mut round = 0u64;
        while self.pace(&mut next, Duration::from_secs(1)) {
            let bytes = SIZES[(round % SIZES.len() as u64) as usize].to_string();
            round += 1;
            let (conns, seed) = (CONNS.to_string(), round.to_string());
            let args = [
                "many", self.echo, "--conns", &conns, "--bytes", &bytes, "--seed", &seed,
            ];
            match self.client(&args) {
                Ok(v) => {
                    let ok = v["ok"].as_u64().unwrap_or(0);
                    tally.ok(ok);
                    if ok < CONNS {
                        tally.fail(CONNS - ok, format!("{bytes} B echoes: {}", v["errors"]));
                    }
                }
                Err(e) => tally.fail(CONNS, e),
            }
        }
    }

    /// One long connection at a time, reconnecting every 5 minutes.
    fn opaque_long(&self, i: u64) {
        let tally = &self.tallies.opaque_long;
        let bytes = [512, 4096, 32768][i as usize % 3].to_string();
        let seed = (1000 + i).to_string();
        while self.remaining() > Duration::from_secs(10) {
            let secs = (self.remaining().as_secs() - 5).min(300).to_string();
            let args = [
                "stream",
                self.echo,
                "--seconds",
                &secs,
                "--bytes",
                &bytes,
                "--pause-ms",
                "200",
                "--seed",
                &seed,
            ];
            match self.client(&args) {
                Ok(v) => tally.ok(v["rounds"].as_u64().unwrap_or(0)),
                Err(e) => {
                    tally.fail(1, e);
                    thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// pgbench -c 4 at a fixed rate, one-minute runs cycling the query protocols.
    fn pgbench(&self) {
        const MODES: [&str; 3] = ["simple", "extended", "prepared"];
        let tally = &self.tallies.pgbench;
        let script = self.work.join("pgbench.sql");
        let mut run = 0usize;
        while self.remaining() > Duration::from_secs(10) {
            let secs = (self.remaining().as_secs() - 5).min(60).to_string();
            let mode = MODES[run % MODES.len()];
            run += 1;
            let out = self
                .cgroups
                .pg
                .command("pgbench")
                .args(["-n", "-c", "4", "-j", "2", "-M", mode, "-T", &secs])
                .args(["-R", &self.pg_tps.to_string(), "-f"])
                .arg(&script)
                .args(["-h", "127.0.0.1", "-p", &self.pg_port.to_string()])
                .args(["-U", "postgres", "postgres"])
                .output();
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    tally.fail(1, format!("running pgbench: {e}"));
                    thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let report = String::from_utf8_lossy(&out.stdout);
            let number = |prefix: &str| {
                report
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(prefix))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
            };
            let done = number("number of transactions actually processed: ");
            let failed = number("number of failed transactions: ").unwrap_or(0);
            match done {
                Some(done) if out.status.success() && failed == 0 => tally.ok(done),
                _ => {
                    tally.ok(done.unwrap_or(0));
                    tally.fail(
                        failed.max(1),
                        format!(
                            "pgbench -M {mode} ({}): {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr)
                                .lines()
                                .take(5)
                                .collect::<Vec<_>>()
                                .join(" / ")
                        ),
                    );
                    thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// psql every 2 s: exactly the two refusals on stderr, the masked value on stdout.
    fn psql(&self) {
        let tally = &self.tallies.psql;
        let script = self.work.join("psql.sql");
        let mut next = Instant::now();
        while self.pace(&mut next, Duration::from_secs(2)) {
            let out = self
                .cgroups
                .pg
                .command("psql")
                .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=0"])
                .args(["-h", "127.0.0.1", "-p", &self.pg_port.to_string()])
                .args(["-U", "postgres", "-d", "postgres", "-f"])
                .arg(&script)
                .output();
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    tally.fail(1, format!("running psql: {e}"));
                    continue;
                }
            };
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
            let refused_as_expected = errors.len() == 2
                && errors[0].contains("no-drop")
                && errors[1].contains("no-unbounded-delete");
            if out.status.success() && stdout == PSQL_EXPECTED_OUT && refused_as_expected {
                tally.ok(1);
            } else {
                tally.fail(
                    1,
                    format!(
                        "psql ({}): stdout {stdout:?}, stderr {stderr:?}",
                        out.status
                    ),
                );
            }
        }
    }

    /// curl every second: five requests on one connection, HTTP/1.1 and h2 in turn.
    fn http(&self) {
        let tally = &self.tallies.http;
        let base = format!("http://127.0.0.1:{}", self.app_port);
        let mut next = Instant::now();
        let mut n = 0u64;
        while self.pace(&mut next, Duration::from_secs(1)) {
            n += 1;
            let requests: [(&str, String, u16); 5] = [
                ("GET", format!("{base}/items/{n}"), 200),
                ("POST", format!("{base}/items"), 200),
                ("DELETE", format!("{base}/items/{n}"), 200),
                ("DELETE", format!("{base}/admin/items/{n}"), 403),
                ("GET", format!("{base}/items?page={n}"), 200),
            ];
            let h2 = n.is_multiple_of(2);
            let mut cmd = self.cgroups.http.command("curl");
            if h2 {
                cmd.arg("--http2-prior-knowledge");
            }
            for (i, (method, url, _)) in requests.iter().enumerate() {
                if i > 0 {
                    cmd.arg("--next");
                }
                cmd.args(["-sS", "--max-time", "30", "-o", "/dev/null"])
                    .args(["-w", "%{http_code}\\n", "-X", method])
                    .args(["-H", "authorization: Bearer soak-not-a-secret"]);
                if *method == "POST" {
                    cmd.args(["-H", "content-type: application/json"])
                        .args(["-d", &format!("{{\"n\":{n}}}")]);
                }
                cmd.arg(url);
            }
            let out = match cmd.output() {
                Ok(out) => out,
                Err(e) => {
                    tally.fail(requests.len() as u64, format!("running curl: {e}"));
                    continue;
                }
            };
            let codes: Vec<u16> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            let expected: Vec<u16> = requests.iter().map(|r| r.2).collect();
            let good = codes.iter().zip(&expected).filter(|(a, b)| a == b).count() as u64;
            tally.ok(good);
            if codes != expected || !out.status.success() {
                tally.fail(
                    requests.len() as u64 - good,
                    format!(
                        "curl{} ({}): statuses {codes:?}, expected {expected:?}: {}",
                        if h2 { " --http2-prior-knowledge" } else { "" },
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                );
            }
        }
    }
}

/// One look at the agent and its journal.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    /// RssAnon and RssFile: heap growth against pages of the binary and libraries
    /// touched for the first time (a code path first run late steps RSS once).
    rss_anon_kib: u64,
    rss_file_kib: u64,
    threads: u64,
    fds: usize,
    journal_bytes: u64,
    segments: usize,
    events: u64,
    sessions: u64,
    client_errors: u64,
}

/// Samples every `SAMPLE_EVERY` until the deadline and prints a line each minute; returns
/// every sample.
fn monitor(
    pid: u32,
    journal: &Path,
    started: Instant,
    deadline: Instant,
    tallies: &Tallies,
) -> Vec<Sample> {
    let dir = journal.parent().expect("the journal's directory");
    let mut samples = Vec::new();
    let mut counts = JournalCounts::default();
    let mut printed_at = (Duration::ZERO, 0u64);
    let mut next = started + SAMPLE_EVERY;
    while next <= deadline + Duration::from_millis(500) {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        next += SAMPLE_EVERY;
        // The ids keep counting across segments; a live file just rotated may hold none.
        if let Some(now) = journal_counts(journal) {
            counts.events = counts.events.max(now.events);
            counts.sessions = counts.sessions.max(now.sessions);
        }
        let sample = Sample {
            at: started.elapsed(),
            rss_kib: status_field(pid, "VmRSS:").unwrap_or(0),
            rss_anon_kib: status_field(pid, "RssAnon:").unwrap_or(0),
            rss_file_kib: status_field(pid, "RssFile:").unwrap_or(0),
            threads: status_field(pid, "Threads:").unwrap_or(0),
            fds: open_fds(pid).unwrap_or(0),
            journal_bytes: dir_size(dir),
            segments: segment_count(dir),
            events: counts.events,
            sessions: counts.sessions,
            client_errors: tallies.errors(),
        };
        samples.push(sample);
        let minute = sample.at.as_secs() / 60;
        if minute > printed_at.0.as_secs() / 60 {
            let span = (sample.at - printed_at.0).as_secs_f64();
            let rate = (sample.events - printed_at.1) as f64 / span;
            println!("{}", minute_line(&sample, rate));
            printed_at = (sample.at, sample.events);
        }
    }
    samples
}

fn minute_line(s: &Sample, events_per_sec: f64) -> String {
    let secs = s.at.as_secs();
    format!(
        "{:>3}:{:02}  {:>9.1}  {:>17}  {:>7}  {:>5}  {:>7.1} ({:>3} seg)  {:>8.0}  {:>9}  {:>13}",
        secs / 60,
        secs % 60,
        s.rss_kib as f64 / 1024.0,
        format!(
            "{:.1} / {:.1}",
            s.rss_anon_kib as f64 / 1024.0,
            s.rss_file_kib as f64 / 1024.0
        ),
        s.threads,
        s.fds,
        s.journal_bytes as f64 / 1048576.0,
        s.segments,
        events_per_sec,
        s.sessions,
        s.client_errors
    )
}

/// A number from /proc/PID/status (`VmRSS:`, `RssAnon:`, ... in KiB; `Threads:`).
fn status_field(pid: u32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn open_fds(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The open fd count once it has held still for 3 s (or after `limit`, the last count).
fn idle_fds(pid: u32, limit: Duration) -> usize {
    let until = Instant::now() + limit;
    let mut last = open_fds(pid).unwrap_or(0);
    let mut still = 0;
    while still < 3 && Instant::now() < until {
        thread::sleep(Duration::from_secs(1));
        let now = open_fds(pid).unwrap_or(0);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    last
}

/// Bytes of every file under `dir` (live file, WAL, pre-log, segments, seals, checkpoints).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

fn segment_count(dir: &Path) -> usize {
    fs::read_dir(dir.join("segments"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "db"))
                .count()
        })
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, Default)]
struct JournalCounts {
    events: u64,
    sessions: u64,
}

/// The highest event and session ids in the live file: ids continue across segments, so
/// they count everything journaled so far (what the writer has committed).
fn journal_counts(journal: &Path) -> Option<JournalCounts> {
    let out = util::output(Command::new("sqlite3").arg("-readonly").arg(journal).arg(
        "select coalesce(max(id), 0) from events; select coalesce(max(id), 0) from sessions;",
    ))?;
    let mut numbers = out.lines().filter_map(|l| l.trim().parse::<u64>().ok());
    Some(JournalCounts {
        events: numbers.next()?,
        sessions: numbers.next()?,
    })
}

/// `nhi-agent verify` on the stopped agent's journal directory with the host's public
/// key: (passed, what it said).
fn verify_journal(agent_bin: &Path, config: &Path, journal_dir: &Path, work: &Path) -> Verify {
    let key = work.join("host.pub");
    let exported = Command::new(agent_bin)
        .args(["key", "export-public", "--config"])
        .arg(config)
        .arg("--out")
        .arg(&key)
        .output();
    match exported {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Verify {
                passed: false,
                summary: format!(
                    "key export-public failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
        Err(e) => {
            return Verify {
                passed: false,
                summary: format!("key export-public: {e}"),
            }
        }
    }
    match Command::new(agent_bin)
        .arg("verify")
        .arg(journal_dir)
        .arg("--key")
        .arg(&key)
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let lines: Vec<&str> = text.lines().collect();
            // The journal line and the verdict; one line per segment in between.
            let mut summary: Vec<&str> = lines.iter().take(1).copied().collect();
            summary.extend(lines.iter().skip(1).rev().take(1).copied());
            let stderr = String::from_utf8_lossy(&out.stderr);
            Verify {
                passed: out.status.success(),
                summary: format!(
                    "exit {}: {}{}",
                    out.status.code().unwrap_or(-1),
                    summary.join(" / "),
                    if stderr.trim().is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", stderr.trim())
                    }
                ),
            }
        }
        Err(e) => Verify {
            passed: false,
            summary: format!("running nhi-agent verify: {e}"),
        },
    }
}

struct Verify {
    passed: bool,
    summary: String,
}

/// Warnings and errors the agent logged (it runs at `warn`) from byte `from` of its log:
/// their count and the first few distinct messages (timestamps cut).
fn agent_warnings(log: &Path, from: u64) -> (usize, Vec<String>) {
    let Ok(mut file) = fs::File::open(log) else {
        return (0, Vec::new());
    };
    if file.seek(SeekFrom::Start(from)).is_err() {
        return (0, Vec::new());
    }
    let mut count = 0;
    let mut first = Vec::new();
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        if !(line.contains("WARN") || line.contains("ERROR")) {
            continue;
        }
        count += 1;
        // `<time>  WARN <message> <fields>`: from the level on.
        let message = ["WARN", "ERROR"]
            .iter()
            .find_map(|level| line.find(level).map(|i| line[i..].to_string()))
            .unwrap_or(line);
        if first.len() < 5 && !first.contains(&message) {
            first.push(message);
        }
    }
    (count, first)
}

/// Least-squares slope of `(x, y)` points, per unit of x; 0 with fewer than two.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// The end of the run: figures, bounds, verdict.
struct Report<'a> {
    minutes: u64,
    warmup: u64,
    samples: &'a [Sample],
    fds_idle_before: usize,
    fds_idle_after: usize,
    events: u64,
    sessions: u64,
    journal_bytes: u64,
    tallies: &'a Tallies,
    verify: &'a Verify,
    warnings: usize,
    first_warnings: &'a [String],
}

/// What the RSS samples after warm-up say.
#[derive(Debug, PartialEq)]
struct RssTrend {
    /// The first sample at or after the end of warm-up, and the last one (KiB).
    after_warmup_kib: u64,
    end_kib: u64,
    /// Least squares over the samples after warm-up, MiB per hour.
    slope_mib_per_hour: f64,
    bound_kib: u64,
}

impl RssTrend {
    fn of(samples: &[Sample], warmup: Duration) -> Option<Self> {
        let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= warmup).collect();
        let (first, last) = (after.first()?, after.last()?);
        let points: Vec<(f64, f64)> = after
            .iter()
            .map(|s| (s.at.as_secs_f64() / 3600.0, s.rss_kib as f64 / 1024.0))
            .collect();
        Some(Self {
            after_warmup_kib: first.rss_kib,
            end_kib: last.rss_kib,
            slope_mib_per_hour: slope(&points),
            bound_kib: RSS_BOUND_KIB.max((first.rss_kib as f64 * RSS_BOUND_FRACTION) as u64),
        })
    }

    fn passed(&self) -> bool {
        self.end_kib <= self.after_warmup_kib + self.bound_kib
    }
}

impl Report<'_> {
    fn print(&self) -> anyhow::Result<()> {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let mut failures = Vec::new();
        println!(
            "summary ({} min, warm-up {} min):",
            self.minutes, self.warmup
        );
        match RssTrend::of(self.samples, Duration::from_secs(self.warmup * 60)) {
            Some(t) => {
                println!(
                    "  RSS: {:.1} MiB after warm-up, {:.1} MiB at the end ({:+.1} MiB), slope {:+.1} MiB/h; \
                     bound +{:.1} MiB after warm-up: {}",
                    mib(t.after_warmup_kib),
                    mib(t.end_kib),
                    mib(t.end_kib) - mib(t.after_warmup_kib),
                    t.slope_mib_per_hour,
                    mib(t.bound_kib),
                    if t.passed() { "ok" } else { "EXCEEDED" }
                );
                if !t.passed() {
                    failures.push("RSS grew beyond its bound after warm-up");
                }
            }
            None => println!("  RSS: no sample after warm-up"),
        }
        let warm = Duration::from_secs(self.warmup * 60);
        let load_fds = self.samples.iter().filter(|s| s.at >= warm).map(|s| s.fds);
        let (lo, hi) = load_fds.fold((usize::MAX, 0), |(lo, hi), f| (lo.min(f), hi.max(f)));
        let fds_ok = self.fds_idle_after <= self.fds_idle_before + FD_SLACK;
        println!(
            "  open fds: {} idle before traffic, {} idle after it; under load after warm-up {}..{}; \
             bound idle after <= idle before + {FD_SLACK}: {}",
            self.fds_idle_before,
            self.fds_idle_after,
            if hi == 0 { 0 } else { lo },
            hi,
            if fds_ok { "ok" } else { "EXCEEDED" }
        );
        if !fds_ok {
            failures.push("open fds grew");
        }
        let secs = self.samples.last().map_or(1.0, |s| s.at.as_secs_f64());
        println!(
            "  journal: {} events ({:.0}/s on average), {} sessions, {:.1} MiB on disk in {} sealed segments + the live file",
            self.events,
            self.events as f64 / secs,
            self.sessions,
            self.journal_bytes as f64 / 1048576.0,
            self.samples.last().map_or(0, |s| s.segments),
        );
        for t in self.tallies.all() {
            println!(
                "  {}: {} {} as expected, {} unexpected",
                t.name,
                t.ok.load(Ordering::Relaxed),
                t.unit,
                t.errors.load(Ordering::Relaxed)
            );
            for e in t.first_errors.lock().unwrap().iter() {
                println!("      {e}");
            }
        }
        if self.tallies.errors() > 0 {
            failures.push("clients saw unexpected errors");
        }
        println!(
            "  agent log: {} warnings/errors{}",
            self.warnings,
            if self.first_warnings.is_empty() {
                String::new()
            } else {
                format!(", first: {}", self.first_warnings.join(" | "))
            }
        );
        println!(
            "  verify after a clean stop: {} ({})",
            if self.verify.passed { "ok" } else { "FAILED" },
            self.verify.summary
        );
        if !self.verify.passed {
            failures.push("the journal does not verify");
        }
        if failures.is_empty() {
            println!("soak: PASS");
            Ok(())
        } else {
            println!("soak: FAIL ({})", failures.join("; "));
            bail!("soak failed: {}", failures.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(min: u64, rss_mib: u64) -> Sample {
        Sample {
            at: Duration::from_secs(min * 60),
            rss_kib: rss_mib * 1024,
            ..Sample::default()
        }
    }

    #[test]
    fn slope_is_least_squares() {
        assert_eq!(slope(&[]), 0.0);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-12);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 3.0)]), 0.0);
    }

    #[test]
    fn rss_trend_starts_after_warmup() {
        // Growth during warm-up does not count; growth after it does.
        let flat = [sample(0, 10), sample(1, 30), sample(2, 40), sample(10, 41)];
        let t = RssTrend::of(&flat, Duration::from_secs(120)).unwrap();
        assert_eq!((t.after_warmup_kib, t.end_kib), (40 * 1024, 41 * 1024));
        assert!(t.passed());
        assert!((t.slope_mib_per_hour - 7.5).abs() < 1e-9, "{t:?}");

        let leak = [sample(2, 40), sample(6, 46), sample(10, 52)];
        let t = RssTrend::of(&leak, Duration::from_secs(120)).unwrap();
        assert_eq!(t.bound_kib, RSS_BOUND_KIB);
        assert!(!t.passed());
        assert!(RssTrend::of(&leak, Duration::from_secs(3600)).is_none());
    }

    #[test]
    fn rss_bound_scales_with_a_large_agent() {
        let t = RssTrend::of(&[sample(2, 400), sample(3, 430)], Duration::ZERO).unwrap();
        assert_eq!(t.bound_kib, 40 * 1024);
        assert!(t.passed());
    }

    #[test]
    fn config_names_every_workload_and_target() {
        let text = SoakConfig {
            journal: Path::new("/tmp/s/journal/journal.db"),
            listen_port: 15999,
            pins: Path::new("/sys/fs/bpf/s"),
            base: "nhi-soak-1",
            echo: "127.0.0.2:7",
            pg_port: 5433,
            app_port: 8080,
        }
        .render();
        for needle in [
            "cgroup = \"nhi-soak-1/opaque\"",
            "cgroup = \"nhi-soak-1/pg\"",
            "cgroup = \"nhi-soak-1/http\"",
            "address = \"127.0.0.2:7\"\nprotocol = \"tcp\"",
            "address = \"127.0.0.1:5433\"\nprotocol = \"postgres\"",
            "address = \"127.0.0.1:8080\"\nprotocol = \"http\"",
            "segment_max_bytes = \"4MiB\"",
            // Not the default socket another agent on the host may hold.
            "approvals_socket = \"/tmp/s/approvals.sock\"",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
    }
}
