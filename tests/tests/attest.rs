//! CI job identity (`nhi-agent attest`): a job cgroup presents an OIDC token minted with
//! an in-process Ed25519 key whose JWKS the agent reads from a file (no network); its
//! claims are bound to the cgroup, carried by its PostgreSQL sessions, listed and
//! filtered by `nhi-agent sessions`, and decide which `[[policy]]` governs them.
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nhi_tests::*;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

const ISSUER: &str = "https://token.actions.githubusercontent.com";

/// An issuer key: signs tokens; its public half is written as a JWKS file.
struct IssuerKey {
    encoding: EncodingKey,
    public: Vec<u8>,
}

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

    /// A token for a job on `git_ref` with `run_id`, expiring `exp_in` seconds from now
    /// (negative: already expired).
    fn token(&self, git_ref: &str, run_id: u64, exp_in: i64) -> String {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let claims = json!({
            "iss": ISSUER,
            "aud": "nhi-agent",
            "sub": format!("repo:org/app:ref:{git_ref}"),
            "exp": now + exp_in,
            "iat": now - 5,
            "jti": format!("{git_ref}-{run_id}-{exp_in}"),
            "repository": "org/app",
            "ref": git_ref,
            "run_id": run_id,
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("sign")
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// `nhi-agent attest --token FILE --socket S --json` run inside `cg`.
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

fn psql(cg: &TestCgroup, port: u16, sql: &str) -> Output {
    cg.command("psql")
        .args(["-X", "-At", "-v", "VERBOSITY=verbose", "-U", "postgres"])
        .args(["-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql")
}

/// The `attestation` events, read with the sqlite3 shell.
fn attestation_events(journal: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::process::Command::new("sqlite3")
            .arg("-json")
            .arg(journal)
            .arg("SELECT session_id, data FROM events WHERE kind = 'attestation' ORDER BY id")
            .output()
            .expect("sqlite3");
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if rows.len() >= n || Instant::now() > deadline {
            return rows
                .iter()
                .map(|r| {
                    assert!(
                        r["session_id"].is_null(),
                        "attestations belong to no session"
                    );
                    serde_json::from_str(r["data"].as_str().expect("data")).expect("json")
                })
                .collect();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn attested_job_claims_reach_sessions_policy_and_journal() {
    privileged!("attested_job_claims_reach_sessions_policy_and_journal");
    let pg = PgServer::start();
    pg.sql("create table builds (id int)");
    let files = tempfile::tempdir().expect("tempdir");
    let jwks = files.path().join("github-actions.jwks");
    let socket = files.path().join("attest.sock");
    let key = IssuerKey::generate();
    key.write_jwks(&jwks);

    let root = TestCgroup::create(&unique("nhi-test"));
    let main_job = root.child("main");
    let feature_job = root.child("feature");
    let plain = root.child("plain");
    let agent = Agent::start(&format!(
        "[attest]\nsocket = \"{socket}\"\n\n\
         [[oidc_issuer]]\nissuer = \"{ISSUER}\"\njwks_file = \"{jwks}\"\naudience = \"nhi-agent\"\n\
         claims = [\"repository\", \"ref\", \"run_id\", \"sub\"]\n\n\
         [[workload]]\nname = \"ci\"\ncgroup = \"{root}/*\"\n\n\
         [[target]]\nname = \"builds-db\"\naddress = \"{addr}\"\nprotocol = \"postgres\"\n\n\
         [[policy]]\nname = \"main-branch\"\nclaims = {{ ref = \"refs/heads/main\", repository = \"org/*\" }}\n\n\
         [[policy]]\nname = \"read-only\"\n\n\
         [[policy.rule]]\nname = \"no-writes\"\nverdict = \"deny\"\nkinds = [\"insert\", \"update\", \"delete\"]\n",
        socket = socket.display(),
        jwks = jwks.display(),
        root = root.rel(),
        addr = pg.addr(),
    ));

    // The main-branch job attests; its claims are bound to its cgroup.
    let main_token = key.token("refs/heads/main", 123, 600);
    let out = attest(&main_job, &socket, files.path(), &main_token);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "attest failed: {stdout}\n{stderr}");
    let answer: Value = serde_json::from_str(&stdout).expect("json answer");
    assert_eq!(answer["binding"]["cgroup"], main_job.rel());
    assert_eq!(answer["binding"]["cgroup_id"], main_job.id());
    assert_eq!(answer["binding"]["claims"]["run_id"], 123);
    assert_eq!(answer["binding"]["claims"]["ref"], "refs/heads/main");
    assert!(
        answer["binding"]["claims"].get("exp").is_none(),
        "only the listed claims are bound"
    );

    let out = attest(
        &feature_job,
        &socket,
        files.path(),
        &key.token("refs/heads/feature", 456, 600),
    );
    assert!(out.status.success(), "{:?}", text(&out));

    // Policy on claims: main may write; feature and unattested sessions are read-only.
    let out = psql(&main_job, pg.port, "insert into builds values (1)");
    assert!(out.status.success(), "main insert: {:?}", text(&out));
    let out = psql(&feature_job, pg.port, "insert into builds values (2)");
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("42501"),
        "feature insert must be denied: {stderr}"
    );
    let out = psql(&feature_job, pg.port, "select count(*) from builds");
    assert!(out.status.success(), "feature select: {:?}", text(&out));
    assert_eq!(text(&out).0, "1");
    let out = psql(&plain, pg.port, "insert into builds values (3)");
    assert!(
        text(&out).1.contains("42501"),
        "unattested insert must be denied: {:?}",
        text(&out)
    );
    assert_eq!(pg.sql("select count(*) from builds").trim(), "1");

    // The sessions carry the claims; --claim filters on them.
    let sessions = agent.wait_sessions_ended(4);
    assert_eq!(sessions.len(), 4, "{sessions:?}");
    for s in &sessions {
        let expected = if s["cgroup"] == main_job.rel() {
            json!(123)
        } else if s["cgroup"] == feature_job.rel() {
            json!(456)
        } else {
            Value::Null
        };
        assert_eq!(s["claims"]["run_id"], expected, "{s}");
    }
    let out = agent.cli(&[
        "sessions",
        "--journal",
        agent.journal.to_str().expect("utf-8"),
        "--json",
        "--claim",
        "run_id=123",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let listed: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(listed.len(), 1, "{stdout}");
    assert_eq!(listed[0]["cgroup"], main_job.rel());
    assert_eq!(listed[0]["claims"]["repository"], "org/app");
    assert_eq!(listed[0]["claims"]["ref"], "refs/heads/main");

    // An expired token and a replayed one are rejected, with reasons.
    let out = attest(
        &plain,
        &socket,
        files.path(),
        &key.token("refs/heads/main", 789, -3600),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("token expired at"), "{stderr}");
    let out = attest(&plain, &socket, files.path(), &main_token);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("token already used"), "{stderr}");

    // Root sees every binding; the rejected attempts bound nothing.
    let out = agent.cli(&[
        "attest",
        "--status",
        "--json",
        "--socket",
        socket.to_str().expect("utf-8"),
    ]);
    let status: Value = serde_json::from_str(&text(&out).0).expect("status json");
    let bound: Vec<&str> = status["bindings"]
        .as_array()
        .expect("bindings")
        .iter()
        .filter_map(|b| b["cgroup"].as_str())
        .collect();
    assert_eq!(bound, [feature_job.rel(), main_job.rel()]);

    // Every attempt is journaled, without the token.
    let events = attestation_events(&agent.journal, 4);
    let results: Vec<&str> = events.iter().filter_map(|e| e["result"].as_str()).collect();
    assert_eq!(results, ["accepted", "accepted", "rejected", "rejected"]);
    assert!(events[2]["reason"]
        .as_str()
        .is_some_and(|r| r.starts_with("token expired at")));
    assert_eq!(events[3]["reason"], "token already used");
    assert_eq!(events[3]["cgroup"], plain.rel());
    assert_eq!(events[0]["claims"]["run_id"], 123);
    assert_eq!(events[0]["cgroup_id"], main_job.id());
    assert_eq!(events[0]["token_sha256"].as_str().map(str::len), Some(64));
    let journal_bytes = std::fs::read(&agent.journal).expect("journal");
    let signature = main_token.rsplit('.').next().expect("signature");
    assert!(
        !String::from_utf8_lossy(&journal_bytes).contains(signature)
            && !agent.log_text().contains(signature),
        "the token must not reach the journal or the log"
    );
}

/// Waits until the agent's log has `n` lines containing `needle`.
fn wait_log(agent: &Agent, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.log_text().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "no {n}× {needle:?} in the log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn bound_cgroups(agent: &Agent, socket: &Path) -> Vec<String> {
    let out = agent.cli(&[
        "attest",
        "--status",
        "--json",
        "--socket",
        socket.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let status: Value = serde_json::from_str(&text(&out).0).expect("status json");
    status["bindings"]
        .as_array()
        .expect("bindings")
        .iter()
        .filter_map(|b| b["cgroup"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn rotated_jwks_takes_effect_on_sighup_and_bindings_end_with_their_cgroup() {
    privileged!("rotated_jwks_takes_effect_on_sighup_and_bindings_end_with_their_cgroup");
    let files = tempfile::tempdir().expect("tempdir");
    let jwks = files.path().join("issuer.jwks");
    let socket = files.path().join("attest.sock");
    let (old_key, new_key) = (IssuerKey::generate(), IssuerKey::generate());
    old_key.write_jwks(&jwks);
    let agent = Agent::start_with(
        &format!(
            "[attest]\nsocket = \"{}\"\n\n\
             [[oidc_issuer]]\nissuer = \"{ISSUER}\"\njwks_file = \"{}\"\naudience = [\"other\", \"nhi-agent\"]\n\n\
             [[target]]\nname = \"nothing\"\naddress = \"127.0.0.1:9\"\n",
            socket.display(),
            jwks.display()
        ),
        "rescan_interval = \"1s\"\n",
        &[],
    );
    let job = TestCgroup::create(&unique("nhi-test-job"));

    // A token of the new key is refused until the operator rotates the JWKS file.
    let out = attest(
        &job,
        &socket,
        files.path(),
        &new_key.token("refs/heads/main", 1, 600),
    );
    assert_eq!(out.status.code(), Some(1));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains(&format!(
            "signature does not verify against {}",
            jwks.display()
        )),
        "{stderr}"
    );

    // A broken file is a rejected reload: the old key stays in force.
    std::fs::write(&jwks, "{not json").expect("write");
    agent.signal(libc::SIGHUP);
    wait_log(&agent, "reload rejected", 1);
    let out = attest(
        &job,
        &socket,
        files.path(),
        &old_key.token("refs/heads/main", 2, 600),
    );
    assert!(out.status.success(), "{:?}", text(&out));

    new_key.write_jwks(&jwks);
    agent.signal(libc::SIGHUP);
    wait_log(&agent, "configuration reloaded", 1);
    let out = attest(
        &job,
        &socket,
        files.path(),
        &new_key.token("refs/heads/main", 3, 600),
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let out = attest(
        &job,
        &socket,
        files.path(),
        &old_key.token("refs/heads/main", 4, 600),
    );
    assert_eq!(out.status.code(), Some(1), "the old key is gone");
    assert_eq!(bound_cgroups(&agent, &socket), [job.rel().to_string()]);

    // The binding lasts as long as the cgroup: removed with it at the next rescan.
    drop(job);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bound_cgroups(&agent, &socket).is_empty() {
        assert!(Instant::now() < deadline, "binding outlived its cgroup");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_log(&agent, "attestations of removed cgroups dropped", 1);
}

#[test]
fn the_first_issuer_added_by_a_reload_binds_the_attest_socket_and_the_last_removed_closes_it() {
    privileged!(
        "the_first_issuer_added_by_a_reload_binds_the_attest_socket_and_the_last_removed_closes_it"
    );
    let files = tempfile::tempdir().expect("tempdir");
    let jwks = files.path().join("issuer.jwks");
    let socket = files.path().join("attest.sock");
    let key = IssuerKey::generate();
    key.write_jwks(&jwks);
    let without = format!(
        "[attest]\nsocket = \"{}\"\n\n[[target]]\nname = \"nothing\"\naddress = \"127.0.0.1:9\"\n",
        socket.display()
    );
    let issuer = format!(
        "\n[[oidc_issuer]]\nissuer = \"{ISSUER}\"\njwks_file = \"{}\"\naudience = \"nhi-agent\"\n",
        jwks.display()
    );
    let agent = Agent::start(&without);
    assert!(!socket.exists(), "no issuer, no attest socket");
    let config = agent.config_path.to_str().unwrap().to_owned();
    let reload = |agent: &Agent| {
        let out = agent.cli(&["reload", "--config", &config]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        stdout
    };
    let listed = |agent: &Agent| -> Value {
        let out = agent.cli(&["status", "--json", "--config", &config]);
        let status: Value = serde_json::from_slice(&out.stdout).expect("status --json");
        status["agent"]["listeners"]["attest_socket"].clone()
    };
    assert_eq!(listed(&agent), Value::Null);

    agent.rewrite_config(|text| format!("{text}{issuer}"));
    let said = reload(&agent);
    assert!(
        said.contains(&format!("attest socket {} bound", socket.display())),
        "{said}"
    );
    assert!(!said.contains("oidc_issuer"), "nothing kept: {said}");
    let job = TestCgroup::create(&unique("nhi-test-job"));
    let out = attest(
        &job,
        &socket,
        files.path(),
        &key.token("refs/heads/main", 1, 600),
    );
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(bound_cgroups(&agent, &socket), [job.rel().to_string()]);
    assert_eq!(listed(&agent), json!(socket.display().to_string()));

    agent.rewrite_config(|text| text.replace(&issuer, ""));
    let said = reload(&agent);
    assert!(
        said.contains(&format!("attest socket {} closed", socket.display())),
        "{said}"
    );
    assert!(!socket.exists(), "the socket file is removed");
    assert_eq!(listed(&agent), Value::Null);
}
