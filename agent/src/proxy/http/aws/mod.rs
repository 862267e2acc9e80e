//! AWS targets (`protocol = "aws"`): HTTP targets whose requests are AWS API calls.
//!
//! Per request, before it is judged: the client's SigV4 signature is read and, when it
//! was made with the placeholder key ([`PLACEHOLDER_KEY_ID`]), checked (a request
//! signed with another key is refused unless `accept_any_client_key`, then only its
//! shape is checked); the request's date must be within 15 minutes of the agent's
//! clock; the body is read whole when the signature or the call needs it (bounded by
//! [`MAX_BUFFERED_BODY`]); the call is named (`protocol::aws::action`: service,
//! operation, resources, parameters). Policy judges it by `actions`, `regions` and
//! `resources` (and the HTTP conditions); the `http_request` event carries the call
//! ([`AwsCallHead`], parameters masked) and is journaled before anything is forwarded.
//!
//! Forwarding: the client's `Authorization`, `X-Amz-Date` and `X-Amz-Security-Token`
//! (or presigned query parameters) are removed and the request is signed again with
//! the agent's credential over the same header names, as they are sent upstream; a
//! presigned URL is presigned again for the time it had left. The body passes as it
//! came (its hash, `UNSIGNED-PAYLOAD`, `STREAMING-UNSIGNED-PAYLOAD-TRAILER`).
//!
//! Records: one `aws_call` event per request ([`AwsCall`]): the call, the verdict,
//! status, AWS error code, AWS request id (the join key to CloudTrail), sizes,
//! duration, the identity the agent signed as and the workload. It is journaled with
//! the response head, before the client sees it, or with the agent's own refusal.
//! Refusals are AWS-shaped errors (`protocol::aws::error`), so SDKs report them as
//! they report AWS's own.
pub mod credentials;

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::body::Body;
use crate::protocol::aws::action::{self, ApiProtocol, Call};
use crate::protocol::aws::chunked::{ChunkResigner, ChunkSigner};
use crate::protocol::aws::error::error_response;
use crate::protocol::aws::sigv4::{
    self, client_signature, payload_mode, single_header, ClientSignature, Location, PayloadMode,
    SigError, Signable, PLACEHOLDER_KEY_ID,
};

pub use credentials::{AwsCredentials, RoleSession};

/// The largest request body the agent reads whole (to hash it for the signature, or to
/// read the call's parameters): AWS's JSON and query APIs take a few MiB at most.
pub const MAX_BUFFERED_BODY: usize = 16 << 20;

/// Event kind of [`AwsCall`].
pub const AWS_CALL: &str = "aws_call";

/// Per-target state of an AWS target.
#[derive(Debug)]
pub struct AwsTargetRuntime {
    pub credentials: AwsCredentials,
    pub accept_any_client_key: bool,
    /// `aws_sts_endpoint`: where workloads' roles are assumed.
    pub sts_endpoint: Option<String>,
}

/// What the `http_request` event says of an AWS call (journaled before it is
/// forwarded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AwsCallHead {
    /// IAM service prefix (`s3`, `iam`, `secretsmanager`).
    pub service: String,
    /// `service:Operation`; `service:?` when the operation is not recognised.
    pub action: String,
    pub region: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// The call's parameters, masked.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub params: serde_json::Value,
    /// `query`, `json`, `rest-xml`, `rest-json`.
    pub api: String,
    /// The access key id the client signed with (the placeholder, or its own with
    /// `accept_any_client_key`).
    pub client_key_id: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub presigned: bool,
    /// How the body is covered: `hash`, `UNSIGNED-PAYLOAD`, `STREAMING-...`.
    pub payload: String,
}

/// Kind [`AWS_CALL`]: one per request, with its outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AwsCall {
    pub seq: u64,
    #[serde(flatten)]
    pub head: AwsCallHead,
    pub workload: String,
    /// The policy's verdict and rule, and what the agent did (`forwarded`, `refused`).
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Whether the verdict was enforced (`mode = "observe"`: a denied call forwarded).
    #[serde(default = "enforced_by_default")]
    pub enforced: bool,
    pub outcome: String,
    /// The identity the agent signed as (key id and its source); absent when the call
    /// was not forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_as: Option<String>,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// `x-amzn-RequestId` / `x-amz-request-id` of AWS's answer, or the agent's own id
    /// for its refusals (`nhi-…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<u64>,
    pub duration_us: u64,
}

/// How the answers of an API are read for masking, whatever their `Content-Type`:
/// JSON and query APIs always answer in JSON and XML; REST APIs answer documents or
/// the caller's own data (S3 objects, Lambda payloads), told apart by their type.
pub(super) fn body_kind(protocol: ApiProtocol) -> Option<crate::protocol::http::body::BodyKind> {
    use crate::protocol::http::body::BodyKind;
    match protocol {
        ApiProtocol::Json => Some(BodyKind::Json),
        ApiProtocol::Query => Some(BodyKind::Xml),
        ApiProtocol::RestXml | ApiProtocol::RestJson => None,
    }
}

fn enforced_by_default() -> bool {
    true
}

fn api_name(protocol: ApiProtocol) -> &'static str {
    match protocol {
        ApiProtocol::Query => "query",
        ApiProtocol::Json => "json",
        ApiProtocol::RestXml => "rest-xml",
        ApiProtocol::RestJson => "rest-json",
    }
}

/// A request refused before it was judged, as an AWS error.
#[derive(Debug)]
pub(super) struct Refused {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub protocol: ApiProtocol,
}

/// What the agent learnt of an AWS request before judging it.
pub(super) struct Inspected {
    pub sig: ClientSignature,
    pub call: Call,
    pub mode: PayloadMode,
    /// The payload hash the signature covers (`x-amz-content-sha256` or the body's).
    pub payload_hash: String,
    pub request_bytes: Option<u64>,
    /// The journal's view of the call (parameters masked), made once: the request's
    /// `aws` member and every `aws_call` record carry it.
    pub head: AwsCallHead,
}

/// The journal's view of a call, its parameters masked by `mask`.
fn call_head(
    sig: &ClientSignature,
    call: &Call,
    mode: PayloadMode,
    payload_hash: &str,
    mask: impl FnOnce(&serde_json::Value) -> serde_json::Value,
) -> AwsCallHead {
    let params = if call.params.is_empty() {
        serde_json::Value::Null
    } else {
        mask(&serde_json::Value::Object(call.params.clone()))
    };
    AwsCallHead {
        service: call.service.clone(),
        action: call.action(),
        region: sig.region.clone(),
        resources: call.resources.clone(),
        params,
        api: api_name(call.protocol).into(),
        client_key_id: sig.key_id.clone(),
        presigned: matches!(sig.location, Location::Query { .. }),
        payload: match mode {
            PayloadMode::Hash => "hash".into(),
            _ => payload_hash.to_owned(),
        },
    }
}

/// The shape of errors for a request not yet classified: from the signing service and
/// the headers (S3 answers XML errors, `X-Amz-Target` JSON ones, forms the query's).
fn guess_protocol(service: Option<&str>, headers: &HeaderMap) -> ApiProtocol {
    if matches!(service, Some("s3" | "s3-object-lambda" | "s3express")) {
        return ApiProtocol::RestXml;
    }
    if headers.contains_key("x-amz-target") {
        return ApiProtocol::Json;
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form || service.is_none() {
        ApiProtocol::Query
    } else {
        ApiProtocol::RestJson
    }
}

/// The error shape for a request not yet read: from the service its signature names.
pub(super) fn shape_of(headers: &HeaderMap, query: Option<&str>) -> ApiProtocol {
    let pairs = header_pairs(headers);
    let service = client_signature(&pairs, query).ok().map(|s| s.service);
    guess_protocol(service.as_deref(), headers)
}

fn refused_sig(e: SigError, protocol: ApiProtocol) -> Refused {
    let (status, code) = match &e {
        SigError::Unsigned => (StatusCode::FORBIDDEN, "MissingAuthenticationToken"),
        SigError::Malformed(_) => (StatusCode::BAD_REQUEST, "IncompleteSignature"),
        SigError::Ambiguous(_) => (StatusCode::BAD_REQUEST, "InvalidRequest"),
        SigError::Unsupported(_) => (StatusCode::BAD_REQUEST, "InvalidRequest"),
        SigError::UnknownKey(_) => (StatusCode::FORBIDDEN, "InvalidClientTokenId"),
        SigError::Mismatch => (StatusCode::FORBIDDEN, "SignatureDoesNotMatch"),
        SigError::Skewed(_) => (StatusCode::FORBIDDEN, "RequestTimeTooSkewed"),
        SigError::Expired => (StatusCode::FORBIDDEN, "AccessDenied"),
    };
    Refused {
        status,
        code,
        message: format!("nhi-agent: {e}"),
        protocol,
    }
}

/// Header (name, value) pairs of `headers` with text values; a header whose value is
/// not text is left out (it cannot be part of a valid signature's canonical form).
pub(super) fn header_pairs(headers: &HeaderMap) -> Vec<(&str, &str)> {
    headers
        .iter()
        .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v)))
        .collect()
}

/// The request's host as the client named it (Host, else the URI's authority), port
/// included: what the client signed as `host`.
fn signed_host(parts: &http::request::Parts) -> Option<String> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
}

/// Reads the client's signature, checks it, reads the body when needed and names the
/// call (its parameters masked by `mask` for the journal). `Err`: refused before
/// judging.
pub(super) async fn inspect(
    rt: &AwsTargetRuntime,
    req: Request<Incoming>,
    mask: impl FnOnce(&serde_json::Value) -> serde_json::Value,
) -> Result<(Request<Body>, Inspected), Refused> {
    let (parts, incoming) = req.into_parts();
    let pairs = header_pairs(&parts.headers);
    let raw_query = parts.uri.query();
    let early = guess_protocol(None, &parts.headers);
    let sig = client_signature(&pairs, raw_query).map_err(|e| refused_sig(e, early))?;
    let shape = guess_protocol(Some(&sig.service), &parts.headers);
    if sig.key_id != PLACEHOLDER_KEY_ID && !rt.accept_any_client_key {
        return Err(refused_sig(SigError::UnknownKey(sig.key_id.clone()), shape));
    }
    sig.check_time(SystemTime::now())
        .map_err(|e| refused_sig(e, shape))?;
    let presigned = matches!(sig.location, Location::Query { .. });
    let query = if presigned {
        raw_query.map(sigv4::strip_presign_params)
    } else {
        raw_query.map(str::to_owned)
    }
    .filter(|q| !q.is_empty());
    let claimed =
        single_header(&pairs, "x-amz-content-sha256").map_err(|e| refused_sig(e, shape))?;
    let mode = match claimed {
        Some(v) => payload_mode(v).map_err(|e| refused_sig(e, shape))?,
        None => PayloadMode::Hash,
    };
    if let PayloadMode::StreamingSigned { .. } = mode {
        // Each chunk is signed again as it passes: the decoded length must be declared
        // (it is what S3 stores), and a presigned URL cannot carry a chunked body.
        let declared = single_header(&pairs, "x-amz-decoded-content-length")
            .map_err(|e| refused_sig(e, shape))?;
        if presigned || declared.and_then(|v| v.parse::<u64>().ok()).is_none() {
            return Err(Refused {
                status: StatusCode::BAD_REQUEST,
                code: "InvalidRequest",
                message: "nhi-agent: a STREAMING-AWS4-HMAC-SHA256-PAYLOAD body needs x-amz-decoded-content-length and a signature in the headers".into(),
                protocol: shape,
            });
        }
    }
    let s3_presigned_unsigned = presigned && claimed.is_none() && shape == ApiProtocol::RestXml;
    let must_read = (claimed.is_none() && !s3_presigned_unsigned)
        || action::needs_body(&sig.service, parts.method.as_str(), &pairs);
    let (body, incoming) = if must_read {
        (
            Some(read_body(&parts.headers, incoming, shape).await?),
            None,
        )
    } else {
        (None, Some(incoming))
    };
    let payload_hash = match (claimed, &body) {
        (Some(v), Some(b)) if mode == PayloadMode::Hash => {
            if sigv4::sha256_hex(b) != v {
                return Err(Refused {
                    status: StatusCode::BAD_REQUEST,
                    code: "XAmzContentSHA256Mismatch",
                    message: "nhi-agent: the body does not match x-amz-content-sha256".into(),
                    protocol: shape,
                });
            }
            v.to_owned()
        }
        (Some(v), _) => v.to_owned(),
        (None, _) if s3_presigned_unsigned => sigv4::UNSIGNED_PAYLOAD.to_owned(),
        (None, Some(b)) => sigv4::sha256_hex(b),
        (None, None) => unreachable!("a body without x-amz-content-sha256 is always read"),
    };
    let host = signed_host(&parts).ok_or_else(|| Refused {
        status: StatusCode::BAD_REQUEST,
        code: "InvalidRequest",
        message: "nhi-agent: the request names no host".into(),
        protocol: shape,
    })?;
    if sig.key_id == PLACEHOLDER_KEY_ID {
        let uri = signing_uri("http", &host, parts.uri.path(), query.as_deref());
        let signable = Signable {
            method: parts.method.as_str(),
            uri: &uri,
            headers: signed_headers(&sig.signed_headers, &parts.headers, &host),
            payload_hash: &payload_hash,
            region: &sig.region,
            service: &sig.service,
        };
        sigv4::verify(&sig, &signable).map_err(|e| refused_sig(e, shape))?;
    }
    let call = action::classify(&action::Request {
        method: parts.method.as_str(),
        host: Some(&host),
        path: parts.uri.path(),
        query: query.as_deref(),
        headers: &pairs,
        body: body.as_deref(),
        signing_service: &sig.service,
        region: &sig.region,
    })
    .map_err(|e| Refused {
        status: StatusCode::BAD_REQUEST,
        code: "InvalidRequest",
        message: format!("nhi-agent: {e}"),
        protocol: shape,
    })?;
    let request_bytes = body.as_ref().map(|b| b.len() as u64).or_else(|| {
        parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    });
    drop(pairs);
    let body: Body = match (body, incoming) {
        (Some(bytes), _) => Full::new(bytes).map_err(|never| match never {}).boxed(),
        (None, Some(incoming)) => incoming.map_err(Into::into).boxed(),
        (None, None) => unreachable!("the body is either read or passed on"),
    };
    let head = call_head(&sig, &call, mode, &payload_hash, mask);
    Ok((
        Request::from_parts(parts, body),
        Inspected {
            sig,
            call,
            mode,
            payload_hash,
            request_bytes,
            head,
        },
    ))
}

async fn read_body(
    headers: &HeaderMap,
    incoming: Incoming,
    shape: ApiProtocol,
) -> Result<Bytes, Refused> {
    let too_large = || {
        Refused {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "RequestEntityTooLarge",
        message: format!(
            "nhi-agent: a body the agent must read whole (to check its signature or read the call) is limited to {MAX_BUFFERED_BODY} bytes"
        ),
        protocol: shape,
    }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BUFFERED_BODY as u64) {
        return Err(too_large());
    }
    match Limited::new(incoming, MAX_BUFFERED_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Refused {
            status: StatusCode::BAD_REQUEST,
            code: "IncompleteBody",
            message: format!("nhi-agent: reading the request body: {e}"),
            protocol: shape,
        }),
    }
}

/// The path of an AWS request as AWS reads it: percent-decoded once, nothing resolved
/// or merged (an S3 key may hold `..`, `//` or `%`); what `paths` rules see on an AWS
/// target. A path that does not decode to UTF-8, or holds NUL, is refused.
pub(super) fn literal_path(
    target: &str,
) -> Result<crate::protocol::http::path::NormalPath, crate::protocol::http::path::PathError> {
    use crate::protocol::http::path::{NormalPath, PathError};
    let (raw, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    if !raw.starts_with('/') {
        return Err(PathError::NotAPath(raw.chars().take(64).collect()));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
            match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => return Err(PathError::Ambiguous("a `%` that is not an escape".into())),
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    let path = String::from_utf8(out)
        .map_err(|_| PathError::Ambiguous("the path does not decode to UTF-8".into()))?;
    if path.contains('\0') {
        return Err(PathError::Ambiguous("the path holds NUL".into()));
    }
    Ok(NormalPath { path, query })
}

/// The request target with the value of a presigned URL's `X-Amz-Security-Token`
/// replaced (a session token is a credential; the signature is not).
pub(super) fn redact_query_token(target: &str) -> Cow<'_, str> {
    let Some((path, query)) = target.split_once('?') else {
        return Cow::Borrowed(target);
    };
    if !query.to_ascii_lowercase().contains("x-amz-security-token=") {
        return Cow::Borrowed(target);
    }
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("x-amz-security-token") => {
                format!("{k}=[redacted]")
            }
            _ => pair.to_owned(),
        })
        .collect();
    Cow::Owned(format!("{path}?{}", query.join("&")))
}

/// An AWS-shaped error response.
pub(super) fn aws_error(
    protocol: ApiProtocol,
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response<Body> {
    let e = error_response(protocol, status.as_u16(), code, message, request_id);
    let mut response = Response::new(
        Full::new(Bytes::from(e.body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(e.content_type),
    );
    for (name, value) in e.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

/// The agent's request id for its own answers: unique per session and request.
pub(super) fn agent_request_id(session: i64, seq: u64) -> String {
    format!("nhi-{session}-{seq}")
}

/// Signs the request going upstream with the agent's credential, in place: removes the
/// client's signature, signs the headers the client signed (as they are sent now) and
/// sets the agent's. Returns the identity signed as.
pub(super) async fn sign_upstream(
    rt: &AwsTargetRuntime,
    role: Option<&RoleSession>,
    inspected: &Inspected,
    request: &mut Request<Body>,
) -> Result<String, String> {
    let sig = &inspected.sig;
    let base = rt.credentials.key().await?;
    let (key, signed_as) = match role {
        None => (
            base.clone(),
            format!("{} ({})", base.key_id, rt.credentials.describe()),
        ),
        Some(role) => {
            let key = role
                .key(base, rt.sts_endpoint.as_deref(), &sig.region)
                .await?;
            let identity = format!(
                "{} (role {}, session {}, assumed with {})",
                key.key_id,
                role.role_arn,
                role.session_name,
                rt.credentials.describe()
            );
            (key, identity)
        }
    };
    let headers = request.headers_mut();
    for name in ["authorization", "x-amz-date", "x-amz-security-token"] {
        headers.remove(name);
    }
    let uri = request.uri().clone();
    let host = host_as_sent(&uri).ok_or("the upstream URI has no host")?;
    let query = match sig.location {
        Location::Query { .. } => uri.query().map(sigv4::strip_presign_params),
        Location::Header => uri.query().map(str::to_owned),
    }
    .filter(|q| !q.is_empty());
    let scheme = uri.scheme_str().unwrap_or("https");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(&host);
    let base = signing_uri(scheme, authority, uri.path(), query.as_deref());
    let signable = Signable {
        method: request.method().as_str(),
        uri: &base,
        headers: signed_headers(&sig.signed_headers, request.headers(), &host),
        payload_hash: &inspected.payload_hash,
        region: &sig.region,
        service: &sig.service,
    };
    let now = SystemTime::now();
    match sig.location {
        Location::Header => {
            let (set, seed) = sigv4::header_signature(&signable, &key, now)?;
            if let PayloadMode::StreamingSigned { trailer } = inspected.mode {
                let date_time = set
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-date"))
                    .map(|(_, v)| v.clone())
                    .ok_or("the signature has no x-amz-date")?;
                resign_chunks(rt, inspected, request, &key, &date_time, &seed, trailer)?;
            }
            for (name, value) in set {
                let name = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| format!("signature header {name}: {e}"))?;
                let mut value =
                    HeaderValue::from_str(&value).map_err(|e| format!("signature header: {e}"))?;
                value.set_sensitive(true);
                request.headers_mut().insert(name, value);
            }
        }
        Location::Query { expires } => {
            let signed_at = sig.time().map_err(|e| e.to_string())?;
            let left = (signed_at + Duration::from_secs(expires))
                .duration_since(now)
                .map_err(|_| "the presigned URL expired".to_owned())?;
            let left = Duration::from_secs(left.as_secs().max(1));
            let (params, _) = sigv4::query_signature(&signable, &key, now, left)?;
            let mut query = query.unwrap_or_default();
            for (k, v) in params {
                if !query.is_empty() {
                    query.push('&');
                }
                query.push_str(&percent_encode(&k));
                query.push('=');
                query.push_str(&percent_encode(&v));
            }
            let new_uri = format!(
                "{scheme}://{}{}?{query}",
                uri.authority().map(|a| a.as_str()).unwrap_or(&host),
                uri.path()
            );
            *request.uri_mut() = new_uri.parse().map_err(|e| format!("presigned URI: {e}"))?;
        }
    }
    Ok(signed_as)
}

/// Replaces the request's aws-chunked body by one whose chunks are signed again with
/// `key`, chained from `seed` (the agent's header signature); the client's chunk
/// signatures are checked on the way when it signed with the placeholder key.
fn resign_chunks(
    rt: &AwsTargetRuntime,
    inspected: &Inspected,
    request: &mut Request<Body>,
    key: &sigv4::SigningKey,
    date_time: &str,
    seed: &str,
    trailer: bool,
) -> Result<(), String> {
    let sig = &inspected.sig;
    let verify = if sig.key_id == PLACEHOLDER_KEY_ID {
        Some(
            ChunkSigner::new(
                sigv4::PLACEHOLDER_SECRET,
                &sig.date_time,
                &sig.region,
                &sig.service,
                &sig.signature,
            )
            .map_err(|e| e.to_string())?,
        )
    } else {
        let _ = rt;
        None
    };
    let sign = ChunkSigner::new(key.secret(), date_time, &sig.region, &sig.service, seed)
        .map_err(|e| e.to_string())?;
    let mut resigner = ChunkResigner::new(verify, sign, trailer, MAX_CHUNK);
    if let Some(len) = request
        .headers()
        .get("x-amz-decoded-content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        resigner = resigner.expect_decoded_length(len);
    }
    let body = std::mem::replace(
        request.body_mut(),
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *request.body_mut() = Resigned {
        inner: body,
        resigner,
        done: false,
    }
    .boxed();
    Ok(())
}

/// The largest aws-chunked chunk the agent signs again (each is held whole: its
/// signature precedes its data). SDKs send 64 KiB; S3 allows chunks up to the part.
pub const MAX_CHUNK: usize = 16 << 20;

/// An aws-chunked body signed again chunk by chunk as it streams. An error (a chunk
/// whose client signature does not match, a malformed or truncated body) ends the
/// upstream request with an error, so the server never takes a cut body as whole.
struct Resigned {
    inner: Body,
    resigner: ChunkResigner,
    done: bool,
}

impl hyper::body::Body for Resigned {
    type Data = Bytes;
    type Error = super::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Err(e) = this.resigner.push(&data) {
                        this.done = true;
                        return Poll::Ready(Some(Err(format!("aws-chunked body: {e}").into())));
                    }
                    let out = this.resigner.take_output();
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(hyper::body::Frame::data(out))));
                    }
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    if let Err(e) = this.resigner.finish() {
                        return Poll::Ready(Some(Err(format!("aws-chunked body: {e}").into())));
                    }
                    let out = this.resigner.take_output();
                    return Poll::Ready(
                        (!out.is_empty()).then(|| Ok(hyper::body::Frame::data(out))),
                    );
                }
            }
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        // The same length: every signature is 64 hex digits.
        self.inner.size_hint()
    }
}

/// `scheme://authority/path[?query]`: the URI a signature is computed over.
fn signing_uri(scheme: &str, authority: &str, path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{scheme}://{authority}{path}?{q}"),
        None => format!("{scheme}://{authority}{path}"),
    }
}

/// The headers a signature covers, as `headers` holds them: each name the client
/// signed, with every value of it (`host` is `host`: the Host as sent), except the
/// date and session token (the signer adds its own) and `authorization`.
fn signed_headers<'a>(
    names: &'a [String],
    headers: &'a HeaderMap,
    host: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut signed = Vec::with_capacity(names.len());
    for name in names {
        match name.as_str() {
            "x-amz-date" | "x-amz-security-token" | "authorization" => {}
            "host" => signed.push(("host", host)),
            other => signed.extend(
                headers
                    .get_all(other)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(|v| (other, v)),
            ),
        }
    }
    signed
}

/// The `Host` the HTTP client will send for `uri`: the host, and the port unless it is
/// the scheme's default (as hyper-util's client writes it).
fn host_as_sent(uri: &http::Uri) -> Option<String> {
    let host = uri.host()?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    Some(match uri.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_owned(),
    })
}

/// SigV4's URI encoding of a query name or value: unreserved characters kept.
fn percent_encode(v: &str) -> Cow<'_, str> {
    if v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
    {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() * 3);
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

/// When the call started, for durations.
pub(super) fn elapsed_us(started: Instant) -> u64 {
    started.elapsed().as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_paths_are_read_literally() {
        let p = literal_path("/bucket/100%25%20sure/../a//b?versionId=1").unwrap();
        assert_eq!(p.path, "/bucket/100% sure/../a//b");
        assert_eq!(p.query.as_deref(), Some("versionId=1"));
        assert!(literal_path("/bucket/%zz").is_err());
        assert!(literal_path("/bucket/%ff").is_err());
        assert!(literal_path("/bucket/%00").is_err());
        assert!(literal_path("http://x/").is_err());
    }

    #[test]
    fn presigned_session_tokens_are_redacted() {
        assert_eq!(
            redact_query_token("/b/k?X-Amz-Signature=ab&X-Amz-Security-Token=FQoG%2Fsecret&x=1"),
            "/b/k?X-Amz-Signature=ab&X-Amz-Security-Token=[redacted]&x=1"
        );
        assert_eq!(redact_query_token("/b/k?x=1"), "/b/k?x=1");
        assert_eq!(redact_query_token("/b/k"), "/b/k");
    }
}
