//! Tests of the journal: schema and migrations, the writer's durability, batching and
//! failure handling, and the reader.

use crate::identity::SessionIdentity;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;

use super::*;

/// 2026-11-22T10:00:00Z plus `us` microseconds.
pub(crate) fn at_us(us: i64) -> SystemTime {
    let base = humantime::parse_rfc3339("2026-11-22T10:00:00Z").expect("valid time");
    if us >= 0 {
        base + Duration::from_micros(us as u64)
    } else {
        base - Duration::from_micros(us.unsigned_abs())
    }
}

pub(crate) fn sample_start(workload: &str, target: &str, started_at: SystemTime) -> SessionStart {
    SessionStart {
        identity: Arc::new(SessionIdentity {
            workload: workload.to_string(),
            cgroup: format!("system.slice/{workload}.service"),
            cgroup_id: 4242,
            pid: 1234,
            pid_start_time: Some(987_654),
            exe: Some("/usr/bin/restic".to_string()),
            cmdline: Some(vec![
                "restic".to_string(),
                "backup".to_string(),
                "/srv/my data".to_string(),
            ]),
            uid: 998,
            gid: 997,
            user: Some("backup".to_string()),
            comm: "restic".to_string(),
            client_addr: "10.0.0.5:51234".parse().expect("valid address"),
            orig_dst: "[::1]:5432".parse().expect("valid address"),
            target: target.to_string(),
            protocol: "tcp".to_string(),
            container: None,
        }),
        started_at,
        claims: None,
    }
}

fn end(id: SessionId, ended_at: SystemTime, reason: &str) -> SessionEnd {
    SessionEnd {
        id,
        ended_at,
        bytes_from_client: 100,
        bytes_from_server: 200,
        close_reason: reason.to_string(),
    }
}

fn journal_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("journal.db")
}

async fn close_async(journal: Journal) -> Result<(), JournalError> {
    tokio::task::spawn_blocking(move || journal.close())
        .await
        .expect("close does not panic")
}

fn user_version(path: &Path) -> i64 {
    Connection::open(path)
        .expect("open")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version")
}

fn meta(conn: &Connection, key: &str) -> Option<String> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .ok()
}

/// A second connection that can take the write lock, install triggers, etc.
fn side_connection(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open side connection");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy");
    conn
}

#[test]
fn migrations_are_numbered_consecutively_from_one() {
    for (i, m) in schema::MIGRATIONS.iter().enumerate() {
        assert_eq!(m.version, i as i64 + 1, "migration {}", m.description);
    }
    assert_eq!(SCHEMA_VERSION, schema::MIGRATIONS.len() as i64);
}

#[test]
fn fresh_database_gets_the_schema_and_reopening_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    open(&path, JournalOptions::default())
        .expect("open fresh")
        .close()
        .expect("close");
    assert_eq!(user_version(&path), SCHEMA_VERSION);

    let conn = Connection::open(&path).expect("open");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    for table in ["sessions", "events", "meta"] {
        let exists: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                [table],
                |r| r.get(0),
            )
            .expect("query");
        assert!(exists, "table {table}");
    }
    let journal_id = meta(&conn, "journal_id").expect("journal_id");
    assert_eq!(journal_id.len(), 32, "16 random bytes in hex");
    assert!(meta(&conn, "created_at").is_some());
    assert_eq!(meta(&conn, "format").as_deref(), Some("nhi-agent-journal"));
    drop(conn);

    // Reopening must neither re-run migrations nor change the journal's identity.
    open(&path, JournalOptions::default())
        .expect("reopen")
        .close()
        .expect("close");
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    let conn = Connection::open(&path).expect("open");
    assert_eq!(meta(&conn, "journal_id"), Some(journal_id));
    let migration_rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM meta WHERE key LIKE 'migration_%_applied_at'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(migration_rows, SCHEMA_VERSION);
}

#[test]
fn events_are_append_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    open(&path, JournalOptions::default())
        .expect("open")
        .close()
        .expect("close");
    let conn = side_connection(&path);
    conn.execute_batch(
        "INSERT INTO sessions (workload, cgroup, cgroup_id, pid, uid, gid, comm, client_addr, \
         orig_dst, target, protocol, started_at_us) \
         VALUES ('w', 'c', 1, 1, 0, 0, 'x', '127.0.0.1:1', '127.0.0.1:2', 't', 'tcp', 0); \
         INSERT INTO events (session_id, at_us, kind) VALUES (1, 0, 'session_start');",
    )
    .expect("insert");
    let update = conn.execute("UPDATE events SET at_us = 5", []);
    assert!(update.is_err(), "update must be refused");
    let delete = conn.execute("DELETE FROM events", []);
    assert!(delete.is_err(), "delete must be refused");
}

#[test]
fn newer_schema_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    {
        let conn = Connection::open(&path).expect("create");
        conn.execute_batch(&format!(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT); \
             INSERT INTO meta VALUES ('format', 'nhi-agent-journal'); \
             PRAGMA user_version = {};",
            SCHEMA_VERSION + 1
        ))
        .expect("setup");
    }
    match open(&path, JournalOptions::default()) {
        Err(JournalError::NewerSchema {
            found, supported, ..
        }) => {
            assert_eq!(found, SCHEMA_VERSION + 1);
            assert_eq!(supported, SCHEMA_VERSION);
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
    let err = JournalReader::open(&path).expect_err("reader refuses too");
    assert!(matches!(err, JournalError::NewerSchema { .. }), "got {err}");
    assert!(err.to_string().contains("newer nhi-agent"), "{err}");

    // Refusing must not have modified the file (not even its journal mode).
    let conn = Connection::open(&path).expect("open");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "delete");
    assert_eq!(user_version(&path), SCHEMA_VERSION + 1);
}

#[test]
fn foreign_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");

    let other_app = dir.path().join("other.db");
    Connection::open(&other_app)
        .expect("create")
        .execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY);")
        .expect("setup");
    assert!(matches!(
        open(&other_app, JournalOptions::default()),
        Err(JournalError::NotAJournal { .. })
    ));
    assert!(matches!(
        JournalReader::open(&other_app),
        Err(JournalError::NotAJournal { .. })
    ));

    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not a database, just some notes\n".repeat(200),
    )
    .expect("write");
    let err = JournalReader::open(&text).expect_err("text is refused");
    assert!(matches!(err, JournalError::NotAJournal { .. }), "got {err}");
    assert!(matches!(
        open(&text, JournalOptions::default()),
        Err(JournalError::NotAJournal { .. })
    ));

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").expect("write");
    assert!(matches!(
        JournalReader::open(&empty),
        Err(JournalError::NotAJournal { .. })
    ));

    let missing = dir.path().join("missing.db");
    let err = JournalReader::open(&missing).expect_err("missing is refused");
    assert!(matches!(err, JournalError::Missing { .. }), "got {err}");
    assert!(!missing.exists(), "the reader must not create a journal");
}

#[tokio::test]
async fn with_fsync_each_start_session_returns_only_after_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(
        &path,
        JournalOptions {
            fsync: FsyncPolicy::Each,
            ..Default::default()
        },
    )
    .expect("open");
    let handle = journal.handle();

    let id = handle
        .start_session(sample_start("backup", "s3", at_us(0)))
        .await
        .expect("start");
    // A separate read-only connection sees only committed data: if the reply came before
    // the commit, the row would be missing here.
    let reader = JournalReader::open(&path).expect("reader");
    let row = reader
        .session(id)
        .expect("query")
        .expect("row is committed");
    assert_eq!(row.identity.workload, "backup");
    assert_eq!(row.started_at, at_us(0));
    assert_eq!(row.ended_at, None);
    let events = reader.events(id).expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::SessionStart);
    let data = events[0].data.as_ref().expect("identity in the event");
    assert_eq!(data["comm"], "restic");
    assert_eq!(data["orig_dst"], "[::1]:5432");

    handle
        .end_session(end(id, at_us(5_000), "client closed"))
        .await
        .expect("end");
    let row = reader.session(id).expect("query").expect("row");
    assert_eq!(row.ended_at, Some(at_us(5_000)));
    assert_eq!(row.close_reason.as_deref(), Some("client closed"));
    assert_eq!(row.duration_ms, Some(5));
    close_async(journal).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sessions_get_distinct_ids_and_ordered_chunks() {
    const SESSIONS: usize = 200;
    const CHUNKS: u32 = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");

    let mut tasks = Vec::new();
    for n in 0..SESSIONS {
        let handle = journal.handle();
        tasks.push(tokio::spawn(async move {
            let workload = format!("w{n}");
            let id = handle
                .start_session(sample_start(&workload, "db", at_us(n as i64)))
                .await?;
            for seq in 0..CHUNKS {
                let dir = if seq % 2 == 0 {
                    Direction::ClientToServer
                } else {
                    Direction::ServerToClient
                };
                // The size encodes the sequence number, so order can be checked later.
                handle
                    .chunk(id, dir, seq, at_us(n as i64 + i64::from(seq)))
                    .await?;
                if seq % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            handle
                .end_session(end(id, at_us(1_000_000), "client closed"))
                .await?;
            Ok::<_, JournalError>((workload, id))
        }));
    }
    let mut ids = HashSet::new();
    let mut by_workload = Vec::new();
    for task in tasks {
        let (workload, id) = task.await.expect("task").expect("journal ops");
        assert!(ids.insert(id), "id {id} given twice");
        by_workload.push((workload, id));
    }
    let stats = journal.handle().stats();
    close_async(journal).await.expect("close");

    // Every command was answered by some batch; under this much concurrency many of them
    // must have shared a transaction.
    // Starts and chunks go through the pre-log; ends are commands.
    assert_eq!(stats.commands, SESSIONS as u64);
    let records = (SESSIONS * (CHUNKS as usize + 1)) as u64;
    assert_eq!(stats.prelog_records, records);
    assert!(
        stats.commits < (records + stats.commands) / 2,
        "expected batching: {} commits for {} records and {} commands",
        stats.commits,
        records,
        stats.commands
    );
    assert_eq!(stats.failed_records, 0);

    let reader = JournalReader::open(&path).expect("reader");
    assert_eq!(
        reader
            .sessions(&SessionFilter::default())
            .expect("sessions")
            .len(),
        SESSIONS
    );
    for (workload, id) in by_workload {
        let row = reader.session(id).expect("query").expect("row");
        assert_eq!(
            row.identity.workload, workload,
            "session {id} has the right identity"
        );
        let events = reader.events(id).expect("events");
        assert_eq!(events.len(), CHUNKS as usize + 2);
        assert_eq!(events[0].kind, EventKind::SessionStart);
        assert_eq!(events[events.len() - 1].kind, EventKind::SessionEnd);
        let sizes: Vec<u32> = events[1..events.len() - 1]
            .iter()
            .map(|e| {
                assert_eq!(e.kind, EventKind::Chunk);
                assert_eq!(e.session_id, Some(id));
                e.size.expect("chunk size")
            })
            .collect();
        assert_eq!(sizes, (0..CHUNKS).collect::<Vec<_>>(), "session {id}");
    }
}

/// Holds the database's write lock from another connection, so the writer blocks in BEGIN
/// while commands pile up in its queue. Released on drop.
struct WriteLock(Connection);

impl WriteLock {
    fn take(path: &Path) -> Self {
        let conn = side_connection(path);
        conn.execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        WriteLock(conn)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

/// A journal whose batches hold at most 10 commands, with one session started.
async fn small_batches_with_a_session(path: &Path) -> (Journal, JournalHandle, SessionId) {
    let journal = open(
        path,
        JournalOptions {
            batch_max: 10,
            queue_capacity: 1000,
            ..Default::default()
        },
    )
    .expect("open");
    let handle = journal.handle();
    let id = handle
        .start_session(sample_start("batch", "db", at_us(0)))
        .await
        .expect("start");
    (journal, handle, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commands_are_committed_in_batches_of_at_most_batch_max() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let (journal, handle, id) = small_batches_with_a_session(&path).await;

    // Ends are commands (chunks are not: every batch takes all of them).
    let mut ids = vec![id];
    for n in 1..99 {
        let start = sample_start("batch", "db", at_us(n));
        ids.push(handle.start_session(start).await.expect("start"));
    }
    handle.flush().await.expect("starts committed");
    let before = handle.stats();
    let lock = WriteLock::take(&path);
    let mut enders = Vec::new();
    for (n, id) in ids.into_iter().enumerate() {
        let handle = handle.clone();
        enders.push(tokio::spawn(async move {
            handle
                .end_session(end(id, at_us(100 + n as i64), "client closed"))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let flusher = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.flush().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(lock);
    flusher.await.expect("task").expect("flush");
    for ender in enders {
        ender.await.expect("task").expect("end");
    }

    let after = handle.stats();
    let commits = after.commits - before.commits;
    assert_eq!(after.commands - before.commands, 100);
    // 100 queued commands with batch_max 10: exactly ten full batches if the writer found
    // them all waiting, one more if it grabbed the first end before the others arrived.
    assert!(
        (10..=11).contains(&commits),
        "{commits} commits for 100 queued commands"
    );
    close_async(journal).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_pre_log_records_committed_before_a_later_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let (journal, handle, id) = small_batches_with_a_session(&path).await;
    handle.flush().await.expect("flush");
    let before = handle.stats();

    let lock = WriteLock::take(&path);
    for seq in 0..99 {
        handle
            .chunk(id, Direction::ClientToServer, seq, at_us(i64::from(seq)))
            .await
            .expect("recorded");
    }
    let ender = {
        let handle = handle.clone();
        tokio::spawn(async move {
            handle
                .end_session(end(id, at_us(100), "client closed"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(lock);
    ender.await.expect("task").expect("end");

    let after = handle.stats();
    assert_eq!(after.commands - before.commands, 1, "only the end");
    assert_eq!(after.prelog_records - before.prelog_records, 99);
    // More than batch_max chunks, yet at most two commits: the batch the writer had begun
    // when the lock was taken, and one with everything else.
    let commits = after.commits - before.commits;
    assert!((1..=2).contains(&commits), "{commits} commits");
    close_async(journal).await.expect("close");
    let reader = JournalReader::open(&path).expect("reader");
    let sizes: Vec<Option<u32>> = reader
        .events(id)
        .expect("events")
        .into_iter()
        .filter(|e| e.kind != EventKind::SessionStart)
        .map(|e| e.size)
        .collect();
    let mut expected: Vec<Option<u32>> = (0..99).map(Some).collect();
    expected.push(None);
    assert_eq!(sizes, expected, "every chunk, in order, before the end");
}

/// A flush reports exactly one record lost since the previous flush.
async fn expect_one_record_lost(handle: &JournalHandle) {
    let err = handle
        .flush()
        .await
        .expect_err("a record was not committed");
    assert!(
        matches!(err, JournalError::FlushIncomplete { failed: 1 }),
        "got {err}"
    );
}

/// A failed session takes no more chunks.
async fn expect_chunk_refused(handle: &JournalHandle, session: SessionId) {
    let err = handle
        .chunk(session, Direction::ServerToClient, 30, at_us(3))
        .await
        .expect_err("a failed session takes no more chunks");
    assert!(matches!(err, JournalError::SessionFailed { id } if id == session));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_statements_fail_their_waiters_and_the_writer_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let handle = journal.handle();

    let a = handle
        .start_session(sample_start("a", "db", at_us(0)))
        .await
        .expect("start a");
    handle
        .chunk(a, Direction::ClientToServer, 10, at_us(1))
        .await
        .expect("chunk");
    handle.flush().await.expect("flush while healthy");
    assert!(!handle.session_failed(a));

    let side = side_connection(&path);
    side.execute_batch(
        "CREATE TRIGGER boom BEFORE INSERT ON events \
         BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
    )
    .expect("install trigger");

    // A queued chunk cannot report by itself; the flush and session_failed do.
    handle
        .chunk(a, Direction::ServerToClient, 20, at_us(2))
        .await
        .expect("queued");
    expect_one_record_lost(&handle).await;
    assert!(handle.session_failed(a));
    expect_chunk_refused(&handle, a).await;

    // With journal_fsync = "group" a start counts as recorded once it is in the pre-log;
    // the writer's insert fails, which fails the session: its first chunk is refused.
    let b = handle
        .start_session(sample_start("b", "db", at_us(4)))
        .await
        .expect("in the pre-log");
    expect_one_record_lost(&handle).await;
    assert!(handle.session_failed(b));
    expect_chunk_refused(&handle, b).await;

    side.execute_batch("DROP TRIGGER boom;")
        .expect("drop trigger");

    // The disk "recovered": later sessions work, and the failed one can record its end.
    let c = handle
        .start_session(sample_start("c", "db", at_us(5)))
        .await
        .expect("start c");
    handle
        .chunk(c, Direction::ClientToServer, 40, at_us(6))
        .await
        .expect("chunk c");
    handle
        .end_session(end(c, at_us(7), "client closed"))
        .await
        .expect("end c");
    assert!(!handle.session_failed(c));
    handle
        .end_session(end(a, at_us(8), "journal failure"))
        .await
        .expect("end a");
    assert!(!handle.session_failed(a), "ended sessions are forgotten");
    close_async(journal).await.expect("close");

    let reader = JournalReader::open(&path).expect("reader");
    let kinds = |id| -> Vec<(EventKind, Option<u32>)> {
        reader
            .events(id)
            .expect("events")
            .into_iter()
            .map(|e| (e.kind, e.size))
            .collect()
    };
    assert_eq!(
        kinds(a),
        vec![
            (EventKind::SessionStart, None),
            (EventKind::Chunk, Some(10)),
            (EventKind::SessionEnd, None)
        ]
    );
    assert_eq!(
        reader
            .session(a)
            .expect("query")
            .expect("a")
            .close_reason
            .as_deref(),
        Some("journal failure")
    );
    assert_eq!(kinds(c).len(), 3);
    let workloads: Vec<String> = reader
        .sessions(&SessionFilter::default())
        .expect("sessions")
        .into_iter()
        .map(|s| s.identity.workload)
        .collect();
    assert_eq!(workloads, ["a", "c"], "the failed start left no row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commit_fails_the_whole_batch_and_the_writer_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let handle = journal.handle();
    let a = handle
        .start_session(sample_start("a", "db", at_us(0)))
        .await
        .expect("start a");
    let b = handle
        .start_session(sample_start("b", "db", at_us(1)))
        .await
        .expect("start b");

    // Every statement succeeds, but a deferred foreign key violation makes COMMIT fail:
    // the path of a disk that fails at fsync time.
    let side = side_connection(&path);
    side.execute_batch(
        "CREATE TABLE poison (x INTEGER REFERENCES sessions (id) DEFERRABLE INITIALLY DEFERRED); \
         CREATE TRIGGER poison_events AFTER INSERT ON events \
         BEGIN INSERT INTO poison VALUES (-1); END;",
    )
    .expect("install poison");

    let before = handle.stats();
    let lock = WriteLock::take(&path);
    handle
        .chunk(a, Direction::ClientToServer, 1, at_us(2))
        .await
        .expect("queued");
    handle
        .chunk(b, Direction::ClientToServer, 2, at_us(3))
        .await
        .expect("queued");
    let starter = {
        let handle = handle.clone();
        tokio::spawn(async move {
            handle
                .start_session(sample_start("c", "db", at_us(4)))
                .await
        })
    };
    let flusher = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.flush().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(lock);

    // The start is in the pre-log: it stays there when the batch holding it is lost,
    // and is committed once the journal recovers.
    let c = starter
        .await
        .expect("task")
        .expect("start c is in the pre-log");
    // The flush either shared the lost batch or came right after it; either way it must
    // not claim success.
    let err = flusher
        .await
        .expect("task")
        .expect_err("flush sees the loss");
    assert!(matches!(err, JournalError::BatchFailed { .. }), "got {err}");
    // The chunks too are in the pre-log: nothing of the lost batch is lost for good.
    for id in [a, b, c] {
        assert!(!handle.session_failed(id), "{id}");
    }
    let after = handle.stats();
    assert!(after.failed_batches > before.failed_batches);
    assert_eq!(after.commits, before.commits, "{before:?} -> {after:?}");
    assert_eq!(after.failed_records, before.failed_records);

    side.execute_batch("DROP TRIGGER poison_events; DROP TABLE poison;")
        .expect("remove poison");
    let d = handle
        .start_session(sample_start("d", "db", at_us(5)))
        .await
        .expect("the writer recovers");
    handle
        .end_session(end(a, at_us(6), "journal failure"))
        .await
        .expect("end a");
    close_async(journal).await.expect("close");

    let reader = JournalReader::open(&path).expect("reader");
    let workloads: Vec<String> = reader
        .sessions(&SessionFilter::default())
        .expect("sessions")
        .into_iter()
        .map(|s| s.identity.workload)
        .collect();
    assert_eq!(workloads, ["a", "b", "c", "d"]);
    assert!(reader.session(d).expect("query").is_some());
    let a_chunks = reader
        .events(a)
        .expect("events")
        .iter()
        .filter(|e| e.kind == EventKind::Chunk)
        .count();
    assert_eq!(a_chunks, 1, "the lost batch was retried from the pre-log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_already_queued_behind_a_failed_one_are_not_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let handle = journal.handle();
    let a = handle
        .start_session(sample_start("a", "db", at_us(0)))
        .await
        .expect("start a");
    let b = handle
        .start_session(sample_start("b", "db", at_us(0)))
        .await
        .expect("start b");
    let side = side_connection(&path);
    side.execute_batch(
        "CREATE TRIGGER only_size_one BEFORE INSERT ON events WHEN NEW.size = 1 \
         BEGIN SELECT RAISE(ABORT, 'bad sector'); END;",
    )
    .expect("install trigger");

    // All queued before the writer can look at any of them, so the handle cannot know yet
    // that the first one will fail: skipping the second is the writer's job.
    let lock = WriteLock::take(&path);
    for (id, size) in [(a, 1), (b, 5), (a, 2), (b, 6)] {
        handle
            .chunk(id, Direction::ClientToServer, size, at_us(1))
            .await
            .expect("queued");
    }
    let flusher = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.flush().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(lock);
    let err = flusher
        .await
        .expect("task")
        .expect_err("a's chunks are lost");
    assert!(
        matches!(err, JournalError::FlushIncomplete { failed: 2 }),
        "got {err}"
    );
    assert!(handle.session_failed(a));
    assert!(!handle.session_failed(b), "the other session is unaffected");
    close_async(journal).await.expect("close");

    let reader = JournalReader::open(&path).expect("reader");
    let sizes = |id| -> Vec<u32> {
        reader
            .events(id)
            .expect("events")
            .iter()
            .filter_map(|e| e.size)
            .collect()
    };
    assert_eq!(sizes(a), Vec::<u32>::new(), "no chunk after the hole");
    assert_eq!(sizes(b), vec![5, 6]);
}

#[tokio::test]
async fn ending_twice_or_an_unknown_session_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let handle = journal.handle();
    let id = handle
        .start_session(sample_start("w", "db", at_us(0)))
        .await
        .expect("start");
    handle
        .end_session(end(id, at_us(1), "client closed"))
        .await
        .expect("end");
    let err = handle
        .end_session(end(id, at_us(2), "client closed"))
        .await
        .expect_err("second end");
    assert!(
        matches!(err, JournalError::SessionNotOpen { .. }),
        "got {err}"
    );
    let err = handle
        .end_session(end(999, at_us(2), "client closed"))
        .await
        .expect_err("unknown session");
    assert!(
        matches!(err, JournalError::SessionNotOpen { id: 999 }),
        "got {err}"
    );

    // A chunk for a session that does not exist violates the foreign key: only that
    // session is marked failed.
    handle
        .chunk(999, Direction::ClientToServer, 1, at_us(3))
        .await
        .expect("queued");
    assert!(handle.flush().await.is_err());
    assert!(handle.session_failed(999));
    assert!(!handle.session_failed(id));
    close_async(journal).await.expect("close");

    let reader = JournalReader::open(&path).expect("reader");
    let row = reader.session(id).expect("query").expect("row");
    assert_eq!(row.ended_at, Some(at_us(1)), "the first end stands");
}

#[tokio::test]
async fn close_drains_the_queue_and_later_calls_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let handle = journal.handle();
    let id = handle
        .start_session(sample_start("w", "db", at_us(0)))
        .await
        .expect("start");
    for seq in 0..500 {
        handle
            .chunk(id, Direction::ServerToClient, seq, at_us(i64::from(seq)))
            .await
            .expect("queued");
    }
    close_async(journal).await.expect("close");

    let err = handle
        .start_session(sample_start("late", "db", at_us(0)))
        .await
        .expect_err("writer is gone");
    assert!(matches!(err, JournalError::WriterGone), "got {err}");
    assert!(handle.flush().await.is_err());

    // A clean close checkpoints the WAL: the main file alone holds everything.
    assert!(!PathBuf::from(format!("{}-wal", path.display())).exists());
    let reader = JournalReader::open(&path).expect("reader");
    assert_eq!(reader.events(id).expect("events").len(), 501);
    let row = reader.session(id).expect("query").expect("row");
    assert_eq!(
        row.bytes_from_server,
        (0..500).sum::<u64>(),
        "open: summed chunks"
    );
    assert_eq!(row.bytes_from_client, 0);
}

async fn journal_with_sessions(path: &Path) -> Vec<SessionId> {
    let journal = open(path, JournalOptions::default()).expect("open");
    let handle = journal.handle();
    let mut ids = Vec::new();
    // Deliberately not in start order, to check the ordering by start time then id.
    for (workload, target, start_s) in [
        ("backup", "s3", 30),
        ("ci", "github", 10),
        ("backup", "db", 20),
        ("ci", "db", 20),
        ("backup", "s3", 40),
    ] {
        let id = handle
            .start_session(sample_start(workload, target, at_us(start_s * 1_000_000)))
            .await
            .expect("start");
        ids.push(id);
    }
    close_async(journal).await.expect("close");
    ids
}

#[tokio::test]
async fn reader_filters_and_orders_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let ids = journal_with_sessions(&path).await;
    let reader = JournalReader::open(&path).expect("reader");
    let list = |filter: SessionFilter| -> Vec<SessionId> {
        reader
            .sessions(&filter)
            .expect("sessions")
            .into_iter()
            .map(|s| s.id)
            .collect()
    };

    // Start times 30, 10, 20, 20, 40: ordered by time, ties by id.
    assert_eq!(
        list(SessionFilter::default()),
        vec![ids[1], ids[2], ids[3], ids[0], ids[4]]
    );
    assert_eq!(
        list(SessionFilter {
            workload: Some("backup".to_string()),
            ..Default::default()
        }),
        vec![ids[2], ids[0], ids[4]]
    );
    assert_eq!(
        list(SessionFilter {
            workload: Some("back".to_string()),
            ..Default::default()
        }),
        Vec::<SessionId>::new(),
        "workload is an exact match"
    );
    assert_eq!(
        list(SessionFilter {
            target: Some("db".to_string()),
            ..Default::default()
        }),
        vec![ids[2], ids[3]]
    );
    assert_eq!(
        list(SessionFilter {
            since: Some(at_us(20_000_000)),
            ..Default::default()
        }),
        vec![ids[2], ids[3], ids[0], ids[4]],
        "since is inclusive"
    );
    assert_eq!(
        list(SessionFilter {
            since: Some(at_us(20_000_001)),
            ..Default::default()
        }),
        vec![ids[0], ids[4]]
    );
    assert_eq!(
        list(SessionFilter {
            limit: Some(2),
            ..Default::default()
        }),
        vec![ids[0], ids[4]],
        "limit keeps the most recent, oldest first"
    );
    assert_eq!(
        list(SessionFilter {
            workload: Some("backup".to_string()),
            target: Some("s3".to_string()),
            since: Some(at_us(35_000_000)),
            limit: Some(10),
            ..Default::default()
        }),
        vec![ids[4]]
    );
}

#[tokio::test]
async fn reader_sees_a_live_wal_journal_and_a_copy_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let handle = journal.handle();
    let id = handle
        .start_session(sample_start("live", "db", at_us(0)))
        .await
        .expect("start");
    handle.flush().await.expect("flush");

    // While the agent runs, the data is in the -wal file; a copy of the pair (as an
    // incident responder might take) must show it.
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    assert!(wal.exists(), "the writer is in WAL mode");
    let copy_dir = tempfile::tempdir().expect("tempdir");
    let copy = copy_dir.path().join("copy.db");
    std::fs::copy(&path, &copy).expect("copy db");
    std::fs::copy(&wal, copy_dir.path().join("copy.db-wal")).expect("copy wal");
    let reader = JournalReader::open(&copy).expect("reader on copy");
    assert_eq!(
        reader
            .session(id)
            .expect("query")
            .map(|s| s.identity.workload),
        Some("live".to_string())
    );
    close_async(journal).await.expect("close");
}

#[tokio::test]
async fn immutable_fallback_reads_a_cleanly_closed_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("odd name?#%.db");
    let ids = journal_with_sessions(&path).await;
    // The reader falls back to this when SQLite cannot create the -shm file (read-only
    // media); tests run as root, where permissions cannot force that, so call it directly.
    let conn = reader::open_read_only(&path, true).expect("immutable open");
    schema::check_readable(&conn, &path).expect("readable");
    let count: i64 = conn
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .expect("count");
    assert_eq!(count as usize, ids.len());
}

#[test]
fn time_conversions_round_trip_and_format() {
    for us in [0, 1, -1, 1_795_341_600_123_456, -86_400_000_001] {
        let t = us_to_system_time(us).expect("representable");
        assert_eq!(system_time_to_us(t), us);
    }
    assert_eq!(
        format_rfc3339_us(at_us(123_456)),
        "2026-11-22T10:00:00.123456Z"
    );
    // Out of humantime's range: no panic, a clearly marked raw value.
    let before_epoch = us_to_system_time(-5).expect("representable");
    assert_eq!(format_rfc3339_us(before_epoch), "-5us-since-epoch");
}

#[test]
fn direction_forms() {
    for dir in [Direction::ClientToServer, Direction::ServerToClient] {
        assert_eq!(Direction::from_storage(dir.as_str()), Some(dir));
    }
    assert_eq!(Direction::ClientToServer.as_str(), "c2s");
    assert_eq!(Direction::ServerToClient.human(), "server→client");
    assert_eq!(
        serde_json::to_string(&Direction::ServerToClient).expect("json"),
        "\"s2c\""
    );
}

#[tokio::test]
async fn sessions_left_open_by_a_killed_agent_are_closed_at_their_last_activity() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_path(&dir);
    let (open_id, ended_id) = {
        let journal = open(&path, JournalOptions::default()).unwrap();
        let h = journal.handle();
        let open_id = h
            .start_session(sample_start("bot", "db", at_us(1_000_000)))
            .await
            .unwrap();
        h.chunk(open_id, Direction::ClientToServer, 100, at_us(1_500_000))
            .await
            .unwrap();
        h.chunk(open_id, Direction::ServerToClient, 40, at_us(2_000_000))
            .await
            .unwrap();
        let ended_id = h
            .start_session(sample_start("bot", "db", at_us(1_000_000)))
            .await
            .unwrap();
        h.end_session(end(ended_id, at_us(3_000_000), "client closed"))
            .await
            .unwrap();
        h.flush().await.unwrap();
        close_async(journal).await.unwrap();
        (open_id, ended_id)
    };
    // The "restarted agent" opens the same journal.
    let journal = open(&path, JournalOptions::default()).unwrap();
    close_async(journal).await.unwrap();
    let reader = JournalReader::open(&path).unwrap();
    let s = reader.session(open_id).unwrap().unwrap();
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["close_reason"], writer::INTERRUPTED_REASON);
    assert_eq!(json["bytes_from_client"], 100);
    assert_eq!(json["bytes_from_server"], 40);
    assert_eq!(json["ended_at"], format_rfc3339_us(at_us(2_000_000)));
    let untouched = serde_json::to_value(reader.session(ended_id).unwrap().unwrap()).unwrap();
    assert_eq!(untouched["close_reason"], "client closed");
    let kinds: Vec<String> = reader
        .events(open_id)
        .unwrap()
        .iter()
        .map(|e| {
            serde_json::to_value(e).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds.last().map(String::as_str), Some("session_end"));
}

// ---- The pre-log (JournalHandle::record) ----

fn pg_event(session: SessionId, n: i64) -> Event {
    Event {
        session,
        at: at_us(n),
        kind: std::borrow::Cow::Borrowed("pg.query"),
        data: serde_json::json!({ "n": n, "sql": format!("SELECT {n}") }).to_string(),
    }
}

fn prelog_len(path: &Path) -> u64 {
    std::fs::metadata(prelog_path(path))
        .expect("pre-log exists")
        .len()
}

/// The `n` of each pg.query event of a session, in journal order.
fn recorded_ns(reader: &JournalReader, id: SessionId) -> Vec<i64> {
    reader
        .events(id)
        .expect("events")
        .iter()
        .filter(|e| e.kind.as_str() == "pg.query")
        .map(|e| {
            e.data
                .as_ref()
                .and_then(|d| d["n"].as_i64())
                .expect("n in data")
        })
        .collect()
}

#[tokio::test]
async fn recorded_events_are_committed_in_order_with_their_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("app", "db", at_us(0)))
        .await
        .expect("start");

    let first = h
        .record(&[pg_event(id, 1), pg_event(id, 2), pg_event(id, 3)])
        .expect("record");
    let fourth = h.record(&[pg_event(id, 4)]).expect("record");
    let fifth = h
        .record(&[Event {
            data: String::new(),
            ..pg_event(id, 5)
        }])
        .expect("record");
    assert_eq!((first + 1, first + 2), (fourth, fifth), "contiguous seqs");
    assert_eq!(
        first, 4,
        "the first call's last seq on a new journal (after the start)"
    );
    h.flush().await.expect("flush");
    assert_eq!(h.stats().prelog_records, 6, "the start and five events");

    let reader = JournalReader::open(&path).expect("reader");
    let events = reader.events(id).expect("events");
    assert_eq!(events.len(), 6);
    for (i, e) in events[1..].iter().enumerate() {
        assert_eq!(e.kind, EventKind::Other("pg.query".to_string()));
        assert_eq!(e.session_id, Some(id));
        assert_eq!(e.at, at_us(i as i64 + 1));
        assert_eq!((e.direction, e.size), (None, None));
    }
    assert_eq!(
        events[1].data,
        Some(serde_json::json!({ "n": 1, "sql": "SELECT 1" }))
    );
    assert_eq!(events[5].data, None, "empty data is stored as NULL");
    let ns: Vec<Option<i64>> = events[1..5]
        .iter()
        .map(|e| e.data.as_ref().and_then(|d| d["n"].as_i64()))
        .collect();
    assert_eq!(ns, [Some(1), Some(2), Some(3), Some(4)]);
    close_async(journal).await.expect("close");
    assert_eq!(
        prelog_len(&path),
        0,
        "a clean close leaves an empty pre-log"
    );
}

#[tokio::test]
async fn events_of_no_session_are_stored_with_a_null_session_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("app", "db", at_us(0)))
        .await
        .expect("start");
    h.record(&[pg_event(NO_SESSION, 1), pg_event(id, 2)])
        .expect("record");
    h.flush().await.expect("flush");
    assert_eq!(h.stats().failed_records, 0);
    close_async(journal).await.expect("close");

    let conn = Connection::open(&path).expect("sqlite");
    let rows: Vec<(Option<i64>, String)> = conn
        .prepare("SELECT session_id, data FROM events WHERE kind = 'pg.query' ORDER BY id")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].0, None, "no session: NULL");
    assert!(rows[0].1.contains("SELECT 1"));
    assert_eq!(rows[1].0, Some(id));
}

#[tokio::test]
async fn data_that_is_not_json_is_kept_as_a_json_string() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("app", "db", at_us(0)))
        .await
        .expect("start");
    h.record(&[Event {
        data: "SELECT 'not json".to_string(),
        ..pg_event(id, 1)
    }])
    .expect("record");
    close_async(journal).await.expect("close");
    let reader = JournalReader::open(&path).expect("reader");
    let events = reader.events(id).expect("the reader can read every row");
    assert_eq!(
        events[1].data,
        Some(serde_json::Value::String("SELECT 'not json".to_string()))
    );
}

#[tokio::test]
async fn data_that_is_not_json_left_in_the_prelog_by_another_agent_is_kept_as_a_json_string() {
    // The live writer copies what this process appended (made JSON by `record`) without
    // parsing it; what recovery finds was written by another process, and is checked.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let id = journal_with_open_session(&path).await;
    write_prelog(
        &path,
        &[
            (
                1,
                Event {
                    data: "SELECT 'not json".to_string(),
                    ..pg_event(id, 1)
                },
            ),
            (2, pg_event(id, 2)),
        ],
    );
    let journal = open(&path, JournalOptions::default()).expect("recovering open");
    assert_eq!(journal.recovery().records, 2);
    close_async(journal).await.expect("close");
    let reader = JournalReader::open(&path).expect("reader");
    let events = reader.events(id).expect("the reader can read every row");
    assert_eq!(
        events[1].data,
        Some(serde_json::Value::String("SELECT 'not json".to_string()))
    );
    assert_eq!(
        events[2].data,
        Some(serde_json::from_str(&pg_event(id, 2).data).expect("json"))
    );
}

#[tokio::test]
async fn session_end_after_records_is_journaled_after_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let h = journal.handle();
    let mut ids = Vec::new();
    for n in 0..20 {
        let id = h
            .start_session(sample_start("app", "db", at_us(n)))
            .await
            .expect("start");
        h.record(&[pg_event(id, n), pg_event(id, n + 1)])
            .expect("record");
        // No flush in between: the end goes through the queue, the records through the
        // pre-log, and the end must still come last.
        h.end_session(end(id, at_us(n + 2), "client closed"))
            .await
            .expect("end");
        ids.push(id);
    }
    close_async(journal).await.expect("close");
    let reader = JournalReader::open(&path).expect("reader");
    for id in ids {
        let events = reader.events(id).expect("events");
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["session_start", "pg.query", "pg.query", "session_end"],
            "session {id}"
        );
        assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    }
}

#[tokio::test]
async fn sequence_numbers_continue_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("app", "db", at_us(0)))
        .await
        .expect("start");
    let last = h
        .record(&[pg_event(id, 1), pg_event(id, 2)])
        .expect("record");
    close_async(journal).await.expect("close");
    assert_eq!(prelog_len(&path), 0, "the file was emptied...");

    let journal = open(&path, JournalOptions::default()).expect("reopen");
    assert_eq!(journal.recovery(), PrelogRecovery::default());
    let h = journal.handle();
    let id2 = h
        .start_session(sample_start("app", "db", at_us(3)))
        .await
        .expect("start");
    let next = h.record(&[pg_event(id2, 3)]).expect("record");
    assert_eq!(
        next,
        last + 2,
        "...but the numbering goes on (after id2's start)"
    );
    close_async(journal).await.expect("close");
}

#[tokio::test]
async fn record_refuses_failed_sessions_invalid_events_and_a_closed_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let h = journal.handle();
    // A chunk for a session that does not exist fails that session (foreign key).
    h.chunk(999, Direction::ClientToServer, 1, at_us(0))
        .await
        .expect("queued");
    assert!(h.flush().await.is_err());
    let written = prelog_len(&path);
    let err = h.record(&[pg_event(999, 1)]).expect_err("failed session");
    assert!(
        matches!(err, JournalError::SessionFailed { id: 999 }),
        "{err}"
    );
    let err = h
        .record(&[Event {
            kind: "chunk".into(),
            ..pg_event(1, 1)
        }])
        .expect_err("reserved kind");
    assert!(matches!(err, JournalError::InvalidEvent { .. }), "{err}");
    assert_eq!(prelog_len(&path), written, "nothing was written");
    close_async(journal).await.expect("close");
    let err = h.record(&[pg_event(1, 1)]).expect_err("writer gone");
    assert!(matches!(err, JournalError::WriterGone), "{err}");
}

#[tokio::test]
async fn a_record_whose_session_is_unknown_fails_that_session_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("app", "db", at_us(0)))
        .await
        .expect("start");
    h.record(&[pg_event(id, 1), pg_event(4242, 2), pg_event(id, 3)])
        .expect("written to the pre-log");
    let err = h.flush().await.expect_err("one record was refused");
    assert!(
        matches!(err, JournalError::FlushIncomplete { failed: 1 }),
        "{err}"
    );
    assert!(h.session_failed(4242));
    assert!(!h.session_failed(id));
    close_async(journal).await.expect("close");
    let reader = JournalReader::open(&path).expect("reader");
    assert_eq!(recorded_ns(&reader, id), vec![1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fsync_each_durable_resolves_only_after_the_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(
        &path,
        JournalOptions {
            fsync: FsyncPolicy::Each,
            ..Default::default()
        },
    )
    .expect("open");
    let h = journal.handle();
    assert_eq!(h.fsync_policy(), FsyncPolicy::Each);
    let id = h
        .start_session(sample_start("app", "db", at_us(0)))
        .await
        .expect("start");

    let lock = WriteLock::take(&path);
    let seq = h.record(&[pg_event(id, 1)]).expect("record");
    let waiter = {
        let h = h.clone();
        tokio::spawn(async move { h.durable(seq).await })
    };
    let durably = {
        let h = h.clone();
        tokio::spawn(async move { h.record_durably(&[pg_event(id, 2)]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "resolved before any commit");
    assert!(!durably.is_finished(), "resolved before any commit");
    assert_eq!(
        recorded_ns(&JournalReader::open(&path).expect("reader"), id),
        Vec::<i64>::new()
    );
    drop(lock);
    waiter.await.expect("task").expect("durable");
    let second = durably.await.expect("task").expect("record_durably");
    assert_eq!(second, seq + 1);
    // Resolved means committed: a separate connection sees both rows.
    assert_eq!(
        recorded_ns(&JournalReader::open(&path).expect("reader"), id),
        vec![1, 2]
    );
    // Already committed: resolves at once.
    h.durable(seq).await.expect("durable again");
    close_async(journal).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_whose_commit_fails_are_retried_not_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(
        &path,
        JournalOptions {
            fsync: FsyncPolicy::Each,
            ..Default::default()
        },
    )
    .expect("open");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("app", "db", at_us(0)))
        .await
        .expect("start");
    // COMMIT fails (deferred foreign key), like a disk failing at fsync time.
    let side = side_connection(&path);
    side.execute_batch(
        "CREATE TABLE poison (x INTEGER REFERENCES sessions (id) DEFERRABLE INITIALLY DEFERRED); \
         CREATE TRIGGER poison_events AFTER INSERT ON events \
         BEGIN INSERT INTO poison VALUES (-1); END;",
    )
    .expect("install poison");

    let seq = h.record(&[pg_event(id, 1)]).expect("record");
    let err = h.durable(seq).await.expect_err("the commit failed");
    assert!(
        matches!(err, JournalError::NotDurable { seq: s, .. } if s == seq),
        "{err}"
    );
    assert!(h.flush().await.is_err(), "the flush's batch is lost too");
    assert!(!h.session_failed(id), "nothing was dropped, so no hole");

    side.execute_batch("DROP TRIGGER poison_events; DROP TABLE poison;")
        .expect("remove poison");
    // No command is sent: the writer retries on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match h.durable(seq).await {
            Ok(()) => break,
            Err(JournalError::NotDurable { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("not retried: {e}"),
        }
    }
    close_async(journal).await.expect("close");
    let reader = JournalReader::open(&path).expect("reader");
    assert_eq!(recorded_ns(&reader, id), vec![1], "exactly once");
}

#[tokio::test]
async fn the_prelog_is_truncated_once_applied_and_numbering_goes_on() {
    const TRUNCATE_AT: u64 = 4096;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(
        &path,
        JournalOptions {
            prelog_truncate_at: TRUNCATE_AT,
            ..Default::default()
        },
    )
    .expect("open");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("app", "db", at_us(0)))
        .await
        .expect("start");
    let mut seqs = Vec::new();
    let mut truncations = 0;
    let mut previous_len = 0;
    for round in 0..60 {
        let events: Vec<Event> = (0..10).map(|i| pg_event(id, round * 10 + i)).collect();
        let round_bytes = {
            let mut buf = Vec::new();
            for e in &events {
                prelog::encode_into(&mut buf, 1, e);
            }
            buf.len() as u64
        };
        seqs.push(h.record(&events).expect("record"));
        h.flush().await.expect("flush");
        let len = prelog_len(&path);
        assert!(
            len < TRUNCATE_AT + round_bytes,
            "round {round}: {len} bytes"
        );
        if len < previous_len {
            truncations += 1;
        }
        previous_len = len;
    }
    // About 720 bytes a round: 60 rounds make about 43 KiB, ten times the threshold.
    assert!(truncations >= 8, "only {truncations} truncations");
    assert_eq!(
        seqs,
        (1..=60).map(|r| r * 10 + 1).collect::<Vec<u64>>(),
        "seqs keep growing across truncations (the session's start took 1)"
    );
    close_async(journal).await.expect("close");
    let reader = JournalReader::open(&path).expect("reader");
    assert_eq!(recorded_ns(&reader, id), (0..600).collect::<Vec<i64>>());
}

/// Writes pre-log records straight into the file, as an agent that died before its
/// writer copied them would have left them.
///
/// Sequence numbers are given relative to the last one the journal applied (its
/// sessions' starts took some).
fn write_prelog(path: &Path, records: &[(u64, Event)]) -> Vec<Vec<u8>> {
    let base = applied_seq(path);
    let mut out = Vec::new();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(prelog_path(path))
        .expect("open pre-log");
    for (seq, e) in records {
        let mut buf = Vec::new();
        prelog::encode_into(&mut buf, base + *seq, e);
        std::io::Write::write_all(&mut file, &buf).expect("write");
        out.push(buf);
    }
    out
}

/// The last pre-log sequence number the journal at `path` applied.
fn applied_seq(path: &Path) -> u64 {
    let conn = rusqlite::Connection::open(path).expect("open");
    prelog::load_applied(&conn).expect("applied seq")
}

async fn journal_with_open_session(path: &Path) -> SessionId {
    let journal = open(path, JournalOptions::default()).expect("open");
    let id = journal
        .handle()
        .start_session(sample_start("app", "db", at_us(0)))
        .await
        .expect("start");
    close_async(journal).await.expect("close");
    id
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_the_records_before_it_recovered() {
    // (what is appended after three good records, torn bytes expected)
    let half_record = {
        let mut buf = Vec::new();
        // After the session's start and the three good records.
        prelog::encode_into(&mut buf, 5, &pg_event(1, 4));
        buf.truncate(buf.len() / 2);
        buf
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x07\x00\x00\x00garbage".to_vec()),
        ("half a record", half_record),
        ("zeros", vec![0; 4096]),
        ("nothing", Vec::new()),
    ];
    for (name, tail) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = journal_path(&dir);
        let id = journal_with_open_session(&path).await;
        let good = write_prelog(
            &path,
            &[
                (1, pg_event(id, 1)),
                (2, pg_event(id, 2)),
                (3, pg_event(id, 3)),
            ],
        );
        {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(prelog_path(&path))
                .expect("open");
            std::io::Write::write_all(&mut file, &tail).expect("write tail");
        }

        let journal = open(&path, JournalOptions::default()).expect("recovering open");
        assert_eq!(
            journal.recovery(),
            PrelogRecovery {
                records: 3,
                failed: 0,
                torn_bytes: tail.len() as u64
            },
            "{name}"
        );
        assert_eq!(prelog_len(&path), 0, "{name}: the file is emptied");
        assert_eq!(
            journal.handle().record(&[]).expect("nothing to record"),
            applied_seq(&path),
            "{name}: numbering continues after the recovered records"
        );
        assert_eq!(applied_seq(&path), 4, "{name}: the start and three records");
        close_async(journal).await.expect("close");

        // The crash window between the recovery's commit and its truncation: the same
        // records again must not be inserted twice.
        for bytes in &good {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(prelog_path(&path))
                .expect("open");
            std::io::Write::write_all(&mut file, bytes).expect("write");
        }
        let journal = open(&path, JournalOptions::default()).expect("reopen");
        assert_eq!(journal.recovery().records, 0, "{name}");
        close_async(journal).await.expect("close");

        let reader = JournalReader::open(&path).expect("reader");
        assert_eq!(recorded_ns(&reader, id), vec![1, 2, 3], "{name}");
        let session = reader.session(id).expect("query").expect("row");
        assert_eq!(
            session.ended_at,
            Some(at_us(3)),
            "{name}: the interrupted session ends at its last recovered event"
        );
    }
}

#[tokio::test]
async fn a_damaged_record_ends_the_readable_part() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let id = journal_with_open_session(&path).await;
    let written = write_prelog(
        &path,
        &[
            (1, pg_event(id, 1)),
            (2, pg_event(id, 2)),
            (3, pg_event(id, 3)),
        ],
    );
    // Flip a byte inside the second record's data.
    let mut bytes = std::fs::read(prelog_path(&path)).expect("read");
    let at = written[0].len() + written[1].len() - 3;
    bytes[at] ^= 0x20;
    std::fs::write(prelog_path(&path), &bytes).expect("write");

    let journal = open(&path, JournalOptions::default()).expect("open");
    assert_eq!(journal.recovery().records, 1);
    assert_eq!(
        journal.recovery().torn_bytes,
        (written[1].len() + written[2].len()) as u64
    );
    // Numbering continues after the last record seen, not after the damaged ones: their
    // numbers are free again, which is fine since they were never committed.
    let id2 = journal
        .handle()
        .start_session(sample_start("app", "db", at_us(5)))
        .await
        .expect("start");
    // 1: the first session's start; 2: the one good record; 3: this start.
    assert_eq!(
        journal
            .handle()
            .record(&[pg_event(id2, 5)])
            .expect("record"),
        4
    );
    close_async(journal).await.expect("close");
    let reader = JournalReader::open(&path).expect("reader");
    assert_eq!(recorded_ns(&reader, id), vec![1]);
    assert_eq!(recorded_ns(&reader, id2), vec![5]);
}

/// Runs one of the `child_*` tests below in a new process of this test binary.
fn run_child(test: &str, dir: &Path) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

const CHILD_DIR: &str = "NHI_JOURNAL_TEST_CHILD_DIR";

fn child_dir() -> PathBuf {
    PathBuf::from(std::env::var_os(CHILD_DIR).expect("only run as a child process by another test"))
}

const KILLED_RECORDS: i64 = 50;

#[tokio::test]
#[ignore = "a child process of a_killed_agents_events_are_recovered_exactly_once"]
async fn child_records_then_waits_to_be_killed() {
    let path = child_dir().join("journal.db");
    let journal = open(&path, JournalOptions::default()).expect("open");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("app", "db", at_us(0)))
        .await
        .expect("start");
    h.flush().await.expect("the first start is committed");
    // The writer can no longer commit: what follows exists only in the pre-log, a
    // session's start included.
    let _lock = WriteLock::take(&path);
    let id2 = h
        .start_session(sample_start("app2", "db", at_us(1)))
        .await
        .expect("start in the pre-log");
    for n in 1..=KILLED_RECORDS {
        h.record(&[pg_event(id, n)]).expect("record");
    }
    println!("READY {id} {id2}");
    std::io::Write::flush(&mut std::io::stdout()).expect("flush stdout");
    std::thread::sleep(Duration::from_secs(60));
    panic!("was not killed");
}

#[tokio::test]
async fn a_killed_agents_events_are_recovered_exactly_once() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let mut child = run_child(
        "journal::tests::child_records_then_waits_to_be_killed",
        dir.path(),
    );
    let stdout = child.stdout.take().expect("stdout");
    // libtest prints "test NAME ... " before running the test, on the same line.
    let ready: Option<(SessionId, SessionId)> = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            let (_, ids) = l.split_once("READY ")?;
            let (a, b) = ids.trim().split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        });
    // Child::kill sends SIGKILL: no destructor, no close, no flush runs in the child.
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap");
    let (id, id2) = ready.expect("the child got ready");
    assert!(prelog_len(&path) > 0, "the events are in the pre-log");

    let journal = open(&path, JournalOptions::default()).expect("open after the kill");
    assert_eq!(
        journal.recovery(),
        PrelogRecovery {
            records: KILLED_RECORDS as u64 + 1,
            failed: 0,
            torn_bytes: 0
        },
        "the events and the second session's start"
    );
    close_async(journal).await.expect("close");
    let journal = open(&path, JournalOptions::default()).expect("open again");
    assert_eq!(journal.recovery().records, 0);
    close_async(journal).await.expect("close");

    let reader = JournalReader::open(&path).expect("reader");
    assert_eq!(
        recorded_ns(&reader, id),
        (1..=KILLED_RECORDS).collect::<Vec<_>>()
    );
    let session = reader.session(id).expect("query").expect("row");
    assert_eq!(
        session.close_reason.as_deref(),
        Some(writer::INTERRUPTED_REASON)
    );
    assert_eq!(session.ended_at, Some(at_us(KILLED_RECORDS)));
    let second = reader
        .session(id2)
        .expect("query")
        .expect("the start survived the kill");
    assert_eq!(second.identity.workload, "app2");
    assert_eq!(
        second.close_reason.as_deref(),
        Some(writer::INTERRUPTED_REASON)
    );
    let events = reader.events(id).expect("events");
    assert_eq!(
        events.last().map(|e| e.kind.clone()),
        Some(EventKind::SessionEnd)
    );
}

#[tokio::test]
#[ignore = "a child process of record_fails_cleanly_when_the_file_cannot_grow"]
async fn child_records_under_a_file_size_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

    let path = child_dir().join("journal.db");
    let journal = open(&path, JournalOptions::default()).expect("open");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("app", "db", at_us(0)))
        .await
        .expect("start");
    let first = h.record(&[pg_event(id, 1)]).expect("record");
    h.flush().await.expect("flush");

    // Keep SQLite from writing (it would hit the limit too) while the limit is on.
    let lock = WriteLock::take(&path);
    // Exceeding RLIMIT_FSIZE sends SIGXFSZ to the writing thread, which would kill the
    // process; blocked, the write fails with EFBIG instead (as it does with ENOSPC).
    let mut xfsz = SigSet::empty();
    xfsz.add(Signal::SIGXFSZ);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&xfsz), None).expect("block SIGXFSZ");
    let (soft, hard) = getrlimit(Resource::RLIMIT_FSIZE).expect("getrlimit");
    let before = prelog_len(&path);
    setrlimit(Resource::RLIMIT_FSIZE, before + 100, hard).expect("setrlimit");

    let big = Event {
        data: serde_json::json!({ "sql": "x".repeat(1000) }).to_string(),
        ..pg_event(id, 2)
    };
    let err = h
        .record(&[big])
        .expect_err("the file cannot grow that much");
    assert!(
        matches!(&err, JournalError::Prelog { op: "append", source, .. }
            if source.raw_os_error() == Some(libc::EFBIG)),
        "{}",
        super::error_chain(&err)
    );
    assert_eq!(prelog_len(&path), before, "the partial write was cut off");
    assert!(!h.prelog_broken());
    let small = h
        .record(&[Event {
            data: String::new(),
            ..pg_event(id, 3)
        }])
        .expect("fits");
    assert_eq!(small, first + 1, "the failed call used no sequence number");

    setrlimit(Resource::RLIMIT_FSIZE, soft, hard).expect("restore the limit");
    drop(lock);
    h.flush().await.expect("flush");
    close_async(journal).await.expect("close");
    let reader = JournalReader::open(&path).expect("reader");
    let kinds: Vec<Option<serde_json::Value>> = reader
        .events(id)
        .expect("events")
        .into_iter()
        .skip(1)
        .map(|e| e.data)
        .collect();
    assert_eq!(
        kinds,
        vec![Some(serde_json::json!({ "n": 1, "sql": "SELECT 1" })), None],
        "the first record and the small one, nothing of the failed one"
    );
    println!("CHILD OK");
}

#[test]
fn record_fails_cleanly_when_the_file_cannot_grow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = run_child(
        "journal::tests::child_records_under_a_file_size_limit",
        dir.path(),
    );
    let out = child.wait_with_output().expect("child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}");
    assert!(stdout.contains("CHILD OK"), "child did not run: {stdout}");
}

/// Not a test of behaviour but a measurement: `cargo test -p nhi-agent --lib
/// prelog_append_cost -- --ignored --nocapture` prints the cost of one record() call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn prelog_append_cost() {
    const CALLS: u64 = 50_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("app", "db", at_us(0)))
        .await
        .expect("start");
    let event = Event {
        data: serde_json::json!({
            "sql": "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "params": ["12345"],
            "statement": "P0_1",
            "user": "app",
            "database": "bench",
            "tag": "SELECT 1",
            "rows": 1,
            "duration_us": 37,
            "pad": "x".repeat(100),
        })
        .to_string(),
        ..pg_event(id, 0)
    };
    let mut samples = Vec::with_capacity(CALLS as usize);
    let start = std::time::Instant::now();
    let mut last = 0;
    for _ in 0..CALLS {
        let t = std::time::Instant::now();
        last = h.record(std::slice::from_ref(&event)).expect("record");
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let total = start.elapsed();
    samples.sort_unstable();
    println!(
        "record() of one {}-byte event: mean {} ns, p50 {} ns, p99 {} ns, max {} ns",
        event.data.len(),
        total.as_nanos() as u64 / CALLS,
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        samples[samples.len() - 1],
    );
    assert_eq!(last, CALLS);
    h.flush().await.expect("flush");
    assert_eq!(h.stats().prelog_records, CALLS);
    close_async(journal).await.expect("close");
}
