//! CI job identity: a job presents its OIDC token (GitHub Actions, GitLab, ...) to the
//! agent with `nhi-agent attest`; the agent verifies it against the issuer's JWKS file and
//! binds the token's claims to the caller's cgroup. Sessions from that cgroup or any
//! descendant then carry the claims: in the journal (`sessions.claims`) and for policy
//! (`[[policy]] claims = { ... }`, see [`crate::policy`]).
//!
//! - [`config`]: `[[oidc_issuer]]` and `[attest]`.
//! - [`verify`] (pure): signature, `iss`, `aud`, `exp`, `nbf`; the replay cache.
//! - [`bindings`] (pure): claims by cgroup, nearest bound ancestor.
//! - [`server`]: the Unix socket (mode 0666) where a process attests its own cgroup,
//!   identified by `SO_PEERCRED`, never by anything the caller says.
//!
//! Architecture invariant: a token is a bearer credential until it expires, so it never
//! reaches the journal or the logs; they name it by its SHA-256. Every attempt, accepted
//! or rejected, is journaled as an `attestation` event (no session) and a binding is made
//! only after its event is recorded.
#![forbid(unsafe_code)]

pub mod bindings;
pub mod config;
pub mod server;
pub mod verify;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

pub use bindings::{Binding, Bindings};
pub use config::{AttestConfig, AttestProblem, IssuerConfig, RawAttest, RawOidcIssuer};
pub use verify::{Issuer, ReplayCache, Verified, Verifier};

/// Claims of a verified token, by name (ordered, so the journal's JSON is stable).
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// Why a token was rejected, or attestation could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// Not a compact JWS, or a part that does not decode.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `alg: none`.
    #[error("unsigned token (alg \"none\") refused")]
    AlgNone,
    /// An HMAC algorithm.
    #[error("token signed with {alg} (HMAC, a shared secret) refused: only public-key signatures are accepted")]
    Hmac { alg: String },
    /// No `iss` in the token.
    #[error("token has no \"iss\" claim")]
    NoIssuer,
    /// `iss` names no `[[oidc_issuer]]`.
    #[error("unknown issuer \"{issuer}\": no [[oidc_issuer]] is configured for it")]
    UnknownIssuer { issuer: String },
    /// The header's algorithm is not among the issuer's `algorithms`.
    #[error("algorithm {alg} is not accepted for issuer \"{issuer}\"")]
    AlgorithmNotAllowed { alg: String, issuer: String },
    /// `kid` names no key of the JWKS (for this algorithm).
    #[error("no key \"{kid}\" for {alg} in {path}")]
    UnknownKey {
        kid: String,
        alg: String,
        path: PathBuf,
    },
    /// The signature does not verify.
    #[error("signature does not verify against {path}")]
    BadSignature { path: PathBuf },
    /// No `exp` in the token: it would be valid (and replayable) forever.
    #[error("token has no \"exp\" claim")]
    NoExpiry,
    /// `exp` is past.
    #[error("token expired at {at}")]
    Expired { at: String },
    /// `nbf` is in the future.
    #[error("token not valid before {at}")]
    NotYetValid { at: String },
    /// `aud` names none of the issuer's audiences.
    #[error("audience mismatch: expected {expected}")]
    AudienceMismatch { expected: String },
    /// The token was accepted before.
    #[error("token already used")]
    Replayed,
    /// The caller's cgroup could not be read.
    #[error("cannot determine the caller's cgroup (pid {pid})")]
    NoCgroup { pid: i32 },
    /// The journal could not record the attempt.
    #[error("the journal cannot record the attestation: {0}")]
    Journal(String),
    /// A JWKS file that cannot be used.
    #[error("JWKS file {path}: {reason}")]
    Jwks { path: PathBuf, reason: String },
    /// Socket setup.
    #[error("attest socket {path}: {reason}")]
    Socket { path: PathBuf, reason: String },
}

/// Reads every issuer's JWKS file and builds the verifier. Errors name the file.
pub fn load_issuers(config: &AttestConfig) -> Result<Verifier, AttestError> {
    let mut issuers = Vec::with_capacity(config.issuers.len());
    for issuer in &config.issuers {
        let path = &issuer.jwks_file;
        let text = std::fs::read_to_string(path).map_err(|e| AttestError::Jwks {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let jwks = verify::parse_jwks(&text, path)?;
        issuers.push(Issuer::new(issuer.clone(), &jwks)?);
    }
    Ok(Verifier::new(issuers))
}

/// The agent's attestation state: the verifier of the configuration in force (replaced
/// on reload), the replay cache and the bindings (both kept across reloads).
#[derive(Debug, Default)]
pub struct Attestor {
    verifier: RwLock<Arc<Verifier>>,
    replay: Mutex<ReplayCache>,
    bindings: Mutex<Bindings>,
}

impl Attestor {
    /// An attestor verifying with `verifier`.
    pub fn new(verifier: Verifier) -> Attestor {
        Attestor {
            verifier: RwLock::new(Arc::new(verifier)),
            ..Attestor::default()
        }
    }

    /// Replaces the verifier (configuration reload). Bindings stay: they were verified.
    pub fn set_verifier(&self, verifier: Verifier) {
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(verifier);
    }

    /// Verifies `token` at `now` and spends it (see [`ReplayCache`]).
    pub fn verify_once(&self, token: &str, now: SystemTime) -> Result<Verified, AttestError> {
        let verifier = self
            .verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let verified = verifier.verify(token, now)?;
        self.replay().use_once(&verified, now)?;
        Ok(verified)
    }

    /// Gives a spent token back (its use could not be journaled, so it did not happen).
    pub fn unspend(&self, verified: &Verified) {
        self.replay().forget(verified);
    }

    /// Binds claims to a cgroup.
    pub fn bind(&self, binding: Binding) {
        self.bindings().bind(binding);
    }

    /// The claims governing a session from cgroup `path` (id `id`): its own binding or
    /// its nearest bound ancestor's. `id_of` gives a path's current cgroup id.
    pub fn binding_for(
        &self,
        path: &str,
        id: u64,
        id_of: impl Fn(&str) -> Option<u64>,
    ) -> Option<Binding> {
        let mut bindings = self.bindings();
        if bindings.is_empty() {
            return None;
        }
        bindings.nearest(path, id, id_of).cloned()
    }

    /// Drops the bindings of removed cgroups (the agent's periodic rescan).
    pub fn prune(&self, id_of: impl Fn(&str) -> Option<u64>) -> usize {
        self.bindings().retain_existing(id_of)
    }

    /// Every binding, by cgroup path.
    pub fn list(&self) -> Vec<Binding> {
        self.bindings().list()
    }

    fn replay(&self) -> MutexGuard<'_, ReplayCache> {
        // Each operation leaves the cache consistent: a panic elsewhere cannot break it.
        self.replay.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bindings(&self) -> MutexGuard<'_, Bindings> {
        self.bindings.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
