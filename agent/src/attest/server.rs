//! The attest socket: line-delimited JSON over a Unix socket of mode 0666. Any local
//! process may attest, but only its own cgroup: the kernel tells who is calling
//! (`SO_PEERCRED`), and the cgroup is read from `/proc/PID/cgroup`, never taken from
//! the request.
//!
//! Requests: `{"op":"attest","token":"..."}` and `{"op":"status"}`. Answers: `{"ok":true,
//! "binding":{...}}`, `{"ok":true,"bindings":[...]}` or `{"ok":false,"error":"..."}`.
//! `status` shows root every binding and anyone else only the binding that governs
//! their own cgroup.
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{verify, AttestError, Attestor, Binding};
use crate::identity::CgroupFs;
use crate::journal::{system_time_to_us, Event, NO_SESSION};

/// The longest request line accepted (a JWT is a few kilobytes).
pub const MAX_LINE: usize = 64 * 1024;

/// A request line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Verify `token` and bind its claims to the caller's cgroup.
    Attest { token: String },
    /// List bindings.
    Status,
}

/// An answer line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindings: Option<Vec<Binding>>,
}

impl Answer {
    fn error(message: impl Into<String>) -> Answer {
        Answer {
            ok: false,
            error: Some(message.into()),
            ..Answer::default()
        }
    }
}

/// Looks up a cgroup's id by its path (relative to the cgroup2 root).
pub type CgroupIdOf = Arc<dyn Fn(&str) -> Option<u64> + Send + Sync>;
/// The workload name of a process of `uid` in the cgroup at a path, if it is one.
pub type WorkloadOf = Arc<dyn Fn(&str, u32) -> Option<String> + Send + Sync>;

/// What the server needs from the agent (its own context, not the proxy's state).
#[derive(Clone)]
pub struct Context {
    /// The agent's attestation state.
    pub attestor: Arc<Attestor>,
    pub journal: crate::journal::JournalHandle,
    pub cgroup_id: CgroupIdOf,
    /// Names the workload of the attestation event, as sessions name theirs.
    pub workload_of: WorkloadOf,
}

/// Binds the socket at `path` (parent created 0755, a stale socket replaced, mode 0666).
pub fn bind(path: &Path) -> Result<UnixListener, AttestError> {
    let err = |reason: String| AttestError::Socket {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            return Err(err(
                "exists and is not a socket; refusing to replace it".into()
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(
                "in use by another running agent (set `[attest] socket`)".into(),
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    // Anyone may attest their own cgroup: the peer credentials decide what is bound.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| err(format!("setting mode 0666: {e}")))?;
    Ok(listener)
}

/// Serves `listener` until `shutdown` turns true.
pub async fn serve(listener: UnixListener, ctx: Context, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, &ctx).await {
                            debug!(error = %e, "attest connection ended");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "attest socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// The caller as the kernel reports it.
#[derive(Debug, Clone, Copy)]
struct Peer {
    pid: i32,
    uid: u32,
}

async fn connection(stream: UnixStream, ctx: &Context) -> io::Result<()> {
    let cred = getsockopt(&stream, PeerCredentials).map_err(io::Error::from)?;
    let peer = Peer {
        pid: cred.pid(),
        uid: cred.uid(),
    };
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let answer = if line.len() > MAX_LINE {
            Answer::error(format!("request longer than {MAX_LINE} bytes"))
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Err(e) => Answer::error(format!("bad request: {e}")),
                Ok(Request::Status) => status(ctx, peer),
                Ok(Request::Attest { token }) => attest(ctx, peer, &token).await,
            }
        };
        let mut out = serde_json::to_vec(&answer).map_err(io::Error::other)?;
        out.push(b'\n');
        w.write_all(&out).await?;
        if line.len() > MAX_LINE {
            return Ok(());
        }
    }
}

/// The caller's cgroup: path and id.
fn cgroup_of(ctx: &Context, peer: Peer) -> Result<(String, u64), AttestError> {
    let pid = u32::try_from(peer.pid).map_err(|_| AttestError::NoCgroup { pid: peer.pid })?;
    let path = CgroupFs::cgroup_of_pid(pid).ok_or(AttestError::NoCgroup { pid: peer.pid })?;
    let id = (ctx.cgroup_id)(&path).ok_or(AttestError::NoCgroup { pid: peer.pid })?;
    Ok((path.trim_matches('/').to_string(), id))
}

fn status(ctx: &Context, peer: Peer) -> Answer {
    let bindings = if peer.uid == 0 {
        ctx.attestor.list()
    } else {
        match cgroup_of(ctx, peer) {
            Err(e) => return Answer::error(e.to_string()),
            Ok((path, id)) => ctx
                .attestor
                .binding_for(&path, id, |p| (ctx.cgroup_id)(p))
                .into_iter()
                .collect(),
        }
    };
    Answer {
        ok: true,
        bindings: Some(bindings),
        ..Answer::default()
    }
}

/// The `attestation` event's data. `claims` only for an accepted token; for a rejected
/// one `issuer` / `subject` are what the token claims (unverified).
#[allow(clippy::too_many_arguments)]
pub fn attestation_event(
    result: Result<&Binding, &AttestError>,
    unverified: &verify::Unverified,
    token_sha256: &str,
    pid: i32,
    uid: u32,
    cgroup: Option<&str>,
    cgroup_id: Option<u64>,
) -> serde_json::Value {
    match result {
        Ok(b) => serde_json::json!({
            "result": "accepted",
            "reason": null,
            "issuer": b.issuer,
            "subject": b.subject,
            "claims": b.claims,
            "token_sha256": token_sha256,
            "pid": pid,
            "uid": uid,
            "cgroup": cgroup,
            "cgroup_id": cgroup_id,
        }),
        Err(e) => serde_json::json!({
            "result": "rejected",
            "reason": e.to_string(),
            "issuer": unverified.issuer,
            "subject": unverified.subject,
            "claims": null,
            "token_sha256": token_sha256,
            "pid": pid,
            "uid": uid,
            "cgroup": cgroup,
            "cgroup_id": cgroup_id,
        }),
    }
}

async fn record(
    ctx: &Context,
    mut data: serde_json::Value,
    at: SystemTime,
) -> Result<(), AttestError> {
    // The workload the attesting process belongs to, so `events --workload` finds its
    // attestations as it finds its sessions.
    let cgroup = data
        .get("cgroup")
        .and_then(|c| c.as_str())
        .map(str::to_owned);
    let uid = data.get("uid").and_then(|u| u.as_u64());
    if let (Some(cgroup), Some(uid)) = (cgroup, uid) {
        let workload = u32::try_from(uid)
            .ok()
            .and_then(|uid| (ctx.workload_of)(&cgroup, uid));
        data["workload"] = serde_json::json!(workload);
    }
    let event = Event {
        session: NO_SESSION,
        at,
        kind: "attestation".into(),
        data: data.to_string(),
    };
    ctx.journal
        .record_durably(std::slice::from_ref(&event))
        .await
        .map(|_| ())
        .map_err(|e| AttestError::Journal(e.to_string()))
}

async fn attest(ctx: &Context, peer: Peer, token: &str) -> Answer {
    let now = SystemTime::now();
    let sha = verify::token_sha256(token);
    let cgroup = cgroup_of(ctx, peer);
    let (path, id) = match &cgroup {
        Ok((p, i)) => (Some(p.clone()), Some(*i)),
        Err(_) => (None, None),
    };
    let path = path.as_deref();
    let outcome = match cgroup {
        Err(e) => Err(e),
        Ok(_) => ctx.attestor.verify_once(token, now),
    };
    let verified = match outcome {
        Ok(v) => v,
        Err(e) => {
            let unverified = verify::peek(token);
            warn!(
                reason = %e, pid = peer.pid, uid = peer.uid, cgroup = ?path,
                token_sha256 = %sha, "attestation rejected"
            );
            let data = attestation_event(Err(&e), &unverified, &sha, peer.pid, peer.uid, path, id);
            if let Err(je) = record(ctx, data, now).await {
                warn!(error = %je, "cannot journal a rejected attestation");
            }
            return Answer::error(e.to_string());
        }
    };
    let (Some(path), Some(id)) = (path, id) else {
        return Answer::error("internal error: no cgroup");
    };
    let binding = Binding {
        cgroup: path.to_string(),
        cgroup_id: id,
        issuer: verified.issuer.clone(),
        subject: verified.subject.clone(),
        claims: verified.claims.clone(),
        bound_at_us: system_time_to_us(now),
        token_expires_at: verified.expires_at,
        pid: peer.pid,
        uid: peer.uid,
    };
    let data = attestation_event(
        Ok(&binding),
        &verify::Unverified::default(),
        &sha,
        peer.pid,
        peer.uid,
        Some(path),
        Some(id),
    );
    // Record before binding: a binding nobody can audit must not exist.
    if let Err(e) = record(ctx, data, now).await {
        ctx.attestor.unspend(&verified);
        warn!(error = %e, "attestation not bound: the journal cannot record it");
        return Answer::error(e.to_string());
    }
    info!(
        cgroup = %path, cgroup_id = id, issuer = %binding.issuer, subject = ?binding.subject,
        pid = peer.pid, uid = peer.uid, token_sha256 = %sha, "attestation accepted; claims bound"
    );
    ctx.attestor.bind(binding.clone());
    Answer {
        ok: true,
        binding: Some(binding),
        ..Answer::default()
    }
}
