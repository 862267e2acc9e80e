//! The `sftp` subsystem of a channel: each request decoded, judged (`sftp_ops`,
//! `sftp_paths`) and journaled (`sftp_op`) before its packet is forwarded; a refused
//! one is answered by the agent with SSH_FX_PERMISSION_DENIED naming the rule; bytes
//! read and written are counted per handle and journaled when it is closed.
use std::collections::HashMap;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tracing::info;

use super::events::{kind, SftpOp};
use super::Shared;
use crate::journal::Event;
use crate::policy::ssh::SftpRequest;
use crate::policy::Verdict;
use crate::protocol::ssh::sftp::{
    self, flag_names, Request, Response, FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_WRITE,
    FX_PERMISSION_DENIED,
};
use crate::session::approval::start_hold;
use crate::session::gate::{self, approval_on_standing, Action};
use crate::session::HoldOutcome;

/// What one SFTP channel remembers between packets.
#[derive(Default)]
pub struct SftpState {
    /// Bytes from the client not yet a whole packet.
    from_client: BytesMut,
    /// Bytes from the host not yet a whole packet (a copy: the host's bytes are relayed
    /// as they come).
    from_host: BytesMut,
    /// Requests waiting for their answer, by id.
    pending: HashMap<u32, Pending>,
    /// Open handles.
    handles: HashMap<Bytes, Handle>,
    /// READ requests waiting for their DATA, by id: the handle they read.
    reads: HashMap<u32, Bytes>,
}

enum Pending {
    Open { path: String, flags: u32 },
    Op { op: &'static str, path: String },
}

struct Handle {
    path: String,
    flags: u32,
    read: u64,
    written: u64,
}

/// What to do with what the client sent, in order.
pub enum Outgoing {
    /// A packet to forward to the host as is.
    Forward(Bytes),
    /// An answer for the client (a refused request's STATUS).
    Answer(Bytes),
}

/// Decodes what the client sent on an SFTP channel; judges and journals each request.
pub async fn from_client(
    shared: &Shared,
    channel: u32,
    state: &Mutex<SftpState>,
    data: &[u8],
) -> Result<Vec<Outgoing>, String> {
    let packets = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.from_client.extend_from_slice(data);
        let mut packets = Vec::new();
        while let Some(p) = sftp::next_packet(&mut s.from_client).map_err(|e| e.to_string())? {
            packets.push(p);
        }
        packets
    };
    let mut out = Vec::with_capacity(packets.len());
    for packet in packets {
        let request = sftp::parse_request(&packet).map_err(|e| e.to_string())?;
        let judged = match &request {
            Request::Open { id, path, flags } => {
                let op = if flags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC) != 0 {
                    "write"
                } else {
                    "read"
                };
                Some((*id, op, "open", path.clone(), None, *flags))
            }
            Request::Remove { id, path } => Some((*id, "remove", "remove", path.clone(), None, 0)),
            Request::Mkdir { id, path } => Some((*id, "mkdir", "mkdir", path.clone(), None, 0)),
            Request::Rmdir { id, path } => Some((*id, "rmdir", "rmdir", path.clone(), None, 0)),
            Request::SetStat { id, path } => {
                Some((*id, "setstat", "setstat", path.clone(), None, 0))
            }
            Request::Rename { id, from, to } => {
                Some((*id, "rename", "rename", from.clone(), Some(to.clone()), 0))
            }
            Request::Symlink { id, link, target } => Some((
                *id,
                "symlink",
                "symlink",
                link.clone(),
                Some(target.clone()),
                0,
            )),
            Request::Hardlink { id, from, to } => Some((
                *id,
                "hardlink",
                "hardlink",
                to.clone(),
                Some(from.clone()),
                0,
            )),
            _ => None,
        };
        if let Some((id, rule_op, op, path, target, flags)) = judged {
            let forwarded = judge(
                shared,
                channel,
                id,
                rule_op,
                op,
                &path,
                target.as_deref(),
                flags,
            )
            .await?;
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            match forwarded {
                Ok(()) => {
                    let pending = match request {
                        Request::Open { .. } => Pending::Open { path, flags },
                        _ => Pending::Op { op, path },
                    };
                    s.pending.insert(id, pending);
                    out.push(Outgoing::Forward(packet));
                }
                Err(message) => out.push(Outgoing::Answer(sftp::status_packet(
                    id,
                    FX_PERMISSION_DENIED,
                    &message,
                ))),
            }
            continue;
        }
        match request {
            Request::Close { id, handle } => {
                let closed = state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .handles
                    .remove(&handle);
                if let Some(h) = closed {
                    let event = SftpOp {
                        channel,
                        id,
                        op: "close".into(),
                        path: Some(shared.rules.masks.mask_text(&h.path).into_owned()),
                        flags: flag_names(h.flags),
                        bytes: Some(h.read + h.written),
                        read: (h.read > 0).then_some(h.read),
                        written: (h.written > 0).then_some(h.written),
                        verdict: Verdict::Allow.as_str().into(),
                        action: "forwarded".into(),
                        ..SftpOp::default()
                    };
                    shared.record(&[Event::of(shared.id, kind::SFTP_OP, &event)])?;
                }
            }
            Request::Read { id, handle, .. } => {
                state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .reads
                    .insert(id, handle);
            }
            Request::Write { handle, len, .. } => {
                if let Some(h) = state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .handles
                    .get_mut(&handle)
                {
                    h.written += len;
                }
            }
            Request::OpenDir { id, path } => {
                let event = SftpOp {
                    channel,
                    id,
                    op: "opendir".into(),
                    path: Some(shared.rules.masks.mask_text(&path).into_owned()),
                    verdict: Verdict::Allow.as_str().into(),
                    action: "forwarded".into(),
                    ..SftpOp::default()
                };
                shared.record(&[Event::of(shared.id, kind::SFTP_OP, &event)])?;
            }
            _ => {}
        }
        out.push(Outgoing::Forward(packet));
    }
    Ok(out)
}

/// Judges one SFTP request and journals it (durably) before it may be forwarded;
/// waits out a hold. `Ok(Err(message))`: refused, with the client's message.
#[allow(clippy::too_many_arguments)]
async fn judge(
    shared: &Shared,
    channel: u32,
    id: u32,
    rule_op: &str,
    op: &str,
    path: &str,
    target: Option<&str>,
    flags: u32,
) -> Result<Result<(), String>, String> {
    let paths: Vec<&str> = std::iter::once(path).chain(target).collect();
    let (verdict, rule) = match &shared.rules.policy {
        Some(p) => {
            let (v, r) = p.decide_sftp(&SftpRequest {
                op: rule_op,
                paths: &paths,
            });
            (v, r.map(str::to_owned))
        }
        None => (Verdict::Allow, None),
    };
    let seq = shared.next_seq();
    let action = shared
        .gate
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .action(verdict, rule.as_deref());
    let mask = |p: &str| shared.rules.masks.mask_text(p).into_owned();
    let event = SftpOp {
        channel,
        id,
        op: op.into(),
        path: Some(mask(path)),
        target: target.map(mask),
        flags: if op == "open" {
            flag_names(flags)
        } else {
            Vec::new()
        },
        seq: Some(seq),
        verdict: verdict.as_str().into(),
        rule: rule.clone(),
        action: match action {
            Action::Forward | Action::PassOnStanding(_) => "forwarded",
            Action::Hold => "held",
            Action::Refuse => "refused",
        }
        .into(),
        ..SftpOp::default()
    };
    let refused = |what: &str| {
        format!(
            "nhi-agent: sftp {rule_op} of {path} {what} \"{}\"",
            rule.as_deref().unwrap_or("(default)")
        )
    };
    match action {
        Action::Forward => {
            shared
                .record_durably(&[Event::of(shared.id, kind::SFTP_OP, &event)])
                .await?;
            Ok(Ok(()))
        }
        Action::PassOnStanding(standing) => {
            shared
                .record_durably(&[
                    Event::of(shared.id, kind::SFTP_OP, &event),
                    Event::of(
                        shared.id,
                        gate::APPROVAL,
                        &approval_on_standing(seq, &standing),
                    ),
                ])
                .await?;
            Ok(Ok(()))
        }
        Action::Refuse => {
            shared.record(&[Event::of(shared.id, kind::SFTP_OP, &event)])?;
            info!(session = shared.id, op = rule_op, rule = ?rule, "SFTP request refused");
            Ok(Err(refused("refused by policy rule")))
        }
        Action::Hold => {
            let shown = mask(&match target {
                Some(t) => format!("sftp {rule_op} {path} -> {t}"),
                None => format!("sftp {rule_op} {path}"),
            });
            let request = shared
                .gate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .hold_request(seq, shown, rule.clone());
            let (announcement, wait) =
                start_hold(shared.approvals.as_ref(), &shared.requester, request);
            let mut events = vec![Event::of(shared.id, kind::SFTP_OP, &event)];
            if let Some(a) = announcement {
                events.push(Event::of(shared.id, gate::APPROVAL_REQUEST, &a));
            }
            shared.record_durably(&events).await?;
            let outcome = wait.await;
            let approved = matches!(outcome, HoldOutcome::Approved { .. });
            let decided = {
                let mut g = shared.gate.lock().unwrap_or_else(|p| p.into_inner());
                Event::of(
                    shared.id,
                    gate::APPROVAL,
                    &g.decided(seq, rule.as_deref(), &outcome),
                )
            };
            shared.record_durably(&[decided]).await?;
            Ok(if approved {
                Ok(())
            } else {
                Err(refused("was not approved (policy rule")).map_err(|m: String| format!("{m})"))
            })
        }
    }
}

/// Follows what the host answered on an SFTP channel: handles of opened files, bytes
/// read, failures of journaled requests.
pub fn from_host(
    shared: &Shared,
    channel: u32,
    state: &Mutex<SftpState>,
    data: &[u8],
) -> Result<(), String> {
    let mut events = Vec::new();
    {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.from_host.extend_from_slice(data);
        while let Some(packet) = sftp::next_packet(&mut s.from_host).map_err(|e| e.to_string())? {
            match sftp::parse_response(&packet).map_err(|e| e.to_string())? {
                Response::Handle { id, handle } => {
                    if let Some(Pending::Open { path, flags }) = s.pending.remove(&id) {
                        s.handles.insert(
                            handle,
                            Handle {
                                path,
                                flags,
                                read: 0,
                                written: 0,
                            },
                        );
                    }
                }
                Response::Data { id, len } => {
                    if let Some(handle) = s.reads.remove(&id) {
                        if let Some(h) = s.handles.get_mut(&handle) {
                            h.read += len;
                        }
                    }
                }
                Response::Status { id, code, message } => {
                    s.reads.remove(&id);
                    let pending = s.pending.remove(&id);
                    if code != 0 {
                        let (op, path) = match pending {
                            Some(Pending::Open { path, .. }) => ("open", path),
                            Some(Pending::Op { op, path }) => (op, path),
                            None => continue,
                        };
                        events.push(SftpOp {
                            channel,
                            id,
                            op: op.into(),
                            path: Some(shared.rules.masks.mask_text(&path).into_owned()),
                            verdict: Verdict::Allow.as_str().into(),
                            action: "failed".into(),
                            status: Some(format!("{code}: {message}")),
                            ..SftpOp::default()
                        });
                    }
                }
                Response::Version | Response::Other { .. } => {}
            }
        }
    }
    if !events.is_empty() {
        let events: Vec<Event> = events
            .iter()
            .map(|e| Event::of(shared.id, kind::SFTP_OP, e))
            .collect();
        shared.record(&events)?;
    }
    Ok(())
}
