//! Redis sessions (`protocol = "redis"`), read from the typed events of
//! `proxy::redis::events` (`redis_auth`, `redis_command`, `redis_reply`, `redis_push`):
//!
//! - `replay`: a redis-cli-like transcript: each command after a `redis>` prompt as the
//!   journal keeps it (secrets `[redacted]`, values of masked keys `[masked]`), the
//!   judgement when it is not a plain allow (`[deny by rule no-admin: refused]`), then
//!   its reply as redis-cli prints it (`OK`, `(integer) 3`, `"text"`, `(nil)`,
//!   `(error) ERR ...`, `(array, 3 elements)`), masked as the client got it, with what
//!   was masked; pub/sub messages as `message on news: "..."`.
//! - `events`: one line per command, reply and push.
//! - request events: `redis_command`, found by its name and arguments (`--text
//!   FLUSHALL`), judged by `verdict` and `action`.
//! - OCSF: **Datastore Activity** (6005) per command, its status from the reply of the
//!   same `seq`.
use std::collections::HashMap;
use std::io::{self, Write};

use serde_json::{json, Value};

use super::opaque::Timeline;
use super::{OcsfRequests, ProtocolView, Replay, RequestEvents};
use crate::cli::ocsf::{base, context_unmapped, ms, outcome, request_members, DATASTORE_ACTIVITY};
use crate::cli::replay::{format_offset_us, us_since_epoch};
use crate::cli::select::Selected;
use crate::cli::sessions::sanitize;
use crate::journal::{EventRow, SessionId, SessionRow, SetSession};
use crate::proxy::redis::events::{kind, RedisCommandEvent, RedisPush, RedisReply};
use crate::proxy::redis::session::quote;

/// The `protocol` of Redis sessions.
pub const PROTOCOL: &str = "redis";

/// The Redis view.
pub struct Redis;

impl ProtocolView for Redis {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn replay(&self, session: &SessionRow) -> Box<dyn Replay> {
        Box::new(Transcript::new(session))
    }

    fn ocsf(&self) -> Option<Box<dyn OcsfRequests>> {
        Some(Box::<RedisActivity>::default())
    }

    fn requests(&self) -> Option<RequestEvents> {
        Some(RequestEvents {
            kind: kind::COMMAND,
            texts: &[&["command", "args"]],
            action: "action",
        })
    }

    fn detail(&self, kind: &str, data: &Value) -> Option<String> {
        match kind {
            kind::COMMAND => RedisCommandEvent::read(data).map(|c| {
                let mut line = command_line(&c);
                if c.verdict != "allow" || c.action != "forwarded" {
                    line = format!("[{} {}] {line}", c.verdict, c.action);
                }
                line
            }),
            kind::REPLY => RedisReply::read(data).map(|r| format!("#{} {}", r.seq, reply_line(&r))),
            kind::PUSH => RedisPush::read(data).map(|p| push_line(&p)),
            kind::AUTH => Some(auth_line(data)),
            kind::TLS => Some(tls_line(data)),
            _ => None,
        }
    }
}

/// A command as redis-cli would show it: `SET k "a b"`.
fn command_line(c: &RedisCommandEvent<'_>) -> String {
    let mut line = c.command.to_string();
    for a in &c.args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    if c.argc > c.args.len() {
        line.push_str(&format!(" ... ({} arguments, {} bytes)", c.argc, c.bytes));
    }
    line
}

/// A reply as redis-cli prints it, from what the journal keeps of it.
fn reply_line(r: &RedisReply<'_>) -> String {
    let excerpt = r.excerpt.as_deref().unwrap_or("");
    match r.r#type.as_ref() {
        "simple" => excerpt.to_owned(),
        "error" => format!("(error) {excerpt}"),
        "integer" => format!("(integer) {excerpt}"),
        "null" => "(nil)".to_owned(),
        "bulk" | "verbatim" => format!("{:?}", excerpt),
        "double" => format!("(double) {excerpt}"),
        "boolean" => format!("({excerpt})"),
        "bignum" => format!("(big number) {excerpt}"),
        other => {
            let n = r.elements.unwrap_or(0);
            let plural = if n == 1 { "" } else { "s" };
            format!("({other}, {n} element{plural}, {} bytes)", r.bytes)
        }
    }
}

fn push_line(p: &RedisPush<'_>) -> String {
    let channel = p
        .channel
        .as_deref()
        .map(|c| format!(" on {c}"))
        .unwrap_or_default();
    match &p.excerpt {
        Some(e) => format!("{}{channel}: {:?}", p.kind, e.as_ref()),
        None => format!("{}{channel} ({} bytes)", p.kind, p.bytes),
    }
}

fn auth_line(data: &Value) -> String {
    let user = data
        .get("user")
        .and_then(Value::as_str)
        .unwrap_or("default");
    match data.get("error").and_then(Value::as_str) {
        Some(e) => format!("authentication as {user} with the agent's credential failed: {e}"),
        None => format!("authenticated as {user} (credential held by the agent)"),
    }
}

fn tls_line(data: &Value) -> String {
    let client = if data.get("client_tls").and_then(Value::as_bool) == Some(true) {
        "client TLS terminated by the agent"
    } else {
        "client in plain text"
    };
    let server = data
        .get("server_tls")
        .and_then(Value::as_str)
        .unwrap_or("disable");
    format!("{client}; tls = \"{server}\" to the server")
}

/// A Redis session as a redis-cli transcript (see the module documentation).
struct Transcript {
    start_us: i64,
    timeline: Timeline,
    commands: u64,
    refused: u64,
    errors: u64,
}

impl Transcript {
    fn new(session: &SessionRow) -> Self {
        Transcript {
            start_us: us_since_epoch(session.started_at),
            timeline: Timeline::new(session),
            commands: 0,
            refused: 0,
            errors: 0,
        }
    }
}

const PAD: &str = "               ";

impl Replay for Transcript {
    fn event(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<()> {
        let offset = format_offset_us(us_since_epoch(event.at).saturating_sub(self.start_us));
        let null = Value::Null;
        let data = event.data.as_ref().unwrap_or(&null);
        match event.kind.as_str() {
            kind::AUTH => writeln!(out, "  {offset}  {}", sanitize(&auth_line(data))),
            kind::TLS => writeln!(out, "  {offset}  {}", sanitize(&tls_line(data))),
            kind::COMMAND if RedisCommandEvent::read(data).is_some() => {
                let c = RedisCommandEvent::read(data).expect("checked");
                self.commands += 1;
                if c.action == "refused" {
                    self.refused += 1;
                }
                let mut note = String::new();
                if c.verdict != "allow" || !matches!(c.action.as_ref(), "forwarded" | "answered") {
                    let rule = c
                        .rule
                        .as_deref()
                        .map(|r| format!(" by rule {r}"))
                        .unwrap_or_default();
                    let mode = if c.enforced {
                        ""
                    } else {
                        ", observe mode: not enforced"
                    };
                    note = format!("   [{}{rule}: {}{mode}]", c.verdict, c.action);
                } else if c.action == "answered" {
                    note = "   [answered by the agent]".to_owned();
                }
                writeln!(
                    out,
                    "  {offset}  redis> {}{}",
                    sanitize(&command_line(&c)),
                    sanitize(&note)
                )
            }
            kind::REPLY if RedisReply::read(data).is_some() => {
                let r = RedisReply::read(data).expect("checked");
                if r.r#type == "error" {
                    self.errors += 1;
                }
                writeln!(out, "{PAD}{}", sanitize(&reply_line(&r)))?;
                for m in &r.masked {
                    writeln!(
                        out,
                        "{PAD}masked: {} by {} ({}): {} values",
                        sanitize(&m.column),
                        sanitize(&m.rule),
                        sanitize(&m.strategy),
                        m.values
                    )?;
                }
                Ok(())
            }
            kind::PUSH if RedisPush::read(data).is_some() => {
                let p = RedisPush::read(data).expect("checked");
                writeln!(out, "  {offset}  {}", sanitize(&push_line(&p)))
            }
            crate::session::gate::APPROVAL => writeln!(
                out,
                "  {offset}  approval: {}{}",
                sanitize(data.get("decision").and_then(Value::as_str).unwrap_or("")),
                data.get("by")
                    .and_then(Value::as_str)
                    .map(|b| format!(" by {}", sanitize(b)))
                    .unwrap_or_default()
            ),
            "protocol_error" => writeln!(
                out,
                "  {offset}  protocol error: {}",
                sanitize(data.get("reason").and_then(Value::as_str).unwrap_or(""))
            ),
            _ => self.timeline.event(out, event),
        }
    }

    fn finish(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "  {} commands, {} refused, {} errors",
            self.commands, self.refused, self.errors
        )
    }
}

/// A command waiting for its reply.
struct Pending {
    journal_id: String,
    host_id: Option<String>,
    session: SetSession,
    command: EventRow,
    approval: Option<Value>,
}

type Key = (String, SessionId, u64);

/// Redis commands as OCSF Datastore Activity.
#[derive(Default)]
struct RedisActivity {
    pending: HashMap<Key, Pending>,
}

impl OcsfRequests for RedisActivity {
    fn push(&mut self, s: &Selected<'_>) -> Vec<Value> {
        let Some(session) = s.session else {
            return Vec::new();
        };
        let e = &s.event;
        let journal_id = s.segment.journal_id.clone();
        let seq = e
            .data
            .as_ref()
            .and_then(|d| d.get("seq"))
            .and_then(Value::as_u64);
        match (e.kind.as_str(), seq) {
            (kind::COMMAND, Some(seq)) => {
                let key = (journal_id.clone(), session.row.id, seq);
                let refused = e
                    .data
                    .as_ref()
                    .and_then(|d| d.get("action"))
                    .and_then(Value::as_str)
                    == Some("refused");
                let pending = Pending {
                    journal_id,
                    host_id: s.segment.host_id.clone(),
                    session: session.clone(),
                    command: e.clone(),
                    approval: None,
                };
                let mut out: Vec<Value> = self
                    .pending
                    .remove(&key)
                    .map(|old| activity(&old, None))
                    .into_iter()
                    .collect();
                if refused {
                    // Answered by the agent: no reply follows.
                    out.push(activity(&pending, None));
                } else {
                    self.pending.insert(key, pending);
                }
                out
            }
            (crate::session::gate::APPROVAL, Some(seq)) => {
                if let Some(p) = self.pending.get_mut(&(journal_id, session.row.id, seq)) {
                    p.approval = e.data.clone();
                }
                Vec::new()
            }
            (kind::AUTH, _) => vec![crate::cli::ocsf::authentication(
                &journal_id,
                s.segment.host_id.as_deref(),
                session,
                e,
            )],
            (kind::REPLY, Some(seq)) => self
                .pending
                .remove(&(journal_id, session.row.id, seq))
                .map(|p| activity(&p, Some(e)))
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    fn finish(self: Box<Self>) -> Vec<Value> {
        let mut left: Vec<Pending> = self.pending.into_values().collect();
        left.sort_by_key(|p| p.command.id);
        left.iter().map(|p| activity(p, None)).collect()
    }

    fn oldest_pending(&self) -> Option<i64> {
        self.pending.values().map(|p| p.command.id).min()
    }

    fn session_ended(&mut self, _journal_id: &str, _session: SessionId) {}
}

/// `activity_id` of a command: reads, writes, deletes, other.
fn command_activity(name: &str) -> (u64, &'static str) {
    const READS: &[&str] = &[
        "GET",
        "MGET",
        "HGET",
        "HMGET",
        "HGETALL",
        "HKEYS",
        "HVALS",
        "LRANGE",
        "LINDEX",
        "SMEMBERS",
        "SISMEMBER",
        "ZRANGE",
        "ZSCORE",
        "EXISTS",
        "TTL",
        "PTTL",
        "TYPE",
        "STRLEN",
        "GETRANGE",
        "SCAN",
        "HSCAN",
        "SSCAN",
        "ZSCAN",
        "KEYS",
        "XRANGE",
        "XREAD",
    ];
    const DELETES: &[&str] = &[
        "DEL", "UNLINK", "FLUSHALL", "FLUSHDB", "HDEL", "SREM", "ZREM", "GETDEL",
    ];
    const WRITES: &[&str] = &[
        "SET", "SETEX", "SETNX", "MSET", "HSET", "HMSET", "LPUSH", "RPUSH", "SADD", "ZADD", "INCR",
        "INCRBY", "DECR", "DECRBY", "APPEND", "EXPIRE", "XADD",
    ];
    if READS.contains(&name) {
        (4, "Query")
    } else if DELETES.contains(&name) {
        (7, "Delete")
    } else if WRITES.contains(&name) {
        (5, "Write")
    } else {
        (99, "Other")
    }
}

fn activity(p: &Pending, reply: Option<&EventRow>) -> Value {
    let null = Value::Null;
    let data = p.command.data.as_ref().unwrap_or(&null);
    let reply_data = reply.and_then(|e| e.data.as_ref()).unwrap_or(&null);
    let command = RedisCommandEvent::read(data).unwrap_or_default();
    let (activity_id, activity_name) = command_activity(&command.command);
    let decision = p
        .approval
        .as_ref()
        .and_then(|a| a.get("decision"))
        .and_then(Value::as_str);
    let judged = outcome(
        &command.action,
        &command.verdict,
        command.enforced,
        decision,
    );
    let reply_type = reply_data.get("type").and_then(Value::as_str);
    let (status_id, status) = match (command.action.as_ref(), reply_type) {
        ("refused", _) => (2, "Failure"),
        (_, None) => (0, "Unknown"),
        (_, Some("error")) => (2, "Failure"),
        (_, Some(_)) => (1, "Success"),
    };
    let start = ms(p.command.at);
    let mut event = base(
        DATASTORE_ACTIVITY,
        "Datastore Activity",
        6,
        "Application Activity",
        activity_id,
        activity_name,
        start,
        judged.severity,
    );
    let text = command_line(&command);
    let mut message = text.clone();
    if command.action != "forwarded" {
        message = format!("{message} [{}: {}]", command.verdict, command.action);
    }
    let mut unmapped = context_unmapped(&p.journal_id, p.host_id.as_deref(), &p.session);
    for key in [
        "verdict", "rule", "enforced", "action", "keys", "argc", "bytes", "in_multi",
    ] {
        if let Some(v) = data.get(key) {
            unmapped.insert(format!("command_{key}"), v.clone());
        }
    }
    for key in ["type", "bytes", "elements", "masked"] {
        if let Some(v) = reply_data.get(key) {
            unmapped.insert(format!("reply_{key}"), v.clone());
        }
    }
    if let Some(a) = &p.approval {
        unmapped.insert("approval".into(), a.clone());
    }
    let fields = request_members(
        message,
        (status_id, status),
        &judged,
        Some((p.journal_id.as_str(), &p.command)),
        &p.session,
    )
    .into_iter()
    .chain([
        (
            "database",
            json!({ "name": p.session.row.identity.target, "type_id": 6, "type": "NoSQL" }),
        ),
        (
            "query_info",
            json!({ "query_string": text, "uid": command.seq.to_string() }),
        ),
        ("type_id", json!(99)),
        ("type", json!("Other")),
        ("unmapped", Value::Object(unmapped)),
    ]);
    event.extend(fields.into_iter().map(|(k, v)| (k.to_string(), v)));
    if let (Some(e), Some("error")) = (reply, reply_type) {
        let _ = e;
        if let Some(text) = reply_data.get("excerpt").and_then(Value::as_str) {
            event.insert("status_detail".into(), json!(text));
        }
    }
    if let Some(r) = reply {
        event.insert("start_time".into(), json!(start));
        event.insert("end_time".into(), json!(ms(r.at)));
    }
    Value::Object(event)
}
