//! Channels the host opens towards the bot: a connection to a port the host listens on
//! for an allowed remote forward (`ssh -R`, `forwarded-tcpip`), and a program on the
//! host using the forwarded agent (`ssh -A`, `auth-agent@openssh.com`) when the bot's
//! agent request was allowed. Each is opened on the bot's side, journaled
//! (`ssh_channel` open and close, with the bytes each way; the bytes are not recorded)
//! and relayed; any other is refused and journaled.
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use russh::server::{self, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::events::{kind, SshChannel};
use super::upstream::FromHost;
use super::Shared;
use crate::journal::Event;

/// What the bot asked for and the policy allowed: the ports of its remote forwards, and
/// whether its agent is forwarded.
#[derive(Default)]
pub struct Allowed {
    forwards: Mutex<HashSet<u32>>,
    agent: AtomicBool,
}

impl Allowed {
    pub fn add_forward(&self, port: u32) {
        self.forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port);
    }

    pub fn remove_forward(&self, port: u32) {
        self.forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&port);
    }

    pub fn allow_agent(&self) {
        self.agent.store(true, Ordering::Relaxed);
    }

    fn forward(&self, port: u32) -> bool {
        self.forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&port)
    }
}

/// Serves the channels the host opens until the connection to it ends.
pub async fn run(
    shared: Arc<Shared>,
    allowed: Arc<Allowed>,
    mut from_host: mpsc::UnboundedReceiver<FromHost>,
    bot: server::Handle,
) {
    while let Some(opened) = from_host.recv().await {
        let (kind_name, detail, host_channel, reply, bot_channel) = match opened {
            FromHost::ForwardedTcpip {
                channel,
                reply,
                connected_address,
                connected_port,
                originator_address,
                originator_port,
            } => {
                let detail = format!(
                    "{connected_address}:{connected_port} from {originator_address}:{originator_port}"
                );
                if !allowed.forward(connected_port) {
                    refuse(&shared, "forwarded-tcpip", detail, reply).await;
                    continue;
                }
                let opened = bot
                    .channel_open_forwarded_tcpip(
                        connected_address,
                        connected_port,
                        originator_address,
                        originator_port,
                    )
                    .await;
                ("forwarded-tcpip", detail, channel, reply, opened)
            }
            FromHost::Agent { channel, reply } => {
                let detail = "auth-agent".to_owned();
                if !allowed.agent.load(Ordering::Relaxed) {
                    refuse(&shared, "agent", detail, reply).await;
                    continue;
                }
                let opened = bot.channel_open_agent().await;
                ("agent", detail, channel, reply, opened)
            }
        };
        let bot_channel = match bot_channel {
            Ok(c) => c,
            Err(e) => {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                let event = SshChannel {
                    channel: u32::MAX,
                    event: "close".into(),
                    kind: kind_name.into(),
                    detail: Some(detail),
                    reason: Some(format!("the client refused the channel: {e}")),
                    ..SshChannel::default()
                };
                let _ = shared.record(&[Event::of(shared.id, kind::CHANNEL, &event)]);
                continue;
            }
        };
        let number = bot_channel.id().number();
        let event = SshChannel {
            channel: number,
            event: "open".into(),
            kind: kind_name.into(),
            detail: Some(detail.clone()),
            action: Some("forwarded".into()),
            ..SshChannel::default()
        };
        if shared
            .record(&[Event::of(shared.id, kind::CHANNEL, &event)])
            .is_err()
        {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            let _ = bot_channel.close().await;
            continue;
        }
        reply.accept().await;
        tokio::spawn(relay(
            shared.clone(),
            number,
            kind_name,
            detail,
            bot_channel,
            host_channel,
        ));
    }
    debug!(session = shared.id, "the host's connection ended");
}

async fn refuse(
    shared: &Shared,
    kind_name: &str,
    detail: String,
    reply: russh::client::ChannelOpenHandle,
) {
    reply
        .reject(ChannelOpenFailure::AdministrativelyProhibited)
        .await;
    info!(session = shared.id, kind = kind_name, %detail, "a channel the host opened was refused: the bot did not ask for it");
    let event = SshChannel {
        channel: u32::MAX,
        event: "open".into(),
        kind: kind_name.into(),
        detail: Some(detail),
        action: Some("refused".into()),
        reason: Some("opened by the host for nothing the bot was allowed to ask for".into()),
        ..SshChannel::default()
    };
    let _ = shared.record(&[Event::of(shared.id, kind::CHANNEL, &event)]);
}

/// Relays the bytes both ways until either side closes; journals the end.
async fn relay(
    shared: Arc<Shared>,
    number: u32,
    kind_name: &'static str,
    detail: String,
    bot: Channel<Msg>,
    host: Channel<russh::client::Msg>,
) {
    let (mut bot_read, bot_write) = bot.split();
    let (mut host_read, host_write) = host.split();
    let (to_bot, to_host) = (AtomicU64::new(0), AtomicU64::new(0));
    // Whichever side closes first ends both (russh does not pass on the answering close
    // of a channel we closed ourselves).
    tokio::select! {
        _ = async {
            while let Some(msg) = bot_read.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        to_host.fetch_add(data.len() as u64, Ordering::Relaxed);
                        if host_write.data_bytes(data).await.is_err() {
                            break;
                        }
                    }
                    ChannelMsg::Eof => {
                        let _ = host_write.eof().await;
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
        } => {}
        _ = async {
            while let Some(msg) = host_read.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        to_bot.fetch_add(data.len() as u64, Ordering::Relaxed);
                        if bot_write.data_bytes(data).await.is_err() {
                            break;
                        }
                    }
                    ChannelMsg::Eof => {
                        let _ = bot_write.eof().await;
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
        } => {}
    }
    let _ = host_write.close().await;
    let _ = bot_write.close().await;
    let event = SshChannel {
        channel: number,
        event: "close".into(),
        kind: kind_name.into(),
        detail: Some(detail),
        bytes_in: Some(to_host.load(Ordering::Relaxed)),
        bytes_out: Some(to_bot.load(Ordering::Relaxed)),
        ..SshChannel::default()
    };
    let _ = shared.record(&[Event::of(shared.id, kind::CHANNEL, &event)]);
}
