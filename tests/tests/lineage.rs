//! Process lineage (exec/fork/exit tracepoints): a script in an intercepted cgroup
//! leaves `exec` events with consistent pid/ppid, its psql session carries the exec
//! chain, and the replay shows the chain and the script's execs before the query. A
//! process in a cgroup that is not intercepted leaves nothing.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nhi_tests::*;

fn config(cg: &TestCgroup, pg: &PgServer) -> String {
    format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"db\"\naddress = \"{}\"\nprotocol = \"postgres\"\n",
        cg.rel(),
        pg.addr()
    )
}

/// `(pid, ppid, argv)` of every session-less `exec` event journaled so far.
fn execs(journal: &Path) -> Vec<(i64, Option<i64>, Vec<String>, i64)> {
    let conn =
        rusqlite::Connection::open_with_flags(journal, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open journal");
    let mut stmt = conn
        .prepare("SELECT data FROM events WHERE session_id IS NULL AND kind = 'exec' ORDER BY id")
        .expect("query");
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .expect("query");
    rows.map(|r| {
        let v: serde_json::Value = serde_json::from_str(&r.expect("row")).expect("json");
        let argv = v["argv"]
            .as_array()
            .expect("argv")
            .iter()
            .map(|a| a.as_str().expect("arg").to_string())
            .collect();
        (
            v["pid"].as_i64().expect("pid"),
            v["ppid"].as_i64(),
            argv,
            v["cgroup_id"].as_i64().expect("cgroup_id"),
        )
    })
    .collect()
}

/// Waits until `pred` holds for the exec events (they reach SQLite asynchronously).
fn wait_execs(
    journal: &Path,
    pred: impl Fn(&[(i64, Option<i64>, Vec<String>, i64)]) -> bool,
) -> Vec<(i64, Option<i64>, Vec<String>, i64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = execs(journal);
        if pred(&e) || Instant::now() > deadline {
            return e;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn script_exec_chain_is_journaled_and_replayed_before_its_query() {
    privileged!("script_exec_chain_is_journaled_and_replayed_before_its_query");
    let pg = PgServer::start();
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let human = TestCgroup::create(&format!("{base}-human"));
    let agent = Agent::start(&config(&cg, &pg));

    let script = agent.dir.path().join("job.sh");
    std::fs::write(
        &script,
        format!(
            "echo start\nsleep 0.1\npsql -X -At -U postgres -h 127.0.0.1 -p {} -c \"select 1\"\n",
            pg.port
        ),
    )
    .expect("write script");
    let script = script.to_str().expect("utf-8 path").to_string();
    let out = cg
        .command("bash")
        .arg(&script)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run script");
    assert!(
        out.status.success(),
        "script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "start\n1\n");

    // The same kind of work outside any workload: nothing of it may be journaled.
    let marker = unique("not-intercepted");
    let out = human
        .command("bash")
        .args([
            "-c",
            &format!("/bin/echo {marker} >/dev/null; /bin/true {marker}"),
        ])
        .output()
        .expect("run bash");
    assert!(out.status.success());

    let sessions = agent.wait_sessions_ended(1);
    let session = sessions[0]["id"].as_i64().expect("session id");
    let execs = wait_execs(&agent.journal, |e| {
        e.iter()
            .any(|x| x.2.first().map(String::as_str) == Some("psql"))
    });
    let bash = execs
        .iter()
        .find(|x| x.2 == ["bash", script.as_str()])
        .unwrap_or_else(|| panic!("no exec of bash {script}: {execs:?}"));
    let sleep = execs
        .iter()
        .find(|x| x.2 == ["sleep", "0.1"])
        .unwrap_or_else(|| panic!("no exec of sleep: {execs:?}"));
    let psql = execs
        .iter()
        .find(|x| x.2.first().map(String::as_str) == Some("psql"))
        .expect("psql exec");
    assert!(psql.2.contains(&"select 1".to_string()), "{psql:?}");
    // pid/ppid consistency: the script's children have the bash process as parent.
    assert_eq!(sleep.1, Some(bash.0), "sleep's parent is bash: {execs:?}");
    assert_eq!(psql.1, Some(bash.0), "psql's parent is bash: {execs:?}");
    assert_eq!(psql.0, sessions[0]["pid"].as_i64().expect("pid"));
    for x in &execs {
        assert_eq!(x.3 as u64, cg.id(), "exec from another cgroup: {x:?}");
        assert!(!x.2.iter().any(|a| a.contains(&marker)), "{x:?}");
    }

    // The session carries its chain; the replay shows it first, then the script's
    // sleep, then the query.
    let events = agent.events(session);
    let lineage = events
        .iter()
        .find(|e| e["kind"] == "lineage")
        .unwrap_or_else(|| panic!("no lineage event: {events:#?}"));
    let chain = lineage["data"]["chain"].as_array().expect("chain");
    // bash, then psql's execs: Debian's /usr/bin/psql is a wrapper that execs the
    // real client under the same pid, and the chain shows both.
    assert!(chain.len() >= 2, "{chain:?}");
    assert_eq!(chain[0]["pid"].as_i64(), Some(bash.0), "{chain:?}");
    assert!(
        chain[1..].iter().all(|l| l["pid"].as_i64() == Some(psql.0)),
        "{chain:?}"
    );
    assert_eq!(chain[1]["argv"][0], "psql");
    let last = &chain[chain.len() - 1]["argv"];
    assert_eq!(last[last.as_array().expect("argv").len() - 1], "select 1");
    let out = agent.cli(&[
        "replay",
        &session.to_string(),
        "--journal",
        agent.journal.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // Captured by the test harness; shown with --nocapture or when the test fails.
    println!("{text}");
    let position = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("replay lacks {needle:?}:\n{text}"))
    };
    let chain_at = position(&format!(
        "lineage: bash {script} -> psql -X -At -U postgres -h 127.0.0.1 -p {} -c 'select 1'",
        pg.port
    ));
    let sleep_at = position(&format!(
        "exec pid {} (ppid {}) workload bot: sleep 0.1",
        sleep.0, bash.0
    ));
    let query_at = position("=> select 1");
    assert!(chain_at < sleep_at && sleep_at < query_at, "order:\n{text}");
}

/// A cgroup created after the agent started, below a cgroup the agent classified as
/// "not a workload, but a workload may appear below": the kernel hands its execs to
/// userspace, which classifies the cgroup by path. A matching one is journaled from
/// its first exec, a non-matching sibling not at all.
#[test]
fn execs_in_a_cgroup_created_after_the_start_are_classified_by_path() {
    privileged!("execs_in_a_cgroup_created_after_the_start_are_classified_by_path");
    let base = TestCgroup::create(&unique("nhi-test"));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"job\"\ncgroup = \"{}/job-*\"\n\n\
         [[target]]\nname = \"discard\"\naddress = \"127.0.0.1:9\"\nprotocol = \"tcp\"\n",
        base.rel()
    ));
    let job = base.child("job-late");
    let other = base.child("other-late");
    let (seen, unseen) = (unique("seen"), unique("unseen"));
    assert!(job
        .command("/bin/true")
        .arg(&seen)
        .status()
        .expect("true")
        .success());
    assert!(other
        .command("/bin/true")
        .arg(&unseen)
        .status()
        .expect("true")
        .success());
    // A second exec in the now classified cgroup comes through the map.
    let again = unique("again");
    assert!(job
        .command("/bin/true")
        .arg(&again)
        .status()
        .expect("true")
        .success());
    let execs = wait_execs(&agent.journal, |e| e.iter().any(|x| x.2.contains(&again)));
    let has = |m: &str| execs.iter().any(|x| x.2.iter().any(|a| a == m));
    assert!(
        has(&seen),
        "first exec of the late cgroup missing: {execs:?}"
    );
    assert!(has(&again), "{execs:?}");
    // The non-matching sibling's exec (earlier than `again`) was dropped.
    assert!(!has(&unseen), "{execs:?}");
    for x in &execs {
        assert_eq!(x.3 as u64, job.id(), "{x:?}");
    }
}

/// Wall time of `n` `/bin/true` execs by a shell in `cg`.
fn time_execs(cg: &TestCgroup, n: u32) -> Duration {
    let t0 = Instant::now();
    let status = cg
        .command("bash")
        .args(["-c", &format!("for i in $(seq {n}); do /bin/true; done")])
        .status()
        .expect("run bash");
    assert!(status.success());
    t0.elapsed()
}

/// Not a benchmark with a threshold: prints the cost of lineage for exec-heavy work
/// (1000 execs) without an agent, with the agent and lineage, and with the agent
/// without lineage, and checks that every exec was journaled.
#[test]
fn exec_overhead_is_measured() {
    privileged!("exec_overhead_is_measured");
    let pg = PgServer::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let n = 1000;
    time_execs(&cg, 50); // warm the page cache
    let without = time_execs(&cg, n);

    let agent = Agent::start(&config(&cg, &pg));
    let with = time_execs(&cg, n);
    let journaled = wait_execs(&agent.journal, |e| {
        e.iter().filter(|x| x.2 == ["/bin/true"]).count() >= n as usize
    });
    assert_eq!(
        journaled.iter().filter(|x| x.2 == ["/bin/true"]).count(),
        n as usize,
        "every exec is journaled"
    );
    drop(agent);

    let agent = Agent::start_with(
        &format!("{}\n[lineage]\nenabled = false\n", config(&cg, &pg)),
        "",
        &[],
    );
    let disabled = time_execs(&cg, n);
    drop(agent);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n);
    println!(
        "LINEAGE OVERHEAD: {n} execs of /bin/true: no agent {:.1} ms ({:.0} us/exec), \
         agent with lineage {:.1} ms ({:.0} us/exec), agent with lineage disabled {:.1} ms ({:.0} us/exec)",
        without.as_secs_f64() * 1e3,
        per(without),
        with.as_secs_f64() * 1e3,
        per(with),
        disabled.as_secs_f64() * 1e3,
        per(disabled)
    );
    let _ = Command::new("true").status();
}

/// A client run with secrets on its command line: the journal (exec event, the
/// session's lineage chain and cmdline), `sessions` and `replay` show the command with
/// the password flag's value, the `-p` value (`mask_argv`) and the AWS key masked, and
/// every other argument as it was.
#[test]
fn secrets_on_command_lines_are_masked_before_the_journal() {
    privileged!("secrets_on_command_lines_are_masked_before_the_journal");
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&unique("nhi-test-argv"));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"echo\"\naddress = \"{}\"\nprotocol = \"tcp\"\n\n\
         [lineage]\nmask_argv = [\"-p\"]\n",
        cg.rel(),
        echo.addr
    ));
    const PASSWORD: &str = "hunter2-nhi";
    const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    const P_VALUE: &str = "pvalue-nhi";
    let client = format!(
        "import socket,sys; s=socket.create_connection(('{}', {})); s.sendall(b'ping'); \
         s.recv(4); s.close()",
        echo.addr.ip(),
        echo.addr.port()
    );
    let out = cg
        .command("/usr/bin/python3")
        .args([
            "-c",
            &client,
            &format!("--password={PASSWORD}"),
            "--key",
            AWS_KEY,
            "-p",
            P_VALUE,
            "--region=eu-west-1",
        ])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want_tail = [
        "--password=[redacted]",
        "--key",
        "[redacted]",
        "-p",
        "[redacted]",
        "--region=eu-west-1",
    ];

    let sessions = agent.wait_sessions_ended(1);
    let session = sessions[0]["id"].as_i64().expect("session id");
    // sessions --json: the cmdline.
    let cmdline: Vec<&str> = sessions[0]["cmdline"]
        .as_array()
        .unwrap_or_else(|| panic!("no cmdline: {:#}", sessions[0]))
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    assert_eq!(cmdline[..2], ["/usr/bin/python3", "-c"], "{cmdline:?}");
    assert_eq!(cmdline[3..], want_tail, "{cmdline:?}");
    // The exec event.
    let execs = wait_execs(&agent.journal, |e| {
        e.iter()
            .any(|x| x.2.iter().any(|a| a == "--region=eu-west-1"))
    });
    let exec = execs
        .iter()
        .find(|x| x.2.iter().any(|a| a == "--region=eu-west-1"))
        .unwrap_or_else(|| panic!("no exec of the client: {execs:?}"));
    assert_eq!(exec.2[3..], want_tail, "{exec:?}");
    // The session's lineage chain.
    let events = agent.events(session);
    let lineage = events
        .iter()
        .find(|e| e["kind"] == "lineage")
        .unwrap_or_else(|| panic!("no lineage event: {events:#?}"));
    let last = lineage["data"]["chain"]
        .as_array()
        .and_then(|c| c.last())
        .expect("chain");
    let argv: Vec<&str> = last["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    assert_eq!(argv[3..], want_tail, "{argv:?}");
    // The replay shows the masked command.
    let out = agent.cli(&[
        "replay",
        &session.to_string(),
        agent.journal.to_str().expect("path"),
        "--instant",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Shell-quoted: the brackets are glob characters.
    assert!(
        text.contains(
            "'--password=[redacted]' --key '[redacted]' -p '[redacted]' --region=eu-west-1"
        ),
        "{text}"
    );
    // Nowhere in the journal's files.
    let dir = agent.journal.parent().expect("journal dir");
    for entry in std::fs::read_dir(dir).expect("journal dir").flatten() {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).expect("read");
            for secret in [PASSWORD, AWS_KEY, P_VALUE] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{secret} in {}",
                    entry.path().display()
                );
            }
        }
    }
}
