//! Token verification and the replay cache. Pure: keys and configuration in, a verdict out;
//! the current time is a parameter, so every rule is testable without a clock.
//!
//! Order of checks: the header (`alg` must be an allowed public-key algorithm; `none` and
//! HMAC are refused by name), the issuer (the token's `iss`, read unverified only to pick
//! the issuer's keys), the signature (the key named by `kid`, or every key of a matching
//! type when there is no `kid`), then the claims of the verified payload: `iss`, `exp`
//! (required), `nbf`, `aud`, each with [`LEEWAY_SECS`] of clock skew.
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::config::IssuerConfig;
use super::{AttestError, Claims};
use crate::jwk::KeyKind;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// The registered claims that describe the token rather than the job: not bound unless
/// an issuer's `claims` list names them.
pub const TOKEN_ONLY_CLAIMS: &[&str] = &["exp", "iat", "nbf", "jti", "aud"];

struct IssuerKey {
    kid: Option<String>,
    kind: KeyKind,
    /// The JWK's own `alg`, when it pins one.
    alg: Option<String>,
    key: DecodingKey,
}

/// One issuer with its decoded keys.
pub struct Issuer {
    config: IssuerConfig,
    keys: Vec<IssuerKey>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.config.issuer)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Issuer {
    /// Decodes the public keys of `jwks` for `config`. Symmetric (`oct`) keys and
    /// unsupported curves are skipped; a set with no usable key is an error.
    pub fn new(config: IssuerConfig, jwks: &JwkSet) -> Result<Issuer, AttestError> {
        let mut keys = Vec::new();
        for jwk in &jwks.keys {
            let Some(kind) = KeyKind::of(jwk) else {
                continue;
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| AttestError::Jwks {
                path: config.jwks_file.clone(),
                reason: format!(
                    "key {}: {e}",
                    jwk.common.key_id.as_deref().unwrap_or("(no kid)")
                ),
            })?;
            keys.push(IssuerKey {
                kid: jwk.common.key_id.clone(),
                kind,
                alg: jwk.common.key_algorithm.map(|a| a.to_string()),
                key,
            });
        }
        if keys.is_empty() {
            return Err(AttestError::Jwks {
                path: config.jwks_file.clone(),
                reason: "no usable public key (RSA, EC P-256/P-384 or Ed25519)".to_string(),
            });
        }
        Ok(Issuer { config, keys })
    }

    /// The issuer's configuration.
    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }
}

/// Parses a JWKS document.
pub fn parse_jwks(text: &str, path: &std::path::Path) -> Result<JwkSet, AttestError> {
    serde_json::from_str(text).map_err(|e| AttestError::Jwks {
        path: path.to_path_buf(),
        reason: format!("not a JWKS document: {e}"),
    })
}

/// The issuers of a configuration, ready to verify tokens.
#[derive(Debug, Default)]
pub struct Verifier {
    issuers: Vec<Issuer>,
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// `iss`.
    pub issuer: String,
    /// `sub`, when present as a string.
    pub subject: Option<String>,
    /// The claims to bind (the issuer's allow-list, or all but [`TOKEN_ONLY_CLAIMS`]).
    pub claims: Claims,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// What the replay cache remembers: the issuer and `jti`, or the token's SHA-256.
    pub replay_key: String,
    /// `iat`, seconds since the epoch, when the token has one.
    pub issued_at: Option<u64>,
}

/// What an unverified token says about itself, for the journal of a rejected attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unverified {
    /// `iss` as the token claims it.
    pub issuer: Option<String>,
    /// `sub` as the token claims it.
    pub subject: Option<String>,
}

impl Verifier {
    /// A verifier over `issuers` (order does not matter: `issuer` names are unique).
    pub fn new(issuers: Vec<Issuer>) -> Verifier {
        Verifier { issuers }
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Verifies `token` at `now`: see the module documentation for the checks.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Verified, AttestError> {
        let token = token.trim();
        let parts: Vec<&str> = token.split('.').collect();
        let [header, payload, _signature] = parts.as_slice() else {
            return Err(AttestError::Malformed(
                "not a JWT: expected three base64url parts separated by dots".to_string(),
            ));
        };
        let header = decode_part(header, "header")?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| AttestError::Malformed("the header has no \"alg\"".to_string()))?;
        let alg = match alg_name {
            "none" | "None" | "NONE" => return Err(AttestError::AlgNone),
            "HS256" | "HS384" | "HS512" => {
                return Err(AttestError::Hmac {
                    alg: alg_name.to_string(),
                })
            }
            other => other.parse::<Algorithm>().map_err(|_| {
                AttestError::Malformed(format!("unknown signature algorithm \"{other}\""))
            })?,
        };
        let kid = header.get("kid").and_then(Value::as_str);
        let unverified = decode_part(payload, "payload")?;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(AttestError::NoIssuer)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| AttestError::UnknownIssuer {
                issuer: iss.to_string(),
            })?;
        if !issuer.config.algorithms.contains(&alg) {
            return Err(AttestError::AlgorithmNotAllowed {
                alg: alg_name.to_string(),
                issuer: iss.to_string(),
            });
        }

        let candidates: Vec<&IssuerKey> = issuer
            .keys
            .iter()
            .filter(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .filter(|k| k.kind.verifies(alg))
            .filter(|k| k.alg.as_deref().is_none_or(|a| a == alg_name))
            .collect();
        let jwks_file = issuer.config.jwks_file.clone();
        if candidates.is_empty() {
            return Err(match kid {
                Some(kid) => AttestError::UnknownKey {
                    kid: kid.to_string(),
                    alg: alg_name.to_string(),
                    path: jwks_file,
                },
                None => AttestError::BadSignature { path: jwks_file },
            });
        }
        let mut validation = Validation::new(alg);
        // The claims are checked below, on the verified payload, with messages that say
        // what is wrong; jsonwebtoken only checks the signature.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = candidates
            .iter()
            .find_map(|k| jsonwebtoken::decode::<Claims>(token, &k.key, &validation).ok())
            .ok_or(AttestError::BadSignature { path: jwks_file })?
            .claims;

        // The verified payload is the peeked one (same bytes); checked anyway.
        if claims.get("iss").and_then(Value::as_str) != Some(issuer.config.issuer.as_str()) {
            return Err(AttestError::UnknownIssuer {
                issuer: iss.to_string(),
            });
        }
        let now_s = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(AttestError::NoExpiry)?;
        if now_s > exp.saturating_add(LEEWAY_SECS) {
            return Err(AttestError::Expired {
                at: format_unix(exp),
            });
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_u64().ok_or_else(|| {
                AttestError::Malformed("\"nbf\" is not a number of seconds".to_string())
            })?;
            if now_s.saturating_add(LEEWAY_SECS) < nbf {
                return Err(AttestError::NotYetValid {
                    at: format_unix(nbf),
                });
            }
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences
            .iter()
            .any(|a| issuer.config.audience.iter().any(|want| want == a))
        {
            return Err(AttestError::AudienceMismatch {
                expected: issuer.config.audience.join(" or "),
            });
        }

        let replay_key = match claims.get("jti").and_then(Value::as_str) {
            Some(jti) => format!("{}\u{0}jti\u{0}{jti}", issuer.config.issuer),
            None => format!("sha256\u{0}{}", token_sha256(token)),
        };
        let subject = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
        let issued_at = claims.get("iat").and_then(Value::as_u64);
        let bound = bound_claims(claims, issuer.config.claims.as_deref());
        Ok(Verified {
            issuer: issuer.config.issuer.clone(),
            subject,
            claims: bound,
            expires_at: exp,
            replay_key,
            issued_at,
        })
    }
}

/// The claims of a verified token that get bound: the allow-list, or every claim but
/// [`TOKEN_ONLY_CLAIMS`].
pub fn bound_claims(claims: Claims, allow: Option<&[String]>) -> Claims {
    claims
        .into_iter()
        .filter(|(name, _)| match allow {
            Some(allow) => allow.iter().any(|a| a == name),
            None => !TOKEN_ONLY_CLAIMS.contains(&name.as_str()),
        })
        .collect()
}

/// `iss` and `sub` of a token, unverified (for the journal of a rejected attempt).
pub fn peek(token: &str) -> Unverified {
    let payload = token.trim().split('.').nth(1).unwrap_or("");
    let Ok(value) = decode_part(payload, "payload") else {
        return Unverified::default();
    };
    let field = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
    Unverified {
        issuer: field("iss"),
        subject: field("sub"),
    }
}

/// Hex SHA-256 of the token text: how the journal names a token without holding it.
pub fn token_sha256(token: &str) -> String {
    crate::hex::encode(&Sha256::digest(token.trim().as_bytes()))
}

fn decode_part(part: &str, what: &str) -> Result<Claims, AttestError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| AttestError::Malformed(format!("the {what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AttestError::Malformed(format!("the {what} is not a JSON object: {e}")))
}

fn format_unix(secs: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.min(i64::MAX as u64 / 2_000_000));
    let text = crate::journal::format_rfc3339_us(t);
    // Whole seconds: that is all a JWT time has.
    match text.find('.') {
        Some(dot) if text.ends_with('Z') => format!("{}Z", &text[..dot]),
        _ => text,
    }
}

/// Tokens accepted so far, each remembered until it expires (plus the leeway), so a
/// token is accepted once. Kept by SHA-256 of its replay key (issuer and `jti`, or the
/// token's SHA-256), so neither the cache nor its state file ever holds a token. With a
/// state file (see [`super::Attestor::with_state`]) it survives restarts.
///
/// The replay horizon: when the saved cache was lost (an invalid state file), tokens
/// spent before cannot be told from new ones, so from then on only tokens issued (`iat`)
/// after the horizon (the restart, plus [`LEEWAY_SECS`] of issuer clock skew) are
/// accepted; a token without `iat` is refused. The horizon is saved and stays.
#[derive(Debug, Default)]
pub struct ReplayCache {
    seen: HashMap<String, u64>,
    horizon: Option<u64>,
}

/// What the replay cache's state file holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedReplay {
    /// Tokens issued before this (seconds since the epoch) are refused.
    pub horizon: Option<u64>,
    /// Hex SHA-256 of a replay key -> the token's `exp`.
    pub tokens: std::collections::BTreeMap<String, u64>,
}

impl ReplayCache {
    fn key(verified: &Verified) -> String {
        crate::hex::encode(&Sha256::digest(verified.replay_key.as_bytes()))
    }

    /// Records `verified` as used at `now`; [`AttestError::Replayed`] if it was already,
    /// [`AttestError::BeforeReplayHorizon`] if it may have been used before the cache
    /// was lost.
    pub fn use_once(&mut self, verified: &Verified, now: SystemTime) -> Result<(), AttestError> {
        let now_s = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Some(horizon) = self.horizon {
            if verified.issued_at.is_none_or(|iat| iat < horizon) {
                return Err(AttestError::BeforeReplayHorizon {
                    horizon: format_unix(horizon),
                });
            }
        }
        self.seen
            .retain(|_, exp| exp.saturating_add(LEEWAY_SECS) >= now_s);
        let key = Self::key(verified);
        if self.seen.contains_key(&key) {
            return Err(AttestError::Replayed);
        }
        self.seen.insert(key, verified.expires_at);
        Ok(())
    }

    /// Forgets `verified` (its use could not be journaled, so it did not happen).
    pub fn forget(&mut self, verified: &Verified) {
        self.seen.remove(&Self::key(verified));
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The replay horizon, if the cache was ever lost.
    pub fn horizon(&self) -> Option<u64> {
        self.horizon
    }

    /// Refuses tokens issued before `horizon` from now on (the saved cache was lost).
    pub fn set_horizon(&mut self, horizon: u64) {
        self.horizon = Some(self.horizon.map_or(horizon, |h| h.max(horizon)));
    }

    /// What the state file keeps.
    pub fn saved(&self) -> SavedReplay {
        SavedReplay {
            horizon: self.horizon,
            tokens: self.seen.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }

    /// Takes back a saved cache, without tokens expired by `now`; returns how many
    /// were taken back and how many had expired.
    pub fn restore(&mut self, saved: SavedReplay, now: SystemTime) -> (usize, usize) {
        let now_s = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Some(h) = saved.horizon {
            self.set_horizon(h);
        }
        let (mut kept, mut expired) = (0, 0);
        for (key, exp) in saved.tokens {
            if exp.saturating_add(LEEWAY_SECS) >= now_s {
                self.seen.insert(key, exp);
                kept += 1;
            } else {
                expired += 1;
            }
        }
        (kept, expired)
    }
}

/// Checks a saved cache: keys are hex SHA-256 digests.
pub fn validate_saved(saved: &SavedReplay) -> Result<(), String> {
    for key in saved.tokens.keys() {
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{key:?} is not a SHA-256 digest"));
        }
    }
    Ok(())
}
