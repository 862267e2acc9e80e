//! Workloads in their own network namespace (containers): a namespace and veth pair made
//! by the test, a process in an intercepted cgroup inside it, real servers on the host
//! side of the veth, real eBPF. Intercepted from the namespace it runs in, dialled out
//! of that namespace, refused while the agent is dead, served again after a restart.
use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use nhi_tests::netns::TestNetns;
use nhi_tests::*;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// psql inside the namespace and the cgroup, against `addr`.
fn psql_in(net: &TestNetns, cg: &TestCgroup, addr: SocketAddr, sql: &str) -> Output {
    net.command(cg, "psql")
        .args(["-X", "-At", "-U", "postgres", "-h"])
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql")
}

#[test]
fn a_process_in_its_own_network_namespace_is_intercepted_there() {
    privileged!("a_process_in_its_own_network_namespace_is_intercepted_there");
    let net = TestNetns::create();
    let listen = format!("listen_addresses = '127.0.0.1,::1,{}'", net.host_ip);
    let hba = format!("host all all {}/32 trust", net.ns_ip);
    let pg = PgServer::start_full(&[&listen], &[&hba], |_| {});
    pg.sql("create table t (x int); insert into t values (7)");
    let target = SocketAddr::new(net.host_ip, pg.port);
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let mut agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"db\"\naddress = \"{target}\"\nprotocol = \"postgres\"\n",
        cg.rel()
    ));
    // The namespace's long-lived process (a container's init): it keeps the namespace
    // served between the psql runs and lets a restarted agent find it.
    let mut init = net
        .command(&cg, "sleep")
        .arg("600")
        .spawn()
        .expect("sleep in the namespace");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let init_pid = init.id();
    let _init = Kill(&mut init);

    // The first connection made in the namespace is held until the agent listens
    // there, then goes through; the server sees the namespace's own address (the agent
    // dialled from inside the namespace, not from the host).
    let sql = "select x, inet_client_addr() from t";
    let started = Instant::now();
    let out = psql_in(&net, &cg, target, sql);
    let first = started.elapsed();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "psql failed: {stdout}\n{stderr}");
    assert_eq!(stdout, format!("7|{}", net.ns_ip));
    agent.wait_log("listening in a container network namespace", 1);
    let started = Instant::now();
    let out = psql_in(&net, &cg, target, sql);
    let second = started.elapsed();
    assert!(out.status.success(), "second psql: {:?}", text(&out));
    println!("first connection {first:?} (held until served), second {second:?}");

    // Journaled with the workload, the address the client dialled and the statements.
    let sessions = agent.wait_sessions_ended(2);
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    // The session names the namespace (its inode, as `ls -l /proc/PID/ns/net`
    // shows it); no container runtime made it, and psql shares the host's pid namespace.
    let inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", net.name))
            .expect("netns file")
            .ino()
    };
    for s in &sessions {
        assert_eq!(s["workload"], "bot");
        assert_eq!(s["orig_dst"], target.to_string());
        assert_eq!(s["protocol"], "postgres");
        assert_eq!(
            s["container"],
            serde_json::json!({ "netns": inode }),
            "{s:#}"
        );
    }
    let statements = agent.statements();
    assert!(
        statements
            .iter()
            .filter(|s| s["text"].as_str() == Some(sql))
            .count()
            >= 2,
        "{statements:#?}"
    );

    // getpeername() inside the namespace shows the original destination.
    let echo = EchoServer::start(&format!("{}:0", net.host_ip));
    agent.rewrite_config(|c| {
        c.replace(
            "[[target]]",
            &format!(
                "[[target]]\nname = \"echo\"\naddress = \"{}\"\n\n[[target]]",
                echo.addr
            ),
        )
    });
    agent.signal(libc::SIGHUP);
    agent.wait_log("configuration reloaded", 1);
    let out = net
        .command(&cg, &client_bin().display().to_string())
        .args(["echo", &echo.addr.to_string(), "--bytes", "1000"])
        .output()
        .expect("client");
    let answer: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(answer["peer"], echo.addr.to_string(), "{answer}");
    assert_eq!(answer["identical"], true, "{answer}");
    assert_eq!(
        echo.peers().last().map(|p| p.ip()),
        Some(net.ns_ip),
        "the echo server saw {:?}",
        echo.peers()
    );

    // Scoped to the host's namespace, the target no longer applies to connections made
    // in the namespace: they go direct and nothing is journaled; scoped to containers,
    // it applies again.
    let db_sessions = |agent: &Agent| {
        agent
            .sessions()
            .iter()
            .filter(|s| s["target"] == "db")
            .count()
    };
    let before = db_sessions(&agent);
    let scoped = |agent: &Agent, scope: &str, n: usize| {
        agent.rewrite_config(|c| {
            let c = c
                .replace("netns = \"host\"\n", "")
                .replace("netns = \"container\"\n", "");
            c.replace(
                "protocol = \"postgres\"\n",
                &format!("protocol = \"postgres\"\nnetns = \"{scope}\"\n"),
            )
        });
        agent.signal(libc::SIGHUP);
        agent.wait_log("configuration reloaded", n);
    };
    scoped(&agent, "host", 2);
    let out = psql_in(&net, &cg, target, sql);
    assert!(out.status.success(), "direct: {:?}", text(&out));
    assert_eq!(text(&out).0, format!("7|{}", net.ns_ip));
    assert_eq!(
        db_sessions(&agent),
        before,
        "a host-scoped target journaled a container's connection"
    );
    scoped(&agent, "container", 3);
    let out = psql_in(&net, &cg, target, sql);
    assert!(out.status.success(), "container-scoped: {:?}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(20);
    while db_sessions(&agent) != before + 1 {
        assert!(
            Instant::now() < deadline,
            "the container-scoped target journaled nothing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Once the psql that asked for the namespace is gone, the kernel's entry names the
    // namespace's remaining process (`ip netns exec` execs sleep, so its pid is the
    // spawned one), through which a restarted agent opens it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let entries = nhi_agent::ebpf::pinned_netns(&agent.pin_dir).expect("NHI_NETNS");
        if entries.len() == 1 && entries[0].1.tgid == init_pid {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the entry names no live process: {entries:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The agent dies: the namespace's connections are refused, never let through.
    agent.kill9();
    let started = Instant::now();
    let out = psql_in(&net, &cg, target, sql);
    assert!(!out.status.success(), "psql went through a dead agent");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused, not held"
    );
    let (_, stderr) = text(&out);
    assert!(stderr.contains("refused"), "{stderr}");

    // A restarted agent takes the namespace over as it starts, before any connection
    // asks for it.
    let served = agent.count_log("listening in a container network namespace");
    agent.spawn();
    agent.wait_log("listening in a container network namespace", served + 1);
    let out = psql_in(&net, &cg, target, sql);
    assert!(out.status.success(), "after restart: {:?}", text(&out));
    assert_eq!(text(&out).0, format!("7|{}", net.ns_ip));
}

/// Open sockets of process `pid` (its fds that are sockets).
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().starts_with("socket:"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Short-lived "containers": a thousand processes, each in a network namespace of its
/// own (`unshare -n`) that dies with it, each making one intercepted connection. The
/// agent serves every namespace, and once they are gone it holds no listener, socket
/// or map entry for any of them.
#[test]
fn a_thousand_short_lived_namespaces_leave_no_listeners_sockets_or_map_entries() {
    privileged!("a_thousand_short_lived_namespaces_leave_no_listeners_sockets_or_map_entries");
    const NAMESPACES: usize = 1000;
    const AT_ONCE: usize = 100;
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    // A loopback port nothing listens on, in any namespace: each session is journaled
    // and ends with the upstream connect refused inside its namespace.
    let target = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"nowhere\"\naddress = \"{target}\"\n",
        cg.rel()
    ));
    let pid = agent.pid().expect("agent pid");
    let sockets_before = sockets_of(pid);
    let rss_before = rss_kib(pid);
    let client = client_bin().display().to_string();
    // NHI_NETNS_HOST=1 makes the same connections from the host's namespace: the
    // baseline for the memory figures.
    let script = if std::env::var("NHI_NETNS_HOST").is_ok() {
        format!("exec {client} echo {target} --bytes 1")
    } else {
        format!("ip link set lo up && exec {client} echo {target} --bytes 1")
    };
    let in_ns = std::env::var("NHI_NETNS_HOST").is_err();
    let unshare: &[&str] = if !in_ns { &[] } else { &["-n"] };
    // NHI_NETNS_ROUNDS=N repeats the whole thing, to tell a leak (RSS growing every
    // round) from what the allocator and the journal's page cache keep after the first.
    let rounds: usize = std::env::var("NHI_NETNS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for round in 1..=rounds {
        let started = Instant::now();
        for _ in 0..NAMESPACES / AT_ONCE {
            let children: Vec<_> = (0..AT_ONCE)
                .map(|_| {
                    cg.command("unshare")
                        .args(unshare)
                        .args(["sh", "-c", &script])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .expect("unshare")
                })
                .collect();
            for mut c in children {
                let _ = c.wait();
            }
        }
        let elapsed = started.elapsed();
        let total = NAMESPACES * round;
        let sessions = agent.wait_sessions_ended(total);
        assert_eq!(sessions.len(), total);
        // (Namespace inodes are reused once a namespace is gone, so the sessions'
        // `netns` values repeat; the agent's log counts the namespaces it served.)
        for s in &sessions {
            assert_eq!(s["container"]["netns"].as_u64().is_some(), in_ns, "{s:#}");
        }
        let served = if in_ns { total } else { 0 };
        assert_eq!(
            agent.count_log("listening in a container network namespace"),
            served
        );
        let rss_peak = rss_kib(pid);

        // Released within a few sweeps: no map entry, no listener, no socket left.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = nhi_agent::ebpf::pinned_netns(&agent.pin_dir).expect("read NHI_NETNS");
            let released = agent.count_log("no process left in the network namespace");
            if left.is_empty() && released == served {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} namespaces still in the map, {released} released",
                left.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let sockets_after = sockets_of(pid);
        println!(
            "round {round}: {NAMESPACES} namespaces ({AT_ONCE} at a time) in {elapsed:?}; agent sockets \
             {sockets_before} -> {sockets_after}; RSS {rss_before} KiB at start, peak {rss_peak} KiB, \
             {} KiB after release",
            rss_kib(pid)
        );
        assert_eq!(sockets_after, sockets_before, "sockets left behind");
    }
}

/// Something in the namespace already listens on the agent's port: the agent cannot
/// serve the namespace, and its intercepted connections fail (the first one held until
/// TCP gives up, about 20 s, the next ones at once with EPERM). None reaches the squatter, none
/// reaches the destination unrecorded.
#[test]
fn a_namespace_where_the_proxy_port_is_taken_refuses_and_misdelivers_nothing() {
    privileged!("a_namespace_where_the_proxy_port_is_taken_refuses_and_misdelivers_nothing");
    let net = TestNetns::create();
    let echo = EchoServer::start(&format!("{}:0", net.host_ip));
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"echo\"\naddress = \"{}\"\n",
        cg.rel(),
        echo.addr
    ));
    // The squatter: a listener on 127.0.0.1 only, at the agent's port, inside the
    // namespace; and a process living there (not in the intercepted cgroup), as a
    // container's own service would be.
    let squatter = net
        .listen(SocketAddr::from(([127, 0, 0, 1], agent.port)))
        .expect("squat the agent's port in the namespace");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            for _ in squatter.incoming() {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    let mut resident = std::process::Command::new("ip")
        .args(["netns", "exec", &net.name, "sleep", "600"])
        .spawn()
        .expect("a process in the namespace");
    let connect = || {
        let out = net
            .command(&cg, &client_bin().display().to_string())
            .args(["echo", &echo.addr.to_string(), "--bytes", "10"])
            .output()
            .expect("client");
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };
    let first = connect();
    assert!(first["error"].is_string(), "{first}");
    agent.wait_log("cannot listen in the network namespace", 1);
    let started = Instant::now();
    let second = connect();
    let error = second["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("Operation not permitted"), "{second}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the squatter got a connection"
    );
    assert!(
        echo.peers().is_empty(),
        "the destination was reached: {:?}",
        echo.peers()
    );
    assert!(agent.sessions().is_empty());
    let _ = resident.kill();
    let _ = resident.wait();
}

/// IPv6: a client in the namespace dials a target over IPv6. The kernel redirects it to
/// the agent's listener on the namespace's `::1`, the agent dials out of the namespace
/// over IPv6, and the client still sees the address it dialled.
#[test]
fn ipv6_connections_made_in_a_namespace_are_intercepted_there() {
    privileged!("ipv6_connections_made_in_a_namespace_are_intercepted_there");
    let net = TestNetns::create();
    let echo = EchoServer::start(&SocketAddr::new(net.host_ip6, 0).to_string());
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"echo6\"\naddress = \"{}\"\n",
        cg.rel(),
        echo.addr
    ));
    let out = net
        .command(&cg, &client_bin().display().to_string())
        .args(["echo", &echo.addr.to_string(), "--bytes", "100000"])
        .output()
        .expect("client");
    let answer: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(answer["identical"], true, "{answer}");
    assert_eq!(answer["peer"], echo.addr.to_string(), "{answer}");
    assert_eq!(
        echo.peers().last().map(|p| p.ip()),
        Some(net.ns_ip6),
        "the echo server saw {:?}",
        echo.peers()
    );
    let sessions = agent.wait_sessions_ended(1);
    assert_eq!(sessions[0]["orig_dst"], echo.addr.to_string());
    assert_eq!(sessions[0]["bytes_from_client"], 100000);
    assert!(sessions[0]["container"]["netns"].as_u64().is_some());
}
