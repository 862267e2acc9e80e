//! What the CLI knows about each protocol's journal events, registered by the value of
//! a session's `protocol` column: how `replay` renders its events and how `export
//! --format ocsf` maps its requests. The readers (`replay`, `ocsf`) only ask
//! [`view`]; a new protocol adds a view here instead of new string matches in each reader.
//! What every session has (start, chunks, end) is the [`opaque`] view's, which the
//! others fall back to. A view may build on another's by delegation (`aws` renders what
//! `http` does and adds its calls).
use std::io::{self, Write};

use serde_json::Value;

use super::select::Selected;
use crate::journal::{EventRow, SessionId, SessionRow};

pub mod aws;
pub mod http;
pub mod kube;
pub mod mysql;
pub mod opaque;
pub mod postgres;
pub mod redis;
pub mod ssh;

/// A replay rendering of one session's events (after the header and lineage chain).
pub trait Replay {
    /// Writes one event (in journal order).
    fn event(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<()>;
    /// Writes the closing summary.
    fn finish(self: Box<Self>, out: &mut dyn Write) -> io::Result<()>;
}

/// Maps a protocol's request events to OCSF events (session open/close are mapped for
/// every protocol by `cli::ocsf`).
pub trait OcsfRequests {
    /// Feeds one event of a session of this protocol; returns the OCSF events it completes.
    fn push(&mut self, s: &Selected<'_>) -> Vec<Value>;
    /// The requests that never completed, in journal order.
    fn finish(self: Box<Self>) -> Vec<Value>;
    /// The id of the oldest event held for a request not yet output (none: nothing
    /// held). A live stream never moves its cursor past it, so a restart reads it again.
    fn oldest_pending(&self) -> Option<i64>;
    /// The session ended: what the mapper keeps per session (a database name, an SSH
    /// login) can go once no request of it is held, so a long-lived mapper (a live
    /// stream) does not grow with every session.
    fn session_ended(&mut self, journal_id: &str, session: SessionId);
}

/// One protocol's way of reading its events.
pub trait ProtocolView: Sync {
    /// The `protocol` value of the sessions it reads.
    fn protocol(&self) -> &'static str;
    /// A replay rendering for `session`.
    fn replay(&self, session: &SessionRow) -> Box<dyn Replay>;
    /// Its OCSF mapping of requests, if it has requests.
    fn ocsf(&self) -> Option<Box<dyn OcsfRequests>> {
        None
    }
    /// A one-line summary of one of its events for the `events` table, when it has a
    /// better one than the generic rendering (`None`).
    fn detail(&self, _kind: &str, _data: &Value) -> Option<String> {
        None
    }
    /// Its judged requests (a statement, an HTTP request), if it has requests: what the
    /// request conditions of `events` and `sessions` (`--text`, `--regex`, `--verdict`)
    /// look at.
    fn requests(&self) -> Option<RequestEvents> {
        None
    }
}

/// A protocol's request events. Every one carries the judgement's members: `verdict`
/// (allow/approve/deny), what the agent did (forwarded/refused/held: the member named by
/// `action`), and `rule`; its searchable texts are, for each entry of `texts`, the
/// string values of those members joined with a space (a member holding an array counts
/// as its strings joined with a space). A text condition matches when one of them does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestEvents {
    pub kind: &'static str,
    pub texts: &'static [&'static [&'static str]],
    /// The member saying what the agent did: `action` for statements and HTTP requests,
    /// `outcome` for AWS calls (whose `action` is the API action, `iam:CreateUser`).
    pub action: &'static str,
}

impl RequestEvents {
    /// The searchable texts of one of these events' data.
    pub fn texts(&self, data: &Value) -> Vec<String> {
        self.texts
            .iter()
            .map(|members| {
                let parts: Vec<String> = members
                    .iter()
                    .filter_map(|m| member_text(data.get(*m)?))
                    .collect();
                parts.join(" ")
            })
            .collect()
    }

    /// The judgement of one of these events: its `verdict` and what the agent did
    /// (empty when the event does not say).
    pub fn judgement<'v>(&self, data: &'v Value) -> (&'v str, &'v str) {
        let member = |name: &str| data.get(name).and_then(Value::as_str).unwrap_or("");
        (member("verdict"), member(self.action))
    }
}

/// A member's text: a string as it is, an array as its strings joined with a space
/// (`None` when it holds none); anything else has no text. The journal reader's text
/// scan (`journal::TextScan`) reads members the same way.
fn member_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let strings: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            (!strings.is_empty()).then(|| strings.join(" "))
        }
        _ => None,
    }
}

/// The request events of every protocol that has them.
pub fn request_events() -> impl Iterator<Item = RequestEvents> {
    VIEWS.iter().filter_map(|v| v.requests())
}

/// The request events of this kind, if `kind` is one.
pub fn request_events_of(kind: &str) -> Option<RequestEvents> {
    request_events().find(|r| r.kind == kind)
}

/// The registered views; sessions of any other protocol read as opaque streams.
static VIEWS: &[&dyn ProtocolView] = &[
    &postgres::Postgres,
    &http::Http,
    &aws::Aws,
    &kube::Kube,
    &ssh::Ssh,
    &mysql::Mysql,
    &redis::Redis,
];

/// The view for sessions whose `protocol` is `protocol`.
pub fn view(protocol: &str) -> &'static dyn ProtocolView {
    VIEWS
        .iter()
        .copied()
        .find(|v| v.protocol() == protocol)
        .unwrap_or(&opaque::Opaque)
}

/// The `timeline` part of `replay --instant` of session `id` in the journal at `path`
/// (the views' tests compare it whole).
#[cfg(test)]
pub(crate) fn replay_timeline(path: &std::path::Path, id: crate::journal::SessionId) -> String {
    use crate::cli::replay::{write_replay, ReplayArgs};
    let args = ReplayArgs {
        session: id.to_string(),
        inputs: crate::cli::filter::InputArgs {
            journal: vec![path.to_path_buf()],
            paths: Vec::new(),
        },
        json: false,
        speed: None,
        instant: true,
    };
    let mut out = Vec::new();
    write_replay(&args, &mut out, None, &mut |_| panic!("no wait"), None).expect("replay");
    let text = String::from_utf8(out).expect("utf-8");
    text[text.find("timeline").expect("timeline")..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_found_by_protocol_with_opaque_as_fallback() {
        assert_eq!(view("postgres").protocol(), "postgres");
        assert_eq!(view("tcp").protocol(), "tcp");
        assert_eq!(view("something-newer").protocol(), "tcp");
        assert!(view("postgres").ocsf().is_some());
        assert!(view("tcp").ocsf().is_none());
        assert_eq!(view("http").protocol(), "http");
        assert!(view("http").ocsf().is_some());
        assert_eq!(view("aws").protocol(), "aws");
        assert!(view("aws").ocsf().is_some());
        assert_eq!(view("ssh").protocol(), "ssh");
        assert!(view("ssh").ocsf().is_some());
        assert_eq!(view("kubernetes").protocol(), "kubernetes");
        assert!(view("kubernetes").ocsf().is_some());
    }

    #[test]
    fn request_events_and_their_text() {
        let kinds: Vec<&str> = request_events().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                "statement",
                "http_request",
                "aws_call",
                "k8s_request",
                "ssh_exec",
                "redis_command"
            ]
        );
        let kube = request_events_of("k8s_request").expect("Kubernetes requests");
        let request = serde_json::json!({"verb": "create", "resource": "pods",
            "subresource": "exec", "namespace": "prod", "name": "web-0",
            "command": ["sh", "-c", "cat /etc/hostname"], "outcome": "forwarded",
            "verdict": "approve"});
        assert_eq!(
            kube.texts(&request),
            ["create pods exec prod web-0 sh -c cat /etc/hostname", ""]
        );
        assert_eq!(kube.judgement(&request), ("approve", "forwarded"));
        assert!(request_events_of("chunk").is_none());
        let http = request_events_of("http_request").expect("http requests");
        let data = serde_json::json!({"method": "DELETE", "target": "/%61dmin/users/7",
                                      "path": "/admin/users/7", "seq": 1});
        assert_eq!(
            http.texts(&data),
            ["DELETE /%61dmin/users/7", "DELETE /admin/users/7"]
        );
        let pg = request_events_of("statement").expect("statements");
        assert_eq!(
            pg.texts(&serde_json::json!({"text": "select 1"})),
            ["select 1"]
        );
        let aws = request_events_of("aws_call").expect("AWS calls");
        let call = serde_json::json!({"action": "s3:GetObject", "service": "s3",
                                      "resources": ["b/k", 7, "arn:aws:s3:::b/k"],
                                      "verdict": "deny", "outcome": "refused"});
        assert_eq!(
            aws.texts(&call),
            ["s3:GetObject b/k arn:aws:s3:::b/k", "s3"]
        );
        assert_eq!(aws.judgement(&call), ("deny", "refused"));
        assert_eq!(
            aws.texts(&serde_json::json!({"action": "sts:GetCallerIdentity", "resources": []})),
            ["sts:GetCallerIdentity", ""]
        );
        let ssh = request_events_of("ssh_exec").expect("SSH commands");
        let exec = serde_json::json!({"seq": 2, "channel": 1, "command": "rm -rf /srv",
                                      "verdict": "deny", "action": "refused"});
        assert_eq!(ssh.texts(&exec), ["rm -rf /srv"]);
        assert_eq!(ssh.judgement(&exec), ("deny", "refused"));
        assert!(request_events_of("sftp_op").is_none());
    }
}
