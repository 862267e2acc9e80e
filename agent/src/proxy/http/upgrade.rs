//! Requests that ask for more than one exchange: HTTP/1.1 `Upgrade` and `CONNECT`.
//!
//! - `Upgrade: websocket` (with `Connection: upgrade`) is judged like any request (a rule
//!   can allow, deny or hold it) and journaled; an allowed one goes to the server over a
//!   connection of its own (ALPN `http/1.1` only: an upgrade cannot ride an h2
//!   connection). The agent removes `Sec-WebSocket-Extensions` from the handshake, so no
//!   extension (permessage-deflate) hides the payload from the journal. The server's
//!   `101` is journaled (`http_response`) before the client gets it; from then on the
//!   connection is a relay of WebSocket frames ([`relay`]): each frame is decoded
//!   ([`crate::protocol::http::websocket`]) and journaled (`ws_frame`: sender, opcode,
//!   size, and a bounded masked excerpt) *before* its bytes are relayed, with bounded
//!   memory (a long frame streams after its head and excerpt). A malformed frame closes
//!   both sides with a logged reason and a `protocol_error` event; what was journaled
//!   stays. Any other answer of the server goes back as a normal response and the
//!   upgrade does not happen.
//! - `Upgrade: SPDY/3.1` on a Kubernetes target (kubectl's exec/attach/port-forward
//!   transport besides WebSocket, and its fallback) goes the same way: judged, journaled,
//!   the server's `101` journaled, then a relay of SPDY frames
//!   ([`crate::protocol::kubernetes::spdy`]: `spdy_frame`, each control frame with its
//!   headers, each DATA frame with its stream's type and a bounded excerpt) with the
//!   same bounded memory and refusals.
//! - Any other upgrade (`h2c`, ...) is declined, as RFC 9110 §7.8 lets a server: the
//!   request is served as plain HTTP/1.1 without the `Upgrade` header (a client such as
//!   `curl --http2` then simply goes on with HTTP/1.1); the journal says which protocol
//!   was asked for and that it was declined. An opaque tunnel could be neither judged
//!   nor masked per request.
//! - `CONNECT` is refused with 405 and journaled: a tunnel through an audited target
//!   would carry requests the agent never sees.
use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, info};

use super::events::{kind, SpdyFrame, WsFrame};
use super::kube::{K8sExec, K8sRequest};
use super::{
    mask_secret_echoes, protocol_error, record, refusal, remove_hop_by_hop, upstream_failed,
    upstream_headers, Body, State, HOP_BY_HOP,
};
use crate::journal::Event;
use crate::policy::RecordResults;
use crate::protocol::http::websocket::{Frame, FrameDecoder, Opcode, Sender, Step};
use crate::protocol::kubernetes::channel::{self, Framing};
use crate::protocol::kubernetes::request::KubeRequest;
use crate::protocol::kubernetes::spdy;
use crate::proxy::relay::CloseReason;

/// The most payload bytes of a frame the journal keeps (as for a recorded value of a
/// PostgreSQL row).
pub const MAX_EXCERPT: usize = 1024;

/// Why a `CONNECT` is refused.
pub const CONNECT_REFUSED: &str =
    "CONNECT is not supported: a tunnel would carry requests nhi-agent cannot judge or record";

/// What a request asks for beyond one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// Nothing: one request, one response.
    None,
    /// An HTTP/1.1 WebSocket handshake.
    WebSocket,
    /// An HTTP/1.1 upgrade to `SPDY/3.1` (Kubernetes' exec/attach/port-forward transport,
    /// relayed on Kubernetes targets only).
    Spdy,
    /// An upgrade to another protocol (the `Upgrade` header's value): declined.
    Declined(String),
    /// A `CONNECT` request: refused.
    Connect,
}

impl Upgrade {
    /// What `req` asks for. Only HTTP/1.1 has `Upgrade` (h2 refuses connection-specific
    /// headers; its extended CONNECT is not enabled). `spdy`: whether a `SPDY/3.1`
    /// upgrade is relayed (Kubernetes targets) rather than declined.
    pub fn of<B>(req: &Request<B>, spdy: bool) -> Upgrade {
        if req.method() == Method::CONNECT {
            return Upgrade::Connect;
        }
        let Some(value) = req.headers().get(header::UPGRADE) else {
            return Upgrade::None;
        };
        let asked = String::from_utf8_lossy(value.as_bytes()).trim().to_owned();
        let connection_upgrade = req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        if req.version() == Version::HTTP_11
            && connection_upgrade
            && asked.eq_ignore_ascii_case("websocket")
        {
            Upgrade::WebSocket
        } else if spdy
            && req.version() == Version::HTTP_11
            && connection_upgrade
            && asked.eq_ignore_ascii_case("SPDY/3.1")
        {
            Upgrade::Spdy
        } else {
            Upgrade::Declined(asked)
        }
    }
}

/// The most of a Kubernetes stream's frame the journal keeps (its channel byte
/// included).
pub const KUBE_EXCERPT: usize = 16 * 1024 + 1;

/// The longest binary message of a SPDY connection tunnelled in WebSocket (kubectl's
/// port-forward) the agent reads: each is decoded whole before it is relayed; kubectl
/// and the API server write at most a SPDY frame (32 KiB of data) per message. A longer
/// one closes the connection.
pub const TUNNEL_MESSAGE_LIMIT: usize = 1024 * 1024;

/// The most of one channel of a Kubernetes stream the journal keeps; beyond it frames
/// are journaled with their size only (`k8s_exec.truncated`).
pub const KUBE_KEPT_PER_CHANNEL: u64 = 1024 * 1024;

/// A connection whose upgrade the server accepted: both ends, once hyper hands them over.
pub struct Pending {
    /// The `seq` of the request that upgraded.
    seq: u64,
    client: OnUpgrade,
    server: OnUpgrade,
    /// A Kubernetes exec/attach/portforward stream in a channel protocol.
    kube: Option<KubeStream>,
    /// What the connection speaks from now on.
    proto: Proto,
}

/// What an upgraded connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    WebSocket,
    /// SPDY/3.1 (Kubernetes targets).
    Spdy,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::WebSocket => "WebSocket",
            Proto::Spdy => "SPDY",
        }
    }
}

/// What the relay of a Kubernetes stream needs.
pub struct KubeStream {
    request: KubeRequest,
    framing: Framing,
    /// The subprotocol the server chose.
    protocol: String,
}

/// Takes the session's accepted upgrade, if a request made one.
pub fn take(state: &State) -> Option<Pending> {
    state
        .upgraded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
}

/// Sends a (judged and journaled) WebSocket handshake to the server on a connection of
/// its own and journals the answer before the client gets it. On `101` the connection
/// is remembered for [`relay`], which runs once hyper hands the client's side over.
pub async fn forward_upgrade(
    state: &State,
    mut req: Request<Body>,
    seq: u64,
    started: Instant,
    kube_call: Option<(KubeRequest, K8sRequest)>,
    proto: Proto,
) -> Response<Body> {
    // The `k8s_request` of an upgrade the server could not be asked.
    let kube_failure = || {
        kube_call.as_ref().map(|(_, record)| {
            super::kube_failure(state, record, "upstream failed", false, started)
        })
    };
    let client_side = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let mut upstream = Request::builder()
        .method(parts.method.clone())
        .uri(target)
        .version(Version::HTTP_11);
    if let Some(headers) = upstream.headers_mut() {
        // Extensions (permessage-deflate) would hide payloads from the journal.
        upstream_headers(state, &parts.headers, headers, |name| {
            name == header::SEC_WEBSOCKET_EXTENSIONS
        });
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(
            header::UPGRADE,
            HeaderValue::from_static(match proto {
                Proto::WebSocket => "websocket",
                Proto::Spdy => "SPDY/3.1",
            }),
        );
        if !headers.contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(&state.orig_dst.to_string()) {
                headers.insert(header::HOST, host);
            }
        }
    }
    let upstream = match upstream.body(Empty::<Bytes>::new()) {
        Ok(r) => r,
        Err(e) => return refusal(StatusCode::BAD_REQUEST, &e.to_string(), None),
    };
    let response = match handshake(state, upstream).await {
        Ok(r) => r,
        Err(message) => {
            let failure = kube_failure();
            return upstream_failed(state, seq, started, message, failure).await;
        }
    };
    let (mut parts, body) = response.into_parts();
    let switched = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    if switched && parts.headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS) {
        let message =
            "the server accepted a WebSocket extension the agent did not offer".to_owned();
        let failure = kube_failure();
        return upstream_failed(state, seq, started, message, failure).await;
    }
    let secret_echoes_masked = match &state.target_rt.inject {
        Some(inject) => mask_secret_echoes(&mut parts.headers, inject.secret.expose()),
        None => 0,
    };
    let response_event = super::response_head(state, seq, &parts, secret_echoes_masked, started);
    let mut events = vec![Event::of(state.id, kind::RESPONSE, &response_event)];
    if let Some((_, record)) = &kube_call {
        let acted_as = state.kube.as_ref().map(|k| k.acted_as.clone());
        let record = record.ended("forwarded", parts.status.as_u16(), acted_as, started);
        events.push(Event::of(state.id, super::kube::kind::K8S_REQUEST, &record));
    }
    if let Err(e) = record(state, &events, true).await {
        return super::journal_refused(&e);
    }
    if !switched {
        remove_hop_by_hop(&mut parts.headers);
        return Response::from_parts(parts, body.map_err(Into::into).boxed());
    }
    // The client's bytes after this response are frames, not requests.
    state
        .framing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .switched();
    // A Kubernetes stream in a channel protocol is journaled channel by channel. The
    // subprotocol is WebSocket's, or SPDY's `X-Stream-Protocol-Version` (none: the
    // original `channel.k8s.io`).
    let kube = kube_call.and_then(|(request, _)| {
        let chosen = match proto {
            Proto::WebSocket => header::SEC_WEBSOCKET_PROTOCOL.as_str(),
            Proto::Spdy => "x-stream-protocol-version",
        };
        let protocol = parts
            .headers
            .get(chosen)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_owned();
        let protocol = match (proto, protocol.is_empty()) {
            (Proto::Spdy, true) => "channel.k8s.io".to_owned(),
            _ => protocol,
        };
        let framing = Framing::of_subprotocol(&protocol).filter(|_| request.is_connect())?;
        Some(KubeStream {
            request,
            framing,
            protocol,
        })
    });
    let mut response = Response::from_parts(parts, body);
    let server_side = hyper::upgrade::on(&mut response);
    *state.upgraded.lock().unwrap_or_else(|p| p.into_inner()) = Some(Pending {
        seq,
        client: client_side,
        server: server_side,
        kube,
        proto,
    });
    info!(
        session = state.id,
        seq,
        protocol = proto.name(),
        "upgrade accepted by the server"
    );
    let (mut parts, body) = response.into_parts();
    for name in HOP_BY_HOP {
        if *name != "connection" && *name != "upgrade" {
            parts.headers.remove(*name);
        }
    }
    Response::from_parts(parts, body.map_err(Into::into).boxed())
}

/// The handshake on a new HTTP/1.1 connection to the original destination.
async fn handshake(
    state: &State,
    request: Request<Empty<Bytes>>,
) -> Result<Response<Incoming>, String> {
    let io = state
        .connector
        .http1_only()
        .connect()
        .await
        .map_err(|e| format!("upstream request failed: {}", super::error_chain(&e)))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("upstream request failed: {}", super::error_chain(&e)))?;
    let session = state.id;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(session, error = %e, "upstream WebSocket handshake connection");
        }
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("upstream request failed: {}", super::error_chain(&e)))
}

/// Why one direction of the relay ended the connection.
enum End {
    Reset(Sender, String),
    /// A frame that does not decode: the protocol (`WebSocket`, `SPDY`) and why.
    Malformed(Sender, &'static str, String),
    Journal(String),
}

/// Relays an upgraded connection frame by frame until both sides closed (or one failed,
/// the agent stops, or nothing moved for `idle`), journaling each frame before its bytes
/// go on. Returns the session's close reason.
pub async fn relay(
    state: &State,
    pending: Pending,
    idle: Duration,
    cancel: &mut watch::Receiver<bool>,
) -> CloseReason {
    let client = match pending.client.await {
        Ok(upgraded) => TokioIo::new(upgraded),
        Err(e) => return CloseReason::ClientReset(format!("WebSocket upgrade: {e}")),
    };
    let server = match pending.server.await {
        Ok(upgraded) => TokioIo::new(upgraded),
        Err(e) => return CloseReason::ServerReset(format!("WebSocket upgrade: {e}")),
    };
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    let tunnel = pending
        .kube
        .as_ref()
        .is_some_and(|k| k.framing == Framing::SpdyTunnel);
    let (client_excerpt, server_excerpt) = match (&pending.kube, state.rules.record_results) {
        // Tunnelled SPDY: each message read whole, to be decoded before it is relayed.
        (Some(_), _) if tunnel => (TUNNEL_MESSAGE_LIMIT, TUNNEL_MESSAGE_LIMIT),
        // A Kubernetes stream's channels are its transcript (and the error channel its
        // exit status): kept whatever `record_results` says, but `none`.
        (Some(_), _) => (KUBE_EXCERPT, KUBE_EXCERPT),
        (None, RecordResults::Rows) => (MAX_EXCERPT, MAX_EXCERPT),
        (None, _) => (MAX_EXCERPT, 0),
    };
    let started = Instant::now();
    let last = AtomicU64::new(0);
    let channels = std::sync::Mutex::new(Channels::default());
    let kube = pending.kube.as_ref().map(|stream| (stream, &channels));
    let reason = match pending.proto {
        Proto::WebSocket => {
            let streams = std::sync::Mutex::new(spdy::StreamTable::new());
            let tunnel = tunnel.then_some(&streams);
            let from_client = pump(
                state,
                pending.seq,
                (Sender::Client, client_excerpt),
                client_read,
                server_write,
                (&last, started),
                (kube, tunnel),
            );
            let from_server = pump(
                state,
                pending.seq,
                (Sender::Server, server_excerpt),
                server_read,
                client_write,
                (&last, started),
                (kube, tunnel),
            );
            tokio::pin!(from_client, from_server);
            relay_until_done(
                state,
                (from_client, from_server),
                idle,
                (&last, started),
                cancel,
            )
            .await
        }
        Proto::Spdy => {
            let streams = std::sync::Mutex::new(spdy::StreamTable::new());
            let from_client = pump_spdy(
                state,
                pending.seq,
                (Sender::Client, client_excerpt),
                client_read,
                server_write,
                (&last, started),
                (kube, &streams),
            );
            let from_server = pump_spdy(
                state,
                pending.seq,
                (Sender::Server, server_excerpt),
                server_read,
                client_write,
                (&last, started),
                (kube, &streams),
            );
            tokio::pin!(from_client, from_server);
            relay_until_done(
                state,
                (from_client, from_server),
                idle,
                (&last, started),
                cancel,
            )
            .await
        }
    };
    if let Some(stream) = &pending.kube {
        let channels = std::mem::take(&mut *channels.lock().unwrap_or_else(|p| p.into_inner()));
        let end = K8sExec {
            seq: pending.seq,
            protocol: stream.protocol.clone(),
            exit: channels
                .error
                .as_ref()
                .map(|data| channel::exit_status(stream.framing, data)),
            bytes: channels.bytes.into_iter().map(|(n, b, _)| (n, b)).collect(),
            truncated: channels.truncated,
            duration_us: started.elapsed().as_micros() as u64,
        };
        info!(session = state.id, seq = pending.seq, exit = ?end.exit.as_ref().and_then(|e| e.exit_code), "Kubernetes stream ended");
        let _ = record(
            state,
            &[Event::of(state.id, super::kube::kind::K8S_EXEC, &end)],
            false,
        )
        .await;
    }
    reason
}

/// Runs both directions until both ended, one failed, nothing moved for `idle`, or the
/// agent stops.
async fn relay_until_done(
    state: &State,
    (mut from_client, mut from_server): (
        Pin<&mut impl std::future::Future<Output = Result<(), End>>>,
        Pin<&mut impl std::future::Future<Output = Result<(), End>>>,
    ),
    idle: Duration,
    (last, started): (&AtomicU64, Instant),
    cancel: &mut watch::Receiver<bool>,
) -> CloseReason {
    let (mut client_done, mut server_done) = (false, false);
    let mut first_close = None;
    let mut tick = tokio::time::interval(idle.min(Duration::from_secs(1)));
    let end = loop {
        tokio::select! {
            result = &mut from_client, if !client_done => match result {
                Ok(()) => {
                    client_done = true;
                    first_close.get_or_insert(CloseReason::ClientClosed);
                }
                Err(end) => break end,
            },
            result = &mut from_server, if !server_done => match result {
                Ok(()) => {
                    server_done = true;
                    first_close.get_or_insert(CloseReason::ServerClosed);
                }
                Err(end) => break end,
            },
            _ = tick.tick() => {
                let quiet = started.elapsed().saturating_sub(Duration::from_millis(
                    last.load(Ordering::Relaxed),
                ));
                if quiet >= idle {
                    return CloseReason::IdleTimeout;
                }
            }
            changed = cancel.changed() => {
                if changed.is_err() || *cancel.borrow() {
                    return CloseReason::AgentShutdown;
                }
            }
        }
        if client_done && server_done {
            return first_close.unwrap_or(CloseReason::ClientClosed);
        }
    };
    match end {
        End::Reset(Sender::Client, e) => CloseReason::ClientReset(e),
        End::Reset(Sender::Server, e) => CloseReason::ServerReset(e),
        End::Malformed(sender, proto, error) => {
            let why = format!(
                "malformed {proto} frame from the {}: {error}",
                sender.as_str()
            );
            protocol_error(&state.journal, state.id, "HTTP", &why);
            CloseReason::Protocol(why)
        }
        End::Journal(e) => CloseReason::JournalFailure(e),
    }
}

/// A Kubernetes stream being relayed and its channels' counts (both directions').
type KubeCx<'a> = Option<(&'a KubeStream, &'a std::sync::Mutex<Channels>)>;

/// A SPDY connection's streams, shared by its two directions.
type Streams = std::sync::Mutex<spdy::StreamTable>;

/// What the two directions of a Kubernetes stream count together.
#[derive(Default)]
struct Channels {
    /// Per channel name, in order of appearance: payload bytes, bytes kept.
    bytes: Vec<(String, u64, u64)>,
    /// What the server wrote on the error channel (bounded).
    error: Option<Vec<u8>>,
    /// Some channel's data was not all kept.
    truncated: bool,
}

/// The most of the error channel kept to read the exit status from.
const MAX_ERROR_CHANNEL: usize = 64 * 1024;

impl Channels {
    /// Counts `len` payload bytes of channel `name`, of which `shown` are in hand;
    /// returns how many of those the journal may keep.
    fn count(&mut self, name: &str, len: u64, shown: u64) -> u64 {
        let at = match self.bytes.iter().position(|(n, _, _)| n == name) {
            Some(at) => at,
            None => {
                self.bytes.push((name.to_owned(), 0, 0));
                self.bytes.len() - 1
            }
        };
        let entry = &mut self.bytes[at];
        entry.1 += len;
        let keep = shown.min(KUBE_KEPT_PER_CHANNEL.saturating_sub(entry.2));
        entry.2 += keep;
        if keep < len {
            self.truncated = true;
        }
        keep
    }
}

/// One direction: reads what `decoder`'s sender sends, journals each frame, then writes
/// its bytes to the other side. Ends `Ok` when the sender closes (the other side's write
/// half is shut down then). At most a frame head plus the excerpt waits in `buf` beyond
/// one read.
async fn pump(
    state: &State,
    seq: u64,
    (sender, excerpt_limit): (Sender, usize),
    mut read: impl AsyncRead + Unpin,
    mut write: impl AsyncWrite + Unpin,
    (last, started): (&AtomicU64, Instant),
    (kube, tunnel): (KubeCx<'_>, Option<&Streams>),
) -> Result<(), End> {
    let mut decoder = FrameDecoder::new(sender, excerpt_limit);
    // The channel of the message in progress (a continuation frame has no channel byte).
    let mut message_channel: Option<u8> = None;
    // Tunnelled SPDY: the sender's SPDY connection, read from its messages.
    let mut inner = tunnel.map(|streams| Tunnel {
        decoder: spdy::FrameDecoder::new(sender, 0),
        buf: Vec::new(),
        streams,
        frames: 0,
    });
    let written = |e: std::io::Error| End::Reset(other(sender), e.to_string());
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut frames = 0u64;
    loop {
        loop {
            let n = match decoder.next(&buf) {
                Err(error) => return Err(End::Malformed(sender, "WebSocket", error.to_string())),
                Ok(Step::NeedMore) => break,
                Ok(Step::Payload(n)) => n,
                Ok(Step::Frame { frame, release }) => {
                    frames += 1;
                    let mut event = frame_event(state, seq, sender, frames, &frame);
                    let mut events = Vec::new();
                    match (kube, &mut inner) {
                        (Some((_, channels)), Some(tunnel)) => {
                            events = tunnel
                                .read(state, seq, sender, &frame, channels)
                                .map_err(|why| End::Malformed(sender, "tunnelled SPDY", why))?;
                        }
                        (Some((stream, channels)), None) => kube_frame(
                            state,
                            stream,
                            channels,
                            &frame,
                            &mut message_channel,
                            &mut event,
                        ),
                        _ => {}
                    }
                    events.insert(0, Event::of(state.id, kind::WS_FRAME, &event));
                    record(state, &events, true).await.map_err(End::Journal)?;
                    release
                }
            };
            write.write_all(&buf[..n]).await.map_err(written)?;
            buf.advance(n);
        }
        if !refill(
            state,
            (sender, "WebSocket"),
            &mut buf,
            (&mut read, &mut write),
            (last, started),
        )
        .await?
        {
            return Ok(());
        }
    }
}

/// Flushes what a pump released, then reads more of the sender's bytes into `buf`.
/// `Ok(false)`: the sender closed (the other side's write half is shut down then; an
/// unfinished frame left in `buf` was never journaled, so it is never relayed).
async fn refill(
    state: &State,
    (sender, proto): (Sender, &str),
    buf: &mut BytesMut,
    (read, write): (
        &mut (impl AsyncRead + Unpin),
        &mut (impl AsyncWrite + Unpin),
    ),
    (last, started): (&AtomicU64, Instant),
) -> Result<bool, End> {
    write
        .flush()
        .await
        .map_err(|e| End::Reset(other(sender), e.to_string()))?;
    buf.reserve(16 * 1024);
    let n = read
        .read_buf(buf)
        .await
        .map_err(|e| End::Reset(sender, e.to_string()))?;
    last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    if n > 0 {
        return Ok(true);
    }
    if !buf.is_empty() {
        debug!(
            session = state.id,
            from = sender.as_str(),
            bytes = buf.len(),
            "{proto} peer closed inside a frame"
        );
    }
    let _ = write.shutdown().await;
    Ok(false)
}

/// One direction of a SPDY connection tunnelled in WebSocket messages (kubectl's
/// port-forward): each binary message is read whole and its bytes decoded before the
/// message is relayed, so every DATA payload byte is journaled (`spdy_frame` chunks of
/// its stream's data) before it moves. A DATA frame is reported at its head (excerpt 0)
/// and its payload as it arrives; a frame cut between messages is reported when its
/// head (or, for a control frame, its body) is whole: the bytes relayed before are
/// framing, never data.
struct Tunnel<'a> {
    decoder: spdy::FrameDecoder,
    buf: Vec<u8>,
    streams: &'a std::sync::Mutex<spdy::StreamTable>,
    frames: u64,
}

impl Tunnel<'_> {
    /// The `spdy_frame` events of one WebSocket frame's payload.
    fn read(
        &mut self,
        state: &State,
        seq: u64,
        sender: Sender,
        frame: &Frame,
        channels: &std::sync::Mutex<Channels>,
    ) -> Result<Vec<Event>, String> {
        match (frame.opcode, frame.message) {
            (Opcode::Binary | Opcode::Continuation, Opcode::Binary) => {}
            (Opcode::Text, _) | (Opcode::Continuation, Opcode::Text) => {
                return Err("a text message in a SPDY tunnel".into())
            }
            _ => return Ok(Vec::new()),
        }
        if frame.excerpt.len() as u64 != frame.len {
            return Err(format!(
                "a message of {} bytes is over the {TUNNEL_MESSAGE_LIMIT}-byte limit",
                frame.len
            ));
        }
        self.buf.extend_from_slice(&frame.excerpt);
        let mut events = Vec::new();
        loop {
            let step = {
                let mut table = self.streams.lock().unwrap_or_else(|p| p.into_inner());
                self.decoder.next(&self.buf, &mut table)
            };
            match step.map_err(|e| e.to_string())? {
                spdy::Step::NeedMore => break,
                spdy::Step::Frame { frame, release } => {
                    self.frames += 1;
                    let event = spdy_event(
                        state,
                        seq,
                        sender,
                        self.frames,
                        &frame,
                        (None, self.streams),
                    );
                    events.push(Event::of(state.id, kind::SPDY_FRAME, &event));
                    self.buf.drain(..release);
                }
                spdy::Step::Payload { stream_id, len } => {
                    let data: Vec<u8> = self.buf.drain(..len).collect();
                    let channel = stream_name(self.streams, stream_id);
                    let (excerpt, cut) = match &channel {
                        Some(name) => channel_data(state, channels, name, &data, len as u64),
                        None => (None, true),
                    };
                    let event = SpdyFrame {
                        seq,
                        from: sender.as_str().into(),
                        n: self.frames,
                        frame: "data".into(),
                        stream_id: Some(stream_id),
                        channel: channel.map(Cow::Owned),
                        size: len as u64,
                        excerpt,
                        excerpt_cut: cut,
                        ..SpdyFrame::default()
                    };
                    events.push(Event::of(state.id, kind::SPDY_FRAME, &event));
                }
            }
        }
        Ok(events)
    }
}

/// A SPDY stream's name for the journal: its `streamtype` (`stdout`), for port-forward
/// with its port (`port 80 data`).
fn stream_name(streams: &std::sync::Mutex<spdy::StreamTable>, id: u32) -> Option<String> {
    let table = streams.lock().unwrap_or_else(|p| p.into_inner());
    let info = table.get(id)?;
    let kind = info.stream_type.clone()?;
    Some(match &info.port {
        Some(port) => format!("port {port} {kind}"),
        None => kind,
    })
}

/// Labels a frame of a Kubernetes stream with its channel and keeps its data (bounded
/// per channel, through the detectors; sizes only under `record_results = "none"`).
fn kube_frame(
    state: &State,
    stream: &KubeStream,
    channels: &std::sync::Mutex<Channels>,
    frame: &Frame,
    message_channel: &mut Option<u8>,
    event: &mut WsFrame<'_>,
) {
    let (channel, data, len) = match frame.opcode {
        Opcode::Binary | Opcode::Text => match stream.framing.split(&frame.excerpt) {
            Some((channel, data)) => {
                *message_channel = (!frame.fin).then_some(channel);
                (channel, data, frame.len.saturating_sub(1))
            }
            None => return,
        },
        Opcode::Continuation => match *message_channel {
            Some(channel) => {
                if frame.fin {
                    *message_channel = None;
                }
                (channel, frame.excerpt.clone(), frame.len)
            }
            None => return,
        },
        _ => return,
    };
    let name = channel::channel_name(&stream.request.subresource, &stream.request.ports, channel);
    if channel == channel::CLOSE {
        // v5's close signal: its payload names the stream the sender will not write
        // again; journaled by name, not counted as data.
        event.channel = Some(Cow::Owned(name));
        event.excerpt = data.first().map(|&closed| {
            Cow::Owned(channel::channel_name(
                &stream.request.subresource,
                &stream.request.ports,
                closed,
            ))
        });
        return;
    }
    let (excerpt, cut) = channel_data(state, channels, &name, &data, len);
    event.channel = Some(Cow::Owned(name));
    event.excerpt = excerpt;
    event.excerpt_cut = cut;
}

/// Counts `len` bytes of channel `name` (of which `data` is in hand) and returns the
/// excerpt the journal keeps of them (bounded per channel, through the detectors; none
/// under `record_results = "none"`) and whether it is shorter than `len`. The error
/// channel is kept apart for the exit status.
fn channel_data(
    state: &State,
    channels: &std::sync::Mutex<Channels>,
    name: &str,
    data: &[u8],
    len: u64,
) -> (Option<Cow<'static, str>>, bool) {
    let mut channels = channels.lock().unwrap_or_else(|p| p.into_inner());
    if name == "error" {
        let kept = channels.error.get_or_insert_with(Vec::new);
        let room = MAX_ERROR_CHANNEL.saturating_sub(kept.len());
        kept.extend_from_slice(&data[..data.len().min(room)]);
    }
    let shown = if state.rules.record_results == RecordResults::None {
        0
    } else {
        data.len() as u64
    };
    let keep = channels.count(name, len, shown);
    drop(channels);
    let excerpt = (keep > 0).then(|| {
        let text = String::from_utf8_lossy(&data[..keep as usize]);
        let text = match &state.target_rt.inject {
            Some(inject) => mask_secret_in_text(&text, inject.secret.expose()),
            None => text,
        };
        Cow::Owned(state.rules.masks.mask_text(&text).into_owned())
    });
    (excerpt, keep < len)
}

/// One direction of a SPDY/3.1 connection: as [`pump`], each frame journaled
/// (`spdy_frame`: its type, stream, the stream's type, flags, headers through the
/// detectors, a bounded excerpt of DATA) before its bytes go on; the stream table is
/// shared with the other direction (the client opens the streams the server writes on).
async fn pump_spdy(
    state: &State,
    seq: u64,
    (sender, excerpt_limit): (Sender, usize),
    mut read: impl AsyncRead + Unpin,
    mut write: impl AsyncWrite + Unpin,
    (last, started): (&AtomicU64, Instant),
    (kube, streams): (KubeCx<'_>, &Streams),
) -> Result<(), End> {
    let mut decoder = spdy::FrameDecoder::new(sender, excerpt_limit);
    let written = |e: std::io::Error| End::Reset(other(sender), e.to_string());
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut frames = 0u64;
    loop {
        loop {
            let step = {
                let mut table = streams.lock().unwrap_or_else(|p| p.into_inner());
                decoder.next(&buf, &mut table)
            };
            let n = match step {
                Err(error) => return Err(End::Malformed(sender, "SPDY", error.to_string())),
                Ok(spdy::Step::NeedMore) => break,
                Ok(spdy::Step::Payload { len, .. }) => len,
                Ok(spdy::Step::Frame { frame, release }) => {
                    frames += 1;
                    let event = spdy_event(
                        state,
                        seq,
                        sender,
                        frames,
                        &frame,
                        (kube.map(|(_, channels)| channels), streams),
                    );
                    record(
                        state,
                        &[Event::of(state.id, kind::SPDY_FRAME, &event)],
                        true,
                    )
                    .await
                    .map_err(End::Journal)?;
                    release
                }
            };
            write.write_all(&buf[..n]).await.map_err(written)?;
            buf.advance(n);
        }
        if !refill(
            state,
            (sender, "SPDY"),
            &mut buf,
            (&mut read, &mut write),
            (last, started),
        )
        .await?
        {
            return Ok(());
        }
    }
}

/// The journal's view of a SPDY frame.
fn spdy_event(
    state: &State,
    seq: u64,
    sender: Sender,
    n: u64,
    frame: &spdy::Frame,
    (channels, streams): (
        Option<&std::sync::Mutex<Channels>>,
        &std::sync::Mutex<spdy::StreamTable>,
    ),
) -> SpdyFrame<'static> {
    let stream_id = frame.stream_id();
    let channel = stream_id.and_then(|id| stream_name(streams, id));
    let mut event = SpdyFrame {
        seq,
        from: sender.as_str().into(),
        n,
        frame: frame.kind().to_ascii_lowercase().into(),
        stream_id,
        channel: channel.clone().map(Cow::Owned),
        headers: frame.headers().map(|headers| {
            headers
                .iter()
                .map(|(k, v)| (k.clone(), state.rules.masks.mask_text(v).into_owned()))
                .collect()
        }),
        ..SpdyFrame::default()
    };
    match frame {
        spdy::Frame::Data {
            fin, len, excerpt, ..
        } => {
            event.fin = *fin;
            event.size = u64::from(*len);
            let (text, cut) = match (channels, &channel) {
                (Some(channels), Some(name)) => {
                    channel_data(state, channels, name, excerpt, u64::from(*len))
                }
                // Not a Kubernetes channel, or a tunnel's frame whose payload follows
                // as chunks of its own: sizes only here.
                _ => (None, *len > 0),
            };
            event.excerpt = text;
            event.excerpt_cut = cut && event.excerpt.is_some();
        }
        spdy::Frame::SynStream { fin, .. }
        | spdy::Frame::SynReply { fin, .. }
        | spdy::Frame::Headers { fin, .. } => event.fin = *fin,
        spdy::Frame::RstStream { status, .. } => event.status = Some(*status),
        spdy::Frame::GoAway { status, .. } => event.status = Some(*status),
        _ => {}
    }
    event
}

fn other(sender: Sender) -> Sender {
    match sender {
        Sender::Client => Sender::Server,
        Sender::Server => Sender::Client,
    }
}

/// The journal's view of a frame: text (and a close reason) through the mask detectors
/// and with any echo of the injected secret masked; binary, ping and pong payloads only
/// by size.
fn frame_event<'a>(
    state: &State,
    seq: u64,
    sender: Sender,
    n: u64,
    frame: &'a Frame,
) -> WsFrame<'a> {
    let (close_code, text) = match frame.close() {
        Some((code, reason)) => (Some(code), Some(reason)),
        None if frame.message == Opcode::Text => (None, Some(frame.excerpt.as_slice())),
        None => (None, None),
    };
    let excerpt = text.filter(|t| !t.is_empty()).map(|text| {
        let text = String::from_utf8_lossy(text);
        let text = match &state.target_rt.inject {
            Some(inject) => mask_secret_in_text(&text, inject.secret.expose()),
            None => text,
        };
        Cow::Owned(state.rules.masks.mask_text(&text).into_owned())
    });
    let shown = match frame.close() {
        Some((_, reason)) => reason.len() as u64 + 2,
        None => frame.excerpt.len() as u64,
    };
    WsFrame {
        seq,
        from: sender.as_str().into(),
        n,
        opcode: frame.opcode.as_str().into(),
        message: (frame.opcode == Opcode::Continuation).then(|| frame.message.as_str().into()),
        fin: frame.fin,
        size: frame.len,
        excerpt_cut: excerpt.is_some() && shown < frame.len,
        excerpt,
        close_code,
        channel: None,
    }
}

/// `text` with every occurrence of `secret` replaced by the agent's mask.
fn mask_secret_in_text<'a>(text: &Cow<'a, str>, secret: &[u8]) -> Cow<'a, str> {
    let Ok(secret) = std::str::from_utf8(secret) else {
        return text.clone();
    };
    if secret.is_empty() || !text.contains(secret) {
        return text.clone();
    }
    Cow::Owned(text.replace(secret, super::SECRET_MASK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/ws");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn upgrades_are_told_apart() {
        let ws = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        assert_eq!(Upgrade::of(&request("GET", &ws), false), Upgrade::WebSocket);
        let h2c = request(
            "GET",
            &[
                ("upgrade", "h2c"),
                ("connection", "Upgrade, HTTP2-Settings"),
            ],
        );
        assert_eq!(Upgrade::of(&h2c, true), Upgrade::Declined("h2c".into()));
        // Without `Connection: upgrade` it is not an upgrade request: declined.
        assert_eq!(
            Upgrade::of(&request("GET", &[("upgrade", "websocket")]), false),
            Upgrade::Declined("websocket".into())
        );
        assert_eq!(
            Upgrade::of(&request("CONNECT", &[]), false),
            Upgrade::Connect
        );
        assert_eq!(Upgrade::of(&request("GET", &[]), false), Upgrade::None);
        let mut h2 = request("GET", &ws);
        *h2.version_mut() = Version::HTTP_2;
        assert_eq!(
            Upgrade::of(&h2, false),
            Upgrade::Declined("WebSocket".into())
        );
        // SPDY/3.1 (kubectl exec's fallback) is relayed on Kubernetes targets only.
        let spdy = request(
            "POST",
            &[("upgrade", "SPDY/3.1"), ("connection", "Upgrade")],
        );
        assert_eq!(Upgrade::of(&spdy, true), Upgrade::Spdy);
        assert_eq!(
            Upgrade::of(&spdy, false),
            Upgrade::Declined("SPDY/3.1".into())
        );
    }

    #[test]
    fn secrets_in_frame_text_are_masked() {
        let text = Cow::Borrowed("token=abc123 and abc123");
        assert_eq!(
            mask_secret_in_text(&text, b"abc123"),
            format!("token={0} and {0}", super::super::SECRET_MASK)
        );
        assert_eq!(mask_secret_in_text(&text, b""), text);
    }
}
