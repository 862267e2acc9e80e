//! Reading the journal after a cursor, across rotation: the journal is the spool.
//!
//! Event ids continue across the segments of one journal (see the segment contract in
//! ARCHITECTURE.md), so a cursor is a journal id and an event id. The next events are in
//! the live file when its first event id (`meta.segment_first_event_id`) is not after the
//! cursor, else in the first sealed segment (`segments/<seq>.db`) whose last event is
//! after it. Each read opens its files read-only and closes them again: a stream never
//! holds the live file, never writes, and never waits for the writer.
//!
//! The live file's meta and its events are read on one connection, so a rotation
//! between two reads cannot pair the new live file's meta with the old one's events.
use std::collections::HashMap;
use std::path::Path;

use crate::journal::segments::list_segments;
use crate::journal::{EventRow, JournalError, JournalReader, SegmentInfo, SetSession};

/// One event read, with the file it comes from and its session.
#[derive(Debug, Clone)]
pub struct Item {
    pub segment: std::sync::Arc<SegmentInfo>,
    pub session: Option<std::sync::Arc<SetSession>>,
    pub event: EventRow,
}

/// The events after a cursor.
#[derive(Debug)]
pub struct Batch {
    /// The journal read (the live file's `journal_id`).
    pub journal_id: String,
    /// Up to the limit, in id order.
    pub items: Vec<Item>,
    /// Ids after the cursor and before the first event read that no file holds any more
    /// (deleted by retention, or a file removed by hand): `(first, last)`.
    pub missing: Option<(i64, i64)>,
}

/// Reads up to `limit` events of the journal whose live file is `journal` with an id
/// above `after` (`after` counts in journal `journal_id`; another journal id, or none,
/// reads the live journal from its oldest event on).
pub fn read_after(
    journal: &Path,
    journal_id: Option<&str>,
    after: i64,
    limit: usize,
) -> Result<Batch, JournalError> {
    let live = JournalReader::open(journal)?;
    let live_id = live.meta("journal_id")?.unwrap_or_default();
    let after = if journal_id == Some(live_id.as_str()) {
        after
    } else {
        0
    };
    let live_first = live
        .meta("segment_first_event_id")?
        .and_then(|v| v.trim().parse::<i64>().ok());
    let mut items = Vec::new();
    if live_first.is_none_or(|first| first <= after + 1) {
        read_file(&live, journal, &live_id, after, limit, &mut items)?;
    } else {
        for (_, path) in list_segments(journal) {
            let reader = JournalReader::open(&path)?;
            if reader.meta("journal_id")?.as_deref() != Some(live_id.as_str()) {
                continue;
            }
            if reader.last_event_id()?.is_none_or(|last| last <= after) {
                continue;
            }
            read_file(&reader, &path, &live_id, after, limit, &mut items)?;
            break;
        }
        if items.is_empty() {
            read_file(&live, journal, &live_id, after, limit, &mut items)?;
        }
    }
    let missing = items
        .first()
        .map(|i| i.event.id)
        .or(live_first)
        .filter(|first| *first > after + 1)
        .map(|first| (after + 1, first - 1));
    Ok(Batch {
        journal_id: live_id,
        items,
        missing,
    })
}

/// The last event id of the journal now (0 when it holds none): where a stream with
/// `start_at = "now"` starts.
pub fn head(journal: &Path) -> Result<(String, i64), JournalError> {
    let live = JournalReader::open(journal)?;
    let id = live.meta("journal_id")?.unwrap_or_default();
    let last = match live.last_event_id()? {
        Some(last) => last,
        None => live
            .meta("segment_first_event_id")?
            .and_then(|v| v.trim().parse::<i64>().ok())
            .map_or(0, |first| first - 1),
    };
    Ok((id, last))
}

fn read_file(
    reader: &JournalReader,
    path: &Path,
    journal_id: &str,
    after: i64,
    limit: usize,
    items: &mut Vec<Item>,
) -> Result<(), JournalError> {
    let events = reader.events_after(after, limit)?;
    if events.is_empty() {
        return Ok(());
    }
    let segment = std::sync::Arc::new(SegmentInfo {
        path: path.to_path_buf(),
        journal_id: journal_id.to_owned(),
        host_id: reader.meta("host_id")?,
        segment_seq: reader
            .meta("segment_seq")?
            .and_then(|s| s.trim().parse::<u64>().ok()),
        last_event_id: events.last().map(|e| e.id),
    });
    let mut sessions: HashMap<i64, Option<std::sync::Arc<SetSession>>> = HashMap::new();
    for event in events {
        let session = match event.session_id {
            None => None,
            Some(id) => match sessions.get(&id) {
                Some(s) => s.clone(),
                None => {
                    let s = reader.session(id)?.map(|row| {
                        std::sync::Arc::new(SetSession {
                            session_ref: row.id.to_string(),
                            row,
                            journal_id: journal_id.to_owned(),
                            host_id: segment.host_id.clone(),
                        })
                    });
                    sessions.insert(id, s.clone());
                    s
                }
            },
        };
        items.push(Item {
            segment: segment.clone(),
            session,
            event,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::evidence::HostKey;
    use crate::journal::tests::{at_us, sample_start};
    use crate::journal::{self, Direction, JournalOptions, SegmentOptions};

    fn options() -> JournalOptions {
        JournalOptions {
            segments: Some(SegmentOptions {
                key: std::sync::Arc::new(HostKey::generate().expect("key")),
                host_id: "test-host".to_string(),
                max_bytes: 48 << 10,
                max_age: std::time::Duration::from_secs(3600),
                checkpoint_interval: std::time::Duration::from_secs(10),
            }),
            ..JournalOptions::default()
        }
    }

    /// Writes `sessions` sessions of 20 chunks each into the journal at `path` (through a
    /// tiny segment limit, so that it rotates into sealed segments); returns the journal's
    /// last event id.
    pub(crate) async fn write_sessions(path: &Path, sessions: usize) -> i64 {
        let j = journal::open(path, options()).expect("open");
        let h = j.handle();
        let mut n = 0;
        for s in 0..sessions {
            let id = h
                .start_session(sample_start(&format!("w{s}"), "db", at_us(n)))
                .await
                .expect("start");
            for c in 0..20u32 {
                n += 1;
                h.chunk(id, Direction::ClientToServer, c + 1, at_us(n))
                    .await
                    .expect("chunk");
            }
            h.flush().await.expect("flush");
        }
        tokio::task::spawn_blocking(move || j.close())
            .await
            .expect("join")
            .expect("close");
        head(path).expect("head").1
    }

    /// A journal rotated into several sealed segments; returns its last event id.
    pub(crate) async fn segmented_journal(path: &Path) -> i64 {
        let last = write_sessions(path, 30).await;
        assert!(list_segments(path).len() >= 2, "the journal rotated");
        last
    }

    /// A journal rotated into sealed segments is read whole, in order, across the
    /// rotation, from any cursor; a deleted segment is reported as missing ids.
    #[tokio::test]
    async fn follows_the_journal_across_rotation_and_reports_deleted_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.db");
        let last_event_id = segmented_journal(&path).await;
        let all: Vec<i64> = {
            let mut ids = Vec::new();
            let mut after = 0;
            let mut jid: Option<String> = None;
            loop {
                let batch = read_after(&path, jid.as_deref(), after, 3).expect("read");
                assert_eq!(batch.missing, None, "nothing missing at {after}");
                let Some(last) = batch.items.last() else {
                    break;
                };
                after = last.event.id;
                ids.extend(batch.items.iter().map(|i| i.event.id));
                jid = Some(batch.journal_id);
            }
            ids
        };
        let expected: Vec<i64> = (1..=last_event_id).collect();
        assert_eq!(all, expected, "every event once, in order, across segments");
        let jid = journal::JournalReader::open(&path)
            .expect("open")
            .meta("journal_id")
            .expect("meta")
            .expect("id");
        // Every item carries its session (events of sessions) and a hash.
        let batch = read_after(&path, Some(&jid), 0, 100).expect("read");
        for item in &batch.items {
            assert!(item.event.hash.is_some(), "{:?}", item.event);
            assert_eq!(item.session.is_some(), item.event.session_id.is_some());
        }
        // Another journal id reads from the start.
        let batch = read_after(&path, Some("other"), 5, 1).expect("read");
        assert_eq!(batch.items[0].event.id, 1);
        assert_eq!(head(&path).expect("head"), (jid.clone(), last_event_id));

        // The first segment deleted (retention): its ids are reported missing, and the
        // read goes on with the next file.
        let (_, first) = list_segments(&path).into_iter().next().expect("a segment");
        std::fs::remove_file(&first).expect("delete");
        let batch = read_after(&path, Some(&jid), 0, 100).expect("read");
        let first_left = batch.items[0].event.id;
        assert!(first_left > 1);
        assert_eq!(batch.missing, Some((1, first_left - 1)));
    }
}
