//! Real MySQL clients (the `mariadb` CLI, PyMySQL) against a real MariaDB server,
//! through the agent and its eBPF interception, with `protocol = "mysql"`.
use std::process::Output;

use nhi_tests::http::assert_in_no_file;
use nhi_tests::mysql::{openssl_rsa_key, CachingSha2Server, MariaDb};
use nhi_tests::*;

fn workload(name: &str, cg: &TestCgroup) -> String {
    format!(
        "[[workload]]\nname = \"{name}\"\ncgroup = \"{}\"\n\n",
        cg.rel()
    )
}

fn target(name: &str, server: &MariaDb, extra: &str) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\naddress = \"{}\"\nprotocol = \"mysql\"\n{extra}\n",
        server.addr()
    )
}

/// A MariaDB with database `shop`, table `users` (two rows), and user `app` /
/// `app-secret` (mysql_native_password) who may do anything in `shop`.
fn server() -> MariaDb {
    server_with(&[])
}

fn server_with(extra: &[String]) -> MariaDb {
    let db = MariaDb::start_with(extra);
    db.sql(
        "create database shop;
         create table shop.users (id int primary key, name varchar(40), email varchar(80), card varchar(20));
         insert into shop.users values (1, 'Ada', 'ada@example.com', '4111111111111111'),
                                       (2, 'Bob', 'bob@example.org', '5500005555555559');
         create table shop.scratch (id int);
         create user 'app'@'%' identified by 'app-secret';
         grant all on shop.* to 'app'@'%';",
    );
    db
}

/// `mariadb` in the cgroup, over TCP to the server's address (intercepted), batch mode.
fn mariadb(cg: &TestCgroup, db: &MariaDb, args: &[&str]) -> Output {
    cg.command("mariadb")
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &db.port.to_string(),
        ])
        .args(["--protocol=tcp", "-N", "-B", "shop"])
        .args(args)
        .output()
        .expect("run mariadb")
}

/// `mariadb` reading statements from stdin (`--force` goes on after errors only then).
fn mariadb_stdin(cg: &TestCgroup, db: &MariaDb, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = cg
        .command("mariadb")
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &db.port.to_string(),
        ])
        .args(["--protocol=tcp", "-N", "-B", "shop"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mariadb");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("mariadb")
}

/// `nhi-agent replay` of session `id`: the transcript.
fn replay(agent: &Agent, id: i64) -> String {
    let out = agent.cli(&[
        "replay",
        &id.to_string(),
        "--journal",
        agent.journal.to_str().unwrap(),
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn skip_without_mariadb() -> bool {
    if MariaDb::available() {
        return false;
    }
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("mariadb-server / mariadb-client are not installed (cargo xtask setup)");
    }
    eprintln!("SKIPPED: mariadb-server / mariadb-client are not installed");
    true
}

#[test]
fn statements_are_judged_journaled_and_refusals_leave_the_session_usable() {
    privileged!("statements_are_judged_journaled_and_refusals_leave_the_session_usable");
    if skip_without_mariadb() {
        return;
    }
    let db = server();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}\
         [[policy]]\nname = \"bots\"\nworkload = \"bot\"\n\n\
         [[policy.rule]]\nname = \"no-drop\"\nverdict = \"deny\"\nkinds = [\"drop\", \"truncate\"]\n\n\
         [[policy.rule]]\nname = \"no-unbounded-delete\"\nverdict = \"deny\"\nkinds = [\"delete\", \"update\"]\nwithout_where = true\n",
        workload("bot", &cg),
        target("shop-db", &db, ""),
    ));
    // Plain queries through the agent, with the client's own password (relayed).
    let out = ok(mariadb(
        &cg,
        &db,
        &[
            "-uapp",
            "-papp-secret",
            "-e",
            "select 6 * 7; select name from users order by id",
        ],
    ));
    assert_eq!(out, "42\nAda\nBob\n");

    // One session: a DROP and an unbounded DELETE refused with ERR 1142 naming the rule,
    // and the statements after them still run (`--force` goes on after errors).
    let out = mariadb_stdin(
        &cg,
        &db,
        &["-uapp", "-papp-secret", "--force"],
        "drop table scratch;\nselect 'after drop';\ndelete from users;\nselect count(*) from users;\n\
         delete from users where id = 2;\nselect count(*) from users;\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR 1142 (42000)") && stderr.contains("rule \"no-drop\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("rule \"no-unbounded-delete\""),
        "{stdout}\n{stderr}\n{}",
        agent.log_text()
    );
    assert_eq!(stdout, "after drop\n2\n1\n", "{stderr}");
    assert_eq!(db.sql("select count(*) from shop.scratch").trim(), "0");
    assert_eq!(db.sql("select id from shop.users").trim(), "1");

    // A server error is relayed as the server sent it.
    let out = mariadb(
        &cg,
        &db,
        &["-uapp", "-papp-secret", "-e", "select * from nosuch"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR 1146 (42S02)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    agent.wait_sessions_ended(3);
    let statements = agent.statements();
    let find = |text: &str| {
        statements
            .iter()
            .find(|s| s["text"] == text)
            .unwrap_or_else(|| panic!("no statement {text:?} in {statements:#?}"))
    };
    let drop = find("drop table scratch");
    assert_eq!(drop["verdict"], "deny");
    assert_eq!(drop["action"], "refused");
    assert_eq!(drop["rule"], "no-drop");
    assert_eq!(drop["protocol"], "query");
    let delete = find("delete from users where id = 2");
    assert_eq!(delete["action"], "forwarded");
    assert_eq!(delete["tables"], serde_json::json!(["users"]));
    assert_eq!(find("delete from users")["rule"], "no-unbounded-delete");
    // `replay` shows the session as a `mysql>` transcript.
    let session = agent
        .sessions()
        .into_iter()
        .find(|s| {
            agent
                .events(s["id"].as_i64().unwrap())
                .iter()
                .any(|e| e["data"]["text"] == "drop table scratch")
        })
        .expect("the session of the DROP");
    let transcript = replay(&agent, session["id"].as_i64().unwrap());
    assert!(
        transcript.contains("mysql> drop table scratch   [deny by rule no-drop: refused]"),
        "{transcript}"
    );
    assert!(
        transcript.contains("connect: user app database shop"),
        "{transcript}"
    );
    assert!(
        transcript.contains("authenticated: mysql_native_password as app"),
        "{transcript}"
    );
    assert!(
        transcript.contains(
            "ERROR 42000: (1142) nhi-agent: statement is not allowed by policy rule \"no-drop\""
        ),
        "{transcript}"
    );
    // `export --format ocsf`: each statement a Datastore Activity (6005), the refused
    // DROP with its rule.
    let out = agent.cli(&[
        "export",
        "--format",
        "ocsf",
        "--journal",
        agent.journal.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let ocsf = String::from_utf8_lossy(&out.stdout);
    let activities: Vec<serde_json::Value> = ocsf
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["class_uid"] == 6005)
        .collect();
    assert!(
        activities
            .iter()
            .any(|e| e.to_string().contains("drop table scratch")
                && e.to_string().contains("no-drop")),
        "{ocsf}"
    );
    // Each login is an Authentication (3002) naming MySQL, the plugin and the user.
    let logins: Vec<serde_json::Value> = ocsf
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["class_uid"] == 3002)
        .collect();
    assert!(!logins.is_empty(), "{ocsf}");
    assert!(
        logins.iter().all(|e| e["status_id"] == 1
            && e["message"].as_str().is_some_and(
                |m| m.starts_with("MySQL login as app (") && m.ends_with("): Success")
            )),
        "{logins:#?}"
    );
    // The password never reached the journal.
    assert!(!journal_holds(&agent, "app-secret"));
}

#[test]
fn result_rows_are_masked_in_text_and_binary_protocol() {
    privileged!("result_rows_are_masked_in_text_and_binary_protocol");
    if skip_without_mariadb() {
        return;
    }
    let db = server();
    let cg = TestCgroup::create(&format!("{}/reporter", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}\
         [[policy]]\nworkload = \"reporter\"\nrecord_results = \"rows\"\n\n\
         [[policy.rule]]\nname = \"sql-execute\"\nverdict = \"allow\"\nkinds = [\"execute\"]\n\n\
         [[mask]]\nname = \"pii\"\ncolumns = [\"email\"]\ndetectors = [\"email\"]\nstrategy = \"redact\"\n\n\
         [[mask]]\nname = \"cards\"\ncolumns = [\"card\"]\nstrategy = \"partial\"\nkeep = 4\n",
        workload("reporter", &cg),
        target("crm", &db, ""),
    ));
    let q = |sql: &str| ok(mariadb(&cg, &db, &["-uapp", "-papp-secret", "-e", sql]));
    // Text protocol: by column, through an alias, wrapped in functions, by detector.
    assert_eq!(
        q("select id, email, card from users order by id"),
        "1\t[redacted]\t************1111\n2\t[redacted]\t************5559\n"
    );
    assert_eq!(
        q("select email as e from users where id = 1"),
        "[redacted]\n"
    );
    let wrapped = q("select concat(email), lower(card), upper(name) from users where id = 1");
    assert!(
        !wrapped.contains("ada@") && !wrapped.contains("4111"),
        "{wrapped}"
    );
    assert_eq!(
        q("select 'mail me: eve@example.net'"),
        "mail me: [redacted]\n"
    );
    // Renamed inside a derived table (MariaDB reports the outer name as the column).
    assert_eq!(
        q("select x from (select card as x from users where id = 1) t"),
        "************1111\n"
    );
    // Server-side prepared statements from SQL (text protocol results).
    assert_eq!(
        q("prepare s from 'select email from users where id = ?'; set @i = 2; execute s using @i"),
        "[redacted]\n"
    );
    // Binary protocol: rows re-encoded, the wrapped column masked, the parameter
    // journaled through the detectors.
    assert_eq!(
        perl_binary(&cg, &db, &agent),
        "1\t[redacted]\t************1111\tAda\n2\t[redacted]\t************5559\tBob\n[redacted]\n"
    );

    agent.wait_sessions_ended(5);
    assert!(!journal_holds(&agent, "ada@example.com"));
    assert!(!journal_holds(&agent, "4111111111111111"));
    assert!(!journal_holds(&agent, "app-secret"));
}

#[test]
fn the_agent_logs_in_with_its_credential_when_the_client_gives_none() {
    privileged!("the_agent_logs_in_with_its_credential_when_the_client_gives_none");
    if skip_without_mariadb() {
        return;
    }
    let db = server();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("mysql.password");
    std::fs::write(&password_file, "app-secret\n").unwrap();
    std::fs::set_permissions(
        &password_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let agent = Agent::start(&format!(
        "{}{}",
        workload("bot", &cg),
        target(
            "shop-db",
            &db,
            &format!(
                "password_file = \"{}\"\nuser = \"app\"\n",
                password_file.display()
            )
        ),
    ));
    // PyMySQL with no password at all, as a user the server does not know.
    let script = r#"
import sys, pymysql
conn = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user="bot", database="shop")
with conn.cursor() as cur:
    cur.execute("select current_user(), count(*) from users")
    print("%s %d" % cur.fetchone())
    cur.execute("select name from users where id = %s", (2,))
    print(cur.fetchone()[0])
conn.close()
"#;
    let out = cg
        .command("/usr/bin/python3")
        .args(["-c", script, &db.port.to_string()])
        .output()
        .expect("python3");
    assert_eq!(ok(out), "app@% 2\nBob\n");
    // The mariadb CLI likewise, no -p.
    assert_eq!(
        ok(mariadb(&cg, &db, &["-ubot", "-e", "select current_user()"])),
        "app@%\n"
    );

    let sessions = agent.wait_sessions_ended(2);
    let id = sessions[0]["id"].as_i64().unwrap();
    let events = agent.events(id);
    let auth = events
        .iter()
        .find(|e| e["kind"] == "mysql_auth")
        .unwrap_or_else(|| panic!("no mysql_auth in {events:#?}"));
    assert_eq!(auth["data"]["injected"], true);
    assert_eq!(auth["data"]["user"], "app");
    assert_eq!(auth["data"]["method"], "mysql_native_password");
    let login = events.iter().find(|e| e["kind"] == "mysql_login").unwrap();
    assert_eq!(login["data"]["user"], "bot");
    assert_eq!(login["data"]["credential_injected"], true);
    assert!(!journal_holds(&agent, "app-secret"));
}

#[test]
fn an_auth_switch_to_ed25519_is_relayed_or_answered_with_the_credential() {
    privileged!("an_auth_switch_to_ed25519_is_relayed_or_answered_with_the_credential");
    if skip_without_mariadb() {
        return;
    }
    let db = server();
    // The greeting offers mysql_native_password; this user's plugin makes the server
    // switch to client_ed25519 (a 32-byte nonce signed with a key from the password).
    db.sql(
        "install soname 'auth_ed25519';
         create user 'edbot'@'%' identified via ed25519 using password('ed-secret');
         grant select on shop.* to 'edbot'@'%';",
    );
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    // Relayed: the client signs, the agent passes the switch and the answer on.
    let agent = Agent::start(&format!(
        "{}{}",
        workload("bot", &cg),
        target("shop-db", &db, "")
    ));
    assert_eq!(
        ok(mariadb(
            &cg,
            &db,
            &["-uedbot", "-ped-secret", "-e", "select current_user()"]
        )),
        "edbot@%\n"
    );
    let session = agent.wait_sessions_ended(1)[0]["id"].as_i64().unwrap();
    let auth = agent
        .events(session)
        .into_iter()
        .find(|e| e["kind"] == "mysql_auth")
        .unwrap();
    assert_eq!(auth["data"]["method"], "client_ed25519");
    assert_eq!(auth["data"]["injected"], false);
    assert!(!journal_holds(&agent, "ed-secret"));
    drop(agent);

    // Answered by the agent: the client gives no password.
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("ed.password");
    std::fs::write(&password_file, "ed-secret\n").unwrap();
    std::fs::set_permissions(
        &password_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let agent = Agent::start(&format!(
        "{}{}",
        workload("bot", &cg),
        target(
            "shop-db",
            &db,
            &format!(
                "password_file = \"{}\"\nuser = \"edbot\"\n",
                password_file.display()
            )
        ),
    ));
    assert_eq!(
        ok(mariadb(
            &cg,
            &db,
            &["-ubot", "-e", "select current_user(), count(*) from users"]
        )),
        "edbot@%\t2\n"
    );
    let session = agent.wait_sessions_ended(1)[0]["id"].as_i64().unwrap();
    let auth = agent
        .events(session)
        .into_iter()
        .find(|e| e["kind"] == "mysql_auth")
        .unwrap();
    assert_eq!(auth["data"]["method"], "client_ed25519");
    assert_eq!(auth["data"]["injected"], true);
    assert!(!journal_holds(&agent, "ed-secret"));
}

#[test]
fn tls_is_terminated_towards_the_client_and_spoken_to_the_server() {
    privileged!("tls_is_terminated_towards_the_client_and_spoken_to_the_server");
    if skip_without_mariadb() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    make_test_certs(certs.path(), "nhi-test-mysql-ca", "db.test");
    let file = |name: &str| certs.path().join(name).display().to_string();
    let db = server_with(&[
        format!("--ssl-ca={}", file("ca.crt")),
        format!("--ssl-cert={}", file("server.crt")),
        format!("--ssl-key={}", file("server.key")),
    ]);
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}",
        workload("bot", &cg),
        target(
            "shop-db",
            &db,
            &format!(
                "client_tls = \"terminate\"\ntls = \"verify-full\"\nca_file = \"{}\"\n",
                file("ca.crt")
            )
        ),
    ));
    let agent_ca = agent.dir.path().join("tls/ca.crt");
    // The client verifies the agent's certificate for the address it dialled; the
    // server sees a TLS connection (the agent's).
    let out = mariadb(
        &cg,
        &db,
        &[
            "-uapp",
            "-papp-secret",
            "--ssl",
            &format!("--ssl-ca={}", agent_ca.display()),
            "--ssl-verify-server-cert",
            "-e",
            "select variable_value <> '' from information_schema.session_status where variable_name = 'Ssl_version'",
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent
            .log_text()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("session closed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out, "1\n");
    // A client that trusts only the server's CA does not accept the agent.
    let refused = mariadb(
        &cg,
        &db,
        &[
            "-uapp",
            "-papp-secret",
            "--ssl",
            &format!("--ssl-ca={}", file("ca.crt")),
            "--ssl-verify-server-cert",
            "-e",
            "select 1",
        ],
    );
    assert!(!refused.status.success());
    let sessions = agent.wait_sessions_ended(2);
    let id = sessions
        .iter()
        .find(|s| s["bytes_from_server"].as_u64().unwrap_or(0) > 0)
        .map(|s| s["id"].as_i64().unwrap())
        .unwrap();
    let login = agent
        .events(id)
        .into_iter()
        .find(|e| e["kind"] == "mysql_login")
        .expect("mysql_login");
    assert_eq!(login["data"]["client_tls"], true);
}

#[test]
fn sysbench_oltp_read_only_runs_prepared_through_the_agent() {
    privileged!("sysbench_oltp_read_only_runs_prepared_through_the_agent");
    if skip_without_mariadb() {
        return;
    }
    let db = server();
    db.sql("create database sbtest; grant all on sbtest.* to 'app'@'%';");
    let cg = TestCgroup::create(&format!("{}/bench", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}\
         [[policy]]\nworkload = \"bench\"\n\n\
         [[policy.rule]]\nname = \"sysbench-tables\"\nverdict = \"allow\"\ntext = \"^CREATE TABLE sbtest\"\n\n\
         [[policy.rule]]\nname = \"no-drop\"\nverdict = \"deny\"\nkinds = [\"drop\"]\n",
        workload("bench", &cg),
        target("sb", &db, ""),
    ));
    let sysbench = |command: &str, extra: &[&str]| {
        let out = cg
            .command("sysbench")
            .args([
                "oltp_read_only",
                "--db-driver=mysql",
                "--mysql-host=127.0.0.1",
            ])
            .arg(format!("--mysql-port={}", db.port))
            .args([
                "--mysql-user=app",
                "--mysql-db=sbtest",
                "--tables=2",
                "--table-size=1000",
            ])
            .env("MYSQL_PWD", "app-secret")
            .arg("--mysql-password=app-secret")
            .args(extra)
            .arg(command)
            .output()
            .expect("sysbench");
        assert!(
            out.status.success(),
            "sysbench {command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Its CREATE TABLE carries an executable comment (`/*! ENGINE = innodb */`): opaque,
    // so only a rule naming it by text lets it through.
    sysbench("prepare", &[]);
    let report = sysbench(
        "run",
        &[
            "--threads=2",
            "--time=3",
            "--db-ps-mode=auto",
            "--report-interval=0",
        ],
    );
    let ignored_errors = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("ignored errors:"))
        .and_then(|rest| rest.split_whitespace().next());
    assert_eq!(ignored_errors, Some("0"), "{report}");
    let transactions: u64 = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("transactions:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no transactions in {report}"));
    assert!(transactions > 10, "{report}");
    // sysbench's cleanup drops its tables: refused by the policy, and it says so.
    let out = cg
        .command("sysbench")
        .args([
            "oltp_read_only",
            "--db-driver=mysql",
            "--mysql-host=127.0.0.1",
        ])
        .arg(format!("--mysql-port={}", db.port))
        .args([
            "--mysql-user=app",
            "--mysql-password=app-secret",
            "--mysql-db=sbtest",
            "--tables=2",
        ])
        .arg("cleanup")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("no-drop"), "{text}");
    assert_eq!(db.sql("select count(*) from sbtest.sbtest1").trim(), "1000");
    // Every execute was journaled with its parameters.
    agent.wait_sessions_ended(4);
    let executes = agent
        .statements()
        .into_iter()
        .filter(|s| s["protocol"] == "execute")
        .count() as u64;
    assert!(
        executes >= transactions * 10,
        "{executes} executes for {transactions} transactions"
    );
}

/// A policy in observe mode: a statement a rule denies is journaled as would-be denied
/// (`enforced: false`) and forwarded; the server runs it.
#[test]
fn observe_mode_forwards_and_journals_what_would_have_been_refused() {
    privileged!("observe_mode_forwards_and_journals_what_would_have_been_refused");
    if skip_without_mariadb() {
        return;
    }
    let db = server();
    let cg = TestCgroup::create(&format!("{}/watched", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "{}{}\
         [[policy]]\nworkload = \"watched\"\nmode = \"observe\"\n\n\
         [[policy.rule]]\nname = \"no-drop\"\nverdict = \"deny\"\nkinds = [\"drop\"]\n",
        workload("watched", &cg),
        target("shop-db", &db, ""),
    ));
    assert_eq!(
        ok(mariadb(
            &cg,
            &db,
            &[
                "-uapp",
                "-papp-secret",
                "-e",
                "drop table scratch; select 'after'"
            ]
        )),
        "after\n"
    );
    assert_eq!(
        db.sql("select count(*) from information_schema.tables where table_name = 'scratch'")
            .trim(),
        "0"
    );
    agent.wait_sessions_ended(1);
    let statements = agent.statements();
    let drop = statements
        .iter()
        .find(|s| s["text"] == "drop table scratch")
        .unwrap_or_else(|| panic!("no DROP in {statements:#?}"));
    assert_eq!(drop["verdict"], "deny");
    assert_eq!(drop["rule"], "no-drop");
    assert_eq!(drop["enforced"], false);
    assert_eq!(drop["action"], "forwarded");
}

/// COM_CHANGE_USER, sent by PyMySQL's own packet writer (no installed client library
/// exposes it: PyMySQL has no `change_user`, mysqlclient and mysql-connector are not
/// installed): relayed with its authentication (MariaDB answers with an auth switch and
/// a fresh scramble) when the client authenticated itself,
/// journaled as `mysql_change_user` then `mysql_auth`; refused with ERR 1142 when the
/// agent logged in with its credential.
#[test]
fn com_change_user_is_relayed_or_refused_with_the_credential() {
    privileged!("com_change_user_is_relayed_or_refused_with_the_credential");
    if skip_without_mariadb() {
        return;
    }
    let db = server();
    db.sql(
        "create user 'other'@'%' identified by 'other-secret';
         grant select on shop.* to 'other'@'%';",
    );
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    // Connect as app (or as nobody when the agent holds the credential), then
    // COM_CHANGE_USER to `other` with mysql_native_password over the connection's
    // scramble, then `select current_user()`.
    let script = r#"
import os, struct, sys, pymysql
from pymysql import _auth
from pymysql.constants import COMMAND
conn = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user=os.environ["BOT_USER"],
                       password=os.environ.get("BOT_PASSWORD", ""), database="shop")
auth = _auth.scramble_native_password(os.environ["OTHER_PASSWORD"].encode(), conn.salt)
payload = (b"other\0" + bytes([len(auth)]) + auth + b"shop\0" + struct.pack("<H", 45)
           + b"mysql_native_password\0" + b"\0")
conn._execute_command(COMMAND.COM_CHANGE_USER, payload)
try:
    p = conn._read_packet()
    if p.is_auth_switch_request():
        # MariaDB switches to the same plugin with a fresh scramble.
        p.read_uint8()
        p.read_string()
        salt = p.read_all()[:20]
        conn.write_packet(_auth.scramble_native_password(os.environ["OTHER_PASSWORD"].encode(), salt))
        conn._read_packet()
except pymysql.err.MySQLError as e:
    print("refused %d %s" % (e.args[0], e.args[1]))
    sys.exit(0)
with conn.cursor() as cur:
    cur.execute("select current_user()")
    print(cur.fetchone()[0])
conn.close()
"#;
    let run = |agent: &Agent, user: &str, password: Option<&str>| {
        let mut command = cg.command("/usr/bin/python3");
        if let Some(password) = password {
            command.env("BOT_PASSWORD", password);
        }
        let out = command
            .env("BOT_USER", user)
            .env("OTHER_PASSWORD", "other-secret")
            .args(["-c", script, &db.port.to_string()])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let agent = Agent::start(&format!(
        "{}{}",
        workload("bot", &cg),
        target("shop-db", &db, "")
    ));
    assert_eq!(run(&agent, "app", Some("app-secret")), "other@%\n");
    let session = agent.wait_sessions_ended(1)[0]["id"].as_i64().unwrap();
    let events = agent.events(session);
    let change = events
        .iter()
        .find(|e| e["kind"] == "mysql_change_user")
        .unwrap_or_else(|| panic!("no mysql_change_user in {events:#?}"));
    assert_eq!(change["data"]["user"], "other");
    let auths: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "mysql_auth")
        .collect();
    assert_eq!(auths.len(), 2, "{events:#?}");
    assert_eq!(auths[1]["data"]["change_user"], true);
    assert_eq!(auths[1]["data"]["user"], "other");
    assert!(auths[1]["data"]["error"].is_null(), "{:#}", auths[1]);
    assert!(!journal_holds(&agent, "other-secret"));
    drop(agent);

    // The agent logged in with its credential: the bot may not become someone else.
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "app-secret");
    let agent = Agent::start(&format!(
        "{}{}",
        workload("bot", &cg),
        target(
            "shop-db",
            &db,
            &format!("password_file = \"{}\"\nuser = \"app\"\n", pw.display())
        )
    ));
    let out = run(&agent, "bot", None);
    assert!(
        out.starts_with("refused 1142 nhi-agent: COM_CHANGE_USER is not allowed"),
        "{out}"
    );
    agent.wait_sessions_ended(1);
    let statements = agent.statements();
    assert!(
        statements
            .iter()
            .any(|s| s["text"] == "-- COM_CHANGE_USER other" && s["action"] == "refused"),
        "{statements:#?}"
    );
}

fn skip_without_fixture() -> bool {
    if CachingSha2Server::available() && MariaDb::available() {
        return false;
    }
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("python3-cryptography, openssl and mariadb-client are needed (cargo xtask setup)");
    }
    eprintln!("SKIPPED: python3-cryptography, openssl or mariadb-client is not installed");
    true
}

/// A password file (0600) holding `password`.
fn password_file(dir: &std::path::Path, password: &str) -> std::path::PathBuf {
    let path = dir.join("mysql.password");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

fn fixture_target(server: &CachingSha2Server, extra: &str) -> String {
    format!(
        "[[target]]\nname = \"mysql8\"\naddress = \"{}\"\nprotocol = \"mysql\"\n{extra}\n",
        server.addr()
    )
}

/// `mariadb` in the cgroup against the fixture's address (intercepted), no password.
fn mariadb_to(cg: &TestCgroup, port: u16, sql: &str) -> Output {
    cg.command("mariadb")
        .args(["--no-defaults", "-h", "127.0.0.1", "-P", &port.to_string()])
        .args(["--protocol=tcp", "-N", "-B", "-ubot", "-e", sql])
        .output()
        .expect("run mariadb")
}

/// The `exchange` of each session's `mysql_auth` event, in session order (`-` when the
/// event has none, `none` when the session has no `mysql_auth`).
fn auth_exchanges(agent: &Agent, sessions: usize) -> Vec<String> {
    let mut sessions = agent.wait_sessions_ended(sessions);
    sessions.sort_by_key(|s| s["id"].as_i64());
    sessions
        .iter()
        .map(|s| {
            agent
                .events(s["id"].as_i64().unwrap())
                .into_iter()
                .find(|e| e["kind"] == "mysql_auth")
                .map_or("none".to_string(), |e| {
                    assert_eq!(e["data"]["method"], "caching_sha2_password", "{e}");
                    e["data"]["exchange"].as_str().unwrap_or("-").to_string()
                })
        })
        .collect()
}

/// What the fixture saw of each authentication: `auth` and `ok`.
fn fixture_auths(server: &CachingSha2Server) -> Vec<String> {
    server
        .auths()
        .iter()
        .map(|a| format!("{} {}", a["auth"].as_str().unwrap(), a["ok"]))
        .collect()
}

/// The agent holds the credential; the bot gives none. Against a MySQL-8-like fixture
/// server (no MySQL 8 can run here): caching_sha2_password's full authentication over
/// plain TCP with the server's RSA key (asked for, or pinned), fast authentication
/// from the server's cache, a restart forcing full authentication again, a wrong pinned
/// key refused by the server, neither key refused by the agent naming both.
#[test]
fn fixture_mysql8_caching_sha2_full_auth_with_rsa_when_the_agent_holds_the_credential() {
    privileged!(
        "fixture_mysql8_caching_sha2_full_auth_with_rsa_when_the_agent_holds_the_credential"
    );
    if skip_without_fixture() {
        return;
    }
    const PASSWORD: &str = "rsa-fixture-Secret-71";
    let mut server = CachingSha2Server::start("app", PASSWORD);
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let keys = tempfile::tempdir().unwrap();
    let pw = password_file(keys.path(), PASSWORD);
    let target = fixture_target(&server, "");
    let start = |extra: &str| {
        Agent::start(&format!(
            "{}{target}password_file = \"{}\"\nuser = \"app\"\n{extra}\n",
            workload("bot", &cg),
            pw.display()
        ))
    };
    let port = server.port;
    let query = || mariadb_to(&cg, port, "select 42, current_user()");

    // Asked for: full authentication (key requested), then fast, then full after a
    // restart of the server.
    let agent = start("get_server_public_key = true\n");
    assert_eq!(ok(query()), "42\tapp@%\n");
    assert_eq!(ok(query()), "42\tapp@%\n");
    server.restart();
    assert_eq!(ok(query()), "42\tapp@%\n");
    assert_eq!(
        fixture_auths(&server),
        [
            "full_key_requested true",
            "fast true",
            "full_key_requested true"
        ]
    );
    assert_eq!(
        auth_exchanges(&agent, 3),
        [
            "full_auth_rsa_requested_key",
            "fast_auth",
            "full_auth_rsa_requested_key"
        ]
    );
    let first = agent.sessions()[0]["id"].as_i64().unwrap();
    let login = agent.events(first);
    let login = login.iter().find(|e| e["kind"] == "mysql_login").unwrap();
    assert_eq!(login["data"]["credential_injected"], true);
    let transcript = replay(&agent, first);
    assert!(
        transcript.contains("authenticated: caching_sha2_password as app (credential held by the agent), full auth rsa requested key"),
        "{transcript}"
    );
    assert_in_no_file(agent.dir.path(), &[PASSWORD]);
    drop(agent);

    // Pinned to the server's key: full authentication without asking for it.
    server.restart();
    let agent = start(&format!(
        "server_public_key = \"{}\"\n",
        server.public_key().display()
    ));
    assert_eq!(ok(query()), "42\tapp@%\n");
    assert_eq!(fixture_auths(&server).last().unwrap(), "full true");
    assert_eq!(auth_exchanges(&agent, 1), ["full_auth_rsa_pinned_key"]);
    assert_in_no_file(agent.dir.path(), &[PASSWORD]);
    drop(agent);

    // Pinned to another key: the server cannot decrypt, refuses, and the bot reads it.
    server.restart();
    openssl_rsa_key(&keys.path().join("other.pem"));
    let other = keys.path().join("other-public.pem");
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(keys.path().join("other.pem"))
        .arg("-out")
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success());
    let agent = start(&format!("server_public_key = \"{}\"\n", other.display()));
    let out = query();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR 1045 (28000)") && stderr.contains("Access denied for user 'app'"),
        "{stderr}"
    );
    assert_eq!(
        fixture_auths(&server).last().unwrap(),
        "full_undecryptable false"
    );
    assert_eq!(auth_exchanges(&agent, 1), ["full_auth_rsa_pinned_key"]);
    drop(agent);

    // Neither key: the agent refuses before sending anything of the password.
    let agent = start("");
    let out = query();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR 1045 (28000)")
            && stderr.contains("`server_public_key`")
            && stderr.contains("`get_server_public_key = true`"),
        "{stderr}"
    );
    // The refusal is journaled as the session's `mysql_auth`, and `replay` says it.
    let session = agent.wait_sessions_ended(1)[0]["id"].as_i64().unwrap();
    let events = agent.events(session);
    let auth = events
        .iter()
        .find(|e| e["kind"] == "mysql_auth")
        .expect("a mysql_auth event for the refusal");
    assert_eq!(auth["data"]["method"], "caching_sha2_password", "{auth}");
    assert_eq!(auth["data"]["injected"], true, "{auth}");
    assert!(
        auth["data"]["refused"]
            .as_str()
            .is_some_and(|r| r.contains("neither server_public_key nor get_server_public_key")),
        "{auth}"
    );
    let transcript = replay(&agent, session);
    assert!(
        transcript.contains("authentication caching_sha2_password refused by the agent: caching_sha2_password full authentication without TLS"),
        "{transcript}"
    );
    assert_in_no_file(agent.dir.path(), &[PASSWORD]);
    // The server saw no password at all: its log has nothing new.
    assert_eq!(fixture_auths(&server).len(), 5);
}

/// Relayed: PyMySQL has its own password and asks the fixture server for its RSA key
/// through the agent (0x02 and the PEM answer framed with the ids each side expects);
/// then fast authentication; a wrong password is the server's ERR 1045. Over TLS to the
/// agent, the password PyMySQL sends in clear is RSA-encrypted by the agent.
#[test]
fn fixture_mysql8_caching_sha2_full_auth_with_rsa_is_relayed_for_pymysql() {
    privileged!("fixture_mysql8_caching_sha2_full_auth_with_rsa_is_relayed_for_pymysql");
    if skip_without_fixture() {
        return;
    }
    const PASSWORD: &str = "relay-Secret-in-pymysql-5";
    let mut server = CachingSha2Server::start("app", PASSWORD);
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    // TLS offered to clients (optional), and the server's key may be asked for: only
    // for a password a TLS client sends the agent, since this server has no TLS.
    let agent = Agent::start(&format!(
        "{}{}",
        workload("bot", &cg),
        fixture_target(
            &server,
            "client_tls = \"terminate\"\nget_server_public_key = true\n"
        )
    ));
    let script = r#"
import os, sys, pymysql
ssl = {"ssl_ca": os.environ["AGENT_CA"]} if os.environ.get("AGENT_CA") else {}
try:
    conn = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user="app",
                           password=os.environ["BOT_PASSWORD"], **ssl)
except pymysql.err.OperationalError as e:
    print("refused %d" % e.args[0])
    sys.exit(0)
with conn.cursor() as cur:
    cur.execute("select 7, current_user()")
    print("%s %s" % cur.fetchone())
conn.close()
"#;
    let port = server.port;
    let pymysql_tls = |password: &str, ca: Option<&std::path::Path>| {
        let mut command = cg.command("/usr/bin/python3");
        if let Some(ca) = ca {
            command.env("AGENT_CA", ca);
        }
        ok(command
            // Not in argv: the agent records the process's command line.
            .env("BOT_PASSWORD", password)
            .args(["-c", script, &port.to_string()])
            .output()
            .expect("python3"))
    };
    let pymysql = |password: &str| pymysql_tls(password, None);
    assert_eq!(pymysql(PASSWORD), "7 app@%\n");
    assert_eq!(pymysql(PASSWORD), "7 app@%\n");
    assert_eq!(pymysql("wrong"), "refused 1045\n");
    // Over TLS to the agent PyMySQL sends the password itself in full authentication;
    // the server has no TLS, so the agent encrypts it with the server's key instead of
    // passing it on in clear.
    server.restart();
    let agent_ca = agent.dir.path().join("tls/ca.crt");
    assert_eq!(pymysql_tls(PASSWORD, Some(&agent_ca)), "7 app@%\n");
    assert_eq!(
        fixture_auths(&server),
        [
            "full_key_requested true",
            "fast true",
            "full_key_requested false",
            "full_key_requested true"
        ]
    );
    assert_eq!(
        auth_exchanges(&agent, 4),
        [
            "full_auth_rsa_requested_key",
            "fast_auth",
            "full_auth_rsa_requested_key",
            "full_auth_rsa_requested_key"
        ]
    );
    let mut sessions = agent.sessions();
    sessions.sort_by_key(|s| s["id"].as_i64());
    let login = |i: usize| {
        agent
            .events(sessions[i]["id"].as_i64().unwrap())
            .into_iter()
            .find(|e| e["kind"] == "mysql_login")
            .unwrap()
    };
    assert_eq!(login(0)["data"]["credential_injected"], false);
    assert_eq!(login(0)["data"]["client_tls"], false);
    assert_eq!(login(3)["data"]["client_tls"], true);
    assert_in_no_file(agent.dir.path(), &[PASSWORD]);
}

/// Reads `users` with the binary protocol (COM_STMT_PREPARE / COM_STMT_EXECUTE:
/// Perl's DBD::MariaDB on libmariadb with `mariadb_server_prepare=1`, a real client);
/// returns what it printed, one row a line, tab separated.
fn perl_binary(cg: &TestCgroup, db: &MariaDb, agent: &Agent) -> String {
    let script = r#"
use strict; use DBI;
my $port = shift;
my $dbh = DBI->connect("DBI:MariaDB:database=shop;host=127.0.0.1;port=$port;mariadb_server_prepare=1",
    "app", $ENV{APP_PASSWORD}, { RaiseError => 1, PrintError => 0 });
my $sth = $dbh->prepare("select id, email, card, name from users where id >= ? order by id");
$sth->execute(1);
while (my @r = $sth->fetchrow_array) { print join("\t", map { defined $_ ? $_ : "NULL" } @r), "\n"; }
$sth = $dbh->prepare("select concat(email, ?) from users where email = ?");
$sth->execute("!", "ada\@example.com");
while (my @r = $sth->fetchrow_array) { print join("\t", map { defined $_ ? $_ : "NULL" } @r), "\n"; }
$dbh->disconnect;
"#;
    let out = cg
        .command("perl")
        .env("APP_PASSWORD", "app-secret")
        .args(["-e", script, &db.port.to_string()])
        .output()
        .expect("perl");
    assert!(
        out.status.success(),
        "perl failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agent
            .log_text()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `needle` is in any file of the agent's journal (the database, its WAL, its
/// segments), in the agent's log, or in what `events --json` prints.
fn journal_holds(agent: &Agent, needle: &str) -> bool {
    let dir = agent.journal.parent().unwrap();
    let name = agent
        .journal
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let in_files = std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with(&name)
            && std::fs::read(e.path()).is_ok_and(|b| contains_bytes(&b, needle.as_bytes()))
    });
    let events = agent.cli(&[
        "events",
        "--journal",
        agent.journal.to_str().unwrap(),
        "--json",
    ]);
    assert!(events.status.success());
    in_files
        || contains_bytes(&events.stdout, needle.as_bytes())
        || agent.log_text().contains(needle)
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
