//! The agent's own AWS credential for an AWS target: an access key from a shared
//! credentials file (INI, mode 0600 or stricter) or a systemd credential holding one,
//! or the host's instance role from the EC2 metadata service (IMDSv2), refreshed before
//! it expires. The secret never leaves this module but as a [`SigningKey`]; what is
//! journaled and logged about it is [`AwsCredentials::describe`]: the key id and where
//! it came from.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use tokio::sync::Mutex;
use tracing::info;

use crate::config::AwsCredentialSource;
use crate::credential::CredentialSource;
use crate::protocol::aws::imds::{self, parse_rfc3339};
use crate::protocol::aws::sigv4::SigningKey;

/// How long before its expiry a temporary credential is replaced.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// The agent's credential for one target.
pub struct AwsCredentials {
    source: AwsCredentialSource,
    /// A long-term key (file, systemd credential).
    fixed: Option<Arc<SigningKey>>,
    /// A temporary one (instance role) and when it expires.
    temporary: Mutex<Option<(Arc<SigningKey>, SystemTime)>>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl AwsCredentials {
    /// Reads a long-term key now (so a bad file fails the configuration load, not the
    /// first call); an instance role is fetched at first use.
    pub fn load(source: &AwsCredentialSource) -> anyhow::Result<AwsCredentials> {
        let fixed = match source {
            AwsCredentialSource::File { path, profile } => Some(Arc::new(
                from_ini(&CredentialSource::File(path.clone()), profile)
                    .with_context(|| format!("aws_credentials_file {}", path.display()))?,
            )),
            AwsCredentialSource::Systemd { name, profile } => Some(Arc::new(
                from_ini(&CredentialSource::Systemd(name.clone()), profile)
                    .with_context(|| format!("credential {name:?}"))?,
            )),
            AwsCredentialSource::InstanceRole => None,
        };
        Ok(AwsCredentials {
            source: source.clone(),
            fixed,
            temporary: Mutex::new(None),
        })
    }

    /// The key to sign with now.
    pub async fn key(&self) -> Result<Arc<SigningKey>, String> {
        if let Some(key) = &self.fixed {
            return Ok(key.clone());
        }
        let mut cached = self.temporary.lock().await;
        if let Some((key, expires)) = cached.as_ref() {
            if SystemTime::now() + REFRESH_BEFORE < *expires {
                return Ok(key.clone());
            }
        }
        let (key, expires) =
            tokio::task::spawn_blocking(|| imds::instance_role(&imds::endpoint_from_env()))
                .await
                .map_err(|e| format!("instance role: {e}"))?
                .map_err(|e| format!("instance role: {e:#}"))?;
        info!(key_id = %key.key_id, "AWS credential of the instance role fetched");
        let key = Arc::new(key);
        *cached = Some((key.clone(), expires));
        Ok(key)
    }

    /// Where the credential comes from, for logs and the journal (never the secret).
    pub fn describe(&self) -> String {
        match &self.source {
            AwsCredentialSource::File { path, profile } => {
                format!("profile {profile} of {}", path.display())
            }
            AwsCredentialSource::Systemd { name, profile } => {
                format!("profile {profile} of systemd credential {name}")
            }
            AwsCredentialSource::InstanceRole => "the instance role".into(),
        }
    }
}

/// A workload's role (`aws_role_arn`), assumed for one journal session: its
/// `RoleSessionName` names the session and the workload, its `SourceIdentity` the
/// workload, so each CloudTrail entry of the role session points back to the journal.
pub struct RoleSession {
    pub role_arn: String,
    pub session_name: String,
    pub source_identity: String,
    cached: Mutex<Option<(Arc<SigningKey>, SystemTime)>>,
}

impl RoleSession {
    pub fn new(role_arn: &str, session: i64, workload: &str) -> RoleSession {
        RoleSession {
            role_arn: role_arn.to_owned(),
            session_name: sts_name(&format!("nhi-{session}-{workload}")),
            source_identity: sts_name(workload),
            cached: Mutex::new(None),
        }
    }

    /// The role session's key, assumed with `base` at `endpoint` (or STS of `region`)
    /// when there is none yet or it expires within [`REFRESH_BEFORE`].
    pub async fn key(
        &self,
        base: Arc<SigningKey>,
        endpoint: Option<&str>,
        region: &str,
    ) -> Result<Arc<SigningKey>, String> {
        let mut cached = self.cached.lock().await;
        if let Some((key, expires)) = cached.as_ref() {
            if SystemTime::now() + REFRESH_BEFORE < *expires {
                return Ok(key.clone());
            }
        }
        let endpoint = endpoint
            .map(str::to_owned)
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        let (role_arn, session_name, source_identity, region) = (
            self.role_arn.clone(),
            self.session_name.clone(),
            self.source_identity.clone(),
            region.to_owned(),
        );
        let (key, expires) = tokio::task::spawn_blocking(move || {
            assume_role(
                &base,
                &endpoint,
                &region,
                &role_arn,
                &session_name,
                &source_identity,
            )
        })
        .await
        .map_err(|e| format!("assuming the workload's role: {e}"))?
        .map_err(|e| format!("assuming {}: {e:#}", self.role_arn))?;
        info!(role = %self.role_arn, session_name = %self.session_name, key_id = %key.key_id, "workload role assumed");
        let key = Arc::new(key);
        *cached = Some((key.clone(), expires));
        Ok(key)
    }
}

/// A name STS accepts (`[\w+=,.@-]{2,64}`): other characters become `-`.
fn sts_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    while name.len() < 2 {
        name.push('-');
    }
    name
}

/// STS AssumeRole (query API, signed with `base`): the role session's key and expiry.
fn assume_role(
    base: &SigningKey,
    endpoint: &str,
    region: &str,
    role_arn: &str,
    session_name: &str,
    source_identity: &str,
) -> anyhow::Result<(SigningKey, SystemTime)> {
    use crate::protocol::aws::sigv4::{header_signature, sha256_hex, Signable};
    let url = url::Url::parse(endpoint).context("aws_sts_endpoint")?;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => bail!("aws_sts_endpoint has no host"),
    };
    let form = |v: &str| -> String { url::form_urlencoded::byte_serialize(v.as_bytes()).collect() };
    let body = format!(
        "Action=AssumeRole&Version=2011-06-15&RoleArn={}&RoleSessionName={}&SourceIdentity={}&DurationSeconds=3600",
        form(role_arn),
        form(session_name),
        form(source_identity)
    );
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let uri = format!("{}/", endpoint.trim_end_matches('/'));
    let hash = sha256_hex(body.as_bytes());
    let signable = Signable {
        method: "POST",
        uri: &uri,
        headers: vec![("content-type", content_type), ("host", &host)],
        payload_hash: &hash,
        region,
        service: "sts",
    };
    let (headers, _) =
        header_signature(&signable, base, SystemTime::now()).map_err(|e| anyhow::anyhow!(e))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.post(&uri).header("content-type", content_type);
    for (name, value) in &headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let mut response = request.send(body.as_bytes()).context("STS AssumeRole")?;
    let status = response.status();
    let text = response
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .context("STS AssumeRole answer")?;
    if !status.is_success() {
        let code = crate::protocol::aws::error::error_code(&[], Some(text.as_bytes()))
            .unwrap_or_else(|| "unknown error".into());
        bail!("STS answered {status} {code}");
    }
    let field = |name: &str| -> anyhow::Result<String> {
        xml_text(&text, name).with_context(|| format!("the AssumeRole answer has no {name}"))
    };
    let expires = parse_rfc3339(&field("Expiration")?)
        .context("the AssumeRole answer has an invalid Expiration")?;
    Ok((
        SigningKey::new(
            field("AccessKeyId")?,
            field("SecretAccessKey")?,
            Some(field("SessionToken")?),
        ),
        expires,
    ))
}

/// The text of the first element named `name` (local name).
fn xml_text(xml: &str, name: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut inside = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                let local = e.local_name();
                inside = AsRef::<str>::as_ref(&local) == name;
            }
            Event::Text(t) if inside => return Some(t.xml10_content().trim().to_owned()),
            Event::End(_) => inside = false,
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// The key of `profile` in the shared-credentials file `source` (the file's mode and
/// type checked by [`CredentialSource::load`]).
fn from_ini(source: &CredentialSource, profile: &str) -> anyhow::Result<SigningKey> {
    let secret = source.load()?;
    let text = secret
        .expose_str()
        .context("the credentials file is not UTF-8")?;
    parse_ini(text, profile)
}

/// Reads `aws_access_key_id`, `aws_secret_access_key` and `aws_session_token` of
/// section `[profile]` (or `[profile name]`, as in `~/.aws/config`). A key given twice,
/// a section given twice, or a line that is neither is an error: an ambiguous file is
/// not guessed at. Errors never quote a value.
pub fn parse_ini(text: &str, profile: &str) -> anyhow::Result<SigningKey> {
    let mut section: Option<String> = None;
    let mut seen_sections: Vec<String> = Vec::new();
    let (mut id, mut secret, mut token): (Option<String>, Option<String>, Option<String>) =
        (None, None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            let name = name.strip_prefix("profile ").map(str::trim).unwrap_or(name);
            if seen_sections.iter().any(|s| s == name) {
                bail!("line {}: section [{name}] appears twice", n + 1);
            }
            seen_sections.push(name.to_owned());
            section = Some(name.to_owned());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("line {}: neither a [section] nor key = value", n + 1);
        };
        if section.as_deref() != Some(profile) {
            continue;
        }
        let slot = match key.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => &mut id,
            "aws_secret_access_key" => &mut secret,
            "aws_session_token" | "aws_security_token" => &mut token,
            _ => continue,
        };
        if slot.replace(value.trim().to_owned()).is_some() {
            bail!("line {}: {} given twice in [{profile}]", n + 1, key.trim());
        }
    }
    if !seen_sections.iter().any(|s| s == profile) {
        bail!("no profile [{profile}]");
    }
    let id = id
        .filter(|v| !v.is_empty())
        .with_context(|| format!("[{profile}] has no aws_access_key_id"))?;
    let secret = secret
        .filter(|v| !v.is_empty())
        .with_context(|| format!("[{profile}] has no aws_secret_access_key"))?;
    // AWS key ids are alphanumeric; S3-compatible servers (MinIO, s3s) allow a few
    // more characters. None that would break the credential scope (`/`, `,`, spaces).
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.+=@".contains(&b))
    {
        bail!("[{profile}] aws_access_key_id is not an access key id");
    }
    Ok(SigningKey::new(id, secret, token.filter(|t| !t.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_strictly() {
        let file = "# comment\n[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s3cr3t/+=\n\n[profile ci]\naws_access_key_id=AKIACI\naws_secret_access_key=other\naws_session_token = tok\nregion = us-east-1\n";
        let key = parse_ini(file, "default").unwrap();
        assert_eq!(key.key_id, "AKIADEFAULT");
        assert_eq!(key.secret(), "s3cr3t/+=");
        assert!(key.session_token.is_none());
        let ci = parse_ini(file, "ci").unwrap();
        assert_eq!(ci.key_id, "AKIACI");
        assert_eq!(ci.session_token.as_deref().map(|t| t.as_str()), Some("tok"));
        for (text, why) in [
            (
                "[default]\naws_access_key_id=A\n",
                "no aws_secret_access_key",
            ),
            (
                "[other]\naws_access_key_id=A\naws_secret_access_key=B\n",
                "no profile [default]",
            ),
            (
                "[default]\naws_access_key_id=A\naws_access_key_id=C\naws_secret_access_key=B\n",
                "given twice",
            ),
            ("[default]\n[default]\n", "appears twice"),
            ("[default]\ngarbage\n", "neither"),
        ] {
            let e = parse_ini(text, "default").unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
            assert!(!e.contains("=B"), "{e}");
        }
    }

    #[test]
    fn expirations_parse() {
        assert_eq!(
            parse_rfc3339("2013-05-24T00:00:00Z"),
            crate::protocol::aws::sigv4::parse_amz_date("20130524T000000Z")
        );
        assert!(parse_rfc3339("2013-05-24T00:00:00.123Z").is_some());
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
