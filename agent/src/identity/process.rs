//! Process details from /proc, read with a guard against pid reuse.
//!
//! A pid names a process only while it lives: by the time the proxy looks it up,
//! the process that connected may have exited and its pid been given to another.
//! Every file is read through one open directory of `/proc/PID` ([`ProcDir`]): the
//! directory stays bound to the process it was opened for (a later process given the
//! same pid is another directory), so reads through it fail once that process is gone
//! instead of describing a newcomer. The start time read through it is compared with
//! the connection time: a process that started later cannot have connected.
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;

use serde::Serialize;

use super::{CgroupFs, IdentityError};

/// What /proc says about a process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessInfo {
    /// The process id (thread group id).
    pub pid: u32,
    /// When the process started, in clock ticks since boot (/proc/PID/stat field
    /// 22); with the pid, it identifies the process uniquely.
    pub start_time: u64,
    /// The executable's path (the /proc/PID/exe link); `None` when the kernel does
    /// not show it (zombies, kernel threads). It ends in " (deleted)" when the
    /// file was removed or replaced after the process started.
    pub exe: Option<String>,
    /// The command line, one element per argument; empty for zombies and kernel
    /// threads. Processes can rewrite it, so it is a hint, not a proof.
    pub cmdline: Vec<String>,
    /// The command name (at most 15 bytes, set from the executable's file name or
    /// by the process itself).
    pub comm: String,
    /// The real user id, the one `bpf_get_current_uid_gid()` reports to the eBPF
    /// program, so that userspace and kernel filters agree.
    pub uid: u32,
    /// The real group id.
    pub gid: u32,
    /// The cgroup2 path, relative to the mount; `None` if unavailable.
    pub cgroup: Option<String>,
}

/// Reads /proc/PID with a guard against pid reuse (see the module comment): exe,
/// cmdline, status and cgroup, then the start time again (the cgroup file is read by
/// path). If the process is gone meanwhile, returns `ProcessGone`; if the start time
/// changed, `PidReused`.
///
/// `not_after` is the connection time as CLOCK_BOOTTIME ticks (see
/// [`boottime_ticks`], [`boottime_ns_to_ticks`]): a process that started later
/// cannot have made the connection, so that is `PidReused` too.
pub fn process_info(pid: u32, not_after: Option<u64>) -> Result<ProcessInfo, IdentityError> {
    let dir = ProcDir::open(pid)?;
    let id = dir.identity(not_after)?;
    let status = String::from_utf8_lossy(&dir.read("status")?).into_owned();
    let (uid, gid) = parse_status_ids(&status).ok_or_else(|| IdentityError::Malformed {
        path: proc_path(pid, "status"),
        reason: "no Uid: or Gid: line".to_owned(),
    })?;
    let cgroup = CgroupFs::cgroup_of_pid(pid);

    let (_, start_again) = dir.stat()?;
    if start_again != id.start_time {
        return Err(IdentityError::PidReused { pid });
    }
    Ok(ProcessInfo {
        pid,
        start_time: id.start_time,
        exe: id.exe,
        cmdline: id.cmdline,
        comm: id.comm,
        uid,
        gid,
        cgroup,
    })
}

/// What names the process behind a connection: start time, executable, command line,
/// comm and pid namespace, with the same pid-reuse guard as [`process_info`] (read
/// through one directory of the process, its start time not later than `not_after`).
/// It skips `status` and `cgroup`: the kernel already reported the caller's uid, gid
/// and cgroup, and on the connection path every read counts (about ten syscalls).
pub fn process_identity(
    pid: u32,
    not_after: Option<u64>,
) -> Result<ProcessIdentity, IdentityError> {
    let dir = ProcDir::open(pid)?;
    let mut id = dir.identity(not_after)?;
    id.ns_pid = dir.ns_pid();
    Ok(id)
}

/// The part of [`ProcessInfo`] that [`process_identity`] reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    pub comm: String,
    /// Its pid in its own (innermost) pid namespace, when that is not the agent's
    /// (see [`ns_pid`]).
    #[serde(skip)]
    pub ns_pid: Option<u32>,
}

/// The current CLOCK_BOOTTIME in clock ticks, comparable with
/// [`ProcessInfo::start_time`]. Take it when the connection is accepted.
pub fn boottime_ticks() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // CLOCK_BOOTTIME exists on every kernel this agent can run on (2.6.39+),
        // so this cannot happen; answering "the end of time" only disables the
        // not_after check instead of failing every lookup.
        return u64::MAX;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    boottime_ns_to_ticks(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// Converts CLOCK_BOOTTIME nanoseconds (what `bpf_ktime_get_boot_ns()` returns)
/// to clock ticks, rounding down as the kernel does for process start times.
pub fn boottime_ns_to_ticks(ns: u64) -> u64 {
    let ticks = u128::from(ns) * u128::from(clock_ticks_per_second()) / 1_000_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// sysconf(_SC_CLK_TCK), the unit of /proc's times (100 on every Linux so far).
fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // USER_HZ is 100 on Linux; fall back to it if sysconf fails.
        u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
    })
}

/// The user name for a uid from the passwd database, `None` if unknown.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// Process `pid`'s pid in its own (innermost) pid namespace, the last `NSpid` of
/// `/proc/PID/status`; `None` when it is the same as `pid` (a host process) or
/// unreadable.
pub fn ns_pid(pid: u32) -> Option<u32> {
    ProcDir::open(pid).ok()?.ns_pid()
}

fn parse_ns_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

/// An open `/proc/PID` directory: every file read through it belongs to the process
/// it was opened for, or the read fails (see the module comment).
struct ProcDir {
    pid: u32,
    fd: OwnedFd,
}

impl ProcDir {
    fn open(pid: u32) -> Result<ProcDir, IdentityError> {
        use nix::fcntl::OFlag;
        let path = PathBuf::from(format!("/proc/{pid}"));
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        match nix::fcntl::open(&path, flags, nix::sys::stat::Mode::empty()) {
            // SAFETY: open(2) returned a new descriptor that nothing else owns.
            Ok(fd) => Ok(ProcDir {
                pid,
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            }),
            Err(e) => Err(Self::error(pid, path, e.into())),
        }
    }

    /// Maps "no such process" to `ProcessGone`.
    fn error(pid: u32, path: PathBuf, source: std::io::Error) -> IdentityError {
        // A process that exits while we read its files makes reads fail with ENOENT
        // (directory gone) or ESRCH (task being torn down).
        if source.kind() == ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH) {
            IdentityError::ProcessGone { pid }
        } else {
            IdentityError::Io { path, source }
        }
    }

    /// Reads a whole file of the directory.
    ///
    /// /proc files report a size of 0, so `fs::read` would stat the file, ask for its
    /// position and then grow its buffer from 32 bytes, a read per doubling; this is
    /// openat, reads into a buffer with room for the whole file in the common case
    /// (stat, cmdline), and close.
    fn read(&self, name: &str) -> Result<Vec<u8>, IdentityError> {
        use nix::fcntl::OFlag;
        let read = || -> nix::Result<Vec<u8>> {
            let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
            let raw = nix::fcntl::openat(
                Some(self.fd.as_raw_fd()),
                name,
                flags,
                nix::sys::stat::Mode::empty(),
            )?;
            // SAFETY: openat(2) returned a new descriptor that nothing else owns.
            let file = unsafe { OwnedFd::from_raw_fd(raw) };
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            loop {
                if len == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
                match nix::unistd::read(file.as_raw_fd(), &mut buf[len..]) {
                    Ok(0) => break,
                    Ok(n) => len += n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(len);
            Ok(buf)
        };
        read().map_err(|e| Self::error(self.pid, proc_path(self.pid, name), e.into()))
    }

    /// The target of a symbolic link of the directory (`exe`, `ns/pid`).
    fn read_link(&self, name: &str) -> Result<std::ffi::OsString, IdentityError> {
        nix::fcntl::readlinkat(Some(self.fd.as_raw_fd()), name)
            .map_err(|e| Self::error(self.pid, proc_path(self.pid, name), e.into()))
    }

    /// (comm, start time in ticks) from `stat`.
    fn stat(&self) -> Result<(String, u64), IdentityError> {
        let bytes = self.read("stat")?;
        parse_stat(&bytes).ok_or_else(|| IdentityError::Malformed {
            path: proc_path(self.pid, "stat"),
            reason: "unexpected format".to_owned(),
        })
    }

    /// Start time, comm, exe and cmdline (`ns_pid` left out: [`process_info`] does not
    /// need it, [`process_identity`] adds it).
    fn identity(&self, not_after: Option<u64>) -> Result<ProcessIdentity, IdentityError> {
        let (comm, start_time) = self.stat()?;
        if not_after.is_some_and(|t| start_time > t) {
            return Err(IdentityError::PidReused { pid: self.pid });
        }
        // A missing exe link is normal (zombies, kernel threads) and so is a refusal
        // (another user's process under a restricted ptrace policy): leave it out.
        let exe = self
            .read_link("exe")
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let cmdline = parse_cmdline(&self.read("cmdline")?);
        Ok(ProcessIdentity {
            pid: self.pid,
            start_time,
            exe,
            cmdline,
            comm,
            ns_pid: None,
        })
    }

    /// See [`ns_pid`].
    fn ns_pid(&self) -> Option<u32> {
        // Most callers live in the agent's own pid namespace: one readlink says so,
        // and `status` (the largest file of a process) is only read for the others.
        static OURS: OnceLock<Option<std::ffi::OsString>> = OnceLock::new();
        let ours = OURS.get_or_init(|| {
            std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .map(PathBuf::into_os_string)
        });
        if let Some(ours) = ours {
            if self.read_link("ns/pid").ok().as_ref() == Some(ours) {
                return None;
            }
        }
        let status = self.read("status").ok()?;
        parse_ns_pid(&String::from_utf8_lossy(&status)).filter(|&inner| inner != self.pid)
    }
}

/// Parses /proc/PID/stat: "PID (COMM) STATE PPID ... STARTTIME ...". COMM can
/// contain anything, spaces and ')' included, but not be followed by the rest of
/// the line, so the fields are counted from the LAST ')'.
fn parse_stat(bytes: &[u8]) -> Option<(String, u64)> {
    let open = bytes.iter().position(|&b| b == b'(')?;
    let close = bytes.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let comm = String::from_utf8_lossy(&bytes[open + 1..close]).into_owned();
    let rest = std::str::from_utf8(&bytes[close + 1..]).ok()?;
    // After ')' come field 3 (state) onwards, so field 22 is the 20th.
    let start_time = rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()?;
    Some((comm, start_time))
}

/// Splits /proc/PID/cmdline on NULs (one trailing NUL ends the last argument).
fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// The real uid and gid from /proc/PID/status ("Uid:\treal\teffective\tsaved\tfs").
fn parse_status_ids(status: &str) -> Option<(u32, u32)> {
    let first = |key: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_ascii_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((first("Uid:")?, first("Gid:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_pid_is_the_last_nspid() {
        let status = "Name:\tpsql\nTgid:\t4242\nNSpid:\t4242\t17\nNSpgid:\t4242\t17\n";
        assert_eq!(parse_ns_pid(status), Some(17));
        assert_eq!(parse_ns_pid("NSpid:\t99\n"), Some(99));
        assert_eq!(parse_ns_pid("Name:\tx\n"), None);
        assert_eq!(ns_pid(std::process::id()), None, "a host process has none");
    }
    use std::os::unix::ffi::OsStrExt;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    #[test]
    fn parses_stat_with_hostile_comm() {
        let line = b"4242 (x) R 1 (y) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 0\n";
        assert_eq!(parse_stat(line), Some(("x) R 1 (y".to_owned(), 987654)));
        assert_eq!(parse_stat(b"1 (init) S 0"), None);
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn parses_cmdline_and_status() {
        assert_eq!(parse_cmdline(b"sleep\x0030\x00"), vec!["sleep", "30"]);
        assert_eq!(parse_cmdline(b"a\x00\x00b\x00"), vec!["a", "", "b"]);
        assert_eq!(parse_cmdline(b""), Vec::<String>::new());
        assert_eq!(
            parse_status_ids("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t100\t0\t0\t0\n"),
            Some((1000, 100))
        );
        assert_eq!(parse_status_ids("Name:\tx\n"), None);
    }

    #[test]
    fn boottime_ticks_are_comparable_with_start_times() {
        let before = boottime_ticks();
        let own = process_info(std::process::id(), None).expect("our own process");
        assert!(own.start_time <= before, "{} > {before}", own.start_time);
        assert_eq!(
            boottime_ns_to_ticks(1_000_000_000),
            clock_ticks_per_second()
        );
        assert!(boottime_ticks() >= before);
    }

    #[test]
    fn reads_our_own_process() {
        let info = process_info(std::process::id(), Some(boottime_ticks())).expect("own info");
        assert_eq!(info.pid, std::process::id());
        let exe = std::env::current_exe().expect("current_exe");
        assert_eq!(info.exe.as_deref().map(PathBuf::from), Some(exe.clone()));
        let args: Vec<String> = std::env::args().collect();
        assert_eq!(info.cmdline, args);
        assert_eq!(info.uid, nix::unistd::getuid().as_raw());
        assert_eq!(info.gid, nix::unistd::getgid().as_raw());
        assert_eq!(info.cgroup, CgroupFs::cgroup_of_pid(std::process::id()));
        // The main thread's comm is the executable's name cut to 15 bytes.
        let file_name = exe.file_name().expect("file name").as_bytes();
        assert!(file_name.starts_with(info.comm.as_bytes()), "{}", info.comm);
        assert!(!info.comm.is_empty());
        assert!(serde_json::to_string(&info)
            .expect("serialize")
            .contains("\"start_time\""));
    }

    #[test]
    fn a_process_younger_than_the_connection_is_a_reused_pid() {
        let info = process_info(std::process::id(), None).expect("own info");
        assert!(info.start_time > 0);
        match process_info(std::process::id(), Some(info.start_time - 1)) {
            Err(IdentityError::PidReused { pid }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected PidReused, got {other:?}"),
        }
        // Started in the same tick as the connection is fine.
        assert!(process_info(std::process::id(), Some(info.start_time)).is_ok());
    }

    #[test]
    fn a_reaped_process_is_gone() {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        match process_info(pid, None) {
            Err(IdentityError::ProcessGone { pid: gone }) => assert_eq!(gone, pid),
            other => panic!("expected ProcessGone, got {other:?}"),
        }
    }

    #[test]
    fn a_directory_opened_for_a_process_reads_nothing_once_it_is_reaped() {
        // The guard against pid reuse: whatever later gets the pid, reads through the
        // directory opened for this process fail instead of describing it.
        let child = Reaped(
            Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("spawn sleep"),
        );
        let pid = child.0.id();
        let dir = ProcDir::open(pid).expect("open /proc/PID");
        let alive = exec_done(|| dir.identity(None).expect("identity while alive"));
        assert_eq!(alive.cmdline, ["sleep", "30"]);
        drop(child);
        match dir.identity(None) {
            Err(IdentityError::ProcessGone { pid: gone }) => assert_eq!(gone, pid),
            other => panic!("expected ProcessGone, got {other:?}"),
        }
    }

    #[test]
    fn a_command_line_longer_than_the_first_buffer_is_read_whole() {
        // `sleep` sums its operands: ten thousand zeros are a valid one.
        let long = "0".repeat(10_000);
        let child = Reaped(
            Command::new("sleep")
                .arg("30")
                .arg(&long)
                .spawn()
                .expect("spawn sleep"),
        );
        let id = exec_done(|| process_identity(child.0.id(), None).expect("reading the child"));
        assert_eq!(id.cmdline, ["sleep", "30", long.as_str()]);
    }

    /// What `read` answers once the child it reads has exec'd `sleep` (until then its
    /// command line is the test's own).
    fn exec_done(read: impl Fn() -> ProcessIdentity) -> ProcessIdentity {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let id = read();
            if id.cmdline.first().map(String::as_str) == Some("sleep") {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "the child never ran sleep: {id:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills and reaps a child on drop, so a failing test leaves nothing behind.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn comm_with_spaces_and_parentheses() {
        // The kernel sets comm from the executed file's name, so running `sleep`
        // through a symlink with a hostile name gives a hostile comm.
        let dir = tempfile::tempdir().expect("tempdir");
        let name = "x) R 1 (y";
        let link = dir.path().join(name);
        let sleep = std::fs::canonicalize("/bin/sleep").expect("sleep exists");
        std::os::unix::fs::symlink(&sleep, &link).expect("symlink");

        let before = boottime_ticks();
        let child = Reaped(Command::new(&link).arg("30").spawn().expect("spawn sleep"));
        let pid = child.0.id();
        // Wait until the child has exec'd: before, it still has our comm, and the
        // kernel renames it before it sets up the new command line.
        let deadline = Instant::now() + Duration::from_secs(5);
        let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
        let cmdline = || std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        while comm().as_deref().map(str::trim_end) != Some(name) || cmdline().is_empty() {
            assert!(Instant::now() < deadline, "child never exec'd");
            std::thread::sleep(Duration::from_millis(10));
        }
        let after = boottime_ticks();

        let info = process_info(pid, Some(after)).expect("child info");
        assert_eq!(info.comm, name);
        assert!(
            (before..=after).contains(&info.start_time),
            "start time {} outside [{before}, {after}]: field 22 misparsed",
            info.start_time
        );
        assert_eq!(info.exe.as_deref().map(PathBuf::from), Some(sleep));
        assert_eq!(
            info.cmdline,
            vec![link.to_string_lossy().into_owned(), "30".to_owned()]
        );
    }

    #[test]
    fn user_names() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(3_999_999_999), None);
    }
}
