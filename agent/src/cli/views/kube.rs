//! Kubernetes sessions (`protocol = "kubernetes"`): HTTP sessions whose requests are
//! Kubernetes API requests (`proxy::http::kube`). Their HTTP events read as the
//! [`Http`] view reads them (by delegation); this view adds:
//!
//! - `replay`: each request's `k8s_request` record as kubectl would name the operation
//!   (`kubectl delete apps/deployments prod/web -> 403 (refused by rule
//!   no-deletes-in-prod)`), with who the agent acted as and the object's uid; an exec's
//!   frames as a transcript (`stdout| uid=0(root) ...`), and its end with the exit
//!   code (`k8s_exec`);
//! - `events`: the same line as the `k8s_request` detail;
//! - request events: `k8s_request`, found by verb, resource, subresource, namespace,
//!   name and exec argv (`--text 'delete apps/deployments'`, `--text 'cat /etc'`) or by
//!   the path of a non-resource request; what the agent did is its `outcome`;
//! - OCSF: one **API Activity** (6003) per request, see [`KubeActivity`].
use std::collections::HashMap;
use std::io::{self, Write};

use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{Http, HttpActivity};
use super::{OcsfRequests, ProtocolView, Replay, RequestEvents};
use crate::cli::ocsf::{base, context_unmapped, ms, outcome, request_members};
use crate::cli::replay::{format_offset_us, us_since_epoch};
use crate::cli::select::Selected;
use crate::cli::sessions::sanitize;
use crate::journal::{EventRow, SessionId, SessionRow, SetSession};
use crate::protocol::kubernetes::request::KubeRequest;
use crate::proxy::http::events::{kind, SpdyFrame, WsFrame};
use crate::proxy::http::kube::{kind::K8S_EXEC, kind::K8S_REQUEST, K8sRequest};

/// OCSF API Activity.
const API_ACTIVITY: u64 = 6003;

/// The Kubernetes view.
pub struct Kube;

impl ProtocolView for Kube {
    fn protocol(&self) -> &'static str {
        "kubernetes"
    }

    fn replay(&self, session: &SessionRow) -> Box<dyn Replay> {
        Box::new(Operations {
            http: Http.replay(session),
            start_us: us_since_epoch(session.started_at),
            forwarded: 0,
            refused: 0,
            failed: 0,
        })
    }

    fn ocsf(&self) -> Option<Box<dyn OcsfRequests>> {
        Some(Box::<KubeActivity>::default())
    }

    fn requests(&self) -> Option<RequestEvents> {
        Some(RequestEvents {
            kind: K8S_REQUEST,
            texts: &[
                &[
                    "verb",
                    "group",
                    "resource",
                    "subresource",
                    "namespace",
                    "name",
                    "command",
                ],
                &["path"],
            ],
            action: "outcome",
        })
    }

    fn detail(&self, kind: &str, data: &Value) -> Option<String> {
        match kind {
            K8S_REQUEST => read(data).map(|r| summary(&r)),
            K8S_EXEC => Some(exec_line(data)),
            kind::WS_FRAME => {
                let f = WsFrame::read(data)?;
                match &f.channel {
                    Some(channel) => Some(transcript_line(
                        channel,
                        f.excerpt.as_deref(),
                        f.excerpt_cut,
                        f.size,
                    )),
                    None => Http.detail(kind, data),
                }
            }
            kind::SPDY_FRAME => SpdyFrame::read(data).map(|f| spdy_line(&f)),
            _ => Http.detail(kind, data),
        }
    }
}

fn read(data: &Value) -> Option<K8sRequest> {
    K8sRequest::deserialize(data).ok()
}

/// The operation as kubectl names it: `delete apps/deployments prod/web`.
fn operation(r: &KubeRequest) -> String {
    r.describe()
}

/// A request in one line: the operation, the status, the judgement when it is not a
/// plain allow.
fn summary(r: &K8sRequest) -> String {
    let mut line = format!("{} -> {}", operation(&r.request), r.status);
    let by = r
        .rule
        .as_deref()
        .map(|rule| format!(" by rule {rule}"))
        .unwrap_or_default();
    let note = match (r.outcome.as_str(), r.verdict.as_str()) {
        ("forwarded", "allow") if r.rule.is_none() => None,
        ("forwarded", "allow") => Some(format!("allowed{by}")),
        ("forwarded", verdict) => Some(format!("{verdict}{by}: forwarded")),
        (outcome, _) => Some(format!("{outcome}{by}")),
    };
    if let Some(note) = note {
        line.push_str(&format!(" ({note})"));
    }
    line
}

/// A frame of an exec as a transcript line: `stdout| text` (`stdout| 4096 B` when its
/// data was not kept).
fn transcript_line(channel: &str, excerpt: Option<&str>, cut: bool, size: u64) -> String {
    match excerpt {
        Some(text) => {
            let cut = if cut { " ..." } else { "" };
            format!(
                "{}| {}{cut}",
                sanitize(channel),
                sanitize(text.trim_end_matches('\n'))
            )
        }
        None if size <= 1 => format!("{}| (empty)", sanitize(channel)),
        None => format!("{}| {size} B", sanitize(channel)),
    }
}

/// A SPDY frame in one line: DATA of a channel as a transcript line, a stream's opening
/// with its type (`spdy syn_stream 3 stdout`), other frames by type and stream.
fn spdy_line(f: &SpdyFrame<'_>) -> String {
    if let (Some(channel), "data") = (&f.channel, f.frame.as_ref()) {
        if f.size > 0 {
            return transcript_line(channel, f.excerpt.as_deref(), f.excerpt_cut, f.size);
        }
    }
    let mut line = format!("{} spdy {}", f.from, sanitize(&f.frame));
    if let Some(id) = f.stream_id {
        line.push_str(&format!(" {id}"));
    }
    if let Some(channel) = &f.channel {
        line.push_str(&format!(" {}", sanitize(channel)));
    }
    if f.fin {
        line.push_str(" fin");
    }
    if let Some(status) = f.status {
        line.push_str(&format!(" status {status}"));
    }
    line
}

/// The end of an exec: `exec ended: exit 3 (NonZeroExitCode), stdout 42 B, stderr 0 B`.
fn exec_line(data: &Value) -> String {
    let exit = data.get("exit");
    let code = exit
        .and_then(|e| e.get("exit_code"))
        .and_then(Value::as_i64)
        .map(|c| format!("exit {c}"))
        .unwrap_or_else(|| "no exit code".to_owned());
    let reason = exit
        .and_then(|e| e.get("reason").or(e.get("status")))
        .and_then(Value::as_str)
        .map(|r| format!(" ({})", sanitize(r)))
        .unwrap_or_default();
    let bytes: Vec<String> = data
        .get("bytes")
        .and_then(Value::as_array)
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|p| Some(format!("{} {} B", p.get(0)?.as_str()?, p.get(1)?.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let truncated = if data.get("truncated").and_then(Value::as_bool) == Some(true) {
        " (not all kept)"
    } else {
        ""
    };
    format!(
        "exec ended: {code}{reason}, {}{truncated}",
        sanitize(&bytes.join(", "))
    )
}

/// The replay of a Kubernetes session: the HTTP view's, with a line per request and the
/// exec transcripts.
struct Operations {
    http: Box<dyn Replay>,
    start_us: i64,
    forwarded: u64,
    refused: u64,
    /// The server could not be asked, or its answer could not be masked.
    failed: u64,
}

/// Indentation of the lines under a request's line.
const UNDER: &str = "                  ";

impl Replay for Operations {
    fn event(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<()> {
        let offset = format_offset_us(us_since_epoch(event.at).saturating_sub(self.start_us));
        let data = event.data.as_ref();
        match event.kind.as_str() {
            K8S_REQUEST => {
                let Some(r) = data.and_then(read) else {
                    return self.http.event(out, event);
                };
                match r.outcome.as_str() {
                    "forwarded" => self.forwarded += 1,
                    "refused" | "not approved" => self.refused += 1,
                    _ => self.failed += 1,
                }
                writeln!(out, "  {offset}  kubectl {}", sanitize(&summary(&r)))?;
                if let Some(by) = &r.acted_as {
                    writeln!(out, "{UNDER}as {}", sanitize(by))?;
                }
                if let Some(uid) = &r.uid {
                    writeln!(out, "{UNDER}uid {}", sanitize(uid))?;
                }
                Ok(())
            }
            K8S_EXEC => {
                let line = data.map(exec_line).unwrap_or_default();
                writeln!(out, "  {offset}  {line}")
            }
            kind::WS_FRAME => match data.and_then(WsFrame::read) {
                Some(f) if f.channel.is_some() => {
                    let channel = f.channel.as_deref().unwrap_or("");
                    let line =
                        transcript_line(channel, f.excerpt.as_deref(), f.excerpt_cut, f.size);
                    writeln!(out, "  {offset}  {line}")
                }
                _ => self.http.event(out, event),
            },
            kind::SPDY_FRAME => match data.and_then(SpdyFrame::read) {
                // The transcript; the streams' bookkeeping (openings, window updates,
                // pings) is left to `events`.
                Some(f) if f.frame == "data" && f.size > 0 => {
                    writeln!(out, "  {offset}  {}", spdy_line(&f))
                }
                Some(f) if f.frame == "rst_stream" || f.frame == "goaway" => {
                    writeln!(out, "  {offset}  {}", spdy_line(&f))
                }
                Some(_) => Ok(()),
                None => self.http.event(out, event),
            },
            _ => self.http.event(out, event),
        }
    }

    fn finish(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        self.http.finish(out)?;
        writeln!(
            out,
            "  {} Kubernetes requests: {} forwarded, {} refused, {} failed",
            self.forwarded + self.refused + self.failed,
            self.forwarded,
            self.refused,
            self.failed
        )
    }
}

type Key = (String, SessionId, u64);

/// Kubernetes requests as OCSF API Activity (6003, category 6 Application Activity),
/// one per `k8s_request` record, with the `approval` of a held request.
///
/// - `activity_id` from the verb: Create (1) `create`; Read (2) `get`, `list`,
///   `watch`; Update (3) `update`, `patch`; Delete (4) `delete`, `deletecollection`;
///   Other (99) the rest (non-resource requests, `proxy`).
/// - `api.operation` the verb, `api.service.name` `kubernetes`, `api.version` the
///   group/version, `api.response.code` the HTTP status; `resources[]` the object
///   (`type` the resource with its group and subresource, `name`, `namespace` in
///   `labels`, `uid`); `unmapped`: the judgement (`request_verdict`, `request_rule`,
///   `request_enforced`, `request_action`: the outcome), `k8s_command` (an exec's
///   argv, masked), `k8s_acted_as`, `k8s_user_agent`, `k8s_path`, `approval`.
/// - `status_id` 1 Success (status below 400), 2 Failure.
///
/// Requests that never got a record (refused before they were read as Kubernetes
/// requests, as HTTP) are exported as HTTP Activity by the [`Http`] view's mapping.
#[derive(Default)]
pub(super) struct KubeActivity {
    http: HttpActivity,
    /// Requests with a `kube` head, waiting for their record: their approval.
    pending: HashMap<Key, Option<Value>>,
}

impl OcsfRequests for KubeActivity {
    fn push(&mut self, s: &Selected<'_>) -> Vec<Value> {
        let Some(session) = s.session else {
            return Vec::new();
        };
        let e = &s.event;
        let data = e.data.as_ref();
        let Some(seq) = data.and_then(|d| d.get("seq")).and_then(Value::as_u64) else {
            return self.http.push(s);
        };
        let key = (s.segment.journal_id.clone(), session.row.id, seq);
        let has_kube = data
            .and_then(|d| d.get("kube"))
            .is_some_and(Value::is_object);
        match e.kind.as_str() {
            kind::REQUEST if has_kube => {
                self.pending.insert(key, None);
                Vec::new()
            }
            crate::session::gate::APPROVAL if self.pending.contains_key(&key) => {
                self.pending.insert(key, e.data.clone());
                Vec::new()
            }
            kind::RESPONSE | kind::RESPONSE_END if self.pending.contains_key(&key) => Vec::new(),
            kind::WS_FRAME | kind::SPDY_FRAME => Vec::new(),
            K8S_REQUEST => {
                let approval = self.pending.remove(&key).flatten();
                match data.and_then(read) {
                    Some(r) => vec![api_activity(
                        &r,
                        approval.as_ref(),
                        (&s.segment.journal_id, s.segment.host_id.as_deref()),
                        e,
                        session,
                    )],
                    None => Vec::new(),
                }
            }
            K8S_EXEC => Vec::new(),
            _ => self.http.push(s),
        }
    }

    fn finish(self: Box<Self>) -> Vec<Value> {
        Box::new(self.http).finish()
    }

    fn oldest_pending(&self) -> Option<i64> {
        self.http.oldest_pending()
    }

    fn session_ended(&mut self, journal_id: &str, session: SessionId) {
        self.http.session_ended(journal_id, session);
    }
}

fn verb_activity(verb: &str) -> (u64, &'static str) {
    match verb {
        "create" => (1, "Create"),
        "get" | "list" | "watch" => (2, "Read"),
        "update" | "patch" => (3, "Update"),
        "delete" | "deletecollection" => (4, "Delete"),
        _ => (99, "Other"),
    }
}

fn api_activity(
    r: &K8sRequest,
    approval: Option<&Value>,
    (journal_id, host_id): (&str, Option<&str>),
    row: &EventRow,
    session: &SetSession,
) -> Value {
    let q = &r.request;
    let action = match r.outcome.as_str() {
        "refused" => "refused",
        "not approved" => "held",
        _ => "forwarded",
    };
    let decision = approval
        .and_then(|a| a.get("decision"))
        .and_then(Value::as_str);
    let judged = outcome(action, &r.verdict, r.enforced, decision);
    let (activity_id, activity_name) = if q.resource_request {
        verb_activity(&q.verb)
    } else {
        (99, "Other")
    };
    let end = ms(row.at);
    let start = end - (r.duration_us / 1000) as i64;
    let mut event = base(
        API_ACTIVITY,
        "API Activity",
        6,
        "Application Activity",
        activity_id,
        activity_name,
        start,
        judged.severity,
    );
    let status = if r.status >= 400 || r.status == 0 {
        (2, "Failure")
    } else {
        (1, "Success")
    };
    let mut api = json!({
        "operation": q.verb,
        "service": { "name": "kubernetes" },
        "response": { "code": r.status },
    });
    if !q.version.is_empty() {
        let version = if q.group.is_empty() {
            q.version.clone()
        } else {
            format!("{}/{}", q.group, q.version)
        };
        api["version"] = json!(version);
    }
    let mut unmapped = context_unmapped(journal_id, host_id, session);
    for (key, value) in [
        ("request_verdict", json!(r.verdict)),
        ("request_rule", json!(r.rule)),
        ("request_enforced", json!(r.enforced)),
        ("request_action", json!(r.outcome)),
        (
            "k8s_command",
            json!((!q.command.is_empty()).then_some(&q.command)),
        ),
        ("k8s_acted_as", json!(r.acted_as)),
        ("k8s_user_agent", json!(r.user_agent)),
        ("k8s_path", json!((!q.path.is_empty()).then_some(&q.path))),
        ("approval", approval.cloned().unwrap_or(Value::Null)),
    ] {
        if !value.is_null() && value != json!("") {
            unmapped.insert(key.into(), value);
        }
    }
    for (k, v) in request_members(
        summary(r),
        status,
        &judged,
        Some((journal_id, row)),
        session,
    )
    .into_iter()
    .chain([("api", api), ("unmapped", Value::Object(unmapped))])
    {
        event.insert(k.into(), v);
    }
    if q.resource_request {
        let mut kind = q.qualified_resource();
        if !q.subresource.is_empty() {
            kind = format!("{kind}/{}", q.subresource);
        }
        let mut resource = json!({ "type": kind });
        if !q.name.is_empty() {
            resource["name"] = json!(q.name);
        }
        if !q.namespace.is_empty() {
            resource["labels"] = json!([format!("namespace:{}", q.namespace)]);
        }
        if let Some(uid) = &r.uid {
            resource["uid"] = json!(uid);
        }
        event.insert("resources".into(), json!([resource]));
    }
    event.insert("status_code".into(), json!(r.status.to_string()));
    event.insert("start_time".into(), json!(start));
    event.insert("end_time".into(), json!(end));
    event.insert("duration".into(), json!(r.duration_us / 1000));
    Value::Object(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_kubectl_operations() {
        let r: K8sRequest = serde_json::from_value(json!({
            "seq": 2, "verb": "delete", "resource_request": true, "group": "apps",
            "version": "v1", "resource": "deployments", "namespace": "prod", "name": "web",
            "verdict": "deny", "rule": "no-deletes-in-prod", "enforced": true,
            "outcome": "refused", "status": 403, "duration_us": 10
        }))
        .unwrap();
        assert_eq!(
            summary(&r),
            "delete apps/deployments prod/web -> 403 (refused by rule no-deletes-in-prod)"
        );
        let line = Kube
            .detail(K8S_REQUEST, &serde_json::to_value(&r).unwrap())
            .unwrap();
        assert_eq!(line, summary(&r));
        let frame = json!({"seq": 1, "from": "server", "n": 2, "opcode": "binary", "fin": true,
            "size": 40, "excerpt": "uid=0(root)\n", "channel": "stdout"});
        assert_eq!(
            Kube.detail(kind::WS_FRAME, &frame).unwrap(),
            "stdout| uid=0(root)"
        );
        let end = json!({"seq": 1, "protocol": "v5.channel.k8s.io",
            "bytes": [["stdout", 42], ["error", 34]],
            "exit": {"exit_code": 3, "status": "Failure", "reason": "NonZeroExitCode"},
            "duration_us": 5});
        assert_eq!(
            Kube.detail(K8S_EXEC, &end).unwrap(),
            "exec ended: exit 3 (NonZeroExitCode), stdout 42 B, error 34 B"
        );
        let spdy = json!({"seq": 1, "from": "server", "n": 7, "frame": "data", "stream_id": 5,
            "channel": "stderr", "size": 10, "excerpt": "to-stderr\n"});
        assert_eq!(
            Kube.detail(kind::SPDY_FRAME, &spdy).unwrap(),
            "stderr| to-stderr"
        );
        let open = json!({"seq": 1, "from": "client", "n": 2, "frame": "syn_stream",
            "stream_id": 3, "channel": "stdout", "headers": [["streamtype", "stdout"]]});
        assert_eq!(
            Kube.detail(kind::SPDY_FRAME, &open).unwrap(),
            "client spdy syn_stream 3 stdout"
        );
        assert_eq!(verb_activity("deletecollection"), (4, "Delete"));
        assert_eq!(verb_activity("watch"), (2, "Read"));
    }
}
