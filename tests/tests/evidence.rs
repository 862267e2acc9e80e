//! The tamper-evident journal end to end, as root: real sessions through the eBPF
//! interception into a journal cut into many sealed segments, a clean stop, `nhi-agent
//! verify` on the journal's directory, and then each kind of tampering done with the
//! `sqlite3` shell (as an attacker with root on the host would) on a copy, named by verify.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use nhi_tests::*;

fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Drops the append-only triggers first, as an attacker must.
fn tamper(db: &Path, sql: &str) {
    sqlite3(
        db,
        &format!(
            "DROP TRIGGER events_append_only_update; DROP TRIGGER events_append_only_delete; {sql}"
        ),
    );
}

fn event_ids(db: &Path) -> Vec<i64> {
    sqlite3(db, "SELECT id FROM events ORDER BY id;")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn segment(dir: &Path, seq: u64) -> PathBuf {
    dir.join("segments").join(format!("{seq:010}.db"))
}

/// The journal's files (live file and segments/, nothing else) copied to a new directory.
fn copy_journal(journal: &Path, to: &Path) {
    fs::create_dir_all(to.join("segments")).expect("mkdir");
    fs::copy(journal, to.join("journal.db")).expect("copy live");
    let segments = journal.parent().expect("dir").join("segments");
    for entry in fs::read_dir(segments).expect("segments").flatten() {
        fs::copy(entry.path(), to.join("segments").join(entry.file_name())).expect("copy");
    }
}

fn verify(agent: &Agent, dir: &Path, key: &Path) -> Output {
    agent.cli(&[
        "verify",
        dir.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ])
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn sealed_segments_of_real_sessions_verify_and_each_tampering_is_named() {
    privileged!("sealed_segments_of_real_sessions_verify_and_each_tampering_is_named");
    if Command::new("sqlite3").arg("-version").output().is_err() {
        eprintln!("skipping: the sqlite3 shell is not installed (apt-get install sqlite3)");
        return;
    }
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let mut agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\
         [[target]]\nname = \"echo\"\naddress = \"{}\"\nprotocol = \"tcp\"\n\
         [evidence]\nsegment_max_bytes = \"48KiB\"\nhost_id = \"itest-host\"\n",
        cg.rel(),
        echo.addr
    ));
    for _ in 0..30 {
        let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "20000"]);
        assert_eq!(r["identical"], true, "{r}");
    }
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log_text());

    let dir = agent.journal.parent().expect("dir").to_path_buf();
    let segments: Vec<PathBuf> = fs::read_dir(dir.join("segments"))
        .expect("segments/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "db"))
        .collect();
    assert!(
        segments.len() >= 2,
        "only {} sealed segments",
        segments.len()
    );
    for db in &segments {
        assert!(
            db.with_extension("seal").exists(),
            "{} has no seal",
            db.display()
        );
    }
    // The live file was sealed in place by the clean stop: three segments at least.
    assert!(
        !sqlite3(&agent.journal, "SELECT value FROM meta WHERE key = 'seal';")
            .trim()
            .is_empty()
    );

    let key = agent.export_public_key();
    let out = agent.cli(&[
        "key",
        "show",
        "--json",
        "--config",
        agent.config_path.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["host_id"], "itest-host");
    assert_eq!(
        shown["public_key_pem"],
        fs::read_to_string(&key).expect("pem")
    );

    let out = verify(&agent, &dir, &key);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("OK: intact"), "{}", text(&out));
    // 30 sessions, each with a start, its chunks and an end.
    let json = agent.cli(&[
        "verify",
        dir.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert!(report["journals"][0]["events"].as_u64().expect("events") >= 90);
    assert_eq!(report["journals"][0]["host_id"], "itest-host");

    // Damage a segment with enough rows in its middle.
    let (busy, mid) = (1..)
        .take(segments.len())
        .map(|seq| (seq, event_ids(&segment(&dir, seq))))
        .find(|(_, ids)| ids.len() >= 6)
        .map(|(seq, ids)| (seq, ids[ids.len() / 2]))
        .expect("a segment with rows");
    let busy_name = format!("{busy:010}.db");
    let work = tempfile::tempdir().expect("tempdir");
    let case = |name: &str, f: &dyn Fn(&Path)| -> String {
        let copy = work.path().join(name);
        copy_journal(&agent.journal, &copy);
        f(&copy);
        let out = verify(&agent, &copy, &key);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        text(&out)
    };

    let out = case("modified", &|d| {
        tamper(
            &segment(d, busy),
            &format!("UPDATE events SET at_us = at_us + 1 WHERE id = {mid};"),
        )
    });
    assert!(
        out.contains("DAMAGE: modified row") && out.contains(&busy_name),
        "{out}"
    );
    assert!(contains_whole(&out, &format!("at event {mid}")), "{out}");

    let out = case("deleted", &|d| {
        tamper(
            &segment(d, busy),
            &format!("DELETE FROM events WHERE id = {mid};"),
        )
    });
    assert!(
        out.contains("DAMAGE: deleted row") && out.contains(&busy_name),
        "{out}"
    );

    let out = case("swapped", &|d| {
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
    assert!(
        out.contains("DAMAGE: reordered rows") && out.contains(&busy_name),
        "{out}"
    );

    let out = case("missing", &|d| {
        fs::remove_file(segment(d, 2)).expect("rm");
        fs::remove_file(segment(d, 2).with_extension("seal")).expect("rm");
    });
    assert!(
        out.contains("DAMAGE: missing segment") && out.contains("0000000003.db"),
        "{out}"
    );

    // The tail: the last segment that has events (the live file may be empty when a
    // rotation came just before the stop).
    let live_seq = segments.len() as u64 + 1;
    let tail = (1..=live_seq)
        .rev()
        .find(|&seq| {
            let db = if seq == live_seq {
                agent.journal.clone()
            } else {
                segment(&dir, seq)
            };
            event_ids(&db).len() >= 3
        })
        .expect("a segment with events");
    let out = case("tail", &|d| {
        let db = if tail == live_seq {
            d.join("journal.db")
        } else {
            segment(d, tail)
        };
        tamper(
            &db,
            "DELETE FROM events WHERE id > (SELECT MAX(id) - 2 FROM events);",
        )
    });
    assert!(out.contains("DAMAGE: truncated tail"), "{out}");
    assert!(contains_whole(&out, &format!("(segment {tail})")), "{out}");

    let out = case("session", &|d| {
        sqlite3(
            &segment(d, busy),
            "UPDATE sessions SET target = 'elsewhere';",
        );
    });
    assert!(out.contains("DAMAGE: modified session row"), "{out}");
}

/// A crash in the middle of a rotating journal: SIGKILL while sessions run, a restart,
/// more sessions, a clean stop. The journal must still verify from its first event to its
/// last (the killed agent's open segment is continued, not lost or forked), and every
/// session of both runs must be in it.
#[test]
fn a_journal_killed_mid_run_verifies_after_the_restart() {
    privileged!("a_journal_killed_mid_run_verifies_after_the_restart");
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let mut agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\
         [[target]]\nname = \"echo\"\naddress = \"{}\"\nprotocol = \"tcp\"\n\
         [evidence]\nsegment_max_bytes = \"48KiB\"\n",
        cg.rel(),
        echo.addr
    ));
    let run = |n: usize| {
        for _ in 0..n {
            let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "20000"]);
            assert_eq!(r["identical"], true, "{r}");
        }
    };
    run(15);
    agent.kill9();
    agent.spawn();
    run(15);
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log_text());

    let dir = agent.journal.parent().expect("dir").to_path_buf();
    let key = agent.export_public_key();
    let out = verify(&agent, &dir, &key);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = agent.cli(&["sessions", dir.to_str().expect("utf-8"), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let sessions: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(
        sessions.len(),
        30,
        "every session of both runs: {sessions:?}"
    );
    assert!(
        sessions.iter().all(|s| !s["ended_at"].is_null()),
        "all ended (the killed run's open ones closed at restart)"
    );
}

/// The payload of a checkpoint file (a compact JWS), unverified.
fn checkpoint_payload(path: &Path) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let text = fs::read_to_string(path).ok()?;
    let payload = text.trim().split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

#[test]
fn a_live_segment_cut_back_or_deleted_after_a_checkpoint_is_named_by_verify() {
    privileged!("a_live_segment_cut_back_or_deleted_after_a_checkpoint_is_named_by_verify");
    if Command::new("sqlite3").arg("-version").output().is_err() {
        eprintln!("skipping: the sqlite3 shell is not installed (apt-get install sqlite3)");
        return;
    }
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let mut agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\
         [[target]]\nname = \"echo\"\naddress = \"{}\"\nprotocol = \"tcp\"\n\
         [evidence]\ncheckpoint_interval = \"200ms\"\n",
        cg.rel(),
        echo.addr
    ));
    for _ in 0..5 {
        let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "5000"]);
        assert_eq!(r["identical"], true, "{r}");
    }
    agent.wait_sessions_ended(5);
    // The head as committed, then the checkpoint that names it (written within the
    // interval after the commit).
    let head: i64 = sqlite3(&agent.journal, "SELECT MAX(id) FROM events;")
        .trim()
        .parse()
        .expect("events");
    let dir = agent.journal.parent().expect("dir").to_path_buf();
    let checkpoint_file = dir.join("segments").join("0000000001.checkpoint");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let checkpoint = loop {
        if let Some(p) = checkpoint_payload(&checkpoint_file) {
            if p["last_event_id"].as_i64() == Some(head) {
                break p;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint of event {head}: {:?}\n{}",
            checkpoint_payload(&checkpoint_file),
            agent.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let n = checkpoint["n"].as_u64().expect("n");
    // A crash: the live file is not sealed, only the checkpoint speaks for it.
    agent.kill9();
    let key = agent.export_public_key();

    // Untampered: intact, and the live segment is shown with its checkpoint.
    let out = verify(&agent, &dir, &key);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("checkpoint {n} at event {head}")),
        "{}",
        text(&out)
    );

    // The tail deleted with sqlite3.
    tamper(
        &agent.journal,
        &format!("DELETE FROM events WHERE id > {};", head - 3),
    );
    assert_eq!(event_ids(&agent.journal).last(), Some(&(head - 3)));
    let out = verify(&agent, &dir, &key);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "DAMAGE: live segment truncated before checkpoint {n} in {}",
            agent.journal.display()
        )),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains(&format!("events {}..={head} are gone", head - 2)),
        "{}",
        text(&out)
    );

    // The live file deleted altogether.
    for suffix in ["", "-wal", "-shm"] {
        let mut p = agent.journal.as_os_str().to_owned();
        p.push(suffix);
        let _ = fs::remove_file(PathBuf::from(p));
    }
    let out = verify(&agent, &dir, &key);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("DAMAGE: live segment deleted"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains(&format!("checkpoint {n} states segment 1")),
        "{}",
        text(&out)
    );
}
