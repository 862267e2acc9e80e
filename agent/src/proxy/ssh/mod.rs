//! SSH targets (`protocol = "ssh"`): the agent is the SSH server the bot talks to and
//! the SSH client the host sees (russh on both sides).
//!
//! Towards the bot the agent presents its host key with a host certificate for the
//! address the bot dialled (and the target's `host_names`), signed by the agent's SSH
//! CA ([`ca`]): a bot whose known_hosts trusts the CA (`@cert-authority * ...`, printed
//! by `nhi-agent ssh-ca`) connects without a prompt. The bot's identity is its cgroup:
//! its authentication is accepted as it comes (none, a key, a password; journaled as
//! `ssh_login`, never the secret), and the agent logs into the host with the target's
//! key ([`upstream`]), verifying the host's key first.
//!
//! Each session channel of the bot gets a channel to the host ([`channel`]). Requests
//! are judged by policy ([`crate::policy::ssh`]) as they arrive: an exec is journaled
//! (`ssh_exec`) before it is forwarded; a denied one never reaches the host (the bot
//! reads the rule on stderr and exits 126); a held one waits for a decision. Shells,
//! subsystems and terminals are judged likewise (`ssh_channel`); forwarding requests
//! (`ssh -L`, `-R`, `-A`, X11) are refused unless a rule allows them. Channel data is
//! recorded (`ssh_data`, masked, bounded by `record_results`) before it is relayed.
//!
//! Architecture invariant (as for every protocol): a request reaches the host only
//! after the journal accepted its event (durably with `journal_fsync = "each"`); if the
//! journal refuses, the session ends.
pub mod ca;
mod channel;
pub mod events;
pub mod known_hosts;
mod reverse;
pub mod runtime;
mod sftp;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelId, Disconnect, Pty, Sig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::relay::{CloseReason, Outcome};
use crate::journal::{Event, FsyncPolicy, JournalHandle, SessionId};
use crate::mask::{Detector, DetectorSet};
use crate::policy::ssh::{SshKind, SshRequest};
use crate::policy::Verdict;
use crate::session::gate::Gate;
use crate::session::{Approver, Requester, SessionRules};
use ca::SshCa;
use channel::{FromClient, Start};
use events::{kind, SshChannel, SshLogin};
use runtime::SshTargetRuntime;

/// The built-in mask rule of SSH targets: credentials printed by commands.
pub const SSH_SECRETS_RULE: &str = "ssh-output-secrets";

/// The detectors [`SSH_SECRETS_RULE`] runs over channel data.
pub fn ssh_secret_detectors() -> DetectorSet {
    [
        Detector::AwsKey,
        Detector::GcpKey,
        Detector::GithubToken,
        Detector::PrivateKey,
        Detector::Jwt,
    ]
    .into_iter()
    .collect()
}

/// How much channel data one session records (`record_results`): `summary` (the
/// default) keeps the start of what commands read and print, `rows` much more, `none`
/// nothing but sizes and exit statuses.
const RECORD_SUMMARY_BYTES: i64 = 64 * 1024;
const RECORD_ROWS_BYTES: i64 = 16 * 1024 * 1024;

/// How long a client has for its SSH handshake and authentication (a slow upstream
/// login counts: the client is authenticated once the agent has tried the host).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What an SSH session needs from the accepting code.
pub struct SshContext<'a> {
    pub id: SessionId,
    pub journal: &'a JournalHandle,
    pub target_rt: Arc<SshTargetRuntime>,
    pub ca: Arc<SshCa>,
    pub rules: Arc<SessionRules>,
    pub orig_dst: SocketAddr,
    /// Where the connection was made: the upstream connection leaves from there.
    pub origin: super::Origin,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub approvals: Option<Arc<dyn Approver>>,
    pub requester: Requester,
    /// `Some(reason)`: the session is refused once the client is authenticated (the
    /// disk budget, the workload's connection limit), with this message.
    pub refuse: Option<String>,
}

/// What every channel of one session shares.
pub(crate) struct Shared {
    pub id: SessionId,
    pub journal: JournalHandle,
    pub rules: Arc<SessionRules>,
    pub gate: Mutex<Gate>,
    pub approvals: Option<Arc<dyn Approver>>,
    pub requester: Requester,
    pub target_rt: Arc<SshTargetRuntime>,
    next_seq: AtomicU64,
    /// Bytes of channel data the session may still record.
    record_budget: AtomicI64,
    /// Set (with the reason) when the journal refused: the session ends.
    failed: watch::Sender<Option<String>>,
    /// The client has authenticated (the agent has tried the host).
    authenticated: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Journals `events` (the pre-log write). On failure the session is marked to end
    /// and the error returned.
    pub fn record(&self, events: &[Event]) -> Result<u64, String> {
        self.journal
            .record(events)
            .map_err(|e| self.fail(e.to_string()))
    }

    /// Journals `events` and, with `journal_fsync = "each"`, waits until they are
    /// durable: for requests about to be forwarded.
    pub async fn record_durably(&self, events: &[Event]) -> Result<(), String> {
        let seq = self.record(events)?;
        if self.journal.fsync_policy() == FsyncPolicy::Each {
            self.journal
                .durable(seq)
                .await
                .map_err(|e| self.fail(e.to_string()))?;
        }
        Ok(())
    }

    fn fail(&self, why: String) -> String {
        warn!(session = self.id, error = %why, "the journal cannot record this SSH session; ending it");
        let _ = self.failed.send(Some(why.clone()));
        why
    }

    /// Takes `n` bytes of the recording budget; `false` when it ran out.
    pub fn take_budget(&self, n: usize) -> bool {
        let n = n as i64;
        self.record_budget.fetch_sub(n, Ordering::Relaxed) >= n
    }

    /// The verdict and rule for `request`.
    fn judge(&self, request: &SshRequest<'_>) -> (Verdict, Option<String>) {
        match &self.rules.policy {
            Some(p) => {
                let (v, r) = p.decide_ssh(request);
                (v, r.map(str::to_owned))
            }
            // No policy: forwarding stays refused (it opens paths the agent cannot see).
            None if request.kind.is_forwarding() => (Verdict::Deny, None),
            None => (Verdict::Allow, None),
        }
    }
}

/// Serves one intercepted SSH connection until it ends.
pub async fn serve(
    ctx: SshContext<'_>,
    client: TcpStream,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let counts = Arc::new(Counts::default());
    let ended = |counts: &Counts, reason| Outcome {
        bytes_from_client: counts.read.load(Ordering::Relaxed),
        bytes_from_server: counts.written.load(Ordering::Relaxed),
        reason,
    };
    let _ = client.set_nodelay(true);
    let mut principals = vec![ctx.orig_dst.ip().to_string()];
    principals.extend(ctx.target_rt.host_names.iter().cloned());
    let cert = match ctx.ca.host_certificate(&principals) {
        Ok(c) => c,
        Err(e) => {
            warn!(session = ctx.id, error = %e, "cannot make a host certificate; closing");
            return ended(
                &counts,
                CloseReason::Protocol(format!("host certificate: {e}")),
            );
        }
    };
    let config = Arc::new(server::Config {
        server_id: russh::SshId::Standard(
            concat!("SSH-2.0-nhi-agent_", env!("CARGO_PKG_VERSION")).into(),
        ),
        keys: vec![ctx.ca.host_key().clone()],
        certificates: vec![cert],
        // The bot's identity is its cgroup: whatever it authenticates with is accepted
        // (and journaled), at once.
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(ctx.idle_timeout),
        nodelay: true,
        ..server::Config::default()
    });
    let record_budget = match ctx.rules.record_results {
        crate::policy::RecordResults::None => 0,
        crate::policy::RecordResults::Summary => RECORD_SUMMARY_BYTES,
        crate::policy::RecordResults::Rows => RECORD_ROWS_BYTES,
    };
    let (failed, mut failed_rx) = watch::channel(None);
    let gate = ctx
        .rules
        .gate("ssh", ctx.approvals.as_ref(), &ctx.requester);
    let shared = Arc::new(Shared {
        id: ctx.id,
        journal: ctx.journal.clone(),
        rules: ctx.rules.clone(),
        gate: Mutex::new(gate),
        approvals: ctx.approvals.clone(),
        requester: ctx.requester.clone(),
        target_rt: ctx.target_rt.clone(),
        next_seq: AtomicU64::new(1),
        record_budget: AtomicI64::new(record_budget),
        failed,
        authenticated: std::sync::atomic::AtomicBool::new(false),
    });
    let handler = SshServer {
        shared: shared.clone(),
        origin: ctx.origin.clone(),
        orig_dst: ctx.orig_dst,
        connect_timeout: ctx.connect_timeout,
        upstream: None,
        failure: ctx.refuse.clone(),
        logged_in: false,
        channels: HashMap::new(),
        from_host: None,
        reverse: Arc::new(reverse::Allowed::default()),
    };
    let stream = Counting {
        inner: client,
        counts: counts.clone(),
    };
    let running = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        server::run_stream(config, stream, handler),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            debug!(session = ctx.id, error = %e, "SSH session ended before it started");
            return ended(&counts, CloseReason::Protocol(format!("SSH: {e}")));
        }
        Err(_) => {
            return ended(
                &counts,
                CloseReason::Protocol("the client did not start SSH in time".into()),
            )
        }
    };
    let handle = running.handle();
    let cap = ctx
        .rules
        .policy
        .as_ref()
        .and_then(|p| p.max_session_duration);
    let cap_sleep = async {
        match cap {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    // A client that does not authenticate within the handshake timeout is let go (as
    // sshd's LoginGraceTime does).
    let login_grace = tokio::time::sleep(HANDSHAKE_TIMEOUT);
    tokio::pin!(running, cap_sleep, login_grace);
    let disconnect = |why: String| {
        let handle = handle.clone();
        async move {
            let _ = handle
                .disconnect(Disconnect::ByApplication, why, "en".into())
                .await;
        }
    };
    let reason = loop {
        tokio::select! {
            result = &mut running => break match result {
                Ok(()) => CloseReason::ClientClosed,
                Err(SshServerError::Journal(why)) => CloseReason::JournalFailure(why),
                Err(SshServerError::Ssh(e)) => match e {
                    russh::Error::InactivityTimeout => CloseReason::IdleTimeout,
                    russh::Error::Disconnect | russh::Error::HUP => CloseReason::ClientClosed,
                    russh::Error::IO(e) => CloseReason::ClientReset(e.to_string()),
                    other => CloseReason::Protocol(format!("SSH: {other}")),
                },
            },
            _ = &mut login_grace, if !shared.authenticated.load(Ordering::Relaxed) => {
                let why = format!("the client did not authenticate within {HANDSHAKE_TIMEOUT:?}");
                disconnect(format!("nhi-agent: {why}")).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
                break CloseReason::Protocol(why);
            }
            _ = &mut cap_sleep => {
                let why = format!(
                    "max_session_duration ({}) reached",
                    humantime::format_duration(cap.unwrap_or_default())
                );
                disconnect(format!("nhi-agent: {why}")).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
                break CloseReason::PolicyLimit(why);
            }
            changed = cancel.changed() => {
                if changed.is_err() || *cancel.borrow() {
                    disconnect("nhi-agent: the agent is shutting down".into()).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
                    break CloseReason::AgentShutdown;
                }
            }
            changed = failed_rx.changed() => {
                let failure = failed_rx.borrow().clone();
                if changed.is_ok() {
                    if let Some(why) = failure {
                        disconnect(format!("nhi-agent: the audit journal cannot record this session ({why}); nothing more is forwarded")).await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
                        break CloseReason::JournalFailure(why);
                    }
                }
            }
        }
    };
    info!(session = ctx.id, reason = %reason, "SSH session ended");
    ended(&counts, reason)
}

/// Errors that end a session from inside the russh handler.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SshServerError {
    #[error("{0}")]
    Ssh(#[from] russh::Error),
    #[error("journal: {0}")]
    Journal(String),
}

/// The russh server handler of one session.
struct SshServer {
    shared: Arc<Shared>,
    origin: super::Origin,
    orig_dst: SocketAddr,
    connect_timeout: Duration,
    upstream: Option<Arc<russh::client::Handle<upstream::HostHandler>>>,
    /// Why the session cannot go on (the host refused, the disk budget, ...): the
    /// client is told once it is authenticated.
    failure: Option<String>,
    logged_in: bool,
    channels: HashMap<ChannelId, channel::Link>,
    /// The channels the host opens towards the bot, until `auth_succeeded` serves them.
    from_host: Option<mpsc::UnboundedReceiver<upstream::FromHost>>,
    /// The remote forwards and agent forwarding the policy allowed.
    reverse: Arc<reverse::Allowed>,
}

impl SshServer {
    /// The client authenticated (any method): log into the host, once.
    async fn login(
        &mut self,
        user: &str,
        method: &str,
        client_key: Option<String>,
    ) -> Result<Auth, SshServerError> {
        if self.logged_in {
            return Ok(Auth::Accept);
        }
        self.logged_in = true;
        self.shared.authenticated.store(true, Ordering::Relaxed);
        let target = &self.shared.target_rt;
        let upstream_user = self
            .shared
            .rules
            .policy
            .as_ref()
            .and_then(|p| p.ssh_user.clone())
            .or_else(|| target.user.clone())
            .unwrap_or_else(|| user.to_owned());
        let mut event = SshLogin {
            user: user.to_owned(),
            method: method.to_owned(),
            client_key,
            upstream_user: upstream_user.clone(),
            agent_key: target.key_fingerprint.clone(),
            agent_cert: target.cert.is_some(),
            ..SshLogin::default()
        };
        if let Some(why) = &self.failure {
            event.outcome = "refused".into();
            event.reason = Some(why.clone());
        } else {
            match upstream::connect(
                &self.origin,
                self.orig_dst,
                self.connect_timeout,
                target,
                &upstream_user,
            )
            .await
            {
                Ok(up) => {
                    event.outcome = "ok".into();
                    event.host_key = Some(up.host_key.clone());
                    self.upstream = Some(Arc::new(up.handle));
                    self.from_host = Some(up.from_host);
                }
                Err(e) => {
                    warn!(session = self.shared.id, error = %e, "cannot log into the SSH host");
                    event.outcome = "failed".into();
                    event.reason = Some(e.to_string());
                    self.failure = Some(e.to_string());
                }
            }
        }
        self.shared
            .record(&[Event::of(self.shared.id, kind::LOGIN, &event)])
            .map_err(SshServerError::Journal)?;
        Ok(Auth::Accept)
    }

    /// Journals a request on `channel` that is not an exec (pty, shell, subsystem,
    /// env, ...).
    fn record_request(&self, channel: ChannelId, event: SshChannel) -> Result<(), SshServerError> {
        let event = SshChannel {
            channel: channel_number(channel),
            event: "request".into(),
            ..event
        };
        self.shared
            .record(&[Event::of(self.shared.id, kind::CHANNEL, &event)])
            .map(|_| ())
            .map_err(SshServerError::Journal)
    }

    fn send(&self, channel: ChannelId, msg: FromClient) {
        if let Some(link) = self.channels.get(&channel) {
            let _ = link.tx.send(msg);
        }
    }

    /// Judges a start request (exec, shell, subsystem) of `channel`, journals it, answers
    /// the client and hands it to the channel.
    async fn start(
        &mut self,
        channel: ChannelId,
        kind: SshKind,
        detail: Option<String>,
        session: &mut Session,
    ) -> Result<(), SshServerError> {
        let pty = self.channels.get(&channel).is_some_and(|l| l.pty);
        let request = SshRequest {
            kind,
            command: detail.as_deref().filter(|_| kind == SshKind::Exec),
        };
        let (verdict, rule) = self.shared.judge(&request);
        let seq = self.shared.next_seq();
        let start = channel::judge_start(
            &self.shared,
            channel_number(channel),
            seq,
            kind,
            detail,
            pty,
            verdict,
            rule,
        )
        .await
        .map_err(SshServerError::Journal)?;
        // A refused subsystem is a channel failure (sftp says so); a refused exec or
        // shell runs "nothing": the rule on stderr, exit status 126.
        if matches!(start, Start::Refused { .. }) && kind == SshKind::Subsystem {
            session.channel_failure(channel)?;
        } else {
            session.channel_success(channel)?;
        }
        self.send(channel, FromClient::Start(start));
        Ok(())
    }

    /// Judges a forwarding request; returns whether it is allowed.
    fn forwarding(
        &self,
        channel: Option<ChannelId>,
        kind: SshKind,
        detail: String,
    ) -> Result<bool, SshServerError> {
        let (verdict, rule) = self.shared.judge(&SshRequest {
            kind,
            command: None,
        });
        let action = self
            .shared
            .gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .action(verdict, rule.as_deref());
        // Forwarding is never held (a tunnel is opened or refused at once: `approve`
        // refuses it). direct-tcpip, tcpip-forward and agent are relayed; X11 and Unix
        // sockets are refused even when a rule allows them, and the journal says why.
        let allowed = matches!(
            action,
            crate::session::gate::Action::Forward | crate::session::gate::Action::PassOnStanding(_)
        );
        let supported = matches!(
            kind,
            SshKind::DirectTcpip | SshKind::TcpipForward | SshKind::Agent
        );
        let event = SshChannel {
            channel: channel.map(channel_number).unwrap_or(u32::MAX),
            event: "request".into(),
            kind: kind.as_str().into(),
            detail: Some(detail),
            seq: Some(self.shared.next_seq()),
            verdict: Some(verdict.as_str().into()),
            rule: rule.clone(),
            action: Some(
                if allowed && supported {
                    "forwarded"
                } else {
                    "refused"
                }
                .into(),
            ),
            reason: (allowed && !supported).then(|| {
                format!(
                    "allowed by policy, but the agent does not relay {} yet",
                    kind.as_str()
                )
            }),
            ..SshChannel::default()
        };
        self.shared
            .record(&[Event::of(self.shared.id, kind::CHANNEL, &event)])
            .map_err(SshServerError::Journal)?;
        if !(allowed && supported) {
            info!(session = self.shared.id, request = kind.as_str(), rule = ?rule, "SSH forwarding refused");
        }
        Ok(allowed && supported)
    }
}

/// A signal as SSH names it (`TERM`, `INT`, or the name a peer sent).
pub(crate) fn signal_name(signal: &Sig) -> String {
    match signal {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

/// A channel id as the journal names it (the client's side of the agent's server).
fn channel_number(id: ChannelId) -> u32 {
    id.number()
}

impl server::Handler for SshServer {
    type Error = SshServerError;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.login(user, "none", None).await
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        // The password is never kept, logged or journaled.
        self.login(user, "password", None).await
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = known_hosts::fingerprint(key.public_key.key_data());
        self.login(user, "publickey", Some(fp)).await
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        let fp = known_hosts::fingerprint(certificate.public_key());
        self.login(user, "publickey", Some(fp)).await
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.login(user, "keyboard-interactive", None).await
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(from_host) = self.from_host.take() {
            tokio::spawn(reverse::run(
                self.shared.clone(),
                self.reverse.clone(),
                from_host,
                session.handle(),
            ));
        }
        if let Some(why) = &self.failure {
            session.disconnect(
                Disconnect::ByApplication,
                &format!("nhi-agent: {why}"),
                "en",
            )?;
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(upstream) = self.upstream.clone() else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let id = channel.id();
        let event = SshChannel {
            channel: channel_number(id),
            event: "open".into(),
            kind: "session".into(),
            ..SshChannel::default()
        };
        self.shared
            .record(&[Event::of(self.shared.id, kind::CHANNEL, &event)])
            .map_err(SshServerError::Journal)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let flow = Arc::new(channel::Flow::new());
        self.channels.insert(
            id,
            channel::Link {
                tx,
                flow: flow.clone(),
                pty: false,
            },
        );
        tokio::spawn(channel::run(
            self.shared.clone(),
            upstream,
            channel::Twin::Session,
            channel,
            reply,
            rx,
            flow,
            session.handle(),
        ));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = self.forwarding(
            Some(channel.id()),
            SshKind::DirectTcpip,
            format!("{host_to_connect}:{port_to_connect}"),
        )?;
        let Some(upstream) = self.upstream.clone().filter(|_| allowed) else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        // The host makes the connection (as `ssh -L` without the agent would); the
        // bytes are counted, not recorded.
        let (tx, rx) = mpsc::unbounded_channel();
        let flow = Arc::new(channel::Flow::new());
        self.channels.insert(
            channel.id(),
            channel::Link {
                tx,
                flow: flow.clone(),
                pty: false,
            },
        );
        tokio::spawn(channel::run(
            self.shared.clone(),
            upstream,
            channel::Twin::DirectTcpip {
                host: host_to_connect.to_owned(),
                port: port_to_connect,
                originator: originator_address.to_owned(),
                originator_port,
            },
            channel,
            reply,
            rx,
            flow,
            session.handle(),
        ));
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.forwarding(None, SshKind::Streamlocal, socket_path.to_owned())?;
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        originator_address: &str,
        originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.forwarding(
            None,
            SshKind::X11,
            format!("{originator_address}:{originator_port}"),
        )?;
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if !self.forwarding(None, SshKind::TcpipForward, format!("{address}:{port}"))? {
            return Ok(false);
        }
        let Some(host) = &self.upstream else {
            return Ok(false);
        };
        // The host listens (as it would for the bot without the agent); the
        // connections it gets come back through `reverse`, allowed before the host
        // listens so that the first one is not refused.
        let requested = *port;
        if requested != 0 {
            self.reverse.add_forward(requested);
        }
        match host.tcpip_forward(address, requested).await {
            Ok(bound) => {
                if requested == 0 {
                    *port = bound;
                    self.reverse.add_forward(bound);
                }
                Ok(true)
            }
            Err(e) => {
                self.reverse.remove_forward(requested);
                info!(session = self.shared.id, %address, port = *port, error = %e, "the host refused the remote forward");
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.reverse.remove_forward(port);
        let Some(host) = &self.upstream else {
            return Ok(false);
        };
        Ok(host.cancel_tcpip_forward(address, port).await.is_ok())
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.forwarding(None, SshKind::Streamlocal, socket_path.to_owned())?;
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if !self.forwarding(Some(channel), SshKind::Agent, "auth-agent".into())? {
            return Ok(false);
        }
        // The host's twin channel asks for agent forwarding; the host's agent channels
        // come back through `reverse`, allowed from now on.
        self.reverse.allow_agent();
        self.send(channel, FromClient::AgentForward);
        Ok(true)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The cookie is a credential: never journaled.
        self.forwarding(
            Some(channel),
            SshKind::X11,
            format!("{x11_auth_protocol} screen {x11_screen_number}"),
        )?;
        session.channel_failure(channel)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (verdict, rule) = self.shared.judge(&SshRequest {
            kind: SshKind::Pty,
            command: None,
        });
        let action = self
            .shared
            .gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .action(verdict, rule.as_deref());
        // A terminal is granted or not; holding one has no meaning (the shell or
        // command it is for is judged, and held, on its own).
        let refused = matches!(action, crate::session::gate::Action::Refuse);
        self.record_request(
            channel,
            SshChannel {
                kind: "pty".into(),
                detail: Some(term.to_owned()),
                verdict: Some(verdict.as_str().into()),
                rule,
                action: Some(if refused { "refused" } else { "forwarded" }.into()),
                cols: Some(col_width),
                rows: Some(row_height),
                ..SshChannel::default()
            },
        )?;
        if refused {
            session.channel_failure(channel)?;
            return Ok(());
        }
        if let Some(link) = self.channels.get_mut(&channel) {
            link.pty = true;
        }
        session.channel_success(channel)?;
        self.send(
            channel,
            FromClient::Pty {
                term: term.to_owned(),
                cols: col_width,
                rows: row_height,
                pix_width,
                pix_height,
                modes: modes.to_vec(),
            },
        );
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The name is journaled, not the value (environment values carry tokens).
        self.record_request(
            channel,
            SshChannel {
                kind: "env".into(),
                detail: Some(variable_name.to_owned()),
                action: Some("forwarded".into()),
                ..SshChannel::default()
            },
        )?;
        session.channel_success(channel)?;
        self.send(
            channel,
            FromClient::Env {
                name: variable_name.to_owned(),
                value: variable_value.to_owned(),
            },
        );
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, SshKind::Shell, None, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A command rules cannot read the way the host's shell does is refused.
        let command = match std::str::from_utf8(data) {
            Ok(c) if !c.contains('\0') => c.to_owned(),
            _ => {
                let shown = String::from_utf8_lossy(data).replace('\0', "\\0");
                let seq = self.shared.next_seq();
                let start =
                    channel::refuse_unreadable(&self.shared, channel_number(channel), seq, shown)
                        .await
                        .map_err(SshServerError::Journal)?;
                session.channel_success(channel)?;
                self.send(channel, FromClient::Start(start));
                return Ok(());
            }
        };
        self.start(channel, SshKind::Exec, Some(command), session)
            .await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, SshKind::Subsystem, Some(name.to_owned()), session)
            .await
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.record_request(
            channel,
            SshChannel {
                kind: "window-change".into(),
                cols: Some(col_width),
                rows: Some(row_height),
                action: Some("forwarded".into()),
                ..SshChannel::default()
            },
        )?;
        self.send(
            channel,
            FromClient::WindowChange {
                cols: col_width,
                rows: row_height,
                pix_width,
                pix_height,
            },
        );
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.record_request(
            channel,
            SshChannel {
                kind: "signal".into(),
                detail: Some(signal_name(&signal)),
                action: Some("forwarded".into()),
                ..SshChannel::default()
            },
        )?;
        self.send(channel, FromClient::Signal(signal));
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.client_data(channel, None, data).await
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        code: u32,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.client_data(channel, Some(code), data).await
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, FromClient::Eof);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(link) = self.channels.remove(&channel) {
            let _ = link.tx.send(FromClient::Close);
        }
        Ok(())
    }
}

impl SshServer {
    async fn client_data(
        &mut self,
        channel: ChannelId,
        ext: Option<u32>,
        data: &[u8],
    ) -> Result<(), SshServerError> {
        let Some(link) = self.channels.get(&channel) else {
            return Ok(());
        };
        let permit = link
            .flow
            .admit(data.len())
            .await
            .map_err(|why| SshServerError::Journal(why.to_owned()))?;
        let _ = link.tx.send(FromClient::Data {
            data: bytes::Bytes::copy_from_slice(data),
            ext,
            permit,
        });
        Ok(())
    }
}

/// Byte totals of the client connection (SSH bytes, encrypted).
#[derive(Default)]
struct Counts {
    read: AtomicU64,
    written: AtomicU64,
}

struct Counting {
    inner: TcpStream,
    counts: Arc<Counts>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.counts.read.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.counts.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
