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
//! Bindings and the replay cache survive restarts in `[agent] state_dir`
//! ([`Attestor::with_state`], [`crate::state`]): a token accepted before a restart is
//! refused after it.
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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use crate::state::{Loaded, Outcome, Restoration, StateFile};

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
    /// The token was issued before the replay horizon (see [`ReplayCache`]).
    #[error("token issued before {horizon} (or without \"iat\"): the record of used tokens was lost then, so older tokens are refused; request a new token")]
    BeforeReplayHorizon { horizon: String },
    /// The state file could not record the token as used.
    #[error("cannot record the token as used: {0}")]
    State(String),
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

/// The state file names in `[agent] state_dir`, and their kinds.
pub const BINDINGS_FILE: &str = "attest-bindings.json";
/// See [`BINDINGS_FILE`].
pub const BINDINGS_KIND: &str = "attest_bindings";
/// See [`BINDINGS_FILE`].
pub const REPLAY_FILE: &str = "attest-replay.json";
/// See [`BINDINGS_FILE`].
pub const REPLAY_KIND: &str = "attest_replay";

/// What the bindings' state file holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedBindings {
    bindings: Vec<Binding>,
}

#[derive(Debug)]
struct Files {
    bindings: StateFile,
    replay: StateFile,
}

/// The agent's attestation state: the verifier of the configuration in force (replaced
/// on reload), the replay cache and the bindings (both kept across reloads, and with
/// [`Attestor::with_state`] across restarts).
///
/// Persistence order: a token is saved as used before its acceptance is journaled
/// (if that save fails, the attestation is refused: a token that a restart would forget
/// is never accepted), and a binding is saved after it is made (a failure is logged:
/// the binding holds until the agent restarts, and the job can attest again).
#[derive(Debug, Default)]
pub struct Attestor {
    verifier: RwLock<Arc<Verifier>>,
    replay: Mutex<ReplayCache>,
    bindings: Mutex<Bindings>,
    files: Option<Files>,
}

impl Attestor {
    /// An attestor verifying with `verifier`.
    pub fn new(verifier: Verifier) -> Attestor {
        Attestor {
            verifier: RwLock::new(Arc::new(verifier)),
            ..Attestor::default()
        }
    }

    /// Keeps bindings and used tokens in `state_dir`; call [`Attestor::restore`] before
    /// serving.
    pub fn with_state(mut self, state_dir: &Path) -> Attestor {
        self.files = Some(Files {
            bindings: StateFile::new(state_dir, BINDINGS_FILE, BINDINGS_KIND),
            replay: StateFile::new(state_dir, REPLAY_FILE, REPLAY_KIND),
        });
        self
    }

    /// Takes back the saved replay cache and bindings (agent start). Expired tokens and
    /// bindings of cgroups that no longer exist (`id_of` gives a path's current id) are
    /// dropped. An invalid bindings file: the agent starts without bindings (jobs attest
    /// again). An invalid replay file: the agent starts with a replay horizon (see
    /// [`ReplayCache`]), never with an empty cache that would take used tokens again.
    /// Each result is logged; the caller journals them.
    pub fn restore(
        &self,
        now: SystemTime,
        id_of: impl Fn(&str) -> Option<u64>,
    ) -> Vec<Restoration> {
        let Some(files) = &self.files else {
            return Vec::new();
        };
        let replay = match files.replay.load(verify::validate_saved) {
            Loaded::Missing => Restoration::new(&files.replay, Outcome::Missing),
            Loaded::Found(saved) => {
                let mut cache = self.replay();
                let (kept, expired) = cache.restore(saved, now);
                let mut r = Restoration::new(&files.replay, Outcome::Restored);
                r.restored = kept;
                r.dropped = expired;
                r.detail = serde_json::json!({ "horizon": cache.horizon() });
                r
            }
            Loaded::Invalid { reason, moved_to } => {
                let horizon = crate::state::unix_secs(now) + verify::LEEWAY_SECS;
                self.replay().set_horizon(horizon);
                let mut r = Restoration::invalid(
                    &files.replay,
                    reason,
                    moved_to,
                    "replay horizon: only tokens issued after the restart are accepted",
                );
                r.detail = serde_json::json!({ "horizon": horizon });
                r
            }
        };
        if replay.outcome != Outcome::Missing {
            // Expired entries gone, a new horizon kept: written back now.
            let cache = self.replay();
            if let Err(e) = files.replay.store(&cache.saved()) {
                tracing::error!(error = %e, "cannot save the attestation replay cache");
            }
        }
        let bindings = match files.bindings.load::<SavedBindings>(validate_bindings) {
            Loaded::Missing => Restoration::new(&files.bindings, Outcome::Missing),
            Loaded::Found(saved) => {
                let mut b = self.bindings();
                let (mut kept, mut gone) = (Vec::new(), Vec::new());
                for binding in saved.bindings {
                    if id_of(&binding.cgroup) == Some(binding.cgroup_id) {
                        kept.push(binding.cgroup.clone());
                        b.bind(binding);
                    } else {
                        gone.push(binding.cgroup);
                    }
                }
                let mut r = Restoration::new(&files.bindings, Outcome::Restored);
                r.restored = kept.len();
                r.dropped = gone.len();
                r.detail = serde_json::json!({ "cgroups": kept, "cgroups_gone": gone });
                r
            }
            Loaded::Invalid { reason, moved_to } => Restoration::invalid(
                &files.bindings,
                reason,
                moved_to,
                "started without bindings: jobs attest again with a new token",
            ),
        };
        if bindings.outcome != Outcome::Missing {
            self.save_bindings(&self.bindings());
        }
        for r in [&replay, &bindings] {
            r.log();
        }
        vec![replay, bindings]
    }

    /// Replaces the verifier (configuration reload). Bindings stay: they were verified.
    pub fn set_verifier(&self, verifier: Verifier) {
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(verifier);
    }

    /// Verifies `token` at `now` and spends it (see [`ReplayCache`]); with a state file,
    /// the token is saved as used before this returns.
    pub fn verify_once(&self, token: &str, now: SystemTime) -> Result<Verified, AttestError> {
        let verifier = self
            .verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let verified = verifier.verify(token, now)?;
        let mut cache = self.replay();
        cache.use_once(&verified, now)?;
        if let Some(files) = &self.files {
            if let Err(e) = files.replay.store(&cache.saved()) {
                cache.forget(&verified);
                return Err(AttestError::State(e.to_string()));
            }
        }
        Ok(verified)
    }

    /// Gives a spent token back (its use could not be journaled, so it did not happen).
    /// If the state file cannot be written, the token stays spent there: refusing it
    /// after a restart is the safe side.
    pub fn unspend(&self, verified: &Verified) {
        let mut cache = self.replay();
        cache.forget(verified);
        if let Some(files) = &self.files {
            if let Err(e) = files.replay.store(&cache.saved()) {
                tracing::warn!(error = %e, "cannot save the attestation replay cache");
            }
        }
    }

    /// Binds claims to a cgroup (and saves the bindings).
    pub fn bind(&self, binding: Binding) {
        let mut bindings = self.bindings();
        bindings.bind(binding);
        self.save_bindings(&bindings);
    }

    fn save_bindings(&self, bindings: &Bindings) {
        let Some(files) = &self.files else { return };
        let saved = SavedBindings {
            bindings: bindings.list(),
        };
        if let Err(e) = files.bindings.store(&saved) {
            tracing::error!(error = %e, "cannot save the attestation bindings; they hold until the agent restarts");
        }
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
        let mut bindings = self.bindings();
        let dropped = bindings.retain_existing(id_of);
        if dropped > 0 {
            self.save_bindings(&bindings);
        }
        dropped
    }

    /// Every binding, by cgroup path.
    pub fn list(&self) -> Vec<Binding> {
        self.bindings().list()
    }

    /// The replay horizon in force, if the replay cache was ever lost.
    pub fn replay_horizon(&self) -> Option<u64> {
        self.replay().horizon()
    }

    fn replay(&self) -> MutexGuard<'_, ReplayCache> {
        // Each operation leaves the cache consistent: a panic elsewhere cannot break it.
        self.replay.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bindings(&self) -> MutexGuard<'_, Bindings> {
        self.bindings.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A saved binding must name a cgroup path below the mount (no `..`, not absolute).
fn validate_bindings(saved: &SavedBindings) -> Result<(), String> {
    for b in &saved.bindings {
        if b.cgroup.starts_with('/') || b.cgroup.split('/').any(|c| c == "..") {
            return Err(format!("binding of {:?}: not a cgroup path", b.cgroup));
        }
        if b.issuer.is_empty() {
            return Err(format!("binding of {:?}: no issuer", b.cgroup));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
