//! `[approvals]`: where held statements are announced and how signed decisions are
//! checked. Read by serde as [`RawApprovals`] and validated once into
//! [`ApprovalsConfig`] by [`ApprovalsConfig::from_raw`].
//!
//! ```toml
//! [approvals]
//! webhook_url = "https://chat.example/hooks/abc"  # optional; http(s); JSON POST per request
//! webhook_retries = 5                             # attempts after the first (default 5)
//! decision_keys = ["/etc/nhi-agent/approver.pem"] # PEM public keys (EdDSA, ES256, RS256)
//! decision_jwks = "/etc/nhi-agent/approvers.jwks" # and/or a JWKS file (kid matching)
//! decision_issuer = "https://idp.example"         # optional `iss` check
//! decision_audience = "nhi-agent"                 # optional `aud` check
//! http_listen = "127.0.0.1:8181"                  # optional loopback decision endpoint
//! max_grant = "8h"                                # longest `--scope grant --for` (default 8h)
//! ```
use std::{net::SocketAddr, ops::Range, path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

/// Default `[approvals] webhook_retries`.
pub const DEFAULT_WEBHOOK_RETRIES: u32 = 5;
/// Default `[approvals] max_grant`.
pub const DEFAULT_MAX_GRANT: Duration = Duration::from_secs(8 * 3600);

/// `[approvals]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    webhook_url: Option<Spanned<String>>,
    webhook_retries: Option<u32>,
    #[serde(default)]
    decision_keys: Vec<Spanned<String>>,
    decision_jwks: Option<Spanned<String>>,
    decision_issuer: Option<Spanned<String>>,
    decision_audience: Option<Spanned<String>>,
    http_listen: Option<Spanned<String>>,
    max_grant: Option<Spanned<String>>,
}

/// A validated `[approvals]` (all keys optional; the default announces by log only and
/// accepts decisions from the control socket only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalsConfig {
    /// `webhook_url`: where announcements are POSTed.
    pub webhook_url: Option<String>,
    /// `webhook_retries`: attempts after the first failed one.
    pub webhook_retries: u32,
    /// `decision_keys`: PEM public keys that may sign decision tokens.
    pub decision_keys: Vec<PathBuf>,
    /// `decision_jwks`: a JWKS file of keys that may sign decision tokens.
    pub decision_jwks: Option<PathBuf>,
    /// `decision_issuer`: required `iss` of decision tokens.
    pub decision_issuer: Option<String>,
    /// `decision_audience`: required `aud` of decision tokens.
    pub decision_audience: Option<String>,
    /// `http_listen`: loopback address of the HTTP decision endpoint.
    pub http_listen: Option<SocketAddr>,
    /// `max_grant`: the longest time-boxed grant.
    pub max_grant: Duration,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_retries: DEFAULT_WEBHOOK_RETRIES,
            decision_keys: Vec::new(),
            decision_jwks: None,
            decision_issuer: None,
            decision_audience: None,
            http_listen: None,
            max_grant: DEFAULT_MAX_GRANT,
        }
    }
}

/// A problem in `[approvals]`, pointing at the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApprovalsProblem {
    /// Where the value is in the file.
    pub span: Option<Range<usize>>,
    /// What is wrong.
    pub message: String,
}

fn problem<T>(value: &Spanned<T>, message: impl Into<String>) -> ApprovalsProblem {
    ApprovalsProblem {
        span: Some(value.span()),
        message: message.into(),
    }
}

fn absolute(value: &Spanned<String>, key: &str) -> Result<PathBuf, ApprovalsProblem> {
    let path = PathBuf::from(value.get_ref());
    if !path.is_absolute() {
        return Err(problem(
            value,
            format!(
                "{key} must be an absolute path (got \"{}\")",
                value.get_ref()
            ),
        ));
    }
    Ok(path)
}

fn non_empty(
    value: Option<Spanned<String>>,
    key: &str,
) -> Result<Option<String>, ApprovalsProblem> {
    match value {
        Some(v) if v.get_ref().trim().is_empty() => {
            Err(problem(&v, format!("{key} must not be empty")))
        }
        other => Ok(other.map(Spanned::into_inner)),
    }
}

impl ApprovalsConfig {
    /// Validates `[approvals]` (absent: the defaults).
    pub fn from_raw(raw: Option<Spanned<RawApprovals>>) -> Result<Self, ApprovalsProblem> {
        let Some(raw) = raw else {
            return Ok(Self::default());
        };
        let raw = raw.into_inner();
        let webhook_url = match raw.webhook_url {
            Some(url) => {
                let u = url.get_ref();
                let rest = u
                    .strip_prefix("https://")
                    .or_else(|| u.strip_prefix("http://"));
                if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                    return Err(problem(
                        &url,
                        format!(
                            "webhook_url \"{u}\" must be an http:// or https:// URL with a host"
                        ),
                    ));
                }
                Some(url.into_inner())
            }
            None => None,
        };
        let decision_keys = raw
            .decision_keys
            .iter()
            .map(|k| absolute(k, "decision_keys"))
            .collect::<Result<Vec<_>, _>>()?;
        let decision_jwks = raw
            .decision_jwks
            .as_ref()
            .map(|p| absolute(p, "decision_jwks"))
            .transpose()?;
        let http_listen = match &raw.http_listen {
            Some(value) => {
                let addr: SocketAddr = value.get_ref().parse().map_err(|_| {
                    problem(
                        value,
                        format!(
                            "http_listen \"{}\" is not an address:port (e.g. \"127.0.0.1:8181\")",
                            value.get_ref()
                        ),
                    )
                })?;
                // Decisions are accepted without a caller check beyond the token's
                // signature; keeping the endpoint off the network is part of the design.
                if !addr.ip().is_loopback() {
                    return Err(problem(
                        value,
                        format!(
                            "http_listen \"{addr}\" must be a loopback address (127.0.0.0/8 or ::1)"
                        ),
                    ));
                }
                Some(addr)
            }
            None => None,
        };
        let max_grant = match &raw.max_grant {
            Some(value) => {
                let d = humantime::parse_duration(value.get_ref()).map_err(|e| {
                    problem(
                        value,
                        format!(
                            "invalid duration \"{}\" for max_grant: {e} (examples: \"15m\", \"8h\")",
                            value.get_ref()
                        ),
                    )
                })?;
                if d.is_zero() {
                    return Err(problem(value, "max_grant must be longer than zero"));
                }
                d
            }
            None => DEFAULT_MAX_GRANT,
        };
        Ok(Self {
            webhook_url,
            webhook_retries: raw.webhook_retries.unwrap_or(DEFAULT_WEBHOOK_RETRIES),
            decision_keys,
            decision_jwks,
            decision_issuer: non_empty(raw.decision_issuer, "decision_issuer")?,
            decision_audience: non_empty(raw.decision_audience, "decision_audience")?,
            http_listen,
            max_grant,
        })
    }

    /// Whether signed decision tokens can be verified at all.
    pub fn accepts_tokens(&self) -> bool {
        !self.decision_keys.is_empty() || self.decision_jwks.is_some()
    }
}

/// `[agent] approver_group`: a group by name (resolved when the agent starts) or by gid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(untagged)]
pub enum GroupRef {
    Gid(u32),
    Name(String),
}
