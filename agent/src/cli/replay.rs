//! `nhi-agent replay SESSION`: show one session's identity and its journaled timeline.
//!
//! Only what was journaled is shown: the identity recorded at start, the end as recorded
//! (or that none was), and every event in journal order, across the segments of the
//! session's journal. Events are streamed, so a session with millions of chunks does not
//! have to fit in memory. Values masked by the agent are stored masked and shown masked.
//!
//! Timed playback: when standard output is a terminal, the events come out with the
//! recorded gaps between them (`--speed 1`), each single wait capped at 2 s so that an
//! idle hour does not stall the screen; `--speed N` divides the gaps by N and, being an
//! explicit choice, lifts the cap; `--instant` (implied by `--json`, and the default when
//! the output is not a terminal, e.g. a pipe or a file) prints at once.
//!
//! Opaque TCP sessions show a chunk timeline (offset, direction, size, gap). The journal
//! records the size and time of each chunk, not its bytes, so there is no payload preview.

use std::io::{self, IsTerminal as _, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Args;

use super::filter::InputArgs;
use super::select::Selection;
use super::sessions::{finish_output, format_duration_ms, sanitize};
use crate::evidence::auditor::{Identities, SealedOriginals, SEALED_ORIGINALS};
use crate::journal::{format_rfc3339_us, EventRow, SetSession};
use crate::mask::originals::Batch;

/// The longest single wait of a default-speed playback.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(2);

/// Arguments of `nhi-agent replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The session, as listed by `nhi-agent sessions`: ID, or JOURNAL_PREFIX:ID when the
    /// journals given hold several journal ids.
    #[arg(value_name = "SESSION")]
    pub session: String,

    /// Journal files or directories (read recursively, segments included), after the
    /// session or with `--journal`, as the other readers take them.
    #[command(flatten)]
    pub inputs: InputArgs,

    /// One JSON object per event instead of the human timeline (implies --instant).
    #[arg(long)]
    pub json: bool,

    /// Play back N times faster than recorded (0.5 = half speed); no cap on waits.
    #[arg(long, value_name = "N", value_parser = parse_speed, conflicts_with = "instant")]
    pub speed: Option<f64>,

    /// Print everything at once, without the recorded gaps.
    #[arg(long)]
    pub instant: bool,
}

/// Arguments of `nhi-agent reveal`.
#[derive(Debug, Clone, Args)]
pub struct RevealArgs {
    /// The auditor's age identity file (`age-keygen -o auditor.key`), whose public key
    /// is one of `[evidence] auditor_recipients`.
    #[arg(long, value_name = "FILE")]
    pub identity: PathBuf,

    #[command(flatten)]
    pub replay: ReplayArgs,
}

fn parse_speed(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{value:?} is not a positive number")),
    }
}

/// How the events are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Recorded gaps are divided by this.
    pub speed: f64,
    /// No single wait is longer than this.
    pub max_wait: Option<Duration>,
}

impl ReplayArgs {
    /// The pacing these arguments ask for; `None` = instant. `terminal`: whether the
    /// output is a terminal.
    pub fn pace(&self, terminal: bool) -> Option<Pace> {
        match (self.json || self.instant, self.speed) {
            (true, _) => None,
            (false, Some(speed)) => Some(Pace {
                speed,
                max_wait: None,
            }),
            (false, None) if terminal => Some(Pace {
                speed: 1.0,
                max_wait: Some(DEFAULT_MAX_WAIT),
            }),
            (false, None) => None,
        }
    }
}

/// Waits out recorded gaps (or, in tests, records them).
pub(crate) struct Pacer<'a> {
    pace: Option<Pace>,
    previous_us: Option<i64>,
    sleep: &'a mut dyn FnMut(Duration),
}

impl Pacer<'_> {
    /// Called before an event at `at_us` is written; flushes `out` before waiting so the
    /// earlier events are on the screen.
    fn before(&mut self, out: &mut dyn Write, at_us: i64) -> io::Result<()> {
        let Some(pace) = self.pace else {
            return Ok(());
        };
        if let Some(prev) = self.previous_us {
            let gap_us = at_us.saturating_sub(prev).max(0) as f64 / pace.speed;
            let mut wait = Duration::from_secs_f64(gap_us / 1e6);
            if let Some(max) = pace.max_wait {
                wait = wait.min(max);
            }
            if !wait.is_zero() {
                out.flush()?;
                (self.sleep)(wait);
            }
        }
        self.previous_us = Some(at_us);
        Ok(())
    }
}

/// Runs `nhi-agent replay`.
pub fn run(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let stdout = io::stdout();
    let terminal = stdout.is_terminal();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut sleep = std::thread::sleep;
    let result = write_replay(args, &mut out, args.pace(terminal), &mut sleep, None);
    finish_output(result, &mut out)
}

/// `nhi-agent reveal`: the replay with the originals sealed for the auditors opened
/// beside the masked values. Exit 1 when the identity opens none of the session's
/// sealed originals.
pub fn reveal(args: &RevealArgs) -> anyhow::Result<ExitCode> {
    let identities = Identities::from_file(&args.identity)?;
    let stdout = io::stdout();
    let terminal = stdout.is_terminal();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut sleep = std::thread::sleep;
    let mut reveal = Reveal {
        identities,
        opened: 0,
        sealed: 0,
        failure: None,
    };
    let result = write_replay(
        &args.replay,
        &mut out,
        args.replay.pace(terminal),
        &mut sleep,
        Some(&mut reveal),
    );
    let code = finish_output(result, &mut out)?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    match (reveal.sealed, reveal.opened, reveal.failure) {
        (0, _, _) => {
            eprintln!("nhi-agent reveal: the session has no sealed originals (nothing it journaled was masked while [evidence] auditor_recipients was set)");
            Ok(ExitCode::SUCCESS)
        }
        (sealed, opened, Some(failure)) if opened < sealed => {
            anyhow::bail!("{failure} ({opened} of {sealed} sealed batches opened)")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// What `reveal` opens the sealed originals with, and how it went.
pub(crate) struct Reveal {
    identities: Identities,
    /// Sealed batches met, and opened.
    sealed: u64,
    opened: u64,
    /// The first failure to open one.
    failure: Option<String>,
}

impl Reveal {
    /// Opens one sealed batch, counting it and remembering the first failure.
    fn open(&mut self, sealed: &SealedOriginals) -> Result<Batch, String> {
        self.sealed += 1;
        match self.identities.open(sealed) {
            Ok(batch) => {
                self.opened += 1;
                Ok(batch)
            }
            Err(e) => {
                let e = e.to_string();
                self.failure.get_or_insert_with(|| e.clone());
                Err(e)
            }
        }
    }
}

/// Writes a `sealed_originals` event: its count, and with `reveal` the originals.
fn write_sealed(
    out: &mut dyn Write,
    offset: &str,
    event: &EventRow,
    reveal: Option<&mut Reveal>,
) -> anyhow::Result<()> {
    let sealed: Option<SealedOriginals> = event
        .data
        .as_ref()
        .and_then(|d| serde_json::from_value(d.clone()).ok());
    let Some(sealed) = sealed else {
        writeln!(out, "  {offset}  sealed originals (unreadable event)")?;
        return Ok(());
    };
    let omitted = if sealed.omitted > 0 {
        format!(", {} more over the limit not sealed", sealed.omitted)
    } else {
        String::new()
    };
    let Some(reveal) = reveal else {
        writeln!(
            out,
            "  {offset}  {} original{} sealed for the auditors{omitted} (nhi-agent reveal)",
            sealed.values,
            if sealed.values == 1 { "" } else { "s" }
        )?;
        return Ok(());
    };
    match reveal.open(&sealed) {
        Ok(batch) => {
            writeln!(out, "  {offset}  originals{omitted}:")?;
            for value in &batch.values {
                writeln!(
                    out,
                    "      {}  ←  {}  (rule {})",
                    sanitize(&value.masked),
                    sanitize(&value.original),
                    sanitize(&value.rule)
                )?;
            }
        }
        Err(e) => writeln!(out, "  {offset}  sealed originals: {e}")?,
    }
    Ok(())
}

/// Writes the replay for `args` to `out`, paced by `pace` through `sleep`; an unknown
/// session is an error.
pub(crate) fn write_replay(
    args: &ReplayArgs,
    out: &mut dyn Write,
    pace: Option<Pace>,
    sleep: &mut dyn FnMut(Duration),
    mut reveal: Option<&mut Reveal>,
) -> anyhow::Result<()> {
    let selection = Selection::open(&args.inputs, true)?;
    let session = selection.resolve(&args.session)?;
    let mut pacer = Pacer {
        pace,
        previous_us: None,
        sleep,
    };
    let journal_id = session.journal_id.as_str();
    let id = session.row.id;
    if args.json {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            #[serde(flatten)]
            event: &'a EventRow,
            journal_id: &'a str,
            host_id: Option<&'a str>,
        }
        return selection.set.for_each_session_event(
            journal_id,
            id,
            |event| -> anyhow::Result<()> {
                if let (Some(reveal), Some(data)) = (reveal.as_deref_mut(), &event.data) {
                    if event.kind.as_str() == SEALED_ORIGINALS {
                        // The opened batch, as `originals`, beside the sealed form.
                        let mut event = event.clone();
                        let opened = serde_json::from_value::<SealedOriginals>(data.clone())
                            .map_err(|e| e.to_string())
                            .and_then(|s| reveal.open(&s));
                        match opened {
                            Ok(batch) => {
                                if let Some(serde_json::Value::Object(map)) = &mut event.data {
                                    map.insert("originals".into(), serde_json::json!(batch));
                                }
                            }
                            // An unreadable event is a failure to open too.
                            Err(e) => {
                                reveal.failure.get_or_insert(e);
                            }
                        }
                        let line = Line {
                            event: &event,
                            journal_id,
                            host_id: session.host_id.as_deref(),
                        };
                        serde_json::to_writer(&mut *out, &line)
                            .context("cannot encode an event as JSON")?;
                        return writeln!(out).context("cannot write the output");
                    }
                }
                let line = Line {
                    event: &event,
                    journal_id,
                    host_id: session.host_id.as_deref(),
                };
                serde_json::to_writer(&mut *out, &line)
                    .context("cannot encode an event as JSON")?;
                writeln!(out).context("cannot write the output")
            },
        );
    }
    write_header(out, session).context("cannot write the output")?;
    let mut lineage = super::lineage::ReplayLineage::load_all(
        selection
            .set
            .segments()
            .filter(|segment| segment.journal_id == journal_id)
            .map(|segment| segment.path.as_path()),
        &session.row,
    )?;
    lineage
        .write_chain(out)
        .context("cannot write the output")?;
    // How the events read depends on the session's protocol (see `cli::views`).
    let mut body = super::views::view(&session.row.identity.protocol).replay(&session.row);
    selection
        .set
        .for_each_session_event(journal_id, id, |event| -> anyhow::Result<()> {
            pacer
                .before(out, us_since_epoch(event.at))
                .context("cannot write the output")?;
            if lineage
                .before(out, &event)
                .context("cannot write the output")?
            {
                return Ok(());
            }
            if event.kind.as_str() == SEALED_ORIGINALS {
                let offset = format_offset_us(
                    us_since_epoch(event.at) - us_since_epoch(session.row.started_at),
                );
                return write_sealed(out, &offset, &event, reveal.as_deref_mut());
            }
            body.event(out, &event).context("cannot write the output")
        })?;
    lineage.finish(out).context("cannot write the output")?;
    body.finish(out).context("cannot write the output")
}

/// Signed seconds with microseconds: `+0.001234s`, `-0.000100s`.
pub(crate) fn format_offset_us(us: i64) -> String {
    let sign = if us < 0 { '-' } else { '+' };
    let abs = us.unsigned_abs();
    format!("{sign}{}.{:06}s", abs / 1_000_000, abs % 1_000_000)
}

/// Quotes one argument the way a POSIX shell would need it, so that the command line can
/// be read unambiguously (and pasted).
pub(crate) fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,@%+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

pub(crate) fn us_since_epoch(t: SystemTime) -> i64 {
    crate::journal::system_time_to_us(t)
}

fn write_header(out: &mut dyn Write, set_session: &SetSession) -> io::Result<()> {
    let s = &set_session.row;
    let field =
        |out: &mut dyn Write, label: &str, value: &str| writeln!(out, "  {label:<11} {value}");
    writeln!(out, "session {}", set_session.session_ref)?;
    field(out, "workload", &sanitize(&s.identity.workload))?;
    field(
        out,
        "cgroup",
        &format!(
            "{} (id {})",
            sanitize(&s.identity.cgroup),
            s.identity.cgroup_id
        ),
    )?;
    let pid = match s.identity.pid_start_time {
        Some(ticks) => format!(
            "{} (started {ticks} clock ticks after boot)",
            s.identity.pid
        ),
        None => s.identity.pid.to_string(),
    };
    field(out, "pid", &pid)?;
    let exe = s.identity.exe.as_deref().map_or_else(
        || "(not recorded)".to_string(),
        |e| sanitize(e).into_owned(),
    );
    field(out, "exe", &exe)?;
    let cmdline = match &s.identity.cmdline {
        None => "(not recorded)".to_string(),
        Some(args) if args.is_empty() => "(empty)".to_string(),
        Some(args) => args
            .iter()
            .map(|a| sanitize(&shell_quote(a)).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    };
    field(out, "cmdline", &cmdline)?;
    let user = match &s.identity.user {
        Some(user) => format!(
            "{} (uid {}, gid {})",
            sanitize(user),
            s.identity.uid,
            s.identity.gid
        ),
        None => format!("uid {}, gid {}", s.identity.uid, s.identity.gid),
    };
    field(out, "user", &user)?;
    field(out, "comm", &sanitize(&s.identity.comm))?;
    field(
        out,
        "connection",
        &format!("{} → {}", s.identity.client_addr, s.identity.orig_dst),
    )?;
    field(out, "target", &sanitize(&s.identity.target))?;
    field(out, "protocol", &sanitize(&s.identity.protocol))?;
    field(out, "started", &format_rfc3339_us(s.started_at))?;
    match (s.ended_at, s.duration_ms) {
        (Some(ended), Some(ms)) => {
            let ended = format!(
                "{} (after {})",
                format_rfc3339_us(ended),
                format_duration_ms(ms)
            );
            field(out, "ended", &ended)?;
        }
        _ => field(
            out,
            "ended",
            "(no end recorded: still open, or the agent stopped first)",
        )?,
    }
    let close = s
        .close_reason
        .as_deref()
        .map_or_else(|| "-".to_string(), |r| sanitize(r).into_owned());
    field(out, "close", &close)?;
    let host = set_session.host_id.as_deref().map_or_else(
        || "(not recorded)".to_string(),
        |h| sanitize(h).into_owned(),
    );
    field(
        out,
        "journal",
        &format!("{} (host {host})", sanitize(&set_session.journal_id)),
    )?;
    let so_far = if s.ended_at.is_none() {
        " (so far, from the journaled chunks)"
    } else {
        ""
    };
    field(
        out,
        "bytes",
        &format!(
            "↑ {} from client, ↓ {} from server{so_far}",
            s.bytes_from_client, s.bytes_from_server
        ),
    )?;
    writeln!(out)?;
    writeln!(out, "timeline")
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::journal::tests::{at_us, sample_start};
    use crate::journal::{self, Direction, JournalOptions, SessionEnd, SessionId};

    fn replay(path: &Path, session: SessionId, json: bool) -> anyhow::Result<String> {
        let args = ReplayArgs {
            session: session.to_string(),
            inputs: InputArgs {
                journal: vec![path.to_path_buf()],
                paths: Vec::new(),
            },
            json,
            speed: None,
            instant: true,
        };
        let mut out = Vec::new();
        write_replay(
            &args,
            &mut out,
            None,
            &mut |_| panic!("instant replay waited"),
            None,
        )?;
        Ok(String::from_utf8(out).expect("utf-8 output"))
    }

    /// The chunks of the sample session: (offset from start in µs, direction, size).
    const CHUNKS: [(i64, Direction, u32); 4] = [
        (1_234, Direction::ClientToServer, 517),
        (2_000, Direction::ServerToClient, 1_024),
        (2_000, Direction::ServerToClient, 3),
        (1_502_000, Direction::ClientToServer, 10),
    ];
    const END_US: i64 = 2_250_000;

    async fn sample(path: &Path, ended: bool) -> SessionId {
        let journal = journal::open(path, JournalOptions::default()).expect("open");
        let handle = journal.handle();
        let id = handle
            .start_session(sample_start("backup", "s3", at_us(0)))
            .await
            .expect("start");
        for (offset, dir, size) in CHUNKS {
            handle
                .chunk(id, dir, size, at_us(offset))
                .await
                .expect("chunk");
        }
        if ended {
            handle
                .end_session(SessionEnd {
                    id,
                    ended_at: at_us(END_US),
                    bytes_from_client: 527,
                    bytes_from_server: 1_027,
                    close_reason: "server closed".to_string(),
                })
                .await
                .expect("end");
        }
        handle.flush().await.expect("flush");
        tokio::task::spawn_blocking(move || journal.close())
            .await
            .expect("join")
            .expect("close");
        id
    }

    fn journal_id(path: &Path) -> String {
        crate::journal::JournalReader::open(path)
            .expect("reader")
            .meta("journal_id")
            .expect("meta")
            .expect("journal id")
    }

    /// Seconds with six decimals, written out independently of `format_offset_us`.
    fn secs(us: i64) -> String {
        format!("{:.6}", us as f64 / 1e6)
    }

    #[tokio::test]
    async fn human_replay_shows_identity_and_every_chunk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let id = sample(&path, true).await;
        let s = sample_start("backup", "s3", at_us(0));

        let mut expected = format!("session {id}\n");
        let cmdline = s.identity.cmdline.as_ref().expect("cmdline");
        for (label, value) in [
            ("workload", s.identity.workload.clone()),
            (
                "cgroup",
                format!("{} (id {})", s.identity.cgroup, s.identity.cgroup_id),
            ),
            (
                "pid",
                format!(
                    "{} (started {} clock ticks after boot)",
                    s.identity.pid,
                    s.identity.pid_start_time.expect("ticks")
                ),
            ),
            ("exe", s.identity.exe.clone().expect("exe")),
            // The argument with a space is quoted so the command line stays unambiguous.
            (
                "cmdline",
                format!("{} {} '{}'", cmdline[0], cmdline[1], cmdline[2]),
            ),
            (
                "user",
                format!(
                    "{} (uid {}, gid {})",
                    s.identity.user.clone().expect("user"),
                    s.identity.uid,
                    s.identity.gid
                ),
            ),
            ("comm", s.identity.comm.clone()),
            (
                "connection",
                format!("{} → {}", s.identity.client_addr, s.identity.orig_dst),
            ),
            ("target", s.identity.target.clone()),
            ("protocol", s.identity.protocol.clone()),
            ("started", "2026-11-22T10:00:00.000000Z".to_string()),
            (
                "ended",
                "2026-11-22T10:00:02.250000Z (after 2.250s)".to_string(),
            ),
            ("close", "server closed".to_string()),
            (
                "journal",
                format!("{} (host (not recorded))", journal_id(&path)),
            ),
            ("bytes", "↑ 527 from client, ↓ 1027 from server".to_string()),
        ] {
            expected.push_str(&format!("  {label:<11} {value}\n"));
        }
        expected.push_str("\ntimeline\n");
        expected.push_str(&format!("  +{}s  session start\n", secs(0)));
        let mut previous: Option<i64> = None;
        for (offset, dir, size) in CHUNKS {
            let arrow = match dir {
                Direction::ClientToServer => "client→server",
                Direction::ServerToClient => "server→client",
            };
            let gap = previous
                .map(|p| format!("  gap +{}s", secs(offset - p)))
                .unwrap_or_default();
            expected.push_str(&format!(
                "  +{}s  {arrow}  {size:>10} B{gap}\n",
                secs(offset)
            ));
            previous = Some(offset);
        }
        expected.push_str(&format!(
            "  +{}s  session end: server closed\n",
            secs(END_US)
        ));
        let up: u32 = CHUNKS
            .iter()
            .filter(|c| c.1 == Direction::ClientToServer)
            .map(|c| c.2)
            .sum();
        let down: u32 = CHUNKS
            .iter()
            .filter(|c| c.1 == Direction::ServerToClient)
            .map(|c| c.2)
            .sum();
        expected.push_str(&format!(
            "  {} chunks journaled: ↑ {up} bytes, ↓ {down} bytes\n",
            CHUNKS.len()
        ));

        assert_eq!(replay(&path, id, false).expect("replay"), expected);
    }

    #[tokio::test]
    async fn open_session_says_so_and_counts_bytes_so_far() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let id = sample(&path, false).await;
        let text = replay(&path, id, false).expect("replay");
        assert!(text.contains("  ended       (no end recorded"), "{text}");
        assert!(text.contains("  close       -\n"), "{text}");
        assert!(
            text.contains("↑ 527 from client, ↓ 1027 from server (so far"),
            "{text}"
        );
        assert!(!text.contains("session end"), "nothing invented: {text}");
    }

    #[tokio::test]
    async fn json_replay_is_one_event_per_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let id = sample(&path, true).await;
        let text = replay(&path, id, true).expect("replay");
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| e["kind"].as_str().expect("kind"))
            .collect();
        assert_eq!(
            kinds,
            [
                "session_start",
                "chunk",
                "chunk",
                "chunk",
                "chunk",
                "session_end"
            ]
        );
        assert_eq!(events[0]["data"]["orig_dst"], "[::1]:5432");
        assert_eq!(events[0]["session_id"], id);
        assert!(events[0]["direction"].is_null());
        assert_eq!(events[1]["direction"], "c2s");
        assert_eq!(events[1]["size"], 517);
        assert_eq!(events[1]["at"], "2026-11-22T10:00:00.001234Z");
        assert_eq!(events[2]["direction"], "s2c");
        assert_eq!(events[5]["data"]["close_reason"], "server closed");
        assert_eq!(events[5]["data"]["bytes_from_server"], 1027);
        let ids: Vec<i64> = events
            .iter()
            .map(|e| e["id"].as_i64().expect("id"))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "journal order");
    }

    #[tokio::test]
    async fn unknown_session_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let id = sample(&path, true).await;
        let err = replay(&path, id + 100, false).expect_err("unknown session");
        let message = format!("{err:#}");
        assert!(
            message.contains(&format!("no session {}", id + 100)),
            "{message}"
        );
        let err = replay(&dir.path().join("nope.db"), id, true).expect_err("missing");
        assert!(format!("{err:#}").contains("does not exist"));
    }

    #[test]
    fn offsets_quoting_and_summary() {
        let mut out = Vec::new();
        let timeline = Box::new(crate::cli::views::opaque::Timeline {
            start_us: 0,
            previous_chunk_us: None,
            chunks: 1,
            bytes_c2s: 5,
            bytes_s2c: 0,
        });
        crate::cli::views::Replay::finish(timeline, &mut out).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "  1 chunk journaled: ↑ 5 bytes, ↓ 0 bytes\n"
        );

        assert_eq!(format_offset_us(0), "+0.000000s");
        assert_eq!(format_offset_us(1_234), "+0.001234s");
        assert_eq!(format_offset_us(61_000_001), "+61.000001s");
        assert_eq!(format_offset_us(-100), "-0.000100s");
        assert_eq!(shell_quote("--flag=x"), "--flag=x");
        assert_eq!(shell_quote("two words"), "'two words'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[tokio::test]
    async fn playback_waits_the_recorded_gaps_scaled_and_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let id = sample(&path, true).await;
        let waits = |pace: Option<Pace>| -> Vec<Duration> {
            let args = ReplayArgs {
                session: id.to_string(),
                inputs: InputArgs {
                    journal: Vec::new(),
                    paths: vec![path.clone()],
                },
                json: false,
                speed: None,
                instant: false,
            };
            let mut waits = Vec::new();
            write_replay(&args, &mut Vec::new(), pace, &mut |d| waits.push(d), None)
                .expect("replay");
            waits
        };
        // Event times: 0 (start), then CHUNKS, then END_US; equal times need no wait.
        let mut times = vec![0];
        times.extend(CHUNKS.iter().map(|c| c.0));
        times.push(END_US);
        let gaps: Vec<Duration> = times
            .windows(2)
            .map(|w| Duration::from_micros((w[1] - w[0]) as u64))
            .filter(|d| !d.is_zero())
            .collect();
        let real = waits(Some(Pace {
            speed: 1.0,
            max_wait: None,
        }));
        assert_eq!(real, gaps);
        let fast = waits(Some(Pace {
            speed: 4.0,
            max_wait: None,
        }));
        assert_eq!(fast, gaps.iter().map(|g| *g / 4).collect::<Vec<_>>());
        let capped = waits(Some(Pace {
            speed: 1.0,
            max_wait: Some(Duration::from_millis(100)),
        }));
        let want: Vec<Duration> = gaps
            .iter()
            .map(|g| (*g).min(Duration::from_millis(100)))
            .collect();
        assert_eq!(capped, want);
        assert!(waits(None).is_empty());
    }

    #[test]
    fn pacing_follows_the_flags_and_the_terminal() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: ReplayArgs,
        }
        let pace = |argv: &[&str], terminal: bool| {
            let mut full = vec!["replay", "7", "--journal", "j.db"];
            full.extend_from_slice(argv);
            Cli::try_parse_from(full)
                .expect("arguments")
                .args
                .pace(terminal)
        };
        assert_eq!(
            pace(&[], true),
            Some(Pace {
                speed: 1.0,
                max_wait: Some(DEFAULT_MAX_WAIT)
            })
        );
        assert_eq!(pace(&[], false), None, "piped output is instant");
        assert_eq!(
            pace(&["--speed", "2"], false),
            Some(Pace {
                speed: 2.0,
                max_wait: None
            })
        );
        assert_eq!(pace(&["--instant"], true), None);
        assert_eq!(pace(&["--json"], true), None);
        assert!(Cli::try_parse_from(["replay", "7", "--journal", "j", "--speed", "0"]).is_err());
        // Paths after the session, as `sessions`/`events`/`export` take them, and
        // `--journal` too, in any mix.
        let parsed = Cli::try_parse_from(["replay", "7", "a.db", "dir", "--journal", "j.db"])
            .expect("arguments")
            .args;
        assert_eq!(parsed.session, "7");
        assert_eq!(
            parsed.inputs.all().expect("inputs"),
            ["j.db", "a.db", "dir"].map(PathBuf::from)
        );
        let none = Cli::try_parse_from(["replay", "7"])
            .expect("arguments")
            .args;
        let err = none.inputs.all().expect_err("no journal").to_string();
        assert!(err.contains("no journal given"), "{err}");
        assert!(Cli::try_parse_from([
            "replay",
            "7",
            "--journal",
            "j",
            "--speed",
            "2",
            "--instant"
        ])
        .is_err());
    }
}
