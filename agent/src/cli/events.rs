//! `nhi-agent events`: events across sessions and journals, session-less ones included,
//! with the session's workload and target next to each.
//!
//! Like `sessions`, it works offline on copied journal files and directories of segments.
//! Strings from the workloads are escaped in the table (see `sessions::sanitize`).

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

use super::filter::{Filter, FilterArgs, InputArgs, Tail};
use super::select::{Selected, Selection};
use super::sessions::{finish_output, sanitize};
use crate::journal::format_rfc3339_us;

/// Arguments of `nhi-agent events`.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub inputs: InputArgs,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub events: EventSelectArgs,

    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The event-only options of `events` and `export`.
#[derive(Debug, Clone, Default, Args)]
pub struct EventSelectArgs {
    /// Only events of this kind (statement, statement_end, http_request, http_response,
    /// aws_call, ssh_exec, ssh_channel, ssh_data, sftp_op, ssh_login, approval, chunk,
    /// session_start, session_end, pg_startup, exec, exit, ...). Repeatable.
    #[arg(long = "kind", value_name = "K")]
    pub kinds: Vec<String>,

    /// Only the events of this session (ID or JOURNAL_PREFIX:ID, as listed by `sessions`).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
}

/// Runs `nhi-agent events`.
pub fn run(args: &EventsArgs) -> anyhow::Result<ExitCode> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    finish_output(write_events(args, &mut out), &mut out)
}

/// Calls `f` with every selected event, oldest first; with `--limit N`, the last N.
pub(crate) fn select(
    selection: &Selection,
    filter: &Filter,
    events: &EventSelectArgs,
    mut f: impl FnMut(&Selected<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let session = events
        .session
        .as_deref()
        .map(|r| selection.resolve(r))
        .transpose()?;
    match filter.limit {
        None => selection.for_each_event(filter, &events.kinds, session, |s| f(&s)),
        Some(limit) => {
            let mut tail = Tail::new(Some(limit));
            selection.for_each_event(filter, &events.kinds, session, |s| {
                tail.push(s);
                Ok(())
            })?;
            tail.into_vec().iter().try_for_each(f)
        }
    }
}

/// Writes the events for `args` to `out`.
pub(crate) fn write_events(args: &EventsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let filter = Filter::new(&args.filter)?;
    let selection = Selection::open(&args.inputs, false)?;
    if args.json {
        return select(&selection, &filter, &args.events, |s| {
            serde_json::to_writer(&mut *out, &s.line()).context("cannot encode an event")?;
            writeln!(out).context("cannot write the output")
        });
    }
    writeln!(
        out,
        "{:<27}  {:<12}  {:<16}  {:<10}  {:<13}  DETAIL",
        "AT", "SESSION", "WORKLOAD", "TARGET", "KIND"
    )
    .context("cannot write the output")?;
    select(&selection, &filter, &args.events, |s| {
        writeln!(out, "{}", table_line(s)).context("cannot write the output")
    })
}

fn table_line(s: &Selected<'_>) -> String {
    let at = format_rfc3339_us(s.event.at);
    let session = s.session.map_or("-", |x| x.session_ref.as_str());
    // Session-less events (exec, attestation, grants) carry the workload in their data.
    let who = s.who();
    let workload = who.workload.unwrap_or("-");
    let target = who.target.unwrap_or("-");
    format!(
        "{at:<27}  {:<12}  {:<16}  {:<10}  {:<13}  {}",
        sanitize(session),
        sanitize(workload),
        sanitize(target),
        sanitize(s.event.kind.as_str()),
        detail(s)
    )
}

/// A one-line summary of an event for the table (at most about 100 characters).
fn detail(s: &Selected<'_>) -> String {
    let e = &s.event;
    let null = Value::Null;
    let data = e.data.as_ref().unwrap_or(&null);
    let str_of = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("");
    // The session's protocol may have its own summary of the event (a statement).
    let by_protocol = s
        .session
        .and_then(|x| super::views::view(&x.row.identity.protocol).detail(e.kind.as_str(), data));
    let text = match by_protocol {
        Some(text) => text,
        None => match e.kind.as_str() {
            "chunk" => format!(
                "{} {} B",
                e.direction.map_or("?", |d| d.human()),
                e.size.unwrap_or(0)
            ),
            "session_start" => match s.session {
                Some(x) => format!(
                    "{} → {} ({})",
                    x.row.identity.client_addr, x.row.identity.orig_dst, x.row.identity.protocol
                ),
                None => data.to_string(),
            },
            "session_end" => str_of("close_reason").to_string(),
            // exec / exit / lineage: as `replay` shows them.
            other => match crate::cli::lineage::render_event(other, data) {
                Some(line) => line,
                None if data.is_null() => String::new(),
                None => data.to_string(),
            },
        },
    };
    let text = sanitize(&text).into_owned();
    match text.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;
    use serde_json::Value;

    use super::*;
    use crate::cli::select::tests::pg_journal;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        args: EventsArgs,
    }

    fn events(path: &Path, extra: &[&str]) -> Vec<Value> {
        let mut argv = vec!["events", "--json", path.to_str().expect("utf-8")];
        argv.extend_from_slice(extra);
        let args = TestCli::try_parse_from(argv).expect("arguments").args;
        let mut out = Vec::new();
        write_events(&args, &mut out).expect("events");
        String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    fn texts(events: &[Value]) -> Vec<&str> {
        events
            .iter()
            .map(|e| e["data"]["text"].as_str().unwrap_or("-"))
            .collect()
    }

    /// Request conditions are protocol-neutral: `--text` finds HTTP requests by method
    /// and target next to SQL statements, `--verdict` reads both.
    #[tokio::test]
    async fn http_requests_are_found_by_text_and_verdict() {
        use crate::journal::{self, tests::at_us, tests::sample_start, Event, JournalOptions};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let j = journal::open(&path, JournalOptions::default()).expect("open");
        let h = j.handle();
        let mut start = sample_start("bot", "api", at_us(0));
        std::sync::Arc::make_mut(&mut start.identity).protocol = "http".into();
        let http = h.start_session(start).await.expect("start");
        let mut start = sample_start("bot", "pg", at_us(5));
        std::sync::Arc::make_mut(&mut start.identity).protocol = "postgres".into();
        let pg = h.start_session(start).await.expect("start");
        let event = |session, us, kind: &str, data: &str| Event {
            session,
            at: at_us(us),
            kind: std::borrow::Cow::Owned(kind.to_string()),
            data: data.to_string(),
        };
        h.record(&[
            event(http, 100, "http_request", r#"{"seq":1,"method":"GET","target":"/hello?x=1","verdict":"allow","action":"forwarded","enforced":true}"#),
            event(http, 200, "http_response", r#"{"seq":1,"status":200}"#),
            event(http, 300, "http_request", r#"{"seq":2,"method":"DELETE","target":"/admin/users/7","verdict":"deny","rule":"no-admin-deletes","action":"refused","enforced":true}"#),
            event(pg, 400, "statement", r#"{"seq":1,"text":"select * from admin_users","verdict":"deny","action":"refused","enforced":true}"#),
        ])
        .expect("record");
        h.flush().await.expect("flush");
        tokio::task::spawn_blocking(move || j.close())
            .await
            .expect("join")
            .expect("close");

        let found = events(&path, &["--text", "/admin"]);
        let kinds: Vec<&str> = found
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(kinds, ["http_request"], "{found:?}");
        assert_eq!(found[0]["data"]["target"], "/admin/users/7");
        let found = events(&path, &["--text", "DELETE /admin"]);
        assert_eq!(found.len(), 1);
        assert!(events(&path, &["--text", "GET /admin"]).is_empty());
        let found = events(&path, &["--text", "admin"]);
        assert_eq!(found.len(), 2, "a statement and a request: {found:?}");
        let found = events(&path, &["--regex", r"^GET /hello\?"]);
        assert_eq!(found.len(), 1);
        let denied = events(&path, &["--verdict", "denied"]);
        assert_eq!(denied.len(), 2, "{denied:?}");
        let denied_http = events(&path, &["--verdict", "denied", "--kind", "http_request"]);
        assert_eq!(denied_http.len(), 1);
        assert_eq!(denied_http[0]["session"], http.to_string());
        assert!(events(&path, &["--text", "admin", "--kind", "chunk"]).is_empty());
    }

    #[tokio::test]
    async fn filters_select_statements_and_lines_carry_their_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let (pg, tcp) = pg_journal(&path).await;

        let all = events(&path, &[]);
        let tcp_ref = tcp.to_string();
        assert!(all.iter().any(|e| e["session"] == tcp_ref.as_str()));
        let select = events(&path, &["--text", "from users"]);
        assert_eq!(texts(&select), ["select email from users"]);
        let e = &select[0];
        assert_eq!(e["kind"], "statement");
        assert_eq!(e["session"], pg.to_string());
        assert_eq!(e["workload"], "bot");
        assert_eq!(e["target"], "pg");
        assert_eq!(e["protocol"], "postgres");
        assert!(e["journal_id"].as_str().is_some_and(|j| j.len() == 32));

        assert_eq!(
            texts(&events(&path, &["--verdict", "denied"])),
            ["drop table users"]
        );
        assert_eq!(
            texts(&events(&path, &["--verdict", "held"])),
            ["delete from carts where id = 1"]
        );
        assert_eq!(
            texts(&events(&path, &["--verdict", "masked"])),
            ["select email from users"]
        );
        assert_eq!(
            texts(&events(&path, &["--verdict", "allowed"])),
            ["select email from users"]
        );
        assert_eq!(
            texts(&events(&path, &["--regex", "^(drop|delete) "])),
            ["drop table users", "delete from carts where id = 1"]
        );
        assert!(events(&path, &["--text", "from users", "--workload", "backup"]).is_empty());
        assert_eq!(
            events(&path, &["--text", "from users", "--workload", "b*"]).len(),
            1
        );

        let kinds: Vec<Value> = events(&path, &["--kind", "approval", "--kind", "pg_startup"])
            .into_iter()
            .map(|e| e["kind"].clone())
            .collect();
        assert_eq!(kinds, ["pg_startup", "approval"]);
        let tcp_only = events(&path, &["--session", &tcp.to_string()]);
        assert!(!tcp_only.is_empty());
        assert!(tcp_only.iter().all(|e| e["session_id"] == tcp));
        let last = events(&path, &["--kind", "statement", "--limit", "1"]);
        assert_eq!(texts(&last), ["delete from carts where id = 1"]);
        let exec = events(&path, &["--kind", "exec"]);
        assert_eq!(exec.len(), 1, "events of no session are listed");
        assert!(exec[0]["session"].is_null() && exec[0]["workload"].is_null());
        assert_eq!(exec[0]["data"]["pid"], 77);
        assert!(events(&path, &["--kind", "exec", "--workload", "*"]).is_empty());
        let window = events(
            &path,
            &[
                "--since",
                "2026-11-22T10:00:00.000300Z",
                "--until",
                "2026-11-22T10:00:00.000600Z",
            ],
        );
        let times: Vec<&str> = window
            .iter()
            .map(|e| e["at"].as_str().expect("at"))
            .collect();
        assert_eq!(
            times,
            [
                "2026-11-22T10:00:00.000300Z",
                "2026-11-22T10:00:00.000400Z",
                "2026-11-22T10:00:00.000500Z",
                "2026-11-22T10:00:00.000600Z"
            ]
        );
        let none = events(&path, &["--kind", "chunk", "--text", "users"]);
        assert!(
            none.is_empty(),
            "statement conditions select statements only"
        );
    }

    #[tokio::test]
    async fn table_has_context_columns_and_escapes_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        pg_journal(&path).await;
        let args = TestCli::try_parse_from(["events", "--journal", path.to_str().expect("utf-8")])
            .expect("arguments")
            .args;
        let mut out = Vec::new();
        write_events(&args, &mut out).expect("events");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("AT") && lines[0].contains("WORKLOAD"),
            "{text}"
        );
        let drop = lines
            .iter()
            .find(|l| l.contains("drop table users"))
            .expect("the refused statement");
        assert!(
            drop.contains("bot") && drop.contains("[deny refused]"),
            "{drop}"
        );
    }

    #[tokio::test]
    async fn session_less_exec_events_are_listed_with_their_workload_and_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let journal =
            crate::journal::open(&path, crate::journal::JournalOptions::default()).expect("open");
        let h = journal.handle();
        let data = serde_json::json!({
            "pid": 4242, "ppid": 4241, "workload": "ci-job", "exe": "/usr/bin/bash",
            "argv": ["bash", "job.sh"], "cgroup_id": 7
        });
        h.record(&[crate::journal::Event {
            session: crate::journal::NO_SESSION,
            at: std::time::SystemTime::now(),
            kind: "exec".into(),
            data: data.to_string(),
        }])
        .expect("record");
        h.flush().await.expect("flush");
        tokio::task::spawn_blocking(move || journal.close())
            .await
            .expect("join")
            .expect("close");
        let args =
            TestCli::try_parse_from(["events", "--kind", "exec", path.to_str().expect("utf-8")])
                .expect("arguments")
                .args;
        let mut out = Vec::new();
        write_events(&args, &mut out).expect("events");
        let text = String::from_utf8(out).expect("utf-8");
        let line = text
            .lines()
            .find(|l| l.contains("exec pid 4242"))
            .unwrap_or_else(|| panic!("no exec line in:\n{text}"));
        assert!(line.contains("(ppid 4241)"), "{line}");
        assert!(line.contains("bash job.sh"), "{line}");
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(columns[1], "-", "no session: {line}");
        assert_eq!(columns[2], "ci-job", "workload from the event: {line}");
    }

    /// `--workload`, `--target`, `--claim` and `--since` mean for events of no session
    /// (exec, exit, attestation, grant) what they mean for a session's events: what the
    /// event's data names, in the table and in `--json`.
    #[tokio::test]
    async fn filters_apply_to_session_less_events_as_to_session_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let journal =
            crate::journal::open(&path, crate::journal::JournalOptions::default()).expect("open");
        let h = journal.handle();
        let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let at = |s: u64| t0 + std::time::Duration::from_secs(s);
        let mut start = crate::journal::tests::sample_start("ci-job", "pg", at(0));
        std::sync::Arc::make_mut(&mut start.identity).protocol = "postgres".into();
        start.claims = serde_json::json!({"run_id": 9}).as_object().cloned();
        let session = h.start_session(start).await.expect("start");
        let claims = serde_json::json!({"run_id": 9, "ref": "refs/heads/main"});
        let events = [
            (
                None,
                1,
                "exec",
                serde_json::json!({"pid": 1, "workload": "ci-job", "claims": claims, "exe": "/bin/sh", "argv": ["sh"]}),
            ),
            (
                None,
                2,
                "exec",
                serde_json::json!({"pid": 2, "workload": "other", "claims": null, "exe": "/bin/sh", "argv": ["sh"]}),
            ),
            (
                None,
                3,
                "attestation",
                serde_json::json!({"result": "accepted", "workload": "ci-job", "claims": claims, "cgroup": "ci/job", "uid": 0}),
            ),
            (
                None,
                4,
                "approval_grant",
                serde_json::json!({"change": "created", "grant": {"id": "g-1", "workload": "ci-job", "target": "pg", "rule": "ask"}}),
            ),
            (
                Some(session),
                5,
                "pg_startup",
                serde_json::json!({"user": "app"}),
            ),
            (
                None,
                6,
                "exit",
                serde_json::json!({"pid": 1, "code": 0, "workload": "ci-job", "claims": claims}),
            ),
            (
                None,
                7,
                "lineage_lost",
                serde_json::json!({"count": 1, "total": 1}),
            ),
        ];
        let records: Vec<crate::journal::Event> = events
            .iter()
            .map(|(session, s, kind, data)| crate::journal::Event {
                session: session.unwrap_or(crate::journal::NO_SESSION),
                at: at(*s),
                kind: (*kind).into(),
                data: data.to_string(),
            })
            .collect();
        h.record(&records).expect("record");
        h.flush().await.expect("flush");
        tokio::task::spawn_blocking(move || journal.close())
            .await
            .expect("join")
            .expect("close");
        let p = path.to_str().expect("utf-8");
        // (kind, pid or id) of what `events ARGS --json` lists, session_start/_end aside.
        let listed = |extra: &[&str]| -> Vec<String> {
            let mut argv = vec!["events", p, "--json"];
            argv.extend_from_slice(extra);
            let args = TestCli::try_parse_from(argv).expect("arguments").args;
            let mut out = Vec::new();
            write_events(&args, &mut out).expect("events");
            String::from_utf8(out)
                .expect("utf-8")
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("json"))
                .filter(|e| !e["kind"].as_str().expect("kind").starts_with("session_"))
                .map(|e| {
                    let kind = e["kind"].as_str().expect("kind").to_string();
                    match e["data"]["pid"].as_u64() {
                        Some(pid) => format!("{kind} {pid}"),
                        None => kind,
                    }
                })
                .collect()
        };
        assert_eq!(
            listed(&["--workload", "ci-job"]),
            [
                "exec 1",
                "attestation",
                "approval_grant",
                "pg_startup",
                "exit 1"
            ]
        );
        assert_eq!(
            listed(&["--workload", "ci-job", "--kind", "exec"]),
            ["exec 1"]
        );
        assert_eq!(
            listed(&["--workload", "ci-*", "--kind", "exec"]),
            ["exec 1"]
        );
        assert_eq!(
            listed(&["--claim", "run_id=9"]),
            ["exec 1", "attestation", "pg_startup", "exit 1"]
        );
        assert_eq!(
            listed(&["--claim", "ref=refs/heads/main", "--kind", "exec"]),
            ["exec 1"]
        );
        // An exec names no target; a grant does, as a session does.
        assert_eq!(
            listed(&["--target", "pg"]),
            ["approval_grant", "pg_startup"]
        );
        assert_eq!(
            listed(&["--since", "2027-01-15T08:00:03Z", "--workload", "ci-job"]),
            ["attestation", "approval_grant", "pg_startup", "exit 1"]
        );
        // Without identity conditions everything is listed, host-wide events included.
        assert_eq!(listed(&[]).len(), 7);
        // The JSON line carries the event's workload and target, as for a session event.
        let args = TestCli::try_parse_from(["events", p, "--json", "--kind", "approval_grant"])
            .expect("arguments")
            .args;
        let mut out = Vec::new();
        write_events(&args, &mut out).expect("events");
        let line: Value = serde_json::from_slice(&out).expect("one json line");
        assert_eq!(
            (line["workload"].as_str(), line["target"].as_str()),
            (Some("ci-job"), Some("pg"))
        );
        assert!(line["session"].is_null());
    }

    /// Measures `events --text` over a journal of 1,000,000 events (10% statements, the
    /// rest chunks, 1,000 sessions). Not a pass/fail test: run it with
    /// `cargo test -p nhi-agent --lib search_latency -- --ignored --nocapture`
    /// (set NHI_BENCH_JOURNAL=PATH to keep the generated journal and reuse it).
    #[tokio::test]
    #[ignore = "a measurement, ~1 min to generate the journal"]
    async fn search_latency_over_a_million_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = std::env::var_os("NHI_BENCH_JOURNAL")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| dir.path().join("big.db"));
        // A journal kept from an earlier run (NHI_BENCH_JOURNAL) is measured again as is.
        if !path.exists() {
            let journal = crate::journal::open(&path, crate::journal::JournalOptions::default())
                .expect("open");
            tokio::task::spawn_blocking(move || journal.close())
                .await
                .expect("join")
                .expect("close");
            let generated = std::time::Instant::now();
            {
                let mut conn = rusqlite::Connection::open(&path).expect("open");
                let tx = conn.transaction().expect("begin");
                for s in 0..1_000i64 {
                    tx.execute(
                    "INSERT INTO sessions (id, workload, cgroup, cgroup_id, pid, uid, gid, comm, \
                     client_addr, orig_dst, target, protocol, started_at_us) VALUES \
                     (?1, ?2, 'system.slice/bot.service', 1, 100, 0, 0, 'bot', \
                     '127.0.0.1:40000', '127.0.0.1:5432', 'pg', 'postgres', ?3)",
                    rusqlite::params![s + 1, format!("bot-{}", s % 10), s * 1_000_000],
                )
                .expect("session");
                }
                let mut insert = tx
                    .prepare(
                        "INSERT INTO events (session_id, at_us, kind, direction, size, data) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .expect("prepare");
                for i in 0..1_000_000i64 {
                    let session = i % 1_000 + 1;
                    if i % 10 == 0 {
                        let data = format!(
                            r#"{{"seq":{i},"protocol":"simple","text":"select * from orders where id = {i}","kinds":["select"],"verdict":"allow","enforced":true,"action":"forwarded"}}"#
                        );
                        insert
                            .execute(rusqlite::params![
                                session,
                                i,
                                "statement",
                                None::<String>,
                                None::<i64>,
                                data
                            ])
                            .expect("statement");
                    } else {
                        insert
                            .execute(rusqlite::params![
                                session,
                                i,
                                "chunk",
                                "c2s",
                                512,
                                None::<String>
                            ])
                            .expect("chunk");
                    }
                }
                drop(insert);
                tx.commit().expect("commit");
            }
            eprintln!("generated 1,000,000 events in {:?}", generated.elapsed());
        }
        for (label, extra) in [
            ("--text (1 match)", vec!["--text", "where id = 424240"]),
            ("--text (11 matches)", vec!["--text", "id = 4242"]),
            ("--regex (1 match)", vec!["--regex", "id = 424240$"]),
            (
                "--workload + --text",
                vec!["--workload", "bot-0", "--text", "id = 424240"],
            ),
        ] {
            let mut argv = vec!["events", "--json", path.to_str().expect("utf-8")];
            argv.extend(extra);
            let args = TestCli::try_parse_from(argv).expect("arguments").args;
            let started = std::time::Instant::now();
            let mut out = Vec::new();
            write_events(&args, &mut out).expect("events");
            let lines = out.iter().filter(|&&b| b == b'\n').count();
            eprintln!("events {label}: {lines} lines in {:?}", started.elapsed());
            assert!(lines >= 1);
        }
    }
}
