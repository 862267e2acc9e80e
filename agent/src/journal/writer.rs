//! The writer thread: the only owner of the read-write SQLite connection.
//!
//! It takes one command from the queue (blocking), then as many more as are already waiting
//! (up to `batch_max`), executes them all in ONE transaction, commits, and only then answers
//! the waiters. Under load this lets many sessions' starts share one fsync, which is what
//! makes "record before forward" affordable.
//!
//! Failures are contained per command where SQLite allows it: a statement that fails (a
//! constraint, a trigger) only fails its own command, thanks to statement-level rollback and
//! a savepoint around the multi-statement commands. When the transaction as a whole is lost
//! (BEGIN or COMMIT fails, or SQLite rolled everything back after an I/O error), every waiter
//! of the batch gets the error and the sessions it touched are marked failed. Either way the
//! writer goes on with the next batch, because the disk may recover.
//!
//! Pre-log records ([`super::prelog`]) are copied at the start of every batch, before the
//! batch's commands, in the same transaction: a command queued after `record` returned
//! (such as the session's end) is therefore always committed after those records. If the
//! transaction is lost, the records are not marked applied and the next batch tries again
//! (a timer retries them even when no command arrives).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, watch};

use super::prelog::{self, Prelog};
use super::segments;
use super::{
    system_time_to_us, Durability, JournalError, SegmentOptions, SessionEnd, SessionId,
    SessionStart, Shared,
};
use crate::evidence::chain::{event_hash_with, ChainEvent, ChainState};
use crate::evidence::SealReason;

/// An event row to insert; the id and the hash are assigned by [`Chain::insert_event`].
pub(crate) struct NewEvent<'a> {
    pub(crate) session_id: Option<SessionId>,
    pub(crate) at_us: i64,
    pub(crate) kind: &'a str,
    pub(crate) direction: Option<&'a str>,
    pub(crate) size: Option<i64>,
    pub(crate) data: Option<&'a str>,
}

/// The writer's position in the hash chain (see [`crate::evidence`]). Every insert into
/// `events` goes through [`Chain::insert_event`], which assigns the id explicitly (ids
/// continue across segments) and the hash.
pub(crate) struct Chain {
    pub(crate) state: ChainState,
    /// Reused encoding buffer: hashing allocates nothing per event.
    scratch: Vec<u8>,
}

impl Chain {
    pub(crate) fn new(state: ChainState) -> Self {
        Chain {
            state,
            scratch: Vec::with_capacity(256),
        }
    }

    /// Inserts one chained event; the chain only advances once the row is in.
    pub(crate) fn insert_event(
        &mut self,
        conn: &Connection,
        e: &NewEvent<'_>,
    ) -> rusqlite::Result<i64> {
        let mut insert = conn.prepare_cached(INSERT_EVENT)?;
        self.insert_event_with(&mut insert, e)
    }

    /// [`Chain::insert_event`] with the statement of [`INSERT_EVENT`] prepared by the
    /// caller: a batch prepares it once rather than looking it up in the statement
    /// cache (a hash of the SQL text) for every row.
    pub(crate) fn insert_event_with(
        &mut self,
        insert: &mut rusqlite::Statement<'_>,
        e: &NewEvent<'_>,
    ) -> rusqlite::Result<i64> {
        let id = self.state.next_event_id;
        let hash = event_hash_with(
            &self.state.last_hash,
            &ChainEvent {
                id,
                session_id: e.session_id,
                at_us: e.at_us,
                kind: e.kind.as_bytes(),
                direction: e.direction.map(str::as_bytes),
                size: e.size,
                data: e.data.map(str::as_bytes),
            },
            &mut self.scratch,
        );
        insert.execute(params![
            id,
            e.session_id,
            e.at_us,
            e.kind,
            e.direction,
            e.size,
            e.data,
            &hash[..]
        ])?;
        self.state.last_hash = hash;
        self.state.next_event_id = id + 1;
        Ok(id)
    }
}

/// The one statement that inserts into `events` (see [`Chain::insert_event`]).
pub(crate) const INSERT_EVENT: &str =
    "INSERT INTO events (id, session_id, at_us, kind, direction, size, data, hash) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// What the handles ask of the writer.
pub(crate) enum Command {
    End {
        end: SessionEnd,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// Sent by `Journal::close`: stop accepting commands, commit what is queued, exit.
    Shutdown,
    /// Sent by `JournalHandle::record`: there are new pre-log records. It carries nothing:
    /// every batch reads the pre-log anyway, this only makes sure a batch starts.
    Wake,
}

impl Command {
    /// Chunks and ends have no client waiting on them: a batch holding only those may
    /// wait a moment for company (see [`LINGER`]). So may a pre-log wake-up when no
    /// caller waits for its records' commit (`wakes_are_lazy`: not `journal_fsync =
    /// "each"`): the records already survive the agent being killed, and one commit
    /// (one fsync) then takes every record of the linger instead of one commit per
    /// request under load.
    fn is_lazy(&self, wakes_are_lazy: bool) -> bool {
        match self {
            Command::End { .. } => true,
            Command::Wake => wakes_are_lazy,
            _ => false,
        }
    }
}

/// How long a batch of only lazy commands (ends, and pre-log wake-ups under `"group"`)
/// gathers more commands before it commits, counted from its first. Without it, a session
/// start that arrives while the previous session's end is being fsynced waits for that
/// fsync and then its own; with it, both share one commit. A command someone waits for
/// (a flush, a wake-up under `"each"`) or a shutdown ends the wait at once.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// How soon pre-log records whose commit failed are tried again when no command arrives.
const RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// A command after its statements ran, waiting for the batch's commit to be answered.
///
/// The results only describe the command's own statements; if the batch as a whole is not
/// committed, every waiter gets the batch error instead.
enum Executed {
    End {
        id: SessionId,
        reply: oneshot::Sender<Result<(), JournalError>>,
        result: Result<(), JournalError>,
    },
    Flush {
        /// Records queued between the previous flush and this one that failed.
        failed: u64,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    Shutdown,
}

impl Executed {
    /// A command whose statements were not run because the batch was already lost. Its own
    /// result is `Ok` ("no failure of its own"): it only receives the batch error.
    fn without_running(cmd: Command, failures: &mut Failures) -> Executed {
        match cmd {
            Command::End { end, reply } => Executed::End {
                id: end.id,
                reply,
                result: Ok(()),
            },
            Command::Flush { reply } => Executed::Flush {
                failed: failures.take_since_flush(),
                reply,
            },
            Command::Shutdown | Command::Wake => Executed::Shutdown,
        }
    }

    /// Whether this is a record that was meant to be committed and has not already been
    /// counted as failed.
    fn is_pending_record(&self) -> bool {
        match self {
            Executed::End { result, .. } => result.is_ok(),
            Executed::Flush { .. } | Executed::Shutdown => false,
        }
    }

    /// Takes the SQLite error out of this command's result, for a failure that cost the whole
    /// transaction. The result left behind is never delivered: the batch error is.
    fn take_sqlite_error(&mut self) -> Option<(&'static str, rusqlite::Error)> {
        let slot: &mut Result<(), JournalError> = match self {
            Executed::End { result, .. } => result,
            Executed::Flush { .. } | Executed::Shutdown => return None,
        };
        match std::mem::replace(slot, Ok(())) {
            Err(JournalError::Sqlite { op, source }) => Some((op, source)),
            _ => None,
        }
    }
}

/// How the writer forms batches.
pub(crate) struct Batching {
    /// Commands per batch at most.
    pub(crate) max: usize,
    /// See [`Command::is_lazy`].
    pub(crate) wakes_are_lazy: bool,
}

/// Starts the writer thread on an already-migrated connection.
pub(crate) fn spawn(
    conn: Connection,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    batching: Batching,
    prelog: PrelogIngest,
    chain: Chain,
    segments: Option<Segmenter>,
) -> Result<JoinHandle<Result<(), JournalError>>, JournalError> {
    let writer = Writer {
        conn,
        rx,
        shared,
        batch_max: batching.max.max(1),
        wakes_are_lazy: batching.wakes_are_lazy,
        failures: Failures::default(),
        prelog,
        chain,
        segments,
    };
    std::thread::Builder::new()
        .name("nhi-journal".to_string())
        .spawn(move || writer.run())
        .map_err(|source| JournalError::SpawnWriter { source })
}

struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    batch_max: usize,
    /// See [`Command::is_lazy`].
    wakes_are_lazy: bool,
    failures: Failures,
    prelog: PrelogIngest,
    chain: Chain,
    segments: Option<Segmenter>,
}

/// Rotation of the live segment (only with a signing key, see [`SegmentOptions`]).
pub(crate) struct Segmenter {
    pub(crate) opts: SegmentOptions,
    pub(crate) path: PathBuf,
    /// When the live segment was opened (its age counts from the agent's start or the last
    /// rotation, whichever is later).
    pub(crate) started: Instant,
    /// After a failed rotation, the next attempt waits until then.
    pub(crate) retry_at: Option<Instant>,
    /// The number of the last checkpoint written (numbering goes on across restarts).
    pub(crate) checkpoint_n: u64,
    /// When the last checkpoint was written (or attempted).
    pub(crate) checkpointed_at: Instant,
    /// The chain's `next_event_id` the last checkpoint names: nothing to do while it
    /// has not moved. `None` after a rotation.
    pub(crate) checkpointed_next: Option<i64>,
    /// Set when the live file does not extend its checkpoint: that checkpoint is kept
    /// as evidence and none is written until the next rotation.
    pub(crate) checkpoint_blocked: bool,
}

impl Segmenter {
    /// How long until an age rotation (or a retry of a failed rotation) is due.
    fn time_to_due(&self) -> std::time::Duration {
        let now = Instant::now();
        let due = self
            .retry_at
            .unwrap_or(self.started + self.opts.max_age)
            .max(self.started + self.opts.max_age);
        due.saturating_duration_since(now)
            .max(std::time::Duration::from_millis(10))
    }

    /// Whether the head moved since the last checkpoint (and checkpoints are possible).
    fn checkpoint_dirty(&self, chain: &ChainState) -> bool {
        !self.checkpoint_blocked && self.checkpointed_next != Some(chain.next_event_id)
    }

    /// How long until a checkpoint is due, if one will be.
    fn time_to_checkpoint(&self, chain: &ChainState) -> Option<std::time::Duration> {
        self.checkpoint_dirty(chain).then(|| {
            (self.checkpointed_at + self.opts.checkpoint_interval)
                .saturating_duration_since(Instant::now())
                .max(std::time::Duration::from_millis(10))
        })
    }

    /// Writes a checkpoint of the live segment in `conn` whose committed chain ends at
    /// `chain` (see [`super::checkpoint`]). A failure is logged; the next
    /// attempt comes an interval later.
    pub(crate) fn checkpoint(
        &mut self,
        conn: &Connection,
        chain: &ChainState,
        reason: super::checkpoint::CheckpointReason,
    ) {
        if self.checkpoint_blocked {
            return;
        }
        self.checkpointed_at = Instant::now();
        match segments::write_checkpoint(
            conn,
            &self.path,
            chain,
            &self.opts.key,
            &self.opts.host_id,
            self.checkpoint_n + 1,
            reason,
        ) {
            Ok(segments::CheckpointOutcome::Written(n)) => {
                self.checkpoint_n = n;
                self.checkpointed_next = Some(chain.next_event_id);
                tracing::debug!(
                    n,
                    ?reason,
                    next_event_id = chain.next_event_id,
                    "journal checkpoint written"
                );
            }
            Ok(segments::CheckpointOutcome::Unchanged) => {
                self.checkpointed_next = Some(chain.next_event_id);
            }
            Ok(segments::CheckpointOutcome::Blocked(why)) => {
                tracing::error!(
                    why,
                    "the live journal segment does not extend its last checkpoint (truncated, \
                     deleted or replaced?): the checkpoint is kept as evidence and no new one is \
                     written until the next rotation; `nhi-agent verify` reports the damage"
                );
                self.checkpoint_blocked = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write the journal checkpoint; retrying after the interval");
            }
        }
    }

    /// After a rotation: the new segment starts with no checkpoint of this process.
    pub(crate) fn rotated(&mut self) {
        self.checkpoint_blocked = false;
        self.checkpointed_next = None;
    }

    /// Why the live segment in `conn` should be rotated now, if it should.
    fn due(&self, conn: &Connection) -> Option<SealReason> {
        let now = Instant::now();
        if self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        if segment_size(conn) >= self.opts.max_bytes {
            return Some(SealReason::Size);
        }
        (now.duration_since(self.started) >= self.opts.max_age).then_some(SealReason::Age)
    }
}

/// The size the live segment will have once sealed: its pages, those still in the WAL
/// included (what the checkpoint before rotation writes into the file). Not the size of
/// the files: the WAL file keeps its high-water size after every WAL checkpoint, so
/// counting it rotated segments far below `segment_max_bytes` (`cargo xtask soak` saw
/// 0.3 MiB segments under a 4 MiB limit, one every two seconds).
fn segment_size(conn: &Connection) -> u64 {
    let pragma = |name: &str| {
        conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get::<_, i64>(0))
            .unwrap_or(0)
    };
    u64::try_from(pragma("page_count").saturating_mul(pragma("page_size"))).unwrap_or(0)
}

/// Seals the live segment in `conn` (unless `existing_seal` is its seal already), moves it
/// to `segments/<seq>.db` with its `.seal`, and opens its successor at `path`.
///
/// `conn` is consumed: on error the caller reopens `path` (see [`super::open_live`]).
pub(crate) fn rotate(
    conn: Connection,
    path: &Path,
    chain: &ChainState,
    opts: &SegmentOptions,
    reason: SealReason,
    existing_seal: Option<String>,
) -> Result<Connection, JournalError> {
    let evidence = |source| JournalError::Evidence { source };
    let jws = match existing_seal {
        Some(jws) => jws,
        None => segments::seal_in_place(&conn, chain, &opts.key, &opts.host_id, reason, path)
            .map_err(evidence)?,
    };
    let carry = segments::read_carry(&conn, chain, &jws)
        .map_err(JournalError::sqlite("read the segment to rotate"))?;
    // Everything into the main file, so that the moved file is complete on its own.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(JournalError::sqlite("checkpoint before rotation"))?;
    conn.close().map_err(|(_, source)| JournalError::Sqlite {
        op: "close the sealed segment",
        source,
    })?;
    // The successor is built whole beside the live file and renamed over it once the
    // sealed file is linked into segments/, so the live path always names a complete
    // journal (readers such as `nhi-agent sessions --journal` never find it missing or
    // empty).
    let next_path = segments::successor_path(path);
    build_successor(&next_path, &carry, &opts.host_id)?;
    let moved = segments::link_into_segments(path, carry.seq(), &jws).map_err(evidence)?;
    segments::replace_live(&next_path, path).map_err(evidence)?;
    let next = super::schema::open_for_writing(path)?;
    tracing::info!(
        segment = %moved.display(),
        seq = carry.seq(),
        ?reason,
        "journal segment sealed and rotated"
    );
    Ok(next)
}

/// Creates the successor of a sealed segment at `next` (a leftover of an interrupted
/// rotation is replaced: it holds nothing but what `carry` rebuilds), complete and closed:
/// its WAL checkpointed into the file, so that it can be renamed.
fn build_successor(
    next: &Path,
    carry: &segments::Carry,
    host_id: &str,
) -> Result<(), JournalError> {
    let _ = std::fs::remove_file(next);
    segments::remove_sqlite_sidecars(next);
    let mut conn = super::schema::open_for_writing(next)?;
    segments::init_successor(&mut conn, carry, host_id)
        .map_err(JournalError::sqlite("initialize the next segment"))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(JournalError::sqlite("checkpoint the next segment"))?;
    conn.close().map_err(|(_, source)| JournalError::Sqlite {
        op: "close the next segment",
        source,
    })?;
    segments::remove_sqlite_sidecars(next);
    Ok(())
}

/// The writer's side of the pre-log: where it has read up to, and whom it tells.
pub(crate) struct PrelogIngest {
    prelog: Arc<Prelog>,
    /// Its own descriptor, for `pread`.
    file: File,
    /// The end of the records committed so far (0 after a truncation).
    applied_offset: u64,
    applied_seq: u64,
    /// Reused between batches.
    buf: Vec<u8>,
    durable: watch::Sender<Durability>,
    /// Set while the last attempt failed: retry on a timer, log only once per streak.
    failing: bool,
    /// Set once a record that cannot be read was found (see `Prelog::mark_broken`).
    stuck: bool,
}

impl PrelogIngest {
    pub(crate) fn new(
        prelog: Arc<Prelog>,
        file: File,
        applied_seq: u64,
        durable: watch::Sender<Durability>,
    ) -> Self {
        PrelogIngest {
            prelog,
            file,
            applied_offset: 0,
            applied_seq,
            buf: Vec::new(),
            durable,
            failing: false,
            stuck: false,
        }
    }

    /// Reads the records written since the last commit into `buf`; returns the end offset
    /// and last seq of what was read, or None when there is nothing new (or it cannot be
    /// read now: logged, retried).
    fn read_new(&mut self) -> Option<(u64, u64)> {
        if self.stuck {
            return None;
        }
        // Clear before looking, so that a record appended after this point queues a wake-up
        // of its own.
        self.prelog.clear_wake();
        let (end, last_seq) = self.prelog.written();
        if end <= self.applied_offset {
            return None;
        }
        let len = (end - self.applied_offset) as usize;
        self.buf.resize(len, 0);
        use std::os::unix::fs::FileExt;
        match self
            .file
            .read_exact_at(&mut self.buf[..len], self.applied_offset)
        {
            Ok(()) => Some((end, last_seq)),
            Err(e) => {
                self.note_failure(
                    last_seq,
                    format!("cannot read {}: {e}", self.prelog.path().display()),
                );
                None
            }
        }
    }

    /// Tells the waiters of [`super::JournalHandle::durable`] and logs the first failure of
    /// a streak.
    fn note_failure(&mut self, through: u64, reason: String) {
        if !self.failing {
            tracing::error!(
                reason,
                "journal could not commit pre-log records; they stay in the pre-log and are retried"
            );
        }
        self.failing = true;
        let reason: Arc<str> = Arc::from(reason);
        self.durable.send_modify(|d| {
            d.failed_through = d.failed_through.max(through);
            d.failure = Some(reason);
        });
    }

    /// After a successful commit of the records up to `end` / `seq`.
    fn committed(&mut self, end: u64, seq: u64) {
        if self.failing {
            tracing::info!("journal pre-log records are being committed again");
            self.failing = false;
        }
        self.applied_offset = end;
        self.applied_seq = seq;
        self.durable.send_modify(|d| d.committed = seq);
        // Sized for one batch's backlog; do not keep a huge one from a long outage.
        if self.buf.capacity() > 4 << 20 {
            self.buf = Vec::new();
        }
    }

    /// Empties the file once everything in it is committed and it is large enough (or
    /// always, with `force`, when the writer exits).
    fn maybe_truncate(&mut self, force: bool) {
        if self.stuck || (!force && self.applied_offset < self.prelog.truncate_at()) {
            return;
        }
        match self.prelog.truncate_if_applied(self.applied_offset) {
            Ok(true) => self.applied_offset = 0,
            Ok(false) => {}
            // Harmless: the file keeps growing and the next batch tries again.
            Err(e) => {
                tracing::warn!(error = %super::error_chain(&e), "cannot truncate the journal pre-log")
            }
        }
    }
}

/// What a batch copied from the pre-log, to be applied once the commit succeeded.
struct Ingested {
    end: u64,
    seq: u64,
    inserted: u64,
}

/// Copies the records in `buf` (starting at file offset `start`) into `events` inside `tx`.
/// `Err` means the transaction is lost.
fn ingest(
    tx: &Transaction<'_>,
    chain: &mut Chain,
    ing: &mut PrelogIngest,
    start: u64,
    last_seq: u64,
    shared: &Shared,
    failures: &mut Failures,
) -> Result<Ingested, (&'static str, rusqlite::Error)> {
    let mut insert = tx
        .prepare_cached(INSERT_EVENT)
        .map_err(|e| ("prepare the events insert", e))?;
    let mut off = 0usize;
    let mut seq = ing.applied_seq;
    let mut inserted = 0;
    let mut stop = None;
    while off < ing.buf.len() {
        match prelog::decode(&ing.buf[off..]) {
            prelog::Decoded::Record { record, len }
                if record.seq > seq
                    && record.session != prelog::NO_SESSION
                    && shared.is_failed(record.session) =>
            {
                // Once one record of a session is lost its timeline has a hole;
                // recording later ones would make the hole look like a quiet period.
                failures.add(1);
                seq = record.seq;
                off += len;
            }
            prelog::Decoded::Record { record, len } if record.seq > seq => {
                match prelog::insert_record(tx, &mut insert, chain, &record, true) {
                    Ok(()) => inserted += 1,
                    Err(e) if tx.is_autocommit() => return Err(("insert pre-log record", e)),
                    // One record the database refuses (its session does not exist, a
                    // trigger): like a failed chunk, it fails its session, not the journal.
                    Err(e) => {
                        failures.add(1);
                        if record.session != prelog::NO_SESSION {
                            shared.mark_failed(record.session);
                        }
                        tracing::error!(
                            session = record.session,
                            seq = record.seq,
                            error = %e,
                            "journal could not record a pre-log event"
                        );
                    }
                }
                seq = record.seq;
                off += len;
            }
            prelog::Decoded::Record { .. } => {
                stop = Some("sequence number went backwards");
                break;
            }
            prelog::Decoded::Incomplete => {
                stop = Some("incomplete record");
                break;
            }
            prelog::Decoded::Corrupt(reason) => {
                stop = Some(reason);
                break;
            }
        }
    }
    if let Some(reason) = stop {
        // Appends are whole records under a lock, so this is damage from outside (or a
        // bug). Ingest what precedes it and refuse further appends: forwarding requests
        // whose records could never be read would be worse than refusing them.
        tracing::error!(
            path = %ing.prelog.path().display(),
            offset = start + off as u64,
            reason,
            "journal pre-log holds a record that cannot be read; no more events can be recorded until the agent restarts"
        );
        ing.prelog.mark_broken();
        ing.stuck = true;
    } else {
        seq = seq.max(last_seq);
    }
    prelog::store_applied(tx, seq).map_err(|e| ("store prelog_applied_seq", e))?;
    Ok(Ingested {
        end: start + off as u64,
        seq,
        inserted,
    })
}

/// Counts the records that did not make it into the journal.
#[derive(Debug, Default)]
struct Failures {
    /// Since the writer started; published to `Shared` after each batch.
    total: u64,
    /// Since the last flush in queue order: each failure is reported to the first flush
    /// queued after it, so a task that queues chunks and then flushes learns about them.
    since_flush: u64,
}

impl Failures {
    fn add(&mut self, records: u64) {
        self.total += records;
        self.since_flush += records;
    }

    fn take_since_flush(&mut self) -> u64 {
        std::mem::take(&mut self.since_flush)
    }
}

impl Writer {
    fn run(mut self) -> Result<(), JournalError> {
        let mut batch = Vec::with_capacity(self.batch_max.min(4096));
        // Only for the timed receive of LINGER; the writer is otherwise synchronous.
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .ok();
        // Set once a Shutdown is seen: from then on, everything still queued is drained and
        // its outcome decides what `Journal::close` returns.
        let mut drain: Option<(u64, Result<(), JournalError>)> = None;

        // `blocking_recv` returns None once every handle is dropped, or after `close()` once
        // the queue is empty, so queued commands are never abandoned.
        loop {
            // Pre-log records waiting for a retry, or a segment that will reach its
            // maximum age: do not sleep until the next command, it may never come.
            let wake_in = if self.prelog.failing {
                Some(RETRY)
            } else {
                self.segments.as_ref().map(|seg| {
                    let rotation = seg.time_to_due();
                    seg.time_to_checkpoint(&self.chain.state)
                        .map_or(rotation, |c| c.min(rotation))
                })
            };
            let first = match (&timer, wake_in) {
                (Some(timer), Some(wake_in)) => {
                    let rx = &mut self.rx;
                    match timer.block_on(async { tokio::time::timeout(wake_in, rx.recv()).await }) {
                        Ok(Some(cmd)) => Some(cmd),
                        Ok(None) => break,
                        Err(_elapsed) => None,
                    }
                }
                _ => match self.rx.blocking_recv() {
                    Some(cmd) => Some(cmd),
                    None => break,
                },
            };
            batch.extend(first);
            self.fill(&mut batch);
            if let Some(timer) = &timer {
                // A lazy batch gathers what comes within LINGER of its start, not just
                // the next command: under a stream of short sessions, an end arrives every
                // few hundred microseconds, and a commit per end was a commit (an fsync,
                // ten WAL pages) per session.
                let deadline = tokio::time::Instant::now() + LINGER;
                while !batch.is_empty()
                    && batch.len() < self.batch_max
                    && batch.iter().all(|c| c.is_lazy(self.wakes_are_lazy))
                {
                    let rx = &mut self.rx;
                    let more = timer
                        .block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await });
                    match more {
                        Ok(Some(cmd)) => {
                            batch.push(cmd);
                            self.fill(&mut batch);
                        }
                        // The deadline, or every handle gone: commit what there is.
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            if drain.is_none() && batch.iter().any(|c| matches!(c, Command::Shutdown)) {
                // Refuse new commands; the ones already queued are still received.
                self.rx.close();
                drain = Some((self.failures.total, Ok(())));
            }
            // Tests hang the writer here (debug builds) to see what a hung writer does.
            crate::failpoint::hold_blocking("journal.writer_batch");
            let outcome = self.process(&mut batch);
            if let Some((_, drain_result @ Ok(()))) = drain.as_mut() {
                *drain_result = outcome;
            }
            if drain.is_none() {
                self.maybe_rotate()?;
                self.maybe_checkpoint();
            }
        }

        // Records appended while the last batch ran: commit them now rather than leave them
        // to the next start's recovery, then leave an empty pre-log behind.
        let _ = self.process(&mut batch);
        self.prelog.maybe_truncate(true);

        // A clean stop seals the live segment in place; the next start moves it into
        // segments/ before writing anything. The last checkpoint names the same head.
        if let Some(seg) = self.segments.as_mut() {
            if let Err(e) = segments::seal_in_place(
                &self.conn,
                &self.chain.state,
                &seg.opts.key,
                &seg.opts.host_id,
                SealReason::Shutdown,
                &seg.path,
            ) {
                tracing::error!(error = %super::error_chain(&e), "cannot seal the journal at shutdown");
            }
            seg.checkpoint(
                &self.conn,
                &self.chain.state,
                super::checkpoint::CheckpointReason::Shutdown,
            );
        }

        // Closing the last connection checkpoints the WAL into the main file and removes it,
        // so a cleanly closed journal is a single self-contained file to copy elsewhere.
        self.conn
            .close()
            .map_err(|(_, source)| JournalError::Sqlite {
                op: "close the database",
                source,
            })?;

        match drain {
            Some((_, Err(e))) => Err(e),
            Some((failed_before, Ok(()))) if self.failures.total > failed_before => {
                Err(JournalError::FlushIncomplete {
                    failed: self.failures.total - failed_before,
                })
            }
            _ => Ok(()),
        }
    }

    /// Between batches: seals and rotates the live segment when it is due. A failed
    /// rotation is logged and retried a minute later; the writer only stops if it cannot
    /// reopen a live file at all.
    fn maybe_rotate(&mut self) -> Result<(), JournalError> {
        let Some(reason) = self.segments.as_ref().and_then(|s| s.due(&self.conn)) else {
            return Ok(());
        };
        let Some(seg) = self.segments.as_mut() else {
            return Ok(());
        };
        let placeholder = Connection::open_in_memory()
            .map_err(JournalError::sqlite("open a placeholder connection"))?;
        let conn = std::mem::replace(&mut self.conn, placeholder);
        match rotate(conn, &seg.path, &self.chain.state, &seg.opts, reason, None) {
            Ok(next) => {
                self.conn = next;
                seg.started = Instant::now();
                seg.retry_at = None;
                // The new segment's first checkpoint: its deletion is detectable at once.
                seg.rotated();
                seg.checkpoint(
                    &self.conn,
                    &self.chain.state,
                    super::checkpoint::CheckpointReason::Rotation,
                );
            }
            Err(e) => {
                tracing::error!(
                    error = %super::error_chain(&e),
                    "cannot rotate the journal segment; writing on in the live file"
                );
                seg.retry_at = Some(Instant::now() + std::time::Duration::from_secs(60));
                let (conn, state) = super::open_live(&seg.path, Some(&seg.opts))?;
                self.conn = conn;
                self.chain.state = state;
            }
        }
        Ok(())
    }

    /// Between batches: checkpoints the head when it moved and the interval has passed.
    fn maybe_checkpoint(&mut self) {
        let Some(seg) = self.segments.as_mut() else {
            return;
        };
        if seg.checkpoint_dirty(&self.chain.state)
            && seg.checkpointed_at.elapsed() >= seg.opts.checkpoint_interval
        {
            seg.checkpoint(
                &self.conn,
                &self.chain.state,
                super::checkpoint::CheckpointReason::Interval,
            );
        }
    }

    /// Takes what is already queued, up to `batch_max`.
    fn fill(&mut self, batch: &mut Vec<Command>) {
        while batch.len() < self.batch_max {
            match self.rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
    }

    /// Executes and commits one batch, answers its waiters, and returns the batch error if
    /// the transaction was lost.
    fn process(&mut self, batch: &mut Vec<Command>) -> Result<(), JournalError> {
        // Wake-ups have done their job by starting this batch.
        batch.retain(|cmd| !matches!(cmd, Command::Wake));
        let commands = batch.len();
        let new_records = self.prelog.read_new();
        if commands == 0 && new_records.is_none() {
            return Ok(());
        }
        self.shared
            .commands
            .fetch_add(commands as u64, Ordering::Relaxed);
        let mut executed = Vec::with_capacity(commands);
        let mut lost: Option<(&'static str, rusqlite::Error)> = None;
        let mut ingested = None;
        // Put back if the transaction is lost, so the chain never links to rows that were
        // rolled back.
        let chain_before = self.chain.state;
        let began = std::time::Instant::now();
        let mut commit_took = std::time::Duration::ZERO;

        match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Err(e) => {
                lost = Some(("begin transaction", e));
                for cmd in batch.drain(..) {
                    executed.push(Executed::without_running(cmd, &mut self.failures));
                }
            }
            Ok(mut tx) => {
                if let Some((_, last_seq)) = new_records {
                    let start = self.prelog.applied_offset;
                    match ingest(
                        &tx,
                        &mut self.chain,
                        &mut self.prelog,
                        start,
                        last_seq,
                        &self.shared,
                        &mut self.failures,
                    ) {
                        Ok(done) => ingested = Some(done),
                        Err(e) => lost = Some(e),
                    }
                }
                for cmd in batch.drain(..) {
                    if lost.is_some() {
                        executed.push(Executed::without_running(cmd, &mut self.failures));
                        continue;
                    }
                    let mut ex = execute(&mut tx, &mut self.chain, &mut self.failures, cmd);
                    // Some errors (I/O, disk full) make SQLite roll back the whole
                    // transaction, not just the statement: everything before is gone too.
                    if tx.is_autocommit() {
                        lost = Some(ex.take_sqlite_error().unwrap_or_else(|| {
                            (
                                "execute",
                                rusqlite::Error::SqliteFailure(
                                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                                    Some("transaction rolled back by SQLite".to_string()),
                                ),
                            )
                        }));
                    }
                    executed.push(ex);
                }
                if lost.is_none() {
                    let committing = std::time::Instant::now();
                    if let Err(e) = tx.commit() {
                        // The transaction is rolled back when `tx` is dropped by `commit`.
                        lost = Some(("commit", e));
                    }
                    commit_took = committing.elapsed();
                }
            }
        }

        match lost {
            None => {
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                let records = commands as u64 + ingested.as_ref().map_or(0, |d| d.inserted);
                crate::metrics::get().journal_batch(records, began.elapsed(), commit_took);
                if let Some(done) = ingested {
                    self.shared
                        .prelog_records
                        .fetch_add(done.inserted, Ordering::Relaxed);
                    self.prelog.committed(done.end, done.seq);
                    self.prelog.maybe_truncate(false);
                }
                self.publish_failures();
                self.answer_committed(executed);
                Ok(())
            }
            Some((op, source)) => {
                crate::metrics::get().journal_batch_failed();
                self.chain.state = chain_before;
                if let Some((_, last_seq)) = new_records {
                    self.prelog
                        .note_failure(last_seq, format!("{op} failed: {source}"));
                }
                Err(self.answer_lost(executed, op, source))
            }
        }
    }

    /// Makes the failure count visible in the stats; done before answering the waiters, so
    /// that a waiter never sees counters older than its own answer.
    fn publish_failures(&self) {
        self.shared
            .failed_records
            .store(self.failures.total, Ordering::Relaxed);
    }

    fn answer_committed(&self, executed: Vec<Executed>) {
        for ex in executed {
            // A waiter that gave up (its task was cancelled) no longer needs the answer, so
            // a failed send is not an error.
            match ex {
                Executed::Shutdown => {}
                Executed::End { id, reply, result } => {
                    self.shared.forget(id);
                    let _ = reply.send(result);
                }
                Executed::Flush { failed, reply } => {
                    let answer = if failed > 0 {
                        Err(JournalError::FlushIncomplete { failed })
                    } else {
                        Ok(())
                    };
                    let _ = reply.send(answer);
                }
            }
        }
    }

    fn answer_lost(
        &mut self,
        executed: Vec<Executed>,
        op: &'static str,
        source: rusqlite::Error,
    ) -> JournalError {
        let commands = executed.len();
        let source = Arc::new(source);
        let batch_error = || JournalError::BatchFailed {
            op,
            commands,
            source: Arc::clone(&source),
        };
        self.shared.failed_batches.fetch_add(1, Ordering::Relaxed);
        let lost_records = executed.iter().filter(|ex| ex.is_pending_record()).count();
        self.failures.total += lost_records as u64;
        // The flushes of this batch get the batch error; lost records queued after the last
        // of them are still owed to the next flush.
        let after_last_flush = executed
            .iter()
            .rev()
            .take_while(|ex| !matches!(ex, Executed::Flush { .. }))
            .filter(|ex| ex.is_pending_record())
            .count();
        self.failures.since_flush += after_last_flush as u64;
        self.publish_failures();
        if commands > 0 {
            tracing::error!(
                op,
                error = %source,
                commands,
                lost_records,
                "journal batch was not committed; the sessions it touched are marked failed"
            );
        } else {
            // Only pre-log records, retried every RETRY while the disk is full: the first
            // failure of the streak is logged by `note_failure`, not each retry.
            tracing::debug!(op, error = %source, "journal retry of pre-log records failed");
        }

        for ex in executed {
            match ex {
                Executed::Shutdown => {}
                Executed::End { id, reply, .. } => {
                    self.shared.forget(id);
                    let _ = reply.send(Err(batch_error()));
                }
                Executed::Flush { reply, .. } => {
                    let _ = reply.send(Err(batch_error()));
                }
            }
        }
        batch_error()
    }
}

/// Runs one command's statements inside the batch's transaction.
fn execute(
    tx: &mut Transaction<'_>,
    chain: &mut Chain,
    failures: &mut Failures,
    cmd: Command,
) -> Executed {
    match cmd {
        Command::End { end, reply } => {
            // The end is recorded even for a failed session: "journal failure" as the close
            // reason is exactly what a responder needs to see.
            let id = end.id;
            let result = with_savepoint(
                tx,
                chain,
                |op, e| JournalError::sqlite(op)(e),
                |conn, chain| update_end(conn, chain, &end),
            );
            if let Err(e) = &result {
                record_failure(failures, Some(id), "a session end", e);
            }
            Executed::End { id, reply, result }
        }
        Command::Flush { reply } => Executed::Flush {
            failed: failures.take_since_flush(),
            reply,
        },
        Command::Shutdown | Command::Wake => Executed::Shutdown,
    }
}

/// Counts and logs a record that will not be in the journal.
fn record_failure(failures: &mut Failures, id: Option<SessionId>, what: &str, e: &JournalError) {
    failures.add(1);
    tracing::error!(
        session = id,
        error = %super::error_chain(e),
        "journal could not record {what}"
    );
}

/// Runs `f` in a savepoint so that a record made of several statements is all or
/// nothing without losing the rest of the batch; `sql_error` turns the savepoint's own
/// statement errors into `f`'s error type.
///
/// The chain position is put back when the savepoint is rolled back. After a statement
/// error the transaction is still open and only this record is undone; an I/O error may
/// have rolled back everything already, which the caller finds out.
fn with_savepoint<T, E>(
    conn: &Connection,
    chain: &mut Chain,
    sql_error: impl Fn(&'static str, rusqlite::Error) -> E,
    f: impl FnOnce(&Connection, &mut Chain) -> Result<T, E>,
) -> Result<T, E> {
    let before = chain.state;
    // Cached statements: every session's start and end runs these, and parsing them
    // each time showed in the writer's profile.
    let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
    run("SAVEPOINT nhi_record").map_err(|e| sql_error("open a savepoint", e))?;
    let result = f(conn, chain).and_then(|value| {
        run("RELEASE nhi_record").map_err(|e| sql_error("release a savepoint", e))?;
        Ok(value)
    });
    if result.is_err() {
        chain.state = before;
        let _ = run("ROLLBACK TO nhi_record");
        let _ = run("RELEASE nhi_record");
    }
    result
}

/// SQLite integers are signed 64-bit. Counters and kernel ids never reach 2^63 in practice,
/// but the bit pattern is kept rather than failing the session: `as u64` on read restores it.
fn u64_bits(v: u64) -> i64 {
    v as i64
}

/// The `session_start` event's data: the whole identity, so that the append-only event
/// stream is complete on its own (the sessions row is a mutable summary). It is written
/// to the pre-log as it will be stored, and the writer builds the sessions row from it
/// ([`insert_session`]).
pub(crate) fn start_event_data(s: &SessionStart) -> String {
    serde_json::json!({
        "workload": s.identity.workload,
        "cgroup": s.identity.cgroup,
        "cgroup_id": s.identity.cgroup_id,
        "pid": s.identity.pid,
        "pid_start_time": s.identity.pid_start_time,
        "exe": s.identity.exe,
        "cmdline": s.identity.cmdline,
        "uid": s.identity.uid,
        "gid": s.identity.gid,
        "user": s.identity.user,
        "comm": s.identity.comm,
        "client_addr": s.identity.client_addr.to_string(),
        "orig_dst": s.identity.orig_dst.to_string(),
        "target": s.identity.target,
        "protocol": s.identity.protocol,
        "claims": s.claims,
        "container": s.identity.container,
    })
    .to_string()
}

/// The `session_start` data read back ([`start_event_data`]'s keys).
#[derive(serde::Deserialize)]
struct StartData {
    workload: String,
    cgroup: String,
    cgroup_id: u64,
    pid: u32,
    pid_start_time: Option<u64>,
    exe: Option<String>,
    cmdline: Option<Vec<String>>,
    uid: u32,
    gid: u32,
    user: Option<String>,
    comm: String,
    client_addr: String,
    orig_dst: String,
    target: String,
    protocol: String,
    claims: Option<serde_json::Value>,
    container: Option<serde_json::Value>,
}

/// Inserts a session's row and its chained `session_start` event from the pre-log
/// record [`super::JournalHandle::start_session`] wrote (id, time and data), all or
/// nothing ([`with_savepoint`]).
pub(crate) fn insert_session(
    conn: &Connection,
    insert: &mut rusqlite::Statement<'_>,
    chain: &mut Chain,
    id: SessionId,
    at_us: i64,
    data: &str,
) -> rusqlite::Result<()> {
    let d: StartData = serde_json::from_str(data).map_err(|e| {
        rusqlite::Error::ToSqlConversionFailure(
            format!("session_start data of session {id} is not a session identity: {e}").into(),
        )
    })?;
    let json = |v: Option<&serde_json::Value>| v.filter(|v| !v.is_null()).map(|v| v.to_string());
    let cmdline = d
        .cmdline
        .as_ref()
        .and_then(|c| serde_json::to_string(c).ok());
    with_savepoint(
        conn,
        chain,
        |_, e| e,
        |conn, chain| {
            conn.prepare_cached(
                "INSERT INTO sessions (workload, cgroup, cgroup_id, pid, pid_start_time, exe, \
             cmdline, uid, gid, user, comm, client_addr, orig_dst, target, protocol, \
             started_at_us, id, claims, container) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
             ?17, ?18, ?19)",
            )?
            .execute(params![
                d.workload,
                d.cgroup,
                u64_bits(d.cgroup_id),
                d.pid,
                d.pid_start_time.map(u64_bits),
                d.exe,
                cmdline,
                d.uid,
                d.gid,
                d.user,
                d.comm,
                d.client_addr,
                d.orig_dst,
                d.target,
                d.protocol,
                at_us,
                id,
                json(d.claims.as_ref()),
                json(d.container.as_ref()),
            ])?;
            // Ids are handed out by the handles; the chain state carries the next one into
            // the next segment.
            chain.state.next_session_id = chain.state.next_session_id.max(id + 1);
            chain.insert_event_with(
                insert,
                &NewEvent {
                    session_id: Some(id),
                    at_us,
                    kind: "session_start",
                    direction: None,
                    size: None,
                    data: Some(data),
                },
            )?;
            Ok(())
        },
    )
}

fn update_end(conn: &Connection, chain: &mut Chain, end: &SessionEnd) -> Result<(), JournalError> {
    let ended_at_us = system_time_to_us(end.ended_at);
    let changed = conn
        .prepare_cached(
            "UPDATE sessions SET ended_at_us = ?2, bytes_from_client = ?3, \
             bytes_from_server = ?4, close_reason = ?5 \
             WHERE id = ?1 AND ended_at_us IS NULL",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                end.id,
                ended_at_us,
                u64_bits(end.bytes_from_client),
                u64_bits(end.bytes_from_server),
                end.close_reason,
            ])
        })
        .map_err(JournalError::sqlite("update session end"))?;
    if changed == 0 {
        return Err(JournalError::SessionNotOpen { id: end.id });
    }
    let data = serde_json::json!({
        "bytes_from_client": end.bytes_from_client,
        "bytes_from_server": end.bytes_from_server,
        "close_reason": end.close_reason,
    })
    .to_string();
    chain
        .insert_event(
            conn,
            &NewEvent {
                session_id: Some(end.id),
                at_us: ended_at_us,
                kind: "session_end",
                direction: None,
                size: None,
                data: Some(&data),
            },
        )
        .map_err(JournalError::sqlite("insert session_end event"))?;
    Ok(())
}

/// Close reason of a session the previous agent process never ended (it was killed
/// or crashed). Its end time is the last activity the journal recorded for it.
pub(crate) const INTERRUPTED_REASON: &str =
    "agent stopped before the session ended (end time = last recorded activity)";

/// Ends the sessions a previous agent left open, so that a journal never shows a
/// session as still running when no agent is serving it. Totals come from the
/// session's recorded chunks. Runs once at open, before the writer starts.
pub(crate) fn close_interrupted(
    conn: &mut Connection,
    chain: &mut Chain,
) -> Result<usize, JournalError> {
    let before = chain.state;
    let tx = conn
        .transaction()
        .map_err(JournalError::sqlite("begin recovery"))?;
    let open: Vec<(SessionId, i64, i64, i64)> = {
        let mut stmt = tx
            .prepare(
                "SELECT s.id, \
                        MAX(s.started_at_us, COALESCE((SELECT MAX(e.at_us) FROM events e WHERE e.session_id = s.id), 0)), \
                        COALESCE((SELECT SUM(e.size) FROM events e WHERE e.session_id = s.id AND e.kind = 'chunk' AND e.direction = 'c2s'), 0), \
                        COALESCE((SELECT SUM(e.size) FROM events e WHERE e.session_id = s.id AND e.kind = 'chunk' AND e.direction = 's2c'), 0) \
                 FROM sessions s WHERE s.ended_at_us IS NULL ORDER BY s.id",
            )
            .map_err(JournalError::sqlite("find interrupted sessions"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(JournalError::sqlite("find interrupted sessions"))?;
        rows.collect::<Result<_, _>>()
            .map_err(JournalError::sqlite("read interrupted sessions"))?
    };
    for (id, last_us, from_client, from_server) in &open {
        let end = SessionEnd {
            id: *id,
            ended_at: std::time::UNIX_EPOCH
                + std::time::Duration::from_micros((*last_us).max(0) as u64),
            bytes_from_client: (*from_client).max(0) as u64,
            bytes_from_server: (*from_server).max(0) as u64,
            close_reason: INTERRUPTED_REASON.to_string(),
        };
        if let Err(e) = update_end(&tx, chain, &end) {
            chain.state = before;
            return Err(e);
        }
    }
    if let Err(e) = tx.commit() {
        chain.state = before;
        return Err(JournalError::sqlite("commit recovery")(e));
    }
    Ok(open.len())
}
