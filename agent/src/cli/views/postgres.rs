//! PostgreSQL sessions (`protocol = "postgres"`): a psql-like replay transcript and
//! OCSF Datastore Activity, read from the typed events of `proxy::postgres::events`.
use std::io::{self, Write};

use super::opaque::Timeline;
use super::{OcsfRequests, ProtocolView, Replay, RequestEvents};
use crate::cli::replay::{format_offset_us, us_since_epoch};
use crate::cli::sessions::sanitize;
use crate::journal::{EventRow, SessionRow};
use crate::proxy::postgres::events::{kind, CopyDirection, Startup, Statement, StatementEnd};

/// The PostgreSQL view.
pub struct Postgres;

impl ProtocolView for Postgres {
    fn protocol(&self) -> &'static str {
        "postgres"
    }

    fn replay(&self, session: &SessionRow) -> Box<dyn Replay> {
        Box::new(Transcript::new(session))
    }

    fn ocsf(&self) -> Option<Box<dyn OcsfRequests>> {
        Some(Box::new(crate::cli::ocsf::Datastore::default()))
    }

    fn requests(&self) -> Option<RequestEvents> {
        Some(RequestEvents {
            kind: kind::STATEMENT,
            texts: &[&["text"]],
            action: "action",
        })
    }

    /// A statement: its text on one line, with verdict and action unless it was an
    /// allowed, forwarded one.
    fn detail(&self, kind: &str, data: &serde_json::Value) -> Option<String> {
        if kind != kind::STATEMENT {
            return None;
        }
        let st = Statement::read(data)?;
        let mut t = st.text.replace('\n', " ");
        if st.verdict != "allow" || st.action != "forwarded" {
            t = format!("[{} {}] {t}", st.verdict, st.action);
        }
        Some(t)
    }
}

impl Replay for Transcript {
    fn event(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<()> {
        Transcript::event(self, out, event)
    }

    fn finish(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        Transcript::finish(*self, out)
    }
}

/// A PostgreSQL session as a psql-like transcript: each statement after a `=>` prompt
/// with the policy's verdict, then its result (rows or the tag), the masked columns, the
/// error with its SQLSTATE. Result rows appear when the policy recorded them
/// (`record_results = "rows"`), masked as the client saw them.
pub struct Transcript {
    /// What precedes each statement: `=>` (psql), `mysql>` for MySQL sessions.
    prompt: &'static str,
    start_us: i64,
    statements: u64,
    refused: u64,
    errors: u64,
    timeline: Timeline,
}

impl Transcript {
    pub fn new(session: &SessionRow) -> Self {
        Transcript::with_prompt(session, "=>")
    }

    /// A transcript with another prompt before each statement.
    pub fn with_prompt(session: &SessionRow, prompt: &'static str) -> Self {
        Transcript {
            prompt,
            start_us: us_since_epoch(session.started_at),
            statements: 0,
            refused: 0,
            errors: 0,
            timeline: Timeline::new(session),
        }
    }

    pub(crate) fn event(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<()> {
        let at_us = us_since_epoch(event.at);
        let offset = format_offset_us(at_us.saturating_sub(self.start_us));
        let null = serde_json::Value::Null;
        let data = event.data.as_ref().unwrap_or(&null);
        let str_of = |key: &str| data.get(key).and_then(|v| v.as_str()).unwrap_or("");
        match event.kind.as_str() {
            kind::STARTUP if Startup::read(data).is_some() => {
                let st = Startup::read(data).expect("checked");
                let mut line = format!(
                    "  {offset}  connect: user {} database {}",
                    sanitize(&st.user),
                    sanitize(&st.database)
                );
                if st.db_user != st.user {
                    line.push_str(&format!(" (logged in as {})", sanitize(&st.db_user)));
                }
                if let Some(app) = &st.application_name {
                    line.push_str(&format!(" application {}", sanitize(app)));
                }
                if st.client_tls {
                    line.push_str(" [client TLS]");
                }
                writeln!(out, "{line}")
            }
            kind::AUTH => {
                let injected = data.get("injected").and_then(|v| v.as_bool()) == Some(true);
                let how = if injected {
                    " (credential held by the agent)"
                } else {
                    ""
                };
                match data.get("error") {
                    Some(e) => writeln!(
                        out,
                        "  {offset}  authentication {} failed: {} {}",
                        sanitize(str_of("method")),
                        sanitize(e.get("sqlstate").and_then(|v| v.as_str()).unwrap_or("")),
                        sanitize(e.get("message").and_then(|v| v.as_str()).unwrap_or(""))
                    ),
                    None => writeln!(
                        out,
                        "  {offset}  authenticated: {}{how}",
                        sanitize(str_of("method"))
                    ),
                }
            }
            kind::STATEMENT if Statement::read(data).is_some() => {
                let st = Statement::read(data).expect("checked");
                self.statements += 1;
                let (action, verdict) = (st.action.as_ref(), st.verdict.as_ref());
                let mut note = String::new();
                if action == "refused" {
                    self.refused += 1;
                }
                if verdict != "allow" {
                    let rule = st
                        .rule
                        .as_deref()
                        .map(|r| format!(" by rule {}", sanitize(r)))
                        .unwrap_or_default();
                    let mode = if st.enforced {
                        ""
                    } else {
                        ", observe mode: not enforced"
                    };
                    note = format!("   [{verdict}{rule}: {action}{mode}]");
                }
                let text = sanitize(&st.text).replace('\n', "\n               ");
                writeln!(out, "  {offset}  {} {text}{note}", self.prompt)?;
                if !st.params.is_empty() {
                    let shown: Vec<String> = st
                        .params
                        .iter()
                        .enumerate()
                        .map(|(i, p)| format!("${}={}", i + 1, sanitize(p)))
                        .collect();
                    writeln!(out, "               params: {}", shown.join(", "))?;
                }
                Ok(())
            }
            kind::STATEMENT_END if StatementEnd::read(data).is_some() => {
                self.result(out, &StatementEnd::read(data).expect("checked"))
            }
            "approval" => writeln!(
                out,
                "  {offset}  approval: {}{}",
                sanitize(str_of("decision")),
                data.get("by")
                    .and_then(|v| v.as_str())
                    .map(|b| format!(" by {}", sanitize(b)))
                    .unwrap_or_default()
            ),
            kind::CANCEL | kind::CANCEL_REQUESTED => writeln!(
                out,
                "  {offset}  cancel request ({})",
                sanitize(&data.to_string())
            ),
            "protocol_error" => writeln!(
                out,
                "  {offset}  protocol error: {}",
                sanitize(str_of("reason"))
            ),
            _ => self.timeline.event(out, event),
        }
    }

    fn result(&mut self, out: &mut dyn Write, end: &StatementEnd<'_>) -> io::Result<()> {
        let pad = "               ";
        if let Some(e) = &end.error {
            self.errors += 1;
            return writeln!(
                out,
                "{pad}ERROR {}: {}",
                sanitize(&e.sqlstate),
                sanitize(&e.message)
            );
        }
        if let Some(note) = &end.note {
            return writeln!(out, "{pad}({})", sanitize(note));
        }
        let columns: Vec<String> = end
            .columns
            .iter()
            .map(|c| sanitize(c).into_owned())
            .collect();
        if let Some(rows) = &end.result_rows {
            writeln!(out, "{pad}{}", columns.join(" | "))?;
            for row in rows.iter() {
                let cells: Vec<String> = row
                    .iter()
                    .map(|v| match v {
                        Some(s) => sanitize(s).into_owned(),
                        None => "NULL".to_owned(),
                    })
                    .collect();
                writeln!(out, "{pad}{}", cells.join(" | "))?;
            }
        } else if !columns.is_empty() {
            writeln!(out, "{pad}columns: {}", columns.join(", "))?;
        }
        let mut summary = Vec::new();
        if let Some(tag) = &end.tag {
            if !tag.is_empty() {
                summary.push(sanitize(tag).into_owned());
            }
        }
        if let Some(rows) = end.rows {
            let plural = if rows == 1 { "" } else { "s" };
            summary.push(format!("({rows} row{plural})"));
        }
        if let Some(copy) = &end.copy {
            let direction = match copy.direction {
                CopyDirection::In => "in",
                CopyDirection::Out => "out",
            };
            summary.push(format!(
                "COPY {direction}: {} bytes in {} messages",
                copy.bytes, copy.messages
            ));
        }
        summary.push(format!("{:.3} ms", end.duration_us as f64 / 1000.0));
        writeln!(out, "{pad}{}", summary.join("  "))?;
        for m in &end.masked {
            writeln!(
                out,
                "{pad}masked: column {} by {} ({}): {} values{}",
                sanitize(&m.column),
                sanitize(&m.rule),
                sanitize(&m.strategy),
                m.values,
                if end.mask_not_enforced {
                    " (observe mode: the client got them unmasked)"
                } else {
                    ""
                }
            )?;
        }
        Ok(())
    }

    pub(crate) fn finish(self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "  {} statements, {} refused, {} errors",
            self.statements, self.refused, self.errors
        )
    }
}
