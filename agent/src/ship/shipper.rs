//! The shipping pass, the background loop, and `ship status`.
use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{
    backoff::Backoff,
    budget::{self, Budget, Transition},
    client::S3Client,
    config::ShipConfig,
    cursor::{Cursor, JournalCursor},
    layout::{self, Hwm},
    now_us, retention,
    segment::{self, Segment},
    ShipError,
};

/// The lock file in the state directory: one pass at a time per host (the agent's
/// background task and a `ship --once` never interleave cursor updates).
const LOCK_FILE: &str = "ship.lock";

/// What one pass did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PassReport {
    /// (journal id, segment seq) uploaded in this pass.
    pub uploaded: Vec<(String, u64)>,
    /// Segments deleted locally by retention.
    pub deleted: Vec<u64>,
    /// Gaps found (also returned as the pass's error).
    pub gaps: Vec<String>,
}

/// Shipping, retention and the budget for one agent configuration.
pub struct Shipper {
    config: ShipConfig,
    journal: PathBuf,
    state_dir: PathBuf,
    client: Option<S3Client>,
    budget: Budget,
    /// Where the live streams stand (read at each retention pass); `None`: no streams.
    streams: Option<StreamPositions>,
    /// Segments already reported as held for a stream (reported once).
    held_reported: Mutex<HashSet<(String, u64)>>,
}

/// Reads where each configured live stream stands (its cursor), for retention.
pub type StreamPositions = Box<dyn Fn() -> Vec<retention::StreamPosition> + Send + Sync>;

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper")
            .field("journal", &self.journal)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Shipper {
    /// A shipper for `[ship]` settings `config` of the journal at `journal` (loads the
    /// secret now, so a missing or too-open secret file fails the start). `budget` is the
    /// flag the proxy reads.
    pub fn new(
        config: &ShipConfig,
        journal: &std::path::Path,
        state_dir: &std::path::Path,
        budget: Budget,
    ) -> Result<Shipper, ShipError> {
        let client = match &config.shipping {
            Some(s) => Some(S3Client::new(s)?),
            None => None,
        };
        Ok(Shipper {
            config: config.clone(),
            journal: journal.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            client,
            budget,
            streams: None,
            held_reported: Mutex::new(HashSet::new()),
        })
    }

    /// This shipper, keeping every segment a live stream (`positions`, `None`: none) has
    /// not read past (see
    /// [`retention::held_by_stream`]).
    pub fn with_streams_opt(mut self, positions: Option<StreamPositions>) -> Shipper {
        self.streams = positions;
        self
    }

    /// The budget flag this shipper updates.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    fn segments_dir(&self) -> PathBuf {
        segment::segments_dir(&self.journal)
    }

    fn journal_dir(&self) -> PathBuf {
        self.journal
            .parent()
            .unwrap_or_else(|| Path::new("/"))
            .to_path_buf()
    }

    /// One pass: ship what is pending, apply retention, measure the budget. Retention
    /// and the budget run even when shipping fails; the first shipping error (or a
    /// gap) is returned.
    pub fn pass(&self) -> Result<PassReport, ShipError> {
        let _lock = self.lock()?;
        let mut report = PassReport::default();
        let scan = segment::scan(&self.segments_dir())?;
        let cursor_path = Cursor::path(&self.state_dir);
        let mut cursor = Cursor::load(&cursor_path)?;
        let shipped = match &self.client {
            Some(client) => self.ship(client, &scan, &mut cursor, &cursor_path, &mut report),
            None => Ok(()),
        };
        if let Err(e) = self.apply_retention(&scan, &cursor, &mut report) {
            error!(error = %e, "retention failed");
        }
        self.measure_budget();
        // What this pass uploaded (also when it failed part-way) and what is left.
        let pending = scan
            .journals
            .iter()
            .flat_map(|(id, segments)| segments.iter().map(move |s| (id, s.seq)))
            .filter(|(id, seq)| !cursor.is_uploaded(id, *seq))
            .count() as u64;
        let uploaded: Vec<u64> = report.uploaded.iter().map(|(_, seq)| *seq).collect();
        crate::metrics::get().ship_pass(shipped.is_ok(), &uploaded, pending);
        shipped.map(|()| report)
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<fs::File>, ShipError> {
        let path = self.state_dir.join(LOCK_FILE);
        let io = |source| ShipError::Io {
            what: format!("locking {}", path.display()),
            source,
        };
        fs::create_dir_all(&self.state_dir).map_err(io)?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| io(std::io::Error::from(errno)))
    }

    fn ship(
        &self,
        client: &S3Client,
        scan: &segment::Scan,
        cursor: &mut Cursor,
        cursor_path: &Path,
        report: &mut PassReport,
    ) -> Result<(), ShipError> {
        let Some(settings) = &self.config.shipping else {
            return Ok(());
        };
        for (seq, why) in &scan.problems {
            warn!(segment = seq, reason = %why, "segment cannot be shipped");
        }
        let mut first_gap: Option<ShipError> = None;
        for (journal_id, segments) in &scan.journals {
            let mut state = cursor.journals.get(journal_id).cloned().unwrap_or_default();
            let mut expected = state.segment_seq + 1;
            let mut contiguous = true;
            let start = state.segment_seq;
            for seg in segments.iter().filter(|s| s.seq > start) {
                if contiguous && seg.seq != expected {
                    contiguous = false;
                    let gap = ShipError::Gap {
                        journal_id: journal_id.clone(),
                        from: expected,
                        to: seg.seq - 1,
                        hwm: state.segment_seq,
                    };
                    error!(error = %gap, "EVIDENCE GAP: segments are missing; shipping what follows, the high-water mark does not pass the gap");
                    report.gaps.push(gap.to_string());
                    first_gap.get_or_insert(gap);
                }
                if !state.beyond_gap.contains_key(&seg.seq) {
                    self.upload_segment(client, &settings.prefix, seg)?;
                    report.uploaded.push((journal_id.clone(), seg.seq));
                }
                if contiguous {
                    let hwm = Hwm::for_segment(seg, now_us());
                    self.put_hwm(client, &settings.prefix, &hwm)?;
                    state.segment_seq = seg.seq;
                    state.seal_sha256 = Some(seg.seal_sha256.clone());
                    state.beyond_gap.remove(&seg.seq);
                    state.hwm = Some(hwm);
                } else {
                    state.beyond_gap.insert(seg.seq, seg.seal_sha256.clone());
                }
                state.updated_at_us = now_us();
                cursor.journals.insert(journal_id.clone(), state.clone());
                cursor.store(cursor_path)?;
                info!(journal_id = %journal_id, segment = seg.seq, high_water_mark = state.segment_seq, "segment shipped");
                expected = seg.seq + 1;
            }
            if contiguous {
                self.follow_checkpoint(client, &settings.prefix, journal_id, &mut state)?;
                cursor.journals.insert(journal_id.clone(), state.clone());
                cursor.store(cursor_path)?;
            }
        }
        match first_gap {
            Some(gap) => Err(gap),
            None => Ok(()),
        }
    }

    fn put_hwm(&self, client: &S3Client, prefix: &str, hwm: &Hwm) -> Result<(), ShipError> {
        let body = serde_json::to_vec(hwm).map_err(|e| ShipError::Unconfirmed {
            key: "hwm.json".into(),
            why: e.to_string(),
        })?;
        let key = layout::hwm_key(prefix, &hwm.host_id);
        self.retrying(&key, || client.put(&key, &body))
    }

    /// Moves the high-water mark on to the latest checkpoint of the live segment after
    /// the last one shipped, when there is a newer one than upstream holds.
    fn follow_checkpoint(
        &self,
        client: &S3Client,
        prefix: &str,
        journal_id: &str,
        state: &mut JournalCursor,
    ) -> Result<(), ShipError> {
        let Some(base) = &state.hwm else {
            return Ok(());
        };
        if base.journal_id != journal_id || base.segment_seq != state.segment_seq {
            return Ok(());
        }
        let path = crate::journal::checkpoint::path_for(&self.journal, state.segment_seq + 1);
        let Ok(jws) = fs::read_to_string(&path) else {
            return Ok(());
        };
        let Some(hwm) = base.with_checkpoint(jws.trim_end(), now_us()) else {
            return Ok(());
        };
        let newer = match (&base.checkpoint, &hwm.checkpoint) {
            (Some(old), Some(new)) => new.n > old.n,
            _ => true,
        };
        if !newer {
            return Ok(());
        }
        self.put_hwm(client, prefix, &hwm)?;
        info!(
            journal_id,
            segment = state.segment_seq + 1,
            checkpoint = hwm.checkpoint.as_ref().map(|c| c.n),
            "high-water mark follows the live segment's checkpoint"
        );
        state.hwm = Some(hwm);
        state.updated_at_us = now_us();
        Ok(())
    }

    /// `.db` first, then `.seal`: a `.seal` upstream means its `.db` is there too.
    fn upload_segment(
        &self,
        client: &S3Client,
        prefix: &str,
        seg: &Segment,
    ) -> Result<(), ShipError> {
        let db_key = layout::object_key(prefix, seg, "db");
        let db = fs::read(&seg.db).map_err(|e| ShipError::Io {
            what: format!("reading {}", seg.db.display()),
            source: e,
        })?;
        self.retrying(&db_key, || client.put(&db_key, &db))?;
        let seal_key = layout::object_key(prefix, seg, "seal");
        self.retrying(&seal_key, || client.put(&seal_key, &seg.seal))?;
        Ok(())
    }

    /// Runs `f` up to `attempts` times, pausing with backoff between retryable
    /// failures. Every failure is logged with its reason.
    fn retrying(
        &self,
        key: &str,
        mut f: impl FnMut() -> Result<(), ShipError>,
    ) -> Result<(), ShipError> {
        let Some(s) = &self.config.shipping else {
            return f();
        };
        let mut backoff = Backoff::new(s.backoff_initial, s.backoff_max);
        let mut attempt = 1;
        loop {
            match f() {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && attempt < s.attempts => {
                    let pause = backoff.next_delay();
                    warn!(key, attempt, error = %e, retry_in_ms = pause.as_millis() as u64, "upload failed; retrying");
                    std::thread::sleep(pause);
                    attempt += 1;
                }
                Err(e) => {
                    error!(key, attempt, error = %e, "upload failed");
                    return Err(e);
                }
            }
        }
    }

    fn apply_retention(
        &self,
        scan: &segment::Scan,
        cursor: &Cursor,
        report: &mut PassReport,
    ) -> Result<(), ShipError> {
        let rule = retention::Rule {
            keep: self.config.retention.keep,
            shipping: self.config.shipping.is_some(),
            delete_unshipped: self.config.retention.delete_unshipped,
        };
        let now = now_us();
        let mut streams: Option<Vec<retention::StreamPosition>> = None;
        for seg in scan.journals.values().flatten() {
            if retention::decide(&rule, cursor, seg, now) != retention::Decision::Delete {
                continue;
            }
            if let Some(read) = &self.streams {
                let positions = streams.get_or_insert_with(read);
                if let Some(stream) = retention::held_by_stream(positions, seg) {
                    let mut reported = self.held_reported.lock().unwrap_or_else(|e| e.into_inner());
                    if reported.insert((seg.payload.journal_id.clone(), seg.seq)) {
                        warn!(segment = seg.seq, journal_id = %seg.payload.journal_id, stream, "retention: segment kept past keep: the stream has not sent its events yet");
                    }
                    continue;
                }
            }
            // The .db first: a leftover .seal alone is reported, never shipped. The
            // segment's checkpoint goes with it (its seal supersedes it).
            let checkpoint = seg.db.with_extension(crate::journal::checkpoint::EXTENSION);
            for path in [&seg.db, &seg.seal_path, &checkpoint] {
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(ShipError::Io {
                            what: format!("deleting {}", path.display()),
                            source: e,
                        })
                    }
                }
            }
            info!(segment = seg.seq, journal_id = %seg.payload.journal_id, "retention: segment deleted locally (shipped, older than keep)");
            report.deleted.push(seg.seq);
        }
        Ok(())
    }

    /// Measures the journal directory and updates the budget flag, logging a crossing
    /// either way. Call it periodically and after a rotation.
    pub fn measure_budget(&self) -> Option<u64> {
        let limit = self.config.retention.disk_budget?;
        let dir = self.journal_dir();
        let used = match budget::dir_usage(&dir) {
            Ok(u) => u,
            Err(e) => {
                error!(dir = %dir.display(), error = %e, "cannot measure the journal directory for the disk budget");
                return None;
            }
        };
        match self.budget.update(used, Some(limit)) {
            Transition::Exceeded(why) => error!(used, limit, "{why}"),
            Transition::Recovered => info!(
                used,
                limit,
                "the journal directory is back within its disk budget: new sessions are accepted again"
            ),
            Transition::Unchanged => {}
        }
        Some(used)
    }

    /// Runs passes every `interval` (after a failure: the backoff pause, capped by the
    /// interval) and budget checks every `budget_check_interval`, until `shutdown`.
    /// Passes run on a blocking thread: the proxy is never held up by an upload.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let interval = self
            .config
            .shipping
            .as_ref()
            .map_or(Duration::from_secs(60), |s| s.interval);
        let (initial, max) = self
            .config
            .shipping
            .as_ref()
            .map_or((interval, interval), |s| (s.backoff_initial, s.backoff_max));
        let mut backoff = Backoff::new(initial, max.min(interval).max(initial));
        let mut budget_tick = tokio::time::interval(self.config.retention.budget_check_interval);
        budget_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_pass = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = budget_tick.tick() => {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.measure_budget()).await;
                }
                _ = tokio::time::sleep_until(next_pass) => {
                    let me = self.clone();
                    let result = tokio::task::spawn_blocking(move || me.pass()).await;
                    let pause = match result {
                        Ok(Ok(report)) => {
                            backoff.reset();
                            if !report.uploaded.is_empty() || !report.deleted.is_empty() {
                                info!(uploaded = report.uploaded.len(), deleted = report.deleted.len(), "shipping pass done");
                            }
                            interval
                        }
                        Ok(Err(e)) => {
                            let pause = backoff.next_delay();
                            error!(error = %e, retry_in_ms = pause.as_millis() as u64, "shipping pass failed; nothing is deleted that is not shipped");
                            pause
                        }
                        Err(e) => {
                            error!(error = %e, "shipping pass panicked");
                            interval
                        }
                    };
                    next_pass = tokio::time::Instant::now() + pause;
                }
            }
        }
    }

    /// What `ship status` shows. With `remote`, the high-water mark is also read from
    /// the bucket (an unreachable bucket is reported, not an error).
    pub fn status(&self, remote: bool) -> Result<Status, ShipError> {
        let scan = segment::scan(&self.segments_dir())?;
        let cursor = Cursor::load(&Cursor::path(&self.state_dir))?;
        let mut journals = Vec::new();
        for (journal_id, segments) in &scan.journals {
            let state = cursor.journals.get(journal_id).cloned().unwrap_or_default();
            let pending: Vec<&Segment> = segments
                .iter()
                .filter(|s| !cursor.is_uploaded(journal_id, s.seq))
                .collect();
            let host_id = segments
                .first()
                .map(|s| s.payload.host_id.clone())
                .unwrap_or_default();
            journals.push(JournalStatus {
                journal_id: journal_id.clone(),
                host_id,
                cursor: state,
                local_segments: segments.len(),
                pending_segments: pending.iter().map(|s| s.seq).collect(),
                pending_bytes: pending.iter().map(|s| s.db_len + s.seal.len() as u64).sum(),
            });
        }
        let used_bytes = budget::dir_usage(&self.journal_dir()).ok();
        let mut remote_hwm = None;
        if let (true, Some(client), Some(settings)) = (remote, &self.client, &self.config.shipping)
        {
            for j in &journals {
                let key = layout::hwm_key(&settings.prefix, &j.host_id);
                remote_hwm = Some(match client.get(&key, 64 * 1024) {
                    Ok(Some(bytes)) => serde_json::from_slice::<serde_json::Value>(&bytes)
                        .unwrap_or_else(|e| serde_json::json!({ "error": format!("{key}: {e}") })),
                    Ok(None) => serde_json::json!({ "error": format!("{key}: not found") }),
                    Err(e) => serde_json::json!({ "error": e.to_string() }),
                });
            }
        }
        Ok(Status {
            shipping: self.config.shipping.is_some(),
            journals,
            problems: scan
                .problems
                .iter()
                .map(|(s, w)| format!("segment {s}: {w}"))
                .collect(),
            unsealed: scan.unsealed,
            used_bytes,
            disk_budget: self.config.retention.disk_budget,
            remote_hwm,
        })
    }
}

/// `ship status` for one journal id.
#[derive(Debug, Clone, Serialize)]
pub struct JournalStatus {
    pub journal_id: String,
    pub host_id: String,
    pub cursor: JournalCursor,
    pub local_segments: usize,
    pub pending_segments: Vec<u64>,
    pub pending_bytes: u64,
}

/// `ship status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Whether `[shipping]` is configured.
    pub shipping: bool,
    pub journals: Vec<JournalStatus>,
    /// Segments that cannot be shipped (seal without .db, unreadable seal).
    pub problems: Vec<String>,
    /// `.db` files in segments/ without a seal (being sealed, or abandoned).
    pub unsealed: Vec<u64>,
    /// Bytes used by the journal directory.
    pub used_bytes: Option<u64>,
    /// `[retention] disk_budget`.
    pub disk_budget: Option<u64>,
    /// The high-water mark object as stored upstream (or why it could not be read).
    pub remote_hwm: Option<serde_json::Value>,
}
