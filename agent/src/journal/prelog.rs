//! The pre-log: protocol events recorded with one `write(2)`, before they are forwarded.
//!
//! A SQLite commit with fsync costs hundreds of microseconds and a round trip to the writer
//! thread tens, while a PostgreSQL client can send a statement every 50 µs. So the proxy
//! does not wait for SQLite: [`super::JournalHandle::record`] appends the events to a plain
//! file next to the database (`<journal>.prelog`) with a single `write(2)` under a mutex.
//! Once that call returns the events are in the operating system, so they survive the agent
//! being killed (not a power loss: that needs [`super::FsyncPolicy::Each`]). The writer
//! thread then copies them into the `events` table at the start of every batch, in the same
//! transaction as the batch's commands (one fsync for everything), and remembers the last
//! copied sequence number in `meta` (`prelog_applied_seq`). When everything written has been
//! copied and the file has grown past a threshold, the writer truncates it to zero.
//!
//! At the next [`super::open`] after a crash, [`recover`] copies the records whose sequence
//! number is above `prelog_applied_seq`, cuts a torn tail off, and empties the file.
//!
//! # Record format
//!
//! All integers little-endian; records follow each other without padding:
//!
//! | offset | size | field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! |      0 |    4 | `u32` total length of the record, these 4 bytes included    |
//! |      4 |    4 | `u32` CRC-32 (IEEE, as in zlib) of bytes 8..total length    |
//! |      8 |    8 | `u64` sequence number, +1 per record over the journal's life |
//! |     16 |    8 | `i64` session id                                            |
//! |     24 |    8 | `i64` time, microseconds since the Unix epoch               |
//! |     32 |    2 | `u16` length K of the kind                                  |
//! |     34 |    K | kind, UTF-8                                                 |
//! | 34 + K |  ... | data, UTF-8 JSON text, to the end of the record             |
//!
//! A record whose length is out of range, whose checksum does not match, whose text is not
//! UTF-8 or whose sequence number does not follow the previous one ends the readable part
//! of the file: that is what a write torn by a crash looks like (or the zeros some
//! filesystems show for blocks that were allocated but never written).
//!
//! # Architecture invariant
//!
//! File order is sequence order: sequence numbers are assigned and the bytes written under
//! the same mutex, and the writer ingests strictly in file order. A failed or short write is
//! cut back off (`ftruncate` to the length before it) under that mutex, so a torn record can
//! never hide later good ones; if even that fails, the pre-log is marked broken and every
//! later `record` fails, which makes the proxy refuse requests rather than forward them
//! unrecorded.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use rusqlite::{params, Connection, TransactionBehavior};

use super::writer::{Chain, NewEvent};
use super::{system_time_to_us, JournalError, SessionId};

/// The size past which the writer empties a fully ingested pre-log (see
/// [`super::JournalOptions::prelog_truncate_at`]).
pub const DEFAULT_TRUNCATE_AT: u64 = 8 << 20;

/// Bytes before the kind: length, checksum, seq, session, time, kind length.
pub(crate) const HEADER_LEN: usize = 4 + 4 + 8 + 8 + 8 + 2;

/// The largest record accepted, so that a corrupt length field cannot make recovery try to
/// read gigabytes as one record.
pub const MAX_RECORD_LEN: usize = 16 << 20;

/// How much of the file is read at once when scanning it.
const READ_WINDOW: usize = 1 << 20;

/// The `meta` key holding the last sequence number copied into `events`.
const APPLIED_KEY: &str = "prelog_applied_seq";

/// Kinds the writer produces itself; a pre-log event with one of them would be mistaken for
/// the real thing by the reader and by the recovery of interrupted sessions.
const RESERVED_KINDS: [&str; 3] = [START_KIND, CHUNK_KIND, "session_end"];

/// The kind of the records [`Prelog::append_start`] writes.
const START_KIND: &str = "session_start";

/// The kind of the records [`Prelog::append_chunk`] writes; their data is the
/// direction and the size (`c2s 1024`), not JSON, and becomes the row's `direction`
/// and `size`.
const CHUNK_KIND: &str = "chunk";

/// The [`Event::session`] of an event that belongs to no session (stored as NULL).
/// Session ids are SQLite rowids, which start at 1, so 0 never names a session.
pub const NO_SESSION: SessionId = 0;

/// One protocol event (e.g. a PostgreSQL statement or its result) to journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The session the event belongs to; it must have been started (committed) already.
    /// [`NO_SESSION`] for an event that belongs to no session (agent-level events, process
    /// lineage, attestations): stored with a NULL `session_id`.
    pub session: SessionId,
    pub at: SystemTime,
    /// E.g. `pg.query`; shown by the reader as [`super::EventKind::Other`]. Must not be
    /// empty nor one of the kinds the journal writes itself (`session_start`, `chunk`,
    /// `session_end`).
    pub kind: Cow<'static, str>,
    /// JSON text, already serialized by the caller (empty for "no data"). It is not parsed
    /// on the hot path; the writer checks it when copying it into SQLite and stores
    /// anything that is not valid JSON as a JSON string instead, so the reader never meets
    /// a row it cannot parse.
    pub data: String,
}

impl Event {
    /// An event of `session`, stamped now, with `data` serialized to JSON. Our own
    /// payload types always serialize; were one not to, the trail keeps an
    /// `encoding_error` record rather than losing the event.
    pub fn of(session: SessionId, kind: &'static str, data: &impl serde::Serialize) -> Event {
        Event {
            session,
            at: SystemTime::now(),
            kind: Cow::Borrowed(kind),
            data: serde_json::to_string(data)
                .unwrap_or_else(|e| format!("{{\"encoding_error\":{:?}}}", e.to_string())),
        }
    }
}

/// What [`recover`] found in the pre-log when the journal was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrelogRecovery {
    /// Records a previous agent wrote but had not copied into `events`: copied now.
    pub records: u64,
    /// Records that could not be inserted (e.g. their session does not exist); logged.
    pub failed: u64,
    /// Bytes after the last readable record (a torn write), cut off.
    pub torn_bytes: u64,
}

/// The pre-log path of the journal at `journal`: the same name with `.prelog` appended.
pub fn path_for(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_os_string();
    name.push(".prelog");
    PathBuf::from(name)
}

fn io_error<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Prelog {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Opens (creating, mode 0600) the pre-log for appending. std opens every file with
/// `O_CLOEXEC`, so a child process never inherits it.
pub(crate) fn open_file(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("open", path))
}

/// Whether `data` is what an event's data must be: empty ("no data") or JSON.
fn is_json(data: &str) -> bool {
    data.is_empty() || serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok()
}

/// Checks an event before anything is written, so that one bad event cannot leave half a
/// call in the file.
fn validate(event: &Event) -> Result<(), JournalError> {
    validate_kind(event, true)
}

fn validate_kind(event: &Event, refuse_reserved: bool) -> Result<(), JournalError> {
    let kind = event.kind.as_ref();
    let reason = if kind.is_empty() {
        Some("the kind is empty".to_string())
    } else if refuse_reserved && RESERVED_KINDS.contains(&kind) {
        Some(format!(
            "the kind {kind:?} is reserved for the journal itself"
        ))
    } else if kind.len() > usize::from(u16::MAX) {
        Some(format!("the kind is {} bytes long", kind.len()))
    } else if HEADER_LEN + kind.len() + event.data.len() > MAX_RECORD_LEN {
        Some(format!(
            "the record would be {} bytes, more than {MAX_RECORD_LEN}",
            HEADER_LEN + kind.len() + event.data.len()
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(JournalError::InvalidEvent { reason }),
        None => Ok(()),
    }
}

/// Appends one encoded record to `buf`. The event must have passed [`validate`], which
/// guarantees that the lengths fit their fields.
pub(crate) fn encode_into(buf: &mut Vec<u8>, seq: u64, event: &Event) {
    let kind = event.kind.as_bytes();
    let data = event.data.as_bytes();
    let total = HEADER_LEN + kind.len() + data.len();
    let start = buf.len();
    // Validated: total <= MAX_RECORD_LEN < u32::MAX and kind.len() <= u16::MAX.
    buf.extend_from_slice(&(total as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&event.session.to_le_bytes());
    buf.extend_from_slice(&system_time_to_us(event.at).to_le_bytes());
    buf.extend_from_slice(&(kind.len() as u16).to_le_bytes());
    buf.extend_from_slice(kind);
    buf.extend_from_slice(data);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A record as read back, borrowing the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordRef<'a> {
    pub(crate) seq: u64,
    pub(crate) session: SessionId,
    pub(crate) at_us: i64,
    pub(crate) kind: &'a str,
    pub(crate) data: &'a str,
}

/// The result of looking at the bytes where a record should start.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A whole, verified record of `len` bytes.
    Record { record: RecordRef<'a>, len: usize },
    /// The bytes end before the record does (more may follow, or the write was torn).
    Incomplete,
    /// These bytes are not a record: the readable part ends here.
    Corrupt(&'static str),
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Decodes the record at the start of `buf`. Pure: no IO, never panics on any input.
pub(crate) fn decode(buf: &[u8]) -> Decoded<'_> {
    let Some(len_bytes) = buf.get(..4) else {
        return Decoded::Incomplete;
    };
    let total = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    let total = total as usize;
    if !(HEADER_LEN..=MAX_RECORD_LEN).contains(&total) {
        return Decoded::Corrupt("record length out of range");
    }
    let Some(record) = buf.get(..total) else {
        return Decoded::Incomplete;
    };
    let stored_crc = u32::from_le_bytes([record[4], record[5], record[6], record[7]]);
    if crc32fast::hash(&record[8..]) != stored_crc {
        return Decoded::Corrupt("checksum mismatch");
    }
    let seq = le_u64(&record[8..]);
    let session = le_u64(&record[16..]) as i64;
    let at_us = le_u64(&record[24..]) as i64;
    let kind_len = usize::from(u16::from_le_bytes([record[32], record[33]]));
    let Some(kind) = record.get(HEADER_LEN..HEADER_LEN + kind_len) else {
        return Decoded::Corrupt("kind length out of range");
    };
    let data = &record[HEADER_LEN + kind_len..];
    match (std::str::from_utf8(kind), std::str::from_utf8(data)) {
        (Ok(kind), Ok(data)) => Decoded::Record {
            record: RecordRef {
                seq,
                session,
                at_us,
                kind,
                data,
            },
            len: total,
        },
        _ => Decoded::Corrupt("text is not UTF-8"),
    }
}

/// Where a scan of the file stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanEnd {
    /// The offset just after the last good record.
    pub(crate) good_end: u64,
    /// Why the scan stopped before the end it was given, if it did.
    pub(crate) stop: Option<&'static str>,
}

/// Calls `f` for every good record of `file` between `start` and `end` (a record boundary),
/// in order, reading a window at a time so that a large backlog does not have to fit in
/// memory at once. Stops at the first record that does not verify or whose sequence number
/// is not above the previous one's.
pub(crate) fn scan(
    file: &File,
    path: &Path,
    start: u64,
    end: u64,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(RecordRef<'_>) -> Result<(), JournalError>,
) -> Result<ScanEnd, JournalError> {
    let mut pos = start;
    let mut want = READ_WINDOW;
    let mut prev_seq: Option<u64> = None;
    while pos < end {
        let n = (end - pos).min(want as u64) as usize;
        buf.resize(n, 0);
        file.read_exact_at(&mut buf[..n], pos)
            .map_err(io_error("read", path))?;
        let mut off = 0;
        loop {
            match decode(&buf[off..n]) {
                Decoded::Record { record, len } => {
                    if prev_seq.is_some_and(|prev| record.seq <= prev) {
                        return Ok(ScanEnd {
                            good_end: pos + off as u64,
                            stop: Some("sequence number went backwards"),
                        });
                    }
                    prev_seq = Some(record.seq);
                    f(record)?;
                    off += len;
                }
                Decoded::Incomplete => break,
                Decoded::Corrupt(reason) => {
                    return Ok(ScanEnd {
                        good_end: pos + off as u64,
                        stop: Some(reason),
                    })
                }
            }
        }
        if off > 0 {
            pos += off as u64;
            want = READ_WINDOW;
        } else if n as u64 == end - pos {
            // Everything up to `end` was read and still no whole record.
            return Ok(ScanEnd {
                good_end: pos,
                stop: Some("incomplete record"),
            });
        } else {
            // A record larger than the window: read exactly that record next time. `decode`
            // has checked that its length is in range, and n >= 4 here.
            want = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        }
    }
    Ok(ScanEnd {
        good_end: pos,
        stop: None,
    })
}

/// The last sequence number copied into `events` (0 if none ever was).
pub(crate) fn load_applied(conn: &Connection) -> Result<u64, JournalError> {
    let text: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [APPLIED_KEY],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            other => Err(other),
        })
        .map_err(JournalError::sqlite("read prelog_applied_seq"))?;
    match text {
        None => Ok(0),
        Some(text) => text.parse().map_err(|_| JournalError::Corrupt {
            table: "meta",
            id: 0,
            what: "prelog_applied_seq",
            reason: format!("{text:?} is not a sequence number"),
        }),
    }
}

/// Remembers `seq` as copied, inside the caller's transaction.
pub(crate) fn store_applied(conn: &Connection, seq: u64) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![APPLIED_KEY, seq.to_string()])?;
    Ok(())
}

/// The direction and size of a chunk record's data.
fn parse_chunk(data: &str) -> Option<(super::Direction, u32)> {
    let (dir, size) = data.split_once(' ')?;
    Some((super::Direction::from_storage(dir)?, size.parse().ok()?))
}

/// Inserts one record into `events` (direction and size stay NULL), chained; a session
/// start ([`Prelog::append_start`]) becomes the session's row and its `session_start`
/// event, a chunk ([`Prelog::append_chunk`]) a `chunk` event with its direction and
/// size.
///
/// `appended_here`: the record was appended by this process ([`Prelog::append`] made its
/// data JSON), so it is copied as it is; a record another agent left (recovery) is
/// checked here.
pub(crate) fn insert_record(
    conn: &Connection,
    insert: &mut rusqlite::Statement<'_>,
    chain: &mut Chain,
    record: &RecordRef<'_>,
    appended_here: bool,
) -> rusqlite::Result<()> {
    if record.kind == START_KIND {
        return super::writer::insert_session(
            conn,
            insert,
            chain,
            record.session,
            record.at_us,
            record.data,
        );
    }
    if record.kind == CHUNK_KIND {
        let (direction, size) = parse_chunk(record.data).ok_or_else(|| {
            rusqlite::Error::ToSqlConversionFailure(
                format!("chunk record {} has data {:?}", record.seq, record.data).into(),
            )
        })?;
        chain.insert_event_with(
            insert,
            &NewEvent {
                session_id: Some(record.session),
                at_us: record.at_us,
                kind: CHUNK_KIND,
                direction: Some(direction.as_str()),
                size: Some(i64::from(size)),
                data: None,
            },
        )?;
        return Ok(());
    }
    let data: Option<Cow<'_, str>> = if record.data.is_empty() {
        None
    } else if appended_here || is_json(record.data) {
        Some(Cow::Borrowed(record.data))
    } else {
        tracing::warn!(
            session = record.session,
            seq = record.seq,
            kind = record.kind,
            "pre-log event data is not valid JSON; stored as a JSON string"
        );
        Some(Cow::Owned(
            serde_json::Value::String(record.data.to_string()).to_string(),
        ))
    };
    let session = (record.session != NO_SESSION).then_some(record.session);
    chain.insert_event_with(
        insert,
        &NewEvent {
            session_id: session,
            at_us: record.at_us,
            kind: record.kind,
            direction: None,
            size: None,
            data: data.as_deref(),
        },
    )?;
    Ok(())
}

/// Copies the records a previous agent left in the pre-log into `events`, then empties the
/// file. Runs at open, before the writer starts (and before interrupted sessions are
/// closed, so that their end time accounts for these records). Returns what it found and
/// the next sequence number to assign.
pub(crate) fn recover(
    conn: &mut Connection,
    chain: &mut Chain,
    file: &File,
    path: &Path,
) -> Result<(PrelogRecovery, u64), JournalError> {
    let len = file.metadata().map_err(io_error("stat", path))?.len();
    let applied = load_applied(conn)?;
    let mut report = PrelogRecovery::default();
    let mut last_seen = applied;
    if len > 0 {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(JournalError::sqlite("begin pre-log recovery"))?;
        let mut buf = Vec::new();
        let mut insert = tx
            .prepare_cached(super::writer::INSERT_EVENT)
            .map_err(JournalError::sqlite("prepare the events insert"))?;
        let end = scan(file, path, 0, len, &mut buf, |record| {
            // Records up to `applied` were copied before the file could be truncated.
            if record.seq <= applied {
                return Ok(());
            }
            last_seen = record.seq;
            match insert_record(&tx, &mut insert, chain, &record, false) {
                Ok(()) => report.records += 1,
                // The whole transaction is gone (I/O error): opening fails, nothing lost.
                Err(source) if tx.is_autocommit() => {
                    return Err(JournalError::Sqlite {
                        op: "recover pre-log records",
                        source,
                    })
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::error!(
                        session = record.session,
                        seq = record.seq,
                        error = %e,
                        "journal could not recover a pre-log record"
                    );
                }
            }
            Ok(())
        })?;
        drop(insert);
        store_applied(&tx, last_seen).map_err(JournalError::sqlite("store prelog_applied_seq"))?;
        tx.commit()
            .map_err(JournalError::sqlite("commit pre-log recovery"))?;
        report.torn_bytes = len - end.good_end;
        if let Some(reason) = end.stop {
            tracing::warn!(
                path = %path.display(),
                bytes = report.torn_bytes,
                reason,
                "cut off the unreadable end of the journal pre-log (a write torn by a crash)"
            );
        }
        if report.records > 0 {
            tracing::warn!(
                records = report.records,
                path = %path.display(),
                "recovered journal events a previous agent wrote but had not committed"
            );
        }
        // Only after the commit: until then the file is the only copy.
        file.set_len(0).map_err(io_error("truncate", path))?;
    }
    Ok((report, last_seen + 1))
}

/// The append side, shared by all handles.
#[derive(Debug)]
pub(crate) struct Prelog {
    path: PathBuf,
    state: Mutex<Appender>,
    /// Set by an append that asked the writer to wake up, cleared by the writer before it
    /// looks at the file: at most one wake-up is queued at a time.
    wake_pending: AtomicBool,
    truncate_at: u64,
}

#[derive(Debug)]
struct Appender {
    file: File,
    /// Reused for every append, so a call allocates nothing once it has grown.
    buf: Vec<u8>,
    next_seq: u64,
    /// The file's length as written by us (appends and truncations only happen here).
    len: u64,
    broken: bool,
}

impl Prelog {
    pub(crate) fn new(file: File, path: &Path, next_seq: u64, truncate_at: u64) -> Self {
        Prelog {
            path: path.to_path_buf(),
            state: Mutex::new(Appender {
                file,
                buf: Vec::with_capacity(4096),
                next_seq,
                len: 0,
                broken: false,
            }),
            wake_pending: AtomicBool::new(false),
            truncate_at,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn truncate_at(&self) -> u64 {
        self.truncate_at
    }

    /// The file's length: records written and not yet truncated away.
    pub(crate) fn len(&self) -> u64 {
        self.lock().len
    }

    /// A poisoned lock means a panic in the middle of an append, when the file and `len`
    /// may disagree: such a pre-log is not trusted any more.
    fn lock(&self) -> MutexGuard<'_, Appender> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                guard.broken = true;
                guard
            }
        }
    }

    /// Appends `events` with one write and returns the sequence number of the last one
    /// (or of the last record written so far, for an empty slice).
    ///
    /// Data that is not valid JSON is written as a JSON string instead (logged), so the
    /// writer copies what this process appended without parsing it again: the check
    /// runs here, on the callers' threads, not on the writer's one.
    pub(crate) fn append(&self, events: &[Event]) -> Result<u64, JournalError> {
        for event in events {
            validate(event)?;
        }
        if events.iter().all(|e| is_json(&e.data)) {
            return self.append_valid(events);
        }
        let mut fixed = events.to_vec();
        for event in &mut fixed {
            if !is_json(&event.data) {
                tracing::warn!(
                    session = event.session,
                    kind = %event.kind,
                    "event data is not valid JSON; stored as a JSON string"
                );
                event.data = serde_json::Value::String(std::mem::take(&mut event.data)).to_string();
                validate(event)?;
            }
        }
        self.append_valid(&fixed)
    }

    /// Appends the start of session `session` (its id handed out by the journal handle),
    /// `data` being the `session_start` event's data: the writer inserts the session's
    /// row and that event from it. Returns the record's sequence number.
    pub(crate) fn append_start(
        &self,
        session: SessionId,
        at: SystemTime,
        data: String,
    ) -> Result<u64, JournalError> {
        self.append_own(session, at, START_KIND, data)
    }

    /// Appends a chunk record of session `session`: `size` bytes about to be forwarded
    /// `dir`. Returns the record's sequence number.
    pub(crate) fn append_chunk(
        &self,
        session: SessionId,
        dir: super::Direction,
        size: u32,
        at: SystemTime,
    ) -> Result<u64, JournalError> {
        self.append_own(session, at, CHUNK_KIND, format!("{} {size}", dir.as_str()))
    }

    /// Appends one record of a kind the journal reserves for itself.
    fn append_own(
        &self,
        session: SessionId,
        at: SystemTime,
        kind: &'static str,
        data: String,
    ) -> Result<u64, JournalError> {
        let event = Event {
            session,
            at,
            kind: Cow::Borrowed(kind),
            data,
        };
        validate_kind(&event, false)?;
        self.append_valid(std::slice::from_ref(&event))
    }

    fn append_valid(&self, events: &[Event]) -> Result<u64, JournalError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.broken {
            return Err(JournalError::PrelogBroken {
                path: self.path.clone(),
            });
        }
        if events.is_empty() {
            return Ok(st.next_seq - 1);
        }
        st.buf.clear();
        for (i, event) in events.iter().enumerate() {
            encode_into(&mut st.buf, st.next_seq + i as u64, event);
        }
        // `write_all` loops on short writes and EINTR; O_APPEND puts every piece at the end.
        match (&st.file).write_all(&st.buf) {
            Ok(()) => {
                st.len += st.buf.len() as u64;
                st.next_seq += events.len() as u64;
                Ok(st.next_seq - 1)
            }
            Err(source) => {
                // Part of the buffer may be in the file: cut it off, or nothing after it
                // could ever be read back.
                if let Err(e) = st.file.set_len(st.len) {
                    st.broken = true;
                    tracing::error!(
                        path = %self.path.display(),
                        write_error = %source,
                        truncate_error = %e,
                        "journal pre-log: a failed write could not be undone; \
                         nothing more can be recorded until the agent restarts"
                    );
                }
                Err(JournalError::Prelog {
                    op: "append",
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    /// Whether the caller should queue a wake-up for the writer (false if one is pending).
    pub(crate) fn want_wake(&self) -> bool {
        !self.wake_pending.swap(true, Ordering::AcqRel)
    }

    /// Called by the writer before it reads the file: appends after this queue a new
    /// wake-up, appends before it are seen by the read that follows.
    pub(crate) fn clear_wake(&self) {
        self.wake_pending.store(false, Ordering::Release);
    }

    /// The written length and the last sequence number in the file, consistently.
    pub(crate) fn written(&self) -> (u64, u64) {
        let st = self.lock();
        (st.len, st.next_seq - 1)
    }

    /// Marks the pre-log unusable (the writer found a record it cannot read).
    pub(crate) fn mark_broken(&self) {
        self.lock().broken = true;
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.lock().broken
    }

    /// Empties the file if everything in it has been applied (`applied_len` is the end of
    /// the applied records). Returns whether it did.
    pub(crate) fn truncate_if_applied(&self, applied_len: u64) -> Result<bool, JournalError> {
        let mut st = self.lock();
        if st.len != applied_len || st.broken {
            return Ok(false);
        }
        st.file
            .set_len(0)
            .map_err(io_error("truncate", &self.path))?;
        st.len = 0;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &'static str, data: &str) -> Event {
        Event {
            session: 7,
            at: std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456),
            kind: Cow::Borrowed(kind),
            data: data.to_string(),
        }
    }

    fn encoded(seq: u64, e: &Event) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_into(&mut buf, seq, e);
        buf
    }

    #[test]
    fn a_record_decodes_to_what_was_encoded() {
        let e = event("pg.query", r#"{"sql":"SELECT 1","é":true}"#);
        let bytes = encoded(42, &e);
        assert_eq!(bytes.len(), HEADER_LEN + "pg.query".len() + e.data.len());
        match decode(&bytes) {
            Decoded::Record { record, len } => {
                assert_eq!(len, bytes.len());
                assert_eq!(record.seq, 42);
                assert_eq!(record.session, 7);
                assert_eq!(record.at_us, 1_700_000_000_123_456);
                assert_eq!(record.kind, "pg.query");
                assert_eq!(record.data, e.data);
            }
            other => panic!("expected a record, got {other:?}"),
        }
        // Trailing bytes (the next record) do not change the answer.
        let mut two = bytes.clone();
        two.extend_from_slice(&encoded(43, &e));
        assert!(matches!(decode(&two), Decoded::Record { len, .. } if len == bytes.len()));
    }

    #[test]
    fn every_prefix_is_incomplete_and_every_flipped_byte_is_detected() {
        let e = event("pg.query", r#"{"sql":"SELECT * FROM t WHERE id = $1"}"#);
        let bytes = encoded(1, &e);
        for cut in 0..bytes.len() {
            assert_eq!(
                decode(&bytes[..cut]),
                Decoded::Incomplete,
                "prefix of {cut}"
            );
        }
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            match decode(&damaged) {
                Decoded::Record { .. } => panic!("byte {i} flipped and still accepted"),
                // A flipped length byte can make the record look longer than the buffer.
                Decoded::Incomplete => assert!(i < 4, "byte {i}"),
                Decoded::Corrupt(_) => {}
            }
        }
        // What a filesystem may show after a crash: allocated but never written blocks.
        assert!(matches!(decode(&[0u8; 64]), Decoded::Corrupt(_)));
    }

    #[test]
    fn invalid_events_are_refused_before_encoding() {
        for kind in ["", "session_start", "chunk", "session_end"] {
            let e = event("x", "{}");
            let e = Event {
                kind: Cow::Owned(kind.to_string()),
                ..e
            };
            assert!(
                matches!(validate(&e), Err(JournalError::InvalidEvent { .. })),
                "{kind:?}"
            );
        }
        let long_kind = Event {
            kind: Cow::Owned("k".repeat(usize::from(u16::MAX) + 1)),
            ..event("x", "")
        };
        assert!(validate(&long_kind).is_err());
        let huge = event("pg.copy", &"x".repeat(MAX_RECORD_LEN));
        assert!(validate(&huge).is_err());
        assert!(validate(&event("pg.query", "")).is_ok());
    }

    #[test]
    fn scan_reads_records_larger_than_its_window_and_stops_at_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.prelog");
        let big = event(
            "pg.copy",
            &format!("\"{}\"", "b".repeat(READ_WINDOW + READ_WINDOW / 2)),
        );
        let small = event("pg.query", "{}");
        let mut bytes = encoded(1, &small);
        bytes.extend(encoded(2, &big));
        bytes.extend(encoded(3, &small));
        let good = bytes.len() as u64;
        bytes.extend(encoded(3, &small)); // a sequence number that does not grow
        std::fs::write(&path, &bytes).expect("write");
        let file = open_file(&path).expect("open");

        let mut seen = Vec::new();
        let mut buf = Vec::new();
        let end = scan(&file, &path, 0, bytes.len() as u64, &mut buf, |r| {
            seen.push((r.seq, r.data.len()));
            Ok(())
        })
        .expect("scan");
        assert_eq!(
            seen,
            vec![(1, 2), (2, big.data.len()), (3, 2)],
            "all three, in order"
        );
        assert_eq!(end.good_end, good);
        assert_eq!(end.stop, Some("sequence number went backwards"));
    }
}
