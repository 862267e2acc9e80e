//! Real PostgreSQL clients (psql, pgbench) against a real PostgreSQL server, through
//! the agent and its eBPF interception. Until the PostgreSQL decoder is wired in, the
//! target protocol is `tcp`: these tests pin down that unmodified clients work
//! unchanged through the relay and that every connection is journaled.
use nhi_tests::*;

#[test]
fn psql_and_pgbench_work_unchanged_through_the_agent() {
    privileged!("psql_and_pgbench_work_unchanged_through_the_agent");
    let pg = PgServer::start();
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/etl-job"));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"etl\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"pg4\"\naddress = \"{}\"\nprotocol = \"tcp\"\n\n\
         [[target]]\nname = \"pg6\"\naddress = \"{}\"\nprotocol = \"tcp\"\n",
        cg.rel(),
        pg.addr(),
        pg.addr6()
    ));
    let port = pg.port.to_string();
    let psql = |host: &str, sql: &str| {
        let out = cg
            .command("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
            .args(["-h", host, "-p", &port, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The server sees the agent as the client (the connection went through it)...
    assert_eq!(psql("127.0.0.1", "select 6 * 7"), "42");
    let seen = psql("::1", "select inet_server_addr()::text");
    assert_eq!(seen, "::1/128");
    // ...and a multi-statement string and an error behave as without the agent.
    let out = cg
        .command("psql")
        .args([
            "-X",
            "-At",
            "-U",
            "postgres",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
        ])
        .args(["-c", "select 1/0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("division by zero"));

    // pgbench: initialisation (COPY) and a prepared read-only run with 4 clients.
    let run = |args: &[&str]| {
        let out = cg
            .command("pgbench")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(args)
            .arg("postgres")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["-i", "-s", "1", "-q"]);
    let report = run(&["-S", "-M", "prepared", "-c", "4", "-t", "200"]);
    assert!(
        report.contains("number of transactions actually processed: 800/800"),
        "{report}"
    );
    // The data the bench loaded is really in the server.
    assert_eq!(
        pg.sql("select count(*) from pgbench_accounts").trim(),
        "100000"
    );

    // psql x3 (one failed query), pgbench -i (1 session), pgbench run (4 clients + 1 setup).
    let sessions = agent.wait_sessions_ended(8);
    assert!(sessions.iter().all(|s| s["workload"] == "etl"));
    assert!(sessions.iter().any(|s| s["comm"] == "pgbench"));
    assert!(sessions.iter().any(|s| s["target"] == "pg6"));
    let copy = sessions
        .iter()
        .filter(|s| s["comm"] == "pgbench")
        .map(|s| s["bytes_from_client"].as_u64().unwrap())
        .max()
        .unwrap();
    // Each COPY row of pgbench_accounts is at least "<aid>\t1\t0\t\n": digits + 6 bytes.
    let min_copy: u64 = (1..=100_000u64)
        .map(|aid| aid.to_string().len() as u64 + 6)
        .sum();
    assert!(
        copy >= min_copy,
        "the COPY of 100000 rows went through: {copy} bytes < {min_copy}"
    );
}
