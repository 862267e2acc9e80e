//! Chain, rotation and verify against real journals written by the writer.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::verify::{self, DamageKind, HighWaterMark, Report};
use crate::evidence::{seal, HostKey, PublicKey, SealReason};
use crate::journal::tests::{at_us, sample_start};
use crate::journal::{
    open, Direction, Event, Journal, JournalOptions, SegmentOptions, SessionEnd, SessionId,
};

fn options(key: &Arc<HostKey>, max_bytes: u64) -> JournalOptions {
    JournalOptions {
        segments: Some(SegmentOptions {
            key: Arc::clone(key),
            host_id: "test-host".to_string(),
            max_bytes,
            max_age: Duration::from_secs(3600),
            checkpoint_interval: Duration::from_secs(10),
        }),
        ..JournalOptions::default()
    }
}

async fn close(journal: Journal) {
    tokio::task::spawn_blocking(move || journal.close())
        .await
        .expect("join")
        .expect("close");
}

fn pg(session: SessionId, n: i64) -> Event {
    Event {
        session,
        at: at_us(n),
        kind: std::borrow::Cow::Borrowed("pg.query"),
        data: serde_json::json!({ "sql": format!("SELECT {n}") }).to_string(),
    }
}

fn end(id: SessionId, n: i64) -> SessionEnd {
    SessionEnd {
        id,
        ended_at: at_us(n),
        bytes_from_client: 10,
        bytes_from_server: 20,
        close_reason: "client closed".to_string(),
    }
}

/// Small enough for many segments: an empty journal file is 36 KiB (its pages; rotation
/// counts pages, not the WAL).
const SEGMENT_BYTES: u64 = 48 << 10;

/// How many events [`write_journal`] writes.
const SESSIONS: i64 = 40;
const CHUNKS: i64 = 20;
const EVENTS_PER_SESSION: i64 = 2 + CHUNKS + 2;

/// Writes sessions through a tiny segment limit, with one long session that stays open
/// across rotations (its events and end land in later segments), a clean stop and a
/// reopen (which rotates the sealed live file). Returns the journal path.
async fn write_journal(dir: &Path, key: &Arc<HostKey>) -> PathBuf {
    let path = dir.join("journal.db");
    let journal = open(&path, options(key, SEGMENT_BYTES)).expect("open");
    let h = journal.handle();
    let long = h
        .start_session(sample_start("long", "db", at_us(0)))
        .await
        .expect("start long");
    let mut n = 1;
    for s in 0..SESSIONS / 2 {
        let mut start = sample_start(&format!("w{s}"), "db", at_us(n));
        if s % 2 == 1 {
            // Every other session is a container's: its identity is chained too.
            let mut identity = (*start.identity).clone();
            identity.container = Some(crate::identity::ContainerIdentity {
                runtime: Some("docker".into()),
                id: Some(format!("{s:064x}")),
                name: Some(format!("job-{s}")),
                netns: Some(4026532000 + s as u64),
                ns_pid: Some(7),
                ..Default::default()
            });
            start.identity = Arc::new(identity);
        }
        let id = h.start_session(start).await.expect("start");
        for c in 0..CHUNKS {
            h.chunk(id, Direction::ClientToServer, c as u32 + 1, at_us(n))
                .await
                .expect("chunk");
            n += 1;
        }
        h.record_durably(&[pg(id, n), pg(long, n + 1)])
            .await
            .expect("record");
        h.end_session(end(id, n + 2)).await.expect("end");
        n += 3;
    }
    close(journal).await;

    // The sealed live file is moved into segments/ at the next start.
    let journal = open(&path, options(key, SEGMENT_BYTES)).expect("reopen");
    let h = journal.handle();
    for s in SESSIONS / 2..SESSIONS {
        let id = h
            .start_session(sample_start(&format!("w{s}"), "db", at_us(n)))
            .await
            .expect("start");
        for c in 0..CHUNKS {
            h.chunk(id, Direction::ServerToClient, c as u32 + 1, at_us(n))
                .await
                .expect("chunk");
            n += 1;
        }
        h.record_durably(&[pg(id, n)]).await.expect("record");
        h.record_durably(&[pg(id, n + 1)]).await.expect("record");
        h.end_session(end(id, n + 2)).await.expect("end");
        n += 3;
    }
    close(journal).await;
    path
}

fn verify_dir(dir: &Path, key: &PublicKey) -> Report {
    verify::verify_files(&verify::collect_files(&[dir.to_path_buf()]), &[], key, None)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Runs `sql` on `db` as an attacker would: first dropping the append-only triggers.
fn tamper(db: &Path, sql: &str) {
    let conn = Connection::open(db).expect("open for tampering");
    conn.execute_batch(
        "DROP TRIGGER events_append_only_update; DROP TRIGGER events_append_only_delete;",
    )
    .expect("drop triggers");
    conn.execute_batch(sql).expect("tamper");
}

fn ids_of(db: &Path) -> Vec<i64> {
    let conn = Connection::open(db).expect("open");
    let mut stmt = conn
        .prepare("SELECT id FROM events ORDER BY id")
        .expect("prepare");
    let ids = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<Vec<i64>, _>>()
        .expect("ids");
    ids
}

fn segment(dir: &Path, seq: u64) -> PathBuf {
    dir.join("segments").join(format!("{seq:010}.db"))
}

/// Rotation by size counts the segment's pages, not the WAL file's size: that file keeps
/// its high-water size after each WAL checkpoint, and counting it sealed segments far
/// below the limit (found by `cargo xtask soak`: 0.3 MiB segments under a 4 MiB limit).
/// A session start is a commit of its own, so many short sessions make the WAL grow much
/// faster than the database, as under real traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_rotate_when_their_pages_reach_the_limit_not_their_wal() {
    const LIMIT: u64 = 256 << 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Arc::new(HostKey::generate().expect("key"));
    let path = dir.path().join("journal.db");
    let journal = open(&path, options(&key, LIMIT)).expect("open");
    let h = journal.handle();
    let mut n = 1;
    while super::segments::list_segments(&path).is_empty() {
        let id = h
            .start_session(sample_start(&format!("w{n}"), "db", at_us(n)))
            .await
            .expect("start");
        h.end_session(end(id, n + 1)).await.expect("end");
        n += 2;
        assert!(n < 100_000, "no rotation after {} sessions", n / 2);
    }
    close(journal).await;
    for (_, db) in super::segments::list_segments(&path) {
        let len = std::fs::metadata(&db).expect("segment").len();
        assert!(
            len >= LIMIT,
            "{} sealed at {len} bytes, under the {LIMIT}-byte limit",
            db.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_loses_and_duplicates_no_event_and_every_segment_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Arc::new(HostKey::generate().expect("key"));
    let path = write_journal(dir.path(), &key).await;

    let mut segments = super::segments::list_segments(&path);
    assert!(segments.len() >= 3, "only {} segments", segments.len());
    for (_, db) in &segments {
        assert!(
            super::segments::seal_path_for(db).exists(),
            "{} has no .seal",
            db.display()
        );
    }
    segments.push((u64::MAX, path.clone()));
    let mut all: Vec<i64> = segments.iter().flat_map(|(_, db)| ids_of(db)).collect();
    // The long session's start, every session's events, and the long session's end
    // (written by the recovery at the second start: it was open at the clean stop).
    let expected = 2 + SESSIONS * EVENTS_PER_SESSION;
    assert_eq!(all.len() as i64, expected, "events lost or duplicated");
    let sorted = {
        let mut s = all.clone();
        s.sort();
        s
    };
    assert_eq!(all, sorted, "segments hold ids out of order");
    all.dedup();
    assert_eq!(all, (1..=expected).collect::<Vec<_>>());

    // Every session's end is in exactly one segment, and the long session (open across
    // rotations) got its pre-log events in later segments.
    let mut ends = 0;
    let mut long_events = 0;
    for (_, db) in &segments {
        let conn = Connection::open(db).expect("open");
        ends += conn
            .query_row(
                "SELECT COUNT(*) FROM events WHERE kind = 'session_end'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .expect("count");
        long_events += conn
            .query_row(
                "SELECT COUNT(*) FROM events WHERE session_id = 1 AND kind = 'pg.query'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .expect("count");
    }
    assert_eq!(ends, SESSIONS + 1);
    assert_eq!(long_events, SESSIONS / 2);

    let report = verify_dir(dir.path(), &key.public());
    assert!(report.intact, "{:#?}", report.damages);
    let j = &report.journals[0];
    assert_eq!(j.events as i64, expected);
    assert_eq!(j.segments.len(), segments.len());
    assert!(j.segments.iter().all(|s| s.status == "sealed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_every_kind_of_damage_and_its_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Arc::new(HostKey::generate().expect("key"));
    let path = write_journal(dir.path(), &key).await;
    let public = key.public();
    // A segment with enough rows to damage one in the middle.
    let (busy, mid) = (2..)
        .map(|seq| (seq, ids_of(&segment(dir.path(), seq))))
        .find(|(_, ids)| ids.len() > 10)
        .map(|(seq, ids)| (seq, ids[ids.len() / 2]))
        .expect("a segment with rows");
    let last_seq = super::segments::list_segments(&path).len() as u64 + 1;
    let case = |name: &str, f: &dyn Fn(&Path)| -> Report {
        let copy = dir.path().join(format!("case-{name}"));
        copy_dir(&dir.path().join("segments"), &copy.join("segments"));
        std::fs::copy(&path, copy.join("journal.db")).expect("copy live");
        f(&copy);
        verify_dir(&copy, &public)
    };
    let expect = |report: &Report, kind: DamageKind, seq: u64| {
        assert!(!report.intact, "{kind:?} not found: {report:#?}");
        let first = report.first_damage.as_ref().expect("a damage");
        assert_eq!(first.kind, kind, "{:#?}", report.damages);
        assert_eq!(first.segment_seq, Some(seq), "{:#?}", report.damages);
    };

    let r = case("modified", &|d| {
        tamper(
            &segment(d, busy),
            &format!("UPDATE events SET at_us = at_us + 1 WHERE id = {mid}"),
        )
    });
    expect(&r, DamageKind::ModifiedRow, busy);
    assert_eq!(r.first_damage.as_ref().and_then(|d| d.event_id), Some(mid));

    let r = case("deleted", &|d| {
        tamper(
            &segment(d, busy),
            &format!("DELETE FROM events WHERE id = {mid}"),
        )
    });
    expect(&r, DamageKind::DeletedRow, busy);
    assert_eq!(r.first_damage.as_ref().and_then(|d| d.event_id), Some(mid));

    let r = case("reordered", &|d| {
        let b = mid + 1;
        tamper(
            &segment(d, busy),
            &format!(
                "CREATE TEMP TABLE t AS SELECT * FROM events WHERE id IN ({mid}, {b});
                 UPDATE events SET (session_id, at_us, kind, direction, size, data, hash) =
                   (SELECT session_id, at_us, kind, direction, size, data, hash FROM t
                    WHERE t.id = CASE events.id WHEN {mid} THEN {b} ELSE {mid} END)
                 WHERE id IN ({mid}, {b});"
            ),
        )
    });
    expect(&r, DamageKind::ReorderedRows, busy);

    // The last segment with events (the live one may be empty: a rotation can come just
    // before the stop).
    let tail_seq = (1..=last_seq)
        .rev()
        .find(|&seq| {
            let db = if seq == last_seq {
                path.clone()
            } else {
                segment(dir.path(), seq)
            };
            ids_of(&db).len() >= 3
        })
        .expect("a segment with events");
    let r = case("truncated", &|d| {
        let db = if tail_seq == last_seq {
            d.join("journal.db")
        } else {
            segment(d, tail_seq)
        };
        tamper(
            &db,
            "DELETE FROM events WHERE id > (SELECT MAX(id) - 2 FROM events)",
        )
    });
    expect(&r, DamageKind::TruncatedTail, tail_seq);

    let r = case("missing", &|d| {
        std::fs::remove_file(segment(d, 2)).expect("rm");
        std::fs::remove_file(segment(d, 2).with_extension("seal")).expect("rm");
    });
    expect(&r, DamageKind::MissingSegment, 3);

    let r = case("session", &|d| {
        let conn = Connection::open(segment(d, 1)).expect("open");
        conn.execute("UPDATE sessions SET target = 'elsewhere' WHERE id = 2", [])
            .expect("update");
    });
    expect(&r, DamageKind::ModifiedSessionRow, 1);
    assert_eq!(r.first_damage.as_ref().and_then(|d| d.session_id), Some(2));

    // The container of session 3 (a container's) renamed.
    let r = case("container", &|d| {
        let conn = Connection::open(segment(d, 1)).expect("open");
        let changed = conn
            .execute(
                "UPDATE sessions SET container = replace(container, 'job-', 'other-') WHERE id = 3",
                [],
            )
            .expect("update");
        assert_eq!(changed, 1);
    });
    expect(&r, DamageKind::ModifiedSessionRow, 1);
    assert_eq!(r.first_damage.as_ref().and_then(|d| d.session_id), Some(3));

    let r = case("bytes", &|d| {
        let conn = Connection::open(segment(d, 1)).expect("open");
        conn.execute("UPDATE sessions SET bytes_from_server = 1 WHERE id = 2", [])
            .expect("update");
    });
    expect(&r, DamageKind::ModifiedSessionRow, 1);

    // Another key: every seal is refused.
    let other = HostKey::generate().expect("key").public();
    let r = verify_dir(&dir.path().join("case-modified").join("segments"), &other);
    assert_eq!(
        r.first_damage.map(|d| d.kind),
        Some(DamageKind::InvalidSeal)
    );

    // The high-water mark: reached by the journal as it is, not by a copy missing its tail
    // segment.
    let last_seal =
        std::fs::read_to_string(segment(dir.path(), last_seq - 1).with_extension("seal"))
            .expect("seal");
    let payload = seal::verify(&last_seal, &public).expect("valid");
    let hwm = HighWaterMark {
        host_id: payload.host_id.clone(),
        journal_id: payload.journal_id.clone(),
        segment_seq: payload.segment_seq,
        last_event_id: payload.last_event_id,
        last_hash: payload.last_hash.clone(),
        seal_sha256: seal::seal_sha256(&last_seal),
        updated_at_us: 0,
        checkpoint: None,
    };
    let files = verify::collect_files(&[dir.path().join("segments"), path.clone()]);
    assert!(verify::verify_files(&files, &[], &public, Some(&hwm)).intact);
    let fewer: Vec<PathBuf> = files
        .iter()
        .filter(|f| !f.ends_with(format!("{:010}.db", last_seq - 1)) && **f != path)
        .cloned()
        .collect();
    let r = verify::verify_files(&fewer, &[], &public, Some(&hwm));
    assert!(
        r.damages
            .iter()
            .any(|d| d.kind == DamageKind::BehindHighWaterMark),
        "{:#?}",
        r.damages
    );
    // The checkpoints next to the files given name the live segment that is not there.
    assert_eq!(
        r.first_damage.map(|d| d.kind),
        Some(DamageKind::LiveSegmentDeleted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_batches_and_failed_savepoints_roll_the_chain_back_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let journal = open(&path, JournalOptions::default()).expect("open");
    let h = journal.handle();
    let a = h
        .start_session(sample_start("a", "db", at_us(0)))
        .await
        .expect("start");
    h.flush().await.expect("a's start is committed");
    let side = Connection::open(&path).expect("side");

    // A lost batch: COMMIT fails on a deferred foreign key.
    side.execute_batch(
        "CREATE TABLE poison (x INTEGER REFERENCES sessions (id) DEFERRABLE INITIALLY DEFERRED); \
         CREATE TRIGGER poison_events AFTER INSERT ON events \
         BEGIN INSERT INTO poison VALUES (-1); END;",
    )
    .expect("poison");
    h.chunk(a, Direction::ClientToServer, 1, at_us(1))
        .await
        .expect("queued");
    assert!(h.flush().await.is_err(), "the batch must be lost");
    side.execute_batch("DROP TRIGGER poison_events;")
        .expect("cure");

    // A failed start: its savepoint is rolled back after the session row went in.
    side.execute_batch(
        "CREATE TRIGGER no_starts BEFORE INSERT ON events WHEN NEW.kind = 'session_start' \
         BEGIN SELECT RAISE(ABORT, 'no'); END;",
    )
    .expect("trigger");
    let lost = h
        .start_session(sample_start("b", "db", at_us(2)))
        .await
        .expect("in the pre-log");
    assert!(h.flush().await.is_err(), "its insert failed");
    assert!(h.session_failed(lost), "and failed its session");
    side.execute_batch("DROP TRIGGER no_starts;").expect("drop");

    let b = h
        .start_session(sample_start("b", "db", at_us(3)))
        .await
        .expect("start b");
    assert_eq!(b, lost + 1, "session ids are handed out once");
    h.record_durably(&[pg(b, 4)]).await.expect("record");
    h.end_session(end(b, 5)).await.expect("end");
    drop(side);
    close(journal).await;

    // a's start, a's chunk (in the pre-log, so retried after the lost batch), b's start,
    // its statement, its end.
    assert_eq!(ids_of(&path), vec![1, 2, 3, 4, 5], "ids are contiguous");
    let report = verify_dir(dir.path(), &HostKey::generate().expect("key").public());
    assert!(report.intact, "{:#?}", report.damages);
    assert_eq!(report.journals[0].segments[0].status, "open (not sealed)");
}

/// A measurement, not a test: chained ingest rate through the pre-log and verify speed.
/// `cargo test -p nhi-agent --lib evidence::tests::chained_ingest_and_verify_rates -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn chained_ingest_and_verify_rates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let journal = open(&path, JournalOptions::default()).expect("open");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("bench", "db", at_us(0)))
        .await
        .expect("start");
    const TOTAL: i64 = 400_000;
    let batch: Vec<Event> = (0..100).map(|n| pg(id, n)).collect();
    let started = Instant::now();
    let mut last = 0;
    for _ in 0..TOTAL / 100 {
        last = h.record(&batch).expect("record");
    }
    h.durable(last).await.expect("durable");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "chained ingest: {TOTAL} events in {secs:.2}s = {:.0} events/s",
        TOTAL as f64 / secs
    );
    close(journal).await;
    let started = Instant::now();
    let report = verify_dir(dir.path(), &HostKey::generate().expect("key").public());
    let secs = started.elapsed().as_secs_f64();
    assert!(report.intact);
    println!(
        "verify: {} bytes in {secs:.2}s = {:.1} MB/s",
        report.bytes,
        report.bytes as f64 / 1e6 / secs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_live_segment_is_sealed_when_it_reaches_its_maximum_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let key = Arc::new(HostKey::generate().expect("key"));
    let mut opts = options(&key, u64::MAX);
    if let Some(s) = opts.segments.as_mut() {
        s.max_age = Duration::from_millis(300);
    }
    let journal = open(&path, opts).expect("open");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("a", "db", at_us(0)))
        .await
        .expect("start");
    // No command arrives while the segment ages: the writer wakes up by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    while super::segments::list_segments(&path).is_empty() {
        assert!(Instant::now() < deadline, "no age rotation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The open session was carried over and can be ended in the new segment.
    h.end_session(end(id, 1)).await.expect("end after rotation");
    close(journal).await;
    let report = verify_dir(dir.path(), &key.public());
    assert!(report.intact, "{:#?}", report.damages);
    let first = &report.journals[0].segments[0];
    let seal = std::fs::read_to_string(first.path.with_extension("seal")).expect("seal");
    let payload = seal::verify(&seal, &key.public()).expect("seal");
    assert_eq!(payload.reason, SealReason::Age);
    assert_eq!(payload.event_count, 1);
}

/// Found by the `journal` fuzz target: a session row whose text is not UTF-8 made
/// `verify` panic (rusqlite's `Value` conversion) instead of reporting damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_session_row_with_non_utf8_text_instead_of_panicking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Arc::new(HostKey::generate().expect("key"));
    let path = dir.path().join("journal.db");
    let journal = open(&path, options(&key, 64 << 20)).expect("open");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("bot", "db", at_us(1)))
        .await
        .expect("start");
    h.end_session(end(id, 2)).await.expect("end");
    drop(h);
    close(journal).await;
    assert!(verify_dir(dir.path(), &key.public()).intact);

    let conn = Connection::open(&path).expect("open");
    conn.execute(
        "UPDATE sessions SET workload = CAST(X'626f74ff' AS TEXT) WHERE id = ?1",
        [id],
    )
    .expect("update");
    drop(conn);
    let r = verify_dir(dir.path(), &key.public());
    assert!(!r.intact);
    let damage = r.first_damage.expect("a finding");
    assert_eq!(damage.kind, DamageKind::ModifiedSessionRow);
    assert_eq!(damage.session_id, Some(id));
}

/// The fuzzer's input itself (a journal whose session text is not UTF-8 once SQLite
/// reads it): `verify` reports damage, it does not panic.
#[test]
fn verify_survives_the_fuzzed_journal_with_non_utf8_session_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    std::fs::write(
        &path,
        include_bytes!("testdata/fuzz-session-row-not-utf8.db"),
    )
    .expect("write");
    let key = HostKey::generate().expect("key").public();
    let r = verify::verify_files(&[path], &[], &key, None);
    assert!(!r.intact);
    assert!(!r.damages.is_empty());
}

// ------------------------------------------------------------------ checkpoints

fn checkpoint_options(key: &Arc<HostKey>) -> JournalOptions {
    let mut opts = options(key, 64 << 20);
    if let Some(seg) = opts.segments.as_mut() {
        seg.checkpoint_interval = Duration::from_millis(50);
    }
    opts
}

/// The live file's last event id, read as a reader would while the agent runs.
fn live_head(path: &Path) -> Option<i64> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open");
    conn.query_row("SELECT MAX(id) FROM events", [], |r| r.get(0))
        .expect("max")
}

/// Waits until the checkpoint of segment `seq` names event `head` (the writer writes it
/// within `checkpoint_interval` of the commit); returns its payload.
fn wait_checkpoint(path: &Path, seq: u64, head: i64) -> super::checkpoint::CheckpointPayload {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = super::checkpoint::read(path, seq)
            .expect("read")
            .and_then(|t| super::checkpoint::peek(&t));
        if let Some(p) = found.filter(|p| p.last_event_id == Some(head)) {
            return p;
        }
        assert!(Instant::now() < deadline, "no checkpoint of event {head}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sessions with statements, committed.
async fn write_sessions(h: &crate::journal::JournalHandle, from: i64, n: i64) {
    for s in from..from + n {
        let id = h
            .start_session(sample_start(&format!("w{s}"), "db", at_us(s * 10)))
            .await
            .expect("start");
        h.record_durably(&[pg(id, s * 10 + 1)])
            .await
            .expect("record");
        h.end_session(end(id, s * 10 + 2)).await.expect("end");
    }
    h.flush().await.expect("flush");
}

/// A consistent copy of the running journal's live file and its `segments/` (what a
/// killed agent leaves behind: no seal), in `to`.
fn snapshot_running(path: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).expect("mkdir");
    let copy = to.join("journal.db");
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open");
    conn.execute("VACUUM INTO ?1", [copy.to_str().expect("utf-8")])
        .expect("vacuum into");
    copy_dir(
        &path.parent().expect("dir").join("segments"),
        &to.join("segments"),
    );
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_follow_the_head_and_verify_names_a_truncated_or_deleted_live_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Arc::new(HostKey::generate().expect("key"));
    let public = key.public();
    let path = dir.path().join("journal.db");
    let journal = open(&path, checkpoint_options(&key)).expect("open");
    let h = journal.handle();
    // At start: a checkpoint of the empty segment, before any event.
    let first = super::checkpoint::read(&path, 1)
        .expect("read")
        .and_then(|t| super::checkpoint::verify(&t, &public).ok())
        .expect("startup checkpoint");
    assert_eq!(first.last_event_id, None);
    assert_eq!(first.reason, super::checkpoint::CheckpointReason::Startup);
    write_sessions(&h, 0, 5).await;
    let head = live_head(&path).expect("events");
    let cp = wait_checkpoint(&path, 1, head);
    assert!(cp.n > first.n);
    // The head moves again: a later checkpoint follows it.
    write_sessions(&h, 5, 5).await;
    let head = live_head(&path).expect("events");
    let cp = wait_checkpoint(&path, 1, head);
    snapshot_running(&path, &dir.path().join("untouched"));
    close(journal).await;

    // As the agent left it: intact, the segment reported with its checkpoint.
    let r = verify_dir(&dir.path().join("untouched"), &public);
    assert!(r.intact, "{:?}", r.damages);
    let seg = &r.journals[0].segments[0];
    assert_eq!(seg.status, "open (not sealed)");
    assert_eq!(seg.checkpoint.as_ref().map(|c| c.n), Some(cp.n));
    // The clean stop sealed it and checkpointed the same head: intact too.
    let r = verify::verify_files(
        &verify::collect_files(&[path.clone(), dir.path().join("segments")]),
        &[],
        &public,
        None,
    );
    assert!(r.intact, "{:?}", r.damages);

    // The tail cut off (an unsealed live file: only the checkpoint can tell).
    let cut = dir.path().join("cut");
    copy_dir(&dir.path().join("untouched"), &cut);
    tamper(
        &cut.join("journal.db"),
        &format!("DELETE FROM events WHERE id > {}", head - 4),
    );
    let r = verify_dir(&cut, &public);
    let d = r.first_damage.expect("damage");
    assert_eq!(
        d.kind,
        DamageKind::TruncatedBeforeCheckpoint,
        "{:?}",
        r.damages
    );
    assert_eq!(d.checkpoint, Some(cp.n));
    assert_eq!(d.event_id, Some(head - 3));
    assert!(
        d.detail
            .contains(&format!("events {}..={head} are gone", head - 3)),
        "{}",
        d.detail
    );

    // The tail cut off and rewritten with other rows of the same ids.
    let rewritten = dir.path().join("rewritten");
    copy_dir(&dir.path().join("untouched"), &rewritten);
    tamper(
        &rewritten.join("journal.db"),
        &format!("UPDATE events SET data = '{{}}', hash = randomblob(32) WHERE id = {head}"),
    );
    let r = verify_dir(&rewritten, &public);
    assert!(r
        .damages
        .iter()
        .any(|d| d.kind == DamageKind::TruncatedBeforeCheckpoint && d.event_id == Some(head)));

    // The live file deleted: its checkpoint names a segment that is not there.
    let deleted = dir.path().join("deleted");
    copy_dir(&dir.path().join("untouched"), &deleted);
    std::fs::remove_file(deleted.join("journal.db")).expect("rm");
    let r = verify::verify_files(
        &verify::collect_files(std::slice::from_ref(&deleted)),
        &super::checkpoint::collect(std::slice::from_ref(&deleted)),
        &public,
        None,
    );
    let d = r.first_damage.expect("damage");
    assert_eq!(d.kind, DamageKind::LiveSegmentDeleted, "{:?}", r.damages);
    assert_eq!(d.checkpoint, Some(cp.n));
    assert!(!r.intact);

    // A checkpoint signed by another key is not evidence.
    let forged = dir.path().join("forged");
    copy_dir(&dir.path().join("untouched"), &forged);
    let other = HostKey::generate().expect("key");
    let mut p = cp.clone();
    p.last_event_id = Some(head - 10);
    std::fs::write(
        forged.join("segments").join("0000000001.checkpoint"),
        super::checkpoint::sign(&p, &other).expect("sign"),
    )
    .expect("write");
    let r = verify_dir(&forged, &public);
    assert_eq!(
        r.first_damage.map(|d| d.kind),
        Some(DamageKind::InvalidCheckpoint)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_file_truncated_while_stopped_is_sealed_as_found_and_its_checkpoint_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Arc::new(HostKey::generate().expect("key"));
    let public = key.public();
    let path = dir.path().join("journal.db");
    let journal = open(&path, checkpoint_options(&key)).expect("open");
    write_sessions(&journal.handle(), 0, 5).await;
    let head = live_head(&path).expect("events");
    wait_checkpoint(&path, 1, head);
    close(journal).await;
    let kept = super::checkpoint::read(&path, 1)
        .expect("read")
        .expect("checkpoint");
    // What a killed agent leaves (no seal), then the tail cut off while it is down.
    tamper(
        &path,
        &format!(
            "DELETE FROM meta WHERE key = 'seal'; DELETE FROM events WHERE id > {}",
            head - 3
        ),
    );
    let journal = open(&path, checkpoint_options(&key)).expect("reopen");
    // The checkpoint of segment 1 is untouched; the journal goes on in segment 2.
    assert_eq!(
        super::checkpoint::read(&path, 1).expect("read").as_deref(),
        Some(kept.as_str())
    );
    assert!(segment(dir.path(), 1).exists(), "segment 1 sealed as found");
    write_sessions(&journal.handle(), 5, 2).await;
    close(journal).await;
    assert!(super::checkpoint::read(&path, 2).expect("read").is_some());
    let r = verify_dir(dir.path(), &public);
    let d = r.first_damage.expect("damage");
    assert_eq!(
        d.kind,
        DamageKind::TruncatedBeforeCheckpoint,
        "{:?}",
        r.damages
    );
    assert_eq!(d.segment_seq, Some(1));
    assert_eq!(d.event_id, Some(head - 2));
    assert_eq!(r.damages.len(), 1, "{:?}", r.damages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_water_mark_that_follows_a_checkpoint_catches_a_live_file_cut_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Arc::new(HostKey::generate().expect("key"));
    let public = key.public();
    let path = write_journal(dir.path(), &key).await;
    let last_seq = super::segments::list_segments(&path).len() as u64 + 1;
    let base_seal =
        std::fs::read_to_string(segment(dir.path(), last_seq - 1).with_extension("seal"))
            .expect("seal");
    let sp = seal::verify(&base_seal, &public).expect("seal");
    let cp_jws = super::checkpoint::read(&path, last_seq)
        .expect("read")
        .expect("the live segment's checkpoint");
    let base = crate::ship::layout::Hwm {
        host_id: sp.host_id.clone(),
        journal_id: sp.journal_id.clone(),
        segment_seq: sp.segment_seq,
        last_event_id: sp.last_event_id,
        last_hash: sp.last_hash.clone(),
        seal_sha256: seal::seal_sha256(&base_seal),
        updated_at_us: 0,
        checkpoint: None,
    };
    let followed = base
        .with_checkpoint(&cp_jws, 1)
        .expect("the next segment's checkpoint");
    assert!(base.with_checkpoint("not a jws", 1).is_none());
    let hwm: HighWaterMark =
        serde_json::from_value(serde_json::to_value(&followed).expect("json")).expect("hwm");
    let cp = hwm.checkpoint.clone().expect("checkpoint");
    assert_eq!(cp.segment_seq, last_seq);
    let cp_event = cp.last_event_id.expect("the live segment has events");
    let all = |d: &Path| {
        verify::verify_files(
            &verify::collect_files(&[d.join("journal.db"), d.join("segments")]),
            &[],
            &public,
            Some(&hwm),
        )
    };
    let r = all(dir.path());
    assert!(r.intact, "{:?}", r.damages);

    // Upstream holds only the sealed segments: the checkpoint is noted, not a damage.
    let upstream = dir.path().join("upstream");
    std::fs::create_dir_all(&upstream).expect("mkdir");
    for (_, db) in super::segments::list_segments(&path) {
        for f in [db.clone(), db.with_extension("seal")] {
            std::fs::copy(&f, upstream.join(f.file_name().expect("name"))).expect("copy");
        }
    }
    let r = verify::verify_files(
        &verify::collect_files(&[upstream]),
        &[],
        &public,
        Some(&hwm),
    );
    assert!(r.intact, "{:?}", r.damages);
    assert!(
        r.notes.iter().any(|n| n.contains("live segment")),
        "{:?}",
        r.notes
    );

    // The live file cut back and its local checkpoint removed: the mark still knows.
    let cut = dir.path().join("cut");
    copy_dir(&dir.path().join("segments"), &cut.join("segments"));
    std::fs::copy(&path, cut.join("journal.db")).expect("copy");
    std::fs::remove_file(
        cut.join("segments")
            .join(format!("{last_seq:010}.checkpoint")),
    )
    .expect("rm");
    tamper(
        &cut.join("journal.db"),
        &format!("DELETE FROM meta WHERE key = 'seal'; DELETE FROM events WHERE id >= {cp_event}"),
    );
    let r = all(&cut);
    assert!(!r.intact);
    let d = r
        .damages
        .iter()
        .find(|d| d.kind == DamageKind::BehindHighWaterMark)
        .unwrap_or_else(|| panic!("{:?}", r.damages));
    assert_eq!(d.checkpoint, Some(cp.n));
    assert_eq!(d.event_id, Some(cp_event));
}

/// A reader of the live path (the CLI's `--journal journal.db`) never finds it missing or
/// empty while the writer rotates: the successor is built beside it and renamed over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_path_names_a_complete_journal_throughout_rotations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Arc::new(HostKey::generate().expect("key"));
    let path = dir.path().join("journal.db");
    let journal = open(&path, options(&key, SEGMENT_BYTES)).expect("open");
    let h = journal.handle();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut reads, mut failures) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let read =
                    Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                        .and_then(|c| {
                            c.busy_timeout(Duration::from_secs(5))?;
                            c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))
                        });
                reads += 1;
                if let Err(e) = read {
                    failures.push(e.to_string());
                }
            }
            (reads, failures)
        })
    };
    let mut n = 1;
    while super::segments::list_segments(&path).len() < 4 {
        let id = h
            .start_session(sample_start(&format!("w{n}"), "db", at_us(n)))
            .await
            .expect("start");
        h.record(&[pg(id, n)]).expect("record");
        h.end_session(end(id, n + 1)).await.expect("end");
        n += 2;
        assert!(n < 100_000, "no rotation after {} sessions", n / 2);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, failures) = reader.join().expect("reader");
    close(journal).await;
    assert!(reads > 0);
    assert!(
        failures.is_empty(),
        "{} of {reads} reads of the live path failed, first: {}",
        failures.len(),
        failures[0]
    );
    assert!(!super::segments::successor_path(&path).exists());
    let report = verify_dir(dir.path(), &key.public());
    assert!(report.intact, "{:#?}", report.damages);
}

/// A rotation interrupted after the sealed live file was linked into segments/ (the agent
/// died before the rename) completes at the next start: the link to the same file is
/// taken as done; a different file of that name is never overwritten.
#[test]
fn linking_a_sealed_segment_again_is_done_and_another_file_is_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("journal.db");
    std::fs::write(&live, b"sealed").expect("write");
    let first = super::segments::link_into_segments(&live, 7, "jws").expect("link");
    let again = super::segments::link_into_segments(&live, 7, "jws").expect("link again");
    assert_eq!(first, again);
    assert_eq!(std::fs::read(&first).expect("segment"), b"sealed");
    assert!(super::segments::seal_path_for(&first).exists());

    std::fs::remove_file(&live).expect("unlink");
    std::fs::write(&live, b"another").expect("write");
    let err = super::segments::link_into_segments(&live, 7, "jws").expect_err("overwrite");
    assert!(
        matches!(&err, crate::evidence::EvidenceError::Io { op, .. } if *op == "segment already exists"),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&first).expect("segment"), b"sealed");
}

/// The agent dies during a rotation after the sealed live file was linked into
/// segments/ and before its successor was renamed over it: the next start finds the live
/// file sealed with its segment already linked, completes the rotation, and the journal
/// continues with every event once and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_cut_between_link_and_rename_completes_at_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Arc::new(HostKey::generate().expect("key"));
    let path = write_journal(dir.path(), &key).await;
    // The clean stop sealed the live file; do what the rotation does before the rename.
    let seq: u64 = Connection::open(&path)
        .expect("open")
        .query_row(
            "SELECT value FROM meta WHERE key = 'segment_seq'",
            [],
            |r| r.get::<_, String>(0),
        )
        .expect("segment_seq")
        .parse()
        .expect("a number");
    let events_before: Vec<i64> = super::segments::list_segments(&path)
        .iter()
        .flat_map(|(_, db)| ids_of(db))
        .chain(ids_of(&path))
        .collect();
    let jws: String = Connection::open(&path)
        .expect("open")
        .query_row("SELECT value FROM meta WHERE key = 'seal'", [], |r| {
            r.get(0)
        })
        .expect("the clean stop sealed the live file");
    super::segments::link_into_segments(&path, seq, &jws).expect("link");
    std::fs::write(super::segments::successor_path(&path), b"half-built").expect("leftover");

    let journal = open(&path, options(&key, SEGMENT_BYTES)).expect("restart");
    let h = journal.handle();
    let id = h
        .start_session(sample_start("after", "db", at_us(1_000_000)))
        .await
        .expect("start");
    h.end_session(end(id, 1_000_001)).await.expect("end");
    close(journal).await;

    assert!(!super::segments::successor_path(&path).exists());
    let segments = super::segments::list_segments(&path);
    assert_eq!(segments.last().map(|(s, _)| *s), Some(seq));
    let all: Vec<i64> = segments
        .iter()
        .flat_map(|(_, db)| ids_of(db))
        .chain(ids_of(&path))
        .collect();
    assert_eq!(&all[..events_before.len()], &events_before[..]);
    assert_eq!(
        all.len(),
        events_before.len() + 2,
        "the new session's start and end"
    );
    let report = verify_dir(dir.path(), &key.public());
    assert!(report.intact, "{:#?}", report.damages);
}
