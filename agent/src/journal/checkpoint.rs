//! Checkpoints of the live segment: a signed statement of the chain head (last event id
//! and hash, segment, time) written at least every `[evidence] checkpoint_interval`
//! while the head moves, at each rotation, at start and at a clean stop. Between two
//! seals they are what makes a truncated or deleted live file detectable.
//!
//! A checkpoint is a compact JWS (EdDSA, host key, `typ: nhi-checkpoint+jwt`) over
//! [`CheckpointPayload`], stored as `segments/<seq>.checkpoint` (10-digit seq, like the
//! segment files): one file per segment, holding that segment's latest checkpoint,
//! replaced atomically (temporary file, fsync, rename, fsync of the directory). The file
//! lives apart from the live SQLite file, so truncating or deleting the live file leaves
//! it in place.
//!
//! Architecture invariant: a checkpoint file is only ever replaced by a checkpoint that
//! extends it: same journal and segment, a head at or after the old one, and the old
//! head's event still in the live file with the old hash. If the live file no longer
//! extends its checkpoint (it was truncated, deleted, or replaced), the agent keeps the
//! old checkpoint as evidence, says so in its log, and (at start) seals the damaged live
//! file and continues in a new segment. `verify` then reports the damage.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::evidence::key::{HostKey, PublicKey};
use crate::evidence::seal::{self, SealInvalid};
use crate::evidence::EvidenceError;

/// The JWS `typ` of a checkpoint.
pub const CHECKPOINT_TYP: &str = "nhi-checkpoint+jwt";

/// The file extension of checkpoints in `segments/`.
pub const EXTENSION: &str = "checkpoint";

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointReason {
    /// `checkpoint_interval` elapsed and the head moved.
    Interval,
    /// A new live segment began.
    Rotation,
    /// The agent started.
    Startup,
    /// The agent stopped cleanly.
    Shutdown,
}

/// What a checkpoint states (the segment contract's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointPayload {
    pub v: u32,
    pub host_id: String,
    pub journal_id: String,
    pub segment_seq: u64,
    /// Numbers checkpoints across the journal: 1, 2, ... (never reused by one host).
    pub n: u64,
    /// The head: the segment's last event, `None` while it has none.
    pub last_event_id: Option<i64>,
    /// Hex hash of that event (the segment's `chain_prev_hash` while it has none).
    pub last_hash: String,
    /// When the checkpoint was taken, µs since the epoch.
    pub at_us: i64,
    pub reason: CheckpointReason,
}

/// `segments/<seq>.checkpoint` of the journal whose live file is `journal`.
pub fn path_for(journal: &Path, seq: u64) -> PathBuf {
    super::segments::segments_dir(journal).join(format!("{seq:010}.{EXTENSION}"))
}

/// Signs `payload` with `key` (the exact bytes of a `.checkpoint` file).
pub fn sign(payload: &CheckpointPayload, key: &HostKey) -> Result<String, EvidenceError> {
    seal::sign_typed(payload, key, CHECKPOINT_TYP)
}

/// Checks a checkpoint's signature and type with `key` and returns its payload.
pub fn verify(jws: &str, key: &PublicKey) -> Result<CheckpointPayload, SealInvalid> {
    seal::verify_typed(jws, key, CHECKPOINT_TYP)
}

/// A checkpoint's payload without checking its signature (the agent reading its own
/// files, the shipper; judging signatures is `verify`'s job).
pub fn peek(jws: &str) -> Option<CheckpointPayload> {
    use base64::Engine as _;
    let payload = jws.trim().split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Reads the checkpoint file of segment `seq` (`None`: there is none).
pub fn read(journal: &Path, seq: u64) -> Result<Option<String>, EvidenceError> {
    let path = path_for(journal, seq);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim_end().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EvidenceError::Io {
            op: "cannot read",
            path,
            source: e,
        }),
    }
}

/// The highest checkpoint number among the checkpoint files next to `journal` (0: none),
/// so numbering goes on after a restart.
pub fn highest_n(journal: &Path) -> u64 {
    std::fs::read_dir(super::segments::segments_dir(journal))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == EXTENSION))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| peek(&text))
        .map(|p| p.n)
        .max()
        .unwrap_or(0)
}

/// Every checkpoint file under the given directories (recursively), and the given
/// paths that are checkpoint files themselves.
pub fn collect(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == EXTENSION) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out);
        } else if p.extension().is_some_and(|e| e == EXTENSION) {
            out.push(p.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: u64) -> CheckpointPayload {
        CheckpointPayload {
            v: 1,
            host_id: "h".into(),
            journal_id: "j".into(),
            segment_seq: 2,
            n,
            last_event_id: Some(41),
            last_hash: "ab".repeat(32),
            at_us: 5,
            reason: CheckpointReason::Interval,
        }
    }

    #[test]
    fn a_checkpoint_verifies_with_its_key_only_and_is_not_a_seal() {
        let key = HostKey::generate().unwrap();
        let jws = sign(&payload(3), &key).unwrap();
        assert_eq!(verify(&jws, &key.public()).unwrap(), payload(3));
        assert_eq!(peek(&jws), Some(payload(3)));
        let other = HostKey::generate().unwrap();
        assert_eq!(verify(&jws, &other.public()), Err(SealInvalid::Signature));
        // A checkpoint cannot pass for a seal, nor a seal for a checkpoint.
        assert!(matches!(
            seal::verify(&jws, &key.public()),
            Err(SealInvalid::Format(_))
        ));
        let json = serde_json::to_value(payload(1)).unwrap();
        for k in [
            "v",
            "host_id",
            "journal_id",
            "segment_seq",
            "n",
            "last_event_id",
            "last_hash",
            "at_us",
            "reason",
        ] {
            assert!(json.get(k).is_some(), "{k}");
        }
    }

    #[test]
    fn numbering_continues_after_the_highest_file() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal.db");
        assert_eq!(highest_n(&journal), 0);
        let key = HostKey::generate().unwrap();
        std::fs::create_dir_all(super::super::segments::segments_dir(&journal)).unwrap();
        for (seq, n) in [(1, 7), (2, 9)] {
            let mut p = payload(n);
            p.segment_seq = seq;
            std::fs::write(path_for(&journal, seq), sign(&p, &key).unwrap()).unwrap();
        }
        std::fs::write(path_for(&journal, 3), "garbage").unwrap();
        assert_eq!(highest_n(&journal), 9);
        assert_eq!(collect(&[dir.path().to_path_buf()]).len(), 3);
    }
}
