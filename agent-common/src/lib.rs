//! Types shared by the nhi-agent kernel programs (`agent-ebpf`) and userspace (`agent`).
//!
//! Every type here is `#[repr(C)]`, holds only plain integers and arrays, and has its
//! size asserted at compile time: the kernel and userspace read the same bytes, and a
//! field added on one side only must fail the build, not corrupt a map.
//!
//! Byte order conventions (chosen once, used everywhere):
//! - IP addresses are kept in **network byte order**, exactly as the kernel hands them
//!   to the programs (`[u32; 4]` words as they sit in memory; IPv4 in word 0).
//! - Ports are kept in **host byte order**.
#![no_std]

/// `AF_INET`, as the kernel spells it.
pub const AF_INET: u16 = 2;
/// `AF_INET6`, as the kernel spells it.
pub const AF_INET6: u16 = 10;

/// Version of the map layout. Pinned maps live in a directory named after it, so an
/// agent with a different layout never reuses (and misreads) an older agent's maps.
/// `nhi-agent --version` prints it. [`PINNED_LAYOUT`] records what this version is, so
/// changing a pinned map's type or size without bumping it fails the build.
pub const MAP_LAYOUT_VERSION: u32 = 2;

/// Entries in the connection-tracking LRU maps.
pub const CONN_MAP_ENTRIES: u32 = 65536;
/// Entries in the cgroup classification map.
pub const CGROUP_MAP_ENTRIES: u32 = 65536;
/// Entries in the destination (target) LPM trie.
pub const TARGET_MAP_ENTRIES: u32 = 4096;
/// Entries in the network-namespace map (namespaces the agent serves or was asked to).
pub const NETNS_MAP_ENTRIES: u32 = 16384;
/// Bytes of the ring buffer that asks userspace to serve a network namespace.
pub const NETNS_RING_BYTES: u32 = 64 * 1024;
/// How many ancestor levels the kernel inspects for a cgroup it has not been told about.
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// Names of the maps and programs, shared so userspace never spells them differently.
pub mod names {
    pub const CONFIG: &str = "NHI_CONFIG";
    pub const CGROUPS: &str = "NHI_CGROUPS";
    pub const TARGETS: &str = "NHI_TARGETS";
    pub const PENDING: &str = "NHI_PENDING";
    pub const BY_ADDR: &str = "NHI_BY_ADDR";
    pub const ACCEPTED: &str = "NHI_ACCEPTED";
    pub const CONNECT4: &str = "nhi_connect4";
    pub const CONNECT6: &str = "nhi_connect6";
    pub const GETPEERNAME4: &str = "nhi_getpeername4";
    pub const GETPEERNAME6: &str = "nhi_getpeername6";
    pub const SOCK_OPS: &str = "nhi_sock_ops";
    // Network namespaces other than the agent's (containers).
    pub const NETNS: &str = "NHI_NETNS";
    pub const NETNS_EVENTS: &str = "NHI_NETNS_EVENTS";
    pub const HELD: &str = "NHI_HELD";
    pub const HOLD_EGRESS: &str = "nhi_hold_egress";
    // Process lineage (see [`crate::lineage`]).
    pub const LINEAGE_EVENTS: &str = "NHI_LINEAGE";
    pub const LINEAGE_DROPS: &str = "NHI_LINEAGE_DROPS";
    pub const LINEAGE_CONFIG: &str = "NHI_LINEAGE_CFG";
    pub const EXIT_CODES: &str = "NHI_EXIT_CODES";
    pub const ENTER_EXECVE: &str = "nhi_enter_execve";
    pub const ENTER_EXECVEAT: &str = "nhi_enter_execveat";
    pub const PROCESS_EXEC: &str = "nhi_process_exec";
    pub const PROCESS_FORK: &str = "nhi_process_fork";
    pub const PROCESS_EXIT: &str = "nhi_process_exit";
    pub const ENTER_EXIT_GROUP: &str = "nhi_enter_exit_group";
}

/// Agent-wide settings, slot 0 of the `NHI_CONFIG` array map.
///
/// A zero `proxy_port` means "not configured": the programs then leave every
/// connection alone (a freshly created map before userspace wrote it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentConfig {
    /// Port of the agent's listeners on 127.0.0.1 and ::1 (host order).
    pub proxy_port: u16,
    pub _pad: u16,
    /// The agent's process id (tgid); its own connections are never redirected.
    pub agent_tgid: u32,
    /// Network namespace cookie of the agent ("the host"). Sockets of other namespaces
    /// (containers) are redirected to the agent's listener in *their* namespace, which
    /// `NHI_NETNS` says exists (see [`NetnsState`]).
    pub netns_cookie: u64,
}
const _: () = assert!(core::mem::size_of::<AgentConfig>() == 16);

/// What the agent decided about a cgroup (value of `NHI_CGROUPS`, keyed by cgroup id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupPolicy {
    /// [`CgroupPolicy::INTERCEPT`], [`CgroupPolicy::BYPASS`] or [`CgroupPolicy::BYPASS_SUBTREE`].
    pub action: u32,
    /// Only connections by this uid are redirected; [`CgroupPolicy::ANY_UID`] for all.
    pub uid: u32,
}
const _: () = assert!(core::mem::size_of::<CgroupPolicy>() == 8);

impl CgroupPolicy {
    /// Redirect this cgroup's (and, unless overridden, its descendants') connections.
    pub const INTERCEPT: u32 = 1;
    /// Leave this cgroup's connections alone. Descendants the agent has not
    /// classified yet are handed to it (they may match a workload pattern).
    pub const BYPASS: u32 = 2;
    /// Leave this cgroup and every unclassified descendant alone: no workload pattern
    /// can match below it. Keeps cgroups that can never be workloads (a human's new
    /// login scope, say) off the proxy, and unaffected while no agent runs.
    pub const BYPASS_SUBTREE: u32 = 3;
    pub const ANY_UID: u32 = u32::MAX;
}

/// Key data of the `NHI_TARGETS` LPM trie: one destination, compared bit by bit.
///
/// Prefix bits cover `family` (8), `port` (16) and then as many address bits as the
/// target's CIDR has: `10.0.0.5:5432` is 24+32 bits, `10.0.0.0/8:5432` 24+8, and
/// `*:5432` 24 (one entry per family). IPv4-mapped IPv6 destinations are looked up
/// as IPv4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetKey {
    /// 4 or 6.
    pub family: u8,
    /// Port, big-endian bytes (so the trie compares it most significant bit first).
    pub port: [u8; 2],
    /// Address bytes in network order; IPv4 uses the first 4.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<TargetKey>() == 19);

impl TargetKey {
    /// Prefix bits taken by `family` and `port`.
    pub const HEADER_BITS: u32 = 24;
}

/// Value of the `NHI_TARGETS` trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetValue {
    /// Index of the target in the agent's configuration (for the journal).
    pub index: u32,
    /// Where connections to this destination are redirected: [`TargetValue::HOST`]
    /// (made in the agent's network namespace), [`TargetValue::CONTAINER`] (made in
    /// any other), or both. The union over every target whose destination covers the
    /// entry, so the longest match alone decides.
    pub scopes: u32,
}
const _: () = assert!(core::mem::size_of::<TargetValue>() == 8);

impl TargetValue {
    pub const HOST: u32 = 1;
    pub const CONTAINER: u32 = 2;
}

/// Value of `NHI_NETNS`, keyed by network namespace cookie: the agent's state in a
/// namespace other than its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsState {
    /// [`NetnsState::REQUESTED`], [`NetnsState::READY`] or [`NetnsState::FAILED`].
    pub state: u32,
    /// A process that was in the namespace (the first to connect): userspace opens
    /// the namespace through `/proc/<tgid>/ns/net`.
    pub tgid: u32,
}
const _: () = assert!(core::mem::size_of::<NetnsState>() == 8);

impl NetnsState {
    /// The kernel asked userspace to serve the namespace; until it does, redirected
    /// connections made there are held (their SYN dropped, so TCP retries it) rather
    /// than refused by a loopback with nobody listening.
    pub const REQUESTED: u32 = 1;
    /// The agent listens in the namespace.
    pub const READY: u32 = 2;
    /// The agent could not listen there (logged; retried every 10 s): connections
    /// made there fail (`connect` returns EPERM; held ones time out), never let
    /// through and never handed to whatever else holds the proxy port there.
    pub const FAILED: u32 = 3;
}

/// Record of `NHI_NETNS_EVENTS`: "serve this namespace".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsEvent {
    pub netns_cookie: u64,
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<NetnsEvent>() == 16);

/// Value of `NHI_HELD`, keyed by socket cookie: a redirected connection whose
/// namespace has no agent listener yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldConn {
    pub netns_cookie: u64,
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<HeldConn>() == 16);

/// What the kernel remembers about a redirected connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    /// Original destination address, network order as the client wrote it
    /// (IPv4 in word 0; IPv4-mapped IPv6 kept as such).
    pub orig_ip: [u32; 4],
    /// Original destination port, host order.
    pub orig_port: u16,
    /// Family of the client's socket address: [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Index of the matched target.
    pub target: u32,
    /// cgroup v2 id of the connecting task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// `bpf_get_current_pid_tgid()`: tgid in the upper half, thread id in the lower.
    pub pid_tgid: u64,
    /// `bpf_get_current_uid_gid()`: gid in the upper half, uid in the lower.
    pub uid_gid: u64,
    /// `comm` of the connecting thread, NUL padded.
    pub comm: [u8; 16],
    /// [`ConnRecord::FLAG_UNCLASSIFIED`] when the kernel redirected a cgroup userspace
    /// had not classified yet, so userspace must decide whether to audit it.
    pub flags: u32,
    pub _pad: u32,
    /// Cookie of the network namespace the connection was made in.
    pub netns_cookie: u64,
}
const _: () = assert!(core::mem::size_of::<ConnRecord>() == 80);

impl ConnRecord {
    pub const FLAG_UNCLASSIFIED: u32 = 1;

    pub fn tgid(&self) -> u32 {
        (self.pid_tgid >> 32) as u32
    }

    pub fn uid(&self) -> u32 {
        self.uid_gid as u32
    }

    pub fn gid(&self) -> u32 {
        (self.uid_gid >> 32) as u32
    }
}

/// A socket's local (or, seen from the proxy, the peer's) address in its network
/// namespace: key of `NHI_BY_ADDR`.
///
/// IPv4-mapped IPv6 sockets are keyed as IPv4 so both ends of a loopback connection
/// agree on the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Network order; IPv4 in word 0, the other words zero.
    pub ip: [u32; 4],
    /// Host order.
    pub port: u32,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u32,
    /// Cookie of the socket's network namespace: addresses repeat across namespaces.
    pub netns: u64,
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 32);

/// The third 32-bit word of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), as it
/// sits in memory.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// True when `ip` (network order words) is an IPv4-mapped IPv6 address.
#[inline(always)]
pub fn is_v4_mapped(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD
}

pub mod lineage;

/// What [`MAP_LAYOUT_VERSION`] names: the size of every type a *pinned* map holds (the
/// ones a newer agent takes over: `NHI_CONFIG`, `NHI_CGROUPS`, `NHI_TARGETS`,
/// `NHI_PENDING`/`NHI_BY_ADDR`/`NHI_ACCEPTED`, `NHI_NETNS`, `NHI_HELD`) and their entry
/// counts. The per-type asserts above keep the two sides of the kernel boundary in step;
/// this one keeps the version in step with them: a type or count changed while the
/// version stayed fails here. A tripwire, not a proof (fields reordered within the same
/// size pass): when it fires, bump `MAP_LAYOUT_VERSION` and record the new layout.
pub const PINNED_LAYOUT: [usize; 12] = [
    core::mem::size_of::<AgentConfig>(),
    core::mem::size_of::<CgroupPolicy>(),
    core::mem::size_of::<TargetKey>(),
    core::mem::size_of::<TargetValue>(),
    core::mem::size_of::<ConnRecord>(),
    core::mem::size_of::<SockKey>(),
    core::mem::size_of::<NetnsState>(),
    core::mem::size_of::<HeldConn>(),
    CGROUP_MAP_ENTRIES as usize,
    TARGET_MAP_ENTRIES as usize,
    CONN_MAP_ENTRIES as usize,
    NETNS_MAP_ENTRIES as usize,
];

const fn layout_is(recorded: [usize; 12]) -> bool {
    let mut i = 0;
    while i < recorded.len() {
        if PINNED_LAYOUT[i] != recorded[i] {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = assert!(
    MAP_LAYOUT_VERSION == 2 && layout_is([16, 8, 19, 8, 80, 32, 8, 16, 65536, 4096, 65536, 16384]),
    "the pinned map layout changed: bump MAP_LAYOUT_VERSION and record the new PINNED_LAYOUT here"
);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all these types are repr(C), contain only integers and arrays of
    // integers, and every bit pattern is a valid value.
    unsafe impl aya::Pod for AgentConfig {}
    unsafe impl aya::Pod for CgroupPolicy {}
    unsafe impl aya::Pod for TargetKey {}
    unsafe impl aya::Pod for TargetValue {}
    unsafe impl aya::Pod for ConnRecord {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for NetnsState {}
    unsafe impl aya::Pod for NetnsEvent {}
    unsafe impl aya::Pod for HeldConn {}
    unsafe impl aya::Pod for lineage::LineageConfig {}
}
