//! A minimal S3 client: SigV4 presigned requests from `rusty-s3` (sans-IO), sent with
//! `ureq` (blocking, rustls). Path-style URLs, so MinIO, s3s and AWS all work.
use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use md5::{Digest, Md5};
use rusty_s3::{actions, Bucket, Credentials, S3Action, UrlStyle};
use ureq::tls::{Certificate, PemItem, RootCerts};

use super::{
    config::{ObjectLock, ShipCredentials, ShippingConfig},
    ShipError,
};

/// Test hook: after this many confirmed PUTs the process aborts, as a crash between
/// an upload and the cursor update would (tests/tests/shipping.rs uses it to make a
/// "restart mid-upload" deterministic). Unset in production.
pub const ABORT_AFTER_PUTS_ENV: &str = "NHI_SHIP_TEST_ABORT_AFTER_PUTS";

/// How long before its expiry an instance role's credential is replaced.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// How long a presigned request stays valid: it is sent at once.
const SIGNATURE_VALIDITY: Duration = Duration::from_secs(300);
/// One request's overall timeout (a segment is a few MiB to a few hundred).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// The most of an error body read (S3 error documents are small).
const ERROR_BODY_LIMIT: u64 = 64 * 1024;

static PUTS: AtomicUsize = AtomicUsize::new(0);

/// A bucket with its credentials.
pub struct S3Client {
    bucket: Bucket,
    /// The credential in use and, for an instance role's, when it expires.
    credentials: std::sync::Mutex<Option<(Credentials, Option<std::time::SystemTime>)>>,
    /// `instance_profile`: the metadata service the credential comes from.
    imds_endpoint: Option<String>,
    http: ureq::Agent,
    object_lock: Option<ObjectLock>,
    endpoint: String,
    abort_after: Option<usize>,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials' own Debug omits the secret; say so explicitly anyway.
        f.debug_struct("S3Client")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket.name())
            .field("imds_endpoint", &self.imds_endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Client {
    /// A client for `config`'s bucket, trusting the system's CAs and `ca_file`. Static
    /// credentials are read now; an instance role's at the first request.
    pub fn new(config: &ShippingConfig) -> Result<S3Client, ShipError> {
        let bucket = Bucket::new(
            config.endpoint.clone(),
            UrlStyle::Path,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| ShipError::Endpoint(format!("{}: {e:?}", config.endpoint)))?;
        let (credentials, imds_endpoint) = match &config.credentials {
            ShipCredentials::Static {
                access_key_id,
                secret,
                session_token,
            } => {
                let secret = secret.load()?.expose_str()?.trim().to_owned();
                let credentials = match session_token {
                    None => Credentials::new(access_key_id.clone(), secret),
                    Some(token) => Credentials::new_with_token(
                        access_key_id.clone(),
                        secret,
                        token.load()?.expose_str()?.trim().to_owned(),
                    ),
                };
                (Some((credentials, None)), None)
            }
            ShipCredentials::InstanceProfile { imds_endpoint } => {
                (None, Some(imds_endpoint.clone()))
            }
        };
        let roots = root_certs(config.ca_file.as_deref())?;
        let http: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            // Statuses are judged here, with the S3 error code, not as transport errors.
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_redirects(0)
            .build()
            .into();
        Ok(S3Client {
            bucket,
            credentials: std::sync::Mutex::new(credentials),
            imds_endpoint,
            http,
            object_lock: config.object_lock,
            endpoint: config.endpoint.to_string(),
            abort_after: std::env::var(ABORT_AFTER_PUTS_ENV)
                .ok()
                .and_then(|v| v.parse().ok()),
        })
    }

    /// The credential to sign with: the static one, or the instance role's, fetched
    /// from the metadata service when there is none yet or it expires within
    /// [`REFRESH_BEFORE`].
    fn credentials(&self) -> Result<Credentials, ShipError> {
        let mut current = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = |c: &(Credentials, Option<SystemTime>)| {
            c.1.is_none_or(|expires| SystemTime::now() + REFRESH_BEFORE < expires)
        };
        if let Some(c) = current.as_ref().filter(|c| fresh(c)) {
            return Ok(c.0.clone());
        }
        let Some(endpoint) = &self.imds_endpoint else {
            // A static credential never expires here.
            return current
                .as_ref()
                .map(|c| c.0.clone())
                .ok_or_else(|| ShipError::InstanceProfile("no credential".into()));
        };
        let (key, expires) = crate::protocol::aws::imds::instance_role(endpoint)
            .map_err(|e| ShipError::InstanceProfile(format!("{endpoint}: {e:#}")))?;
        let credentials = match &key.session_token {
            Some(token) => Credentials::new_with_token(
                key.key_id.clone(),
                key.secret().to_owned(),
                token.to_string(),
            ),
            None => Credentials::new(key.key_id.clone(), key.secret().to_owned()),
        };
        *current = Some((credentials.clone(), Some(expires)));
        Ok(credentials)
    }

    /// Uploads `body` to `key` and confirms it: a 2xx status, an ETag equal to the
    /// body's MD5 when the server sends one (single-part uploads), and a HEAD whose
    /// size matches. `Content-MD5` makes the server refuse a body damaged in transit.
    pub fn put(&self, key: &str, body: &[u8]) -> Result<(), ShipError> {
        let credentials = self.credentials()?;
        let md5 = Md5::digest(body);
        let md5_b64 = base64::engine::general_purpose::STANDARD.encode(md5);
        let md5_hex = crate::hex::encode(&md5);
        let retain_until = self.object_lock.map(|lock| {
            let until = time::OffsetDateTime::now_utc() + time::Duration::days(lock.days.into());
            until
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        });
        let mut action = actions::PutObject::new(&self.bucket, Some(&credentials), key);
        action.headers_mut().insert("content-md5", md5_b64.clone());
        if let (Some(lock), Some(until)) = (self.object_lock, &retain_until) {
            action
                .headers_mut()
                .insert("x-amz-object-lock-mode", lock.mode.as_str());
            action
                .headers_mut()
                .insert("x-amz-object-lock-retain-until-date", until.clone());
        }
        let url = action.sign(SIGNATURE_VALIDITY);
        let mut request = self
            .http
            .put(url.as_str())
            .header("content-md5", &md5_b64)
            .header("content-type", "application/octet-stream");
        if let (Some(lock), Some(until)) = (self.object_lock, &retain_until) {
            request = request
                .header("x-amz-object-lock-mode", lock.mode.as_str())
                .header("x-amz-object-lock-retain-until-date", until);
        }
        let response = request.send(body).map_err(|e| self.transport(key, e))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(self.failure(key, response));
        }
        if let Some(etag) = response.headers().get("etag").and_then(|v| v.to_str().ok()) {
            let etag = etag.trim().trim_matches('"');
            // A multipart-style ETag ("...-N") is not an MD5; the HEAD check covers it.
            if !etag.contains('-') && !etag.eq_ignore_ascii_case(&md5_hex) {
                return Err(ShipError::Unconfirmed {
                    key: key.to_owned(),
                    why: format!("ETag {etag} is not the MD5 of what was sent ({md5_hex})"),
                });
            }
        }
        match self.head_len(key)? {
            Some(len) if len == body.len() as u64 => {}
            other => {
                return Err(ShipError::Unconfirmed {
                    key: key.to_owned(),
                    why: format!(
                        "HEAD after PUT reports {} bytes, {} were sent",
                        other.map_or("no object".to_owned(), |l| l.to_string()),
                        body.len()
                    ),
                })
            }
        }
        let n = PUTS.fetch_add(1, Ordering::SeqCst) + 1;
        if self.abort_after.is_some_and(|limit| n >= limit) {
            tracing::error!(
                puts = n,
                "{ABORT_AFTER_PUTS_ENV} reached: aborting (test hook)"
            );
            std::process::abort();
        }
        Ok(())
    }

    /// The size of `key`, `None` if it does not exist.
    pub fn head_len(&self, key: &str) -> Result<Option<u64>, ShipError> {
        let credentials = self.credentials()?;
        let url = actions::HeadObject::new(&self.bucket, Some(&credentials), key)
            .sign(SIGNATURE_VALIDITY);
        let response = self
            .http
            .head(url.as_str())
            .call()
            .map_err(|e| self.transport(key, e))?;
        match response.status().as_u16() {
            404 => Ok(None),
            200..=299 => Ok(response
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            _ => Err(self.failure(key, response)),
        }
    }

    /// The content of `key`, `None` if it does not exist.
    pub fn get(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, ShipError> {
        let credentials = self.credentials()?;
        let url =
            actions::GetObject::new(&self.bucket, Some(&credentials), key).sign(SIGNATURE_VALIDITY);
        let mut response = self
            .http
            .get(url.as_str())
            .call()
            .map_err(|e| self.transport(key, e))?;
        match response.status().as_u16() {
            404 => Ok(None),
            200..=299 => response
                .body_mut()
                .with_config()
                .limit(limit)
                .read_to_vec()
                .map(Some)
                .map_err(|e| self.transport(key, e)),
            _ => Err(self.failure(key, response)),
        }
    }

    fn transport(&self, key: &str, e: ureq::Error) -> ShipError {
        ShipError::Transport {
            endpoint: self.endpoint.clone(),
            key: key.to_owned(),
            reason: e.to_string(),
        }
    }

    fn failure(&self, key: &str, mut response: ureq::http::Response<ureq::Body>) -> ShipError {
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(ERROR_BODY_LIMIT)
            .read_to_string()
            .unwrap_or_default();
        let code = xml_field(&body, "Code").unwrap_or_default();
        let message = xml_field(&body, "Message").unwrap_or_default();
        classify(key, status, code, message)
    }
}

/// Turns an S3 error answer into a [`ShipError`]: rejected credentials get their own
/// variant (so the log says what to fix), the rest keep status, code and message.
pub fn classify(key: &str, status: u16, code: String, message: String) -> ShipError {
    const CREDENTIAL_CODES: [&str; 5] = [
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidSecurity",
        "ExpiredToken",
        "InvalidToken",
    ];
    // A HEAD answer has no body: a bare 403 is most likely the signature too.
    if CREDENTIAL_CODES.contains(&code.as_str()) || (status == 403 && code.is_empty()) {
        return ShipError::Credentials {
            key: key.to_owned(),
            code: if code.is_empty() {
                "HTTP 403".to_owned()
            } else {
                code
            },
        };
    }
    ShipError::Upstream {
        key: key.to_owned(),
        status,
        code,
        message,
    }
}

/// The text of the first `<name>...</name>` in an S3 error document. S3 error bodies
/// are flat and small; a full XML parser would buy nothing here.
fn xml_field(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&close)? + start;
    Some(body[start..end].trim().to_owned())
}

/// The CAs the endpoint's certificate may chain to: the system trust store
/// (`/etc/ssl/certs`, `SSL_CERT_FILE`/`SSL_CERT_DIR`, as for the HTTP targets) and
/// `ca_file`; the web roots bundled with ureq when the system has none and no `ca_file`
/// is set. An unreadable `ca_file`, or one without a certificate, is an error.
pub fn root_certs(ca_file: Option<&std::path::Path>) -> Result<RootCerts, ShipError> {
    let mut certs: Vec<Certificate<'static>> = rustls_native_certs::load_native_certs()
        .certs
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    if let Some(path) = ca_file {
        let bad = |why: String| ShipError::CaFile {
            path: path.to_path_buf(),
            why,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let before = certs.len();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(PemItem::Certificate(cert)) => certs.push(cert),
                Ok(_) => {}
                Err(e) => return Err(bad(format!("not PEM: {e}"))),
            }
        }
        if certs.len() == before {
            return Err(bad("no CERTIFICATE in it".into()));
        }
    }
    if certs.is_empty() {
        return Ok(RootCerts::WebPki);
    }
    Ok(RootCerts::Specific(std::sync::Arc::new(certs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_documents_are_classified() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error>";
        assert_eq!(
            xml_field(body, "Code").as_deref(),
            Some("SignatureDoesNotMatch")
        );
        let e = classify("k", 403, "SignatureDoesNotMatch".into(), String::new());
        assert!(
            e.to_string().contains("upstream rejected our credentials"),
            "{e}"
        );
        assert!(!e.is_retryable());
        let e = classify("k", 403, String::new(), String::new());
        assert!(matches!(e, ShipError::Credentials { .. }));
        let e = classify("k", 503, "SlowDown".into(), "Reduce".into());
        assert!(e.is_retryable(), "{e}");
        assert!(e.to_string().contains("503") && e.to_string().contains("SlowDown"));
        let e = classify("k", 404, "NoSuchBucket".into(), String::new());
        assert!(!e.is_retryable());
        assert_eq!(xml_field("<a>", "Code"), None);
    }
}
