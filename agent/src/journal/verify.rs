//! Offline verification of journal segments (`nhi-agent verify`).
//!
//! Segments are grouped by `meta.journal_id` and ordered by `meta.segment_seq`. Within a
//! segment every row's hash is recomputed from the stored hash of the row before it, so one
//! damaged row is reported once and does not hide damage further on. Across segments the
//! `chain_prev_hash` of each segment must be the previous one's last hash, and each seal
//! must name the previous seal's SHA-256. Seals are checked with the given public key and
//! compared with what the segment actually holds.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::evidence::chain::{event_hash_with, genesis, ChainEvent, Hash};
use crate::evidence::key::PublicKey;
use crate::evidence::seal::{self, SealPayload};
use crate::evidence::{hex, parse_hex};

/// What kind of damage was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// A row's content does not match its hash.
    ModifiedRow,
    /// Event ids are missing inside a segment.
    DeletedRow,
    /// A row verifies at another position than where it is.
    ReorderedRows,
    /// Events that the seal counts are missing at the end of the segment.
    TruncatedTail,
    /// A segment of the sequence is absent or does not link to its predecessor.
    MissingSegment,
    /// The segments end before what upstream has acknowledged.
    BehindHighWaterMark,
    /// A `sessions` row disagrees with its chained start/end events.
    ModifiedSessionRow,
    /// The seal's signature or its statements do not hold.
    InvalidSeal,
    /// The file cannot be read as a journal segment.
    Unreadable,
    /// A segment ends before (or differs from) what its signed checkpoint stated.
    TruncatedBeforeCheckpoint,
    /// A checkpoint names a segment after the last one present: the live file is gone.
    LiveSegmentDeleted,
    /// A checkpoint's signature or its statements do not hold.
    InvalidCheckpoint,
}

impl DamageKind {
    /// How reports name it.
    pub fn as_str(self) -> &'static str {
        match self {
            DamageKind::ModifiedRow => "modified row",
            DamageKind::DeletedRow => "deleted row",
            DamageKind::ReorderedRows => "reordered rows",
            DamageKind::TruncatedTail => "truncated tail",
            DamageKind::MissingSegment => "missing segment",
            DamageKind::BehindHighWaterMark => "truncated (behind upstream high-water mark)",
            DamageKind::ModifiedSessionRow => "modified session row",
            DamageKind::InvalidSeal => "invalid seal",
            DamageKind::Unreadable => "unreadable segment",
            DamageKind::TruncatedBeforeCheckpoint => "live segment truncated before checkpoint",
            DamageKind::LiveSegmentDeleted => "live segment deleted",
            DamageKind::InvalidCheckpoint => "invalid checkpoint",
        }
    }
}

impl Serialize for DamageKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    pub kind: DamageKind,
    pub segment: Option<PathBuf>,
    pub segment_seq: Option<u64>,
    pub journal_id: Option<String>,
    pub event_id: Option<i64>,
    pub session_id: Option<i64>,
    /// The number of the checkpoint the finding is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    pub detail: String,
}

/// One segment as verified.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub segment_seq: u64,
    pub events: u64,
    pub first_event_id: Option<i64>,
    pub last_event_id: Option<i64>,
    /// `sealed`, or `open (not sealed)` for a live segment.
    pub status: String,
    /// The segment's latest checkpoint, when one was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSeen>,
}

/// A checkpoint as found next to a segment.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointSeen {
    pub n: u64,
    pub last_event_id: Option<i64>,
    pub at_us: i64,
    pub path: PathBuf,
}

/// One journal (all segments with one `journal_id`).
#[derive(Debug, Clone, Serialize)]
pub struct JournalReport {
    pub journal_id: String,
    pub host_id: Option<String>,
    pub segments: Vec<SegmentReport>,
    pub events: u64,
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub intact: bool,
    pub journals: Vec<JournalReport>,
    pub first_damage: Option<Damage>,
    pub damages: Vec<Damage>,
    pub notes: Vec<String>,
    pub bytes: u64,
}

/// The upstream high-water mark (written by shipping).
#[derive(Debug, Clone, Deserialize)]
pub struct HighWaterMark {
    pub host_id: String,
    pub journal_id: String,
    pub segment_seq: u64,
    pub last_event_id: Option<i64>,
    pub last_hash: String,
    pub seal_sha256: String,
    pub updated_at_us: i64,
    /// The latest checkpoint of the live segment after `segment_seq`, when shipping
    /// followed one (see `ship::layout::Hwm`).
    #[serde(default)]
    pub checkpoint: Option<HwmCheckpoint>,
}

/// A checkpoint as the high-water mark carries it (the JWS is the evidence).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HwmCheckpoint {
    pub segment_seq: u64,
    pub n: u64,
    pub last_event_id: Option<i64>,
    pub last_hash: String,
    /// The checkpoint file's exact content (compact JWS).
    pub jws: String,
}

/// Collects the `*.db` files under `paths` (directories recursively, files as given).
pub fn collect_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "db") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out);
        } else {
            out.push(p.clone());
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    out.sort();
    out
}

struct Segment {
    path: PathBuf,
    conn: Connection,
    journal_id: String,
    host_id: Option<String>,
    seq: u64,
    chain_prev: Option<Hash>,
    first_id: i64,
    seal: Option<String>,
}

fn open_segment(path: &Path) -> Result<Segment, String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let meta = |key: &str| -> Result<Option<String>, String> {
        super::segments::meta_get(&conn, key).map_err(|e| e.to_string())
    };
    let journal_id = meta("journal_id")?.ok_or("no journal_id in meta")?;
    if meta("format")?.as_deref() != Some(super::FORMAT_MARKER) {
        return Err("not an nhi-agent journal".to_string());
    }
    let seq = meta("segment_seq")?
        .and_then(|v| v.parse().ok())
        .ok_or("no segment_seq in meta (journal written before schema 2?)")?;
    let chain_prev = meta("chain_prev_hash")?
        .as_deref()
        .and_then(parse_hex::<32>);
    let first_id = meta("segment_first_event_id")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // The `.seal` file is the authoritative copy; `meta.seal` is there for a segment sealed
    // in place by a clean stop (and as a second copy).
    let seal_file = super::segments::seal_path_for(path);
    let seal = match std::fs::read_to_string(&seal_file) {
        Ok(text) => Some(text.trim_end().to_string()),
        Err(_) => meta("seal")?,
    };
    Ok(Segment {
        host_id: meta("host_id")?,
        path: path.to_path_buf(),
        conn,
        journal_id,
        seq,
        chain_prev,
        first_id,
        seal,
    })
}

/// An event row as read back, owning its values.
#[derive(Debug, Clone)]
struct Row {
    id: i64,
    session_id: Option<i64>,
    at_us: i64,
    kind: Vec<u8>,
    direction: Option<Vec<u8>>,
    size: Option<i64>,
    data: Option<Vec<u8>>,
    hash: Option<Hash>,
}

impl Row {
    fn chain_event(&self, id: i64) -> ChainEvent<'_> {
        ChainEvent {
            id,
            session_id: self.session_id,
            at_us: self.at_us,
            kind: &self.kind,
            direction: self.direction.as_deref(),
            size: self.size,
            data: self.data.as_deref(),
        }
    }
}

/// Reads a row; `Err` names a column whose type the writer never produces.
fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Row, &'static str>> {
    fn int(v: ValueRef<'_>) -> Option<Option<i64>> {
        match v {
            ValueRef::Null => Some(None),
            ValueRef::Integer(i) => Some(Some(i)),
            _ => None,
        }
    }
    fn bytes(v: ValueRef<'_>) -> Option<Option<Vec<u8>>> {
        match v {
            ValueRef::Null => Some(None),
            ValueRef::Text(t) | ValueRef::Blob(t) => Some(Some(t.to_vec())),
            _ => None,
        }
    }
    let id: i64 = r.get(0)?;
    let Some(session_id) = int(r.get_ref(1)?) else {
        return Ok(Err("session_id"));
    };
    let Some(Some(at_us)) = int(r.get_ref(2)?) else {
        return Ok(Err("at_us"));
    };
    let Some(Some(kind)) = bytes(r.get_ref(3)?) else {
        return Ok(Err("kind"));
    };
    let Some(direction) = bytes(r.get_ref(4)?) else {
        return Ok(Err("direction"));
    };
    let Some(size) = int(r.get_ref(5)?) else {
        return Ok(Err("size"));
    };
    let Some(data) = bytes(r.get_ref(6)?) else {
        return Ok(Err("data"));
    };
    let hash = match r.get_ref(7)? {
        ValueRef::Blob(b) => b.try_into().ok(),
        _ => None,
    };
    Ok(Ok(Row {
        id,
        session_id,
        at_us,
        kind,
        direction,
        size,
        data,
        hash,
    }))
}

const ROW_SQL: &str = "SELECT id, session_id, at_us, kind, direction, size, data, hash FROM events";

/// What the rows of a segment turned out to be.
#[derive(Debug, Default)]
struct RowsSeen {
    count: u64,
    first: Option<(i64, i64)>,
    last: Option<(i64, i64)>,
    /// The stored hash of the last row (the chain's end as the file has it).
    last_hash: Option<Hash>,
}

/// Sessions' chained start and end events (data and time), by session id.
#[derive(Default)]
struct SessionEvents {
    starts: HashMap<i64, (i64, serde_json::Value)>,
    ends: HashMap<i64, (i64, serde_json::Value)>,
}

struct Checker<'a> {
    key: &'a PublicKey,
    damages: Vec<Damage>,
    notes: Vec<String>,
    scratch: Vec<u8>,
}

impl Checker<'_> {
    fn damage(
        &mut self,
        kind: DamageKind,
        seg: &Segment,
        event_id: Option<i64>,
        detail: impl Into<String>,
    ) {
        self.damages.push(Damage {
            kind,
            segment: Some(seg.path.clone()),
            segment_seq: Some(seg.seq),
            journal_id: Some(seg.journal_id.clone()),
            event_id,
            session_id: None,
            checkpoint: None,
            detail: detail.into(),
        });
    }

    fn hash(&mut self, prev: &Hash, row: &Row, id: i64) -> Hash {
        event_hash_with(prev, &row.chain_event(id), &mut self.scratch)
    }

    /// Whether `row` (with its stored hash) verifies at another id near its own: the
    /// signature of rows moved around (with their hashes) instead of edited.
    fn belongs_elsewhere(&mut self, seg: &Segment, row: &Row) -> Option<i64> {
        let stored = row.hash?;
        const WINDOW: i64 = 16;
        let mut stmt = seg
            .conn
            .prepare(&format!("{ROW_SQL} WHERE id BETWEEN ?1 AND ?2 ORDER BY id"))
            .ok()?;
        let near: Vec<Row> = stmt
            .query_map([row.id - WINDOW, row.id + WINDOW], read_row)
            .ok()?
            .flatten()
            .flatten()
            .collect();
        let mut prevs: Vec<Hash> = near.iter().filter_map(|r| r.hash).collect();
        prevs.extend(seg.chain_prev);
        for other in &near {
            if other.id == row.id {
                continue;
            }
            for prev in &prevs {
                if self.hash(prev, row, other.id) == stored {
                    return Some(other.id);
                }
            }
        }
        None
    }

    /// Walks the rows of one segment; records chain damage and the sessions' events.
    fn check_rows(&mut self, seg: &Segment, sessions: &mut SessionEvents) -> RowsSeen {
        let mut seen = RowsSeen::default();
        let legacy: i64 = seg
            .conn
            .query_row(
                "SELECT COUNT(*) FROM events WHERE id < ?1",
                [seg.first_id],
                |r| r.get(0),
            )
            .unwrap_or(0);
        if legacy > 0 {
            self.notes.push(format!(
                "{}: {legacy} events written before the hash chain existed are not covered",
                seg.path.display()
            ));
        }
        let Some(chain_prev) = seg.chain_prev else {
            self.damage(
                DamageKind::Unreadable,
                seg,
                None,
                "meta.chain_prev_hash is missing or not hex",
            );
            return seen;
        };
        let mut stmt = match seg
            .conn
            .prepare(&format!("{ROW_SQL} WHERE id >= ?1 ORDER BY id"))
        {
            Ok(stmt) => stmt,
            Err(e) => {
                self.damage(DamageKind::Unreadable, seg, None, e.to_string());
                return seen;
            }
        };
        let rows = match stmt.query_map([seg.first_id], read_row) {
            Ok(rows) => rows,
            Err(e) => {
                self.damage(DamageKind::Unreadable, seg, None, e.to_string());
                return seen;
            }
        };
        let mut prev = chain_prev;
        let mut expected = seg.first_id;
        let mut classified = 0;
        for row in rows {
            let row = match row {
                Ok(Ok(row)) => row,
                Ok(Err(column)) => {
                    self.damage(
                        DamageKind::ModifiedRow,
                        seg,
                        None,
                        format!("a row's {column} has a type the writer never stores"),
                    );
                    continue;
                }
                Err(e) => {
                    self.damage(DamageKind::Unreadable, seg, None, e.to_string());
                    break;
                }
            };
            seen.count += 1;
            if seen.first.is_none() {
                seen.first = Some((row.id, row.at_us));
            }
            seen.last = Some((row.id, row.at_us));
            let gap = row.id != expected;
            if gap {
                let detail = if row.id == expected + 1 {
                    format!("event {expected} is missing")
                } else {
                    format!("events {expected}..={} are missing", row.id - 1)
                };
                self.damage(DamageKind::DeletedRow, seg, Some(expected), detail);
            }
            let ok = row
                .hash
                .is_some_and(|h| self.hash(&prev, &row, row.id) == h);
            // Right after a gap the true predecessor is gone, so a mismatch says nothing new.
            if !ok && !gap {
                let (kind, detail) = if classified < 8 {
                    classified += 1;
                    match self.belongs_elsewhere(seg, &row) {
                        Some(at) => (
                            DamageKind::ReorderedRows,
                            format!("the row at event {} verifies as event {at}", row.id),
                        ),
                        None => (
                            DamageKind::ModifiedRow,
                            format!("event {} does not match its hash", row.id),
                        ),
                    }
                } else {
                    (
                        DamageKind::ModifiedRow,
                        format!("event {} does not match its hash", row.id),
                    )
                };
                self.damage(kind, seg, Some(row.id), detail);
            }
            prev = row.hash.unwrap_or(prev);
            expected = row.id + 1;
            seen.last_hash = row.hash;
            if let Some(session) = row.session_id {
                let data = || {
                    row.data
                        .as_deref()
                        .and_then(|d| serde_json::from_slice(d).ok())
                        .unwrap_or(serde_json::Value::Null)
                };
                match row.kind.as_slice() {
                    b"session_start" => {
                        sessions.starts.insert(session, (row.at_us, data()));
                    }
                    b"session_end" => {
                        sessions.ends.insert(session, (row.at_us, data()));
                    }
                    _ => {}
                }
            }
        }
        seen
    }

    /// Compares the seal's statements with the segment.
    fn check_seal(&mut self, seg: &Segment, p: &SealPayload, seen: &RowsSeen) {
        if p.journal_id != seg.journal_id || p.segment_seq != seg.seq {
            self.damage(
                DamageKind::InvalidSeal,
                seg,
                None,
                format!(
                    "the seal is for journal {} segment {}, the file says journal {} segment {}",
                    p.journal_id, p.segment_seq, seg.journal_id, seg.seq
                ),
            );
            return;
        }
        if seg.chain_prev.map(|h| hex(&h)).as_deref() != Some(p.prev_last_hash.as_str()) {
            self.damage(
                DamageKind::MissingSegment,
                seg,
                None,
                "the segment's chain start differs from the one its seal states",
            );
        }
        let actual_last = seen.last.map(|(id, _)| id);
        match (actual_last, p.last_event_id) {
            (a, Some(sealed)) if a.is_none_or(|a| a < sealed) => {
                let from = a.map_or(p.first_event_id.unwrap_or(sealed), |a| a + 1);
                self.damage(
                    DamageKind::TruncatedTail,
                    seg,
                    Some(from),
                    format!(
                        "the seal ends at event {sealed} ({} events), the segment at {} ({} events)",
                        p.event_count,
                        a.map_or("none".to_string(), |a| a.to_string()),
                        seen.count
                    ),
                );
            }
            (Some(a), sealed) if sealed.is_none_or(|s| a > s) => {
                self.damage(
                    DamageKind::ModifiedRow,
                    seg,
                    Some(a),
                    "events were added after the segment was sealed",
                );
            }
            _ => {
                if seen.count != p.event_count {
                    self.damage(
                        DamageKind::DeletedRow,
                        seg,
                        None,
                        format!(
                            "the seal counts {} events, the segment holds {}",
                            p.event_count, seen.count
                        ),
                    );
                } else if seen
                    .last_hash
                    .map(|h| hex(&h))
                    .unwrap_or_else(|| p.prev_last_hash.clone())
                    != p.last_hash
                {
                    self.damage(
                        DamageKind::ModifiedRow,
                        seg,
                        actual_last,
                        "the chain's last hash differs from the sealed one (rows rewritten after sealing)",
                    );
                } else if seen.first.map(|(_, at)| at) != p.first_at_us
                    || seen.last.map(|(_, at)| at) != p.last_at_us
                {
                    self.damage(
                        DamageKind::ModifiedRow,
                        seg,
                        None,
                        "first/last event times differ from the seal",
                    );
                }
            }
        }
    }

    /// Cross-checks every `sessions` row of `seg` with its chained events.
    fn check_sessions(&mut self, seg: &Segment, events: &SessionEvents) {
        // Journals since schema 3 keep the attested claims in both places too, and
        // since schema 4 the container; older ones have neither column.
        let column_or_null = |name: &'static str| {
            let exists = seg
                .conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM pragma_table_info('sessions') WHERE name = ?1)",
                    [name],
                    |r| r.get::<_, bool>(0),
                )
                .unwrap_or(false);
            if exists {
                name
            } else {
                "NULL"
            }
        };
        let claims_column = column_or_null("claims");
        let container_column = column_or_null("container");
        let Ok(mut stmt) = seg.conn.prepare(&format!(
            "SELECT id, workload, cgroup, cgroup_id, pid, pid_start_time, exe, cmdline, uid, gid, \
             user, comm, client_addr, orig_dst, target, protocol, started_at_us, ended_at_us, \
             bytes_from_client, bytes_from_server, close_reason, {claims_column}, \
             {container_column} FROM sessions ORDER BY id"
        )) else {
            self.damage(DamageKind::Unreadable, seg, None, "cannot read sessions");
            return;
        };
        type V = rusqlite::types::Value;
        // Not `r.get::<_, Value>`: rusqlite's conversion panics on text that is not
        // UTF-8, and this file is untrusted. Such text (which the agent never writes)
        // is kept as a blob, so the row differs from its chained start event.
        let value = |r: &rusqlite::Row<'_>, i: usize| -> rusqlite::Result<V> {
            Ok(match r.get_ref(i)? {
                rusqlite::types::ValueRef::Text(t) => match std::str::from_utf8(t) {
                    Ok(t) => V::Text(t.to_owned()),
                    Err(_) => V::Blob(t.to_vec()),
                },
                other => other.into(),
            })
        };
        let rows: Vec<Vec<V>> = match stmt.query_map([], |r| (0..23).map(|i| value(r, i)).collect())
        {
            Ok(rows) => rows.flatten().collect(),
            Err(e) => {
                self.damage(DamageKind::Unreadable, seg, None, e.to_string());
                return;
            }
        };
        fn json(v: &V, u64_bits: bool) -> serde_json::Value {
            match v {
                V::Null => serde_json::Value::Null,
                V::Integer(i) if u64_bits => serde_json::json!(*i as u64),
                V::Integer(i) => serde_json::json!(*i),
                V::Real(f) => serde_json::json!(f),
                V::Text(t) => serde_json::json!(t),
                V::Blob(b) => serde_json::json!(hex(b)),
            }
        }
        for row in rows {
            let V::Integer(id) = row[0] else { continue };
            let mut problem = None;
            if let Some((at, data)) = events.starts.get(&id) {
                let cmdline = match &row[7] {
                    V::Text(t) => serde_json::from_str(t).unwrap_or(serde_json::json!(t)),
                    other => json(other, false),
                };
                let mut expected = serde_json::json!({
                    "workload": json(&row[1], false),
                    "cgroup": json(&row[2], false),
                    "cgroup_id": json(&row[3], true),
                    "pid": json(&row[4], false),
                    "pid_start_time": json(&row[5], true),
                    "exe": json(&row[6], false),
                    "cmdline": cmdline,
                    "uid": json(&row[8], false),
                    "gid": json(&row[9], false),
                    "user": json(&row[10], false),
                    "comm": json(&row[11], false),
                    "client_addr": json(&row[12], false),
                    "orig_dst": json(&row[13], false),
                    "target": json(&row[14], false),
                    "protocol": json(&row[15], false),
                });
                // The start event has `claims` since attestation exists (null when
                // unattested); older events do not, and then neither may the row.
                if data.get("claims").is_some() || row[21] != V::Null {
                    expected["claims"] = match &row[21] {
                        V::Text(t) => serde_json::from_str(t).unwrap_or(serde_json::json!(t)),
                        other => json(other, false),
                    };
                }
                if data.get("container").is_some() || row[22] != V::Null {
                    expected["container"] = match &row[22] {
                        V::Text(t) => serde_json::from_str(t).unwrap_or(serde_json::json!(t)),
                        other => json(other, false),
                    };
                }
                if &expected != data {
                    problem = Some("its identity differs from its session_start event".to_string());
                } else if row[16] != V::Integer(*at) {
                    problem =
                        Some("its start time differs from its session_start event".to_string());
                }
            }
            // A session's totals and close reason are written together with its end, so a
            // row without an end (open, or a copy carried into a later segment) has none.
            if problem.is_none()
                && row[17] == V::Null
                && (row[18] != V::Null || row[19] != V::Null || row[20] != V::Null)
            {
                problem = Some("it has byte totals or a close reason but no end".to_string());
            }
            if problem.is_none() && row[17] != V::Null {
                match events.ends.get(&id) {
                    None if events.starts.contains_key(&id) => {
                        problem = Some("it has an end but no session_end event".to_string());
                    }
                    None => {}
                    Some((at, data)) => {
                        let expected = serde_json::json!({
                            "bytes_from_client": json(&row[18], true),
                            "bytes_from_server": json(&row[19], true),
                            "close_reason": json(&row[20], false),
                        });
                        if &expected != data || row[17] != V::Integer(*at) {
                            problem = Some(
                                "its end or byte totals differ from its session_end event"
                                    .to_string(),
                            );
                        }
                    }
                }
            }
            if let Some(detail) = problem {
                self.damages.push(Damage {
                    kind: DamageKind::ModifiedSessionRow,
                    segment: Some(seg.path.clone()),
                    segment_seq: Some(seg.seq),
                    journal_id: Some(seg.journal_id.clone()),
                    event_id: None,
                    session_id: Some(id),
                    checkpoint: None,
                    detail: format!("session {id}: {detail}"),
                });
            }
        }
    }

    /// Verifies one journal's segments, ordered by sequence number.
    fn check_journal(&mut self, journal_id: &str, segs: &[Segment]) -> JournalReport {
        let mut report = JournalReport {
            journal_id: journal_id.to_string(),
            host_id: segs.iter().find_map(|s| s.host_id.clone()),
            segments: Vec::new(),
            events: 0,
        };
        let mut sessions = SessionEvents::default();
        let mut prev: Option<(u64, Hash, Option<String>)> = None;
        for (i, seg) in segs.iter().enumerate() {
            let is_last = i + 1 == segs.len();
            match &prev {
                Some((seq, _, _)) if seg.seq == *seq => {
                    self.damage(DamageKind::MissingSegment, seg, None, format!("segment {} appears twice", seg.seq));
                }
                Some((seq, _, _)) if seg.seq != seq + 1 => {
                    let detail = if seg.seq == seq + 2 {
                        format!("segment {} is missing", seq + 1)
                    } else {
                        format!("segments {}..={} are missing", seq + 1, seg.seq - 1)
                    };
                    self.damage(DamageKind::MissingSegment, seg, None, detail);
                }
                Some((_, last_hash, _)) if seg.chain_prev != Some(*last_hash) => {
                    self.damage(
                        DamageKind::MissingSegment,
                        seg,
                        None,
                        format!("segment {} does not continue the chain of segment {}", seg.seq, seg.seq - 1),
                    );
                }
                None if seg.seq == 1 && seg.chain_prev != Some(genesis(journal_id)) => {
                    self.damage(DamageKind::MissingSegment, seg, None, "segment 1 does not start at the journal's genesis hash");
                }
                None if seg.seq > 1 => self.notes.push(format!(
                    "journal {journal_id}: verification starts at segment {} (earlier segments were not given)",
                    seg.seq
                )),
                _ => {}
            }
            let payload = match &seg.seal {
                None => {
                    if !is_last {
                        self.damage(
                            DamageKind::InvalidSeal,
                            seg,
                            None,
                            "the segment has no seal but later segments exist",
                        );
                    }
                    None
                }
                Some(jws) => match seal::verify(jws, self.key) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        self.damage(DamageKind::InvalidSeal, seg, None, e.to_string());
                        None
                    }
                },
            };
            if let (Some(p), Some((pseq, _, Some(prev_sha)))) = (&payload, &prev) {
                if *pseq + 1 == seg.seq && p.prev_seal_sha256.as_deref() != Some(prev_sha.as_str())
                {
                    self.damage(
                        DamageKind::MissingSegment,
                        seg,
                        None,
                        format!(
                            "the seal does not name the seal of segment {pseq} as its predecessor"
                        ),
                    );
                }
            }
            let seen = self.check_rows(seg, &mut sessions);
            if let Some(p) = &payload {
                self.check_seal(seg, p, &seen);
            }
            report.events += seen.count;
            report.segments.push(SegmentReport {
                path: seg.path.clone(),
                segment_seq: seg.seq,
                events: seen.count,
                first_event_id: seen.first.map(|(id, _)| id),
                last_event_id: seen.last.map(|(id, _)| id),
                status: if seg.seal.is_some() {
                    "sealed"
                } else {
                    "open (not sealed)"
                }
                .to_string(),
                checkpoint: None,
            });
            // The successor links to what was sealed, so that one damaged segment is not
            // reported again as a broken link.
            let last_hash = payload
                .as_ref()
                .and_then(|p| parse_hex::<32>(&p.last_hash))
                .or(seen.last_hash)
                .or(seg.chain_prev)
                .unwrap_or([0; 32]);
            prev = Some((
                seg.seq,
                last_hash,
                seg.seal.as_deref().map(seal::seal_sha256),
            ));
        }
        for seg in segs {
            self.check_sessions(seg, &sessions);
        }
        report
    }
}

/// Verifies the segments in `files` with `key`, their checkpoints (`checkpoints`, and
/// every `*.checkpoint` in the directory of each file and in its `segments/`), and
/// against `hwm` when given.
pub fn verify_files(
    files: &[PathBuf],
    checkpoints: &[PathBuf],
    key: &PublicKey,
    hwm: Option<&HighWaterMark>,
) -> Report {
    let mut checker = Checker {
        key,
        damages: Vec::new(),
        notes: Vec::new(),
        scratch: Vec::with_capacity(256),
    };
    let mut bytes = 0;
    let mut groups: BTreeMap<String, Vec<Segment>> = BTreeMap::new();
    for path in files {
        bytes += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        match open_segment(path) {
            Ok(seg) => groups.entry(seg.journal_id.clone()).or_default().push(seg),
            Err(reason) => checker.damages.push(Damage {
                kind: DamageKind::Unreadable,
                segment: Some(path.clone()),
                segment_seq: None,
                journal_id: None,
                event_id: None,
                session_id: None,
                checkpoint: None,
                detail: reason,
            }),
        }
    }
    let mut journals = Vec::new();
    for segs in groups.values_mut() {
        segs.sort_by_key(|s| s.seq);
    }
    // Checkpoints first: a segment cut back before its checkpoint is the cause of what
    // the rows and session checks then find missing.
    let checkpoint_files = checkpoint_files(files, checkpoints);
    let before = checker.damages.len();
    let seen = check_checkpoints(&mut checker, &checkpoint_files, &groups);
    // Cut-back or deleted segments come first; a checkpoint that does not verify (like a
    // seal that does not) after what the segments themselves show.
    let (invalid_checkpoints, cut_back): (Vec<Damage>, Vec<Damage>) = checker
        .damages
        .split_off(before)
        .into_iter()
        .partition(|d| d.kind == DamageKind::InvalidCheckpoint);
    checker.damages.extend(cut_back);
    for (journal_id, segs) in &groups {
        let mut report = checker.check_journal(journal_id, segs);
        for s in &mut report.segments {
            s.checkpoint = seen.get(&(journal_id.clone(), s.segment_seq)).cloned();
        }
        journals.push(report);
        if let Some(h) = hwm.filter(|h| &h.journal_id == journal_id) {
            check_hwm(&mut checker, h, segs);
        }
    }
    checker.damages.extend(invalid_checkpoints);
    if let Some(h) = hwm {
        if !journals.iter().any(|j| j.journal_id == h.journal_id) {
            checker.damages.push(Damage {
                kind: DamageKind::BehindHighWaterMark,
                segment: None,
                segment_seq: Some(h.segment_seq),
                journal_id: Some(h.journal_id.clone()),
                event_id: h.last_event_id,
                session_id: None,
                checkpoint: None,
                detail: format!("no segment of journal {} was given", h.journal_id),
            });
        }
    }
    if files.is_empty() {
        checker.notes.push("no journal files found".to_string());
    }
    Report {
        intact: checker.damages.is_empty() && !files.is_empty(),
        journals,
        first_damage: checker.damages.first().cloned(),
        damages: checker.damages,
        notes: checker.notes,
        bytes,
    }
}

fn check_hwm(checker: &mut Checker<'_>, h: &HighWaterMark, segs: &[Segment]) {
    let behind = |detail: String| Damage {
        kind: DamageKind::BehindHighWaterMark,
        segment: None,
        segment_seq: Some(h.segment_seq),
        journal_id: Some(h.journal_id.clone()),
        event_id: h.last_event_id,
        session_id: None,
        checkpoint: None,
        detail,
    };
    if let Some(c) = &h.checkpoint {
        check_hwm_checkpoint(checker, h, c, segs);
    }
    match segs.iter().find(|s| s.seq == h.segment_seq) {
        Some(seg) => {
            let sha = seg.seal.as_deref().map(seal::seal_sha256);
            if sha.as_deref() != Some(h.seal_sha256.as_str()) {
                checker.damages.push(behind(format!(
                    "segment {} is not the one upstream acknowledged (seal differs)",
                    h.segment_seq
                )));
            }
        }
        None if segs
            .iter()
            .map(|s| s.seq)
            .max()
            .is_none_or(|max| max < h.segment_seq) =>
        {
            checker.damages.push(behind(format!(
                "upstream acknowledged segment {} (event {:?}), the journal ends before it",
                h.segment_seq, h.last_event_id
            )));
        }
        // Shipped and removed locally by retention: nothing to compare.
        None => {}
    }
}

/// The checkpoint files to check: the given ones and those in the directory of each
/// segment file and in its `segments/` (deduplicated).
fn checkpoint_files(files: &[PathBuf], given: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for f in files {
        if let Some(dir) = f.parent() {
            dirs.push(dir.to_path_buf());
            dirs.push(dir.join("segments"));
        }
    }
    dirs.sort();
    dirs.dedup();
    let mut out: Vec<PathBuf> = given.to_vec();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        out.extend(entries.flatten().map(|e| e.path()).filter(|p| {
            p.extension()
                .is_some_and(|e| e == super::checkpoint::EXTENSION)
        }));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    out.sort();
    out
}

/// What a segment holds at and up to an event id.
fn head_of(seg: &Segment) -> Option<i64> {
    seg.conn
        .query_row(
            "SELECT MAX(id) FROM events WHERE id >= ?1",
            [seg.first_id],
            |r| r.get::<_, Option<i64>>(0),
        )
        .ok()
        .flatten()
}

fn hash_at(seg: &Segment, id: i64) -> Option<Vec<u8>> {
    seg.conn
        .query_row("SELECT hash FROM events WHERE id = ?1", [id], |r| {
            r.get::<_, Option<Vec<u8>>>(0)
        })
        .ok()
        .flatten()
}

/// How a segment compares with a checkpoint of it: `None` when it holds the
/// checkpointed head, else the damage kind, the first missing event and a description.
fn compare_with_checkpoint(
    seg: &Segment,
    n: u64,
    last_event_id: Option<i64>,
    last_hash: &str,
    at_us: Option<i64>,
) -> Option<(DamageKind, Option<i64>, String)> {
    let id = last_event_id?;
    let when = at_us
        .map(|us| {
            format!(
                " (taken {})",
                super::format_rfc3339_us(
                    std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64)
                )
            )
        })
        .unwrap_or_default();
    let head = head_of(seg);
    if head.is_none_or(|h| h < id) {
        let from = head.map_or(seg.first_id, |h| h + 1);
        let missing = if from == id {
            format!("event {id} is gone")
        } else {
            format!("events {from}..={id} are gone")
        };
        return Some((
            DamageKind::TruncatedBeforeCheckpoint,
            Some(from),
            format!(
                "checkpoint {n}{when} states segment {} up to event {id}; the segment ends at {}: {missing}",
                seg.seq,
                head.map_or("no event".to_string(), |h| format!("event {h}")),
            ),
        ));
    }
    match hash_at(seg, id) {
        Some(h) if hex(&h) == last_hash => None,
        Some(_) => Some((
            DamageKind::TruncatedBeforeCheckpoint,
            Some(id),
            format!("event {id} differs from checkpoint {n}{when}: the segment was cut back and rewritten"),
        )),
        None => Some((
            DamageKind::TruncatedBeforeCheckpoint,
            Some(id),
            format!("event {id}, the head of checkpoint {n}{when}, is gone"),
        )),
    }
}

/// Checks every checkpoint against the segment it names; returns the checkpoints seen
/// by (journal id, segment seq).
fn check_checkpoints(
    checker: &mut Checker<'_>,
    files: &[PathBuf],
    groups: &BTreeMap<String, Vec<Segment>>,
) -> HashMap<(String, u64), CheckpointSeen> {
    let mut seen = HashMap::new();
    for path in files {
        let damage = |kind, seq: Option<u64>, journal: Option<&str>, n, event_id, detail| Damage {
            kind,
            segment: Some(path.clone()),
            segment_seq: seq,
            journal_id: journal.map(str::to_owned),
            event_id,
            session_id: None,
            checkpoint: n,
            detail,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                checker.damages.push(damage(
                    DamageKind::InvalidCheckpoint,
                    None,
                    None,
                    None,
                    None,
                    format!("cannot read it: {e}"),
                ));
                continue;
            }
        };
        let p = match super::checkpoint::verify(text.trim_end(), checker.key) {
            Ok(p) => p,
            Err(e) => {
                checker.damages.push(damage(
                    DamageKind::InvalidCheckpoint,
                    None,
                    None,
                    None,
                    None,
                    e.to_string(),
                ));
                continue;
            }
        };
        let named = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok());
        if named != Some(p.segment_seq) {
            checker.damages.push(damage(
                DamageKind::InvalidCheckpoint,
                Some(p.segment_seq),
                Some(&p.journal_id),
                Some(p.n),
                None,
                format!(
                    "checkpoint {} is of segment {}, stored under another name",
                    p.n, p.segment_seq
                ),
            ));
            continue;
        }
        let segs = groups.get(&p.journal_id).map(Vec::as_slice).unwrap_or(&[]);
        match segs.iter().find(|s| s.seq == p.segment_seq) {
            Some(seg) => {
                seen.insert(
                    (p.journal_id.clone(), p.segment_seq),
                    CheckpointSeen {
                        n: p.n,
                        last_event_id: p.last_event_id,
                        at_us: p.at_us,
                        path: path.clone(),
                    },
                );
                // A valid seal that reaches the checkpointed head already speaks for the
                // segment (its own checks name any truncation); a seal short of it was
                // made after the live file was cut back.
                let sealed_past = seg
                    .seal
                    .as_deref()
                    .and_then(|jws| seal::verify(jws, checker.key).ok())
                    .is_some_and(|sp| sp.last_event_id >= p.last_event_id);
                if sealed_past {
                    continue;
                }
                if let Some((kind, event_id, detail)) =
                    compare_with_checkpoint(seg, p.n, p.last_event_id, &p.last_hash, Some(p.at_us))
                {
                    checker.damages.push(Damage {
                        segment: Some(seg.path.clone()),
                        ..damage(
                            kind,
                            Some(p.segment_seq),
                            Some(&p.journal_id),
                            Some(p.n),
                            event_id,
                            detail,
                        )
                    });
                }
            }
            None if segs.last().is_none_or(|last| last.seq < p.segment_seq) => {
                checker.damages.push(damage(
                    DamageKind::LiveSegmentDeleted,
                    Some(p.segment_seq),
                    Some(&p.journal_id),
                    Some(p.n),
                    p.last_event_id,
                    format!(
                        "checkpoint {} states segment {} of journal {} up to event {}; no file of that segment was found",
                        p.n,
                        p.segment_seq,
                        p.journal_id,
                        p.last_event_id.map_or("none".to_string(), |i| i.to_string())
                    ),
                ));
            }
            // Earlier segments not given (or removed by retention after shipping), or a
            // gap the sequence check reports as a missing segment.
            None => {}
        }
    }
    seen
}

/// The journal must reach the checkpoint upstream holds.
fn check_hwm_checkpoint(
    checker: &mut Checker<'_>,
    h: &HighWaterMark,
    c: &HwmCheckpoint,
    segs: &[Segment],
) {
    let behind = |detail: String, event_id| Damage {
        kind: DamageKind::BehindHighWaterMark,
        segment: None,
        segment_seq: Some(c.segment_seq),
        journal_id: Some(h.journal_id.clone()),
        event_id,
        session_id: None,
        checkpoint: Some(c.n),
        detail,
    };
    match super::checkpoint::verify(&c.jws, checker.key) {
        Ok(p)
            if p.segment_seq == c.segment_seq
                && p.n == c.n
                && p.last_event_id == c.last_event_id
                && p.last_hash == c.last_hash
                && p.journal_id == h.journal_id => {}
        Ok(_) => {
            checker.damages.push(Damage {
                kind: DamageKind::InvalidCheckpoint,
                ..behind(
                    "the high-water mark's checkpoint fields differ from its signed checkpoint"
                        .into(),
                    None,
                )
            });
            return;
        }
        Err(e) => {
            checker.damages.push(Damage {
                kind: DamageKind::InvalidCheckpoint,
                ..behind(format!("the high-water mark's checkpoint: {e}"), None)
            });
            return;
        }
    }
    match segs.iter().find(|s| s.seq == c.segment_seq) {
        Some(seg) => {
            if let Some((_, event_id, detail)) =
                compare_with_checkpoint(seg, c.n, c.last_event_id, &c.last_hash, None)
            {
                checker.damages.push(Damage {
                    segment: Some(seg.path.clone()),
                    ..behind(format!("the high-water mark's {detail}"), event_id)
                });
            }
        }
        // Exactly the sealed segments up to the mark (an upstream copy: live segments
        // are shipped once sealed): the checkpoint is about the host's live file.
        None if segs.last().is_some_and(|last| last.seq == h.segment_seq)
            && segs.iter().all(|s| s.seal.is_some()) =>
        {
            checker.notes.push(format!(
                "the high-water mark also holds checkpoint {} of live segment {} (up to event {}): \
                 these files end with the last shipped segment; verify the host's journal \
                 directory with this mark to check its live segment",
                c.n,
                c.segment_seq,
                c.last_event_id.map_or("none".to_string(), |e| e.to_string())
            ));
        }
        None if segs.last().is_none_or(|last| last.seq < c.segment_seq) => {
            checker.damages.push(behind(
                format!(
                    "upstream holds checkpoint {} of segment {} (event {:?}); the journal ends before that segment",
                    c.n, c.segment_seq, c.last_event_id
                ),
                c.last_event_id,
            ));
        }
        None => {}
    }
}
