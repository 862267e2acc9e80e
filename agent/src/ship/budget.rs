//! The disk budget: how much the journal directory uses, and a flag the proxy reads
//! before it opens a session.
use std::{
    fs, io,
    path::Path,
    sync::{Arc, Mutex},
};

/// A shared "over budget" flag. Cloning shares it. The default never trips.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    state: Arc<Mutex<Option<String>>>,
}

/// What an [`Budget::update`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Nothing: still within, or still over.
    Unchanged,
    /// Went over the budget (the message is what the proxy will say).
    Exceeded(String),
    /// Came back within.
    Recovered,
}

impl Budget {
    /// A budget that is not exceeded.
    pub fn new() -> Budget {
        Budget::default()
    }

    /// `Some(reason)` while the journal directory is over budget: new sessions must be
    /// refused with this reason.
    pub fn exceeded(&self) -> Option<String> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a measurement of `used` bytes against `limit` (`None`: no budget).
    pub fn update(&self, used: u64, limit: Option<u64>) -> Transition {
        crate::metrics::get().disk(used, limit);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let over = limit.filter(|&l| used > l).map(|l| {
            format!(
                "the journal directory uses {} of its {} disk budget ([retention] disk_budget): \
                 new sessions are refused until segments are shipped and deleted",
                human(used),
                human(l)
            )
        });
        let transition = match (&*state, &over) {
            (None, Some(msg)) => Transition::Exceeded(msg.clone()),
            (Some(_), None) => Transition::Recovered,
            _ => Transition::Unchanged,
        };
        *state = over;
        transition
    }
}

/// Bytes in `human` form ("1.5 GiB").
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The bytes used by the files under `dir`, recursively (symlinks are not followed;
/// files that vanish while walking are skipped). The journal's directory holds the
/// live file, its pre-log and WAL, and `segments/`.
pub fn dir_usage(dir: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound && d != dir => continue,
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_and_transitions() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("journal.db"), vec![0u8; 1000]).unwrap();
        fs::write(dir.path().join("journal.db-wal"), vec![0u8; 24]).unwrap();
        fs::create_dir(dir.path().join("segments")).unwrap();
        fs::write(dir.path().join("segments/0000000001.db"), vec![0u8; 2000]).unwrap();
        let used = dir_usage(dir.path()).unwrap();
        assert_eq!(used, 3024);

        let b = Budget::new();
        assert_eq!(b.exceeded(), None);
        assert_eq!(b.update(used, None), Transition::Unchanged);
        assert!(
            matches!(b.update(used, Some(3000)), Transition::Exceeded(m) if m.contains("disk budget"))
        );
        assert!(b.clone().exceeded().is_some(), "clones share the flag");
        assert_eq!(b.update(used, Some(3000)), Transition::Unchanged);
        assert_eq!(b.update(used, Some(3024)), Transition::Recovered);
        assert_eq!(b.exceeded(), None);
        assert!(dir_usage(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(10 << 30), "10.0 GiB");
    }
}
