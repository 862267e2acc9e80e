use aya_ebpf::{
    bindings::{
        bpf_sock_addr, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TIMEOUT_INIT,
        BPF_TCP_CLOSE,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
            bpf_get_socket_cookie, bpf_setsockopt,
        },
    },
    macros::{cgroup_skb, cgroup_sock_addr, map, sock_ops},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, RingBuf},
    programs::{SkBuffContext, SockAddrContext, SockOpsContext},
    EbpfContext,
};
use nhi_agent_common::{
    is_v4_mapped, AgentConfig, CgroupPolicy, ConnRecord, HeldConn, NetnsEvent, NetnsState, SockKey,
    TargetKey, TargetValue, AF_INET, AF_INET6, CGROUP_MAP_ENTRIES, CONN_MAP_ENTRIES,
    MAX_CGROUP_DEPTH, NETNS_MAP_ENTRIES, NETNS_RING_BYTES, TARGET_MAP_ENTRIES,
};

/// Verdict of a cgroup_sock_addr program that lets the call proceed.
const ALLOW: i32 = 1;
/// Verdict that fails the call with EPERM.
const DENY: i32 = 0;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
/// 127.0.0.1 in network order.
const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// ::1 in network order.
const LOOPBACK6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

// Maps are pinned by name under the directory userspace chooses, so a restarted agent
// finds the same state and a killed one leaves the redirection (fail-closed) in place.
#[map(name = "NHI_CONFIG")]
static NHI_CONFIG: Array<AgentConfig> = Array::pinned(1, 0);

#[map(name = "NHI_CGROUPS")]
static NHI_CGROUPS: HashMap<u64, CgroupPolicy> = HashMap::pinned(CGROUP_MAP_ENTRIES, 0);

#[map(name = "NHI_TARGETS")]
static NHI_TARGETS: LpmTrie<TargetKey, TargetValue> = LpmTrie::pinned(TARGET_MAP_ENTRIES, 0);

#[map(name = "NHI_PENDING")]
static NHI_PENDING: LruHashMap<u64, ConnRecord> = LruHashMap::pinned(CONN_MAP_ENTRIES, 0);

#[map(name = "NHI_BY_ADDR")]
static NHI_BY_ADDR: LruHashMap<SockKey, ConnRecord> = LruHashMap::pinned(CONN_MAP_ENTRIES, 0);

#[map(name = "NHI_ACCEPTED")]
static NHI_ACCEPTED: LruHashMap<u64, ConnRecord> = LruHashMap::pinned(CONN_MAP_ENTRIES, 0);

/// Network namespaces other than the agent's where intercepted connections were made:
/// whether the agent listens there yet.
#[map(name = "NHI_NETNS")]
static NHI_NETNS: HashMap<u64, NetnsState> = HashMap::pinned(NETNS_MAP_ENTRIES, 0);

/// "Serve this namespace" requests to userspace. Not pinned: a restarted agent reads
/// `NHI_NETNS` itself for what was asked while it was away.
#[map(name = "NHI_NETNS_EVENTS")]
static NHI_NETNS_EVENTS: RingBuf = RingBuf::with_byte_size(NETNS_RING_BYTES, 0);

/// Redirected connections whose namespace the agent does not serve yet (socket cookie
/// -> namespace): their packets are dropped until it does, so TCP retries the SYN.
#[map(name = "NHI_HELD")]
static NHI_HELD: LruHashMap<u64, HeldConn> = LruHashMap::pinned(CONN_MAP_ENTRIES, 0);

#[cgroup_sock_addr(connect4)]
pub fn nhi_connect4(ctx: SockAddrContext) -> i32 {
    try_connect::<false>(&ctx).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(connect6)]
pub fn nhi_connect6(ctx: SockAddrContext) -> i32 {
    try_connect::<true>(&ctx).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(getpeername4)]
pub fn nhi_getpeername4(ctx: SockAddrContext) -> i32 {
    let _ = try_getpeername::<false>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn nhi_getpeername6(ctx: SockAddrContext) -> i32 {
    let _ = try_getpeername::<true>(&ctx);
    ALLOW
}

/// Holds the packets (in practice: the SYN) of redirected connections made in a
/// namespace the agent has no listener in yet. Dropping with congestion notification
/// makes TCP retry after its retransmission timeout instead of failing the connect
/// (`nhi_sock_ops` shortens that timeout for held connections), and by then the agent
/// listens there: the first connection of a new container is late by a retry, never
/// refused and never let through unaudited.
#[cgroup_skb(egress)]
pub fn nhi_hold_egress(ctx: SkBuffContext) -> i32 {
    try_hold(&ctx)
}

// Named `nhi_sock_ops`: a function called `sockops` under `#[sock_ops]` fails to link.
#[sock_ops]
pub fn nhi_sock_ops(ctx: SockOpsContext) -> u32 {
    let _ = try_sock_ops(&ctx);
    1
}

/// Cheap early exits carry no information; `Err(())` just means "leave it alone".
type Outcome = Result<(), ()>;

#[inline(always)]
fn sa(ctx: &SockAddrContext) -> &bpf_sock_addr {
    // SAFETY: the kernel hands the program a valid bpf_sock_addr for its lifetime.
    unsafe { &*ctx.sock_addr }
}

#[inline(always)]
pub(crate) fn agent_config() -> Result<&'static AgentConfig, ()> {
    let cfg = NHI_CONFIG.get(0).ok_or(())?;
    if cfg.proxy_port == 0 {
        return Err(());
    }
    Ok(cfg)
}

/// `V6` is a const so each program only touches its own context fields: the
/// verifier rejects `user_ip6` in connect4 and `user_ip4` in connect6. `Err` leaves
/// the connection alone; `Ok` is the verdict on a connection that is intercepted.
#[inline(always)]
fn try_connect<const V6: bool>(ctx: &SockAddrContext) -> Result<i32, ()> {
    let addr = sa(ctx);
    if addr.type_ != SOCK_STREAM || addr.protocol != IPPROTO_TCP {
        return Err(());
    }
    let cfg = agent_config()?;
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == cfg.agent_tgid {
        return Err(());
    }
    // SAFETY: plain helper call on the program's own context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let scope = if netns == cfg.netns_cookie {
        TargetValue::HOST
    } else {
        TargetValue::CONTAINER
    };

    let port = u16::from_be(addr.user_port as u16);
    let (ip6, ip4) = if V6 {
        let ip6 = read_ip6(addr);
        (ip6, ip6[3])
    } else {
        ([0; 4], addr.user_ip4)
    };
    let mapped = V6 && is_v4_mapped(&ip6);

    // Already aimed at the proxy (a retry, or an explicit connection): leave it.
    if port == cfg.proxy_port
        && ((!V6 || mapped) && ip4 == LOOPBACK4 || V6 && !mapped && ip6 == LOOPBACK6)
    {
        return Err(());
    }

    // Is the destination a target?
    let mut key = TargetKey {
        family: 4,
        port: port.to_be_bytes(),
        addr: [0; 16],
    };
    let prefix = if V6 && !mapped {
        key.family = 6;
        key.addr = words_to_bytes(&ip6);
        TargetKey::HEADER_BITS + 128
    } else {
        key.addr[..4].copy_from_slice(&ip4.to_ne_bytes());
        TargetKey::HEADER_BITS + 32
    };
    let target = NHI_TARGETS.get(Key::new(prefix, key)).ok_or(())?;
    if target.scopes & scope == 0 {
        return Err(());
    }

    // Is the caller intercepted?
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let flags = classify(cgroup_id, uid_gid as u32)?;

    let record = ConnRecord {
        orig_ip: if V6 { ip6 } else { [ip4, 0, 0, 0] },
        orig_port: port,
        family: if V6 { AF_INET6 } else { AF_INET },
        target: target.index,
        cgroup_id,
        pid_tgid,
        uid_gid,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        flags,
        _pad: 0,
        netns_cookie: netns,
    };
    // In a container's namespace: the agent listens there, will (the connection is
    // held until it does), or cannot (the connection is refused: whatever else
    // listens on the proxy port there must never receive it).
    let tgid = (pid_tgid >> 32) as u32;
    let state = if scope == TargetValue::CONTAINER {
        netns_state(netns, tgid)
    } else {
        NetnsState::READY
    };
    if state == NetnsState::FAILED {
        return Ok(DENY);
    }
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // If the record cannot be stored the connection is still redirected: the proxy
    // then finds no record and refuses it. Failing closed beats an unaudited bypass.
    let _ = NHI_PENDING.insert(&cookie, &record, 0);
    if state == NetnsState::REQUESTED {
        let held = HeldConn {
            netns_cookie: netns,
            tgid,
            _pad: 0,
        };
        let _ = NHI_HELD.insert(&cookie, &held, 0);
    }

    // SAFETY: the kernel allows cgroup connect programs to rewrite the destination;
    // user_port must be written as a 4-byte store of the big-endian port.
    unsafe {
        let a = &mut *ctx.sock_addr;
        if V6 && !mapped {
            write_ip6(a, &LOOPBACK6);
        } else if V6 {
            write_ip6(a, &[0, 0, nhi_agent_common::V4_MAPPED_WORD, LOOPBACK4]);
        } else {
            core::ptr::write_volatile(&mut a.user_ip4, LOOPBACK4);
        }
        core::ptr::write_volatile(&mut a.user_port, u32::from(cfg.proxy_port.to_be()));
    }
    Ok(ALLOW)
}

/// The agent's state in namespace `netns` (a [`NetnsState`] constant). A namespace
/// the kernel has not seen is asked for, once (the entry made here stops further
/// requests), and is `REQUESTED`.
#[inline(always)]
fn netns_state(netns: u64, tgid: u32) -> u32 {
    // SAFETY: the value is copied out before anything else touches the map.
    if let Some(s) = unsafe { NHI_NETNS.get(&netns) } {
        return s.state;
    }
    let state = NetnsState {
        state: NetnsState::REQUESTED,
        tgid,
    };
    // BPF_NOEXIST: of two racing connections only one sends the request.
    if NHI_NETNS.insert(&netns, &state, 1).is_ok() {
        let event = NetnsEvent {
            netns_cookie: netns,
            tgid,
            _pad: 0,
        };
        let _ = NHI_NETNS_EVENTS.output::<NetnsEvent>(&event, 0);
    }
    NetnsState::REQUESTED
}

/// Verdicts of a cgroup_skb egress program: pass, and drop with congestion
/// notification (TCP then retries; a plain drop would too, but logs as an error).
const SKB_PASS: i32 = 1;
const SKB_DROP_CN: i32 = 2;

#[inline(always)]
fn try_hold(ctx: &SkBuffContext) -> i32 {
    // SAFETY: helper on the program's own context; 0 for a packet without a socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before anything else touches the map.
    let Some(held) = (unsafe { NHI_HELD.get(&cookie) }).copied() else {
        return SKB_PASS;
    };
    // Released only to a listening agent; a namespace it cannot listen in keeps its
    // held connections until TCP gives up (refused, never misdelivered).
    if netns_state(held.netns_cookie, held.tgid) == NetnsState::READY {
        let _ = NHI_HELD.remove(&cookie);
        return SKB_PASS;
    }
    SKB_DROP_CN
}

/// Decides whether a connection from `cgroup_id` by `uid` is redirected; returns the
/// record flags, or `Err` to leave the connection alone.
#[inline(always)]
pub(crate) fn classify(cgroup_id: u64, uid: u32) -> Result<u32, ()> {
    if let Some(policy) = unsafe { NHI_CGROUPS.get(&cgroup_id) } {
        return decide(policy, uid).map(|()| 0);
    }
    // A cgroup userspace has not seen yet (created since its last scan). If an
    // ancestor is intercepted, so is this descendant; below a cgroup where no
    // workload pattern can match, it is left alone. Otherwise hand the connection
    // to userspace with a flag, which classifies the cgroup by path and either
    // audits the connection or relays it untouched: a workload started after the
    // agent is thus intercepted from its very first connection.
    let mut level = MAX_CGROUP_DEPTH - 1;
    while level > 0 {
        // SAFETY: helper call; returns 0 when `level` is deeper than the task's cgroup.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if ancestor != 0 && ancestor != cgroup_id {
            // The deepest ancestor the agent classified decides.
            if let Some(policy) = unsafe { NHI_CGROUPS.get(&ancestor) } {
                if policy.action == CgroupPolicy::INTERCEPT {
                    return decide(policy, uid).map(|()| 0);
                }
                if policy.action == CgroupPolicy::BYPASS_SUBTREE {
                    return Err(());
                }
                break;
            }
        }
        level -= 1;
    }
    Ok(ConnRecord::FLAG_UNCLASSIFIED)
}

#[inline(always)]
fn decide(policy: &CgroupPolicy, uid: u32) -> Outcome {
    if policy.action != CgroupPolicy::INTERCEPT {
        return Err(());
    }
    if policy.uid != CgroupPolicy::ANY_UID && policy.uid != uid {
        return Err(());
    }
    Ok(())
}

#[inline(always)]
fn try_getpeername<const V6: bool>(ctx: &SockAddrContext) -> Outcome {
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before anything else touches the map.
    let record = unsafe { NHI_PENDING.get(&cookie) }.ok_or(())?;
    // SAFETY: getpeername programs may rewrite the reported address.
    unsafe {
        let a = &mut *ctx.sock_addr;
        if V6 {
            write_ip6(a, &record.orig_ip);
        } else {
            core::ptr::write_volatile(&mut a.user_ip4, record.orig_ip[0]);
        }
        core::ptr::write_volatile(&mut a.user_port, u32::from(record.orig_port.to_be()));
    }
    Ok(())
}

/// Initial SYN retransmission timeout, in jiffies, of a connection held until the
/// agent listens in its namespace: 100 ms at HZ=250 (Debian, Ubuntu), 25 ms at
/// HZ=1000, 250 ms at HZ=100, instead of TCP's one second. The first retry usually
/// finds the agent listening.
const HELD_SYN_RTO_JIFFIES: u32 = 25;

/// SYN retransmissions a held connection may make (`TCP_SYNCNT`). While held, each
/// retry is dropped locally and the next comes 500 ms later, and the kernel counts
/// them against this: 40 gives the agent about 20 s to listen in the namespace
/// (the default 6 gave it 2.6 s on 6.1, which a slow host serving a burst of new
/// containers can miss). A held connection never served fails after that long.
const HELD_SYN_RETRIES: i32 = 40;
const SOL_TCP: i32 = 6;
const TCP_SYNCNT: i32 = 7;

fn try_sock_ops(ctx: &SockOpsContext) -> Outcome {
    match ctx.op() {
        BPF_SOCK_OPS_TIMEOUT_INIT => {
            // Runs in tcp_connect_init, after the connect program held the socket.
            // SAFETY: helper on the program's own context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            // SAFETY: only presence is read.
            if unsafe { NHI_HELD.get(&cookie) }.is_some() {
                ctx.set_reply(HELD_SYN_RTO_JIFFIES);
                let mut retries = HELD_SYN_RETRIES;
                // SAFETY: the context is a full, locked TCP socket here; the value is a
                // local i32 of the length given. A kernel that refuses keeps its default.
                let _ = unsafe {
                    bpf_setsockopt(
                        ctx.as_ptr(),
                        SOL_TCP,
                        TCP_SYNCNT,
                        (&mut retries as *mut i32).cast(),
                        4,
                    )
                };
            }
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            // SAFETY: helper on the program's own context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let record = unsafe { NHI_PENDING.get(&cookie) }.ok_or(())?;
            let key = local_key(ctx);
            NHI_BY_ADDR.insert(&key, record, 0).map_err(|_| ())?;
            // Ask for state callbacks so the entries go when the socket closes.
            let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let cfg = agent_config()?;
            if ctx.local_port() != u32::from(cfg.proxy_port) {
                return Err(());
            }
            let key = remote_key(ctx);
            let record = unsafe { NHI_BY_ADDR.get(&key) }.ok_or(())?;
            // SAFETY: helper on the program's own context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            NHI_ACCEPTED.insert(&cookie, record, 0).map_err(|_| ())?;
            let _ = NHI_BY_ADDR.remove(&key);
            let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        }
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(1) != BPF_TCP_CLOSE {
                return Ok(());
            }
            // SAFETY: helper on the program's own context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            if unsafe { NHI_PENDING.get(&cookie) }.is_some() {
                let _ = NHI_PENDING.remove(&cookie);
                let _ = NHI_BY_ADDR.remove(&local_key(ctx));
            } else {
                let _ = NHI_ACCEPTED.remove(&cookie);
            }
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn local_key(ctx: &SockOpsContext) -> SockKey {
    sock_key(
        ctx.family(),
        ctx.local_ip4(),
        ctx.local_ip6(),
        ctx.local_port(),
        netns_of(ctx),
    )
}

#[inline(always)]
fn netns_of(ctx: &SockOpsContext) -> u64 {
    // SAFETY: helper on the program's own context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn remote_key(ctx: &SockOpsContext) -> SockKey {
    // remote_port holds the network-order port in its upper 16 bits.
    let port = u32::from(u16::from_be((ctx.remote_port() >> 16) as u16));
    sock_key(
        ctx.family(),
        ctx.remote_ip4(),
        ctx.remote_ip6(),
        port,
        netns_of(ctx),
    )
}

#[inline(always)]
fn sock_key(family: u32, ip4: u32, ip6: [u32; 4], port: u32, netns: u64) -> SockKey {
    if family == u32::from(AF_INET6) && !is_v4_mapped(&ip6) {
        SockKey {
            ip: ip6,
            port,
            family: u32::from(AF_INET6),
            netns,
        }
    } else {
        let v4 = if family == u32::from(AF_INET6) {
            ip6[3]
        } else {
            ip4
        };
        SockKey {
            ip: [v4, 0, 0, 0],
            port,
            family: u32::from(AF_INET),
            netns,
        }
    }
}

/// Context fields must be accessed with 4-byte loads and stores at constant offsets:
/// a plain array copy compiles to pointer arithmetic on the context, which the
/// verifier rejects ("dereference of modified ctx ptr").
#[inline(always)]
fn read_ip6(a: &bpf_sock_addr) -> [u32; 4] {
    // SAFETY: reads of the program's own context fields.
    unsafe {
        [
            core::ptr::read_volatile(&a.user_ip6[0]),
            core::ptr::read_volatile(&a.user_ip6[1]),
            core::ptr::read_volatile(&a.user_ip6[2]),
            core::ptr::read_volatile(&a.user_ip6[3]),
        ]
    }
}

#[inline(always)]
fn write_ip6(a: &mut bpf_sock_addr, ip: &[u32; 4]) {
    // SAFETY: writes of context fields the program type may rewrite.
    unsafe {
        core::ptr::write_volatile(&mut a.user_ip6[0], ip[0]);
        core::ptr::write_volatile(&mut a.user_ip6[1], ip[1]);
        core::ptr::write_volatile(&mut a.user_ip6[2], ip[2]);
        core::ptr::write_volatile(&mut a.user_ip6[3], ip[3]);
    }
}

#[inline(always)]
fn words_to_bytes(w: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
