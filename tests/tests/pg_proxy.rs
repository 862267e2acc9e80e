//! The PostgreSQL proxy (`protocol = "postgres"`): real clients (psql, pgbench,
//! psycopg) in an intercepted cgroup, a real server, real eBPF. Each test checks what
//! the client sees and what the journal says.
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nhi_tests::*;

/// A target block for `pg` named `name` with extra keys.
fn pg_target(name: &str, addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\naddress = \"{addr}\"\nprotocol = \"postgres\"\n{extra}\n"
    )
}

fn workload(name: &str, cg: &TestCgroup) -> String {
    format!(
        "[[workload]]\nname = \"{name}\"\ncgroup = \"{}\"\n\n",
        cg.rel()
    )
}

/// psql in the cgroup against 127.0.0.1:port, with `-c` for each statement (one session).
fn psql(cg: &TestCgroup, port: u16, args: &[&str]) -> Output {
    cg.command("psql")
        .args(["-X", "-At", "-U", "postgres", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn ok(out: Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "client failed: {stdout}\n{stderr}");
    stdout
}

/// Waits for the statement events to reach `n` (they are ingested asynchronously).
fn wait_statements(agent: &Agent, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = agent.statements();
        if s.len() >= n || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn psql_statements_are_decoded_judged_and_journaled() {
    privileged!("psql_statements_are_decoded_judged_and_journaled");
    let pg = PgServer::start();
    pg.sql("create table orders (id int primary key, note text); insert into orders values (1, 'a'), (2, 'b')");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}\n\
         [[policy]]\nname = \"bots\"\nworkload = \"bot\"\n\n\
         [[policy.rule]]\nname = \"no-drop\"\nverdict = \"deny\"\nkinds = [\"drop\", \"truncate\"]\n\n\
         [[policy.rule]]\nname = \"no-unbounded-delete\"\nverdict = \"deny\"\nkinds = [\"delete\", \"update\"]\nwithout_where = true\n",
        workload("bot", &cg),
        pg_target("orders-db", pg.addr(), ""),
    ));

    // Plain queries, a multi-statement string, an error from the server.
    assert_eq!(
        ok(psql(&cg, pg.port, &["-c", "select count(*) from orders"])),
        "2"
    );
    assert_eq!(
        ok(psql(
            &cg,
            pg.port,
            &["-c", "select 1; select note from orders where id = 2"]
        )),
        "1\nb"
    );
    let out = psql(&cg, pg.port, &["-c", "select 1/0"]);
    assert!(text(&out).1.contains("division by zero"));
    // A psql meta-command (catalog queries) works under the policy.
    let tables = ok(psql(&cg, pg.port, &["-c", "\\dt"]));
    assert!(tables.contains("orders"), "{tables}");

    // Refused statements get SQLSTATE 42501 naming the rule; the session goes on, inside
    // a transaction too, and the server never saw them.
    let out = psql(
        &cg,
        pg.port,
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "drop table orders",
            "-c",
            "begin",
            "-c",
            "delete from orders",
            "-c",
            "update orders set note = 'z' where id = 1",
            "-c",
            "commit",
            "-c",
            "select note from orders order by id",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(stderr.contains("42501"), "{stderr}");
    assert!(stderr.contains("no-drop"), "{stderr}");
    assert!(stderr.contains("no-unbounded-delete"), "{stderr}");
    assert!(
        stdout.ends_with("z\nb"),
        "the session continued and committed: {stdout}"
    );
    assert_eq!(pg.sql("select count(*) from orders").trim(), "2");

    // The journal: every statement, its verdict and rule, and its result.
    let sessions = agent.wait_sessions_ended(5);
    assert!(sessions.iter().all(|s| s["protocol"] == "postgres"));
    let statements = wait_statements(&agent, 12);
    let find = |text: &str| {
        statements
            .iter()
            .find(|s| s["text"].as_str().is_some_and(|t| t.contains(text)))
            .unwrap_or_else(|| panic!("no statement {text} in {statements:#?}"))
            .clone()
    };
    let drop = find("drop table orders");
    assert_eq!(drop["verdict"], "deny");
    assert_eq!(drop["rule"], "no-drop");
    assert_eq!(drop["action"], "refused");
    assert_eq!(find("delete from orders")["rule"], "no-unbounded-delete");
    let select = find("select count(*) from orders");
    assert_eq!(select["verdict"], "allow");
    assert_eq!(select["kinds"], serde_json::json!(["select"]));
    assert!(select["tables"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "orders"));
    // The multi-statement string became two statements.
    assert!(statements.iter().any(|s| s["text"] == "select 1"));

    // Results: rows, columns and errors are in statement_end events.
    let session = sessions
        .iter()
        .find(|s| {
            s["id"].as_i64().is_some_and(|id| {
                agent
                    .events(id)
                    .iter()
                    .any(|e| e["kind"] == "statement" && e["data"]["text"] == "select 1/0")
            })
        })
        .expect("the session of select 1/0");
    let events = agent.events(session["id"].as_i64().unwrap());
    let end = events
        .iter()
        .find(|e| e["kind"] == "statement_end")
        .expect("statement_end");
    assert_eq!(end["data"]["error"]["sqlstate"], "22012");
    assert!(events
        .iter()
        .any(|e| e["kind"] == "pg_startup" && e["data"]["user"] == "postgres"));

    // The replay reads like a psql transcript.
    let replay = agent.cli(&[
        "replay",
        &session["id"].to_string(),
        "--journal",
        agent.journal.to_str().unwrap(),
    ]);
    let shown = String::from_utf8_lossy(&replay.stdout);
    assert!(shown.contains("select 1/0"), "{shown}");
    assert!(shown.contains("22012"), "{shown}");
}

#[test]
fn pgbench_simple_extended_and_prepared_are_journaled_statement_by_statement() {
    privileged!("pgbench_simple_extended_and_prepared_are_journaled_statement_by_statement");
    let pg = PgServer::start();
    let cg = TestCgroup::create(&format!("{}/bench", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}",
        workload("bench", &cg),
        pg_target("pg", pg.addr(), "")
    ));
    let pgbench = |args: &[&str]| {
        let out = cg
            .command("pgbench")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(args)
            .arg("postgres")
            .output()
            .expect("pgbench");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "pgbench {args:?}: {stdout}\n{stderr}");
        stdout
    };
    pgbench(&["-i", "-s", "1", "-q"]);
    assert_eq!(
        pg.sql("select count(*) from pgbench_accounts").trim(),
        "100000"
    );
    for mode in ["simple", "extended", "prepared"] {
        let report = pgbench(&["-S", "-M", mode, "-c", "2", "-t", "50"]);
        assert!(
            report.contains("number of transactions actually processed: 100/100"),
            "{mode}: {report}"
        );
    }
    // The TPC-B-like script: BEGIN, 3 UPDATEs, SELECT, INSERT, END per transaction.
    let report = pgbench(&["-M", "prepared", "-c", "2", "-t", "20"]);
    assert!(report.contains("40/40"), "{report}");
    assert_eq!(pg.sql("select count(*) from pgbench_history").trim(), "40");

    let statements = wait_statements(&agent, 300 + 40 * 7);
    let selects = statements
        .iter()
        .filter(|s| {
            s["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("SELECT abalance FROM pgbench_accounts"))
        })
        .count();
    assert!(selects >= 300, "each -S transaction journaled: {selects}");
    let prepared = statements
        .iter()
        .filter(|s| {
            s["protocol"] == "extended" && s["params"].as_array().is_some_and(|p| !p.is_empty())
        })
        .count();
    assert!(
        prepared >= 200,
        "extended executions carry their parameters: {prepared}"
    );
    let updates = statements
        .iter()
        .filter(|s| s["kinds"] == serde_json::json!(["update"]))
        .count();
    assert!(updates >= 120, "{updates}");
}

#[test]
fn masked_columns_never_reach_the_client_in_text_or_binary_format() {
    privileged!("masked_columns_never_reach_the_client_in_text_or_binary_format");
    let pg = PgServer::start();
    pg.sql(
        "create table customers (id int, email text, card text, note text); \
         insert into customers values \
         (1, 'alice@example.com', '4111 1111 1111 1111', 'call me at bob@example.org'), \
         (2, 'carol@example.net', '5500-0000-0000-0004', 'nothing here')",
    );
    let cg = TestCgroup::create(&format!("{}/reporter", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}\n\
         [[policy]]\nworkload = \"reporter\"\nrecord_results = \"rows\"\n\n\
         [[mask]]\nname = \"pii\"\ncolumns = [\"email\"]\ndetectors = [\"email\", \"credit_card\"]\nstrategy = \"redact\"\n\n\
         [[mask]]\nname = \"cards\"\ncolumns = [\"card\"]\nstrategy = \"partial\"\nkeep = 4\n",
        workload("reporter", &cg),
        pg_target("crm", pg.addr(), "")
    ));
    let shown = ok(psql(
        &cg,
        pg.port,
        &["-c", "select email, card, note from customers order by id"],
    ));
    for secret in [
        "alice@example.com",
        "carol@example.net",
        "bob@example.org",
        "4111 1111",
        "5500-0000",
    ] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
    assert!(shown.contains("1111"), "partial keeps the last 4: {shown}");
    assert!(
        shown.contains("nothing here"),
        "unmatched values pass: {shown}"
    );

    // psycopg 3 with binary results, extended protocol.
    let script = format!(
        "import psycopg\n\
         c = psycopg.connect('host=127.0.0.1 port={} user=postgres dbname=postgres')\n\
         cur = c.cursor(binary=True)\n\
         cur.execute('select id, email, card from customers where id = %s', (1,))\n\
         print(repr(cur.fetchall()))\n\
         cur = c.cursor()\n\
         cur.execute('select email from customers order by id')\n\
         print(repr(cur.fetchall()))\n",
        pg.port
    );
    let py = ok(cg
        .command("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .unwrap());
    for secret in ["alice@example.com", "carol@example.net", "4111 1111"] {
        assert!(!py.contains(secret), "{secret} leaked to psycopg: {py}");
    }
    assert!(
        py.contains("(1, "),
        "the unmasked id is intact in binary: {py}"
    );

    // The journal says what was masked, and its recorded rows are masked too.
    agent.wait_sessions_ended(2);
    let journal = std::fs::read(&agent.journal).unwrap();
    let journal_text = String::from_utf8_lossy(&journal);
    assert!(
        !journal_text.contains("alice@example.com"),
        "the journal holds masked values only"
    );
    let mut masked_events = 0;
    for s in agent.sessions() {
        for e in agent.events(s["id"].as_i64().unwrap()) {
            if e["kind"] == "statement_end" && e["data"]["masked"].is_array() {
                masked_events += 1;
                let masked = e["data"]["masked"].to_string();
                assert!(
                    masked.contains("pii") || masked.contains("cards"),
                    "{masked}"
                );
            }
        }
    }
    assert!(masked_events >= 2, "masked columns are journaled");
}

/// Every file under `dir` (journal, segments, pre-log, WAL, checkpoints, logs) as
/// lossy text, with its path.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    out
}

#[test]
fn originals_are_sealed_for_auditors_and_revealed_only_with_their_key() {
    privileged!("originals_are_sealed_for_auditors_and_revealed_only_with_their_key");
    let keys = tempfile::tempdir().unwrap();
    let keygen = |name: &str| {
        let path = keys.path().join(name);
        let out = Command::new("age-keygen")
            .arg("-o")
            .arg(&path)
            .output()
            .expect("age-keygen (apt install age)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public = Command::new("age-keygen")
            .arg("-y")
            .arg(&path)
            .output()
            .unwrap();
        (
            path,
            String::from_utf8(public.stdout).unwrap().trim().to_owned(),
        )
    };
    let (auditor, auditor_public) = keygen("auditor.key");
    let (stranger, _) = keygen("stranger.key");
    assert!(auditor_public.starts_with("age1"), "{auditor_public}");

    let pg = PgServer::start();
    pg.sql(
        "create table customers (id int, email text, note text); \
         insert into customers values (1, 'alice@example.com', 'card 4111 1111 1111 1111'), \
         (2, 'carol@example.net', 'nothing here')",
    );
    let cg = TestCgroup::create(&format!("{}/reporter", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}\n\
         [evidence]\nauditor_recipients = [\"{auditor_public}\"]\n\n\
         [[mask]]\nname = \"pii\"\ncolumns = [\"email\"]\ndetectors = [\"email\", \"credit_card\"]\n",
        workload("reporter", &cg),
        pg_target("crm", pg.addr(), "")
    ));
    // The statements from a file: a command line is journaled (exec events) through the
    // credential detectors only, not the [[mask]] rules.
    let script = keys.path().join("report.sql");
    std::fs::write(&script, "select email, note from customers order by id;\n").unwrap();
    let shown = ok(psql(&cg, pg.port, &["-f", script.to_str().unwrap()]));
    for secret in ["alice@example.com", "carol@example.net", "4111 1111"] {
        assert!(
            !shown.contains(secret),
            "{secret} reached the client: {shown}"
        );
    }
    let sessions = agent.wait_sessions_ended(1);
    let session = sessions[0]["id"].as_i64().unwrap().to_string();
    let journal = agent.journal.to_str().unwrap();

    // Nothing on the host holds an original in the clear: journal, segments, pre-log,
    // WAL, checkpoints, the agent's log.
    let originals = [
        "alice@example.com",
        "carol@example.net",
        "4111 1111 1111 1111",
    ];
    let files = files_under(agent.dir.path());
    assert!(files.len() > 2, "{files:?}");
    for (path, text) in &files {
        for original in originals {
            assert!(
                !text.contains(original),
                "{original} in clear in {}: {}",
                path.display(),
                &text[text.find(original).unwrap().saturating_sub(300)..]
                    .chars()
                    .take(500)
                    .collect::<String>()
            );
        }
    }
    // The chain holds the sealed batches, and verifies.
    let events = agent.events(sessions[0]["id"].as_i64().unwrap());
    let sealed: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "sealed_originals")
        .collect();
    let values: u64 = sealed
        .iter()
        .map(|e| e["data"]["values"].as_u64().unwrap())
        .sum();
    // Two emails and a card number in the rows.
    assert_eq!(values, 3, "{sealed:?}");
    assert!(sealed
        .iter()
        .all(|e| e["data"]["recipients"][0] == auditor_public.as_str()));
    agent.assert_verifies();

    // The replay says originals are sealed, without them.
    let replay = agent.cli(&["replay", &session, "--journal", journal, "--instant"]);
    let replay_text = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{replay_text}");
    assert!(
        replay_text.contains("sealed for the auditors (nhi-agent reveal)"),
        "{replay_text}"
    );
    assert!(!replay_text.contains("alice@example.com"), "{replay_text}");

    // The auditor's key opens them beside the masked values.
    let reveal = agent.cli(&[
        "reveal",
        "--identity",
        auditor.to_str().unwrap(),
        &session,
        "--journal",
        journal,
        "--instant",
    ]);
    let revealed = String::from_utf8_lossy(&reveal.stdout);
    assert!(
        reveal.status.success(),
        "{revealed}\n{}",
        String::from_utf8_lossy(&reveal.stderr)
    );
    for line in [
        "[redacted]  ←  alice@example.com  (rule pii)",
        "[redacted]  ←  carol@example.net  (rule pii)",
        "[redacted]  ←  4111 1111 1111 1111  (rule pii)",
    ] {
        assert!(revealed.contains(line), "{line} missing from:\n{revealed}");
    }
    let json = agent.cli(&[
        "reveal",
        "--identity",
        auditor.to_str().unwrap(),
        &session,
        "--journal",
        journal,
        "--json",
    ]);
    assert!(json.status.success());
    let opened: Vec<serde_json::Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["kind"] == "sealed_originals")
        .collect();
    assert!(opened
        .iter()
        .any(|e| e["data"]["originals"]["values"][0]["original"] == "alice@example.com"));

    // Any other key fails, and shows nothing.
    let refused = agent.cli(&[
        "reveal",
        "--identity",
        stranger.to_str().unwrap(),
        &session,
        "--journal",
        journal,
        "--instant",
    ]);
    let refused_out = String::from_utf8_lossy(&refused.stdout);
    let refused_err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{refused_out}\n{refused_err}"
    );
    assert!(refused_err.contains("does not open"), "{refused_err}");
    for original in originals {
        assert!(!refused_out.contains(original) && !refused_err.contains(original));
    }
}

#[test]
fn observe_mode_records_what_would_have_been_refused() {
    privileged!("observe_mode_records_what_would_have_been_refused");
    let pg = PgServer::start();
    pg.sql("create table scratch (id int)");
    let cg = TestCgroup::create(&format!("{}/watched", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}\n\
         [[policy]]\nmode = \"observe\"\n\n\
         [[policy.rule]]\nname = \"no-drop\"\nverdict = \"deny\"\nkinds = [\"drop\"]\n",
        workload("watched", &cg),
        pg_target("pg", pg.addr(), "")
    ));
    ok(psql(&cg, pg.port, &["-c", "drop table scratch"]));
    assert_eq!(
        pg.sql("select count(*) from pg_tables where tablename = 'scratch'")
            .trim(),
        "0"
    );
    let statements = wait_statements(&agent, 1);
    let drop = &statements[0];
    assert_eq!(drop["verdict"], "deny");
    assert_eq!(drop["enforced"], false);
    assert_eq!(drop["action"], "forwarded");
}

#[test]
fn injected_scram_credential_the_client_never_sees() {
    privileged!("injected_scram_credential_the_client_never_sees");
    let pg = PgServer::start_full(
        &["password_encryption = 'scram-sha-256'"],
        &[
            "host all all 127.0.0.1/32 scram-sha-256",
            "host all all ::1/128 scram-sha-256",
        ],
        |_| {},
    );
    let secret = "s3cr3t-Pa55-for-nhi";
    pg.sql(&format!(
        "create role app login password '{secret}'; grant pg_read_all_data to app"
    ));
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pg.password");
    std::fs::write(&password_file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(
        &password_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let agent = Agent::start(&format!(
        "{}{}",
        workload("bot", &cg),
        pg_target(
            "pg",
            pg.addr(),
            &format!(
                "password_file = \"{}\"\nuser = \"app\"\n",
                password_file.display()
            )
        )
    ));
    // No password anywhere on the client side; -w: never prompt.
    let out = cg
        .command("psql")
        .args([
            "-X",
            "-At",
            "-w",
            "-U",
            "whoever",
            "-d",
            "postgres",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(pg.port.to_string())
        .args(["-c", "select current_user"])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert_eq!(ok(out), "app", "the agent logged in as app with SCRAM");
    // Without the agent's help the same client is refused.
    let direct = Command::new("psql")
        .args(["-X", "-At", "-w", "-U", "app", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .args(["-c", "select 1"])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(
        !direct.status.success(),
        "the server really demands a password"
    );

    agent.wait_sessions_ended(1);
    let journal = std::fs::read(&agent.journal).unwrap();
    assert!(
        !String::from_utf8_lossy(&journal).contains(secret),
        "secret in the journal"
    );
    let log = agent.log_text();
    assert!(!log.contains(secret), "secret in the log");
    let s = &agent.sessions()[0];
    let events = agent.events(s["id"].as_i64().unwrap());
    let auth = events
        .iter()
        .find(|e| e["kind"] == "pg_auth")
        .expect("pg_auth event");
    assert_eq!(auth["data"]["method"], "scram-sha-256");
    assert_eq!(auth["data"]["injected"], true);
}

#[test]
fn psql_cancel_reaches_the_backend_through_the_agent() {
    privileged!("psql_cancel_reaches_the_backend_through_the_agent");
    let pg = PgServer::start();
    let cg = TestCgroup::create(&format!("{}/slow", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}",
        workload("slow", &cg),
        pg_target("pg", pg.addr(), "")
    ));
    let started = Instant::now();
    let child = cg
        .command("psql")
        .args(["-X", "-At", "-U", "postgres", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .args(["-c", "select pg_sleep(30)"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let sessions = agent.wait_sessions_ended(2);
    let mut cancel_seen = false;
    for s in &sessions {
        for e in agent.events(s["id"].as_i64().unwrap()) {
            if e["kind"] == "pg_cancel" {
                assert_eq!(e["data"]["forwarded"], true);
                cancel_seen = true;
            }
        }
    }
    assert!(cancel_seen, "the cancel request is journaled");
}

#[test]
fn malformed_messages_close_only_their_connection() {
    privileged!("malformed_messages_close_only_their_connection");
    let pg = PgServer::start();
    let cg = TestCgroup::create(&format!("{}/fuzzer", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}",
        workload("fuzzer", &cg),
        pg_target("pg", pg.addr(), "")
    ));
    let corpus: [&str; 4] = [
        // Startup with protocol 9.9.
        "\\x00\\x00\\x00\\x08\\x00\\x09\\x00\\x09",
        // Startup length far beyond the start-up limit.
        "\\x7f\\xff\\xff\\xff\\x00\\x03\\x00\\x00",
        // SSLRequest followed by bytes before the answer (CVE-2021-23214).
        "\\x00\\x00\\x00\\x08\\x04\\xd2\\x16\\x2fQ\\x00\\x00\\x00\\x05",
        // Length shorter than the header.
        "\\x00\\x00\\x00\\x02",
    ];
    for bytes in corpus {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port}; printf '{bytes}' >&3; timeout 5 cat <&3 >/dev/null; exit 0",
            port = pg.port
        );
        let status = cg.command("bash").args(["-c", &script]).status().unwrap();
        assert!(status.success());
    }
    // A valid session still works: the agent lived on.
    assert_eq!(ok(psql(&cg, pg.port, &["-c", "select 42"])), "42");
    let sessions = agent.wait_sessions_ended(corpus.len() + 1);
    let reasons: Vec<String> = sessions
        .iter()
        .map(|s| s["close_reason"].as_str().unwrap_or("").to_owned())
        .collect();
    let protocol_errors = reasons
        .iter()
        .filter(|r| r.starts_with("protocol error"))
        .count();
    assert!(protocol_errors >= 3, "{reasons:#?}");
}

#[test]
fn copy_both_ways_and_a_million_row_select_pass_intact() {
    privileged!("copy_both_ways_and_a_million_row_select_pass_intact");
    let pg = PgServer::start();
    pg.sql("create table big (id int, label text)");
    let cg = TestCgroup::create(&format!("{}/etl", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}",
        workload("etl", &cg),
        pg_target("pg", pg.addr(), "")
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.tsv");
    // COPY TO: 1M rows out through the agent into a file...
    ok(psql(
        &cg,
        pg.port,
        &[
            "-c",
            &format!(
                "\\copy (select g, 'row ' || g from generate_series(1, 1000000) g) to '{}'",
                file.display()
            ),
        ],
    ));
    let lines = std::fs::read_to_string(&file).unwrap().lines().count();
    assert_eq!(lines, 1_000_000);
    // ...and COPY FROM: the same rows back in.
    ok(psql(
        &cg,
        pg.port,
        &["-c", &format!("\\copy big from '{}'", file.display())],
    ));
    assert_eq!(
        pg.sql("select count(*), sum(id) from big").trim(),
        "1000000|500000500000"
    );
    // A 1M-row SELECT arrives whole.
    let out = cg
        .command("bash")
        .args([
            "-c",
            &format!("psql -X -At -U postgres -h 127.0.0.1 -p {} -c 'select id, label from big' | sha256sum", pg.port),
        ])
        .output()
        .unwrap();
    let through_agent = String::from_utf8_lossy(&out.stdout).to_string();
    let direct = Command::new("bash")
        .args([
            "-c",
            &format!(
                "psql -X -At -U postgres -h {} -p {} -c 'select id, label from big' | sha256sum",
                pg.dir().display(),
                pg.port
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(
        through_agent,
        String::from_utf8_lossy(&direct.stdout),
        "identical result"
    );

    agent.wait_sessions_ended(3);
    let mut copies = Vec::new();
    let mut selected = None;
    for s in agent.sessions() {
        for e in agent.events(s["id"].as_i64().unwrap()) {
            if e["kind"] == "statement_end" {
                if let Some(c) = e["data"]["copy"].as_object() {
                    copies.push((c["direction"].clone(), e["data"]["rows"].clone()));
                }
                if e["data"]["tag"] == "SELECT 1000000" {
                    selected = Some(e["data"]["rows"].clone());
                }
            }
        }
    }
    assert!(
        copies.contains(&(serde_json::json!("out"), serde_json::json!(1_000_000))),
        "{copies:?}"
    );
    assert!(
        copies.contains(&(serde_json::json!("in"), serde_json::json!(1_000_000))),
        "{copies:?}"
    );
    assert_eq!(selected, Some(serde_json::json!(1_000_000)));
}

#[test]
fn tls_is_terminated_for_clients_and_originated_to_the_server() {
    privileged!("tls_is_terminated_for_clients_and_originated_to_the_server");
    let certs = tempfile::tempdir().unwrap();
    make_test_certs(certs.path(), "test-ca", "db.test");
    let cert_dir = certs.path().to_path_buf();
    let pg = PgServer::start_full(&["ssl = on"], &[], |data| {
        for f in ["server.crt", "server.key"] {
            std::fs::copy(cert_dir.join(f), data.join(f)).unwrap();
        }
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    });
    let cg = TestCgroup::create(&format!("{}/secure", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}",
        workload("secure", &cg),
        pg_target(
            "pg",
            pg.addr(),
            &format!(
                "client_tls = \"terminate\"\ntls = \"verify-full\"\nca_file = \"{}\"\n",
                certs.path().join("ca.crt").display()
            )
        )
    ));
    let agent_ca = agent.dir.path().join("tls/ca.crt");
    assert!(
        agent_ca.exists(),
        "the agent's local CA is in its state directory"
    );
    let ssl_of_backend = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
    for mode in ["require", "verify-full"] {
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode={mode} sslrootcert={}",
            pg.port,
            agent_ca.display()
        );
        let out = cg
            .command("psql")
            .args(["-X", "-At", &conninfo, "-c", ssl_of_backend])
            .output()
            .unwrap();
        // The agent originated TLS to the server itself (verify-full against the CA).
        assert_eq!(ok(out), "t", "sslmode={mode}");
    }
    // A client that does not trust the agent's CA is refused by its own check.
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=verify-full sslrootcert={}",
        pg.port,
        certs.path().join("ca.crt").display()
    );
    let out = cg
        .command("psql")
        .args(["-X", "-At", &conninfo, "-c", "select 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let sessions = agent.wait_sessions_ended(3);
    let tls_sessions = sessions
        .iter()
        .filter(|s| {
            agent
                .events(s["id"].as_i64().unwrap())
                .iter()
                .any(|e| e["kind"] == "pg_startup" && e["data"]["client_tls"] == true)
        })
        .count();
    assert_eq!(tls_sessions, 2);
}

#[test]
fn statements_journaled_before_a_sigkill_are_in_the_journal_after_restart() {
    privileged!("statements_journaled_before_a_sigkill_are_in_the_journal_after_restart");
    let pg = PgServer::start();
    let cg = TestCgroup::create(&format!("{}/victim", unique("nhi-test")));
    let mut agent = Agent::start(&format!(
        "{}{}",
        workload("victim", &cg),
        pg_target("pg", pg.addr(), "")
    ));
    // A statement still running on the server when the agent dies.
    let child = cg
        .command("psql")
        .args(["-X", "-At", "-U", "postgres", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .args([
            "-c",
            "select 'before the kill'",
            "-c",
            "select pg_sleep(20)",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the server runs the sleep: then its statement event was journaled
    // (record before forward) and nothing after it can be.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg
        .sql("select count(*) from pg_stat_activity where query = 'select pg_sleep(20)'")
        .trim()
        != "1"
    {
        assert!(
            Instant::now() < deadline,
            "the sleep never reached the server"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.kill9();
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the client lost its connection with the agent"
    );
    // The restarted agent recovers the pre-log and closes the interrupted session.
    agent.spawn();
    let sessions = agent.wait_sessions_ended(1);
    assert!(
        sessions[0]["close_reason"]
            .as_str()
            .unwrap_or("")
            .contains("agent"),
        "{}",
        sessions[0]
    );
    let statements = agent.statements();
    let texts: Vec<&str> = statements
        .iter()
        .filter_map(|s| s["text"].as_str())
        .collect();
    assert_eq!(texts, ["select 'before the kill'", "select pg_sleep(20)"]);
}

/// The sealed originals of rows an agent masked before it was killed (-9) are in the
/// journal after the restart, and the auditor's key opens them.
#[test]
fn originals_sealed_before_a_sigkill_are_revealed_after_restart() {
    privileged!("originals_sealed_before_a_sigkill_are_revealed_after_restart");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("auditor.key");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    let public = String::from_utf8(public.stdout).unwrap().trim().to_owned();
    let pg = PgServer::start();
    pg.sql("create table people (email text); insert into people values ('erin@example.com')");
    let cg = TestCgroup::create(&format!("{}/victim", unique("nhi-test")));
    let mut agent = Agent::start(&format!(
        "{}{}\n[evidence]\nauditor_recipients = [\"{public}\"]\n\n\
         [[mask]]\nname = \"pii\"\ncolumns = [\"email\"]\n",
        workload("victim", &cg),
        pg_target("pg", pg.addr(), "")
    ));
    let script = keys.path().join("q.sql");
    std::fs::write(&script, "select email from people;\nselect pg_sleep(20);\n").unwrap();
    let child = cg
        .command("psql")
        .args(["-X", "-At", "-U", "postgres", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .arg("-f")
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The masked rows went back before the sleep reached the server.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg
        .sql("select count(*) from pg_stat_activity where query like 'select pg_sleep(20)%'")
        .trim()
        != "1"
    {
        assert!(
            Instant::now() < deadline,
            "the sleep never reached the server"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.kill9();
    let out = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("erin@example.com"));
    agent.spawn();
    let sessions = agent.wait_sessions_ended(1);
    let session = sessions[0]["id"].as_i64().unwrap().to_string();
    let dir = agent.journal.parent().unwrap().to_str().unwrap().to_owned();
    let reveal = agent.cli(&[
        "reveal",
        "--identity",
        key.to_str().unwrap(),
        &session,
        "--journal",
        &dir,
        "--instant",
    ]);
    let revealed = String::from_utf8_lossy(&reveal.stdout);
    assert!(
        reveal.status.success(),
        "{revealed}\n{}",
        String::from_utf8_lossy(&reveal.stderr)
    );
    assert!(
        revealed.contains("[redacted]  ←  erin@example.com  (rule pii)"),
        "{revealed}"
    );
    agent.assert_verifies();
}
