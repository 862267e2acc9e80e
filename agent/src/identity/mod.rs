//! Who made a connection: the cgroup tree, workload names derived from cgroup
//! paths, and process details read from /proc.
//!
//! The eBPF program reports a cgroup id and a pid for each intercepted connection;
//! this module turns them into what an incident responder wants to read: the
//! cgroup path, a workload name, and the process's executable, command line and
//! user, read with a guard against pid reuse.
mod cgroup;
mod container;
mod name;
mod process;
mod session;

use std::path::PathBuf;

pub use cgroup::CgroupFs;
pub use container::{
    container_of_cgroup, ContainerDirectory, ContainerInfo, ContainerRef, PodInfo, Runtime,
};
pub use name::derive_workload_name;
pub use process::{
    boottime_ns_to_ticks, boottime_ticks, ns_pid, process_identity, process_info, user_name,
    ProcessIdentity, ProcessInfo,
};
pub use session::{ContainerIdentity, Process, SessionIdentity};

/// Why an identity could not be established.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No cgroup2 filesystem is mounted (as /proc/self/mountinfo tells), so cgroup
    /// ids cannot be mapped to paths; the agent needs a unified or hybrid hierarchy.
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); set [agent] cgroup_root if it is mounted where this process cannot see it")]
    NoCgroup2Mount,
    /// A path given as the cgroup2 root (`cgroup_root`) is not a cgroup2 filesystem,
    /// so the inode numbers found there would not be the ids the kernel reports.
    #[error("{} is not a cgroup2 filesystem", path.display())]
    NotCgroup2 {
        /// The path that was given.
        path: PathBuf,
    },
    /// A file could not be read for a reason other than the process being gone.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The process exited before its details could be read.
    #[error("process {pid} is gone")]
    ProcessGone {
        /// The process id.
        pid: u32,
    },
    /// The pid now belongs to another process than the one that made the
    /// connection: it started after the connection, or restarted while being read.
    #[error("pid {pid} was reused by a newer process")]
    PidReused {
        /// The process id.
        pid: u32,
    },
    /// A /proc file did not have the expected format.
    #[error("cannot parse {}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
}
