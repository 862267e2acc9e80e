//! Just-in-time approvals: a statement held by a `verdict = "approve"` rule waits in
//! the agent until `nhi-agent approvals approve|deny` decides, or its timeout passes.
//! Real psql in an intercepted cgroup, a real server, real eBPF, the real CLI over the
//! real control socket (with real credentials: root, and uid 65534 via setpriv).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use nhi_tests::*;

fn pg_target(name: &str, addr: std::net::SocketAddr) -> String {
    format!("[[target]]\nname = \"{name}\"\naddress = \"{addr}\"\nprotocol = \"postgres\"\n\n")
}

fn workload(name: &str, cg: &TestCgroup) -> String {
    format!(
        "[[workload]]\nname = \"{name}\"\ncgroup = \"{}\"\n\n",
        cg.rel()
    )
}

/// A policy that holds every DELETE for approval.
fn approve_deletes(timeout: &str) -> String {
    format!(
        "[[policy]]\nname = \"bots\"\napproval_timeout = \"{timeout}\"\n\n\
         [[policy.rule]]\nname = \"ask-before-delete\"\nverdict = \"approve\"\nkinds = [\"delete\"]\n"
    )
}

/// The socket lives outside the agent's private temp dir, so uid 65534 can reach it.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new() -> Self {
        Self(std::env::temp_dir().join(unique("nhi-approvals")))
    }
    fn socket(&self) -> PathBuf {
        self.0.join("run").join("approvals.sock")
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// psql in the cgroup, started in the background (its statement will be held).
fn psql_bg(cg: &TestCgroup, port: u16, args: &[&str]) -> Child {
    cg.command("psql")
        .args(["-X", "-At", "-v", "VERBOSITY=verbose", "-U", "postgres"])
        .args(["-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run psql")
}

fn finish(child: Child) -> (bool, String, String) {
    let out = child.wait_with_output().expect("psql output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// `nhi-agent approvals ARGS --socket S`, optionally as uid/gid 65534-ish via setpriv.
fn approvals(socket: &Path, as_user: Option<(u32, u32)>, args: &[&str]) -> Output {
    let mut cmd = match as_user {
        None => Command::new(agent_bin()),
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(agent_bin());
            c
        }
    };
    cmd.arg("approvals")
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run nhi-agent approvals")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Waits until exactly one statement is pending and returns it.
fn wait_pending(socket: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = approvals(socket, None, &["list", "--json"]);
        if out.status.success() {
            let answer: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("list --json prints JSON");
            if let Some(p) = answer["pending"].as_array().and_then(|a| a.first()) {
                return p.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no pending statement: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every `approval` event in the journal, in order.
fn approval_events(agent: &Agent, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events: Vec<serde_json::Value> = agent
            .sessions()
            .iter()
            .flat_map(|s| agent.events(s["id"].as_i64().expect("session id")))
            .filter(|e| e["kind"] == "approval")
            .map(|e| e["data"].clone())
            .collect();
        if events.len() >= n || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn held_deletes_are_approved_or_denied_by_root_and_the_approver_group() {
    privileged!("held_deletes_are_approved_or_denied_by_root_and_the_approver_group");
    let pg = PgServer::start();
    pg.sql("create table orders (id int primary key); insert into orders values (1), (2), (3)");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let dir = SocketDir::new();
    let socket = dir.socket();
    let agent = Agent::start_with(
        &format!(
            "{}{}{}",
            workload("bot", &cg),
            pg_target("orders-db", pg.addr()),
            approve_deletes("60s")
        ),
        &format!(
            "approvals_socket = \"{}\"\napprover_group = \"nogroup\"\n",
            socket.display()
        ),
        &[],
    );
    // The socket: 0660, group nogroup; its directory 0755.
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = std::fs::metadata(&socket).expect("approvals socket exists");
        assert_eq!(m.permissions().mode() & 0o777, 0o660);
        assert_eq!(m.gid(), 65534);
        let d = std::fs::metadata(socket.parent().unwrap()).unwrap();
        assert_eq!(d.permissions().mode() & 0o777, 0o755);
    }
    let out = approvals(&socket, None, &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no statement is waiting"));

    // 1. Approved by root: the DELETE runs, the session goes on.
    let psql = psql_bg(
        &cg,
        pg.port,
        &[
            "-c",
            "delete from orders where id = 1",
            "-c",
            "select count(*) from orders",
        ],
    );
    let pending = wait_pending(&socket);
    let id = pending["id"].as_str().unwrap().to_string();
    assert_eq!(pending["statement"], "delete from orders where id = 1");
    assert_eq!(pending["rule"], "ask-before-delete");
    assert_eq!(pending["workload"], "bot");
    assert_eq!(pending["target"], "orders-db");
    let shown = approvals(&socket, None, &["show", &id]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("delete from orders where id = 1"));
    let out = approvals(&socket, None, &["approve", &id, "--reason", "ticket 42"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("approved by uid 0 (root)"));
    let (ok, stdout, stderr_text) = finish(psql);
    assert!(ok, "{stdout}\n{stderr_text}");
    assert!(stdout.ends_with('2'), "{stdout}");
    assert_eq!(
        pg.sql("select count(*) from orders where id = 1").trim(),
        "0"
    );
    // Deciding again is an error: the request is gone.
    let out = approvals(&socket, None, &["approve", &id]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no pending request"),
        "{}",
        stderr(&out)
    );

    // 2. Denied by a member of approver_group (uid 65534, gid nogroup): 42501, and the
    //    session continues.
    let psql = psql_bg(
        &cg,
        pg.port,
        &[
            "-c",
            "delete from orders where id = 2",
            "-c",
            "select count(*) from orders",
        ],
    );
    let id = wait_pending(&socket)["id"].as_str().unwrap().to_string();
    // A caller outside the group cannot even connect (file mode) ...
    let out = approvals(&socket, Some((65534, 4242)), &["deny", &id]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("permission refused"),
        "{}",
        stderr(&out)
    );
    // ... and when the file mode lets it in, the agent still refuses it (SO_PEERCRED).
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = approvals(&socket, Some((65534, 4242)), &["deny", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not an approver"), "{}", stderr(&out));
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o660)).unwrap();
    assert!(agent.log_text().contains("not an approver"));
    let out = approvals(
        &socket,
        Some((65534, 65534)),
        &["deny", &id, "--reason", "not during business hours"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, stdout, stderr_text) = finish(psql);
    assert!(stderr_text.contains("42501"), "{stderr_text}");
    assert!(
        stderr_text.contains("denied by uid 65534 (nobody)"),
        "{stderr_text}"
    );
    assert!(
        stderr_text.contains("not during business hours"),
        "{stderr_text}"
    );
    assert!(stdout.ends_with('2'), "the session continued: {stdout}");
    assert_eq!(
        pg.sql("select count(*) from orders where id = 2").trim(),
        "1"
    );

    // The journal has both decisions and who took them.
    let events = approval_events(&agent, 2);
    assert!(
        events
            .iter()
            .any(|e| e["decision"] == "approved" && e["by"] == "uid 0 (root)"),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e["decision"] == "denied"
            && e["by"] == "uid 65534 (nobody)"
            && e["reason"] == "not during business hours"),
        "{events:#?}"
    );
}

#[test]
fn a_held_delete_left_alone_is_denied_at_the_timeout_and_non_root_is_refused() {
    privileged!("a_held_delete_left_alone_is_denied_at_the_timeout_and_non_root_is_refused");
    let pg = PgServer::start();
    pg.sql("create table orders (id int primary key); insert into orders values (1)");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let dir = SocketDir::new();
    let socket = dir.socket();
    // No approver_group: root only.
    let agent = Agent::start_with(
        &format!(
            "{}{}{}",
            workload("bot", &cg),
            pg_target("orders-db", pg.addr()),
            approve_deletes("2s")
        ),
        &format!("approvals_socket = \"{}\"\n", socket.display()),
        &[],
    );
    let started = Instant::now();
    let psql = psql_bg(
        &cg,
        pg.port,
        &[
            "-c",
            "delete from orders",
            "-c",
            "select count(*) from orders",
        ],
    );
    let id = wait_pending(&socket)["id"].as_str().unwrap().to_string();
    // A non-root caller is refused, by the file mode and, past it, by the agent.
    let out = approvals(&socket, Some((65534, 65534)), &["approve", &id]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("permission refused"),
        "{}",
        stderr(&out)
    );
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = approvals(&socket, Some((65534, 65534)), &["approve", &id]);
    assert!(stderr(&out).contains("not an approver"), "{}", stderr(&out));
    let (_, stdout, stderr_text) = finish(psql);
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(stderr_text.contains("42501"), "{stderr_text}");
    assert!(
        stderr_text.contains("not approved in time"),
        "{stderr_text}"
    );
    assert!(stdout.ends_with('1'), "the session continued: {stdout}");
    assert_eq!(pg.sql("select count(*) from orders").trim(), "1");
    let out = approvals(&socket, None, &["list", "--json"]);
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["pending"], serde_json::json!([]));
    let events = approval_events(&agent, 1);
    assert_eq!(events[0]["decision"], "expired", "{events:#?}");

    // With the agent gone, the CLI says so.
    drop(agent);
    let out = approvals(&socket, None, &["list"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not running"), "{}", stderr(&out));
}

// ---------------------------------------------------------------- part 2: tokens, grants,
// announcements, session cap

/// Every event of `kind` in the journal, in order.
fn events_of(agent: &Agent, kind: &str) -> Vec<serde_json::Value> {
    agent
        .sessions()
        .iter()
        .flat_map(|s| agent.events(s["id"].as_i64().expect("session id")))
        .filter(|e| e["kind"] == kind)
        .map(|e| e["data"].clone())
        .collect()
}

/// An Ed25519 key pair: the signing key for jsonwebtoken and the public key as PEM.
fn ed25519_pair() -> (jsonwebtoken::EncodingKey, String) {
    use base64::Engine as _;
    use ring::signature::KeyPair as _;
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .expect("generate Ed25519");
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse");
    // SubjectPublicKeyInfo for Ed25519: a fixed 12-byte prefix and the raw key.
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    (jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()), pem)
}

fn decision_token(key: &jsonwebtoken::EncodingKey, id: &str, jti: &str) -> String {
    signed(key, id, jti, "approve")
}

fn signed(key: &jsonwebtoken::EncodingKey, id: &str, jti: &str, decision: &str) -> String {
    token_with(key, id, jti, decision, "once")
}

fn scoped(key: &jsonwebtoken::EncodingKey, id: &str, jti: &str, scope: &str) -> String {
    token_with(key, id, jti, "approve", scope)
}

fn token_with(
    key: &jsonwebtoken::EncodingKey,
    id: &str,
    jti: &str,
    decision: &str,
    scope: &str,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "approval_id": id, "decision": decision, "approver": "alice",
        "exp": now + 120, "iat": now, "jti": jti, "scope": scope,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("approver".into());
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

/// POSTs `body` to `http://addr{path}`; the status and the JSON answer.
fn http_post(addr: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("decision endpoint");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let json = out
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or_default();
    (status, json)
}

#[test]
fn signed_decisions_grants_and_webhook_announcements() {
    privileged!("signed_decisions_grants_and_webhook_announcements");
    let pg = PgServer::start();
    pg.sql(
        "create table orders (id int primary key); insert into orders values (1), (2), (3), (4), (5), (6)",
    );
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    // A second workload whose policy only observes: its DELETEs are announced, not held.
    let watched = TestCgroup::create(&format!("{base}/watch"));
    let dir = SocketDir::new();
    let socket = dir.socket();
    std::fs::create_dir_all(&dir.0).unwrap();
    let (signing, pem) = ed25519_pair();
    let key_path = dir.0.join("approver.pem");
    std::fs::write(&key_path, pem).unwrap();
    let (other_signing, _) = ed25519_pair();
    let (hook_url, hook) = nhi_tests::http::webhook_listener();
    let endpoint = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start_with(
        &format!(
            "{}{}{}[[policy]]\nname = \"watched\"\nworkload = \"watch\"\nmode = \"observe\"\n\
             [[policy.rule]]\nname = \"ask-before-delete\"\nverdict = \"approve\"\nkinds = [\"delete\"]\n\n\
             {}\n[approvals]\nwebhook_url = \"{hook_url}\"\ndecision_keys = [\"{}\"]\nmax_grant = \"1m\"\nhttp_listen = \"{endpoint}\"\n",
            workload("bot", &cg),
            workload("watch", &watched),
            pg_target("orders-db", pg.addr()),
            approve_deletes("20s"),
            key_path.display()
        ),
        &format!("approvals_socket = \"{}\"\n", socket.display()),
        &[],
    );

    // 1. Announced to the webhook; a token with a bad signature is refused and the
    //    statement stays held; a good one (scope session) via `approvals submit`
    //    approves it and the session's next DELETE passes without a hold.
    let psql = psql_bg(
        &cg,
        pg.port,
        &[
            "-c",
            "delete from orders where id = 1",
            "-c",
            "delete from orders where id = 5",
        ],
    );
    let pending = wait_pending(&socket);
    let id = pending["id"].as_str().unwrap().to_string();
    let announced = hook
        .recv_timeout(Duration::from_secs(20))
        .expect("the webhook got the announcement");
    assert_eq!(announced["id"], id.as_str());
    assert_eq!(announced["statement"], "delete from orders where id = 1");
    assert!(
        announced["process"]["pid"].as_u64().unwrap() > 0,
        "{announced}"
    );
    assert!(
        contains_whole(
            announced["text"].as_str().unwrap(),
            &format!("nhi-agent approvals approve {id}")
        ),
        "{announced}"
    );
    let bad = decision_token(&other_signing, &id, "bad-1");
    let out = approvals(&socket, None, &["submit", &bad]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("token refused"), "{}", stderr(&out));
    assert_eq!(wait_pending(&socket)["id"], id.as_str(), "still held");
    let good = scoped(&signing, &id, "good-1", "session");
    let out = approvals(&socket, None, &["submit", &good]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("jwt:alice (kid approver)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (ok, stdout, stderr_text) = finish(psql);
    assert!(ok, "{stdout}\n{stderr_text}");
    assert_eq!(
        pg.sql("select count(*) from orders where id in (1, 5)")
            .trim(),
        "0"
    );
    // A replay of the used token is refused.
    let out = approvals(&socket, None, &["submit", &good]);
    assert!(!out.status.success());

    // 2. A grant for 3s: the next matching DELETE (another session) passes without a
    //    hold; after expiry the DELETE is held again.
    let psql = psql_bg(&cg, pg.port, &["-c", "delete from orders where id = 2"]);
    let id2 = wait_pending(&socket)["id"].as_str().unwrap().to_string();
    let out = approvals(
        &socket,
        None,
        &["approve", &id2, "--scope", "grant", "--for", "3s"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("grant g-1"));
    let granted_at = Instant::now();
    assert!(finish(psql).0);
    let out = approvals(&socket, None, &["grants"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("g-1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let psql = psql_bg(&cg, pg.port, &["-c", "delete from orders where id = 3"]);
    let (ok, stdout, stderr_text) = finish(psql);
    assert!(ok, "{stdout}\n{stderr_text}");
    assert!(
        granted_at.elapsed() < Duration::from_secs(3),
        "passed within the grant"
    );
    assert_eq!(
        pg.sql("select count(*) from orders where id = 3").trim(),
        "0"
    );
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(granted_at.elapsed()) + Duration::from_millis(300),
    );
    let psql = psql_bg(&cg, pg.port, &["-c", "delete from orders where id = 4"]);
    let id4 = wait_pending(&socket)["id"].as_str().unwrap().to_string();
    // 3. Denied by a signed token through the loopback HTTP endpoint.
    let path = format!("/approvals/{id4}/decision");
    let forged = signed(&other_signing, &id4, "deny-0", "deny");
    let (status, answer) = http_post(&endpoint, &path, &forged);
    assert_eq!(status, 401, "{answer}");
    let deny = signed(&signing, &id4, "deny-1", "deny");
    let (status, answer) = http_post(&endpoint, &path, &deny);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["by"], "jwt:alice (kid approver)");
    let (status, _) = http_post(&endpoint, &path, &deny);
    assert_eq!(status, 409, "a replay");
    let (_, _, stderr_text) = finish(psql);
    assert!(stderr_text.contains("42501"), "{stderr_text}");
    assert!(stderr_text.contains("denied by jwt:alice"), "{stderr_text}");
    assert_eq!(
        pg.sql("select count(*) from orders where id = 4").trim(),
        "1"
    );

    // The journal: announcements, the token decision (by, sha256, no token), the grant.
    let requests = events_of(&agent, "approval_request");
    assert!(
        requests.iter().any(|r| r["id"] == id.as_str()),
        "{requests:#?}"
    );
    let decisions = approval_events(&agent, 4);
    let by_token = decisions
        .iter()
        .find(|e| e["approval_id"] == id.as_str())
        .expect("token decision journaled");
    assert_eq!(by_token["by"], "jwt:alice (kid approver)");
    assert_eq!(by_token["jti"], "good-1");
    assert_eq!(by_token["token_sha256"].as_str().unwrap().len(), 64);
    assert!(
        !by_token.to_string().contains(&good),
        "the token itself is not journaled"
    );
    assert!(
        decisions.iter().any(|e| e["granted_by"] == id2.as_str()
            && e["grant"] == "g-1"
            && e["decision"] == "approved"),
        "{decisions:#?}"
    );
    assert!(
        decisions
            .iter()
            .any(|e| e["granted_by"] == id.as_str() && e["scope"] == "session"),
        "{decisions:#?}"
    );

    // 4. Observe mode: the DELETE goes through at once, and is announced as "would have
    //    been held".
    let psql = psql_bg(
        &watched,
        pg.port,
        &["-c", "delete from orders where id = 6"],
    );
    let (ok, stdout, stderr_text) = finish(psql);
    assert!(ok, "{stdout}\n{stderr_text}");
    assert_eq!(
        pg.sql("select count(*) from orders where id = 6").trim(),
        "0"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let observed = loop {
        let v = hook
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the observe-mode announcement");
        if v["would_hold"] == true {
            break v;
        }
    };
    assert_eq!(observed["statement"], "delete from orders where id = 6");
    assert_eq!(observed["workload"], "watch");
    assert!(
        observed["text"]
            .as_str()
            .unwrap()
            .contains("would have been held"),
        "{observed}"
    );
}

#[test]
fn the_session_cap_ends_a_psql_session_with_the_message() {
    privileged!("the_session_cap_ends_a_psql_session_with_the_message");
    let pg = PgServer::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start_with(
        &format!(
            "{}{}[[policy]]\nname = \"bots\"\nmax_session_duration = \"2s\"\n",
            workload("bot", &cg),
            pg_target("orders-db", pg.addr()),
        ),
        "",
        &[],
    );
    let started = Instant::now();
    let psql = psql_bg(&cg, pg.port, &["-c", "select pg_sleep(8)"]);
    let (ok, _, stderr_text) = finish(psql);
    assert!(!ok);
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "ended by the cap"
    );
    assert!(
        stderr_text.contains("session exceeded max_session_duration (2s) of policy bots"),
        "{stderr_text}"
    );
    assert!(stderr_text.contains("57P05"), "{stderr_text}");
    let sessions = agent.wait_sessions_ended(1);
    assert!(
        sessions[0]
            .to_string()
            .contains("policy limit: session exceeded max_session_duration"),
        "{sessions:#?}"
    );
}
