//! Journal events as OCSF 1.3.0 events (Open Cybersecurity Schema Framework,
//! schema.ocsf.io), for `nhi-agent export --format ocsf`. Pure: rows in, JSON out.
//!
//! Mapping:
//! - a PostgreSQL `statement` event, completed by its `statement_end` (same session and
//!   `seq`) and by an `approval` of it if it was held, becomes one **Datastore Activity**
//!   (`class_uid` 6005, category 6 Application Activity). `activity_id` from the statement
//!   kinds: select → 4 Query, insert/copy_from → 5 Write, update/merge → 2 Update,
//!   delete/truncate/drop → 7 Delete, create → 6 Create, otherwise 99 Other.
//!   `query_info.query_string` is the statement text as journaled (parameters and
//!   results are stored masked and stay masked); `database` is the database of the
//!   session's start-up (`pg_startup`), else the target name. The policy outcome:
//!   `action_id` 1 Allowed / 2 Denied (refused) / 99 Other (held, then see the approval);
//!   `disposition_id` 1 Allowed, 2 Blocked (refused), 14 Delayed (held without a decision
//!   in the export), 8 Approved / 2 Blocked after an approval decision, 15 Detected (deny
//!   in observe mode); `status_id` 1 Success / 2 Failure (the statement's error, with the
//!   SQLSTATE in `status_code`) / 0 Unknown (no end journaled); `severity_id` 1
//!   Informational, 2 Low (held), 3 Medium (denied).
//! - HTTP requests are **HTTP Activity** (4002), AWS calls **API Activity** (6003) and
//!   SSH commands (exec, shell, subsystem) **SSH Activity** (4007): see
//!   `cli/views/http.rs`, `cli/views/aws.rs` and `cli/views/ssh.rs`.
//! - `session_start` / `session_end` of every session become **Network Activity**
//!   (`class_uid` 4001, category 4): `activity_id` 1 Open, 2 Close, 3 Reset (a close
//!   reason mentioning "reset"), 4 Fail (the upstream connect failed); `traffic` carries
//!   the byte totals at the end.
//! - each `chunk` is **Network Activity** `activity_id` 6 Traffic, its size in
//!   `traffic.bytes_out` (client to server) or `traffic.bytes_in`.
//! - `pg_auth` is **Authentication** (`class_uid` 3002, category 3 Identity & Access
//!   Management): `activity_id` 1 Logon, `user.name` the role logged in as,
//!   `auth_protocol` the method, `status_id` 1 Success / 2 Failure (with the SQLSTATE).
//! - process lineage is **Process Activity** (`class_uid` 1007, category 1 System
//!   Activity): `exec` 1 Launch, `exit` 2 Terminate (`exit_code`), a session's `lineage`
//!   99 Other with the chain of executables in `process.lineage`, `lineage_lost` 99 Other
//!   (severity Low, the count lost in `unmapped`).
//! - Other session-less kinds (attestations, grants, restored state) are not exported as
//!   OCSF; use `--format jsonl` for the complete record.
//!
//! Every event carries `actor` = the workload identity: `actor.app_name` the workload
//! name, `actor.user` uid and name, `actor.process` pid, comm, command line and executable;
//! `src_endpoint` the client address, `dst_endpoint` the original destination (with the
//! target as `svc_name`); `metadata.uid` = `<journal_id>:<event id>`, `metadata.log_name` the
//! journal id, `metadata.sequence` the event id and `metadata.tags` the event's hash in the
//! chain (`{"name": "event_hash", "value": hex}`), so a copy can be checked against the
//! journal (see [`event_identity`]),
//! `metadata.correlation_uid` = `<journal_id>:<session id>`; and `unmapped` holds what has
//! no better slot: workload, cgroup, cgroup id, journal and host id, session reference,
//! policy verdict, rule, statement kinds and tables, result summary and masked columns.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use serde_json::{json, Map, Value};

use super::replay::shell_quote;
use super::select::Selected;
use super::views::{self, OcsfRequests};
use crate::journal::{EventKind, EventRow, SessionId, SetSession};
use crate::proxy::postgres::events::kind;

/// The OCSF version the events follow (`metadata.version`).
pub const OCSF_VERSION: &str = "1.3.0";

/// Datastore Activity.
pub const DATASTORE_ACTIVITY: u64 = 6005;
/// Network Activity.
pub const NETWORK_ACTIVITY: u64 = 4001;
/// Authentication.
pub const AUTHENTICATION: u64 = 3002;
/// Process Activity.
pub const PROCESS_ACTIVITY: u64 = 1007;

/// A statement waiting for its `statement_end`.
struct Pending {
    journal_id: String,
    host_id: Option<String>,
    session: SetSession,
    statement: EventRow,
    approval: Option<Value>,
}

/// Turns a stream of journal events (in journal order) into OCSF events: sessions'
/// open and close here, requests by their protocol's mapper (`cli::views`).
#[derive(Default)]
pub struct OcsfMapper {
    /// Each protocol met so far with its request mapper (none: it has no requests).
    protocols: Vec<(&'static str, Option<Box<dyn OcsfRequests>>)>,
}

/// PostgreSQL statements as Datastore Activity (see the module documentation).
#[derive(Default)]
pub struct Datastore {
    pending: HashMap<(String, SessionId, u64), Pending>,
    /// Pending keys in arrival order, so that unfinished statements come out in order.
    order: Vec<(String, SessionId, u64)>,
    databases: HashMap<(String, SessionId), String>,
}

pub(crate) fn ms(t: SystemTime) -> i64 {
    crate::journal::system_time_to_us(t).div_euclid(1000)
}

pub(crate) fn endpoint(addr: SocketAddr) -> Value {
    json!({ "ip": addr.ip().to_string(), "port": addr.port() })
}

impl OcsfMapper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one event; returns the OCSF events it completes (zero, one or two).
    pub fn push(&mut self, s: &Selected<'_>) -> Vec<Value> {
        let e = &s.event;
        let Some(session) = s.session else {
            return match e.kind.as_str() {
                "exec" | "exit" | "lineage_lost" => vec![process_activity(s, None)],
                _ => Vec::new(),
            };
        };
        if e.kind == EventKind::SessionEnd {
            for mapper in self.protocols.iter_mut().filter_map(|(_, m)| m.as_mut()) {
                mapper.session_ended(&s.segment.journal_id, session.row.id);
            }
        }
        match e.kind {
            EventKind::SessionStart | EventKind::SessionEnd | EventKind::Chunk => {
                return vec![network_activity(
                    &s.segment.journal_id,
                    s.segment.host_id.as_deref(),
                    session,
                    e,
                )];
            }
            EventKind::Other(ref k) if k == "lineage" => {
                return vec![process_activity(s, Some(session))];
            }
            _ => {}
        }
        let view = views::view(&session.row.identity.protocol);
        let at = match self
            .protocols
            .iter()
            .position(|(p, _)| *p == view.protocol())
        {
            Some(at) => at,
            None => {
                self.protocols.push((view.protocol(), view.ocsf()));
                self.protocols.len() - 1
            }
        };
        match &mut self.protocols[at].1 {
            Some(mapper) => mapper.push(s),
            None => Vec::new(),
        }
    }

    /// The id of the oldest event held for a request not yet output, if any.
    pub fn oldest_pending(&self) -> Option<i64> {
        self.protocols
            .iter()
            .filter_map(|(_, m)| m.as_ref()?.oldest_pending())
            .min()
    }

    /// The requests that never completed (status Unknown), in journal order.
    pub fn finish(self) -> Vec<Value> {
        self.protocols
            .into_iter()
            .filter_map(|(_, mapper)| mapper)
            .flat_map(|mapper| mapper.finish())
            .collect()
    }
}

impl OcsfRequests for Datastore {
    fn push(&mut self, s: &Selected<'_>) -> Vec<Value> {
        let Some(session) = s.session else {
            return Vec::new();
        };
        let journal_id = s.segment.journal_id.clone();
        let host_id = s.segment.host_id.clone();
        let e = &s.event;
        let seq = e
            .data
            .as_ref()
            .and_then(|d| d.get("seq"))
            .and_then(Value::as_u64);
        match (e.kind.as_str(), seq) {
            (kind::STARTUP, _) => {
                if let Some(db) = e
                    .data
                    .as_ref()
                    .and_then(|d| d.get("database"))
                    .and_then(Value::as_str)
                {
                    self.databases
                        .insert((journal_id, session.row.id), db.to_owned());
                }
                Vec::new()
            }
            (kind::AUTH | crate::proxy::mysql::events::kind::AUTH, _) => {
                vec![authentication(&journal_id, host_id.as_deref(), session, e)]
            }
            (kind::STATEMENT, Some(seq)) => {
                let key = (journal_id.clone(), session.row.id, seq);
                // A statement with the seq of one still pending: the earlier one never
                // got an end; export it as it is.
                let mut out = Vec::new();
                if let Some(old) = self.pending.remove(&key) {
                    out.push(self.datastore_activity(&old, None));
                }
                if self.order.len() >= 2 * self.pending.len() + 64 {
                    let pending = &self.pending;
                    self.order.retain(|k| pending.contains_key(k));
                }
                self.order.push(key.clone());
                self.pending.insert(
                    key,
                    Pending {
                        journal_id,
                        host_id,
                        session: session.clone(),
                        statement: e.clone(),
                        approval: None,
                    },
                );
                out
            }
            (crate::session::gate::APPROVAL, Some(seq)) => {
                if let Some(p) = self.pending.get_mut(&(journal_id, session.row.id, seq)) {
                    p.approval = e.data.clone();
                }
                Vec::new()
            }
            (kind::STATEMENT_END, Some(seq)) => {
                match self.pending.remove(&(journal_id, session.row.id, seq)) {
                    Some(p) => vec![self.datastore_activity(&p, Some(e))],
                    None => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }

    fn oldest_pending(&self) -> Option<i64> {
        self.pending.values().map(|p| p.statement.id).min()
    }

    fn session_ended(&mut self, journal_id: &str, session: SessionId) {
        let held = self
            .pending
            .keys()
            .any(|(j, s, _)| j == journal_id && *s == session);
        if !held {
            self.databases.remove(&(journal_id.to_owned(), session));
        }
    }

    /// The statements that never got an end (status Unknown), in journal order.
    fn finish(mut self: Box<Self>) -> Vec<Value> {
        let order = std::mem::take(&mut self.order);
        let mut out = Vec::new();
        for key in order {
            if let Some(p) = self.pending.remove(&key) {
                out.push(self.datastore_activity(&p, None));
            }
        }
        out
    }
}

impl Datastore {
    fn datastore_activity(&self, p: &Pending, end: Option<&EventRow>) -> Value {
        let null = Value::Null;
        let data = p.statement.data.as_ref().unwrap_or(&null);
        let end_data = end.and_then(|e| e.data.as_ref()).unwrap_or(&null);
        let str_of = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("");
        let kinds: Vec<&str> = data
            .get("kinds")
            .and_then(Value::as_array)
            .map(|k| k.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let (activity_id, activity_name) = statement_activity(&kinds);
        let verdict = str_of("verdict");
        let action = str_of("action");
        let enforced = data.get("enforced").and_then(Value::as_bool) != Some(false);
        let decision = p
            .approval
            .as_ref()
            .and_then(|a| a.get("decision"))
            .and_then(Value::as_str);
        let judged = outcome(action, verdict, enforced, decision);
        let (severity_id, severity) = judged.severity;
        let error = end_data.get("error");
        let (status_id, status) = match (end, error) {
            (None, _) => (0, "Unknown"),
            (Some(_), Some(_)) => (2, "Failure"),
            (Some(_), None) => (1, "Success"),
        };
        let session = &p.session;
        let database = self
            .databases
            .get(&(p.journal_id.clone(), session.row.id))
            .cloned()
            .unwrap_or_else(|| session.row.identity.target.clone());
        let start = ms(p.statement.at);
        let mut event = base(
            DATASTORE_ACTIVITY,
            "Datastore Activity",
            6,
            "Application Activity",
            activity_id,
            activity_name,
            start,
            (severity_id, severity),
        );
        let mut message = str_of("text").to_string();
        if action != "forwarded" {
            message = format!("{message} [{verdict}: {action}]");
        }
        let mut unmapped = context_unmapped(&p.journal_id, p.host_id.as_deref(), session);
        for key in [
            "verdict", "rule", "enforced", "action", "kinds", "tables", "protocol",
        ] {
            if let Some(v) = data.get(key) {
                unmapped.insert(format!("statement_{key}"), v.clone());
            }
        }
        for key in ["tag", "rows", "masked", "copy", "note", "mask_not_enforced"] {
            if let Some(v) = end_data.get(key) {
                unmapped.insert(format!("result_{key}"), v.clone());
            }
        }
        if let Some(a) = &p.approval {
            unmapped.insert("approval".into(), a.clone());
        }
        let fields = request_members(message, (status_id, status), &judged, Some((p.journal_id.as_str(), &p.statement)), session)
            .into_iter()
            .chain([
(
                "database",
                json!({ "name": database, "type_id": 1, "type": "Relational" }),
            ),
            (
                "query_info",
                json!({ "query_string": str_of("text"), "uid": data.get("seq").map(|s| s.to_string()) }),
            ),
            ("type_id", json!(1)),
            ("type", json!("Database")),
            ("unmapped", Value::Object(unmapped)),
        ]);
        event.extend(fields.into_iter().map(|(k, v)| (k.to_string(), v)));
        if let Some(e) = error {
            insert_pg_error(&mut event, e);
        }
        if let Some(end) = end {
            event.insert("start_time".into(), json!(start));
            event.insert("end_time".into(), json!(ms(end.at)));
            if let Some(us) = end_data.get("duration_us").and_then(Value::as_u64) {
                event.insert("duration".into(), json!(us / 1000));
            }
        }
        Value::Object(event)
    }
}

/// The OCSF `action`, `disposition` and `severity` (id, caption) of a judged request.
pub(crate) struct Outcome {
    pub action: (u64, &'static str),
    pub disposition: (u64, &'static str),
    pub severity: (u64, &'static str),
}

/// What the agent did with a request (`action`: forwarded / refused / held), by the
/// policy's `verdict` (enforced or only observed) and an approval `decision` if one was
/// taken: the same for every protocol's requests (statements, HTTP requests).
pub(crate) fn outcome(
    action: &str,
    verdict: &str,
    enforced: bool,
    decision: Option<&str>,
) -> Outcome {
    Outcome {
        action: match action {
            "forwarded" => (1, "Allowed"),
            "refused" => (2, "Denied"),
            _ => (99, "Other"),
        },
        disposition: match (action, decision) {
            (_, Some("approved")) => (8, "Approved"),
            (_, Some(_)) => (2, "Blocked"),
            ("refused", _) => (2, "Blocked"),
            ("held", _) => (14, "Delayed"),
            _ if verdict == "deny" && !enforced => (15, "Detected"),
            _ => (1, "Allowed"),
        },
        severity: match (action, verdict) {
            ("refused", _) | (_, "deny") => (3, "Medium"),
            ("held", _) | (_, "approve") => (2, "Low"),
            _ => (1, "Informational"),
        },
    }
}

/// `activity_id` and its caption for a statement's kinds (the first kind that maps).
fn statement_activity(kinds: &[&str]) -> (u64, &'static str) {
    for kind in kinds {
        let mapped = match *kind {
            "select" => Some((4, "Query")),
            "insert" | "copy_from" => Some((5, "Write")),
            "update" | "merge" => Some((2, "Update")),
            "delete" | "truncate" | "drop" => Some((7, "Delete")),
            "create" => Some((6, "Create")),
            "copy_to" => Some((1, "Read")),
            _ => None,
        };
        if let Some(m) = mapped {
            return m;
        }
    }
    (99, "Other")
}

/// The attributes every OCSF event has (base event and classification).
#[allow(clippy::too_many_arguments)]
pub(crate) fn base(
    class_uid: u64,
    class_name: &str,
    category_uid: u64,
    category_name: &str,
    activity_id: u64,
    activity_name: &str,
    time_ms: i64,
    (severity_id, severity): (u64, &str),
) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in [
        ("class_uid", json!(class_uid)),
        ("class_name", json!(class_name)),
        ("category_uid", json!(category_uid)),
        ("category_name", json!(category_name)),
        ("activity_id", json!(activity_id)),
        ("activity_name", json!(activity_name)),
        ("type_uid", json!(class_uid * 100 + activity_id)),
        ("type_name", json!(format!("{class_name}: {activity_name}"))),
        ("time", json!(time_ms)),
        ("severity_id", json!(severity_id)),
        ("severity", json!(severity)),
    ] {
        m.insert(k.to_string(), v);
    }
    m
}

/// The members every judged request's OCSF event carries: the message, its status,
/// the policy's action and disposition, metadata naming the event, the actor and both
/// endpoints (the protocol's own members follow them).
pub(crate) fn request_members(
    message: String,
    status: (u64, &str),
    outcome: &Outcome,
    event: Option<(&str, &EventRow)>,
    session: &SetSession,
) -> [(&'static str, Value); 11] {
    [
        ("message", json!(message)),
        ("status_id", json!(status.0)),
        ("status", json!(status.1)),
        ("action_id", json!(outcome.action.0)),
        ("action", json!(outcome.action.1)),
        ("disposition_id", json!(outcome.disposition.0)),
        ("disposition", json!(outcome.disposition.1)),
        (
            "metadata",
            event.map_or(Value::Null, |(journal, row)| {
                metadata(journal, row, session)
            }),
        ),
        ("actor", actor(session)),
        ("src_endpoint", endpoint(session.row.identity.client_addr)),
        ("dst_endpoint", dst_endpoint(session)),
    ]
}

pub(crate) fn metadata(journal_id: &str, event: &EventRow, session: &SetSession) -> Value {
    json!({
        "version": OCSF_VERSION,
        "product": {
            "name": "nhi-agent",
            "vendor_name": "nhi-agent",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "uid": format!("{journal_id}:{}", event.id),
        "correlation_uid": format!("{journal_id}:{}", session.row.id),
        "log_name": journal_id,
        "sequence": event.id,
        "tags": event_tags(event),
        "original_time": crate::journal::format_rfc3339_us(event.at),
    })
}

/// `metadata` of an event of no session (process lineage).
fn metadata_of_no_session(journal_id: &str, event: &EventRow) -> Value {
    json!({
        "version": OCSF_VERSION,
        "product": {
            "name": "nhi-agent",
            "vendor_name": "nhi-agent",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "uid": format!("{journal_id}:{}", event.id),
        "log_name": journal_id,
        "sequence": event.id,
        "tags": event_tags(event),
        "original_time": crate::journal::format_rfc3339_us(event.at),
    })
}

fn event_tags(event: &EventRow) -> Value {
    match &event.hash {
        Some(hash) => json!([{ "name": "event_hash", "value": hash }]),
        None => json!([]),
    }
}

/// Which journal event an OCSF event stands for: (journal id, event id, event hash),
/// read back from `metadata` (`log_name`, `sequence`, the `event_hash` tag). A request
/// completed by later events (a statement and its end) stands for its first event.
pub fn event_identity(event: &Value) -> Option<(String, i64, Option<String>)> {
    let m = event.get("metadata")?;
    let journal_id = m.get("log_name")?.as_str()?.to_owned();
    let id = m.get("sequence")?.as_i64()?;
    let hash = m
        .get("tags")
        .and_then(Value::as_array)
        .and_then(|tags| tags.iter().find(|t| t["name"] == "event_hash"))
        .and_then(|t| t["value"].as_str())
        .map(str::to_owned);
    Some((journal_id, id, hash))
}

/// `pg_auth`: Authentication (see the module documentation).
/// A login to the target (`pg_auth`, `mysql_auth`, `redis_auth`) as Authentication: a
/// failure when the server refused it (`error`) or the agent did (`refused`, MySQL).
pub(crate) fn authentication(
    journal_id: &str,
    host_id: Option<&str>,
    session: &SetSession,
    e: &EventRow,
) -> Value {
    let null = Value::Null;
    let data = e.data.as_ref().unwrap_or(&null);
    let error = data.get("error").filter(|e| !e.is_null());
    let refused = data.get("refused").and_then(Value::as_str);
    let failed = error.is_some() || refused.is_some();
    let (protocol, default_method) = match session.row.identity.protocol.as_str() {
        "mysql" => ("MySQL", ""),
        // The agent sends AUTH (or HELLO ... AUTH) with its credential.
        "redis" => ("Redis", "AUTH"),
        _ => ("PostgreSQL", ""),
    };
    let (status_id, status) = if failed {
        (2, "Failure")
    } else {
        (1, "Success")
    };
    let mut event = base(
        AUTHENTICATION,
        "Authentication",
        3,
        "Identity & Access Management",
        1,
        "Logon",
        ms(e.at),
        if failed {
            (3, "Medium")
        } else {
            (1, "Informational")
        },
    );
    let user = data.get("user").and_then(Value::as_str).unwrap_or("");
    let method = data
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or(default_method);
    let mut unmapped = context_unmapped(journal_id, host_id, session);
    if let Some(injected) = data.get("injected") {
        unmapped.insert("credential_injected".into(), injected.clone());
    }
    // caching_sha2_password: fast, or full over TLS / with an RSA key (MySQL).
    if let Some(exchange) = data.get("exchange") {
        unmapped.insert("exchange".into(), exchange.clone());
    }
    if let Some(why) = refused {
        unmapped.insert("refused_by_agent".into(), json!(why));
    }
    let fields = [
        (
            "message",
            json!(format!("{protocol} login as {user} ({method}): {status}")),
        ),
        ("metadata", metadata(journal_id, e, session)),
        ("actor", actor(session)),
        (
            "user",
            json!({ "name": user, "type_id": 99, "type": "Other" }),
        ),
        ("auth_protocol", json!(method)),
        ("auth_protocol_id", json!(99)),
        ("is_remote", json!(true)),
        ("service", json!({ "name": session.row.identity.target })),
        ("src_endpoint", endpoint(session.row.identity.client_addr)),
        ("dst_endpoint", dst_endpoint(session)),
        ("status_id", json!(status_id)),
        ("status", json!(status)),
        ("unmapped", Value::Object(unmapped)),
    ];
    event.extend(fields.into_iter().map(|(k, v)| (k.to_string(), v)));
    match (error, refused) {
        // Redis: the server's error line.
        (Some(Value::String(line)), _) => {
            event.insert("status_detail".into(), json!(line));
        }
        (Some(e), _) => insert_pg_error(&mut event, e),
        (None, Some(why)) => {
            event.insert("status_detail".into(), json!(why));
        }
        (None, None) => {}
    }
    Value::Object(event)
}

/// Process lineage: `exec`, `exit`, `lineage_lost` (no session) and a session's
/// `lineage` as Process Activity (see the module documentation).
fn process_activity(s: &Selected<'_>, session: Option<&SetSession>) -> Value {
    let e = &s.event;
    let journal_id = s.segment.journal_id.as_str();
    let null = Value::Null;
    let data = e.data.as_ref().unwrap_or(&null);
    let kind = e.kind.as_str();
    let (activity_id, activity_name) = match kind {
        "exec" => (1, "Launch"),
        "exit" => (2, "Terminate"),
        "lineage" => (99, "Lineage"),
        _ => (99, "Lineage Lost"),
    };
    let severity = if kind == "lineage_lost" {
        (2, "Low")
    } else {
        (1, "Informational")
    };
    let mut event = base(
        PROCESS_ACTIVITY,
        "Process Activity",
        1,
        "System Activity",
        activity_id,
        activity_name,
        ms(e.at),
        severity,
    );
    let exe = data.get("exe").and_then(Value::as_str);
    let mut process = json!({});
    if let Some(pid) = data.get("pid").filter(|p| p.is_u64()) {
        process["pid"] = pid.clone();
    }
    if let Some(exe) = exe {
        let name = exe.rsplit('/').next().unwrap_or(exe);
        process["name"] = json!(name);
        process["file"] =
            json!({ "name": name, "path": exe, "type_id": 1, "type": "Regular File" });
    }
    if let Some(argv) = data.get("argv").and_then(Value::as_array) {
        let line: Vec<String> = argv
            .iter()
            .filter_map(Value::as_str)
            .map(shell_quote)
            .collect();
        process["cmd_line"] = json!(line.join(" "));
    }
    if let Some(uid) = data.get("uid").and_then(Value::as_u64) {
        let mut user = json!({ "uid": uid.to_string() });
        if let Some(name) = data.get("user").and_then(Value::as_str) {
            user["name"] = json!(name);
        }
        process["user"] = user;
    }
    if let Some(ppid) = data.get("ppid").and_then(Value::as_u64) {
        process["parent_process"] = json!({ "pid": ppid });
    }
    if let Some(chain) = data.get("chain").and_then(Value::as_array) {
        let lineage: Vec<String> = chain
            .iter()
            .map(|link| {
                link.get("exe")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| link.to_string())
            })
            .collect();
        process["lineage"] = json!(lineage);
    }
    let (actor, metadata, mut unmapped) = match session {
        Some(session) => (
            actor(session),
            metadata(journal_id, e, session),
            context_unmapped(journal_id, s.segment.host_id.as_deref(), session),
        ),
        None => {
            let mut unmapped = Map::new();
            unmapped.insert("journal_id".into(), json!(journal_id));
            unmapped.insert("host_id".into(), json!(s.segment.host_id));
            for key in ["workload", "cgroup", "cgroup_id", "claims", "container"] {
                if let Some(v) = data.get(key) {
                    unmapped.insert(key.into(), v.clone());
                }
            }
            let mut actor = json!({ "process": process.clone() });
            if let Some(w) = data.get("workload").and_then(Value::as_str) {
                actor["app_name"] = json!(w);
            }
            (actor, metadata_of_no_session(journal_id, e), unmapped)
        }
    };
    for key in ["count", "total", "argv_truncated", "parent_exec"] {
        if let Some(v) = data.get(key) {
            unmapped.insert(key.into(), v.clone());
        }
    }
    let message = match kind {
        "exec" => format!("exec {}", exe.unwrap_or("?")),
        "exit" => format!(
            "exit {} (code {})",
            exe.unwrap_or("?"),
            data.get("code").unwrap_or(&null)
        ),
        "lineage" => "the chain of executables that led to the session's process".to_string(),
        _ => format!(
            "lineage records lost: {}",
            data.get("count").unwrap_or(&null)
        ),
    };
    let fields = [
        ("message", json!(message)),
        ("metadata", metadata),
        ("actor", actor),
        ("process", process),
        ("unmapped", Value::Object(unmapped)),
    ];
    event.extend(fields.into_iter().map(|(k, v)| (k.to_string(), v)));
    if kind == "exit" {
        if let Some(code) = data.get("code").filter(|c| c.is_i64()) {
            event.insert("exit_code".into(), code.clone());
        }
    }
    Value::Object(event)
}

pub(crate) fn actor(session: &SetSession) -> Value {
    let row = &session.row;
    let mut user = json!({ "uid": row.identity.uid.to_string() });
    if let Some(name) = &row.identity.user {
        user["name"] = json!(name);
    }
    let mut process = json!({ "pid": row.identity.pid, "name": row.identity.comm });
    if let Some(args) = &row.identity.cmdline {
        let line: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        process["cmd_line"] = json!(line.join(" "));
    }
    if let Some(exe) = &row.identity.exe {
        let name = exe.rsplit('/').next().unwrap_or(exe);
        process["file"] =
            json!({ "name": name, "path": exe, "type_id": 1, "type": "Regular File" });
    }
    process["user"] = user.clone();
    json!({ "app_name": row.identity.workload, "user": user, "process": process })
}

pub(crate) fn dst_endpoint(session: &SetSession) -> Value {
    let mut dst = endpoint(session.row.identity.orig_dst);
    dst["svc_name"] = json!(session.row.identity.target);
    dst
}

pub(crate) fn context_unmapped(
    journal_id: &str,
    host_id: Option<&str>,
    session: &SetSession,
) -> Map<String, Value> {
    let row = &session.row;
    let mut m = Map::new();
    for (k, v) in [
        ("workload", json!(row.identity.workload)),
        ("cgroup", json!(row.identity.cgroup)),
        ("cgroup_id", json!(row.identity.cgroup_id)),
        ("journal_id", json!(journal_id)),
        ("host_id", json!(host_id)),
        ("session", json!(session.session_ref)),
        ("target", json!(row.identity.target)),
        ("protocol", json!(row.identity.protocol)),
    ] {
        m.insert(k.to_string(), v);
    }
    m
}

fn network_activity(
    journal_id: &str,
    host_id: Option<&str>,
    session: &SetSession,
    e: &EventRow,
) -> Value {
    let row = &session.row;
    let start = e.kind.as_str() == "session_start";
    let chunk = e.kind == EventKind::Chunk;
    let reason = e
        .data
        .as_ref()
        .and_then(|d| d.get("close_reason"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let (activity_id, activity_name) = if start {
        (1, "Open")
    } else if chunk {
        (6, "Traffic")
    } else if reason.starts_with("upstream connect failed") {
        (4, "Fail")
    } else if reason.contains("reset") {
        (3, "Reset")
    } else {
        (2, "Close")
    };
    let mut event = base(
        NETWORK_ACTIVITY,
        "Network Activity",
        4,
        "Network Activity",
        activity_id,
        activity_name,
        ms(e.at),
        (1, "Informational"),
    );
    let size = u64::from(e.size.unwrap_or(0));
    let client_to_server = e.direction == Some(crate::journal::Direction::ClientToServer);
    let message = if start {
        format!(
            "{} → {} ({})",
            row.identity.client_addr, row.identity.orig_dst, row.identity.target
        )
    } else if chunk {
        let dir = e.direction.map_or("?", |d| d.as_str());
        format!("{size} bytes {dir}")
    } else {
        format!("closed: {reason}")
    };
    let fields = [
        ("message", json!(message)),
        ("metadata", metadata(journal_id, e, session)),
        ("actor", actor(session)),
        ("src_endpoint", endpoint(row.identity.client_addr)),
        ("dst_endpoint", dst_endpoint(session)),
        (
            "connection_info",
            json!({
                "protocol_name": "tcp",
                "direction_id": 2,
                "direction": "Outbound",
                "uid": session.session_ref,
            }),
        ),
        (
            "unmapped",
            Value::Object(context_unmapped(journal_id, host_id, session)),
        ),
    ];
    event.extend(fields.into_iter().map(|(k, v)| (k.to_string(), v)));
    if chunk {
        let (bytes_out, bytes_in) = if client_to_server {
            (size, 0)
        } else {
            (0, size)
        };
        event.insert(
            "traffic".into(),
            json!({ "bytes_out": bytes_out, "bytes_in": bytes_in }),
        );
    } else if !start {
        let data = e.data.as_ref();
        let get = |k: &str| data.and_then(|d| d.get(k)).and_then(Value::as_u64);
        event.insert(
            "traffic".into(),
            json!({
                "bytes_out": get("bytes_from_client").unwrap_or(row.bytes_from_client),
                "bytes_in": get("bytes_from_server").unwrap_or(row.bytes_from_server),
            }),
        );
        event.insert("status_id".into(), json!(1));
        event.insert("status".into(), json!("Success"));
        event.insert("status_detail".into(), json!(reason));
    }
    Value::Object(event)
}

/// A JSON type, for the required-attribute checks.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonType {
    Integer,
    String,
    Object,
}

/// Checks `event` against the OCSF 1.3.0 required attributes of its class; returns the
/// problems found (empty = valid).
///
/// The lists are copied from the OCSF schema 1.3.0 (github.com/ocsf/ocsf-schema, tag
/// v1.3.0): `events/base_event.json` with `dictionary.json` types (activity_id,
/// category_uid, class_uid, severity_id: integer_t; time: timestamp_t, an integer of
/// milliseconds; type_uid: long_t; metadata: object), `objects/metadata.json` (product,
/// version required), `objects/product.json` (vendor_name required),
/// `events/application/datastore_activity.json` (actor, src_endpoint required; at least
/// one of database, databucket, table) and `events/network/network_activity.json` with
/// `network.json` (src_endpoint, dst_endpoint; at least one of them: we always have
/// both, so both are checked), `events/application/api.json` (API Activity: actor, api,
/// src_endpoint) with `objects/api.json` (operation), `objects/request.json` (uid) and
/// the `cloud` profile (`profiles/cloud.json`: cloud; `objects/cloud.json`: provider),
/// `events/network/ssh.json` (SSH Activity: network's attributes) with the
/// `security_control` profile of `network.json` (`profiles/security_control.json`:
/// action_id).
#[cfg(test)]
pub(crate) fn check_required(event: &Value) -> Vec<String> {
    const BASE: &[(&str, JsonType)] = &[
        ("activity_id", JsonType::Integer),
        ("category_uid", JsonType::Integer),
        ("class_uid", JsonType::Integer),
        ("metadata", JsonType::Object),
        ("severity_id", JsonType::Integer),
        ("time", JsonType::Integer),
        ("type_uid", JsonType::Integer),
    ];
    const DATASTORE: &[(&str, JsonType)] = &[
        ("actor", JsonType::Object),
        ("src_endpoint", JsonType::Object),
    ];
    const NETWORK: &[(&str, JsonType)] = &[
        ("src_endpoint", JsonType::Object),
        ("dst_endpoint", JsonType::Object),
    ];
    let mut problems = Vec::new();
    let check = |v: &Value, path: &str, fields: &[(&str, JsonType)], problems: &mut Vec<String>| {
        for (name, ty) in fields {
            let ok = match (v.get(name), ty) {
                (Some(x), JsonType::Integer) => x.is_i64() || x.is_u64(),
                (Some(x), JsonType::String) => x.is_string(),
                (Some(x), JsonType::Object) => x.is_object(),
                (None, _) => false,
            };
            if !ok {
                problems.push(format!(
                    "{path}{name}: expected {ty:?}, got {:?}",
                    v.get(name)
                ));
            }
        }
    };
    check(event, "", BASE, &mut problems);
    check(
        &event["metadata"],
        "metadata.",
        &[("version", JsonType::String), ("product", JsonType::Object)],
        &mut problems,
    );
    check(
        &event["metadata"]["product"],
        "metadata.product.",
        &[("vendor_name", JsonType::String)],
        &mut problems,
    );
    let class_uid = event["class_uid"].as_u64().unwrap_or(0);
    let activity_id = event["activity_id"].as_u64().unwrap_or(0);
    if event["type_uid"].as_u64() != Some(class_uid * 100 + activity_id) {
        problems.push(format!(
            "type_uid {} is not class_uid*100+activity_id",
            event["type_uid"]
        ));
    }
    if event["category_uid"].as_u64() != Some(class_uid / 1000) {
        problems.push(format!(
            "category_uid {} does not match class {class_uid}",
            event["category_uid"]
        ));
    }
    match class_uid {
        DATASTORE_ACTIVITY => {
            check(event, "", DATASTORE, &mut problems);
            if !["database", "databucket", "table"]
                .iter()
                .any(|k| event[k].is_object())
            {
                problems.push("none of database, databucket, table".into());
            }
        }
        NETWORK_ACTIVITY => check(event, "", NETWORK, &mut problems),
        // authentication.json: user (required); dst_endpoint, src_endpoint recommended.
        AUTHENTICATION => check(
            event,
            "",
            &[("user", JsonType::Object), ("actor", JsonType::Object)],
            &mut problems,
        ),
        // process_activity.json: actor and process required.
        PROCESS_ACTIVITY => check(
            event,
            "",
            &[("actor", JsonType::Object), ("process", JsonType::Object)],
            &mut problems,
        ),
        crate::cli::views::aws::API_ACTIVITY => {
            // api_activity.json: actor, api, src_endpoint; api.json: operation; the cloud
            // profile: cloud, with cloud.json's provider.
            check(
                event,
                "",
                &[
                    ("actor", JsonType::Object),
                    ("src_endpoint", JsonType::Object),
                    ("api", JsonType::Object),
                    ("cloud", JsonType::Object),
                ],
                &mut problems,
            );
            check(
                &event["api"],
                "api.",
                &[("operation", JsonType::String)],
                &mut problems,
            );
            check(
                &event["cloud"],
                "cloud.",
                &[("provider", JsonType::String)],
                &mut problems,
            );
            if event["api"].get("request").is_some() {
                check(
                    &event["api"]["request"],
                    "api.request.",
                    &[("uid", JsonType::String)],
                    &mut problems,
                );
            }
        }
        crate::cli::views::ssh::SSH_ACTIVITY => {
            check(event, "", NETWORK, &mut problems);
            check(
                event,
                "",
                &[("action_id", JsonType::Integer)],
                &mut problems,
            );
        }
        crate::cli::views::http::HTTP_ACTIVITY => {
            check(event, "", NETWORK, &mut problems);
            check(
                event,
                "",
                &[("http_request", JsonType::Object)],
                &mut problems,
            );
        }
        other => problems.push(format!("unexpected class_uid {other}")),
    }
    problems
}

/// A PostgreSQL error's SQLSTATE and message as OCSF `status_code` / `status_detail`.
fn insert_pg_error(event: &mut serde_json::Map<String, Value>, e: &Value) {
    event.insert(
        "status_code".into(),
        e.get("sqlstate").cloned().unwrap_or(Value::Null),
    );
    event.insert(
        "status_detail".into(),
        e.get("message").cloned().unwrap_or(Value::Null),
    );
}
