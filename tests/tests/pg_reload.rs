//! Reloads (SIGHUP) that race PostgreSQL connections: a connection accepted under one
//! configuration keeps that configuration's target, policy and runtime to its end, and a
//! cancel request that arrives after a reload reordered the targets still reaches the
//! backend. The first test holds the connection between its session row and its
//! protocol dispatch with a failpoint (`NHI_FAILPOINTS`, debug builds) while the reload
//! happens, so the race is forced, not hoped for.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nhi_tests::*;

fn workload(name: &str, cg: &TestCgroup) -> String {
    format!(
        "[[workload]]\nname = \"{name}\"\ncgroup = \"{}\"\n\n",
        cg.rel()
    )
}

/// The config body: the `bot` workload, the PostgreSQL target `orders-db` with a
/// `no-drop` rule, and (when `echo` is given) an opaque target listed *before* it, so
/// `orders-db` moves from index 0 to index 1.
fn body(cg: &TestCgroup, pg: &PgServer, echo: Option<&EchoServer>) -> String {
    let opaque = echo.map_or(String::new(), |e| {
        format!(
            "[[target]]\nname = \"echo\"\naddress = \"{}\"\nprotocol = \"tcp\"\n\n",
            e.addr
        )
    });
    format!(
        "{}{opaque}[[target]]\nname = \"orders-db\"\naddress = \"{}\"\nprotocol = \"postgres\"\n\n\
         [[policy]]\nname = \"bots\"\nworkload = \"bot\"\n\n\
         [[policy.rule]]\nname = \"no-drop\"\nverdict = \"deny\"\nkinds = [\"drop\"]\n",
        workload("bot", cg),
        pg.addr()
    )
}

/// Replaces the body of `agent`'s config (everything after the generated `[agent]`
/// table) and sends SIGHUP; returns once the agent logged the reload.
fn reload(agent: &Agent, new_body: &str) {
    let before = agent.count_log("configuration reloaded");
    agent.rewrite_config(|text| {
        let at = text.find("[[workload]]").expect("a workload in the config");
        format!("{}{new_body}", &text[..at])
    });
    agent.signal(libc::SIGHUP);
    agent.wait_log("configuration reloaded", before + 1);
}

#[test]
fn a_connection_straddling_a_reload_keeps_its_configuration_and_policy() {
    privileged!("a_connection_straddling_a_reload_keeps_its_configuration_and_policy");
    let pg = PgServer::start();
    pg.sql("create table orders (id int primary key); insert into orders values (1)");
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let mut agent = Agent::configure(&body(&cg, &pg, None), "", &[]);
    let release = agent.dir.path().join("release");
    agent.set_env(
        "NHI_FAILPOINTS",
        &format!("proxy.after_session_start=wait:{}", release.display()),
    );
    agent.spawn();

    let psql = cg
        .command("psql")
        .args(["-X", "-At", "-U", "postgres", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .args(["-c", "drop table orders"])
        .env("PGCONNECT_TIMEOUT", "60")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start psql");
    // The connection is accepted and its session row written under the first config...
    agent.wait_log("failpoint proxy.after_session_start: waiting", 1);
    // ...then a reload puts an opaque target at the index `orders-db` had.
    reload(&agent, &body(&cg, &pg, Some(&echo)));
    std::fs::write(&release, b"").expect("release the failpoint");

    let out = psql.wait_with_output().expect("psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no-drop"),
        "the drop must be refused by the policy of the session's configuration: {stderr}"
    );
    assert_eq!(
        pg.sql("select count(*) from orders").trim(),
        "1",
        "the table is intact"
    );
    let sessions = agent.wait_sessions_ended(1);
    assert_eq!(sessions[0]["target"], "orders-db");
    assert_eq!(sessions[0]["protocol"], "postgres");
    let statements = agent.statements();
    assert!(
        statements
            .iter()
            .any(|s| s["text"] == "drop table orders" && s["action"] == "refused"),
        "{statements:#?}"
    );
}

#[test]
fn a_cancel_after_a_reload_that_reorders_targets_reaches_the_backend() {
    privileged!("a_cancel_after_a_reload_that_reorders_targets_reaches_the_backend");
    let pg = PgServer::start();
    pg.sql("create table orders (id int primary key)");
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&body(&cg, &pg, None));

    let psql = cg
        .command("psql")
        .args(["-X", "-At", "-U", "postgres", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .args(["-c", "select pg_sleep(60)"])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start psql");
    // The statement is running on the server.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg
        .sql("select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'")
        .trim()
        != "1"
    {
        assert!(Instant::now() < deadline, "pg_sleep never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The session's target moves from index 0 to index 1; the cancel key was registered
    // under the first configuration.
    reload(&agent, &body(&cg, &pg, Some(&echo)));
    let _ = Command::new("kill")
        .args(["-INT", &psql.id().to_string()])
        .status();
    let out = psql.wait_with_output().expect("psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "the cancel reached the backend: {stderr}"
    );
    assert!(
        !agent.log_text().contains("panicked"),
        "{}",
        agent.log_text()
    );
    let sessions = agent.wait_sessions_ended(2);
    let forwarded = sessions.iter().any(|s| {
        agent
            .events(s["id"].as_i64().expect("id"))
            .iter()
            .any(|e| e["kind"] == "pg_cancel" && e["data"]["forwarded"] == true)
    });
    assert!(forwarded, "the forwarded cancel is journaled");
}
