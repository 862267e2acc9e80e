//! Evidence: what makes the journal tamper-evident.
//!
//! # The hash chain
//!
//! Every row of `events` carries `hash` = SHA-256(`prev_hash` || canonical(row)), where
//! `prev_hash` is the hash of the event with the next lower id (across segments), and for
//! the very first event of a journal SHA-256(`"nhi-genesis-v1"` || journal_id as UTF-8).
//! The canonical encoding of a row (see [`chain::canonical`]) is, in this order:
//!
//! | field        | encoding                                                         |
//! |--------------|------------------------------------------------------------------|
//! | domain tag   | the 12 bytes `nhi-event-v1`                                      |
//! | `id`         | i64, 8 bytes big-endian                                          |
//! | `session_id` | `0x00` for NULL, else `0x01` + i64 BE                            |
//! | `at_us`      | i64 BE                                                           |
//! | `kind`       | u32 BE byte length + UTF-8 bytes                                 |
//! | `direction`  | `0x00` for NULL, else `0x01` + u32 BE length + bytes             |
//! | `size`       | `0x00` for NULL, else `0x01` + i64 BE                            |
//! | `data`       | `0x00` for NULL, else `0x01` + u32 BE length + bytes (JSON text) |
//!
//! Because the id is inside the hash, moving a row (with its hash) to another id is
//! detected, and because each hash includes its predecessor, deleting a row breaks the link
//! of the next one. The `sessions` table is a mutable summary and is not chained: verify
//! cross-checks every session row against its chained `session_start`/`session_end` events.
//!
//! # Segments and seals
//!
//! The journal is cut into segments (see [`segments`]); each is closed by a seal, a compact
//! JWS signed with the host's Ed25519 key ([`key`], [`seal`]) that states the segment's
//! first/last event, event count, last hash, the previous segment's last hash and the
//! SHA-256 of the previous seal. Between seals, the live segment's head is stated by
//! signed checkpoints ([`checkpoint`]) kept outside the live file. [`verify`] checks all
//! of it offline.

pub mod auditor;
pub mod chain;
pub mod config;
pub mod key;
pub mod seal;

use std::path::{Path, PathBuf};

pub use chain::{genesis, ChainEvent, ChainState, Hash, HASH_LEN};
pub use config::{EvidenceProblem, EvidenceSettings, RawEvidence};
pub use key::{HostKey, PublicKey};
pub use seal::{SealPayload, SealReason};

/// Everything that can go wrong with keys, seals and segment files.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// A key, host-id, seal or segment file could not be read, written or renamed.
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The signing key file may be read by others than its owner.
    #[error(
        "signing key {} is readable by group or others (mode {mode:o}); run `chmod 600` on it",
        path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    /// The signing key file does not hold an Ed25519 PKCS#8 key.
    #[error("signing key {} is not an Ed25519 PKCS#8 key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    /// A public key given to `verify` could not be parsed.
    #[error("invalid public key: {reason}")]
    BadPublicKey { reason: String },
    /// Signing a seal failed.
    #[error("cannot sign the seal")]
    Sign {
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// A segment database operation failed.
    #[error("segment {}: {op} failed", path.display())]
    Sqlite {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

impl EvidenceError {
    pub(crate) fn io<'a>(
        op: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| EvidenceError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Lower-case hex of `bytes` ([`crate::hex::encode`]).
pub fn hex(bytes: &[u8]) -> String {
    crate::hex::encode(bytes)
}

/// Parses lower- or upper-case hex of exactly `N` bytes ([`crate::hex::decode`]).
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    crate::hex::decode(s)
}

/// The host's signing key and host id as configured: `[evidence] signing_key` or
/// `<state_dir>/signing.key`, `[evidence] host_id` or `<state_dir>/host-id`. With `create`
/// (the agent at start) missing ones are created; without (`key show`) they must exist.
pub fn host_identity(
    settings: &EvidenceSettings,
    state_dir: &std::path::Path,
    create: bool,
) -> Result<(HostKey, String, PathBuf), EvidenceError> {
    let key_path = settings.signing_key_path(state_dir);
    let host_id_path = state_dir.join("host-id");
    let key = if create {
        HostKey::load_or_create(&key_path)?
    } else {
        HostKey::load(&key_path)?
    };
    let host_id = match &settings.host_id {
        Some(id) => id.clone(),
        None if create => key::load_or_create_host_id(&host_id_path)?,
        None => key::read_host_id(&host_id_path)?,
    };
    Ok((key, host_id, key_path))
}

/// fsync of a directory, so that a rename in it survives a power loss.
pub fn fsync_dir(dir: &Path) -> Result<(), EvidenceError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(EvidenceError::io("cannot fsync directory", dir))
}

/// Writes `bytes` to `path` so that readers see either nothing or all of it: a temporary
/// file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), EvidenceError> {
    crate::atomic::write(path, bytes, 0o666).map_err(|e| EvidenceError::io(e.op, &e.path)(e.source))
}
