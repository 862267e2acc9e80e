//! The MySQL / MariaDB proxy: start-up (the server's greeting read first, capabilities
//! negotiated, TLS terminated towards the client and spoken to the server per target),
//! authentication (relayed, or answered by the agent with its credential), then the
//! session on the protocol-neutral engine ([`crate::session::engine`]):
//! [`session::MysqlSession`] judges each command and masks result rows.
//!
//! Architecture invariant: nothing of the client reaches the server before the session's
//! `mysql_login` event is journaled, and after authentication a command reaches the
//! server only after the journal accepted its `statement` event (the engine's rule).
//!
//! caching_sha2_password's full authentication without TLS to the server: the password
//! (the agent's, or one a TLS client sent the agent) goes RSA-encrypted with the key the
//! target pins (`server_public_key`) or, with `get_server_public_key = true`, the key
//! the server sends when asked (0x02); with neither the agent refuses, since a key
//! fetched over plain TCP can be a man-in-the-middle's. The password and its ciphertext
//! are never journaled or logged; `mysql_auth` says which exchange it was.
//!
//! Sequence ids during authentication: the client's and the server's exchanges can be
//! numbered differently (the client asked for TLS from the agent, the agent not from
//! the server, or the agent answers challenges itself), so every packet the agent passes
//! on is framed again with the id its receiver expects.
pub mod events;
pub mod runtime;
pub mod session;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::debug;

use crate::config::Target;
use crate::credential::Secret;
use crate::identity::SessionIdentity;
use crate::journal::{Event, JournalHandle, SessionId};
use crate::protocol::mysql::{
    auth, caps, frame, AuthReply, ErrPacket, Greeting, HandshakeResponse, OkPacket, Packet,
    PacketDecoder,
};
use crate::session::engine::{self, read_more, READ_CHUNK};
use crate::session::{Approver, Counts, Failure, Io, Requester, SessionRules};

use super::relay::{CloseReason, Outcome};
pub use runtime::{MysqlRuntime, MysqlTargetRuntime, ServerKey};
pub use session::MysqlSession;

/// How long each side has for each step of the start-up and authentication.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest packet of the start-up (greetings, responses, auth data).
const MAX_STARTUP_PACKET: usize = 64 << 10;
/// ER_ACCESS_DENIED_ERROR / ER_CON_COUNT_ERROR / ER_UNKNOWN_ERROR for the agent's own
/// refusals at start-up.
const ER_ACCESS_DENIED: u16 = 1045;
const ER_CON_COUNT: u16 = 1040;
const ER_UNKNOWN: u16 = 1105;

/// What the session needs from the accepting code.
pub struct SessionContext<'a> {
    pub id: SessionId,
    pub journal: &'a JournalHandle,
    pub target: &'a Target,
    pub target_rt: Arc<MysqlTargetRuntime>,
    pub runtime: Arc<MysqlRuntime>,
    pub rules: Arc<SessionRules>,
    pub orig_dst: SocketAddr,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub approvals: Option<Arc<dyn Approver>>,
    pub identity: Arc<SessionIdentity>,
    /// Refuse the session before anything is forwarded: (MySQL error code, message,
    /// close reason). The disk budget is exceeded, or the workload is at its limit.
    pub refuse: Option<(u16, String, CloseReason)>,
    pub origin: super::Origin,
}

/// The error code of a start-up refusal for "too many connections".
pub const REFUSE_TOO_MANY: u16 = ER_CON_COUNT;
/// The error code of other start-up refusals.
pub const REFUSE_OTHER: u16 = ER_UNKNOWN;

/// Serves one intercepted MySQL connection until it ends.
pub async fn serve(
    ctx: SessionContext<'_>,
    client: TcpStream,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let mut counts = Counts::default();
    let result = serve_inner(&ctx, client, &mut counts, &mut cancel).await;
    Outcome::of_session(ctx.id, ctx.journal, "MySQL", result, &counts)
}

/// Reads one start-up packet from `io`.
async fn next_packet(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut BytesMut,
    counted: &mut u64,
    side: fn(String) -> Failure,
    what: &str,
) -> Result<Packet, Failure> {
    let decoder = PacketDecoder::new(MAX_STARTUP_PACKET);
    loop {
        if let Some(p) = decoder
            .decode(buf)
            .map_err(|e| Failure::Protocol(format!("{what}: {e}")))?
        {
            return Ok(p);
        }
        let n = tokio::time::timeout(STARTUP_TIMEOUT, read_more(io, buf, side))
            .await
            .map_err(|_| side(format!("no {what} in time")))??;
        if n == 0 {
            return Err(side(format!("closed before its {what}")));
        }
        *counted += n as u64;
    }
}

async fn send(
    io: &mut (impl tokio::io::AsyncWrite + Unpin),
    bytes: &[u8],
    side: fn(String) -> Failure,
) -> Result<(), Failure> {
    io.write_all(bytes).await.map_err(|e| side(e.to_string()))?;
    io.flush().await.map_err(|e| side(e.to_string()))
}

/// Sends the client an ERR with sequence id `seq` (best effort: it is leaving).
async fn refuse_client(
    client: &mut Box<dyn Io>,
    seq: u8,
    code: u16,
    sqlstate: &str,
    message: &str,
) {
    let err = ErrPacket::new(code, sqlstate, message);
    let _ = client.write_all(&frame::packet(seq, &err.encode())).await;
    let _ = client.flush().await;
}

async fn serve_inner(
    ctx: &SessionContext<'_>,
    client: TcpStream,
    counts: &mut Counts,
    cancel: &mut watch::Receiver<bool>,
) -> Result<CloseReason, Failure> {
    let accepted = Instant::now();
    let target_rt = &ctx.target_rt;
    let mut client: Box<dyn Io> = Box::new(client);
    // The server speaks first: connect, read its greeting, then greet the client.
    let tcp = match ctx.origin.connect(ctx.orig_dst, ctx.connect_timeout).await {
        Ok(tcp) => tcp,
        Err(e) => {
            refuse_client(
                &mut client,
                0,
                2003,
                "HY000",
                &format!("nhi-agent: cannot connect to the server: {e}"),
            )
            .await;
            return Err(Failure::Upstream(e.to_string()));
        }
    };
    let mut tcp = tcp;
    let mut sbuf = BytesMut::with_capacity(READ_CHUNK);
    let greeting_packet = next_packet(
        &mut tcp,
        &mut sbuf,
        &mut counts.from_server,
        Failure::Server,
        "server greeting",
    )
    .await?;
    if greeting_packet.payload.first() == Some(&0xFF) {
        // The server refuses the connection outright (too many connections, host
        // blocked): the client reads the same.
        send(&mut client, &greeting_packet.raw, Failure::Client).await?;
        let err = ErrPacket::parse(&greeting_packet.payload)
            .map(|e| format!("{} {}", e.code, e.message))
            .unwrap_or_default();
        return Err(Failure::Server(format!("refused the connection: {err}")));
    }
    let greeting = Greeting::parse(&greeting_packet.payload)
        .map_err(|e| Failure::Protocol(format!("server: {e}")))?;
    if greeting.capabilities & caps::PROTOCOL_41 == 0 {
        return Err(Failure::Protocol(
            "server: the pre-4.1 protocol is not supported".into(),
        ));
    }
    let credential = target_rt.credential.as_ref();
    // What the client is offered: the server's capabilities without those the agent
    // strips, TLS only when the agent terminates it, no MariaDB extensions.
    let mut offered = greeting.clone();
    offered.capabilities &= !(caps::STRIPPED | caps::SSL);
    if target_rt.client_tls && ctx.runtime.ca.is_some() {
        offered.capabilities |= caps::SSL;
    }
    offered.mariadb_caps = 0;
    // With the credential the client authenticates to nobody: a scramble of the agent's
    // own, so nothing the client sends can be replayed to the server.
    if credential.is_some() {
        let mut scramble = [0u8; 20];
        getrandom::fill(&mut scramble)
            .map_err(|e| Failure::Protocol(format!("no randomness: {e}")))?;
        // Printable bytes, as servers send (some clients stop at a NUL).
        for b in &mut scramble {
            *b = b'!' + (*b % 90);
        }
        offered.scramble = scramble.to_vec();
        offered.capabilities |= caps::PLUGIN_AUTH | caps::SECURE_CONNECTION;
        offered.auth_plugin = Some(auth::NATIVE_PASSWORD.to_owned());
    }
    send(
        &mut client,
        &frame::packet(greeting_packet.seq, &offered.encode()),
        Failure::Client,
    )
    .await?;

    // ------------------------------------------------------------ client response
    let mut cbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut packet = next_packet(
        &mut client,
        &mut cbuf,
        &mut counts.from_client,
        Failure::Client,
        "handshake response",
    )
    .await?;
    let mut response = HandshakeResponse::parse(&packet.payload)
        .map_err(|e| Failure::Protocol(format!("client: {e}")))?;
    let mut client_tls = false;
    if response.ssl_request {
        let Some(ca) = ctx.runtime.ca.as_ref().filter(|_| target_rt.client_tls) else {
            return Err(Failure::Protocol(
                "client asked for TLS, which was not offered".into(),
            ));
        };
        let names: Vec<String> = target_rt.server_name.iter().cloned().collect();
        let config = ca
            .server_config_no_alpn(&names, &[ctx.orig_dst.ip()])
            .map_err(|e| Failure::Protocol(format!("TLS certificate: {e}")))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        // MySQL clients start the TLS handshake right behind the SSL request (nothing
        // answers it): what was read with it is the start of the ClientHello.
        let early = cbuf.split().freeze();
        let prefixed = Prefixed {
            prefix: early,
            inner: client,
        };
        let stream = tokio::time::timeout(STARTUP_TIMEOUT, acceptor.accept(prefixed))
            .await
            .map_err(|_| Failure::Client("TLS handshake timed out".into()))?
            .map_err(|e| Failure::Client(format!("TLS handshake: {e}")))?;
        client = Box::new(stream);
        client_tls = true;
        packet = next_packet(
            &mut client,
            &mut cbuf,
            &mut counts.from_client,
            Failure::Client,
            "handshake response",
        )
        .await?;
        response = HandshakeResponse::parse(&packet.payload)
            .map_err(|e| Failure::Protocol(format!("client: {e}")))?;
        if response.ssl_request {
            return Err(Failure::Protocol("client: a second SSL request".into()));
        }
    } else if target_rt.client_tls && response.capabilities & caps::SSL != 0 {
        return Err(Failure::Protocol(
            "client: CLIENT_SSL set without an SSL request".into(),
        ));
    }
    // The id the client expects of the server's next packet.
    let mut client_next = packet.next_seq();

    if let Some((code, message, reason)) = &ctx.refuse {
        refuse_client(
            &mut client,
            client_next,
            *code,
            "08004",
            &format!("nhi-agent: {message}"),
        )
        .await;
        return match reason {
            CloseReason::Protocol(why) => Err(Failure::Protocol(why.clone())),
            other => Ok(other.clone()),
        };
    }
    let login_user = match credential {
        Some(_) => ctx
            .rules
            .policy
            .as_ref()
            .and_then(|p| p.db_user.clone())
            .or_else(|| ctx.target.mysql.as_ref().and_then(|m| m.user.clone()))
            .unwrap_or_else(|| response.user.clone()),
        None => response.user.clone(),
    };
    let login = events::Login {
        user: Cow::Borrowed(&response.user),
        db_user: Cow::Borrowed(&login_user),
        database: response.database.as_deref().map(Cow::Borrowed),
        server_version: Cow::Borrowed(&greeting.server_version),
        connection_id: greeting.connection_id,
        client_plugin: response.auth_plugin.as_deref().map(Cow::Borrowed),
        attributes: response
            .attributes
            .iter()
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
            .collect(),
        capabilities: response.capabilities,
        client_tls,
        credential_injected: credential.is_some(),
    };
    if let Err(e) = ctx
        .journal
        .record(&[Event::of(ctx.id, events::kind::LOGIN, &login)])
    {
        refuse_client(
            &mut client,
            client_next,
            ER_UNKNOWN,
            "HY000",
            &format!(
                "nhi-agent: the audit journal cannot record this session ({}); nothing was forwarded",
                crate::journal::root_cause(&e)
            ),
        )
        .await;
        return Err(Failure::Journal(crate::journal::error_chain(&e)));
    }

    // ------------------------------------------------------------ upstream
    let mut server_next = greeting_packet.next_seq();
    let upstream_tls = target_rt.upstream.enabled()
        && (greeting.capabilities & caps::SSL != 0
            || target_rt.upstream.mode() != crate::tls::UpstreamTlsMode::Prefer);
    let mut server: Box<dyn Io> = if upstream_tls {
        if greeting.capabilities & caps::SSL == 0 {
            refuse_client(
                &mut client,
                client_next,
                ER_UNKNOWN,
                "HY000",
                "nhi-agent: the server does not offer TLS, which the target requires",
            )
            .await;
            return Err(Failure::Upstream("the server does not offer TLS".into()));
        }
        let ssl = HandshakeResponse {
            capabilities: (response.capabilities & greeting.capabilities & !caps::STRIPPED)
                | caps::SSL
                | caps::PROTOCOL_41,
            max_packet: response.max_packet,
            charset: response.charset,
            ssl_request: true,
            ..HandshakeResponse::default()
        };
        send(
            &mut tcp,
            &frame::packet(server_next, &ssl.encode()),
            Failure::Server,
        )
        .await?;
        server_next = server_next.wrapping_add(1);
        let stream = tokio::time::timeout(
            STARTUP_TIMEOUT,
            target_rt.upstream.connect(tcp, ctx.orig_dst, None),
        )
        .await
        .map_err(|_| Failure::Upstream("TLS handshake timed out".into()))?
        .map_err(|e| Failure::Upstream(format!("TLS: {e}")))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    // The capabilities both sides will use: what the client asked for, that the server
    // offers, without what the agent strips; TLS as the agent speaks to the server.
    let mut upstream = response.clone();
    upstream.ssl_request = false;
    upstream.capabilities =
        response.capabilities & greeting.capabilities & !(caps::STRIPPED | caps::SSL);
    if upstream_tls {
        upstream.capabilities |= caps::SSL;
    }
    upstream.mariadb_caps = 0;
    let session_caps = upstream.capabilities;
    let mut method = greeting
        .auth_plugin
        .clone()
        .unwrap_or_else(|| auth::NATIVE_PASSWORD.to_owned());
    if let Some(password) = credential {
        upstream.user = login_user.clone();
        upstream.capabilities |= caps::PLUGIN_AUTH;
        if greeting.capabilities & caps::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            upstream.capabilities |= caps::PLUGIN_AUTH_LENENC_CLIENT_DATA;
        }
        upstream.auth_response = answer(&method, password, &greeting.scramble, upstream_tls)?;
        upstream.auth_plugin = Some(method.clone());
    } else if let Some(plugin) = &response.auth_plugin {
        method = plugin.clone();
    }
    send(
        &mut server,
        &frame::packet(server_next, &upstream.encode()),
        Failure::Server,
    )
    .await?;
    server_next = server_next.wrapping_add(1);

    // ------------------------------------------------------------ authentication
    // The challenge caching_sha2_password's RSA step XORs the password with: the
    // greeting's scramble, or an auth switch's.
    let mut challenge = greeting.scramble.clone();
    // The password waiting for the server's public key (the agent asked for it).
    let mut awaiting_key: Option<Secret> = None;
    // How caching_sha2_password went, for the `mysql_auth` event.
    let mut exchange: Option<&'static str> = None;
    // The exchange runs in its own block so that a refusal by the agent (the `?`s and
    // `return`s below) is journaled like the server's answers are.
    let outcome: Result<Result<OkPacket, ErrPacket>, Failure> = async {
        Ok(loop {
            let reply = next_packet(
                &mut server,
                &mut sbuf,
                &mut counts.from_server,
                Failure::Server,
                "authentication reply",
            )
            .await?;
            if reply.seq != server_next {
                return Err(Failure::Protocol(format!(
                    "server: authentication reply with sequence id {} (expected {server_next})",
                    reply.seq
                )));
            }
            server_next = reply.next_seq();
            let parsed = AuthReply::parse(&reply.payload, session_caps)
                .map_err(|e| Failure::Protocol(format!("server: {e}")))?;
            match parsed {
                // The server's public key, which the agent asked for: the password goes
                // encrypted with it.
                AuthReply::MoreData(data) if awaiting_key.is_some() => {
                    let password = awaiting_key.take().expect("checked");
                    let encrypted = auth::rsa_public_key(&data).and_then(|key| {
                        auth::rsa_encrypted_password(&key, password.expose(), &challenge)
                    });
                    let encrypted = match encrypted {
                        Ok(encrypted) => encrypted,
                        Err(e) => {
                            refuse_client(
                                &mut client,
                                client_next,
                                ER_ACCESS_DENIED,
                                "28000",
                                &format!(
                                    "nhi-agent: the server's public key for caching_sha2_password: {e}"
                                ),
                            )
                            .await;
                            return Err(Failure::Auth(format!("the server's public key: {e}")));
                        }
                    };
                    send(
                        &mut server,
                        &frame::packet(server_next, &encrypted),
                        Failure::Server,
                    )
                    .await?;
                    server_next = server_next.wrapping_add(1);
                }
                AuthReply::Ok(ok) => {
                    send(
                        &mut client,
                        &frame::packet(client_next, &reply.payload),
                        Failure::Client,
                    )
                    .await?;
                    break Ok(ok);
                }
                AuthReply::Err(err) => {
                    send(
                        &mut client,
                        &frame::packet(client_next, &reply.payload),
                        Failure::Client,
                    )
                    .await?;
                    break Err(err);
                }
                AuthReply::Switch { plugin, data } if credential.is_some() => {
                    let password = credential.expect("checked");
                    method = plugin.clone();
                    challenge.clone_from(&data);
                    let reply = answer(&plugin, password, &data, upstream_tls)?;
                    send(
                        &mut server,
                        &frame::packet(server_next, &reply),
                        Failure::Server,
                    )
                    .await?;
                    server_next = server_next.wrapping_add(1);
                }
                AuthReply::MoreData(data) if credential.is_some() => {
                    let password = credential.expect("checked");
                    match (method.as_str(), data.first()) {
                        (auth::CACHING_SHA2, Some(&auth::caching_sha2::FAST_AUTH_OK)) => {
                            exchange = Some(exchanges::FAST);
                        }
                        (auth::CACHING_SHA2, Some(&auth::caching_sha2::FULL_AUTH)) if upstream_tls => {
                            exchange = Some(exchanges::FULL_TLS);
                            let mut clear = password.expose().to_vec();
                            clear.push(0);
                            send(
                                &mut server,
                                &frame::packet(server_next, &clear),
                                Failure::Server,
                            )
                            .await?;
                            server_next = server_next.wrapping_add(1);
                        }
                        (auth::CACHING_SHA2, Some(&auth::caching_sha2::FULL_AUTH)) => {
                            let step = rsa_step_or_refuse(
                                &mut client,
                                client_next,
                                &target_rt.server_key,
                                password,
                                &challenge,
                            )
                            .await?;
                            exchange = Some(step.exchange());
                            let bytes = match step {
                                RsaStep::Send(encrypted) => encrypted,
                                RsaStep::RequestKey => {
                                    awaiting_key = Some(password.clone());
                                    vec![auth::caching_sha2::REQUEST_PUBLIC_KEY]
                                }
                            };
                            send(
                                &mut server,
                                &frame::packet(server_next, &bytes),
                                Failure::Server,
                            )
                            .await?;
                            server_next = server_next.wrapping_add(1);
                        }
                        _ => {
                            refuse_client(&mut client, client_next, ER_ACCESS_DENIED, "28000", &format!("nhi-agent: the server's {method} exchange is not one the agent can answer")).await;
                            return Err(Failure::Auth(format!(
                                "unexpected authentication data for {method}"
                            )));
                        }
                    }
                }
                // Relayed: the challenge to the client, its answer (if one is due) to the
                // server. Never journaled.
                other => {
                    // caching_sha2_password's full authentication asked of a client.
                    let full_auth = matches!(&other, AuthReply::MoreData(d)
                        if method == auth::CACHING_SHA2
                            && d.first() == Some(&auth::caching_sha2::FULL_AUTH));
                    let answer_due = match &other {
                        AuthReply::Switch { plugin, data } => {
                            method = plugin.clone();
                            challenge.clone_from(data);
                            true
                        }
                        AuthReply::MoreData(d) => {
                            let fast = method == auth::CACHING_SHA2
                                && d.first() == Some(&auth::caching_sha2::FAST_AUTH_OK);
                            if fast {
                                exchange = Some(exchanges::FAST);
                            }
                            !fast
                        }
                        _ => false,
                    };
                    send(
                        &mut client,
                        &frame::packet(client_next, &reply.payload),
                        Failure::Client,
                    )
                    .await?;
                    client_next = client_next.wrapping_add(1);
                    if answer_due {
                        let answer = next_packet(
                            &mut client,
                            &mut cbuf,
                            &mut counts.from_client,
                            Failure::Client,
                            "authentication answer",
                        )
                        .await?;
                        client_next = answer.next_seq();
                        if method == auth::CLEAR_PASSWORD && !upstream_tls {
                            return Err(Failure::Auth(
                                "refusing to send a clear-text password to the server without TLS"
                                    .into(),
                            ));
                        }
                        let mut forward = answer.payload.clone();
                        if full_auth && client_tls && !upstream_tls {
                            // Over its TLS the client sent the password itself, which must not
                            // cross the server's plain TCP: the agent encrypts it with the
                            // server's key, as a client without TLS would.
                            let clear = answer.payload.strip_suffix(&[0]).unwrap_or(&answer.payload);
                            let password = Secret::new(clear.to_vec());
                            let step = rsa_step_or_refuse(
                                &mut client,
                                client_next,
                                &target_rt.server_key,
                                &password,
                                &challenge,
                            )
                            .await?;
                            exchange = Some(step.exchange());
                            forward = match step {
                                RsaStep::Send(encrypted) => encrypted.into(),
                                RsaStep::RequestKey => {
                                    awaiting_key = Some(password);
                                    bytes::Bytes::from_static(&[auth::caching_sha2::REQUEST_PUBLIC_KEY])
                                }
                            };
                        } else if full_auth {
                            exchange = Some(if upstream_tls {
                                exchanges::FULL_TLS
                            } else if answer.payload[..] == [auth::caching_sha2::REQUEST_PUBLIC_KEY] {
                                exchanges::FULL_RSA_REQUESTED
                            } else {
                                exchanges::FULL_RSA_CLIENT_KEY
                            });
                        }
                        send(
                            &mut server,
                            &frame::packet(server_next, &forward),
                            Failure::Server,
                        )
                        .await?;
                        server_next = server_next.wrapping_add(1);
                    }
                }
            }
        })
    }
    .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(failure) => {
            if let Failure::Auth(why) = &failure {
                let mut refused = serde_json::json!({
                    "method": method,
                    "injected": credential.is_some(),
                    "user": login_user,
                    "refused": why,
                });
                if let Some(exchange) = exchange {
                    refused["exchange"] = exchange.into();
                }
                // The refusal ends the session either way; its close reason says why too.
                if let Err(e) =
                    ctx.journal
                        .record(&[Event::of(ctx.id, events::kind::AUTH, &refused)])
                {
                    debug!(session = ctx.id, error = %e, "cannot journal the authentication refusal");
                }
            }
            return Err(failure);
        }
    };
    let mut auth_event = serde_json::json!({
        "method": method,
        "injected": credential.is_some(),
        "user": login_user,
    });
    if let Some(exchange) = exchange {
        auth_event["exchange"] = exchange.into();
    }
    if let Err(e) = &outcome {
        auth_event["error"] =
            serde_json::json!({ "code": e.code, "sqlstate": e.sqlstate, "message": e.message });
    }
    let recorded = ctx
        .journal
        .record(&[Event::of(ctx.id, events::kind::AUTH, &auth_event)]);
    let ok = match outcome {
        Ok(ok) => ok,
        Err(e) => return Err(Failure::Auth(format!("{} {}", e.code, e.message))),
    };
    if let Err(e) = recorded {
        let session = MysqlSession::new(ctx.id, ctx.rules.clone(), session_caps);
        let bytes =
            crate::session::Session::agent_error(&session, crate::session::AgentError::Journal(&e));
        let _ = client.write_all(&bytes).await;
        return Err(Failure::Journal(crate::journal::error_chain(&e)));
    }
    debug!(session = ctx.id, method, "authenticated");

    // ------------------------------------------------------------ session
    let mut session = MysqlSession::new(ctx.id, ctx.rules.clone(), session_caps);
    session.set_credential_held(credential.is_some());
    if ok.status != 0 {
        session.set_status(ok.status);
    }
    let requester = Requester {
        session: ctx.id,
        identity: ctx.identity.clone(),
    };
    if let Some(approvals) = &ctx.approvals {
        session.set_grant_check(requester.grant_check(approvals));
    }
    let cx = engine::Context::new(
        ctx.journal,
        &ctx.rules,
        ctx.approvals.clone(),
        requester,
        ctx.idle_timeout,
        accepted,
    );
    let ended = engine::run(
        &cx,
        &mut session,
        client,
        server,
        cbuf,
        sbuf,
        counts,
        cancel,
    )
    .await?;
    Ok(match ended {
        crate::session::Ended::ClientClosed => CloseReason::ClientClosed,
        crate::session::Ended::ServerClosed => CloseReason::ServerClosed,
    })
}

/// How caching_sha2_password authenticated (the `exchange` of `mysql_auth`).
mod exchanges {
    /// The server had the password's hash cached: the scramble was enough.
    pub const FAST: &str = "fast_auth";
    /// Full authentication: the password in clear inside TLS to the server.
    pub const FULL_TLS: &str = "full_auth_tls";
    /// Full authentication without TLS: encrypted with the key the server sent when
    /// asked (by the agent with `get_server_public_key`, or by the client).
    pub const FULL_RSA_REQUESTED: &str = "full_auth_rsa_requested_key";
    /// ... with the key pinned in `server_public_key`.
    pub const FULL_RSA_PINNED: &str = "full_auth_rsa_pinned_key";
    /// ... with a key the client had (relayed: the agent saw only the ciphertext).
    pub const FULL_RSA_CLIENT_KEY: &str = "full_auth_rsa_client_key";
}

/// The agent's next packet of caching_sha2_password's full authentication on a
/// connection to the server without TLS.
enum RsaStep {
    /// The password encrypted with the pinned key.
    Send(Vec<u8>),
    /// Ask the server for its key (0x02); the password follows once it came.
    RequestKey,
}

impl RsaStep {
    fn exchange(&self) -> &'static str {
        match self {
            RsaStep::Send(_) => exchanges::FULL_RSA_PINNED,
            RsaStep::RequestKey => exchanges::FULL_RSA_REQUESTED,
        }
    }
}

/// Why the agent does not do full authentication: for the client, and for the log.
struct Refusal {
    message: String,
    reason: String,
}

/// What the target's `server_public_key` / `get_server_public_key` allow.
/// [`rsa_full_auth`]; a refusal is sent to the client (ERR 1045) and ends the session.
async fn rsa_step_or_refuse(
    client: &mut Box<dyn Io>,
    client_next: u8,
    key: &ServerKey,
    password: &Secret,
    scramble: &[u8],
) -> Result<RsaStep, Failure> {
    match rsa_full_auth(key, password, scramble) {
        Ok(step) => Ok(step),
        Err(refusal) => {
            refuse_client(
                client,
                client_next,
                ER_ACCESS_DENIED,
                "28000",
                &refusal.message,
            )
            .await;
            Err(Failure::Auth(refusal.reason))
        }
    }
}

fn rsa_full_auth(key: &ServerKey, password: &Secret, scramble: &[u8]) -> Result<RsaStep, Refusal> {
    match key {
        ServerKey::Pinned(key) => auth::rsa_encrypted_password(key, password.expose(), scramble)
            .map(RsaStep::Send)
            .map_err(|e| Refusal {
                message: format!("nhi-agent: caching_sha2_password full authentication: {e}"),
                reason: format!("the pinned server_public_key: {e}"),
            }),
        ServerKey::Request => Ok(RsaStep::RequestKey),
        ServerKey::Refuse => Err(Refusal {
            message: "nhi-agent: the server asks for caching_sha2_password full authentication without TLS, \
                      which needs its RSA public key: set `server_public_key` (the key's PEM file, pinned) \
                      or `get_server_public_key = true` (ask the server for it) on the target, or `tls`"
                .into(),
            reason: "caching_sha2_password full authentication without TLS and neither \
                     server_public_key nor get_server_public_key set"
                .into(),
        }),
    }
}

/// The agent's answer to `plugin`'s challenge with its password.
fn answer(plugin: &str, password: &Secret, scramble: &[u8], tls: bool) -> Result<Vec<u8>, Failure> {
    match plugin {
        auth::NATIVE_PASSWORD => Ok(auth::native_password(password.expose(), scramble)),
        auth::CACHING_SHA2 => Ok(auth::caching_sha2(password.expose(), scramble)),
        auth::ED25519 => Ok(auth::ed25519(password.expose(), scramble)),
        auth::CLEAR_PASSWORD if tls => {
            let mut clear = password.expose().to_vec();
            clear.push(0);
            Ok(clear)
        }
        other => Err(Failure::Auth(format!(
            "the server asks for authentication plugin {other}, which the agent cannot answer with its credential"
        ))),
    }
}

/// A stream whose first reads return `prefix` (bytes already read from `inner`).
struct Prefixed<S> {
    prefix: bytes::Bytes,
    inner: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
