//! Opaque relay: bytes both ways with back-pressure, half-close, idle timeout, and
//! (for audited sessions) a journal record of every chunk before it is forwarded.
use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
    sync::watch,
};

use crate::journal::{Direction, JournalHandle, SessionId};

/// Bytes read per chunk. Large enough that bulk transfers cost few syscalls and
/// few journal records; two per connection.
const CHUNK: usize = 64 * 1024;

/// Why a session ended, as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed first (FIN), then the server finished.
    ClientClosed,
    /// The server closed first, then the client finished.
    ServerClosed,
    /// Reading from or writing to the client failed (reset, broken pipe).
    ClientReset(String),
    /// Reading from or writing to the server failed.
    ServerReset(String),
    /// No byte moved either way for the configured idle timeout.
    IdleTimeout,
    /// The agent stopped and the drain period ran out.
    AgentShutdown,
    /// The journal could not record the session's traffic; the agent stops
    /// forwarding what it cannot record.
    JournalFailure(String),
    /// The original destination could not be reached.
    UpstreamConnect(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientClosed => f.write_str("client closed"),
            Self::ServerClosed => f.write_str("server closed"),
            Self::ClientReset(e) => write!(f, "client reset: {e}"),
            Self::ServerReset(e) => write!(f, "server reset: {e}"),
            Self::IdleTimeout => f.write_str("idle timeout"),
            Self::AgentShutdown => f.write_str("agent shutdown"),
            Self::JournalFailure(e) => write!(f, "journal failure: {e}"),
            Self::UpstreamConnect(e) => write!(f, "upstream connect failed: {e}"),
        }
    }
}

/// What a finished relay reports.
#[derive(Debug)]
pub struct Outcome {
    pub bytes_from_client: u64,
    pub bytes_from_server: u64,
    pub reason: CloseReason,
}

/// How one direction ended.
enum PipeEnd {
    /// The source sent FIN; the destination's write side was shut down in turn.
    Eof,
    ReadFailed(std::io::Error),
    WriteFailed(std::io::Error),
    Journal(String),
}

struct Pipe<'a> {
    journal: Option<(&'a JournalHandle, SessionId)>,
    dir: Direction,
    bytes: &'a AtomicU64,
    /// Milliseconds since `epoch` of the last byte moved in either direction.
    last_activity: &'a AtomicU64,
    epoch: Instant,
}

impl Pipe<'_> {
    async fn run(self, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) -> PipeEnd {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) => {
                    // Half-close: pass the FIN on and keep the other direction open.
                    let _ = to.shutdown().await;
                    return PipeEnd::Eof;
                }
                Ok(n) => n,
                Err(e) => return PipeEnd::ReadFailed(e),
            };
            self.last_activity
                .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            if let Some((journal, id)) = self.journal {
                // Recorded before forwarded; the queue is bounded, so a slow journal
                // slows the relay down instead of losing records.
                if let Err(e) = journal
                    .chunk(id, self.dir, n as u32, SystemTime::now())
                    .await
                {
                    return PipeEnd::Journal(e.to_string());
                }
                if journal.session_failed(id) {
                    return PipeEnd::Journal("a batch with this session's records failed".into());
                }
            }
            if let Err(e) = to.write_all(&buf[..n]).await {
                return PipeEnd::WriteFailed(e);
            }
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Relays until both directions have ended, one fails, the connection idles out, or
/// `cancel` flips.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    journal: Option<(&JournalHandle, SessionId)>,
    idle_timeout: Duration,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let from_client = AtomicU64::new(0);
    let from_server = AtomicU64::new(0);
    let last_activity = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = upstream.into_split();

    let c2s = Pipe {
        journal,
        dir: Direction::ClientToServer,
        bytes: &from_client,
        last_activity: &last_activity,
        epoch,
    }
    .run(client_r, server_w);
    let s2c = Pipe {
        journal,
        dir: Direction::ServerToClient,
        bytes: &from_server,
        last_activity: &last_activity,
        epoch,
    }
    .run(server_r, client_w);
    tokio::pin!(c2s, s2c);

    let tick = (idle_timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut c2s_end: Option<PipeEnd> = None;
    let mut s2c_end: Option<PipeEnd> = None;
    let mut first_eof: Option<Direction> = None;
    let reason = loop {
        tokio::select! {
            end = &mut c2s, if c2s_end.is_none() => {
                if matches!(end, PipeEnd::Eof) && first_eof.is_none() {
                    first_eof = Some(Direction::ClientToServer);
                }
                c2s_end = Some(end);
            }
            end = &mut s2c, if s2c_end.is_none() => {
                if matches!(end, PipeEnd::Eof) && first_eof.is_none() {
                    first_eof = Some(Direction::ServerToClient);
                }
                s2c_end = Some(end);
            }
            _ = ticker.tick() => {
                let idle_ms = (epoch.elapsed().as_millis() as u64)
                    .saturating_sub(last_activity.load(Ordering::Relaxed));
                if Duration::from_millis(idle_ms) >= idle_timeout {
                    break CloseReason::IdleTimeout;
                }
                continue;
            }
            changed = cancel.changed() => {
                if changed.is_err() || *cancel.borrow() {
                    break CloseReason::AgentShutdown;
                }
                continue;
            }
        }
        // Any failure ends the whole session; two EOFs end it cleanly.
        if let Some(reason) = failure(&c2s_end, Direction::ClientToServer)
            .or_else(|| failure(&s2c_end, Direction::ServerToClient))
        {
            break reason;
        }
        if c2s_end.is_some() && s2c_end.is_some() {
            break match first_eof {
                Some(Direction::ServerToClient) => CloseReason::ServerClosed,
                _ => CloseReason::ClientClosed,
            };
        }
    };
    Outcome {
        bytes_from_client: from_client.load(Ordering::Relaxed),
        bytes_from_server: from_server.load(Ordering::Relaxed),
        reason,
    }
}

fn failure(end: &Option<PipeEnd>, dir: Direction) -> Option<CloseReason> {
    // The pipe reading from the client writes to the server, and vice versa.
    let reads_client = dir == Direction::ClientToServer;
    let reset = |client_side: bool, e: String| {
        if client_side {
            CloseReason::ClientReset(e)
        } else {
            CloseReason::ServerReset(e)
        }
    };
    match end.as_ref()? {
        PipeEnd::Eof => None,
        PipeEnd::ReadFailed(e) => Some(reset(reads_client, e.to_string())),
        PipeEnd::WriteFailed(e) => Some(reset(!reads_client, e.to_string())),
        PipeEnd::Journal(e) => Some(CloseReason::JournalFailure(e.clone())),
    }
}
