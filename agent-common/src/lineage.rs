//! Process lineage records: what the tracepoint programs (`agent-ebpf/src/lineage.rs`)
//! put into the `NHI_LINEAGE` ring buffer for tasks of intercepted cgroups.
//!
//! Every record starts with a [`LineageHeader`]; its `kind` says which struct the
//! record is. Records have different sizes so that the frequent small ones (fork,
//! exit) do not take the ring buffer space of an exec's argv.
//!
//! An exec is reported in two steps, joined by userspace on the thread id:
//! 1. [`ExecArgs`] at `sys_enter_execve(at)`, while the caller's memory (filename,
//!    argv) can still be read; the exec may yet fail.
//! 2. [`ExecDone`] at `sched_process_exec`, which only fires for an exec that
//!    succeeded. Its `aux` is the thread id that called execve (a non-leader thread's
//!    exec takes over the leader's pid).
//!
//! Doing the join in userspace keeps the kernel side free of a scratch map and of a
//! kilobyte copy between maps (which the verifier makes awkward), at the price of
//! ring buffer space for failed execs.

/// Record kinds ([`LineageHeader::kind`]).
pub const KIND_EXEC_ARGS: u32 = 1;
pub const KIND_EXEC_DONE: u32 = 2;
pub const KIND_FORK: u32 = 3;
pub const KIND_EXIT: u32 = 4;

/// The cgroup is not classified yet (no entry, and no intercepted ancestor decided):
/// userspace classifies it by path and drops the record if it is not a workload.
pub const FLAG_UNCLASSIFIED: u32 = 1;
/// [`ExecArgs`]: argv was cut (more arguments or bytes than the limits, or one
/// argument longer than [`ARG_CHUNK`]).
pub const FLAG_TRUNCATED: u32 = 2;
/// [`KIND_EXIT`]: `aux` holds the status given to `exit_group(2)`; without this flag
/// the process ended another way (a signal, or a thread's `exit`).
pub const FLAG_HAS_CODE: u32 = 4;

/// Bytes of the filename kept (NUL included).
pub const FILENAME_LEN: usize = 256;
/// Largest `argv_max_bytes` the kernel side accepts; a power of two (offsets are masked).
pub const ARGV_BYTES: usize = 1024;
/// Most bytes read for one argument; longer ones are cut (and flagged).
pub const ARG_CHUNK: usize = 256;
/// Largest `argv_max` (argument count) the kernel side accepts: the loop bound.
pub const ARGV_MAX_ARGS: u32 = 32;
/// Size of the ring buffer.
pub const RING_BYTES: u32 = 1 << 20;
/// Entries of the exit-status map (tgid -> status between exit_group and exit).
pub const EXIT_CODE_ENTRIES: u32 = 16384;

/// Common start of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineageHeader {
    /// One of the `KIND_*` constants.
    pub kind: u32,
    /// Thread id of the current task (the kernel's `pid`).
    pub tid: u32,
    /// Process id (the kernel's `tgid`).
    pub tgid: u32,
    /// Kind-specific: exec done: the caller's former thread id; fork: the child's pid;
    /// exit: the status (with [`FLAG_HAS_CODE`]).
    pub aux: u32,
    /// `bpf_get_current_uid_gid()`: gid in the upper half, uid in the lower.
    pub uid_gid: u64,
    /// cgroup v2 id of the current task.
    pub cgroup_id: u64,
    /// `bpf_ktime_get_boot_ns()`: nanoseconds since boot, suspend included.
    pub boot_ns: u64,
    /// `FLAG_*` bits.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LineageHeader>() == 48);

/// Step 1 of an exec: what the caller asked to run.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecArgs {
    pub header: LineageHeader,
    /// The path as passed to execve, NUL terminated (cut at [`FILENAME_LEN`]).
    pub filename: [u8; FILENAME_LEN],
    /// The arguments, each NUL terminated, back to back; only the first `argv_len`
    /// bytes count. [`ARG_CHUNK`] of slack lets the kernel write a whole chunk at any
    /// offset below [`ARGV_BYTES`] without a variable-size bound the verifier dislikes.
    pub argv: [u8; ARGV_BYTES + ARG_CHUNK],
    /// Bytes of `argv` that hold arguments.
    pub argv_len: u32,
    /// Arguments captured.
    pub argc: u32,
}
const _: () = assert!(core::mem::size_of::<ExecArgs>() == 48 + 256 + 1280 + 8);

/// Step 2 of an exec: it succeeded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecDone {
    pub header: LineageHeader,
    /// `comm` after the exec (the new program's name), NUL padded.
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<ExecDone>() == 64);

/// Slot 0 of `NHI_LINEAGE_CFG`, written by userspace before the programs attach.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineageConfig {
    /// Arguments captured per exec, at most [`ARGV_MAX_ARGS`].
    pub argv_max_args: u32,
    /// Bytes of arguments captured per exec, at most [`ARGV_BYTES`].
    pub argv_max_bytes: u32,
    /// Offset of `child_pid` in the `sched_process_fork` record, read by userspace
    /// from tracefs: it moved between kernel versions (6.x made the comms `__data_loc`).
    pub fork_child_pid_offset: u32,
    /// Non-zero once userspace wrote the slot; the programs do nothing before.
    pub ready: u32,
}
const _: () = assert!(core::mem::size_of::<LineageConfig>() == 16);
