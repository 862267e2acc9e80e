//! The process table: what the agent knows about the processes of intercepted cgroups
//! (pid -> parent, the programs it exec'd), built from decoded ring buffer records.
//! Pure apart from the parent lookup the caller passes in (for processes forked before
//! the agent started, whose fork it never saw).
use std::collections::{HashMap, VecDeque};

use super::event::Record;

/// Processes kept after they exited (their children may still need them for chains).
const MAX_EXITED: usize = 4096;
/// Fork records (pid -> parent) kept; threads create them too and never exit as
/// processes, so the map is bounded, oldest first out.
const MAX_PARENTS: usize = 65536;
/// Pending exec attempts kept (failed attempts are never confirmed).
const MAX_PENDING: usize = 4096;
/// Execs remembered per process (a shell that `exec`s keeps its pid).
const MAX_EXECS: usize = 4;
/// Deepest chain built.
const MAX_CHAIN: usize = 32;

/// One successful exec, as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecInfo {
    pub pid: u32,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// The path passed to execve (the program's name when the arguments were lost).
    pub exe: String,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    /// CLOCK_BOOTTIME nanoseconds of the exec.
    pub start_boot_ns: u64,
    /// The parent's latest exe, when the table knows it.
    pub parent_exe: Option<String>,
    /// The cgroup was unclassified when the kernel reported it.
    pub unclassified: bool,
}

/// What applying a record changed that is worth journaling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Exec(ExecInfo),
    Exit {
        pid: u32,
        code: Option<i32>,
        uid: u32,
        cgroup_id: u64,
        exe: Option<String>,
        boot_ns: u64,
        /// The cgroup was unclassified when the kernel reported it.
        unclassified: bool,
    },
}

/// One step of a lineage chain (root first).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainLink {
    pub pid: u32,
    pub exe: String,
    pub argv: Vec<String>,
}

#[derive(Debug, Clone)]
struct Pending {
    filename: String,
    argv: Vec<String>,
    truncated: bool,
}

#[derive(Debug, Clone, Default)]
struct Proc {
    ppid: Option<u32>,
    execs: Vec<ExecInfo>,
    exited: bool,
}

/// pid -> what is known about the process.
#[derive(Debug, Default)]
pub struct ProcessTable {
    procs: HashMap<u32, Proc>,
    exited: VecDeque<u32>,
    parents: HashMap<u32, u32>,
    parent_order: VecDeque<u32>,
    pending: HashMap<u32, Pending>,
    pending_order: VecDeque<u32>,
}

impl ProcessTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Processes the table holds (alive or recently exited).
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// True when the table holds no process.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Applies one record. `parent_of` answers for processes whose fork was not seen
    /// (e.g. from `/proc/PID/stat`); it is asked only then.
    pub fn apply(
        &mut self,
        record: Record,
        parent_of: impl FnOnce(u32) -> Option<u32>,
    ) -> Option<Change> {
        match record {
            Record::Fork { header, child } => {
                // A new process under this pid: whatever an earlier process of the same
                // pid left is not its history.
                self.procs.insert(
                    child,
                    Proc {
                        ppid: Some(header.tgid),
                        ..Proc::default()
                    },
                );
                if self.parents.insert(child, header.tgid).is_none() {
                    self.parent_order.push_back(child);
                    if self.parent_order.len() > MAX_PARENTS {
                        if let Some(old) = self.parent_order.pop_front() {
                            self.parents.remove(&old);
                            // Threads are forks too and never exit as processes: an
                            // entry that never exec'd goes with its fork record.
                            if self.procs.get(&old).is_some_and(|p| p.execs.is_empty()) {
                                self.procs.remove(&old);
                            }
                        }
                    }
                }
                None
            }
            Record::ExecArgs {
                header,
                filename,
                argv,
                truncated,
            } => {
                // A later attempt by the same thread replaces an earlier (failed) one.
                if self
                    .pending
                    .insert(
                        header.tid,
                        Pending {
                            filename,
                            argv,
                            truncated,
                        },
                    )
                    .is_none()
                {
                    self.pending_order.push_back(header.tid);
                    if self.pending_order.len() > MAX_PENDING {
                        if let Some(old) = self.pending_order.pop_front() {
                            self.pending.remove(&old);
                        }
                    }
                }
                None
            }
            Record::ExecDone {
                header,
                old_tid,
                comm,
            } => {
                let pending = self
                    .pending
                    .remove(&old_tid)
                    .or_else(|| self.pending.remove(&header.tid));
                let pid = header.tgid;
                let ppid = self
                    .parents
                    .get(&pid)
                    .copied()
                    .or_else(|| self.procs.get(&pid).and_then(|p| p.ppid))
                    .or_else(|| parent_of(pid));
                let parent_exe = ppid.and_then(|pp| self.latest_exe(pp));
                let (exe, argv, argv_truncated) = match pending {
                    Some(p) => (p.filename, p.argv, p.truncated),
                    // The arguments were lost (ring buffer full): say so.
                    None => (comm, Vec::new(), true),
                };
                let info = ExecInfo {
                    pid,
                    ppid,
                    uid: header.uid,
                    gid: header.gid,
                    cgroup_id: header.cgroup_id,
                    exe,
                    argv,
                    argv_truncated,
                    start_boot_ns: header.boot_ns,
                    parent_exe,
                    unclassified: header.unclassified,
                };
                let proc = self.procs.entry(pid).or_default();
                proc.ppid = ppid;
                proc.exited = false;
                if proc.execs.len() == MAX_EXECS {
                    proc.execs.remove(0);
                }
                proc.execs.push(info.clone());
                Some(Change::Exec(info))
            }
            Record::Exit { header, code } => {
                let pid = header.tgid;
                self.pending.remove(&header.tid);
                let exe = self.latest_exe(pid);
                if let Some(proc) = self.procs.get_mut(&pid) {
                    if !proc.exited {
                        proc.exited = true;
                        self.exited.push_back(pid);
                    }
                }
                while self.exited.len() > MAX_EXITED {
                    if let Some(old) = self.exited.pop_front() {
                        if self.procs.get(&old).is_some_and(|p| p.exited) {
                            self.procs.remove(&old);
                        }
                    }
                }
                Some(Change::Exit {
                    pid,
                    code,
                    uid: header.uid,
                    cgroup_id: header.cgroup_id,
                    exe,
                    boot_ns: header.boot_ns,
                    unclassified: header.unclassified,
                })
            }
        }
    }

    /// Forgets the last exec of `pid` (its cgroup turned out not to be a workload).
    pub fn forget_exec(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.execs.pop();
        }
    }

    fn latest_exe(&self, pid: u32) -> Option<String> {
        self.procs
            .get(&pid)
            .and_then(|p| p.execs.last())
            .map(|e| e.exe.clone())
    }

    /// The execs that led to `pid`, root first: its ancestors' programs (as far as the
    /// table knows them: processes of intercepted cgroups), then its own. Processes
    /// that forked without exec'ing are passed through.
    pub fn chain(&self, pid: u32) -> Vec<ChainLink> {
        let mut links = Vec::new();
        let mut seen = Vec::new();
        let mut current = Some(pid);
        while let Some(p) = current {
            if seen.contains(&p) || seen.len() >= MAX_CHAIN {
                break;
            }
            seen.push(p);
            let Some(proc) = self.procs.get(&p) else {
                break;
            };
            for e in proc.execs.iter().rev() {
                links.push(ChainLink {
                    pid: p,
                    exe: e.exe.clone(),
                    argv: e.argv.clone(),
                });
            }
            current = proc.ppid;
        }
        links.reverse();
        links
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::event::Header;

    fn h(tid: u32) -> Header {
        Header {
            tid,
            tgid: tid,
            uid: 1000,
            gid: 1000,
            cgroup_id: 77,
            boot_ns: u64::from(tid) * 10,
            unclassified: false,
        }
    }

    fn exec(t: &mut ProcessTable, pid: u32, exe: &str, argv: &[&str]) -> Option<Change> {
        t.apply(
            Record::ExecArgs {
                header: h(pid),
                filename: exe.into(),
                argv: argv.iter().map(|s| s.to_string()).collect(),
                truncated: false,
            },
            |_| None,
        );
        t.apply(
            Record::ExecDone {
                header: h(pid),
                old_tid: pid,
                comm: "x".into(),
            },
            |_| None,
        )
    }

    fn fork(t: &mut ProcessTable, parent: u32, child: u32) {
        assert_eq!(
            t.apply(
                Record::Fork {
                    header: h(parent),
                    child
                },
                |_| None
            ),
            None
        );
    }

    #[test]
    fn chain_goes_from_the_root_to_the_process() {
        let mut t = ProcessTable::new();
        // bash (100, parent 1 from /proc) runs script.sh; it forks 101 for sleep and
        // 102 (a subshell that forks 103) for psql.
        t.apply(
            Record::ExecArgs {
                header: h(100),
                filename: "/usr/bin/bash".into(),
                argv: vec!["bash".into(), "script.sh".into()],
                truncated: false,
            },
            |_| None,
        );
        let Some(Change::Exec(bash)) = t.apply(
            Record::ExecDone {
                header: h(100),
                old_tid: 100,
                comm: "bash".into(),
            },
            |pid| (pid == 100).then_some(1),
        ) else {
            panic!("no exec")
        };
        assert_eq!(bash.ppid, Some(1));
        assert_eq!(bash.parent_exe, None);
        fork(&mut t, 100, 101);
        let Some(Change::Exec(sleep)) = exec(&mut t, 101, "/usr/bin/sleep", &["sleep", "0.1"])
        else {
            panic!("no exec")
        };
        assert_eq!(sleep.ppid, Some(100));
        assert_eq!(sleep.parent_exe.as_deref(), Some("/usr/bin/bash"));
        fork(&mut t, 100, 102);
        fork(&mut t, 102, 103);
        exec(&mut t, 103, "/usr/bin/psql", &["psql", "-c", "select 1"]);
        let chain = t.chain(103);
        let shown: Vec<(u32, &str)> = chain.iter().map(|l| (l.pid, l.exe.as_str())).collect();
        assert_eq!(shown, [(100, "/usr/bin/bash"), (103, "/usr/bin/psql")]);
        assert_eq!(chain[1].argv, ["psql", "-c", "select 1"]);
        assert!(t.chain(999).is_empty());
    }

    #[test]
    fn failed_attempts_are_replaced_and_lost_arguments_are_flagged() {
        let mut t = ProcessTable::new();
        // execvp tries each PATH entry: only the last attempt succeeded.
        for path in ["/usr/local/bin/psql", "/usr/bin/psql"] {
            t.apply(
                Record::ExecArgs {
                    header: h(50),
                    filename: path.into(),
                    argv: vec!["psql".into()],
                    truncated: false,
                },
                |_| None,
            );
        }
        let Some(Change::Exec(e)) = t.apply(
            Record::ExecDone {
                header: h(50),
                old_tid: 50,
                comm: "psql".into(),
            },
            |_| None,
        ) else {
            panic!("no exec")
        };
        assert_eq!(e.exe, "/usr/bin/psql");
        assert!(!e.argv_truncated);
        // No arguments record: the comm stands in and the exec says it is incomplete.
        let Some(Change::Exec(e)) = t.apply(
            Record::ExecDone {
                header: h(51),
                old_tid: 51,
                comm: "true".into(),
            },
            |_| None,
        ) else {
            panic!("no exec")
        };
        assert_eq!((e.exe.as_str(), e.argv_truncated), ("true", true));
    }

    #[test]
    fn exec_from_a_thread_uses_the_callers_arguments_and_exit_reports_the_code() {
        let mut t = ProcessTable::new();
        let mut thread = h(61);
        thread.tgid = 60;
        t.apply(
            Record::ExecArgs {
                header: thread,
                filename: "/bin/ls".into(),
                argv: vec!["ls".into()],
                truncated: false,
            },
            |_| None,
        );
        let Some(Change::Exec(e)) = t.apply(
            Record::ExecDone {
                header: h(60),
                old_tid: 61,
                comm: "ls".into(),
            },
            |_| None,
        ) else {
            panic!("no exec")
        };
        assert_eq!((e.pid, e.exe.as_str()), (60, "/bin/ls"));
        let exit = t.apply(
            Record::Exit {
                header: h(60),
                code: Some(2),
            },
            |_| None,
        );
        assert_eq!(
            exit,
            Some(Change::Exit {
                pid: 60,
                code: Some(2),
                uid: 1000,
                cgroup_id: 77,
                exe: Some("/bin/ls".into()),
                boot_ns: 600,
                unclassified: false,
            })
        );
        // An exited process still anchors its children's chains.
        fork(&mut t, 60, 62);
        exec(&mut t, 62, "/bin/cat", &["cat"]);
        assert_eq!(t.chain(62).len(), 2);
    }

    #[test]
    fn threads_that_never_exec_do_not_grow_the_table_without_bound() {
        let mut t = ProcessTable::new();
        fork(&mut t, 1, 2);
        exec(&mut t, 2, "/usr/bin/java", &["java"]);
        // A thread pool's clones are fork records that never exec nor exit.
        for tid in 10..10 + MAX_PARENTS as u32 + 1000 {
            fork(&mut t, 2, tid);
        }
        assert!(t.len() <= MAX_PARENTS + 1, "{}", t.len());
        // The process that exec'd is kept.
        assert_eq!(t.chain(2).len(), 1);
    }

    #[test]
    fn a_reused_pid_does_not_inherit_history() {
        let mut t = ProcessTable::new();
        fork(&mut t, 1, 70);
        exec(&mut t, 70, "/bin/old", &["old"]);
        fork(&mut t, 5, 70);
        exec(&mut t, 70, "/bin/new", &["new"]);
        let chain = t.chain(70);
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].exe, "/bin/new");
    }
}
