//! State that survives a restart of the real agent (SIGTERM and kill -9): an approval
//! grant keeps letting its statements through, an attested job keeps its claims, a
//! token used before the restart is refused after it, and each restoration is journaled
//! as a `state_restored` event.
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nhi_tests::*;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn psql_cmd(cg: &TestCgroup, port: u16, sql: &str) -> Command {
    let mut c = cg.command("psql");
    c.args(["-X", "-At", "-v", "VERBOSITY=verbose", "-U", "postgres"])
        .args(["-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "10");
    c
}

fn psql(cg: &TestCgroup, port: u16, sql: &str) -> Output {
    psql_cmd(cg, port, sql).output().expect("run psql")
}

fn psql_bg(cg: &TestCgroup, port: u16, sql: &str) -> Child {
    psql_cmd(cg, port, sql)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run psql")
}

/// Waits until a statement is pending and returns its id.
fn pending_id(socket: &Path) -> String {
    wait_pending(socket)["id"]
        .as_str()
        .expect("a pending request's id")
        .to_string()
}

/// Every event of `kind` in the agent's journal directory (live file and segments).
fn events_of_kind(agent: &Agent, kind: &str) -> Vec<Value> {
    let dir = agent.journal.parent().expect("journal dir");
    let out = agent.cli(&["events", dir.to_str().unwrap(), "--kind", kind, "--json"]);
    assert!(out.status.success(), "events: {:?}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("events --json prints JSON lines"))
        .collect()
}

/// The `state_restored` events of `state_kind`, waiting for at least `n`.
fn restored(agent: &Agent, state_kind: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found: Vec<Value> = events_of_kind(agent, "state_restored")
            .into_iter()
            .map(|e| e["data"].clone())
            .filter(|d| d["kind"] == state_kind)
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} state_restored events of {state_kind}, got {found:?}\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_grant_still_lets_statements_through_after_sigterm_and_kill9() {
    privileged!("a_grant_still_lets_statements_through_after_sigterm_and_kill9");
    let pg = PgServer::start();
    pg.sql(
        "create table orders (id int primary key); insert into orders values (1), (2), (3), (4)",
    );
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let mut agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"orders-db\"\naddress = \"{}\"\nprotocol = \"postgres\"\n\n\
         [[policy]]\nname = \"bots\"\napproval_timeout = \"20s\"\n\n\
         [[policy.rule]]\nname = \"ask-before-delete\"\nverdict = \"approve\"\nkinds = [\"delete\"]\n",
        cg.rel(),
        pg.addr()
    ));
    let socket = agent.dir.path().join("approvals.sock");

    // A held DELETE approved with a grant of 15 minutes.
    let held = psql_bg(&cg, pg.port, "delete from orders where id = 1");
    let id = pending_id(&socket);
    let out = approvals(
        &socket,
        &["approve", &id, "--scope", "grant", "--for", "15m"],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let out = held.wait_with_output().expect("psql");
    assert!(out.status.success(), "{:?}", text(&out));
    let state = agent.dir.path().join("approvals.json");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&state)
            .expect("approvals.json")
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    // Restarted with SIGTERM, then with kill -9: each time the next DELETE passes at
    // once on the restored grant (without it, it would be held and nobody approves).
    for (round, row) in [(1usize, 2), (2, 3)] {
        if round == 1 {
            assert_eq!(agent.terminate(), Some(0));
        } else {
            agent.kill9();
        }
        agent.spawn();
        let r = restored(&agent, "approval_grants", round);
        let last = &r[round - 1];
        assert_eq!(last["outcome"], "restored", "{last}");
        assert_eq!(last["restored"], 1, "{last}");
        assert_eq!(last["detail"]["grants"], json!(["g-1"]), "{last}");
        let out = approvals(&socket, &["grants"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("g-1"),
            "{:?}",
            text(&out)
        );
        let out = psql(
            &cg,
            pg.port,
            &format!("delete from orders where id = {row}"),
        );
        assert!(out.status.success(), "round {round}: {:?}", text(&out));
        assert_eq!(
            pg.sql(&format!("select count(*) from orders where id = {row}"))
                .trim(),
            "0"
        );
        let out = approvals(&socket, &["list", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).expect("list --json");
        assert_eq!(list["pending"], json!([]), "nothing was held");
    }
    // Both statements are journaled as passing on the grant given before the restarts
    // (the journal spans segments now: the clean stop sealed one).
    let granted: Vec<Value> = events_of_kind(&agent, "approval")
        .into_iter()
        .map(|e| e["data"].clone())
        .filter(|d| d["grant"] == "g-1" && d["granted_by"] == id.as_str())
        .collect();
    assert_eq!(granted.len(), 2, "{granted:?}");
}

/// An issuer key: signs tokens; its public half is written as a JWKS file.
struct IssuerKey {
    encoding: EncodingKey,
    public: Vec<u8>,
}

const ISSUER: &str = "https://token.actions.githubusercontent.com";

impl IssuerKey {
    fn generate() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        IssuerKey {
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            public: pair.public_key().as_ref().to_vec(),
        }
    }

    fn write_jwks(&self, path: &Path) {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.public);
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": x}]});
        std::fs::write(path, jwks.to_string()).expect("write jwks");
    }

    fn token(&self, git_ref: &str, run_id: u64) -> String {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let claims = json!({
            "iss": ISSUER, "aud": "nhi-agent", "sub": format!("repo:org/app:ref:{git_ref}"),
            "exp": now + 600, "iat": now - 5, "jti": format!("{git_ref}-{run_id}"),
            "repository": "org/app", "ref": git_ref, "run_id": run_id,
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("sign")
    }
}

fn attest(cg: &TestCgroup, socket: &Path, dir: &Path, token: &str) -> Output {
    let file = dir.join(unique("token"));
    std::fs::write(&file, token).expect("write token");
    cg.command(agent_bin())
        .arg("attest")
        .arg("--token")
        .arg(&file)
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .output()
        .expect("run nhi-agent attest")
}

#[test]
fn a_used_token_is_refused_and_bindings_hold_after_sigterm_and_kill9() {
    privileged!("a_used_token_is_refused_and_bindings_hold_after_sigterm_and_kill9");
    let pg = PgServer::start();
    pg.sql("create table builds (id int)");
    let files = tempfile::tempdir().expect("tempdir");
    let jwks = files.path().join("issuer.jwks");
    let socket = files.path().join("attest.sock");
    let key = IssuerKey::generate();
    key.write_jwks(&jwks);
    let root = TestCgroup::create(&unique("nhi-test"));
    let main_job = root.child("main");
    let other_job = root.child("other");
    let mut agent = Agent::start(&format!(
        "[attest]\nsocket = \"{socket}\"\n\n\
         [[oidc_issuer]]\nissuer = \"{ISSUER}\"\njwks_file = \"{jwks}\"\naudience = \"nhi-agent\"\n\n\
         [[workload]]\nname = \"ci\"\ncgroup = \"{root}/*\"\n\n\
         [[target]]\nname = \"builds-db\"\naddress = \"{addr}\"\nprotocol = \"postgres\"\n\n\
         [[policy]]\nname = \"main-branch\"\nclaims = {{ ref = \"refs/heads/main\" }}\n\n\
         [[policy]]\nname = \"read-only\"\n\n\
         [[policy.rule]]\nname = \"no-writes\"\nverdict = \"deny\"\nkinds = [\"insert\"]\n",
        socket = socket.display(),
        jwks = jwks.display(),
        root = root.rel(),
        addr = pg.addr(),
    ));
    let token = key.token("refs/heads/main", 1);
    let out = attest(&main_job, &socket, files.path(), &token);
    assert!(out.status.success(), "{:?}", text(&out));
    // A job whose cgroup will be gone by the next start.
    let gone_job = root.child("gone");
    let out = attest(
        &gone_job,
        &socket,
        files.path(),
        &key.token("refs/heads/main", 2),
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let out = psql(&main_job, pg.port, "insert into builds values (1)");
    assert!(out.status.success(), "{:?}", text(&out));
    for name in ["attest-replay.json", "attest-bindings.json"] {
        let saved = std::fs::read_to_string(agent.dir.path().join(name)).expect(name);
        assert!(!saved.contains(&token), "{name} holds the token");
    }

    for round in [1usize, 2] {
        if round == 1 {
            assert_eq!(agent.terminate(), Some(0));
            // The job ends while no agent runs: its cgroup goes away.
            gone_job.kill_all();
            std::fs::remove_dir(cgroup2_root().expect("cgroup2").join(gone_job.rel()))
                .expect("remove the job's cgroup");
        } else {
            agent.kill9();
        }
        agent.spawn();
        let replay = restored(&agent, "attest_replay", round);
        assert_eq!(replay[round - 1]["outcome"], "restored");
        assert!(replay[round - 1]["restored"].as_u64().unwrap() >= 1);
        let bindings = restored(&agent, "attest_bindings", round);
        assert_eq!(bindings[round - 1]["restored"], 1, "{:?}", bindings);
        if round == 1 {
            assert_eq!(bindings[0]["dropped"], 1, "{:?}", bindings);
            assert_eq!(
                bindings[0]["detail"]["cgroups_gone"],
                json!([gone_job.rel()])
            );
        }
        // The binding holds: main may still write.
        let out = psql(
            &main_job,
            pg.port,
            &format!("insert into builds values ({})", round + 1),
        );
        assert!(out.status.success(), "round {round}: {:?}", text(&out));
        // The token used before the restart is refused, from any cgroup.
        for job in [&main_job, &other_job] {
            let out = attest(job, &socket, files.path(), &token);
            let (stdout, stderr) = text(&out);
            assert!(!out.status.success(), "replay accepted: {stdout}");
            assert!(
                format!("{stdout}{stderr}").contains("token already used"),
                "{stdout}\n{stderr}"
            );
        }
        let out = psql(&other_job, pg.port, "insert into builds values (99)");
        assert!(text(&out).1.contains("42501"), "{:?}", text(&out));
    }
    assert_eq!(pg.sql("select count(*) from builds").trim(), "3");

    // A replay cache that cannot be read does not fail open: the agent starts, says so
    // (log and journal), keeps the file aside, and refuses every token issued before the
    // restart.
    agent.kill9();
    let replay_file = agent.dir.path().join("attest-replay.json");
    std::fs::write(&replay_file, "{ torn").expect("corrupt the replay cache");
    agent.spawn();
    let replay = restored(&agent, "attest_replay", 3);
    assert_eq!(replay[2]["outcome"], "invalid", "{:?}", replay[2]);
    assert!(replay[2]["reason"].as_str().is_some_and(|r| !r.is_empty()));
    let moved = replay[2]["moved_to"].as_str().expect("moved aside");
    assert_eq!(
        std::fs::read_to_string(moved).expect("kept"),
        "{ torn",
        "the invalid file is kept"
    );
    assert!(agent.log_text().contains("state file refused"));
    let out = attest(&other_job, &socket, files.path(), &token);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "replay accepted: {stdout}");
    assert!(
        format!("{stdout}{stderr}").contains("the record of used tokens was lost"),
        "{stdout}\n{stderr}"
    );
}
