//! `[shipping]` and `[retention]`: the serde shapes and their validation.
//!
//! Pure: nothing here reads a file. The upload secret is named here (a
//! [`CredentialSource`]) and loaded when the shipper starts, so a config check never
//! touches it.
use std::{ops::Range, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use crate::credential::CredentialSource;

/// Default `[shipping] region`.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Default `[shipping] prefix`.
pub const DEFAULT_PREFIX: &str = "nhi";
/// Default `[shipping] interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Default `[shipping] attempts`: tries per request within one pass.
pub const DEFAULT_ATTEMPTS: u32 = 5;
/// Default `[shipping] backoff_initial`.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Default `[shipping] backoff_max`: the cap of the exponential backoff.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Default `[retention] budget_check_interval`.
pub const DEFAULT_BUDGET_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// `[shipping]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShipping {
    pub endpoint: Spanned<String>,
    pub bucket: Spanned<String>,
    pub region: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub access_key_id: Option<Spanned<String>>,
    pub instance_profile: Option<Spanned<bool>>,
    pub imds_endpoint: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
    pub secret_credential: Option<Spanned<String>>,
    pub session_token_file: Option<Spanned<String>>,
    pub session_token_credential: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub object_lock_mode: Option<Spanned<String>>,
    pub object_lock_days: Option<Spanned<u32>>,
    pub attempts: Option<Spanned<u32>>,
    pub backoff_initial: Option<Spanned<String>>,
    pub backoff_max: Option<Spanned<String>>,
}

/// `[retention]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub keep: Option<Spanned<String>>,
    pub disk_budget: Option<Spanned<crate::size::RawSize>>,
    pub delete_unshipped: Option<bool>,
    pub budget_check_interval: Option<Spanned<String>>,
}

/// A validation error, with the span of the offending value (the config module turns it
/// into a `ConfigError` with line and column).
#[derive(Debug)]
pub struct ShipProblem {
    /// Byte range in the file, when there is a value to point at.
    pub span: Option<Range<usize>>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ShipProblem {
    fn at<T>(value: &Spanned<T>, message: impl Into<String>) -> Self {
        ShipProblem {
            span: Some(value.span()),
            message: message.into(),
        }
    }
}

/// Both sections, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipConfig {
    /// `[shipping]`; `None`: nothing is uploaded.
    pub shipping: Option<ShippingConfig>,
    /// `[retention]` (all defaults when absent: keep forever, no budget).
    pub retention: RetentionConfig,
}

/// `[shipping]`: where sealed segments are uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippingConfig {
    /// `endpoint` (required): `http://` or `https://` base URL; requests are path-style
    /// (`<endpoint>/<bucket>/<key>`), which MinIO, s3s and AWS all accept.
    pub endpoint: url::Url,
    /// `bucket` (required).
    pub bucket: String,
    /// `region` (`"us-east-1"`): part of the SigV4 signature.
    pub region: String,
    /// `prefix` (`"nhi"`): first component of every key, without slashes at the ends.
    pub prefix: String,
    /// Who the uploads are signed as.
    pub credentials: ShipCredentials,
    /// `ca_file`: PEM CA certificates trusted for the endpoint, besides the system
    /// trust store (an internal CA in front of MinIO or Ceph).
    pub ca_file: Option<std::path::PathBuf>,
    /// `interval` (`"30s"`): time between two passes of the background shipper.
    pub interval: Duration,
    /// `object_lock_mode` + `object_lock_days`: S3 Object Lock on every uploaded object.
    pub object_lock: Option<ObjectLock>,
    /// `attempts` (5): tries per request within one pass (at least 1).
    pub attempts: u32,
    /// `backoff_initial` (`"1s"`): the first pause between two tries.
    pub backoff_initial: Duration,
    /// `backoff_max` (`"60s"`): the cap of the doubling pause.
    pub backoff_max: Duration,
}

/// `[shipping]`'s credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipCredentials {
    /// `access_key_id` with `secret_file = PATH` (mode 0600 enforced) or
    /// `secret_credential = NAME` (systemd); for temporary keys (`ASIA...`) their STS
    /// session token, `session_token_file` / `session_token_credential`, sent as
    /// `X-Amz-Security-Token`.
    Static {
        access_key_id: String,
        secret: CredentialSource,
        session_token: Option<CredentialSource>,
    },
    /// `instance_profile = true`: the instance role's credential from the metadata
    /// service at `imds_endpoint` (IMDSv2), fetched at the first upload and refreshed
    /// before it expires.
    InstanceProfile { imds_endpoint: String },
}

/// S3 Object Lock settings for uploaded objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// `"GOVERNANCE"` or `"COMPLIANCE"`.
    pub mode: ObjectLockMode,
    /// Retention period from the upload, in days (at least 1).
    pub days: u32,
}

/// `object_lock_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectLockMode {
    /// Privileged users can still shorten or remove the lock.
    Governance,
    /// Nobody can, not even the account root, until it expires.
    Compliance,
}

impl ObjectLockMode {
    /// The header value S3 expects.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectLockMode::Governance => "GOVERNANCE",
            ObjectLockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// `[retention]`: what is deleted locally, and how much disk the journal may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// `keep` (none: forever): sealed segments older than this (by their seal's
    /// `sealed_at_us`) may be deleted once shipped.
    pub keep: Option<Duration>,
    /// `disk_budget` (none): above it, new sessions are refused.
    pub disk_budget: Option<u64>,
    /// `delete_unshipped` (false): without `[shipping]`, delete segments older than
    /// `keep` anyway. Never applies when `[shipping]` is configured.
    pub delete_unshipped: bool,
    /// `budget_check_interval` (`"5s"`): how often the journal directory is measured.
    pub budget_check_interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep: None,
            disk_budget: None,
            delete_unshipped: false,
            budget_check_interval: DEFAULT_BUDGET_CHECK_INTERVAL,
        }
    }
}

impl ShipConfig {
    /// Validates both sections (either may be absent).
    pub fn from_raw(
        shipping: Option<Spanned<RawShipping>>,
        retention: Option<Spanned<RawRetention>>,
    ) -> Result<ShipConfig, ShipProblem> {
        let shipping = shipping.map(ShippingConfig::from_raw).transpose()?;
        let retention = match retention {
            Some(r) => RetentionConfig::from_raw(r)?,
            None => RetentionConfig::default(),
        };
        Ok(ShipConfig {
            shipping,
            retention,
        })
    }

    /// Whether the background task has anything to do.
    pub fn is_active(&self) -> bool {
        self.shipping.is_some()
            || self.retention.disk_budget.is_some()
            || (self.retention.keep.is_some() && self.retention.delete_unshipped)
    }
}

impl ShippingConfig {
    fn from_raw(raw: Spanned<RawShipping>) -> Result<ShippingConfig, ShipProblem> {
        let span = raw.span();
        let raw = raw.into_inner();
        let endpoint = url::Url::parse(raw.endpoint.get_ref()).map_err(|e| {
            ShipProblem::at(
                &raw.endpoint,
                format!("invalid endpoint URL \"{}\": {e}", raw.endpoint.get_ref()),
            )
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(ShipProblem::at(
                &raw.endpoint,
                "endpoint must be an http:// or https:// URL with a host",
            ));
        }
        let bucket = non_empty(&raw.bucket, "bucket")?;
        if bucket.contains('/') {
            return Err(ShipProblem::at(&raw.bucket, "bucket must not contain '/'"));
        }
        let region = match &raw.region {
            Some(r) => non_empty(r, "region")?,
            None => DEFAULT_REGION.to_owned(),
        };
        let prefix = match &raw.prefix {
            Some(p) => {
                let trimmed = p.get_ref().trim_matches('/');
                if trimmed.is_empty() || trimmed.split('/').any(|c| c.is_empty() || c == "..") {
                    return Err(ShipProblem::at(
                        p,
                        "prefix must be one or more non-empty path components (\"nhi\", \"audit/prod\")",
                    ));
                }
                trimmed.to_owned()
            }
            None => DEFAULT_PREFIX.to_owned(),
        };
        let credentials = if raw.instance_profile.as_ref().is_some_and(|v| *v.get_ref()) {
            let statics = [
                (
                    "access_key_id",
                    raw.access_key_id.as_ref().map(Spanned::span),
                ),
                ("secret_file", raw.secret_file.as_ref().map(Spanned::span)),
                (
                    "secret_credential",
                    raw.secret_credential.as_ref().map(Spanned::span),
                ),
                (
                    "session_token_file",
                    raw.session_token_file.as_ref().map(Spanned::span),
                ),
                (
                    "session_token_credential",
                    raw.session_token_credential.as_ref().map(Spanned::span),
                ),
            ];
            if let Some((key, span)) = statics.into_iter().find(|(_, s)| s.is_some()) {
                return Err(ShipProblem {
                    span,
                    message: format!(
                        "instance_profile = true takes the credential from the metadata service: remove {key}"
                    ),
                });
            }
            let imds_endpoint = match &raw.imds_endpoint {
                None => crate::protocol::aws::imds::endpoint_from_env(),
                Some(e) => match url::Url::parse(e.get_ref()) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                        e.get_ref().trim_end_matches('/').to_owned()
                    }
                    _ => {
                        return Err(ShipProblem::at(
                            e,
                            "imds_endpoint must be an http:// URL with a host (default http://169.254.169.254)",
                        ))
                    }
                },
            };
            ShipCredentials::InstanceProfile { imds_endpoint }
        } else {
            if let Some(e) = &raw.imds_endpoint {
                return Err(ShipProblem::at(
                    e,
                    "imds_endpoint needs instance_profile = true",
                ));
            }
            let Some(access_key_id) = &raw.access_key_id else {
                return Err(ShipProblem {
                span: Some(span),
                message: "[shipping] needs access_key_id with its secret (or instance_profile = true)"
                    .to_owned(),
            });
            };
            let access_key_id = non_empty(access_key_id, "access_key_id")?;
            let secret = match (&raw.secret_file, &raw.secret_credential) {
            (Some(f), None) => {
                let path = std::path::PathBuf::from(f.get_ref());
                if !path.is_absolute() {
                    return Err(ShipProblem::at(f, "secret_file must be an absolute path"));
                }
                CredentialSource::File(path)
            }
            (None, Some(c)) => CredentialSource::Systemd(non_empty(c, "secret_credential")?),
            (Some(f), Some(_)) => {
                return Err(ShipProblem::at(
                    f,
                    "set either secret_file or secret_credential, not both",
                ))
            }
            (None, None) => {
                return Err(ShipProblem {
                    span: Some(span),
                    message: "[shipping] needs the secret access key: secret_file = \"/path\" (mode 0600) or secret_credential = \"name\" (systemd LoadCredential=)".to_owned(),
                })
            }
        };
            let session_token = match (&raw.session_token_file, &raw.session_token_credential) {
                (None, None) => None,
                (Some(f), None) => {
                    let path = std::path::PathBuf::from(f.get_ref());
                    if !path.is_absolute() {
                        return Err(ShipProblem::at(
                            f,
                            "session_token_file must be an absolute path",
                        ));
                    }
                    Some(CredentialSource::File(path))
                }
                (None, Some(c)) => Some(CredentialSource::Systemd(non_empty(
                    c,
                    "session_token_credential",
                )?)),
                (Some(f), Some(_)) => {
                    return Err(ShipProblem::at(
                        f,
                        "set either session_token_file or session_token_credential, not both",
                    ))
                }
            };
            ShipCredentials::Static {
                access_key_id,
                secret,
                session_token,
            }
        };
        let ca_file = match &raw.ca_file {
            None => None,
            Some(f) if std::path::Path::new(f.get_ref()).is_absolute() => {
                if endpoint.scheme() != "https" {
                    return Err(ShipProblem::at(f, "ca_file needs an https:// endpoint"));
                }
                Some(std::path::PathBuf::from(f.get_ref()))
            }
            Some(f) => return Err(ShipProblem::at(f, "ca_file must be an absolute path")),
        };
        let interval = duration(raw.interval.as_ref(), "interval", DEFAULT_INTERVAL)?;
        let object_lock = match (&raw.object_lock_mode, &raw.object_lock_days) {
            (None, None) => None,
            (Some(mode), Some(days)) => {
                let mode = match mode.get_ref().as_str() {
                    "GOVERNANCE" => ObjectLockMode::Governance,
                    "COMPLIANCE" => ObjectLockMode::Compliance,
                    other => {
                        return Err(ShipProblem::at(
                            mode,
                            format!("object_lock_mode must be \"GOVERNANCE\" or \"COMPLIANCE\" (got \"{other}\")"),
                        ))
                    }
                };
                if *days.get_ref() == 0 {
                    return Err(ShipProblem::at(days, "object_lock_days must be at least 1"));
                }
                Some(ObjectLock {
                    mode,
                    days: *days.get_ref(),
                })
            }
            (Some(mode), None) => {
                return Err(ShipProblem::at(
                    mode,
                    "object_lock_mode needs object_lock_days",
                ))
            }
            (None, Some(days)) => {
                return Err(ShipProblem::at(
                    days,
                    "object_lock_days needs object_lock_mode",
                ))
            }
        };
        let attempts = match &raw.attempts {
            Some(a) if *a.get_ref() == 0 => {
                return Err(ShipProblem::at(a, "attempts must be at least 1"))
            }
            Some(a) => *a.get_ref(),
            None => DEFAULT_ATTEMPTS,
        };
        let backoff_initial = duration(
            raw.backoff_initial.as_ref(),
            "backoff_initial",
            DEFAULT_BACKOFF_INITIAL,
        )?;
        let backoff_max = duration(raw.backoff_max.as_ref(), "backoff_max", DEFAULT_BACKOFF_MAX)?;
        Ok(ShippingConfig {
            endpoint,
            bucket,
            region,
            prefix,
            credentials,
            ca_file,
            interval,
            object_lock,
            attempts,
            backoff_initial,
            backoff_max: backoff_max.max(backoff_initial),
        })
    }
}

impl RetentionConfig {
    fn from_raw(raw: Spanned<RawRetention>) -> Result<RetentionConfig, ShipProblem> {
        let raw = raw.into_inner();
        let keep = raw
            .keep
            .as_ref()
            .map(|k| duration(Some(k), "keep", Duration::ZERO))
            .transpose()?;
        let disk_budget = raw
            .disk_budget
            .as_ref()
            .map(|b| {
                crate::size::value(b.get_ref(), "[retention] disk_budget", 1..=u64::MAX)
                    .map_err(|message| ShipProblem::at(b, message))
            })
            .transpose()?;
        Ok(RetentionConfig {
            keep,
            disk_budget,
            delete_unshipped: raw.delete_unshipped.unwrap_or(false),
            budget_check_interval: duration(
                raw.budget_check_interval.as_ref(),
                "budget_check_interval",
                DEFAULT_BUDGET_CHECK_INTERVAL,
            )?,
        })
    }
}

fn non_empty(value: &Spanned<String>, key: &str) -> Result<String, ShipProblem> {
    if value.get_ref().trim().is_empty() {
        return Err(ShipProblem::at(value, format!("{key} must not be empty")));
    }
    Ok(value.get_ref().clone())
}

fn duration(
    value: Option<&Spanned<String>>,
    key: &str,
    default: Duration,
) -> Result<Duration, ShipProblem> {
    let Some(value) = value else {
        return Ok(default);
    };
    let parsed = humantime::parse_duration(value.get_ref()).map_err(|e| {
        ShipProblem::at(
            value,
            format!(
                "invalid duration \"{}\" for {key}: {e} (examples: \"500ms\", \"30s\", \"30d\")",
                value.get_ref()
            ),
        )
    })?;
    if parsed.is_zero() {
        return Err(ShipProblem::at(
            value,
            format!("{key} must be longer than zero"),
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        shipping: Option<Spanned<RawShipping>>,
        retention: Option<Spanned<RawRetention>>,
    }

    fn parse(text: &str) -> Result<ShipConfig, ShipProblem> {
        let doc: Doc = toml::from_str(text).expect("toml");
        ShipConfig::from_raw(doc.shipping, doc.retention)
    }

    #[test]
    fn session_tokens_and_ca_file() {
        let base = "[shipping]\nendpoint = \"https://s3.example\"\nbucket = \"b\"\naccess_key_id = \"ASIA\"\nsecret_file = \"/s\"\n";
        let c = parse(base).expect("defaults");
        let s = c.shipping.expect("shipping");
        let token = |c: &ShipCredentials| match c {
            ShipCredentials::Static { session_token, .. } => session_token.clone(),
            ShipCredentials::InstanceProfile { .. } => panic!("static expected"),
        };
        assert_eq!(
            (token(&s.credentials), s.ca_file, s.region.as_str()),
            (None, None, "us-east-1")
        );
        let c = parse(&format!(
            "{base}session_token_file = \"/etc/nhi-agent/s3.token\"\nca_file = \"/etc/nhi-agent/ca.pem\"\n"
        ))
        .expect("token file, ca_file");
        let s = c.shipping.expect("shipping");
        assert_eq!(
            token(&s.credentials),
            Some(CredentialSource::File("/etc/nhi-agent/s3.token".into()))
        );
        assert_eq!(s.ca_file, Some("/etc/nhi-agent/ca.pem".into()));
        let c = parse(&format!("{base}session_token_credential = \"s3-token\"\n")).expect("cred");
        assert_eq!(
            token(&c.shipping.expect("shipping").credentials),
            Some(CredentialSource::Systemd("s3-token".into()))
        );
        for (extra, needle) in [
            (
                "session_token_file = \"rel\"\n",
                "session_token_file must be an absolute path",
            ),
            (
                "session_token_file = \"/a\"\nsession_token_credential = \"b\"\n",
                "not both",
            ),
            ("ca_file = \"ca.pem\"\n", "ca_file must be an absolute path"),
        ] {
            let err = parse(&format!("{base}{extra}")).expect_err(extra);
            assert!(err.message.contains(needle), "{extra}: {}", err.message);
            assert!(err.span.is_some());
        }
        let err = parse(
            &base
                .replace("https://", "http://")
                .replace("[shipping]\n", "[shipping]\nca_file = \"/ca.pem\"\n"),
        )
        .expect_err("http");
        assert!(
            err.message.contains("ca_file needs an https:// endpoint"),
            "{}",
            err.message
        );
    }

    #[test]
    fn instance_profile_takes_no_static_key() {
        let base = "[shipping]\nendpoint = \"https://s3.example\"\nbucket = \"b\"\ninstance_profile = true\n";
        let c = parse(&format!("{base}imds_endpoint = \"http://127.0.0.1:9/\"\n")).expect("imds");
        assert_eq!(
            c.shipping.expect("shipping").credentials,
            ShipCredentials::InstanceProfile {
                imds_endpoint: "http://127.0.0.1:9".into()
            }
        );
        for (extra, needle) in [
            ("access_key_id = \"AK\"\n", "remove access_key_id"),
            ("secret_file = \"/s\"\n", "remove secret_file"),
            (
                "imds_endpoint = \"ftp://x\"\n",
                "imds_endpoint must be an http:// URL",
            ),
        ] {
            let err = parse(&format!("{base}{extra}")).expect_err(extra);
            assert!(err.message.contains(needle), "{extra}: {}", err.message);
        }
        let err = parse(
            "[shipping]\nendpoint = \"https://s3.example\"\nbucket = \"b\"\nsecret_file = \"/s\"\n",
        )
        .expect_err("no key");
        assert!(
            err.message.contains("needs access_key_id"),
            "{}",
            err.message
        );
        let err = parse("[shipping]\nendpoint = \"https://s3.example\"\nbucket = \"b\"\naccess_key_id = \"A\"\nsecret_file = \"/s\"\nimds_endpoint = \"http://x\"\n")
            .expect_err("imds without profile");
        assert!(
            err.message.contains("needs instance_profile = true"),
            "{}",
            err.message
        );
    }

    #[test]
    fn presigned_requests_carry_the_session_token() {
        // What the client relies on rusty-s3 for: temporary keys' token in the URL.
        use rusty_s3::S3Action as _;
        let bucket = rusty_s3::Bucket::new(
            "https://s3.example".parse().expect("url"),
            rusty_s3::UrlStyle::Path,
            "b",
            "eu-west-1",
        )
        .expect("bucket");
        let creds = rusty_s3::Credentials::new_with_token("ASIAX", "secret", "tok3n");
        let url = rusty_s3::actions::HeadObject::new(&bucket, Some(&creds), "k")
            .sign(std::time::Duration::from_secs(60));
        assert!(url.as_str().contains("X-Amz-Security-Token=tok3n"), "{url}");
        assert!(url.as_str().contains("eu-west-1"), "{url}");
    }

    #[test]
    fn disk_budget_takes_the_shared_size_syntax() {
        let budget = |v: &str| parse(&format!("[retention]\ndisk_budget = {v}\n"));
        for (v, bytes) in [
            ("\"10GiB\"", 10 << 30),
            ("\"2 GB\"", 2_000_000_000),
            ("\"512\"", 512),
            ("\"1kib\"", 1024),
            // An integer was refused here while [evidence] took it.
            ("1073741824", 1 << 30),
        ] {
            let c = budget(v).expect(v);
            assert_eq!(c.retention.disk_budget, Some(bytes), "{v}");
        }
        for v in ["\"GiB\"", "\"1.5GiB\"", "\"99999999999TiB\"", "-1"] {
            let err = budget(v).expect_err(v);
            assert!(
                err.message
                    .starts_with(&format!("invalid size {v} for [retention] disk_budget")),
                "{v}: {}",
                err.message
            );
        }
        let err = budget("\"0MiB\"").expect_err("zero");
        assert_eq!(
            err.message,
            "[retention] disk_budget must be at least 1 byte (got \"0MiB\")"
        );
    }

    #[test]
    fn shipping_defaults_and_secret_source() {
        let c = parse(
            "[shipping]\nendpoint = \"http://127.0.0.1:9000\"\nbucket = \"audit\"\naccess_key_id = \"AK\"\nsecret_file = \"/etc/nhi/s3.secret\"\n",
        )
        .expect("valid");
        let s = c.shipping.clone().expect("shipping");
        assert_eq!(s.region, DEFAULT_REGION);
        assert_eq!(s.prefix, DEFAULT_PREFIX);
        assert_eq!(s.interval, DEFAULT_INTERVAL);
        assert_eq!(
            s.credentials,
            ShipCredentials::Static {
                access_key_id: "AK".into(),
                secret: CredentialSource::File("/etc/nhi/s3.secret".into()),
                session_token: None,
            }
        );
        assert_eq!(s.object_lock, None);
        assert_eq!(c.retention, RetentionConfig::default());
        assert!(c.is_active());
    }

    #[test]
    fn retention_and_lock() {
        let c = parse(
            "[shipping]\nendpoint = \"https://s3.example\"\nbucket = \"b\"\nprefix = \"/a/b/\"\naccess_key_id = \"AK\"\nsecret_credential = \"s3\"\nobject_lock_mode = \"COMPLIANCE\"\nobject_lock_days = 30\n[retention]\nkeep = \"30d\"\ndisk_budget = \"10GiB\"\n",
        )
        .expect("valid");
        let s = c.shipping.expect("shipping");
        assert_eq!(s.prefix, "a/b");
        assert!(
            matches!(&s.credentials, ShipCredentials::Static { secret: CredentialSource::Systemd(n), .. } if n == "s3")
        );
        assert_eq!(
            s.object_lock,
            Some(ObjectLock {
                mode: ObjectLockMode::Compliance,
                days: 30
            })
        );
        assert_eq!(c.retention.keep, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(c.retention.disk_budget, Some(10 << 30));
    }

    #[test]
    fn rejects_bad_sections() {
        let base = "[shipping]\nendpoint = \"http://127.0.0.1:9000\"\nbucket = \"b\"\naccess_key_id = \"AK\"\n";
        for (extra, needle) in [
            ("", "secret access key"),
            (
                "secret_file = \"/a\"\nsecret_credential = \"b\"\n",
                "not both",
            ),
            ("secret_file = \"rel\"\n", "absolute"),
            (
                "secret_file = \"/a\"\nobject_lock_mode = \"STRICT\"\nobject_lock_days = 1\n",
                "GOVERNANCE",
            ),
            (
                "secret_file = \"/a\"\nobject_lock_mode = \"GOVERNANCE\"\n",
                "needs object_lock_days",
            ),
            ("secret_file = \"/a\"\ninterval = \"soon\"\n", "interval"),
            ("secret_file = \"/a\"\nattempts = 0\n", "attempts"),
        ] {
            let err = parse(&format!("{base}{extra}")).expect_err(extra);
            assert!(err.message.contains(needle), "{extra}: {}", err.message);
        }
        let err = parse("[shipping]\nendpoint = \"ftp://x\"\nbucket = \"b\"\naccess_key_id = \"AK\"\nsecret_file = \"/a\"\n")
            .expect_err("ftp");
        assert!(err.message.contains("http"), "{}", err.message);
        let err = parse("[retention]\ndisk_budget = \"lots\"\n").expect_err("size");
        assert!(err.message.contains("disk_budget"), "{}", err.message);
        assert!(err.span.is_some());
        let c = parse("[retention]\nkeep = \"7d\"\n").expect("keep only");
        assert!(!c.is_active(), "keep without shipping deletes nothing");
    }
}
