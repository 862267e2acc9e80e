//! What the HTTP proxy builds once per configuration (at start and at each reload): per
//! target, the TLS settings of both legs and the header it injects with its secret.
//! It lives in the same [`crate::proxy::Snapshot`] as the configuration it was built
//! from, so a connection never pairs one configuration's target index with another's
//! runtime.
use std::sync::Arc;

use anyhow::{bail, Context};
use http::{HeaderName, HeaderValue};

use crate::config::{ClientTls, Config, KubeCredential, UpstreamTlsMode};
use crate::credential::{CredentialSource, Secret};
use crate::tls::{self, AgentCa, UpstreamTls};

/// The header an HTTP target injects, with the secret in it.
pub struct Injection {
    /// The header's name (lowercase).
    pub name: HeaderName,
    /// The whole value, marked sensitive (HPACK never indexes it). `Bytes` underneath
    /// cannot be zeroized; the [`Secret`] it was made from is.
    pub value: HeaderValue,
    /// The secret alone: a response header that echoes it is masked.
    pub secret: Secret,
}

impl std::fmt::Debug for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injection")
            .field("name", &self.name)
            .field("value", &"[redacted]")
            .finish()
    }
}

/// Per-target state of an HTTP target.
#[derive(Debug)]
pub struct HttpTargetRuntime {
    /// TLS to the server (`tls`, `ca_file`, `server_name`).
    pub upstream: UpstreamTls,
    /// Whether the agent terminates the client's TLS (a leaf of [`HttpRuntime::ca`]).
    pub client_tls: bool,
    /// `server_name`: also a name of the certificate clients get.
    pub server_name: Option<String>,
    /// `inject`: the header set on every forwarded request.
    pub inject: Option<Injection>,
    /// `mask_body_limit`: the largest body (JSON) or line (NDJSON, SSE, text) masked.
    pub mask_body_limit: u64,
    /// `protocol = "aws"`: the agent's credential and how client signatures are checked.
    pub aws: Option<super::aws::AwsTargetRuntime>,
    /// `protocol = "aws-imds"`: what the agent answers for the metadata service.
    pub imds: Option<super::imds::ImdsRuntime>,
    /// `protocol = "kubernetes"`: what the agent authenticates as.
    pub kube: Option<KubeTargetRuntime>,
}

/// Per-target state of a Kubernetes target.
#[derive(Debug)]
pub struct KubeTargetRuntime {
    /// How the agent's credential is described in the journal: `bearer token`, or
    /// `client certificate CN=...` (never the secret).
    pub acting_as: String,
}

/// Everything the HTTP sessions of one configuration share, indexed like
/// [`Config::targets`].
pub struct HttpRuntime {
    targets: Vec<Option<Arc<HttpTargetRuntime>>>,
    /// The local CA, when a target terminates client TLS.
    pub ca: Option<Arc<AgentCa>>,
}

impl HttpRuntime {
    /// Builds the runtime of `config`'s HTTP targets: reads their credentials (0600 files
    /// or systemd credentials) and CA files. `ca` is the agent CA the PostgreSQL runtime
    /// loaded (one CA per process). Errors name the target and the file, never a secret.
    pub fn build(config: &Config, ca: Option<Arc<AgentCa>>) -> anyhow::Result<HttpRuntime> {
        let mut targets = Vec::with_capacity(config.targets.len());
        for target in &config.targets {
            let Some(settings) = target.http.as_ref().filter(|_| target.protocol.over_http())
            else {
                targets.push(None);
                continue;
            };
            let mode = match settings.tls {
                UpstreamTlsMode::Disable => tls::UpstreamTlsMode::Disable,
                UpstreamTlsMode::Prefer | UpstreamTlsMode::Require => tls::UpstreamTlsMode::Require,
                UpstreamTlsMode::VerifyFull => tls::UpstreamTlsMode::VerifyFull,
            };
            let client_cert = match target.kube.as_ref().map(|k| &k.credential) {
                Some(KubeCredential::ClientCert { cert, key }) => {
                    let pem = CredentialSource::File(key.clone())
                        .load()
                        .with_context(|| format!("target \"{}\": client_key_file", target.name))?;
                    Some(
                        tls::ClientCert::from_pem(cert, key, pem.expose())
                            .with_context(|| format!("target \"{}\"", target.name))?,
                    )
                }
                _ => None,
            };
            let acting_as = client_cert.as_ref().map(|c| match c.common_name() {
                Some(cn) => format!("client certificate CN={cn}"),
                None => "client certificate".to_owned(),
            });
            let upstream = match client_cert {
                None => UpstreamTls::for_http(
                    mode,
                    settings.ca_file.as_deref(),
                    settings.server_name.as_deref(),
                ),
                Some(cert) => UpstreamTls::for_http_with_client_cert(
                    mode,
                    settings.ca_file.as_deref(),
                    settings.server_name.as_deref(),
                    cert,
                ),
            }
            .with_context(|| format!("target \"{}\": TLS to the server", target.name))?;
            let client_tls = settings.client_tls == ClientTls::Terminate;
            if client_tls && ca.is_none() {
                bail!(
                    "target \"{}\": client_tls = \"terminate\" but no agent CA was loaded",
                    target.name
                );
            }
            // The header injected with its secret: a Kubernetes target's token as
            // `Authorization: Bearer`, else the target's `inject`.
            let bearer;
            let injected = match (&target.kube, &settings.inject, &settings.credential) {
                (Some(kube), _, _) => match &kube.credential {
                    KubeCredential::Token(credential) => {
                        bearer = crate::config::InjectHeader {
                            name: "authorization".into(),
                            prefix: "Bearer ".into(),
                            suffix: String::new(),
                        };
                        Some((&bearer, credential, "token_file", "the token of"))
                    }
                    KubeCredential::ClientCert { .. } => None,
                },
                (None, Some(inject), Some(credential)) => {
                    Some((inject, credential, "password_file", "inject with"))
                }
                _ => None,
            };
            let inject =
                match injected {
                    Some((header, credential, file_key, what)) => {
                        let source = credential.source();
                        let secret = source.load().with_context(|| {
                            format!("target \"{}\": {}", target.name, credential.key(file_key))
                        })?;
                        Some(injection(header, secret).with_context(|| {
                            format!("target \"{}\": {what} {source}", target.name)
                        })?)
                    }
                    None => None,
                };
            let aws = match &target.aws {
                Some(aws) => Some(super::aws::AwsTargetRuntime {
                    credentials: super::aws::AwsCredentials::load(&aws.credentials)
                        .with_context(|| format!("target \"{}\"", target.name))?,
                    accept_any_client_key: aws.accept_any_client_key,
                    sts_endpoint: aws.sts_endpoint.clone(),
                }),
                None => None,
            };
            targets.push(Some(Arc::new(HttpTargetRuntime {
                upstream,
                client_tls,
                server_name: settings.server_name.clone(),
                inject,
                mask_body_limit: settings.mask_body_limit,
                aws,
                kube: target.kube.as_ref().map(|_| KubeTargetRuntime {
                    acting_as: acting_as.unwrap_or_else(|| "bearer token".to_owned()),
                }),
                imds: target.imds.as_ref().map(|i| super::imds::ImdsRuntime {
                    region: i.region.clone(),
                    role_name: i.role_name.clone(),
                }),
            })));
        }
        Ok(HttpRuntime { targets, ca })
    }

    /// The runtime of target `index` of the configuration this runtime was built from;
    /// `None` if that target is not an HTTP one.
    pub fn target(&self, index: usize) -> Option<&Arc<HttpTargetRuntime>> {
        self.targets.get(index).and_then(Option::as_ref)
    }
}

/// The header value `prefix + secret + suffix`. The error never shows the secret.
fn injection(inject: &crate::config::InjectHeader, secret: Secret) -> anyhow::Result<Injection> {
    let name =
        HeaderName::from_bytes(inject.name.as_bytes()).context("the header name is not valid")?;
    // A header value may not hold CR, LF or NUL; a token with a trailing newline inside
    // (the file's own final newline is already dropped) would split the header.
    if secret
        .expose()
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        bail!(
            "the secret ({} bytes) holds a control character (a line break?), which a header value cannot carry",
            secret.len()
        );
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(
        inject.prefix.len() + secret.len() + inject.suffix.len(),
    ));
    bytes.extend_from_slice(inject.prefix.as_bytes());
    bytes.extend_from_slice(secret.expose());
    bytes.extend_from_slice(inject.suffix.as_bytes());
    let mut value = HeaderValue::from_bytes(&bytes)
        .map_err(|_| anyhow::anyhow!("the value is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(Injection {
        name,
        value,
        secret,
    })
}
