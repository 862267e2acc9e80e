//! The agent's side towards the host: an SSH client (russh) that verifies the host's
//! key (known_hosts or a pinned fingerprint) and logs in with the target's key or
//! certificate.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::client;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelOpenFailure};
use tokio::sync::mpsc;

use super::known_hosts::{self, HostKeyError, Presented};
use super::runtime::SshTargetRuntime;
use crate::config::HostKeyCheck;

/// A logged-in connection to the host.
pub struct Upstream {
    pub handle: client::Handle<HostHandler>,
    /// The host key as verified (fingerprint).
    pub host_key: String,
    /// The channels the host opens towards the bot (a remote forward's connections, the
    /// forwarded agent), for the session to judge, open on the bot's side and relay.
    pub from_host: mpsc::UnboundedReceiver<FromHost>,
}

/// A channel the host opened towards the bot.
pub enum FromHost {
    /// A connection to a port the host listens on for `ssh -R`.
    ForwardedTcpip {
        channel: Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        connected_address: String,
        connected_port: u32,
        originator_address: String,
        originator_port: u32,
    },
    /// A program on the host using the forwarded agent (`ssh -A`).
    Agent {
        channel: Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
    },
}

/// The russh client handler: verifies the host key; passes the channels the host opens
/// for a remote forward or the forwarded agent to the session (which refuses those it
/// did not ask for), and refuses every other channel the host opens (session,
/// direct-tcpip, X11, Unix sockets, unknown types).
pub struct HostHandler {
    check: HostKeyCheck,
    names: Vec<String>,
    /// What the check found: the fingerprint, or why it refused.
    verdict: Arc<Mutex<Option<Result<String, HostKeyError>>>>,
    from_host: mpsc::UnboundedSender<FromHost>,
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

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        // A session gone: the message (and with it `reply`) is dropped, which refuses.
        let _ = self.from_host.send(FromHost::ForwardedTcpip {
            channel,
            reply,
            connected_address: connected_address.to_owned(),
            connected_port,
            originator_address: originator_address.to_owned(),
            originator_port,
        });
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let _ = self.from_host.send(FromHost::Agent { channel, reply });
        Ok(())
    }

    async fn server_channel_open_session(
        &mut self,
        _channel: Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        prohibit(reply).await
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<client::Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        prohibit(reply).await
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: Channel<client::Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        prohibit(reply).await
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: Channel<client::Msg>,
        _socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        prohibit(reply).await
    }
}

/// Refuses a channel the host opened that the agent never relays.
async fn prohibit(reply: client::ChannelOpenHandle) -> Result<(), russh::Error> {
    reply
        .reject(ChannelOpenFailure::AdministrativelyProhibited)
        .await;
    Ok(())
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
    let (from_host, from_host_rx) = mpsc::unbounded_channel();
    let handler = HostHandler {
        check: target.host_key.clone(),
        names,
        verdict: verdict.clone(),
        from_host,
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
    Ok(Upstream {
        handle,
        host_key,
        from_host: from_host_rx,
    })
}
