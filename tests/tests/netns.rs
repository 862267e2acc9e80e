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

    // A restarted agent takes the namespace over again.
    agent.spawn();
    let out = psql_in(&net, &cg, target, sql);
    assert!(out.status.success(), "after restart: {:?}", text(&out));
    assert_eq!(text(&out).0, format!("7|{}", net.ns_ip));
}
