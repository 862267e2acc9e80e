//! The control socket: a Unix socket (mode 0660, group `approver_group` when set) that
//! serves the [`Registry`] to `nhi-agent approvals`.
//!
//! Architecture invariant: the file mode is only the first gate. Every request checks
//! the caller's credentials (`SO_PEERCRED`): uid 0, or a member of `approver_group`
//! (primary gid or a supplementary group from /proc/PID/status). Anyone else gets
//! "not an approver", and the refusal is logged.
use std::{
    io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use nix::{
    sys::socket::{getsockopt, sockopt::PeerCredentials},
    unistd::{Gid, Uid},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tracing::{debug, info, warn};

use super::{
    wire::{Answer, Request, MAX_LINE},
    Decision, Registry,
};

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("creating the directory {path} for the approvals socket: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("binding the approvals socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("setting owner/mode of the approvals socket {path}: {source}")]
    Permissions { path: PathBuf, source: io::Error },
    #[error("{path} is in use by another running agent (set `[agent] approvals_socket`)")]
    InUse { path: PathBuf },
    #[error("approver_group \"{name}\": no such group")]
    UnknownGroup { name: String },
}

/// A caller, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

impl Peer {
    /// "uid N (name)", as journaled in `approval` events.
    pub fn describe(&self) -> String {
        match nix::unistd::User::from_uid(Uid::from_raw(self.uid)) {
            Ok(Some(u)) => format!("uid {} ({})", self.uid, u.name),
            _ => format!("uid {} (unknown)", self.uid),
        }
    }
}

/// Resolves `approver_group` (a name or a numeric gid) to a gid.
pub fn resolve_group(group: &super::config::GroupRef) -> Result<u32, ServerError> {
    match group {
        super::config::GroupRef::Gid(g) => Ok(*g),
        super::config::GroupRef::Name(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            _ => Err(ServerError::UnknownGroup { name: name.clone() }),
        },
    }
}

/// Whether `peer` may list and decide: root, or a member of `approver_gid`.
/// `groups` are the peer's supplementary groups.
pub fn is_approver(peer: &Peer, groups: &[u32], approver_gid: Option<u32>) -> bool {
    if peer.uid == 0 {
        return true;
    }
    match approver_gid {
        Some(g) => peer.gid == g || groups.contains(&g),
        None => false,
    }
}

/// The supplementary groups in a /proc/PID/status text ("Groups:\t1 2 3").
pub fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Binds the socket at `path`: parent directory created with mode 0755, a stale socket
/// from an earlier run replaced, the socket set to 0660 and group `approver_gid`.
pub fn bind(path: &Path, approver_gid: Option<u32>) -> Result<UnixListener, ServerError> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| ServerError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                return Err(ServerError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            // A live socket belongs to another running agent; a dead one was left by an
            // agent that did not exit cleanly.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse {
                    path: path.to_path_buf(),
                });
            }
            let _ = std::fs::remove_file(path);
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let perm = |source| ServerError::Permissions {
        path: path.to_path_buf(),
        source,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(perm)?;
    if let Some(g) = approver_gid {
        nix::unistd::chown(path, None, Some(Gid::from_raw(g)))
            .map_err(|e| perm(io::Error::from(e)))?;
    }
    Ok(listener)
}

/// Re-reads the configuration; `by` names the caller for the log. The applied change,
/// or why the file was rejected.
pub type ReloadFn = dyn Fn(&str) -> Result<String, String> + Send + Sync;

/// What the control socket asks of the running agent besides approvals.
pub struct Control {
    /// The agent's state, for `status` (approvers).
    pub status: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// Re-reads the configuration (root only).
    pub reload: Box<ReloadFn>,
}

/// Serves `registry` (and `control`) on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    registry: Registry,
    approver_gid: Option<u32>,
    control: Option<std::sync::Arc<Control>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let registry = registry.clone();
                    let control = control.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, &registry, approver_gid, control.as_deref()).await {
                            debug!(error = %e, "approvals connection ended");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "approvals socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let cred = getsockopt(stream, PeerCredentials).map_err(io::Error::from)?;
    Ok(Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

async fn connection(
    stream: UnixStream,
    registry: &Registry,
    approver_gid: Option<u32>,
    control: Option<&Control>,
) -> io::Result<()> {
    let peer = peer_of(&stream)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        // The limit is applied before buffering more: one byte over ends the connection.
        let n = (&mut r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_LINE {
            let answer = Answer::error(format!("request longer than {MAX_LINE} bytes"));
            write_answer(&mut w, &answer).await?;
            return Ok(());
        }
        let answer = handle(&line, &peer, registry, approver_gid, control);
        write_answer(&mut w, &answer).await?;
    }
}

async fn write_answer(w: &mut tokio::net::unix::OwnedWriteHalf, answer: &Answer) -> io::Result<()> {
    let mut out = serde_json::to_vec(answer).map_err(io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await
}

/// Answers one request line from `peer`.
fn handle(
    line: &[u8],
    peer: &Peer,
    registry: &Registry,
    approver_gid: Option<u32>,
    control: Option<&Control>,
) -> Answer {
    let request: Result<Request, _> = serde_json::from_slice(line);
    // A signed token carries its own authority: anyone who can reach the socket may
    // hand one in, and the submitting peer is logged.
    if let Ok(Request::Submit { token }) = &request {
        let via = format!("socket, {} pid {}", peer.describe(), peer.pid);
        return decided(registry.submit(token, None, &via), "decided by token");
    }
    // Groups are read per request: membership can change while a connection is open.
    let groups = std::fs::read_to_string(format!("/proc/{}/status", peer.pid))
        .map(|s| parse_groups(&s))
        .unwrap_or_default();
    if !is_approver(peer, &groups, approver_gid) {
        warn!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            "approvals socket: refused a caller that is not an approver"
        );
        return Answer::error("not an approver");
    }
    let request = match request {
        Ok(r) => r,
        Err(e) => return Answer::error(format!("bad request: {e}")),
    };
    let by = peer.describe();
    match request {
        Request::List => Answer {
            ok: true,
            pending: Some(registry.list()),
            ..Answer::default()
        },
        Request::Show { id } => match registry.show(&id) {
            Ok(p) => Answer {
                ok: true,
                request: Some(p),
                ..Answer::default()
            },
            Err(e) => Answer::error(e.to_string()),
        },
        Request::Approve {
            id,
            reason,
            scope,
            grant_for,
        } => {
            if let Some(reason) = &reason {
                info!(id = %id, by = %by, reason = %reason, "approval reason");
            }
            let decision = Decision {
                approve: true,
                by,
                reason,
                scope: scope.unwrap_or_default(),
                grant_for,
            };
            decided(registry.decide(&id, decision), "approved")
        }
        Request::Deny { id, reason } => {
            let decision = Decision {
                reason,
                ..Decision::new(false, by)
            };
            decided(registry.decide(&id, decision), "denied")
        }
        Request::Submit { .. } => Answer::error("internal: submit handled above"),
        Request::Grants => Answer {
            ok: true,
            grants: Some(registry.grants()),
            ..Answer::default()
        },
        Request::Status => match control {
            Some(c) => Answer {
                ok: true,
                status: Some((c.status)()),
                ..Answer::default()
            },
            None => Answer::error("this socket does not serve status"),
        },
        Request::Reload => match control {
            // Changing what the agent enforces is root's alone, not an approver's.
            Some(_) if peer.uid != 0 => {
                warn!(
                    uid = peer.uid,
                    pid = peer.pid,
                    "control socket: refused a reload by a caller that is not root"
                );
                Answer::error("only root may reload the configuration")
            }
            Some(c) => match (c.reload)(&format!("{by} pid {}", peer.pid)) {
                Ok(what) => Answer {
                    ok: true,
                    reload: Some(what),
                    ..Answer::default()
                },
                Err(why) => Answer::error(why),
            },
            None => Answer::error("this socket does not serve reloads"),
        },
        Request::Revoke { id } => match registry.revoke(&id, &by) {
            Ok(g) => Answer {
                ok: true,
                grant: Some(g),
                by: Some(by),
                ..Answer::default()
            },
            Err(e) => Answer::error(e.to_string()),
        },
    }
}

/// The answer to a decision.
fn decided(result: Result<super::Decided, super::DecideError>, what: &str) -> Answer {
    match result {
        Ok(d) => {
            info!(id = %d.request.id, session = d.request.session, seq = d.request.seq, by = %d.by, "statement {what}");
            Answer {
                ok: true,
                request: Some(d.request),
                by: Some(d.by),
                grant: d.grant,
                ..Answer::default()
            }
        }
        Err(e) => Answer::error(e.to_string()),
    }
}
