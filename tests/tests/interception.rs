//! The foundation's data path, end to end, as root: real cgroups, the real agent with
//! its eBPF programs attached at the cgroup2 root, real loopback servers and clients.
//! Each test runs its clients in its own child cgroup(s).
use std::{
    fs,
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nhi_tests::*;
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

fn workload(name: &str, cgroup: &str) -> String {
    format!("[[workload]]\nname = \"{name}\"\ncgroup = \"{cgroup}\"\n")
}

fn target(name: &str, addr: SocketAddr) -> String {
    format!("[[target]]\nname = \"{name}\"\naddress = \"{addr}\"\nprotocol = \"tcp\"\n")
}

fn local_of(v: &Value) -> SocketAddr {
    v["local"].as_str().expect("local").parse().expect("addr")
}

/// True when the server saw the client's own address, i.e. no proxy in between.
fn came_directly(server: &EchoServer, client: &Value) -> bool {
    server.peers().contains(&local_of(client))
}

#[test]
fn intercepted_client_reaches_loopback_servers_unchanged_and_is_journaled() {
    privileged!("intercepted_client_reaches_loopback_servers_unchanged_and_is_journaled");
    let echo4 = EchoServer::start("127.0.0.2:0");
    let echo6 = EchoServer::start("[::1]:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let agent = Agent::start(&format!(
        "{}{}{}",
        workload("backup-bot", cg.rel()),
        target("echo4", echo4.addr),
        target("echo6", echo6.addr)
    ));

    // 64 MiB each way over IPv4, byte-identical; getpeername shows the original.
    let big = cg.client(&[
        "echo",
        &echo4.addr.to_string(),
        "--bytes",
        &(64 * MIB).to_string(),
    ]);
    assert_eq!(big["identical"], true, "{big}");
    assert_eq!(
        big["peer"],
        echo4.addr.to_string(),
        "getpeername must show the original"
    );
    assert!(
        !came_directly(&echo4, &big),
        "the connection must go through the agent"
    );

    // IPv6 and an IPv4-mapped IPv6 destination.
    let v6 = cg.client(&["echo", &echo6.addr.to_string(), "--bytes", "100000"]);
    assert_eq!(v6["identical"], true, "{v6}");
    assert_eq!(v6["peer"], echo6.addr.to_string());
    let mapped: SocketAddr = format!("[::ffff:127.0.0.2]:{}", echo4.addr.port())
        .parse()
        .unwrap();
    let m = cg.client(&["echo", &mapped.to_string(), "--bytes", "100000"]);
    assert_eq!(m["identical"], true, "{m}");
    assert_eq!(m["peer"], mapped.to_string());

    // bash's /dev/tcp: a client that knows nothing about us.
    let out = cg
        .command("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<>/dev/tcp/127.0.0.2/{}; printf 'ping\\n' >&3; read -r line <&3; echo \"$line\"",
            echo4.addr.port()
        ))
        .output()
        .expect("bash");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ping");

    let sessions = agent.wait_sessions_ended(4);
    assert_eq!(sessions.len(), 4, "{sessions:#?}");
    let s = sessions
        .iter()
        .find(|s| s["pid"] == big["pid"])
        .unwrap_or_else(|| panic!("no session for pid {}: {sessions:#?}", big["pid"]));
    assert_eq!(s["workload"], "backup-bot");
    assert_eq!(s["cgroup"], cg.rel());
    assert_eq!(s["comm"], "nhi-testclient");
    assert!(
        s["exe"].as_str().unwrap_or("").ends_with("/nhi-testclient"),
        "exe: {}",
        s["exe"]
    );
    assert_eq!(s["uid"], 0);
    assert_eq!(s["user"], "root");
    assert_eq!(s["orig_dst"], echo4.addr.to_string());
    assert_eq!(s["target"], "echo4");
    assert_eq!(s["protocol"], "tcp");
    assert_eq!(s["bytes_from_client"], 64 * MIB);
    assert_eq!(s["bytes_from_server"], 64 * MIB);
    assert_eq!(s["close_reason"], "client closed");
    assert_eq!(s["cgroup_id"], cg.id());
    assert_eq!(s["client_addr"], big["local"]);

    let v6s = sessions
        .iter()
        .find(|s| s["pid"] == v6["pid"])
        .expect("v6 session");
    assert_eq!(v6s["orig_dst"], echo6.addr.to_string());
    assert_eq!(v6s["target"], "echo6");
    let ms = sessions
        .iter()
        .find(|s| s["pid"] == m["pid"])
        .expect("mapped session");
    assert_eq!(
        ms["target"], "echo4",
        "v4-mapped destinations match IPv4 targets"
    );
    assert!(sessions.iter().any(|s| s["comm"] == "bash"));
}

#[test]
fn clients_outside_the_workloads_or_to_other_destinations_are_left_alone() {
    privileged!("clients_outside_the_workloads_or_to_other_destinations_are_left_alone");
    let echo = EchoServer::start("127.0.0.2:0");
    let other = EchoServer::start("127.0.0.3:0");
    let base = unique("nhi-test");
    let selected = TestCgroup::create(&format!("{base}/selected"));
    let outside = TestCgroup::create(&format!("{base}/outside"));
    let agent = Agent::start(&format!(
        "{}{}",
        workload("bot", selected.rel()),
        target("echo", echo.addr)
    ));

    let r = outside.client(&["echo", &echo.addr.to_string()]);
    assert_eq!(r["identical"], true, "{r}");
    assert!(
        came_directly(&echo, &r),
        "outside cgroup must not be redirected"
    );

    let r = selected.client(&["echo", &other.addr.to_string()]);
    assert_eq!(r["identical"], true, "{r}");
    assert!(
        came_directly(&other, &r),
        "non-target destination must not be redirected"
    );

    // The test process itself (root cgroup) is not redirected either.
    let (local, echoed) = direct_echo(echo.addr, b"hi").unwrap();
    assert_eq!(echoed, b"hi");
    assert!(echo.peers().contains(&local));

    // And a selected client to the target is, proving the agent was live.
    let r = selected.client(&["echo", &echo.addr.to_string()]);
    assert!(!came_directly(&echo, &r));
    let sessions = agent.wait_sessions_ended(1);
    assert_eq!(
        sessions.len(),
        1,
        "only the selected client is journaled: {sessions:#?}"
    );
}

#[test]
fn cgroups_created_after_start_are_intercepted_from_their_first_connection() {
    privileged!("cgroups_created_after_start_are_intercepted_from_their_first_connection");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let parent = TestCgroup::create(&base);
    let svc = parent.child("svc");
    let agent = Agent::start(&format!(
        "{}{}{}",
        workload("late-job", &format!("{base}/job-*")),
        workload("svc", svc.rel()),
        target("echo", echo.addr)
    ));

    // A matching cgroup that did not exist when the agent scanned.
    let late = parent.child("job-42");
    // Intercepted is shown by the journal (the sessions found by pid below), not by the
    // echo server's peers: the agent's upstream socket may get the same local port as
    // a later client's socket (another destination), which made a peer check fail by
    // chance.
    let r = late.client(&["echo", &echo.addr.to_string()]);
    assert_eq!(r["identical"], true, "{r}");

    // Nested cgroups below a selected one, created after start: own path, parent's workload.
    let nested = svc.child("a").child("b");
    let n = nested.client(&["echo", &echo.addr.to_string()]);
    assert_eq!(n["identical"], true, "{n}");

    // A new cgroup that matches nothing: works, and is not journaled.
    let stranger = parent.child("stranger");
    let s = stranger.client(&["echo", &echo.addr.to_string()]);
    assert_eq!(s["identical"], true, "{s}");

    let sessions = agent.wait_sessions_ended(2);
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    let l = sessions
        .iter()
        .find(|s| s["pid"] == r["pid"])
        .expect("late session");
    assert_eq!(l["workload"], "late-job");
    assert_eq!(l["cgroup"], late.rel());
    let ns = sessions
        .iter()
        .find(|s| s["pid"] == n["pid"])
        .expect("nested session");
    assert_eq!(ns["workload"], "svc");
    assert_eq!(ns["cgroup"], format!("{}/a/b", svc.rel()));
}

#[test]
fn workload_names_are_derived_from_systemd_units_when_not_configured() {
    privileged!("workload_names_are_derived_from_systemd_units_when_not_configured");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let unit = TestCgroup::create(&format!("{base}/backup-nightly.service"));
    let agent = Agent::start(&format!(
        "[[workload]]\ncgroup = \"{base}/backup*.service\"\n{}",
        target("echo", echo.addr)
    ));
    let r = unit.client(&["echo", &echo.addr.to_string()]);
    assert_eq!(r["identical"], true);
    let sessions = agent.wait_sessions_ended(1);
    assert_eq!(sessions[0]["workload"], "backup-nightly.service");
}

#[test]
fn killed_agent_fails_closed_and_a_restarted_one_takes_over() {
    privileged!("killed_agent_fails_closed_and_a_restarted_one_takes_over");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let mut agent = Agent::start(&format!(
        "{}{}",
        workload("bot", cg.rel()),
        target("echo", echo.addr)
    ));
    assert_eq!(
        cg.client(&["echo", &echo.addr.to_string()])["identical"],
        true
    );
    // What is journaled before the crash stays; wait until the end is recorded.
    agent.wait_sessions_ended(1);
    // A session still open when the agent dies.
    let mut holder = cg
        .command(client_bin())
        .args(["silent", &echo.addr.to_string(), "--hold-ms", "5000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        || agent.sessions().len() == 2,
        "the held session to be journaled",
    );

    agent.kill9();
    let _ = holder.kill();
    let _ = holder.wait();
    let peers_before = echo.peers().len();
    let refused = cg.client(&["echo", &echo.addr.to_string()]);
    let err = refused["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("refused"),
        "expected a refused connection, got {refused}"
    );
    assert_eq!(
        echo.peers().len(),
        peers_before,
        "nothing may reach the server while the agent is down"
    );

    agent.spawn();
    assert!(agent.log_text().contains("took over the link"));
    let r = cg.client(&["echo", &echo.addr.to_string()]);
    assert_eq!(r["identical"], true, "{r}");
    let sessions = agent.wait_sessions_ended(3);
    // The restarted agent closed the session its predecessor left open.
    let interrupted = &sessions[1];
    assert!(
        interrupted["close_reason"]
            .as_str()
            .unwrap()
            .starts_with("agent stopped before the session ended"),
        "{interrupted}"
    );
    assert_eq!(sessions[2]["close_reason"], "client closed");
}

#[test]
fn thousand_concurrent_connections_relay_within_the_connection_bound() {
    privileged!("thousand_concurrent_connections_relay_within_the_connection_bound");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let bound = 64;
    let agent = Agent::start_with(
        &format!("{}{}", workload("bot", cg.rel()), target("echo", echo.addr)),
        // One workload: the per-workload limit (3/4 by default) would refuse first.
        &format!("max_connections = {bound}\nmax_connections_per_workload = {bound}"),
        &[],
    );
    let r = cg.client(&[
        "many",
        &echo.addr.to_string(),
        "--conns",
        "1000",
        "--bytes",
        "20000",
    ]);
    assert_eq!(r["ok"], 1000, "{r}");
    let sessions = agent.wait_sessions_ended(1000);
    assert_eq!(sessions.len(), 1000);
    // Sessions never overlapped more than the bound (from the journal's own times).
    let mut edges: Vec<(String, i32)> = Vec::new();
    for s in &sessions {
        edges.push((s["started_at"].as_str().unwrap().to_string(), 1));
        edges.push((s["ended_at"].as_str().unwrap().to_string(), -1));
    }
    // RFC 3339 UTC strings with fixed precision sort chronologically; ends first on ties.
    edges.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut open, mut max_open) = (0, 0);
    for (_, d) in edges {
        open += d;
        max_open = max_open.max(open);
    }
    assert!(
        max_open <= bound,
        "{max_open} sessions overlapped; bound is {bound}"
    );
    assert!(max_open > 1, "the load should have been concurrent");
    assert!(agent.log_text().contains("connection limit reached"));
}

#[test]
fn broken_config_exits_64_naming_line_and_column_and_attaches_nothing() {
    privileged!("broken_config_exits_64_naming_line_and_column_and_attaches_nothing");
    let dir = tempfile::tempdir().unwrap();
    let pins = std::path::PathBuf::from("/sys/fs/bpf").join(unique("nhi-test"));
    let path = dir.path().join("bad.toml");
    fs::write(
        &path,
        format!(
            "[agent]\nmode = \"enforce\"\njournal = \"{}/j.db\"\nbpffs = \"{}\"\n\n[[target]]\nname = \"db\"\naddress = \"10.0.0.5:99999\"\nprotocol = \"tcp\"\n",
            dir.path().display(),
            pins.display()
        ),
    )
    .unwrap();
    let out = Command::new(agent_bin())
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":8:"), "the message must name line 8: {err}");
    assert!(!pins.exists(), "nothing may be attached or pinned");
    assert!(!dir.path().join("j.db").exists(), "no journal created");
}

#[test]
fn resets_and_silent_clients_do_not_hurt_the_agent() {
    privileged!("resets_and_silent_clients_do_not_hurt_the_agent");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let agent = Agent::start_with(
        &format!("{}{}", workload("bot", cg.rel()), target("echo", echo.addr)),
        "idle_timeout = \"1s\"",
        &[],
    );
    let reset = cg.client(&["reset", &echo.addr.to_string(), "--bytes", "1000000"]);
    assert_eq!(reset["linger_zero"], true);
    let silent = cg.client(&["silent", &echo.addr.to_string(), "--hold-ms", "10000"]);
    assert_eq!(silent["outcome"], "closed by peer", "{silent}");
    assert!(silent["waited_ms"].as_u64().unwrap() < 9000);

    let ok = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "100000"]);
    assert_eq!(ok["identical"], true, "the agent must still serve: {ok}");
    let sessions = agent.wait_sessions_ended(3);
    let reasons: Vec<&str> = sessions
        .iter()
        .map(|s| s["close_reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("client reset")),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"idle timeout"), "{reasons:?}");
    assert!(reasons.contains(&"client closed"), "{reasons:?}");
}

#[test]
fn a_journal_that_cannot_record_refuses_the_connection() {
    privileged!("a_journal_that_cannot_record_refuses_the_connection");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let fsdir = tempfile::tempdir().unwrap();
    let mnt = fsdir.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=4m",
            "nhi-test",
            mnt.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let mut agent = Agent::configure_journal(
        &format!("{}{}", workload("bot", cg.rel()), target("echo", echo.addr)),
        "",
        &[],
        Some(&mnt.join("journal.db")),
    );
    agent.spawn();
    assert_eq!(
        cg.client(&["echo", &echo.addr.to_string()])["identical"],
        true
    );

    // Fill the filesystem.
    let filler = mnt.join("filler");
    let _ = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", filler.display()),
            "bs=64k",
        ])
        .stderr(Stdio::null())
        .status();
    // What is forwarded is recorded first, in the pre-log, whose last page may still
    // have room: a session that fits there is served (and in the journal once there is
    // space again). Within a few sessions the pre-log cannot take a write: from then on
    // a session is refused before anything reaches the server.
    let mut served = 0;
    let mut refused = false;
    for _ in 0..64 {
        let peers_before = echo.peers().len();
        let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "1000"]);
        if r["identical"] == true {
            served += 1;
            continue;
        }
        if echo.peers().len() == peers_before {
            refused = true;
            break;
        }
        // Cut off mid-way by a record that did not fit: what went through was recorded.
    }
    assert!(
        refused,
        "an unrecordable session must not be served ({served} were, as the pre-log had room)"
    );
    assert!(
        agent.log_text().contains("cannot record"),
        "{}",
        agent.log_text()
    );

    // Space again: the agent recovers without a restart, and every session served on
    // the pre-log's last page is in the journal with the bytes it forwarded.
    fs::remove_file(&filler).unwrap();
    let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "1000"]);
    assert_eq!(r["identical"], true, "{r}");
    let sessions = agent.wait_sessions_ended(2 + served);
    let whole = sessions
        .iter()
        .filter(|s| s["bytes_from_client"] == 1000 && s["bytes_from_server"] == 1000)
        .count();
    assert!(
        whole > served,
        "{served} served while full, then one: {sessions:#?}"
    );
    agent.kill9();
}

#[test]
fn sighup_reloads_good_configs_and_keeps_the_last_good_one() {
    privileged!("sighup_reloads_good_configs_and_keeps_the_last_good_one");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let a = TestCgroup::create(&format!("{base}/a"));
    let b = TestCgroup::create(&format!("{base}/b"));
    let agent = Agent::start(&format!(
        "{}{}",
        workload("a", a.rel()),
        target("echo", echo.addr)
    ));
    let r = b.client(&["echo", &echo.addr.to_string()]);
    assert!(came_directly(&echo, &r), "b is not a workload yet");

    let reloads = |agent: &Agent| agent.log_text().matches("configuration reloaded").count();
    let rejects = |agent: &Agent| agent.log_text().matches("reload rejected").count();
    agent.rewrite_config(|t| format!("{t}\n{}", workload("b", b.rel())));
    agent.signal(libc::SIGHUP);
    wait_until(|| reloads(&agent) == 1, "reload");
    let r = b.client(&["echo", &echo.addr.to_string()]);
    assert!(
        !came_directly(&echo, &r),
        "b is a workload after the reload"
    );

    agent
        .rewrite_config(|t| format!("{t}\n[[target]]\nname = \"broken\"\naddress = \"nowhere\"\n"));
    agent.signal(libc::SIGHUP);
    wait_until(|| rejects(&agent) == 1, "rejected reload");
    let log = agent.log_text();
    let line = log.lines().find(|l| l.contains("reload rejected")).unwrap();
    assert!(
        line.contains("agent.toml:"),
        "the reason names the file and position: {line}"
    );
    let r = b.client(&["echo", &echo.addr.to_string()]);
    assert!(
        !came_directly(&echo, &r),
        "the last good config stays in force"
    );
    let sessions = agent.wait_sessions_ended(2);
    assert!(sessions.iter().all(|s| s["workload"] == "b"));
}

#[test]
fn sigterm_drains_open_connections_then_fails_closed_or_detaches() {
    privileged!("sigterm_drains_open_connections_then_fails_closed_or_detaches");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let body = format!("{}{}", workload("bot", cg.rel()), target("echo", echo.addr));
    let mut agent = Agent::start_with(&body, "drain_timeout = \"60s\"", &[]);

    // A transfer in flight when SIGTERM arrives completes (however slow the machine:
    // the wait for the exit outlasts the drain).
    let client = cg
        .command(client_bin())
        .args([
            "echo",
            &echo.addr.to_string(),
            "--bytes",
            &(256 * MIB).to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    agent.wait_log("session opened", 1);
    assert_eq!(agent.terminate_within(Duration::from_secs(120)), Some(0));
    let out = client.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["identical"], true, "drained transfer: {v}");
    let sessions = agent.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["bytes_from_client"], 256 * MIB);
    // Fail-closed: the stopped agent leaves interception in place.
    let refused = cg.client(&["echo", &echo.addr.to_string()]);
    assert!(
        refused["error"].as_str().unwrap_or("").contains("refused"),
        "{refused}"
    );
    drop(agent);

    // --detach-on-exit: a clean stop removes the programs; clients connect directly.
    let mut agent = Agent::start_with(&body, "", &["--detach-on-exit"]);
    assert!(!came_directly(
        &echo,
        &cg.client(&["echo", &echo.addr.to_string()])
    ));
    assert_eq!(agent.terminate(), Some(0));
    let r = cg.client(&["echo", &echo.addr.to_string()]);
    assert_eq!(r["identical"], true, "{r}");
    assert!(came_directly(&echo, &r));
}

#[test]
fn policy_check_reports_position_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    fs::write(
        &good,
        "[agent]\nmode = \"enforce\"\njournal = \"/tmp/j.db\"\n\n[[workload]]\nname = \"backup-bot\"\n\
         cgroup = \"system.slice/backup*.service\"\n\n[[target]]\nname = \"orders-db\"\n\
         address = \"10.0.0.5:5432\"\nprotocol = \"tcp\"\n",
    )
    .unwrap();
    let out = Command::new(agent_bin())
        .args(["policy", "check", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    fs::write(
        &bad,
        "[agent]\nmode = \"enforce\"\njournal = \"/tmp/j.db\"\nmodez = 1\n",
    )
    .unwrap();
    let out = Command::new(agent_bin())
        .args(["policy", "check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:4:1"), "{err}");
}

fn wait_until(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cidr_and_any_host_targets_are_matched_in_the_kernel() {
    privileged!("cidr_and_any_host_targets_are_matched_in_the_kernel");
    let inside = EchoServer::start("127.0.0.2:0");
    let port = inside.addr.port();
    // Same port, outside the network: not a target.
    let outside = EchoServer::start(&format!("127.0.1.2:{port}"));
    let any4 = EchoServer::start("127.0.0.4:0");
    let any6 = EchoServer::start(&format!("[::1]:{}", any4.addr.port()));
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let agent = Agent::start(&format!(
        "{}[[target]]\nname = \"net\"\naddress = \"127.0.0.0/24:{port}\"\n\n\
         [[target]]\nname = \"any\"\naddress = \"*:{}\"\n",
        workload("bot", cg.rel()),
        any4.addr.port()
    ));
    let a = cg.client(&["echo", &inside.addr.to_string()]);
    assert!(!came_directly(&inside, &a), "inside the CIDR: redirected");
    let b = cg.client(&["echo", &outside.addr.to_string()]);
    assert_eq!(b["identical"], true);
    assert!(came_directly(&outside, &b), "outside the CIDR: untouched");
    let c = cg.client(&["echo", &any4.addr.to_string()]);
    assert!(!came_directly(&any4, &c), "*:port over IPv4");
    let d = cg.client(&["echo", &any6.addr.to_string()]);
    assert!(!came_directly(&any6, &d), "*:port over IPv6");
    let sessions = agent.wait_sessions_ended(3);
    let targets: Vec<&str> = sessions
        .iter()
        .map(|s| s["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["net", "any", "any"]);
}

#[test]
fn a_workload_uid_selects_only_that_users_connections() {
    privileged!("a_workload_uid_selects_only_that_users_connections");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/shared"));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"nobody-bot\"\ncgroup = \"{}\"\nuid = 65534\n{}",
        cg.rel(),
        target("echo", echo.addr)
    ));
    let as_root = cg.client(&["echo", &echo.addr.to_string()]);
    assert!(
        came_directly(&echo, &as_root),
        "root is not the selected uid"
    );

    let out = cg
        .command("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(client_bin())
        .args(["echo", &echo.addr.to_string()])
        .output()
        .unwrap();
    let as_nobody: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(as_nobody["identical"], true, "{as_nobody}");
    assert!(
        !came_directly(&echo, &as_nobody),
        "uid 65534 is intercepted"
    );
    let sessions = agent.wait_sessions_ended(1);
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["uid"], 65534);
    assert_eq!(sessions[0]["user"], "nobody");
    assert_eq!(sessions[0]["workload"], "nobody-bot");
    assert!(
        sessions[0]["exe"]
            .as_str()
            .unwrap_or("")
            .ends_with("/nhi-testclient"),
        "{}",
        sessions[0]
    );
}

#[test]
fn an_unreachable_destination_resets_the_client_and_is_journaled_and_replayable() {
    privileged!("an_unreachable_destination_resets_the_client_and_is_journaled_and_replayable");
    // A port nobody listens on (bound, then released).
    let dead: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        l.local_addr().unwrap()
    };
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let agent = Agent::start(&format!(
        "{}{}{}",
        workload("bot", cg.rel()),
        target("dead", dead),
        target("echo", echo.addr)
    ));
    let r = cg.client(&["echo", &dead.to_string()]);
    assert_ne!(r["identical"], true, "{r}");
    assert!(r["error"].is_string(), "the client sees an error: {r}");
    let ok = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "300000"]);
    assert_eq!(ok["identical"], true);

    let sessions = agent.wait_sessions_ended(2);
    let failed = sessions.iter().find(|s| s["target"] == "dead").unwrap();
    assert!(
        failed["close_reason"]
            .as_str()
            .unwrap()
            .starts_with("upstream connect failed"),
        "{failed}"
    );
    assert_eq!(failed["bytes_from_client"], 0, "nothing was forwarded");

    // The replay of the good session shows its identity and its chunk timeline.
    let good = sessions.iter().find(|s| s["target"] == "echo").unwrap();
    let id = good["id"].to_string();
    let out = agent.cli(&["replay", &id, "--journal", agent.journal.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(cg.rel()), "{text}");
    assert!(text.contains(&echo.addr.to_string()), "{text}");
    assert!(text.contains("client→server"), "{text}");
    assert!(text.contains("server→client"), "{text}");
    let out = agent.cli(&[
        "replay",
        &id,
        "--journal",
        agent.journal.to_str().unwrap(),
        "--json",
    ]);
    let chunks: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| e["kind"] == "chunk")
        .collect();
    let total = |dir: &str| -> u64 {
        chunks
            .iter()
            .filter(|c| c["direction"] == dir)
            .map(|c| c["size"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(total("c2s"), 300000, "chunk sizes add up to what was sent");
    assert_eq!(total("s2c"), 300000);
}

#[test]
fn a_direct_connection_to_the_proxy_port_is_refused_and_borrows_no_identity() {
    privileged!("a_direct_connection_to_the_proxy_port_is_refused_and_borrows_no_identity");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let agent = Agent::start(&format!(
        "{}{}",
        workload("bot", cg.rel()),
        target("echo", echo.addr)
    ));
    // A redirected connection first, so that its client port has had a record.
    let r = cg.client(&["echo", &echo.addr.to_string()]);
    assert_eq!(r["identical"], true);
    agent.wait_sessions_ended(1);
    let peers_before = echo.peers().len();

    // Now straight at the proxy, from outside any workload.
    let proxy: SocketAddr = format!("127.0.0.1:{}", agent.port).parse().unwrap();
    let got = direct_echo(proxy, b"let me in");
    match got {
        Ok((_, data)) => assert!(data.is_empty(), "nothing may come back: {data:?}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
    }
    assert_eq!(echo.peers().len(), peers_before, "nothing was forwarded");
    wait_until(
        || agent.log_text().contains("not redirected by the kernel"),
        "the refusal to be logged",
    );
    assert_eq!(agent.sessions().len(), 1, "nothing new was journaled");
    // The agent still serves.
    let r = cg.client(&["echo", &echo.addr.to_string()]);
    assert_eq!(r["identical"], true);
}

#[test]
fn new_cgroups_where_no_pattern_can_match_go_direct_even_while_the_agent_is_down() {
    privileged!("new_cgroups_where_no_pattern_can_match_go_direct_even_while_the_agent_is_down");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let parent = TestCgroup::create(&base);
    // "elsewhere" can never hold a "svc-*" cgroup; "{base}" can.
    let elsewhere = parent.child("elsewhere");
    let mut agent = Agent::start(&format!(
        "{}{}",
        workload("svc", &format!("{base}/svc-*")),
        target("echo", echo.addr)
    ));
    let login = elsewhere.child("login-1");
    let r = login.client(&["echo", &echo.addr.to_string()]);
    assert!(
        came_directly(&echo, &r),
        "never a workload: not even handed to the agent"
    );

    agent.kill9();
    // Fail-closed applies to what could be a workload...
    let maybe = parent.child("svc-new");
    let refused = maybe.client(&["echo", &echo.addr.to_string()]);
    assert!(
        refused["error"].as_str().unwrap_or("").contains("refused"),
        "{refused}"
    );
    // ...not to cgroups that never can be.
    let later = elsewhere.child("login-2");
    let r = later.client(&["echo", &echo.addr.to_string()]);
    assert_eq!(r["identical"], true, "{r}");
    assert!(came_directly(&echo, &r));
    assert!(agent.sessions().is_empty());
}

#[test]
fn sigterm_closes_what_outlives_the_drain_timeout_and_journals_why() {
    privileged!("sigterm_closes_what_outlives_the_drain_timeout_and_journals_why");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let mut agent = Agent::start_with(
        &format!("{}{}", workload("bot", cg.rel()), target("echo", echo.addr)),
        "drain_timeout = \"1s\"",
        &[],
    );
    let holder = cg
        .command(client_bin())
        .args(["silent", &echo.addr.to_string(), "--hold-ms", "20000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(|| agent.sessions().len() == 1, "the held session");
    let started = Instant::now();
    assert_eq!(agent.terminate(), Some(0));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "the drain period was honoured: {waited:?}"
    );
    let out = holder.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "closed by peer", "{v}");
    let sessions = agent.sessions();
    assert_eq!(sessions[0]["close_reason"], "agent shutdown");
}

#[test]
fn targets_removed_by_reload_or_across_a_restart_stop_being_intercepted() {
    privileged!("targets_removed_by_reload_or_across_a_restart_stop_being_intercepted");
    let kept = EchoServer::start("127.0.0.2:0");
    let dropped = EchoServer::start("127.0.0.3:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let both = format!(
        "{}{}{}",
        workload("bot", cg.rel()),
        target("kept", kept.addr),
        target("dropped", dropped.addr)
    );
    let only_kept = format!("{}{}", workload("bot", cg.rel()), target("kept", kept.addr));
    let mut agent = Agent::start(&both);
    assert!(!came_directly(
        &dropped,
        &cg.client(&["echo", &dropped.addr.to_string()])
    ));

    // Reload without the target: the kernel trie entry goes.
    agent.rewrite_config(|t| t.replace(&both, &only_kept));
    agent.signal(libc::SIGHUP);
    wait_until(
        || agent.log_text().contains("configuration reloaded"),
        "reload",
    );
    let r = cg.client(&["echo", &dropped.addr.to_string()]);
    assert!(came_directly(&dropped, &r), "removed by reload: direct");
    assert!(!came_directly(
        &kept,
        &cg.client(&["echo", &kept.addr.to_string()])
    ));

    // Across a crash: the pinned trie holds both targets again (from a restart with
    // the old file); a new agent with the smaller file must clear the stale entry.
    agent.rewrite_config(|t| t.replace(&only_kept, &both));
    agent.kill9();
    agent.spawn();
    assert!(!came_directly(
        &dropped,
        &cg.client(&["echo", &dropped.addr.to_string()])
    ));
    agent.kill9();
    agent.rewrite_config(|t| t.replace(&both, &only_kept));
    agent.spawn();
    let r = cg.client(&["echo", &dropped.addr.to_string()]);
    assert_eq!(r["identical"], true, "{r}");
    assert!(
        came_directly(&dropped, &r),
        "stale pinned target cleared at start"
    );
}

/// `journal_fsync = "each"`: a session's start is committed before the agent connects
/// upstream. While the test holds the journal's write lock, a new session does not
/// reach the server (with `group` it would: its start is in the pre-log at once); once
/// the lock is released it does, the agent is killed, and the journal is read as it is
/// on disk (no agent opens it, so nothing is recovered from the pre-log): the session
/// is there.
#[test]
fn with_journal_fsync_each_a_session_is_committed_before_its_upstream_connect() {
    privileged!("with_journal_fsync_each_a_session_is_committed_before_its_upstream_connect");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let mut agent = Agent::start_with(
        &format!("{}{}", workload("bot", cg.rel()), target("echo", echo.addr)),
        "journal_fsync = \"each\"\n",
        &[],
    );
    let r = cg.client(&["echo", &echo.addr.to_string()]);
    assert_eq!(r["identical"], true, "{r}");
    agent.wait_sessions_ended(1);

    // The writer waits up to 5 s (busy_timeout) for the lock; it is held for 1 s.
    let lock = rusqlite::Connection::open(&agent.journal).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let peers_before = echo.peers().len();
    let mut holder = cg
        .command(client_bin())
        .args(["silent", &echo.addr.to_string(), "--hold-ms", "10000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        echo.peers().len(),
        peers_before,
        "no upstream connection before the start is committed"
    );
    lock.execute_batch("ROLLBACK").unwrap();
    wait_until(
        || echo.peers().len() > peers_before,
        "the agent's upstream connection",
    );
    agent.kill9();
    let _ = holder.kill();
    let _ = holder.wait();

    let sessions = agent.sessions();
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    let held = sessions
        .iter()
        .find(|s| s["ended_at"].is_null())
        .expect("the held session, open when the agent died");
    assert_eq!(held["workload"], "bot");
    assert_eq!(held["cgroup"], cg.rel());
}

/// The process behind a connection, as the journal names it: a command line longer
/// than a page arrives whole, and a client killed before the agent reads its /proc
/// files still gets its session (pid and comm from the kernel's record, no exe or
/// command line), which ends, and the agent goes on serving.
#[test]
fn a_session_names_its_process_and_a_client_killed_before_it_is_read_still_gets_one() {
    privileged!("a_session_names_its_process_and_a_client_killed_before_it_is_read_still_gets_one");
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let mut agent = Agent::configure(
        &format!("{}{}", workload("bot", cg.rel()), target("echo", echo.addr)),
        "",
        &[],
    );
    let release = agent.dir.path().join("release");
    agent.set_env(
        "NHI_FAILPOINTS",
        &format!("proxy.before_process=wait:{}", release.display()),
    );
    agent.spawn();

    // Held before its process is read, then killed and reaped.
    let mut victim = cg
        .command(client_bin())
        .args(["silent", &echo.addr.to_string(), "--hold-ms", "60000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let victim_pid = victim.id();
    agent.wait_log("failpoint proxy.before_process: waiting", 1);
    victim.kill().unwrap();
    victim.wait().unwrap();
    fs::write(&release, b"").expect("release the failpoint");

    // bash connects itself, so its command line (with a 10,000-byte argument as $0) is
    // the one journaled.
    let long = "x".repeat(10_000);
    let out = cg
        .command("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<>/dev/tcp/127.0.0.2/{}; printf 'ping\\n' >&3; read -r line <&3; echo \"$line\"",
            echo.addr.port()
        ))
        .arg(&long)
        .output()
        .expect("bash");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ping");

    let sessions = agent.wait_sessions_ended(2);
    let killed = sessions
        .iter()
        .find(|s| s["pid"] == victim_pid)
        .unwrap_or_else(|| panic!("no session for the killed client: {sessions:#?}"));
    assert_eq!(killed["workload"], "bot");
    assert_eq!(killed["comm"], "nhi-testclient");
    assert!(killed["exe"].is_null(), "{killed:#}");
    assert!(killed["cmdline"].is_null(), "{killed:#}");
    let bash = sessions
        .iter()
        .find(|s| s["pid"] != victim_pid)
        .expect("the bash session");
    assert!(
        bash["exe"].as_str().is_some_and(|e| e.ends_with("/bash")),
        "{bash:#}"
    );
    let cmdline: Vec<&str> = bash["cmdline"]
        .as_array()
        .unwrap_or_else(|| panic!("no command line: {bash:#}"))
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cmdline.len(), 4, "{cmdline:?}");
    assert_eq!(cmdline[0], "bash");
    assert_eq!(cmdline[3], long, "the 10,000-byte argument, whole");
}
