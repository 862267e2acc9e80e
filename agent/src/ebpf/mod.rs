//! Loading, pinning and attaching the kernel programs, and typed access to their maps.
//!
//! This is the only userspace module that talks to the kernel's BPF interfaces (and the
//! only one with `unsafe`, for two `getsockopt` calls).
//!
//! Pin layout under the configured directory (`[agent] bpffs`, default
//! `/sys/fs/bpf/nhi-agent`):
//! ```text
//! v<MAP_LAYOUT_VERSION>/maps/NHI_*      the maps, pinned by name
//! v<MAP_LAYOUT_VERSION>/links/nhi_*     the cgroup links (fail-closed mode only)
//! ```
//! An agent with another layout version removes the other versions' pins once its own
//! links are attached (an upgrade must not leave the old programs redirecting too).
//! Architecture invariant: in fail-closed mode the links stay pinned when the agent
//! dies, so the kernel keeps redirecting intercepted connections to a port nobody
//! listens on and clients get "connection refused" instead of an unaudited bypass. A
//! new agent attaches its own links first and only then drops the old pins, so there
//! is no instant without interception during a takeover.
use std::{
    collections::HashMap as StdHashMap,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps,
    },
    Ebpf, EbpfLoader,
};
use nhi_agent_common::{
    names, AgentConfig, CgroupPolicy, ConnRecord, NetnsEvent, NetnsState, TargetKey, TargetValue,
    AF_INET6, MAP_LAYOUT_VERSION,
};
use tracing::{debug, info, warn};

use crate::config::{Config, Destination, NetnsScope};

mod lineage;
pub mod probe;
pub use lineage::{LineageOptions, LineageSource, RingWaker};

/// The kernel object built from `agent-ebpf` by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nhi-agent"));

/// Programs in attach order; the getpeername programs come last so that a client
/// never observes a rewritten peer before its connect was redirected, and the hold
/// comes before the connect programs so no held connection's SYN slips out.
const PROGRAMS: [&str; 6] = [
    names::SOCK_OPS,
    names::HOLD_EGRESS,
    names::CONNECT4,
    names::CONNECT6,
    names::GETPEERNAME4,
    names::GETPEERNAME6,
];

/// Errors of the eBPF subsystem.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// A filesystem operation on the pin directory or bpffs failed.
    #[error("{op} {path}: {source}")]
    Fs {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// bpffs is not mounted where the pins must go and could not be mounted.
    #[error("bpffs is not mounted at {path} and mounting it failed: {source}")]
    MountBpffs { path: PathBuf, source: nix::Error },
    /// The object could not be loaded (verifier, permissions, map creation).
    #[error("loading the kernel programs")]
    Load(#[from] aya::EbpfError),
    /// A program could not be loaded or attached.
    #[error("program {name}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("map {name}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    /// A link could not be pinned or an old pin removed.
    #[error("link {name}: {message}")]
    Link { name: String, message: String },
    /// A map or program the agent expects is missing from the object.
    #[error("the kernel object has no {0}")]
    Missing(&'static str),
}

/// Where and how the programs are installed.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Directory on bpffs for pins (`[agent] bpffs`).
    pub pin_dir: PathBuf,
    /// cgroup2 mount: programs attach here so every cgroup, present or future, is seen.
    pub cgroup_root: PathBuf,
    /// Pin the links so a dead agent keeps failing closed.
    pub fail_closed: bool,
    /// Port the proxy listens on (127.0.0.1 and ::1).
    pub proxy_port: u16,
}

/// The loaded, attached programs and the maps userspace writes.
pub struct Interceptor {
    // Kept alive for the maps it owns; programs are attached through `links`.
    _ebpf: Ebpf,
    links: Vec<(&'static str, FdLink)>,
    // Kept open so the agent-wide settings map lives as long as the agent.
    _config: Array<MapData, AgentConfig>,
    cgroups: HashMap<MapData, u64, CgroupPolicy>,
    targets: LpmTrie<MapData, TargetKey, TargetValue>,
    accepted: HashMap<MapData, u64, ConnRecord>,
    netns: HashMap<MapData, u64, NetnsState>,
    /// Taken once by the namespace server ([`Interceptor::take_netns_events`]).
    netns_events: Option<RingBuf<MapData>>,
    /// Cookie of the agent's own network namespace.
    host_netns: u64,
    /// Mirror of what `cgroups` holds, so syncs only write differences.
    cgroup_mirror: StdHashMap<u64, CgroupPolicy>,
    target_mirror: StdHashMap<(u32, [u8; 19]), TargetValue>,
    opts: InstallOptions,
}

impl Interceptor {
    /// Loads the programs, reusing pinned maps, attaches them at the cgroup2 root and
    /// takes over the links of a previous agent.
    pub fn install(opts: InstallOptions) -> Result<Self, EbpfError> {
        let versioned = opts.pin_dir.join(format!("v{MAP_LAYOUT_VERSION}"));
        let maps_dir = versioned.join("maps");
        let links_dir = versioned.join("links");
        ensure_bpffs(&opts.pin_dir)?;
        for dir in [&maps_dir, &links_dir] {
            fs::create_dir_all(dir).map_err(|source| EbpfError::Fs {
                op: "create",
                path: dir.clone(),
                source,
            })?;
        }

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(EBPF_OBJECT)?;

        let cgroup_dir = fs::File::open(&opts.cgroup_root).map_err(|source| EbpfError::Fs {
            op: "open",
            path: opts.cgroup_root.clone(),
            source,
        })?;

        let mut config: Array<MapData, AgentConfig> = take_map(&mut ebpf, names::CONFIG)?;
        let cgroups = take_map(&mut ebpf, names::CGROUPS)?;
        let targets = take_map(&mut ebpf, names::TARGETS)?;
        let accepted = take_map(&mut ebpf, names::ACCEPTED)?;
        let netns = take_map(&mut ebpf, names::NETNS)?;
        let netns_events = take_map(&mut ebpf, names::NETNS_EVENTS)?;

        // Userspace state first, so the programs see a consistent configuration the
        // moment they are attached.
        let host_netns = own_netns_cookie().map_err(|source| EbpfError::Fs {
            op: "SO_NETNS_COOKIE on",
            path: PathBuf::from("a probe socket"),
            source,
        })?;
        let agent = AgentConfig {
            proxy_port: opts.proxy_port,
            _pad: 0,
            agent_tgid: std::process::id(),
            netns_cookie: host_netns,
        };
        config.set(0, agent, 0).map_err(|source| EbpfError::Map {
            name: names::CONFIG,
            source,
        })?;

        // The same steps for both program types; aya gives them no common trait.
        // `$attach`: the attach type for program types that take one at attach time.
        macro_rules! load_and_attach {
            ($ty:ty, $name:expr, $program:expr $(, $attach:expr)?) => {{
                let name = $name;
                let prog: &mut $ty = $program
                    .try_into()
                    .map_err(|source| EbpfError::Program { name, source })?;
                prog.load()
                    .map_err(|source| EbpfError::Program { name, source })?;
                // `Single` still gives multi-attach semantics for links on this
                // kernel; `AllowMultiple` is refused by aya 0.14 with EINVAL.
                let id = prog
                    .attach(&cgroup_dir, $($attach,)? CgroupAttachMode::Single)
                    .map_err(|source| EbpfError::Program { name, source })?;
                let link = prog
                    .take_link(id)
                    .map_err(|source| EbpfError::Program { name, source })?;
                FdLink::try_from(link).map_err(|e| EbpfError::Link {
                    name: name.to_string(),
                    message: e.to_string(),
                })?
            }};
        }
        let mut links = Vec::new();
        for name in PROGRAMS {
            let program = ebpf.program_mut(name).ok_or(EbpfError::Missing(name))?;
            let link = if name == names::SOCK_OPS {
                load_and_attach!(SockOps, name, program)
            } else if name == names::HOLD_EGRESS {
                load_and_attach!(CgroupSkb, name, program, CgroupSkbAttachType::Egress)
            } else {
                load_and_attach!(CgroupSockAddr, name, program)
            };
            links.push((name, link));
        }

        let mut this = Self {
            _ebpf: ebpf,
            links: Vec::new(),
            _config: config,
            cgroups,
            targets,
            accepted,
            netns,
            netns_events: Some(netns_events),
            host_netns,
            cgroup_mirror: StdHashMap::new(),
            target_mirror: StdHashMap::new(),
            opts,
        };
        this.load_mirrors();

        // Take over: the new links are attached; now drop the previous agent's pins
        // (detaching its links) and pin ours in their place.
        for (name, link) in links {
            let pin = links_dir.join(name);
            if pin.exists() {
                match PinnedLink::from_pin(&pin) {
                    Ok(old) => match old.unpin() {
                        Ok(old) => {
                            drop(old);
                            info!(link = name, "took over the link of a previous agent");
                        }
                        Err(e) => {
                            return Err(EbpfError::Link {
                                name: pin.display().to_string(),
                                message: format!("unpin: {e}"),
                            })
                        }
                    },
                    Err(e) => {
                        warn!(pin = %pin.display(), error = %e, "stale pin is not a link; removing it");
                        let _ = fs::remove_file(&pin);
                    }
                }
            }
            let link = if this.opts.fail_closed {
                let pinned = link.pin(&pin).map_err(|e| EbpfError::Link {
                    name: pin.display().to_string(),
                    message: e.to_string(),
                })?;
                FdLink::from(pinned)
            } else {
                link
            };
            this.links.push((name, link));
        }
        remove_other_layouts(&this.opts.pin_dir);
        info!(
            cgroup_root = %this.opts.cgroup_root.display(),
            pins = %versioned.display(),
            fail_closed = this.opts.fail_closed,
            "kernel programs attached"
        );
        Ok(this)
    }

    /// Reads what the (possibly reused) maps already hold, so the first sync removes
    /// a previous agent's stale entries.
    fn load_mirrors(&mut self) {
        self.cgroup_mirror = self
            .cgroups
            .iter()
            .filter_map(Result::ok)
            .collect::<StdHashMap<_, _>>();
        self.target_mirror = self
            .targets
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| ((k.prefix_len(), key_bytes(&k.data())), v))
            .collect();
    }

    /// Makes the target trie hold exactly the destinations of `config`.
    pub fn sync_targets(&mut self, config: &Config) -> Result<(), EbpfError> {
        let wanted = target_entries(config);
        for (k, v) in &wanted {
            if self.target_mirror.get(k) != Some(v) {
                let key = Key::new(k.0, key_from_bytes(&k.1));
                self.targets
                    .insert(&key, v, 0)
                    .map_err(|source| EbpfError::Map {
                        name: names::TARGETS,
                        source,
                    })?;
            }
        }
        for k in self.target_mirror.keys() {
            if !wanted.contains_key(k) {
                let key = Key::new(k.0, key_from_bytes(&k.1));
                let _ = self.targets.remove(&key);
            }
        }
        self.target_mirror = wanted;
        Ok(())
    }

    /// Makes the cgroup map hold exactly `wanted` (cgroup id -> policy).
    pub fn sync_cgroups(&mut self, wanted: StdHashMap<u64, CgroupPolicy>) -> Result<(), EbpfError> {
        let mut written = 0usize;
        for (&id, &policy) in &wanted {
            if self.cgroup_mirror.get(&id) != Some(&policy) {
                self.set_cgroup(id, policy)?;
                written += 1;
            }
        }
        let mut removed = 0usize;
        for id in self.cgroup_mirror.keys() {
            if !wanted.contains_key(id) {
                let _ = self.cgroups.remove(id);
                removed += 1;
            }
        }
        if written + removed > 0 {
            debug!(written, removed, total = wanted.len(), "cgroup map synced");
        }
        self.cgroup_mirror = wanted;
        Ok(())
    }

    /// Records the classification of one cgroup (a cgroup the kernel did not know).
    pub fn set_cgroup(&mut self, id: u64, policy: CgroupPolicy) -> Result<(), EbpfError> {
        if self.cgroup_mirror.get(&id) == Some(&policy) {
            return Ok(());
        }
        self.cgroups
            .insert(id, policy, 0)
            .map_err(|source| EbpfError::Map {
                name: names::CGROUPS,
                source,
            })?;
        self.cgroup_mirror.insert(id, policy);
        Ok(())
    }

    /// Takes the kernel's record for an accepted connection (keyed by the accepted
    /// socket's cookie). `None` means the kernel did not redirect this connection.
    pub fn take_accepted(&mut self, cookie: u64) -> Option<ConnRecord> {
        let record = self.accepted.get(&cookie, 0).ok()?;
        let _ = self.accepted.remove(&cookie);
        Some(record)
    }

    /// Cookie of the agent's own network namespace ("the host").
    /// What `nhi-agent status` shows of the kernel side: programs attached, where they
    /// are pinned, what the maps hold.
    pub fn summary(&self) -> serde_json::Value {
        let versioned = self.opts.pin_dir.join(format!("v{MAP_LAYOUT_VERSION}"));
        let links_dir = versioned.join("links");
        let programs: Vec<serde_json::Value> = self
            .links
            .iter()
            .map(|(name, _)| {
                let pin = links_dir.join(name);
                serde_json::json!({
                    "name": name,
                    "pinned": pin.exists().then(|| pin.display().to_string()),
                })
            })
            .collect();
        serde_json::json!({
            "programs": programs,
            "pin_dir": versioned.display().to_string(),
            "map_layout": MAP_LAYOUT_VERSION,
            "cgroup_root": self.opts.cgroup_root.display().to_string(),
            "fail_closed": self.opts.fail_closed,
            "cgroups_classified": self.cgroup_mirror.len(),
            "target_entries": self.target_mirror.len(),
            "container_namespaces": self.netns.keys().count(),
        })
    }

    pub fn host_netns(&self) -> u64 {
        self.host_netns
    }

    /// The ring buffer of "serve this namespace" requests; `None` once taken.
    pub fn take_netns_events(&mut self) -> Option<NetnsEvents> {
        self.netns_events.take().map(NetnsEvents)
    }

    /// Every namespace the kernel knows of (requested, served or failed).
    pub fn netns_entries(&self) -> Vec<(u64, NetnsState)> {
        self.netns.iter().filter_map(Result::ok).collect()
    }

    /// Records the agent's state in namespace `cookie`.
    pub fn set_netns(&mut self, cookie: u64, state: NetnsState) -> Result<(), EbpfError> {
        self.netns
            .insert(cookie, state, 0)
            .map_err(|source| EbpfError::Map {
                name: names::NETNS,
                source,
            })
    }

    /// Forgets namespace `cookie`: the next intercepted connection made there asks
    /// again (and is held until served).
    pub fn remove_netns(&mut self, cookie: u64) {
        let _ = self.netns.remove(&cookie);
    }

    /// Detaches the programs and removes the pins: connections are no longer
    /// intercepted. Used on a clean exit in fail-open mode.
    pub fn detach(self) {
        remove_pins(&self.opts.pin_dir);
        drop(self);
    }
}

/// Removes every pin under `pin_dir` (detaching pinned links). Used by `nhi-agent
/// detach` and by a fail-open agent on exit.
pub fn remove_pins(pin_dir: &Path) {
    remove_layout(&pin_dir.join(format!("v{MAP_LAYOUT_VERSION}")));
    let _ = fs::remove_dir(pin_dir);
}

/// Removes the pinned links and maps of one layout directory (`<pin_dir>/v<N>`).
fn remove_layout(versioned: &Path) {
    for sub in ["links", "maps"] {
        let dir = versioned.join(sub);
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        let _ = fs::remove_dir(&dir);
    }
    let _ = fs::remove_dir(versioned);
}

/// Removes the pins of every other map layout version under `pin_dir` (detaching an
/// older agent's links once this one's are attached).
fn remove_other_layouts(pin_dir: &Path) {
    let ours = format!("v{MAP_LAYOUT_VERSION}");
    let Ok(entries) = fs::read_dir(pin_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let other = name
            .strip_prefix('v')
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if other && name != ours {
            remove_layout(&entry.path());
            info!(layout = %name, "removed the pins of another map layout (an older agent's)");
        }
    }
}

/// The namespaces the pinned `NHI_NETNS` under `pin_dir` lists, with their state: what
/// the kernel knows of the agent's container namespaces (read by tests and tools
/// while an agent runs, or after it died).
pub fn pinned_netns(pin_dir: &Path) -> Result<Vec<(u64, NetnsState)>, EbpfError> {
    let path = pin_dir
        .join(format!("v{MAP_LAYOUT_VERSION}"))
        .join("maps")
        .join(names::NETNS);
    let map_error = |source| EbpfError::Map {
        name: names::NETNS,
        source,
    };
    let data = MapData::from_pin(&path).map_err(map_error)?;
    let map: HashMap<MapData, u64, NetnsState> =
        HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(map_error)?;
    Ok(map.iter().filter_map(Result::ok).collect())
}

/// "Serve this namespace" requests from the kernel (`NHI_NETNS_EVENTS`).
pub struct NetnsEvents(RingBuf<MapData>);

impl NetnsEvents {
    /// Every request waiting, oldest first.
    pub fn drain(&mut self) -> Vec<NetnsEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.0.next() {
            if item.len() >= std::mem::size_of::<NetnsEvent>() {
                // SAFETY: the kernel wrote a whole NetnsEvent (repr(C), plain
                // integers); read_unaligned copes with any alignment of the item.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<NetnsEvent>()) });
            }
        }
        out
    }

    /// A waker for an async reader. Must be called inside a tokio runtime.
    pub fn waker(&self) -> io::Result<RingWaker> {
        RingWaker::for_fd(self.0.as_fd())
    }
}

/// The trie entries of `config`'s targets: for each, the first target (in file order,
/// as `Config::target_for`) and the union of the scopes of every target covering it.
fn target_entries(config: &Config) -> StdHashMap<(u32, [u8; 19]), TargetValue> {
    let all: Vec<(usize, u32, (u32, TargetKey))> = config
        .targets
        .iter()
        .enumerate()
        .flat_map(|(index, t)| {
            let scopes = scope_bits(t.netns);
            lpm_entries(&t.destination)
                .into_iter()
                .map(move |e| (index, scopes, e))
        })
        .collect();
    let mut wanted: StdHashMap<(u32, [u8; 19]), TargetValue> = StdHashMap::new();
    for &(index, _, (prefix, key)) in &all {
        let scopes = all
            .iter()
            .filter(|(_, _, (p, k))| covers(*p, k, prefix, &key))
            .fold(0, |acc, (_, s, _)| acc | s);
        wanted
            .entry((prefix, key_bytes(&key)))
            .or_insert(TargetValue {
                index: index as u32,
                scopes,
            });
    }
    wanted
}

fn scope_bits(scope: NetnsScope) -> u32 {
    match scope {
        NetnsScope::Any => TargetValue::HOST | TargetValue::CONTAINER,
        NetnsScope::Host => TargetValue::HOST,
        NetnsScope::Container => TargetValue::CONTAINER,
    }
}

/// Whether trie entry `(outer, ok)` matches every address entry `(inner, ik)` does.
fn covers(outer: u32, ok: &TargetKey, inner: u32, ik: &TargetKey) -> bool {
    if outer > inner || ok.family != ik.family || ok.port != ik.port {
        return false;
    }
    let bits = (outer - TargetKey::HEADER_BITS) as usize;
    let (whole, rest) = (bits / 8, bits % 8);
    if ok.addr[..whole] != ik.addr[..whole] {
        return false;
    }
    rest == 0 || (ok.addr[whole] ^ ik.addr[whole]) >> (8 - rest) == 0
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::Missing(name))?;
    T::try_from(map).map_err(|source| EbpfError::Map { name, source })
}

/// What the kernel is told about the cgroup at `path` under `config`.
pub fn cgroup_policy(config: &Config, path: &str) -> CgroupPolicy {
    match config.cgroup_selection(path) {
        Some(uid) => CgroupPolicy {
            action: CgroupPolicy::INTERCEPT,
            uid: uid.unwrap_or(CgroupPolicy::ANY_UID),
        },
        // Not selected; if no pattern can match below it either, the kernel leaves
        // its future descendants alone without asking the agent.
        None => CgroupPolicy {
            action: if config.subtree_may_be_selected(path) {
                CgroupPolicy::BYPASS
            } else {
                CgroupPolicy::BYPASS_SUBTREE
            },
            uid: CgroupPolicy::ANY_UID,
        },
    }
}

/// The LPM trie entries for one destination (both families for `*:port`).
pub fn lpm_entries(dest: &Destination) -> Vec<(u32, TargetKey)> {
    let key = |family: u8, port: u16, ip: Option<IpAddr>| {
        let mut addr = [0u8; 16];
        match ip {
            Some(IpAddr::V4(v4)) => addr[..4].copy_from_slice(&v4.octets()),
            Some(IpAddr::V6(v6)) => addr.copy_from_slice(&v6.octets()),
            None => {}
        }
        TargetKey {
            family,
            port: port.to_be_bytes(),
            addr,
        }
    };
    match dest {
        Destination::Exact(sa) => match sa.ip() {
            IpAddr::V4(_) => vec![(
                TargetKey::HEADER_BITS + 32,
                key(4, sa.port(), Some(sa.ip())),
            )],
            IpAddr::V6(_) => vec![(
                TargetKey::HEADER_BITS + 128,
                key(6, sa.port(), Some(sa.ip())),
            )],
        },
        Destination::Network { net, port } => {
            let family = if net.addr().is_ipv4() { 4 } else { 6 };
            vec![(
                TargetKey::HEADER_BITS + u32::from(net.prefix_len()),
                key(family, *port, Some(net.network())),
            )]
        }
        Destination::AnyHost { port } => vec![
            (TargetKey::HEADER_BITS, key(4, *port, None)),
            (TargetKey::HEADER_BITS, key(6, *port, None)),
        ],
    }
}

fn key_bytes(k: &TargetKey) -> [u8; 19] {
    let mut out = [0u8; 19];
    out[0] = k.family;
    out[1..3].copy_from_slice(&k.port);
    out[3..].copy_from_slice(&k.addr);
    out
}

fn key_from_bytes(b: &[u8; 19]) -> TargetKey {
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&b[3..]);
    TargetKey {
        family: b[0],
        port: [b[1], b[2]],
        addr,
    }
}

/// The original destination the client asked for.
pub fn original_destination(r: &ConnRecord) -> SocketAddr {
    if r.family == AF_INET6 {
        let mut bytes = [0u8; 16];
        for (i, w) in r.orig_ip.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(bytes)), r.orig_port)
    } else {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(r.orig_ip[0].to_ne_bytes())),
            r.orig_port,
        )
    }
}

/// The command name the kernel recorded, without NUL padding.
pub fn comm(r: &ConnRecord) -> String {
    let end = r.comm.iter().position(|&b| b == 0).unwrap_or(r.comm.len());
    String::from_utf8_lossy(&r.comm[..end]).into_owned()
}

const SO_COOKIE: libc::c_int = 57;
const SO_NETNS_COOKIE: libc::c_int = 71;

fn getsockopt_u64(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given, and `fd` is
    // a live socket for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kernel's cookie for a socket (what `bpf_get_socket_cookie` returns).
pub fn socket_cookie(sock: &impl AsFd) -> io::Result<u64> {
    getsockopt_u64(sock.as_fd(), SO_COOKIE)
}

/// The cookie of the network namespace a socket belongs to.
pub fn netns_cookie_of(sock: &impl AsFd) -> io::Result<u64> {
    getsockopt_u64(sock.as_fd(), SO_NETNS_COOKIE)
}

/// The cookie of the network namespace the agent runs in.
pub fn own_netns_cookie() -> io::Result<u64> {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
    getsockopt_u64(probe.as_fd(), SO_NETNS_COOKIE)
}

/// Makes sure the filesystem holding `pin_dir` is a bpffs, mounting one at
/// /sys/fs/bpf when the directory lives there and nothing is mounted yet.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), EbpfError> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").map_err(|source| EbpfError::Fs {
        op: "read",
        path: "/proc/self/mountinfo".into(),
        source,
    })?;
    let on_bpffs = mounts.lines().any(|line| {
        let mut parts = line.split(" - ");
        let (Some(left), Some(right)) = (parts.next(), parts.next()) else {
            return false;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or("");
        right.starts_with("bpf ") && pin_dir.starts_with(mount_point)
    });
    if on_bpffs {
        return Ok(());
    }
    let default = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(default) {
        // Not ours to mount; pinning will fail with a clear error if it is not bpffs.
        return Ok(());
    }
    fs::create_dir_all(default).map_err(|source| EbpfError::Fs {
        op: "create",
        path: default.into(),
        source,
    })?;
    nix::mount::mount(
        Some("bpf"),
        default,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| EbpfError::MountBpffs {
        path: default.into(),
        source,
    })?;
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bytes_round_trip() {
        let k = TargetKey {
            family: 6,
            port: 5432u16.to_be_bytes(),
            addr: [1; 16],
        };
        assert_eq!(key_from_bytes(&key_bytes(&k)), k);
    }

    #[test]
    fn a_trie_entry_carries_the_scopes_of_every_target_covering_it() {
        let config = crate::config::parse(
            r#"
[agent]
mode = "enforce"
journal = "/tmp/j.db"

[[workload]]
cgroup = "ci.slice/*"

[[target]]
name = "host-only"
address = "10.0.0.5:5432"
netns = "host"

[[target]]
name = "containers"
address = "10.0.0.0/8:5432"
netns = "container"

[[target]]
name = "other-port"
address = "10.0.0.5:5433"
netns = "container"
"#,
            "t.toml",
        )
        .expect("config");
        let entries = target_entries(&config);
        let entry = |dest: &str| {
            let (prefix, key) = lpm_entries(&dest.parse().expect("destination"))[0];
            entries[&(prefix, key_bytes(&key))]
        };
        // The longest match for 10.0.0.5:5432 is the host-only target, but a container
        // dialling it matches the /8: the entry must redirect both.
        let exact = entry("10.0.0.5:5432");
        assert_eq!(exact.index, 0);
        assert_eq!(exact.scopes, TargetValue::HOST | TargetValue::CONTAINER);
        assert_eq!(entry("10.0.0.0/8:5432").scopes, TargetValue::CONTAINER);
        assert_eq!(entry("10.0.0.5:5433").scopes, TargetValue::CONTAINER);
        // Partial bytes of a prefix are compared too.
        let (p, k) = lpm_entries(&"10.0.0.0/9:1".parse().expect("d"))[0];
        let (p2, k2) = lpm_entries(&"10.128.0.1:1".parse().expect("d"))[0];
        assert!(!covers(p, &k, p2, &k2));
        let (p3, k3) = lpm_entries(&"10.127.0.1:1".parse().expect("d"))[0];
        assert!(covers(p, &k, p3, &k3));
    }

    #[test]
    fn original_destination_decodes_both_families() {
        let mut r = ConnRecord {
            orig_ip: [u32::from_ne_bytes([10, 0, 0, 5]), 0, 0, 0],
            orig_port: 5432,
            family: nhi_agent_common::AF_INET,
            target: 0,
            cgroup_id: 1,
            pid_tgid: 0,
            uid_gid: 0,
            comm: *b"psql\0\0\0\0\0\0\0\0\0\0\0\0",
            flags: 0,
            _pad: 0,
            netns_cookie: 0,
        };
        assert_eq!(original_destination(&r), "10.0.0.5:5432".parse().unwrap());
        assert_eq!(comm(&r), "psql");
        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        let o = v6.octets();
        for i in 0..4 {
            r.orig_ip[i] = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
        }
        r.family = AF_INET6;
        assert_eq!(original_destination(&r), "[fd00::1]:5432".parse().unwrap());
    }
}
