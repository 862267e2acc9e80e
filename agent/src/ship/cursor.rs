//! The persisted cursor: per journal id, the highest segment shipped without a gap
//! before it (and whose high-water mark was confirmed), plus segments shipped beyond
//! a gap. Written tmp + fsync + rename + fsync(dir), so a crash leaves the old or the
//! new cursor, never a torn one.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::ShipError;

/// The cursor file name in the state directory.
pub const CURSOR_FILE: &str = "ship-cursor.json";

/// Where one journal's shipping stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalCursor {
    /// The highest segment such that it and every segment before it were uploaded and
    /// the high-water mark naming it was confirmed. 0: none yet.
    pub segment_seq: u64,
    /// The sha256 of that segment's seal (hex).
    pub seal_sha256: Option<String>,
    /// Segments uploaded after a gap (seq -> seal sha256): not covered by the
    /// high-water mark, never re-uploaded, never deleted by retention.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub beyond_gap: BTreeMap<u64, String>,
    /// When the cursor last moved (µs since the epoch).
    pub updated_at_us: i64,
    /// The last high-water mark confirmed upstream (the base a checkpoint extends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hwm: Option<super::layout::Hwm>,
}

/// The whole cursor file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// By journal id.
    pub journals: BTreeMap<String, JournalCursor>,
}

impl Cursor {
    /// The cursor path in `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(CURSOR_FILE)
    }

    /// Loads the cursor; a missing file is an empty cursor (nothing shipped).
    pub fn load(path: &Path) -> Result<Cursor, ShipError> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ShipError::BadCursor {
                path: path.to_owned(),
                why: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
            Err(e) => Err(ShipError::Io {
                what: format!("reading {}", path.display()),
                source: e,
            }),
        }
    }

    /// Writes the cursor atomically.
    pub fn store(&self, path: &Path) -> Result<(), ShipError> {
        let io = |what: &str, source| ShipError::Io {
            what: format!("{what} {}", path.display()),
            source,
        };
        let dir = path.parent().unwrap_or_else(|| Path::new("/"));
        fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| ShipError::BadCursor {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        crate::atomic::write(path, &bytes, 0o666).map_err(|e| ShipError::Io {
            what: format!("{} {}", e.op, e.path.display()),
            source: e.source,
        })
    }

    /// Whether segment `seq` of `journal_id` was uploaded (below the mark or beyond a
    /// gap).
    pub fn is_uploaded(&self, journal_id: &str, seq: u64) -> bool {
        self.journals
            .get(journal_id)
            .is_some_and(|j| seq <= j.segment_seq || j.beyond_gap.contains_key(&seq))
    }

    /// Whether segment `seq` is covered by a confirmed high-water mark (contiguous).
    pub fn is_covered(&self, journal_id: &str, seq: u64) -> bool {
        self.journals
            .get(journal_id)
            .is_some_and(|j| seq <= j.segment_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = Cursor::path(dir.path());
        assert_eq!(Cursor::load(&path).unwrap(), Cursor::default());
        let mut c = Cursor::default();
        c.journals.insert(
            "j".into(),
            JournalCursor {
                segment_seq: 4,
                seal_sha256: Some("ab".into()),
                beyond_gap: [(6, "cd".to_owned())].into(),
                updated_at_us: 5,
                hwm: None,
            },
        );
        c.store(&path).unwrap();
        assert_eq!(Cursor::load(&path).unwrap(), c);
        assert!(!path.with_extension("json.tmp").exists());
        assert!(c.is_uploaded("j", 4) && c.is_uploaded("j", 6));
        assert!(!c.is_uploaded("j", 5) && !c.is_uploaded("other", 1));
        assert!(c.is_covered("j", 3) && !c.is_covered("j", 6));
    }

    #[test]
    fn store_replaces_and_ignores_stale_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let path = Cursor::path(dir.path());
        // A crash while writing leaves a torn tmp file: the cursor itself is intact.
        fs::write(path.with_extension("json.tmp"), "{\"journ").unwrap();
        let mut c = Cursor::default();
        c.journals.entry("j".into()).or_default().segment_seq = 1;
        c.store(&path).unwrap();
        c.journals.entry("j".into()).or_default().segment_seq = 2;
        c.store(&path).unwrap();
        assert_eq!(Cursor::load(&path).unwrap().journals["j"].segment_seq, 2);
        fs::write(&path, "not json").unwrap();
        assert!(matches!(
            Cursor::load(&path),
            Err(ShipError::BadCursor { .. })
        ));
    }
}
