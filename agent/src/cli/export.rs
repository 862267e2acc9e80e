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
use super::select::{EventLine, Selected, Selection};
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

/// One line of `--format jsonl` (and of a `format = "json"` stream).
#[derive(Serialize)]
pub struct JsonlLine<'a> {
    #[serde(flatten)]
    line: EventLine<'a>,
    session_row: Option<&'a SetSession>,
}

/// The `--format jsonl` line of one event: the event as `events --json` prints it (its
/// `hash` included) and its whole session under `session_row`.
pub fn jsonl_line<'a>(s: &'a Selected<'a>) -> JsonlLine<'a> {
    JsonlLine {
        line: s.line(),
        session_row: s.session,
    }
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
            write_line(out, &jsonl_line(s))
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

    /// Chunks, PostgreSQL, MySQL and Redis logins and process lineage have their OCSF classes, carry the
    /// event's identity (journal id, id, hash) and pass the required-attribute check.
    #[tokio::test]
    async fn ocsf_covers_chunks_logins_and_lineage() {
        use std::borrow::Cow;

        use crate::cli::ocsf::{event_identity, AUTHENTICATION, PROCESS_ACTIVITY};
        use crate::journal::tests::{at_us, sample_start};
        use crate::journal::{self, Direction, Event, JournalOptions, NO_SESSION};

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let j = journal::open(&path, JournalOptions::default()).expect("open");
        let h = j.handle();
        let mut start = sample_start("bot", "pg", at_us(0));
        std::sync::Arc::make_mut(&mut start.identity).protocol = "postgres".into();
        let pg = h.start_session(start).await.expect("start");
        let mut start = sample_start("bot", "my", at_us(1));
        std::sync::Arc::make_mut(&mut start.identity).protocol = "mysql".into();
        let my = h.start_session(start).await.expect("start");
        let mut start = sample_start("bot", "cache", at_us(2));
        std::sync::Arc::make_mut(&mut start.identity).protocol = "redis".into();
        let redis = h.start_session(start).await.expect("start");
        h.chunk(pg, Direction::ClientToServer, 120, at_us(10))
            .await
            .expect("chunk");
        h.chunk(pg, Direction::ServerToClient, 700, at_us(20))
            .await
            .expect("chunk");
        let event = |session, us, kind: &'static str, data: &str| Event {
            session,
            at: at_us(us),
            kind: Cow::Borrowed(kind),
            data: data.to_string(),
        };
        h.record(&[
            event(pg, 30, "lineage", r#"{"pid":42,"chain":[{"pid":1,"exe":"/sbin/init","argv":[]},{"pid":42,"exe":"/usr/bin/psql","argv":["psql"]}]}"#),
            event(pg, 40, "pg_auth", r#"{"method":"scram-sha-256","injected":true,"user":"app"}"#),
            event(pg, 50, "pg_auth", r#"{"method":"md5","injected":false,"user":"eve","error":{"sqlstate":"28P01","message":"password authentication failed"}}"#),
            event(my, 51, "mysql_auth", r#"{"method":"caching_sha2_password","injected":true,"user":"app","exchange":"full_auth_rsa_requested_key"}"#),
            event(my, 52, "mysql_auth", r#"{"method":"caching_sha2_password","injected":true,"user":"app","refused":"caching_sha2_password full authentication without TLS and neither server_public_key nor get_server_public_key set"}"#),
            event(redis, 53, "redis_auth", r#"{"injected":true,"user":"bot","error":null}"#),
            event(redis, 54, "redis_auth", r#"{"injected":true,"user":"bot","error":"WRONGPASS invalid username-password pair"}"#),
            event(NO_SESSION, 60, "exec", r#"{"pid":77,"ppid":42,"uid":1000,"user":"ci","exe":"/usr/bin/curl","argv":["curl","-s","https://x"],"workload":"bot"}"#),
            event(NO_SESSION, 70, "exit", r#"{"pid":77,"code":3,"exe":"/usr/bin/curl","workload":"bot"}"#),
            event(NO_SESSION, 80, "lineage_lost", r#"{"count":5,"total":9}"#),
        ])
        .expect("record");
        h.flush().await.expect("flush");
        tokio::task::spawn_blocking(move || j.close())
            .await
            .expect("join")
            .expect("close");

        let events = export(&path, &["--format", "ocsf"]);
        let rows = export(&path, &["--format", "jsonl"]);
        assert_eq!(events.len(), rows.len(), "one OCSF event per journal event");
        for (e, row) in events.iter().zip(&rows) {
            assert_eq!(check_required(e), Vec::<String>::new(), "{e:#}");
            let (journal_id, id, hash) = event_identity(e).expect("identity");
            assert_eq!(row["journal_id"], journal_id.as_str());
            assert_eq!(row["id"], id);
            assert_eq!(row["hash"].as_str(), hash.as_deref(), "{e:#}");
        }
        let of = |kind: &str| {
            let at = rows.iter().position(|r| r["kind"] == kind).expect(kind);
            &events[at]
        };
        let c2s = of("chunk");
        assert_eq!(
            (c2s["class_uid"].clone(), c2s["activity_id"].clone()),
            (NETWORK_ACTIVITY.into(), 6.into())
        );
        assert_eq!(
            c2s["traffic"],
            serde_json::json!({"bytes_out": 120, "bytes_in": 0})
        );
        let s2c = &events[rows
            .iter()
            .rposition(|r| r["kind"] == "chunk")
            .expect("chunk")];
        assert_eq!(
            s2c["traffic"],
            serde_json::json!({"bytes_out": 0, "bytes_in": 700})
        );

        let logins: Vec<&Value> = events
            .iter()
            .filter(|e| e["class_uid"] == AUTHENTICATION)
            .collect();
        assert_eq!(logins.len(), 6);
        assert_eq!(logins[0]["user"]["name"], "app");
        assert_eq!(logins[0]["auth_protocol"], "scram-sha-256");
        assert_eq!(logins[0]["status_id"], 1);
        assert_eq!(logins[0]["unmapped"]["credential_injected"], true);
        assert_eq!(
            logins[0]["message"],
            "PostgreSQL login as app (scram-sha-256): Success"
        );
        assert_eq!(logins[1]["status_id"], 2);
        assert_eq!(logins[1]["status_code"], "28P01");
        assert_eq!(logins[1]["severity_id"], 3);
        // MySQL: the caching_sha2 exchange, and a refusal by the agent is a failure.
        assert_eq!(
            logins[2]["message"],
            "MySQL login as app (caching_sha2_password): Success"
        );
        assert_eq!(
            logins[2]["unmapped"]["exchange"],
            "full_auth_rsa_requested_key"
        );
        assert_eq!(logins[3]["status_id"], 2);
        assert_eq!(logins[3]["severity_id"], 3);
        assert!(logins[3]["status_detail"]
            .as_str()
            .is_some_and(|d| d.contains("neither server_public_key")));
        assert_eq!(
            logins[3]["unmapped"]["refused_by_agent"],
            logins[3]["status_detail"]
        );
        // Redis: a null error is a success; the server's error line is the detail.
        assert_eq!(logins[4]["message"], "Redis login as bot (AUTH): Success");
        assert_eq!(logins[4]["status_id"], 1);
        assert_eq!(logins[5]["status_id"], 2);
        assert_eq!(
            logins[5]["status_detail"],
            "WRONGPASS invalid username-password pair"
        );

        let lineage = of("lineage");
        assert_eq!(lineage["class_uid"], PROCESS_ACTIVITY);
        assert_eq!(lineage["activity_id"], 99);
        assert_eq!(
            lineage["process"]["lineage"],
            serde_json::json!(["/sbin/init", "/usr/bin/psql"])
        );
        assert_eq!(lineage["actor"]["app_name"], "bot");
        let exec = of("exec");
        assert_eq!(
            (exec["activity_id"].clone(), exec["activity_name"].clone()),
            (1.into(), "Launch".into())
        );
        assert_eq!(exec["process"]["cmd_line"], "curl -s https://x");
        assert_eq!(exec["process"]["parent_process"]["pid"], 42);
        assert_eq!(exec["process"]["user"]["name"], "ci");
        assert_eq!(exec["actor"]["app_name"], "bot");
        assert!(
            exec["metadata"].get("correlation_uid").is_none(),
            "no session"
        );
        let exit = of("exit");
        assert_eq!(exit["activity_id"], 2);
        assert_eq!(exit["exit_code"], 3);
        let lost = of("lineage_lost");
        assert_eq!(lost["severity_id"], 2);
        assert_eq!(lost["unmapped"]["count"], 5);
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
        // 4 session open/close, 3 statements, 1 exec (Process Activity).
        assert_eq!(text.lines().count(), 8);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file left");
    }
}
