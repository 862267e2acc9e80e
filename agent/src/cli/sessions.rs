//! `nhi-agent sessions`: list the sessions of a journal, as a table or as JSON lines.
//!
//! Works offline on a journal copied from another host and next to a running agent.
//! Strings in the human output come from the intercepted workloads (comm, cmdline, ...) and
//! are therefore untrusted: control characters are escaped so that a hostile process name
//! cannot rewrite the responder's terminal. JSON output is escaped by serde.

use std::borrow::Cow;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Args;

use super::filter::{Filter, FilterArgs, InputArgs};
use super::select::Selection;
use crate::journal::{format_rfc3339_us, SetSession};

/// Arguments of `nhi-agent sessions`.
#[derive(Debug, Clone, Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub inputs: InputArgs,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `nhi-agent sessions`.
pub fn run(args: &SessionsArgs) -> anyhow::Result<ExitCode> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    finish_output(write_sessions(args, &mut out), &mut out)
}

/// Writes the listing for `args` to `out`.
pub(crate) fn write_sessions(args: &SessionsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let filter = Filter::new(&args.filter)?;
    let selection = Selection::open(&args.inputs, true)?;
    let rows = selection.matching_sessions(&filter)?;
    if args.json {
        for row in &rows {
            serde_json::to_writer(&mut *out, row).context("cannot encode a session as JSON")?;
            writeln!(out).context("cannot write the output")?;
        }
    } else {
        write_table(out, &rows).context("cannot write the output")?;
    }
    Ok(())
}

/// Parses `--since`: an RFC 3339 time, or a duration meaning "that long ago".
pub fn parse_since(value: &str) -> Result<SystemTime, String> {
    parse_since_at(value, SystemTime::now())
}

fn parse_since_at(value: &str, now: SystemTime) -> Result<SystemTime, String> {
    let value = value.trim();
    const EXPECTED: &str = "expected an RFC 3339 time such as 2026-11-22T10:00:00Z or a \
                            duration such as 2h, 30m or 1d (meaning that long ago)";
    // Anything shaped like a date is judged as one, so that a typo in a date gets the
    // date's error rather than a confusing duration error.
    let looks_like_date = value.len() >= 10
        && value.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && value.as_bytes()[4] == b'-';
    if looks_like_date {
        return parse_rfc3339(value).map_err(|e| format!("not a valid time ({e}); {EXPECTED}"));
    }
    let ago = humantime::parse_duration(value)
        .map_err(|e| format!("neither a time nor a duration ({e}); {EXPECTED}"))?;
    now.checked_sub(ago)
        .ok_or_else(|| format!("{value:?} ago is before any representable time"))
}

/// RFC 3339 with `Z` or a numeric offset (humantime alone only accepts UTC).
fn parse_rfc3339(value: &str) -> Result<SystemTime, String> {
    // RFC 3339 allows lower-case `t` and `z`; every other character is a digit or a sign.
    let value = value.to_ascii_uppercase();
    let bytes = value.as_bytes();
    let n = bytes.len();
    let has_offset = n >= 25
        && (bytes[n - 6] == b'+' || bytes[n - 6] == b'-')
        && bytes[n - 3] == b':'
        && bytes[n - 5..n - 3].iter().all(u8::is_ascii_digit)
        && bytes[n - 2..].iter().all(u8::is_ascii_digit);
    if !has_offset {
        return humantime::parse_rfc3339(&value).map_err(|e| e.to_string());
    }
    let hours: u64 = value[n - 5..n - 3].parse().map_err(|_| "bad offset")?;
    let minutes: u64 = value[n - 2..].parse().map_err(|_| "bad offset")?;
    if hours > 23 || minutes > 59 {
        return Err("offset out of range".to_string());
    }
    let local =
        humantime::parse_rfc3339(&format!("{}Z", &value[..n - 6])).map_err(|e| e.to_string())?;
    let offset = Duration::from_secs(hours * 3600 + minutes * 60);
    // The local time is UTC plus the offset, so UTC is the local time minus it.
    let utc = if bytes[n - 6] == b'+' {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    };
    utc.ok_or_else(|| "time out of range".to_string())
}

/// Escapes control characters (escape sequences, newlines) in untrusted text.
pub(crate) fn sanitize(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(
            text.chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    }
}

/// `2026-11-22T10:00:00.123456Z` → `2026-11-22T10:00:00Z`, for the table.
fn format_rfc3339_seconds(t: SystemTime) -> String {
    let full = format_rfc3339_us(t);
    match (full.find('.'), full.ends_with('Z')) {
        (Some(dot), true) => format!("{}Z", &full[..dot]),
        _ => full,
    }
}

/// A compact duration: `850ms`, `12.345s`, `5m03s`, `2h05m09s`.
pub(crate) fn format_duration_ms(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if ms < 1000 {
        format!("{sign}{ms}ms")
    } else if ms < 60_000 {
        format!("{sign}{s}.{frac:03}s")
    } else if ms < 3_600_000 {
        format!("{sign}{m}m{s:02}s")
    } else {
        format!("{sign}{h}h{m:02}m{s:02}s")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

const COLUMNS: [(&str, Align); 11] = [
    ("ID", Align::Right),
    ("STARTED", Align::Left),
    ("WORKLOAD", Align::Left),
    ("PID", Align::Right),
    ("COMM", Align::Left),
    ("DESTINATION", Align::Left),
    ("TARGET", Align::Left),
    ("↑BYTES", Align::Right),
    ("↓BYTES", Align::Right),
    ("DURATION", Align::Right),
    ("CLOSE", Align::Left),
];

/// The table cells of one session, in `COLUMNS` order.
fn table_cells(session: &SetSession) -> [String; 11] {
    let row = &session.row;
    [
        session.session_ref.clone(),
        format_rfc3339_seconds(row.started_at),
        sanitize(&row.identity.workload).into_owned(),
        row.identity.pid.to_string(),
        sanitize(&row.identity.comm).into_owned(),
        row.identity.orig_dst.to_string(),
        sanitize(&row.identity.target).into_owned(),
        row.bytes_from_client.to_string(),
        row.bytes_from_server.to_string(),
        row.duration_ms
            .map_or_else(|| "-".to_string(), format_duration_ms),
        match (&row.close_reason, row.ended_at) {
            (Some(reason), _) => sanitize(reason).into_owned(),
            (None, None) => "(open)".to_string(),
            (None, Some(_)) => "-".to_string(),
        },
    ]
}

/// An aligned table with a header; with no rows, just the header.
pub(crate) fn write_table(out: &mut dyn Write, rows: &[&SetSession]) -> io::Result<()> {
    let cells: Vec<[String; 11]> = rows.iter().map(|s| table_cells(s)).collect();
    let mut widths = COLUMNS.map(|(title, _)| title.chars().count());
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = COLUMNS.map(|(title, _)| title.to_string());
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (i, ((cell, width), (_, align))) in row.iter().zip(widths).zip(COLUMNS).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            // `format!` pads by characters, so the arrows and non-ASCII names line up.
            match align {
                Align::Left => line.push_str(&format!("{cell:<width$}")),
                Align::Right => line.push_str(&format!("{cell:>width$}")),
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Flushes the output and turns the outcome into an exit code. A closed pipe (`| head`) is
/// the reader's choice, not an error.
pub(crate) fn finish_output(
    result: anyhow::Result<()>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let result = result.and_then(|()| out.flush().context("cannot write the output"));
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use clap::Parser;

    use super::*;
    use crate::journal::tests::{at_us, sample_start};
    use crate::journal::{self, Direction, JournalOptions, SessionEnd, SessionId};

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        args: SessionsArgs,
    }

    fn parse(argv: &[&str]) -> Result<SessionsArgs, clap::Error> {
        TestCli::try_parse_from(std::iter::once("sessions").chain(argv.iter().copied()))
            .map(|cli| cli.args)
    }

    fn args(path: &Path, extra: &[&str]) -> SessionsArgs {
        let journal = path.to_str().expect("utf-8 path");
        let mut argv = vec!["--journal", journal];
        argv.extend_from_slice(extra);
        parse(&argv).expect("valid arguments")
    }

    fn output(args: &SessionsArgs) -> String {
        let mut out = Vec::new();
        write_sessions(args, &mut out).expect("sessions");
        String::from_utf8(out).expect("utf-8 output")
    }

    /// Two sessions: `backup` (IPv6 destination, ended after 1.5 s) and `ci` (still open,
    /// sparse identity, IPv4 destination, hostile comm).
    async fn sample_journal(path: &Path) -> (SessionId, SessionId) {
        let journal = journal::open(path, JournalOptions::default()).expect("open");
        let handle = journal.handle();
        let backup = handle
            .start_session(sample_start("backup", "s3", at_us(0)))
            .await
            .expect("start");
        handle
            .chunk(backup, Direction::ClientToServer, 100, at_us(10))
            .await
            .expect("chunk");
        handle
            .end_session(SessionEnd {
                id: backup,
                ended_at: at_us(1_500_000),
                bytes_from_client: 100,
                bytes_from_server: 200,
                close_reason: "client closed".to_string(),
            })
            .await
            .expect("end");
        let mut ci_start = sample_start("ci", "github", at_us(60_000_000));
        std::sync::Arc::make_mut(&mut ci_start.identity).exe = None;
        std::sync::Arc::make_mut(&mut ci_start.identity).cmdline = None;
        std::sync::Arc::make_mut(&mut ci_start.identity).user = None;
        std::sync::Arc::make_mut(&mut ci_start.identity).pid_start_time = None;
        std::sync::Arc::make_mut(&mut ci_start.identity).comm = "evil\u{1b}[2J".to_string();
        std::sync::Arc::make_mut(&mut ci_start.identity).orig_dst =
            "192.0.2.7:443".parse().expect("address");
        let ci = handle.start_session(ci_start).await.expect("start");
        handle
            .chunk(ci, Direction::ServerToClient, 7, at_us(60_000_100))
            .await
            .expect("chunk");
        handle.flush().await.expect("flush");
        tokio::task::spawn_blocking(move || journal.close())
            .await
            .expect("join")
            .expect("close");
        (backup, ci)
    }

    #[tokio::test]
    async fn json_lines_have_the_documented_keys_and_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let (backup, ci) = sample_journal(&path).await;
        let text = output(&args(&path, &["--json"]));
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect();
        assert_eq!(lines.len(), 2);

        let expected_keys: BTreeSet<&str> = [
            "id",
            "workload",
            "cgroup",
            "cgroup_id",
            "pid",
            "pid_start_time",
            "exe",
            "cmdline",
            "uid",
            "gid",
            "user",
            "comm",
            "client_addr",
            "orig_dst",
            "target",
            "protocol",
            "started_at",
            "ended_at",
            "duration_ms",
            "bytes_from_client",
            "bytes_from_server",
            "close_reason",
            "claims",
            "container",
            "journal_id",
            "host_id",
            "session_ref",
        ]
        .into();
        for line in &lines {
            let keys: BTreeSet<&str> = line
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, expected_keys);
        }

        let b = &lines[0];
        let start = sample_start("backup", "s3", at_us(0));
        assert_eq!(b["id"], backup);
        assert_eq!(b["workload"], "backup");
        assert_eq!(b["cgroup"], start.identity.cgroup);
        assert_eq!(b["cgroup_id"], start.identity.cgroup_id);
        assert_eq!(b["pid"], start.identity.pid);
        assert_eq!(b["pid_start_time"], 987_654);
        assert_eq!(b["exe"], "/usr/bin/restic");
        assert_eq!(
            b["cmdline"],
            serde_json::json!(["restic", "backup", "/srv/my data"])
        );
        assert_eq!(b["uid"], 998);
        assert_eq!(b["gid"], 997);
        assert_eq!(b["user"], "backup");
        assert_eq!(b["client_addr"], "10.0.0.5:51234");
        assert_eq!(b["orig_dst"], "[::1]:5432");
        assert_eq!(b["protocol"], "tcp");
        assert_eq!(b["started_at"], "2026-11-22T10:00:00.000000Z");
        assert_eq!(b["ended_at"], "2026-11-22T10:00:01.500000Z");
        assert_eq!(b["duration_ms"], 1500);
        assert_eq!(b["bytes_from_client"], 100);
        assert_eq!(b["bytes_from_server"], 200);
        assert_eq!(b["close_reason"], "client closed");
        let journal_id = crate::journal::JournalReader::open(&path)
            .expect("reader")
            .meta("journal_id")
            .expect("meta")
            .expect("journal id");
        assert_eq!(b["journal_id"], journal_id);
        assert!(b["host_id"].is_null(), "no host id recorded by this writer");
        assert_eq!(
            b["session_ref"],
            backup.to_string(),
            "one journal: plain id"
        );

        let c = &lines[1];
        assert_eq!(c["id"], ci);
        assert_eq!(c["orig_dst"], "192.0.2.7:443");
        assert_eq!(
            c["comm"], "evil\u{1b}[2J",
            "JSON keeps the exact bytes, escaped"
        );
        for null in [
            "ended_at",
            "duration_ms",
            "close_reason",
            "cmdline",
            "exe",
            "user",
            "pid_start_time",
            "claims",
            "container",
        ] {
            assert!(c[null].is_null(), "{null} must be null, got {}", c[null]);
        }
        assert_eq!(c["bytes_from_server"], 7, "open session: sum of its chunks");
        assert_eq!(c["bytes_from_client"], 0);
    }

    /// Where each cell of `line` starts and ends (in characters), given the cells in order.
    fn spans(line: &str, cells: &[&str]) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        let mut from = 0;
        for cell in cells {
            let byte = from + line[from..].find(cell).expect("cell present");
            let start = line[..byte].chars().count();
            spans.push((start, start + cell.chars().count()));
            from = byte + cell.len();
        }
        spans
    }

    #[tokio::test]
    async fn table_is_aligned_under_its_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let (backup, ci) = sample_journal(&path).await;
        let text = output(&args(&path, &[]));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");

        let titles: Vec<&str> = COLUMNS.iter().map(|(title, _)| *title).collect();
        let backup_id = backup.to_string();
        let ci_id = ci.to_string();
        let rows = [
            vec![
                backup_id.as_str(),
                "2026-11-22T10:00:00Z",
                "backup",
                "1234",
                "restic",
                "[::1]:5432",
                "s3",
                "100",
                "200",
                "1.500s",
                "client closed",
            ],
            vec![
                ci_id.as_str(),
                "2026-11-22T10:01:00Z",
                "ci",
                "1234",
                // The escape character is shown escaped, not sent to the terminal.
                r"evil\u{1b}[2J",
                "192.0.2.7:443",
                "github",
                "0",
                "7",
                "-",
                "(open)",
            ],
        ];
        let header = spans(lines[0], &titles);
        for (line, cells) in lines[1..].iter().zip(&rows) {
            assert!(!line.contains('\u{1b}'), "raw escape in {line:?}");
            let row = spans(line, cells);
            for (i, (_, align)) in COLUMNS.iter().enumerate() {
                match align {
                    Align::Left => assert_eq!(row[i].0, header[i].0, "column {}", titles[i]),
                    Align::Right => assert_eq!(row[i].1, header[i].1, "column {}", titles[i]),
                }
            }
        }
    }

    #[tokio::test]
    async fn filters_and_empty_results() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let (backup, ci) = sample_journal(&path).await;
        let ids = |extra: &[&str]| -> Vec<i64> {
            let mut argv = vec!["--json"];
            argv.extend_from_slice(extra);
            output(&args(&path, &argv))
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).expect("json")["id"]
                        .as_i64()
                        .expect("id")
                })
                .collect()
        };
        assert_eq!(ids(&["--workload", "ci"]), vec![ci]);
        assert_eq!(ids(&["--target", "s3"]), vec![backup]);
        assert_eq!(ids(&["--since", "2026-11-22T10:00:30Z"]), vec![ci]);
        assert_eq!(ids(&["--limit", "1"]), vec![ci]);
        assert_eq!(ids(&["--workload", "nobody"]), Vec::<i64>::new());

        let text = output(&args(&path, &["--workload", "nobody"]));
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("ID  STARTED"), "{text}");
        assert!(text.contains("↑BYTES") && text.trim_end().ends_with("CLOSE"));
    }

    #[test]
    fn missing_journal_is_a_clear_error_and_is_not_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope.db");
        let err = write_sessions(&args(&path, &[]), &mut Vec::new()).expect_err("missing");
        let message = format!("{err:#}");
        assert!(message.contains("does not exist"), "{message}");
        assert!(!message.contains('\n'), "one line: {message}");
        assert!(!path.exists());
    }

    #[test]
    fn since_accepts_rfc3339_and_durations_ago() {
        let now = at_us(0);
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(parse_since_at("2h", now), Ok(now - hours(2)));
        assert_eq!(
            parse_since_at("30m", now),
            Ok(now - Duration::from_secs(1800))
        );
        assert_eq!(parse_since_at("1d", now), Ok(now - hours(24)));
        assert_eq!(parse_since_at("2026-11-22T10:00:00Z", now), Ok(at_us(0)));
        assert_eq!(
            parse_since_at("2026-11-22T10:00:00.25Z", now),
            Ok(at_us(250_000))
        );
        assert_eq!(
            parse_since_at("2026-11-22t12:00:00+02:00", now),
            Ok(at_us(0))
        );
        assert_eq!(
            parse_since_at("2026-11-22T05:30:00-04:30", now),
            Ok(at_us(0))
        );

        for bad in ["yesterday", "", "2026-13-01T00:00:00Z", "2026-11-22"] {
            let err = parse_since_at(bad, now).expect_err(bad);
            assert!(err.contains("expected an RFC 3339 time"), "{bad}: {err}");
        }
        let err = parse(&["--journal", "j.db", "--since", "soon"]).expect_err("clap rejects");
        assert!(
            err.to_string().contains("expected an RFC 3339 time"),
            "{err}"
        );
    }

    #[test]
    fn durations_are_compact() {
        assert_eq!(format_duration_ms(0), "0ms");
        assert_eq!(format_duration_ms(999), "999ms");
        assert_eq!(format_duration_ms(1_500), "1.500s");
        assert_eq!(format_duration_ms(183_000), "3m03s");
        assert_eq!(format_duration_ms(7_509_000), "2h05m09s");
        assert_eq!(format_duration_ms(-20), "-20ms");
    }

    #[test]
    fn sanitize_escapes_only_control_characters() {
        assert_eq!(sanitize("plain → text"), "plain → text");
        assert_eq!(sanitize("a\nb\u{1b}[0m"), r"a\nb\u{1b}[0m");
    }

    #[tokio::test]
    async fn statement_filters_and_several_journals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (one, two) = (dir.path().join("one.db"), dir.path().join("two.db"));
        let (pg, tcp) = crate::cli::select::tests::pg_journal(&one).await;
        let ids = |argv: &[&str]| -> Vec<String> {
            let mut full = vec!["--json"];
            full.extend_from_slice(argv);
            output(&parse(&full).expect("arguments"))
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).expect("json")["session_ref"]
                        .as_str()
                        .expect("ref")
                        .to_string()
                })
                .collect()
        };
        let one_s = one.to_str().expect("utf-8");
        assert_eq!(ids(&[one_s]), vec![pg.to_string(), tcp.to_string()]);
        assert_eq!(ids(&[one_s, "--verdict", "denied"]), vec![pg.to_string()]);
        assert_eq!(ids(&[one_s, "--text", "carts"]), vec![pg.to_string()]);
        assert!(ids(&[one_s, "--text", "nothing like it"]).is_empty());
        assert_eq!(ids(&[one_s, "--protocol", "tcp"]), vec![tcp.to_string()]);

        crate::cli::select::tests::pg_journal(&two).await;
        let both = ids(&["--journal", one_s, two.to_str().expect("utf-8")]);
        assert_eq!(both.len(), 4);
        assert!(
            both.iter().all(|r| r.len() > 9 && r.as_bytes()[8] == b':'),
            "{both:?}"
        );
        // A directory is read whole.
        let dir_s = dir.path().to_str().expect("utf-8");
        assert_eq!(ids(&[dir_s]).len(), 4);
        let table = output(&parse(&[dir_s]).expect("arguments"));
        let first_cell = table
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("");
        assert!(both.iter().any(|r| r == first_cell), "{table}");
    }
}
