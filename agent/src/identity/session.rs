//! [`SessionIdentity`]: who one intercepted connection is, established once when the
//! proxy accepts it (the eBPF record, the cgroup path and workload, the process read from
//! /proc, the addresses and the target) and read from here by everything after it: the
//! journal's session row (`journal::SessionStart`, `journal::SessionRow`), the
//! approvers (`session::Requester`), the protocol sessions. One type instead of each
//! consumer repackaging the fields it needs.
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Who one session is. Serialized with the key names of `sessions --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionIdentity {
    pub workload: String,
    /// The cgroup path relative to the cgroup2 mount, e.g. `system.slice/backup.service`.
    pub cgroup: String,
    pub cgroup_id: u64,
    pub pid: u32,
    /// Clock ticks since boot from `/proc/PID/stat` field 22; with `pid` it identifies the
    /// process even after the pid is reused.
    pub pid_start_time: Option<u64>,
    pub exe: Option<String>,
    pub cmdline: Option<Vec<String>>,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub comm: String,
    /// serde renders socket addresses as `ip:port`, IPv6 as `[::1]:5432`.
    pub client_addr: SocketAddr,
    pub orig_dst: SocketAddr,
    pub target: String,
    /// The target's protocol (`tcp`, `postgres`, `http`).
    pub protocol: String,
}

impl SessionIdentity {
    /// The client process, as approvers are shown it.
    pub fn process(&self) -> Process {
        Process {
            pid: self.pid,
            exe: self.exe.clone(),
            cmdline: self.cmdline.clone(),
        }
    }
}

/// The client process of a session, as the approvals control socket carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<Vec<String>>,
}
