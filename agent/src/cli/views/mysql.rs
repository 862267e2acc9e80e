//! MySQL / MariaDB sessions (`protocol = "mysql"`): a `mysql>` transcript. Statements
//! have PostgreSQL's event shape (`proxy::postgres::events`), so the transcript,
//! the `events` summaries and the OCSF Datastore mapping are PostgreSQL's; the log-in
//! and authentication events are MySQL's own (`proxy::mysql::events`).
use std::io::{self, Write};

use super::postgres::{Postgres, Transcript};
use super::{OcsfRequests, ProtocolView, Replay};
use crate::cli::replay::{format_offset_us, us_since_epoch};
use crate::cli::sessions::sanitize;
use crate::journal::{EventRow, SessionRow};
use crate::proxy::mysql::events::{kind, Login};

/// The MySQL view.
pub struct Mysql;

impl ProtocolView for Mysql {
    fn protocol(&self) -> &'static str {
        "mysql"
    }

    fn replay(&self, session: &SessionRow) -> Box<dyn Replay> {
        Box::new(MysqlTranscript {
            start_us: us_since_epoch(session.started_at),
            statements: Transcript::with_prompt(session, "mysql>"),
        })
    }

    fn ocsf(&self) -> Option<Box<dyn OcsfRequests>> {
        Postgres.ocsf()
    }

    // The statement events are PostgreSQL's kind (`statement`): the request conditions
    // of `events` and `sessions` find them through the PostgreSQL view's `requests`.

    fn detail(&self, kind: &str, data: &serde_json::Value) -> Option<String> {
        Postgres.detail(kind, data)
    }
}

/// The `mysql>` transcript: the log-in and authentication lines, then PostgreSQL's
/// statement transcript with the MySQL prompt.
struct MysqlTranscript {
    start_us: i64,
    statements: Transcript,
}

impl Replay for MysqlTranscript {
    fn event(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<()> {
        let offset = format_offset_us(us_since_epoch(event.at).saturating_sub(self.start_us));
        let null = serde_json::Value::Null;
        let data = event.data.as_ref().unwrap_or(&null);
        let str_of = |key: &str| data.get(key).and_then(|v| v.as_str()).unwrap_or("");
        match event.kind.as_str() {
            kind::LOGIN if Login::read(data).is_some() => {
                let login = Login::read(data).expect("checked");
                let mut line = format!("  {offset}  connect: user {}", sanitize(&login.user));
                if let Some(db) = &login.database {
                    line.push_str(&format!(" database {}", sanitize(db)));
                }
                if login.db_user != login.user {
                    line.push_str(&format!(" (logged in as {})", sanitize(&login.db_user)));
                }
                line.push_str(&format!(" server {}", sanitize(&login.server_version)));
                if let Some((_, program)) = login
                    .attributes
                    .iter()
                    .find(|(k, _)| k == "program_name" || k == "_client_name")
                {
                    line.push_str(&format!(" client {}", sanitize(program)));
                }
                if login.client_tls {
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
                // caching_sha2_password: fast, or full over TLS / with an RSA key.
                let exchange = match data.get("exchange").and_then(|v| v.as_str()) {
                    Some(e) => format!(", {}", sanitize(&e.replace('_', " "))),
                    None => String::new(),
                };
                match (
                    data.get("error"),
                    data.get("refused").and_then(|v| v.as_str()),
                ) {
                    (Some(e), _) => writeln!(
                        out,
                        "  {offset}  authentication {} failed: ERROR {} ({}): {}",
                        sanitize(str_of("method")),
                        e.get("code").and_then(|v| v.as_u64()).unwrap_or(0),
                        sanitize(e.get("sqlstate").and_then(|v| v.as_str()).unwrap_or("")),
                        sanitize(e.get("message").and_then(|v| v.as_str()).unwrap_or(""))
                    ),
                    (None, Some(why)) => writeln!(
                        out,
                        "  {offset}  authentication {} refused by the agent{exchange}: {}",
                        sanitize(str_of("method")),
                        sanitize(why)
                    ),
                    (None, None) => writeln!(
                        out,
                        "  {offset}  authenticated: {} as {}{how}{exchange}",
                        sanitize(str_of("method")),
                        sanitize(str_of("user"))
                    ),
                }
            }
            _ => self.statements.event(out, event),
        }
    }

    fn finish(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        self.statements.finish(out)
    }
}
