//! Operations: the Prometheus endpoint (`[agent] metrics_listen`) scraped with a real
//! HTTP client (curl, from the test process, not intercepted) before and after real
//! traffic through the real eBPF path; the counters must move by exactly what the
//! agent did, as the journal tells it.
use std::time::{Duration, Instant};

use nhi_tests::{http::*, *};

/// `GET /metrics` with curl: the status line's code and the body.
fn scrape(port: u16) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{port}/metrics"),
        ])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("curl printed the code");
    (
        code.trim().parse().expect("a status code"),
        body.to_string(),
    )
}

/// The value of the sample whose name and labels are exactly `series` (0 when absent:
/// a labelled counter appears with its first increment).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().expect("a number"))
        })
        .unwrap_or(0.0)
}

/// Scrapes until `done` holds for the text, or panics with the last one.
fn scrape_until(port: u16, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, text) = scrape(port);
        assert_eq!(code, 200, "{text}");
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}; last scrape:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_move_by_what_the_agent_did() {
    privileged!("metrics_move_by_what_the_agent_did");
    let app = EchoApp::start();
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let metrics_port = free_port();
    let agent = Agent::start_with(
        &format!(
            "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
             [[target]]\nname = \"api\"\naddress = \"{}\"\nprotocol = \"http\"\n\n\
             [[target]]\nname = \"echo\"\naddress = \"{}\"\n\n\
             [[policy]]\nname = \"bots\"\nworkload = \"bot\"\n\n\
             [[policy.rule]]\nname = \"no-deletes\"\nverdict = \"deny\"\nmethods = [\"DELETE\"]\n",
            cg.rel(),
            app.addr(),
            echo.addr,
        ),
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n"),
        &[],
    );
    let http = r#"workload="bot",target="api",protocol="http""#;
    let tcp = r#"workload="bot",target="echo",protocol="tcp""#;

    let (code, before) = scrape(metrics_port);
    assert_eq!(code, 200, "{before}");
    assert!(
        before.contains("# TYPE nhi_journal_failed_batches counter")
            && before.contains("# TYPE nhi_connection_setup_seconds histogram")
            && before.contains("# TYPE nhi_journal_fsync_seconds histogram")
            && before.ends_with("# EOF\n"),
        "{before}"
    );
    let opened = |t: &str, l: &str| value(t, &format!("nhi_sessions_opened_total{{{l}}}"));
    let requests = |t: &str, verdict: &str, action: &str| {
        value(
            t,
            &format!(
                "nhi_requests_total{{protocol=\"http\",verdict=\"{verdict}\",action=\"{action}\"}}"
            ),
        )
    };
    let setups = |t: &str| value(t, "nhi_connection_setup_seconds_count");
    let commits = |t: &str| value(t, "nhi_journal_fsync_seconds_count");
    assert_eq!(opened(&before, http), 0.0);

    // Three allowed requests on one connection, one refused on another; three opaque
    // echo connections.
    let base = format!("http://{}", app.addr());
    let (status, body) = curl(
        &cg,
        &[
            &format!("{base}/a"),
            &format!("{base}/b"),
            &format!("{base}/c"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = curl(&cg, &["-X", "DELETE", &format!("{base}/d")]);
    assert_eq!(status, 403, "{body}");
    for _ in 0..3 {
        let out = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "1000"]);
        assert_eq!(out["identical"], true, "{out}");
    }

    let closed = |t: &str, l: &str, reason: &str| {
        value(
            t,
            &format!("nhi_sessions_closed_total{{{},reason=\"{reason}\"}}", l),
        )
    };
    let after = scrape_until(metrics_port, "five sessions closed", |t| {
        closed(t, http, "client_closed") >= 2.0 && closed(t, tcp, "client_closed") >= 3.0
    });
    assert_eq!(opened(&after, http), 2.0, "{after}");
    assert_eq!(opened(&after, tcp), 3.0, "{after}");
    assert_eq!(closed(&after, http, "client_closed"), 2.0, "{after}");
    assert_eq!(closed(&after, tcp, "client_closed"), 3.0, "{after}");
    assert_eq!(requests(&after, "allow", "forward"), 3.0, "{after}");
    assert_eq!(requests(&after, "deny", "refuse"), 1.0, "{after}");
    assert_eq!(setups(&after) - setups(&before), 5.0, "{after}");
    assert!(commits(&after) > commits(&before), "{after}");
    assert_eq!(value(&after, "nhi_holds_pending"), 0.0);

    // The journal tells the same story.
    let sessions = agent.sessions();
    assert_eq!(sessions.len(), 5, "{sessions:?}");

    // Anything but GET /metrics is refused; the endpoint lives on.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{metrics_port}/other"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    let (code, _) = scrape(metrics_port);
    assert_eq!(code, 200);
}

/// `nhi-agent status --json` against this agent's control socket: exit code and JSON.
fn status(agent: &Agent) -> (i32, serde_json::Value) {
    let socket = agent.dir.path().join("approvals.sock");
    let out = agent.cli(&["status", "--json", "--socket", socket.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "status --json is not JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

/// `nhi-agent reload` against this agent's control socket: exit code, stdout, stderr.
fn reload(agent: &Agent) -> (i32, String, String) {
    let socket = agent.dir.path().join("approvals.sock");
    let out = agent.cli(&["reload", "--socket", socket.to_str().unwrap()]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_and_reload_tell_the_running_agents_state_and_verdicts() {
    privileged!("status_and_reload_tell_the_running_agents_state_and_verdicts");
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let metrics_port = free_port();
    let siem = tempfile::tempdir().unwrap();
    let siem_file = siem.path().join("events.jsonl");
    let mut agent = Agent::start_with(
        &format!(
            "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
             [[target]]\nname = \"echo\"\naddress = \"{}\"\n\n\
             [[stream]]\nname = \"siem-file\"\ntype = \"file\"\npath = \"{}\"\n",
            cg.rel(),
            echo.addr,
            siem_file.display(),
        ),
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n"),
        &[],
    );
    let out = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "100"]);
    assert_eq!(out["identical"], true, "{out}");

    // Healthy: exit 0, and the document says what runs. The stream has delivered the
    // session's events (its cursor moves once the file holds them).
    let delivered = |s: &serde_json::Value| s["agent"]["streams"][0]["cursor"]["event_id"].as_i64();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (code, s) = loop {
        let (code, s) = status(&agent);
        if delivered(&s).is_some_and(|id| id > 0) || Instant::now() > deadline {
            break (code, s);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(s["agent"]["streams"][0]["name"], "siem-file", "{s:#}");
    assert_eq!(s["agent"]["streams"][0]["type"], "file", "{s:#}");
    assert!(s["agent"]["streams"][0]["failing"].is_null(), "{s:#}");
    let lines = std::fs::read_to_string(&siem_file)
        .unwrap_or_default()
        .lines()
        .count();
    assert!(lines > 0, "the stream wrote its file");
    let (_, text) = scrape(metrics_port);
    assert!(
        value(
            &text,
            r#"nhi_stream_records_sent_total{stream="siem-file"}"#
        ) >= 1.0,
        "{text}"
    );
    // Later events (the session's end) may have moved it on since.
    assert!(
        value(&text, r#"nhi_stream_cursor_event_id{stream="siem-file"}"#)
            >= delivered(&s).unwrap() as f64,
        "{text}"
    );
    assert_eq!(code, 0, "{s:#}");
    let a = &s["agent"];
    assert_eq!(a["pid"], agent.pid().unwrap(), "{a:#}");
    assert_eq!(a["mode"], "enforce");
    assert_eq!(a["fail"], "closed");
    assert_eq!(a["targets"][0]["name"], "echo");
    assert_eq!(a["targets"][0]["protocol"], "tcp");
    assert_eq!(a["workloads"][0]["name"], "bot");
    assert_eq!(
        a["listeners"]["metrics"],
        format!("127.0.0.1:{metrics_port}")
    );
    assert_eq!(
        a["listeners"]["proxy"][0],
        format!("127.0.0.1:{}", agent.port)
    );
    let programs = a["kernel"]["programs"].as_array().expect("programs");
    assert!(
        programs.iter().any(|p| p["name"] == "nhi_connect4")
            && programs.iter().all(|p| p["pinned"].is_string()),
        "fail-closed programs are attached and pinned: {a:#}"
    );
    assert_eq!(a["journal"]["segments"]["live"]["segment_seq"], 1, "{a:#}");
    assert!(a["journal"]["commits"].as_u64().unwrap() > 0, "{a:#}");
    assert_eq!(a["holds"]["pending"], 0);
    assert_eq!(a["problems"], serde_json::json!([]), "{a:#}");
    assert!(a["last_reload"].is_null(), "{a:#}");
    assert_eq!(s["can_run"], true);

    // A broken file: the verdict names the place, the old configuration stays, and
    // status says so (exit 1) until a good reload.
    agent.rewrite_config(|c| c.replace("address = ", "adress = "));
    let (code, stdout, stderr) = reload(&agent);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("reload rejected")
            && stderr.contains("agent.toml:")
            && stderr.contains("adress"),
        "{stderr}"
    );
    let (code, s) = status(&agent);
    assert_eq!(code, 1, "{s:#}");
    let problems = s["agent"]["problems"].to_string();
    assert!(problems.contains("was rejected"), "{problems}");
    assert_eq!(s["agent"]["last_reload"]["applied"], false);
    let out = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "100"]);
    assert_eq!(
        out["identical"], true,
        "the old configuration serves: {out}"
    );

    // A good file with a second target and a key that needs a restart: applied, and the
    // verdict says what was kept.
    let echo2 = EchoServer::start("127.0.0.3:0");
    agent.rewrite_config(|c| {
        c.replace("adress = ", "address = ")
            .replace("journal_fsync", "#")
            .replace("[agent]\n", "[agent]\njournal_fsync = \"each\"\n")
            + &format!(
                "\n[[target]]\nname = \"echo2\"\naddress = \"{}\"\n",
                echo2.addr
            )
            + "\n[lineage]\nmask_argv = [\"--db-pass*\"]\n"
    });
    let (code, stdout, stderr) = reload(&agent);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("2 targets")
            && stdout.contains("kept until a restart: journal_fsync, [lineage]"),
        "{stdout}"
    );
    let (code, s) = status(&agent);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["agent"]["targets"][1]["name"], "echo2");
    assert_eq!(s["agent"]["last_reload"]["applied"], true);
    assert_eq!(
        s["agent"]["journal"]["fsync"], "group",
        "kept until a restart"
    );
    let (_, metrics) = scrape(metrics_port);
    assert_eq!(
        value(&metrics, r#"nhi_config_reloads_total{result="rejected"}"#),
        1.0
    );
    assert_eq!(
        value(&metrics, r#"nhi_config_reloads_total{result="applied"}"#),
        1.0
    );

    // Killed: the socket file stays behind with nobody listening, which is exit 3 (not
    // running), not a refusal.
    agent.kill9();
    assert!(agent.dir.path().join("approvals.sock").exists());
    let (code, s) = status(&agent);
    assert_eq!(code, 3, "{s:#}");
    assert!(
        s["agent"].is_null() && s["agent_error"].is_string(),
        "{s:#}"
    );
    let (code, _, stderr) = reload(&agent);
    assert_eq!(code, 3, "{stderr}");
}

/// Datagrams sent to a `NOTIFY_SOCKET` bound by the test.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    sock: std::os::unix::net::UnixDatagram,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            _dir: dir,
            path,
            sock,
        }
    }

    /// Messages received until one satisfies `until` (returned last), or panics after
    /// 20 s with what came.
    fn until(&self, what: &str, until: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = until(&m);
                got.push(m);
                if done {
                    return got;
                }
            }
        }
        panic!("no {what} in {got:?}");
    }
}

#[test]
fn systemd_is_told_ready_reloading_stopping_and_fed_the_watchdog() {
    privileged!("systemd_is_told_ready_reloading_stopping_and_fed_the_watchdog");
    let echo = EchoServer::start("127.0.0.2:0");
    let notify = NotifySocket::bind();
    let mut agent = Agent::configure(
        &format!("[[workload]]\nname = \"bot\"\ncgroup = \"nhi-none\"\n\n[[target]]\nname = \"echo\"\naddress = \"{}\"\n", echo.addr),
        "",
        &[],
    );
    agent.set_env("NOTIFY_SOCKET", notify.path.to_str().unwrap());
    agent.set_env("WATCHDOG_USEC", "400000");
    agent.spawn();

    let ready = notify.until("READY=1", |m| m.starts_with("READY=1"));
    assert!(
        ready
            .last()
            .unwrap()
            .contains("STATUS=intercepting: 1 workloads, 1 targets"),
        "{ready:?}"
    );
    // Fed every 200 ms while healthy: two within a few hundred milliseconds.
    notify.until("a first WATCHDOG=1", |m| m == "WATCHDOG=1");
    let t = Instant::now();
    notify.until("a second WATCHDOG=1", |m| m == "WATCHDOG=1");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // SIGHUP: RELOADING=1 with the monotonic clock, then READY=1 with the verdict.
    agent.signal(libc::SIGHUP);
    let got = notify.until("RELOADING=1", |m| m.starts_with("RELOADING=1"));
    assert!(got.last().unwrap().contains("MONOTONIC_USEC="), "{got:?}");
    let got = notify.until("READY=1 after the reload", |m| m.starts_with("READY=1"));
    assert!(
        got.last()
            .unwrap()
            .contains("STATUS=configuration reloaded"),
        "{got:?}"
    );
    // A rejected file: READY=1 too (the old configuration serves), STATUS says so.
    agent.rewrite_config(|c| c.replace("address = ", "adress = "));
    agent.signal(libc::SIGHUP);
    let got = notify.until("READY=1 after the rejection", |m| m.starts_with("READY=1"));
    assert!(
        got.last().unwrap().contains("STATUS=reload rejected"),
        "{got:?}"
    );

    // SIGTERM: STOPPING=1 first.
    agent.signal(libc::SIGTERM);
    notify.until("STOPPING=1", |m| m.starts_with("STOPPING=1"));
    agent.terminate();
}

/// A journal writer that stops answering starves systemd's watchdog (so systemd restarts
/// the agent instead of believing it alive), says why in `STATUS=`, and feeds it again
/// once the writer answers. The writer is hung with a debug-build failpoint at the start
/// of its batches (`hold:` a file: hung while it exists).
#[test]
fn a_hung_journal_writer_starves_the_watchdog_until_it_answers_again() {
    privileged!("a_hung_journal_writer_starves_the_watchdog_until_it_answers_again");
    let echo = EchoServer::start("127.0.0.2:0");
    let notify = NotifySocket::bind();
    let hold = tempfile::tempdir().unwrap();
    let hang = hold.path().join("hang-the-writer");
    let mut agent = Agent::configure(
        &format!("[[workload]]\nname = \"bot\"\ncgroup = \"nhi-none\"\n\n[[target]]\nname = \"echo\"\naddress = \"{}\"\n", echo.addr),
        "",
        &[],
    );
    agent.set_env("NOTIFY_SOCKET", notify.path.to_str().unwrap());
    agent.set_env("WATCHDOG_USEC", "400000");
    agent.set_env(
        "NHI_FAILPOINTS",
        &format!("journal.writer_batch=hold:{}", hang.display()),
    );
    agent.spawn();
    notify.until("READY=1", |m| m.starts_with("READY=1"));
    notify.until("a first WATCHDOG=1", |m| m == "WATCHDOG=1");

    // Hung: the next flush gets no answer within half the interval.
    std::fs::write(&hang, "").unwrap();
    let got = notify.until("STATUS=unhealthy", |m| m.starts_with("STATUS=unhealthy"));
    assert_eq!(
        got.last().unwrap(),
        "STATUS=unhealthy: the journal writer is not answering: no answer to a flush within 200ms",
        "{got:?}"
    );
    agent.wait_log("failpoint journal.writer_batch: holding while", 1);
    // Once that is said, the writer is held at its batch and every later flush queues
    // behind it: no WATCHDOG=1 in five intervals.
    let hungry = Instant::now();
    let mut buf = [0u8; 4096];
    while hungry.elapsed() < Duration::from_secs(2) {
        if let Ok(n) = notify.sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]);
            assert_ne!(m, "WATCHDOG=1", "fed while the writer hangs");
        }
    }
    assert!(
        agent.log_text().contains("not feeding systemd's watchdog"),
        "{}",
        agent.log_text()
    );

    // Answering again: fed again, and the log says so.
    std::fs::remove_file(&hang).unwrap();
    notify.until("WATCHDOG=1 once the writer answers", |m| m == "WATCHDOG=1");
    agent.wait_log("healthy again; feeding the watchdog", 1);
    agent.signal(libc::SIGTERM);
    notify.until("STOPPING=1", |m| m.starts_with("STOPPING=1"));
    agent.terminate();
}

#[test]
fn a_reload_applies_approvals_shipping_and_retention() {
    privileged!("a_reload_applies_approvals_shipping_and_retention");
    let app = EchoApp::start();
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"api\"\naddress = \"{}\"\nprotocol = \"http\"\n\n\
         [[target]]\nname = \"echo\"\naddress = \"{}\"\n\n\
         [[policy]]\nname = \"bots\"\n\n\
         [[policy.rule]]\nname = \"ask-before-deploy\"\nverdict = \"approve\"\nmethods = [\"POST\"]\npaths = [\"/deploy\"]\n",
        cg.rel(),
        app.addr(),
        echo.addr,
    ));
    let socket = agent.dir.path().join("approvals.sock");

    // [approvals]: a webhook and a shorter max_grant, applied without a restart.
    let (hook_url, hook) = webhook_listener();
    agent.rewrite_config(|c| {
        format!("{c}\n[approvals]\nwebhook_url = \"{hook_url}\"\nmax_grant = \"5m\"\n")
    });
    let (code, stdout, stderr) = reload(&agent);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("[approvals] applied"), "{stdout}");
    let child = cg
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args([
            "-X",
            "POST",
            "-d",
            "v=1",
            &format!("http://{}/deploy", app.addr()),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    let pending = wait_pending(&socket);
    let announced = hook
        .recv_timeout(Duration::from_secs(20))
        .expect("the webhook added by the reload is told");
    assert_eq!(announced["rule"], "ask-before-deploy", "{announced}");
    let id = pending["id"].as_str().unwrap().to_string();
    let out = approvals(
        &socket,
        &["approve", &id, "--scope", "grant", "--for", "10m"],
    );
    assert!(
        !out.status.success(),
        "a grant over the reloaded max_grant is refused"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_grant"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = approvals(&socket, &["approve", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");

    // [retention]: a disk budget the journal directory is over: new sessions are
    // refused (opaque: reset) and status says why; removing it lets them in again.
    agent.rewrite_config(|c| format!("{c}\n[retention]\ndisk_budget = \"1KB\"\n"));
    let (code, stdout, stderr) = reload(&agent);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("[shipping]/[retention] applied"),
        "{stdout}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "100"]);
        if out["identical"] != true {
            break;
        }
        assert!(Instant::now() < deadline, "sessions still admitted: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, s) = status(&agent);
    assert_eq!(code, 1, "{s:#}");
    assert!(
        s["agent"]["problems"].to_string().contains("disk budget"),
        "{s:#}"
    );
    agent.rewrite_config(|c| c.replace("[retention]\ndisk_budget = \"1KB\"\n", ""));
    let (code, stdout, stderr) = reload(&agent);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("shipping and retention off"), "{stdout}");
    let out = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "100"]);
    assert_eq!(out["identical"], true, "{out}");
    let (code, s) = status(&agent);
    assert_eq!(code, 0, "{s:#}");
}
