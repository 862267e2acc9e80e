//! What the running kernel offers, probed before anything is loaded.
//!
//! Each probe loads a two- or three-instruction program (or creates a one-page map) with
//! exactly the program type, attach type or helper the real object needs, and reads only
//! whether the kernel accepted it. So a kernel that lacks something gets one sentence
//! naming the feature and the Linux release that has it, never a verifier dump from the
//! real programs. `nhi-agent status` prints the same report.
//!
//! Required features refuse the start; lineage features only turn lineage off (it is an
//! addition to the audit, not a condition of it). The release numbers are the mainline
//! releases that introduced each feature; distribution kernels may backport earlier.
use std::{
    fs,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

use serde::Serialize;

/// What happens without a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// The agent refuses to start.
    Required,
    /// Process lineage is turned off; interception goes on.
    Lineage,
}

/// One probe's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum Status {
    Present,
    /// The kernel said no (the detail says how).
    Missing(String),
    /// The probe could not tell (no privileges, say); the start goes on and the real
    /// load reports what fails.
    Unknown(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub name: &'static str,
    /// The first mainline release with it, e.g. "5.8".
    pub since: &'static str,
    pub need: Need,
    pub status: Status,
}

/// Every probe's answer, with the kernel release they were asked of.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: String,
    pub features: Vec<Feature>,
}

/// The oldest mainline release with everything [`Need::Required`] (and lineage).
pub const MINIMUM_KERNEL: &str = "5.15";

impl Report {
    /// Probes the running kernel.
    pub fn probe() -> Report {
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        let mut features = Vec::new();
        let mut add = |name, since, need, status| {
            features.push(Feature {
                name,
                since,
                need,
                status,
            })
        };
        use Need::*;
        let ret1 = [mov_imm(0, 1), exit()];
        add(
            "cgroup connect4 hook (BPF_CGROUP_INET4_CONNECT)",
            "4.17",
            Required,
            prog(PROG_CGROUP_SOCK_ADDR, ATTACH_INET4_CONNECT, &ret1),
        );
        add(
            "cgroup connect6 hook (BPF_CGROUP_INET6_CONNECT)",
            "4.17",
            Required,
            prog(PROG_CGROUP_SOCK_ADDR, ATTACH_INET6_CONNECT, &ret1),
        );
        add(
            "cgroup getpeername4 hook (BPF_CGROUP_INET4_GETPEERNAME)",
            "5.8",
            Required,
            prog(PROG_CGROUP_SOCK_ADDR, ATTACH_INET4_GETPEERNAME, &ret1),
        );
        add(
            "cgroup getpeername6 hook (BPF_CGROUP_INET6_GETPEERNAME)",
            "5.8",
            Required,
            prog(PROG_CGROUP_SOCK_ADDR, ATTACH_INET6_GETPEERNAME, &ret1),
        );
        add(
            "sock_ops programs (BPF_PROG_TYPE_SOCK_OPS)",
            "4.13",
            Required,
            prog(PROG_SOCK_OPS, 0, &ret1),
        );
        // r1 holds the context at entry, which is what the helper takes.
        add(
            "bpf_get_netns_cookie in cgroup connect programs",
            "5.7",
            Required,
            prog(
                PROG_CGROUP_SOCK_ADDR,
                ATTACH_INET4_CONNECT,
                &[call(HELPER_GET_NETNS_COOKIE), mov_imm(0, 1), exit()],
            ),
        );
        // Containers: connection records are keyed by namespace in sock_ops, and the
        // first connection in a namespace not served yet is held by an egress program
        // that drops with congestion notification (return value 2).
        add(
            "bpf_get_netns_cookie in sock_ops programs",
            "5.15",
            Required,
            prog(
                PROG_SOCK_OPS,
                0,
                &[call(HELPER_GET_NETNS_COOKIE), mov_imm(0, 1), exit()],
            ),
        );
        add(
            "cgroup skb egress programs returning drop with congestion notification",
            "5.3",
            Required,
            prog(
                PROG_CGROUP_SKB,
                ATTACH_INET_EGRESS,
                &[mov_imm(0, 2), exit()],
            ),
        );
        add(
            "bpf_get_current_ancestor_cgroup_id in cgroup connect programs",
            "5.7",
            Required,
            prog(
                PROG_CGROUP_SOCK_ADDR,
                ATTACH_INET4_CONNECT,
                &[
                    mov_imm(1, 1),
                    call(HELPER_GET_CURRENT_ANCESTOR_CGROUP_ID),
                    mov_imm(0, 1),
                    exit(),
                ],
            ),
        );
        // The lineage ring buffer is created with the other maps when the object loads.
        add(
            "ring buffer maps (BPF_MAP_TYPE_RINGBUF)",
            "5.8",
            Required,
            map(MAP_RINGBUF, 0, 0, 4096),
        );
        add(
            "bpf_ktime_get_boot_ns in tracepoint programs",
            "5.8",
            Lineage,
            prog(
                PROG_TRACEPOINT,
                0,
                &[call(HELPER_KTIME_GET_BOOT_NS), mov_imm(0, 0), exit()],
            ),
        );
        add(
            "bpf_probe_read_user_str in tracepoint programs",
            "5.5",
            Lineage,
            prog(
                PROG_TRACEPOINT,
                0,
                &[
                    mov_reg(1, 10),
                    add_imm(1, -8),
                    mov_imm(2, 8),
                    mov_imm(3, 0),
                    call(HELPER_PROBE_READ_USER_STR),
                    mov_imm(0, 0),
                    exit(),
                ],
            ),
        );
        add(
            "tracepoint sched/sched_process_fork with a child_pid field",
            "4.13",
            Lineage,
            tracepoint_field("sched/sched_process_fork", Some("child_pid")),
        );
        add(
            "syscall tracepoints (syscalls/sys_enter_execve, CONFIG_FTRACE_SYSCALLS)",
            "4.13",
            Lineage,
            tracepoint_field("syscalls/sys_enter_execve", None),
        );
        add(
            "perf_event_open of tracepoints (how lineage attaches)",
            "4.13",
            Lineage,
            perf_events_allowed(),
        );
        Report { kernel, features }
    }

    /// Why the agent cannot run on this kernel: every missing required feature, named
    /// with the release that has it. None when nothing required is known to be missing.
    pub fn refusal(&self) -> Option<String> {
        let missing = self.missing(Need::Required);
        if missing.is_empty() {
            return None;
        }
        Some(format!(
            "kernel {} lacks what nhi-agent needs: {}; nhi-agent needs Linux {MINIMUM_KERNEL} or newer \
             (`nhi-agent status` lists every probe)",
            self.kernel,
            missing.join("; ")
        ))
    }

    /// Why lineage cannot run here, when it cannot.
    pub fn lineage_unavailable(&self) -> Option<String> {
        let missing = self.missing(Need::Lineage);
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    fn missing(&self, need: Need) -> Vec<String> {
        self.features
            .iter()
            .filter(|f| f.need == need)
            .filter_map(|f| match &f.status {
                Status::Missing(why) => Some(format!(
                    "{} (Linux {} or newer; here: {why})",
                    f.name, f.since
                )),
                _ => None,
            })
            .collect()
    }
}

// Values from linux/bpf.h (UAPI: they never change).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const PROG_TRACEPOINT: u32 = 5;
const PROG_SOCK_OPS: u32 = 13;
const PROG_CGROUP_SKB: u32 = 8;
const ATTACH_INET_EGRESS: u32 = 1;
const PROG_CGROUP_SOCK_ADDR: u32 = 18;
const MAP_RINGBUF: u32 = 27;
const ATTACH_INET4_CONNECT: u32 = 10;
const ATTACH_INET6_CONNECT: u32 = 11;
const ATTACH_INET4_GETPEERNAME: u32 = 29;
const ATTACH_INET6_GETPEERNAME: u32 = 30;
const HELPER_PROBE_READ_USER_STR: i32 = 114;
const HELPER_GET_NETNS_COOKIE: i32 = 122;
const HELPER_GET_CURRENT_ANCESTOR_CGROUP_ID: i32 = 123;
const HELPER_KTIME_GET_BOOT_NS: i32 = 125;

/// One instruction, as `struct bpf_insn` lays it out (little-endian x86/arm64).
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst & 0xf | (src & 0xf) << 4) << 8
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}
fn mov_imm(dst: u8, imm: i32) -> u64 {
    insn(0xb7, dst, 0, 0, imm) // BPF_ALU64 | BPF_MOV | BPF_K
}
fn mov_reg(dst: u8, src: u8) -> u64 {
    insn(0xbf, dst, src, 0, 0) // BPF_ALU64 | BPF_MOV | BPF_X
}
fn add_imm(dst: u8, imm: i32) -> u64 {
    insn(0x07, dst, 0, 0, imm) // BPF_ALU64 | BPF_ADD | BPF_K
}
fn call(helper: i32) -> u64 {
    insn(0x85, 0, 0, 0, helper) // BPF_JMP | BPF_CALL
}
fn exit() -> u64 {
    insn(0x95, 0, 0, 0, 0) // BPF_JMP | BPF_EXIT
}

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD; the kernel zero-fills the
/// rest of its own (larger) union.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

fn prog(prog_type: u32, attach: u32, insns: &[u64]) -> Status {
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: *b"nhi_probe\0\0\0\0\0\0\0",
        prog_ifindex: 0,
        expected_attach_type: attach,
    };
    bpf(BPF_PROG_LOAD, &attr)
}

fn map(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> Status {
    let attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
    };
    bpf(BPF_MAP_CREATE, &attr)
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> Status {
    // SAFETY: `attr` is a live #[repr(C)] prefix of `union bpf_attr` whose pointers
    // (instructions, license) outlive the call; the size passed is its own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if fd >= 0 {
        // SAFETY: a successful BPF_PROG_LOAD/BPF_MAP_CREATE returns a new fd we own.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        return Status::Present;
    }
    classify(std::io::Error::last_os_error())
}

/// EPERM/EACCES without privileges says nothing about the kernel; anything else does.
fn classify(e: std::io::Error) -> Status {
    match e.raw_os_error() {
        Some(libc::EPERM) => Status::Unknown("not permitted (run as root)".into()),
        Some(libc::ENOSYS) => Status::Missing("no bpf() system call".into()),
        Some(libc::EINVAL) => Status::Missing("rejected as unknown (EINVAL)".into()),
        _ => Status::Missing(e.to_string()),
    }
}

/// Debian's and Ubuntu's kernels add `kernel.perf_event_paranoid = 3`: perf_event_open
/// only with CAP_SYS_ADMIN, which the systemd unit does not grant. Upstream kernels
/// stop at 2, where CAP_PERFMON suffices.
fn perf_events_allowed() -> Status {
    let paranoid = fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let sys_admin = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 21) != 0); // CAP_SYS_ADMIN
    perf_events_verdict(paranoid, sys_admin)
}

fn perf_events_verdict(paranoid: Option<i32>, sys_admin: bool) -> Status {
    match paranoid {
        Some(p) if p > 2 && !sys_admin => Status::Missing(format!(
            "kernel.perf_event_paranoid = {p} reserves perf_event_open to CAP_SYS_ADMIN \
             (a Debian/Ubuntu patch); `sysctl kernel.perf_event_paranoid=2` lets CAP_PERFMON do"
        )),
        _ => Status::Present,
    }
}

/// A tracepoint (and one of its fields) in tracefs's format file.
fn tracepoint_field(event: &str, field: Option<&str>) -> Status {
    let roots = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
    let Some(root) = roots.iter().find(|r| Path::new(r).join("events").is_dir()) else {
        return Status::Unknown(
            "tracefs is not mounted (the agent mounts it at /sys/kernel/tracing when it starts)"
                .into(),
        );
    };
    let path = Path::new(root).join("events").join(event).join("format");
    match fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Status::Missing(format!("no {}", path.display()))
        }
        Err(e) => Status::Unknown(format!("reading {}: {e}", path.display())),
        Ok(text) => match field {
            Some(f) if super::lineage::field_offset(&text, f).is_none() => {
                Status::Missing(format!("no field {f} in {}", path.display()))
            }
            _ => Status::Present,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(statuses: &[(Need, Status)]) -> Report {
        Report {
            kernel: "5.4.0-test".into(),
            features: statuses
                .iter()
                .enumerate()
                .map(|(i, (need, status))| Feature {
                    name: [
                        "cgroup getpeername4 hook",
                        "ring buffer maps",
                        "tracepoint x",
                    ][i],
                    since: "5.8",
                    need: *need,
                    status: status.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_missing_required_feature_refuses_naming_it_and_its_release() {
        let r = report(&[
            (
                Need::Required,
                Status::Missing("rejected as unknown (EINVAL)".into()),
            ),
            (Need::Required, Status::Present),
            (Need::Lineage, Status::Present),
        ]);
        let why = r.refusal().expect("refused");
        assert!(why.contains("kernel 5.4.0-test"), "{why}");
        assert!(
            why.contains("cgroup getpeername4 hook (Linux 5.8 or newer"),
            "{why}"
        );
        assert!(
            why.contains(&format!("needs Linux {MINIMUM_KERNEL} or newer")),
            "{why}"
        );
        assert!(!why.contains("ring buffer"), "{why}");
        assert_eq!(r.lineage_unavailable(), None);
    }

    #[test]
    fn lineage_features_and_unknowns_do_not_refuse() {
        let r = report(&[
            (
                Need::Required,
                Status::Unknown("not permitted (run as root)".into()),
            ),
            (Need::Required, Status::Present),
            (Need::Lineage, Status::Missing("no field child_pid".into())),
        ]);
        assert_eq!(r.refusal(), None);
        let why = r.lineage_unavailable().expect("lineage off");
        assert!(why.contains("tracepoint x (Linux 5.8 or newer; here: no field child_pid)"));
    }

    #[test]
    fn debians_paranoid_level_three_needs_sys_admin_for_lineage() {
        assert!(
            matches!(perf_events_verdict(Some(3), false), Status::Missing(m) if m.contains("perf_event_paranoid = 3"))
        );
        assert_eq!(perf_events_verdict(Some(3), true), Status::Present);
        assert_eq!(perf_events_verdict(Some(2), false), Status::Present);
        assert_eq!(perf_events_verdict(None, false), Status::Present);
    }

    #[test]
    fn instructions_are_encoded_as_struct_bpf_insn() {
        // r0 = 1; exit  ==  b7 00 00 00 01 00 00 00 / 95 00 ...
        assert_eq!(mov_imm(0, 1).to_le_bytes(), [0xb7, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(exit().to_le_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        // r1 = r10 (dst in the low nibble, src in the high one); r1 += -8
        assert_eq!(mov_reg(1, 10).to_le_bytes()[1], 0xa1);
        assert_eq!(
            add_imm(1, -8).to_le_bytes(),
            [0x07, 1, 0, 0, 0xf8, 0xff, 0xff, 0xff]
        );
        assert_eq!(call(122).to_le_bytes(), [0x85, 0, 0, 0, 122, 0, 0, 0]);
    }

    #[test]
    fn this_kernel_answers_every_probe() {
        // Whatever the privileges: every probe ends in an answer, none panics, and
        // without root nothing is claimed missing for want of permission.
        let r = Report::probe();
        assert_eq!(r.features.len(), 15);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            for f in r.features.iter().filter(|f| f.name.contains("hook")) {
                assert!(matches!(f.status, Status::Unknown(_)), "{f:?}");
            }
        } else {
            // The kernels the suite runs on (5.8 and newer) have everything required.
            assert_eq!(r.refusal(), None, "{r:#?}");
            // And the probes can say no: an unknown helper and an unknown attach type.
            let unknown_helper = [call(1_000_000), mov_imm(0, 1), exit()];
            let ret1 = [mov_imm(0, 1), exit()];
            assert!(matches!(
                prog(PROG_CGROUP_SOCK_ADDR, ATTACH_INET4_CONNECT, &unknown_helper),
                Status::Missing(_)
            ));
            assert!(matches!(
                prog(PROG_CGROUP_SOCK_ADDR, 9_999, &ret1),
                Status::Missing(_)
            ));
        }
    }
}
