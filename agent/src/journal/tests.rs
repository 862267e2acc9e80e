//! Tests of the journal: schema and migrations, the writer's durability, batching and
//! failure handling, and the reader.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
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
        started_at,
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
async fn start_session_returns_only_after_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(&path, JournalOptions::default()).expect("open");
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
    assert_eq!(row.workload, "backup");
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
    let commands = (SESSIONS * (CHUNKS as usize + 2)) as u64;
    assert_eq!(stats.commands, commands);
    assert!(
        stats.commits < commands / 2,
        "expected batching: {} commits for {} commands",
        stats.commits,
        commands
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
            row.workload, workload,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commands_are_committed_in_batches_of_at_most_batch_max() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let journal = open(
        &path,
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
    let before = handle.stats();

    let lock = WriteLock::take(&path);
    for seq in 0..99 {
        handle
            .chunk(id, Direction::ClientToServer, seq, at_us(i64::from(seq)))
            .await
            .expect("queued");
    }
    let flusher = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.flush().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(lock);
    flusher.await.expect("task").expect("flush");

    let after = handle.stats();
    let commits = after.commits - before.commits;
    assert_eq!(after.commands - before.commands, 100);
    // 100 queued commands with batch_max 10: exactly ten full batches if the writer found
    // them all waiting, one more if it grabbed the first chunk before the others arrived.
    assert!(
        (10..=11).contains(&commits),
        "{commits} commits for 100 queued commands"
    );
    close_async(journal).await.expect("close");
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
    let err = handle
        .flush()
        .await
        .expect_err("the chunk was not committed");
    assert!(
        matches!(err, JournalError::FlushIncomplete { failed: 1 }),
        "got {err}"
    );
    assert!(handle.session_failed(a));
    let err = handle
        .chunk(a, Direction::ServerToClient, 30, at_us(3))
        .await
        .expect_err("a failed session takes no more chunks");
    assert!(matches!(err, JournalError::SessionFailed { id } if id == a));

    let err = handle
        .start_session(sample_start("b", "db", at_us(4)))
        .await
        .expect_err("a start that cannot be recorded is refused");
    assert!(matches!(err, JournalError::Sqlite { .. }), "got {err}");
    assert!(
        super::error_chain(&err).contains("disk on fire"),
        "{}",
        super::error_chain(&err)
    );

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
        .map(|s| s.workload)
        .collect();
    assert_eq!(workloads, ["a", "c"], "the refused start left no row");
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

    let err = starter.await.expect("task").expect_err("start c is lost");
    assert!(
        matches!(err, JournalError::BatchFailed { op: "commit", .. }),
        "got {err}"
    );
    // The flush either shared the lost batch or came right after it; either way it must
    // not claim success.
    let err = flusher
        .await
        .expect("task")
        .expect_err("flush sees the loss");
    assert!(
        matches!(
            err,
            JournalError::BatchFailed { .. } | JournalError::FlushIncomplete { failed: 3 }
        ),
        "got {err}"
    );
    assert!(handle.session_failed(a));
    assert!(handle.session_failed(b));
    let after = handle.stats();
    assert!(after.failed_batches > before.failed_batches);
    // Only a batch holding nothing but the flush can have committed.
    assert!(
        after.commits - before.commits <= 1,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.failed_records - before.failed_records, 3);

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
        .map(|s| s.workload)
        .collect();
    assert_eq!(workloads, ["a", "b", "d"]);
    assert!(reader.session(d).expect("query").is_some());
    let a_chunks = reader
        .events(a)
        .expect("events")
        .iter()
        .filter(|e| e.kind == EventKind::Chunk)
        .count();
    assert_eq!(a_chunks, 0, "the lost batch left nothing behind");
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
        reader.session(id).expect("query").map(|s| s.workload),
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
