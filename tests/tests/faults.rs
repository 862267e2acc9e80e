//! Proofs under faults (issue 11, section 3): the agent killed with SIGKILL under write
//! load, the journal's filesystem full, overload (thousands of connections, a client that
//! does not read, a workload that connects in a loop), and upstreams and clients that
//! stall, reset or half-close. Real cgroups, real eBPF, real PostgreSQL and psql; every
//! wait is on an event (server state, journal rows, log lines), deadlines only bound
//! failures.
use std::{
    collections::HashSet,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use nhi_tests::*;

// ---------------------------------------------------------------- helpers

fn workload(name: &str, cg: &TestCgroup) -> String {
    format!(
        "[[workload]]\nname = \"{name}\"\ncgroup = \"{}\"\n\n",
        cg.rel()
    )
}

fn target(name: &str, addr: SocketAddr, protocol: &str) -> String {
    format!("[[target]]\nname = \"{name}\"\naddress = \"{addr}\"\nprotocol = \"{protocol}\"\n\n")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// psql in `cg` against 127.0.0.1:`port`.
fn psql(cg: &TestCgroup, port: u16) -> Command {
    let mut cmd = cg.command("psql");
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .env("PGCONNECT_TIMEOUT", "10");
    cmd
}

/// Polls `f` until it returns `Some`, failing with `what` after `secs` seconds.
fn wait_for<T>(secs: u64, what: impl Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {}", what());
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for a child to exit (bounded), killing it if it does not.
fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child {} did not exit within {secs} s", child.id());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `nhi-agent events DIR --json [ARGS]` over the agent's journal directory (live file and
/// sealed segments).
fn journal_events(agent: &Agent, args: &[&str]) -> Vec<serde_json::Value> {
    let dir = agent.journal.parent().expect("journal dir");
    let mut argv = vec!["events", dir.to_str().expect("utf-8"), "--json"];
    argv.extend_from_slice(args);
    let out = agent.cli(&argv);
    assert!(out.status.success(), "events: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l}: {e}")))
        .collect()
}

/// The texts of every journaled statement.
fn statement_texts(agent: &Agent) -> Vec<String> {
    journal_events(agent, &["--kind", "statement"])
        .into_iter()
        .filter_map(|e| e["data"]["text"].as_str().map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------- kill -9

/// Four psql clients insert unique rows through a `postgres` target; the agent is killed
/// with SIGKILL while they do. After the restart, every row the server committed has its
/// INSERT in the journal (matched by its values: record before forward, and the pre-log
/// survives the kill), and the journal verifies.
#[test]
fn kill_9_under_write_load_loses_no_statement_the_server_committed() {
    privileged!("kill_9_under_write_load_loses_no_statement_the_server_committed");
    let pg = PgServer::start();
    pg.sql("create table t (client int, n int, primary key (client, n))");
    let cg = TestCgroup::create(&format!("{}/writer", unique("nhi-test")));
    let mut agent = Agent::start(&format!(
        "{}{}",
        workload("writer", &cg),
        target("db", pg.addr(), "postgres")
    ));
    const CLIENTS: usize = 4;
    const ROWS: usize = 5000;
    let scripts = agent.dir.path().join("scripts");
    fs::create_dir_all(&scripts).expect("mkdir");
    let mut clients: Vec<Child> = (0..CLIENTS)
        .map(|c| {
            let path = scripts.join(format!("c{c}.sql"));
            let body: String = (0..ROWS)
                .map(|n| format!("insert into t values ({c}, {n});\n"))
                .collect();
            fs::write(&path, body).expect("script");
            psql(&cg, pg.port)
                .arg("-q")
                .arg("-f")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("psql")
        })
        .collect();
    // Kill the agent while every client is writing: once each has committed rows.
    wait_for(
        60,
        || {
            format!(
                "rows: {}",
                pg.sql("select client, count(*) from t group by 1")
            )
        },
        || {
            let busy = pg.sql(
                "select count(*) from (select client from t group by 1 having count(*) >= 200) c",
            );
            (busy.trim() == CLIENTS.to_string()).then_some(())
        },
    );
    agent.kill9();
    for c in &mut clients {
        // Their connections die with the agent; fail-closed refuses a reconnect.
        let status = wait_exit(c, 30);
        assert!(
            !status.success(),
            "a client finished before the kill: raise ROWS"
        );
    }
    let committed = pg.sql("select client, n from t order by 1, 2");
    let rows: Vec<(u32, u32)> = committed
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(c, n)| (c.parse().unwrap(), n.parse().unwrap()))
        .collect();
    assert!(rows.len() >= CLIENTS * 200);
    assert!(rows.len() < CLIENTS * ROWS);

    agent.spawn();
    let journaled: HashSet<String> = statement_texts(&agent).into_iter().collect();
    let missing: Vec<&(u32, u32)> = rows
        .iter()
        .filter(|(c, n)| !journaled.contains(&format!("insert into t values ({c}, {n});")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} committed rows have no journaled statement, e.g. {:?} (journaled: {:?})\nlog:\n{}",
        missing.len(),
        rows.len(),
        &missing[..missing.len().min(5)],
        journaled.iter().take(5).collect::<Vec<_>>(),
        agent.log_text()
    );
    // The killed agent's sessions were closed by the restart, and say so.
    let sessions = agent.sessions();
    assert_eq!(sessions.len(), CLIENTS, "{sessions:#?}");
    assert!(
        sessions.iter().all(|s| !s["ended_at"].is_null()),
        "{sessions:#?}"
    );
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log_text());
    agent.assert_verifies();
}

// ---------------------------------------------------------------- disk full

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nhi-smallfs-")
            .tempdir()
            .expect("tempdir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount tmpfs: {}", text(&out));
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem with one file until the kernel says ENOSPC.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = fs::File::create(&path).expect("filler");
        let block = vec![0xa5u8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the filesystem: {e}"),
            }
        }
        let _ = f.sync_all();
        path
    }

    /// Bytes free, as statvfs says.
    fn available(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// An interactive psql whose statements are sent one by one; answers are read from its
/// stdout (one line per result with `-At`), errors from its stderr after it exits.
struct Interactive {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Interactive {
    fn start(cg: &TestCgroup, port: u16) -> Self {
        let mut child = psql(cg, port)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one statement and returns its one-line answer (None: psql ended).
    fn query(&mut self, sql: &str) -> Option<String> {
        writeln!(self.stdin, "{sql}").ok()?;
        self.stdin.flush().ok()?;
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim().to_string()),
        }
    }

    /// Waits for psql to exit; returns its stderr.
    fn finish(mut self) -> String {
        drop(self.stdin);
        wait_exit(&mut self.child, 30);
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }
}

/// The journal's filesystem fills up. New statements (in a session opened before, and
/// in new sessions) are refused with a PostgreSQL error that says the journal cannot
/// record them, and the server never sees them; when space returns the agent records
/// again by itself (new sessions and statements work without a restart), and the
/// journal, with everything recorded before, verifies.
#[test]
fn disk_full_refuses_statements_with_an_error_that_says_so_and_recovers_by_itself() {
    privileged!("disk_full_refuses_statements_with_an_error_that_says_so_and_recovers_by_itself");
    let pg = PgServer::start();
    pg.sql("create table t (v text primary key)");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let echo = EchoServer::start("127.0.0.2:0");
    let small = SmallFs::mount("16m");
    let mut agent = Agent::configure_journal(
        &format!(
            "{}{}{}",
            workload("bot", &cg),
            target("db", pg.addr(), "postgres"),
            target("echo", echo.addr, "tcp")
        ),
        "",
        &[],
        Some(&small.path().join("journal.db")),
    );
    agent.spawn();
    // Statements larger than a page: they can never fit in the slack of the pre-log's
    // last allocated page, so "full" is full for them.
    let pad = "x".repeat(8192);
    let insert = |tag: &str| format!("insert into t values ('{tag}-{pad}') returning 'ok'");

    let out = psql(&cg, pg.port)
        .args(["-c", &insert("before-1")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut open = Interactive::start(&cg, pg.port);
    assert_eq!(open.query("select 'ready';").as_deref(), Some("ready"));

    let filler = small.fill();
    assert!(
        small.available() < 8192,
        "{} bytes still free",
        small.available()
    );

    // A session that was open: its next statement is refused, the session ends.
    assert_eq!(open.query(&format!("{};", insert("during-open"))), None);
    let err = open.finish();
    assert!(
        err.contains("journal cannot record"),
        "the open session's error says why: {err}"
    );
    // New sessions: refused with an error that says why.
    for i in 0..3 {
        let out = psql(&cg, pg.port)
            .args(["-c", &insert(&format!("during-new-{i}"))])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("journal cannot record"),
            "a new session's error says why: {}\nlog:\n{}",
            text(&out),
            agent.log_text()
        );
    }
    // Opaque TCP: refused (reset), nothing reaches the server.
    let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "100000"]);
    assert!(
        r["error"].is_string(),
        "refused while the disk is full: {r}"
    );
    assert!(
        echo.peers().is_empty(),
        "nothing forwarded: {:?}",
        echo.peers()
    );
    // Nothing was executed unjournaled.
    assert_eq!(
        pg.sql("select count(*) from t where v like 'during%'")
            .trim(),
        "0"
    );

    // Space returns: the agent records again, with no restart.
    fs::remove_file(&filler).expect("remove filler");
    let out = psql(&cg, pg.port)
        .args(["-c", &insert("after-1")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "after space returned: {}\n{}",
        text(&out),
        agent.log_text()
    );
    let out = psql(&cg, pg.port)
        .args(["-c", &insert("after-2")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "100000"]);
    assert_eq!(r["identical"], true, "{r}");
    assert_eq!(
        pg.sql("select count(*) from t where v like 'after%' or v like 'before%'")
            .trim(),
        "3"
    );
    let texts = statement_texts(&agent);
    for tag in ["before-1", "after-1", "after-2"] {
        assert!(
            texts.iter().any(|t| t.contains(&format!("'{tag}-x"))),
            "{tag} journaled"
        );
    }
    assert!(
        !texts.iter().any(|t| t.contains("'during")),
        "refused statements are not journaled as executed"
    );
    // Every session, those refused during the outage too, has ended with its reason.
    let sessions = wait_for(
        30,
        || format!("{:#?}", agent.sessions()),
        || {
            let s = agent.sessions();
            s.iter().all(|s| !s["ended_at"].is_null()).then_some(s)
        },
    );
    // The session the outage cut: its end, recorded once space returned, says why.
    let cut: Vec<&serde_json::Value> = sessions
        .iter()
        .filter(|s| {
            s["close_reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("journal failure") && r.contains("No space left"))
        })
        .collect();
    assert_eq!(cut.len(), 1, "{sessions:#?}");
    assert_eq!(
        sessions.len(),
        5,
        "before-1, the open one, after-1, after-2, echo: {sessions:#?}"
    );
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log_text());
    agent.assert_verifies();
}

// ---------------------------------------------------------------- overload

/// The agent's resident set size in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A test client in `cg` that answers with a first JSON line once it is in position
/// (connections open, writes blocked), then waits until [`Held::release`].
struct Held {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    pub first: serde_json::Value,
}

impl Held {
    fn start(cg: &TestCgroup, args: &[&str]) -> Self {
        let mut child = cg
            .command(client_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nhi-testclient");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("first line");
        let first = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("client said {line:?} ({e})"));
        Self {
            child,
            stdout,
            first,
        }
    }

    /// Closes the client's stdin and returns its last JSON line.
    fn release(mut self) -> serde_json::Value {
        drop(self.child.stdin.take());
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        wait_exit(&mut self.child, 120);
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("client said {line:?} ({e})"))
    }
}

/// Open file descriptors of a process.
fn fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// 5,000 intercepted connections open at once through the agent, each relayed (one round
/// trip when opened, one more before it closes), with bounded memory: the agent's RSS
/// grows by less than a per-connection budget, and a second round of 5,000 does not
/// grow it further (a per-connection leak would).
#[test]
fn five_thousand_concurrent_connections_with_bounded_memory() {
    privileged!("five_thousand_concurrent_connections_with_bounded_memory");
    const CONNS: usize = 5000;
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/crowd", unique("nhi-test")));
    let agent = Agent::start_with(
        &format!(
            "{}{}",
            workload("crowd", &cg),
            target("echo", echo.addr, "tcp")
        ),
        "max_connections = 6000\nmax_connections_per_workload = 6000\n",
        &[],
    );
    let pid = agent.pid().expect("pid");
    let addr = echo.addr.to_string();
    let conns = CONNS.to_string();
    // Warm-up: thread pools, caches and the journal's page cache reach their size.
    let warm = Held::start(&cg, &["hold", &addr, "--conns", "200"]);
    assert_eq!(warm.first["open"], 200, "{}", warm.first);
    assert_eq!(warm.release()["alive"], 200);
    // Every connection of a round is closed in the agent when its descriptors are.
    let idle_fds = fds(pid);
    let base = rss_kib(pid);

    let mut peaks = Vec::new();
    for round in 1..=2 {
        let held = Held::start(&cg, &["hold", &addr, "--conns", &conns, "--threads", "64"]);
        assert_eq!(held.first["open"], CONNS, "round {round}: {}", held.first);
        let rss = rss_kib(pid);
        peaks.push(rss);
        eprintln!(
            "round {round}: {CONNS} connections open in {} ms, agent RSS {rss} KiB (base {base} KiB, {} KiB per connection)",
            held.first["elapsed_ms"],
            (rss.saturating_sub(base)) / CONNS as u64
        );
        let last = held.release();
        assert_eq!(
            last["alive"], CONNS,
            "round {round}: every connection still relayed: {last}"
        );
        wait_for(
            120,
            || format!("{} fds open, {idle_fds} when idle", fds(pid)),
            || (fds(pid) <= idle_fds + 8).then_some(()),
        );
    }
    let per_conn = peaks[0].saturating_sub(base) / CONNS as u64;
    assert!(
        per_conn < 64,
        "the agent holds {per_conn} KiB per open connection (RSS {} KiB, base {base} KiB)",
        peaks[0]
    );
    assert!(
        peaks[1] < peaks[0] + (CONNS as u64 * 8),
        "a second round of {CONNS} grew the agent from {} KiB to {} KiB: a per-connection leak",
        peaks[0],
        peaks[1]
    );
    let sessions = wait_for(
        60,
        || "every session ended".to_string(),
        || {
            let s = agent.sessions();
            s.iter().all(|s| !s["ended_at"].is_null()).then_some(s)
        },
    );
    assert_eq!(sessions.len(), 200 + 2 * CONNS);
    assert!(
        sessions
            .iter()
            .all(|s| s["close_reason"] == "client closed"),
        "{:?}",
        sessions
            .iter()
            .find(|s| s["close_reason"] != "client closed")
    );
}

/// One client writes to an echo server and never reads: its receive window fills, then
/// every buffer on the way back, and at last its own writes block. Meanwhile 20 other
/// connections each move 1 MiB both ways through the agent, byte-identical: one stalled
/// session holds back nobody else. When the stalled client goes away with unread data,
/// its session ends as a client reset, and the journal says so.
#[test]
fn a_client_that_stops_reading_does_not_stall_others() {
    privileged!("a_client_that_stops_reading_does_not_stall_others");
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/app", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}",
        workload("app", &cg),
        target("echo", echo.addr, "tcp")
    ));
    let addr = echo.addr.to_string();
    let stalled = Held::start(&cg, &["stall", &addr]);
    let written = stalled.first["written"].as_u64().expect("written");
    assert!(written > 0, "{}", stalled.first);
    let r = cg.client(&["many", &addr, "--conns", "20", "--bytes", "1048576"]);
    assert_eq!(
        r["ok"], 20,
        "others go on while one client does not read: {r}"
    );
    // The stalled session is still there, not cut by the agent.
    let sessions = agent.wait_sessions_ended(20);
    let open: Vec<_> = sessions
        .iter()
        .filter(|s| s["ended_at"].is_null())
        .collect();
    assert_eq!(open.len(), 1, "{sessions:#?}");
    let stalled_id = open[0]["id"].as_i64().expect("id");
    assert_eq!(stalled.release()["written"], written);
    let sessions = agent.wait_sessions_ended(21);
    let s = sessions
        .iter()
        .find(|s| s["id"] == stalled_id)
        .expect("stalled session");
    assert!(
        s["close_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("client reset")),
        "{s:#}"
    );
    assert!(
        sessions
            .iter()
            .filter(|s| s["id"] != stalled_id)
            .all(|s| s["close_reason"] == "client closed"
                && s["bytes_from_client"] == 1048576
                && s["bytes_from_server"] == 1048576),
        "{sessions:#?}"
    );
}

/// The raw answer of the proxy to a PostgreSQL StartupMessage sent from `cg` (psql does
/// not print a connection error's SQLSTATE).
fn raw_startup_answer(cg: &TestCgroup, port: u16) -> String {
    let script = format!(
        "import socket,struct,sys\n\
         s=socket.create_connection(('127.0.0.1',{port}))\n\
         body=struct.pack('!i',196608)+b'user\\0postgres\\0\\0'\n\
         s.sendall(struct.pack('!i',len(body)+4)+body)\n\
         data=b''\n\
         while True:\n    c=s.recv(65536)\n    if not c: break\n    data+=c\n\
         sys.stdout.write(data.decode('latin-1'))\n"
    );
    let out = cg
        .command("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `max_connections = 40`, `max_connections_per_workload = 25`. One workload opens 40
/// connections at once and holds them: 25 are relayed, 15 refused (reset) and journaled
/// with their reason; a PostgreSQL client of that workload gets FATAL 53300 naming the
/// limit. Meanwhile another workload connects (opaque and PostgreSQL) as usual: without
/// the limit the first would hold all 40 slots and the second would wait in the backlog.
#[test]
fn a_workload_connecting_in_a_loop_is_held_to_its_limit_and_others_still_connect() {
    privileged!("a_workload_connecting_in_a_loop_is_held_to_its_limit_and_others_still_connect");
    let pg = PgServer::start();
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let looper = TestCgroup::create(&format!("{base}/looper"));
    let steady = TestCgroup::create(&format!("{base}/steady"));
    let agent = Agent::start_with(
        &format!(
            "{}{}{}{}",
            workload("looper", &looper),
            workload("steady", &steady),
            target("echo", echo.addr, "tcp"),
            target("db", pg.addr(), "postgres")
        ),
        "max_connections = 40\nmax_connections_per_workload = 25\n",
        &[],
    );
    let addr = echo.addr.to_string();
    let held = Held::start(&looper, &["hold", &addr, "--conns", "40", "--threads", "8"]);
    assert_eq!(held.first["open"], 25, "{}", held.first);
    assert_eq!(held.first["failed"], 15, "{}", held.first);

    // At its limit, the looper's PostgreSQL clients are told why.
    let out = psql(&looper, pg.port)
        .args(["-c", "select 1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("max_connections_per_workload (25) reached for workload looper"),
        "{}",
        text(&out)
    );
    let raw = raw_startup_answer(&looper, pg.port);
    assert!(
        raw.starts_with('E') && raw.contains("SFATAL\0") && raw.contains("C53300\0"),
        "{raw:?}"
    );

    // The other workload is not starved: opaque and PostgreSQL sessions work.
    let r = steady.client(&["many", &addr, "--conns", "10", "--bytes", "10000"]);
    assert_eq!(r["ok"], 10, "{r}");
    let out = psql(&steady, pg.port)
        .args(["-c", "select 6 * 7"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42",
        "{}",
        text(&out)
    );

    assert_eq!(held.release()["alive"], 25);
    // 40 + psql + raw (looper), 10 + psql (steady).
    let sessions = agent.wait_sessions_ended(53);
    let limit_reason =
        "policy limit: max_connections_per_workload (25) reached for workload looper";
    let refused: Vec<_> = sessions
        .iter()
        .filter(|s| s["close_reason"] == limit_reason)
        .collect();
    assert_eq!(refused.len(), 17, "{sessions:#?}");
    assert!(refused.iter().all(|s| s["workload"] == "looper"));
    assert!(
        sessions
            .iter()
            .filter(|s| s["workload"] == "steady")
            .all(|s| s["close_reason"] == "client closed"),
        "{sessions:#?}"
    );
    assert!(
        agent
            .log_text()
            .contains("refusing a new connection: the workload is at max_connections_per_workload"),
        "logged"
    );
}

// ---------------------------------------------------------------- upstream and client faults

/// A listener whose accept queue is full: connections to it get no answer (their SYNs
/// are dropped), like a host that does not answer. Holds the connections that fill it.
struct Unanswering {
    addr: SocketAddr,
    _fd: std::os::fd::OwnedFd,
    _fillers: Vec<TcpStream>,
}

impl Unanswering {
    fn start() -> Self {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor this function owns.
        let (fd, addr) = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0, "socket");
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 4]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::bind(fd, (&sin as *const libc::sockaddr_in).cast(), len),
                0
            );
            assert_eq!(libc::listen(fd, 0), 0);
            let mut bound: libc::sockaddr_in = std::mem::zeroed();
            let mut blen = len;
            libc::getsockname(fd, (&mut bound as *mut libc::sockaddr_in).cast(), &mut blen);
            let port = u16::from_be(bound.sin_port);
            (
                std::os::fd::OwnedFd::from_raw_fd(fd),
                SocketAddr::from(([127, 0, 0, 4], port)),
            )
        };
        // Fill the accept queue (never accepted) from this process, which is not
        // intercepted.
        let fillers = (0..3)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok())
            .collect();
        Self {
            addr,
            _fd: fd,
            _fillers: fillers,
        }
    }
}

/// A server that accepts, reads what comes, and never answers; holds every connection.
fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.5:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

/// A server that reads a request, answers with `bytes` bytes and then resets.
fn resetting_server(bytes: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.6:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b);
            let _ = s.write_all(&vec![b'r'; bytes]);
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            use std::os::fd::AsRawFd;
            // SAFETY: valid fd, correctly sized option.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            drop(s);
        }
    });
    addr
}

fn session_for<'a>(sessions: &'a [serde_json::Value], target: &str) -> &'a serde_json::Value {
    sessions
        .iter()
        .find(|s| s["target"] == target)
        .unwrap_or_else(|| panic!("no session to {target}: {sessions:#?}"))
}

/// Opaque TCP: an upstream that never answers the connect, one that accepts and then
/// stalls, one that resets in the middle of its answer, and a client that half-closes.
/// Each session ends with its own close reason; the reset reaches the client as a reset
/// (not a clean end that would make the cut answer look complete).
#[test]
fn opaque_sessions_end_with_the_reason_of_each_fault() {
    privileged!("opaque_sessions_end_with_the_reason_of_each_fault");
    let unanswering = Unanswering::start();
    let silent = silent_server();
    let resetting = resetting_server(200 * 1024);
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/app", unique("nhi-test")));
    let agent = Agent::start_with(
        &format!(
            "{}{}{}{}{}",
            workload("app", &cg),
            target("unanswering", unanswering.addr, "tcp"),
            target("stalled", silent, "tcp"),
            target("resetting", resetting, "tcp"),
            target("echo", echo.addr, "tcp")
        ),
        "connect_timeout = \"1s\"\nidle_timeout = \"1s\"\n",
        &[],
    );
    let r = cg.client(&["echo", &unanswering.addr.to_string(), "--bytes", "10"]);
    assert!(r["error"].is_string(), "refused: {r}");
    let r = cg.client(&["echo", &silent.to_string(), "--bytes", "10"]);
    assert_eq!(
        r["received"], 0,
        "closed by the agent after the idle timeout: {r}"
    );
    let r = cg.client(&["echo", &resetting.to_string(), "--bytes", "10"]);
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("reset")),
        "the server's reset reaches the client as a reset: {r}"
    );
    let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "300000"]);
    assert_eq!(
        r["identical"], true,
        "a half-closed client gets the whole answer: {r}"
    );

    let sessions = agent.wait_sessions_ended(4);
    let reason = |t: &str| {
        session_for(&sessions, t)["close_reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(
        reason("unanswering"),
        "upstream connect failed: no answer within 1s",
        "{sessions:#?}"
    );
    assert_eq!(reason("stalled"), "idle timeout");
    assert!(
        reason("resetting").starts_with("server reset: "),
        "{}",
        reason("resetting")
    );
    assert_eq!(reason("echo"), "client closed");
    let e = session_for(&sessions, "echo");
    assert_eq!(e["bytes_from_client"], 300000);
    assert_eq!(e["bytes_from_server"], 300000);
}

/// A forwarder between the agent and a real PostgreSQL that resets both connections once
/// it has passed `after` bytes from the server: a server that resets mid-result.
fn resetting_forwarder(to: SocketAddr, after: usize) -> SocketAddr {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let listener = TcpListener::bind("127.0.0.7:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(to) else {
                continue;
            };
            let stop = Arc::new(AtomicBool::new(false));
            let (mut c_r, mut s_w) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let _ = c_r.set_read_timeout(Some(Duration::from_millis(50)));
            let stopped = stop.clone();
            // Client -> server until told to stop; then its descriptors go, so that the
            // other thread's close is the last one (and resets).
            let upward = thread::spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                while !stopped.load(Ordering::SeqCst) {
                    match c_r.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if s_w.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => return,
                    }
                }
            });
            thread::spawn(move || {
                let (mut s_r, mut c_w) = (server, client);
                let mut passed = 0;
                let mut buf = vec![0u8; 16 * 1024];
                while passed < after {
                    match s_r.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if c_w.write_all(&buf[..n]).is_err() {
                                return;
                            }
                            passed += n;
                        }
                    }
                }
                stop.store(true, Ordering::SeqCst);
                let _ = upward.join();
                use std::os::fd::AsRawFd;
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                for fd in [c_w.as_raw_fd(), s_r.as_raw_fd()] {
                    // SAFETY: valid fds, correctly sized option.
                    unsafe {
                        libc::setsockopt(
                            fd,
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            (&linger as *const libc::linger).cast(),
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        );
                    }
                }
                // Dropped here: closed with linger 0, both connections are reset.
            });
        }
    });
    addr
}

/// PostgreSQL: a server stalled in a statement (the session idles out), a server that
/// resets in the middle of a result (a real PostgreSQL behind a forwarder that resets),
/// and a client that sends a query and half-closes (it still gets its result, and the
/// statement's end is journaled). Each session's close reason says what happened.
#[test]
fn postgres_sessions_end_with_the_reason_of_each_fault() {
    privileged!("postgres_sessions_end_with_the_reason_of_each_fault");
    let pg = PgServer::start();
    let faulty = resetting_forwarder(pg.addr(), 256 * 1024);
    let cg = TestCgroup::create(&format!("{}/app", unique("nhi-test")));
    let agent = Agent::start_with(
        &format!(
            "{}{}{}",
            workload("app", &cg),
            target("db", pg.addr(), "postgres"),
            target("db-resetting", faulty, "postgres")
        ),
        "idle_timeout = \"2s\"\n",
        &[],
    );
    // Stalled: the server sleeps, nothing moves, the session idles out.
    let out = psql(&cg, pg.port)
        .args(["-c", "select pg_sleep(600)"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    // Reset mid-result.
    let out = cg
        .command("psql")
        .args([
            "-X",
            "-At",
            "-U",
            "postgres",
            "-h",
            &faulty.ip().to_string(),
        ])
        .args(["-p", &faulty.port().to_string()])
        .args([
            "-c",
            "select repeat('x', 1000) from generate_series(1, 5000)",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the cut result is an error: {}",
        text(&out)
    );
    // Half-close after a query: the answer still arrives.
    let script = format!(
        "import socket,struct,sys\n\
         s=socket.create_connection(('127.0.0.1',{}))\n\
         body=struct.pack('!i',196608)+b'user\\0postgres\\0\\0'\n\
         s.sendall(struct.pack('!i',len(body)+4)+body)\n\
         data=b''\n\
         while b'Z\\0\\0\\0\\x05' not in data:\n    c=s.recv(65536)\n    if not c: break\n    data+=c\n\
         q=b\"select 'half-' || 'closed'\\0\"\n\
         s.sendall(b'Q'+struct.pack('!i',len(q)+4)+q)\n\
         s.shutdown(socket.SHUT_WR)\n\
         out=b''\n\
         while True:\n    c=s.recv(65536)\n    if not c: break\n    out+=c\n\
         sys.stdout.write(out.decode('latin-1'))\n",
        pg.port
    );
    let out = cg
        .command("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        answer.contains("half-closed") && answer.contains("SELECT 1"),
        "a half-closed client gets its result: {answer:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let sessions = agent.wait_sessions_ended(3);
    let by_text = |needle: &str| -> (serde_json::Value, Vec<serde_json::Value>) {
        for s in &sessions {
            let id = s["id"].as_i64().expect("id");
            let events = agent.events(id);
            if events.iter().any(|e| {
                e["kind"] == "statement"
                    && e["data"]["text"]
                        .as_str()
                        .is_some_and(|t| t.contains(needle))
            }) {
                return (s.clone(), events);
            }
        }
        panic!("no session ran {needle}: {sessions:#?}");
    };
    let (stalled, events) = by_text("pg_sleep");
    assert_eq!(stalled["close_reason"], "idle timeout", "{stalled:#}");
    assert!(
        !events.iter().any(|e| e["kind"] == "statement_end"),
        "{events:#?}"
    );
    let (reset, events) = by_text("generate_series");
    assert!(
        reset["close_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("server reset: ")),
        "{reset:#}"
    );
    assert!(
        !events.iter().any(|e| e["kind"] == "statement_end"),
        "the result never ended: {events:#?}"
    );
    let (half, events) = by_text("half-");
    assert_eq!(half["close_reason"], "client closed", "{half:#}");
    assert!(
        events.iter().any(|e| e["kind"] == "statement_end"),
        "the half-closed client's statement ended: {events:#?}"
    );
}

/// Every one of `max_connections` slots serves a connection, whichever listener (IPv4 or
/// IPv6) the connections arrive on. (With one accept loop per listener, the loop of the
/// idle listener held a slot while waiting, so the last IPv4 connection waited in the
/// backlog until another closed.)
#[test]
fn every_connection_slot_is_usable() {
    privileged!("every_connection_slot_is_usable");
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let _agent = Agent::start_with(
        &format!(
            "{}{}",
            workload("bot", &cg),
            target("echo", echo.addr, "tcp")
        ),
        "max_connections = 3\nmax_connections_per_workload = 3\n",
        &[],
    );
    let addr = echo.addr.to_string();
    let held = Held::start(&cg, &["hold", &addr, "--conns", "3", "--threads", "1"]);
    assert_eq!(held.first["open"], 3, "{}", held.first);
    assert_eq!(held.first["failed"], 0, "{}", held.first);
    held.release();
}

/// The journal's filesystem is full: MySQL, Redis and HTTP clients that open a session
/// are refused in their protocol's words (the `mariadb` CLI prints an ERROR, `redis-cli`
/// an `(error) ERR`, curl a 503), saying the journal cannot record, instead of a bare reset; nothing
/// reaches either server; when space returns both work again without a restart.
#[test]
fn disk_full_refuses_mysql_and_redis_sessions_with_errors_that_say_so() {
    privileged!("disk_full_refuses_mysql_and_redis_sessions_with_errors_that_say_so");
    use nhi_tests::mysql::MariaDb;
    use nhi_tests::redis::{RedisServer, AGENT_USER};
    let db = MariaDb::start();
    db.sql(
        "create database shop; create table shop.t (v text);
         create user 'app'@'%' identified by 'app-secret';
         grant all on shop.* to 'app'@'%';",
    );
    let redis = RedisServer::start();
    // The HTTP target is never reached: the refusal comes first.
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let secrets = tempfile::tempdir().expect("tempdir");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let small = SmallFs::mount("16m");
    let mut agent = Agent::configure_journal(
        &format!(
            "{}{}{}{}password_file = \"{}\"\nuser = \"{AGENT_USER}\"\n\n",
            workload("bot", &cg),
            target("api", web, "http"),
            target("db", db.addr(), "mysql"),
            target(
                "cache",
                SocketAddr::from(([127, 0, 0, 1], redis.port)),
                "redis"
            ),
            RedisServer::password_file(secrets.path()).display(),
        ),
        "",
        &[],
        Some(&small.path().join("journal.db")),
    );
    agent.spawn();
    let mariadb = |sql: &str| {
        cg.command("mariadb")
            .args([
                "--no-defaults",
                "-h",
                "127.0.0.1",
                "-P",
                &db.port.to_string(),
            ])
            .args([
                "--protocol=tcp",
                "-N",
                "-B",
                "-u",
                "app",
                "-papp-secret",
                "shop",
            ])
            .args(["-e", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb")
    };
    let redis_cli = |args: &[&str]| {
        cg.command("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &redis.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli")
    };
    let out = mariadb("insert into t values ('before')");
    assert!(out.status.success(), "{}", text(&out));
    let out = redis_cli(&["SET", "before", "1"]);
    assert_eq!(text(&out).trim(), "OK");

    let filler = small.fill();
    let out = mariadb("insert into t values ('during')");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("journal cannot record new sessions"),
        "the mariadb CLI prints why: {}\nlog:\n{}",
        text(&out),
        agent.log_text()
    );
    let out = redis_cli(&["SET", "during", "1"]);
    assert!(
        text(&out).contains("ERR nhi-agent: the audit journal cannot record new sessions"),
        "redis-cli prints why: {}",
        text(&out)
    );
    let out = cg
        .command("curl")
        .args(["-sS", "-i", &format!("http://{web}/")])
        .output()
        .expect("run curl");
    let answer = text(&out);
    assert!(
        answer.starts_with("HTTP/1.1 503 ")
            && answer.contains("the audit journal cannot record new sessions"),
        "curl reads a 503 that says why: {answer}"
    );
    assert_eq!(
        db.sql("select count(*) from shop.t where v = 'during'")
            .trim(),
        "0"
    );
    assert_eq!(text(&redis.admin(&["EXISTS", "during"])).trim(), "0");

    fs::remove_file(&filler).expect("remove filler");
    let out = mariadb("insert into t values ('after')");
    assert!(out.status.success(), "{}\n{}", text(&out), agent.log_text());
    let out = redis_cli(&["SET", "after", "1"]);
    assert_eq!(text(&out).trim(), "OK", "{}", agent.log_text());
    assert_eq!(db.sql("select count(*) from shop.t").trim(), "2");
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log_text());
    agent.assert_verifies();
}
