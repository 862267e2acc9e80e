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
//!
//! TLS: Redis negotiates nothing, a TLS client sends its ClientHello at once. The
//! client's first byte decides (0x16: TLS, terminated with the agent CA under
//! `client_tls = "terminate"`, refused with an alert otherwise; anything else: RESP), so
//! the agent connects upstream once the client has spoken. To the server: the target's
//! `tls` ([`crate::tls::UpstreamTls::connect`], the PostgreSQL targets' settings),
//! independent of the client's leg.
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
use crate::session::{Approver, Counts, Ended, Failure, Io, Requester, SessionRules};

pub use runtime::{RedisRuntime, RedisTargetRuntime};

/// How long the server has to answer the agent's AUTH.
const AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    let result = serve_inner(&ctx, client, &mut counts, &mut cancel).await;
    Outcome::of_session(ctx.id, ctx.journal, "Redis", result, &counts)
}

async fn serve_inner(
    ctx: &RedisContext<'_>,
    client: TcpStream,
    counts: &mut Counts,
    cancel: &mut watch::Receiver<bool>,
) -> Result<CloseReason, Failure> {
    let Some((mut client, client_tls)) = client_side(ctx, client, cancel).await? else {
        return Ok(CloseReason::ClientClosed);
    };
    if let Some(why) = &ctx.refuse {
        // Redis clients speak first; the error is read as the answer to their first
        // command, then the connection closes.
        close_with(&mut client, &format!("ERR nhi-agent: {why}")).await;
        return Err(Failure::Limit(why.clone()));
    }
    let mut server = match upstream(ctx).await {
        Ok(server) => server,
        Err((failure, to_client)) => {
            close_with(&mut client, &format!("ERR nhi-agent: {to_client}")).await;
            return Err(failure);
        }
    };
    let upstream_tls = ctx.target_rt.upstream.enabled();
    if client_tls || upstream_tls {
        // Which legs are encrypted, for the auditor (PostgreSQL journals it at start-up).
        let event = Event::of(
            ctx.id,
            events::kind::TLS,
            &serde_json::json!({
                "client_tls": client_tls,
                "server_tls": ctx.target_rt.upstream.mode().to_string(),
            }),
        );
        if let Err(e) = ctx.journal.record(&[event]) {
            close_with(&mut client, &session::journal_refusal(&e)).await;
            return Err(Failure::Journal(crate::journal::error_chain(&e)));
        }
    }
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
    let gate = ctx
        .rules
        .gate("redis", ctx.approvals.as_ref(), &ctx.requester);
    let mut session = session::RedisSession::new(ctx.id, ctx.rules.clone(), gate, credential);
    let cx = engine::Context::new(
        ctx.journal,
        &ctx.rules,
        ctx.approvals.clone(),
        ctx.requester.clone(),
        ctx.idle_timeout,
        ctx.accepted,
    );
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

/// Answers the client with the error `text` and closes. What the client sent and the
/// agent did not read is drained first (bounded), so the close is not a reset that could
/// discard the error before the client reads it.
async fn close_with(client: &mut Box<dyn Io>, text: &str) {
    let _ = client.write_all(&error_reply(text)).await;
    let _ = client.shutdown().await;
    super::unrecorded::drain(client).await;
}

/// Waits for the client's first byte: a TLS ClientHello (0x16) is terminated with the
/// agent CA when the target has `client_tls = "terminate"` and refused with a
/// `handshake_failure` alert otherwise (Redis clients start TLS at once, nothing is
/// negotiated); anything else is RESP, served plain. The stream and whether it is TLS;
/// `None`: the client closed before sending anything.
async fn client_side(
    ctx: &RedisContext<'_>,
    client: TcpStream,
    cancel: &mut watch::Receiver<bool>,
) -> Result<Option<(Box<dyn Io>, bool)>, Failure> {
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        peeked = tokio::time::timeout(ctx.idle_timeout, client.peek(&mut first)) => peeked,
        _ = cancel.changed() => return Err(Failure::Shutdown),
    };
    match peeked {
        Err(_) => return Err(Failure::Idle),
        Ok(Err(e)) => return Err(Failure::Client(e.to_string())),
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(_)) => {}
    }
    if first[0] != super::http::TLS_HANDSHAKE {
        let _ = client.set_nodelay(true);
        return Ok(Some((Box::new(client), false)));
    }
    let Some(ca) = &ctx.target_rt.client_tls else {
        super::http::refuse_tls(client).await;
        return Err(Failure::Protocol(
            "client: TLS to a target without client_tls = \"terminate\" (it serves plain RESP only)"
                .into(),
        ));
    };
    let names: Vec<String> = ctx.target_rt.server_name.iter().cloned().collect();
    let config = ca
        .server_config_no_alpn(&names, &[ctx.orig_dst.ip()])
        .map_err(|e| Failure::Protocol(format!("TLS certificate for the client: {e}")))?;
    let _ = client.set_nodelay(true);
    let tls = tokio::time::timeout(
        TLS_HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsAcceptor::from(config).accept(client),
    )
    .await
    .map_err(|_| Failure::Client("TLS handshake timed out".into()))?
    .map_err(|e| Failure::Client(format!("TLS handshake: {e}")))?;
    Ok(Some((Box::new(tls), true)))
}

/// Connects to the server, with TLS per the target's `tls`. The error carries what the
/// client reads after `ERR nhi-agent: ` (the cause, never a secret).
async fn upstream(ctx: &RedisContext<'_>) -> Result<Box<dyn Io>, (Failure, String)> {
    let tcp = ctx
        .origin
        .connect(ctx.orig_dst, ctx.connect_timeout)
        .await
        .map_err(|e| {
            (
                Failure::Upstream(e.to_string()),
                format!("cannot connect to the server ({e})"),
            )
        })?;
    let _ = tcp.set_nodelay(true);
    let tls = &ctx.target_rt.upstream;
    if !tls.enabled() {
        return Ok(Box::new(tcp));
    }
    match tokio::time::timeout(ctx.connect_timeout, tls.connect(tcp, ctx.orig_dst, None)).await {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(e)) => {
            let why = match &e {
                crate::tls::TlsError::Handshake { failure, .. } => failure.to_string(),
                other => other.to_string(),
            };
            Err((
                Failure::Upstream(format!("TLS: {e}")),
                format!("TLS to the server failed (tls = \"{}\"): {why}", tls.mode()),
            ))
        }
        Err(_) => Err((
            Failure::Upstream("TLS handshake timed out".into()),
            "TLS to the server failed: the handshake timed out".into(),
        )),
    }
}

/// Sends the agent's `AUTH` and reads its answer. The attempt is journaled
/// (`redis_auth`: the user, never the password); a refusal ends the session and the
/// client reads why.
async fn authenticate(
    ctx: &RedisContext<'_>,
    client: &mut Box<dyn Io>,
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
        close_with(
            client,
            &format!("ERR nhi-agent: the server refused the agent's credential for user {user}"),
        )
        .await;
        return Err(Failure::Auth(error));
    }
    Ok(())
}
