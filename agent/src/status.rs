//! The running agent's state, as the control socket's `status` answers it and
//! `nhi-agent status` prints it: programs and pins, mode, listeners, the configuration in
//! force and its last reload, the journal (live segment, last seal, checkpoint, writer),
//! shipping, holds, and the problems that make `status` exit non-zero.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde_json::{json, Value};

use crate::{approvals::Registry, proxy::Shared, ship::Shipper};

/// The outcome of the last reload, kept for `status`.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: SystemTime,
    /// What changed, or why the file was rejected.
    pub result: Result<String, String>,
}

/// Everything `status` reads; built once at start.
pub struct Sources {
    pub shared: Arc<Shared>,
    pub registry: Registry,
    /// The shipper in force (replaced by reloads).
    pub shipper: Arc<Mutex<Option<Arc<Shipper>>>>,
    pub started: SystemTime,
    /// The version line (`nhi-agent --version`).
    pub version: &'static str,
    pub config_path: PathBuf,
    /// The sockets and ports the agent serves, as JSON (fixed at start).
    pub listeners: Value,
    /// The attest socket while it is served (a reload may bind or close it).
    pub attest_socket: Arc<Mutex<Option<PathBuf>>>,
    /// `Some(why)` when `[lineage]` is enabled but not running.
    pub lineage_off: Option<String>,
    pub lineage_on: bool,
    pub last_reload: Arc<Mutex<Option<ReloadRecord>>>,
    pub streams: crate::stream::Streams,
}

fn time(t: SystemTime) -> String {
    crate::journal::format_rfc3339_us(t)
}

fn time_us(us: i64) -> String {
    time(SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64))
}

impl Sources {
    /// The status document. `problems` lists what is wrong (empty: healthy).
    pub fn collect(&self) -> Value {
        let config = self.shared.config();
        let mut problems: Vec<String> = Vec::new();
        let kernel = self.shared.interceptor().summary();
        if let Some(why) = &self.lineage_off {
            problems.push(format!("[lineage] is enabled but not running: {why}"));
        }
        let journal_handle = &self.shared.journal;
        let stats = journal_handle.stats();
        if journal_handle.prelog_broken() {
            problems.push(
                "the journal's pre-log is broken: new sessions and requests are refused".into(),
            );
        }
        let journal = journal_state(&config.agent.journal, &mut problems);
        if let Some(why) = self.shared.budget.exceeded() {
            problems.push(why);
        }
        let shipper = self
            .shipper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let shipping = match &shipper {
            None => json!({ "configured": false }),
            Some(s) => match s.status(false) {
                Ok(st) => {
                    let pending: usize = st.journals.iter().map(|j| j.pending_segments.len()).sum();
                    problems.extend(st.problems.iter().map(|p| format!("shipping: {p}")));
                    json!({
                        "configured": st.shipping,
                        "pending_segments": pending,
                        "journals": st.journals,
                        "used_bytes": st.used_bytes,
                        "disk_budget": st.disk_budget,
                    })
                }
                Err(e) => {
                    problems.push(format!("shipping state unreadable: {e}"));
                    json!({ "configured": true, "error": e.to_string() })
                }
            },
        };
        let pending = self.registry.list();
        let reload = self.last_reload.lock().unwrap_or_else(|p| p.into_inner());
        let last_reload = reload.as_ref().map(|r| match &r.result {
            Ok(what) => json!({ "at": time(r.at), "applied": true, "message": what }),
            Err(why) => {
                problems.push(format!(
                    "the last reload ({}) was rejected: {why}; the previous configuration is in force",
                    time(r.at)
                ));
                json!({ "at": time(r.at), "applied": false, "message": why })
            }
        });
        drop(reload);
        let streams = self.streams.status();
        for st in &streams {
            if let Some(e) = st["failing"].as_str() {
                problems.push(format!(
                    "stream {}: its sink is failing ({e}); events wait in the journal",
                    st["name"].as_str().unwrap_or_default()
                ));
            }
        }
        let workloads: Vec<Value> = config
            .workloads
            .iter()
            .map(|w| {
                json!({
                    "name": w.name,
                    "cgroup": w.cgroup.to_string(),
                    "uid": w.uid,
                })
            })
            .collect();
        let targets: Vec<Value> = config
            .targets
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "address": t.destination.to_string(),
                    "protocol": t.protocol.name(),
                })
            })
            .collect();
        let mut listeners = self.listeners.clone();
        if let Value::Object(map) = &mut listeners {
            let attest = self
                .attest_socket
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|p| p.display().to_string());
            map.insert("attest_socket".into(), json!(attest));
        }
        json!({
            "pid": std::process::id(),
            "version": self.version,
            "started": time(self.started),
            "config": self.config_path.display().to_string(),
            "mode": format!("{:?}", config.agent.mode).to_lowercase(),
            "fail": format!("{:?}", config.agent.fail).to_lowercase(),
            "listeners": listeners,
            "kernel": kernel,
            "lineage": self.lineage_on,
            "workloads": workloads,
            "targets": targets,
            "last_reload": last_reload,
            "active_connections": self.shared.active.load(std::sync::atomic::Ordering::Relaxed),
            "journal": {
                "path": config.agent.journal.display().to_string(),
                "fsync": format!("{:?}", config.agent.journal_fsync).to_lowercase(),
                "queue_depth": journal_handle.queue_depth(),
                "prelog_bytes": journal_handle.prelog_bytes(),
                "commits": stats.commits,
                "failed_batches": stats.failed_batches,
                "failed_records": stats.failed_records,
                "segments": journal,
            },
            "shipping": shipping,
            "streams": streams,
            "holds": {
                "pending": pending.len(),
                "ids": pending.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
                "grants": self.registry.grants().len(),
            },
            "problems": problems,
        })
    }
}

/// The live segment (its number, journal id, last checkpoint) and the last sealed one.
fn journal_state(journal: &Path, problems: &mut Vec<String>) -> Value {
    let live = match rusqlite::Connection::open_with_flags(
        journal,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(conn) => {
            let meta = |key: &str| {
                crate::journal::segments::meta_get(&conn, key)
                    .ok()
                    .flatten()
            };
            let seq: Option<u64> = meta("segment_seq").and_then(|v| v.parse().ok());
            let checkpoint = seq.and_then(|s| {
                crate::journal::checkpoint::read(journal, s)
                    .ok()
                    .flatten()
                    .and_then(|jws| crate::journal::checkpoint::peek(&jws))
            });
            json!({
                "segment_seq": seq,
                "journal_id": meta("journal_id"),
                "checkpoint": checkpoint.map(|c| json!({
                    "n": c.n,
                    "at": time_us(c.at_us),
                    "last_event_id": c.last_event_id,
                    "reason": c.reason,
                })),
            })
        }
        Err(e) => {
            problems.push(format!(
                "the journal {} is unreadable: {e}",
                journal.display()
            ));
            Value::Null
        }
    };
    let dir = crate::journal::segments::segments_dir(journal);
    let last_seal = match crate::ship::segment::scan(&dir) {
        Ok(scan) => {
            for (seq, why) in &scan.problems {
                problems.push(format!("segment {seq}: {why}"));
            }
            scan.journals
                .values()
                .flat_map(|segments| segments.iter())
                .max_by_key(|s| s.payload.sealed_at_us)
                .map(|s| {
                    json!({
                        "segment_seq": s.seq,
                        "sealed_at": time_us(s.payload.sealed_at_us),
                        "events": s.payload.event_count,
                        "reason": s.payload.reason,
                    })
                })
        }
        Err(e) => {
            problems.push(format!("cannot list the sealed segments: {e}"));
            None
        }
    };
    json!({ "live": live, "last_seal": last_seal })
}
