//! Process lineage for intercepted cgroups: exec, fork and exit, reported into the
//! `NHI_LINEAGE` ring buffer (record layouts in `nhi_agent_common::lineage`).
//!
//! Which tasks: the same decision as the connect programs ([`classify`]): the task's
//! cgroup, or its deepest classified ancestor, is intercepted for the task's uid; a
//! cgroup nobody classified yet is reported with `FLAG_UNCLASSIFIED` and userspace
//! decides. The agent's own process and cgroup (classified bypass) are never reported.
//!
//! ppid comes from fork tracking (`sched_process_fork`: the forking task's tgid and
//! the child's pid) rather than from `task->real_parent`, which would need BTF
//! offsets; userspace falls back to `/proc/PID/stat` for processes forked before the
//! agent started. A full ring buffer is never silent: each lost record is counted in
//! `NHI_LINEAGE_DROPS` and userspace journals the count.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_user,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_user_str},
    },
    macros::{map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use nhi_agent_common::lineage::{
    ExecArgs, ExecDone, LineageConfig, LineageHeader, ARGV_BYTES, ARGV_MAX_ARGS, ARG_CHUNK,
    EXIT_CODE_ENTRIES, FILENAME_LEN, FLAG_HAS_CODE, FLAG_TRUNCATED, KIND_EXEC_ARGS, KIND_EXEC_DONE,
    KIND_EXIT, KIND_FORK, RING_BYTES,
};

use crate::programs::{agent_config, classify};

// Not pinned: lineage is reported to the agent that runs; a dead agent has nobody to
// report to, and a restarted one starts with fresh maps.
#[map(name = "NHI_LINEAGE")]
static NHI_LINEAGE: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map(name = "NHI_LINEAGE_DROPS")]
static NHI_LINEAGE_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "NHI_LINEAGE_CFG")]
static NHI_LINEAGE_CFG: Array<LineageConfig> = Array::with_max_entries(1, 0);

#[map(name = "NHI_EXIT_CODES")]
static NHI_EXIT_CODES: LruHashMap<u32, u32> = LruHashMap::with_max_entries(EXIT_CODE_ENTRIES, 0);

// Offsets in the syscall tracepoint records: 8 bytes of common fields, the syscall
// number, then the arguments as 8-byte slots. Stable across kernel versions.
const EXECVE_FILENAME: usize = 16;
const EXECVE_ARGV: usize = 24;
const EXECVEAT_FILENAME: usize = 24;
const EXECVEAT_ARGV: usize = 32;
const EXIT_GROUP_CODE: usize = 16;
// sched_process_exec: `__data_loc filename` at 8, then pid and old_pid.
const EXEC_OLD_PID: usize = 16;

#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn nhi_enter_execve(ctx: TracePointContext) -> u32 {
    let _ = try_enter_exec(&ctx, EXECVE_FILENAME, EXECVE_ARGV);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn nhi_enter_execveat(ctx: TracePointContext) -> u32 {
    let _ = try_enter_exec(&ctx, EXECVEAT_FILENAME, EXECVEAT_ARGV);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn nhi_process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_process_exec(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn nhi_process_fork(ctx: TracePointContext) -> u32 {
    let _ = try_process_fork(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn nhi_process_exit(_ctx: TracePointContext) -> u32 {
    let _ = try_process_exit();
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_exit_group")]
pub fn nhi_enter_exit_group(ctx: TracePointContext) -> u32 {
    let _ = try_exit_group(&ctx);
    0
}

type Outcome = Result<(), ()>;

#[inline(always)]
fn lineage_config() -> Result<&'static LineageConfig, ()> {
    let cfg = NHI_LINEAGE_CFG.get(0).ok_or(())?;
    if cfg.ready == 0 {
        return Err(());
    }
    Ok(cfg)
}

/// The header for the current task, or `Err` when the task is not reported.
#[inline(always)]
fn header(kind: u32) -> Result<LineageHeader, ()> {
    let agent = agent_config()?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == agent.agent_tgid {
        return Err(());
    }
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let flags = classify(cgroup_id, uid_gid as u32)?;
    Ok(LineageHeader {
        kind,
        tid: pid_tgid as u32,
        tgid,
        aux: 0,
        uid_gid,
        cgroup_id,
        // SAFETY: helper without arguments.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        // The connect programs' flag and ours share the value 1 (`FLAG_UNCLASSIFIED`).
        flags,
        _pad: 0,
    })
}

#[inline(always)]
fn count_drop() {
    if let Some(counter) = NHI_LINEAGE_DROPS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, only touched by this CPU with preemption disabled.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn emit_header(h: LineageHeader) -> Outcome {
    match NHI_LINEAGE.reserve::<LineageHeader>(0) {
        Some(mut entry) => {
            entry.write(h);
            entry.submit(0);
            Ok(())
        }
        None => {
            count_drop();
            Err(())
        }
    }
}

fn try_enter_exec(ctx: &TracePointContext, filename_at: usize, argv_at: usize) -> Outcome {
    let cfg = lineage_config()?;
    let mut h = header(KIND_EXEC_ARGS)?;
    // SAFETY: reads of the tracepoint record at offsets its format declares.
    let filename: *const u8 = unsafe { ctx.read_at(filename_at) }.map_err(|_| ())?;
    let argv: *const *const u8 = unsafe { ctx.read_at(argv_at) }.map_err(|_| ())?;

    let Some(mut entry) = NHI_LINEAGE.reserve::<ExecArgs>(0) else {
        count_drop();
        return Err(());
    };
    let rec = entry.as_mut_ptr();
    let max_args = if cfg.argv_max_args < ARGV_MAX_ARGS {
        cfg.argv_max_args
    } else {
        ARGV_MAX_ARGS
    };
    let max_bytes = if (cfg.argv_max_bytes as usize) < ARGV_BYTES {
        cfg.argv_max_bytes as usize
    } else {
        ARGV_BYTES
    };
    // SAFETY: `rec` points at the reserved record, valid for writes of its size; every
    // helper write stays inside the field it names (sizes are the field sizes, offsets
    // into `argv` are masked below ARGV_BYTES and the field has ARG_CHUNK of slack).
    unsafe {
        let name = (*rec).filename.as_mut_ptr();
        if bpf_probe_read_user_str(name.cast(), FILENAME_LEN as u32, filename.cast()) < 0 {
            *name = 0;
        }
        let buf = (*rec).argv.as_mut_ptr();
        let mut off: usize = 0;
        let mut argc: u32 = 0;
        for i in 0..ARGV_MAX_ARGS {
            let arg: *const u8 = match bpf_probe_read_user(argv.add(i as usize)) {
                Ok(p) => p,
                Err(_) => break,
            };
            if arg.is_null() {
                break;
            }
            if i >= max_args || off >= max_bytes {
                h.flags |= FLAG_TRUNCATED;
                break;
            }
            let at = off & (ARGV_BYTES - 1);
            let n = bpf_probe_read_user_str(buf.add(at).cast(), ARG_CHUNK as u32, arg.cast());
            if n <= 0 {
                break;
            }
            if n as usize >= ARG_CHUNK {
                h.flags |= FLAG_TRUNCATED;
            }
            off += n as usize & (ARG_CHUNK * 2 - 1);
            argc += 1;
        }
        if off > max_bytes {
            h.flags |= FLAG_TRUNCATED;
            off = max_bytes;
        }
        (*rec).argv_len = off as u32;
        (*rec).argc = argc;
        (*rec).header = h;
    }
    entry.submit(0);
    Ok(())
}

fn try_process_exec(ctx: &TracePointContext) -> Outcome {
    lineage_config()?;
    let mut h = header(KIND_EXEC_DONE)?;
    // SAFETY: read of the tracepoint record at the offset its format declares.
    let old_pid: i32 = unsafe { ctx.read_at(EXEC_OLD_PID) }.map_err(|_| ())?;
    h.aux = old_pid as u32;
    let Some(mut entry) = NHI_LINEAGE.reserve::<ExecDone>(0) else {
        count_drop();
        return Err(());
    };
    entry.write(ExecDone {
        header: h,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(0);
    Ok(())
}

fn try_process_fork(ctx: &TracePointContext) -> Outcome {
    let cfg = lineage_config()?;
    let mut h = header(KIND_FORK)?;
    let offset = cfg.fork_child_pid_offset as usize;
    if offset == 0 || offset > 64 {
        return Err(());
    }
    // SAFETY: read of the tracepoint record at the offset userspace found in its format.
    let child: i32 = unsafe { ctx.read_at(offset) }.map_err(|_| ())?;
    h.aux = child as u32;
    emit_header(h)
}

fn try_process_exit() -> Outcome {
    lineage_config()?;
    let mut h = header(KIND_EXIT)?;
    // Threads end too; only the leader's end is the process's.
    if h.tid != h.tgid {
        return Err(());
    }
    // SAFETY: the value is copied out before the entry is removed.
    if let Some(code) = unsafe { NHI_EXIT_CODES.get(&h.tgid) } {
        h.aux = *code;
        h.flags |= FLAG_HAS_CODE;
        let _ = NHI_EXIT_CODES.remove(&h.tgid);
    }
    emit_header(h)
}

fn try_exit_group(ctx: &TracePointContext) -> Outcome {
    lineage_config()?;
    let h = header(KIND_EXIT)?;
    // SAFETY: read of the tracepoint record at the offset its format declares.
    let code: u64 = unsafe { ctx.read_at(EXIT_GROUP_CODE) }.map_err(|_| ())?;
    // exit_group keeps the low 8 bits, as wait(2) reports them.
    NHI_EXIT_CODES
        .insert(&h.tgid, &((code & 0xff) as u32), 0)
        .map_err(|_| ())
}
