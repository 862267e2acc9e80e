//! Segment files: naming, atomic writes, and the `meta` bookkeeping that links a segment
//! to its predecessor.
//!
//! Layout (see the segment contract in ARCHITECTURE.md): the live segment is the configured
//! journal path; sealed ones are `<dir>/segments/<seq>.db` (10-digit zero-padded) with the
//! seal next to them as `<seq>.seal`. `meta` keys of every segment:
//!
//! | key                      | value                                                    |
//! |--------------------------|----------------------------------------------------------|
//! | `journal_id`             | shared by all segments of one journal                    |
//! | `segment_seq`            | 1, 2, ...                                                |
//! | `host_id`                | the host id                                              |
//! | `chain_prev_hash`        | hex hash before this segment's first event              |
//! | `segment_first_event_id` | the id the segment's first event has (or will have)      |
//! | `next_event_id`, `next_session_id` | ids to continue with (for an empty segment)    |
//! | `prev_seal_sha256`       | hex SHA-256 of the previous segment's seal (not in seq 1)|
//! | `chain_start_event_id`   | first chained event (older rows predate schema v2)      |
//! | `seal`                   | the seal (compact JWS), once the segment is sealed       |
use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension as _};

use super::checkpoint;
use crate::evidence::chain::{genesis, ChainState, Hash};
use crate::evidence::key::HostKey;
use crate::evidence::seal::{self, SealPayload, SealReason};
use crate::evidence::{fsync_dir, hex, parse_hex, write_atomically, EvidenceError};

/// The directory (next to the live journal) that holds sealed segments.
pub fn segments_dir(journal: &Path) -> PathBuf {
    journal
        .parent()
        .unwrap_or_else(|| Path::new("/"))
        .join("segments")
}

/// `segments/<seq>.db` of the journal whose live file is `journal`.
pub fn segment_db_path(journal: &Path, seq: u64) -> PathBuf {
    segments_dir(journal).join(format!("{seq:010}.db"))
}

/// The seal file next to a segment database.
pub fn seal_path_for(db: &Path) -> PathBuf {
    db.with_extension("seal")
}

/// One `meta` value.
pub(crate) fn meta_get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()
}

/// Sets one `meta` value.
pub(crate) fn meta_set(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

fn meta_i64(conn: &Connection, key: &str) -> rusqlite::Result<Option<i64>> {
    Ok(meta_get(conn, key)?.and_then(|v| v.parse().ok()))
}

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidParameterName(format!("journal meta {what} is corrupt"))
}

/// Reads the chain position of the live segment, first giving a journal that has none yet
/// (new, or migrated from schema 1) its segment bookkeeping: it becomes segment 1, whose
/// chain starts at the genesis hash.
pub(crate) fn load_chain(conn: &Connection) -> rusqlite::Result<ChainState> {
    let journal_id = meta_get(conn, "journal_id")?.ok_or_else(|| corrupt("journal_id"))?;
    if meta_get(conn, "chain_prev_hash")?.is_none() {
        let first: i64 = match meta_i64(conn, "chain_start_event_id")? {
            Some(id) => id,
            None => conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM events", [], |r| {
                r.get(0)
            })?,
        };
        meta_set(conn, "segment_seq", "1")?;
        meta_set(conn, "chain_prev_hash", &hex(&genesis(&journal_id)))?;
        meta_set(conn, "segment_first_event_id", &first.to_string())?;
        meta_set(conn, "chain_start_event_id", &first.to_string())?;
    }
    let prev: Hash = meta_get(conn, "chain_prev_hash")?
        .as_deref()
        .and_then(parse_hex::<32>)
        .ok_or_else(|| corrupt("chain_prev_hash"))?;
    let first = meta_i64(conn, "segment_first_event_id")?.unwrap_or(1);
    let last: Option<(i64, Option<Vec<u8>>)> = conn
        .query_row(
            "SELECT id, hash FROM events ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let last_hash = match &last {
        Some((id, Some(h))) if *id >= first => h
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("events.hash"))?,
        _ => prev,
    };
    let max_event = last.map(|(id, _)| id).unwrap_or(0);
    let max_session: i64 =
        conn.query_row("SELECT COALESCE(MAX(id), 0) FROM sessions", [], |r| {
            r.get(0)
        })?;
    let next_event_id = (max_event + 1)
        .max(first)
        .max(meta_i64(conn, "next_event_id")?.unwrap_or(1));
    let next_session_id = (max_session + 1).max(meta_i64(conn, "next_session_id")?.unwrap_or(1));
    Ok(ChainState {
        last_hash,
        next_event_id,
        next_session_id,
    })
}

/// Whether the live file has no rows and is segment 1 (just created).
pub(crate) fn is_fresh(conn: &Connection) -> rusqlite::Result<bool> {
    let rows: i64 = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM events) + (SELECT COUNT(*) FROM sessions)",
        [],
        |r| r.get(0),
    )?;
    Ok(rows == 0 && meta_get(conn, "segment_seq")?.as_deref() == Some("1"))
}

/// Builds, signs and stores (`meta.seal`) the seal of the segment `conn` holds, whose
/// chain ended at `chain`. Returns the JWS.
pub(crate) fn seal_in_place(
    conn: &Connection,
    chain: &ChainState,
    key: &HostKey,
    host_id: &str,
    reason: SealReason,
    path: &Path,
) -> Result<String, EvidenceError> {
    let sql = |op| {
        move |source| EvidenceError::Sqlite {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let payload = build_payload(conn, chain, host_id, reason).map_err(sql("read segment facts"))?;
    let jws = seal::sign(&payload, key)?;
    meta_set(conn, "seal", &jws).map_err(sql("store the seal"))?;
    Ok(jws)
}

fn build_payload(
    conn: &Connection,
    chain: &ChainState,
    host_id: &str,
    reason: SealReason,
) -> rusqlite::Result<SealPayload> {
    let first = meta_i64(conn, "segment_first_event_id")?.unwrap_or(1);
    let (count, first_id, last_id): (i64, Option<i64>, Option<i64>) = conn.query_row(
        "SELECT COUNT(*), MIN(id), MAX(id) FROM events WHERE id >= ?1",
        [first],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let at = |id: Option<i64>| -> rusqlite::Result<Option<i64>> {
        match id {
            None => Ok(None),
            Some(id) => conn
                .query_row("SELECT at_us FROM events WHERE id = ?1", [id], |r| r.get(0))
                .optional(),
        }
    };
    Ok(SealPayload {
        v: 1,
        host_id: host_id.to_string(),
        journal_id: meta_get(conn, "journal_id")?.unwrap_or_default(),
        segment_seq: meta_i64(conn, "segment_seq")?.unwrap_or(1).max(0) as u64,
        first_event_id: first_id,
        last_event_id: last_id,
        event_count: count.max(0) as u64,
        first_at_us: at(first_id)?,
        last_at_us: at(last_id)?,
        prev_last_hash: meta_get(conn, "chain_prev_hash")?.unwrap_or_default(),
        last_hash: hex(&chain.last_hash),
        prev_seal_sha256: meta_get(conn, "prev_seal_sha256")?,
        sealed_at_us: super::now_us(),
        reason,
    })
}

/// What a new live segment takes over from the one it follows.
#[derive(Debug)]
pub(crate) struct Carry {
    journal_id: String,
    seq: u64,
    prelog_applied: Option<String>,
    columns: Vec<String>,
    open_sessions: Vec<Vec<Value>>,
    seal_sha256: String,
    chain: ChainState,
}

/// Reads what the successor of the sealed segment in `conn` needs.
pub(crate) fn read_carry(
    conn: &Connection,
    chain: &ChainState,
    jws: &str,
) -> rusqlite::Result<Carry> {
    let mut stmt = conn.prepare("SELECT * FROM sessions WHERE ended_at_us IS NULL ORDER BY id")?;
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let n = columns.len();
    let open_sessions = stmt
        .query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())?
        .collect::<rusqlite::Result<Vec<Vec<Value>>>>()?;
    Ok(Carry {
        journal_id: meta_get(conn, "journal_id")?.ok_or_else(|| corrupt("journal_id"))?,
        seq: meta_i64(conn, "segment_seq")?.unwrap_or(1).max(0) as u64,
        prelog_applied: meta_get(conn, "prelog_applied_seq")?,
        columns,
        open_sessions,
        seal_sha256: seal::seal_sha256(jws),
        chain: *chain,
    })
}

impl Carry {
    /// The sequence number of the segment this was read from.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }
}

/// Makes the new (empty) live file in `conn` the successor described by `carry`: same
/// journal id, next sequence number, the chain continuing from the predecessor's last
/// hash, ids continuing, and the rows of sessions that are still open (same ids: their
/// end, chunks and pre-log events land here).
pub(crate) fn init_successor(
    conn: &mut Connection,
    carry: &Carry,
    host_id: &str,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    meta_set(&tx, "journal_id", &carry.journal_id)?;
    meta_set(&tx, "segment_seq", &(carry.seq + 1).to_string())?;
    meta_set(&tx, "host_id", host_id)?;
    meta_set(&tx, "chain_prev_hash", &hex(&carry.chain.last_hash))?;
    meta_set(&tx, "prev_seal_sha256", &carry.seal_sha256)?;
    let first = carry.chain.next_event_id.to_string();
    meta_set(&tx, "segment_first_event_id", &first)?;
    meta_set(&tx, "chain_start_event_id", &first)?;
    meta_set(&tx, "next_event_id", &first)?;
    meta_set(
        &tx,
        "next_session_id",
        &carry.chain.next_session_id.to_string(),
    )?;
    if let Some(applied) = &carry.prelog_applied {
        meta_set(&tx, "prelog_applied_seq", applied)?;
    }
    if !carry.open_sessions.is_empty() {
        let placeholders = vec!["?"; carry.columns.len()].join(", ");
        let sql = format!(
            "INSERT INTO sessions ({}) VALUES ({placeholders})",
            carry.columns.join(", ")
        );
        let mut stmt = tx.prepare(&sql)?;
        for row in &carry.open_sessions {
            stmt.execute(rusqlite::params_from_iter(row.iter()))?;
        }
    }
    tx.commit()
}

/// Where the successor of the live segment `journal` is built before it replaces it
/// (`journal.db.next`): never read as a journal.
pub(crate) fn successor_path(journal: &Path) -> PathBuf {
    let mut next = journal.as_os_str().to_owned();
    next.push(".next");
    PathBuf::from(next)
}

/// Removes the `-wal` and `-shm` files of the SQLite database `db`, if any.
pub(crate) fn remove_sqlite_sidecars(db: &Path) {
    for suffix in ["-wal", "-shm"] {
        let mut side = db.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(side));
    }
}

/// Links the sealed live segment `journal` (complete on its own: checkpointed and
/// closed) into `segments/<seq>.db` and writes its `.seal` file. The live path keeps
/// naming it until [`replace_live`] puts its successor there. Never overwrites another
/// segment; a link made before a crash (the same file) is taken as done.
pub(crate) fn link_into_segments(
    journal: &Path,
    seq: u64,
    jws: &str,
) -> Result<PathBuf, EvidenceError> {
    use std::os::unix::fs::MetadataExt;
    let dir = segments_dir(journal);
    std::fs::create_dir_all(&dir).map_err(EvidenceError::io("cannot create", &dir))?;
    let target = segment_db_path(journal, seq);
    let same_file =
        |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    match std::fs::metadata(&target) {
        Ok(existing) => {
            let live =
                std::fs::metadata(journal).map_err(EvidenceError::io("cannot read", journal))?;
            if !same_file(&existing, &live) {
                // Never overwrite a segment: that would destroy evidence.
                return Err(EvidenceError::Io {
                    op: "segment already exists",
                    path: target,
                    source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                });
            }
        }
        Err(_) => std::fs::hard_link(journal, &target).map_err(EvidenceError::io(
            "cannot link the live segment to",
            &target,
        ))?,
    }
    fsync_dir(&dir)?;
    write_atomically(&seal_path_for(&target), jws.as_bytes())?;
    Ok(target)
}

/// Puts the successor built at `next` (see [`successor_path`]) in place of the live
/// segment `journal`, in one rename: a reader of the live path finds either the sealed
/// segment or its successor, never a missing or empty file.
pub(crate) fn replace_live(next: &Path, journal: &Path) -> Result<(), EvidenceError> {
    // A leftover WAL/SHM of the old file must not be taken for the new live file's.
    remove_sqlite_sidecars(journal);
    std::fs::rename(next, journal).map_err(EvidenceError::io(
        "cannot put the next segment in place at",
        journal,
    ))?;
    if let Some(parent) = journal.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// The sealed segments next to `journal`, by sequence number.
pub fn list_segments(journal: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(segments_dir(journal))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let stem = path.file_stem()?.to_str()?;
            (path.extension()? == "db").then_some(())?;
            Some((stem.parse().ok()?, path))
        })
        .collect();
    out.sort();
    out
}

/// Writes the `.seal` file of every segment that has its seal only in `meta` (the agent
/// stopped between the move and the seal file).
pub(crate) fn repair_seal_files(journal: &Path) -> Result<(), EvidenceError> {
    for (_, db) in list_segments(journal) {
        let seal_path = seal_path_for(&db);
        if seal_path.exists() {
            continue;
        }
        let conn = Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| EvidenceError::Sqlite {
                op: "open",
                path: db.clone(),
                source,
            })?;
        if let Ok(Some(jws)) = meta_get(&conn, "seal") {
            write_atomically(&seal_path, jws.as_bytes())?;
        }
    }
    Ok(())
}

/// For a live file that was just created while sealed segments exist (the agent stopped
/// after moving the last live file away but before creating its successor): the carry of
/// the last segment, from its own database.
pub(crate) fn carry_of_last_segment(journal: &Path) -> Result<Option<Carry>, EvidenceError> {
    let Some((_, db)) = list_segments(journal).pop() else {
        return Ok(None);
    };
    let sql = |op| {
        let db = db.clone();
        move |source| EvidenceError::Sqlite {
            op,
            path: db,
            source,
        }
    };
    let conn = Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql("open"))?;
    let chain = load_chain_readonly(&conn).map_err(sql("read the chain"))?;
    let Some(jws) = meta_get(&conn, "seal").map_err(sql("read the seal"))? else {
        return Ok(None);
    };
    read_carry(&conn, &chain, &jws)
        .map(Some)
        .map_err(sql("read the segment"))
}

/// [`load_chain`] for a sealed segment (no initialization).
fn load_chain_readonly(conn: &Connection) -> rusqlite::Result<ChainState> {
    let prev: Hash = meta_get(conn, "chain_prev_hash")?
        .as_deref()
        .and_then(parse_hex::<32>)
        .ok_or_else(|| corrupt("chain_prev_hash"))?;
    let last: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT id, hash FROM events WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let max_session: i64 =
        conn.query_row("SELECT COALESCE(MAX(id), 0) FROM sessions", [], |r| {
            r.get(0)
        })?;
    let first = meta_i64(conn, "segment_first_event_id")?.unwrap_or(1);
    Ok(ChainState {
        last_hash: match &last {
            Some((_, h)) => h
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("events.hash"))?,
            None => prev,
        },
        next_event_id: last.map(|(id, _)| id + 1).unwrap_or(first),
        next_session_id: (max_session + 1).max(meta_i64(conn, "next_session_id")?.unwrap_or(1)),
    })
}

/// What [`write_checkpoint`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckpointOutcome {
    /// Checkpoint `n` was written.
    Written(u64),
    /// The existing checkpoint already names the head (only for `Interval`).
    Unchanged,
    /// The live file does not extend the existing checkpoint: it is kept, untouched.
    Blocked(String),
}

/// Writes the checkpoint of the live segment in `conn` (the live file of `journal`),
/// whose committed chain ends at `chain`, numbered `n` — unless the existing checkpoint
/// of this segment is not extended by the file (see [`super::checkpoint`]).
pub(crate) fn write_checkpoint(
    conn: &Connection,
    journal: &Path,
    chain: &ChainState,
    key: &HostKey,
    host_id: &str,
    n: u64,
    reason: checkpoint::CheckpointReason,
) -> Result<CheckpointOutcome, EvidenceError> {
    let sql = |op| {
        move |source| EvidenceError::Sqlite {
            op,
            path: journal.to_path_buf(),
            source,
        }
    };
    let journal_id = meta_get(conn, "journal_id")
        .map_err(sql("read journal_id"))?
        .unwrap_or_default();
    let seq = meta_i64(conn, "segment_seq")
        .map_err(sql("read segment_seq"))?
        .unwrap_or(1)
        .max(0) as u64;
    let first = meta_i64(conn, "segment_first_event_id")
        .map_err(sql("read segment_first_event_id"))?
        .unwrap_or(1);
    let chain_prev = meta_get(conn, "chain_prev_hash")
        .map_err(sql("read chain_prev_hash"))?
        .unwrap_or_default();
    let head = (chain.next_event_id > first).then(|| chain.next_event_id - 1);
    if let Some(existing) = checkpoint::read(journal, seq)? {
        let Some(old) = checkpoint::peek(&existing) else {
            return Ok(CheckpointOutcome::Blocked(format!(
                "{} is not a checkpoint",
                checkpoint::path_for(journal, seq).display()
            )));
        };
        if old.journal_id != journal_id || old.segment_seq != seq {
            return Ok(CheckpointOutcome::Blocked(format!(
                "checkpoint {} is for journal {} segment {}, the live file is journal {journal_id} segment {seq}",
                old.n, old.journal_id, old.segment_seq
            )));
        }
        let extends = match old.last_event_id {
            None => old.last_hash == chain_prev,
            Some(id) if head.is_some_and(|h| h >= id) => {
                let stored: Option<Vec<u8>> = conn
                    .query_row("SELECT hash FROM events WHERE id = ?1", [id], |r| r.get(0))
                    .optional()
                    .map_err(sql("read the checkpointed event"))?
                    .flatten();
                stored.is_some_and(|h| hex(&h) == old.last_hash)
            }
            Some(_) => false,
        };
        if !extends {
            return Ok(CheckpointOutcome::Blocked(format!(
                "checkpoint {} names event {} ({}) of segment {seq}; the live file ends at {} and does not hold that event with that hash",
                old.n,
                old.last_event_id.map_or("none".to_string(), |i| i.to_string()),
                old.last_hash,
                head.map_or("no event".to_string(), |h| format!("event {h}")),
            )));
        }
        if old.last_event_id == head && reason == checkpoint::CheckpointReason::Interval {
            return Ok(CheckpointOutcome::Unchanged);
        }
    }
    let payload = checkpoint::CheckpointPayload {
        v: 1,
        host_id: host_id.to_string(),
        journal_id,
        segment_seq: seq,
        n,
        last_event_id: head,
        last_hash: hex(&chain.last_hash),
        at_us: super::now_us(),
        reason,
    };
    let jws = checkpoint::sign(&payload, key)?;
    let dir = segments_dir(journal);
    std::fs::create_dir_all(&dir).map_err(EvidenceError::io("cannot create", &dir))?;
    write_atomically(&checkpoint::path_for(journal, seq), jws.as_bytes())?;
    Ok(CheckpointOutcome::Written(n))
}
