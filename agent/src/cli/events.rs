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
    /// Only events of this kind (statement, statement_end, approval, chunk, session_start,
    /// session_end, pg_startup, exec, exit, ...). Repeatable.
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
    let selection = Selection::open(&args.inputs)?;
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
    let workload = s.session.map_or("-", |x| x.row.workload.as_str());
    let target = s.session.map_or("-", |x| x.row.target.as_str());
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
    let text = match e.kind.as_str() {
        "chunk" => format!(
            "{} {} B",
            e.direction.map_or("?", |d| d.human()),
            e.size.unwrap_or(0)
        ),
        "statement" => {
            let mut t = str_of("text").replace('\n', " ");
            if str_of("verdict") != "allow" || str_of("action") != "forwarded" {
                t = format!("[{} {}] {t}", str_of("verdict"), str_of("action"));
            }
            t
        }
        "session_start" => match s.session {
            Some(x) => format!(
                "{} → {} ({})",
                x.row.client_addr, x.row.orig_dst, x.row.protocol
            ),
            None => data.to_string(),
        },
        "session_end" => str_of("close_reason").to_string(),
        _ if data.is_null() => String::new(),
        _ => data.to_string(),
    };
    let text = sanitize(&text).into_owned();
    match text.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}
