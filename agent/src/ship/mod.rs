//! Shipping sealed journal segments upstream (S3-compatible storage), local retention
//! and the disk budget.
//!
//! One pass ([`Shipper::pass`]), run every `[shipping] interval` by `nhi-agent run`
//! and once by `nhi-agent ship --once`:
//!
//! 1. scan `<journal dir>/segments/` for complete segments (`<seq>.db` with its
//!    `<seq>.seal`), read each seal's payload (not verified here: `verify` does that);
//! 2. per journal id, in segment order after the cursor: PUT `.db`, then `.seal`, each
//!    confirmed (status, ETag = MD5, HEAD size); then PUT the high-water mark
//!    `<prefix>/<host-id>/hwm.json`; only then move the cursor
//!    (`<state_dir>/ship-cursor.json`, atomic). A crash in between re-uploads the same
//!    keys on the next pass (keys depend on the seal only): at-least-once, idempotent;
//! 3. retention: delete segments the cursor covers that were sealed more than `keep`
//!    ago;
//! 4. measure the journal directory against `[retention] disk_budget`.
//!
//! **Gaps.** A missing segment (a seq with no complete segment while a later one is
//! sealed) is logged as an error on every pass and makes the pass fail. The segments
//! after it ARE uploaded (so their evidence leaves the host), but the cursor and the
//! high-water mark do not move past the gap: `hwm.json` names the last segment with no
//! gap before it, retention keeps everything after the gap, and `ship status` lists
//! it. The gap stays visible until it is filled.
pub mod backoff;
pub mod budget;
pub mod client;
pub mod config;
pub mod cursor;
pub mod layout;
pub mod retention;
pub mod segment;
mod shipper;

use std::path::PathBuf;

pub use budget::Budget;
pub use config::{RawRetention, RawShipping, ShipConfig};
pub use shipper::{PassReport, Shipper, Status, StreamPositions};

/// Errors of the shipping subsystem. None carries the secret key.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// A local file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A seal file that cannot be read as a compact JWS with the contract's payload.
    #[error("seal {path}: {why}")]
    BadSeal { path: PathBuf, why: String },
    /// The cursor file is not valid.
    #[error("cursor {path}: {why} (move it away to re-ship everything, uploads are idempotent)")]
    BadCursor { path: PathBuf, why: String },
    /// The secret could not be loaded.
    #[error("shipping secret: {0}")]
    Secret(#[from] crate::credential::CredentialError),
    /// The endpoint cannot be used for a bucket.
    #[error("invalid shipping endpoint {0}")]
    Endpoint(String),
    /// `instance_profile`: the metadata service gave no credential.
    #[error("[shipping] instance_profile: the instance role's credential from {0}")]
    InstanceProfile(String),
    /// `[shipping] ca_file` cannot be used.
    #[error("[shipping] ca_file {path}: {why}")]
    CaFile { path: PathBuf, why: String },
    /// 403 InvalidAccessKeyId / SignatureDoesNotMatch and the like.
    #[error(
        "upstream rejected our credentials ({code}) for {key}: check [shipping] access_key_id and the secret"
    )]
    Credentials { key: String, code: String },
    /// Any other error answer.
    #[error("upstream refused {key}: HTTP {status} {code} {message}")]
    Upstream {
        key: String,
        status: u16,
        code: String,
        message: String,
    },
    /// No answer: connection refused, timeout, TLS.
    #[error("cannot reach {endpoint} (uploading {key}): {reason}")]
    Transport {
        endpoint: String,
        key: String,
        reason: String,
    },
    /// The server answered 2xx but what it stored does not match what was sent.
    #[error("upload of {key} not confirmed: {why}")]
    Unconfirmed { key: String, why: String },
    /// Segments are missing; the high-water mark stops before them.
    #[error("gap in journal {journal_id}: segment(s) {from}..={to} are missing locally and were never shipped; the high-water mark stays at {hwm}")]
    Gap {
        journal_id: String,
        from: u64,
        to: u64,
        hwm: u64,
    },
}

impl ShipError {
    /// Whether trying the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ShipError::Transport { .. } | ShipError::Unconfirmed { .. } => true,
            ShipError::Upstream { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            _ => false,
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
