//! Network namespaces other than the agent's (containers): a listener inside each one
//! an intercepted workload connects from, and upstream connections that leave from it.
//!
//! The kernel redirects an intercepted connection to 127.0.0.1 (or ::1) at the proxy
//! port *of the namespace it was made in*: another namespace's loopback is another
//! host's. So the agent listens in each namespace where an intercepted connection was
//! made, and dials the original destination from there too, so routing, NAT and the
//! source address are what the container would have had.
//!
//! How a namespace gets served:
//! 1. The connect program finds the namespace missing from `NHI_NETNS`, marks it
//!    `REQUESTED` with the caller's pid and sends one event on `NHI_NETNS_EVENTS`. The
//!    connection is redirected and its SYN held (dropped with congestion notification
//!    by the egress program) until the namespace is served, so TCP retries it.
//! 2. [`run`] opens `/proc/<pid>/ns/net`, creates the listeners from a thread that
//!    entered the namespace (a socket belongs to the namespace it was created in),
//!    checks the namespace's cookie on them, hands them to the accept loops and marks
//!    the namespace `READY`. The held SYN's next retry (25 jiffies after the first:
//!    the sock_ops program shortens a held connection's initial timeout) reaches the
//!    listener.
//! 3. Every [`SWEEP`] the agent checks that some process still lives in each served
//!    namespace; when none does, the listeners and the namespace handle are released
//!    and the entry removed, so thousands of short-lived containers leave nothing.
//!
//! A restarted agent serves every namespace the pinned `NHI_NETNS` lists (fail closed
//! meanwhile: the dead agent's listeners are gone, so connections are refused).
use std::{
    collections::HashMap,
    fs::File,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    sync::{mpsc as std_mpsc, Arc},
    time::{Duration, Instant},
};

use nhi_agent_common::NetnsState;
use nix::{
    sched::{setns, CloneFlags},
    sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockProtocol,
        SockType, SockaddrIn, SockaddrIn6,
    },
};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, oneshot, watch},
};
use tracing::{debug, error, info, warn};

use super::Shared;
use crate::ebpf::{self, NetnsEvents};

/// How often served namespaces are checked for a remaining process.
pub const SWEEP: Duration = Duration::from_secs(2);
/// How long after a failure the agent tries to listen in a namespace again.
const RETRY_FAILED: Duration = Duration::from_secs(10);

/// Where a connection was made, and so where its upstream connection leaves from.
#[derive(Clone)]
pub enum Origin {
    /// The agent's own network namespace.
    Host,
    /// Another namespace (a container's).
    Netns(Arc<Namespace>),
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Host => f.write_str("host"),
            Origin::Netns(ns) => write!(f, "netns {}", ns.cookie),
        }
    }
}

impl Origin {
    /// Whether the connection was made outside the agent's namespace.
    pub fn in_container(&self) -> bool {
        matches!(self, Origin::Netns(_))
    }

    /// The namespace, when it is not the agent's.
    pub fn namespace(&self) -> Option<&Arc<Namespace>> {
        match self {
            Origin::Host => None,
            Origin::Netns(ns) => Some(ns),
        }
    }

    /// A TCP connection to `addr` from this origin's namespace (no timeout of its own;
    /// see [`Origin::connect`]).
    pub async fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = match self {
            Origin::Host => TcpStream::connect(addr).await?,
            Origin::Netns(ns) => ns.socket(addr.is_ipv6()).await?.connect(addr).await?,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// A TCP connection to `addr` from this origin's namespace, within `timeout`.
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        match tokio::time::timeout(timeout, self.dial(addr)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            )),
        }
    }
}

/// A network namespace the agent holds open (an fd of `/proc/<pid>/ns/net`).
pub struct Namespace {
    /// The kernel's cookie for it (what the programs key it by).
    pub cookie: u64,
    /// Its inode number (what `/proc/<pid>/ns/net` links to: `net:[inode]`).
    pub inode: u64,
    fd: OwnedFd,
    thread: NsThread,
}

impl Namespace {
    /// A new, unconnected TCP socket in this namespace.
    async fn socket(self: &Arc<Self>, v6: bool) -> io::Result<TcpSocket> {
        let fd = self
            .thread
            .run(self.clone(), move || {
                let family = if v6 {
                    AddressFamily::Inet6
                } else {
                    AddressFamily::Inet
                };
                tcp_socket(family)
            })
            .await?;
        Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(fd)))
    }
}

fn tcp_socket(family: AddressFamily) -> io::Result<OwnedFd> {
    Ok(socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::Tcp,
    )?)
}

type Job = Box<dyn FnOnce(&File) + Send>;

/// One thread that creates sockets inside other namespaces: it enters the namespace
/// (`setns` changes only the calling thread), creates the socket, and returns to the
/// agent's namespace. A socket stays in the namespace it was created in wherever it is
/// used from, so everything else runs on the normal runtime.
#[derive(Clone)]
pub struct NsThread {
    tx: std_mpsc::Sender<Job>,
}

impl NsThread {
    pub fn spawn() -> io::Result<NsThread> {
        let home = File::open("/proc/thread-self/ns/net")?;
        let (tx, rx) = std_mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("nhi-netns".into())
            .spawn(move || {
                for job in rx {
                    job(&home);
                }
            })?;
        Ok(NsThread { tx })
    }

    /// Runs `f` inside namespace `ns` on the namespace thread.
    async fn run<T: Send + 'static>(
        &self,
        ns: Arc<Namespace>,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |home| {
            let _ = tx.send(inside(ns.fd.as_fd(), home, f));
        });
        let gone = || io::Error::other("the namespace thread is gone");
        self.tx.send(job).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

fn inside<T>(
    ns: std::os::fd::BorrowedFd<'_>,
    home: &File,
    f: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    setns(ns, CloneFlags::CLONE_NEWNET)?;
    let result = f();
    // Every job enters its own namespace first, so a failed return cannot put a socket
    // in the wrong place; returning only lets the last namespace go.
    if let Err(e) = setns(home, CloneFlags::CLONE_NEWNET) {
        warn!(error = %e, "the namespace thread could not return to the agent's namespace");
    }
    result
}

/// The listeners of one namespace, for the accept loops. Dropping `stop`'s sender (the
/// namespace is released) ends the loop and closes the listeners.
pub struct NsListeners {
    pub listeners: Vec<TcpListener>,
    pub origin: Origin,
    pub stop: oneshot::Receiver<()>,
}

struct Served {
    ns: Arc<Namespace>,
    /// A process seen in the namespace.
    tgid: u32,
    /// Held while the namespace is served; dropped to stop its accept loop.
    _stop: Option<oneshot::Sender<()>>,
    /// When listening failed (the entry is `FAILED`), to try again later.
    failed_at: Option<Instant>,
}

/// Serves namespaces as the kernel asks, and releases those no process lives in any more.
pub async fn run(
    shared: Arc<Shared>,
    mut events: NetnsEvents,
    to_accept: mpsc::UnboundedSender<NsListeners>,
    mut shutdown: watch::Receiver<bool>,
) {
    let thread = match NsThread::spawn() {
        Ok(t) => t,
        Err(e) => {
            error!(error = %e, "cannot start the namespace thread; connections made in containers will be refused");
            return;
        }
    };
    let waker = match events.waker() {
        Ok(w) => w,
        Err(e) => {
            error!(error = %e, "cannot watch the namespace requests; connections made in containers will be refused");
            return;
        }
    };
    let mut server = Server {
        shared,
        thread,
        to_accept,
        served: HashMap::new(),
        host_inode: std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino()),
    };
    // What the kernel asked for before this agent ran (or while it was away).
    let known = server.shared.interceptor().netns_entries();
    for (cookie, state) in known {
        server.serve(cookie, state.tgid).await;
    }
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            woke = waker.wait() => {
                if let Err(e) = woke {
                    error!(error = %e, "namespace requests cannot be read");
                    return;
                }
                for event in events.drain() {
                    server.serve(event.netns_cookie, event.tgid).await;
                }
            }
            _ = sweep.tick() => server.sweep().await,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

struct Server {
    shared: Arc<Shared>,
    thread: NsThread,
    to_accept: mpsc::UnboundedSender<NsListeners>,
    served: HashMap<u64, Served>,
    /// Inode of the agent's own network namespace.
    host_inode: Option<u64>,
}

impl Server {
    /// Listens in namespace `cookie`, found through process `tgid`.
    async fn serve(&mut self, cookie: u64, tgid: u32) {
        if let Some(s) = self.served.get(&cookie) {
            if s.failed_at.is_none() {
                // Served already (a request raced the previous one): say so again.
                self.set_state(cookie, NetnsState::READY, s.tgid);
                return;
            }
        }
        let ns = match self.open(tgid, cookie) {
            // The process left for the host's namespace (or its pid was reused there):
            // the next connection made in the container asks again, with its own pid.
            Ok(ns) if Some(ns.inode) == self.host_inode => {
                debug!(
                    netns = cookie,
                    pid = tgid,
                    "the process is in the agent's namespace now; dropping the request"
                );
                self.served.remove(&cookie);
                self.shared.interceptor().remove_netns(cookie);
                return;
            }
            Ok(ns) => ns,
            Err(e) => {
                // The process is gone (or left the namespace): forget the request, so
                // the next connection made there asks again.
                debug!(netns = cookie, pid = tgid, error = %e, "cannot open the namespace of the requesting process");
                self.served.remove(&cookie);
                self.shared.interceptor().remove_netns(cookie);
                return;
            }
        };
        let port = self.shared.config().agent.listen_port;
        let bound = self
            .thread
            .run(ns.clone(), move || Ok(bind_loopback(port)))
            .await;
        let Bound {
            mut listeners,
            problems,
            in_use,
        } = bound.unwrap_or_else(|e| Bound {
            listeners: Vec::new(),
            problems: vec![e.to_string()],
            in_use: false,
        });
        // The namespace the sockets were made in, as the kernel names it.
        let seen = listeners
            .first()
            .and_then(|l| ebpf::netns_cookie_of(l).ok());
        if seen.is_some_and(|seen| seen != cookie) {
            debug!(
                netns = cookie,
                pid = tgid,
                "the process is in another namespace now; dropping the request"
            );
            self.shared.interceptor().remove_netns(cookie);
            return;
        }
        // Something else listens on the proxy port there (on either family): it must
        // never receive an intercepted connection, so the namespace is not served.
        if in_use {
            listeners.clear();
        }
        if listeners.is_empty() {
            // Said once per namespace; the retries every RETRY_FAILED say it at debug.
            let retry = self
                .served
                .get(&cookie)
                .is_some_and(|s| s.failed_at.is_some());
            if retry {
                debug!(netns = cookie, pid = tgid, port, problems = ?problems, "still cannot listen in the network namespace");
            } else {
                error!(
                    netns = cookie, pid = tgid, port, problems = ?problems,
                    "cannot listen in the network namespace; intercepted connections made there are refused"
                );
            }
            self.set_state(cookie, NetnsState::FAILED, tgid);
            let failed_at = Some(Instant::now());
            let entry = Served {
                ns,
                tgid,
                _stop: None,
                failed_at,
            };
            self.served.insert(cookie, entry);
            return;
        }
        if !problems.is_empty() {
            // Normal for a container without IPv6 (Docker's default): its IPv6
            // connections to targets, if any, are refused.
            debug!(netns = cookie, pid = tgid, problems = ?problems, "listening in the network namespace on one family only");
        }
        let mut tokio_listeners = Vec::new();
        for l in listeners {
            match l
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(l))
            {
                Ok(l) => tokio_listeners.push(l),
                Err(e) => warn!(netns = cookie, error = %e, "cannot register a namespace listener"),
            }
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let handed = self.to_accept.send(NsListeners {
            listeners: tokio_listeners,
            origin: Origin::Netns(ns.clone()),
            stop: stop_rx,
        });
        if handed.is_err() {
            // The proxy is shutting down.
            return;
        }
        self.set_state(cookie, NetnsState::READY, tgid);
        info!(
            netns = cookie,
            inode = ns.inode,
            pid = tgid,
            port,
            "listening in a container network namespace"
        );
        self.served.insert(
            cookie,
            Served {
                ns,
                tgid,
                _stop: Some(stop_tx),
                failed_at: None,
            },
        );
    }

    /// The namespace of process `tgid`, expected to be `cookie` (confirmed on the
    /// listeners made inside it).
    fn open(&self, tgid: u32, cookie: u64) -> io::Result<Arc<Namespace>> {
        let file = File::open(format!("/proc/{tgid}/ns/net"))?;
        let inode = file.metadata()?.ino();
        let fd = OwnedFd::from(file);
        Ok(Arc::new(Namespace {
            cookie,
            inode,
            fd,
            thread: self.thread.clone(),
        }))
    }

    fn set_state(&self, cookie: u64, state: u32, tgid: u32) {
        if let Err(e) = self
            .shared
            .interceptor()
            .set_netns(cookie, NetnsState { state, tgid })
        {
            error!(netns = cookie, error = %e, "cannot record the namespace's state in the kernel");
        }
    }

    /// Releases namespaces no process lives in any more; retries failed ones.
    async fn sweep(&mut self) {
        let mut orphans: Vec<u64> = Vec::new();
        for (&cookie, s) in &self.served {
            if ns_inode_of(s.tgid) != Some(s.ns.inode) {
                orphans.push(cookie);
            }
        }
        if !orphans.is_empty() {
            // One pass over /proc for all of them: another process may live there.
            let wanted: HashMap<u64, u64> = orphans
                .iter()
                .map(|c| (self.served[c].ns.inode, *c))
                .collect();
            let found = tokio::task::spawn_blocking(move || pids_in_namespaces(&wanted))
                .await
                .unwrap_or_default();
            for cookie in orphans {
                match found.get(&cookie) {
                    Some(&pid) => {
                        // The kernel's entry names a live process too, so a restarted
                        // agent can still open the namespace.
                        if let Some(s) = self.served.get_mut(&cookie) {
                            s.tgid = pid;
                            let state = if s.failed_at.is_some() {
                                NetnsState::FAILED
                            } else {
                                NetnsState::READY
                            };
                            self.set_state(cookie, state, pid);
                        }
                    }
                    None => {
                        if let Some(s) = self.served.remove(&cookie) {
                            self.shared.interceptor().remove_netns(cookie);
                            info!(netns = cookie, inode = s.ns.inode, "no process left in the network namespace; its listeners are closed");
                        }
                    }
                }
            }
        }
        let retry: Vec<(u64, u32)> = self
            .served
            .iter()
            .filter(|(_, s)| s.failed_at.is_some_and(|t| t.elapsed() >= RETRY_FAILED))
            .map(|(&c, s)| (c, s.tgid))
            .collect();
        for (cookie, tgid) in retry {
            self.serve(cookie, tgid).await;
        }
    }
}

/// Listeners on 127.0.0.1 and ::1 at `port` in the calling thread's namespace, what
/// failed (a namespace may lack IPv6, or have its loopback down), and whether some
/// other socket holds the port there.
fn bind_loopback(port: u16) -> Bound {
    let mut listeners = Vec::new();
    let mut problems = Vec::new();
    let mut in_use = false;
    for v6 in [false, true] {
        let attempt = || -> io::Result<std::net::TcpListener> {
            let fd = if v6 {
                let fd = tcp_socket(AddressFamily::Inet6)?;
                setsockopt(&fd, sockopt::ReuseAddr, &true)?;
                setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
                let addr = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0));
                bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
                fd
            } else {
                let fd = tcp_socket(AddressFamily::Inet)?;
                setsockopt(&fd, sockopt::ReuseAddr, &true)?;
                let addr = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
                bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
                fd
            };
            listen(&fd, Backlog::new(4096).unwrap_or(Backlog::MAXCONN))?;
            Ok(std::net::TcpListener::from(fd))
        };
        match attempt() {
            Ok(l) => listeners.push(l),
            Err(e) => {
                in_use |= e.kind() == io::ErrorKind::AddrInUse;
                problems.push(format!(
                    "{}:{port}: {e}",
                    if v6 { "[::1]" } else { "127.0.0.1" }
                ))
            }
        }
    }
    Bound {
        listeners,
        problems,
        in_use,
    }
}

/// What [`bind_loopback`] got.
struct Bound {
    listeners: Vec<std::net::TcpListener>,
    problems: Vec<String>,
    /// Another socket in the namespace holds the port on one family or both.
    in_use: bool,
}

/// The inode of process `pid`'s network namespace.
fn ns_inode_of(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// For each namespace inode in `wanted` (inode -> cookie), a process living in it.
fn pids_in_namespaces(wanted: &HashMap<u64, u64>) -> HashMap<u64, u32> {
    let mut found = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(cookie) = ns_inode_of(pid).and_then(|ino| wanted.get(&ino)) {
            found.entry(*cookie).or_insert(pid);
            if found.len() == wanted.len() {
                break;
            }
        }
    }
    found
}
