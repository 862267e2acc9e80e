//! The journal events of an HTTP session: their kinds and payloads, written by the proxy
//! and read back by the CLI (as `proxy::postgres::events` for PostgreSQL).
use std::borrow::Cow;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::mask::MaskedValues;

/// The event kinds of an HTTP session.
pub mod kind {
    /// [`super::HttpRequest`]: one request, judged, before it is forwarded or refused.
    pub const REQUEST: &str = "http_request";
    /// [`super::HttpResponse`]: the response head to the request of the same `seq`.
    pub const RESPONSE: &str = "http_response";
    /// [`super::HttpResponseEnd`]: the end of a response body the agent streamed
    /// (masked, or of a size unknown at the head): its size, what was masked, excerpt.
    pub const RESPONSE_END: &str = "http_response_end";
    /// [`super::WsFrame`]: one WebSocket frame of an upgraded connection, before it is
    /// relayed.
    pub const WS_FRAME: &str = "ws_frame";
    /// [`super::SpdyFrame`]: one SPDY/3.1 frame of an upgraded Kubernetes connection,
    /// before it is relayed.
    pub const SPDY_FRAME: &str = "spdy_frame";
}

/// Kind [`kind::REQUEST`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest<'a> {
    #[serde(default)]
    pub seq: u64,
    #[serde(borrow, default)]
    pub method: Cow<'a, str>,
    /// Host / :authority without the port.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Cow<'a, str>>,
    /// The request target as sent (path and query), through the mask detectors.
    #[serde(borrow)]
    pub target: Cow<'a, str>,
    /// The normalised path policy judged; absent when it did not normalise.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    /// Request headers; credentials `[redacted]`, values through the mask detectors.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_length: Option<u64>,
    /// The policy's verdict: "allow", "approve", "deny".
    #[serde(borrow, default)]
    pub verdict: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Cow<'a, str>>,
    #[serde(default = "yes")]
    pub enforced: bool,
    /// What the agent did: "forwarded", "refused", "held".
    #[serde(borrow, default)]
    pub action: Cow<'a, str>,
    /// Why it was refused before it was judged (an ambiguous path, the disk budget).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
    /// The header the agent set with the target's secret (`inject`), when it forwards
    /// the request: its name, never its value.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub injected: Option<Cow<'a, str>>,
    /// The client sent a header of that name itself; the agent's replaced it (its value
    /// is journaled `[redacted]`, like every credential header).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replaced_client_header: bool,
    /// The request body's size, when known before it was forwarded (Content-Length,
    /// or the whole body was read for the excerpt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<u64>,
    /// The start of the body, masked (`record_results = "rows"`, text-like bodies).
    #[serde(flatten)]
    pub excerpt: BodyExcerpt,
    /// The protocol an HTTP/1.1 `Upgrade` header asked for (`websocket`, `h2c`, ...).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<Cow<'a, str>>,
    /// The agent declined that upgrade: the request went on as plain HTTP/1.1 (every
    /// upgrade but `websocket`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upgrade_declined: bool,
    /// The AWS call this request is (`protocol = "aws"` targets): service, action,
    /// region, resources, masked parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<super::aws::AwsCallHead>,
    /// The Kubernetes request this is (`protocol = "kubernetes"` targets): verb,
    /// resource, namespace, name, the exec argv (masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<crate::protocol::kubernetes::request::KubeRequest>,
}

/// A bounded, masked excerpt of a body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BodyExcerpt {
    /// What masking read the body as: `json`, `ndjson`, `sse`, `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_kind: Option<String>,
    /// The first bytes of the body as the client saw it (masked), at most 4 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excerpt: Option<String>,
    /// The body was longer than the excerpt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub excerpt_truncated: bool,
    /// Why there is no excerpt although one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excerpt_withheld: Option<String>,
}

fn yes() -> bool {
    true
}

/// Kind [`kind::RESPONSE`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpResponse<'a> {
    #[serde(default)]
    pub seq: u64,
    pub status: u16,
    /// The HTTP version the server answered with (`HTTP/1.1`, `HTTP/2.0`); absent when
    /// the agent answered.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Cow<'a, str>>,
    /// Response headers; credentials `[redacted]`.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_length: Option<u64>,
    /// From the request's arrival to the response head.
    #[serde(default)]
    pub duration_us: u64,
    /// The agent answered (a refusal), not the server.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_agent: bool,
    /// Why the upstream request failed.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Cow<'a, str>>,
    /// Response headers in which the agent masked an echo of the secret it injected
    /// (before the journal and the client saw them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub secret_echoes_masked: u32,
    /// The `Content-Encoding` the agent decoded to mask the body (forwarded decoded,
    /// without the header).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub decoded: Option<Cow<'a, str>>,
    /// A body masked whole before the head (JSON): its size as the client gets it, what
    /// was masked and the excerpt. Streamed bodies say so in [`HttpResponseEnd`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<MaskedValues>,
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub secret_echoes_in_body: u64,
    #[serde(flatten)]
    pub excerpt: BodyExcerpt,
    /// An [`HttpResponseEnd`] with the same `seq` follows at the end of the body (the
    /// agent streams or measures it); readers that summarise a request wait for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end_follows: bool,
}

/// Kind [`kind::RESPONSE_END`]: journaled when a streamed response body ends (or is cut).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpResponseEnd {
    #[serde(default)]
    pub seq: u64,
    /// Bytes of body the client was given (after masking and decoding).
    #[serde(default)]
    pub body_bytes: u64,
    /// From the request's arrival to the end of the body.
    #[serde(default)]
    pub duration_us: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<MaskedValues>,
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub secret_echoes_in_body: u64,
    #[serde(flatten)]
    pub excerpt: BodyExcerpt,
    /// Why the body did not end normally (the upstream failed, a line over the limit,
    /// the client left); the client's response was cut there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HttpResponseEnd {
    /// The event stored as `data`; `None` if it is not one.
    pub fn read(data: &serde_json::Value) -> Option<HttpResponseEnd> {
        HttpResponseEnd::deserialize(data).ok()
    }
}

fn is_zero64(n: &u64) -> bool {
    *n == 0
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl HttpResponse<'_> {
    /// A response the agent gave itself.
    pub fn agent(seq: u64, status: u16, started: Instant) -> HttpResponse<'static> {
        HttpResponse {
            seq,
            status,
            duration_us: started.elapsed().as_micros() as u64,
            by_agent: true,
            ..HttpResponse::default()
        }
    }
}

/// Kind [`kind::WS_FRAME`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WsFrame<'a> {
    /// The `seq` of the request that upgraded the connection.
    #[serde(default)]
    pub seq: u64,
    /// Who sent it: "client" or "server".
    #[serde(borrow, default)]
    pub from: Cow<'a, str>,
    /// The frame's number among those its sender sent, from 1.
    #[serde(default)]
    pub n: u64,
    /// "text", "binary", "continuation", "close", "ping", "pong".
    #[serde(borrow, default)]
    pub opcode: Cow<'a, str>,
    /// For a continuation frame: the opcode of the message it continues.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Cow<'a, str>>,
    /// The last frame of its message.
    #[serde(default)]
    pub fin: bool,
    /// Payload bytes.
    #[serde(default)]
    pub size: u64,
    /// The start of a text payload (or a close frame's reason) through the mask
    /// detectors: client frames always, server frames with `record_results = "rows"`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub excerpt: Option<Cow<'a, str>>,
    /// The excerpt is shorter than the payload.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub excerpt_cut: bool,
    /// A close frame's status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    /// A Kubernetes stream's channel (`stdin`, `stdout`, `stderr`, `error`, `resize`,
    /// `port 5432 data`, ...): the excerpt is then the channel's data, not the payload.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Cow<'a, str>>,
}

impl<'a> WsFrame<'a> {
    /// The frame event stored as `data`; `None` if it is not one.
    pub fn read(data: &'a serde_json::Value) -> Option<WsFrame<'a>> {
        WsFrame::deserialize(data).ok()
    }
}

impl<'a> HttpRequest<'a> {
    /// The request event stored as `data`; `None` if it is not one.
    pub fn read(data: &'a serde_json::Value) -> Option<HttpRequest<'a>> {
        HttpRequest::deserialize(data).ok()
    }
}

impl<'a> HttpResponse<'a> {
    /// The response event stored as `data`; `None` if it is not one.
    pub fn read(data: &'a serde_json::Value) -> Option<HttpResponse<'a>> {
        HttpResponse::deserialize(data).ok()
    }
}

/// Kind [`kind::SPDY_FRAME`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpdyFrame<'a> {
    /// The `seq` of the request that upgraded the connection.
    #[serde(default)]
    pub seq: u64,
    /// Who sent it: "client" or "server".
    #[serde(borrow, default)]
    pub from: Cow<'a, str>,
    /// The frame's number among those its sender sent, from 1.
    #[serde(default)]
    pub n: u64,
    /// `syn_stream`, `syn_reply`, `rst_stream`, `settings`, `ping`, `goaway`, `headers`,
    /// `window_update`, `data`.
    #[serde(borrow, default)]
    pub frame: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u32>,
    /// The stream's `streamtype` (`stdin`, `stdout`, `stderr`, `error`, `resize`; for
    /// port-forward `port 5432 data`): a DATA frame's excerpt is that channel's data.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fin: bool,
    /// A DATA frame's payload bytes.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub size: u64,
    /// A header block's name/value pairs, values through the mask detectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<(String, String)>>,
    /// The start of a DATA frame's payload through the mask detectors (Kubernetes
    /// channels only).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub excerpt: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub excerpt_cut: bool,
    /// RST_STREAM's or GOAWAY's status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
}

impl<'a> SpdyFrame<'a> {
    /// The frame event stored as `data`; `None` if it is not one.
    pub fn read(data: &'a serde_json::Value) -> Option<SpdyFrame<'a>> {
        SpdyFrame::deserialize(data).ok()
    }
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}
