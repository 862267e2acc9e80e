//! The PostgreSQL proxy: start-up (TLS, cancel requests), authentication (passed
//! through, or answered by the agent with a credential it holds), then the session on the
//! protocol-neutral engine ([`crate::session::engine`]): [`PgSession`] decodes the bytes
//! the engine reads and hands every message to the sans-IO [`flow::Flow`]; the engine
//! journals what the flow staged before it forwards.
//!
//! Architecture invariant: a client message reaches the server only after the journal
//! accepted the events the flow staged for it ([`JournalHandle::record`]); if the journal
//! refuses, the client gets a FATAL error and the session closes ("journal failure").
pub mod events;
pub mod flow;
mod refuse;
mod runtime;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::debug;

use crate::config::Target;
use crate::credential::Secret;
use crate::identity::SessionIdentity;
use crate::journal::{Event, JournalHandle, SessionId};
use crate::protocol::postgres::{
    auth, encode, AuthRequest, BackendDecoder, BackendMessage, Decoded, FrontendDecoder,
    FrontendMessage, PgStr, StartupMessage,
};

pub use crate::session::{
    Approver, DecisionNote, GrantCheck, HoldOutcome, HoldRequest, HoldWait, Io, PendingHold,
    Requester, Standing, Step,
};
pub use flow::{Flow, SessionRules};
pub use refuse::{journal_refusal, refuse_unrecorded, SQLSTATE_JOURNAL};
pub use runtime::{PgRuntime, TargetRuntime};

use super::relay::{CloseReason, Outcome};
use crate::session::engine::{self, read_more, READ_CHUNK};
use crate::session::{AgentError, Counts, Ended, Failure, Session, SessionError};

/// SQLSTATE of the FATAL error that ends a session at `max_session_duration`
/// (idle_session_timeout's code: a session ended by a time limit).
pub const SQLSTATE_SESSION_CAP: &str = "57P05";

/// How long a client has to finish its start-up packet(s).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to forward a client's CancelRequest: keyed by (backend pid, key the client got).
/// It holds the session's own target runtime (upstream TLS settings), not an index: the
/// cancel request may arrive after a reload changed or reordered the targets.
#[derive(Clone)]
pub struct CancelTarget {
    pub session: SessionId,
    pub addr: SocketAddr,
    /// Where the session's upstream connection left from: the cancel goes the same way.
    pub origin: super::Origin,
    pub target: Arc<TargetRuntime>,
    pub real_key: Bytes,
}

/// Every live session's cancel key, agent-wide.
pub type CancelKeys = Mutex<HashMap<(u32, Bytes), CancelTarget>>;

/// What the session needs from the accepting code.
pub struct SessionContext<'a> {
    pub id: SessionId,
    pub journal: &'a JournalHandle,
    pub target: &'a Target,
    /// The runtime of `target` in the same snapshot as `target` (see `proxy::Snapshot`).
    pub target_rt: Arc<TargetRuntime>,
    pub runtime: Arc<PgRuntime>,
    pub rules: Arc<SessionRules>,
    pub orig_dst: SocketAddr,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub cancel_keys: &'a CancelKeys,
    pub approvals: Option<Arc<dyn Approver>>,
    /// Who the session is (from its start): for approval announcements and grants.
    pub identity: Arc<SessionIdentity>,
    /// Refuse the session after its start-up with a FATAL, nothing forwarded (the disk
    /// budget is exceeded, the workload is at its connection limit).
    pub refuse: Option<Refusal>,
    /// Where the connection was made: the upstream connection leaves from there.
    pub origin: super::Origin,
}

/// A session refused right after its start-up: the client reads FATAL `sqlstate`
/// "nhi-agent: `message`", and the session ends with `reason`.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub sqlstate: &'static str,
    pub message: String,
    pub reason: CloseReason,
}

impl From<Failure> for CloseReason {
    fn from(f: Failure) -> CloseReason {
        match f {
            Failure::Client(e) => CloseReason::ClientReset(e),
            Failure::Server(e) => CloseReason::ServerReset(e),
            Failure::Protocol(e) => CloseReason::Protocol(e),
            Failure::Journal(e) => CloseReason::JournalFailure(e),
            Failure::Upstream(e) => CloseReason::UpstreamConnect(e),
            Failure::Auth(e) => CloseReason::Protocol(format!("authentication failed: {e}")),
            Failure::Limit(e) => CloseReason::PolicyLimit(e),
            Failure::Idle => CloseReason::IdleTimeout,
            Failure::Shutdown => CloseReason::AgentShutdown,
        }
    }
}

/// Serves one intercepted PostgreSQL connection until it ends.
pub async fn serve(
    ctx: SessionContext<'_>,
    client: TcpStream,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let mut counts = Counts::default();
    let result = serve_inner(&ctx, client, &mut counts, &mut cancel).await;
    Outcome::of_session(ctx.id, ctx.journal, "PostgreSQL", result, &counts)
}

async fn serve_inner(
    ctx: &SessionContext<'_>,
    client: TcpStream,
    counts: &mut Counts,
    cancel: &mut watch::Receiver<bool>,
) -> Result<CloseReason, Failure> {
    let target_rt = &ctx.target_rt;
    let accepted = Instant::now();
    // ------------------------------------------------------------ client start-up
    let mut fdec = FrontendDecoder::new();
    let mut cbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut client: Box<dyn Io> = Box::new(client);
    let mut client_tls = false;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let startup = loop {
        let decoded = fdec
            .decode(&mut cbuf)
            .map_err(|e| Failure::Protocol(format!("client start-up: {e}")))?;
        let Some(decoded) = decoded else {
            let n = tokio::time::timeout_at(
                deadline.into(),
                read_more(&mut client, &mut cbuf, Failure::Client),
            )
            .await
            .map_err(|_| {
                Failure::Protocol("client did not finish its start-up in time".into())
            })??;
            if n == 0 {
                return Ok(CloseReason::ClientClosed);
            }
            counts.from_client += n as u64;
            continue;
        };
        match decoded.message {
            FrontendMessage::SslRequest => {
                // Bytes behind the request were sent before the answer was known: an
                // injection attempt (CVE-2021-23214).
                if !cbuf.is_empty() {
                    return Err(Failure::Protocol(
                        "client sent data after SSLRequest before the answer".into(),
                    ));
                }
                match (&ctx.runtime.ca, target_rt.client_tls && !client_tls) {
                    (Some(ca), true) => {
                        // The certificate names the address the client dialled, so
                        // verify-full clients accept it (and the configured name).
                        let names: Vec<String> = target_rt.server_name.iter().cloned().collect();
                        let config = ca
                            .server_config(&names, &[ctx.orig_dst.ip()])
                            .map_err(|e| Failure::Protocol(format!("TLS certificate: {e}")))?;
                        client
                            .write_all(b"S")
                            .await
                            .map_err(|e| Failure::Client(e.to_string()))?;
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        let stream = acceptor
                            .accept(client)
                            .await
                            .map_err(|e| Failure::Client(format!("TLS handshake: {e}")))?;
                        client = Box::new(stream);
                        client_tls = true;
                    }
                    _ => client
                        .write_all(&encode::ssl_refused())
                        .await
                        .map_err(|e| Failure::Client(e.to_string()))?,
                }
            }
            FrontendMessage::GssEncRequest => {
                if !cbuf.is_empty() {
                    return Err(Failure::Protocol(
                        "client sent data after GSSENCRequest before the answer".into(),
                    ));
                }
                client
                    .write_all(&encode::ssl_refused())
                    .await
                    .map_err(|e| Failure::Client(e.to_string()))?;
            }
            FrontendMessage::CancelRequest { pid, key } => {
                return forward_cancel(ctx, pid, key).await;
            }
            FrontendMessage::Startup(startup) => break startup,
            other => {
                return Err(Failure::Protocol(format!(
                    "unexpected {} during start-up",
                    frontend_name(&other)
                )))
            }
        }
    };
    if startup.version.major() != 3 {
        let error = encode::error_response(
            "FATAL",
            "0A000",
            &format!(
                "unsupported frontend protocol {}.{}: the agent speaks 3.x",
                startup.version.major(),
                startup.version.minor()
            ),
        );
        let _ = client.write_all(&error).await;
        return Err(Failure::Protocol("unsupported protocol version".into()));
    }
    if startup
        .param("replication")
        .is_some_and(|v| v != "false" && v != "off" && v != "0")
    {
        let error = encode::error_response(
            "FATAL",
            "0A000",
            "nhi-agent: replication connections are not supported through the agent",
        );
        let _ = client.write_all(&error).await;
        return Err(Failure::Protocol("replication connection refused".into()));
    }
    if let Some(refusal) = &ctx.refuse {
        let error = encode::error_response(
            "FATAL",
            refusal.sqlstate,
            &format!("nhi-agent: {}", refusal.message),
        );
        let _ = client.write_all(&error).await;
        return match &refusal.reason {
            CloseReason::Protocol(why) => Err(Failure::Protocol(why.clone())),
            other => Ok(other.clone()),
        };
    }
    let client_user = startup.user().unwrap_or("").to_owned();
    let login_user = match &target_rt.credential {
        Some(_) => ctx
            .rules
            .policy
            .as_ref()
            .and_then(|p| p.db_user.clone())
            .or_else(|| ctx.target.postgres.as_ref().and_then(|p| p.user.clone()))
            .unwrap_or_else(|| client_user.clone()),
        None => client_user.clone(),
    };
    let startup_event = events::Startup {
        user: Cow::Borrowed(&client_user),
        db_user: Cow::Borrowed(&login_user),
        database: Cow::Borrowed(startup.database().unwrap_or(&client_user)),
        application_name: startup.application_name().map(Cow::Borrowed),
        params: startup
            .params
            .iter()
            .filter(|(k, _)| k.as_str() != "user" && k.as_str() != "database")
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
            .collect(),
        protocol_version: Cow::Owned(format!(
            "{}.{}",
            startup.version.major(),
            startup.version.minor()
        )),
        client_tls,
        credential_injected: target_rt.credential.is_some(),
    };
    let event = Event::of(ctx.id, events::kind::STARTUP, &startup_event);
    if let Err(e) = ctx.journal.record(&[event]) {
        // Refused with a reason the client shows, not a bare close.
        let _ = client.write_all(&journal_refusal(&e)).await;
        return Err(Failure::Journal(crate::journal::error_chain(&e)));
    }

    // ------------------------------------------------------------ upstream
    let tcp = ctx
        .origin
        .connect(ctx.orig_dst, ctx.connect_timeout)
        .await
        .map_err(|e| Failure::Upstream(e.to_string()))?;
    let mut server: Box<dyn Io> = Box::new(
        target_rt
            .upstream
            .negotiate_postgres(tcp, ctx.orig_dst)
            .await
            .map_err(|e| Failure::Upstream(format!("TLS: {e}")))?,
    );
    let upstream_startup = rewrite_user(&startup, &login_user);
    server
        .write_all(&upstream_startup)
        .await
        .map_err(|e| Failure::Server(e.to_string()))?;

    // ------------------------------------------------------------ authentication
    let mut bdec = BackendDecoder::new();
    let mut sbuf = BytesMut::with_capacity(READ_CHUNK);
    fdec.startup_done();
    let method = authenticate(
        ctx,
        &mut client,
        &mut server,
        &mut fdec,
        &mut bdec,
        &mut cbuf,
        &mut sbuf,
        counts,
        target_rt.credential.as_ref(),
        &login_user,
        client_tls,
    )
    .await?;
    debug!(session = ctx.id, method, "authenticated");

    // ------------------------------------------------------------ session
    let mut fake_key = [0u8; 4];
    getrandom::fill(&mut fake_key).map_err(|e| Failure::Protocol(format!("no randomness: {e}")))?;
    let requester = Requester {
        session: ctx.id,
        identity: ctx.identity.clone(),
    };
    let mut flow = Flow::new(ctx.id, ctx.rules.clone(), fake_key);
    if let Some(approvals) = &ctx.approvals {
        flow.set_grant_check(requester.grant_check(approvals));
    }
    let cx = engine::Context::new(
        ctx.journal,
        &ctx.rules,
        ctx.approvals.clone(),
        requester,
        ctx.idle_timeout,
        accepted,
    );
    let mut session = PgSession {
        flow,
        fdec,
        bdec,
        cancel: CancelRegistration {
            keys: ctx.cancel_keys,
            entry: CancelTarget {
                session: ctx.id,
                addr: ctx.orig_dst,
                origin: ctx.origin.clone(),
                target: ctx.target_rt.clone(),
                real_key: Bytes::new(),
            },
            registered: false,
        },
    };
    let result = engine::run(
        &cx,
        &mut session,
        client,
        server,
        cbuf,
        sbuf,
        counts,
        cancel,
    )
    .await;
    let flow = &session.flow;
    if let Some(key) = &flow.cancel_key {
        ctx.cancel_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(key.pid, key.fake.clone()));
    }
    debug!(
        session = ctx.id,
        statements = flow.statements_seen,
        refused = flow.statements_refused,
        "PostgreSQL session ended"
    );
    result.map(|ended| match ended {
        Ended::ClientClosed => CloseReason::ClientClosed,
        Ended::ServerClosed => CloseReason::ServerClosed,
    })
}

/// The PostgreSQL protocol on the session engine: frames the bytes the engine reads into
/// messages for the [`Flow`], and registers the session's cancel key once the server
/// sent it.
struct PgSession<'a> {
    flow: Flow,
    fdec: FrontendDecoder,
    bdec: BackendDecoder,
    cancel: CancelRegistration<'a>,
}

/// The agent-wide cancel key entry of one session, registered once it is known.
struct CancelRegistration<'a> {
    keys: &'a CancelKeys,
    /// Everything but the real key, which comes with BackendKeyData.
    entry: CancelTarget,
    registered: bool,
}

impl Session for PgSession<'_> {
    fn on_client(&mut self, buf: &mut BytesMut) -> Result<Step, SessionError> {
        loop {
            let Some(msg) = self
                .fdec
                .decode(buf)
                .map_err(|e| SessionError(format!("client: {e}")))?
            else {
                return Ok(Step::Continue);
            };
            match self.flow.on_client(msg).map_err(|e| SessionError(e.0))? {
                Step::Continue => {}
                other => return Ok(other),
            }
        }
    }

    fn on_server(&mut self, buf: &mut BytesMut) -> Result<(), SessionError> {
        while let Some(msg) = self
            .bdec
            .decode(buf)
            .map_err(|e| SessionError(format!("server: {e}")))?
        {
            self.flow.on_server(msg).map_err(|e| SessionError(e.0))?;
        }
        if !self.cancel.registered {
            if let Some(key) = &self.flow.cancel_key {
                let mut entry = self.cancel.entry.clone();
                entry.real_key = key.real.clone();
                self.cancel
                    .keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((key.pid, key.fake.clone()), entry);
                self.cancel.registered = true;
            }
        }
        Ok(())
    }

    fn resolve_hold(&mut self, outcome: HoldOutcome) -> Result<Step, SessionError> {
        self.flow
            .resolve_hold(outcome)
            .map_err(|e| SessionError(e.0))
    }

    fn take_would_hold(&mut self) -> Vec<HoldRequest> {
        self.flow.take_would_hold()
    }

    fn push_event(&mut self, event: Event) {
        self.flow.push_event(event);
    }

    fn has_events(&self) -> bool {
        self.flow.has_events()
    }

    fn take_events(&mut self) -> Vec<Event> {
        self.flow.take_events()
    }

    fn take_to_server(&mut self) -> BytesMut {
        self.flow.take_to_server()
    }

    fn take_to_client(&mut self) -> BytesMut {
        self.flow.take_to_client()
    }

    fn agent_error(&self, error: AgentError<'_>) -> Bytes {
        match error {
            AgentError::Journal(e) => journal_refusal(e),
            // 57P05 (the class PostgreSQL uses when it ends a session on a timeout): psql
            // prints "FATAL: ..." with the message and stops.
            AgentError::SessionCap(message) => encode::error_response(
                "FATAL",
                SQLSTATE_SESSION_CAP,
                &format!("nhi-agent: {message}"),
            ),
            AgentError::Shutdown => {
                encode::error_response("FATAL", "57P01", "nhi-agent: the agent is shutting down")
            }
        }
    }
}

/// The StartupMessage to send upstream: the client's, with `user` replaced when the
/// agent logs in as someone else.
fn rewrite_user(startup: &StartupMessage, user: &str) -> Bytes {
    let mut params = startup.params.clone();
    match params.iter_mut().find(|(k, _)| k.as_str() == "user") {
        Some((_, v)) => *v = PgStr::from(user.to_owned()),
        None => params.push((PgStr::from_static("user"), PgStr::from(user.to_owned()))),
    }
    FrontendMessage::Startup(StartupMessage {
        version: startup.version,
        params,
    })
    .to_bytes()
}

fn frontend_name(m: &FrontendMessage) -> &'static str {
    match m {
        FrontendMessage::SslRequest => "SSLRequest",
        FrontendMessage::GssEncRequest => "GSSENCRequest",
        FrontendMessage::CancelRequest { .. } => "CancelRequest",
        FrontendMessage::Startup(_) => "StartupMessage",
        _ => "a tagged message",
    }
}

/// Reads one server message during authentication.
async fn next_server(
    server: &mut Box<dyn Io>,
    bdec: &mut BackendDecoder,
    sbuf: &mut BytesMut,
    counts: &mut Counts,
) -> Result<Decoded<BackendMessage>, Failure> {
    loop {
        if let Some(m) = bdec
            .decode(sbuf)
            .map_err(|e| Failure::Protocol(format!("server: {e}")))?
        {
            return Ok(m);
        }
        let n = tokio::time::timeout(STARTUP_TIMEOUT, read_more(server, sbuf, Failure::Server))
            .await
            .map_err(|_| Failure::Server("no answer during authentication".into()))??;
        if n == 0 {
            return Err(Failure::Server("closed during authentication".into()));
        }
        counts.from_server += n as u64;
    }
}

async fn next_client(
    client: &mut Box<dyn Io>,
    fdec: &mut FrontendDecoder,
    cbuf: &mut BytesMut,
    counts: &mut Counts,
) -> Result<Decoded<FrontendMessage>, Failure> {
    loop {
        if let Some(m) = fdec
            .decode(cbuf)
            .map_err(|e| Failure::Protocol(format!("client: {e}")))?
        {
            return Ok(m);
        }
        let n = tokio::time::timeout(STARTUP_TIMEOUT, read_more(client, cbuf, Failure::Client))
            .await
            .map_err(|_| Failure::Client("no answer during authentication".into()))??;
        if n == 0 {
            return Err(Failure::Client("closed during authentication".into()));
        }
        counts.from_client += n as u64;
    }
}

/// Runs the authentication exchange; returns the method used. With a credential the
/// agent answers every challenge itself and the client only sees AuthenticationOk;
/// without one, challenges and answers are relayed (never journaled).
#[allow(clippy::too_many_arguments)]
async fn authenticate(
    ctx: &SessionContext<'_>,
    client: &mut Box<dyn Io>,
    server: &mut Box<dyn Io>,
    fdec: &mut FrontendDecoder,
    bdec: &mut BackendDecoder,
    cbuf: &mut BytesMut,
    sbuf: &mut BytesMut,
    counts: &mut Counts,
    credential: Option<&Secret>,
    login_user: &str,
    client_tls: bool,
) -> Result<&'static str, Failure> {
    let mut method = "trust";
    let mut scram: Option<auth::ScramClient> = None;
    loop {
        let msg = next_server(server, bdec, sbuf, counts).await?;
        match (&msg.message, credential) {
            (BackendMessage::Authentication(AuthRequest::Ok), _) => {
                client
                    .write_all(&msg.raw)
                    .await
                    .map_err(|e| Failure::Client(e.to_string()))?;
                let event = Event::of(
                    ctx.id,
                    events::kind::AUTH,
                    &serde_json::json!({ "method": method, "injected": credential.is_some(), "user": login_user }),
                );
                if let Err(e) = ctx.journal.record(&[event]) {
                    let _ = client.write_all(&journal_refusal(&e)).await;
                    return Err(Failure::Journal(crate::journal::error_chain(&e)));
                }
                return Ok(method);
            }
            (BackendMessage::ErrorResponse(fields), _) => {
                let code = fields.code().unwrap_or("").to_owned();
                let message = fields.message().unwrap_or("").to_owned();
                let _ = client.write_all(&msg.raw).await;
                let event = Event::of(
                    ctx.id,
                    events::kind::AUTH,
                    &serde_json::json!({ "method": method, "injected": credential.is_some(), "user": login_user, "error": { "sqlstate": code, "message": message } }),
                );
                let _ = ctx.journal.record(&[event]);
                return Err(Failure::Auth(format!("{code} {message}")));
            }
            (BackendMessage::NegotiateProtocolVersion { .. }, _)
            | (BackendMessage::NoticeResponse(_), _)
            | (BackendMessage::ParameterStatus { .. }, _) => {
                client
                    .write_all(&msg.raw)
                    .await
                    .map_err(|e| Failure::Client(e.to_string()))?;
            }
            // The agent holds the password: it answers, the client sees nothing.
            (BackendMessage::Authentication(request), Some(password)) => {
                let reply = match request {
                    AuthRequest::CleartextPassword => {
                        method = "password";
                        auth::password_message(password)
                    }
                    AuthRequest::Md5Password { salt } => {
                        method = "md5";
                        let response = auth::md5_response(login_user, password, *salt);
                        auth::password_message(&response)
                    }
                    AuthRequest::Sasl { mechanisms } => {
                        if !mechanisms.iter().any(|m| m.as_str() == auth::ScramClient::MECHANISM) {
                            return Err(Failure::Auth(format!(
                                "the server offers no SASL mechanism the agent supports ({})",
                                mechanisms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
                            )));
                        }
                        method = "scram-sha-256";
                        let client_scram = auth::ScramClient::new(password);
                        let first = client_scram.client_first();
                        scram = Some(client_scram);
                        auth::sasl_initial_response(auth::ScramClient::MECHANISM, &first)
                    }
                    AuthRequest::SaslContinue { data } => {
                        let s = scram.as_mut().ok_or_else(|| {
                            Failure::Protocol("SASL continue without SASL".into())
                        })?;
                        let final_msg = s
                            .server_first(data)
                            .map_err(|e| Failure::Auth(e.to_string()))?;
                        auth::sasl_response(&final_msg)
                    }
                    AuthRequest::SaslFinal { data } => {
                        let s = scram.as_ref().ok_or_else(|| {
                            Failure::Protocol("SASL final without SASL".into())
                        })?;
                        s.server_final(data)
                            .map_err(|e| Failure::Auth(e.to_string()))?;
                        continue;
                    }
                    other => {
                        return Err(Failure::Auth(format!(
                            "the server asks for an authentication method the agent cannot answer ({other:?})"
                        )))
                    }
                };
                server
                    .write_all(&reply)
                    .await
                    .map_err(|e| Failure::Server(e.to_string()))?;
            }
            // Pass-through: relay the challenge, and the client's answer if one is due.
            (BackendMessage::Authentication(request), None) => {
                let answer_due = match request {
                    AuthRequest::CleartextPassword => {
                        method = "password";
                        true
                    }
                    AuthRequest::Md5Password { .. } => {
                        method = "md5";
                        true
                    }
                    AuthRequest::Sasl { mechanisms } => {
                        method = "scram-sha-256";
                        if client_tls {
                            // Channel binding would bind to the agent's certificate, which
                            // the server never saw: offer only the unbound mechanism.
                            let names: Vec<&str> = mechanisms
                                .iter()
                                .map(|m| m.as_str())
                                .filter(|m| !m.ends_with("-PLUS"))
                                .collect();
                            client
                                .write_all(&auth::authentication_sasl(&names))
                                .await
                                .map_err(|e| Failure::Client(e.to_string()))?;
                        } else {
                            client
                                .write_all(&msg.raw)
                                .await
                                .map_err(|e| Failure::Client(e.to_string()))?;
                        }
                        let answer = next_client(client, fdec, cbuf, counts).await?;
                        server
                            .write_all(&answer.raw)
                            .await
                            .map_err(|e| Failure::Server(e.to_string()))?;
                        continue;
                    }
                    AuthRequest::SaslContinue { .. } => true,
                    AuthRequest::SaslFinal { .. } => false,
                    AuthRequest::Other { code, .. } => {
                        method = "other";
                        // GSS/SSPI continue exchanges: 8 (GSSContinue) expects answers.
                        *code != 0
                    }
                    AuthRequest::Ok => false,
                };
                client
                    .write_all(&msg.raw)
                    .await
                    .map_err(|e| Failure::Client(e.to_string()))?;
                if answer_due {
                    let answer = next_client(client, fdec, cbuf, counts).await?;
                    match answer.message {
                        FrontendMessage::AuthResponse(_) => {}
                        FrontendMessage::Terminate => {
                            return Err(Failure::Client("gave up during authentication".into()))
                        }
                        _ => {
                            return Err(Failure::Protocol(
                                "client sent something else than a password message".into(),
                            ))
                        }
                    }
                    server
                        .write_all(&answer.raw)
                        .await
                        .map_err(|e| Failure::Server(e.to_string()))?;
                }
            }
            (other, _) => {
                return Err(Failure::Protocol(format!(
                    "unexpected server message during authentication: {}",
                    backend_name(other)
                )))
            }
        }
    }
}

fn backend_name(m: &BackendMessage) -> String {
    let dbg = format!("{m:?}");
    dbg.split(['(', ' ', '{'])
        .next()
        .unwrap_or("message")
        .to_owned()
}

/// Forwards a CancelRequest to the backend the key designates, with its real key.
async fn forward_cancel(
    ctx: &SessionContext<'_>,
    pid: u32,
    key: Bytes,
) -> Result<CloseReason, Failure> {
    let found = ctx
        .cancel_keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(pid, key.clone()))
        .cloned();
    let Some(found) = found else {
        let event = Event::of(
            ctx.id,
            events::kind::CANCEL,
            &serde_json::json!({ "pid": pid, "forwarded": false, "reason": "unknown cancel key" }),
        );
        let _ = ctx.journal.record(&[event]);
        return Ok(CloseReason::Protocol(
            "cancel request with an unknown key".into(),
        ));
    };
    let events = [
        Event::of(
            ctx.id,
            events::kind::CANCEL,
            &serde_json::json!({ "pid": pid, "forwarded": true, "session": found.session }),
        ),
        Event::of(
            found.session,
            events::kind::CANCEL_REQUESTED,
            &serde_json::json!({ "by_session": ctx.id }),
        ),
    ];
    ctx.journal
        .record(&events)
        .map_err(|e| Failure::Journal(e.to_string()))?;
    let tcp = found
        .origin
        .connect(found.addr, ctx.connect_timeout)
        .await
        .map_err(|e| Failure::Upstream(e.to_string()))?;
    let upstream = &found.target.upstream;
    let mut server = upstream
        .negotiate_postgres(tcp, found.addr)
        .await
        .map_err(|e| Failure::Upstream(format!("TLS: {e}")))?;
    let request = FrontendMessage::CancelRequest {
        pid,
        key: found.real_key.clone(),
    }
    .to_bytes();
    server
        .write_all(&request)
        .await
        .map_err(|e| Failure::Server(e.to_string()))?;
    let _ = server.shutdown().await;
    // The server closes without answering once it has read the request.
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), server.read(&mut sink)).await;
    Ok(CloseReason::ClientClosed)
}
