//! State that survives a restart: small JSON files in `[agent] state_dir` that hold what
//! the agent would otherwise only keep in memory (approval grants, attestation bindings,
//! the attestation replay cache).
//!
//! Each file is an envelope `{"format": "nhi-agent-state", "kind": K, "v": 1,
//! "saved_at_us": T, "data": {...}}`, written atomically (a temporary file created 0600,
//! fsync, rename, fsync of the directory): a crash leaves the old or the new file, never
//! a torn one. Loading validates the envelope, the owner and mode (a file that someone
//! other than the agent's user could have written is refused: it could carry forged
//! grants) and the data; a file that fails is moved aside as `<name>.invalid-<unix
//! secs>` (kept for forensics, never overwritten) and reported as [`Loaded::Invalid`].
//! What the agent then does is the owner's decision (see `approvals` and `attest`).
//!
//! Every load that found a file is journaled as one `state_restored` event per kind
//! (see [`restored_event`]), with counts; secrets never are (tokens are stored and
//! journaled as SHA-256 digests).
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The envelope's `format`.
pub const FORMAT: &str = "nhi-agent-state";
/// The envelope's version.
pub const VERSION: u32 = 1;
/// The journal event kind of a restoration.
pub const RESTORED_KIND: &str = "state_restored";

/// Why a state file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Creating, writing, syncing or renaming failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state could not be encoded (never happens for the agent's types).
    #[error("encoding {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What loading a state file found.
#[derive(Debug)]
pub enum Loaded<T> {
    /// No file: a first start (or the state was removed by hand).
    Missing,
    /// A valid file.
    Found(T),
    /// A file that is not valid state: why, and where it was moved (`None` when it could
    /// not be moved; it is then left in place and will be overwritten at the next save).
    Invalid {
        reason: String,
        moved_to: Option<PathBuf>,
    },
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    format: &'static str,
    kind: &'a str,
    v: u32,
    saved_at_us: i64,
    data: &'a T,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn {
    format: String,
    kind: String,
    v: u32,
    #[allow(dead_code)]
    saved_at_us: i64,
    data: serde_json::Value,
}

/// One state file of one kind.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    kind: &'static str,
}

impl StateFile {
    /// The file `name` in `state_dir`, holding state of `kind`.
    pub fn new(state_dir: &Path, name: &str, kind: &'static str) -> StateFile {
        StateFile {
            path: state_dir.join(name),
            kind,
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kind it holds (also the `kind` of its `state_restored` event).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Reads and validates the file. `validate` checks what serde cannot (dates, ids);
    /// its error makes the whole file invalid.
    pub fn load<T: DeserializeOwned>(
        &self,
        validate: impl FnOnce(&T) -> Result<(), String>,
    ) -> Loaded<T> {
        let reason = match self.read(validate) {
            Ok(Some(state)) => return Loaded::Found(state),
            Ok(None) => return Loaded::Missing,
            Err(reason) => reason,
        };
        let moved_to = self.move_aside();
        Loaded::Invalid { reason, moved_to }
    }

    fn read<T: DeserializeOwned>(
        &self,
        validate: impl FnOnce(&T) -> Result<(), String>,
    ) -> Result<Option<T>, String> {
        let meta = match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot inspect it: {e}")),
        };
        if !meta.file_type().is_file() {
            return Err("not a regular file".to_string());
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(format!(
                "owned by uid {}, not by the agent's uid {euid}",
                meta.uid()
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!(
                "writable by group or others (mode {:o})",
                meta.mode() & 0o777
            ));
        }
        let bytes = std::fs::read(&self.path).map_err(|e| format!("cannot read it: {e}"))?;
        let envelope: EnvelopeIn =
            serde_json::from_slice(&bytes).map_err(|e| format!("not a state file: {e}"))?;
        if envelope.format != FORMAT {
            return Err(format!("format is {:?}, not {FORMAT:?}", envelope.format));
        }
        if envelope.kind != self.kind {
            return Err(format!(
                "holds {:?} state, not {:?}",
                envelope.kind, self.kind
            ));
        }
        if envelope.v != VERSION {
            return Err(format!("version {} is not supported", envelope.v));
        }
        let state: T = serde_json::from_value(envelope.data)
            .map_err(|e| format!("invalid {} data: {e}", self.kind))?;
        validate(&state)?;
        Ok(Some(state))
    }

    fn move_aside(&self) -> Option<PathBuf> {
        let secs = unix_secs(SystemTime::now());
        let name = self.path.file_name()?.to_string_lossy().into_owned();
        let target = self.path.with_file_name(format!("{name}.invalid-{secs}"));
        if target.exists() {
            return None;
        }
        std::fs::rename(&self.path, &target).ok()?;
        Some(target)
    }

    /// Replaces the file with `data`, atomically, mode 0600.
    pub fn store<T: Serialize>(&self, data: &T) -> Result<(), StateError> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { op, path, source }
        };
        let dir = self.path.parent().unwrap_or_else(|| Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
        let bytes = serde_json::to_vec_pretty(&EnvelopeOut {
            format: FORMAT,
            kind: self.kind,
            v: VERSION,
            saved_at_us: crate::journal::system_time_to_us(SystemTime::now()),
            data,
        })
        .map_err(|source| StateError::Encode {
            path: self.path.clone(),
            source,
        })?;
        crate::atomic::write(&self.path, &bytes, 0o600).map_err(|e| io(e.op, &e.path)(e.source))
    }
}

/// Seconds since the epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How a restoration went, for the log and the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The file was read; `restored` entries are in force again.
    Restored,
    /// No file (nothing is journaled for it).
    Missing,
    /// The file was refused (see `reason`).
    Invalid,
}

/// What one kind's restoration did.
#[derive(Debug, Clone, Serialize)]
pub struct Restoration {
    /// `approval_grants`, `attest_bindings`, `attest_replay`.
    pub kind: &'static str,
    pub file: PathBuf,
    pub outcome: Outcome,
    /// Entries in force again.
    pub restored: usize,
    /// Entries dropped because they expired (or their cgroup is gone) while the agent
    /// was down.
    pub dropped: usize,
    /// Why the file was refused, and where it was moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<PathBuf>,
    /// What the agent does instead (for an invalid file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<&'static str>,
    /// Kind-specific details (ids of restored grants, ...).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl Restoration {
    /// A restoration of `file` with no entries yet.
    pub fn new(file: &StateFile, outcome: Outcome) -> Restoration {
        Restoration {
            kind: file.kind(),
            file: file.path().to_path_buf(),
            outcome,
            restored: 0,
            dropped: 0,
            reason: None,
            moved_to: None,
            fallback: None,
            detail: serde_json::Value::Null,
        }
    }

    /// For an invalid file: what was found and what the agent does instead.
    pub fn invalid(
        file: &StateFile,
        reason: String,
        moved_to: Option<PathBuf>,
        fallback: &'static str,
    ) -> Restoration {
        Restoration {
            reason: Some(reason),
            moved_to,
            fallback: Some(fallback),
            ..Restoration::new(file, Outcome::Invalid)
        }
    }

    /// Logs it (an invalid file as an error).
    pub fn log(&self) {
        match self.outcome {
            Outcome::Missing => {}
            Outcome::Restored => tracing::info!(
                kind = self.kind,
                file = %self.file.display(),
                restored = self.restored,
                dropped = self.dropped,
                "state restored"
            ),
            Outcome::Invalid => tracing::error!(
                kind = self.kind,
                file = %self.file.display(),
                reason = self.reason.as_deref().unwrap_or(""),
                moved_to = ?self.moved_to,
                fallback = self.fallback.unwrap_or(""),
                "state file refused"
            ),
        }
    }
}

/// The `state_restored` event of a restoration (`None` for a missing file).
pub fn restored_event(r: &Restoration) -> Option<crate::journal::Event> {
    if r.outcome == Outcome::Missing {
        return None;
    }
    Some(crate::journal::Event {
        session: crate::journal::NO_SESSION,
        at: SystemTime::now(),
        kind: RESTORED_KIND.into(),
        data: serde_json::to_string(r).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Demo {
        n: u32,
    }

    fn ok(_: &Demo) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn a_stored_file_loads_back_and_is_0600() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path(), "demo.json", "demo");
        assert!(matches!(file.load::<Demo>(ok), Loaded::Missing));
        file.store(&Demo { n: 7 }).unwrap();
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("demo.json.tmp").exists());
        match file.load::<Demo>(ok) {
            Loaded::Found(d) => assert_eq!(d, Demo { n: 7 }),
            other => panic!("{other:?}"),
        }
        // A torn temporary file from a crash does not matter.
        std::fs::write(dir.path().join("demo.json.tmp"), "{\"form").unwrap();
        file.store(&Demo { n: 8 }).unwrap();
        assert!(matches!(
            file.load::<Demo>(ok),
            Loaded::Found(Demo { n: 8 })
        ));
    }

    #[test]
    fn invalid_files_are_refused_with_a_reason_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path(), "demo.json", "demo");
        type Make<'a> = Box<dyn Fn() + 'a>;
        let cases: Vec<(&str, Make)> = vec![
            (
                "not a state file",
                Box::new(|| std::fs::write(dir.path().join("demo.json"), "{\"n\":").unwrap()),
            ),
            (
                "holds \"other\" state",
                Box::new(|| {
                    StateFile::new(dir.path(), "demo.json", "other")
                        .store(&Demo { n: 1 })
                        .unwrap()
                }),
            ),
            (
                "invalid demo data",
                Box::new(|| {
                    StateFile::new(dir.path(), "demo.json", "demo")
                        .store(&serde_json::json!({"n": "x"}))
                        .unwrap()
                }),
            ),
            (
                "writable by group or others",
                Box::new(|| {
                    let f = StateFile::new(dir.path(), "demo.json", "demo");
                    f.store(&Demo { n: 1 }).unwrap();
                    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o666))
                        .unwrap();
                }),
            ),
        ];
        for (i, (want, make)) in cases.iter().enumerate() {
            make();
            match file.load::<Demo>(ok) {
                Loaded::Invalid { reason, moved_to } => {
                    assert!(reason.contains(want), "case {i}: {reason}");
                    let moved = moved_to.expect("moved aside");
                    assert!(moved.exists());
                    assert!(!file.path().exists());
                    // Kept for forensics; the next case gets a fresh name.
                    std::fs::rename(&moved, dir.path().join(format!("kept-{i}"))).unwrap();
                }
                other => panic!("case {i}: {other:?}"),
            }
        }
        // The validator's verdict counts too.
        file.store(&Demo { n: 3 }).unwrap();
        match file.load::<Demo>(|d| Err(format!("n = {} is odd", d.n))) {
            Loaded::Invalid { reason, .. } => assert_eq!(reason, "n = 3 is odd"),
            other => panic!("{other:?}"),
        }
    }
}
