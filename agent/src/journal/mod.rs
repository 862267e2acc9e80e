//! The session journal: the audit trail that the proxy writes before it forwards a byte.
//!
//! Every intercepted connection becomes a row in `sessions` plus an append-only stream of
//! `events` (`session_start`, one `chunk` per forwarded read, `session_end`). The product
//! promise is that nothing is forwarded that was not journaled, so the API is built around
//! *waiting for the commit*: [`JournalHandle::start_session`] and
//! [`JournalHandle::end_session`] return only once their records are durable, and the
//! proxy refuses a connection when the journal cannot record it.
//!
//! Waiting for an fsync per connection would be slow, so one dedicated writer thread owns
//! the SQLite connection and commits commands in batches: under load, many sessions'
//! starts and chunks share a single transaction and a single fsync (see [`writer`]).
//!
//! Protocol events (e.g. each PostgreSQL statement) come too fast for that, so they take a
//! different path: [`JournalHandle::record`] appends them to a pre-log file with one
//! `write(2)`, and the writer copies them into SQLite in its next batch (see [`prelog`]).
//!
//! Every event row is hash-chained and the file is cut into sealed segments (see
//! [`crate::evidence`]); `open` and the writer keep the chain and rotate the segments.
//!
//! Reading is separate ([`JournalReader`]): a read-only connection that works offline on a
//! journal copied from another host and concurrently with a running agent (WAL mode).

pub mod checkpoint;
mod prelog;
mod reader;
mod schema;
pub mod segments;
mod set;
pub mod verify;
mod writer;

use std::collections::{HashMap, HashSet};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

pub use prelog::{
    path_for as prelog_path, Event, PrelogRecovery, DEFAULT_TRUNCATE_AT, MAX_RECORD_LEN, NO_SESSION,
};
pub use reader::{
    EventKind, EventRow, EventScan, JournalReader, SessionFilter, SessionRow, TextScan,
};
pub(crate) use schema::FORMAT_MARKER;
pub use schema::SCHEMA_VERSION;
pub use set::{JournalSet, SegmentInfo, SetError, SetSession};

pub use crate::identity::SessionIdentity;
use writer::Command;

/// The journal's identifier of a session: the SQLite rowid of its `sessions` row.
pub type SessionId = i64;

/// Which way a chunk of bytes travelled through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the intercepted workload (the client) towards the upstream server.
    ClientToServer,
    /// From the upstream server back to the workload.
    ServerToClient,
}

impl Direction {
    /// The compact form used in storage and in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToServer => "c2s",
            Direction::ServerToClient => "s2c",
        }
    }

    /// Parses the storage form; `None` for anything else.
    pub fn from_storage(s: &str) -> Option<Self> {
        match s {
            "c2s" => Some(Direction::ClientToServer),
            "s2c" => Some(Direction::ServerToClient),
            _ => None,
        }
    }

    /// The form shown to people reading the CLI's output.
    pub fn human(self) -> &'static str {
        match self {
            Direction::ClientToServer => "client→server",
            Direction::ServerToClient => "server→client",
        }
    }
}

impl serde::Serialize for Direction {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A session as it starts: who it is, when, and what was attested for its cgroup.
#[derive(Debug, Clone)]
pub struct SessionStart {
    pub identity: Arc<SessionIdentity>,
    pub started_at: SystemTime,
    /// The claims attested for the session's cgroup (see `crate::attest`); `None` when
    /// the session is unattested.
    pub claims: Option<serde_json::Map<String, serde_json::Value>>,
}

/// How and when a session ended, with its byte totals.
#[derive(Debug, Clone)]
pub struct SessionEnd {
    pub id: SessionId,
    pub ended_at: SystemTime,
    pub bytes_from_client: u64,
    pub bytes_from_server: u64,
    /// E.g. `client closed`, `server closed`, `idle timeout`, `client reset`,
    /// `upstream connect failed: ...`, `agent shutdown`, `journal failure`.
    pub close_reason: String,
}

/// Everything that can go wrong in the journal subsystem.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The database file could not be opened (or created) at all.
    #[error("cannot open journal {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// The originals of masked values could not be sealed for the auditors; what they
    /// were masked in is not recorded.
    #[error("cannot seal originals for the auditors: {0}")]
    Sealing(String),

    /// The reader was pointed at a file that does not exist; it never creates one.
    #[error("journal {} does not exist", path.display())]
    Missing { path: PathBuf },

    /// The file exists but is not an nhi-agent journal (not SQLite, or another application's
    /// database), so it is neither read nor modified.
    #[error("{} is not an nhi-agent journal: {reason}", path.display())]
    NotAJournal { path: PathBuf, reason: String },

    /// The journal was written by a newer nhi-agent whose schema this binary does not know;
    /// writing to it could corrupt it and reading it could misreport it.
    #[error(
        "journal {} has schema version {found}, but this nhi-agent only knows versions up to \
         {supported}; use a newer nhi-agent",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    /// SQLite refused to switch the database to write-ahead logging, which the journal needs
    /// so that readers never block the writer (e.g. on some network filesystems).
    #[error("journal {} cannot use WAL mode (journal_mode is {mode:?})", path.display())]
    WalUnavailable { path: PathBuf, mode: String },

    /// A single SQLite operation failed; `op` says which.
    #[error("journal: {op} failed")]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    /// A whole batch could not be committed, so none of its records are in the journal.
    /// Every waiter of the batch receives this error, hence the shared source.
    #[error("journal: batch of {commands} records was not committed ({op} failed)")]
    BatchFailed {
        op: &'static str,
        commands: usize,
        #[source]
        source: Arc<rusqlite::Error>,
    },

    /// Some records queued before a [`JournalHandle::flush`] could not be committed.
    #[error("journal: {failed} records queued before the flush were not committed")]
    FlushIncomplete { failed: u64 },

    /// The session's earlier records failed to commit, so its journal is incomplete and the
    /// proxy must stop forwarding it.
    #[error("journal: session {id} can no longer be recorded (earlier records failed)")]
    SessionFailed { id: SessionId },

    /// `end_session` for a session that does not exist or was already ended.
    #[error("journal: no open session with id {id} (unknown or already ended)")]
    SessionNotOpen { id: SessionId },

    /// A value read from the database does not have the shape the schema promises.
    #[error("journal: corrupt {what} in {table} row {id}: {reason}")]
    Corrupt {
        table: &'static str,
        id: i64,
        what: &'static str,
        reason: String,
    },

    /// A value could not be encoded for storage.
    #[error("journal: cannot encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// The operating system refused to start the writer thread.
    #[error("journal: cannot start the writer thread")]
    SpawnWriter {
        #[source]
        source: std::io::Error,
    },

    /// The writer thread has stopped (closed or crashed), so nothing more can be recorded.
    #[error("journal: the writer has stopped")]
    WriterGone,

    /// The writer thread panicked; found when joining it in [`Journal::close`].
    #[error("journal: the writer thread panicked")]
    WriterPanicked,

    /// The pre-log file could not be opened, written, read or truncated; `op` says which.
    /// From [`JournalHandle::record`] it means the events are NOT recorded (typically
    /// ENOSPC or EIO): the caller must refuse the request.
    #[error("journal pre-log {}: {op} failed", path.display())]
    Prelog {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An earlier failed write to the pre-log could not be cut off again (or the writer
    /// found a record it cannot read), so nothing more can be recorded until the agent is
    /// restarted (recovery at open cuts the damage off).
    #[error("journal pre-log {} is broken; nothing more can be recorded until the agent restarts", path.display())]
    PrelogBroken { path: PathBuf },

    /// An [`Event`] that cannot be recorded as it is (programming error of the caller).
    #[error("journal: invalid event: {reason}")]
    InvalidEvent { reason: String },

    /// Sealing, rotating or linking segments failed.
    #[error("journal evidence")]
    Evidence {
        #[source]
        source: crate::evidence::EvidenceError,
    },

    /// The last attempt to commit pre-log records up to at least `seq` failed. They stay
    /// in the pre-log and the writer keeps retrying, but they are not durable yet.
    #[error("journal: pre-log records up to seq {seq} are not committed yet: {reason}")]
    NotDurable { seq: u64, reason: Arc<str> },
}

impl JournalError {
    pub(crate) fn sqlite(op: &'static str) -> impl FnOnce(rusqlite::Error) -> JournalError {
        move |source| JournalError::Sqlite { op, source }
    }
}

/// When a caller of [`JournalHandle::record`] may consider its events recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// As soon as the `write(2)` to the pre-log returned: the events survive the agent
    /// being killed, and the writer commits them to SQLite (with fsync) within
    /// milliseconds, many callers' events in one commit. A power loss in between can lose
    /// them.
    #[default]
    Group,
    /// Only once a SQLite commit holding them completed: the caller awaits
    /// [`JournalHandle::durable`] (or uses [`JournalHandle::record_durably`]). Concurrent
    /// callers still share commits.
    Each,
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// The largest number of commands committed in one transaction.
    pub batch_max: usize,
    /// How many commands may wait for the writer before senders are held back.
    pub queue_capacity: usize,
    /// When recorded protocol events count as recorded (see [`FsyncPolicy`]).
    pub fsync: FsyncPolicy,
    /// The writer empties the pre-log once everything in it is committed and it is at
    /// least this large ([`DEFAULT_TRUNCATE_AT`]). Emptying it takes the append lock, so
    /// doing it after every batch would make appends wait needlessly.
    pub prelog_truncate_at: u64,
    /// Segment rotation and seals; `None`: the events are still hash-chained, but the
    /// journal is one unsealed file (tests, and tools without a key).
    pub segments: Option<SegmentOptions>,
    /// `[evidence] auditor_recipients`: the originals of masked values are sealed to
    /// them (see [`JournalHandle::originals`]); `None`: they are not kept.
    pub auditors: Option<crate::evidence::auditor::Auditors>,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            batch_max: 1024,
            queue_capacity: 8192,
            fsync: FsyncPolicy::Group,
            prelog_truncate_at: DEFAULT_TRUNCATE_AT,
            segments: None,
            auditors: None,
        }
    }
}

/// How the live segment is sealed and rotated (see [`crate::evidence`]).
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    /// Signs the seals.
    pub key: Arc<crate::evidence::HostKey>,
    /// Stored in every segment's `meta.host_id` and every seal.
    pub host_id: String,
    /// Rotate once the live file (with its WAL) is at least this large...
    pub max_bytes: u64,
    /// ...or this old.
    pub max_age: Duration,
    /// The live segment's head is checkpointed at least this often while it moves
    /// (see [`checkpoint`]).
    pub checkpoint_interval: Duration,
}

/// Counters kept by the writer, for metrics and for tests that check batching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Transactions committed successfully.
    pub commits: u64,
    /// Batches whose transaction could not be begun or committed.
    pub failed_batches: u64,
    /// Commands taken from the queue (starts, chunks, ends and flushes).
    pub commands: u64,
    /// Records that did not make it into the journal (failed statements, skipped chunks of
    /// failed sessions, and every record of a failed batch).
    pub failed_records: u64,
    /// Pre-log records committed into `events` by the writer (recovery at open excluded).
    pub prelog_records: u64,
}

/// State shared between the handles and the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Fast path for [`JournalHandle::session_failed`]: false whenever `failed` is empty, so
    /// the common case costs one atomic load and no lock.
    any_failed: AtomicBool,
    /// Sessions whose records failed to commit and that have not ended yet.
    failed: Mutex<HashSet<SessionId>>,
    /// The id the next session gets (see [`JournalHandle::start_session`]).
    next_session_id: std::sync::atomic::AtomicI64,
    commits: AtomicU64,
    failed_batches: AtomicU64,
    commands: AtomicU64,
    failed_records: AtomicU64,
    prelog_records: AtomicU64,
}

impl Shared {
    fn lock_failed(&self) -> std::sync::MutexGuard<'_, HashSet<SessionId>> {
        // A panic while holding this lock cannot leave the set inconsistent (every update is
        // a single insert or remove), so a poisoned lock is still safe to use.
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn mark_failed(&self, id: SessionId) {
        let mut failed = self.lock_failed();
        failed.insert(id);
        self.any_failed.store(true, Ordering::Release);
    }

    pub(crate) fn forget(&self, id: SessionId) {
        let mut failed = self.lock_failed();
        failed.remove(&id);
        if failed.is_empty() {
            self.any_failed.store(false, Ordering::Release);
        }
    }

    pub(crate) fn is_failed(&self, id: SessionId) -> bool {
        if !self.any_failed.load(Ordering::Acquire) {
            return false;
        }
        self.lock_failed().contains(&id)
    }

    fn stats(&self) -> JournalStats {
        JournalStats {
            commits: self.commits.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            failed_records: self.failed_records.load(Ordering::Relaxed),
            prelog_records: self.prelog_records.load(Ordering::Relaxed),
        }
    }
}

/// How far the pre-log has been committed, published by the writer after each batch.
#[derive(Debug, Clone, Default)]
pub(crate) struct Durability {
    /// Every record with a sequence number up to this one is committed.
    committed: u64,
    /// The last failed attempt covered records up to this one...
    failed_through: u64,
    /// ...and failed for this reason.
    failure: Option<Arc<str>>,
}

/// Opens (creating if needed) the journal at `path`, runs migrations, recovers the pre-log
/// a previous agent left behind (see [`prelog`]), closes the sessions it left open, and
/// starts the writer thread.
pub fn open(path: &Path, opts: JournalOptions) -> Result<Journal, JournalError> {
    let (mut conn, mut chain_state) = open_live(path, opts.segments.as_ref())?;
    // The live file as found must extend its last checkpoint; checked before anything
    // (recovery included) is written to it.
    let segmenter = match &opts.segments {
        None => None,
        Some(seg_opts) => {
            let mut segmenter = writer::Segmenter {
                opts: seg_opts.clone(),
                path: path.to_path_buf(),
                started: std::time::Instant::now(),
                retry_at: None,
                checkpoint_n: checkpoint::highest_n(path),
                checkpointed_at: std::time::Instant::now(),
                checkpointed_next: None,
                checkpoint_blocked: false,
            };
            use checkpoint::CheckpointReason;
            segmenter.checkpoint(&conn, &chain_state, CheckpointReason::Startup);
            if segmenter.checkpoint_blocked {
                tracing::error!(
                    path = %path.display(),
                    "the live journal segment was truncated, deleted or replaced while the agent \
                     was stopped: it is sealed as found and the journal continues in a new segment"
                );
                conn = writer::rotate(
                    conn,
                    path,
                    &chain_state,
                    seg_opts,
                    crate::evidence::SealReason::Startup,
                    None,
                )?;
                chain_state =
                    segments::load_chain(&conn).map_err(JournalError::sqlite("load the chain"))?;
                segmenter.rotated();
                segmenter.checkpoint(&conn, &chain_state, CheckpointReason::Rotation);
            }
            Some(segmenter)
        }
    };
    let mut chain = writer::Chain::new(chain_state);
    let prelog_path = prelog::path_for(path);
    let prelog_file = prelog::open_file(&prelog_path)?;
    let (recovery, next_seq) = prelog::recover(&mut conn, &mut chain, &prelog_file, &prelog_path)?;
    // The writer reads through its own descriptor, so reads never wait for the append lock.
    let writer_file = prelog_file
        .try_clone()
        .map_err(|source| JournalError::Prelog {
            op: "duplicate the descriptor",
            path: prelog_path.clone(),
            source,
        })?;
    let prelog = Arc::new(prelog::Prelog::new(
        prelog_file,
        &prelog_path,
        next_seq,
        opts.prelog_truncate_at,
    ));
    let interrupted = writer::close_interrupted(&mut conn, &mut chain)?;
    if interrupted > 0 {
        tracing::warn!(
            sessions = interrupted,
            path = %path.display(),
            "closed sessions a previous agent left open (it stopped without ending them)"
        );
    }
    let (tx, rx) = mpsc::channel(opts.queue_capacity.max(1));
    let shared = Arc::new(Shared {
        next_session_id: chain.state.next_session_id.into(),
        ..Shared::default()
    });
    let (durable_tx, durable_rx) = watch::channel(Durability {
        committed: next_seq - 1,
        ..Durability::default()
    });
    let thread = writer::spawn(
        conn,
        rx,
        Arc::clone(&shared),
        writer::Batching {
            max: opts.batch_max,
            wakes_are_lazy: opts.fsync != FsyncPolicy::Each,
        },
        writer::PrelogIngest::new(Arc::clone(&prelog), writer_file, next_seq - 1, durable_tx),
        chain,
        segmenter,
    )?;
    Ok(Journal {
        handle: JournalHandle {
            tx,
            shared,
            prelog,
            durable: durable_rx,
            fsync: opts.fsync,
            sealing: opts.auditors.map(|auditors| {
                Arc::new(Sealing {
                    auditors,
                    live: Mutex::new(HashMap::new()),
                })
            }),
        },
        thread,
        recovery,
    })
}

/// Opens the live segment for writing and returns it with its chain position.
///
/// With segments: a live file sealed by a clean stop is first moved into `segments/` (and a
/// successor created), a fresh live file continues the last sealed segment (the agent
/// stopped between moving a segment and creating its successor), and missing `.seal`
/// files are written from the segments' `meta.seal`.
pub(crate) fn open_live(
    path: &Path,
    segments_opts: Option<&SegmentOptions>,
) -> Result<(rusqlite::Connection, crate::evidence::ChainState), JournalError> {
    let mut conn = schema::open_for_writing(path)?;
    let mut state = segments::load_chain(&conn).map_err(JournalError::sqlite("load the chain"))?;
    let Some(opts) = segments_opts else {
        return Ok((conn, state));
    };
    let evidence = |source| JournalError::Evidence { source };
    segments::repair_seal_files(path).map_err(evidence)?;
    if segments::is_fresh(&conn).map_err(JournalError::sqlite("inspect the live segment"))? {
        if let Some(carry) = segments::carry_of_last_segment(path).map_err(evidence)? {
            segments::init_successor(&mut conn, &carry, &opts.host_id)
                .map_err(JournalError::sqlite("continue the last segment"))?;
            state = segments::load_chain(&conn).map_err(JournalError::sqlite("load the chain"))?;
        }
    }
    if segments::meta_get(&conn, "host_id")
        .map_err(JournalError::sqlite("read host_id"))?
        .is_none()
    {
        segments::meta_set(&conn, "host_id", &opts.host_id)
            .map_err(JournalError::sqlite("store host_id"))?;
    }
    if let Some(seal) =
        segments::meta_get(&conn, "seal").map_err(JournalError::sqlite("read the seal"))?
    {
        conn = writer::rotate(
            conn,
            path,
            &state,
            opts,
            crate::evidence::SealReason::Startup,
            Some(seal),
        )?;
        state = segments::load_chain(&conn).map_err(JournalError::sqlite("load the chain"))?;
    }
    Ok((conn, state))
}

/// The open journal: owns the writer thread. Call [`Journal::close`] at shutdown so that
/// everything queued is committed before the process exits.
#[must_use = "dropping the Journal without close() may lose queued chunk records at exit"]
pub struct Journal {
    handle: JournalHandle,
    thread: JoinHandle<Result<(), JournalError>>,
    recovery: PrelogRecovery,
}

impl Journal {
    /// A handle for the proxy's tasks.
    pub fn handle(&self) -> JournalHandle {
        self.handle.clone()
    }

    /// What was recovered from the pre-log at open (events a killed agent had written but
    /// not committed, and the size of a torn tail).
    pub fn recovery(&self) -> PrelogRecovery {
        self.recovery
    }

    /// Drains everything queued, commits, stops the writer thread (blocking; call from
    /// spawn_blocking or at exit).
    ///
    /// Returns the first error of the batches committed during the drain, if any. Handles
    /// that are still around afterwards get [`JournalError::WriterGone`].
    pub fn close(self) -> Result<(), JournalError> {
        // `blocking_send` would panic when called from inside a tokio runtime, and a
        // shutdown path must not panic, so poll with `try_send` instead: the queue only
        // stays full while the writer is busy emptying it.
        let mut cmd = Command::Shutdown;
        loop {
            match self.handle.tx.try_send(cmd) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    cmd = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                // The writer has already stopped; joining tells how.
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        drop(self.handle);
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => Err(JournalError::WriterPanicked),
        }
    }
}

/// A cheap, cloneable handle to the writer, used from many tokio tasks.
#[derive(Clone)]
pub struct JournalHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    prelog: Arc<prelog::Prelog>,
    durable: watch::Receiver<Durability>,
    fsync: FsyncPolicy,
    /// Originals sealed for auditors, when `[evidence] auditor_recipients` is set.
    sealing: Option<Arc<Sealing>>,
}

/// The auditors and the originals each live session collects.
struct Sealing {
    auditors: crate::evidence::auditor::Auditors,
    live: Mutex<HashMap<SessionId, Weak<crate::mask::Originals>>>,
}

impl Sealing {
    /// The `sealed_originals` event of what `session` collected since its last record,
    /// if anything.
    fn take(&self, session: SessionId) -> Result<Option<Event>, JournalError> {
        let originals = {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            let Some(weak) = live.get(&session) else {
                return Ok(None);
            };
            match weak.upgrade() {
                Some(o) => o,
                None => {
                    live.remove(&session);
                    return Ok(None);
                }
            }
        };
        let Some(batch) = originals.take() else {
            return Ok(None);
        };
        let sealed = self
            .auditors
            .seal(&batch)
            .map_err(|e| JournalError::Sealing(e.to_string()))?;
        Ok(Some(Event::of(
            session,
            crate::evidence::auditor::SEALED_ORIGINALS,
            &sealed,
        )))
    }
}

impl std::fmt::Debug for JournalHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalHandle")
            .field("stats", &self.shared.stats())
            .finish_non_exhaustive()
    }
}

impl JournalHandle {
    async fn send(&self, cmd: Command) -> Result<(), JournalError> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| JournalError::WriterGone)
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, JournalError>>) -> Command,
    ) -> Result<T, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply)).await?;
        // A dropped reply sender means the writer stopped before answering.
        answer.await.unwrap_or(Err(JournalError::WriterGone))
    }

    /// Records a session's start (its row and a `session_start` event) and returns its
    /// id, once the start counts as recorded under the journal's [`FsyncPolicy`]: with
    /// `group` once it is in the pre-log (one `write(2)`: it survives the agent being
    /// killed, and the writer commits it within milliseconds, many sessions per commit),
    /// with `each` once a commit holding it completed. The proxy connects upstream only
    /// after this returns.
    ///
    /// The id is handed out here (ids go on across segments and restarts); the writer
    /// inserts the row with it. A refused start leaves a gap in the ids, nothing else.
    pub async fn start_session(&self, s: SessionStart) -> Result<SessionId, JournalError> {
        if self.tx.is_closed() {
            return Err(JournalError::WriterGone);
        }
        let id = self.shared.next_session_id.fetch_add(1, Ordering::Relaxed);
        let data = writer::start_event_data(&s);
        let seq = self.prelog.append_start(id, s.started_at, data)?;
        self.wake_lazily();
        if self.fsync == FsyncPolicy::Each {
            if let Err(e) = self.durable(seq).await {
                // The record stays in the pre-log and its row will be committed once the
                // journal recovers; the connection is refused now, so its end follows it.
                let (reply, _) = oneshot::channel();
                let end = SessionEnd {
                    id,
                    ended_at: SystemTime::now(),
                    bytes_from_client: 0,
                    bytes_from_server: 0,
                    close_reason: format!("journal failure: {}", root_cause(&e)),
                };
                let _ = self.tx.try_send(Command::End { end, reply });
                return Err(e);
            }
            // Committed, but its row could not be inserted.
            if self.shared.is_failed(id) {
                return Err(JournalError::SessionFailed { id });
            }
        }
        Ok(id)
    }

    /// Records a chunk of `size` bytes that is about to be forwarded `dir`: appended to
    /// the pre-log like a protocol event (one `write(2)`, no wake-up of the writer per
    /// chunk), so it survives the agent being killed and a full disk refuses it. Returns
    /// Err if the writer is gone, this session's records already failed, or the write
    /// failed: the relay then stops forwarding.
    ///
    /// Chunks do not wait for a commit, not even with `journal_fsync = "each"`.
    pub async fn chunk(
        &self,
        id: SessionId,
        dir: Direction,
        size: u32,
        at: SystemTime,
    ) -> Result<(), JournalError> {
        if self.tx.is_closed() {
            return Err(JournalError::WriterGone);
        }
        if self.shared.is_failed(id) {
            return Err(JournalError::SessionFailed { id });
        }
        self.prelog.append_chunk(id, dir, size, at)?;
        self.wake_lazily();
        Ok(())
    }

    /// Queues a wake-up for the writer unless one is pending: a full queue means the
    /// writer is busy and reads the pre-log at its next batch anyway; a closed one that
    /// it has stopped (the records are recovered at the next open).
    fn wake_lazily(&self) {
        if self.prelog.want_wake() {
            let _ = self.tx.try_send(Command::Wake);
        }
    }

    /// Returns after the end is committed (updates the session row and appends a
    /// 'session_end' event).
    pub async fn end_session(&self, end: SessionEnd) -> Result<(), JournalError> {
        // Originals collected after the session's last record are sealed before its end.
        if let Some(sealing) = &self.sealing {
            if let Some(event) = sealing.take(end.id)? {
                self.prelog.append(std::slice::from_ref(&event))?;
            }
            sealing
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&end.id);
        }
        self.request(|reply| Command::End { end, reply }).await
    }

    /// Barrier: returns after everything queued before it is committed.
    ///
    /// Returns [`JournalError::FlushIncomplete`] when records queued since the previous flush
    /// (by any handle, in queue order) failed to commit: each failure is reported to the
    /// first flush queued after it. Which sessions are affected is told by
    /// [`JournalHandle::session_failed`].
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.request(|reply| Command::Flush { reply }).await
    }

    /// True when a batch containing records of this session failed to commit: the proxy then
    /// closes the session ("journal failure") because it can no longer record it.
    pub fn session_failed(&self, id: SessionId) -> bool {
        self.shared.is_failed(id)
    }

    /// The writer's counters so far.
    pub fn stats(&self) -> JournalStats {
        self.shared.stats()
    }

    /// Records protocol events BEFORE the request they describe is forwarded: appends them
    /// to the pre-log with one `write(2)` (not async: it takes a few microseconds and never
    /// waits for SQLite) and returns the sequence number of the last one. Events of one
    /// call are contiguous and in order; sequence numbers grow over the journal's life.
    ///
    /// Once it returns `Ok` the events survive the agent being killed; with
    /// [`FsyncPolicy::Each`] the caller then awaits [`JournalHandle::durable`]. On `Err`
    /// nothing of this call is recorded and the request must be refused: the writer is
    /// gone, the session's records already failed ([`JournalError::SessionFailed`]), an
    /// event is invalid, or the write failed (disk full, I/O error).
    ///
    /// Ordering with the queued commands: events recorded before a command is queued (e.g.
    /// before `end_session` is called) are committed before it, in the same batch or an
    /// earlier one. A chunk queued *before* `record` is called may still be committed after
    /// the events if both land in the same batch.
    pub fn record(&self, events: &[Event]) -> Result<u64, JournalError> {
        if self.tx.is_closed() {
            return Err(JournalError::WriterGone);
        }
        if let Some(failed) = events
            .iter()
            .find(|e| e.session != NO_SESSION && self.shared.is_failed(e.session))
        {
            return Err(JournalError::SessionFailed { id: failed.session });
        }
        let sealed = self.sealed_for(events)?;
        let seq = if sealed.is_empty() {
            self.prelog.append(events)?
        } else {
            // Right after the events they were masked for, in the same pre-log record.
            let mut all = Vec::with_capacity(events.len() + sealed.len());
            all.extend_from_slice(events);
            all.extend(sealed);
            self.prelog.append(&all)?
        };
        if !events.is_empty() {
            self.wake_lazily();
        }
        Ok(seq)
    }

    /// The `sealed_originals` events of the sessions of `events` that collected
    /// originals since their last record.
    fn sealed_for(&self, events: &[Event]) -> Result<Vec<Event>, JournalError> {
        let Some(sealing) = &self.sealing else {
            return Ok(Vec::new());
        };
        let mut sealed = Vec::new();
        let mut seen: Vec<SessionId> = Vec::new();
        for event in events {
            if event.session == NO_SESSION || seen.contains(&event.session) {
                continue;
            }
            seen.push(event.session);
            sealed.extend(sealing.take(event.session)?);
        }
        Ok(sealed)
    }

    /// Where the masks of `session` keep the originals they replace, when they are
    /// sealed for auditors (`[evidence] auditor_recipients`); `None` otherwise. What it
    /// collects is sealed into the session's next record (and at its end).
    pub fn originals(&self, session: SessionId) -> Option<Arc<crate::mask::Originals>> {
        let sealing = self.sealing.as_ref()?;
        let originals = Arc::new(crate::mask::Originals::new(
            sealing.auditors.max_bytes_per_session,
        ));
        // Removed at the session's end (`end_session`), which every session reaches.
        sealing
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session, Arc::downgrade(&originals));
        Some(originals)
    }

    /// Resolves once a commit holding every pre-log record up to `seq` has completed.
    ///
    /// Returns [`JournalError::NotDurable`] if the last attempt to commit them failed (they
    /// stay in the pre-log and are retried, but the caller should refuse the request), and
    /// [`JournalError::WriterGone`] if the writer stopped first. A record that was committed
    /// but could not be inserted (its session does not exist) does not make this fail; it
    /// marks its session failed (see [`JournalHandle::session_failed`]).
    pub async fn durable(&self, seq: u64) -> Result<(), JournalError> {
        let mut rx = self.durable.clone();
        let waited = rx
            .wait_for(|d| d.committed >= seq || d.failed_through >= seq)
            .await
            .map(|state| state.clone());
        let state = match waited {
            Ok(state) => state,
            // The writer has stopped; it may have committed them on its way out.
            Err(_) => {
                return if rx.borrow().committed >= seq {
                    Ok(())
                } else {
                    Err(JournalError::WriterGone)
                };
            }
        };
        if state.committed >= seq {
            return Ok(());
        }
        Err(JournalError::NotDurable {
            seq,
            reason: state
                .failure
                .unwrap_or_else(|| Arc::from("the commit failed")),
        })
    }

    /// [`JournalHandle::record`], then with [`FsyncPolicy::Each`] also
    /// [`JournalHandle::durable`]: returns when the events count as recorded under the
    /// journal's policy.
    pub async fn record_durably(&self, events: &[Event]) -> Result<u64, JournalError> {
        let seq = self.record(events)?;
        if self.fsync == FsyncPolicy::Each {
            self.durable(seq).await?;
        }
        Ok(seq)
    }

    /// Commands waiting for the writer.
    pub fn queue_depth(&self) -> u64 {
        (self.tx.max_capacity() - self.tx.capacity()) as u64
    }

    /// Bytes in the pre-log (written, not yet truncated after their commit).
    pub fn prelog_bytes(&self) -> u64 {
        self.prelog.len()
    }

    /// The policy the journal was opened with.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.fsync
    }

    /// Whether the pre-log is broken (see [`JournalError::PrelogBroken`]).
    pub fn prelog_broken(&self) -> bool {
        self.prelog.is_broken()
    }
}

/// An error and its sources on one line (`a: b: c`), for logs.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The innermost cause of an error, for a client message: the operating system's or
/// SQLite's words ("No space left on device (os error 28)", "database or disk is full"),
/// never a path.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_us() -> i64 {
    system_time_to_us(SystemTime::now())
}

/// Microseconds since the Unix epoch, negative before it, saturating far outside the range
/// any clock produces (±292,000 years).
pub(crate) fn system_time_to_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros())
            .map(|us| -us)
            .unwrap_or(i64::MIN),
    }
}

/// The inverse of [`system_time_to_us`]; `None` only if the platform cannot represent it.
pub(crate) fn us_to_system_time(us: i64) -> Option<SystemTime> {
    let magnitude = Duration::from_micros(us.unsigned_abs());
    if us >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-22T10:00:00.123456Z`.
///
/// humantime panics outside 1970..=9999, and a journal copied from another host may hold
/// anything, so such times are rendered as a raw, clearly-marked microsecond count instead.
pub fn format_rfc3339_us(t: SystemTime) -> String {
    /// The first second of the year 10000.
    const YEAR_10000: Duration = Duration::from_secs(253_402_300_800);
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d < YEAR_10000 => humantime::format_rfc3339_micros(t).to_string(),
        _ => format!("{}us-since-epoch", system_time_to_us(t)),
    }
}

// Crate-visible so that the CLI tests can reuse its fixtures.
#[cfg(test)]
mod evidence_tests;
#[cfg(test)]
pub(crate) mod tests;
