//! Decoding the records of the `NHI_LINEAGE` ring buffer (layouts in
//! `nhi_agent_common::lineage`). Pure: bytes in, [`Record`] out.
use nhi_agent_common::lineage::{
    ExecArgs, ExecDone, LineageHeader, FILENAME_LEN, FLAG_HAS_CODE, FLAG_TRUNCATED,
    FLAG_UNCLASSIFIED, KIND_EXEC_ARGS, KIND_EXEC_DONE, KIND_EXIT, KIND_FORK,
};

use super::LineageError;

const HEADER_LEN: usize = size_of::<LineageHeader>();
const EXEC_ARGS_LEN: usize = size_of::<ExecArgs>();
const EXEC_DONE_LEN: usize = size_of::<ExecDone>();
const ARGV_AT: usize = HEADER_LEN + FILENAME_LEN;
const ARGV_LEN_AT: usize = EXEC_ARGS_LEN - 8;

/// The fields every record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Thread id of the task the record is about.
    pub tid: u32,
    /// Its process id.
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// Nanoseconds since boot (CLOCK_BOOTTIME) when the kernel wrote the record.
    pub boot_ns: u64,
    /// The cgroup was not classified: userspace decides whether it is a workload.
    pub unclassified: bool,
}

/// One decoded ring buffer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An exec was attempted (it may still fail).
    ExecArgs {
        header: Header,
        filename: String,
        argv: Vec<String>,
        truncated: bool,
    },
    /// An exec succeeded; `old_tid` is the thread that called it.
    ExecDone {
        header: Header,
        old_tid: u32,
        comm: String,
    },
    /// `header.tgid` forked `child`.
    Fork { header: Header, child: u32 },
    /// Process `header.tgid` ended; `code` is its exit_group status when it had one.
    Exit { header: Header, code: Option<i32> },
}

impl Record {
    /// The common fields.
    pub fn header(&self) -> &Header {
        match self {
            Record::ExecArgs { header, .. }
            | Record::ExecDone { header, .. }
            | Record::Fork { header, .. }
            | Record::Exit { header, .. } => header,
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(w)
}

/// Text up to the first NUL (or the end), invalid UTF-8 replaced.
fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Decodes one record as the kernel wrote it (native byte order).
pub fn decode(bytes: &[u8]) -> Result<Record, LineageError> {
    let need = |need: usize, kind: u32| {
        if bytes.len() < need {
            Err(LineageError::ShortRecord {
                kind,
                len: bytes.len(),
                need,
            })
        } else {
            Ok(())
        }
    };
    need(HEADER_LEN, 0)?;
    let kind = u32_at(bytes, 0);
    let uid_gid = u64_at(bytes, 16);
    let flags = u32_at(bytes, 40);
    let header = Header {
        tid: u32_at(bytes, 4),
        tgid: u32_at(bytes, 8),
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id: u64_at(bytes, 24),
        boot_ns: u64_at(bytes, 32),
        unclassified: flags & FLAG_UNCLASSIFIED != 0,
    };
    let aux = u32_at(bytes, 12);
    match kind {
        KIND_EXEC_ARGS => {
            need(EXEC_ARGS_LEN, kind)?;
            let filename = c_string(&bytes[HEADER_LEN..ARGV_AT]);
            let argv_len = u32_at(bytes, ARGV_LEN_AT) as usize;
            let argc = u32_at(bytes, ARGV_LEN_AT + 4) as usize;
            let area = &bytes[ARGV_AT..ARGV_LEN_AT];
            let argv_bytes = &area[..argv_len.min(area.len())];
            let mut argv: Vec<String> = argv_bytes
                .split(|&c| c == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            // A NUL-terminated last argument leaves an empty piece after it; an argument
            // cut at the byte limit has no NUL and is kept as it is.
            if argv_bytes.last() == Some(&0) || argv_bytes.is_empty() {
                argv.pop();
            }
            // Never more pieces than the kernel counted arguments.
            argv.truncate(argc);
            Ok(Record::ExecArgs {
                header,
                filename,
                argv,
                truncated: flags & FLAG_TRUNCATED != 0,
            })
        }
        KIND_EXEC_DONE => {
            need(EXEC_DONE_LEN, kind)?;
            Ok(Record::ExecDone {
                header,
                old_tid: aux,
                comm: c_string(&bytes[HEADER_LEN..HEADER_LEN + 16]),
            })
        }
        KIND_FORK => Ok(Record::Fork { header, child: aux }),
        KIND_EXIT => Ok(Record::Exit {
            header,
            code: (flags & FLAG_HAS_CODE != 0).then_some(aux as i32),
        }),
        other => Err(LineageError::UnknownKind(other)),
    }
}

/// Encoders producing the kernel's byte layout, for tests of the decoder and the table.
#[cfg(test)]
pub(crate) mod encode {
    use super::*;

    pub fn header(kind: u32, tid: u32, tgid: u32, aux: u32, cgroup_id: u64, flags: u32) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN);
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&tid.to_ne_bytes());
        b.extend_from_slice(&tgid.to_ne_bytes());
        b.extend_from_slice(&aux.to_ne_bytes());
        let uid_gid: u64 = (1001u64 << 32) | 1000;
        b.extend_from_slice(&uid_gid.to_ne_bytes());
        b.extend_from_slice(&cgroup_id.to_ne_bytes());
        b.extend_from_slice(&(u64::from(tid) * 1_000_000).to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b
    }

    pub fn exec_args(
        tid: u32,
        cgroup_id: u64,
        filename: &str,
        argv: &[&str],
        flags: u32,
    ) -> Vec<u8> {
        let mut b = header(KIND_EXEC_ARGS, tid, tid, 0, cgroup_id, flags);
        let mut name = [0u8; FILENAME_LEN];
        name[..filename.len()].copy_from_slice(filename.as_bytes());
        b.extend_from_slice(&name);
        let mut area = vec![0u8; ARGV_LEN_AT - ARGV_AT];
        let mut off = 0;
        for a in argv {
            area[off..off + a.len()].copy_from_slice(a.as_bytes());
            off += a.len() + 1;
        }
        b.extend_from_slice(&area);
        b.extend_from_slice(&(off as u32).to_ne_bytes());
        b.extend_from_slice(&(argv.len() as u32).to_ne_bytes());
        b
    }

    pub fn exec_done(pid: u32, old_tid: u32, cgroup_id: u64, comm: &str) -> Vec<u8> {
        let mut b = header(KIND_EXEC_DONE, pid, pid, old_tid, cgroup_id, 0);
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        b.extend_from_slice(&c);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::encode::*;
    use super::*;

    #[test]
    fn exec_args_decode_filename_argv_and_flags() {
        let bytes = exec_args(
            42,
            7,
            "/usr/bin/psql",
            &["psql", "-c", "select 1"],
            FLAG_UNCLASSIFIED,
        );
        assert_eq!(bytes.len(), EXEC_ARGS_LEN);
        let Record::ExecArgs {
            header,
            filename,
            argv,
            truncated,
        } = decode(&bytes).unwrap()
        else {
            panic!("not exec args")
        };
        assert_eq!(filename, "/usr/bin/psql");
        assert_eq!(argv, ["psql", "-c", "select 1"]);
        assert!(!truncated);
        assert_eq!((header.tid, header.tgid, header.cgroup_id), (42, 42, 7));
        assert_eq!((header.uid, header.gid), (1000, 1001));
        assert_eq!(header.boot_ns, 42_000_000);
        assert!(header.unclassified);
    }

    #[test]
    fn an_argument_cut_at_the_byte_limit_is_kept_and_flagged() {
        let mut bytes = exec_args(5, 7, "/bin/echo", &["echo", "abcdef"], FLAG_TRUNCATED);
        // The kernel cut the capture after "echo\0abc" (8 bytes).
        bytes[ARGV_LEN_AT..ARGV_LEN_AT + 4].copy_from_slice(&8u32.to_ne_bytes());
        let Record::ExecArgs {
            argv, truncated, ..
        } = decode(&bytes).unwrap()
        else {
            panic!("not exec args")
        };
        assert_eq!(argv, ["echo", "abc"]);
        assert!(truncated);
    }

    #[test]
    fn small_records_decode() {
        let done = exec_done(9, 11, 3, "psql");
        assert_eq!(
            decode(&done).unwrap(),
            Record::ExecDone {
                header: Header {
                    tid: 9,
                    tgid: 9,
                    uid: 1000,
                    gid: 1001,
                    cgroup_id: 3,
                    boot_ns: 9_000_000,
                    unclassified: false
                },
                old_tid: 11,
                comm: "psql".into()
            }
        );
        let fork = header(KIND_FORK, 20, 20, 21, 3, 0);
        assert!(matches!(
            decode(&fork).unwrap(),
            Record::Fork { child: 21, .. }
        ));
        let exit = header(KIND_EXIT, 21, 21, 3, 3, FLAG_HAS_CODE);
        assert!(matches!(
            decode(&exit).unwrap(),
            Record::Exit { code: Some(3), .. }
        ));
        let killed = header(KIND_EXIT, 21, 21, 0, 3, 0);
        assert!(matches!(
            decode(&killed).unwrap(),
            Record::Exit { code: None, .. }
        ));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let bytes = exec_args(1, 1, "/bin/true", &[], 0);
        for len in [0, 10, HEADER_LEN - 1] {
            assert!(matches!(
                decode(&bytes[..len]),
                Err(LineageError::ShortRecord { .. })
            ));
        }
        assert!(matches!(
            decode(&bytes[..EXEC_ARGS_LEN - 1]),
            Err(LineageError::ShortRecord {
                kind: KIND_EXEC_ARGS,
                ..
            })
        ));
        assert!(matches!(
            decode(&header(99, 1, 1, 0, 1, 0)),
            Err(LineageError::UnknownKind(99))
        ));
        let done = exec_done(1, 1, 1, "x");
        assert!(decode(&done[..EXEC_DONE_LEN - 1]).is_err());
    }
}
