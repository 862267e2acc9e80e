//! A small real journal, the seed of the `journal` fuzz target (`cargo xtask fuzz`
//! runs it). Not a test: it asserts nothing but that the journal accepted every record.
//!
//! `fuzz_journal_seed DIR` writes `DIR/journal.db` through the agent's own writer: an
//! opaque TCP session with chunks, a PostgreSQL session with start-up, statement and
//! result events (one refused), a session left open, and a session-less exec event;
//! then closes the journal, which seals the live segment in place (`meta.seal`). The
//! public key that verifies the seal goes to `DIR/key.pub`.
use nhi_agent::identity::SessionIdentity;
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nhi_agent::evidence::HostKey;
use nhi_agent::journal::{
    self, Direction, Event, JournalOptions, SegmentOptions, SessionEnd, SessionStart, NO_SESSION,
};

fn start(n: u32, protocol: &str, target: &str) -> SessionStart {
    SessionStart {
        identity: Arc::new(SessionIdentity {
            workload: format!("bot-{n}"),
            cgroup: format!("system.slice/bot-{n}.service"),
            cgroup_id: 1000 + u64::from(n),
            pid: 100 + n,
            pid_start_time: Some(7),
            exe: Some("/usr/bin/psql".into()),
            cmdline: Some(vec!["psql".into(), "-c".into(), "select 1".into()]),
            uid: 0,
            gid: 0,
            user: Some("root".into()),
            comm: "psql".into(),
            client_addr: format!("127.0.0.1:{}", 40000 + n).parse().expect("address"),
            orig_dst: "127.0.0.1:5432".parse().expect("address"),
            target: target.into(),
            protocol: protocol.into(),
            // One container session, so the seed journal has the column filled.
            container: (n == 3).then(|| nhi_agent::identity::ContainerIdentity {
                runtime: Some("docker".into()),
                id: Some("c".repeat(64)),
                name: Some("ci-job".into()),
                netns: Some(4026532100),
                ns_pid: Some(1),
                ..Default::default()
            }),
        }),
        started_at: SystemTime::now(),
        claims: (n == 2).then(|| {
            let mut claims = serde_json::Map::new();
            claims.insert("repository".into(), "org/app".into());
            claims
        }),
    }
}

fn event(session: i64, kind: &'static str, data: String) -> Event {
    Event {
        session,
        at: SystemTime::now(),
        kind: Cow::Borrowed(kind),
        data,
    }
}

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: fuzz_journal_seed DIR"))?,
    );
    std::fs::create_dir_all(&dir)?;
    let key = Arc::new(HostKey::generate()?);
    std::fs::write(dir.join("key.pub"), key.public().to_pem())?;
    let journal = journal::open(
        &dir.join("journal.db"),
        JournalOptions {
            segments: Some(SegmentOptions {
                key,
                host_id: "fuzz-seed".into(),
                max_bytes: 64 << 20,
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
    rt.block_on(async {
        let tcp = handle.start_session(start(1, "tcp", "orders-tcp")).await?;
        for (i, dir) in [Direction::ClientToServer, Direction::ServerToClient]
            .into_iter()
            .cycle()
            .take(4)
            .enumerate()
        {
            handle.chunk(tcp, dir, 100 + i as u32, SystemTime::now()).await?;
        }
        handle
            .end_session(SessionEnd {
                id: tcp,
                ended_at: SystemTime::now(),
                bytes_from_client: 202,
                bytes_from_server: 204,
                close_reason: "client closed".into(),
            })
            .await?;

        let pg = handle.start_session(start(2, "postgres", "orders-db")).await?;
        let last = handle.record(&[
            event(pg, "pg_startup", r#"{"user":"bot","db_user":"bot","database":"orders","params":[],"protocol_version":"3.0","client_tls":false,"credential_injected":false}"#.into()),
            event(pg, "pg_auth", r#"{"method":"scram-sha-256","injected":false,"user":"bot"}"#.into()),
            event(pg, "statement", r#"{"seq":1,"protocol":"simple","text":"SELECT id, email FROM customers","kinds":["select"],"tables":["customers"],"verdict":"allow","enforced":true,"action":"forwarded"}"#.into()),
            event(pg, "statement_end", r#"{"seq":1,"rows":2,"columns":["id","email"],"masked":[{"column":"email","rule":"pii","strategy":"redact","values":2}]}"#.into()),
            event(pg, "statement", r#"{"seq":2,"protocol":"simple","text":"DROP TABLE customers","kinds":["drop"],"tables":["customers"],"verdict":"deny","rule":"no-drop","enforced":true,"action":"refused"}"#.into()),
            event(NO_SESSION, "exec", r#"{"pid":4242,"ppid":1,"uid":0,"exe":"/usr/bin/psql","argv":["psql","-c","select 1"],"cgroup":"system.slice/bot-2.service","workload":"bot-2"}"#.into()),
        ])?;
        handle.durable(last).await?;
        handle
            .end_session(SessionEnd {
                id: pg,
                ended_at: SystemTime::now(),
                bytes_from_client: 300,
                bytes_from_server: 900,
                close_reason: "client closed".into(),
            })
            .await?;
        handle.start_session(start(3, "tcp", "orders-tcp")).await?;
        handle.flush().await?;
        anyhow::Ok(())
    })?;
    drop(handle);
    journal.close()?;
    Ok(())
}
