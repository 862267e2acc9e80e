//! `nhi-agent export --format ocsf|jsonl|asciicast [filters] [PATH...] [--out FILE]`: the
//! selected events for a SIEM, an archive or a terminal player.
//!
//! - `jsonl`: one journal event per line, as `events --json` prints it, plus the whole
//!   session it belongs to under `session_row` (null for events of no session).
//! - `ocsf`: OCSF 1.3.0 events, one per line (see [`super::ocsf`] for the mapping).
//!   Statements are completed by their `statement_end` (SSH commands by their channel's
//!   close), so a filter that leaves the ends out (e.g. `--text`, `--kind statement`)
//!   exports statements with status Unknown.
//! - `asciicast`: the terminal of one SSH session as an asciicast v2 recording, for
//!   `asciinema play` (see [`super::views::ssh::write_cast`]):
//!   `nhi-agent export --format asciicast --session 42 /var/lib/nhi-agent --out 42.cast`.
//!   The filters select the session and its events (`--since`/`--until` cut a part of
//!   it); events of other protocols are left out; a selection holding the events of
//!   several SSH sessions is refused (a recording is one terminal: give `--session`).
//!
//! `--out FILE` writes to a temporary file next to FILE and renames it when complete, so
//! a failed export never leaves a truncated file that looks complete.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::events::{select, EventSelectArgs};
use super::filter::{Filter, FilterArgs, InputArgs};
use super::ocsf::OcsfMapper;
use super::select::{EventLine, Selection};
use super::sessions::finish_output;
use super::views::ssh;
use crate::journal::SetSession;

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// OCSF 1.3.0 JSON events, one per line.
    Ocsf,
    /// Journal events with their session, one per line.
    Jsonl,
    /// The terminal of one SSH session (select it with --session), asciicast v2 for
    /// `asciinema play`.
    Asciicast,
}

/// Arguments of `nhi-agent export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The output format.
    #[arg(long, value_enum)]
    pub format: Format,

    /// Write to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    #[command(flatten)]
    pub inputs: InputArgs,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub events: EventSelectArgs,
}

#[derive(Serialize)]
struct JsonlLine<'a> {
    #[serde(flatten)]
    line: EventLine<'a>,
    session_row: Option<&'a SetSession>,
}

/// Runs `nhi-agent export`.
pub fn run(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    match &args.out {
        None => {
            let stdout = io::stdout();
            let mut out = io::BufWriter::new(stdout.lock());
            finish_output(write_export(args, &mut out), &mut out)
        }
        Some(path) => {
            // Same directory, so the rename is atomic.
            let mut tmp_name = path.as_os_str().to_owned();
            tmp_name.push(format!(".partial-{}", std::process::id()));
            let tmp = PathBuf::from(tmp_name);
            let result = write_file(args, &tmp).and_then(|()| {
                std::fs::rename(&tmp, path).with_context(|| {
                    format!("cannot rename {} to {}", tmp.display(), path.display())
                })
            });
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result.map(|()| ExitCode::SUCCESS)
        }
    }
}

fn write_file(args: &ExportArgs, tmp: &std::path::Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut out = io::BufWriter::new(file);
    write_export(args, &mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot write {}", tmp.display()))
}

/// Writes the export for `args` to `out`.
pub(crate) fn write_export(args: &ExportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let filter = Filter::new(&args.filter)?;
    let selection = Selection::open(&args.inputs, true)?;
    let write_line = |out: &mut dyn Write, value: &dyn erased::Json| -> anyhow::Result<()> {
        value.write(out).context("cannot encode an event")?;
        writeln!(out).context("cannot write the output")
    };
    match args.format {
        Format::Jsonl => select(&selection, &filter, &args.events, |s| {
            let line = JsonlLine {
                line: s.line(),
                session_row: s.session,
            };
            write_line(out, &line)
        }),
        Format::Ocsf => {
            let mut mapper = OcsfMapper::new();
            select(&selection, &filter, &args.events, |s| {
                for event in mapper.push(s) {
                    write_line(out, &event)?;
                }
                Ok(())
            })?;
            for event in mapper.finish() {
                write_line(out, &event)?;
            }
            Ok(())
        }
        Format::Asciicast => write_asciicast(&selection, &filter, &args.events, out),
    }
}

/// The selected events of one SSH session as an asciicast (see the module
/// documentation); an error when the selection holds no SSH session, or several.
fn write_asciicast(
    selection: &Selection,
    filter: &Filter,
    events: &EventSelectArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut chosen: Option<SetSession> = None;
    let mut rows = Vec::new();
    select(selection, filter, events, |s| {
        let Some(session) = s.session else {
            return Ok(());
        };
        if session.row.identity.protocol != ssh::PROTOCOL {
            return Ok(());
        }
        match &chosen {
            Some(c) if c.journal_id == session.journal_id && c.row.id == session.row.id => {}
            Some(c) => anyhow::bail!(
                "the selection holds the events of several SSH sessions ({} and {} at least), \
                 and an asciicast is the terminal of one: select it with --session ID \
                 (`nhi-agent sessions --protocol ssh` lists them)",
                c.session_ref,
                session.session_ref
            ),
            None => chosen = Some(session.clone()),
        }
        rows.push(s.event.clone());
        Ok(())
    })?;
    let Some(session) = chosen else {
        anyhow::bail!(
            "no event of an SSH session in the selection: --format asciicast writes the \
             terminal of one SSH session (select it with --session ID; \
             `nhi-agent sessions --protocol ssh` lists them)"
        );
    };
    // The terminal's size and which channels have one, from the whole session whatever
    // the filters left out.
    let mut terminal = ssh::Terminal::default();
    selection.set.for_each_session_event(
        &session.journal_id,
        session.row.id,
        |event| -> anyhow::Result<()> {
            terminal.push(&event);
            Ok(())
        },
    )?;
    ssh::write_cast(out, &session, &rows, &terminal).context("cannot write the output")
}

/// Object-safe JSON writing, so one closure serves both line types.
mod erased {
    use std::io::Write;

    pub trait Json {
        fn write(&self, out: &mut dyn Write) -> serde_json::Result<()>;
    }

    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut dyn Write) -> serde_json::Result<()> {
            serde_json::to_writer(out, self)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use clap::Parser;
    use serde_json::Value;

    use super::*;
    use crate::cli::ocsf::{check_required, DATASTORE_ACTIVITY, NETWORK_ACTIVITY};
    use crate::cli::select::tests::pg_journal;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        args: ExportArgs,
    }

    pub(crate) fn export(path: &Path, extra: &[&str]) -> Vec<Value> {
        let mut argv = vec!["export", path.to_str().expect("utf-8")];
        argv.extend_from_slice(extra);
        let args = TestCli::try_parse_from(argv).expect("arguments").args;
        let mut out = Vec::new();
        write_export(&args, &mut out).expect("export");
        String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    #[tokio::test]
    async fn ocsf_events_have_the_required_attributes_and_the_mapping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let (pg, _) = pg_journal(&path).await;
        let events = export(&path, &["--format", "ocsf"]);
        for e in &events {
            assert_eq!(check_required(e), Vec::<String>::new(), "{e:#}");
        }
        let class = |c: u64| events.iter().filter(move |e| e["class_uid"] == c);
        // Two sessions, each opened and closed.
        assert_eq!(class(NETWORK_ACTIVITY).count(), 4);
        let statements: Vec<&Value> = class(DATASTORE_ACTIVITY).collect();
        assert_eq!(statements.len(), 3, "one per statement, ends folded in");

        let select = statements[0];
        assert_eq!(select["activity_id"], 4, "select is Query");
        assert_eq!(select["type_uid"], 600504);
        assert_eq!(
            select["query_info"]["query_string"],
            "select email from users"
        );
        assert_eq!(select["database"]["name"], "shop", "from pg_startup");
        assert_eq!(select["status_id"], 1);
        assert_eq!(select["disposition_id"], 1);
        assert_eq!(select["unmapped"]["result_masked"][0]["column"], "email");
        assert_eq!(select["actor"]["app_name"], "bot");
        assert_eq!(select["actor"]["user"]["uid"], "998");
        assert_eq!(select["actor"]["process"]["pid"], 1234);
        assert_eq!(
            select["actor"]["process"]["file"]["path"],
            "/usr/bin/restic"
        );
        assert_eq!(select["src_endpoint"]["ip"], "10.0.0.5");
        assert_eq!(select["dst_endpoint"]["port"], 5432);
        assert_eq!(select["duration"], 0, "900 µs in whole milliseconds");
        let jid = select["unmapped"]["journal_id"]
            .as_str()
            .expect("journal id");
        assert_eq!(select["metadata"]["correlation_uid"], format!("{jid}:{pg}"));

        let drop = statements[1];
        assert_eq!(
            (drop["activity_id"].clone(), drop["action_id"].clone()),
            (7.into(), 2.into())
        );
        assert_eq!(drop["disposition_id"], 2);
        assert_eq!(drop["status_id"], 2);
        assert_eq!(drop["status_code"], "42501");
        assert_eq!(drop["severity_id"], 3);

        let delete = statements[2];
        assert_eq!(delete["disposition_id"], 8, "approved after the hold");
        assert_eq!(delete["unmapped"]["approval"]["by"], "alice");

        let close = class(NETWORK_ACTIVITY)
            .find(|e| e["activity_id"] == 2 && e["actor"]["app_name"] == "backup")
            .expect("close of the tcp session");
        assert_eq!(close["traffic"]["bytes_out"], 10);
        assert_eq!(close["traffic"]["bytes_in"], 20);
    }

    #[test]
    fn the_check_catches_missing_and_mistyped_attributes() {
        let good = serde_json::json!({
            "activity_id": 1, "category_uid": 4, "class_uid": 4001, "type_uid": 400101,
            "severity_id": 1, "time": 1, "metadata": {"version": "1.3.0",
            "product": {"vendor_name": "v"}}, "src_endpoint": {}, "dst_endpoint": {}
        });
        assert!(check_required(&good).is_empty());
        for (key, bad) in [
            ("type_uid", serde_json::json!(400102)),
            ("time", serde_json::json!("now")),
            ("category_uid", serde_json::json!(6)),
            ("dst_endpoint", Value::Null),
        ] {
            let mut e = good.clone();
            e[key] = bad;
            assert!(!check_required(&e).is_empty(), "{key}");
        }
    }

    #[tokio::test]
    async fn jsonl_has_each_event_with_its_session_and_out_is_written_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let (pg, _) = pg_journal(&path).await;
        let lines = export(&path, &["--format", "jsonl", "--workload", "bot"]);
        let reader = crate::journal::JournalReader::open(&path).expect("reader");
        assert_eq!(lines.len(), reader.events(pg).expect("events").len());
        for l in &lines {
            assert_eq!(l["session_row"]["id"], pg);
            assert_eq!(l["session_row"]["workload"], "bot");
            assert_eq!(l["session"], pg.to_string());
        }

        let out = dir.path().join("export.ocsf");
        let args = TestCli::try_parse_from([
            "export",
            "--format",
            "ocsf",
            "--journal",
            path.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
        ])
        .expect("arguments")
        .args;
        run(&args).expect("export to a file");
        let text = std::fs::read_to_string(&out).expect("written");
        assert_eq!(text.lines().count(), 7);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file left");
    }
}
