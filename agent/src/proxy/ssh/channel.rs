//! One session channel of the bot and its channel to the host: requests forwarded once
//! judged and journaled, data recorded and relayed both ways, the end journaled.
//!
//! Three tasks per channel: client → host (requests and stdin, in order, holds
//! included), host → agent (reads the host's channel, records, passes on) and agent →
//! client (writes to the bot's channel, waiting for its window). Flow control: russh
//! refills a channel's window when data *arrives*, so backpressure is the russh session
//! task waiting for us; each direction buffers at most [`FLOW_CAP`] bytes. A session
//! task blocked on a full client → host buffer cannot read the bot's window adjustments,
//! so when the other direction is itself waiting for the bot's window, the client → host
//! buffer is allowed past its cap (up to [`FLOW_HARD_CAP`], then the session ends with
//! that reason) rather than deadlocking both.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::server::{self, Msg};
use russh::{Channel, ChannelMsg, ChannelWriteHalf, Pty, Sig};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info};

use super::events::{kind, SshChannel, SshData, SshExec};
use super::Shared;
use crate::journal::Event;
use crate::policy::ssh::SshKind;
use crate::policy::Verdict;
use crate::session::approval::start_hold;
use crate::session::gate::{self, approval_on_standing, Action};
use crate::session::{HoldOutcome, HoldWait};

/// Bytes buffered per direction of a channel before the sender waits.
pub const FLOW_CAP: usize = 8 * 1024 * 1024;
/// Bytes the client → host direction may buffer while the host → client direction
/// waits for the bot: past it the session ends.
pub const FLOW_HARD_CAP: usize = 64 * 1024 * 1024;
/// The exit status of a refused command (as a shell's for a command it cannot run).
pub const REFUSED_STATUS: u32 = 126;

/// The handler's side of a channel.
pub struct Link {
    pub tx: mpsc::UnboundedSender<FromClient>,
    pub flow: Arc<Flow>,
    /// A terminal was granted on the channel.
    pub pty: bool,
}

/// The buffers of one channel (see the module documentation).
pub struct Flow {
    to_host: Arc<Semaphore>,
    to_client: Arc<Semaphore>,
    /// The host → client direction waits for the bot's window.
    client_stalled: AtomicBool,
    overdraft: AtomicUsize,
}

/// Bytes admitted into a buffer; released when dropped (once relayed).
pub struct Admitted {
    _permit: Option<OwnedSemaphorePermit>,
    overdraft: Option<(Arc<Flow>, usize)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((flow, n)) = self.overdraft.take() {
            flow.overdraft.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

impl Flow {
    pub fn new() -> Flow {
        Flow {
            to_host: Arc::new(Semaphore::new(FLOW_CAP)),
            to_client: Arc::new(Semaphore::new(FLOW_CAP)),
            client_stalled: AtomicBool::new(false),
            overdraft: AtomicUsize::new(0),
        }
    }

    /// Admits `n` bytes from the client, waiting while the buffer is full unless the
    /// other direction is stalled on the client.
    pub async fn admit(self: &Arc<Self>, n: usize) -> Result<Admitted, &'static str> {
        let n = n.min(FLOW_CAP) as u32;
        loop {
            if let Ok(p) = self.to_host.clone().try_acquire_many_owned(n) {
                return Ok(Admitted {
                    _permit: Some(p),
                    overdraft: None,
                });
            }
            if self.client_stalled.load(Ordering::Relaxed) {
                let total = self.overdraft.fetch_add(n as usize, Ordering::Relaxed) + n as usize;
                if total > FLOW_HARD_CAP {
                    self.overdraft.fetch_sub(n as usize, Ordering::Relaxed);
                    return Err("flow control: the host takes no input while the client reads no output; more than 64 MiB would be buffered");
                }
                return Ok(Admitted {
                    _permit: None,
                    overdraft: Some((self.clone(), n as usize)),
                });
            }
            match tokio::time::timeout(
                Duration::from_millis(50),
                self.to_host.clone().acquire_many_owned(n),
            )
            .await
            {
                Ok(Ok(p)) => {
                    return Ok(Admitted {
                        _permit: Some(p),
                        overdraft: None,
                    })
                }
                Ok(Err(_)) => return Err("flow control closed"),
                Err(_) => continue,
            }
        }
    }

    /// Admits `n` bytes from the host, noting while it waits that the client is slow.
    async fn admit_from_host(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let n = n.min(FLOW_CAP) as u32;
        if let Ok(p) = self.to_client.clone().try_acquire_many_owned(n) {
            return Some(p);
        }
        self.client_stalled.store(true, Ordering::Relaxed);
        let p = self.to_client.clone().acquire_many_owned(n).await.ok();
        self.client_stalled.store(false, Ordering::Relaxed);
        p
    }
}

/// What the handler passes to a channel, in the client's order.
pub enum FromClient {
    Pty {
        term: String,
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
        modes: Vec<(Pty, u32)>,
    },
    Env {
        name: String,
        value: String,
    },
    Start(Start),
    WindowChange {
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
    },
    Signal(Sig),
    /// The bot's agent is forwarded (allowed): ask the host's twin channel for it.
    AgentForward,
    Data {
        data: Bytes,
        ext: Option<u32>,
        permit: Admitted,
    },
    Eof,
    Close,
}

/// A judged start request (exec, shell, subsystem), already journaled.
pub enum Start {
    Forward {
        kind: SshKind,
        detail: Option<String>,
    },
    Refused {
        message: String,
    },
    Held {
        seq: u64,
        kind: SshKind,
        detail: Option<String>,
        rule: Option<String>,
        wait: HoldWait,
    },
}

/// Judges a start request and journals it (durably, before anything is forwarded):
/// `ssh_exec` for an exec, `ssh_channel` for a shell or subsystem; a hold is registered
/// with the approvers and announced.
#[allow(clippy::too_many_arguments)]
pub async fn judge_start(
    shared: &Shared,
    channel: u32,
    seq: u64,
    kind: SshKind,
    detail: Option<String>,
    pty: bool,
    verdict: Verdict,
    rule: Option<String>,
) -> Result<Start, String> {
    let action = shared
        .gate
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .action(verdict, rule.as_deref());
    let shown = || {
        let what = match (&kind, &detail) {
            (SshKind::Exec, Some(c)) => c.clone(),
            (SshKind::Subsystem, Some(s)) => format!("subsystem {s}"),
            _ => kind.as_str().to_owned(),
        };
        shared.rules.masks.mask_text(&what).into_owned()
    };
    let action_name = match &action {
        Action::Forward | Action::PassOnStanding(_) => "forwarded",
        Action::Hold => "held",
        Action::Refuse => "refused",
    };
    let event = match (kind, &detail) {
        (SshKind::Exec, Some(command)) => Event::of(
            shared.id,
            kind::EXEC,
            &SshExec {
                seq,
                channel,
                command: shared.rules.masks.mask_text(command).into_owned(),
                verdict: verdict.as_str().into(),
                rule: rule.clone(),
                enforced: shared.rules.enforce,
                action: action_name.into(),
                pty,
                reason: None,
            },
        ),
        _ => Event::of(
            shared.id,
            kind::CHANNEL,
            &SshChannel {
                channel,
                event: "request".into(),
                kind: kind.as_str().into(),
                detail: detail.clone(),
                seq: Some(seq),
                verdict: Some(verdict.as_str().into()),
                rule: rule.clone(),
                action: Some(action_name.into()),
                ..SshChannel::default()
            },
        ),
    };
    let mut events = vec![event];
    let start = match action {
        Action::Forward => {
            let would_hold = {
                let mut g = shared.gate.lock().unwrap_or_else(|p| p.into_inner());
                g.observe(verdict, seq, rule.as_deref(), shown);
                g.take_would_hold()
            };
            if let Some(a) = &shared.approvals {
                for request in would_hold {
                    a.would_hold(&shared.requester, request);
                }
            }
            Start::Forward { kind, detail }
        }
        Action::PassOnStanding(standing) => {
            events.push(Event::of(
                shared.id,
                gate::APPROVAL,
                &approval_on_standing(seq, &standing),
            ));
            Start::Forward { kind, detail }
        }
        Action::Refuse => Start::Refused {
            message: refusal_message(kind, rule.as_deref(), "refused by policy rule"),
        },
        Action::Hold => {
            let request = shared
                .gate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .hold_request(seq, shown(), rule.clone());
            let (announcement, wait) =
                start_hold(shared.approvals.as_ref(), &shared.requester, request);
            if let Some(a) = announcement {
                events.push(Event::of(shared.id, gate::APPROVAL_REQUEST, &a));
            }
            info!(session = shared.id, seq, rule = ?rule, "SSH request held for approval");
            Start::Held {
                seq,
                kind,
                detail,
                rule,
                wait,
            }
        }
    };
    shared.record_durably(&events).await?;
    Ok(start)
}

/// An exec whose command is not UTF-8 or holds a NUL: refused (rules could not read it
/// as the host's shell does) and journaled.
pub async fn refuse_unreadable(
    shared: &Shared,
    channel: u32,
    seq: u64,
    command: String,
) -> Result<Start, String> {
    let reason = "the command is not UTF-8 text or contains a NUL byte";
    let event = SshExec {
        seq,
        channel,
        command: shared.rules.masks.mask_text(&command).into_owned(),
        verdict: Verdict::Deny.as_str().into(),
        rule: None,
        enforced: true,
        action: "refused".into(),
        pty: false,
        reason: Some(reason.into()),
    };
    shared
        .record_durably(&[Event::of(shared.id, kind::EXEC, &event)])
        .await?;
    Ok(Start::Refused {
        message: format!("nhi-agent: {reason}; refused\r\n"),
    })
}

fn refusal_message(kind: SshKind, rule: Option<&str>, what: &str) -> String {
    format!(
        "nhi-agent: {} {what} \"{}\"\r\n",
        match kind {
            SshKind::Exec => "command",
            SshKind::Shell => "shell",
            _ => "request",
        },
        rule.unwrap_or("(default)")
    )
}

/// What goes to the bot's channel, in order.
enum ToClient {
    Data {
        data: Bytes,
        ext: Option<u32>,
        _permit: Option<OwnedSemaphorePermit>,
    },
    Eof,
    ExitStatus(u32),
    ExitSignal {
        signal: Sig,
        core_dumped: bool,
        message: String,
    },
    /// Refused by the agent: the message on stderr, exit status 126, end.
    Refuse(String),
    Close,
}

/// What the journal says at the channel's end.
#[derive(Default)]
struct Stats {
    bytes_in: u64,
    bytes_out: u64,
    exit_status: Option<u32>,
    exit_signal: Option<String>,
    truncated: bool,
    /// The channel runs the sftp subsystem (its data is not recorded as text).
    sftp: bool,
    /// A tunnel (direct-tcpip): bytes are counted, not recorded.
    raw: bool,
    /// The channel has a terminal: stdin is not recorded (what the terminal echoes is,
    /// in stdout; what it does not echo, a password typed at a prompt, must not be).
    pty: bool,
    /// What the channel was started for (`exec`, `shell`, `subsystem sftp`), for the
    /// close event.
    started: Option<String>,
    reason: Option<String>,
}

/// The channel to open on the host for a channel of the bot.
pub enum Twin {
    Session,
    /// A tunnel the policy allowed: the host connects to `host:port`.
    DirectTcpip {
        host: String,
        port: u32,
        originator: String,
        originator_port: u32,
    },
}

/// Runs one channel of the bot: opens its twin on the host, answers the bot's open,
/// then relays until both ends closed; journals the end.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    shared: Arc<Shared>,
    host: Arc<russh::client::Handle<super::upstream::HostHandler>>,
    twin: Twin,
    client: Channel<Msg>,
    reply: server::ChannelOpenHandle,
    rx: mpsc::UnboundedReceiver<FromClient>,
    flow: Arc<Flow>,
    server: server::Handle,
) {
    let number = client.id().number();
    let (kind_name, raw) = match &twin {
        Twin::Session => ("session", false),
        Twin::DirectTcpip { .. } => ("direct-tcpip", true),
    };
    let opened = match twin {
        Twin::Session => host.channel_open_session().await,
        Twin::DirectTcpip {
            host: to,
            port,
            originator,
            originator_port,
        } => {
            host.channel_open_direct_tcpip(to, port, originator, originator_port)
                .await
        }
    };
    let upstream = match opened {
        Ok(c) => c,
        Err(e) => {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            let event = SshChannel {
                channel: number,
                event: "close".into(),
                kind: kind_name.into(),
                reason: Some(format!("the host refused the channel: {e}")),
                ..SshChannel::default()
            };
            let _ = shared.record(&[Event::of(shared.id, kind::CHANNEL, &event)]);
            return;
        }
    };
    reply.accept().await;
    let (host_read, host_write) = upstream.split();
    let (client_read, client_write) = client.split();
    // Client messages arrive through the handler, in order (see `FromClient`).
    drop(client_read);
    let stats = Arc::new(Mutex::new(Stats {
        raw,
        ..Stats::default()
    }));
    let (to_client, to_client_rx) = mpsc::unbounded_channel();
    let client_id = client_write.id();
    // russh forgets a channel once *we* closed it, so the peer's answering close never
    // reaches the task waiting for it: each side says so itself.
    let (host_closed, host_closed_rx) = watch::channel(false);
    let (client_closed, client_closed_rx) = watch::channel(false);
    let to_client_a = to_client.clone();
    let sftp_state = Mutex::new(super::sftp::SftpState::default());
    let to_client_end = to_client.clone();
    tokio::join!(
        async {
            let mut client_closed = client_closed_rx;
            tokio::select! {
                _ = client_to_host(&shared, number, rx, &host_write, to_client_a, &stats, &sftp_state) => {}
                _ = client_closed.wait_for(|c| *c) => {}
            }
            let _ = host_write.close().await;
            let _ = host_closed.send(true);
        },
        async {
            let mut host_closed = host_closed_rx;
            tokio::select! {
                _ = host_to_agent(&shared, number, host_read, to_client, &flow, &stats, &sftp_state) => {}
                _ = host_closed.wait_for(|c| *c) => {
                    let _ = to_client_end.send(ToClient::Close);
                }
            }
        },
        async {
            agent_to_client(client_write, server, client_id, to_client_rx).await;
            let _ = client_closed.send(true);
        },
    );
    let stats = std::mem::take(&mut *stats.lock().unwrap_or_else(|p| p.into_inner()));
    let event = SshChannel {
        channel: number,
        event: "close".into(),
        kind: kind_name.into(),
        detail: stats.started,
        exit_status: stats.exit_status,
        exit_signal: stats.exit_signal,
        bytes_in: Some(stats.bytes_in),
        bytes_out: Some(stats.bytes_out),
        truncated: stats.truncated,
        reason: stats.reason,
        ..SshChannel::default()
    };
    let _ = shared.record(&[Event::of(shared.id, kind::CHANNEL, &event)]);
    debug!(session = shared.id, channel = number, "SSH channel closed");
}

/// Records channel data (masked) if the session's budget allows; returns whether it did.
fn record_data(shared: &Shared, channel: u32, stream: &str, data: &[u8]) -> Result<bool, String> {
    if !shared.take_budget(data.len()) {
        return Ok(false);
    }
    let text = String::from_utf8_lossy(data);
    let event = SshData {
        channel,
        stream: stream.into(),
        text: shared.rules.masks.mask_text(&text).into_owned(),
        bytes: data.len() as u64,
    };
    shared.record(&[Event::of(shared.id, kind::DATA, &event)])?;
    Ok(true)
}

async fn client_to_host(
    shared: &Shared,
    channel: u32,
    mut rx: mpsc::UnboundedReceiver<FromClient>,
    host: &ChannelWriteHalf<russh::client::Msg>,
    to_client: mpsc::UnboundedSender<ToClient>,
    stats: &Mutex<Stats>,
    sftp_state: &Mutex<super::sftp::SftpState>,
) {
    while let Some(msg) = rx.recv().await {
        let sent = match msg {
            FromClient::Pty {
                term,
                cols,
                rows,
                pix_width,
                pix_height,
                modes,
            } => {
                stats.lock().unwrap_or_else(|p| p.into_inner()).pty = true;
                host.request_pty(false, &term, cols, rows, pix_width, pix_height, &modes)
                    .await
            }
            FromClient::Env { name, value } => host.set_env(false, name, value).await,
            FromClient::WindowChange {
                cols,
                rows,
                pix_width,
                pix_height,
            } => host.window_change(cols, rows, pix_width, pix_height).await,
            FromClient::Signal(sig) => host.signal(sig).await,
            FromClient::AgentForward => host.agent_forward(false).await,
            FromClient::Start(start) => {
                let start = match start {
                    Start::Held {
                        seq,
                        kind,
                        detail,
                        rule,
                        wait,
                    } => {
                        let outcome = wait.await;
                        let approved = matches!(outcome, HoldOutcome::Approved { .. });
                        let decided = {
                            let mut g = shared.gate.lock().unwrap_or_else(|p| p.into_inner());
                            Event::of(
                                shared.id,
                                gate::APPROVAL,
                                &g.decided(seq, rule.as_deref(), &outcome),
                            )
                        };
                        if shared.record_durably(&[decided]).await.is_err() {
                            break;
                        }
                        if approved {
                            Start::Forward { kind, detail }
                        } else {
                            Start::Refused {
                                message: refusal_message(
                                    kind,
                                    rule.as_deref(),
                                    "was not approved (policy rule",
                                )
                                .replace("\"\r\n", "\")\r\n"),
                            }
                        }
                    }
                    other => other,
                };
                match start {
                    Start::Forward { kind, detail } => {
                        {
                            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                            s.sftp =
                                kind == SshKind::Subsystem && detail.as_deref() == Some("sftp");
                            s.started = Some(match (kind, &detail) {
                                (SshKind::Subsystem, Some(name)) => format!("subsystem {name}"),
                                _ => kind.as_str().to_owned(),
                            });
                        }
                        match (kind, detail) {
                            (SshKind::Exec, Some(command)) => host.exec(true, command).await,
                            (SshKind::Subsystem, Some(name)) => {
                                host.request_subsystem(true, name).await
                            }
                            _ => host.request_shell(true).await,
                        }
                    }
                    Start::Refused { message } => {
                        // What the bot reads is part of the transcript.
                        if record_data(shared, channel, "stderr", message.as_bytes()).is_err() {
                            break;
                        }
                        {
                            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                            s.exit_status = Some(REFUSED_STATUS);
                            s.reason = Some(message.trim_end().to_owned());
                        }
                        let _ = to_client.send(ToClient::Refuse(message));
                        // Nothing more goes to the host (the caller closes its channel).
                        break;
                    }
                    Start::Held { .. } => unreachable!("a hold is decided above"),
                }
            }
            FromClient::Data { data, ext, permit } => {
                let (sftp, raw) = {
                    let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                    s.bytes_in += data.len() as u64;
                    (s.sftp, s.raw || s.pty)
                };
                if sftp && ext.is_none() {
                    let outgoing = match super::sftp::from_client(
                        shared, channel, sftp_state, &data,
                    )
                    .await
                    {
                        Ok(o) => o,
                        Err(why) => {
                            info!(session = shared.id, channel, reason = %why, "closing the SFTP channel");
                            stats.lock().unwrap_or_else(|p| p.into_inner()).reason = Some(why);
                            break;
                        }
                    };
                    let mut sent = Ok(());
                    for o in outgoing {
                        match o {
                            super::sftp::Outgoing::Forward(packet) => {
                                sent = host.data_bytes(packet).await;
                            }
                            super::sftp::Outgoing::Answer(packet) => {
                                let _ = to_client.send(ToClient::Data {
                                    data: packet,
                                    ext: None,
                                    _permit: None,
                                });
                            }
                        }
                    }
                    drop(permit);
                    if sent.is_err() {
                        debug!(session = shared.id, channel, "the host's channel is closed");
                    }
                    continue;
                }
                if !raw {
                    match record_data(shared, channel, "stdin", &data) {
                        Ok(true) => {}
                        Ok(false) => {
                            stats.lock().unwrap_or_else(|p| p.into_inner()).truncated = true
                        }
                        Err(_) => break,
                    }
                }
                let sent = match ext {
                    None => host.data_bytes(data).await,
                    Some(ext) => host.extended_data_bytes(ext, data).await,
                };
                drop(permit);
                sent
            }
            FromClient::Eof => host.eof().await,
            FromClient::Close => break,
        };
        if sent.is_err() {
            // The host's channel is gone; the other direction ends the channel.
            debug!(session = shared.id, channel, "the host's channel is closed");
        }
    }
}

async fn host_to_agent(
    shared: &Shared,
    channel: u32,
    mut host: russh::ChannelReadHalf,
    to_client: mpsc::UnboundedSender<ToClient>,
    flow: &Flow,
    stats: &Mutex<Stats>,
    sftp_state: &Mutex<super::sftp::SftpState>,
) {
    let mask_output = shared.target_rt.mask_output;
    loop {
        let Some(msg) = host.wait().await else {
            let _ = to_client.send(ToClient::Close);
            break;
        };
        match msg {
            ChannelMsg::Data { data } => {
                let sftp = stats.lock().unwrap_or_else(|p| p.into_inner()).sftp;
                if sftp {
                    if let Err(why) = super::sftp::from_host(shared, channel, sftp_state, &data) {
                        info!(session = shared.id, channel, reason = %why, "closing the SFTP channel");
                        stats.lock().unwrap_or_else(|p| p.into_inner()).reason = Some(why);
                        let _ = to_client.send(ToClient::Close);
                        break;
                    }
                }
                forward_output(
                    shared,
                    channel,
                    None,
                    data,
                    &to_client,
                    flow,
                    stats,
                    mask_output,
                )
                .await
            }
            ChannelMsg::ExtendedData { data, ext } => {
                forward_output(
                    shared,
                    channel,
                    Some(ext),
                    data,
                    &to_client,
                    flow,
                    stats,
                    mask_output,
                )
                .await
            }
            ChannelMsg::Eof => {
                let _ = to_client.send(ToClient::Eof);
            }
            ChannelMsg::ExitStatus { exit_status } => {
                stats.lock().unwrap_or_else(|p| p.into_inner()).exit_status = Some(exit_status);
                let _ = to_client.send(ToClient::ExitStatus(exit_status));
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                ..
            } => {
                stats.lock().unwrap_or_else(|p| p.into_inner()).exit_signal =
                    Some(super::signal_name(&signal_name));
                let _ = to_client.send(ToClient::ExitSignal {
                    signal: signal_name,
                    core_dumped,
                    message: error_message,
                });
            }
            ChannelMsg::Failure => {
                // The host refused the channel's start request (exec, shell, subsystem).
                let why = "the host refused the request".to_owned();
                stats.lock().unwrap_or_else(|p| p.into_inner()).reason = Some(why.clone());
                let _ = to_client.send(ToClient::Data {
                    data: Bytes::from(format!("nhi-agent: {why}\r\n")),
                    ext: Some(1),
                    _permit: None,
                });
                let _ = to_client.send(ToClient::Close);
                break;
            }
            ChannelMsg::Close => {
                let _ = to_client.send(ToClient::Close);
                break;
            }
            _ => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward_output(
    shared: &Shared,
    channel: u32,
    ext: Option<u32>,
    data: Bytes,
    to_client: &mpsc::UnboundedSender<ToClient>,
    flow: &Flow,
    stats: &Mutex<Stats>,
    mask_output: bool,
) {
    let sftp = {
        let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
        s.bytes_out += data.len() as u64;
        s.sftp || s.raw
    };
    let stream = if ext == Some(1) { "stderr" } else { "stdout" };
    let data = if sftp {
        data
    } else {
        match record_data(shared, channel, stream, &data) {
            Ok(true) => {}
            Ok(false) => stats.lock().unwrap_or_else(|p| p.into_inner()).truncated = true,
            Err(_) => return,
        }
        match std::str::from_utf8(&data) {
            Ok(text) if mask_output => match shared.rules.masks.mask_text(text) {
                std::borrow::Cow::Owned(masked) => Bytes::from(masked),
                std::borrow::Cow::Borrowed(_) => data,
            },
            _ => data,
        }
    };
    let permit = flow.admit_from_host(data.len()).await;
    let _ = to_client.send(ToClient::Data {
        data,
        ext,
        _permit: permit,
    });
}

async fn agent_to_client(
    client: ChannelWriteHalf<Msg>,
    server: server::Handle,
    id: russh::ChannelId,
    mut rx: mpsc::UnboundedReceiver<ToClient>,
) {
    while let Some(msg) = rx.recv().await {
        let _ = match msg {
            ToClient::Data { data, ext, _permit } => match ext {
                None => client.data_bytes(data).await,
                Some(ext) => client.extended_data_bytes(ext, data).await,
            },
            ToClient::Eof => client.eof().await,
            ToClient::ExitStatus(status) => client.exit_status(status).await,
            ToClient::ExitSignal {
                signal,
                core_dumped,
                message,
            } => {
                let _ = server
                    .exit_signal_request(id, signal, core_dumped, message, "en".into())
                    .await;
                Ok(())
            }
            ToClient::Refuse(message) => {
                let _ = client.extended_data_bytes(1, Bytes::from(message)).await;
                let _ = client.exit_status(REFUSED_STATUS).await;
                let _ = client.eof().await;
                let _ = client.close().await;
                return;
            }
            ToClient::Close => {
                let _ = client.close().await;
                return;
            }
        };
    }
    // Every sender is gone (the session ended): close what is left.
    let _ = client.close().await;
}
