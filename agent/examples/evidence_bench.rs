//! Journal ingest with the hash chain and segment seals on: the figure `cargo xtask bench`
//! prints as "journal ingest". Not a test: it asserts nothing but that the journal accepted
//! every event.
//!
//! `evidence_bench DIR EVENTS SEGMENT_MAX_BYTES` writes EVENTS statement events (the shape
//! the PostgreSQL proxy records) over 100 sessions into `DIR/journal.db` through the same
//! pre-log path the proxy uses (`JournalHandle::record`, batches of 100), waits until they
//! are committed, closes (which seals the live segment), writes the public key to
//! `DIR/key.pub`, and prints one JSON object with the figures.
use nhi_agent::identity::SessionIdentity;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nhi_agent::evidence::HostKey;
use nhi_agent::journal::{self, Event, JournalOptions, SegmentOptions, SessionStart};

const SESSIONS: i64 = 100;
const BATCH: usize = 100;

fn start(n: i64) -> SessionStart {
    let client: SocketAddr = format!("127.0.0.1:{}", 40000 + n).parse().expect("address");
    SessionStart {
        identity: Arc::new(SessionIdentity {
            workload: format!("bot-{}", n % 10),
            cgroup: format!("system.slice/bot-{n}.service"),
            cgroup_id: 1000 + n as u64,
            pid: 100 + n as u32,
            pid_start_time: Some(1),
            exe: Some("/usr/bin/psql".into()),
            cmdline: Some(vec!["psql".into(), "-c".into(), "select 1".into()]),
            uid: 0,
            gid: 0,
            user: Some("root".into()),
            comm: "psql".into(),
            client_addr: client,
            orig_dst: "127.0.0.1:5432".parse().expect("address"),
            target: "orders-db".into(),
            protocol: "postgres".into(),
            container: None,
        }),
        started_at: SystemTime::now(),
        claims: None,
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: DIR EVENTS MAX_BYTES"))?,
    );
    let events: u64 = args.next().unwrap_or_else(|| "1000000".into()).parse()?;
    let max_bytes: u64 = args
        .next()
        .unwrap_or_else(|| (64u64 << 20).to_string())
        .parse()?;
    std::fs::create_dir_all(&dir)?;
    let key = Arc::new(HostKey::generate()?);
    std::fs::write(dir.join("key.pub"), key.public().to_pem())?;
    let path = dir.join("journal.db");
    let journal = journal::open(
        &path,
        JournalOptions {
            segments: Some(SegmentOptions {
                key,
                host_id: "bench".into(),
                max_bytes,
                max_age: Duration::from_secs(3600),
                checkpoint_interval: Duration::from_secs(10),
            }),
            ..JournalOptions::default()
        },
    )?;
    let handle = journal.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ingest_secs, sessions) = rt.block_on(async {
        let mut sessions = Vec::new();
        for n in 0..SESSIONS {
            sessions.push(handle.start_session(start(n)).await?);
        }
        let started = Instant::now();
        let mut last = 0;
        let mut i = 0u64;
        let mut batch = Vec::with_capacity(BATCH);
        while i < events {
            batch.clear();
            for _ in 0..BATCH.min((events - i) as usize) {
                let session = sessions[(i % SESSIONS as u64) as usize];
                batch.push(Event {
                    session,
                    at: SystemTime::now(),
                    kind: Cow::Borrowed("statement"),
                    data: format!(
                        r#"{{"seq":{i},"protocol":"simple","text":"select abalance from pgbench_accounts where aid = {i}","kinds":["select"],"tables":["pgbench_accounts"],"verdict":"allow","enforced":true,"action":"forwarded"}}"#
                    ),
                });
                i += 1;
            }
            last = handle.record(&batch)?;
        }
        handle.durable(last).await?;
        anyhow::Ok((started.elapsed().as_secs_f64(), sessions))
    })?;
    let stats = handle.stats();
    drop(handle);
    journal.close()?;
    let segments = std::fs::read_dir(dir.join("segments"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "seal"))
                .count()
        })
        .unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "events": events,
            "sessions": sessions.len(),
            "ingest_seconds": ingest_secs,
            "events_per_second": events as f64 / ingest_secs,
            "commits": stats.commits,
            "failed_records": stats.failed_records,
            "sealed_segments": segments,
        })
    );
    anyhow::ensure!(stats.failed_records == 0, "the journal refused records");
    Ok(())
}
