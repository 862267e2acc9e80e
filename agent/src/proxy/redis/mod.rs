//! The Redis proxy (`protocol = "redis"`): the agent's own authentication upstream, then
//! [`session::RedisSession`] on the protocol-neutral engine ([`crate::session::engine`]),
//! which journals what the session staged for a read before it forwards anything.
//!
//! Architecture invariant: a command reaches the server only after the journal accepted
//! its `redis_command` event; if the journal refuses, the client gets `-ERR nhi-agent:
//! the audit journal cannot record ...` and the session ends.
//!
//! Credentials: with a target `password_file`/`credential` the agent connects and sends
//! `AUTH [user] <password>` itself before it reads the client's first command (Redis
//! clients speak first, so the bot never waits on it). The client's own `AUTH` is then
//! answered by the agent (`+OK`) and never forwarded; see [`session`].
pub mod events;
pub mod runtime;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::relay::{CloseReason, Outcome};
use crate::journal::{Event, JournalHandle, SessionId};
use crate::protocol::redis::{encode_command, error_reply, Frame, ServerDecoder};
use crate::session::engine::{self, read_more, READ_CHUNK};
use crate::session::gate::Gate;
use crate::session::{Approver, Counts, Ended, Failure, Io, Requester, SessionRules};

pub use runtime::{RedisRuntime, RedisTargetRuntime};

/// How long the server has to answer the agent's AUTH.
const AUTH_TIMEOUT: Duration = Duration::from_secs(30);

/// What a Redis session needs from the accepting code.
pub struct RedisContext<'a> {
    pub id: SessionId,
    pub journal: &'a JournalHandle,
    pub target_rt: Arc<RedisTargetRuntime>,
    pub rules: Arc<SessionRules>,
    pub orig_dst: SocketAddr,
    pub origin: super::Origin,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub approvals: Option<Arc<dyn Approver>>,
    pub requester: Requester,
    /// `Some(reason)`: the session is refused (disk budget, connection limit): the
    /// client reads `-ERR nhi-agent: <reason>` and nothing is forwarded.
    pub refuse: Option<String>,
    /// When the connection was accepted (`max_session_duration` counts from it).
    pub accepted: Instant,
}

/// Serves one intercepted Redis connection until it ends.
pub async fn serve(
    ctx: RedisContext<'_>,
    client: TcpStream,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let mut counts = Counts::default();
    let reason = match serve_inner(&ctx, client, &mut counts, &mut cancel).await {
        Ok(reason) => reason,
        Err(failure) => {
            let reason: CloseReason = failure.into();
            if let CloseReason::Protocol(why) = &reason {
                warn!(session = ctx.id, reason = %why, "closing Redis session");
                let event = Event::of(
                    ctx.id,
                    "protocol_error",
                    &serde_json::json!({ "reason": why }),
                );
                let _ = ctx.journal.record(&[event]);
            }
            reason
        }
    };
    Outcome {
        bytes_from_client: counts.from_client,
        bytes_from_server: counts.from_server,
        reason,
    }
}

async fn serve_inner(
    ctx: &RedisContext<'_>,
    mut client: TcpStream,
    counts: &mut Counts,
    cancel: &mut watch::Receiver<bool>,
) -> Result<CloseReason, Failure> {
    if let Some(why) = &ctx.refuse {
        // Redis clients speak first; the error is read as the answer to their first
        // command, then the connection closes.
        let _ = client
            .write_all(&error_reply(&format!("ERR nhi-agent: {why}")))
            .await;
        let _ = client.shutdown().await;
        return Err(Failure::Limit(why.clone()));
    }
    let tcp = ctx
        .origin
        .connect(ctx.orig_dst, ctx.connect_timeout)
        .await
        .map_err(|e| Failure::Upstream(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut server: Box<dyn Io> = Box::new(tcp);
    let mut sbuf = BytesMut::with_capacity(READ_CHUNK);
    let credential = match &ctx.target_rt.credential {
        None => None,
        Some(secret) => {
            let password = Bytes::copy_from_slice(secret.expose());
            let command = match &ctx.target_rt.user {
                Some(user) => encode_command(&[
                    Bytes::from_static(b"AUTH"),
                    Bytes::copy_from_slice(user.as_bytes()),
                    password,
                ]),
                None => encode_command(&[Bytes::from_static(b"AUTH"), password]),
            };
            authenticate(ctx, &mut client, &mut server, &mut sbuf, counts, &command).await?;
            Some(session::Credential {
                auth_command: command,
            })
        }
    };
    let policy = ctx.rules.policy.as_ref();
    let mut gate = Gate::new(
        "redis",
        ctx.rules.enforce,
        policy
            .map(|p| p.approval_timeout)
            .unwrap_or(crate::policy::DEFAULT_APPROVAL_TIMEOUT),
    );
    if let Some(approvals) = &ctx.approvals {
        let (approvals, workload, target) = (
            approvals.clone(),
            ctx.requester.identity.workload.clone(),
            ctx.requester.identity.target.clone(),
        );
        gate.set_grant_check(Arc::new(move |rule| {
            approvals.grant_for(&workload, &target, rule)
        }));
    }
    let mut session = session::RedisSession::new(ctx.id, ctx.rules.clone(), gate, credential);
    let cap = policy.and_then(|p| {
        p.max_session_duration.map(|limit| engine::SessionCap {
            at: ctx.accepted + limit,
            limit,
            policy: p.name.clone(),
        })
    });
    let cx = engine::Context {
        id: ctx.id,
        journal: ctx.journal,
        approvals: ctx.approvals.clone(),
        requester: ctx.requester.clone(),
        enforce: ctx.rules.enforce,
        idle_timeout: ctx.idle_timeout,
        cap,
    };
    let result = engine::run(
        &cx,
        &mut session,
        Box::new(client),
        server,
        BytesMut::with_capacity(READ_CHUNK),
        sbuf,
        counts,
        cancel,
    )
    .await;
    debug!(
        session = ctx.id,
        commands = session.commands_seen,
        refused = session.commands_refused,
        "Redis session ended"
    );
    let ended = result?;
    if let Some(why) = session.protocol_error() {
        // The client read `-ERR Protocol error: ...`; the event was journaled with it.
        warn!(session = ctx.id, reason = %why, "closing Redis session");
        return Ok(CloseReason::Protocol(why.to_owned()));
    }
    Ok(match ended {
        Ended::ClientClosed => CloseReason::ClientClosed,
        Ended::ServerClosed => CloseReason::ServerClosed,
    })
}

/// Sends the agent's `AUTH` and reads its answer. The attempt is journaled
/// (`redis_auth`: the user, never the password); a refusal ends the session and the
/// client reads why.
async fn authenticate(
    ctx: &RedisContext<'_>,
    client: &mut TcpStream,
    server: &mut Box<dyn Io>,
    sbuf: &mut BytesMut,
    counts: &mut Counts,
    command: &Bytes,
) -> Result<(), Failure> {
    let user = ctx.target_rt.user.as_deref().unwrap_or("default");
    server
        .write_all(command)
        .await
        .map_err(|e| Failure::Server(e.to_string()))?;
    let mut dec = ServerDecoder::default();
    let reply = loop {
        if let Some(frame) = dec
            .decode(sbuf)
            .map_err(|e| Failure::Protocol(format!("server: {e}")))?
        {
            break frame.value;
        }
        let n = tokio::time::timeout(AUTH_TIMEOUT, read_more(server, sbuf, Failure::Server))
            .await
            .map_err(|_| Failure::Server("no answer to the agent's AUTH".into()))??;
        if n == 0 {
            return Err(Failure::Server("closed during authentication".into()));
        }
        counts.from_server += n as u64;
    };
    let error = match &reply {
        Frame::Simple(s) if &s[..] == b"OK" => None,
        Frame::Error(e) | Frame::BulkError(e) => Some(String::from_utf8_lossy(e).into_owned()),
        other => Some(format!("unexpected {} answer", other.type_name())),
    };
    let event = Event::of(
        ctx.id,
        events::kind::AUTH,
        &serde_json::json!({ "injected": true, "user": user, "error": error }),
    );
    if let Err(e) = ctx.journal.record(&[event]) {
        let _ = client
            .write_all(&error_reply(&format!(
                "ERR nhi-agent: the audit journal cannot record ({}); nothing was forwarded",
                crate::journal::root_cause(&e)
            )))
            .await;
        return Err(Failure::Journal(crate::journal::error_chain(&e)));
    }
    if let Some(error) = error {
        warn!(session = ctx.id, user, %error, "the server refused the agent's credential");
        let _ = client
            .write_all(&error_reply(&format!(
                "ERR nhi-agent: the server refused the agent's credential for user {user}"
            )))
            .await;
        return Err(Failure::Auth(error));
    }
    Ok(())
}
