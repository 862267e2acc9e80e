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
    net::SocketAddr,
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

/// `nhi-agent verify` of the agent's journal directory with its public key; asserts
/// that it passes.
fn assert_verifies(agent: &Agent) {
    let key = agent.dir.path().join("host.pub");
    let out = agent.cli(&[
        "key",
        "export-public",
        "--config",
        agent.config_path.to_str().expect("utf-8"),
        "--out",
        key.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "key export: {}", text(&out));
    let dir = agent.journal.parent().expect("journal dir");
    let out = agent.cli(&[
        "verify",
        dir.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "verify: {}", text(&out));
    assert!(text(&out).contains("OK: intact"), "verify: {}", text(&out));
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
    assert_verifies(&agent);
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
    assert_verifies(&agent);
}
