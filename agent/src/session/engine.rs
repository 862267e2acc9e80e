//! The IO loop of a decoded session, for every protocol: read -> [`Session`] ->
//! journal -> release. See the [module documentation](super) for the invariant.
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{AgentError, Approver, Counts, Ended, Failure, HoldWait, Io, Requester, Session, Step};
use crate::journal::{root_cause, Event, JournalHandle, SessionId};

/// Pending bytes in one direction above which the engine stops reading the other side.
pub const HIGH_WATER: usize = 1 << 20;
/// Bytes asked for per read.
pub const READ_CHUNK: usize = 64 * 1024;

/// A policy's `max_session_duration`, armed for one session.
#[derive(Debug, Clone)]
pub struct SessionCap {
    /// When the session reaches the cap.
    pub at: Instant,
    pub limit: Duration,
    /// The policy that sets it (named in the message).
    pub policy: Option<String>,
}

/// What the engine needs to know about the session it runs.
pub struct Context<'a> {
    pub id: SessionId,
    pub journal: &'a JournalHandle,
    /// Who decides on holds; `None`: a hold expires (is denied) at its timeout.
    pub approvals: Option<Arc<dyn Approver>>,
    /// The session as approvers are told.
    pub requester: Requester,
    /// Whether verdicts and limits are acted on (`enforce`) or only journaled.
    pub enforce: bool,
    pub idle_timeout: Duration,
    pub cap: Option<SessionCap>,
}

impl<'a> Context<'a> {
    /// The context of a session accepted at `accepted` and governed by `rules`.
    pub fn new(
        journal: &'a JournalHandle,
        rules: &super::SessionRules,
        approvals: Option<Arc<dyn Approver>>,
        requester: Requester,
        idle_timeout: Duration,
        accepted: Instant,
    ) -> Context<'a> {
        Context {
            id: requester.session,
            journal,
            approvals,
            requester,
            enforce: rules.enforce,
            idle_timeout,
            cap: rules.session_cap(accepted),
        }
    }
}

/// Reads what `io` has into `buf` (at most [`READ_CHUNK`] more); `side` names who failed.
pub async fn read_more(
    io: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    side: fn(String) -> Failure,
) -> Result<usize, Failure> {
    buf.reserve(READ_CHUNK);
    io.read_buf(buf).await.map_err(|e| side(e.to_string()))
}

/// Journals what the session staged; for a client's `requests`, as durably as
/// `journal_fsync` asks ([`JournalHandle::record_durably`]). If the journal refuses, the
/// client gets the protocol's error and the session ends.
async fn record<S: Session>(
    cx: &Context<'_>,
    session: &mut S,
    cw: &mut (impl AsyncWrite + Unpin),
    requests: bool,
) -> Result<(), Failure> {
    let events = session.take_events();
    let result = if requests {
        cx.journal.record_durably(&events).await.map(|_| ())
    } else {
        cx.journal.record(&events).map(|_| ())
    };
    if let Err(e) = result {
        warn!(session = cx.id, error = %e, cause = %root_cause(&e), "the journal cannot record this session; closing it");
        let _ = cw
            .write_all(&session.agent_error(AgentError::Journal(&e)))
            .await;
        return Err(Failure::Journal(crate::journal::error_chain(&e)));
    }
    Ok(())
}

/// Runs a session whose start-up (and authentication) is done, until it ends. `cbuf` and
/// `sbuf` hold bytes already read from each side and not yet given to the session.
#[allow(clippy::too_many_arguments)]
pub async fn run<S: Session>(
    cx: &Context<'_>,
    session: &mut S,
    client: Box<dyn Io>,
    server: Box<dyn Io>,
    mut cbuf: BytesMut,
    mut sbuf: BytesMut,
    counts: &mut Counts,
    cancel: &mut watch::Receiver<bool>,
) -> Result<Ended, Failure> {
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    // `max_session_duration`: armed until it fires (observe mode: once, journaled only).
    let mut cap_armed = cx.cap.is_some();
    let cap_at = tokio::time::Instant::from_std(
        cx.cap
            .as_ref()
            .map(|c| c.at)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365)),
    );
    let mut to_server = BytesMut::new();
    let mut to_client = BytesMut::new();
    let mut hold: Option<HoldWait> = None;
    let mut client_eof = false;
    // The client's half-close was passed on to the server.
    let mut server_write_shut = false;
    let mut server_eof = false;
    let mut terminated = false;
    let idle = cx.idle_timeout;
    let mut last_activity = Instant::now();
    loop {
        // Client messages already buffered, unless one is waiting for approval.
        if hold.is_none() && !terminated {
            match session.on_client(&mut cbuf)? {
                Step::Continue => {}
                Step::Terminate => terminated = true,
                Step::Hold(request) => {
                    info!(session = cx.id, seq = request.seq, rule = ?request.rule, "request held for approval");
                    let (announcement, wait) =
                        super::approval::start_hold(cx.approvals.as_ref(), &cx.requester, request);
                    // Journaled with the request, before the wait starts.
                    if let Some(announcement) = announcement {
                        session.push_event(Event::of(
                            cx.id,
                            super::gate::APPROVAL_REQUEST,
                            &announcement,
                        ));
                    }
                    hold = Some(wait);
                }
            }
        }
        // Observe mode: announced, never waited for (drained even without approvers).
        for request in session.take_would_hold() {
            if let Some(a) = &cx.approvals {
                a.would_hold(&cx.requester, request);
            }
        }
        // Client requests must be durable (per `journal_fsync`) before they are forwarded.
        if session.has_events() {
            record(cx, session, &mut cw, true).await?;
        }
        session.on_server(&mut sbuf)?;
        // Results are journaled before they reach the client too; they need not wait
        // for an fsync (nothing more reaches the server because of them).
        if session.has_events() {
            record(cx, session, &mut cw, false).await?;
        }
        to_server.extend_from_slice(&session.take_to_server());
        to_client.extend_from_slice(&session.take_to_client());

        if terminated && to_server.is_empty() && to_client.is_empty() {
            let _ = sw.shutdown().await;
            return Ok(Ended::ClientClosed);
        }
        if server_eof && to_client.is_empty() {
            let _ = cw.shutdown().await;
            // After a client's half-close the server ends because of it.
            return Ok(if client_eof {
                Ended::ClientClosed
            } else {
                Ended::ServerClosed
            });
        }
        if client_eof && to_server.is_empty() && hold.is_none() && !server_write_shut {
            // Half-close: pass the FIN on and relay (and journal) what the server still
            // answers; the session ends when the server closes (or idles out).
            let _ = sw.shutdown().await;
            server_write_shut = true;
        }

        let idle_deadline = tokio::time::Instant::from_std(last_activity + idle);
        tokio::select! {
            r = read_more(&mut cr, &mut cbuf, Failure::Client), if hold.is_none() && !client_eof && !terminated && to_server.len() < HIGH_WATER => {
                let n = r?;
                if n == 0 { client_eof = true; } else { counts.from_client += n as u64; }
                last_activity = Instant::now();
            }
            r = read_more(&mut sr, &mut sbuf, Failure::Server), if !server_eof && to_client.len() < HIGH_WATER => {
                let n = r?;
                if n == 0 { server_eof = true; } else { counts.from_server += n as u64; }
                last_activity = Instant::now();
            }
            r = sw.write(&to_server), if !to_server.is_empty() => {
                let n = r.map_err(|e| Failure::Server(e.to_string()))?;
                to_server.advance(n);
                if to_server.is_empty() {
                    sw.flush().await.map_err(|e| Failure::Server(e.to_string()))?;
                }
            }
            r = cw.write(&to_client), if !to_client.is_empty() => {
                let n = r.map_err(|e| Failure::Client(e.to_string()))?;
                to_client.advance(n);
                if to_client.is_empty() {
                    cw.flush().await.map_err(|e| Failure::Client(e.to_string()))?;
                }
            }
            outcome = async { hold.as_mut().expect("guarded").await }, if hold.is_some() => {
                hold = None;
                info!(session = cx.id, ?outcome, "hold resolved");
                if let Step::Terminate = session.resolve_hold(outcome)? {
                    terminated = true;
                }
                last_activity = Instant::now();
            }
            _ = tokio::time::sleep_until(idle_deadline), if hold.is_none() => {
                return Err(Failure::Idle);
            }
            _ = tokio::time::sleep_until(cap_at), if cap_armed => {
                cap_armed = false;
                let cap = cx.cap.as_ref().expect("armed only with a cap");
                let message = format!(
                    "session exceeded max_session_duration ({}) of policy {}",
                    humantime::format_duration(cap.limit),
                    cap.policy.as_deref().unwrap_or("(unnamed)")
                );
                if cx.enforce {
                    warn!(session = cx.id, "{message}; closing it");
                    // Behind what is already staged for the client, so no message is cut;
                    // bounded, since a client that does not read must not keep the session.
                    to_client.extend_from_slice(&session.agent_error(AgentError::SessionCap(&message)));
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        cw.write_all(&to_client).await?;
                        cw.flush().await
                    })
                    .await;
                    return Err(Failure::Limit(message));
                }
                info!(session = cx.id, "{message} (observe mode: not closed)");
                session.push_event(Event::of(
                                cx.id,
                    "session_limit",
                    &serde_json::json!({ "limit": "max_session_duration", "message": message, "enforced": false }),
                ));
            }
            _ = cancel.changed() => {
                if *cancel.borrow() {
                    let _ = cw.write_all(&session.agent_error(AgentError::Shutdown)).await;
                    return Err(Failure::Shutdown);
                }
            }
        }
    }
}
