//! Unit tests: tokens minted in-process (ring keys for Ed25519 and P-256, a fixed RSA test
//! key for RS256), JWKS built from the public keys, a fixed clock.
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use super::config::{AttestConfig, IssuerConfig, DEFAULT_ALGORITHMS};
use super::verify::{parse_jwks, peek, token_sha256, Issuer, Verifier, LEEWAY_SECS};
use super::{
    AttestError, Attestor, Binding, Claims, BINDINGS_FILE, BINDINGS_KIND, REPLAY_FILE, REPLAY_KIND,
};

const ISS: &str = "https://token.actions.githubusercontent.com";
const NOW: u64 = 1_795_000_000;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and its public JWK.
struct TestKey {
    alg: Algorithm,
    kid: Option<String>,
    encoding: EncodingKey,
    jwk: Value,
}

fn ed25519(kid: Option<&str>) -> TestKey {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let mut jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
    if let Some(kid) = kid {
        jwk["kid"] = kid.into();
    }
    TestKey {
        alg: Algorithm::EdDSA,
        kid: kid.map(str::to_owned),
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk,
    }
}

fn p256(kid: &str) -> TestKey {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("keygen");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("key");
    // Uncompressed point: 0x04 || X || Y.
    let point = pair.public_key().as_ref();
    assert_eq!(point.len(), 65);
    TestKey {
        alg: Algorithm::ES256,
        kid: Some(kid.to_owned()),
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])}),
    }
}

fn rsa() -> TestKey {
    let pem = include_bytes!("testdata/rsa-test-key.pem");
    let jwks: Value =
        serde_json::from_str(include_str!("testdata/rsa-test.jwks")).expect("fixture JWKS");
    TestKey {
        alg: Algorithm::RS256,
        kid: Some("rsa-1".into()),
        encoding: EncodingKey::from_rsa_pem(pem).expect("fixture key"),
        jwk: jwks["keys"][0].clone(),
    }
}

fn mint(key: &TestKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = key.kid.clone();
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("encode")
}

fn job_claims() -> Value {
    json!({
        "iss": ISS,
        "sub": "repo:org/app:ref:refs/heads/main",
        "aud": "nhi-agent",
        "exp": NOW + 600,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "jti": "job-1",
        "repository": "org/app",
        "ref": "refs/heads/main",
        "run_id": 123,
    })
}

fn issuer_config(claims: Option<Vec<&str>>) -> IssuerConfig {
    IssuerConfig {
        issuer: ISS.into(),
        jwks_file: PathBuf::from("/etc/nhi-agent/test.jwks"),
        audience: vec!["nhi-agent".into()],
        claims: claims.map(|c| c.into_iter().map(str::to_owned).collect()),
        algorithms: DEFAULT_ALGORITHMS.to_vec(),
    }
}

fn verifier_with(keys: &[&TestKey], claims: Option<Vec<&str>>) -> Verifier {
    let jwks = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    let set = parse_jwks(&jwks.to_string(), "/x".as_ref()).expect("jwks");
    Verifier::new(vec![
        Issuer::new(issuer_config(claims), &set).expect("issuer")
    ])
}

fn rejected(v: &Verifier, token: &str) -> String {
    v.verify(token, now())
        .expect_err("must be rejected")
        .to_string()
}

#[test]
fn jwks_keeps_public_keys_and_skips_shared_secrets() {
    let rsa = rsa();
    let set = parse_jwks(
        &json!({"keys": [rsa.jwk, {"kty": "oct", "k": b64(b"secret"), "kid": "h"}]}).to_string(),
        "/x".as_ref(),
    )
    .expect("parse");
    assert_eq!(set.keys.len(), 2);
    let v = Verifier::new(vec![Issuer::new(issuer_config(None), &set).expect("usable")]);
    // A token "signed" with the oct key's secret is refused before any key is used.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &job_claims(),
        &EncodingKey::from_secret(b"secret"),
    )
    .expect("encode");
    assert!(
        rejected(&v, &hs).contains("HS256 (HMAC"),
        "{}",
        rejected(&v, &hs)
    );

    let only_secret = parse_jwks(
        &json!({"keys": [{"kty": "oct", "k": b64(b"secret")}]}).to_string(),
        "/x".as_ref(),
    )
    .expect("parse");
    let err = Issuer::new(issuer_config(None), &only_secret).expect_err("no usable key");
    assert!(err.to_string().contains("no usable public key"), "{err}");
    assert!(parse_jwks("{\"nokeys\": 1}", "/x".as_ref())
        .expect_err("not a JWKS")
        .to_string()
        .contains("not a JWKS document"));
}

#[test]
fn good_rs256_es256_and_eddsa_tokens_bind_the_job_claims() {
    let (r, e, d) = (rsa(), p256("ec-1"), ed25519(Some("ed-1")));
    let v = verifier_with(&[&r, &e, &d], None);
    for key in [&r, &e, &d] {
        let verified = v
            .verify(&mint(key, &job_claims()), now())
            .unwrap_or_else(|err| panic!("{:?}: {err}", key.alg));
        assert_eq!(verified.issuer, ISS);
        assert_eq!(
            verified.subject.as_deref(),
            Some("repo:org/app:ref:refs/heads/main")
        );
        assert_eq!(verified.expires_at, NOW + 600);
        let names: Vec<&str> = verified.claims.keys().map(String::as_str).collect();
        // Token-only claims (exp, iat, nbf, jti, aud) are not bound.
        assert_eq!(names, ["iss", "ref", "repository", "run_id", "sub"]);
        assert_eq!(verified.claims["run_id"], 123);
    }
}

#[test]
fn allow_list_limits_the_bound_claims() {
    let d = ed25519(Some("ed-1"));
    let v = verifier_with(&[&d], Some(vec!["ref", "run_id", "absent"]));
    let verified = v.verify(&mint(&d, &job_claims()), now()).expect("valid");
    let names: Vec<&str> = verified.claims.keys().map(String::as_str).collect();
    assert_eq!(names, ["ref", "run_id"]);
}

#[test]
fn key_without_kid_is_found_by_type() {
    let other = ed25519(None);
    let d = ed25519(None);
    let e = p256("ec-1");
    let v = verifier_with(&[&other, &e, &d], None);
    assert!(v.verify(&mint(&d, &job_claims()), now()).is_ok());
    // A kid the JWKS does not have is named.
    let mut named = ed25519(Some("rotated-away"));
    named.encoding = d.encoding.clone();
    let err = rejected(&v, &mint(&named, &job_claims()));
    assert!(err.contains("no key \"rotated-away\""), "{err}");
}

#[test]
fn wrong_audience_issuer_and_times_are_rejected_with_clear_reasons() {
    let d = ed25519(Some("ed-1"));
    let v = verifier_with(&[&d], None);
    let with = |k: &str, val: Value| {
        let mut c = job_claims();
        c[k] = val;
        mint(&d, &c)
    };
    assert_eq!(
        rejected(&v, &with("aud", json!("someone-else"))),
        "audience mismatch: expected nhi-agent"
    );
    // A list containing the audience is fine.
    assert!(v
        .verify(&with("aud", json!(["x", "nhi-agent"])), now())
        .is_ok());
    assert_eq!(
        rejected(&v, &with("iss", json!("https://evil.example"))),
        "unknown issuer \"https://evil.example\": no [[oidc_issuer]] is configured for it"
    );
    let expired = with("exp", json!(NOW - LEEWAY_SECS - 1));
    let err = rejected(&v, &expired);
    assert!(err.starts_with("token expired at 2026-11-18T"), "{err}");
    assert!(err.ends_with('Z'), "{err}");
    // Within the leeway: accepted.
    assert!(v.verify(&with("exp", json!(NOW - 5)), now()).is_ok());
    let err = rejected(&v, &with("nbf", json!(NOW + LEEWAY_SECS + 60)));
    assert!(err.starts_with("token not valid before "), "{err}");
    let mut no_exp = job_claims();
    no_exp.as_object_mut().expect("object").remove("exp");
    assert_eq!(
        rejected(&v, &mint(&d, &no_exp)),
        "token has no \"exp\" claim"
    );
}

#[test]
fn bad_signature_names_the_jwks_file() {
    let d = ed25519(Some("ed-1"));
    let v = verifier_with(&[&d], None);
    // Another key claiming the same kid.
    let mut forger = ed25519(Some("ed-1"));
    forger.jwk = d.jwk.clone();
    assert_eq!(
        rejected(&v, &mint(&forger, &job_claims())),
        "signature does not verify against /etc/nhi-agent/test.jwks"
    );
    // A genuine token whose payload was changed after signing.
    let token = mint(&d, &job_claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = job_claims();
    claims["ref"] = "refs/heads/evil".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    );
    assert!(rejected(&v, &tampered).starts_with("signature does not verify"));
    // An algorithm the issuer does not accept.
    let mut cfg = issuer_config(None);
    cfg.algorithms = vec![Algorithm::RS256];
    let set = parse_jwks(&json!({"keys": [d.jwk]}).to_string(), "/x".as_ref()).expect("jwks");
    let strict = Verifier::new(vec![Issuer::new(cfg, &set).expect("issuer")]);
    assert!(rejected(&strict, &token).contains("algorithm EdDSA is not accepted"));
}

#[test]
fn alg_none_and_garbage_are_refused() {
    let d = ed25519(Some("ed-1"));
    let v = verifier_with(&[&d], None);
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(job_claims().to_string().as_bytes())
    );
    assert_eq!(rejected(&v, &none), "unsigned token (alg \"none\") refused");
    assert!(rejected(&v, "not-a-token").starts_with("malformed token"));
    assert!(rejected(&v, "a.b.c").starts_with("malformed token"));
}

#[test]
fn a_token_is_accepted_once() {
    let d = ed25519(Some("ed-1"));
    let attestor = Attestor::new(verifier_with(&[&d], None));
    let token = mint(&d, &job_claims());
    let first = attestor.verify_once(&token, now()).expect("first use");
    assert_eq!(
        attestor
            .verify_once(&token, now())
            .expect_err("replay")
            .to_string(),
        "token already used"
    );
    // Another token with the same jti (re-signed) is the same token to the cache.
    let mut again = ed25519(Some("ed-1"));
    again.encoding = d.encoding.clone();
    let mut c = job_claims();
    c["iat"] = json!(NOW - 5);
    assert!(matches!(
        attestor.verify_once(&mint(&again, &c), now()),
        Err(AttestError::Replayed)
    ));
    // Without a jti the token's hash is the key.
    let mut no_jti = job_claims();
    no_jti.as_object_mut().expect("object").remove("jti");
    let t2 = mint(&d, &no_jti);
    assert!(attestor.verify_once(&t2, now()).is_ok());
    assert!(attestor.verify_once(&t2, now()).is_err());
    // A use that could not be journaled is given back.
    attestor.unspend(&first);
    assert!(attestor.verify_once(&token, now()).is_ok());
}

#[test]
fn replay_cache_forgets_expired_tokens() {
    let d = ed25519(Some("ed-1"));
    let v = verifier_with(&[&d], None);
    let mut cache = super::ReplayCache::default();
    let verified = v.verify(&mint(&d, &job_claims()), now()).expect("valid");
    cache.use_once(&verified, now()).expect("first");
    assert_eq!(cache.len(), 1);
    let later = now() + Duration::from_secs(600 + LEEWAY_SECS + 1);
    let mut c = job_claims();
    c["jti"] = "job-2".into();
    c["exp"] = json!(NOW + 10_000);
    let other = v.verify(&mint(&d, &c), now()).expect("valid");
    cache.use_once(&other, later).expect("other");
    assert_eq!(cache.len(), 1, "the expired entry was dropped");
}

// ------------------------------------------------------------------ state across restarts

fn binding(cgroup: &str, id: u64) -> Binding {
    let mut claims = Claims::new();
    claims.insert("run_id".into(), json!(123));
    Binding {
        cgroup: cgroup.into(),
        cgroup_id: id,
        issuer: ISS.into(),
        subject: Some("repo:org/app".into()),
        claims,
        bound_at_us: 1,
        token_expires_at: NOW + 600,
        pid: 7,
        uid: 0,
    }
}

#[test]
fn used_tokens_and_bindings_survive_a_restart_and_stale_ones_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let d = ed25519(Some("ed-1"));
    let before = Attestor::new(verifier_with(&[&d], None)).with_state(dir.path());
    let r = before.restore(now(), |_| None);
    assert!(r
        .iter()
        .all(|r| r.outcome == crate::state::Outcome::Missing));
    let token = mint(&d, &job_claims());
    let mut short = job_claims();
    short["jti"] = "short".into();
    short["exp"] = json!(NOW + 60);
    let short = mint(&d, &short);
    before.verify_once(&token, now()).expect("first use");
    before.verify_once(&short, now()).expect("first use");
    before.bind(binding("ci/job-1", 11));
    before.bind(binding("ci/job-2", 12));
    // The files hold digests, never a token.
    for name in [REPLAY_FILE, BINDINGS_FILE] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(!text.contains(&token), "{name}: {text}");
    }
    let replay = std::fs::read_to_string(dir.path().join(REPLAY_FILE)).unwrap();
    assert!(
        !replay.contains("job-1") && !replay.contains(ISS),
        "{replay}"
    );
    drop(before);

    // Two minutes later: `short` has expired, job-2's cgroup is gone, job-1's is there.
    let later = now() + Duration::from_secs(60 + LEEWAY_SECS + 1);
    let after = Attestor::new(verifier_with(&[&d], None)).with_state(dir.path());
    let id_of = |p: &str| (p == "ci/job-1").then_some(11);
    let r = after.restore(later, id_of);
    let replay = r.iter().find(|r| r.kind == REPLAY_KIND).unwrap();
    assert_eq!((replay.restored, replay.dropped), (1, 1));
    let bound = r.iter().find(|r| r.kind == BINDINGS_KIND).unwrap();
    assert_eq!((bound.restored, bound.dropped), (1, 1));
    assert_eq!(bound.detail["cgroups_gone"], json!(["ci/job-2"]));
    let event = crate::state::restored_event(bound).unwrap();
    assert_eq!(event.kind, "state_restored");
    assert!(matches!(
        after.verify_once(&token, later),
        Err(AttestError::Replayed)
    ));
    assert_eq!(
        after
            .binding_for("ci/job-1/step", 99, id_of)
            .map(|b| b.cgroup),
        Some("ci/job-1".to_string())
    );
    assert_eq!(after.list().len(), 1);
    // What was dropped at restore is not written back.
    let again = Attestor::new(verifier_with(&[&d], None)).with_state(dir.path());
    let r = again.restore(later, |_| Some(11));
    assert_eq!(
        r.iter().find(|r| r.kind == BINDINGS_KIND).unwrap().restored,
        1
    );
}

#[test]
fn a_lost_replay_cache_refuses_tokens_issued_before_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = ed25519(Some("ed-1"));
    std::fs::write(dir.path().join(REPLAY_FILE), "{ torn").unwrap();
    std::fs::write(dir.path().join(BINDINGS_FILE), "[]").unwrap();
    let a = Attestor::new(verifier_with(&[&d], None)).with_state(dir.path());
    let r = a.restore(now(), |_| Some(1));
    for r in &r {
        assert_eq!(r.outcome, crate::state::Outcome::Invalid, "{r:?}");
        assert!(r.moved_to.as_ref().is_some_and(|p| p.exists()));
        assert!(r.fallback.is_some());
    }
    assert_eq!(a.replay_horizon(), Some(NOW + LEEWAY_SECS));
    // A token issued before the restart may have been used already: refused.
    let old = mint(&d, &job_claims());
    let e = a.verify_once(&old, now()).unwrap_err();
    assert!(matches!(e, AttestError::BeforeReplayHorizon { .. }), "{e}");
    // So is one without iat.
    let mut no_iat = job_claims();
    no_iat.as_object_mut().unwrap().remove("iat");
    no_iat["jti"] = "no-iat".into();
    assert!(matches!(
        a.verify_once(&mint(&d, &no_iat), now()),
        Err(AttestError::BeforeReplayHorizon { .. })
    ));
    // A token issued after the horizon is fine, once.
    let mut fresh = job_claims();
    fresh["iat"] = json!(NOW + LEEWAY_SECS + 5);
    fresh["jti"] = "fresh".into();
    let later = now() + Duration::from_secs(LEEWAY_SECS + 10);
    let fresh = mint(&d, &fresh);
    a.verify_once(&fresh, later)
        .expect("issued after the horizon");
    assert!(matches!(
        a.verify_once(&fresh, later),
        Err(AttestError::Replayed)
    ));
    // The horizon is kept across the next restart.
    let b = Attestor::new(verifier_with(&[&d], None)).with_state(dir.path());
    b.restore(later, |_| Some(1));
    assert_eq!(b.replay_horizon(), Some(NOW + LEEWAY_SECS));
    assert!(matches!(
        b.verify_once(&fresh, later),
        Err(AttestError::Replayed)
    ));
}

#[test]
fn a_token_that_cannot_be_saved_as_used_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = ed25519(Some("ed-1"));
    // The state dir is a file: nothing can be saved in it.
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let a = Attestor::new(verifier_with(&[&d], None)).with_state(&not_a_dir);
    let token = mint(&d, &job_claims());
    let e = a.verify_once(&token, now()).unwrap_err();
    assert!(matches!(e, AttestError::State(_)), "{e}");
    // Not spent in memory either: with a working state dir it is accepted.
    let ok = Attestor::new(verifier_with(&[&d], None)).with_state(dir.path());
    assert!(ok.verify_once(&token, now()).is_ok());
}

#[test]
fn token_hash_and_peek_never_need_the_signature() {
    let d = ed25519(Some("ed-1"));
    let token = mint(&d, &job_claims());
    assert_eq!(token_sha256(&token).len(), 64);
    assert_eq!(token_sha256(&token), token_sha256(&format!("{token}\n")));
    let p = peek(&token);
    assert_eq!(p.issuer.as_deref(), Some(ISS));
    assert_eq!(peek("garbage"), Default::default());
}

fn config(text: &str) -> Result<crate::config::Config, String> {
    let base = "[agent]\nmode = \"enforce\"\njournal = \"/var/lib/j.db\"\n\n\
                [[target]]\nname = \"pg\"\naddress = \"127.0.0.1:5432\"\n\n";
    crate::config::parse(&format!("{base}{text}"), "test.toml").map_err(|e| e.to_string())
}

#[test]
fn issuer_config_is_validated() {
    let c = config(
        "[attest]\nsocket = \"/run/x/attest.sock\"\n\n\
         [[oidc_issuer]]\nissuer = \"https://a\"\njwks_file = \"/etc/a.jwks\"\naudience = [\"x\", \"y\"]\n\
         claims = [\"ref\"]\nalgorithms = [\"ES256\"]\n",
    )
    .expect("valid");
    assert!(c.attest.enabled());
    assert_eq!(c.attest.socket, PathBuf::from("/run/x/attest.sock"));
    let i = &c.attest.issuers[0];
    assert_eq!(i.audience, ["x", "y"]);
    assert_eq!(i.claims.as_deref(), Some(&["ref".to_string()][..]));
    assert_eq!(i.algorithms, [Algorithm::ES256]);
    let default = config("").expect("valid");
    assert!(!default.attest.enabled());
    assert_eq!(default.attest, AttestConfig::default());

    let issuer = |extra: &str| {
        config(&format!(
            "[[oidc_issuer]]\nissuer = \"https://a\"\njwks_file = \"/etc/a.jwks\"\n{extra}\n"
        ))
    };
    for (extra, expected) in [
        ("audience = \"x\"\nalgorithms = [\"HS256\"]", "HMAC"),
        (
            "audience = \"x\"\nalgorithms = [\"none\"]",
            "unknown algorithm",
        ),
        ("audience = []", "audience must be"),
        ("", "missing field `audience`"),
        ("audience = \"x\"\nclaims = []", "claims = []"),
        ("audience = \"x\"\nsurprise = 1", "unknown field"),
    ] {
        let err = issuer(extra).expect_err(extra);
        assert!(err.contains(expected), "{extra}: {err}");
    }
    let err = config(
        "[[oidc_issuer]]\nissuer = \"https://a\"\njwks_file = \"a.jwks\"\naudience = \"x\"\n",
    )
    .expect_err("relative");
    assert!(err.contains("jwks_file must be an absolute path"), "{err}");
    let twice = "[[oidc_issuer]]\nissuer = \"https://a\"\njwks_file = \"/a\"\naudience = \"x\"\n";
    let err = config(&format!("{twice}{twice}")).expect_err("duplicate");
    assert!(err.contains("duplicate issuer"), "{err}");
}

#[test]
fn policies_match_on_claim_globs_and_attestation() {
    let c = config(
        "[[policy]]\nname = \"main\"\nclaims = { ref = \"refs/heads/main\", repository = \"org/*\" }\n\n\
         [[policy]]\nname = \"run-123\"\nclaims = { run_id = \"12?\" }\n\n\
         [[policy]]\nname = \"attested-other\"\nattested = true\n\n\
         [[policy]]\nname = \"unattested\"\nattested = false\n",
    )
    .expect("valid");
    let claims = |v: Value| -> Claims { serde_json::from_value(v).expect("object") };
    let governing = |c2: Option<&Claims>| {
        c.policies
            .for_session("w", "pg", c2)
            .and_then(|p| p.name.clone())
    };
    let main = claims(json!({"ref": "refs/heads/main", "repository": "org/app", "run_id": 1}));
    assert_eq!(governing(Some(&main)).as_deref(), Some("main"));
    let feature =
        claims(json!({"ref": "refs/heads/feature", "repository": "org/app", "run_id": 123}));
    assert_eq!(
        governing(Some(&feature)).as_deref(),
        Some("run-123"),
        "a number is matched by its decimal text"
    );
    let other_org = claims(json!({"ref": "refs/heads/main", "repository": "other/app"}));
    assert_eq!(
        governing(Some(&other_org)).as_deref(),
        Some("attested-other")
    );
    let no_ref = claims(json!({"repository": "org/app", "run_id": [123]}));
    assert_eq!(
        governing(Some(&no_ref)).as_deref(),
        Some("attested-other"),
        "a missing claim or a non-scalar value never matches"
    );
    assert_eq!(governing(None).as_deref(), Some("unattested"));

    let err = config("[[policy]]\nclaims = { ref = \"x\" }\nattested = false\n")
        .expect_err("never matches");
    assert!(err.contains("can never match"), "{err}");
    let err = config("[[policy]]\nclaims = { ref = \"[\" }\n").expect_err("bad glob");
    assert!(err.contains("invalid glob"), "{err}");
}

#[tokio::test]
async fn session_claims_are_stored_listed_and_filtered() {
    use crate::journal::tests::{at_us, sample_start};
    use crate::journal::{self, JournalOptions, JournalReader, SessionFilter};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let j = journal::open(&path, JournalOptions::default()).expect("open");
    let h = j.handle();
    let mut attested = sample_start("ci", "pg", at_us(0));
    attested.claims = Some(
        serde_json::from_value(json!({"run_id": 123, "ref": "refs/heads/main", "ok": true}))
            .expect("object"),
    );
    let a = h.start_session(attested).await.expect("start");
    let b = h
        .start_session(sample_start("ci", "pg", at_us(1)))
        .await
        .expect("start");
    h.flush().await.expect("flush");
    tokio::task::spawn_blocking(move || j.close())
        .await
        .expect("join")
        .expect("close");

    let r = JournalReader::open(&path).expect("reader");
    let ids = |claims: &[(&str, &str)]| -> Vec<i64> {
        let filter = SessionFilter {
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        r.sessions(&filter)
            .expect("sessions")
            .iter()
            .map(|s| s.id)
            .collect()
    };
    assert_eq!(ids(&[]), [a, b]);
    assert_eq!(ids(&[("run_id", "123")]), [a]);
    assert_eq!(ids(&[("run_id", "123"), ("ref", "refs/heads/main")]), [a]);
    assert_eq!(ids(&[("ok", "true")]), [a]);
    assert!(ids(&[("run_id", "12")]).is_empty());
    assert!(ids(&[("ref", "refs/heads/main"), ("x", "1")]).is_empty());
    let rows = r.sessions(&SessionFilter::default()).expect("sessions");
    assert_eq!(
        rows[0].claims.as_ref().map(|c| c["run_id"].clone()),
        Some(json!(123))
    );
    assert!(rows[1].claims.is_none());
    // The session_start event repeats them.
    let start = &r.events(a).expect("events")[0];
    assert_eq!(
        start.data.as_ref().map(|d| d["claims"]["ref"].clone()),
        Some(json!("refs/heads/main"))
    );
}

#[tokio::test]
async fn journals_from_before_attestation_read_as_unattested() {
    use crate::journal::tests::{at_us, sample_start};
    use crate::journal::{self, JournalOptions, JournalReader, SessionFilter};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    let j = journal::open(&path, JournalOptions::default()).expect("open");
    let id = j
        .handle()
        .start_session(sample_start("ci", "pg", at_us(0)))
        .await
        .expect("start");
    j.handle().flush().await.expect("flush");
    tokio::task::spawn_blocking(move || j.close())
        .await
        .expect("join")
        .expect("close");
    // Make it a version-1 journal: no `claims` column.
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    conn.execute_batch("ALTER TABLE sessions DROP COLUMN claims; PRAGMA user_version = 1;")
        .expect("downgrade");
    drop(conn);

    let r = JournalReader::open(&path).expect("reader");
    let all = r.sessions(&SessionFilter::default()).expect("sessions");
    assert_eq!(all.len(), 1);
    assert!(all[0].claims.is_none());
    assert!(r
        .session(id)
        .expect("session")
        .is_some_and(|s| s.claims.is_none()));
    let filtered = r
        .sessions(&SessionFilter {
            claims: vec![("run_id".into(), "123".into())],
            ..Default::default()
        })
        .expect("sessions");
    assert!(filtered.is_empty());
}
