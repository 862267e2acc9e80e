//! Process lineage: which programs ran in the intercepted cgroups, and which chain of
//! execs led to the process behind a session.
//!
//! The kernel side (`agent-ebpf/src/lineage.rs`) reports exec, fork and exit of tasks
//! in intercepted cgroups into a ring buffer; [`Lineage`] drains it, decodes the
//! records ([`event`]), keeps a [`table::ProcessTable`], and journals:
//! - `exec` (no session): `{pid, ppid, uid, user, cgroup, cgroup_id, workload, exe,
//!   argv, argv_truncated, start_boot_ns, start_time, parent_exec}`, stamped with the
//!   exec's own time;
//! - `exit` (no session): `{pid, code, cgroup_id, exe}`, `code` null when the process
//!   did not end through `exit_group` (a signal);
//! - `lineage_lost` (no session): `{count, total}` when the ring buffer was full: the
//!   kernel counted records it could not deliver; nothing is dropped silently;
//! - `lineage` (in a session, right after its start): `{pid, chain: [{pid, exe, argv}]}`,
//!   root first, so a replay shows how the client came to run without the
//!   session-less events.
//!
//! Before a session's chain is built the ring buffer is drained, so the client's own
//! exec (which happened before its connect) is always in the table.
pub mod config;
pub mod event;
pub mod table;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    attest::Claims,
    ebpf::{self, LineageSource},
    journal::{format_rfc3339_us, Event, JournalHandle, SessionId, NO_SESSION},
};
use table::{Change, ExecInfo, ProcessTable};

/// Errors of the lineage subsystem.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    /// A ring buffer record is shorter than its kind's layout.
    #[error("lineage record of kind {kind} has {len} bytes, its layout needs {need}")]
    ShortRecord { kind: u32, len: usize, need: usize },
    /// A record kind this agent does not know (an object from another build).
    #[error("lineage record of unknown kind {0}")]
    UnknownKind(u32),
}

/// How often the drop counter is read (and the ring drained without a wake-up).
const TICK: Duration = Duration::from_secs(1);

/// The running lineage tracker: the ring buffer, the process table, and the journal
/// writes they lead to.
pub struct Lineage {
    state: Mutex<State>,
    /// Applied to each exec's argv as it is decoded, before anything keeps it.
    argv_mask: crate::mask::argv::ArgvMask,
}

struct State {
    source: LineageSource,
    table: ProcessTable,
    users: HashMap<u32, Option<String>>,
    lost_reported: u64,
}

impl std::fmt::Debug for Lineage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lineage").finish_non_exhaustive()
    }
}

/// What the tracker needs of the running agent: the journal, cgroup paths, and the
/// agent's view of which processes are a workload's. The proxy's shared state
/// implements it (`proxy::Shared`), so lineage imports neither the proxy nor the
/// configuration.
pub trait Host: Send + Sync {
    fn journal(&self) -> &JournalHandle;
    /// The path (relative to the cgroup2 mount) of cgroup `id`, if known.
    fn cgroup_path(&self, id: u64) -> Option<String>;
    /// For a cgroup the kernel had not classified, as the proxy does for a connection:
    /// records the classification in the kernel map, and answers whether `uid`'s
    /// processes in cgroup `path` are a workload's.
    fn classify(&self, id: u64, path: &str, uid: u32) -> bool;
    /// The workload a process of `uid` in cgroup `path` belongs to, and the claims
    /// attested for that cgroup (or its nearest attested ancestor).
    fn who(&self, cgroup_id: u64, path: &str, uid: u32) -> (Option<String>, Option<Claims>);
}

impl Lineage {
    pub fn new(source: LineageSource, argv_mask: crate::mask::argv::ArgvMask) -> Arc<Self> {
        Arc::new(Lineage {
            argv_mask,
            state: Mutex::new(State {
                source,
                table: ProcessTable::new(),
                users: HashMap::new(),
                lost_reported: 0,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drains the ring buffer until `shutdown` flips (then drains once more).
    pub async fn run(self: Arc<Self>, host: Arc<dyn Host>, mut shutdown: watch::Receiver<bool>) {
        let waker = self.state().source.waker();
        let ready = match waker {
            Ok(a) => Some(a),
            Err(e) => {
                warn!(error = %e, "cannot poll the lineage ring buffer; reading it every second");
                None
            }
        };
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                r = async { ready.as_ref()?.wait().await.ok() }, if ready.is_some() => {
                    if r.is_none() {
                        // A failing epoll would spin; the tick still drains the ring.
                        tokio::time::sleep(TICK).await;
                    }
                }
                _ = tick.tick() => self.check_lost(host.as_ref()),
                _ = shutdown.changed() => {
                    self.pump(host.as_ref());
                    self.check_lost(host.as_ref());
                    return;
                }
            }
            self.pump(host.as_ref());
        }
    }

    /// Processes every waiting record; returns how many there were.
    pub fn pump(&self, host: &dyn Host) -> usize {
        let mut state = self.state();
        let mut records = Vec::new();
        let n = state
            .source
            .drain(|bytes| records.push(event::decode(bytes)));
        if n == 0 {
            return 0;
        }
        let mut events = Vec::new();
        let clock = Clock::now();
        for record in records {
            let record = match record {
                Ok(mut r) => {
                    // Secrets in arguments never reach the table, the events or a chain.
                    if let event::Record::ExecArgs { argv, .. } = &mut r {
                        self.argv_mask.mask(argv);
                    }
                    r
                }
                Err(e) => {
                    warn!(error = %e, "undecodable lineage record skipped");
                    continue;
                }
            };
            let Some(change) = state.table.apply(record, proc_parent) else {
                continue;
            };
            match change {
                Change::Exec(info) => {
                    let path = host.cgroup_path(info.cgroup_id);
                    if info.unclassified
                        && !path
                            .as_deref()
                            .is_some_and(|p| host.classify(info.cgroup_id, p, info.uid))
                    {
                        state.table.forget_exec(info.pid);
                        continue;
                    }
                    let user = state
                        .users
                        .entry(info.uid)
                        .or_insert_with(|| crate::identity::user_name(info.uid))
                        .clone();
                    let (workload, claims) = who(host, info.cgroup_id, &path, info.uid);
                    events.push(exec_event(
                        &info,
                        &clock,
                        path.as_deref(),
                        workload,
                        user,
                        claims,
                    ));
                }
                Change::Exit {
                    pid,
                    code,
                    uid,
                    cgroup_id,
                    exe,
                    boot_ns,
                    unclassified,
                } => {
                    let path = host.cgroup_path(cgroup_id);
                    if unclassified
                        && !path
                            .as_deref()
                            .is_some_and(|p| host.classify(cgroup_id, p, uid))
                    {
                        continue;
                    }
                    let (workload, claims) = who(host, cgroup_id, &path, uid);
                    let data = serde_json::json!({
                        "pid": pid, "code": code, "cgroup": path, "cgroup_id": cgroup_id,
                        "workload": workload, "claims": claims, "exe": exe,
                    });
                    events.push(Event {
                        session: NO_SESSION,
                        at: clock.wall(boot_ns),
                        kind: "exit".into(),
                        data: data.to_string(),
                    });
                }
            }
        }
        drop(state);
        if !events.is_empty() {
            if let Err(e) = host.journal().record(&events) {
                warn!(error = %e, events = events.len(), "cannot journal lineage events");
            }
        }
        n
    }

    /// Journals `lineage_lost` when the kernel counted records it could not deliver.
    fn check_lost(&self, host: &dyn Host) {
        let mut state = self.state();
        let total = match state.source.dropped() {
            Ok(t) => t,
            Err(e) => {
                debug!(error = %e, "cannot read the lineage drop counter");
                return;
            }
        };
        crate::metrics::get().lineage_dropped_total(total);
        if total <= state.lost_reported {
            return;
        }
        let count = total - state.lost_reported;
        state.lost_reported = total;
        drop(state);
        warn!(
            count,
            total, "lineage ring buffer was full; records were lost"
        );
        let event = Event {
            session: NO_SESSION,
            at: SystemTime::now(),
            kind: "lineage_lost".into(),
            data: serde_json::json!({ "count": count, "total": total }).to_string(),
        };
        if let Err(e) = host.journal().record(&[event]) {
            warn!(error = %e, "cannot journal the lineage loss");
        }
    }

    /// Journals the chain of execs that led to `pid` as the session's `lineage` event.
    pub fn session_started(&self, host: &dyn Host, session: SessionId, pid: u32) {
        self.pump(host);
        let chain = self.state().table.chain(pid);
        if chain.is_empty() {
            debug!(session, pid, "no lineage known for the session's process");
            return;
        }
        let event = Event {
            session,
            at: SystemTime::now(),
            kind: "lineage".into(),
            data: serde_json::json!({ "pid": pid, "chain": chain }).to_string(),
        };
        if let Err(e) = host.journal().record(&[event]) {
            warn!(session, error = %e, "cannot journal the session's lineage");
        }
    }
}

/// Starts the lineage tracker when `[lineage] enabled`: attaches the tracepoints and
/// returns the tracker (its [`Lineage::run`] task is the caller's to spawn).
pub fn start(
    interceptor: &mut ebpf::Interceptor,
    settings: &config::LineageSettings,
) -> Result<Option<Arc<Lineage>>, ebpf::EbpfError> {
    if !settings.enabled {
        info!("process lineage disabled ([lineage] enabled = false)");
        return Ok(None);
    }
    let source = interceptor.attach_lineage(ebpf::LineageOptions {
        argv_max_args: settings.argv_max,
        argv_max_bytes: settings.argv_max_bytes,
    })?;
    Ok(Some(Lineage::new(source, settings.argv_mask.clone())))
}

/// The workload and claims of a process in cgroup `path` (none when the path is
/// unknown): what the session-less `exec` and `exit` events carry, so `events
/// --workload/--claim` select them as they select the events of a session.
fn who(
    host: &dyn Host,
    cgroup_id: u64,
    path: &Option<String>,
    uid: u32,
) -> (Option<String>, Option<Claims>) {
    match path.as_deref() {
        Some(path) => host.who(cgroup_id, path, uid),
        None => (None, None),
    }
}

fn exec_event(
    info: &ExecInfo,
    clock: &Clock,
    cgroup: Option<&str>,
    workload: Option<String>,
    user: Option<String>,
    claims: Option<Claims>,
) -> Event {
    let at = clock.wall(info.start_boot_ns);
    let mut data = serde_json::json!({
        "pid": info.pid,
        "ppid": info.ppid,
        "uid": info.uid,
        "user": user,
        "cgroup": cgroup,
        "cgroup_id": info.cgroup_id,
        "workload": workload,
        "claims": claims,
        "exe": info.exe,
        "argv": info.argv,
        "argv_truncated": info.argv_truncated,
        "start_boot_ns": info.start_boot_ns,
        "start_time": format_rfc3339_us(at),
        "parent_exec": info.parent_exe,
    });
    // A process in a container: its runtime and id (from the cgroup path), and its pid
    // inside the container (read now; left out when it has already exited).
    if let Some(c) = cgroup.and_then(crate::identity::container_of_cgroup) {
        data["container"] = serde_json::json!({ "runtime": c.runtime, "id": c.id });
    }
    if let Some(ns_pid) = crate::identity::ns_pid(info.pid) {
        data["ns_pid"] = serde_json::json!(ns_pid);
    }
    Event {
        session: NO_SESSION,
        at,
        kind: "exec".into(),
        data: data.to_string(),
    }
}

/// The parent of a process whose fork the agent did not see: `/proc/PID/stat` field 4.
fn proc_parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ppid(&stat)
}

/// Field 4 of a `/proc/PID/stat` line; the command (field 2) may hold spaces and
/// parentheses, so parsing starts after its last `)`.
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Converts CLOCK_BOOTTIME stamps to wall-clock time, from one reading of both clocks.
struct Clock {
    wall: SystemTime,
    boot_ns: u64,
}

impl Clock {
    fn now() -> Self {
        let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
            .unwrap_or(0);
        Clock {
            wall: SystemTime::now(),
            boot_ns: boot,
        }
    }

    fn wall(&self, boot_ns: u64) -> SystemTime {
        if self.boot_ns == 0 {
            return self.wall;
        }
        if boot_ns <= self.boot_ns {
            self.wall - Duration::from_nanos(self.boot_ns - boot_ns)
        } else {
            self.wall + Duration::from_nanos(boot_ns - self.boot_ns)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parent_survives_odd_command_names() {
        assert_eq!(parse_stat_ppid("123 (bash) S 45 123 123 0"), Some(45));
        assert_eq!(parse_stat_ppid("9 (a) b) (c) R 7 9 9"), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn boot_stamps_become_wall_clock_times() {
        let c = Clock {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
            boot_ns: 5_000_000_000,
        };
        assert_eq!(
            c.wall(4_000_000_000),
            SystemTime::UNIX_EPOCH + Duration::from_secs(999)
        );
        assert_eq!(
            c.wall(5_500_000_000),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_500)
        );
    }
}
