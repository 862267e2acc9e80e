//! HTTP targets (`protocol = "http"`): hyper serves the intercepted client (HTTP/1.1
//! with keep-alive and pipelining, or h2 with prior knowledge, chosen per connection) and
//! a hyper client carries each request to the original destination. Between the two,
//! every request is normalised, judged by policy through the session's
//! [`Gate`](crate::session::gate::Gate), journaled (`http_request`) and only then
//! forwarded, refused (403, a JSON body naming the rule) or held for approval; each
//! response head is journaled (`http_response`) before the client gets it.
//!
//! Architecture invariant (as for every protocol): a request reaches the server only
//! after the journal accepted its `http_request` event (durably with
//! `journal_fsync = "each"`); if the journal refuses, the client gets 503 and the
//! connection closes.
//!
//! A path that does not normalise unambiguously (`protocol::http::path`) is refused with
//! 400 and journaled, never forwarded.
//!
//! TLS: what the client speaks first decides, unambiguously (a TLS record starts with
//! 0x16, an HTTP request with a method's letter, h2 with `PRI`). A target with
//! `client_tls = "terminate"` serves HTTPS with a leaf of the agent CA for the client's
//! SNI (or the dialled address) and `server_name`, ALPN `h2` / `http/1.1`; plain HTTP to
//! it is answered 400, and a TLS ClientHello to a target that does not terminate gets a
//! `handshake_failure` alert; both are logged and journaled as `protocol_error`. To the
//! server: `tls` / `ca_file` / `server_name` ([`upstream::Connector`]).
//!
//! Credential injection (`inject`, [`runtime::Injection`]): the agent removes any header
//! of that name the client sent and sets its own on the forwarded request; the journal
//! says *that* it injected (`http_request.injected`), never the value; a response header
//! echoing the secret is masked before the journal and the client see it, and so is a
//! response body echoing it (JSON, NDJSON, SSE and text bodies: [`body`]).
//!
//! Bodies ([`body`]): with masks (or an injected secret), JSON responses are masked whole
//! before the head is journaled, NDJSON / SSE / text line by line as they stream; other
//! types pass untouched. `record_results = "rows"` adds masked excerpts to the journal.
pub mod aws;
mod body;
pub mod events;
pub mod imds;
pub mod kube;
pub mod runtime;
mod upgrade;
mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::relay::{protocol_error, CloseReason, Outcome};
use crate::config::Target;
use crate::journal::{Event, JournalHandle, SessionId};
use crate::policy::http::HttpRequestInfo;
use crate::policy::Verdict;
use crate::protocol::http::framing::RequestFraming;
use crate::protocol::http::path;
use crate::session::approval::start_hold;
use crate::session::gate::{self, approval_on_standing, Action, Gate};
use crate::session::{Approver, HoldOutcome, Requester, SessionRules};
use crate::tls::{AgentCa, Stream, ALPN_H2, ALPN_HTTP11};
use events::{kind, HttpRequest, HttpResponse};
use runtime::HttpTargetRuntime;
use upstream::{error_chain, Connector};

use body::Body;

/// What an HTTP session needs from the accepting code.
pub struct HttpContext<'a> {
    pub id: SessionId,
    pub journal: &'a JournalHandle,
    pub target: &'a Target,
    /// The target's TLS settings and injected credential, from the same snapshot as
    /// `target`.
    pub target_rt: Arc<HttpTargetRuntime>,
    /// The agent CA (`Some` whenever a target terminates client TLS).
    pub ca: Option<Arc<AgentCa>>,
    pub rules: Arc<SessionRules>,
    pub orig_dst: SocketAddr,
    /// Where the connection was made: upstream connections leave from there.
    pub origin: super::Origin,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub approvals: Option<Arc<dyn Approver>>,
    pub requester: Requester,
    /// `Some((status, reason))`: answer every request with `status` (507: the disk
    /// budget is exceeded; 429: the workload is at its connection limit).
    pub refuse: Option<(u16, String)>,
    /// The workload's `aws_role_arn` (AWS targets sign with it, assumed per session).
    pub aws_role: Option<String>,
    /// The workload's `kube_impersonate` (Kubernetes targets send it as
    /// `Impersonate-User` / `Impersonate-Group`).
    pub kube_impersonate: Option<crate::config::KubeImpersonation>,
}

/// Headers whose values are credentials: journaled as `[redacted]`.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-amz-security-token",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The state every request of one session shares.
struct State {
    id: SessionId,
    journal: JournalHandle,
    rules: Arc<SessionRules>,
    gate: Mutex<Gate>,
    approvals: Option<Arc<dyn Approver>>,
    requester: Requester,
    client: Client<Connector, Body>,
    /// The pooled client's connector (a WebSocket handshake gets a connection of its own).
    connector: Connector,
    /// A WebSocket upgrade the server accepted, relayed once hyper hands it over.
    upgraded: Mutex<Option<upgrade::Pending>>,
    /// `http` or `https`: how the server is reached.
    scheme: &'static str,
    target_rt: Arc<HttpTargetRuntime>,
    orig_dst: SocketAddr,
    next_seq: AtomicU64,
    refuse: Option<(u16, String)>,
    /// Set when the journal refused: the connection must close.
    journal_failed: watch::Sender<bool>,
    /// HTTP/1 request framing as the client sent it (what hyper's parser hides).
    framing: Arc<Mutex<RequestFraming>>,
    /// The workload's role, assumed for this session (AWS targets with `aws_role_arn`).
    role_session: Option<aws::RoleSession>,
    /// `protocol = "kubernetes"`: impersonation and the masks of answers about Secrets.
    kube: Option<kube::KubeSession>,
}

/// The first byte of a TLS handshake record: a client that starts with it speaks TLS
/// (no HTTP method, and not h2's `PRI`, starts with it).
pub(crate) const TLS_HANDSHAKE: u8 = 0x16;

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one intercepted HTTP connection until it ends.
pub async fn serve(
    ctx: HttpContext<'_>,
    client: TcpStream,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let ended = |reason| Outcome {
        bytes_from_client: 0,
        bytes_from_server: 0,
        reason,
    };
    // HTTP and TLS clients both speak first; the first byte tells which one this is.
    let first = tokio::select! {
        first = tokio::time::timeout(ctx.idle_timeout, first_byte(&client)) => first,
        _ = cancel.changed() => return ended(CloseReason::AgentShutdown),
    };
    let first = match first {
        Err(_) => return ended(CloseReason::IdleTimeout),
        Ok(Err(e)) => return ended(CloseReason::ClientReset(e.to_string())),
        Ok(Ok(None)) => return ended(CloseReason::ClientClosed),
        Ok(Ok(Some(byte))) => byte,
    };
    let speaks_tls = first == TLS_HANDSHAKE;
    let (stream, h2, sni) = match (ctx.target_rt.client_tls, speaks_tls, &ctx.ca) {
        (true, true, Some(ca)) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept_tls(&ctx, ca, client)).await {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(why)) => {
                    let why = format!("client TLS handshake failed: {why}");
                    protocol_error(ctx.journal, ctx.id, "HTTP", &why);
                    return ended(CloseReason::Protocol(why));
                }
                Err(_) => {
                    let why = format!(
                        "client TLS handshake not finished within {TLS_HANDSHAKE_TIMEOUT:?}"
                    );
                    protocol_error(ctx.journal, ctx.id, "HTTP", &why);
                    return ended(CloseReason::Protocol(why));
                }
            }
        }
        (true, _, _) => {
            // Plain HTTP to a target that serves HTTPS (or, were the CA missing, which
            // the runtime rules out, TLS that cannot be answered).
            let why =
                "plain HTTP to a target with client_tls = \"terminate\" (it serves HTTPS only)";
            protocol_error(ctx.journal, ctx.id, "HTTP", why);
            return refuse_plain(client, why).await;
        }
        (false, true, _) => {
            let why =
                "TLS to a target without client_tls = \"terminate\" (it serves plain HTTP only)";
            protocol_error(ctx.journal, ctx.id, "HTTP", why);
            refuse_tls(client).await;
            return ended(CloseReason::Protocol(why.into()));
        }
        (false, false, _) => (Stream::Plain(client), None, None),
    };
    serve_http(ctx, stream, h2, sni, cancel).await
}

/// Waits for the client's first byte without consuming it; `None`: closed before any.
async fn first_byte(client: &TcpStream) -> std::io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    match client.peek(&mut byte).await? {
        0 => Ok(None),
        _ => Ok(Some(byte[0])),
    }
}

/// Terminates the client's TLS with a leaf of the agent CA naming the SNI the client
/// sent (if any), the target's `server_name` and the address it dialled. Returns the
/// stream, whether ALPN chose h2 (`Some(true)`), http/1.1 (`Some(false)`) or nothing
/// (`None`), and the SNI.
async fn accept_tls(
    ctx: &HttpContext<'_>,
    ca: &AgentCa,
    client: TcpStream,
) -> Result<(Stream, Option<bool>, Option<String>), String> {
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client)
        .await
        .map_err(|e| e.to_string())?;
    let sni = start.client_hello().server_name().map(str::to_owned);
    let names: Vec<String> = sni
        .iter()
        .chain(ctx.target_rt.server_name.iter())
        .cloned()
        .collect();
    let config = ca
        .http_server_config(&names, &[ctx.orig_dst.ip()])
        .map_err(|e| format!("certificate for {names:?}: {e}"))?;
    let tls = start.into_stream(config).await.map_err(|e| e.to_string())?;
    let h2 = match tls.get_ref().1.alpn_protocol() {
        Some(p) if p == ALPN_H2 => Some(true),
        Some(p) if p == ALPN_HTTP11 => Some(false),
        _ => None,
    };
    Ok((Stream::Server(Box::new(tls)), h2, sni))
}

/// Answers every request of a plain-HTTP client of a TLS-only target with 400 naming the
/// problem, then closes: a clear refusal rather than a hang or a bare reset.
async fn refuse_plain(client: TcpStream, why: &'static str) -> Outcome {
    let counts = Arc::new(Counted::default());
    let io = TokioIo::new(Counting::new(Stream::Plain(client), counts.clone(), None));
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
        let mut response = refusal(
            StatusCode::BAD_REQUEST,
            &format!("{why}: connect with https://"),
            None,
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, Infallible>(response)
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        builder.serve_connection(io, service),
    )
    .await;
    Outcome {
        bytes_from_client: counts.read.load(Ordering::Relaxed),
        bytes_from_server: counts.written.load(Ordering::Relaxed),
        reason: CloseReason::Protocol(why.into()),
    }
}

/// Answers a TLS ClientHello to a plain-HTTP target with a fatal `handshake_failure`
/// alert. The ClientHello record is read first (bounded), so the close is not a reset
/// that could discard the alert before the client reads it.
pub(crate) async fn refuse_tls(mut client: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut header = [0u8; 5];
        client.read_exact(&mut header).await?;
        let len = usize::from(u16::from_be_bytes([header[3], header[4]])).min(18 * 1024);
        let mut body = vec![0u8; len];
        client.read_exact(&mut body).await
    })
    .await;
    // Alert record: content type 21, TLS 1.2 record version, length 2, fatal (2),
    // handshake_failure (40).
    let _ = client.write_all(&[21, 3, 3, 0, 2, 2, 40]).await;
    let _ = client.shutdown().await;
    // Let the client read the alert and close first.
    let mut rest = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(client.read(&mut rest).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Serves HTTP on the (plain or terminated) client stream. `h2`: what ALPN chose
/// (`None`: no ALPN, or plain: HTTP/1.1 or h2 prior knowledge, detected by hyper).
async fn serve_http(
    ctx: HttpContext<'_>,
    client: Stream,
    h2: Option<bool>,
    sni: Option<String>,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let gate = ctx.rules.gate(
        ctx.target.protocol.name(),
        ctx.approvals.as_ref(),
        &ctx.requester,
    );
    let connector = Connector::new(
        ctx.orig_dst,
        ctx.origin.clone(),
        ctx.connect_timeout,
        ctx.target_rt.upstream.clone(),
        sni.as_deref(),
    );
    let scheme = connector.scheme();
    let (journal_failed, mut journal_failed_rx) = watch::channel(false);
    let framing = Arc::new(Mutex::new(RequestFraming::new()));
    let state = Arc::new(State {
        id: ctx.id,
        journal: ctx.journal.clone(),
        rules: ctx.rules.clone(),
        gate: Mutex::new(gate),
        approvals: ctx.approvals.clone(),
        requester: ctx.requester.clone(),
        client: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(ctx.idle_timeout)
            .build(connector.clone()),
        connector,
        upgraded: Mutex::new(None),
        scheme,
        target_rt: ctx.target_rt.clone(),
        orig_dst: ctx.orig_dst,
        next_seq: AtomicU64::new(1),
        refuse: ctx.refuse.clone(),
        journal_failed,
        framing: framing.clone(),
        role_session: ctx
            .aws_role
            .as_deref()
            .filter(|_| ctx.target_rt.aws.is_some())
            .map(|arn| aws::RoleSession::new(arn, ctx.id, &ctx.requester.identity.workload)),
        kube: ctx.target_rt.kube.as_ref().map(|rt| {
            kube::KubeSession::new(
                &ctx.rules.masks,
                ctx.kube_impersonate.clone(),
                &rt.acting_as,
            )
        }),
    });
    let counts = Arc::new(Counted::default());
    let io = TokioIo::new(Counting::new(client, counts.clone(), Some(framing)));
    let service = {
        let state = state.clone();
        hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, req).await) }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A request head longer than this gets 431 (HTTP/1; h2's header list: hyper's 16 KiB).
    // A client that shuts down its write side after a request still gets the answer
    // (hyper would otherwise drop the request as aborted, racing the agent's refusal).
    builder
        .http1()
        .max_buf_size(crate::protocol::http::framing::MAX_HEAD_BYTES)
        .half_close(true);
    // ALPN decided the version: hold the client to it.
    let builder = match h2 {
        Some(true) => builder.http2_only(),
        Some(false) => builder.http1_only(),
        None => builder,
    };
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let reason = loop {
        tokio::select! {
            result = conn.as_mut() => {
                break match result {
                    Ok(()) => CloseReason::ClientClosed,
                    Err(e) => {
                        let text = e.to_string();
                        if text.contains("reset") || text.contains("broken pipe") {
                            CloseReason::ClientReset(text)
                        } else {
                            protocol_error(&state.journal, state.id, "HTTP", &text);
                            CloseReason::Protocol(format!("HTTP: {text}"))
                        }
                    }
                };
            }
            changed = journal_failed_rx.changed() => {
                if changed.is_ok() && *journal_failed_rx.borrow() {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                    break CloseReason::JournalFailure("the journal refused a request event".into());
                }
            }
            _ = cancel.changed() => {
                if *cancel.borrow() {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                    break CloseReason::AgentShutdown;
                }
            }
        }
    };
    // A connection upgraded to WebSocket goes on as a relay of journaled frames.
    let reason = match upgrade::take(&state) {
        Some(pending) if matches!(reason, CloseReason::ClientClosed) => {
            upgrade::relay(&state, pending, ctx.idle_timeout, &mut cancel).await
        }
        _ => reason,
    };
    info!(
        session = ctx.id,
        requests = state.next_seq.load(Ordering::Relaxed) - 1,
        "HTTP session ended"
    );
    Outcome {
        bytes_from_client: counts.read.load(Ordering::Relaxed),
        bytes_from_server: counts.written.load(Ordering::Relaxed),
        reason,
    }
}

/// Journals `events`; per `journal_fsync`, waits for them to be durable. On failure the
/// connection is marked for closing and the error returned.
async fn record(state: &State, events: &[Event], durable: bool) -> Result<(), String> {
    let result = if durable {
        state.journal.record_durably(events).await.map(|_| ())
    } else {
        state.journal.record(events).map(|_| ())
    };
    result.map_err(|e| {
        warn!(session = state.id, error = %e, "the journal cannot record this session; closing it");
        let _ = state.journal_failed.send(true);
        e.to_string()
    })
}

/// A response the agent makes itself, with a JSON body.
fn agent_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn refusal(status: StatusCode, message: &str, rule: Option<&str>) -> Response<Body> {
    agent_response(
        status,
        serde_json::json!({ "error": format!("nhi-agent: {message}"), "rule": rule }),
    )
}

/// The request's host (Host header, else the URI's authority), without the port.
fn host_of(req: &Request<Incoming>) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))?;
    Some(strip_port(&raw).to_ascii_lowercase())
}

/// `host:port` -> `host`, `[v6]:port` -> `v6`.
fn strip_port(raw: &str) -> &str {
    if let Some(rest) = raw.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match raw.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => raw,
    }
}

/// The headers as journaled: credentials (and the header the target injects, whatever
/// its name) redacted, values through the mask detectors.
fn journaled_headers(
    headers: &HeaderMap,
    rules: &SessionRules,
    injected: Option<&http::HeaderName>,
) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let secret = SECRET_HEADERS.contains(&name.as_str()) || Some(name) == injected;
            let name = name.as_str().to_owned();
            let value = if secret {
                "[redacted]".to_owned()
            } else {
                let text = String::from_utf8_lossy(value.as_bytes());
                rules.masks.mask_text(&text).into_owned()
            };
            (name, value)
        })
        .collect()
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let seq = state.next_seq.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().to_string());
    let host = host_of(&req);
    let injection = state.target_rt.inject.as_ref();
    let headers = journaled_headers(req.headers(), &state.rules, injection.map(|i| &i.name));
    // How an AWS target shapes the refusals made before the call is read (worked out
    // only for such a refusal).
    let aws_shape = || {
        state
            .target_rt
            .aws
            .as_ref()
            .map(|_| aws::shape_of(req.headers(), req.uri().query()))
    };
    let mut request_event = HttpRequest {
        seq,
        method: method.clone().into(),
        host: host.clone().map(Into::into),
        target: match &state.target_rt.aws {
            // A presigned URL's session token is a credential.
            Some(_) => state
                .rules
                .masks
                .mask_text(&aws::redact_query_token(&target))
                .into_owned()
                .into(),
            None => state.rules.masks.mask_text(&target).into_owned().into(),
        },
        path: None,
        version: format!("{:?}", req.version()).into(),
        headers,
        content_length: req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
        verdict: Verdict::Allow.as_str().into(),
        rule: None,
        enforced: state.rules.enforce,
        action: "forwarded".into(),
        reason: None,
        injected: None,
        replaced_client_header: false,
        ..HttpRequest::default()
    };
    // Refused before judging: two lengths for one body (seen on the raw head: hyper lets
    // Transfer-Encoding win), over the disk budget, or a path servers read differently.
    if req.version() < http::Version::HTTP_2 {
        let ambiguity = state
            .framing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ambiguity(seq - 1);
        if let Some(why) = ambiguity {
            request_event.verdict = Verdict::Deny.as_str().into();
            request_event.action = "refused".into();
            request_event.reason = Some(why.clone().into());
            let mut response = refuse_unjudged(
                state,
                request_event,
                StatusCode::BAD_REQUEST,
                &why,
                aws_shape(),
            )
            .await;
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    }
    // WebSocket is judged like any request, then relayed; other upgrades are declined,
    // CONNECT refused (upgrade.rs).
    let upgrade = upgrade::Upgrade::of(&req, state.kube.is_some());
    match &upgrade {
        upgrade::Upgrade::None => {}
        upgrade::Upgrade::WebSocket => request_event.upgrade = Some("websocket".into()),
        upgrade::Upgrade::Spdy => request_event.upgrade = Some("SPDY/3.1".into()),
        upgrade::Upgrade::Declined(asked) => {
            request_event.upgrade = Some(asked.clone().into());
            request_event.upgrade_declined = true;
        }
        upgrade::Upgrade::Connect => {
            request_event.verdict = Verdict::Deny.as_str().into();
            request_event.action = "refused".into();
            request_event.reason = Some(upgrade::CONNECT_REFUSED.into());
            let mut response = refuse_unjudged(
                state,
                request_event,
                StatusCode::METHOD_NOT_ALLOWED,
                upgrade::CONNECT_REFUSED,
                aws_shape(),
            )
            .await;
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    }
    if let Some((status, why)) = &state.refuse {
        request_event.action = "refused".into();
        request_event.reason = Some(why.clone().into());
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return refuse_unjudged(state, request_event, status, why, aws_shape()).await;
    }
    // AWS reads a path literally (S3: the key is the path decoded once; `..` and `//`
    // are part of it), so an AWS call's path is that, not the HTTP normal form.
    let normalized = match &state.target_rt.aws {
        Some(_) => aws::literal_path(&target),
        None => path::normalize(&target),
    };
    let normal = match normalized {
        Ok(n) => n,
        Err(e) => {
            request_event.verdict = Verdict::Deny.as_str().into();
            request_event.action = "refused".into();
            request_event.reason = Some(e.to_string().into());
            return refuse_unjudged(
                state,
                request_event,
                StatusCode::BAD_REQUEST,
                &e.to_string(),
                aws_shape(),
            )
            .await;
        }
    };
    request_event.path = Some(normal.path.clone().into());
    // A Kubernetes request is read as the API server reads it before it is judged.
    let kube_call = match &state.kube {
        None => None,
        Some(_) => match kube::inspect(req.headers(), &method, &target, &normal) {
            Ok(call) => {
                let record = kube::K8sRequest::new(seq, &call, req.headers(), &state.rules.masks);
                if let upgrade::Upgrade::Declined(asked) = &upgrade {
                    // Only WebSocket and SPDY/3.1 upgrades are relayed: another would reach
                    // the server without its upgrade and fail there; refused here, clearly.
                    let why = format!(
                        "nhi-agent: the {asked:?} upgrade is not relayed (WebSocket and SPDY/3.1 are)"
                    );
                    let refused = kube::Refused {
                        status: StatusCode::BAD_REQUEST,
                        reason: "BadRequest",
                        message: why,
                        request: None,
                    };
                    return kube_refuse_unjudged(state, request_event, record, refused, started)
                        .await;
                }
                request_event.kube = Some(record.request.clone());
                Some((call, record))
            }
            Err(refused) => {
                let record = match &refused.request {
                    Some(call) => {
                        kube::K8sRequest::new(seq, call, req.headers(), &state.rules.masks)
                    }
                    None => kube::K8sRequest {
                        seq,
                        request: crate::protocol::kubernetes::request::KubeRequest {
                            verb: method.to_ascii_lowercase(),
                            path: normal.path.clone(),
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                };
                return kube_refuse_unjudged(state, request_event, record, refused, started).await;
            }
        },
    };
    // An AWS call is read (signature, body when needed, operation) before it is judged.
    let (req, aws_call) = match &state.target_rt.aws {
        None => (Pending::Plain(req), None),
        Some(rt) => match aws::inspect(rt, req, |v| mask_value(state, v)).await {
            Ok((req, inspected)) => {
                request_event.aws = Some(inspected.head.clone());
                (Pending::Read(req), Some(inspected))
            }
            Err(refused) => {
                return aws_refuse_unjudged(state, request_event, refused, started).await
            }
        },
    };
    let header_pairs = aws::header_pairs(req.headers());
    let info = HttpRequestInfo {
        method: &method,
        host: host.as_deref(),
        path: &normal.path,
        headers: &header_pairs,
    };
    let (verdict, rule) = match (&state.rules.policy, &aws_call) {
        (Some(p), None) if kube_call.is_some() => {
            let (call, _) = kube_call.as_ref().expect("checked");
            let (v, r) = p.decide_kube(&info, call);
            (v, r.map(str::to_owned))
        }
        (Some(p), None) => {
            let (v, r) = p.decide_http(&info);
            (v, r.map(str::to_owned))
        }
        (Some(p), Some(call)) => {
            let action = call.call.action();
            let (v, r) = p.decide_aws(
                &info,
                &crate::policy::aws::AwsCallInfo {
                    action: &action,
                    region: &call.sig.region,
                    resources: &call.call.resources,
                },
            );
            (v, r.map(str::to_owned))
        }
        (None, _) => (Verdict::Allow, None),
    };
    drop(header_pairs);
    // The `k8s_request` record carries the judgement; its end is added once known.
    let kube_call = kube_call.map(|(call, mut record)| {
        record.verdict = verdict.as_str().to_owned();
        record.rule = rule.clone();
        record.enforced = state.rules.enforce;
        (call, record)
    });
    // How this request is refused: an AWS-shaped error for AWS calls, a `Status` for
    // Kubernetes requests.
    let refuse =
        |status: StatusCode, message: &str, rule: Option<&str>| match (&aws_call, &kube_call) {
            (Some(call), _) => aws::aws_error(
                call.call.protocol,
                status,
                "AccessDenied",
                &format!("nhi-agent: {message}"),
                &aws::agent_request_id(state.id, seq),
            ),
            (None, Some((call, _))) => kube::status_response(
                status,
                "Forbidden",
                &format!("nhi-agent: {message}: {}", call.describe()),
                Some(call),
            ),
            (None, None) => refusal(status, message, rule),
        };
    request_event.verdict = verdict.as_str().into();
    request_event.rule = rule.clone().map(Into::into);
    let action = state
        .gate
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .action(verdict, rule.as_deref());
    // What approvers are shown (built only for a hold or a would-be hold): the
    // Kubernetes operation (`create pods/exec prod/web-0 ["sh", "-c", "id"]`), else the
    // method and target.
    let shown = || {
        let text = match &kube_call {
            Some((call, _)) => call.describe(),
            None => format!("{method} {}", request_event.target),
        };
        state.rules.masks.mask_text(&text).into_owned()
    };
    // A metadata target answers credential requests itself (once policy allows them).
    let imds_answer = state
        .target_rt
        .imds
        .as_ref()
        .and_then(|rt| imds::answer(rt, &method, &normal.path, std::time::SystemTime::now()));
    if imds_answer.is_some() && !matches!(action, Action::Refuse | Action::Hold) {
        request_event.action = "answered".into();
    }
    // What the forwarded request will carry (journaled with the request; a refused
    // request is not forwarded, so nothing is injected into it).
    if let Some(inject) = injection.filter(|_| !matches!(action, Action::Refuse)) {
        request_event.injected = Some(inject.name.as_str().into());
        request_event.replaced_client_header = req.headers().contains_key(&inject.name);
    }
    // The start of the body, for the journal, once the verdict lets it through (an AWS
    // call's parameters are journaled instead).
    let req = match req {
        Pending::Plain(req)
            if state.rules.record_results == crate::policy::RecordResults::Rows
                && matches!(action, Action::Forward | Action::PassOnStanding(_)) =>
        {
            let (parts, incoming) = req.into_parts();
            // A request about Secrets carries their values: masked as answers are.
            let masks = match (&kube_call, &state.kube) {
                (Some((call, _)), Some(session)) => session.masks_for(call, &state.rules.masks),
                _ => state.rules.masks.clone(),
            };
            let (body, seen) = body::prefetch_request(&masks, &parts.headers, incoming).await;
            request_event.body_bytes = seen.bytes;
            request_event.excerpt = seen.excerpt;
            Request::from_parts(parts, body)
        }
        Pending::Plain(req) => req.map(|b| b.map_err(Into::into).boxed()),
        Pending::Read(req) => req,
    };
    // The `aws_call` or `k8s_request` record of a call the agent answers itself.
    let aws_refused = |status: u16, outcome: &'static str| {
        aws_call
            .as_ref()
            .map(|call| {
                aws_record(
                    state,
                    call,
                    seq,
                    &request_event_verdict(verdict, rule.as_deref()),
                    AwsEnd::agent(state, seq, outcome, status),
                    started,
                )
            })
            .or_else(|| {
                kube_call.as_ref().map(|(_, record)| {
                    let record = record.ended(outcome, status, None, started);
                    Event::of(state.id, kube::kind::K8S_REQUEST, &record)
                })
            })
    };
    match action {
        Action::Refuse => {
            request_event.action = "refused".into();
            let message = format!(
                "request refused by policy rule \"{}\"",
                rule.as_deref().unwrap_or("(default)")
            );
            let response = refuse(StatusCode::FORBIDDEN, &message, rule.as_deref());
            let mut events = vec![
                Event::of(state.id, kind::REQUEST, &request_event),
                Event::of(
                    state.id,
                    kind::RESPONSE,
                    &HttpResponse::agent(seq, 403, started),
                ),
            ];
            events.extend(aws_refused(403, "refused"));
            if let Err(e) = record(state, &events, false).await {
                return journal_refused(&e);
            }
            return response;
        }
        Action::Hold => {
            request_event.action = "held".into();
            let request = state
                .gate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .hold_request(seq, shown(), rule.clone());
            let mut events = vec![Event::of(state.id, kind::REQUEST, &request_event)];
            let (announcement, wait) =
                start_hold(state.approvals.as_ref(), &state.requester, request);
            if let Some(announcement) = announcement {
                events.push(Event::of(state.id, gate::APPROVAL_REQUEST, &announcement));
            }
            if let Err(e) = record(state, &events, true).await {
                return journal_refused(&e);
            }
            info!(session = state.id, seq, rule = ?rule, "request held for approval");
            let outcome = wait.await;
            let approved = matches!(outcome, HoldOutcome::Approved { .. });
            let decided = {
                let mut g = state.gate.lock().unwrap_or_else(|p| p.into_inner());
                Event::of(
                    state.id,
                    gate::APPROVAL,
                    &g.decided(seq, rule.as_deref(), &outcome),
                )
            };
            if !approved {
                let message = format!(
                    "request was not approved (policy rule \"{}\")",
                    rule.as_deref().unwrap_or("(default)")
                );
                let mut events = vec![
                    decided,
                    Event::of(
                        state.id,
                        kind::RESPONSE,
                        &HttpResponse::agent(seq, 403, started),
                    ),
                ];
                events.extend(aws_refused(403, "not approved"));
                if let Err(e) = record(state, &events, false).await {
                    return journal_refused(&e);
                }
                return refuse(StatusCode::FORBIDDEN, &message, rule.as_deref());
            }
            if let Err(e) = record(state, &[decided], true).await {
                return journal_refused(&e);
            }
        }
        Action::PassOnStanding(standing) => {
            let events = [
                Event::of(state.id, kind::REQUEST, &request_event),
                Event::of(
                    state.id,
                    gate::APPROVAL,
                    &approval_on_standing(seq, &standing),
                ),
            ];
            if let Err(e) = record(state, &events, true).await {
                return journal_refused(&e);
            }
        }
        Action::Forward => {
            let would_hold = {
                let mut g = state.gate.lock().unwrap_or_else(|p| p.into_inner());
                g.observe(verdict, seq, rule.as_deref(), shown);
                g.take_would_hold()
            };
            if let Some(a) = &state.approvals {
                for request in would_hold {
                    a.would_hold(&state.requester, request);
                }
            }
            if let Err(e) = record(
                state,
                &[Event::of(state.id, kind::REQUEST, &request_event)],
                true,
            )
            .await
            {
                return journal_refused(&e);
            }
        }
    }
    if let Some(answer) = imds_answer {
        info!(
            session = state.id,
            seq,
            answered = answer.what,
            "metadata request answered by the agent"
        );
        let event = HttpResponse {
            body_bytes: Some(answer.body.len() as u64),
            ..HttpResponse::agent(seq, answer.status.as_u16(), started)
        };
        if let Err(e) = record(state, &[Event::of(state.id, kind::RESPONSE, &event)], false).await {
            return journal_refused(&e);
        }
        return imds::response(&answer);
    }
    let verdict_text = request_event_verdict(verdict, rule.as_deref());
    let proto = match upgrade {
        upgrade::Upgrade::WebSocket => Some(upgrade::Proto::WebSocket),
        upgrade::Upgrade::Spdy => Some(upgrade::Proto::Spdy),
        _ => None,
    };
    if let Some(proto) = proto {
        return upgrade::forward_upgrade(state, req, seq, started, kube_call, proto).await;
    }
    forward(
        state,
        req,
        seq,
        &normal,
        started,
        aws_call.as_ref().map(|call| (call, verdict_text)),
        kube_call.as_ref(),
    )
    .await
}

/// Journals a Kubernetes request refused before it was judged, and answers it with a
/// `Status`.
async fn kube_refuse_unjudged(
    state: &State,
    mut request_event: HttpRequest<'_>,
    k8s: kube::K8sRequest,
    refused: kube::Refused,
    started: Instant,
) -> Response<Body> {
    let seq = request_event.seq;
    request_event.verdict = Verdict::Deny.as_str().into();
    request_event.action = "refused".into();
    request_event.reason = Some(refused.message.clone().into());
    // Every request of a Kubernetes session that names its `kube` has a `k8s_request`.
    request_event.kube = Some(k8s.request.clone());
    warn!(session = state.id, seq, reason = %refused.message, "Kubernetes request refused before judging");
    let mut k8s = k8s.ended("refused", refused.status.as_u16(), None, started);
    k8s.verdict = Verdict::Deny.as_str().to_owned();
    k8s.enforced = state.rules.enforce;
    let events = [
        Event::of(state.id, kind::REQUEST, &request_event),
        Event::of(
            state.id,
            kind::RESPONSE,
            &HttpResponse::agent(seq, refused.status.as_u16(), started),
        ),
        Event::of(state.id, kube::kind::K8S_REQUEST, &k8s),
    ];
    if let Err(e) = record(state, &events, false).await {
        return journal_refused(&e);
    }
    kube::status_response(refused.status, refused.reason, &refused.message, None)
}

/// A request whose body the agent has or has not read yet.
enum Pending {
    /// As hyper handed it over.
    Plain(Request<Incoming>),
    /// Read (an AWS call: its body may be buffered already).
    Read(Request<Body>),
}

impl Pending {
    fn headers(&self) -> &HeaderMap {
        match self {
            Pending::Plain(r) => r.headers(),
            Pending::Read(r) => r.headers(),
        }
    }
}

/// `verdict` and `rule` as the `aws_call` record says them.
fn request_event_verdict(verdict: Verdict, rule: Option<&str>) -> (String, Option<String>) {
    (verdict.as_str().to_owned(), rule.map(str::to_owned))
}

/// Masks a JSON value (an AWS call's parameters) with the session's masks.
fn mask_value(state: &State, value: &serde_json::Value) -> serde_json::Value {
    let text = value.to_string();
    let mut masker = state.rules.masks.body_masker();
    match masker.mask_json(text.as_bytes(), None) {
        Ok(Some(masked)) => serde_json::from_slice(&masked).unwrap_or(serde_json::Value::Null),
        Ok(None) => value.clone(),
        // Unreachable for a value serde_json wrote; journal nothing rather than raw.
        Err(_) => serde_json::Value::Null,
    }
}

/// How an AWS call ended, for its `aws_call` event.
struct AwsEnd {
    outcome: &'static str,
    status: u16,
    error_code: Option<String>,
    request_id: Option<String>,
    signed_as: Option<String>,
    response_bytes: Option<u64>,
}

impl AwsEnd {
    /// A call the agent answered itself (refused, not approved, not signed, upstream
    /// failed): the code of the agent's own answer (a refusal), or what AWS SDKs call a
    /// failure on the way, and the agent's request id.
    fn agent(state: &State, seq: u64, outcome: &'static str, status: u16) -> AwsEnd {
        AwsEnd {
            outcome,
            status,
            error_code: Some(
                if status == 403 {
                    "AccessDenied"
                } else {
                    "InternalFailure"
                }
                .to_owned(),
            ),
            request_id: Some(aws::agent_request_id(state.id, seq)),
            signed_as: None,
            response_bytes: None,
        }
    }
}

/// The `aws_call` event of a call.
fn aws_record(
    state: &State,
    call: &aws::Inspected,
    seq: u64,
    verdict: &(String, Option<String>),
    end: AwsEnd,
    started: Instant,
) -> Event {
    let record = aws::AwsCall {
        seq,
        head: call.head.clone(),
        workload: state.requester.identity.workload.clone(),
        verdict: verdict.0.clone(),
        rule: verdict.1.clone(),
        enforced: state.rules.enforce,
        outcome: end.outcome.to_owned(),
        signed_as: end.signed_as,
        status: end.status,
        error_code: end.error_code,
        request_id: end.request_id,
        request_bytes: call.request_bytes,
        response_bytes: end.response_bytes,
        duration_us: aws::elapsed_us(started),
    };
    Event::of(state.id, aws::AWS_CALL, &record)
}

/// Journals an AWS request refused before it was judged (its signature, body or
/// operation), and answers it with an AWS-shaped error.
async fn aws_refuse_unjudged(
    state: &State,
    mut request_event: HttpRequest<'_>,
    refused: aws::Refused,
    started: Instant,
) -> Response<Body> {
    let seq = request_event.seq;
    request_event.verdict = Verdict::Deny.as_str().into();
    request_event.action = "refused".into();
    request_event.reason = Some(refused.message.clone().into());
    warn!(session = state.id, seq, code = refused.code, reason = %refused.message, "AWS request refused before judging");
    let events = [
        Event::of(state.id, kind::REQUEST, &request_event),
        Event::of(
            state.id,
            kind::RESPONSE,
            &HttpResponse::agent(seq, refused.status.as_u16(), started),
        ),
    ];
    if let Err(e) = record(state, &events, false).await {
        return journal_refused(&e);
    }
    aws::aws_error(
        refused.protocol,
        refused.status,
        refused.code,
        &refused.message,
        &aws::agent_request_id(state.id, seq),
    )
}

/// Journals a request refused before it was judged, and answers it with `status`.
async fn refuse_unjudged(
    state: &State,
    request_event: HttpRequest<'_>,
    status: StatusCode,
    why: &str,
    aws_shape: Option<crate::protocol::aws::action::ApiProtocol>,
) -> Response<Body> {
    let seq = request_event.seq;
    let events = [
        Event::of(state.id, kind::REQUEST, &request_event),
        Event::of(
            state.id,
            kind::RESPONSE,
            &HttpResponse::agent(seq, status.as_u16(), Instant::now()),
        ),
    ];
    if let Err(e) = record(state, &events, false).await {
        return journal_refused(&e);
    }
    debug!(session = state.id, seq, %why, "request refused before judging");
    match aws_shape {
        // An AWS SDK reads an AWS-shaped error (a throttled or unavailable service).
        Some(shape) => aws::aws_error(
            shape,
            status,
            match status.as_u16() {
                429 => "Throttling",
                503 | 507 => "ServiceUnavailable",
                _ => "InvalidRequest",
            },
            &format!("nhi-agent: {why}"),
            &aws::agent_request_id(state.id, seq),
        ),
        None => refusal(status, why, None),
    }
}

fn journal_refused(error: &str) -> Response<Body> {
    let mut response = refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("the audit journal cannot record this request; it was not forwarded ({error})"),
        None,
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Sends the (journaled) request upstream and journals the response head.
async fn forward(
    state: &State,
    req: Request<Body>,
    seq: u64,
    normal: &path::NormalPath,
    started: Instant,
    aws_call: Option<(&aws::Inspected, (String, Option<String>))>,
    kube_call: Option<&(
        crate::protocol::kubernetes::request::KubeRequest,
        kube::K8sRequest,
    )>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| normal.path.clone());
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    // The connector always dials the original destination; the URI's authority is the
    // host the client named, so an h2 server gets a `:authority` that agrees with
    // `Host` (the dialled address when the client named none).
    let authority = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .map(|a| a.to_string())
        .unwrap_or_else(|| state.orig_dst.to_string());
    let uri = match format!("{}://{authority}{path_and_query}", state.scheme).parse::<http::Uri>() {
        Ok(u) => u,
        Err(e) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                &format!("request target: {e}"),
                None,
            )
        }
    };
    let mut upstream = Request::builder().method(parts.method.clone()).uri(uri);
    if let Some(headers) = upstream.headers_mut() {
        // Host travels as the URI's authority: hyper writes it as `Host` on HTTP/1.1 and
        // as `:authority` on h2, where a second `host` header is refused (nginx: 400).
        upstream_headers(state, &parts.headers, headers, |name| name == header::HOST);
        if body::masking(&state.rules.masks, &state.target_rt) {
            body::restrict_accept_encoding(headers);
        }
    }
    let mut upstream = match upstream.body(body) {
        Ok(r) => r,
        Err(e) => return refusal(StatusCode::BAD_REQUEST, &e.to_string(), None),
    };
    // An AWS call is signed again, with the agent's credential, as it is sent.
    let mut signed_as = None;
    if let (Some((call, verdict)), Some(rt)) = (&aws_call, &state.target_rt.aws) {
        match aws::sign_upstream(rt, state.role_session.as_ref(), call, &mut upstream).await {
            Ok(identity) => signed_as = Some(identity),
            Err(why) => {
                let message = format!("the agent could not sign the call: {why}");
                warn!(session = state.id, seq, error = %message, "AWS call not signed");
                let failure = CallFailure {
                    record: aws_record(
                        state,
                        call,
                        seq,
                        verdict,
                        AwsEnd::agent(state, seq, "not signed", 502),
                        started,
                    ),
                    shape: Shape::Aws(call.call.protocol),
                };
                let events = failed_events(state, seq, started, &message, Some(&failure));
                let _ = record(state, &events, false).await;
                return bad_gateway(state, seq, &message, Some(&failure));
            }
        }
    }
    let response = match state.client.request(upstream).await {
        Ok(r) => r,
        Err(e) => {
            // The whole chain: hyper's "client error (Connect)" alone does not say that
            // the certificate was signed by an unknown issuer.
            let message = format!("upstream request failed: {}", error_chain(&e));
            // A body the agent stopped (an aws-chunked chunk whose signature does not
            // match) ends here too.
            let call_record = aws_call.as_ref().map(|(call, verdict)| CallFailure {
                record: aws_record(
                    state,
                    call,
                    seq,
                    verdict,
                    AwsEnd::agent(state, seq, "upstream failed", 502),
                    started,
                ),
                shape: Shape::Aws(call.call.protocol),
            });
            let call_record = call_record.or_else(|| {
                kube_call.map(|(_, record)| {
                    kube_failure(state, record, "upstream failed", false, started)
                })
            });
            return upstream_failed(state, seq, started, message, call_record).await;
        }
    };
    let (mut parts, body) = response.into_parts();
    // An answer that masks cannot read (protobuf) never goes back: about Secrets, only
    // JSON is read.
    if let Some((call, record)) = kube_call {
        let has_body = !body::without_body(&method, parts.status);
        // With masks in force, no answer may be in an encoding they cannot read.
        let unreadable = if call.is_secrets() {
            !kube::maskable(&parts.headers)
        } else {
            !state.rules.masks.is_empty() && kube::unreadable_encoding(&parts.headers)
        };
        if has_body && unreadable {
            let why = format!(
                "an answer in {:?} cannot be masked",
                parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default()
            );
            let failure = kube_failure(state, record, "answer not masked", true, started);
            return body_refused(state, seq, started, parts.status, why, Some(failure)).await;
        }
    }
    // The secret the agent injected never goes back, even when the server echoes it.
    let secret_echoes_masked = match &state.target_rt.inject {
        Some(inject) => mask_secret_echoes(&mut parts.headers, inject.secret.expose()),
        None => 0,
    };
    // An S3 object's content is the caller's data, not an API answer: it streams as
    // it is (masking by AWS field names would read it whole, and could refuse it).
    let object_content = aws_call.as_ref().is_some_and(|(call, _)| {
        call.call.service == "s3" && call.call.operation.as_deref() == Some("GetObject")
    }) && parts.status.is_success();
    let body_cx = body::BodyContext {
        id: state.id,
        seq,
        journal: state.journal.clone(),
        masks: match (object_content, kube_call, &state.kube) {
            (true, _, _) => crate::mask::SessionMasks::none(),
            (false, Some((call, _)), Some(session)) => session.masks_for(call, &state.rules.masks),
            _ => state.rules.masks.clone(),
        },
        kind: match kube_call {
            // A watch is one JSON document per line, streamed (its Content-Type says
            // `application/json`, which would be read whole).
            Some((call, _)) if call.verb == "watch" && kube::maskable(&parts.headers) => {
                Some(crate::protocol::http::body::BodyKind::Ndjson)
            }
            _ => aws_call
                .as_ref()
                .and_then(|(call, _)| aws::body_kind(call.call.protocol)),
        },
        // A single object's answer is read whole (bounded by `mask_body_limit`) for its
        // uid.
        buffer_json: kube_call.is_some_and(|(call, _)| {
            call.resource_request
                && (!call.name.is_empty() || call.verb == "create")
                && call.subresource.is_empty()
                && call.verb != "watch"
        }),
        record: state.rules.record_results,
        target_rt: state.target_rt.clone(),
        started,
    };
    let (body, body_info) =
        match body::respond(&body_cx, &method, parts.status, &mut parts.headers, body).await {
            Ok(prepared) => prepared,
            Err(why) => {
                // The answer could not be masked: the client gets a 502, and the call its
                // record (the server did act on it).
                let call_record = aws_call.as_ref().map(|(call, verdict)| {
                    let end = AwsEnd {
                        signed_as: signed_as.clone(),
                        ..AwsEnd::agent(state, seq, "answer not masked", 502)
                    };
                    CallFailure {
                        record: aws_record(state, call, seq, verdict, end, started),
                        shape: Shape::Aws(call.call.protocol),
                    }
                });
                let call_record = call_record.or_else(|| {
                    kube_call.map(|(_, record)| {
                        kube_failure(state, record, "answer not masked", true, started)
                    })
                });
                return body_refused(state, seq, started, parts.status, why, call_record).await;
            }
        };
    let response_event = HttpResponse {
        decoded: body_info.decoded.map(Into::into),
        body_bytes: body_info.body_bytes,
        masked: body_info.masked,
        secret_echoes_in_body: body_info.secret_echoes_in_body,
        excerpt: body_info.excerpt,
        end_follows: body_info.end_follows,
        ..response_head(state, seq, &parts, secret_echoes_masked, started)
    };
    let mut events = vec![Event::of(state.id, kind::RESPONSE, &response_event)];
    if let Some((call, verdict)) = &aws_call {
        let pairs = aws::header_pairs(&parts.headers);
        let error_code = (parts.status.as_u16() >= 300)
            .then(|| crate::protocol::aws::error::error_code(&pairs, body_info.buffered.as_deref()))
            .flatten();
        let end = AwsEnd {
            outcome: "forwarded",
            status: parts.status.as_u16(),
            error_code,
            request_id: crate::protocol::aws::error::request_id(&pairs).map(str::to_owned),
            signed_as: signed_as.clone(),
            response_bytes: response_event.body_bytes.or(response_event.content_length),
        };
        events.push(aws_record(state, call, seq, verdict, end, started));
    }
    if let Some((_, record)) = kube_call {
        let mut record = record.ended(
            "forwarded",
            parts.status.as_u16(),
            state.kube.as_ref().map(|k| k.acted_as.clone()),
            started,
        );
        record.uid = body_info.buffered.as_deref().and_then(kube::object_uid);
        events.push(Event::of(state.id, kube::kind::K8S_REQUEST, &record));
    }
    // The response head is journaled before the client sees it.
    if let Err(e) = record(state, &events, false).await {
        return journal_refused(&e);
    }
    remove_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body)
}

/// The names a message's `Connection` header lists (RFC 9110 §7.6.1: hop-by-hop for
/// this connection only, e.g. `HTTP2-Settings` with an h2c upgrade), lower case.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Removes the hop-by-hop headers of a message about to cross the proxy: the fixed list
/// and the ones its `Connection` header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_named(headers) {
        headers.remove(name.as_str());
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// A response whose body must be masked and cannot be (over `mask_body_limit`, not
/// readable): journaled, answered 502, the raw body dropped.
async fn body_refused(
    state: &State,
    seq: u64,
    started: Instant,
    upstream_status: StatusCode,
    why: String,
    call: Option<CallFailure>,
) -> Response<Body> {
    let message = format!("{why}; the server's {upstream_status} response was not forwarded");
    warn!(session = state.id, seq, error = %message, "response refused");
    let events = failed_events(state, seq, started, &message, call.as_ref());
    if let Err(e) = record(state, &events, false).await {
        return journal_refused(&e);
    }
    bad_gateway(state, seq, &message, call.as_ref())
}

/// The record of an AWS call or a Kubernetes request that failed on the way
/// (`aws_call`, `k8s_request`), and how its API shapes errors.
struct CallFailure {
    record: Event,
    shape: Shape,
}

/// The `k8s_request` of a Kubernetes request the agent answered 502 (`outcome`: the
/// server could not be asked, or its answer could not be masked); `reached`: the server
/// saw it, as `acted_as`.
fn kube_failure(
    state: &State,
    record: &kube::K8sRequest,
    outcome: &str,
    reached: bool,
    started: Instant,
) -> CallFailure {
    let acted_as = state
        .kube
        .as_ref()
        .filter(|_| reached)
        .map(|k| k.acted_as.clone());
    CallFailure {
        record: Event::of(
            state.id,
            kube::kind::K8S_REQUEST,
            &record.ended(outcome, 502, acted_as, started),
        ),
        shape: Shape::Kube,
    }
}

/// How an API shapes the agent's error answers.
#[derive(Clone, Copy)]
enum Shape {
    Aws(crate::protocol::aws::action::ApiProtocol),
    /// A Kubernetes `Status`.
    Kube,
}

/// The events of a request the agent answers 502: its `http_response`, and the call's
/// record for an AWS call.
fn failed_events(
    state: &State,
    seq: u64,
    started: Instant,
    message: &str,
    call: Option<&CallFailure>,
) -> Vec<Event> {
    let response = HttpResponse {
        error: Some(message.into()),
        ..HttpResponse::agent(seq, 502, started)
    };
    let mut events = vec![Event::of(state.id, kind::RESPONSE, &response)];
    events.extend(call.map(|c| c.record.clone()));
    events
}

/// The 502 the client gets: an AWS-shaped error for an AWS call.
fn bad_gateway(
    state: &State,
    seq: u64,
    message: &str,
    call: Option<&CallFailure>,
) -> Response<Body> {
    match call.map(|c| c.shape) {
        Some(Shape::Aws(protocol)) => aws::aws_error(
            protocol,
            StatusCode::BAD_GATEWAY,
            "InternalFailure",
            &format!("nhi-agent: {message}"),
            &aws::agent_request_id(state.id, seq),
        ),
        Some(Shape::Kube) => kube::status_response(
            StatusCode::BAD_GATEWAY,
            "InternalError",
            &format!("nhi-agent: {message}"),
            None,
        ),
        None => refusal(StatusCode::BAD_GATEWAY, message, None),
    }
}

/// The `http_response` event of a response head from the server (what comes of its
/// body is the caller's to add): headers as journaled, credentials redacted.
fn response_head(
    state: &State,
    seq: u64,
    parts: &http::response::Parts,
    secret_echoes_masked: u32,
    started: Instant,
) -> HttpResponse<'static> {
    HttpResponse {
        seq,
        status: parts.status.as_u16(),
        version: Some(format!("{:?}", parts.version).into()),
        secret_echoes_masked,
        headers: journaled_headers(&parts.headers, &state.rules, None),
        content_length: parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
        duration_us: started.elapsed().as_micros() as u64,
        by_agent: false,
        error: None,
        ..HttpResponse::default()
    }
}

/// The headers of a request to the server: the client's, without hop-by-hop headers
/// (the fixed list and those its `Connection` header names) and those `skip` names,
/// with the target's credential (`inject`) replacing whatever the client sent under
/// that name.
fn upstream_headers(
    state: &State,
    from: &HeaderMap,
    to: &mut HeaderMap,
    skip: impl Fn(&http::HeaderName) -> bool,
) {
    let named = connection_named(from);
    for (name, value) in from.iter() {
        if HOP_BY_HOP.contains(&name.as_str())
            || named.iter().any(|n| n == name.as_str())
            || skip(name)
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
    if let Some(inject) = &state.target_rt.inject {
        to.remove(&inject.name);
        to.insert(inject.name.clone(), inject.value.clone());
    }
    if let Some(session) = &state.kube {
        kube::upstream_headers(session, to, state.target_rt.inject.is_some());
    }
}

/// Journals a request the server could not be asked (connect, TLS, handshake) and
/// answers 502 naming why.
async fn upstream_failed(
    state: &State,
    seq: u64,
    started: Instant,
    message: String,
    call: Option<CallFailure>,
) -> Response<Body> {
    warn!(session = state.id, seq, error = %message, "upstream request failed");
    let events = failed_events(state, seq, started, &message, call.as_ref());
    let _ = record(state, &events, false).await;
    bad_gateway(state, seq, &message, call.as_ref())
}

/// What replaces an echo of the injected secret in a response header.
const SECRET_MASK: &str = "[redacted by nhi-agent]";

/// Replaces every occurrence of `secret` in the values of `headers`; returns how many
/// header values changed.
fn mask_secret_echoes(headers: &mut HeaderMap, secret: &[u8]) -> u32 {
    if secret.is_empty() {
        return 0;
    }
    let finder = memchr::memmem::Finder::new(secret);
    let mut masked = 0;
    for value in headers.values_mut() {
        let bytes = value.as_bytes();
        if finder.find(bytes).is_none() {
            continue;
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut rest = bytes;
        while let Some(at) = finder.find(rest) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(SECRET_MASK.as_bytes());
            rest = &rest[at + secret.len()..];
        }
        out.extend_from_slice(rest);
        // Bytes that were a valid value stay valid with the mask in place of the secret.
        *value =
            HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(SECRET_MASK));
        masked += 1;
    }
    masked
}

/// Byte counts of the client connection.
#[derive(Default)]
struct Counted {
    read: AtomicU64,
    written: AtomicU64,
}

/// The client stream, counting what passes (the session's byte totals) and, for HTTP/1,
/// following the request framing on the raw bytes.
struct Counting {
    /// `None` only once dropped (the stream goes to [`linger`]).
    inner: Option<Stream>,
    counts: Arc<Counted>,
    framing: Option<Arc<Mutex<RequestFraming>>>,
}

impl Counting {
    fn new(
        inner: Stream,
        counts: Arc<Counted>,
        framing: Option<Arc<Mutex<RequestFraming>>>,
    ) -> Self {
        Counting {
            inner: Some(inner),
            counts,
            framing,
        }
    }

    fn stream(&mut self) -> &mut Stream {
        self.inner
            .as_mut()
            .expect("the stream is taken only when the wrapper is dropped")
    }
}

/// However the connection ends (hyper done with it, a refusal, an upgrade relayed), the
/// client's side is closed with [`linger`].
impl Drop for Counting {
    fn drop(&mut self) {
        if let (Some(stream), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(linger(stream));
        }
    }
}

/// How long a closed client connection is drained at most, and how much of it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 1 << 20;

/// Closes a client connection as careful servers do (nginx's lingering close): the
/// agent's side is shut down first, then what the client still sends is read and
/// dropped for a moment. Closing with unread input would make the kernel answer it with
/// a reset, which can destroy the response the client has not read yet (the 431 or 400
/// refusing a head it is still sending).
async fn linger(mut stream: Stream) {
    let _ = tokio::time::timeout(LINGER, async {
        let _ = stream.shutdown().await;
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_MAX_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(self.stream()).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.counts.read.fetch_add(n as u64, Ordering::Relaxed);
        if n > 0 {
            if let Some(framing) = &self.framing {
                let mut framing = framing.lock().unwrap_or_else(|p| p.into_inner());
                if framing.following() {
                    framing.feed(&buf.filled()[before..]);
                } else {
                    drop(framing);
                    self.framing = None;
                }
            }
        }
        result
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(self.stream()).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &result {
            self.counts.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.stream()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.stream()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_the_connection_header_names_are_hop_by_hop() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        headers.append(header::CONNECTION, HeaderValue::from_static("x-hop"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("x-end-to-end", HeaderValue::from_static("2"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-end-to-end"]);
    }

    #[test]
    fn secret_echoes_in_response_headers_are_masked() {
        let secret = b"tok-123";
        let mut headers = HeaderMap::new();
        headers.insert("x-echo", HeaderValue::from_static("Bearer tok-123"));
        headers.append("x-echo", HeaderValue::from_static("a tok-123 b tok-123"));
        headers.insert("x-other", HeaderValue::from_static("tok-12"));
        assert_eq!(mask_secret_echoes(&mut headers, secret), 2);
        let echoes: Vec<&str> = headers
            .get_all("x-echo")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            echoes,
            [
                "Bearer [redacted by nhi-agent]",
                "a [redacted by nhi-agent] b [redacted by nhi-agent]"
            ]
        );
        assert_eq!(headers["x-other"], "tok-12");
        assert_eq!(mask_secret_echoes(&mut headers, b""), 0);
    }
}
