//! The EC2 instance metadata service (IMDSv2): the instance role's temporary
//! credential, for the agent's own AWS signing (AWS targets with `aws_instance_role`,
//! S3 shipping with `instance_profile`). Blocking (ureq); callers on the runtime use
//! `spawn_blocking`.
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};

use super::sigv4::SigningKey;

/// The metadata service's address on EC2.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);

/// The metadata service, unless `AWS_EC2_METADATA_SERVICE_ENDPOINT` says otherwise
/// (the variable AWS SDKs read).
pub fn endpoint_from_env() -> String {
    std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|_| IMDS_ENDPOINT.to_owned())
}

/// Fetches the instance role's credential from the metadata service (IMDSv2: a session
/// token first, then the role's name, then its credential).
pub fn instance_role(base: &str) -> anyhow::Result<(SigningKey, SystemTime)> {
    let base = base.trim_end_matches('/');
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(IMDS_TIMEOUT))
        .build()
        .into();
    let token = agent
        .put(&format!("{base}/latest/api/token"))
        .header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
        .send_empty()
        .context("IMDSv2 session token")?
        .body_mut()
        .read_to_string()
        .context("IMDSv2 session token")?;
    let get = |path: &str| -> anyhow::Result<String> {
        agent
            .get(&format!("{base}{path}"))
            .header("x-aws-ec2-metadata-token", token.trim())
            .call()
            .with_context(|| format!("GET {path}"))?
            .body_mut()
            .read_to_string()
            .with_context(|| format!("GET {path}"))
    };
    let roles = get("/latest/meta-data/iam/security-credentials/")?;
    let role = roles
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .context("the instance has no role")?;
    if !role
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    {
        bail!("the metadata service named an invalid role");
    }
    let document = get(&format!(
        "/latest/meta-data/iam/security-credentials/{role}"
    ))?;
    let value: serde_json::Value =
        serde_json::from_str(&document).context("the role's credential is not JSON")?;
    let field = |name: &str| -> anyhow::Result<String> {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .with_context(|| format!("the role's credential has no {name}"))
    };
    let expires = field("Expiration")?;
    let expires =
        parse_rfc3339(&expires).context("the role's credential has an invalid Expiration")?;
    Ok((
        SigningKey::new(
            field("AccessKeyId")?,
            field("SecretAccessKey")?,
            Some(field("Token")?),
        ),
        expires,
    ))
}

/// `2026-12-06T12:00:00Z` (what the metadata service and STS write).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let compact: String = text
        .trim()
        .trim_end_matches('Z')
        .split('.')
        .next()?
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    crate::protocol::aws::sigv4::parse_amz_date(&format!("{compact}Z"))
}
