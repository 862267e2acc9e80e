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

use super::chain::{event_hash_with, genesis, ChainEvent, Hash};
use super::key::PublicKey;
use super::seal::{self, SealPayload};
use super::{hex, parse_hex};

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
    if meta("format")?.as_deref() != Some(crate::journal::FORMAT_MARKER) {
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
        // Journals since schema 3 keep the attested claims in both places too.
        let has_claims = seg
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('sessions') WHERE name = 'claims')",
                [],
                |r| r.get::<_, bool>(0),
            )
            .unwrap_or(false);
        let claims_column = if has_claims { "claims" } else { "NULL" };
        let Ok(mut stmt) = seg.conn.prepare(&format!(
            "SELECT id, workload, cgroup, cgroup_id, pid, pid_start_time, exe, cmdline, uid, gid, \
             user, comm, client_addr, orig_dst, target, protocol, started_at_us, ended_at_us, \
             bytes_from_client, bytes_from_server, close_reason, {claims_column} FROM sessions \
             ORDER BY id"
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
        let rows: Vec<Vec<V>> = match stmt.query_map([], |r| (0..22).map(|i| value(r, i)).collect())
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

/// Verifies the segments in `files` with `key`, and against `hwm` when given.
pub fn verify_files(files: &[PathBuf], key: &PublicKey, hwm: Option<&HighWaterMark>) -> Report {
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
                detail: reason,
            }),
        }
    }
    let mut journals = Vec::new();
    for (journal_id, mut segs) in groups {
        segs.sort_by_key(|s| s.seq);
        journals.push(checker.check_journal(&journal_id, &segs));
        if let Some(h) = hwm.filter(|h| h.journal_id == journal_id) {
            check_hwm(&mut checker, h, &segs);
        }
    }
    if let Some(h) = hwm {
        if !journals.iter().any(|j| j.journal_id == h.journal_id) {
            checker.damages.push(Damage {
                kind: DamageKind::BehindHighWaterMark,
                segment: None,
                segment_seq: Some(h.segment_seq),
                journal_id: Some(h.journal_id.clone()),
                event_id: h.last_event_id,
                session_id: None,
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
        detail,
    };
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
