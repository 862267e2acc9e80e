//! Read-only access to a journal, for the CLI and for tests.
//!
//! It must work in two situations that pull in different directions:
//! - next to a running agent, on the live file: the agent uses WAL, so a plain read-only
//!   connection sees every committed transaction and never blocks the writer;
//! - offline, on a file copied from another host, possibly into a read-only place: SQLite
//!   then cannot create the `-shm` index it needs for WAL, so when no `-wal` file exists
//!   (the agent closed cleanly, or the file was copied alone) the reader falls back to
//!   opening the file as immutable, which needs no shared memory and writes nothing.
//!
//! The reader never creates a file: pointing it at a wrong path is an error, not a new
//! empty journal.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, ErrorCode, OpenFlags, Row};
use serde::{Serialize, Serializer};

use crate::identity::SessionIdentity;

use super::schema::{self, BUSY_TIMEOUT};
use super::{
    format_rfc3339_us, system_time_to_us, us_to_system_time, Direction, JournalError, SessionId,
};

/// Which sessions [`JournalReader::sessions`] returns.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    /// Only sessions of this workload (exact match).
    pub workload: Option<String>,
    /// Only sessions to this target (exact match).
    pub target: Option<String>,
    /// Only sessions started at or after this time.
    pub since: Option<SystemTime>,
    /// Only the `limit` most recent matching sessions (still returned oldest first).
    pub limit: Option<usize>,
    /// Only sessions whose attested claims have each of these (name, value) pairs; the
    /// value is compared as text (a number by its decimal text, a boolean as
    /// `true`/`false`, see [`crate::policy::claim_text`]).
    pub claims: Vec<(String, String)>,
}

/// One session as stored, serialized with the key names the CLI's `--json` promises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRow {
    pub id: SessionId,
    #[serde(flatten)]
    pub identity: SessionIdentity,
    #[serde(serialize_with = "serialize_time")]
    pub started_at: SystemTime,
    #[serde(serialize_with = "serialize_opt_time")]
    pub ended_at: Option<SystemTime>,
    /// `ended_at - started_at` in whole milliseconds; negative if the wall clock stepped
    /// back during the session (shown as recorded rather than hidden).
    pub duration_ms: Option<i64>,
    /// The total recorded at the end; while the session is open (or if the agent died
    /// before recording the end) the sum of the chunks journaled so far.
    pub bytes_from_client: u64,
    pub bytes_from_server: u64,
    pub close_reason: Option<String>,
    /// The claims attested for the session's cgroup; `None` when unattested (or the
    /// journal predates attestation).
    pub claims: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What an event records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    SessionStart,
    Chunk,
    SessionEnd,
    /// Any other kind, kept as stored: in particular the protocol events recorded through
    /// the pre-log (`JournalHandle::record`, e.g. `pg.query`), whose JSON is in
    /// [`EventRow::data`] and whose direction and size are `None`.
    Other(String),
}

impl EventKind {
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::SessionStart => "session_start",
            EventKind::Chunk => "chunk",
            EventKind::SessionEnd => "session_end",
            EventKind::Other(kind) => kind,
        }
    }

    fn from_storage(kind: String) -> EventKind {
        match kind.as_str() {
            "session_start" => EventKind::SessionStart,
            "chunk" => EventKind::Chunk,
            "session_end" => EventKind::SessionEnd,
            _ => EventKind::Other(kind),
        }
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One row of the append-only `events` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub session_id: Option<SessionId>,
    #[serde(serialize_with = "serialize_time")]
    pub at: SystemTime,
    pub kind: EventKind,
    pub direction: Option<Direction>,
    pub size: Option<u32>,
    pub data: Option<serde_json::Value>,
    /// The event's hash in the chain (hex SHA-256, see `evidence::chain`): what a copy
    /// of the event elsewhere (a SIEM, an export) is checked against. `None` for rows
    /// written before the chain existed (schema 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

fn serialize_time<S: Serializer>(t: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_rfc3339_us(*t))
}

fn serialize_opt_time<S: Serializer>(
    t: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize_time(t, serializer),
        None => serializer.serialize_none(),
    }
}

/// A read-only connection to a journal.
pub struct JournalReader {
    conn: Connection,
    path: PathBuf,
    /// Whether `sessions` has the `claims` column (journals from before attestation
    /// do not).
    has_claims: bool,
    /// Whether `sessions` has the `container` column (schema 4).
    has_container: bool,
    /// The event columns read: with `hash` where the journal has it (schema 2).
    event_columns: &'static str,
}

impl std::fmt::Debug for JournalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

const SESSION_COLUMNS: &str = "s.id, s.workload, s.cgroup, s.cgroup_id, s.pid, \
    s.pid_start_time, s.exe, s.cmdline, s.uid, s.gid, s.user, s.comm, s.client_addr, \
    s.orig_dst, s.target, s.protocol, s.started_at_us, s.ended_at_us, \
    COALESCE(s.bytes_from_client, (SELECT COALESCE(SUM(e.size), 0) FROM events e \
        WHERE e.session_id = s.id AND e.kind = 'chunk' AND e.direction = 'c2s')), \
    COALESCE(s.bytes_from_server, (SELECT COALESCE(SUM(e.size), 0) FROM events e \
        WHERE e.session_id = s.id AND e.kind = 'chunk' AND e.direction = 's2c')), \
    s.close_reason";

/// The columns [`RawEvent::from_row`] reads.
const EVENT_COLUMNS: &str = "id, session_id, at_us, kind, direction, size, data, hash";
/// The same for journals from before the hash chain (schema 1).
const EVENT_COLUMNS_NO_HASH: &str = "id, session_id, at_us, kind, direction, size, data, NULL";

/// Whether the journal's `sessions` table has a column `name`.
fn sessions_have(conn: &Connection, name: &str) -> Result<bool, JournalError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('sessions') WHERE name = ?1)",
        [name],
        |row| row.get(0),
    )
    .map_err(JournalError::sqlite("read the sessions columns"))
}
/// [`SESSION_COLUMNS`] without the per-session sums over the chunks of open sessions:
/// their byte totals read as 0. Listing the context of events does not need them, and on
/// a journal with many long open sessions the sums cost more than the search itself.
const SESSION_COLUMNS_NO_SUMS: &str = "s.id, s.workload, s.cgroup, s.cgroup_id, s.pid, \
    s.pid_start_time, s.exe, s.cmdline, s.uid, s.gid, s.user, s.comm, s.client_addr, \
    s.orig_dst, s.target, s.protocol, s.started_at_us, s.ended_at_us, \
    COALESCE(s.bytes_from_client, 0), COALESCE(s.bytes_from_server, 0), s.close_reason";

impl JournalReader {
    /// Opens the journal at `path` read-only; refuses a missing file, a file that is not a
    /// journal, and a journal written by a newer schema.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(JournalError::Missing {
                    path: path.to_path_buf(),
                })
            }
            Ok(meta) if meta.is_dir() => {
                return Err(JournalError::NotAJournal {
                    path: path.to_path_buf(),
                    reason: "it is a directory".to_string(),
                })
            }
            // Other problems (permissions...) are reported by SQLite below, with its reason.
            _ => {}
        }

        let conn = open_read_only(path, false)?;
        let conn = match schema::check_readable(&conn, path) {
            Ok(()) => conn,
            Err(e) if needs_shared_memory(&e) && !wal_file(path).exists() => {
                // Without a -wal file every committed transaction is in the main file, so
                // reading it as immutable is exact; see the module documentation.
                drop(conn);
                let conn = open_read_only(path, true)?;
                schema::check_readable(&conn, path)?;
                conn
            }
            Err(e) => return Err(e),
        };
        let has_claims = sessions_have(&conn, "claims")?;
        let has_container = sessions_have(&conn, "container")?;
        let has_hash: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('events') WHERE name = 'hash')",
                [],
                |row| row.get(0),
            )
            .map_err(JournalError::sqlite("read the events columns"))?;
        Ok(JournalReader {
            conn,
            path: path.to_path_buf(),
            has_claims,
            has_container,
            event_columns: if has_hash {
                EVENT_COLUMNS
            } else {
                EVENT_COLUMNS_NO_HASH
            },
        })
    }

    /// The file this reader was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`SESSION_COLUMNS`], the claims and the container (NULL in journals without
    /// the columns).
    fn session_columns(&self) -> String {
        format!("{SESSION_COLUMNS}, {}", self.extra_columns())
    }

    /// The claims and container columns, or NULL where the journal predates them.
    fn extra_columns(&self) -> String {
        let claims = if self.has_claims { "s.claims" } else { "NULL" };
        let container = if self.has_container {
            "s.container"
        } else {
            "NULL"
        };
        format!("{claims}, {container}")
    }

    /// Sessions matching `filter`, ordered by start time then id.
    pub fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionRow>, JournalError> {
        let mut clauses = Vec::new();
        let mut args: Vec<Value> = Vec::new();
        if let Some(workload) = &filter.workload {
            args.push(Value::Text(workload.clone()));
            clauses.push(format!("s.workload = ?{}", args.len()));
        }
        if let Some(target) = &filter.target {
            args.push(Value::Text(target.clone()));
            clauses.push(format!("s.target = ?{}", args.len()));
        }
        if let Some(since) = filter.since {
            args.push(Value::Integer(system_time_to_us(since)));
            clauses.push(format!("s.started_at_us >= ?{}", args.len()));
        }
        for (name, value) in &filter.claims {
            if !self.has_claims {
                clauses.push("0".to_string());
                break;
            }
            args.push(Value::Text(name.clone()));
            let name_arg = args.len();
            args.push(Value::Text(value.clone()));
            // json_each gives each claim's type, so numbers and booleans compare by the
            // same text as crate::policy::claim_text.
            clauses.push(format!(
                "EXISTS (SELECT 1 FROM json_each(s.claims) c WHERE c.key = ?{name_arg} AND \
                 (CASE c.type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' \
                  WHEN 'text' THEN c.value WHEN 'integer' THEN CAST(c.value AS TEXT) \
                  WHEN 'real' THEN CAST(c.value AS TEXT) END) = ?{})",
                args.len()
            ));
        }
        let where_clause = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let columns = self.session_columns();
        let sql = match filter.limit {
            // The most recent N, then put back in chronological order, like `tail`.
            Some(limit) => {
                args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
                format!(
                    "SELECT * FROM (SELECT {columns} FROM sessions s {where_clause} \
                     ORDER BY s.started_at_us DESC, s.id DESC LIMIT ?{}) \
                     ORDER BY 17, 1",
                    args.len()
                )
            }
            None => format!(
                "SELECT {columns} FROM sessions s {where_clause} \
                 ORDER BY s.started_at_us, s.id"
            ),
        };
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(JournalError::sqlite("query sessions"))?;
        let raws = stmt
            .query_map(params_from_iter(args), RawSession::from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(JournalError::sqlite("read sessions"))?;
        raws.into_iter().map(RawSession::into_row).collect()
    }

    /// The session with this id, if there is one.
    pub fn session(&self, id: SessionId) -> Result<Option<SessionRow>, JournalError> {
        let sql = format!(
            "SELECT {} FROM sessions s WHERE s.id = ?1",
            self.session_columns()
        );
        let raw = self
            .conn
            .query_row(&sql, [id], RawSession::from_row)
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                other => Err(other),
            })
            .map_err(JournalError::sqlite("read session"))?;
        raw.map(RawSession::into_row).transpose()
    }

    /// All events of a session, in the order they were journaled.
    pub fn events(&self, session_id: SessionId) -> Result<Vec<EventRow>, JournalError> {
        let mut events = Vec::new();
        self.for_each_event(session_id, |event| {
            events.push(event);
            Ok::<(), JournalError>(())
        })?;
        Ok(events)
    }

    /// Streams the events of a session in journal order without holding them all in memory
    /// (a long session can have millions of chunks). Stops at the first error of `f`.
    pub fn for_each_event<E: From<JournalError>>(
        &self,
        session_id: SessionId,
        mut f: impl FnMut(EventRow) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {} FROM events WHERE session_id = ?1 ORDER BY id",
                self.event_columns
            ))
            .map_err(JournalError::sqlite("query events"))?;
        let mut rows = stmt
            .query([session_id])
            .map_err(JournalError::sqlite("query events"))?;
        while let Some(row) = rows.next().map_err(JournalError::sqlite("read events"))? {
            let raw = RawEvent::from_row(row).map_err(JournalError::sqlite("read events"))?;
            f(raw.into_row()?)?;
        }
        Ok(())
    }
}

impl JournalReader {
    /// A value of the `meta` table (`journal_id`, `host_id`, `segment_seq`, ...), if set.
    pub fn meta(&self, key: &str) -> Result<Option<String>, JournalError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get::<_, String>(0)
            })
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                other => Err(other),
            })
            .map_err(JournalError::sqlite("read meta"))
    }

    /// The largest event id in this file (`None` when it holds no event). Of two copies of
    /// the same segment, the one with more events is the later copy.
    pub fn last_event_id(&self) -> Result<Option<i64>, JournalError> {
        self.conn
            .query_row("SELECT MAX(id) FROM events", [], |row| row.get(0))
            .map_err(JournalError::sqlite("read last event id"))
    }

    /// Up to `limit` events with an id above `after`, in journal order: how a live
    /// stream (`crate::stream`) follows the journal.
    pub fn events_after(&self, after: i64, limit: usize) -> Result<Vec<EventRow>, JournalError> {
        let sql = format!(
            "SELECT {} FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
            self.event_columns
        );
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(JournalError::sqlite("query events"))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt
            .query(rusqlite::params![after, limit])
            .map_err(JournalError::sqlite("query events"))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(JournalError::sqlite("read events"))? {
            let raw = RawEvent::from_row(row).map_err(JournalError::sqlite("read events"))?;
            out.push(raw.into_row()?);
        }
        Ok(out)
    }

    /// Streams the events that pass `scan`, in journal order (by id), including events
    /// that belong to no session. The conditions are evaluated by SQLite so that a search
    /// over millions of events does not decode rows it would throw away.
    pub fn scan_events<E: From<JournalError>>(
        &self,
        scan: &EventScan,
        mut f: impl FnMut(EventRow) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut clauses = Vec::new();
        let mut args: Vec<Value> = Vec::new();
        if let Some(session) = scan.session {
            args.push(Value::Integer(session));
            clauses.push(format!("session_id = ?{}", args.len()));
        }
        if !scan.kinds.is_empty() {
            let mut marks = Vec::new();
            for kind in &scan.kinds {
                args.push(Value::Text(kind.clone()));
                marks.push(format!("?{}", args.len()));
            }
            clauses.push(format!("kind IN ({})", marks.join(", ")));
        }
        if let Some(since) = scan.since {
            args.push(Value::Integer(system_time_to_us(since)));
            clauses.push(format!("at_us >= ?{}", args.len()));
        }
        if let Some(until) = scan.until {
            args.push(Value::Integer(system_time_to_us(until)));
            clauses.push(format!("at_us <= ?{}", args.len()));
        }
        if let Some(text) = &scan.text {
            // Exact and case-sensitive, like the check the CLI repeats on the decoded row;
            // json_valid keeps a non-JSON `data` (never written, but this is untrusted
            // input) from failing the whole query. A member that is neither a string nor
            // an array counts as absent, as in the CLI's check.
            args.push(Value::Text(text.needle.clone()));
            let needle = args.len();
            let mut per_kind = Vec::new();
            for (kind, texts) in &text.kinds {
                args.push(Value::Text(kind.clone()));
                let kind = args.len();
                let mut any_text = Vec::new();
                for members in texts {
                    let mut parts = Vec::new();
                    for member in members {
                        args.push(Value::Text(format!("$.{member}")));
                        // An array counts as its strings joined with a space (none: absent).
                        parts.push(format!(
                            "CASE json_type(data, ?{n}) WHEN 'text' THEN json_extract(data, ?{n}) \
                             WHEN 'array' THEN (SELECT group_concat(value, ' ' ORDER BY key) \
                             FROM json_each(data, ?{n}) WHERE type = 'text') END",
                            n = args.len()
                        ));
                    }
                    let joined = if parts.is_empty() {
                        "''".to_string()
                    } else {
                        format!("concat_ws(' ', {})", parts.join(", "))
                    };
                    any_text.push(format!("instr({joined}, ?{needle}) > 0"));
                }
                if !any_text.is_empty() {
                    per_kind.push(format!("(kind = ?{kind} AND ({}))", any_text.join(" OR ")));
                }
            }
            if per_kind.is_empty() {
                per_kind.push("0".into());
            }
            clauses.push(format!("json_valid(data) AND ({})", per_kind.join(" OR ")));
        }
        let where_clause = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT {} FROM events {where_clause} ORDER BY id",
            self.event_columns
        );
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(JournalError::sqlite("query events"))?;
        let mut rows = stmt
            .query(params_from_iter(args))
            .map_err(JournalError::sqlite("query events"))?;
        while let Some(row) = rows.next().map_err(JournalError::sqlite("read events"))? {
            let raw = RawEvent::from_row(row).map_err(JournalError::sqlite("read events"))?;
            f(raw.into_row()?)?;
        }
        Ok(())
    }
}

impl JournalReader {
    /// Every session, by id; with `open_totals` false the byte totals of sessions without
    /// an end are 0 instead of the sums of their chunks (see [`SESSION_COLUMNS_NO_SUMS`]).
    pub fn all_sessions(&self, open_totals: bool) -> Result<Vec<SessionRow>, JournalError> {
        let columns = if open_totals {
            SESSION_COLUMNS
        } else {
            SESSION_COLUMNS_NO_SUMS
        };
        let extra = self.extra_columns();
        let sql = format!("SELECT {columns}, {extra} FROM sessions s ORDER BY s.id");
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(JournalError::sqlite("query sessions"))?;
        let raws = stmt
            .query_map([], RawSession::from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(JournalError::sqlite("read sessions"))?;
        raws.into_iter().map(RawSession::into_row).collect()
    }
}

/// Which events [`JournalReader::scan_events`] returns; every condition set must hold.
#[derive(Debug, Clone, Default)]
pub struct EventScan {
    /// Only the events of this session.
    pub session: Option<SessionId>,
    /// Only events of these kinds (any kind when empty).
    pub kinds: Vec<String>,
    /// Only events at or after this time.
    pub since: Option<SystemTime>,
    /// Only events at or before this time.
    pub until: Option<SystemTime>,
    /// Only request events whose text contains a string (case-sensitive).
    pub text: Option<TextScan>,
}

/// `needle` in a text of request events: for each (kind, texts), an event of that kind
/// matches when one of its texts (string members, and the strings of array members,
/// joined with a space: what
/// `cli::views::RequestEvents::texts` makes of it) contains the needle. Events of other
/// kinds do not match.
#[derive(Debug, Clone, Default)]
pub struct TextScan {
    pub needle: String,
    pub kinds: Vec<(String, Vec<Vec<String>>)>,
}

/// `-wal` next to the database, where SQLite keeps committed transactions not yet
/// checkpointed into the main file.
fn wal_file(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push("-wal");
    PathBuf::from(name)
}

/// Whether opening failed because SQLite could not set up WAL shared memory (typically a
/// read-only directory or medium).
fn needs_shared_memory(e: &JournalError) -> bool {
    match e {
        JournalError::Sqlite { source, .. } | JournalError::Open { source, .. } => matches!(
            source.sqlite_error_code(),
            Some(ErrorCode::CannotOpen) | Some(ErrorCode::ReadOnly)
        ),
        _ => false,
    }
}

pub(super) fn open_read_only(path: &Path, immutable: bool) -> Result<Connection, JournalError> {
    let open_err = |source| JournalError::Open {
        path: path.to_path_buf(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = if immutable {
        Connection::open_with_flags(
            format!("file:{}?immutable=1", uri_path(path)),
            flags | OpenFlags::SQLITE_OPEN_URI,
        )
    } else {
        Connection::open_with_flags(path, flags)
    }
    .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(JournalError::sqlite("set busy_timeout"))?;
    // A journal copied from another host is untrusted input: keep SQL functions used in its
    // schema (views, triggers) from doing anything unusual while we read it.
    conn.pragma_update(None, "trusted_schema", false)
        .map_err(JournalError::sqlite("set trusted_schema"))?;
    Ok(conn)
}

/// Percent-encodes a path for an SQLite `file:` URI.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `sessions` row with SQLite's types, before validation.
struct RawSession {
    id: i64,
    workload: String,
    cgroup: String,
    cgroup_id: i64,
    pid: i64,
    pid_start_time: Option<i64>,
    exe: Option<String>,
    cmdline: Option<String>,
    uid: i64,
    gid: i64,
    user: Option<String>,
    comm: String,
    client_addr: String,
    orig_dst: String,
    target: String,
    protocol: String,
    started_at_us: i64,
    ended_at_us: Option<i64>,
    bytes_from_client: i64,
    bytes_from_server: i64,
    close_reason: Option<String>,
    claims: Option<String>,
    container: Option<String>,
}

impl RawSession {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawSession {
            id: row.get(0)?,
            workload: row.get(1)?,
            cgroup: row.get(2)?,
            cgroup_id: row.get(3)?,
            pid: row.get(4)?,
            pid_start_time: row.get(5)?,
            exe: row.get(6)?,
            cmdline: row.get(7)?,
            uid: row.get(8)?,
            gid: row.get(9)?,
            user: row.get(10)?,
            comm: row.get(11)?,
            client_addr: row.get(12)?,
            orig_dst: row.get(13)?,
            target: row.get(14)?,
            protocol: row.get(15)?,
            started_at_us: row.get(16)?,
            ended_at_us: row.get(17)?,
            bytes_from_client: row.get(18)?,
            bytes_from_server: row.get(19)?,
            close_reason: row.get(20)?,
            claims: row.get(21)?,
            container: row.get(22)?,
        })
    }

    fn into_row(self) -> Result<SessionRow, JournalError> {
        let id = self.id;
        let corrupt = |what: &'static str, reason: String| JournalError::Corrupt {
            table: "sessions",
            id,
            what,
            reason,
        };
        let u32_field = |what: &'static str, v: i64| {
            u32::try_from(v).map_err(|_| corrupt(what, format!("{v} is out of range")))
        };
        let time = |what: &'static str, us: i64| {
            us_to_system_time(us).ok_or_else(|| corrupt(what, format!("{us} is out of range")))
        };
        let addr = |what: &'static str, text: &str| {
            text.parse::<SocketAddr>()
                .map_err(|e| corrupt(what, format!("{text:?}: {e}")))
        };
        let cmdline = self
            .cmdline
            .as_deref()
            .map(serde_json::from_str::<Vec<String>>)
            .transpose()
            .map_err(|e| corrupt("cmdline", e.to_string()))?;
        let claims = self
            .claims
            .as_deref()
            .map(serde_json::from_str::<serde_json::Map<String, serde_json::Value>>)
            .transpose()
            .map_err(|e| corrupt("claims", e.to_string()))?;
        let container = self
            .container
            .as_deref()
            .map(serde_json::from_str::<crate::identity::ContainerIdentity>)
            .transpose()
            .map_err(|e| corrupt("container", e.to_string()))?;
        Ok(SessionRow {
            id,
            identity: SessionIdentity {
                workload: self.workload,
                cgroup: self.cgroup,
                // The writer stores these u64 values by bit pattern (see writer::u64_bits).
                cgroup_id: self.cgroup_id as u64,
                pid: u32_field("pid", self.pid)?,
                pid_start_time: self.pid_start_time.map(|v| v as u64),
                exe: self.exe,
                cmdline,
                uid: u32_field("uid", self.uid)?,
                gid: u32_field("gid", self.gid)?,
                user: self.user,
                comm: self.comm,
                client_addr: addr("client_addr", &self.client_addr)?,
                orig_dst: addr("orig_dst", &self.orig_dst)?,
                target: self.target,
                protocol: self.protocol,
                container,
            },
            started_at: time("started_at_us", self.started_at_us)?,
            ended_at: self
                .ended_at_us
                .map(|us| time("ended_at_us", us))
                .transpose()?,
            duration_ms: self
                .ended_at_us
                .map(|end| end.saturating_sub(self.started_at_us) / 1000),
            bytes_from_client: self.bytes_from_client as u64,
            bytes_from_server: self.bytes_from_server as u64,
            close_reason: self.close_reason,
            claims,
        })
    }
}

/// An `events` row with SQLite's types, before validation.
struct RawEvent {
    id: i64,
    session_id: Option<i64>,
    at_us: i64,
    kind: String,
    direction: Option<String>,
    size: Option<i64>,
    data: Option<String>,
    hash: Option<Vec<u8>>,
}

impl RawEvent {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawEvent {
            id: row.get(0)?,
            session_id: row.get(1)?,
            at_us: row.get(2)?,
            kind: row.get(3)?,
            direction: row.get(4)?,
            size: row.get(5)?,
            data: row.get(6)?,
            hash: row.get(7)?,
        })
    }

    fn into_row(self) -> Result<EventRow, JournalError> {
        let id = self.id;
        let corrupt = |what: &'static str, reason: String| JournalError::Corrupt {
            table: "events",
            id,
            what,
            reason,
        };
        let direction = self
            .direction
            .map(|d| {
                Direction::from_storage(&d).ok_or_else(|| corrupt("direction", format!("{d:?}")))
            })
            .transpose()?;
        let size = self
            .size
            .map(|s| u32::try_from(s).map_err(|_| corrupt("size", format!("{s} is out of range"))))
            .transpose()?;
        let data = self
            .data
            .as_deref()
            .map(serde_json::from_str::<serde_json::Value>)
            .transpose()
            .map_err(|e| corrupt("data", e.to_string()))?;
        Ok(EventRow {
            id,
            session_id: self.session_id,
            at: us_to_system_time(self.at_us)
                .ok_or_else(|| corrupt("at_us", format!("{} is out of range", self.at_us)))?,
            kind: EventKind::from_storage(self.kind),
            direction,
            size,
            data,
            hash: self.hash.as_deref().map(crate::evidence::hex),
        })
    }
}
