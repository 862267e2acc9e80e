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

use super::reader::{EventRow, EventScan, JournalReader, SessionRow};
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

    /// Every session, merged, ordered by start time (then journal id and id). With
    /// `open_totals` false, sessions without an end anywhere have byte totals of 0 rather
    /// than the (costly) sums of their chunks.
    pub fn sessions(&self, open_totals: bool) -> Result<Vec<SetSession>, SetError> {
        // For a session that never got an end, the byte counts of each copy are the sums
        // of the chunks in that file, so the copies add up.
        let mut merged: BTreeMap<(String, SessionId), SetSession> = BTreeMap::new();
        for (info, reader) in &self.files {
            for row in reader.all_sessions(open_totals)? {
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

#[cfg(test)]
pub(crate) mod tests {
    use std::borrow::Cow;
    use std::path::Path;

    use rusqlite::Connection;

    use super::*;
    use crate::journal::tests::{at_us, sample_start};
    use crate::journal::{self, Direction, Event, JournalOptions, SessionEnd, NO_SESSION};

    /// Sessions of the sample journal.
    pub(crate) struct Sample {
        /// Starts before the split, ends after it.
        pub a: SessionId,
        /// Starts after the split.
        pub b: SessionId,
        /// Starts before the split and never ends.
        pub c: SessionId,
        /// The last event id of the first segment.
        pub split: i64,
    }

    async fn chunk(h: &journal::JournalHandle, id: SessionId, dir: Direction, n: u32, us: i64) {
        h.chunk(id, dir, n, at_us(us)).await.expect("chunk");
        h.flush().await.expect("flush");
    }

    /// A journal with sessions a, b, c and a session-less event (see [`Sample`]).
    pub(crate) async fn sample_journal(path: &Path) -> Sample {
        let j = journal::open(path, JournalOptions::default()).expect("open");
        let h = j.handle();
        let a = h
            .start_session(sample_start("backup", "s3", at_us(0)))
            .await
            .expect("start");
        let mut c_start = sample_start("ci-build", "pg", at_us(1_000));
        std::sync::Arc::make_mut(&mut c_start.identity).protocol = "postgres".into();
        let c = h.start_session(c_start).await.expect("start");
        chunk(&h, a, Direction::ClientToServer, 100, 2_000).await;
        chunk(&h, c, Direction::ServerToClient, 7, 3_000).await;
        let split = last_id(path);
        chunk(&h, a, Direction::ServerToClient, 50, 4_000).await;
        chunk(&h, c, Direction::ServerToClient, 5, 4_500).await;
        let b = h
            .start_session(sample_start("ci-deploy", "s3", at_us(5_000)))
            .await
            .expect("start");
        h.record(&[Event {
            session: NO_SESSION,
            at: at_us(5_500),
            kind: Cow::Borrowed("exec"),
            data: r#"{"pid":4321,"exe":"/usr/bin/curl"}"#.into(),
        }])
        .expect("record");
        h.flush().await.expect("flush");
        for (id, us) in [(a, 6_000), (b, 7_000)] {
            h.end_session(SessionEnd {
                id,
                ended_at: at_us(us),
                bytes_from_client: 100,
                bytes_from_server: 50,
                close_reason: "client closed".into(),
            })
            .await
            .expect("end");
        }
        h.flush().await.expect("flush");
        tokio::task::spawn_blocking(move || j.close())
            .await
            .expect("join")
            .expect("close");
        Sample { a, b, c, split }
    }

    fn last_id(path: &Path) -> i64 {
        JournalReader::open(path)
            .expect("reader")
            .last_event_id()
            .expect("last id")
            .expect("some events")
    }

    /// Copies `src` to `dst` as segment `seq` of `journal_id`, keeping the events for which
    /// `keep(id)` holds and the sessions that have a kept event or are open at the split.
    /// Rows of sessions that end in a later segment lose their end, as at a rotation.
    pub(crate) fn segment(
        src: &Path,
        dst: &Path,
        journal_id: &str,
        seq: u64,
        range: std::ops::RangeInclusive<i64>,
    ) {
        std::fs::copy(src, dst).expect("copy");
        let conn = Connection::open(dst).expect("open copy");
        let (lo, hi) = (*range.start(), *range.end());
        conn.execute_batch(
            "DROP TRIGGER events_append_only_delete; DROP TRIGGER events_append_only_update;",
        )
        .expect("drop triggers (a test fixture building a segment)");
        // A session whose end event is in a later segment was still open in this one.
        conn.execute(
            "UPDATE sessions SET ended_at_us = NULL, bytes_from_client = NULL, \
             bytes_from_server = NULL, close_reason = NULL WHERE id IN (SELECT session_id \
             FROM events WHERE kind = 'session_end' AND id > ?1)",
            [hi],
        )
        .expect("reopen sessions");
        conn.execute("DELETE FROM events WHERE id < ?1 OR id > ?2", [lo, hi])
            .expect("delete events");
        conn.execute(
            "DELETE FROM sessions WHERE id NOT IN (SELECT session_id FROM events \
             WHERE session_id IS NOT NULL) AND started_at_us > (SELECT COALESCE(MAX(at_us), 0) \
             FROM events)",
            [],
        )
        .expect("drop sessions that start later");
        for (k, v) in [
            ("journal_id", journal_id.to_string()),
            ("segment_seq", seq.to_string()),
            ("host_id", "host-1".to_string()),
        ] {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [k, &v],
            )
            .expect("meta");
        }
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("checkpoint");
    }

    fn ids(set: &JournalSet, journal_id: &str, id: SessionId) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        set.for_each_session_event(journal_id, id, |e| -> Result<(), JournalError> {
            out.push((e.id, e.kind.as_str().to_string()));
            Ok(())
        })
        .expect("events");
        out
    }

    #[tokio::test]
    async fn segments_merge_into_the_original_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let original = dir.path().join("live.db");
        let s = sample_journal(&original).await;
        let last = last_id(&original);
        let segs = dir.path().join("copied/segments");
        std::fs::create_dir_all(&segs).expect("mkdir");
        let jid = "0123456789abcdef0123456789abcdef";
        segment(&original, &segs.join("0000000001.db"), jid, 1, 1..=s.split);
        segment(
            &original,
            &segs.join("0000000002.db"),
            jid,
            2,
            s.split + 1..=last,
        );
        // The same segment copied twice, and companions that are not inputs.
        std::fs::copy(segs.join("0000000002.db"), dir.path().join("copied/dup.db")).expect("copy");
        for junk in ["x.db-wal", "x.db-shm", "x.db.prelog"] {
            std::fs::write(segs.join(junk), b"junk").expect("write");
        }

        let first = JournalReader::open(&segs.join("0000000001.db")).expect("segment 1");
        let a_in_first = first
            .session(s.a)
            .expect("read")
            .expect("a is in segment 1");
        assert!(
            a_in_first.ended_at.is_none(),
            "segment 1 holds a without its end"
        );
        assert!(first.session(s.b).expect("read").is_none());

        let set = JournalSet::open(&[dir.path().join("copied")]).expect("open set");
        let seqs: Vec<Option<u64>> = set.segments().map(|i| i.segment_seq).collect();
        assert_eq!(
            seqs,
            vec![Some(1), Some(2)],
            "duplicate read once, in order"
        );
        assert!(set.single_journal());

        let reader = JournalReader::open(&original).expect("reader");
        use super::super::reader::SessionFilter;
        let want = reader
            .sessions(&SessionFilter::default())
            .expect("sessions");
        let got = set.sessions(true).expect("merged");
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(&g.row, w, "session {} as in the unsplit journal", w.id);
            assert_eq!(g.journal_id, jid);
            assert_eq!(g.host_id.as_deref(), Some("host-1"));
            assert_eq!(g.session_ref, w.id.to_string());
        }
        let ended = got.iter().find(|g| g.row.id == s.a).expect("a");
        assert!(
            ended.row.ended_at.is_some(),
            "the end from the later segment wins"
        );
        let open = got.iter().find(|g| g.row.id == s.c).expect("c");
        assert_eq!(
            open.row.bytes_from_server, 12,
            "open: chunks of both segments"
        );

        for id in [s.a, s.b, s.c] {
            let want: Vec<(i64, String)> = reader
                .events(id)
                .expect("events")
                .into_iter()
                .map(|e| (e.id, e.kind.as_str().to_string()))
                .collect();
            assert_eq!(ids(&set, jid, id), want, "events of session {id}");
        }
        let mut lineage = Vec::new();
        set.scan_events(
            &EventScan::default(),
            |info, e| -> Result<(), JournalError> {
                if e.session_id.is_none() {
                    lineage.push((info.segment_seq, e.kind.as_str().to_string()));
                }
                Ok(())
            },
        )
        .expect("scan");
        assert_eq!(lineage, vec![(Some(2), "exec".to_string())]);
    }

    #[tokio::test]
    async fn several_journals_get_prefixed_references_and_ambiguity_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (one, two) = (dir.path().join("one.db"), dir.path().join("two.db"));
        let s1 = sample_journal(&one).await;
        sample_journal(&two).await;
        let set = JournalSet::open(&[one.clone(), two.clone()]).expect("open");
        assert!(!set.single_journal());
        let sessions = set.sessions(true).expect("sessions");
        assert_eq!(sessions.len(), 6);
        let jid1 = JournalReader::open(&one)
            .expect("reader")
            .meta("journal_id")
            .expect("meta")
            .expect("id");
        let mine = sessions
            .iter()
            .find(|s| s.journal_id == jid1 && s.row.id == s1.a)
            .expect("session a of one");
        assert_eq!(mine.session_ref, format!("{}:{}", &jid1[..8], s1.a));

        let err = set
            .resolve(&sessions, &s1.a.to_string())
            .expect_err("ambiguous");
        let text = err.to_string();
        assert!(
            text.contains("ambiguous") && text.contains(&mine.session_ref),
            "{text}"
        );
        let found = set.resolve(&sessions, &mine.session_ref).expect("prefixed");
        assert_eq!(
            (found.journal_id.as_str(), found.row.id),
            (jid1.as_str(), s1.a)
        );
        assert!(matches!(
            set.resolve(&sessions, "999"),
            Err(SetError::UnknownSession { .. })
        ));
        assert!(matches!(
            set.resolve(&sessions, "abc"),
            Err(SetError::BadReference { .. })
        ));
        // The same file twice is one journal.
        let same = JournalSet::open(&[one.clone(), one]).expect("open");
        assert!(same.single_journal());
        assert_eq!(same.segments().count(), 1);
    }

    #[test]
    fn missing_input_and_empty_directory_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            JournalSet::open(&[dir.path().join("nope")]),
            Err(SetError::Missing { .. })
        ));
        assert!(matches!(
            JournalSet::open(&[dir.path().to_path_buf()]),
            Err(SetError::NoFiles { .. })
        ));
    }
}
