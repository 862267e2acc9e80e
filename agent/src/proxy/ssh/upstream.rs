//! The agent's side towards the host: an SSH client (russh) that verifies the host's
//! key (known_hosts or a pinned fingerprint) and logs in with the target's key or
//! certificate.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::client;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use super::known_hosts::{self, HostKeyError, Presented};
use super::runtime::SshTargetRuntime;
use crate::config::HostKeyCheck;

/// A logged-in connection to the host.
pub struct Upstream {
    pub handle: client::Handle<HostHandler>,
    /// The host key as verified (fingerprint).
    pub host_key: String,
}

/// The russh client handler: verifies the host key; refuses every channel the host
/// opens towards the client (forwarded ports, agent, X11), which the agent never asked
/// for.
pub struct HostHandler {
    check: HostKeyCheck,
    names: Vec<String>,
    /// What the check found: the fingerprint, or why it refused.
    verdict: Arc<Mutex<Option<Result<String, HostKeyError>>>>,
}

impl client::Handler for HostHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let presented = match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => Presented::Key(key),
            PublicKeyOrCertificate::Certificate(c) => Presented::Certificate(c),
        };
        let fingerprint = known_hosts::fingerprint(match &presented {
            Presented::Key(k) => k.key_data(),
            Presented::Certificate(c) => c.public_key(),
        });
        let host = self.names.first().cloned().unwrap_or_default();
        let result = match &self.check {
            HostKeyCheck::Fingerprint(pinned) => {
                known_hosts::check_pinned(&host, &presented, pinned)
            }
            HostKeyCheck::KnownHosts(path) => match std::fs::read_to_string(path) {
                Ok(text) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    known_hosts::check_known_hosts(
                        &text,
                        &path.display().to_string(),
                        &self.names,
                        &presented,
                        now,
                    )
                }
                Err(e) => Err(HostKeyError::Unknown {
                    host,
                    fingerprint: fingerprint.clone(),
                    file: format!("{} ({e})", path.display()),
                }),
            },
        };
        let ok = result.is_ok();
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(result.map(|()| fingerprint));
        Ok(ok)
    }
}

/// Why the agent could not log into the host (the client is told, the journal says).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the host {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    HostKey(HostKeyError),
    #[error("SSH with the host failed: {0}")]
    Ssh(String),
    #[error("the host refused the agent's key{cert} for user {user:?} (is the agent's public key in that user's authorized_keys?)")]
    Refused { user: String, cert: &'static str },
}

/// Connects to `addr` (from where the client's connection was made), verifies the
/// host's key and logs in as `user` with the target's key.
pub async fn connect(
    origin: &super::super::Origin,
    addr: SocketAddr,
    connect_timeout: Duration,
    target: &SshTargetRuntime,
    user: &str,
) -> Result<Upstream, UpstreamError> {
    let stream = origin
        .connect(addr, connect_timeout)
        .await
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let mut names = vec![known_hosts::known_hosts_name(
        &addr.ip().to_string(),
        addr.port(),
    )];
    names.extend(
        target
            .host_names
            .iter()
            .map(|n| known_hosts::known_hosts_name(n, addr.port())),
    );
    let verdict = Arc::new(Mutex::new(None));
    let handler = HostHandler {
        check: target.host_key.clone(),
        names,
        verdict: verdict.clone(),
    };
    let config = Arc::new(client::Config {
        client_id: russh::SshId::Standard(
            concat!("SSH-2.0-nhi-agent_", env!("CARGO_PKG_VERSION")).into(),
        ),
        // The bot's own keepalives and timeouts govern the session; the agent ends it
        // when either side closes.
        inactivity_timeout: None,
        nodelay: true,
        ..client::Config::default()
    });
    let connected = tokio::time::timeout(
        connect_timeout.max(Duration::from_secs(10)),
        client::connect_stream(config, stream, handler),
    )
    .await;
    let host_verdict = || verdict.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut handle = match connected {
        Ok(Ok(handle)) => handle,
        Ok(Err(e)) => {
            return Err(match host_verdict() {
                Some(Err(why)) => UpstreamError::HostKey(why),
                _ => UpstreamError::Ssh(e.to_string()),
            })
        }
        Err(_) => {
            return Err(UpstreamError::Ssh(
                "the SSH handshake with the host timed out".into(),
            ))
        }
    };
    let host_key = match host_verdict() {
        Some(Ok(fingerprint)) => fingerprint,
        Some(Err(why)) => return Err(UpstreamError::HostKey(why)),
        None => {
            return Err(UpstreamError::Ssh(
                "the host's key was never checked".into(),
            ))
        }
    };
    let auth = match &target.cert {
        Some(cert) => {
            handle
                .authenticate_openssh_cert(user, target.key.clone(), cert.clone())
                .await
        }
        None => {
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| UpstreamError::Ssh(e.to_string()))?
                .flatten();
            handle
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(target.key.clone(), hash))
                .await
        }
    }
    .map_err(|e| UpstreamError::Ssh(e.to_string()))?;
    if !auth.success() {
        return Err(UpstreamError::Refused {
            user: user.to_owned(),
            cert: if target.cert.is_some() {
                " and certificate"
            } else {
                ""
            },
        });
    }
    Ok(Upstream { handle, host_key })
}
