//! [`SessionIdentity`]: who one intercepted connection is, established once when the
//! proxy accepts it (the eBPF record, the cgroup path and workload, the process read from
//! /proc, the addresses and the target) and read from here by everything after it: the
//! journal's session row (`journal::SessionStart`, `journal::SessionRow`), the
//! approvers (`session::Requester`), the protocol sessions. One type instead of each
//! consumer repackaging the fields it needs.
use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use super::container::{ContainerInfo, PodInfo};

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
    /// Where the client runs when it is not a plain host process: its container (from
    /// the cgroup path and the runtime's API), its network namespace when that is not
    /// the agent's, its pid inside its own pid namespace. `None` for host processes.
    pub container: Option<ContainerIdentity>,
}

/// The container side of a session's identity (see [`SessionIdentity::container`]).
/// Every field is optional: a process in a namespace of its own without a container
/// runtime has only `netns` (and `ns_pid`), a container of a runtime whose API is not
/// readable only `runtime` and `id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerIdentity {
    /// `docker`, `containerd`, `podman` or `cri-o`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The full container id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The Kubernetes pod, from the labels the kubelet sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodInfo>,
    /// Inode of the network namespace the connection was made in (`ls -l
    /// /proc/PID/ns/net` shows `net:[inode]`), when it is not the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// The client's pid in its own pid namespace (the last `NSpid` of
    /// `/proc/PID/status`), when it differs from the host pid in `pid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
}

impl ContainerIdentity {
    /// Adds what a runtime told (or the cgroup path gave) about the container.
    pub fn with_info(mut self, info: ContainerInfo) -> Self {
        self.runtime = Some(info.runtime.to_string());
        self.id = Some(info.id);
        self.name = info.name;
        self.image = info.image;
        self.labels = info.labels;
        self.pod = info.pod;
        self
    }
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
