//! The SFTP protocol (version 3, draft-ietf-secsh-filexfer-02, as OpenSSH speaks it),
//! decoded without I/O: whole packets out of a byte stream, the client's requests with
//! their paths, handles and sizes, the server's answers with their request ids.
//!
//! A packet is `uint32 length, byte type, payload`; every request but INIT carries a
//! `uint32 id` that its answer repeats. Nothing is rewritten: the proxy forwards the
//! packets it lets through byte for byte, and answers a refused request itself with a
//! STATUS packet ([`status_packet`]).
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest packet accepted (OpenSSH's own limit, SFTP_MAX_MSG_LENGTH, is 256 KiB).
pub const MAX_PACKET: usize = 256 * 1024 + 1024;

/// SSH_FX_PERMISSION_DENIED.
pub const FX_PERMISSION_DENIED: u32 = 3;
/// SSH_FX_FAILURE.
pub const FX_FAILURE: u32 = 4;

/// Open flags (SSH_FXF_*).
pub const FXF_READ: u32 = 0x01;
pub const FXF_WRITE: u32 = 0x02;
pub const FXF_APPEND: u32 = 0x04;
pub const FXF_CREAT: u32 = 0x08;
pub const FXF_TRUNC: u32 = 0x10;
pub const FXF_EXCL: u32 = 0x20;

/// Input that is not SFTP (the channel is closed with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed SFTP packet: {0}")]
pub struct SftpError(pub String);

/// Takes one whole packet (length prefix included) off the front of `buf`; `Ok(None)`
/// when it is not all there yet.
pub fn next_packet(buf: &mut BytesMut) -> Result<Option<Bytes>, SftpError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 || len > MAX_PACKET {
        return Err(SftpError(format!("length {len} (at most {MAX_PACKET})")));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some(buf.split_to(4 + len).freeze()))
}

/// A client request, as the proxy judges and journals it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Init {
        version: u32,
    },
    Open {
        id: u32,
        path: String,
        flags: u32,
    },
    Close {
        id: u32,
        handle: Bytes,
    },
    Read {
        id: u32,
        handle: Bytes,
        len: u32,
    },
    Write {
        id: u32,
        handle: Bytes,
        len: u64,
    },
    OpenDir {
        id: u32,
        path: String,
    },
    Remove {
        id: u32,
        path: String,
    },
    Mkdir {
        id: u32,
        path: String,
    },
    Rmdir {
        id: u32,
        path: String,
    },
    SetStat {
        id: u32,
        path: String,
    },
    Rename {
        id: u32,
        from: String,
        to: String,
    },
    Symlink {
        id: u32,
        link: String,
        target: String,
    },
    /// `hardlink@openssh.com`.
    Hardlink {
        id: u32,
        from: String,
        to: String,
    },
    /// Read-only metadata: STAT, LSTAT, FSTAT, REALPATH, READDIR, READLINK, FSETSTAT,
    /// and extensions other than the ones above (by name).
    Other {
        id: u32,
        name: String,
        path: Option<String>,
    },
}

impl Request {
    pub fn id(&self) -> Option<u32> {
        match self {
            Request::Init { .. } => None,
            Request::Open { id, .. }
            | Request::Close { id, .. }
            | Request::Read { id, .. }
            | Request::Write { id, .. }
            | Request::OpenDir { id, .. }
            | Request::Remove { id, .. }
            | Request::Mkdir { id, .. }
            | Request::Rmdir { id, .. }
            | Request::SetStat { id, .. }
            | Request::Rename { id, .. }
            | Request::Symlink { id, .. }
            | Request::Hardlink { id, .. }
            | Request::Other { id, .. } => Some(*id),
        }
    }
}

/// A server answer, as far as the proxy follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Version,
    Status {
        id: u32,
        code: u32,
        message: String,
    },
    Handle {
        id: u32,
        handle: Bytes,
    },
    Data {
        id: u32,
        len: u64,
    },
    /// NAME, ATTRS, EXTENDED_REPLY.
    Other {
        id: u32,
    },
}

struct Reader(Bytes);

impl Reader {
    fn u8(&mut self) -> Result<u8, SftpError> {
        if self.0.remaining() < 1 {
            return Err(SftpError("truncated".into()));
        }
        Ok(self.0.get_u8())
    }
    fn u32(&mut self) -> Result<u32, SftpError> {
        if self.0.remaining() < 4 {
            return Err(SftpError("truncated".into()));
        }
        Ok(self.0.get_u32())
    }
    fn u64(&mut self) -> Result<u64, SftpError> {
        if self.0.remaining() < 8 {
            return Err(SftpError("truncated".into()));
        }
        Ok(self.0.get_u64())
    }
    fn bytes(&mut self) -> Result<Bytes, SftpError> {
        let len = self.u32()? as usize;
        if self.0.remaining() < len {
            return Err(SftpError(format!("a string of {len} bytes is truncated")));
        }
        Ok(self.0.split_to(len))
    }
    /// A path: UTF-8 (OpenSSH sends file names as they are; other bytes are shown
    /// escaped, and rules see that escaped form).
    fn path(&mut self) -> Result<String, SftpError> {
        let raw = self.bytes()?;
        Ok(match std::str::from_utf8(&raw) {
            Ok(s) => s.to_owned(),
            Err(_) => raw.escape_ascii().to_string(),
        })
    }
}

/// Decodes a client packet (from [`next_packet`]).
pub fn parse_request(packet: &Bytes) -> Result<Request, SftpError> {
    let mut r = Reader(packet.slice(4..));
    let kind = r.u8()?;
    if kind == 1 {
        return Ok(Request::Init { version: r.u32()? });
    }
    let id = r.u32()?;
    let other = |name: &str, path: Option<String>| Request::Other {
        id,
        name: name.to_owned(),
        path,
    };
    Ok(match kind {
        3 => {
            let path = r.path()?;
            let flags = r.u32()?;
            Request::Open { id, path, flags }
        }
        4 => Request::Close {
            id,
            handle: r.bytes()?,
        },
        5 => {
            let handle = r.bytes()?;
            let _offset = r.u64()?;
            let len = r.u32()?;
            Request::Read { id, handle, len }
        }
        6 => {
            let handle = r.bytes()?;
            let _offset = r.u64()?;
            let data = r.bytes()?;
            Request::Write {
                id,
                handle,
                len: data.len() as u64,
            }
        }
        7 => other("lstat", Some(r.path()?)),
        8 => other("fstat", None),
        9 => Request::SetStat {
            id,
            path: r.path()?,
        },
        10 => other("fsetstat", None),
        11 => Request::OpenDir {
            id,
            path: r.path()?,
        },
        12 => other("readdir", None),
        13 => Request::Remove {
            id,
            path: r.path()?,
        },
        14 => Request::Mkdir {
            id,
            path: r.path()?,
        },
        15 => Request::Rmdir {
            id,
            path: r.path()?,
        },
        16 => other("realpath", Some(r.path()?)),
        17 => other("stat", Some(r.path()?)),
        18 => {
            let from = r.path()?;
            let to = r.path()?;
            Request::Rename { id, from, to }
        }
        19 => other("readlink", Some(r.path()?)),
        20 => {
            // OpenSSH sends the target first, then the link (the draft's order
            // reversed); journaled as OpenSSH's own server reads them.
            let target = r.path()?;
            let link = r.path()?;
            Request::Symlink { id, link, target }
        }
        200 => {
            let name = String::from_utf8_lossy(&r.bytes()?).into_owned();
            match name.as_str() {
                "posix-rename@openssh.com" => {
                    let from = r.path()?;
                    let to = r.path()?;
                    Request::Rename { id, from, to }
                }
                "hardlink@openssh.com" => {
                    let from = r.path()?;
                    let to = r.path()?;
                    Request::Hardlink { id, from, to }
                }
                "lsetstat@openssh.com" => Request::SetStat {
                    id,
                    path: r.path()?,
                },
                "statvfs@openssh.com" | "expand-path@openssh.com" => other(&name, Some(r.path()?)),
                _ => other(&name, None),
            }
        }
        other_kind => {
            return Err(SftpError(format!("unknown request type {other_kind}")));
        }
    })
}

/// Decodes a server packet (from [`next_packet`]).
pub fn parse_response(packet: &Bytes) -> Result<Response, SftpError> {
    let mut r = Reader(packet.slice(4..));
    let kind = r.u8()?;
    if kind == 2 {
        return Ok(Response::Version);
    }
    let id = r.u32()?;
    Ok(match kind {
        101 => {
            let code = r.u32()?;
            // Servers before version 3 may omit the message; treat it as empty.
            let message = r
                .bytes()
                .map(|m| String::from_utf8_lossy(&m).into_owned())
                .unwrap_or_default();
            Response::Status { id, code, message }
        }
        102 => Response::Handle {
            id,
            handle: r.bytes()?,
        },
        103 => Response::Data {
            id,
            len: r.bytes()?.len() as u64,
        },
        104 | 105 | 201 => Response::Other { id },
        other_kind => {
            return Err(SftpError(format!("unknown response type {other_kind}")));
        }
    })
}

/// A STATUS packet answering request `id` (what the agent sends for a refused request).
pub fn status_packet(id: u32, code: u32, message: &str) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(101);
    body.put_u32(id);
    body.put_u32(code);
    body.put_u32(message.len() as u32);
    body.put_slice(message.as_bytes());
    body.put_u32(2);
    body.put_slice(b"en");
    let mut packet = BytesMut::with_capacity(4 + body.len());
    packet.put_u32(body.len() as u32);
    packet.put_slice(&body);
    packet.freeze()
}

/// The names of open flags, for the journal.
pub fn flag_names(flags: u32) -> Vec<String> {
    [
        (FXF_READ, "read"),
        (FXF_WRITE, "write"),
        (FXF_APPEND, "append"),
        (FXF_CREAT, "create"),
        (FXF_TRUNC, "truncate"),
        (FXF_EXCL, "exclusive"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| (*name).to_owned())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, fields: &[&[u8]]) -> Bytes {
        let mut body = BytesMut::new();
        body.put_u8(kind);
        for f in fields {
            body.put_slice(f);
        }
        let mut p = BytesMut::new();
        p.put_u32(body.len() as u32);
        p.put_slice(&body);
        p.freeze()
    }

    fn string(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    #[test]
    fn requests_decode_with_paths_and_sizes() {
        let open = packet(
            3,
            &[
                &7u32.to_be_bytes(),
                &string(b"/srv/a.bin"),
                &(FXF_WRITE | FXF_CREAT | FXF_TRUNC).to_be_bytes(),
                &0u32.to_be_bytes(),
            ],
        );
        assert_eq!(
            parse_request(&open).unwrap(),
            Request::Open {
                id: 7,
                path: "/srv/a.bin".into(),
                flags: FXF_WRITE | FXF_CREAT | FXF_TRUNC
            }
        );
        assert_eq!(
            flag_names(FXF_WRITE | FXF_CREAT | FXF_TRUNC),
            ["write", "create", "truncate"]
        );
        let write = packet(
            6,
            &[
                &8u32.to_be_bytes(),
                &string(b"h1"),
                &0u64.to_be_bytes(),
                &string(&[0u8; 1000]),
            ],
        );
        assert_eq!(
            parse_request(&write).unwrap(),
            Request::Write {
                id: 8,
                handle: Bytes::from_static(b"h1"),
                len: 1000
            }
        );
        let rename = packet(
            200,
            &[
                &9u32.to_be_bytes(),
                &string(b"posix-rename@openssh.com"),
                &string(b"/a"),
                &string(b"/b"),
            ],
        );
        assert_eq!(
            parse_request(&rename).unwrap(),
            Request::Rename {
                id: 9,
                from: "/a".into(),
                to: "/b".into()
            }
        );
        let odd = packet(13, &[&1u32.to_be_bytes(), &string(b"/x\xff")]);
        assert_eq!(
            parse_request(&odd).unwrap(),
            Request::Remove {
                id: 1,
                path: "/x\\xff".into()
            }
        );
        // Truncated and unknown packets are errors, not guesses.
        let short = packet(3, &[&7u32.to_be_bytes(), &string(b"/srv/a.bin")]);
        assert!(parse_request(&short).is_err());
        assert!(parse_request(&packet(99, &[&1u32.to_be_bytes()])).is_err());
    }

    #[test]
    fn packets_are_framed_across_reads() {
        let a = packet(13, &[&1u32.to_be_bytes(), &string(b"/tmp/x")]);
        let b = status_packet(1, FX_PERMISSION_DENIED, "no");
        let mut all = BytesMut::new();
        all.put_slice(&a);
        all.put_slice(&b);
        // Every split point gives the same two packets.
        for cut in 0..all.len() {
            let mut buf = BytesMut::from(&all[..cut]);
            let mut got = Vec::new();
            while let Some(p) = next_packet(&mut buf).unwrap() {
                got.push(p);
            }
            buf.put_slice(&all[cut..]);
            while let Some(p) = next_packet(&mut buf).unwrap() {
                got.push(p);
            }
            assert_eq!(got, vec![a.clone(), b.clone()], "cut at {cut}");
        }
        assert_eq!(
            parse_response(&b).unwrap(),
            Response::Status {
                id: 1,
                code: FX_PERMISSION_DENIED,
                message: "no".into()
            }
        );
        let mut huge = BytesMut::new();
        huge.put_u32(10_000_000);
        assert!(next_packet(&mut huge).is_err());
    }
}
