//! Signed decision tokens: a JWS (compact JWT) whose signature is the approver's
//! authority, so it may arrive through any channel (the control socket, the loopback
//! HTTP endpoint, a chat bot relaying it).
//!
//! Claims: `{"approval_id": "a-1", "decision": "approve"|"deny", "approver": "alice",
//! "scope": "once"|"session"|"grant", "grant_for": "15m", "reason": "...", "exp": N,
//! "iat": N, "jti": "..."}`; `exp` is required, `scope` defaults to `once`.
//!
//! Verification uses jsonwebtoken (ring underneath) rather than hand-written JOSE: the
//! algorithm comes from the *key* (PEM: EdDSA, ES256 or RS256 by the key's type; JWKS:
//! the key's `alg` or type), a token whose header names another algorithm is refused,
//! `none` is not an algorithm jsonwebtoken knows and HMAC keys are never loaded, so a
//! public key can never be used as an HMAC secret.
//!
//! Architecture invariant: a token decides at most once. Its `jti` (or, without one,
//! the SHA-256 of the token) is remembered until the token's `exp` ([`ReplayGuard`]).
use std::{collections::HashMap, path::Path};

use jsonwebtoken::{
    jwk::{JwkSet, KeyAlgorithm},
    Algorithm, DecodingKey, Validation,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{config::ApprovalsConfig, scope::Scope};

/// Seconds of clock skew tolerated on `exp` (and `nbf`).
pub const LEEWAY_SECS: u64 = 30;
/// The longest token accepted, before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a decision token is refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A key file could not be read or holds no usable public key.
    #[error("decision key {path}: {why}")]
    Key { path: String, why: String },
    /// No `decision_keys` / `decision_jwks` is configured.
    #[error("signed decisions are not enabled (set [approvals] decision_keys or decision_jwks)")]
    NoKeys,
    /// Not a JWT at all, or too long.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// No configured key has the token's algorithm (and kid).
    #[error("no decision key for alg {alg:?}{}", kid.as_deref().map(|k| format!(" kid \"{k}\"")).unwrap_or_default())]
    NoKey { alg: Algorithm, kid: Option<String> },
    /// Signature, expiry, issuer, audience or claims refused.
    #[error("token refused: {0}")]
    Invalid(String),
    /// The token (its jti or hash) was already used.
    #[error("token already used (replay of jti/sha256 {0})")]
    Replay(String),
}

/// One key that may sign decisions.
struct Key {
    /// The key's kid (JWKS) or its file's name without extension (PEM).
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The configured verification keys and checks.
pub struct DecisionKeys {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for DecisionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionKeys")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// A decision whose signature, expiry and claims were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDecision {
    pub approval_id: String,
    /// True for "approve", false for "deny".
    pub approve: bool,
    pub approver: String,
    pub scope: Scope,
    pub grant_for: Option<String>,
    pub reason: Option<String>,
    pub jti: Option<String>,
    /// Hex SHA-256 of the token as received (journaled instead of the token).
    pub sha256: String,
    /// The kid of the key that verified it.
    pub kid: Option<String>,
    /// The token's `exp` (seconds since the epoch).
    pub exp: u64,
}

impl VerifiedDecision {
    /// "jwt:<approver> (kid K)", as journaled in `by`.
    pub fn by(&self) -> String {
        format!(
            "jwt:{} (kid {})",
            self.approver,
            self.kid.as_deref().unwrap_or("none")
        )
    }

    /// What the replay guard remembers: the jti, or the token's hash without one.
    pub fn replay_key(&self) -> String {
        match &self.jti {
            Some(j) => format!("jti:{j}"),
            None => format!("sha256:{}", self.sha256),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum DecisionClaim {
    Approve,
    Deny,
}

#[derive(Deserialize)]
struct Claims {
    approval_id: String,
    decision: DecisionClaim,
    approver: String,
    #[serde(default)]
    scope: Scope,
    grant_for: Option<String>,
    reason: Option<String>,
    exp: u64,
    jti: Option<String>,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(bytes))
}

impl DecisionKeys {
    /// Loads the keys `[approvals]` names (reads files).
    pub fn load(config: &ApprovalsConfig) -> Result<Option<Self>, TokenError> {
        if !config.accepts_tokens() {
            return Ok(None);
        }
        let mut keys = Self {
            keys: Vec::new(),
            issuer: config.decision_issuer.clone(),
            audience: config.decision_audience.clone(),
        };
        for path in &config.decision_keys {
            let pem = read(path)?;
            let kid = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            keys.add_pem(&pem, kid).map_err(|why| TokenError::Key {
                path: path.display().to_string(),
                why,
            })?;
        }
        if let Some(path) = &config.decision_jwks {
            let json = read(path)?;
            keys.add_jwks(&json).map_err(|why| TokenError::Key {
                path: path.display().to_string(),
                why,
            })?;
        }
        Ok(Some(keys))
    }

    /// An empty key set with the given `iss` / `aud` checks.
    pub fn new(issuer: Option<String>, audience: Option<String>) -> Self {
        Self {
            keys: Vec::new(),
            issuer,
            audience,
        }
    }

    /// Adds a PEM public key; its algorithm follows from its type.
    pub fn add_pem(&mut self, pem: &[u8], kid: Option<String>) -> Result<(), String> {
        // Each constructor accepts only its own key type (checked by OID).
        let (alg, key) = if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (Algorithm::EdDSA, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            (Algorithm::ES256, k)
        } else if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (Algorithm::RS256, k)
        } else {
            return Err("not a PEM Ed25519, P-256 or RSA public key".into());
        };
        self.keys.push(Key { kid, alg, key });
        Ok(())
    }

    /// Adds every key of a JWKS document (HMAC keys are refused).
    pub fn add_jwks(&mut self, json: &[u8]) -> Result<(), String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS: {e}"))?;
        if set.keys.is_empty() {
            return Err("the JWKS has no keys".into());
        }
        for jwk in &set.keys {
            let by_type = crate::jwk::KeyKind::of(jwk)
                .ok_or("only EdDSA, ECDSA and RSA public keys are accepted")?
                .default_algorithm();
            let alg = match jwk.common.key_algorithm {
                None => by_type,
                Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
                Some(KeyAlgorithm::ES256) => Algorithm::ES256,
                Some(KeyAlgorithm::ES384) => Algorithm::ES384,
                Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                Some(KeyAlgorithm::RS384) => Algorithm::RS384,
                Some(KeyAlgorithm::RS512) => Algorithm::RS512,
                Some(KeyAlgorithm::PS256) => Algorithm::PS256,
                Some(other) => return Err(format!("key algorithm {other:?} is not accepted")),
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad key: {e}"))?;
            self.keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        Ok(())
    }

    /// Verifies `token` (signature with the key its header designates, `exp` with
    /// [`LEEWAY_SECS`], `iss`/`aud` when configured) and reads its claims.
    pub fn verify(&self, token: &str) -> Result<VerifiedDecision, TokenError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let by_kid: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| header.kid.is_some() && k.kid == header.kid)
            .collect();
        // A kid that names a key selects it; otherwise every key of the algorithm is tried.
        let candidates: Vec<&Key> = if by_kid.is_empty() {
            self.keys.iter().filter(|k| k.alg == header.alg).collect()
        } else {
            by_kid.into_iter().filter(|k| k.alg == header.alg).collect()
        };
        if candidates.is_empty() {
            return Err(TokenError::NoKey {
                alg: header.alg,
                kid: header.kid,
            });
        }
        let mut last = None;
        for key in candidates {
            let mut validation = Validation::new(key.alg);
            validation.leeway = LEEWAY_SECS;
            // A configured check makes its claim required: jsonwebtoken only compares
            // `iss` / `aud` when they are present.
            let mut required = vec!["exp"];
            if self.issuer.is_some() {
                required.push("iss");
            }
            if self.audience.is_some() {
                required.push("aud");
            }
            validation.set_required_spec_claims(&required);
            match &self.audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            if let Some(iss) = &self.issuer {
                validation.set_issuer(&[iss]);
            }
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let c = data.claims;
                    return Ok(VerifiedDecision {
                        approval_id: c.approval_id,
                        approve: matches!(c.decision, DecisionClaim::Approve),
                        approver: c.approver,
                        scope: c.scope,
                        grant_for: c.grant_for,
                        reason: c.reason,
                        jti: c.jti,
                        sha256: sha256_hex(token.as_bytes()),
                        kid: key.kid.clone(),
                        exp: c.exp,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(TokenError::Invalid(
            last.map(|e| e.to_string()).unwrap_or_default(),
        ))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TokenError> {
    std::fs::read(path).map_err(|e| TokenError::Key {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

/// Remembers used tokens until they expire.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    used: HashMap<String, u64>,
}

impl ReplayGuard {
    /// Refuses a token already used (its jti, or its hash without one).
    pub fn check(&self, decision: &VerifiedDecision) -> Result<(), TokenError> {
        let key = decision.replay_key();
        if self.used.contains_key(&key) {
            return Err(TokenError::Replay(key));
        }
        Ok(())
    }

    /// Marks a token used; forgets tokens that expired (past the leeway) by `now`.
    pub fn remember(&mut self, decision: &VerifiedDecision, now: u64) {
        self.used
            .retain(|_, exp| exp.saturating_add(LEEWAY_SECS) >= now);
        self.used.insert(decision.replay_key(), decision.exp);
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether no token is remembered.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// What is remembered (replay key -> `exp`), for the state file. The keys are a jti
    /// or a token's SHA-256, never a token.
    pub fn entries(&self) -> std::collections::BTreeMap<String, u64> {
        self.used.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Takes back remembered tokens (agent start), without those expired by `now`;
    /// returns how many were dropped.
    pub fn restore(&mut self, entries: impl IntoIterator<Item = (String, u64)>, now: u64) -> usize {
        let mut dropped = 0;
        for (key, exp) in entries {
            if exp.saturating_add(LEEWAY_SECS) >= now {
                self.used.insert(key, exp);
            } else {
                dropped += 1;
            }
        }
        dropped
    }
}
