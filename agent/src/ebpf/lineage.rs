//! Loading and attaching the process-lineage tracepoints, and a typed reader of their
//! ring buffer (`NHI_LINEAGE`). Decoding the records is pure and lives in
//! `crate::lineage::event`; this file only moves bytes out of the kernel.
use std::{
    fs,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    path::Path,
};

use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use nhi_agent_common::{
    lineage::{LineageConfig, ARGV_BYTES, ARGV_MAX_ARGS},
    names,
};
use tracing::info;

use super::{take_map, EbpfError, Interceptor};

/// Tracepoints in attach order: fork and exit before exec, so a process seen
/// exec'ing already has its parent recorded.
const TRACEPOINTS: [(&str, &str, &str); 6] = [
    (names::PROCESS_FORK, "sched", "sched_process_fork"),
    (names::ENTER_EXIT_GROUP, "syscalls", "sys_enter_exit_group"),
    (names::PROCESS_EXIT, "sched", "sched_process_exit"),
    (names::ENTER_EXECVE, "syscalls", "sys_enter_execve"),
    (names::ENTER_EXECVEAT, "syscalls", "sys_enter_execveat"),
    (names::PROCESS_EXEC, "sched", "sched_process_exec"),
];

/// Where tracefs is looked for (and mounted when it is missing).
const TRACEFS: &str = "/sys/kernel/tracing";

/// Limits of the argv capture (`[lineage] argv_max`, `argv_max_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineageOptions {
    pub argv_max_args: u32,
    pub argv_max_bytes: u32,
}

/// The lineage ring buffer and its drop counter. Owning it keeps nothing attached by
/// itself: the programs live as long as the [`Interceptor`] that loaded them.
pub struct LineageSource {
    ring: RingBuf<MapData>,
    drops: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for LineageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineageSource").finish_non_exhaustive()
    }
}

impl Interceptor {
    /// Configures and attaches the lineage tracepoints; returns their ring buffer.
    /// Call once, after [`Interceptor::install`] (the programs share its cgroup map).
    pub fn attach_lineage(&mut self, opts: LineageOptions) -> Result<LineageSource, EbpfError> {
        ensure_tracefs()?;
        let fork_offset = fork_child_pid_offset(Path::new(TRACEFS))?;
        let ebpf = &mut self._ebpf;
        let mut config: Array<MapData, LineageConfig> = take_map(ebpf, names::LINEAGE_CONFIG)?;
        config
            .set(
                0,
                LineageConfig {
                    argv_max_args: opts.argv_max_args.min(ARGV_MAX_ARGS),
                    argv_max_bytes: opts.argv_max_bytes.min(ARGV_BYTES as u32),
                    fork_child_pid_offset: fork_offset,
                    ready: 1,
                },
                0,
            )
            .map_err(|source| EbpfError::Map {
                name: names::LINEAGE_CONFIG,
                source,
            })?;
        let ring = take_map(ebpf, names::LINEAGE_EVENTS)?;
        let drops = take_map(ebpf, names::LINEAGE_DROPS)?;
        for (name, category, tracepoint) in TRACEPOINTS {
            let program: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or(EbpfError::Missing(name))?
                .try_into()
                .map_err(|source| EbpfError::Program { name, source })?;
            program
                .load()
                .map_err(|source| EbpfError::Program { name, source })?;
            // The link stays owned by the program (inside the loaded object): it goes
            // when the agent does. Lineage has no fail-closed mode to keep.
            program
                .attach(category, tracepoint)
                .map_err(|source| EbpfError::Program { name, source })?;
        }
        info!(
            fork_child_pid_offset = fork_offset,
            "lineage tracepoints attached"
        );
        Ok(LineageSource { ring, drops })
    }
}

impl LineageSource {
    /// Hands every record waiting in the ring buffer to `f`, oldest first; returns
    /// how many there were.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            f(&item);
            n += 1;
        }
        n
    }

    /// Records the kernel could not put into the full ring buffer, since load (summed
    /// over CPUs).
    pub fn dropped(&self) -> Result<u64, EbpfError> {
        let values = self.drops.get(&0, 0).map_err(|source| EbpfError::Map {
            name: names::LINEAGE_DROPS,
            source,
        })?;
        Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
    }
}

/// Wakes a task when the ring buffer has records (epoll on a duplicate of its fd).
pub struct RingWaker(tokio::io::unix::AsyncFd<OwnedFd>);

impl RingWaker {
    /// Waits until the kernel signals new records.
    pub async fn wait(&self) -> std::io::Result<()> {
        let mut guard = self.0.readable().await?;
        guard.clear_ready();
        Ok(())
    }
}

impl LineageSource {
    /// A waker for the async reader. Must be called inside a tokio runtime.
    pub fn waker(&self) -> std::io::Result<RingWaker> {
        RingWaker::for_fd(self.ring.as_fd())
    }
}

impl RingWaker {
    /// Registers a duplicate of a ring buffer's fd with the runtime's reactor.
    pub(super) fn for_fd(ring: BorrowedFd<'_>) -> std::io::Result<RingWaker> {
        let fd = ring.try_clone_to_owned()?;
        // SAFETY: the AsyncFd owns `fd` (an OwnedFd), so the descriptor stays open and
        // refers to the same file for as long as it is registered.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        };
        registered.map(RingWaker).map_err(std::io::Error::from)
    }
}

impl AsFd for LineageSource {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for LineageSource {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// Mounts tracefs at /sys/kernel/tracing when neither it nor the debugfs path holds
/// one (a fresh VM has the directory but nothing mounted): tracepoints attach by the
/// ids tracefs lists.
fn ensure_tracefs() -> Result<(), EbpfError> {
    let populated = |p: &str| {
        fs::read_dir(p)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    };
    if populated(TRACEFS) || populated("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| EbpfError::MountBpffs {
        path: TRACEFS.into(),
        source,
    })?;
    info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// Offset of `child_pid` in `sched_process_fork` records, from the event's format file.
fn fork_child_pid_offset(tracefs: &Path) -> Result<u32, EbpfError> {
    let mut path = tracefs.join("events/sched/sched_process_fork/format");
    if !path.exists() {
        path = Path::new("/sys/kernel/debug/tracing/events/sched/sched_process_fork/format")
            .to_path_buf();
    }
    let text = fs::read_to_string(&path).map_err(|source| EbpfError::Fs {
        op: "read",
        path: path.clone(),
        source,
    })?;
    field_offset(&text, "child_pid").ok_or(EbpfError::Missing("child_pid in sched_process_fork"))
}

/// The `offset:` of field `name` in a tracefs format description.
pub(crate) fn field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let field = parts.next()?.strip_prefix("field:")?;
        if field.split_whitespace().last()? != name {
            return None;
        }
        parts
            .find_map(|p| p.strip_prefix("offset:"))
            .and_then(|o| o.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::field_offset;

    #[test]
    fn field_offsets_come_from_the_format_text() {
        // Kernel 6.18's layout (comms as __data_loc) and the older fixed-array one.
        let new = "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
                   \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
                   \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
                   \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        let old = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
                   \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
                   \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\
                   \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(new, "child_pid"), Some(20));
        assert_eq!(field_offset(old, "child_pid"), Some(44));
        assert_eq!(field_offset(old, "parent_pid"), Some(24));
        assert_eq!(field_offset(old, "missing"), None);
    }
}
