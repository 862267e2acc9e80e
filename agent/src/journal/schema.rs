//! The journal's schema, its migrations, and opening a connection with the right settings.
//!
//! The version is kept in `PRAGMA user_version`. [`MIGRATIONS`] is an ordered list: a new
//! database gets all of them, an existing one only those above its version, all in one
//! transaction; a database whose version is above [`SCHEMA_VERSION`] is refused.
//!
//! Tables are deliberately not `STRICT`: incident responders may open a journal with the
//! `sqlite3` shell of an older distribution (STRICT needs SQLite 3.37), and the writer is the
//! only code that inserts rows, so it guarantees the types itself.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::JournalError;

/// Marks a database as an nhi-agent journal (`meta.format`), so that the CLI can tell a
/// journal from any other SQLite file.
pub(crate) const FORMAT_MARKER: &str = "nhi-agent-journal";

/// How long a connection waits for a lock held by another connection (e.g. a reader doing
/// WAL recovery, or an `sqlite3` shell) before it reports the database as busy.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer's page cache, as `PRAGMA cache_size` takes it (negative: KiB).
const WRITER_CACHE_KIB: i64 = -32 * 1024;

/// One schema step.
pub(crate) struct Migration {
    /// The `user_version` the database has once this migration is applied.
    pub(crate) version: i64,
    pub(crate) description: &'static str,
    pub(crate) sql: &'static str,
}

/// All migrations, in order. Append new ones; never edit an applied one.
///
/// Room left for later work:
/// - hash chaining: `events` is append-only (enforced by triggers) and ordered by its
///   rowid, so a later migration can add `prev_hash`/`hash` columns and chain over `id`;
///   `session_start` and `session_end` events carry the identity and the totals in `data`,
///   so the chain covers everything even though the `sessions` row is a mutable summary.
/// - protocol events (e.g. PostgreSQL statements): `kind` is free text without a CHECK and
///   `data` is JSON, so new kinds need no table rebuild.
/// - agent-level events (start, stop, configuration changes): `session_id` may be NULL.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "sessions, events, meta",
        sql: r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES
    ('format', 'nhi-agent-journal'),
    ('journal_id', lower(hex(randomblob(16)))),
    ('created_at', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

-- One row per intercepted connection: its identity at start, its totals at end.
-- Times are microseconds since the Unix epoch (UTC). The byte totals and the close reason
-- stay NULL while the session is open (or if the agent died before recording its end).
CREATE TABLE sessions (
    id                INTEGER PRIMARY KEY,
    workload          TEXT NOT NULL,
    cgroup            TEXT NOT NULL,
    cgroup_id         INTEGER NOT NULL,
    pid               INTEGER NOT NULL,
    pid_start_time    INTEGER,
    exe               TEXT,
    cmdline           TEXT,              -- JSON array of strings
    uid               INTEGER NOT NULL,
    gid               INTEGER NOT NULL,
    user              TEXT,
    comm              TEXT NOT NULL,
    client_addr       TEXT NOT NULL,     -- "ip:port", IPv6 as "[::1]:5432"
    orig_dst          TEXT NOT NULL,
    target            TEXT NOT NULL,
    protocol          TEXT NOT NULL,
    started_at_us     INTEGER NOT NULL,
    ended_at_us       INTEGER,
    bytes_from_client INTEGER,
    bytes_from_server INTEGER,
    close_reason      TEXT
);
CREATE INDEX sessions_by_workload ON sessions (workload, started_at_us);
CREATE INDEX sessions_by_started ON sessions (started_at_us);
CREATE INDEX sessions_by_target ON sessions (target, started_at_us);

-- The append-only record of what happened, in order.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    session_id INTEGER REFERENCES sessions (id),
    at_us      INTEGER NOT NULL,
    kind       TEXT NOT NULL,            -- 'session_start', 'chunk', 'session_end', ...
    direction  TEXT CHECK (direction IN ('c2s', 's2c')),
    size       INTEGER CHECK (size >= 0),
    data       TEXT                      -- JSON
);
CREATE INDEX events_by_session ON events (session_id, id);

CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'journal events are append-only');
END;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'journal events are append-only');
END;
"#,
    },
    Migration {
        version: 2,
        description: "hash chain over events",
        // Rows written before this migration have no hash; the chain starts after them
        // (`chain_start_event_id`), and `verify` reports them as not covered.
        sql: r#"
ALTER TABLE events ADD COLUMN hash BLOB;
INSERT INTO meta (key, value)
    SELECT 'chain_start_event_id', CAST(COALESCE(MAX(id), 0) + 1 AS TEXT) FROM events;
"#,
    },
    // attest: the claims attested for the session's cgroup (JSON object), NULL when
    // unattested.
    Migration {
        version: 3,
        description: "sessions.claims",
        sql: "ALTER TABLE sessions ADD COLUMN claims TEXT;",
    },
    // containers: the client's container, network namespace and namespace pid (JSON
    // object, `SessionIdentity::container`), NULL for host processes.
    Migration {
        version: 4,
        description: "sessions.container",
        sql: "ALTER TABLE sessions ADD COLUMN container TEXT;",
    },
];

/// The schema version this binary writes and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Maps an error from the first statements run on a file: SQLite only notices that a file is
/// not a database when it first reads it.
fn first_read_error(path: &Path, op: &'static str, source: rusqlite::Error) -> JournalError {
    if source.sqlite_error_code() == Some(ErrorCode::NotADatabase) {
        JournalError::NotAJournal {
            path: path.to_path_buf(),
            reason: "not an SQLite database".to_string(),
        }
    } else {
        JournalError::Sqlite { op, source }
    }
}

fn user_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// Whether a database with `user_version` 0 already holds tables, i.e. belongs to some other
/// application: the writer must not add its tables to it.
fn has_tables(conn: &Connection) -> Result<bool, rusqlite::Error> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name NOT LIKE 'sqlite_%')",
        [],
        |row| row.get(0),
    )
}

/// Refuses versions this binary cannot handle. `0` is fine for the writer (a new file).
fn check_version(path: &Path, version: i64) -> Result<(), JournalError> {
    if version > SCHEMA_VERSION {
        return Err(JournalError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < 0 {
        return Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
            reason: format!("schema version {version} is not one nhi-agent ever wrote"),
        });
    }
    Ok(())
}

/// Opens the journal for the writer: creates the file if needed, refuses foreign or newer
/// databases, sets the durability pragmas and applies the missing migrations.
pub(crate) fn open_for_writing(path: &Path) -> Result<Connection, JournalError> {
    let open_err = |source| JournalError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(JournalError::sqlite("set busy_timeout"))?;

    // Look before touching anything: a newer or foreign database must be left as it is, and
    // even switching its journal mode would modify it.
    let version =
        user_version(&conn).map_err(|e| first_read_error(path, "read user_version", e))?;
    check_version(path, version)?;
    if version == 0 && has_tables(&conn).map_err(JournalError::sqlite("inspect schema"))? {
        return Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
            reason: "it is an SQLite database of another application".to_string(),
        });
    }

    // WAL lets the CLI read while the agent writes; synchronous=FULL makes each commit
    // durable before start_session returns, which is the whole point of the journal.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(JournalError::sqlite("set journal_mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(JournalError::WalUnavailable {
            path: path.to_path_buf(),
            mode,
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(JournalError::sqlite("set synchronous"))?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(JournalError::sqlite("set foreign_keys"))?;
    // The writer appends to the end of `events` and its index; with SQLite's default 2 MB
    // page cache it reads the same index pages back from the OS on every batch (a tenth of
    // its time in pread under load). 32 MiB keeps a 64 MiB segment's hot pages in memory.
    conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
        .map_err(JournalError::sqlite("set cache_size"))?;

    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Applies every migration above the database's version in one transaction, so that a crash
/// midway leaves the previous version intact.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), JournalError> {
    // IMMEDIATE takes the write lock first, so two agents started at once cannot both
    // decide to migrate the same version.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(JournalError::sqlite("begin migration"))?;
    let version = user_version(&tx).map_err(JournalError::sqlite("read user_version"))?;
    check_version(path, version)?;
    for migration in MIGRATIONS.iter().filter(|m| m.version > version) {
        tracing::info!(
            version = migration.version,
            description = migration.description,
            path = %path.display(),
            "applying journal migration"
        );
        tx.execute_batch(migration.sql)
            .map_err(JournalError::sqlite("apply migration"))?;
        tx.execute(
            "INSERT INTO meta (key, value) \
             VALUES (?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            [format!("migration_{}_applied_at", migration.version)],
        )
        .map_err(JournalError::sqlite("record migration"))?;
    }
    // user_version lives in the database header, which is written inside the transaction,
    // so the version and the tables change together.
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(JournalError::sqlite("set user_version"))?;
    tx.commit()
        .map_err(JournalError::sqlite("commit migration"))
}

/// Checks that a connection opened by the reader holds a journal this binary can read.
pub(crate) fn check_readable(conn: &Connection, path: &Path) -> Result<(), JournalError> {
    let version = user_version(conn).map_err(|e| first_read_error(path, "read user_version", e))?;
    if version == 0 {
        return Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
            reason: if has_tables(conn).map_err(JournalError::sqlite("inspect schema"))? {
                "it is an SQLite database of another application".to_string()
            } else {
                "the database is empty".to_string()
            },
        });
    }
    check_version(path, version)?;
    let format: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'format'", [], |row| {
            row.get(0)
        })
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            // No `meta` table at all: not ours.
            rusqlite::Error::SqliteFailure(_, Some(ref msg)) if msg.contains("no such table") => {
                Ok(None)
            }
            other => Err(other),
        })
        .map_err(JournalError::sqlite("read meta"))?;
    if format.as_deref() != Some(FORMAT_MARKER) {
        return Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
            reason: "it has no nhi-agent journal marker".to_string(),
        });
    }
    Ok(())
}
