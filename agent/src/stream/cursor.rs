//! A stream's cursor: the journal and the id of the last event the sink acknowledged
//! (or that the stream's filters left out). `<state_dir>/streams/<name>.json`, written
//! atomically (tmp + fsync + rename + fsync(dir)): a crash leaves the old or the new
//! cursor, and the events after it are sent again (at least once).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The directory of the cursors in the state directory.
pub const CURSOR_DIR: &str = "streams";

/// Where one stream stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCursor {
    /// The journal the events come from (`meta.journal_id`).
    pub journal_id: String,
    /// The last event done with; the next one sent has a larger id.
    pub event_id: i64,
    /// When it last moved (µs since the epoch).
    pub updated_at_us: i64,
}

/// The cursor file of stream `name`.
pub fn path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(CURSOR_DIR).join(format!("{name}.json"))
}

impl StreamCursor {
    /// Loads a cursor; `None` when there is none yet (a new stream). A cursor that cannot
    /// be read is an error naming the file, never a silent restart from the beginning.
    pub fn load(path: &Path) -> Result<Option<StreamCursor>, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                format!(
                    "stream cursor {} is not valid ({e}); move it away to send everything again",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read stream cursor {}: {e}", path.display())),
        }
    }

    /// Writes the cursor atomically (creating its directory).
    pub fn store(&self, path: &Path) -> Result<(), String> {
        let dir = path.parent().unwrap_or_else(|| Path::new("/"));
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        crate::evidence::write_atomically(path, &bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_missing_and_damaged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path(), "siem");
        assert_eq!(p, dir.path().join("streams/siem.json"));
        assert_eq!(StreamCursor::load(&p).expect("missing is fine"), None);
        let c = StreamCursor {
            journal_id: "j-1".into(),
            event_id: 42,
            updated_at_us: 7,
        };
        c.store(&p).expect("store");
        assert_eq!(StreamCursor::load(&p).expect("load"), Some(c.clone()));
        let moved = StreamCursor { event_id: 43, ..c };
        moved.store(&p).expect("store again");
        assert_eq!(
            StreamCursor::load(&p).expect("load").map(|c| c.event_id),
            Some(43)
        );
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().expect("dir"))
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, ["siem.json"], "no temporary file left");
        std::fs::write(&p, "{\"journal_id\": ").expect("damage");
        let err = StreamCursor::load(&p).expect_err("damaged");
        assert!(err.contains("not valid"), "{err}");
    }
}
