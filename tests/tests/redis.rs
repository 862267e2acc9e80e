//! Redis targets (`protocol = "redis"`): real clients (`redis-cli`, redis-py from apt's
//! python3-redis, `redis-benchmark`) in an intercepted cgroup, with no password, against
//! a real `redis-server` that requires one (the agent authenticates as an ACL user whose
//! password only it holds). Every command is judged and journaled before it reaches the
//! server; replies come back in order, masked by key glob and by detector.
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nhi_tests::http::{assert_in_no_file, data_of_kind};
use nhi_tests::redis::{RedisServer, ADMIN_PASSWORD, AGENT_PASSWORD, AGENT_USER};
use nhi_tests::*;
use serde_json::Value;

/// apt's python3 (python3-redis is installed for it, not for a pyenv python).
const PYTHON: &str = "/usr/bin/python3";

fn agent_for(
    server: &RedisServer,
    cg: &TestCgroup,
    secrets: &std::path::Path,
    agent_keys: &str,
) -> Agent {
    agent_with(server, cg, secrets, agent_keys, "", "")
}

/// The agent of [`agent_for`], with `target_keys` added to the target and `policy_keys`
/// to the policy.
fn agent_with(
    server: &RedisServer,
    cg: &TestCgroup,
    secrets: &std::path::Path,
    agent_keys: &str,
    target_keys: &str,
    policy_keys: &str,
) -> Agent {
    let password_file = RedisServer::password_file(secrets);
    Agent::start_with(
        &format!(
            "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
             [[target]]\nname = \"cache\"\naddress = \"127.0.0.1:{}\"\nprotocol = \"redis\"\n\
             password_file = \"{}\"\nuser = \"{AGENT_USER}\"\n{target_keys}\n\
             [[mask]]\nname = \"contact\"\ncolumns = [\"user:*:email\", \"email\"]\ndetectors = [\"email\"]\n\n\
             [[policy]]\nname = \"bots\"\napproval_timeout = \"60s\"\n{policy_keys}\n\
             [[policy.rule]]\nname = \"no-admin\"\nverdict = \"deny\"\n\
             commands = [\"FLUSHALL\", \"FLUSHDB\", \"KEYS\", \"CONFIG\", \"DEBUG\", \"MODULE\", \"ACL\", \"EVAL*\"]\n\n\
             [[policy.rule]]\nname = \"sessions-need-a-human\"\nverdict = \"approve\"\n\
             commands = [\"DEL\", \"UNLINK\"]\nkeys = [\"session:*\"]\n",
            cg.rel(),
            server.port,
            password_file.display(),
        ),
        agent_keys,
        &[],
    )
}

fn cli(cg: &TestCgroup, port: u16, extra: &[&str], args: &[&str]) -> Output {
    cg.command("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli")
}

fn cli_stdin(cg: &TestCgroup, port: u16, extra: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = cg
        .command("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn python(cg: &TestCgroup, script: &str) -> Value {
    let out = cg
        .command(PYTHON)
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

/// The events of `kind` once `done` holds for them.
fn events_when(agent: &Agent, kind: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = data_of_kind(agent, kind);
        if done(&events) || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn approvals(agent: &Agent, args: &[&str]) -> Output {
    Command::new(agent_bin())
        .arg("approvals")
        .args(args)
        .arg("--socket")
        .arg(agent.dir.path().join("approvals.sock"))
        .output()
        .expect("run nhi-agent approvals")
}

#[test]
fn redis_commands_are_judged_masked_injected_and_journaled() {
    privileged!("redis_commands_are_judged_masked_injected_and_journaled");
    let server = RedisServer::start();
    let secrets = tempfile::tempdir().unwrap();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = agent_for(&server, &cg, secrets.path(), "");
    let port = server.port;
    let admin = |args: &[&str]| stdout(&server.admin(args));
    assert_eq!(admin(&["SET", "user:1:email", "alice@example.com"]), "OK");
    assert_eq!(
        admin(&["SET", "note:1", "call bob@example.org today"]),
        "OK"
    );
    assert_eq!(
        admin(&[
            "HSET",
            "user:2",
            "email",
            "carol@example.net",
            "name",
            "Carol"
        ]),
        "2"
    );
    assert_eq!(admin(&["SET", "session:1", "x"]), "OK");

    // Directly, without a password, the server refuses the bot.
    let direct = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "GET", "note:1"])
        .output()
        .unwrap();
    assert!(stdout(&direct).contains("NOAUTH"), "{}", stdout(&direct));

    // Through the agent: no password given, the agent's credential is injected.
    assert_eq!(stdout(&cli(&cg, port, &[], &["SET", "k", "v1"])), "OK");
    assert_eq!(stdout(&cli(&cg, port, &[], &["GET", "k"])), "v1");
    assert_eq!(
        stdout(&cli(&cg, port, &[], &["ACL", "WHOAMI"])),
        "ERR nhi-agent: ACL denied by rule no-admin"
    );
    // A client that authenticates itself is answered by the agent (its password is not
    // forwarded, nor journaled).
    assert_eq!(
        stdout(&cli(
            &cg,
            port,
            &["--pass", "client-wrong-pw-31", "--no-auth-warning"],
            &["GET", "k"]
        )),
        "v1"
    );

    // Masked by key glob and by detector, RESP2 and RESP3 (a map reply), the field
    // name of a hash too.
    assert_eq!(
        stdout(&cli(&cg, port, &[], &["GET", "user:1:email"])),
        "[redacted]"
    );
    assert_eq!(
        stdout(&cli(&cg, port, &[], &["GET", "note:1"])),
        "call [redacted] today"
    );
    assert_eq!(
        stdout(&cli(&cg, port, &["-3"], &["GET", "user:1:email"])),
        "[redacted]"
    );
    let hash = stdout(&cli(&cg, port, &["-3"], &["HGETALL", "user:2"]));
    assert!(
        hash.contains("email [redacted]") && hash.contains("name Carol"),
        "{hash}"
    );
    let hash2 = stdout(&cli(&cg, port, &[], &["HGET", "user:2", "email"]));
    assert_eq!(hash2, "[redacted]");
    let mget = cli(&cg, port, &[], &["MGET", "k", "user:1:email", "nokey"]);
    assert_eq!(String::from_utf8_lossy(&mget.stdout), "v1\n[redacted]\n\n");
    // The data itself is untouched.
    assert_eq!(admin(&["GET", "user:1:email"]), "alice@example.com");

    // FLUSHALL refused with the rule's name; the session goes on, in order.
    let out = cli_stdin(
        &cg,
        port,
        &[],
        "SET a 1\nFLUSHALL\nGET a\nCONFIG GET maxmemory\nINCR a\n",
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "OK",
            "ERR nhi-agent: FLUSHALL denied by rule no-admin",
            "", // redis-cli prints an empty line after an error
            "1",
            "ERR nhi-agent: CONFIG denied by rule no-admin",
            "",
            "2"
        ],
        "{out}"
    );
    assert_eq!(admin(&["GET", "k"]), "v1", "nothing was flushed");

    // Pipelined (redis-py, no transaction): 60 commands with refusals among them; each
    // reply pairs with its command.
    let results = python(
        &cg,
        &format!(
            r#"
import json, redis
r = redis.Redis(host="127.0.0.1", port={port})
p = r.pipeline(transaction=False)
for i in range(20):
    p.set("p:%d" % i, "v%d" % i)
    p.get("p:%d" % i)
    if i % 7 == 3:
        p.flushdb()
    else:
        p.incr("c")
out = []
for x in p.execute(raise_on_error=False):
    out.append(str(x) if isinstance(x, Exception) else (x.decode() if isinstance(x, bytes) else x))
print(json.dumps(out))
"#
        ),
    );
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 60);
    let mut counter = 0;
    for i in 0..20 {
        assert_eq!(results[i * 3], Value::Bool(true), "SET {i}: {results:?}");
        assert_eq!(results[i * 3 + 1], format!("v{i}"), "GET {i}");
        if i % 7 == 3 {
            assert_eq!(
                results[i * 3 + 2],
                "nhi-agent: FLUSHDB denied by rule no-admin"
            );
        } else {
            counter += 1;
            assert_eq!(results[i * 3 + 2], counter, "INCR {i}");
        }
    }

    // MULTI/EXEC: the EXEC reply is masked per queued command; a transaction holding a
    // refused command is discarded as a whole (EXECABORT), nothing of it runs.
    let tx = python(
        &cg,
        &format!(
            r#"
import json, redis
r = redis.Redis(host="127.0.0.1", port={port})
p = r.pipeline(transaction=True)
p.set("t:1", "one"); p.get("user:1:email"); p.get("t:1")
ok = [x.decode() if isinstance(x, bytes) else x for x in p.execute()]
p = r.pipeline(transaction=True)
p.set("t:2", "two"); p.flushdb()
try:
    p.execute(); aborted = None
except redis.exceptions.ResponseError as e:
    aborted = str(e)
print(json.dumps({{"ok": ok, "aborted": aborted, "t2": r.exists("t:2")}}))
"#
        ),
    );
    assert_eq!(
        tx["ok"],
        serde_json::json!([true, "[redacted]", "one"]),
        "{tx}"
    );
    assert!(
        tx["aborted"].as_str().unwrap_or("").contains("nhi-agent"),
        "{tx}"
    );
    assert_eq!(tx["t2"], 0, "the aborted transaction did not run: {tx}");

    // Pub/sub: the subscriber gets the message with the e-mail masked.
    let mut sub = cg
        .command(PYTHON)
        .args([
            "-u",
            "-c",
            &format!(
                r#"
import json, redis
r = redis.Redis(host="127.0.0.1", port={port})
ps = r.pubsub()
ps.subscribe("news")
m = ps.get_message(timeout=10)
print(json.dumps({{"type": m["type"]}}), flush=True)
while True:
    m = ps.get_message(timeout=20)
    if m is None or m["type"] == "message":
        break
print(json.dumps({{"data": m and m["data"].decode()}}), flush=True)
"#
            ),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "subscribe");
    assert_eq!(
        admin(&["PUBLISH", "news", "write to dave@example.com"]),
        "1"
    );
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["data"], "write to [redacted]");
    assert!(sub.wait().unwrap().success());

    // A held command: DEL of a session key waits for a human.
    let held = cg
        .command("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "DEL",
            "session:1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pending = loop {
        let out = approvals(&agent, &["list", "--json"]);
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(p) = answer["pending"].as_array().and_then(|a| a.first()) {
            break p.clone();
        }
        assert!(Instant::now() < deadline, "no pending command");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(pending["statement"], "DEL session:1");
    assert_eq!(pending["rule"], "sessions-need-a-human");
    assert_eq!(admin(&["EXISTS", "session:1"]), "1", "held, not forwarded");
    let id = pending["id"].as_str().unwrap();
    assert!(approvals(&agent, &["approve", id]).status.success());
    let out = held.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "1");
    assert_eq!(admin(&["EXISTS", "session:1"]), "0");

    // MONITOR is refused.
    let out = cli_stdin(&cg, port, &[], "MONITOR\n");
    assert!(out.contains("MONITOR is not allowed"), "{out}");

    // redis-benchmark with 16 commands per pipeline: no errors.
    let bench = cg
        .command("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "set,get",
            "-n",
            "2000",
            "-P",
            "16",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    let text = String::from_utf8_lossy(&bench.stdout);
    assert!(text.contains("SET:") && text.contains("GET:"), "{text}");

    // The journal: every command with its verdict, keys and reply; no secret anywhere.
    let commands = events_when(&agent, "redis_command", |e| {
        e.iter().any(|c| c["command"] == "MONITOR")
    });
    let flush = commands
        .iter()
        .find(|c| c["command"] == "FLUSHALL")
        .expect("FLUSHALL journaled");
    assert_eq!(flush["verdict"], "deny");
    assert_eq!(flush["rule"], "no-admin");
    assert_eq!(flush["action"], "refused");
    let get = commands
        .iter()
        .find(|c| c["command"] == "GET" && c["keys"][0] == "user:1:email")
        .expect("GET journaled");
    assert_eq!(get["verdict"], "allow");
    assert_eq!(get["action"], "forwarded");
    let auth = commands
        .iter()
        .find(|c| c["command"] == "AUTH")
        .expect("AUTH journaled");
    assert_eq!(auth["action"], "answered");
    assert_eq!(auth["args"][0], "[redacted]");
    let replies = data_of_kind(&agent, "redis_reply");
    assert!(
        replies
            .iter()
            .any(|r| r["masked"][0]["rule"] == "contact" && r["excerpt"] == "[redacted]"),
        "{replies:?}"
    );
    let pushes = data_of_kind(&agent, "redis_push");
    assert!(
        pushes
            .iter()
            .any(|p| p["channel"] == "news" && p["excerpt"] == "write to [redacted]"),
        "{pushes:?}"
    );
    let auths = data_of_kind(&agent, "redis_auth");
    assert!(auths
        .iter()
        .all(|a| a["user"] == AGENT_USER && a["injected"] == true && a["error"].is_null()));

    // replay: a redis-cli transcript; export: OCSF Datastore Activity per command;
    // events: found by --text.
    let journal = agent.journal.to_str().unwrap().to_owned();
    let replays: Vec<String> = agent
        .sessions()
        .iter()
        .map(|s| {
            let out = agent.cli(&[
                "replay",
                &s["id"].to_string(),
                "--journal",
                &journal,
                "--instant",
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    let flush_replay = replays
        .iter()
        .find(|r| r.contains("redis> FLUSHALL"))
        .expect("a session replaying FLUSHALL");
    assert!(
        flush_replay.contains("redis> FLUSHALL   [deny by rule no-admin: refused]"),
        "{flush_replay}"
    );
    assert!(flush_replay.contains("redis> GET a"), "{flush_replay}");
    assert!(
        flush_replay.contains("(error) ERR nhi-agent: FLUSHALL denied by rule no-admin"),
        "{flush_replay}"
    );
    let masked_replay = replays
        .iter()
        .find(|r| r.contains("redis> GET user:1:email"))
        .expect("a session replaying the masked GET");
    assert!(masked_replay.contains("\"[redacted]\""), "{masked_replay}");
    assert!(
        masked_replay.contains("masked: user:1:email by contact"),
        "{masked_replay}"
    );
    let out = agent.cli(&["export", "--format", "ocsf", "--journal", &journal]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let activity: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["class_uid"] == 6005 && e["database"]["name"] == "cache")
        .collect();
    // Each session's login with the agent's credential is an Authentication (3002).
    let logins: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["class_uid"] == 3002)
        .collect();
    assert_eq!(logins.len(), auths.len(), "{logins:#?}");
    assert!(
        logins.iter().all(|e| e["status_id"] == 1
            && e["message"] == format!("Redis login as {AGENT_USER} (AUTH): Success")
            && e["unmapped"]["credential_injected"] == true),
        "{logins:#?}"
    );
    let flush = activity
        .iter()
        .find(|e| e["query_info"]["query_string"] == "FLUSHALL")
        .expect("FLUSHALL in OCSF");
    assert_eq!(flush["disposition"], "Blocked");
    assert_eq!(flush["unmapped"]["command_rule"], "no-admin");
    let get = activity
        .iter()
        .find(|e| e["query_info"]["query_string"] == "GET user:1:email")
        .expect("GET in OCSF");
    assert_eq!(get["status"], "Success");
    assert_eq!(get["unmapped"]["reply_masked"][0]["rule"], "contact");
    let out = agent.cli(&["events", &journal, "--json", "--text", "FLUSHALL"]);
    let found: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !found.is_empty()
            && found
                .iter()
                .all(|e| e["kind"] == "redis_command" && e["data"]["command"] == "FLUSHALL"),
        "{found:#?}"
    );

    let mut agent = agent;
    agent.terminate();
    agent.assert_verifies();
    assert_in_no_file(
        agent.dir.path(),
        &[
            AGENT_PASSWORD,
            ADMIN_PASSWORD,
            "client-wrong-pw-31",
            "alice@example.com",
            "bob@example.org",
            "carol@example.net",
            "dave@example.com",
        ],
    );
}

/// Sends `bytes` from the cgroup and reads what comes back until the agent closes (at
/// most 10 s): the reply bytes, and whether the connection was closed.
fn raw_exchange(cg: &TestCgroup, port: u16, bytes: &[u8]) -> (Vec<u8>, bool) {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let answer = python(
        cg,
        &format!(
            r#"
import json, socket
s = socket.create_connection(("127.0.0.1", {port}))
s.settimeout(10)
s.sendall(bytes.fromhex("{hex}"))
data, closed = b"", False
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            closed = True
            break
        data += chunk
except socket.timeout:
    pass
print(json.dumps({{"reply": data.hex(), "closed": closed}}))
"#
        ),
    );
    let reply = answer["reply"].as_str().unwrap();
    let reply = (0..reply.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&reply[i..i + 2], 16).unwrap())
        .collect();
    (reply, answer["closed"] == true)
}

#[test]
fn malformed_commands_get_a_protocol_error_and_only_their_session_ends() {
    privileged!("malformed_commands_get_a_protocol_error_and_only_their_session_ends");
    let server = RedisServer::start();
    let secrets = tempfile::tempdir().unwrap();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = agent_for(&server, &cg, secrets.path(), "");
    let port = server.port;
    let cases: [(&[u8], &str); 3] = [
        // A command, then a bulk length that is not a number: the command's reply
        // first, then the error, as redis-server answers.
        (
            b"SET a 1\r\n*1\r\n$abc\r\nGET a\r\n",
            "+OK\r\n-ERR Protocol error: invalid bulk length in a RESP header\r\n",
        ),
        // Over the agent's bulk limit, refused from the header (nothing buffered).
        (
            b"*2\r\n$3\r\nSET\r\n$99999999999\r\n",
            "-ERR Protocol error: bulk length of 99999999999 exceeds the limit of 67108864\r\n",
        ),
        // An inline command with unbalanced quotes.
        (
            b"GET \"a\r\n",
            "-ERR Protocol error: client command: unbalanced quotes in an inline command\r\n",
        ),
    ];
    for (bytes, expected) in cases {
        let (reply, closed) = raw_exchange(&cg, port, bytes);
        assert_eq!(String::from_utf8_lossy(&reply), expected);
        assert!(closed, "the agent closes after the error: {expected}");
    }
    // Empty and negative counts are no commands, as for redis-server: skipped,
    // unanswered, and the session goes on.
    let (reply, closed) = raw_exchange(&cg, port, b"*0\r\n*-1\r\nPING\r\n*-3\r\nQUIT\r\n");
    assert_eq!(String::from_utf8_lossy(&reply), "+PONG\r\n+OK\r\n");
    assert!(closed, "QUIT closes");
    // The agent lived on: the next session works, and nothing after the error was run.
    assert_eq!(stdout(&cli(&cg, port, &[], &["GET", "a"])), "1");
    assert_eq!(stdout(&server.admin(&["EXISTS", "a"])), "1");
    let sessions = agent.wait_sessions_ended(cases.len() + 2);
    let reasons: Vec<&str> = sessions
        .iter()
        .filter_map(|s| s["close_reason"].as_str())
        .filter(|r| r.starts_with("protocol error: client: "))
        .collect();
    assert_eq!(reasons.len(), cases.len(), "{sessions:#?}");
    let errors = events_when(&agent, "protocol_error", |e| e.len() >= cases.len());
    assert_eq!(errors.len(), cases.len(), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e["reason"] == "client: invalid bulk length in a RESP header"),
        "{errors:?}"
    );
    assert!(agent
        .log_text()
        .contains("client: invalid bulk length in a RESP header"));
}

#[test]
fn tls_is_terminated_for_clients_and_originated_to_the_server() {
    privileged!("tls_is_terminated_for_clients_and_originated_to_the_server");
    let certs = tempfile::tempdir().unwrap();
    make_test_certs(certs.path(), "test-ca", "cache.test");
    let server = RedisServer::start_tls(certs.path());
    let secrets = tempfile::tempdir().unwrap();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = agent_with(
        &server,
        &cg,
        secrets.path(),
        "",
        &format!(
            "tls = \"verify-full\"\nca_file = \"{}\"\nclient_tls = \"terminate\"\n",
            certs.path().join("ca.crt").display()
        ),
        "",
    );
    let port = server.port;
    let agent_ca = agent.dir.path().join("tls/ca.crt");
    assert!(agent_ca.exists(), "the agent CA is in its state directory");
    let admin = |args: &[&str]| stdout(&server.admin(args));
    assert_eq!(admin(&["SET", "user:1:email", "alice@example.com"]), "OK");
    // The server speaks TLS only: a plain client gets nowhere directly.
    let direct = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "PING"])
        .output()
        .unwrap();
    assert_ne!(stdout(&direct), "PONG");

    // redis-cli over TLS, trusting the agent CA only; no password: the agent's is
    // injected (the server requires one).
    let tls_ca = agent_ca.to_str().unwrap();
    let tls = ["--tls", "--cacert", tls_ca];
    assert_eq!(stdout(&cli(&cg, port, &tls, &["SET", "k", "v1"])), "OK");
    assert_eq!(stdout(&cli(&cg, port, &tls, &["GET", "k"])), "v1");
    assert_eq!(
        stdout(&cli(&cg, port, &tls, &["GET", "user:1:email"])),
        "[redacted]"
    );
    assert_eq!(
        stdout(&cli(&cg, port, &tls, &["FLUSHALL"])),
        "ERR nhi-agent: FLUSHALL denied by rule no-admin"
    );
    assert_eq!(admin(&["GET", "k"]), "v1", "nothing was flushed");
    // A client that does not trust the agent CA refuses the agent by its own check.
    let untrusting = cli(
        &cg,
        port,
        &[
            "--tls",
            "--cacert",
            certs.path().join("ca.crt").to_str().unwrap(),
        ],
        &["GET", "k"],
    );
    assert_ne!(stdout(&untrusting), "v1");

    // redis-py over TLS.
    let py = python(
        &cg,
        &format!(
            r#"
import json, redis
r = redis.Redis(host="127.0.0.1", port={port}, ssl=True, ssl_ca_certs="{tls_ca}")
print(json.dumps({{"k": r.get("k").decode(), "email": r.get("user:1:email").decode()}}))
"#
        ),
    );
    assert_eq!(py, serde_json::json!({"k": "v1", "email": "[redacted]"}));

    // A plain client of the same target: the agent alone speaks TLS to the server.
    assert_eq!(stdout(&cli(&cg, port, &[], &["GET", "k"])), "v1");

    // Six sessions authenticated (the untrusting client gave up in the handshake).
    let auths = events_when(&agent, "redis_auth", |e| e.len() >= 6);
    assert!(
        auths.len() == 6
            && auths
                .iter()
                .all(|a| a["user"] == AGENT_USER && a["injected"] == true && a["error"].is_null()),
        "{auths:?}"
    );
    let commands = data_of_kind(&agent, "redis_command");
    assert!(commands
        .iter()
        .any(|c| c["command"] == "FLUSHALL" && c["action"] == "refused"));
    // Which legs were TLS, per session: five TLS clients, one plain one.
    let legs = data_of_kind(&agent, "redis_tls");
    assert_eq!(legs.len(), 6, "{legs:?}");
    assert!(legs.iter().all(|l| l["server_tls"] == "verify-full"));
    assert_eq!(legs.iter().filter(|l| l["client_tls"] == true).count(), 5);
    let journal = agent.journal.to_str().unwrap().to_owned();
    let flush_session = agent
        .sessions()
        .into_iter()
        .find(|s| {
            agent
                .events(s["id"].as_i64().unwrap())
                .iter()
                .any(|e| e["kind"] == "redis_command" && e["data"]["command"] == "FLUSHALL")
        })
        .expect("the FLUSHALL session");
    let replay = agent.cli(&[
        "replay",
        &flush_session["id"].to_string(),
        "--journal",
        &journal,
        "--instant",
    ]);
    let replay = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.contains("client TLS terminated by the agent; tls = \"verify-full\" to the server"),
        "{replay}"
    );
    let mut agent = agent;
    agent.terminate();
    agent.assert_verifies();
    assert_in_no_file(
        agent.dir.path(),
        &[AGENT_PASSWORD, ADMIN_PASSWORD, "alice@example.com"],
    );
}

#[test]
fn tls_to_the_server_with_the_wrong_ca_is_refused_with_a_clear_error() {
    privileged!("tls_to_the_server_with_the_wrong_ca_is_refused_with_a_clear_error");
    let certs = tempfile::tempdir().unwrap();
    make_test_certs(certs.path(), "test-ca", "cache.test");
    let other = tempfile::tempdir().unwrap();
    make_test_certs(other.path(), "other-ca", "cache.test");
    let server = RedisServer::start_tls(certs.path());
    let secrets = tempfile::tempdir().unwrap();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    // The CA that signed the server's certificate is not the one configured, and the
    // target does not terminate client TLS.
    let agent = agent_with(
        &server,
        &cg,
        secrets.path(),
        "",
        &format!(
            "tls = \"verify-full\"\nca_file = \"{}\"\n",
            other.path().join("ca.crt").display()
        ),
        "",
    );
    let port = server.port;
    let out = cli(&cg, port, &[], &["GET", "k"]);
    assert_eq!(
        stdout(&out),
        "ERR nhi-agent: TLS to the server failed (tls = \"verify-full\"): certificate signed by an unknown issuer (not the configured CA)"
    );
    // A TLS client of a target that serves plain RESP: refused with a TLS alert.
    let tls_ca = certs.path().join("ca.crt");
    let out = cli(
        &cg,
        port,
        &["--tls", "--cacert", tls_ca.to_str().unwrap()],
        &["GET", "k"],
    );
    assert!(!stdout(&out).contains("nhi-agent"), "{out:?}");
    let sessions = agent.wait_sessions_ended(2);
    let reasons: Vec<&str> = sessions
        .iter()
        .filter_map(|s| s["close_reason"].as_str())
        .collect();
    assert!(
        reasons.iter().any(
            |r| r.starts_with("upstream connect failed: TLS: ") && r.contains("unknown issuer")
        ),
        "{reasons:?}"
    );
    let errors = events_when(&agent, "protocol_error", |e| !e.is_empty());
    assert!(
        errors.iter().any(|e| e["reason"]
            == "client: TLS to a target without client_tls = \"terminate\" (it serves plain RESP only)"),
        "{errors:?}"
    );
    assert!(agent.log_text().contains("unknown issuer"));
    let mut agent = agent;
    agent.terminate();
    assert_in_no_file(agent.dir.path(), &[AGENT_PASSWORD, ADMIN_PASSWORD]);
}

/// A raw RESP3 client in Python (redis-py 4 speaks RESP2 only): `cmd(...)` encodes a
/// command, `read()` decodes one frame (pushes as `{"push": [...]}`, errors as
/// `{"error": ...}`, maps as lists of pairs).
const RESP3_CLIENT: &str = r##"
import json, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(10)
buf = b""
def fill(n):
    global buf
    while len(buf) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("closed")
        buf += chunk
def line():
    global buf
    while b"\r\n" not in buf:
        fill(len(buf) + 1)
    l, buf = buf.split(b"\r\n", 1)
    return l
def exact(n):
    global buf
    fill(n + 2)
    d, buf = buf[:n], buf[n + 2:]
    return d.decode()
def read():
    l = line()
    t, rest = l[:1], l[1:].decode()
    if t == b"+": return rest
    if t == b"-": return {"error": rest}
    if t == b":": return int(rest)
    if t in (b"$", b"="): return None if int(rest) < 0 else exact(int(rest))
    if t in (b"*", b"~"): return None if int(rest) < 0 else [read() for _ in range(int(rest))]
    if t == b">": return {"push": [read() for _ in range(int(rest))]}
    if t == b"%": return [[read(), read()] for _ in range(int(rest))]
    if t == b"_": return None
    if t == b"#": return rest == "t"
    raise ValueError(l)
def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out
"##;

#[test]
fn resp3_tracking_invalidations_interleave_with_replies_and_keep_their_order() {
    privileged!("resp3_tracking_invalidations_interleave_with_replies_and_keep_their_order");
    let server = RedisServer::start();
    let secrets = tempfile::tempdir().unwrap();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = agent_for(&server, &cg, secrets.path(), "");
    let port = server.port;
    let script = format!(
        r#"{RESP3_CLIENT}
hello = (s.sendall(cmd("HELLO", "3")), read())[1]
s.sendall(cmd("CLIENT", "TRACKING", "on"))
tracking = read()
s.sendall(cmd("SET", "tk", "v1") + cmd("GET", "tk"))
setup = [tracking, read(), read()]
# One write: the client's own SET invalidates the key it tracks; the push comes
# somewhere among the replies, which must still pair with their commands.
s.sendall(cmd("GET", "tk") + cmd("SET", "tk", "v2") + cmd("GET", "tk") + cmd("PING") + cmd("GET", "user:1:email"))
seen, replies = [], 0
while replies < 5:
    f = read()
    seen.append(f)
    if not (isinstance(f, dict) and "push" in f):
        replies += 1
print(json.dumps({{"proto": dict(hello).get("proto"), "setup": setup, "seen": seen}}), flush=True)
# Another client changes the key: the push arrives while the connection is idle.
sys.stdin.readline()
push = read()
s.sendall(cmd("PING"))
print(json.dumps({{"push": push, "after": read()}}), flush=True)
"#
    );
    assert_eq!(
        stdout(&server.admin(&["SET", "user:1:email", "alice@example.com"])),
        "OK"
    );
    let mut client = cg
        .command(PYTHON)
        .args(["-u", "-c", &script, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["proto"], 3, "{first}");
    assert_eq!(
        first["setup"],
        serde_json::json!(["OK", "OK", "v1"]),
        "{first}"
    );
    let seen = first["seen"].as_array().unwrap();
    let invalidate = serde_json::json!({"push": ["invalidate", ["tk"]]});
    let (pushes, replies): (Vec<&Value>, Vec<&Value>) =
        seen.iter().partition(|f| f.get("push").is_some());
    assert_eq!(pushes, [&invalidate], "{seen:?}");
    // Redis 7 sends it right behind the SET's reply: between two replies, not after
    // the last one.
    let at = seen.iter().position(|f| f == &invalidate).unwrap();
    assert!(at > 0 && at < seen.len() - 1, "{seen:?}");
    assert_eq!(
        replies,
        [
            &serde_json::json!("v1"),
            &serde_json::json!("OK"),
            &serde_json::json!("v2"),
            &serde_json::json!("PONG"),
            &serde_json::json!("[redacted]"),
        ],
        "{seen:?}"
    );
    assert_eq!(stdout(&server.admin(&["SET", "tk", "v3"])), "OK");
    {
        use std::io::Write;
        writeln!(client.stdin.as_mut().unwrap()).unwrap();
    }
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["push"], invalidate, "{second}");
    assert_eq!(second["after"], "PONG");
    assert!(client.wait().unwrap().success());
    let pushes = events_when(&agent, "redis_push", |e| e.len() >= 2);
    assert_eq!(
        pushes.iter().filter(|p| p["kind"] == "invalidate").count(),
        2,
        "{pushes:?}"
    );
}

#[test]
fn observe_mode_journals_a_denied_command_and_forwards_it() {
    privileged!("observe_mode_journals_a_denied_command_and_forwards_it");
    let server = RedisServer::start();
    let secrets = tempfile::tempdir().unwrap();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = agent_with(&server, &cg, secrets.path(), "", "", "mode = \"observe\"\n");
    let port = server.port;
    assert_eq!(stdout(&server.admin(&["SET", "x", "1"])), "OK");
    assert_eq!(stdout(&cli(&cg, port, &[], &["FLUSHALL"])), "OK");
    assert_eq!(
        stdout(&server.admin(&["EXISTS", "x"])),
        "0",
        "observe mode refuses nothing"
    );
    let commands = events_when(&agent, "redis_command", |e| {
        e.iter().any(|c| c["command"] == "FLUSHALL")
    });
    let flush = commands
        .iter()
        .find(|c| c["command"] == "FLUSHALL")
        .expect("FLUSHALL journaled");
    assert_eq!(flush["verdict"], "deny");
    assert_eq!(flush["rule"], "no-admin");
    assert_eq!(flush["enforced"], false);
    assert_eq!(flush["action"], "forwarded");
    // MONITOR's stream cannot be followed: refused even so.
    let out = cli_stdin(&cg, port, &[], "MONITOR\n");
    assert!(out.contains("MONITOR is not allowed"), "{out}");
}
