//! AWS Signature Version 4 as the agent meets it: the client's signature read from a
//! request (the `Authorization` header or a presigned URL's `X-Amz-*` query
//! parameters), checked against the placeholder key the agent hands out, and the
//! request signed again with the agent's own credential.
//!
//! The canonicalisation (canonical request, string to sign, signing key, chunk
//! signatures) is the `aws-sigv4` crate's, AWS's own implementation: the agent only
//! decides *what* is signed. To check the client's signature it signs exactly the
//! headers the client listed in `SignedHeaders`, with the client's date and scope and
//! the placeholder secret, and compares; to sign again it signs the same header names
//! with the values that will actually be sent upstream.
//!
//! The client's signature is refused, never guessed at, when it is ambiguous (two
//! `Authorization` headers, a header *and* a presigned query, a parameter twice), when
//! the algorithm is not `AWS4-HMAC-SHA256` (SigV4a is not supported), or when the
//! request's date is more than [`MAX_SKEW`] away from the agent's clock (AWS's own
//! limit, so a replayed request is refused here as it would be there). A request whose
//! canonical query could outgrow what a URI holds is not signed (see
//! [`MAX_CANONICAL_URI`]): `aws-sigv4` would panic on it.
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SessionTokenMode, SignableBody,
    SignableRequest, SignatureLocation, SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

/// The access key id of the placeholder credential the agent hands out (metadata
/// answers, documentation). Shaped like a real key id so that SDKs accept it.
pub const PLACEHOLDER_KEY_ID: &str = "AKIANHIAGENTPLACEHLD";
/// The placeholder secret: public by design (it signs nothing AWS would accept); a
/// request signed with it is checked for integrity, then signed again by the agent.
pub const PLACEHOLDER_SECRET: &str = "nhi-agent/placeholder/NOT-A-SECRET-000000";

/// The only algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// How far a request's `X-Amz-Date` may be from the agent's clock (AWS allows 15 min).
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// The longest validity of a presigned URL SigV4 allows (7 days).
pub const MAX_PRESIGN_EXPIRES: u64 = 7 * 24 * 3600;

/// `x-amz-content-sha256` values that are not a hash of the body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
pub const STREAMING_SIGNED: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
pub const STREAMING_SIGNED_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
pub const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";

/// Why a client's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("the request is not signed (no SigV4 Authorization header or presigned query)")]
    Unsigned,
    #[error("malformed SigV4 signature: {0}")]
    Malformed(String),
    #[error("ambiguous SigV4 signature: {0}")]
    Ambiguous(String),
    #[error("unsupported signature: {0}")]
    Unsupported(String),
    #[error("signed with access key {0}, not the agent's placeholder key {PLACEHOLDER_KEY_ID} (the agent signs for the client: give the client the placeholder key, or set accept_any_client_key = true)")]
    UnknownKey(String),
    #[error(
        "the signature does not match the request (signed with the placeholder key, then changed?)"
    )]
    Mismatch,
    #[error("the request's date {0} is more than 15 minutes from the agent's clock")]
    Skewed(String),
    #[error("the presigned URL expired")]
    Expired,
}

/// Where the client put its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Header,
    /// A presigned URL, valid `expires` seconds from its date.
    Query {
        expires: u64,
    },
}

/// The client's signature, as read from the request.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSignature {
    pub key_id: String,
    /// `yyyymmdd` of the credential scope.
    pub date: String,
    pub region: String,
    pub service: String,
    /// `SignedHeaders`, lower case, in the order given.
    pub signed_headers: Vec<String>,
    /// 64 lowercase hex digits.
    pub signature: String,
    /// `X-Amz-Date`: `yyyymmddThhmmssZ`.
    pub date_time: String,
    pub location: Location,
    /// The client's session token (`X-Amz-Security-Token`): a placeholder, never
    /// forwarded; kept to check the signature that covers it.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for ClientSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSignature")
            .field("key_id", &self.key_id)
            .field("scope", &self.scope())
            .field("signed_headers", &self.signed_headers)
            .field("date_time", &self.date_time)
            .field("location", &self.location)
            .field("session_token", &self.session_token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl ClientSignature {
    /// `date/region/service/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }

    /// When the client signed.
    pub fn time(&self) -> Result<SystemTime, SigError> {
        parse_amz_date(&self.date_time)
            .ok_or_else(|| SigError::Malformed(format!("X-Amz-Date {:?}", self.date_time)))
    }

    /// Refuses a date more than [`MAX_SKEW`] from `now` (and an expired presigned URL).
    pub fn check_time(&self, now: SystemTime) -> Result<(), SigError> {
        let signed = self.time()?;
        if let Location::Query { expires } = self.location {
            let until = signed + Duration::from_secs(expires);
            if now > until {
                return Err(SigError::Expired);
            }
            if signed > now + MAX_SKEW {
                return Err(SigError::Skewed(self.date_time.clone()));
            }
            return Ok(());
        }
        let skew = match now.duration_since(signed) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        if skew > MAX_SKEW {
            return Err(SigError::Skewed(self.date_time.clone()));
        }
        Ok(())
    }
}

/// Reads the client's signature from the request headers (name, value; any case) and
/// the raw query string.
pub fn client_signature(
    headers: &[(&str, &str)],
    query: Option<&str>,
) -> Result<ClientSignature, SigError> {
    let authorization: Vec<&str> = header_values(headers, "authorization").collect();
    let presigned = query
        .map(|q| query_pairs(q).any(|(k, _)| k.eq_ignore_ascii_case("x-amz-signature")))
        .unwrap_or(false);
    match (authorization.as_slice(), presigned) {
        ([], false) => Err(SigError::Unsigned),
        ([_, _, ..], _) => Err(SigError::Ambiguous("two Authorization headers".into())),
        ([_], true) => Err(SigError::Ambiguous(
            "both an Authorization header and a presigned X-Amz-Signature".into(),
        )),
        ([auth], false) => from_header(auth, headers),
        ([], true) => from_query(query.unwrap_or_default()),
    }
}

fn from_header(auth: &str, headers: &[(&str, &str)]) -> Result<ClientSignature, SigError> {
    let (algorithm, rest) = auth
        .trim()
        .split_once(' ')
        .ok_or_else(|| SigError::Malformed("Authorization has no algorithm".into()))?;
    check_algorithm(algorithm)?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| SigError::Malformed(format!("Authorization component {part:?}")))?;
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            other => {
                return Err(SigError::Malformed(format!(
                    "unknown Authorization component {other:?}"
                )))
            }
        };
        if slot.replace(value).is_some() {
            return Err(SigError::Ambiguous(format!("{name} given twice")));
        }
    }
    let missing = |what: &str| SigError::Malformed(format!("Authorization has no {what}"));
    let date_time = single_header(headers, "x-amz-date")?.ok_or_else(|| {
        SigError::Malformed("no X-Amz-Date header (a Date header alone is not supported)".into())
    })?;
    let session_token = single_header(headers, "x-amz-security-token")?.map(str::to_owned);
    build(
        credential.ok_or_else(|| missing("Credential"))?,
        signed.ok_or_else(|| missing("SignedHeaders"))?,
        signature.ok_or_else(|| missing("Signature"))?,
        date_time,
        Location::Header,
        session_token,
    )
}

fn from_query(query: &str) -> Result<ClientSignature, SigError> {
    let mut found: [Option<String>; 7] = Default::default();
    const NAMES: [&str; 7] = [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-Security-Token",
    ];
    for (name, value) in query_pairs(query) {
        if let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(&name)) {
            if found[i].replace(value.into_owned()).is_some() {
                return Err(SigError::Ambiguous(format!("{} given twice", NAMES[i])));
            }
        }
    }
    let [algorithm, credential, signed, signature, date_time, expires, token] = found;
    let missing = |what: &str| SigError::Malformed(format!("presigned URL without {what}"));
    check_algorithm(&algorithm.ok_or_else(|| missing("X-Amz-Algorithm"))?)?;
    let expires: u64 = expires
        .ok_or_else(|| missing("X-Amz-Expires"))?
        .parse()
        .map_err(|_| SigError::Malformed("X-Amz-Expires is not a number".into()))?;
    if expires == 0 || expires > MAX_PRESIGN_EXPIRES {
        return Err(SigError::Malformed(format!(
            "X-Amz-Expires {expires} is outside 1..={MAX_PRESIGN_EXPIRES}"
        )));
    }
    build(
        &credential.ok_or_else(|| missing("X-Amz-Credential"))?,
        &signed.ok_or_else(|| missing("X-Amz-SignedHeaders"))?,
        &signature.ok_or_else(|| missing("X-Amz-Signature"))?,
        &date_time.ok_or_else(|| missing("X-Amz-Date"))?,
        Location::Query { expires },
        token,
    )
}

fn check_algorithm(algorithm: &str) -> Result<(), SigError> {
    match algorithm {
        ALGORITHM => Ok(()),
        "AWS4-ECDSA-P256-SHA256" => Err(SigError::Unsupported(
            "SigV4a (AWS4-ECDSA-P256-SHA256): sign with SigV4 for one region".into(),
        )),
        other => Err(SigError::Unsupported(format!("algorithm {other:?}"))),
    }
}

fn build(
    credential: &str,
    signed: &str,
    signature: &str,
    date_time: &str,
    location: Location,
    session_token: Option<String>,
) -> Result<ClientSignature, SigError> {
    let parts: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, terminator] = parts.as_slice() else {
        return Err(SigError::Malformed(format!(
            "Credential {credential:?} is not key/date/region/service/aws4_request"
        )));
    };
    if *terminator != "aws4_request" {
        return Err(SigError::Malformed(format!(
            "credential scope ends with {terminator:?}, not aws4_request"
        )));
    }
    if key_id.is_empty()
        || key_id.len() > 128
        || !key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+=@".contains(&b))
    {
        return Err(SigError::Malformed("access key id".into()));
    }
    let token_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !token_ok(region) || !token_ok(service) {
        return Err(SigError::Malformed(format!(
            "credential scope region {region:?} / service {service:?}"
        )));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SigError::Malformed(format!(
            "credential scope date {date:?}"
        )));
    }
    if parse_amz_date(date_time).is_none() {
        return Err(SigError::Malformed(format!("X-Amz-Date {date_time:?}")));
    }
    if !date_time.starts_with(date) {
        return Err(SigError::Malformed(format!(
            "X-Amz-Date {date_time} is not of the credential scope's day {date}"
        )));
    }
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(SigError::Malformed(
            "Signature is not 64 lowercase hex digits".into(),
        ));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_owned).collect();
    let valid_name = |n: &String| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
    };
    if !signed_headers.iter().all(valid_name) {
        return Err(SigError::Malformed(format!(
            "SignedHeaders {signed:?} (lower-case names separated by ';')"
        )));
    }
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(SigError::Malformed(
            "SignedHeaders does not cover host".into(),
        ));
    }
    for (i, h) in signed_headers.iter().enumerate() {
        if signed_headers[..i].contains(h) {
            return Err(SigError::Ambiguous(format!(
                "SignedHeaders lists {h} twice"
            )));
        }
    }
    Ok(ClientSignature {
        key_id: (*key_id).to_owned(),
        date: (*date).to_owned(),
        region: (*region).to_owned(),
        service: (*service).to_owned(),
        signed_headers,
        signature: signature.to_owned(),
        date_time: date_time.to_owned(),
        location,
        session_token,
    })
}

/// The values of header `name` (case-insensitive).
fn header_values<'a>(
    headers: &'a [(&'a str, &'a str)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// The one value of header `name`; two are ambiguous.
pub fn single_header<'a>(
    headers: &'a [(&'a str, &'a str)],
    name: &'a str,
) -> Result<Option<&'a str>, SigError> {
    let mut values = header_values(headers, name);
    let first = values.next();
    if values.next().is_some() {
        return Err(SigError::Ambiguous(format!("two {name} headers")));
    }
    Ok(first)
}

/// `name=value` pairs of a query string, percent-decoded (`+` stays `+`: SigV4 queries
/// encode a space as `%20`).
fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16)),
                bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16)),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The query string without the presigned-URL signature parameters (the agent adds its
/// own).
pub fn strip_presign_params(query: &str) -> String {
    const AUTH: [&str; 7] = [
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-signedheaders",
        "x-amz-signature",
        "x-amz-date",
        "x-amz-expires",
        "x-amz-security-token",
    ];
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name =
                percent_decode(p.split_once('=').map_or(*p, |(k, _)| k)).to_ascii_lowercase();
            !AUTH.contains(&name.as_str())
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `yyyymmddThhmmssZ` -> time.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = days as u64 * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What the signature covers, as the server will see it.
pub struct Signable<'a> {
    pub method: &'a str,
    /// `scheme://host[:port]/path?query`, encoded as sent.
    pub uri: &'a str,
    /// The signed headers with their values (host included), as sent.
    pub headers: Vec<(&'a str, &'a str)>,
    /// The `x-amz-content-sha256` value, or the hex SHA-256 of the body.
    pub payload_hash: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// The canonicalisation settings of `service`: S3 signs the path as sent (no double
/// encoding, no dot-segment normalisation); every other service both.
fn settings_for(
    service: &str,
    location: SignatureLocation,
    expires: Option<Duration>,
) -> SigningSettings {
    let s3 = matches!(service, "s3" | "s3-object-lambda" | "s3express");
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = if s3 {
        PercentEncodingMode::Single
    } else {
        PercentEncodingMode::Double
    };
    settings.uri_path_normalization_mode = if s3 {
        UriPathNormalizationMode::Disabled
    } else {
        UriPathNormalizationMode::Enabled
    };
    settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
    settings.session_token_mode = SessionTokenMode::Include;
    settings.signature_location = location;
    settings.expires_in = expires;
    // Only the headers given are signed: the caller chose them.
    settings.excluded_headers = None;
    settings
}

fn signable_body(payload_hash: &str) -> SignableBody<'_> {
    match payload_hash {
        UNSIGNED_PAYLOAD => SignableBody::UnsignedPayload,
        STREAMING_UNSIGNED_TRAILER => SignableBody::StreamingUnsignedPayloadTrailer,
        STREAMING_SIGNED_TRAILER => SignableBody::StreamingSignedPayloadTrailer,
        other => SignableBody::Precomputed(other.to_owned()),
    }
}

/// A credential the agent signs with (its own, or the placeholder to check a client's).
#[derive(Clone)]
pub struct SigningKey {
    pub key_id: String,
    secret: zeroize::Zeroizing<String>,
    pub session_token: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("secret", &"[redacted]")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl SigningKey {
    pub fn new(key_id: String, secret: String, session_token: Option<String>) -> SigningKey {
        SigningKey {
            key_id,
            secret: zeroize::Zeroizing::new(secret),
            session_token: session_token.map(zeroize::Zeroizing::new),
        }
    }

    /// The placeholder credential (with the client's session token, if it sent one).
    pub fn placeholder(session_token: Option<String>) -> SigningKey {
        SigningKey::new(
            PLACEHOLDER_KEY_ID.into(),
            PLACEHOLDER_SECRET.into(),
            session_token,
        )
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    fn identity(&self) -> Identity {
        Credentials::new(
            self.key_id.clone(),
            self.secret.as_str(),
            self.session_token.as_ref().map(|t| t.to_string()),
            None,
            "nhi-agent",
        )
        .into()
    }
}

/// The longest path and query `http::Uri` takes (its `MAX_LEN`).
pub const MAX_CANONICAL_URI: usize = u16::MAX as usize - 1;

/// Refuses to sign `req` when its canonical path and query could be longer than
/// [`MAX_CANONICAL_URI`]. `aws-sigv4` decodes the query, percent-encodes it again (a
/// byte of it can become three: `!` is `%21`), adds the presigned parameters and parses
/// the result as a URI with `expect` (aws-smithy-http's `QueryWriter::build_uri`): a
/// query of 22 KiB of `!`, which a client may send, made it panic (found by the
/// `aws_request` fuzz target). The bound is generous (every byte counted as three), so a
/// query over about 21 KiB is refused even when it would have fit.
fn check_canonical_length(
    req: &Signable<'_>,
    key: &SigningKey,
    presigned: bool,
) -> Result<(), String> {
    let uri: http::Uri = req
        .uri
        .parse()
        .map_err(|e| format!("the request URI: {e}"))?;
    let query = uri.query().map_or(0, str::len);
    // The presigned parameters: names and fixed values (algorithm, date, expiry) in 256
    // bytes, then the credential scope, the signed header names and the session token.
    let presign = if presigned {
        256 + key.key_id.len()
            + req.region.len()
            + req.service.len()
            + key.session_token.as_ref().map_or(0, |t| t.len())
            + req.headers.iter().map(|(n, _)| n.len() + 1).sum::<usize>()
    } else {
        0
    };
    let longest = uri.path().len() + 1 + 3 * (query + presign);
    if longest > MAX_CANONICAL_URI {
        return Err(format!(
            "the request's query is too long to sign: its canonical form could take {longest} bytes, more than {MAX_CANONICAL_URI}"
        ));
    }
    Ok(())
}

/// Signs `req` at `time` with `key` in `location`: the instructions (headers or query
/// parameters to add) and the signature.
fn sign_at(
    req: &Signable<'_>,
    key: &SigningKey,
    time: SystemTime,
    location: SignatureLocation,
    expires: Option<Duration>,
) -> Result<(aws_sigv4::http_request::SigningInstructions, String), String> {
    check_canonical_length(req, key, location == SignatureLocation::QueryParams)?;
    let identity = key.identity();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(req.region)
        .name(req.service)
        .time(time)
        .settings(settings_for(req.service, location, expires))
        .build()
        .map_err(|e| e.to_string())?;
    let signable = SignableRequest::new(
        req.method,
        req.uri,
        req.headers.iter().copied(),
        signable_body(req.payload_hash),
    )
    .map_err(|e| e.to_string())?;
    Ok(sign(signable, &params.into())
        .map_err(|e| e.to_string())?
        .into_parts())
}

/// The signature of `req` at `time` with `key`, in the headers: the headers to set and
/// the signature (the seed of an aws-chunked body's chunk signatures).
pub fn header_signature(
    req: &Signable<'_>,
    key: &SigningKey,
    time: SystemTime,
) -> Result<(Vec<(String, String)>, String), String> {
    let (instructions, signature) = sign_at(req, key, time, SignatureLocation::Headers, None)?;
    let (headers, _) = instructions.into_parts();
    let headers = headers
        .into_iter()
        .map(|h| (h.name().to_owned(), h.value().to_owned()))
        .collect();
    Ok((headers, signature))
}

/// The query parameters of a presigned URL for `req` at `time` with `key`, valid for
/// `expires`.
pub fn query_signature(
    req: &Signable<'_>,
    key: &SigningKey,
    time: SystemTime,
    expires: Duration,
) -> Result<(Vec<(String, String)>, String), String> {
    let (instructions, signature) = sign_at(
        req,
        key,
        time,
        SignatureLocation::QueryParams,
        Some(expires),
    )?;
    let (_, params) = instructions.into_parts();
    Ok((
        params
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_owned()))
            .collect(),
        signature,
    ))
}

/// Checks the client's signature over `req` (whose `headers` are exactly the headers
/// the client signed, `x-amz-date` and `x-amz-security-token` excepted, and whose
/// `uri` carries the query without the presigned parameters) with the placeholder
/// secret.
pub fn verify(sig: &ClientSignature, req: &Signable<'_>) -> Result<(), SigError> {
    let key = SigningKey::placeholder(sig.session_token.clone().filter(|_| {
        sig.signed_headers
            .iter()
            .any(|h| h == "x-amz-security-token")
            || matches!(sig.location, Location::Query { .. })
    }));
    let time = sig.time()?;
    let expected = match sig.location {
        Location::Header => header_signature(req, &key, time).map(|(_, s)| s),
        Location::Query { expires } => {
            query_signature(req, &key, time, Duration::from_secs(expires)).map(|(_, s)| s)
        }
    }
    .map_err(SigError::Malformed)?;
    if constant_time_eq(expected.as_bytes(), sig.signature.as_bytes()) {
        Ok(())
    } else {
        Err(SigError::Mismatch)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `hex(sha256(data))`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    crate::hex::encode(&sha2::Sha256::digest(data))
}

/// Whether an `x-amz-content-sha256` value is a hash (64 lowercase hex digits) or one
/// of the payload modes the agent can sign again.
pub fn payload_mode(value: &str) -> Result<PayloadMode, SigError> {
    match value {
        UNSIGNED_PAYLOAD => Ok(PayloadMode::Unsigned),
        STREAMING_UNSIGNED_TRAILER => Ok(PayloadMode::StreamingUnsignedTrailer),
        STREAMING_SIGNED => Ok(PayloadMode::StreamingSigned { trailer: false }),
        STREAMING_SIGNED_TRAILER => Ok(PayloadMode::StreamingSigned { trailer: true }),
        v if v.len() == 64
            && v.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(PayloadMode::Hash)
        }
        other => Err(SigError::Unsupported(format!(
            "x-amz-content-sha256 {other:?}"
        ))),
    }
}

/// How the body is covered by the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadMode {
    /// `x-amz-content-sha256` is the body's hash: the body passes untouched.
    Hash,
    /// `UNSIGNED-PAYLOAD`: the body passes untouched.
    Unsigned,
    /// aws-chunked with an unsigned trailer: the body passes untouched.
    StreamingUnsignedTrailer,
    /// aws-chunked with a signature per chunk: every chunk is signed again.
    StreamingSigned { trailer: bool },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AWS documentation's GET Object example (sig-v4-header-based-auth), signed
    /// with the documentation's key: the crate and the agent's header selection agree
    /// with the published signature.
    #[test]
    fn reproduces_the_documented_s3_get_object_signature() {
        let key = SigningKey::new(
            "AKIAIOSFODNN7EXAMPLE".into(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            None,
        );
        let hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let req = Signable {
            method: "GET",
            uri: "https://examplebucket.s3.amazonaws.com/test.txt",
            headers: vec![
                ("host", "examplebucket.s3.amazonaws.com"),
                ("range", "bytes=0-9"),
                ("x-amz-content-sha256", hash),
            ],
            payload_hash: hash,
            region: "us-east-1",
            service: "s3",
        };
        let time = parse_amz_date("20130524T000000Z").unwrap();
        let (_, signature) = header_signature(&req, &key, time).unwrap();
        assert_eq!(
            signature,
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    fn placeholder_signed(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        payload_hash: &str,
        service: &str,
        time: SystemTime,
    ) -> (Vec<(String, String)>, String) {
        let req = Signable {
            method,
            uri,
            headers: headers.to_vec(),
            payload_hash,
            region: "us-east-1",
            service,
        };
        header_signature(&req, &SigningKey::placeholder(None), time).unwrap()
    }

    #[test]
    fn a_placeholder_signature_verifies_and_a_changed_request_does_not() {
        let now = SystemTime::now();
        let body = b"Action=GetCallerIdentity&Version=2011-06-15";
        let hash = sha256_hex(body);
        let signed = [
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("host", "127.0.0.1:4566"),
        ];
        let (added, _) =
            placeholder_signed("POST", "http://127.0.0.1:4566/", &signed, &hash, "sts", now);
        let mut all: Vec<(&str, &str)> = signed.to_vec();
        all.extend(added.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let sig = client_signature(&all, None).unwrap();
        assert_eq!(sig.key_id, PLACEHOLDER_KEY_ID);
        assert_eq!(
            (sig.region.as_str(), sig.service.as_str()),
            ("us-east-1", "sts")
        );
        assert_eq!(sig.signed_headers, ["content-type", "host", "x-amz-date"]);
        sig.check_time(now).unwrap();
        let req = |hash: &'static str, host: &'static str| Signable {
            method: "POST",
            uri: "http://127.0.0.1:4566/",
            headers: vec![("content-type", signed[0].1), ("host", host)],
            payload_hash: hash,
            region: "us-east-1",
            service: "sts",
        };
        let hash: &'static str = Box::leak(hash.into_boxed_str());
        verify(&sig, &req(hash, "127.0.0.1:4566")).unwrap();
        assert_eq!(
            verify(&sig, &req(hash, "127.0.0.1:4567")),
            Err(SigError::Mismatch)
        );
        let other = Box::leak(sha256_hex(b"Action=CreateUser").into_boxed_str());
        assert_eq!(
            verify(&sig, &req(other, "127.0.0.1:4566")),
            Err(SigError::Mismatch)
        );
    }

    /// Found by the `aws_request` fuzz target: a query whose bytes all need encoding
    /// (`!` is `%21` in the canonical query) grows past what a URI holds once
    /// `aws-sigv4` encodes it again, and the crate panicked parsing it. Refused now, in
    /// the headers and presigned, when checking the client's signature and when signing.
    #[test]
    fn a_query_too_long_to_sign_is_refused_not_a_panic() {
        let now = SystemTime::now();
        let long = format!("http://127.0.0.1:9000/b/k?{}", "!".repeat(22_000));
        let req = Signable {
            method: "GET",
            uri: &long,
            headers: vec![("host", "127.0.0.1:9000")],
            payload_hash: UNSIGNED_PAYLOAD,
            region: "us-east-1",
            service: "s3",
        };
        let key = SigningKey::placeholder(None);
        let error = header_signature(&req, &key, now).unwrap_err();
        assert!(error.contains("too long to sign"), "{error}");
        assert!(query_signature(&req, &key, now, Duration::from_secs(60)).is_err());
        // The date as the client would send it: from a signature of a short request.
        let short = Signable {
            uri: "http://127.0.0.1:9000/b/k",
            headers: req.headers.clone(),
            ..req
        };
        let (set, _) = header_signature(&short, &key, now).unwrap();
        let date = set
            .iter()
            .find(|(n, _)| n == "x-amz-date")
            .map(|(_, v)| v.clone())
            .expect("x-amz-date");
        for location in [Location::Header, Location::Query { expires: 60 }] {
            let sig = ClientSignature {
                key_id: PLACEHOLDER_KEY_ID.into(),
                date: date[..8].into(),
                region: "us-east-1".into(),
                service: "s3".into(),
                signed_headers: vec!["host".into()],
                signature: "0".repeat(64),
                date_time: date.clone(),
                location,
                session_token: None,
            };
            assert!(matches!(verify(&sig, &req), Err(SigError::Malformed(_))));
        }
        // A long query of bytes that stay as they are still signs (7 KiB, three times
        // that under the bound).
        let fine = format!("http://127.0.0.1:9000/b/k?{}", "a".repeat(7_000));
        let req = Signable { uri: &fine, ..req };
        header_signature(&req, &key, now).unwrap();
        query_signature(&req, &key, now, Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn malformed_and_ambiguous_signatures_are_refused() {
        let good = "AWS4-HMAC-SHA256 Credential=AKIANHIAGENTPLACEHLD/20261206/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000";
        let date = ("x-amz-date", "20261206T120000Z");
        assert!(client_signature(&[("authorization", good), date], None).is_ok());
        assert_eq!(client_signature(&[date], None), Err(SigError::Unsigned));
        assert!(matches!(
            client_signature(
                &[("authorization", good), ("Authorization", good), date],
                None
            ),
            Err(SigError::Ambiguous(_))
        ));
        assert!(matches!(
            client_signature(&[("authorization", good), date], Some("X-Amz-Signature=00")),
            Err(SigError::Ambiguous(_))
        ));
        assert!(matches!(
            client_signature(
                &[
                    ("authorization", good),
                    date,
                    ("x-amz-date", "20261206T120000Z")
                ],
                None
            ),
            Err(SigError::Ambiguous(_))
        ));
        for bad in [
            good.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"),
            good.replace("aws4_request", "aws5_request"),
            good.replace("host;x-amz-date", "x-amz-date"),
            good.replace("host;x-amz-date", "host;host"),
            good.replace("Signature=0", "Signature=G"),
            good.replace("20261206/", "20261205/"),
            good.replace(", Signature", ", Signature=1, Signature"),
            good.replace("Credential=", "Credentials="),
            good.replace("/us-east-1/", "/us east/"),
        ] {
            assert!(
                client_signature(&[("authorization", &bad), date], None).is_err(),
                "{bad}"
            );
        }
        assert!(matches!(
            client_signature(
                &[
                    (
                        "authorization",
                        &good.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256")
                    ),
                    date
                ],
                None
            ),
            Err(SigError::Unsupported(_))
        ));
    }

    #[test]
    fn request_dates_far_from_the_clock_are_refused() {
        let sig = |date_time: &str, location| ClientSignature {
            key_id: PLACEHOLDER_KEY_ID.into(),
            date: date_time[..8].into(),
            region: "us-east-1".into(),
            service: "s3".into(),
            signed_headers: vec!["host".into()],
            signature: "0".repeat(64),
            date_time: date_time.into(),
            location,
            session_token: None,
        };
        let now = parse_amz_date("20261206T120000Z").unwrap();
        assert!(sig("20261206T121400Z", Location::Header)
            .check_time(now)
            .is_ok());
        assert!(sig("20261206T114600Z", Location::Header)
            .check_time(now)
            .is_ok());
        assert!(matches!(
            sig("20261206T121600Z", Location::Header).check_time(now),
            Err(SigError::Skewed(_))
        ));
        assert!(matches!(
            sig("20261206T114400Z", Location::Header).check_time(now),
            Err(SigError::Skewed(_))
        ));
        // A presigned URL is valid from its date for `expires` seconds.
        assert!(sig("20261206T100000Z", Location::Query { expires: 7200 })
            .check_time(now)
            .is_ok());
        assert_eq!(
            sig("20261206T100000Z", Location::Query { expires: 3600 }).check_time(now),
            Err(SigError::Expired)
        );
    }

    #[test]
    fn amz_dates_parse_strictly() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(UNIX_EPOCH));
        assert_eq!(
            parse_amz_date("20130524T000000Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_369_353_600))
        );
        assert_eq!(
            parse_amz_date("20240229T235959Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_251_199))
        );
        for bad in [
            "20230229T000000Z",
            "20241301T000000Z",
            "2024-01-01T0000Z",
            "20240101T000000",
            "2024010IT000000Z",
            "20240101T240000Z",
            "",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn presigned_urls_verify_and_their_parameters_are_stripped() {
        let now = SystemTime::now();
        let req = Signable {
            method: "GET",
            uri: "http://127.0.0.1:9000/bucket/some%20key?versionId=3",
            headers: vec![("host", "127.0.0.1:9000")],
            payload_hash: UNSIGNED_PAYLOAD,
            region: "us-east-1",
            service: "s3",
        };
        let (params, _) = query_signature(
            &req,
            &SigningKey::placeholder(None),
            now,
            Duration::from_secs(600),
        )
        .unwrap();
        let mut query = String::from("versionId=3");
        for (k, v) in &params {
            query.push('&');
            query.push_str(k);
            query.push('=');
            query.push_str(&aws_smithy_percent(v));
        }
        let sig = client_signature(&[("host", "127.0.0.1:9000")], Some(&query)).unwrap();
        assert_eq!(sig.location, Location::Query { expires: 600 });
        assert_eq!(strip_presign_params(&query), "versionId=3");
        verify(&sig, &req).unwrap();
        let changed = Signable {
            uri: "http://127.0.0.1:9000/bucket/other?versionId=3",
            ..req
        };
        assert_eq!(verify(&sig, &changed), Err(SigError::Mismatch));
    }

    /// Percent-encodes a query value as SigV4 wants it (unreserved characters kept).
    fn aws_smithy_percent(v: &str) -> String {
        v.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    #[test]
    fn payload_modes() {
        assert_eq!(payload_mode(UNSIGNED_PAYLOAD), Ok(PayloadMode::Unsigned));
        assert_eq!(
            payload_mode(STREAMING_SIGNED),
            Ok(PayloadMode::StreamingSigned { trailer: false })
        );
        assert_eq!(payload_mode(&"a".repeat(64)), Ok(PayloadMode::Hash));
        assert!(payload_mode(&"A".repeat(64)).is_err());
        assert!(payload_mode("STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD").is_err());
    }
}
