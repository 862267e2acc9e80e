//! Bodies on their way through the HTTP proxy: which responses are masked and how
//! ([`plan`]), JSON masked whole before the head ([`mask_buffered`]), NDJSON / SSE /
//! text masked line by line as they stream ([`MaskedStream`]), bodies passed through
//! and only measured ([`Measured`]), and the request excerpt read before the request
//! is journaled ([`prefetch_request`]). The sans-IO work is `protocol::http::body` and
//! `mask::BodyMasker`.
//!
//! Masked bodies are forwarded decoded: `Content-Encoding` is removed (the client gets
//! what it asked for, in the identity coding every client reads), `Content-Length` is
//! set for a JSON body masked whole and removed for a streamed one (hyper frames it:
//! chunked on HTTP/1.1, DATA frames on h2). Trailers of a masked body are dropped.
//!
//! A streamed body that cannot be masked after its head was sent (a line over
//! `mask_body_limit`, an NDJSON line that is not JSON, a broken encoding) is cut: the
//! client sees the body end abnormally (HTTP/1.1: the connection closes before the last
//! chunk; h2: the stream is reset), never the raw line, and `http_response_end` says why.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tracing::warn;

use super::events::{kind, BodyExcerpt, HttpResponseEnd};
use super::runtime::HttpTargetRuntime;
use crate::journal::{Event, JournalHandle, SessionId};
use crate::mask::{BodyMasker, SessionMasks};
use crate::policy::RecordResults;
use crate::protocol::http::body::{
    mask_whole, BodyError, BodyKind, Coding, Decoder, Excerpt, LineMasker, EXCERPT_BYTES,
};

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(super) type Body = BoxBody<Bytes, BoxError>;

/// What one response's body needs from its session.
#[derive(Clone)]
pub(super) struct BodyContext {
    pub id: SessionId,
    pub seq: u64,
    pub journal: JournalHandle,
    pub masks: SessionMasks,
    pub record: RecordResults,
    pub target_rt: Arc<HttpTargetRuntime>,
    pub started: Instant,
    /// What the body is whatever its `Content-Type` says: an AWS API's answers are in
    /// its protocol's format (JSON or XML), and servers that emulate AWS label them
    /// loosely (moto: `text/html`).
    pub kind: Option<BodyKind>,
    /// Read a JSON body whole even when nothing masks it (bounded by `mask_body_limit`):
    /// the caller wants it (a Kubernetes object's uid).
    pub buffer_json: bool,
}

impl BodyContext {
    fn secret(&self) -> Option<&[u8]> {
        self.target_rt.inject.as_ref().map(|i| i.secret.expose())
    }

    fn limit(&self) -> u64 {
        self.target_rt.mask_body_limit
    }

    fn excerpt(&self) -> Option<Excerpt> {
        (self.record == RecordResults::Rows).then(|| Excerpt::new(EXCERPT_BYTES))
    }
}

/// What becomes of a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// Passed through as is, nothing journaled after the head.
    Pass,
    /// Passed through as is, measured (and excerpted under `record_results = "rows"`);
    /// `http_response_end` journaled at its end.
    Measure(Option<BodyKind>),
    /// Masked whole before the head (JSON).
    Buffer(BodyKind, Coding),
    /// Masked line by line as it streams.
    Stream(BodyKind, Coding),
}

/// Decides what happens to a response body. Masking applies when the session has
/// masks or the target injects a secret, to the body kinds masks can read.
pub(super) fn plan(
    cx: &BodyContext,
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Plan, String> {
    if without_body(method, status) {
        return Ok(Plan::Pass);
    }
    let kind = cx.kind.or_else(|| {
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(BodyKind::of)
    });
    let Some(kind) = kind.filter(|kind| {
        masking(&cx.masks, &cx.target_rt) || (cx.buffer_json && *kind == BodyKind::Json)
    }) else {
        let known_size = headers.contains_key(header::CONTENT_LENGTH);
        let measured = match cx.record {
            RecordResults::Rows => true,
            RecordResults::Summary => !known_size,
            RecordResults::None => false,
        };
        return Ok(if measured {
            Plan::Measure(kind)
        } else {
            Plan::Pass
        });
    };
    let coding = Coding::of(
        headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )?;
    Ok(match kind {
        BodyKind::Json | BodyKind::Xml => Plan::Buffer(kind, coding),
        _ => Plan::Stream(kind, coding),
    })
}

/// Whether a response to `method` with `status` has no body (RFC 9110 §6.4.1).
pub(super) fn without_body(method: &Method, status: StatusCode) -> bool {
    method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Whether responses of this session may be masked (masks, or an injected secret).
/// A Kubernetes target's token is not looked for in bodies (API servers do not echo
/// the caller's token; reading every list whole to look would refuse large ones).
pub(super) fn masking(masks: &SessionMasks, target_rt: &HttpTargetRuntime) -> bool {
    !masks.is_empty() || (target_rt.inject.is_some() && target_rt.kube.is_none())
}

/// Keeps in a forwarded `Accept-Encoding` only the codings the agent decodes, so a
/// server does not answer in one (zstd, ...) that masking cannot read.
pub(super) fn restrict_accept_encoding(headers: &mut HeaderMap) {
    let Some(value) = headers.get(header::ACCEPT_ENCODING) else {
        return;
    };
    let kept: Vec<String> = value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|item| {
            let coding = item.split(';').next().unwrap_or("").trim();
            ["gzip", "x-gzip", "deflate", "br", "identity"]
                .iter()
                .any(|c| coding.eq_ignore_ascii_case(c))
        })
        .map(str::to_owned)
        .collect();
    match http::HeaderValue::from_str(&kept.join(", ")) {
        Ok(v) if !kept.is_empty() => {
            headers.insert(header::ACCEPT_ENCODING, v);
        }
        _ => {
            headers.remove(header::ACCEPT_ENCODING);
        }
    }
}

/// Removes what a decoded, re-framed body invalidates.
pub(super) fn fix_headers(headers: &mut HeaderMap, decoded: bool, length: Option<usize>) {
    if decoded {
        headers.remove(header::CONTENT_ENCODING);
    }
    headers.remove(header::CONTENT_LENGTH);
    // The digest and range of the original representation no longer describe it.
    headers.remove("content-md5");
    headers.remove("digest");
    headers.remove(header::CONTENT_RANGE);
    if let Some(n) = length {
        headers.insert(header::CONTENT_LENGTH, n.into());
    }
}

/// A JSON body masked whole: what to send and what to journal with the head.
pub(super) struct Buffered {
    pub body: Bytes,
    pub masker: BodyMasker,
    pub excerpt: BodyExcerpt,
}

/// Reads the whole body (decoded size bounded by `mask_body_limit`) and masks it.
pub(super) async fn mask_buffered(
    cx: &BodyContext,
    kind: BodyKind,
    coding: Coding,
    mut body: Incoming,
) -> Result<Buffered, String> {
    let limit = cx.limit();
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut decoder = Decoder::new(coding, cap, limit);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("upstream body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            decoder.feed(&data).map_err(|e| e.to_string())?;
        }
    }
    decoder.finish().map_err(|e| e.to_string())?;
    let decoded = decoder.take();
    let mut masker = cx.masks.body_masker();
    // An empty body holds nothing to mask (and is no JSON or XML document).
    let masked = if decoded.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        mask_whole(kind, &decoded, limit, &mut masker, cx.secret()).map_err(|e| e.to_string())?
    };
    let body = Bytes::from(masked.unwrap_or(decoded));
    let excerpt = cx.excerpt().map(|mut e| {
        e.push(&body);
        e
    });
    Ok(Buffered {
        excerpt: excerpt_of(Some(kind), excerpt.as_ref()),
        body,
        masker,
    })
}

fn excerpt_of(kind: Option<BodyKind>, excerpt: Option<&Excerpt>) -> BodyExcerpt {
    BodyExcerpt {
        body_kind: kind.map(|k| k.name().to_owned()),
        excerpt: excerpt.map(Excerpt::text),
        excerpt_truncated: excerpt.is_some_and(Excerpt::truncated),
        excerpt_withheld: None,
    }
}

/// Journals `http_response_end` once: at the end of the body, at an error, or when the
/// body is dropped before its end (the client left).
struct End {
    cx: BodyContext,
    kind: Option<BodyKind>,
    bytes: u64,
    excerpt: Option<Excerpt>,
    done: bool,
}

impl End {
    fn new(cx: BodyContext, kind: Option<BodyKind>) -> End {
        End {
            excerpt: if kind.is_some() { cx.excerpt() } else { None },
            cx,
            kind,
            bytes: 0,
            done: false,
        }
    }

    fn sent(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        if let Some(e) = &mut self.excerpt {
            e.push(data);
        }
    }

    fn record(&mut self, masker: Option<&BodyMasker>, error: Option<String>) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(why) = &error {
            warn!(session = self.cx.id, seq = self.cx.seq, error = %why, "response body cut");
        }
        let end = HttpResponseEnd {
            seq: self.cx.seq,
            body_bytes: self.bytes,
            duration_us: self.cx.started.elapsed().as_micros() as u64,
            masked: masker.map(BodyMasker::masked).unwrap_or_default(),
            secret_echoes_in_body: masker.map_or(0, BodyMasker::secret_echoes),
            excerpt: excerpt_of(self.kind, self.excerpt.as_ref()),
            error,
        };
        // The body already went out; a journal failure here closes the session (the
        // next request is refused) but cannot take the bytes back.
        if let Err(e) = self
            .cx
            .journal
            .record(&[Event::of(self.cx.id, kind::RESPONSE_END, &end)])
        {
            warn!(session = self.cx.id, error = %e, "the journal cannot record the end of a response");
        }
    }
}

/// A body passed through untouched and measured.
pub(super) struct Measured {
    inner: Incoming,
    end: End,
}

impl Measured {
    pub(super) fn new(cx: BodyContext, kind: Option<BodyKind>, inner: Incoming) -> Measured {
        Measured {
            inner,
            end: End::new(cx, kind),
        }
    }
}

impl HttpBody for Measured {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.end.sent(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.end.record(None, Some(format!("upstream body: {e}")));
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                this.end.record(None, None);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        if !self.end.done {
            self.end
                .record(None, Some("the body was not sent to its end".into()));
        }
    }
}

/// Encoded input fed to the decoder at a time: bounds what one step can decode.
const FEED: usize = 1024;

/// A line-framed body (NDJSON, SSE, text) masked as it streams.
pub(super) struct MaskedStream {
    inner: Incoming,
    decoder: Decoder,
    lines: LineMasker,
    masker: BodyMasker,
    end: End,
    finished: bool,
}

impl MaskedStream {
    pub(super) fn new(
        cx: BodyContext,
        kind: BodyKind,
        coding: Coding,
        inner: Incoming,
    ) -> MaskedStream {
        let limit = cx.limit();
        // Decoded bytes are taken after each FEED bytes of input; the cap only stops a
        // bomb (deflate expands at most ~1032x, so 1 KiB gives at most ~1 MiB).
        let cap = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .max(2 << 20)
            .saturating_mul(2);
        MaskedStream {
            inner,
            decoder: Decoder::new(coding, cap, limit),
            lines: LineMasker::new(kind, limit),
            masker: cx.masks.body_masker(),
            end: End::new(cx, Some(kind)),
            finished: false,
        }
    }

    fn process(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        let secret = self.end.cx.secret();
        for piece in data.chunks(FEED) {
            self.decoder.feed(piece)?;
            let decoded = self.decoder.take();
            self.lines.push(&decoded, &mut self.masker, secret, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        let secret = self.end.cx.secret();
        self.decoder.finish()?;
        let decoded = self.decoder.take();
        self.lines.push(&decoded, &mut self.masker, secret, out)?;
        self.lines.finish(&mut self.masker, secret, out)
    }

    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.finished = true;
        self.end.record(Some(&self.masker), Some(why.clone()));
        Poll::Ready(Some(Err(format!("nhi-agent: {why}").into())))
    }
}

impl HttpBody for MaskedStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers of a masked body are dropped.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Err(e) = this.process(&data, &mut out) {
                        return this.fail(e.to_string());
                    }
                }
                Some(Err(e)) => return this.fail(format!("upstream body: {e}")),
                None => {
                    if let Err(e) = this.finish(&mut out) {
                        return this.fail(e.to_string());
                    }
                    this.finished = true;
                    this.end.sent(&out);
                    this.end.record(Some(&this.masker), None);
                    if out.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
            }
            if !out.is_empty() {
                this.end.sent(&out);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }
}

impl Drop for MaskedStream {
    fn drop(&mut self) {
        if !self.end.done {
            self.end.record(
                Some(&self.masker),
                Some("the body was not sent to its end".into()),
            );
        }
    }
}

/// What the journal learns of a request body before the request is forwarded.
#[derive(Debug, Default)]
pub(super) struct RequestBody {
    /// The whole body's size, when the prefetch saw its end.
    pub bytes: Option<u64>,
    pub excerpt: BodyExcerpt,
}

/// Read beyond the excerpt, so a value that straddles the excerpt's end is still
/// whole when the detectors read it.
const PREFETCH_MARGIN: usize = 1024;

/// How long the first bytes of a request body are waited for (later ones are taken
/// only if already there: a client that streams its body is not held up).
const PREFETCH_WAIT: Duration = Duration::from_secs(10);

/// Reads the start of a request body (up to the excerpt and a margin) for the journal
/// and returns a body that replays it, then the rest. Called after the verdict allowed
/// the request, so an `Expect: 100-continue` client is asked for its body only then.
pub(super) async fn prefetch_request(
    masks: &SessionMasks,
    headers: &HeaderMap,
    mut body: Incoming,
) -> (Body, RequestBody) {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(BodyKind::of);
    let mut head: Vec<Frame<Bytes>> = Vec::new();
    let mut seen = Vec::new();
    let mut ended = body.is_end_stream();
    let mut first = true;
    while !ended && seen.len() < EXCERPT_BYTES + PREFETCH_MARGIN {
        let next = if first {
            tokio::time::timeout(PREFETCH_WAIT, body.frame()).await
        } else {
            tokio::time::timeout(Duration::ZERO, body.frame()).await
        };
        match next {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    seen.extend_from_slice(data);
                    first = false;
                }
                head.push(frame);
            }
            Ok(Some(Err(_))) | Err(_) => break,
            Ok(None) => ended = true,
        }
    }
    let info = RequestBody {
        bytes: ended.then_some(seen.len() as u64),
        excerpt: request_excerpt(masks, kind, &seen, ended),
    };
    let body = Replayed {
        head: head.into(),
        rest: body,
    };
    (body.boxed(), info)
}

/// The frames read ahead, then the rest of the body.
struct Replayed {
    head: std::collections::VecDeque<Frame<Bytes>>,
    rest: Incoming,
}

impl HttpBody for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut this.rest).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.is_end_stream()
    }
}

/// The masked excerpt of the start of a request body (`ended`: it is the whole body).
fn request_excerpt(
    masks: &SessionMasks,
    kind: Option<BodyKind>,
    seen: &[u8],
    ended: bool,
) -> BodyExcerpt {
    let Some(kind) = kind else {
        return BodyExcerpt::default();
    };
    if seen.is_empty() {
        return BodyExcerpt {
            body_kind: Some(kind.name().to_owned()),
            ..BodyExcerpt::default()
        };
    }
    let mut masker = masks.body_masker();
    let limit = seen.len() as u64 + 1;
    let masked = if ended || !matches!(kind, BodyKind::Json | BodyKind::Ndjson | BodyKind::Xml) {
        mask_whole(kind, seen, limit, &mut masker, None)
    } else if masks.has_column_rules() {
        // A cut JSON document cannot be read by member names.
        return BodyExcerpt {
            body_kind: Some(kind.name().to_owned()),
            excerpt_withheld: Some(format!(
                "the {} body is longer than the excerpt and cannot be masked in part",
                kind.name()
            )),
            ..BodyExcerpt::default()
        };
    } else {
        mask_whole(BodyKind::Text, seen, limit, &mut masker, None)
    };
    match masked {
        Ok(masked) => {
            let mut e = Excerpt::new(EXCERPT_BYTES);
            e.push(masked.as_deref().unwrap_or(seen));
            BodyExcerpt {
                excerpt_truncated: e.truncated() || !ended,
                ..excerpt_of(Some(kind), Some(&e))
            }
        }
        Err(why) => BodyExcerpt {
            body_kind: Some(kind.name().to_owned()),
            excerpt_withheld: Some(why.to_string()),
            ..BodyExcerpt::default()
        },
    }
}

/// What the head's `http_response` says of a body prepared by [`respond`].
#[derive(Default)]
pub(super) struct HeadInfo {
    pub decoded: Option<&'static str>,
    pub body_bytes: Option<u64>,
    pub masked: Vec<crate::mask::MaskedValues>,
    pub secret_echoes_in_body: u64,
    pub excerpt: BodyExcerpt,
    /// `http_response_end` is journaled at the end of the body.
    pub end_follows: bool,
    /// A body read whole before the head (masked): what the client gets.
    pub buffered: Option<Bytes>,
}

/// Prepares a response body per [`plan`]: masked whole (JSON, before the head), masked
/// as it streams, measured, or passed. Fixes the headers a rewritten body invalidates.
/// `Err`: the body must be masked and cannot be; the message says why (the caller
/// answers 502 and the raw body goes nowhere).
pub(super) async fn respond(
    cx: &BodyContext,
    method: &Method,
    status: StatusCode,
    headers: &mut HeaderMap,
    body: Incoming,
) -> Result<(Body, HeadInfo), String> {
    let plan = plan(cx, method, status, headers)
        .map_err(|why| format!("the response must be masked but {why}"))?;
    let decoded = |coding: Coding| (coding != Coding::Identity).then_some(coding.name());
    Ok(match plan {
        Plan::Pass => (body.map_err(Into::into).boxed(), HeadInfo::default()),
        Plan::Measure(kind) => (
            Measured::new(cx.clone(), kind, body).boxed(),
            HeadInfo {
                end_follows: true,
                ..HeadInfo::default()
            },
        ),
        Plan::Buffer(kind, coding) => {
            let done = mask_buffered(cx, kind, coding, body)
                .await
                .map_err(|why| format!("the response must be masked but {why}"))?;
            fix_headers(headers, coding != Coding::Identity, Some(done.body.len()));
            let info = HeadInfo {
                decoded: decoded(coding),
                body_bytes: Some(done.body.len() as u64),
                masked: done.masker.masked(),
                secret_echoes_in_body: done.masker.secret_echoes(),
                excerpt: done.excerpt,
                end_follows: false,
                buffered: Some(done.body.clone()),
            };
            let body = http_body_util::Full::new(done.body)
                .map_err(|never| match never {})
                .boxed();
            (body, info)
        }
        Plan::Stream(kind, coding) => {
            fix_headers(headers, coding != Coding::Identity, None);
            let info = HeadInfo {
                decoded: decoded(coding),
                excerpt: BodyExcerpt {
                    body_kind: Some(kind.name().to_owned()),
                    ..BodyExcerpt::default()
                },
                end_follows: true,
                ..HeadInfo::default()
            };
            (
                MaskedStream::new(cx.clone(), kind, coding, body).boxed(),
                info,
            )
        }
    })
}
