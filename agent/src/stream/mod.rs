//! Live streams of journal events to SIEMs (`[[stream]]`): syslog (RFC 5424 over TCP or
//! TLS), Splunk HEC, OTLP/HTTP logs, or a local JSON-lines file, each in `json` or `ocsf`
//! and filtered by kind, verdict and workload.
//!
//! **The journal is the spool.** Each stream is a thread that reads committed events
//! after its cursor from the journal files (read-only, [`source`]), formats them
//! ([`format`]: the export's JSON or OCSF, `cli::stream_format`), sends them ([`sink`]) and moves its cursor (`<state_dir>/streams/
//! <name>.json`, atomic, [`cursor`]) only once the sink has taken them. A sink that is
//! down is retried with backoff (`ship::backoff`) while the events wait in the journal;
//! when it is back it is caught up from the cursor. Delivery is at least once: a crash
//! between a send and the cursor's write sends those events again, and an OCSF stream
//! resends the requests completed after the oldest one it held. Every record carries the
//! journal id, event id and event hash, so a SIEM's copy can be checked against the
//! journal (`nhi-agent verify`, `nhi-agent events --json`).
//!
//! **Streams never touch the data path.** They hold no lock the proxy or the journal
//! writer takes, open the journal files only to read them, and run on threads of their
//! own: a slow or dead sink delays only its own stream.
//!
//! **Retention.** `[retention] keep` deletes sealed segments once shipped, whatever the
//! streams have read. A stream that was down longer than that finds ids missing in the
//! journal: it logs an error naming the stream and the ids lost to it and goes on with
//! the next event it finds. Keep `keep` longer than any sink outage you expect.
//!
//! On SIGHUP ([`Streams::apply`]): new streams start, removed ones stop, changed ones
//! restart; cursors are kept by name, so a stream renamed starts afresh.
pub mod config;
pub mod cursor;
pub mod format;
pub mod sink;
pub mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{error, info, warn};

use config::StartAt;
pub use config::{RawStream, StreamConfig};

/// A reader of where `streams` stand (their cursors in `state_dir`), for retention
/// ([`crate::ship::Shipper::with_streams_opt`]): a segment a stream has not read past is kept.
/// A cursor that cannot be read holds everything (as a missing one does).
pub fn positions(
    streams: &[StreamConfig],
    state_dir: &std::path::Path,
) -> Option<crate::ship::StreamPositions> {
    if streams.is_empty() {
        return None;
    }
    let cursors: Vec<(String, std::path::PathBuf)> = streams
        .iter()
        .map(|s| (s.name.clone(), cursor::path(state_dir, &s.name)))
        .collect();
    Some(Box::new(move || {
        cursors
            .iter()
            .map(|(name, path)| crate::ship::retention::StreamPosition {
                name: name.clone(),
                at: match cursor::StreamCursor::load(path) {
                    Ok(Some(c)) if !c.journal_id.is_empty() => Some((c.journal_id, c.event_id)),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(stream = %name, error = %e, "retention: cannot read the stream's cursor; keeping its segments");
                        None
                    }
                },
            })
            .collect()
    }))
}
use cursor::StreamCursor;
use format::{MakeFormatter, Record};

/// How often an idle stream looks for new events.
const POLL: Duration = Duration::from_millis(200);

/// A stop signal a thread can wait on.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl Stop {
    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits up to `d`; true when stopped.
    fn wait(&self, d: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, d, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Running {
    config: StreamConfig,
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
    /// The sink's last error while it is failing (`None` once a send succeeds).
    failing: Arc<Mutex<Option<String>>>,
}

struct Inner {
    make: MakeFormatter,
    journal: PathBuf,
    state_dir: PathBuf,
    running: BTreeMap<String, Running>,
}

/// The running streams (cloneable handle).
#[derive(Clone)]
pub struct Streams {
    inner: Arc<Mutex<Inner>>,
}

impl Streams {
    /// Starts every stream of `configs`, reading the journal whose live file is
    /// `journal`, each formatting with a formatter `make` makes. A sink that cannot be
    /// set up (a token file with a wrong mode, a CA file that is not one) fails the
    /// start, naming the stream.
    pub fn start(
        configs: &[StreamConfig],
        journal: &Path,
        state_dir: &Path,
        make: MakeFormatter,
    ) -> anyhow::Result<Streams> {
        let mut running = BTreeMap::new();
        for config in configs {
            let sink = sink::open(config)
                .map_err(|e| anyhow::anyhow!("[[stream]] \"{}\": {e}", config.name))?;
            running.insert(
                config.name.clone(),
                spawn(config.clone(), sink, make, journal, state_dir, None),
            );
        }
        Ok(Streams {
            inner: Arc::new(Mutex::new(Inner {
                make,
                journal: journal.to_path_buf(),
                state_dir: state_dir.to_path_buf(),
                running,
            })),
        })
    }

    /// Applies a reloaded configuration: streams added start, removed ones stop, changed
    /// ones restart (after the old thread has finished, so one cursor has one writer).
    /// A stream whose new sink cannot be set up is logged and keeps running as it was.
    pub fn apply(&self, configs: &[StreamConfig]) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner {
            make,
            journal,
            state_dir,
            running,
        } = &mut *inner;
        let names: Vec<String> = running.keys().cloned().collect();
        for name in names {
            if !configs.iter().any(|c| c.name == name) {
                if let Some(r) = running.remove(&name) {
                    r.stop.stop();
                    info!(stream = %name, "stream removed; its cursor stays for a later one of this name");
                }
            }
        }
        for config in configs {
            let previous = running.get(&config.name);
            if previous.is_some_and(|r| r.config == *config) {
                continue;
            }
            let sink = match sink::open(config) {
                Ok(sink) => sink,
                Err(e) => {
                    error!(stream = %config.name, error = %e, "reload: cannot set up this stream; it keeps its previous configuration (if any)");
                    continue;
                }
            };
            let previous_thread = running.remove(&config.name).and_then(|mut r| {
                r.stop.stop();
                r.thread.take()
            });
            let restarted = previous_thread.is_some();
            running.insert(
                config.name.clone(),
                spawn(
                    config.clone(),
                    sink,
                    *make,
                    journal,
                    state_dir,
                    previous_thread,
                ),
            );
            info!(stream = %config.name, restarted, "stream configured by reload");
        }
    }

    /// Asks every stream to stop (they finish the send in progress).
    pub fn stop(&self) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for r in inner.running.values() {
            r.stop.stop();
        }
    }

    /// Each stream as `nhi-agent status` shows it: name, sink type, format, its cursor,
    /// and the sink's error while it is failing.
    pub fn status(&self) -> Vec<serde_json::Value> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .running
            .iter()
            .map(|(name, r)| {
                let cursor = StreamCursor::load(&cursor::path(&inner.state_dir, name))
                    .ok()
                    .flatten();
                let failing = r.failing.lock().unwrap_or_else(|p| p.into_inner()).clone();
                serde_json::json!({
                    "name": name,
                    "type": r.config.sink.type_name(),
                    "format": format!("{:?}", r.config.format).to_lowercase(),
                    "cursor": cursor.map(|c| serde_json::json!({
                        "journal_id": c.journal_id,
                        "event_id": c.event_id,
                    })),
                    "failing": failing,
                })
            })
            .collect()
    }

    /// The names of the running streams.
    pub fn names(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.running.keys().cloned().collect()
    }
}

fn spawn(
    config: StreamConfig,
    sink: Box<dyn sink::Sink>,
    make: MakeFormatter,
    journal: &Path,
    state_dir: &Path,
    previous: Option<JoinHandle<()>>,
) -> Running {
    let stop = Arc::new(Stop::default());
    let failing = Arc::new(Mutex::new(None));
    let worker = Worker {
        failing: failing.clone(),
        cursor_path: cursor::path(state_dir, &config.name),
        journal: journal.to_path_buf(),
        config: config.clone(),
        sink,
        make,
        stop: stop.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("stream-{}", config.name))
        .spawn(move || {
            if let Some(previous) = previous {
                let _ = previous.join();
            }
            worker.run();
        })
        .map_err(|e| error!(stream = %config.name, error = %e, "cannot start the stream thread"))
        .ok();
    Running {
        config,
        stop,
        thread,
        failing,
    }
}

struct Worker {
    config: StreamConfig,
    journal: PathBuf,
    cursor_path: PathBuf,
    sink: Box<dyn sink::Sink>,
    make: MakeFormatter,
    stop: Arc<Stop>,
    failing: Arc<Mutex<Option<String>>>,
}

impl Worker {
    /// The cursor to start from: the stored one, or a new one per `start_at`; retried
    /// while it cannot be read (a damaged cursor is the operator's to move away).
    fn initial_cursor(&self) -> Option<(StreamCursor, bool)> {
        let name = &self.config.name;
        let mut backoff = crate::ship::backoff::Backoff::new(
            self.config.backoff_initial,
            self.config.backoff_max,
        );
        loop {
            let loaded = StreamCursor::load(&self.cursor_path).and_then(|c| match c {
                Some(c) => Ok((c, false)),
                None => match self.config.start_at {
                    StartAt::Oldest => Ok((StreamCursor::default(), true)),
                    StartAt::Now => source::head(&self.journal)
                        .map(|(journal_id, event_id)| {
                            (
                                StreamCursor {
                                    journal_id,
                                    event_id,
                                    updated_at_us: crate::ship::now_us(),
                                },
                                true,
                            )
                        })
                        .map_err(|e| e.to_string()),
                },
            });
            match loaded {
                Ok(c) => return Some(c),
                Err(e) => error!(stream = %name, error = %e, "stream cannot start"),
            }
            if self.stop.wait(backoff.next_delay()) {
                return None;
            }
        }
    }

    fn run(mut self) {
        let name = self.config.name.clone();
        let Some((mut cursor, mut fresh)) = self.initial_cursor() else {
            return;
        };
        info!(stream = %name, journal_id = %cursor.journal_id, after = cursor.event_id, "stream started");
        let mut backoff = crate::ship::backoff::Backoff::new(
            self.config.backoff_initial,
            self.config.backoff_max,
        );
        let mut formatter = (self.make)(self.config.format, self.config.filters.clone());
        let mut read_to = cursor.event_id;
        let mut unsent: Vec<Record> = Vec::new();
        let mut failing = false;
        while !self.stop.is_stopped() {
            if unsent.is_empty() {
                let known = (!cursor.journal_id.is_empty()).then_some(cursor.journal_id.as_str());
                let batch = match source::read_after(
                    &self.journal,
                    known,
                    read_to,
                    self.config.batch,
                ) {
                    Ok(b) => b,
                    Err(e) => {
                        warn!(stream = %name, error = %e, "cannot read the journal; trying again");
                        if self.stop.wait(backoff.next_delay()) {
                            break;
                        }
                        continue;
                    }
                };
                if batch.journal_id != cursor.journal_id {
                    if !cursor.journal_id.is_empty() {
                        warn!(stream = %name, old = %cursor.journal_id, new = %batch.journal_id,
                              "the journal was replaced; the stream goes on from the new journal's oldest event");
                    }
                    fresh = true;
                    cursor.journal_id = batch.journal_id.clone();
                    read_to = 0;
                    formatter = (self.make)(self.config.format, self.config.filters.clone());
                }
                if let (Some((first, last)), false) = (batch.missing, fresh) {
                    crate::metrics::get().stream_missing(&name, (last - first + 1) as u64);
                    error!(stream = %name, journal_id = %batch.journal_id, first, last,
                           count = last - first + 1,
                           "events were deleted from the journal before this stream sent them \
                            ([retention] keep shorter than the sink's outage, or segments removed by hand); \
                            they are missing from this stream");
                }
                fresh = false;
                let Some(last) = batch.items.last().map(|i| i.event.id) else {
                    if self.stop.wait(POLL) {
                        break;
                    }
                    continue;
                };
                for item in &batch.items {
                    unsent.extend(formatter.push(item));
                }
                read_to = last;
            }
            if !unsent.is_empty() {
                if let Err(e) = self.sink.send(&unsent) {
                    crate::metrics::get().stream_send_failed(&name);
                    *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    let delay = backoff.next_delay();
                    warn!(stream = %name, error = %e, pending = unsent.len(), retry_in = ?delay,
                          "stream sink unavailable; events wait in the journal");
                    failing = true;
                    if self.stop.wait(delay) {
                        break;
                    }
                    continue;
                }
                if failing {
                    info!(stream = %name, "stream sink reachable again; catching up");
                    failing = false;
                }
                backoff.reset();
                crate::metrics::get().stream_sent(&name, unsent.len() as u64);
                *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = None;
                unsent.clear();
            }
            let to = formatter.safe_cursor(read_to);
            if to != cursor.event_id {
                cursor.event_id = to;
                cursor.updated_at_us = crate::ship::now_us();
                crate::metrics::get().stream_cursor(&name, to);
                if let Err(e) = cursor.store(&self.cursor_path) {
                    // The events went out; without the cursor they go out again after a
                    // restart (at least once).
                    error!(stream = %name, error = %e, "cannot store the stream cursor");
                }
            }
        }
        info!(stream = %name, "stream stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::config::{Filters, Format, SinkConfig};

    const MAKE: MakeFormatter = crate::cli::stream_format::make;

    fn file_stream(name: &str, out: &Path) -> StreamConfig {
        StreamConfig {
            name: name.into(),
            sink: SinkConfig::File {
                path: out.to_path_buf(),
                max_bytes: 1 << 30,
                keep: 1,
            },
            format: Format::Json,
            filters: Filters::default(),
            start_at: StartAt::Oldest,
            batch: 7,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            timeout: Duration::from_secs(1),
        }
    }

    /// The complete lines of the file (the sink may be writing the last one).
    fn lines(path: &Path) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A file stream sends every event of a rotated journal once, in order, keeps its
    /// cursor across a restart (nothing sent twice), and a stream added by `apply`
    /// starts from the oldest event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_stream_catches_up_once_and_resumes_from_its_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("journal.db");
        let last = source::tests::segmented_journal(&journal).await;
        let state = dir.path().join("state");
        let out = dir.path().join("a.jsonl");
        let streams =
            Streams::start(&[file_stream("a", &out)], &journal, &state, MAKE).expect("start");
        wait_for("every event", || lines(&out).len() as i64 >= last);
        let ids: Vec<i64> = lines(&out)
            .iter()
            .map(|l| l["id"].as_i64().expect("id"))
            .collect();
        assert_eq!(ids, (1..=last).collect::<Vec<_>>());
        wait_for("the cursor", || {
            StreamCursor::load(&cursor::path(&state, "a"))
                .ok()
                .flatten()
                .is_some_and(|c| c.event_id == last)
        });
        // A second stream by reload; the first one unchanged keeps running.
        let out_b = dir.path().join("b.jsonl");
        streams.apply(&[file_stream("a", &out), file_stream("b", &out_b)]);
        assert_eq!(streams.names(), ["a", "b"]);
        wait_for("stream b", || lines(&out_b).len() as i64 >= last);
        streams.stop();
        // Restarted after more events: it goes on from its cursor, sending only those.
        let newer = source::tests::write_sessions(&journal, 1).await;
        assert!(newer > last);
        let again =
            Streams::start(&[file_stream("a", &out)], &journal, &state, MAKE).expect("start");
        wait_for("the new events", || lines(&out).len() as i64 >= newer);
        again.stop();
        let ids: Vec<i64> = lines(&out)
            .iter()
            .map(|l| l["id"].as_i64().expect("id"))
            .collect();
        assert_eq!(ids, (1..=newer).collect::<Vec<_>>(), "nothing sent twice");
    }

    /// A reload whose stream cannot be set up (a token file that does not exist) leaves
    /// the running streams as they were: a new one is not added, a changed one keeps its
    /// previous configuration; removing a stream stops it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_with_a_broken_stream_keeps_what_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("journal.db");
        source::tests::write_sessions(&journal, 1).await;
        let state = dir.path().join("state");
        let good = file_stream("a", &dir.path().join("a.jsonl"));
        let streams =
            Streams::start(std::slice::from_ref(&good), &journal, &state, MAKE).expect("start");
        let broken = |name: &str| StreamConfig {
            name: name.into(),
            sink: SinkConfig::SplunkHec {
                url: "https://127.0.0.1:1/services/collector/event"
                    .parse()
                    .expect("url"),
                token_file: dir.path().join("missing.token"),
                index: None,
                sourcetype: None,
                ca_file: None,
            },
            ..good.clone()
        };
        let err = Streams::start(&[broken("b")], &journal, &state, MAKE)
            .err()
            .expect("a missing token file fails the start");
        assert!(err.to_string().contains("missing.token"), "{err}");
        streams.apply(&[good.clone(), broken("b")]);
        assert_eq!(streams.names(), ["a"], "b could not be set up");
        streams.apply(&[broken("a")]);
        let running = |name: &str| {
            let inner = streams.inner.lock().expect("lock");
            inner.running.get(name).map(|r| r.config.clone())
        };
        assert_eq!(running("a"), Some(good.clone()), "a kept its configuration");
        streams.apply(&[]);
        assert!(streams.names().is_empty(), "removed");
        streams.stop();
    }
}
