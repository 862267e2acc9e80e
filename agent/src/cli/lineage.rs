//! Rendering of process lineage for the CLI: one line per `exec` / `exit` /
//! `lineage_lost` event ([`render_event`], for `nhi-agent events` and replay), the
//! chain of a session's `lineage` event ([`render_chain`]: `bash job.sh -> psql -c
//! 'select 1'`), and the replay interleaving ([`ReplayLineage`]).
//!
//! Replay window: the session-less `exec`/`exit` events of the session's cgroup (same
//! `cgroup_id`) from [`WINDOW_BEFORE`] before the session's start until its end (no
//! end: everything after). Ten seconds covers the script that set the client up
//! (its shell, the helpers it ran) without pulling in the cgroup's unrelated history.
use std::borrow::Cow;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use crate::journal::{EventRow, SessionRow};

/// How long before a session's start its cgroup's execs are shown in its replay.
pub const WINDOW_BEFORE: Duration = Duration::from_secs(10);

/// One line for a lineage event, or `None` for other kinds. `exec`: `exec pid 12
/// (ppid 10) workload bot: psql -c 'select 1'`; `exit`: `exit pid 12 (psql) code 0`;
/// `lineage_lost`: `lineage lost: 3 records (ring buffer full)`; `lineage`: the chain.
pub fn render_event(kind: &str, data: &Value) -> Option<String> {
    let num = |k: &str| data.get(k).and_then(Value::as_i64);
    let text = |k: &str| data.get(k).and_then(Value::as_str);
    match kind {
        "exec" => {
            let mut line = format!("exec pid {}", opt(num("pid")));
            if let Some(ppid) = num("ppid") {
                line.push_str(&format!(" (ppid {ppid})"));
            }
            if let Some(w) = text("workload") {
                line.push_str(&format!(" workload {}", sanitize(w)));
            }
            line.push_str(": ");
            line.push_str(&command_line(data));
            Some(line)
        }
        "exit" => {
            let mut line = format!("exit pid {}", opt(num("pid")));
            if let Some(exe) = text("exe") {
                line.push_str(&format!(" ({})", sanitize(basename(exe))));
            }
            match num("code") {
                Some(code) => line.push_str(&format!(" code {code}")),
                None => line.push_str(" (no exit status: killed by a signal?)"),
            }
            Some(line)
        }
        "lineage_lost" => Some(format!(
            "lineage lost: {} records (ring buffer full; {} since the agent started)",
            opt(num("count")),
            opt(num("total"))
        )),
        "lineage" => Some(format!("lineage: {}", render_chain(data))),
        _ => None,
    }
}

/// The chain of a `lineage` event's data, root first: `bash /tmp/job.sh -> psql -c 'select 1'`.
pub fn render_chain(data: &Value) -> String {
    let links: Vec<String> = data
        .get("chain")
        .and_then(Value::as_array)
        .map(|chain| chain.iter().map(command_line).collect())
        .unwrap_or_default();
    if links.is_empty() {
        "(unknown)".to_owned()
    } else {
        links.join(" -> ")
    }
}

/// The command as it was run: argv shell-quoted (argv[0] as given), or the exe when
/// the arguments were not captured; ` …` marks a cut argv.
fn command_line(link: &Value) -> String {
    let argv: Vec<&str> = link
        .get("argv")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut line = if argv.is_empty() {
        sanitize(link.get("exe").and_then(Value::as_str).unwrap_or("?")).into_owned()
    } else {
        argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
    };
    if link.get("argv_truncated").and_then(Value::as_bool) == Some(true) {
        line.push_str(" …");
    }
    line
}

fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Control characters escaped, so a hostile argv cannot rewrite the terminal.
fn sanitize(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(text.chars().flat_map(char::escape_default).collect())
    } else {
        Cow::Borrowed(text)
    }
}

/// Shell-style quoting for display, control characters escaped first.
fn quote(arg: &str) -> String {
    super::replay::shell_quote(&sanitize(arg))
}

fn us_since_epoch(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

fn offset(us: i64) -> String {
    let sign = if us < 0 { "-" } else { "+" };
    let abs = us.unsigned_abs();
    format!("{sign}{}.{:06}s", abs / 1_000_000, abs % 1_000_000)
}

/// A session-less lineage event to interleave.
#[derive(Debug, Clone, PartialEq)]
struct Timed {
    at_us: i64,
    kind: String,
    data: Value,
}

/// What a replay shows of a session's lineage: the chain before the timeline, and the
/// cgroup's exec/exit events interleaved with the session's own events in time order.
#[derive(Debug, Default)]
pub struct ReplayLineage {
    start_us: i64,
    chain: Option<Value>,
    pending: std::collections::VecDeque<Timed>,
}

impl ReplayLineage {
    /// [`ReplayLineage::load`] over every segment of the session's journal: the first
    /// `lineage` event found, and the exec/exit events of all segments in time order.
    pub fn load_all<'p>(
        journals: impl IntoIterator<Item = &'p Path>,
        session: &SessionRow,
    ) -> anyhow::Result<Self> {
        let mut all = ReplayLineage {
            start_us: us_since_epoch(session.started_at),
            ..ReplayLineage::default()
        };
        let mut pending = Vec::new();
        for journal in journals {
            let one = Self::load(journal, session)?;
            if all.chain.is_none() {
                all.chain = one.chain;
            }
            pending.extend(one.pending);
        }
        // Stable: events of one segment keep their journal order at equal times.
        pending.sort_by_key(|t| t.at_us);
        all.pending = pending.into();
        Ok(all)
    }

    /// Reads the session's `lineage` event and its cgroup's exec/exit events in the
    /// window from `journal`.
    pub fn load(journal: &Path, session: &SessionRow) -> anyhow::Result<Self> {
        let conn = Connection::open_with_flags(
            journal,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {} for the lineage", journal.display()))?;
        let start_us = us_since_epoch(session.started_at);
        let from = start_us.saturating_sub(WINDOW_BEFORE.as_micros() as i64);
        let to = session.ended_at.map_or(i64::MAX, us_since_epoch);
        let chain: Option<String> = conn
            .query_row(
                "SELECT data FROM events WHERE session_id = ?1 AND kind = 'lineage' \
                 ORDER BY id LIMIT 1",
                [session.id],
                |row| row.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .context("reading the session's lineage")?;
        // `events_by_session` (session_id, id) serves `session_id IS NULL`.
        let mut stmt = conn
            .prepare(
                "SELECT at_us, kind, data FROM events WHERE session_id IS NULL \
                 AND kind IN ('exec', 'exit') AND at_us BETWEEN ?1 AND ?2 \
                 AND json_extract(data, '$.cgroup_id') = ?3 ORDER BY at_us, id",
            )
            .context("querying lineage events")?;
        let rows = stmt
            .query_map(
                rusqlite::params![from, to, session.identity.cgroup_id as i64],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<String>>(2)?,
                    ))
                },
            )
            .context("querying lineage events")?;
        let mut pending = std::collections::VecDeque::new();
        for row in rows {
            let (at_us, kind, data) = row.context("reading lineage events")?;
            let data = data
                .and_then(|d| serde_json::from_str(&d).ok())
                .unwrap_or(Value::Null);
            pending.push_back(Timed { at_us, kind, data });
        }
        Ok(ReplayLineage {
            start_us,
            chain: chain.and_then(|c| serde_json::from_str(&c).ok()),
            pending,
        })
    }

    /// Writes the chain line (first in the timeline); nothing when none was journaled.
    pub fn write_chain(&self, out: &mut dyn Write) -> io::Result<()> {
        if let Some(chain) = &self.chain {
            writeln!(out, "  lineage: {}", render_chain(chain))?;
        }
        Ok(())
    }

    /// Call before rendering each session event: writes the lineage events that
    /// happened before it. Returns true for the session's own `lineage` event, which
    /// [`ReplayLineage::write_chain`] already showed (the caller skips it).
    pub fn before(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<bool> {
        self.flush_until(out, us_since_epoch(event.at))?;
        Ok(event.kind.as_str() == "lineage" && self.chain.is_some())
    }

    /// Writes the lineage events left (after the session's last event).
    pub fn finish(mut self, out: &mut dyn Write) -> io::Result<()> {
        self.flush_until(out, i64::MAX)
    }

    fn flush_until(&mut self, out: &mut dyn Write, until_us: i64) -> io::Result<()> {
        while self.pending.front().is_some_and(|t| t.at_us <= until_us) {
            if let Some(t) = self.pending.pop_front() {
                if let Some(line) = render_event(&t.kind, &t.data) {
                    writeln!(
                        out,
                        "  {}  {line}",
                        offset(t.at_us.saturating_sub(self.start_us))
                    )?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exec_exit_and_loss_lines() {
        let exec = json!({"pid": 12, "ppid": 10, "workload": "bot", "exe": "/usr/bin/psql",
            "argv": ["psql", "-c", "select 'a b'"], "argv_truncated": false, "cgroup_id": 5});
        assert_eq!(
            render_event("exec", &exec).unwrap(),
            "exec pid 12 (ppid 10) workload bot: psql -c 'select '\\''a b'\\'''"
        );
        let cut = json!({"pid": 3, "exe": "/bin/x", "argv": [], "argv_truncated": true});
        assert_eq!(render_event("exec", &cut).unwrap(), "exec pid 3: /bin/x …");
        assert_eq!(
            render_event(
                "exit",
                &json!({"pid": 12, "code": 2, "exe": "/usr/bin/psql"})
            )
            .unwrap(),
            "exit pid 12 (psql) code 2"
        );
        assert!(render_event("exit", &json!({"pid": 12, "code": null}))
            .unwrap()
            .contains("no exit status"));
        assert!(
            render_event("lineage_lost", &json!({"count": 3, "total": 7}))
                .unwrap()
                .starts_with("lineage lost: 3 records")
        );
        assert_eq!(render_event("statement", &json!({})), None);
        // A terminal escape in an argument is shown, not executed.
        let evil = json!({"pid": 1, "argv": ["echo", "\u{1b}[2J"]});
        assert!(!render_event("exec", &evil).unwrap().contains('\u{1b}'));
    }

    #[test]
    fn chain_is_root_first_with_arrows() {
        let data = json!({"pid": 3, "chain": [
            {"pid": 1, "exe": "/usr/bin/bash", "argv": ["bash", "/tmp/job.sh"]},
            {"pid": 3, "exe": "/usr/bin/psql", "argv": ["psql", "-c", "select 1"]},
        ]});
        assert_eq!(
            render_chain(&data),
            "bash /tmp/job.sh -> psql -c 'select 1'"
        );
        assert_eq!(render_chain(&json!({})), "(unknown)");
    }

    #[test]
    fn interleaving_follows_time() {
        let at = |us: i64| UNIX_EPOCH + Duration::from_micros(us as u64);
        let mut view = ReplayLineage {
            start_us: 1_000_000,
            chain: Some(json!({"chain": [{"pid": 1, "argv": ["bash"]}]})),
            pending: [
                (900_000, "exec", json!({"pid": 1, "argv": ["sleep", "0.1"]})),
                (1_500_000, "exit", json!({"pid": 1, "code": 0})),
                (3_000_000, "exec", json!({"pid": 2, "argv": ["true"]})),
            ]
            .into_iter()
            .map(|(at_us, kind, data)| Timed {
                at_us,
                kind: kind.into(),
                data,
            })
            .collect(),
        };
        let event = |us: i64, kind: &str| EventRow {
            id: 1,
            session_id: Some(1),
            at: at(us),
            kind: crate::journal::EventKind::Other(kind.into()),
            direction: None,
            size: None,
            data: None,
            hash: None,
        };
        let mut out = Vec::new();
        view.write_chain(&mut out).unwrap();
        assert!(!view
            .before(&mut out, &event(1_000_000, "session_start"))
            .unwrap());
        assert!(view.before(&mut out, &event(1_000_100, "lineage")).unwrap());
        out.extend_from_slice(b"STATEMENT\n");
        assert!(!view
            .before(&mut out, &event(2_000_000, "statement"))
            .unwrap());
        out.extend_from_slice(b"STATEMENT2\n");
        view.finish(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "  lineage: bash");
        assert_eq!(lines[1], "  -0.100000s  exec pid 1: sleep 0.1");
        assert_eq!(lines[2], "STATEMENT");
        assert_eq!(lines[3], "  +0.500000s  exit pid 1 code 0");
        assert_eq!(lines[4], "STATEMENT2");
        assert_eq!(lines[5], "  +2.000000s  exec pid 2: true");
    }
}
