//! The userspace proxy: listeners, one task per connection, identity resolution,
//! record-before-forward, and the opaque relay.
//!
//! Architecture invariant: an audited connection's session row is committed to the
//! journal before the agent opens the upstream connection. If the journal refuses, the
//! client connection is reset and the reason logged; nothing is forwarded unrecorded.
pub mod http;
mod limits;
pub mod mysql;
pub mod netns;
pub mod postgres;
pub mod redis;
mod relay;
pub mod ssh;
mod unrecorded;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant, SystemTime},
};

use nhi_agent_common::ConnRecord;
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, watch, Semaphore},
    task::JoinSet,
};
use tracing::{debug, error, info, warn};

use crate::{
    config::Config,
    ebpf::{self, Interceptor},
    identity::{self, CgroupFs, SessionIdentity},
    journal::{JournalHandle, SessionEnd, SessionStart},
};

pub use limits::WorkloadLimits;
pub use netns::{NsListeners, Origin};
pub use relay::CloseReason;

/// SQLSTATE of the FATAL a PostgreSQL client gets over `max_connections_per_workload`:
/// too_many_connections, what the server says over its own `max_connections`.
pub const SQLSTATE_TOO_MANY_CONNECTIONS: &str = "53300";

/// What building a runtime may do to the state directory's own keys and CAs (masking
/// key, agent CA, SSH CA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateAccess {
    /// Load them, creating what is missing (the agent at start and reload).
    Create,
    /// Load and check what exists; stand in for what is missing with throwaway keys in
    /// a temporary directory, so nothing is written (`policy check`).
    ReadOnly,
}

impl StateAccess {
    /// The directory to load `dir`'s keys from: `dir` itself, unless reading it would
    /// create something (`complete` is false) and nothing may be written, then a new
    /// temporary directory (removed when the guard drops).
    pub fn dir(
        self,
        dir: &std::path::Path,
        complete: bool,
    ) -> std::io::Result<(std::path::PathBuf, Option<tempfile::TempDir>)> {
        if self == StateAccess::Create || complete {
            return Ok((dir.to_path_buf(), None));
        }
        let scratch = tempfile::Builder::new()
            .prefix("nhi-agent-check")
            .tempdir()?;
        Ok((scratch.path().to_path_buf(), Some(scratch)))
    }
}

/// A configuration and the runtime state built from it (PostgreSQL TLS settings,
/// credentials, masking key), indexed alike. A reload replaces the whole snapshot at
/// once, and a connection reads it once when it is accepted, so it never pairs one
/// configuration's target indexes with another's runtime.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub pg: Arc<postgres::PgRuntime>,
    pub http: Arc<http::runtime::HttpRuntime>,
    pub ssh: Arc<ssh::runtime::SshRuntime>,
    pub mysql: Arc<mysql::MysqlRuntime>,
    pub redis: Arc<redis::RedisRuntime>,
}

impl Snapshot {
    /// Builds the runtime of `config` (credentials, keys, certificates, CA files) and
    /// pairs it with it. Errors name the target and the file.
    pub fn build(config: Arc<Config>) -> anyhow::Result<Snapshot> {
        Snapshot::build_with(config, StateAccess::Create)
    }

    /// [`Snapshot::build`], creating the agent's own keys and CAs in the state directory
    /// only with [`StateAccess::Create`].
    pub fn build_with(config: Arc<Config>, access: StateAccess) -> anyhow::Result<Snapshot> {
        use anyhow::Context;
        let pg = postgres::PgRuntime::build(&config, access)
            .context("preparing the PostgreSQL targets")?;
        let http = http::runtime::HttpRuntime::build(&config, pg.ca.clone())
            .context("preparing the HTTP targets")?;
        let ssh = ssh::runtime::SshRuntime::build(&config, access)
            .context("preparing the SSH targets")?;
        let mysql = mysql::MysqlRuntime::build(&config, pg.ca.clone())
            .context("preparing the MySQL targets")?;
        let redis = redis::RedisRuntime::build(&config, pg.ca.clone())
            .context("preparing the Redis targets")?;
        Ok(Snapshot {
            config,
            pg: Arc::new(pg),
            http: Arc::new(http),
            ssh: Arc::new(ssh),
            mysql: Arc::new(mysql),
            redis: Arc::new(redis),
        })
    }
}

/// State shared by the accept loops and the connection tasks.
pub struct Shared {
    /// The configuration in force and its runtime; replaced as a whole on reload.
    pub snapshot: RwLock<Arc<Snapshot>>,
    pub interceptor: Mutex<Interceptor>,
    pub cgroups: CgroupFs,
    pub journal: JournalHandle,
    /// Connections being served (audited or relayed untouched).
    pub active: AtomicUsize,
    /// uid -> user name; the passwd database is read once per uid.
    pub users: Mutex<std::collections::HashMap<u32, Option<String>>>,
    /// Cancel keys of live PostgreSQL sessions.
    pub cancel_keys: postgres::CancelKeys,
    /// Who decides on held statements; `None`: holds expire (are denied) at their timeout.
    pub approvals: Option<Arc<dyn crate::session::Approver>>,
    /// Process lineage of intercepted cgroups; `None` when `[lineage] enabled = false`.
    pub lineage: Option<Arc<crate::lineage::Lineage>>,
    /// The disk budget flag (see [`crate::ship::Budget`]): while it is exceeded, new
    /// audited sessions are refused rather than risking the loss of evidence.
    pub budget: crate::ship::Budget,
    /// Claims bound to cgroups by `nhi-agent attest`; `None`: attestation is off.
    pub attest: Option<Arc<crate::attest::Attestor>>,
    /// Open audited connections per workload (`max_connections_per_workload`).
    pub limits: Arc<WorkloadLimits>,
    /// Names, images and labels of containers, from their runtimes' API sockets.
    pub containers: identity::ContainerDirectory,
    /// Cookie of the agent's own network namespace (`Interceptor::host_netns`), read
    /// once: every host connection's record is checked against it.
    pub host_netns: u64,
}

impl Shared {
    /// The configuration in force and its runtime, as one snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The configuration in force (for what needs no runtime state).
    pub fn config(&self) -> Arc<Config> {
        self.snapshot().config.clone()
    }

    /// Puts a new configuration and its runtime in force, together.
    pub fn replace_snapshot(&self, snapshot: Snapshot) {
        *self
            .snapshot
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(snapshot);
    }

    fn user_name(&self, uid: u32) -> Option<String> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users
            .entry(uid)
            .or_insert_with(|| identity::user_name(uid))
            .clone()
    }

    pub fn interceptor(&self) -> std::sync::MutexGuard<'_, Interceptor> {
        self.interceptor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The lineage tracker's view of the agent: the journal, the cgroup cache, and the same
/// workload and classification decisions the proxy makes for a connection.
impl crate::lineage::Host for Shared {
    fn journal(&self) -> &JournalHandle {
        &self.journal
    }

    fn cgroup_path(&self, id: u64) -> Option<String> {
        self.cgroups
            .cached_path_of(id)
            .or_else(|| self.cgroups.path_of(id))
    }

    fn classify(&self, id: u64, path: &str, uid: u32) -> bool {
        let config = self.config();
        let policy = ebpf::cgroup_policy(&config, path);
        let mut interceptor = self.interceptor.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = interceptor.set_cgroup(id, policy) {
            warn!(error = %e, cgroup = %path, "cannot record the cgroup's classification");
        }
        matches!(config.cgroup_selection(path), Some(u) if u.is_none_or(|u| u == uid))
    }

    fn who(
        &self,
        cgroup_id: u64,
        path: &str,
        uid: u32,
    ) -> (Option<String>, Option<crate::attest::Claims>) {
        let workload = self
            .config()
            .workload_for(path, uid)
            .map(|w| w.display_name(path));
        let claims = self.attest.as_ref().and_then(|a| {
            a.binding_for(path, cgroup_id, |p| self.cgroups.id_of(p))
                .map(|b| b.claims)
        });
        (workload, claims)
    }
}

/// Binds the proxy's listeners on 127.0.0.1 and ::1.
pub fn bind(port: u16) -> std::io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for addr in [
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ] {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // A deep backlog: when the connection bound is reached, new connections
        // wait here (handshake done by the kernel) instead of being refused.
        listeners.push(socket.listen(4096)?);
    }
    Ok(listeners)
}

/// Accepts connections until `shutdown` flips, then waits for the open ones to end
/// (up to `drain`), then cancels the rest. `more` brings the listeners of container
/// network namespaces as they are opened (see [`netns`]).
pub async fn serve(
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    mut more: mpsc::UnboundedReceiver<NsListeners>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max = shared.config().agent.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let mut accepts = JoinSet::new();
    accepts.spawn(accept_loop(
        shared.clone(),
        listeners,
        permits.clone(),
        max,
        cancel_rx.clone(),
    ));
    // Serve namespaces as they come, until the shutdown signal.
    while !*shutdown.borrow() {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            Some(ns) = more.recv() => {
                accepts.spawn(netns_accept_loop(shared.clone(), ns, permits.clone(), cancel_rx.clone()));
            }
            // Reap the loops of released namespaces (the host loop never ends).
            Some(_) = accepts.join_next() => {}
        }
    }
    accepts.abort_all();
    while accepts.join_next().await.is_some() {}

    let open = shared.active.load(Ordering::SeqCst);
    let drain = shared.config().agent.drain_timeout;
    info!(open, drain = ?drain, "no longer accepting; draining open connections");
    let deadline = Instant::now() + drain;
    while shared.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = shared.active.load(Ordering::SeqCst);
    if left > 0 {
        warn!(
            left,
            "drain timeout reached; closing the remaining connections"
        );
        let _ = cancel_tx.send(true);
        // Connection tasks journal their end before returning.
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether the host's accept loop runs (the watchdog feeds systemd only while it does).
static ACCEPTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the proxy accepts connections on the host's listeners.
pub fn accepting() -> bool {
    ACCEPTING.load(Ordering::SeqCst)
}

/// Accepts from every listener in one loop: a slot (permit) is taken, then the next
/// connection of whichever listener has one. (A loop per listener would keep a slot
/// reserved for a quiet listener while the other's connections waited in the backlog.)
async fn accept_loop(
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    permits: Arc<Semaphore>,
    max: usize,
    cancel: watch::Receiver<bool>,
) {
    // Cleared when the loop ends, however (a panic unwinds through the guard).
    struct Accepting;
    impl Drop for Accepting {
        fn drop(&mut self) {
            ACCEPTING.store(false, Ordering::SeqCst);
        }
    }
    ACCEPTING.store(true, Ordering::SeqCst);
    let _accepting = Accepting;
    let mut last_limit_log: Option<Instant> = None;
    let mut next = 0usize;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if last_limit_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    warn!(
                        max_connections = max,
                        "connection limit reached; new connections wait in the listen backlog until one closes"
                    );
                    last_limit_log = Some(Instant::now());
                }
                match permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                }
            }
        };
        let (stream, peer) = match accept_any(&listeners, &mut next).await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let cancel = cancel.clone();
        let active = Active::new(&shared);
        tokio::spawn(async move {
            handle(&shared, stream, peer, cancel, Origin::Host).await;
            drop(active);
            drop(permit);
        });
    }
}

/// Accepts on one container namespace's listeners until the namespace is released.
/// A connection is accepted first and then waits for a slot (a slot reserved per quiet
/// namespace would let a few hundred idle containers starve the host).
async fn netns_accept_loop(
    shared: Arc<Shared>,
    ns: NsListeners,
    permits: Arc<Semaphore>,
    cancel: watch::Receiver<bool>,
) {
    let NsListeners {
        listeners,
        origin,
        mut stop,
    } = ns;
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = accept_any(&listeners, &mut next) => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                error!(error = %e, netns = ?origin, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let cancel = cancel.clone();
        let origin = origin.clone();
        let permits = permits.clone();
        tokio::spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else {
                return;
            };
            let active = Active::new(&shared);
            handle(&shared, stream, peer, cancel, origin).await;
            drop(active);
            drop(permit);
        });
    }
}

/// The next connection of any of `listeners`, polling them from `*next` on (which then
/// moves past the one that answered, so no listener starves the others).
async fn accept_any(
    listeners: &[TcpListener],
    next: &mut usize,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    std::future::poll_fn(|cx| {
        let n = listeners.len();
        for i in 0..n {
            let at = (*next + i) % n;
            if let std::task::Poll::Ready(result) = listeners[at].poll_accept(cx) {
                *next = (at + 1) % n;
                return std::task::Poll::Ready(result);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Counts a connection in [`Shared::active`] for as long as it lives, even if its task
/// panics, so a shutdown never waits for a connection that is gone.
struct Active(Arc<Shared>);

impl Active {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.active.fetch_add(1, Ordering::SeqCst);
        Self(shared.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long to wait for the kernel's PASSIVE_ESTABLISHED callback to publish the
/// record of a connection that accept() returned a little early.
const RECORD_WAIT: Duration = Duration::from_millis(50);

async fn take_record(shared: &Shared, cookie: u64) -> Option<ConnRecord> {
    let deadline = Instant::now() + RECORD_WAIT;
    loop {
        if let Some(r) = shared.interceptor().take_accepted(cookie) {
            return Some(r);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn handle(
    shared: &Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
    cancel: watch::Receiver<bool>,
    origin: Origin,
) {
    let accepted_at = SystemTime::now();
    // The session's end may have to wait for the journal to recover; the shutdown
    // signal bounds that wait.
    let mut end_cancel = cancel.clone();
    let boot_ticks = identity::boottime_ticks();
    let _ = client.set_nodelay(true);
    let cookie = match ebpf::socket_cookie(&client) {
        Ok(c) => c,
        Err(e) => {
            warn!(%peer, error = %e, "cannot read the socket cookie; closing");
            return;
        }
    };
    let t0 = Instant::now();
    let Some(record) = take_record(shared, cookie).await else {
        warn!(%peer, "connection was not redirected by the kernel (no record); closing");
        reset(client);
        return;
    };
    let t_record = t0.elapsed();
    // The record names the namespace the connection was made in; it must be the one
    // this listener lives in (the kernel keys records by namespace, so it always is).
    let listener_netns = match &origin {
        Origin::Host => shared.host_netns,
        Origin::Netns(ns) => ns.cookie,
    };
    if record.netns_cookie != listener_netns {
        warn!(%peer, record_netns = record.netns_cookie, listener_netns, "the connection's record names another network namespace; closing");
        reset(client);
        return;
    }
    let orig_dst = ebpf::original_destination(&record);
    // One snapshot for the whole connection: its target index means something only in
    // the configuration it came from, and so does the runtime state it indexes.
    let snapshot = shared.snapshot();
    let config = &snapshot.config;
    let uid = record.uid();
    let tgid = record.tgid();

    // The cgroup cache answers in the common case; a miss walks cgroupfs, which goes
    // to a blocking thread.
    let cgroup_path = match shared.cgroups.cached_path_of(record.cgroup_id) {
        Some(path) => Some(path),
        None => {
            let shared = shared.clone();
            let id = record.cgroup_id;
            match tokio::task::spawn_blocking(move || shared.cgroups.path_of(id)).await {
                Ok(path) => path,
                Err(e) => {
                    error!(%peer, error = %e, "cgroup lookup failed; closing");
                    reset(client);
                    return;
                }
            }
        }
    };

    // A cgroup the kernel did not know yet: classify it now, for this connection and,
    // through the map, for the next ones.
    if record.flags & ConnRecord::FLAG_UNCLASSIFIED != 0 {
        if let Some(path) = &cgroup_path {
            let policy = ebpf::cgroup_policy(config, path);
            if let Err(e) = shared.interceptor().set_cgroup(record.cgroup_id, policy) {
                warn!(error = %e, cgroup = %path, "cannot record the cgroup's classification");
            }
        }
    }

    let workload = cgroup_path
        .as_deref()
        .and_then(|p| config.workload_for(p, uid));
    let target = config.target_in(orig_dst, origin.in_container());
    let (Some(workload), Some((target_index, target))) = (workload, target) else {
        // Not (or no longer) an audited workload or destination: relay untouched.
        debug!(%peer, %orig_dst, cgroup = ?cgroup_path, "not audited; relaying untouched");
        let upstream = match origin.connect(orig_dst, config.agent.connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                debug!(%orig_dst, error = %e, "upstream connect failed");
                reset(client);
                return;
            }
        };
        let _ = relay::relay(client, upstream, None, config.agent.idle_timeout, cancel).await;
        return;
    };

    let cgroup = cgroup_path.unwrap_or_default();
    crate::failpoint::pause("proxy.before_process").await;
    // Only audited sessions need the process: a few reads of in-memory /proc files.
    let process = match identity::process_identity(tgid, Some(boot_ticks)) {
        Ok(p) => Some(p),
        Err(e) => {
            // The caller may already have exited (a short-lived client): the kernel's
            // record still names it; the journal says what could not be read.
            debug!(pid = tgid, error = %e, "process details unavailable");
            None
        }
    };
    let workload_name = workload.display_name(&cgroup);
    // Over the disk budget: refuse new sessions (existing ones go on). Opaque TCP is
    // closed before anything is journaled or connected; PostgreSQL clients get a FATAL
    // 53100 once their start-up is read (see postgres::SessionContext::refuse).
    let budget = shared.budget.exceeded();
    if let Some(why) = &budget {
        error!(workload = %workload_name, %orig_dst, target = %target.name, reason = %why, "refusing a new session: disk budget exceeded");
        if !(target.protocol.over_http()
            || matches!(
                target.protocol,
                crate::config::Protocol::Postgres
                    | crate::config::Protocol::Ssh
                    | crate::config::Protocol::Mysql
                    | crate::config::Protocol::Redis
            ))
        {
            reset(client);
            return;
        }
    }
    // One workload may hold at most `max_connections_per_workload` audited connections,
    // so a loop in one cannot take every slot from the others. A connection over the
    // limit is journaled (its end says "policy limit: ...") and refused: opaque TCP with a
    // reset, PostgreSQL with FATAL 53300 once its start-up is read.
    let limit = config.agent.max_connections_per_workload;
    let (_slot, over_limit) = match shared.limits.try_acquire(&workload_name, limit) {
        Ok(slot) => (Some(slot), None),
        Err(open) => {
            let why = format!(
                "max_connections_per_workload ({limit}) reached for workload {workload_name}"
            );
            match shared.limits.note_refusal(&workload_name, Instant::now()) {
                limits::RefusalLog::Warn { since_last } => warn!(
                    workload = %workload_name, limit, open, refused_since_last_warning = since_last,
                    "refusing a new connection: the workload is at max_connections_per_workload"
                ),
                limits::RefusalLog::Quiet => debug!(
                    workload = %workload_name, limit, open,
                    "refusing a new connection: the workload is at max_connections_per_workload"
                ),
            }
            (None, Some(why))
        }
    };
    let refuse = match (&budget, &over_limit) {
        (Some(why), _) => Some(postgres::Refusal {
            sqlstate: "53100",
            message: why.clone(),
            reason: CloseReason::Protocol(format!("refused: {why}")),
        }),
        (None, Some(why)) => Some(postgres::Refusal {
            sqlstate: SQLSTATE_TOO_MANY_CONNECTIONS,
            message: format!("too many connections: {why}"),
            reason: CloseReason::PolicyLimit(why.clone()),
        }),
        (None, None) => None,
    };
    // The claims of the nearest attested cgroup (its own or an ancestor's).
    let claims = shared.attest.as_ref().and_then(|a| {
        a.binding_for(&cgroup, record.cgroup_id, |p| shared.cgroups.id_of(p))
            .map(|b| b.claims)
    });
    let identity = Arc::new(SessionIdentity {
        workload: workload_name.clone(),
        cgroup: cgroup.clone(),
        cgroup_id: record.cgroup_id,
        pid: tgid,
        pid_start_time: process.as_ref().map(|p| p.start_time),
        exe: process.as_ref().and_then(|p| p.exe.clone()),
        // Masked as the lineage events' argv are (credentials, password flags).
        cmdline: process.as_ref().map(|p| {
            let mut cmdline = p.cmdline.clone();
            config.lineage.argv_mask.mask(&mut cmdline);
            cmdline
        }),
        uid,
        gid: record.gid(),
        user: shared.user_name(uid),
        comm: ebpf::comm(&record),
        client_addr: peer,
        orig_dst,
        target: target.name.clone(),
        protocol: target.protocol.to_string(),
        container: container_identity(
            shared,
            &cgroup,
            process.as_ref().and_then(|p| p.ns_pid),
            &origin,
        )
        .await,
    });
    let start = SessionStart {
        identity: identity.clone(),
        started_at: accepted_at,
        claims: claims.clone(),
    };
    let t_identity = t0.elapsed();
    let metric_labels = crate::metrics::SessionLabels {
        workload: workload.metric_label(),
        target: target.name.clone(),
        protocol: target.protocol.to_string(),
    };
    let metrics = crate::metrics::get();
    let id = match shared.journal.start_session(start).await {
        Ok(id) => id,
        Err(e) => {
            metrics.session_refused(&metric_labels);
            let cause = crate::journal::root_cause(&e);
            error!(
                workload = %workload_name, %orig_dst, error = %e, %cause,
                "the journal cannot record this session; refusing the connection"
            );
            // An error the client prints says why; a bare reset would not.
            let message = format!(
                "nhi-agent: the audit journal cannot record new sessions ({cause}); nothing was forwarded"
            );
            let what = match target.protocol {
                crate::config::Protocol::Postgres => {
                    postgres::refuse_unrecorded(
                        client,
                        postgres::SQLSTATE_JOURNAL,
                        &message,
                        UNRECORDED_REFUSAL_WAIT,
                    )
                    .await
                }
                crate::config::Protocol::Mysql => unrecorded::mysql(client, &message).await,
                protocol if protocol.over_http() => {
                    unrecorded::http(client, &message, UNRECORDED_REFUSAL_WAIT).await
                }
                crate::config::Protocol::Redis => {
                    unrecorded::redis(client, &format!("ERR {message}"), UNRECORDED_REFUSAL_WAIT)
                        .await
                }
                _ => {
                    reset(client);
                    "reset"
                }
            };
            debug!(%peer, what, protocol = %target.protocol, "unrecorded session refused");
            return;
        }
    };
    let t_journal = t0.elapsed();
    metrics.session_opened(&metric_labels, t_journal);
    // Debug, not info: every session is in the journal, and a line per connection
    // would flood the system log of a busy CI host (and cost the set-up path).
    debug!(session = id, workload = %workload_name, cgroup = %cgroup, pid = tgid, %orig_dst, target = %target.name, "session opened");
    if let Some(lineage) = &shared.lineage {
        lineage.session_started(shared.as_ref(), id, tgid);
    }

    crate::failpoint::pause("proxy.after_session_start").await;

    if let Some(why) = &over_limit {
        if !(target.protocol.over_http()
            || matches!(
                target.protocol,
                crate::config::Protocol::Postgres
                    | crate::config::Protocol::Ssh
                    | crate::config::Protocol::Mysql
                    | crate::config::Protocol::Redis
            ))
        {
            reset(client);
            let end = SessionEnd {
                id,
                ended_at: SystemTime::now(),
                bytes_from_client: 0,
                bytes_from_server: 0,
                close_reason: CloseReason::PolicyLimit(why.clone()).to_string(),
            };
            record_end(&shared.journal, end, &mut end_cancel).await;
            metrics.session_closed(&metric_labels, "policy_limit");
            return;
        }
    }

    let pg = match target.protocol {
        crate::config::Protocol::Postgres => snapshot.pg.target(target_index).cloned(),
        _ => None,
    };
    let missing_runtime = match target.protocol {
        crate::config::Protocol::Postgres => pg.is_none(),
        crate::config::Protocol::Http
        | crate::config::Protocol::Aws
        | crate::config::Protocol::AwsImds
        | crate::config::Protocol::Kubernetes => snapshot.http.target(target_index).is_none(),
        crate::config::Protocol::Ssh => {
            snapshot.ssh.target(target_index).is_none() || snapshot.ssh.ca.is_none()
        }
        crate::config::Protocol::Mysql => snapshot.mysql.target(target_index).is_none(),
        crate::config::Protocol::Redis => snapshot.redis.target(target_index).is_none(),
        crate::config::Protocol::Tcp => false,
    };
    if missing_runtime {
        // Cannot happen with one snapshot; if it ever did, refusing is the safe answer
        // (relaying a decoded target opaquely would skip its policy).
        let why = format!(
            "internal error: no {} runtime for the target",
            target.protocol
        );
        error!(session = id, target = %target.name, "{why}; refusing");
        reset(client);
        let end = SessionEnd {
            id,
            ended_at: SystemTime::now(),
            bytes_from_client: 0,
            bytes_from_server: 0,
            close_reason: why,
        };
        record_end(&shared.journal, end, &mut end_cancel).await;
        metrics.session_closed(&metric_labels, "internal_error");
        return;
    }
    // The session's policy and masks, for every decoded protocol; the masks keep the
    // originals they replace when those are sealed for auditors
    // (`[evidence] auditor_recipients`).
    let session_rules = || {
        let mut rules =
            snapshot
                .pg
                .rules_for(config, &workload_name, &target.name, claims.as_ref());
        rules.masks.collect_originals(shared.journal.originals(id));
        Arc::new(rules)
    };
    let outcome = if let Some(target_rt) = pg {
        let runtime = snapshot.pg.clone();
        let rules = session_rules();
        let ctx = postgres::SessionContext {
            id,
            journal: &shared.journal,
            target,
            target_rt,
            runtime,
            rules,
            orig_dst,
            connect_timeout: config.agent.connect_timeout,
            idle_timeout: config.agent.idle_timeout,
            cancel_keys: &shared.cancel_keys,
            approvals: shared.approvals.clone(),
            identity: identity.clone(),
            refuse,
            origin: origin.clone(),
        };
        postgres::serve(ctx, client, cancel).await
    } else if let (true, Some(target_rt)) = (
        target.protocol.over_http(),
        snapshot.http.target(target_index).cloned(),
    ) {
        let rules = session_rules();
        let ctx = http::HttpContext {
            id,
            journal: &shared.journal,
            target,
            target_rt,
            ca: snapshot.http.ca.clone(),
            rules,
            orig_dst,
            origin: origin.clone(),
            connect_timeout: config.agent.connect_timeout,
            idle_timeout: config.agent.idle_timeout,
            approvals: shared.approvals.clone(),
            requester: crate::session::Requester {
                session: id,
                identity: identity.clone(),
            },
            // Over the disk budget: 507; at the workload's connection limit: 429.
            refuse: refuse.map(|r| {
                let status = if over_limit.is_some() && budget.is_none() {
                    429
                } else {
                    507
                };
                (status, r.message)
            }),
            aws_role: workload.aws_role_arn.clone(),
            kube_impersonate: workload.kube_impersonate.clone(),
        };
        http::serve(ctx, client, cancel).await
    } else if let (crate::config::Protocol::Ssh, Some(target_rt), Some(ca)) = (
        target.protocol,
        snapshot.ssh.target(target_index).cloned(),
        snapshot.ssh.ca.clone(),
    ) {
        let rules = session_rules();
        let ctx = ssh::SshContext {
            id,
            journal: &shared.journal,
            target_rt,
            ca,
            rules,
            orig_dst,
            origin: origin.clone(),
            connect_timeout: config.agent.connect_timeout,
            idle_timeout: config.agent.idle_timeout,
            approvals: shared.approvals.clone(),
            requester: crate::session::Requester {
                session: id,
                identity: identity.clone(),
            },
            refuse: refuse.map(|r| r.message),
        };
        ssh::serve(ctx, client, cancel).await
    } else if let (crate::config::Protocol::Mysql, Some(target_rt)) = (
        target.protocol,
        snapshot.mysql.target(target_index).cloned(),
    ) {
        let rules = session_rules();
        let ctx = mysql::SessionContext {
            id,
            journal: &shared.journal,
            target,
            target_rt,
            runtime: snapshot.mysql.clone(),
            rules,
            orig_dst,
            connect_timeout: config.agent.connect_timeout,
            idle_timeout: config.agent.idle_timeout,
            approvals: shared.approvals.clone(),
            identity: identity.clone(),
            // At the workload's limit: "too many connections"; over the disk budget:
            // refused with the reason.
            refuse: refuse.map(|r| {
                let code = if over_limit.is_some() && budget.is_none() {
                    mysql::REFUSE_TOO_MANY
                } else {
                    mysql::REFUSE_OTHER
                };
                (code, r.message, r.reason)
            }),
            origin: origin.clone(),
        };
        mysql::serve(ctx, client, cancel).await
    } else if let (crate::config::Protocol::Redis, Some(target_rt)) = (
        target.protocol,
        snapshot.redis.target(target_index).cloned(),
    ) {
        let rules = session_rules();
        let ctx = redis::RedisContext {
            id,
            journal: &shared.journal,
            target_rt,
            rules,
            orig_dst,
            origin: origin.clone(),
            connect_timeout: config.agent.connect_timeout,
            idle_timeout: config.agent.idle_timeout,
            approvals: shared.approvals.clone(),
            requester: crate::session::Requester {
                session: id,
                identity: identity.clone(),
            },
            refuse: refuse.map(|r| r.message),
            accepted: t0,
        };
        redis::serve(ctx, client, cancel).await
    } else {
        match origin.connect(orig_dst, config.agent.connect_timeout).await {
            Ok(upstream) => {
                debug!(
                    session = id,
                    record_us = t_record.as_micros() as u64,
                    identity_us = (t_identity - t_record).as_micros() as u64,
                    journal_us = (t_journal - t_identity).as_micros() as u64,
                    connect_us = (t0.elapsed() - t_journal).as_micros() as u64,
                    "session setup"
                );
                relay::relay(
                    client,
                    upstream,
                    Some((&shared.journal, id)),
                    config.agent.idle_timeout,
                    cancel,
                )
                .await
            }
            Err(e) => {
                reset(client);
                relay::Outcome {
                    bytes_from_client: 0,
                    bytes_from_server: 0,
                    reason: CloseReason::UpstreamConnect(e.to_string()),
                }
            }
        }
    };
    let end = SessionEnd {
        id,
        ended_at: SystemTime::now(),
        bytes_from_client: outcome.bytes_from_client,
        bytes_from_server: outcome.bytes_from_server,
        close_reason: outcome.reason.to_string(),
    };
    record_end(&shared.journal, end, &mut end_cancel).await;
    metrics.session_closed(&metric_labels, outcome.reason.label());
    debug!(
        session = id,
        from_client = outcome.bytes_from_client,
        from_server = outcome.bytes_from_server,
        reason = %outcome.reason,
        "session closed"
    );
}

/// The container side of a session's identity: its container (from the cgroup path,
/// then the runtime's API, at most 200 ms and cached),
/// its network namespace when not the agent's, its namespace pid (`ns_pid`, read with
/// the process's other details). `None` for a host process.
async fn container_identity(
    shared: &Shared,
    cgroup: &str,
    ns_pid: Option<u32>,
    origin: &Origin,
) -> Option<identity::ContainerIdentity> {
    let reference = identity::container_of_cgroup(cgroup);
    let netns = origin.namespace().map(|ns| ns.inode);
    if reference.is_none() && netns.is_none() && ns_pid.is_none() {
        return None;
    }
    let found = identity::ContainerIdentity {
        netns,
        ns_pid,
        ..Default::default()
    };
    Some(match reference {
        Some(r) => found.with_info(shared.containers.lookup(&r).await),
        None => found,
    })
}

/// How long a PostgreSQL client refused without a session (the journal failed) has to
/// send its start-up before the refusal gives up and closes.
const UNRECORDED_REFUSAL_WAIT: Duration = Duration::from_secs(10);

/// Records a session's end. When the batch holding it was lost (disk full, I/O error),
/// nothing of it was committed, so it is tried again, with backoff, until the journal
/// takes it: an end left unrecorded would make the session read as still open and lose
/// its close reason (often "journal failure", exactly what a responder needs). Gives up
/// only at shutdown; the next start then closes the session as interrupted.
async fn record_end(journal: &JournalHandle, end: SessionEnd, cancel: &mut watch::Receiver<bool>) {
    let id = end.id;
    let mut wait = Duration::from_millis(100);
    let mut retrying = false;
    loop {
        match journal.end_session(end.clone()).await {
            Ok(()) => {
                if retrying {
                    info!(session = id, "the end of the session is recorded");
                }
                return;
            }
            Err(e @ crate::journal::JournalError::BatchFailed { .. }) => {
                if !retrying {
                    warn!(
                        session = id, error = %e, cause = %crate::journal::root_cause(&e),
                        "the journal cannot record the end of the session yet; retrying"
                    );
                    retrying = true;
                }
            }
            Err(e) => {
                error!(session = id, error = %e, "the journal cannot record the end of the session");
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = cancel.changed() => {
                if changed.is_err() || *cancel.borrow() {
                    error!(
                        session = id,
                        "shutting down before the journal recorded the end of the session; \
                         the next start closes it as interrupted"
                    );
                    return;
                }
            }
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// Closes with RST so the client sees an error rather than a clean, empty stream.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
