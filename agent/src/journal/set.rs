//! Many journal files read as one, for forensics on files copied from hosts.
//!
//! The inputs are files and directories (every `*.db` below a directory, recursively; the
//! `-wal`, `-shm` and `.prelog` companions are never inputs themselves). Each file is a
//! complete journal database: a live journal or a segment (see the segment contract in
//! ARCHITECTURE.md). The files are merged by these rules:
//! - a file is identified by `(meta.journal_id, meta.segment_seq)`; the same pair seen twice
//!   (a live file and its copy, a segment copied twice) is read once: the copy with the
//!   larger last event id (the later copy; the first given on a tie);
//! - within a journal the files are read in segment order (a file without `segment_seq`,
//!   such as a journal written before segments existed, last);
//! - sessions are keyed by `(journal_id, session id)`: of the copies of one session (a
//!   session open at a rotation is copied into the next segment), the row with an end
//!   wins, then the later segment; the events of a session are the concatenation of its
//!   events in segment order;
//! - events without a session (agent-level, process lineage) are kept.
//!
//! Session references shown to people are the plain id when every input belongs to one
//! journal, otherwise `<first 8 characters of journal_id>:<id>`; [`JournalSet::resolve`]
//! accepts both forms.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::reader::{EventRow, EventScan, JournalReader, SessionFilter, SessionRow};
use super::{JournalError, SessionId};

/// How many characters of the journal id prefix a session reference.
pub const JOURNAL_PREFIX_LEN: usize = 8;

/// Everything that can go wrong when reading a set of journals.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    /// One file of the set could not be read.
    #[error(transparent)]
    Journal(#[from] JournalError),

    /// A directory given as input could not be listed.
    #[error("cannot list directory {}", path.display())]
    ListDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An input path does not exist.
    #[error("{} does not exist", path.display())]
    Missing { path: PathBuf },

    /// The inputs hold no journal file at all.
    #[error("no journal files (*.db) found in {inputs}")]
    NoFiles { inputs: String },

    /// A session reference that is not `ID` nor `JOURNAL:ID`.
    #[error("{reference:?} is not a session reference (expected ID or JOURNAL_ID_PREFIX:ID)")]
    BadReference { reference: String },

    /// No session matches the reference.
    #[error("no session {reference} in the given journals")]
    UnknownSession { reference: String },

    /// More than one session matches the reference.
    #[error("session {reference} is ambiguous: it could be {}", candidates.join(", "))]
    Ambiguous {
        reference: String,
        candidates: Vec<String>,
    },
}

/// One file of the set, with what its `meta` table says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub journal_id: String,
    pub host_id: Option<String>,
    pub segment_seq: Option<u64>,
    pub last_event_id: Option<i64>,
}

/// A session of the set: the stored row (serialized flat, with the keys `sessions --json`
/// always had) plus where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetSession {
    #[serde(flatten)]
    pub row: SessionRow,
    pub journal_id: String,
    pub host_id: Option<String>,
    /// The reference to show and to give to `replay`: `ID` or `PREFIX:ID`.
    pub session_ref: String,
}

/// Several journal files read as one; see the module documentation for the merge rules.
#[derive(Debug)]
pub struct JournalSet {
    /// In reading order: by journal id, then segment order.
    files: Vec<(SegmentInfo, JournalReader)>,
    single_journal: bool,
}

/// Expands the inputs: files as given, directories to every `*.db` below them (sorted).
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, SetError> {
    let mut out = Vec::new();
    for input in inputs {
        match std::fs::metadata(input) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SetError::Missing {
                    path: input.clone(),
                })
            }
            Ok(meta) if meta.is_dir() => walk_dir(input, &mut out)?,
            // A file, or something whose problem the reader reports with its reason.
            _ => out.push(input.clone()),
        }
    }
    Ok(out)
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SetError> {
    let list_err = |source| SetError::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(list_err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(list_err)?;
    entries.sort();
    for path in entries {
        // `symlink_metadata`: a link loop below a copied directory must not hang us.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk_dir(&path, out)?;
        } else if meta.is_file() && path.extension().is_some_and(|e| e == "db") {
            out.push(path);
        }
    }
    Ok(())
}

impl JournalSet {
    /// Opens every journal file of `inputs` (files and directories) read-only.
    pub fn open(inputs: &[PathBuf]) -> Result<Self, SetError> {
        let paths = expand_inputs(inputs)?;
        if paths.is_empty() {
            return Err(SetError::NoFiles {
                inputs: inputs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let mut by_key: BTreeMap<(String, Option<u64>), (SegmentInfo, JournalReader)> =
            BTreeMap::new();
        for path in paths {
            let reader = JournalReader::open(&path)?;
            let journal_id = reader.meta("journal_id")?.unwrap_or_default();
            let host_id = reader.meta("host_id")?;
            let segment_seq = reader
                .meta("segment_seq")?
                .and_then(|s| s.trim().parse::<u64>().ok());
            let last_event_id = reader.last_event_id()?;
            let info = SegmentInfo {
                path,
                journal_id,
                host_id,
                segment_seq,
                last_event_id,
            };
            let key = (info.journal_id.clone(), info.segment_seq);
            match by_key.get(&key) {
                Some((kept, _)) if kept.last_event_id >= info.last_event_id => {
                    tracing::debug!(
                        kept = %kept.path.display(),
                        skipped = %info.path.display(),
                        "same journal segment given twice; reading it once"
                    );
                }
                _ => {
                    by_key.insert(key, (info, reader));
                }
            }
        }
        let mut files: Vec<(SegmentInfo, JournalReader)> = by_key.into_values().collect();
        // BTreeMap orders `None` first; a file without a segment number is the newest.
        files.sort_by(|(a, _), (b, _)| {
            (&a.journal_id, a.segment_seq.is_none(), a.segment_seq).cmp(&(
                &b.journal_id,
                b.segment_seq.is_none(),
                b.segment_seq,
            ))
        });
        let journals: BTreeSet<&str> = files.iter().map(|(i, _)| i.journal_id.as_str()).collect();
        let single_journal = journals.len() <= 1;
        Ok(JournalSet {
            files,
            single_journal,
        })
    }

    /// The files read, in reading order (duplicates already left out).
    pub fn segments(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.files.iter().map(|(info, _)| info)
    }

    /// Whether every file belongs to one journal (references are then plain ids).
    pub fn single_journal(&self) -> bool {
        self.single_journal
    }

    /// The reference shown for a session of `journal_id`.
    pub fn session_ref(&self, journal_id: &str, id: SessionId) -> String {
        if self.single_journal {
            id.to_string()
        } else {
            format!("{}:{id}", journal_prefix(journal_id))
        }
    }

    /// The host id recorded in a journal's files, if any file has one.
    pub fn host_id(&self, journal_id: &str) -> Option<&str> {
        self.files
            .iter()
            .filter(|(i, _)| i.journal_id == journal_id)
            .find_map(|(i, _)| i.host_id.as_deref())
    }

    /// Every session, merged, ordered by start time (then journal id and id).
    pub fn sessions(&self) -> Result<Vec<SetSession>, SetError> {
        // For a session that never got an end, the byte counts of each copy are the sums
        // of the chunks in that file, so the copies add up.
        let mut merged: BTreeMap<(String, SessionId), SetSession> = BTreeMap::new();
        for (info, reader) in &self.files {
            for row in reader.sessions(&SessionFilter::default())? {
                let key = (info.journal_id.clone(), row.id);
                match merged.get_mut(&key) {
                    Some(kept) => {
                        let both_open = kept.row.ended_at.is_none() && row.ended_at.is_none();
                        if row.ended_at.is_some() || kept.row.ended_at.is_none() {
                            let mut row = row;
                            if both_open {
                                row.bytes_from_client = row
                                    .bytes_from_client
                                    .saturating_add(kept.row.bytes_from_client);
                                row.bytes_from_server = row
                                    .bytes_from_server
                                    .saturating_add(kept.row.bytes_from_server);
                            }
                            kept.row = row;
                        }
                    }
                    None => {
                        let session_ref = self.session_ref(&info.journal_id, row.id);
                        merged.insert(
                            key,
                            SetSession {
                                row,
                                journal_id: info.journal_id.clone(),
                                host_id: self.host_id(&info.journal_id).map(str::to_owned),
                                session_ref,
                            },
                        );
                    }
                }
            }
        }
        let mut sessions: Vec<SetSession> = merged.into_values().collect();
        sessions.sort_by(|a, b| {
            (a.row.started_at, &a.journal_id, a.row.id).cmp(&(
                b.row.started_at,
                &b.journal_id,
                b.row.id,
            ))
        });
        Ok(sessions)
    }

    /// Finds the session `reference` (`ID` or `PREFIX:ID`) names among `sessions`.
    pub fn resolve<'s>(
        &self,
        sessions: &'s [SetSession],
        reference: &str,
    ) -> Result<&'s SetSession, SetError> {
        let bad = || SetError::BadReference {
            reference: reference.to_string(),
        };
        let (prefix, id) = match reference.rsplit_once(':') {
            Some((prefix, id)) => (Some(prefix.to_ascii_lowercase()), id),
            None => (None, reference),
        };
        let id: SessionId = id.trim().parse().map_err(|_| bad())?;
        let candidates: Vec<&SetSession> = sessions
            .iter()
            .filter(|s| s.row.id == id)
            .filter(|s| {
                prefix
                    .as_deref()
                    .is_none_or(|p| s.journal_id.to_ascii_lowercase().starts_with(p))
            })
            .collect();
        match candidates.as_slice() {
            [] => Err(SetError::UnknownSession {
                reference: reference.to_string(),
            }),
            [one] => Ok(one),
            many => Err(SetError::Ambiguous {
                reference: reference.to_string(),
                candidates: many
                    .iter()
                    .map(|s| format!("{}:{}", journal_prefix(&s.journal_id), s.row.id))
                    .collect(),
            }),
        }
    }

    /// Streams the events of one session, in journal order across its segments.
    pub fn for_each_session_event<E: From<JournalError>>(
        &self,
        journal_id: &str,
        session: SessionId,
        mut f: impl FnMut(EventRow) -> Result<(), E>,
    ) -> Result<(), E> {
        for (info, reader) in &self.files {
            if info.journal_id == journal_id {
                reader.for_each_event(session, &mut f)?;
            }
        }
        Ok(())
    }

    /// Streams the events that pass `scan` from every file, in reading order, with the
    /// file they come from.
    pub fn scan_events<'s, E: From<JournalError>>(
        &'s self,
        scan: &EventScan,
        mut f: impl FnMut(&'s SegmentInfo, EventRow) -> Result<(), E>,
    ) -> Result<(), E> {
        for (info, reader) in &self.files {
            reader.scan_events(scan, |event| f(info, event))?;
        }
        Ok(())
    }
}

/// The first [`JOURNAL_PREFIX_LEN`] characters of a journal id.
pub fn journal_prefix(journal_id: &str) -> &str {
    match journal_id.char_indices().nth(JOURNAL_PREFIX_LEN) {
        Some((i, _)) => &journal_id[..i],
        None => journal_id,
    }
}
