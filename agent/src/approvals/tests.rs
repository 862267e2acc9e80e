use std::time::Duration;

use super::{server::*, wire::*, *};

fn who(session: crate::journal::SessionId) -> Requester {
    let mut identity =
        crate::journal::tests::sample_start("bot", "db", std::time::SystemTime::now())
            .identity
            .as_ref()
            .clone();
    identity.pid = 42;
    identity.exe = Some("/usr/bin/psql".into());
    identity.cmdline = Some(vec!["psql".into()]);
    Requester {
        session,
        identity: std::sync::Arc::new(identity),
    }
}

fn request(timeout: Duration) -> HoldRequest {
    HoldRequest {
        seq: 3,
        text: "delete from orders where id = 1".into(),
        rule: Some("ask".into()),
        timeout,
    }
}

#[tokio::test]
async fn a_decision_reaches_the_held_statement_once() {
    let r = Registry::new("/run/x.sock".into());
    let pending = r.hold(&who(7), request(Duration::from_secs(60)));
    assert_eq!(pending.announcement.id, "a-1");
    assert_eq!(pending.announcement.process.pid, 42);
    let hold = pending.wait;
    let listed = r.list();
    assert_eq!(listed.len(), 1);
    let p = &listed[0];
    assert_eq!((p.id.as_str(), p.session, p.seq), ("a-1", 7, 3));
    assert_eq!(p.rule.as_deref(), Some("ask"));
    assert_eq!(r.show("a-1").unwrap(), *p);
    r.decide("a-1", Decision::new(true, "uid 0 (root)"))
        .unwrap();
    assert!(
        matches!(hold.await, HoldOutcome::Approved { by, note } if by == "uid 0 (root)" && note.approval_id.as_deref() == Some("a-1") && note.scope == Some("once"))
    );
    assert!(r.list().is_empty());
    assert!(matches!(
        r.decide("a-1", Decision::new(true, "x")),
        Err(DecideError::NotFound { .. })
    ));
    assert!(r.show("nonsense").is_err());
}

#[tokio::test]
async fn an_undecided_hold_expires_and_is_forgotten() {
    let r = Registry::new("/run/x.sock".into());
    let hold = r.hold(&who(1), request(Duration::from_millis(50))).wait;
    assert!(matches!(hold.await, HoldOutcome::Expired));
    assert!(r.list().is_empty());
    // A session dropped while it waits takes its request with it.
    let hold = r.hold(&who(1), request(Duration::from_secs(60))).wait;
    assert_eq!(r.list()[0].id, "a-2");
    drop(hold);
    assert!(r.list().is_empty());
}

#[test]
fn only_root_and_the_approver_group_may_decide() {
    let peer = |uid, gid| Peer { pid: 1, uid, gid };
    assert!(is_approver(&peer(0, 0), &[], None));
    assert!(!is_approver(&peer(1000, 1000), &[], None));
    assert!(is_approver(&peer(1000, 50), &[], Some(50)));
    assert!(is_approver(&peer(1000, 1000), &[4, 50], Some(50)));
    assert!(!is_approver(&peer(1000, 1000), &[4, 51], Some(50)));
}

#[test]
fn supplementary_groups_come_from_proc_status() {
    let status = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 1000 \nNSpid:\t1\n";
    assert_eq!(parse_groups(status), vec![4, 27, 1000]);
    assert_eq!(parse_groups("Groups:\t\n"), Vec::<u32>::new());
    assert_eq!(parse_groups(""), Vec::<u32>::new());
}

#[test]
fn requests_parse_from_one_json_line() {
    let r: Request = serde_json::from_str(r#"{"op":"list"}"#).unwrap();
    assert_eq!(r, Request::List);
    let r: Request = serde_json::from_str(r#"{"op":"deny","id":"a-2","reason":"no"}"#).unwrap();
    assert_eq!(
        r,
        Request::Deny {
            id: "a-2".into(),
            reason: Some("no".into())
        }
    );
    let r: Request = serde_json::from_str(r#"{"op":"approve","id":"a-2"}"#).unwrap();
    assert_eq!(
        r,
        Request::Approve {
            id: "a-2".into(),
            reason: None,
            scope: None,
            grant_for: None,
        }
    );
    let r: Request =
        serde_json::from_str(r#"{"op":"approve","id":"a-2","scope":"grant","for":"15m"}"#).unwrap();
    assert_eq!(
        r,
        Request::Approve {
            id: "a-2".into(),
            reason: None,
            scope: Some(Scope::Grant),
            grant_for: Some("15m".into()),
        }
    );
    let r: Request = serde_json::from_str(r#"{"op":"submit","token":"x.y.z"}"#).unwrap();
    assert_eq!(
        r,
        Request::Submit {
            token: "x.y.z".into()
        }
    );
    assert!(serde_json::from_str::<Request>(r#"{"op":"drop"}"#).is_err());
    assert!(serde_json::from_str::<Request>(r#"{"op":"show"}"#).is_err());
}

#[test]
fn approvals_keys_are_validated_in_the_agent_table() {
    let config = |keys: &str| {
        crate::config::parse(
            &format!(
                "[agent]\nmode = \"enforce\"\njournal = \"/var/lib/nhi/j.db\"\n{keys}\n\
                 [[target]]\nname = \"db\"\naddress = \"10.0.0.5:5432\"\n"
            ),
            "test.toml",
        )
    };
    let c = config("").unwrap();
    assert_eq!(
        c.agent.approvals_socket,
        PathBuf::from("/run/nhi-agent/approvals.sock")
    );
    assert_eq!(c.agent.approver_group, None);
    let c = config("approvals_socket = \"/run/x/a.sock\"\napprover_group = \"dba\"").unwrap();
    assert_eq!(c.agent.approvals_socket, PathBuf::from("/run/x/a.sock"));
    assert_eq!(
        c.agent.approver_group,
        Some(crate::config::GroupRef::Name("dba".into()))
    );
    let c = config("approver_group = 1234").unwrap();
    assert_eq!(
        c.agent.approver_group,
        Some(crate::config::GroupRef::Gid(1234))
    );
    let e = config("approvals_socket = \"run/a.sock\"").unwrap_err();
    assert!(e.to_string().contains("must be an absolute path"), "{e}");
    let e = config("approver_group = \"\"").unwrap_err();
    assert!(e.to_string().contains("must not be empty"), "{e}");
}

/// The socket server end to end, as the current user (allowed through its own gid when
/// not root).
#[tokio::test]
async fn the_socket_answers_one_json_line_per_request() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/approvals.sock");
    let own_gid = nix::unistd::getegid().as_raw();
    let listener = bind(&path, Some(own_gid)).unwrap();
    let registry = Registry::new(path.clone());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(listener, registry.clone(), Some(own_gid), None, rx));
    let hold = registry
        .hold(&who(1), request(Duration::from_secs(60)))
        .wait;

    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut ask = async |line: &str| -> Answer {
        w.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap()
    };
    let a = ask(r#"{"op":"list"}"#).await;
    assert!(a.ok);
    assert_eq!(a.pending.unwrap()[0].id, "a-1");
    let a = ask(r#"{"op":"frobnicate"}"#).await;
    assert!(!a.ok && a.error.unwrap().contains("bad request"));
    let a = ask(r#"{"op":"deny","id":"a-1","reason":"no"}"#).await;
    assert!(a.ok, "{a:?}");
    let by = a.by.unwrap();
    assert!(by.starts_with("uid "), "{by}");
    assert!(matches!(hold.await, HoldOutcome::Denied { reason: Some(r), .. } if r == "no"));
    let a = ask(r#"{"op":"show","id":"a-1"}"#).await;
    assert!(!a.ok && a.error.unwrap().contains("no pending request"));
    // A second agent cannot take over a live socket.
    assert!(matches!(bind(&path, None), Err(ServerError::InUse { .. })));
}

// ------------------------------------------------------------------ scopes and grants

/// A clock the test moves by hand.
fn fake_clock() -> (Clock, Arc<Mutex<SystemTime>>) {
    let now = Arc::new(Mutex::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    ));
    let n = now.clone();
    (Arc::new(move || *n.lock().unwrap()), now)
}

#[tokio::test]
async fn a_grant_covers_later_statements_until_it_expires_on_the_clock() {
    let (clock, now) = fake_clock();
    let r = Registry::new("/run/x.sock".into())
        .with_clock(clock)
        .with_max_grant(Duration::from_secs(3600));
    let hold = r.hold(&who(1), request(Duration::from_secs(60))).wait;
    // Longer than max_grant, or without a duration: refused, the request stays pending.
    let too_long = Decision {
        scope: Scope::Grant,
        grant_for: Some("2h".into()),
        ..Decision::new(true, "uid 0 (root)")
    };
    assert!(matches!(
        r.decide("a-1", too_long),
        Err(DecideError::Scope(_))
    ));
    let no_for = Decision {
        scope: Scope::Grant,
        ..Decision::new(true, "uid 0 (root)")
    };
    assert!(matches!(
        r.decide("a-1", no_for),
        Err(DecideError::Scope(_))
    ));
    assert_eq!(r.list().len(), 1);
    let grant = Decision {
        scope: Scope::Grant,
        grant_for: Some("15m".into()),
        ..Decision::new(true, "uid 0 (root)")
    };
    let d = r.decide("a-1", grant).unwrap();
    let g = d.grant.unwrap();
    assert_eq!((g.id.as_str(), g.rule.as_deref()), ("g-1", Some("ask")));
    assert!(
        matches!(hold.await, HoldOutcome::Approved { note, .. } if note.grant.as_deref() == Some("g-1") && note.scope == Some("grant"))
    );
    // Covered: same workload, target and rule, any session; not another rule.
    let s = r.grant_for("bot", "db", Some("ask")).unwrap();
    assert_eq!(s.by, "uid 0 (root)");
    assert_eq!(s.note.granted_by.as_deref(), Some("a-1"));
    assert!(r.grant_for("bot", "db", Some("other")).is_none());
    assert!(r.grant_for("bot", "other-db", Some("ask")).is_none());
    assert_eq!(r.grants().len(), 1);
    *now.lock().unwrap() += Duration::from_secs(15 * 60 - 1);
    assert!(r.grant_for("bot", "db", Some("ask")).is_some());
    *now.lock().unwrap() += Duration::from_secs(1);
    assert!(r.grant_for("bot", "db", Some("ask")).is_none());
    assert!(r.grants().is_empty());
}

// ------------------------------------------------------------------ state across restarts

fn grant_decision(length: &str) -> Decision {
    Decision {
        scope: Scope::Grant,
        grant_for: Some(length.into()),
        ..Decision::new(true, "uid 0 (root)")
    }
}

#[tokio::test]
async fn grants_and_numbering_survive_a_restart_and_expired_grants_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, now) = fake_clock();
    let before = Registry::new("/run/x.sock".into())
        .with_clock(clock.clone())
        .with_state(dir.path());
    let r = before.restore().unwrap();
    assert_eq!(r.outcome, crate::state::Outcome::Missing);
    assert!(crate::state::restored_event(&r).is_none());
    for (n, length) in [(1, "15m"), (2, "1h"), (3, "2m")] {
        let _hold = before.hold(&who(n), request(Duration::from_secs(60))).wait;
        before
            .decide(&format!("a-{n}"), grant_decision(length))
            .unwrap();
    }
    before.revoke("g-2", "uid 0 (root)").unwrap();
    let file = dir.path().join(STATE_FILE);
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    drop(before);

    // Five minutes later a new agent starts: g-1 is in force, g-3 ran out, g-2 was revoked.
    *now.lock().unwrap() += Duration::from_secs(5 * 60);
    let after = Registry::new("/run/x.sock".into())
        .with_clock(clock)
        .with_state(dir.path());
    let r = after.restore().unwrap();
    assert_eq!(r.outcome, crate::state::Outcome::Restored);
    assert_eq!((r.restored, r.dropped), (1, 1));
    assert_eq!(r.detail["grants"], serde_json::json!(["g-1"]));
    assert_eq!(r.detail["expired"], serde_json::json!(["g-3"]));
    let event = crate::state::restored_event(&r).unwrap();
    assert_eq!(event.kind, "state_restored");
    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(data["kind"], "approval_grants");
    assert_eq!(data["restored"], 1);
    let s = after
        .grant_for("bot", "db", Some("ask"))
        .expect("g-1 covers");
    assert_eq!(s.note.grant.as_deref(), Some("g-1"));
    assert_eq!(s.note.granted_by.as_deref(), Some("a-1"));
    assert_eq!(after.grants().len(), 1);
    // Ids are not handed out again: neither requests nor grants.
    let pending = after.hold(&who(9), request(Duration::from_secs(60)));
    let n: u64 = pending.announcement.id[2..].parse().unwrap();
    assert!(n > 3, "{}", pending.announcement.id);
    let d = after
        .decide(&pending.announcement.id, grant_decision("1m"))
        .unwrap();
    assert_eq!(d.grant.unwrap().id, "g-4");
    // It still expires on time.
    *now.lock().unwrap() += Duration::from_secs(10 * 60);
    assert!(after.grant_for("bot", "db", Some("ask")).is_none());
}

#[tokio::test]
async fn an_invalid_state_file_starts_without_grants_and_ids_move_past_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _now) = fake_clock();
    let file = dir.path().join(STATE_FILE);
    for (i, bad) in [
        "{ not json".to_string(),
        // A grant whose end is not a date.
        serde_json::json!({"format": "nhi-agent-state", "kind": "approval_grants", "v": 1,
            "saved_at_us": 0, "data": {"reserved_requests": 5, "next_grant": 1,
            "grants": [{"id": "g-1", "workload": "bot", "target": "db", "rule": "ask",
                "approval_id": "a-1", "approver": "root", "created_at": "2023-11-14T22:13:20Z",
                "until": "tomorrow"}], "used_tokens": {}}})
        .to_string(),
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(&file, bad).unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let r = Registry::new("/run/x.sock".into())
            .with_clock(clock.clone())
            .with_state(dir.path());
        let restoration = r.restore().unwrap();
        assert_eq!(
            restoration.outcome,
            crate::state::Outcome::Invalid,
            "case {i}"
        );
        assert!(restoration.reason.is_some());
        let moved = restoration.moved_to.clone().expect("moved aside");
        assert_eq!(std::fs::read_to_string(&moved).unwrap(), *bad);
        std::fs::remove_file(moved).unwrap();
        assert!(r.grants().is_empty());
        assert!(r.grant_for("bot", "db", Some("ask")).is_none());
        let id = r
            .hold(&who(1), request(Duration::from_secs(60)))
            .announcement
            .id;
        let n: u64 = id[2..].parse().unwrap();
        assert!(n > 1_700_000_000, "{id}");
        // A valid file was written back.
        assert!(matches!(
            crate::state::StateFile::new(dir.path(), STATE_FILE, STATE_KIND)
                .load::<serde_json::Value>(|_| Ok(())),
            crate::state::Loaded::Found(_)
        ));
    }
}

#[tokio::test]
async fn a_revoked_grant_stops_covering() {
    let r = Registry::new("/run/x.sock".into());
    let _hold = r.hold(&who(1), request(Duration::from_secs(60))).wait;
    let grant = Decision {
        scope: Scope::Grant,
        grant_for: Some("1h".into()),
        ..Decision::new(true, "uid 0 (root)")
    };
    r.decide("a-1", grant).unwrap();
    assert!(r.grant_for("bot", "db", Some("ask")).is_some());
    assert_eq!(r.revoke("g-1", "uid 0 (root)").unwrap().id, "g-1");
    assert!(r.grant_for("bot", "db", Some("ask")).is_none());
    assert!(matches!(
        r.revoke("g-1", "uid 0 (root)"),
        Err(DecideError::NoGrant { .. })
    ));
}

#[test]
fn the_announcement_names_the_request_and_how_to_approve_it() {
    let info = Pending {
        id: "a-3".into(),
        session: 9,
        workload: "bot".into(),
        process: wire::Process {
            pid: 77,
            exe: Some("/usr/bin/psql".into()),
            cmdline: None,
        },
        target: "db".into(),
        seq: 2,
        statement: "delete\n  from orders".into(),
        rule: Some("ask".into()),
        requested_at: "2026-01-01T00:00:00Z".into(),
        expires_at: "2026-01-01T00:05:00Z".into(),
    };
    let v = announcement(&info, false, std::path::Path::new("/run/a.sock"));
    assert_eq!(v["id"], "a-3");
    assert_eq!(v["process"]["pid"], 77);
    assert_eq!(v["would_hold"], false);
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("nhi-agent approvals approve a-3"), "{text}");
    assert!(text.contains("delete from orders"), "{text}");
    let v = announcement(&info, true, std::path::Path::new("/run/a.sock"));
    assert!(v["text"].as_str().unwrap().contains("would have been held"));
}

#[test]
fn approvals_section_is_validated() {
    let config = |section: &str| {
        crate::config::parse(
            &format!(
                "[agent]\nmode = \"enforce\"\njournal = \"/var/lib/nhi/j.db\"\n\
                 [[target]]\nname = \"db\"\naddress = \"10.0.0.5:5432\"\n{section}\n"
            ),
            "test.toml",
        )
    };
    let c = config("").unwrap();
    assert_eq!(c.approvals, ApprovalsConfig::default());
    let c = config(
        "[approvals]\nwebhook_url = \"http://127.0.0.1:9/hook\"\nwebhook_retries = 2\n\
         decision_keys = [\"/etc/k.pem\"]\nhttp_listen = \"127.0.0.1:8181\"\nmax_grant = \"1h\"\n",
    )
    .unwrap();
    assert_eq!(c.approvals.webhook_retries, 2);
    assert_eq!(c.approvals.max_grant, Duration::from_secs(3600));
    assert_eq!(
        c.approvals.http_listen,
        Some("127.0.0.1:8181".parse().unwrap())
    );
    let e = config("[approvals]\nhttp_listen = \"0.0.0.0:8181\"\n").unwrap_err();
    assert!(e.to_string().contains("must be a loopback address"), "{e}");
    let e = config("[approvals]\nwebhook_url = \"ftp://x\"\n").unwrap_err();
    assert!(e.to_string().contains("http:// or https://"), "{e}");
    let e = config("[approvals]\ndecision_keys = [\"k.pem\"]\n").unwrap_err();
    assert!(e.to_string().contains("absolute path"), "{e}");
    let e = config("[approvals]\nmax_grant = \"0s\"\n").unwrap_err();
    assert!(e.to_string().contains("longer than zero"), "{e}");
    let e = config("[approvals]\nwebhok_url = \"http://x\"\n").unwrap_err();
    assert!(e.to_string().contains("unknown field"), "{e}");
}

#[test]
fn max_session_duration_is_a_policy_key() {
    let config = |policy: &str| {
        crate::config::parse(
            &format!(
                "[agent]\nmode = \"enforce\"\njournal = \"/var/lib/nhi/j.db\"\n\
                 [[target]]\nname = \"db\"\naddress = \"10.0.0.5:5432\"\n[[policy]]\n{policy}\n"
            ),
            "test.toml",
        )
    };
    let c = config("max_session_duration = \"1h\"").unwrap();
    assert_eq!(
        c.policies.policies[0].max_session_duration,
        Some(Duration::from_secs(3600))
    );
    assert_eq!(
        config("").unwrap().policies.policies[0].max_session_duration,
        None
    );
    let e = config("max_session_duration = \"0s\"").unwrap_err();
    assert!(e.to_string().contains("max_session_duration"), "{e}");
    let e = config("max_session_duration = \"soon\"").unwrap_err();
    assert!(e.to_string().contains("max_session_duration"), "{e}");
}

// ------------------------------------------------------------------ decision tokens

mod tokens {
    use super::*;
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use ring::{
        rand::SystemRandom,
        signature::{self, KeyPair as _},
    };

    /// A PEM SubjectPublicKeyInfo from its DER prefix and raw key.
    fn spki_pem(prefix: &[u8], raw: &[u8]) -> String {
        let mut der = prefix.to_vec();
        der.extend_from_slice(raw);
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    const ED25519_SPKI: &[u8] = &[
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    const P256_SPKI: &[u8] = &[
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];

    /// An Ed25519 signing key and its public key as PEM.
    fn ed25519() -> (EncodingKey, String) {
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        (
            EncodingKey::from_ed_der(pkcs8.as_ref()),
            spki_pem(ED25519_SPKI, pair.public_key().as_ref()),
        )
    }

    /// A P-256 signing key and its public key as PEM.
    fn p256() -> (EncodingKey, String) {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        (
            EncodingKey::from_ec_der(pkcs8.as_ref()),
            spki_pem(P256_SPKI, pair.public_key().as_ref()),
        )
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims(id: &str, exp: u64) -> serde_json::Value {
        serde_json::json!({
            "approval_id": id, "decision": "approve", "approver": "alice",
            "exp": exp, "iat": now(), "jti": format!("j-{id}-{exp}"),
        })
    }

    fn mint(
        alg: Algorithm,
        kid: Option<&str>,
        key: &EncodingKey,
        claims: &serde_json::Value,
    ) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn keys_with(pem: &str, kid: &str) -> DecisionKeys {
        let mut keys = DecisionKeys::new(None, None);
        keys.add_pem(pem.as_bytes(), Some(kid.into())).unwrap();
        keys
    }

    #[test]
    fn good_eddsa_and_es256_tokens_verify() {
        let (ed_sign, ed_pem) = ed25519();
        let (ec_sign, ec_pem) = p256();
        let mut keys = keys_with(&ed_pem, "ed");
        keys.add_pem(ec_pem.as_bytes(), Some("ec".into())).unwrap();
        let t = mint(
            Algorithm::EdDSA,
            Some("ed"),
            &ed_sign,
            &claims("a-1", now() + 60),
        );
        let v = keys.verify(&t).unwrap();
        assert_eq!((v.approval_id.as_str(), v.approve), ("a-1", true));
        assert_eq!(v.by(), "jwt:alice (kid ed)");
        assert_eq!(v.scope, Scope::Once);
        assert_eq!(v.sha256, token::sha256_hex(t.as_bytes()));
        // Without a kid, the key is found by the algorithm.
        let t = mint(Algorithm::ES256, None, &ec_sign, &claims("a-2", now() + 60));
        let v = keys.verify(&t).unwrap();
        assert_eq!(v.kid.as_deref(), Some("ec"));
    }

    #[test]
    fn bad_signature_expired_and_wrong_alg_are_refused() {
        let (_, ed_pem) = ed25519();
        let (other_sign, _) = ed25519();
        let keys = keys_with(&ed_pem, "ed");
        // Signed by another key.
        let t = mint(
            Algorithm::EdDSA,
            Some("ed"),
            &other_sign,
            &claims("a-1", now() + 60),
        );
        assert!(matches!(keys.verify(&t), Err(TokenError::Invalid(_))));
        // A good signature on an altered payload.
        let (sign, pem) = ed25519();
        let keys = keys_with(&pem, "ed");
        let t = mint(Algorithm::EdDSA, None, &sign, &claims("a-1", now() + 60));
        let parts: Vec<&str> = t.split('.').collect();
        let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(claims("a-9", now() + 60).to_string());
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert!(matches!(keys.verify(&forged), Err(TokenError::Invalid(_))));
        // Expired (beyond the leeway).
        let t = mint(Algorithm::EdDSA, None, &sign, &claims("a-1", now() - 3600));
        assert!(matches!(keys.verify(&t), Err(TokenError::Invalid(e)) if e.contains("xpired")));
        // No exp at all.
        let no_exp =
            serde_json::json!({"approval_id": "a-1", "decision": "approve", "approver": "x"});
        let t = mint(Algorithm::EdDSA, None, &sign, &no_exp);
        assert!(keys.verify(&t).is_err());
        // HMAC "signed" with the public key as the secret: no key has that algorithm.
        let hs = mint(
            Algorithm::HS256,
            Some("ed"),
            &EncodingKey::from_secret(pem.as_bytes()),
            &claims("a-1", now() + 60),
        );
        assert!(matches!(keys.verify(&hs), Err(TokenError::NoKey { .. })));
        // alg "none", unsigned.
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&claims("a-1", now() + 60).to_string())
        );
        assert!(matches!(keys.verify(&none), Err(TokenError::Malformed(_))));
        assert!(matches!(
            keys.verify("garbage"),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let (sign, pem) = ed25519();
        let mut keys = DecisionKeys::new(Some("idp".into()), Some("nhi".into()));
        keys.add_pem(pem.as_bytes(), None).unwrap();
        let mut c = claims("a-1", now() + 60);
        assert!(keys
            .verify(&mint(Algorithm::EdDSA, None, &sign, &c))
            .is_err());
        c["iss"] = "idp".into();
        c["aud"] = "nhi".into();
        assert!(keys
            .verify(&mint(Algorithm::EdDSA, None, &sign, &c))
            .is_ok());
        c["aud"] = "other".into();
        assert!(keys
            .verify(&mint(Algorithm::EdDSA, None, &sign, &c))
            .is_err());
    }

    #[test]
    fn a_jwks_key_is_selected_by_kid() {
        let (sign, pem) = ed25519();
        let der = base64::engine::general_purpose::STANDARD
            .decode(pem.lines().nth(1).unwrap())
            .unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[12..]);
        let jwks = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}
        ]});
        let mut keys = DecisionKeys::new(None, None);
        keys.add_jwks(jwks.to_string().as_bytes()).unwrap();
        let t = mint(
            Algorithm::EdDSA,
            Some("k1"),
            &sign,
            &claims("a-1", now() + 60),
        );
        assert_eq!(keys.verify(&t).unwrap().kid.as_deref(), Some("k1"));
        let hmac = serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]});
        assert!(DecisionKeys::new(None, None)
            .add_jwks(hmac.to_string().as_bytes())
            .is_err());
    }

    #[tokio::test]
    async fn a_token_decides_once_and_only_a_pending_request() {
        let (sign, pem) = ed25519();
        let r = Registry::new("/run/x.sock".into()).with_keys(keys_with(&pem, "ed"));
        let hold = r.hold(&who(1), request(Duration::from_secs(60))).wait;
        // Unknown approval id: 404, and the token is not spent.
        let t = mint(Algorithm::EdDSA, None, &sign, &claims("a-7", now() + 60));
        let e = r.submit(&t, None, "test").unwrap_err();
        assert!(matches!(e, DecideError::NotFound { .. }));
        assert_eq!(e.http_status(), 404);
        // Addressed to another request than its claims: refused.
        let mut c = claims("a-1", now() + 60);
        c["scope"] = "session".into();
        let t = mint(Algorithm::EdDSA, Some("ed"), &sign, &c);
        assert!(matches!(
            r.submit(&t, Some("a-2"), "test"),
            Err(DecideError::Mismatch { .. })
        ));
        let d = r.submit(&t, Some("a-1"), "test").unwrap();
        assert_eq!(d.by, "jwt:alice (kid ed)");
        match hold.await {
            HoldOutcome::Approved { by, note } => {
                assert_eq!(by, "jwt:alice (kid ed)");
                assert_eq!(note.scope, Some("session"));
                assert_eq!(note.token_sha256, Some(token::sha256_hex(t.as_bytes())));
                assert!(note.jti.is_some());
            }
            other => panic!("{other:?}"),
        }
        // The same token on a new request with the same id space: a replay.
        let _hold = r.hold(&who(1), request(Duration::from_secs(60))).wait;
        let e = r.submit(&t, None, "test").unwrap_err();
        // The token names a-1, which is gone; a fresh token for a-2 reusing the jti
        // is a replay (409).
        assert!(
            matches!(e, DecideError::Token(TokenError::Replay(_))),
            "{e}"
        );
        let mut c = claims("a-2", now() + 60);
        c["jti"] = claims("a-1", 0)["jti"].clone();
        let t2 = mint(Algorithm::EdDSA, None, &sign, &c);
        assert!(r.submit(&t2, None, "test").is_ok(), "another jti is fine");
        // Without keys, tokens are refused as unauthorized.
        let e = Registry::new("/x".into())
            .submit(&t, None, "t")
            .unwrap_err();
        assert_eq!(e.http_status(), 401);
    }

    #[tokio::test]
    async fn a_used_decision_token_stays_used_after_a_restart() {
        let (sign, pem) = ed25519();
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::new("/run/x.sock".into())
            .with_keys(keys_with(&pem, "ed"))
            .with_state(dir.path());
        r.restore();
        let _hold = r.hold(&who(1), request(Duration::from_secs(60))).wait;
        let t = mint(Algorithm::EdDSA, None, &sign, &claims("a-1", now() + 600));
        r.submit(&t, None, "test").unwrap();
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(!text.contains(&t), "the token itself is never stored");
        drop(r);
        let r = Registry::new("/run/x.sock".into())
            .with_keys(keys_with(&pem, "ed"))
            .with_state(dir.path());
        assert_eq!(r.restore().unwrap().detail["used_tokens"], 1);
        let _hold = r.hold(&who(1), request(Duration::from_secs(60))).wait;
        let e = r.submit(&t, None, "test").unwrap_err();
        assert!(
            matches!(e, DecideError::Token(TokenError::Replay(_))),
            "{e}"
        );
    }

    /// Sends one raw HTTP request and returns the status and JSON body.
    async fn http(addr: std::net::SocketAddr, request: String) -> (u16, serde_json::Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status: u16 = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    fn post(path: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn the_http_endpoint_answers_with_the_status_of_the_decision() {
        let (sign, pem) = ed25519();
        let (other, _) = ed25519();
        let r = Registry::new("/run/x.sock".into()).with_keys(keys_with(&pem, "ed"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(http::serve(listener, r.clone(), rx));
        let hold = r.hold(&who(1), request(Duration::from_secs(60))).wait;

        let bad = mint(Algorithm::EdDSA, None, &other, &claims("a-1", now() + 60));
        let (status, body) = http(addr, post("/approvals/a-1/decision", &bad)).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["ok"], false);
        assert_eq!(r.list().len(), 1, "still held");
        let (status, _) = http(addr, post("/approvals/a-1/decision", "")).await;
        assert_eq!(status, 400);
        let (status, _) = http(addr, post("/elsewhere", &bad)).await;
        assert_eq!(status, 404);
        let (status, _) = http(addr, "GET /approvals/a-1/decision HTTP/1.1\r\n\r\n".into()).await;
        assert_eq!(status, 405);
        // Refused on the announced length, before any of the body is read (none is sent,
        // so the close cannot reset the connection before the answer is read).
        let huge = format!(
            "POST /approvals/a-1/decision HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            token::MAX_TOKEN_LEN + 1
        );
        let (status, _) = http(addr, huge).await;
        assert_eq!(status, 413);
        // A head over 8 KiB is refused before it is buffered further.
        let long_head = format!(
            "POST /approvals/a-1/decision HTTP/1.1\r\nx-pad: {}\r\ncontent-length: 0\r\n\r\n",
            "a".repeat(9 * 1024)
        );
        let (status, _) = http(addr, long_head).await;
        assert_eq!(status, 431);
        let good = mint(
            Algorithm::EdDSA,
            Some("ed"),
            &sign,
            &claims("a-1", now() + 60),
        );
        let (status, body) = http(addr, post("/approvals/a-2/decision", &good)).await;
        assert_eq!(status, 400, "addressed to another request: {body}");
        let json = serde_json::json!({ "token": good }).to_string();
        let (status, body) = http(addr, post("/approvals/a-1/decision", &json)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["by"], "jwt:alice (kid ed)");
        assert!(matches!(hold.await, HoldOutcome::Approved { .. }));
        let (status, _) = http(addr, post("/approvals/a-1/decision", &good)).await;
        assert_eq!(status, 409, "replay");
        let (status, _) = http(
            addr,
            post(
                "/approvals/a-5/decision",
                &mint(Algorithm::EdDSA, None, &sign, &claims("a-5", now() + 60)),
            ),
        )
        .await;
        assert_eq!(status, 404);
    }
}
