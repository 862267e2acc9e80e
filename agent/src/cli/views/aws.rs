//! AWS sessions (`protocol = "aws"`): HTTP sessions whose requests are AWS API calls
//! (`proxy::http::aws`). Their HTTP events read as the [`Http`] view reads them (by
//! delegation, never copied); this view adds each call's `aws_call` record
//! ([`AwsCall`]):
//!
//! - `replay`: after the call's HTTP exchange, one line like a CloudTrail record:
//!   `aws iam:CreateUser us-east-1 [mallory] -> 403 AccessDenied (refused by rule
//!   no-iam-users) request-id nhi-3-2`, then who the agent signed as and the (masked)
//!   parameters;
//! - `events`: the same line as the `aws_call` detail, and the action next to an
//!   `http_request`'s method and target;
//! - request events: `aws_call`, found by its action with its resources
//!   (`--text iam:CreateUser`, `--text artifacts/build`) or its service; what the agent
//!   did is its `outcome` (see `cli::filter` for how `--verdict` reads it);
//! - OCSF: one **API Activity** (6003) per call, see [`ApiActivity`].

use std::collections::HashMap;
use std::io::{self, Write};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::http::{Http, HttpActivity};
use super::{OcsfRequests, ProtocolView, Replay, RequestEvents};
use crate::cli::ocsf::{base, context_unmapped, ms, outcome, request_members};
use crate::cli::replay::{format_offset_us, us_since_epoch};
use crate::cli::select::Selected;
use crate::cli::sessions::sanitize;
use crate::journal::{EventRow, SessionId, SessionRow, SetSession};
use crate::proxy::http::aws::{AwsCall, AwsCallHead, AWS_CALL};
use crate::proxy::http::events::{kind, HttpRequest, HttpResponse};

/// OCSF API Activity.
pub const API_ACTIVITY: u64 = 6003;

/// The AWS view.
pub struct Aws;

impl ProtocolView for Aws {
    fn protocol(&self) -> &'static str {
        "aws"
    }

    fn replay(&self, session: &SessionRow) -> Box<dyn Replay> {
        Box::new(Calls {
            http: Http.replay(session),
            start_us: us_since_epoch(session.started_at),
            forwarded: 0,
            errors: 0,
            refused: 0,
            unsigned: 0,
        })
    }

    fn ocsf(&self) -> Option<Box<dyn OcsfRequests>> {
        Some(Box::<ApiActivity>::default())
    }

    /// `aws_call`: `--text 'iam:CreateUser'` finds a call by its action, followed by its
    /// resources (`s3:GetObject artifacts/build/app.bin`), or by its service (`s3`).
    /// What the agent did is `outcome` (forwarded, refused, not approved, not signed):
    /// `action` is the API action.
    fn requests(&self) -> Option<RequestEvents> {
        Some(RequestEvents {
            kind: AWS_CALL,
            texts: &[&["action", "resources"], &["service"]],
            action: "outcome",
        })
    }

    fn detail(&self, kind: &str, data: &Value) -> Option<String> {
        match kind {
            AWS_CALL => read_call(data).map(|call| summary(&call)),
            // The HTTP view's line, and the call the request is.
            kind::REQUEST => {
                let line = Http.detail(kind, data)?;
                match HttpRequest::read(data).and_then(|r| r.aws) {
                    Some(head) => Some(format!("{line} ({})", head.action)),
                    None => Some(line),
                }
            }
            _ => Http.detail(kind, data),
        }
    }
}

/// An `aws_call` event's data; `None` if it is not one.
fn read_call(data: &Value) -> Option<AwsCall> {
    AwsCall::deserialize(data).ok()
}

/// A call in one line: action, region, resources, status, error code, the judgement
/// when it is not a plain allow, and the request id.
fn summary(call: &AwsCall) -> String {
    let mut line = format!("{} {}", call.head.action, call.head.region);
    let names: Vec<&str> = resources(&call.head.resources)
        .iter()
        .map(Resource::shown)
        .collect();
    if !names.is_empty() {
        line.push_str(&format!(" [{}]", names.join(", ")));
    }
    line.push_str(&format!(" -> {}", call.status));
    if let Some(code) = &call.error_code {
        line.push_str(&format!(" {code}"));
    }
    let by = call
        .rule
        .as_deref()
        .map(|rule| format!(" by rule {rule}"))
        .unwrap_or_default();
    let note = match (call.outcome.as_str(), call.verdict.as_str()) {
        ("forwarded", "allow") if call.rule.is_none() => None,
        ("forwarded", "allow") => Some(format!("allowed{by}")),
        // Approved after a hold, or a deny in observe mode.
        ("forwarded", verdict) => Some(format!("{verdict}{by}: forwarded")),
        (outcome, _) => Some(format!("{outcome}{by}")),
    };
    if let Some(note) = note {
        line.push_str(&format!(" ({note})"));
    }
    if let Some(id) = &call.request_id {
        line.push_str(&format!(" request-id {id}"));
    }
    line
}

/// One resource a call names: an ARN (`uid`), a name, or both when the call lists a
/// name and the ARN whose resource part it is (S3 lists `bucket/key` and
/// `arn:aws:s3:::bucket/key`): one resource, not two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resource<'a> {
    uid: Option<&'a str>,
    name: Option<&'a str>,
}

impl<'a> Resource<'a> {
    /// The name when there is one, else the ARN.
    fn shown(&self) -> &'a str {
        self.name.or(self.uid).unwrap_or("")
    }
}

/// The resource part of an ARN (`arn:partition:service:region:account:resource`).
fn arn_resource(value: &str) -> Option<&str> {
    value
        .strip_prefix("arn:")
        .and_then(|rest| rest.splitn(5, ':').nth(4))
}

/// A call's resources, in the order listed, a name folded into its ARN.
fn resources(list: &[String]) -> Vec<Resource<'_>> {
    let mut out = Vec::new();
    for value in list {
        match arn_resource(value) {
            Some(part) => out.push(Resource {
                uid: Some(value),
                name: list.iter().map(String::as_str).find(|n| *n == part),
            }),
            None if list.iter().any(|v| arn_resource(v) == Some(value)) => {}
            None => out.push(Resource {
                uid: None,
                name: Some(value),
            }),
        }
    }
    out
}

/// The replay of an AWS session: the HTTP view's, with a line per call.
struct Calls {
    http: Box<dyn Replay>,
    start_us: i64,
    forwarded: u64,
    /// Forwarded calls AWS answered with an error status.
    errors: u64,
    /// Refused, or held and not approved.
    refused: u64,
    /// Allowed, but the agent could not sign them.
    unsigned: u64,
}

/// Indentation of the lines under a call's line (its action's column).
const UNDER: &str = "                  ";

/// The longest parameter text a replay shows.
const PARAMS_SHOWN: usize = 300;

impl Replay for Calls {
    fn event(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<()> {
        let call = (event.kind.as_str() == AWS_CALL)
            .then(|| event.data.as_ref().and_then(read_call))
            .flatten();
        let Some(call) = call else {
            return self.http.event(out, event);
        };
        match call.outcome.as_str() {
            "forwarded" => {
                self.forwarded += 1;
                if call.status >= 400 {
                    self.errors += 1;
                }
            }
            "not signed" => self.unsigned += 1,
            _ => self.refused += 1,
        }
        let offset = format_offset_us(us_since_epoch(event.at).saturating_sub(self.start_us));
        writeln!(out, "  {offset}  aws {}", sanitize(&summary(&call)))?;
        if let Some(signed) = &call.signed_as {
            writeln!(out, "{UNDER}signed as {}", sanitize(signed))?;
        }
        if !call.head.params.is_null() {
            let text = call.head.params.to_string();
            let shown = match text.char_indices().nth(PARAMS_SHOWN) {
                Some((i, _)) => format!("{}...", &text[..i]),
                None => text,
            };
            writeln!(out, "{UNDER}params {}", sanitize(&shown))?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        let calls = self.forwarded + self.refused + self.unsigned;
        let unsigned = if self.unsigned > 0 {
            format!(", {} not signed", self.unsigned)
        } else {
            String::new()
        };
        self.http.finish(out)?;
        writeln!(
            out,
            "  {calls} AWS calls: {} forwarded ({} answered with an error), {} refused{unsigned}",
            self.forwarded, self.errors, self.refused
        )
    }
}

type Key = (String, SessionId, u64);

/// A call waiting for its `aws_call` record.
struct Pending {
    /// Arrival order, for the calls that never got their record.
    n: u64,
    journal_id: String,
    host_id: Option<String>,
    session: SetSession,
    /// The `http_request`; `None` for a record whose request the export did not read.
    request: Option<EventRow>,
    approval: Option<Value>,
    response: Option<EventRow>,
}

/// AWS calls as OCSF API Activity (6003, category 6 Application Activity), one per
/// call: its `http_request` (which carries the call, `aws`), completed by its
/// `aws_call` record (same session and `seq`) and by the `approval` of a held one.
///
/// - `activity_id` from the operation's verb: Create (1) for `Create*`, `Add*`,
///   `Allocate*`, `Import*`, `Register*`, `Run*`, `Upload*`; Read (2) for `Get*`,
///   `List*`, `Describe*`, `Head*`, `Query`, `Scan`, `Search*`, `Lookup*`, `Select*`,
///   `BatchGet*`; Update (3) for `Update*`, `Put*` (create or replace, as HTTP's PUT),
///   `Modify*`, `Set*`, `Change*`, `Attach*`, `Detach*`, `Associate*`,
///   `Disassociate*`, `Enable*`, `Disable*`, `Tag*`, `Untag*`, `Rotate*`, `Reset*`,
///   `Replace*`; Delete (4) for `Delete*`, `Remove*`, `Terminate*`, `Deregister*`,
///   `Release*`, `Revoke*`, `Purge*`; otherwise Other (99: `AssumeRole`, `Invoke`).
/// - `api.operation` the operation (`CreateUser`; for one the agent does not know, the
///   method and path), `api.service.name` the IAM prefix (`iam`, `s3`),
///   `api.request.uid` AWS's request id (CloudTrail's `requestID`, the join key to it;
///   the agent's own `nhi-<session>-<seq>` for its refusals), `api.response.code` the
///   HTTP status and `api.response.error` AWS's error code; `cloud` `{provider: "AWS",
///   region}`; `resources[]` one per resource (`uid` the ARN, `name` the name);
///   `http_request` method, host, path and target as the HTTP view maps them.
/// - `status_id` 1 Success (status below 400), 2 Failure (an error status; the agent's
///   refusal or failure too), 0 Unknown (no record and no response in the export);
///   `status_code` the HTTP status, `status_detail` the error code.
/// - `action`, `disposition` and `severity` as for every request (`cli::ocsf::outcome`,
///   from the request's `action`, verdict, `enforced` and the approval decision).
/// - `actor`, `src_endpoint`, `dst_endpoint`, `metadata` as for HTTP Activity;
///   `metadata.uid` names the `aws_call` event. `unmapped`: the session context, the
///   judgement (`request_verdict`, `request_rule`, `request_enforced`,
///   `request_action`: the outcome), `aws_action`, `aws_params` (masked), `aws_api`,
///   `aws_client_key_id`, `aws_presigned`, `aws_payload`, `aws_signed_as`,
///   `aws_request_bytes`, `aws_response_bytes`, `approval`.
///
/// A request of an AWS session is exported once: as API Activity when it is a call
/// (its `http_request` has `aws`), as HTTP Activity (the [`Http`] view's mapping, by
/// delegation) when it was refused before it was named (its signature, its body). A
/// call with no `aws_call` (the server could not be reached, a response that could not
/// be masked) is exported at the end from its request and response.
#[derive(Default)]
pub(super) struct ApiActivity {
    http: HttpActivity,
    calls: HashMap<Key, Pending>,
    arrived: u64,
}

impl OcsfRequests for ApiActivity {
    fn push(&mut self, s: &Selected<'_>) -> Vec<Value> {
        let Some(session) = s.session else {
            return Vec::new();
        };
        let e = &s.event;
        let seq = e
            .data
            .as_ref()
            .and_then(|d| d.get("seq"))
            .and_then(Value::as_u64);
        let Some(seq) = seq else {
            return self.http.push(s);
        };
        let key = (s.segment.journal_id.clone(), session.row.id, seq);
        let pending = |n, request: Option<&EventRow>| Pending {
            n,
            journal_id: s.segment.journal_id.clone(),
            host_id: s.segment.host_id.clone(),
            session: session.clone(),
            request: request.cloned(),
            approval: None,
            response: None,
        };
        let is_call = |e: &EventRow| {
            e.data
                .as_ref()
                .and_then(|d| d.get("aws"))
                .is_some_and(Value::is_object)
        };
        match e.kind.as_str() {
            kind::REQUEST if is_call(e) => {
                // A request with the seq of one still pending: the earlier one never got
                // its record; export it as it is.
                let out = self
                    .calls
                    .remove(&key)
                    .map(|old| api_activity(&old, None))
                    .into_iter()
                    .collect();
                self.arrived += 1;
                self.calls.insert(key, pending(self.arrived, Some(e)));
                out
            }
            crate::session::gate::APPROVAL if self.calls.contains_key(&key) => {
                if let Some(p) = self.calls.get_mut(&key) {
                    p.approval = e.data.clone();
                }
                Vec::new()
            }
            kind::RESPONSE if self.calls.contains_key(&key) => {
                if let Some(p) = self.calls.get_mut(&key) {
                    p.response.get_or_insert_with(|| e.clone());
                }
                Vec::new()
            }
            AWS_CALL => {
                let p = self.calls.remove(&key).unwrap_or_else(|| pending(0, None));
                vec![api_activity(&p, Some(e))]
            }
            _ => self.http.push(s),
        }
    }

    fn oldest_pending(&self) -> Option<i64> {
        let calls = self
            .calls
            .values()
            .filter_map(|p| p.request.as_ref().map(|r| r.id));
        calls.chain(self.http.oldest_pending()).min()
    }

    fn session_ended(&mut self, journal_id: &str, session: SessionId) {
        self.http.session_ended(journal_id, session);
    }

    fn finish(self: Box<Self>) -> Vec<Value> {
        let ApiActivity { http, calls, .. } = *self;
        let mut left: Vec<Pending> = calls.into_values().collect();
        left.sort_by_key(|p| p.n);
        let mut out: Vec<Value> = left.iter().map(|p| api_activity(p, None)).collect();
        out.extend(Box::new(http).finish());
        out
    }
}

/// Verb prefixes of operations per API Activity `activity_id` (see [`ApiActivity`]).
const VERBS: &[(u64, &str, &[&str])] = &[
    (
        1,
        "Create",
        &[
            "Create", "Add", "Allocate", "Import", "Register", "Run", "Upload",
        ],
    ),
    (
        2,
        "Read",
        &[
            "Get", "List", "Describe", "Head", "Query", "Scan", "Search", "Lookup", "Select",
            "BatchGet",
        ],
    ),
    (
        3,
        "Update",
        &[
            "Update",
            "Put",
            "Modify",
            "Set",
            "Change",
            "Attach",
            "Detach",
            "Associate",
            "Disassociate",
            "Enable",
            "Disable",
            "Tag",
            "Untag",
            "Rotate",
            "Reset",
            "Replace",
        ],
    ),
    (
        4,
        "Delete",
        &[
            "Delete",
            "Remove",
            "Terminate",
            "Deregister",
            "Release",
            "Revoke",
            "Purge",
        ],
    ),
];

/// `activity_id` and its caption for an operation: the verb it starts with, a whole
/// word of it (`Settle` does not start with `Set`).
fn operation_activity(operation: &str) -> (u64, &'static str) {
    for (id, caption, verbs) in VERBS {
        for verb in *verbs {
            let word = operation.strip_prefix(verb).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_uppercase())
            });
            if word {
                return (*id, caption);
            }
        }
    }
    (99, "Other")
}

/// One API Activity: a call from its request, its `aws_call` record and its approval;
/// without the record, from the request and its response.
fn api_activity(p: &Pending, record: Option<&EventRow>) -> Value {
    let call = record.and_then(|r| r.data.as_ref()).and_then(read_call);
    let request_data = p.request.as_ref().and_then(|r| r.data.as_ref());
    let request = request_data.and_then(HttpRequest::read);
    let response = p
        .response
        .as_ref()
        .and_then(|r| r.data.as_ref())
        .and_then(HttpResponse::read);
    let head: AwsCallHead = match (&call, &request) {
        (Some(c), _) => c.head.clone(),
        (None, Some(r)) => r.aws.clone().unwrap_or_default(),
        (None, None) => AwsCallHead::default(),
    };
    let verdict = call
        .as_ref()
        .map(|c| c.verdict.as_str())
        .or(request.as_ref().map(|r| r.verdict.as_ref()))
        .unwrap_or("");
    let rule = call
        .as_ref()
        .and_then(|c| c.rule.as_deref())
        .or(request.as_ref().and_then(|r| r.rule.as_deref()));
    // What the agent did, as every request says it (forwarded, refused, held): the
    // request's own `action`, else read from the record's outcome.
    let action = match (&request, &call) {
        (Some(r), _) => r.action.as_ref(),
        (None, Some(c)) => match c.outcome.as_str() {
            "not approved" => "held",
            "not signed" => "forwarded",
            other => other,
        },
        (None, None) => "",
    };
    let outcome_text = call.as_ref().map(|c| c.outcome.as_str()).unwrap_or(action);
    let enforced = match (&request, &call) {
        (Some(r), _) => r.enforced,
        (None, Some(c)) => c.enforced,
        (None, None) => !(verdict == "deny" && outcome_text == "forwarded"),
    };
    let decision = p
        .approval
        .as_ref()
        .and_then(|a| a.get("decision"))
        .and_then(Value::as_str);
    let judged = outcome(action, verdict, enforced, decision);
    let (severity_id, severity) = judged.severity;
    let status = call
        .as_ref()
        .map(|c| c.status)
        .or(response.as_ref().map(|r| r.status));
    let failure = call.as_ref().and_then(|c| c.error_code.clone()).or(response
        .as_ref()
        .and_then(|r| r.error.as_deref().map(str::to_owned)));
    let (status_id, status_name) = match status {
        None => (0, "Unknown"),
        Some(s) if s >= 400 => (2, "Failure"),
        Some(_) if failure.is_some() => (2, "Failure"),
        Some(_) => (1, "Success"),
    };
    let operation = match head.action.split_once(':') {
        Some((_, op)) if !op.is_empty() && op != "?" => op.to_owned(),
        _ => match &request {
            Some(r) => format!("{} {}", r.method, r.path.as_deref().unwrap_or(&r.target)),
            None => "?".to_owned(),
        },
    };
    let (activity_id, activity_name) = if head.action.ends_with(":?") {
        (99, "Other")
    } else {
        operation_activity(&operation)
    };
    let session = &p.session;
    let first = p.request.as_ref().or(record);
    let time = first.map(|r| ms(r.at)).unwrap_or(0);
    let mut event = base(
        API_ACTIVITY,
        "API Activity",
        6,
        "Application Activity",
        activity_id,
        activity_name,
        time,
        (severity_id, severity),
    );
    let message = match &call {
        Some(c) => summary(c),
        None => {
            let status = status.map(|s| format!(" -> {s}")).unwrap_or_default();
            format!("{} {}{status} ({action})", head.action, head.region)
        }
    };
    let mut api = json!({ "operation": operation, "service": { "name": head.service } });
    if let Some(id) = call.as_ref().and_then(|c| c.request_id.as_deref()) {
        api["request"] = json!({ "uid": id });
    }
    if let Some(code) = status {
        let mut response = json!({ "code": code });
        if let Some(error) = call.as_ref().and_then(|c| c.error_code.as_deref()) {
            response["error"] = json!(error);
        }
        api["response"] = response;
    }
    let mut unmapped = context_unmapped(&p.journal_id, p.host_id.as_deref(), session);
    let params = (!head.params.is_null()).then(|| head.params.clone());
    for (key, value) in [
        ("request_verdict", json!(verdict)),
        ("request_rule", json!(rule)),
        ("request_enforced", json!(enforced)),
        ("request_action", json!(outcome_text)),
        (
            "request_reason",
            json!(request.as_ref().and_then(|r| r.reason.as_deref())),
        ),
        ("aws_action", json!(head.action)),
        ("aws_params", json!(params)),
        ("aws_api", json!(head.api)),
        ("aws_client_key_id", json!(head.client_key_id)),
        ("aws_presigned", json!(head.presigned.then_some(true))),
        ("aws_payload", json!(head.payload)),
        (
            "aws_signed_as",
            json!(call.as_ref().and_then(|c| c.signed_as.as_deref())),
        ),
        (
            "aws_request_bytes",
            json!(call.as_ref().and_then(|c| c.request_bytes)),
        ),
        (
            "aws_response_bytes",
            json!(call.as_ref().and_then(|c| c.response_bytes)),
        ),
    ] {
        if !value.is_null() && value != json!("") {
            unmapped.insert(key.into(), value);
        }
    }
    if let Some(a) = &p.approval {
        unmapped.insert("approval".into(), a.clone());
    }
    let resources: Vec<Value> = resources(&head.resources)
        .iter()
        .map(|r| {
            let mut m = Map::new();
            if let Some(uid) = r.uid {
                m.insert("uid".into(), json!(uid));
            }
            if let Some(name) = r.name {
                m.insert("name".into(), json!(name));
            }
            Value::Object(m)
        })
        .collect();
    for (k, v) in request_members(
        message,
        (status_id, status_name),
        &judged,
        record
            .or(p.request.as_ref())
            .map(|row| (p.journal_id.as_str(), row)),
        session,
    )
    .into_iter()
    .chain([
        ("api", api),
        ("cloud", json!({ "provider": "AWS", "region": head.region })),
        ("unmapped", Value::Object(unmapped)),
    ]) {
        event.insert(k.into(), v);
    }
    if !resources.is_empty() {
        event.insert("resources".into(), Value::Array(resources));
    }
    if let Some(r) = &request {
        event.insert(
            "http_request".into(),
            json!({
                "http_method": r.method,
                "url": {
                    "hostname": r.host.as_deref().unwrap_or(""),
                    "path": r.path.as_deref().unwrap_or(""),
                    "url_string": r.target,
                },
                "uid": r.seq.to_string(),
            }),
        );
    }
    if let Some(s) = status {
        event.insert("status_code".into(), json!(s.to_string()));
    }
    if let Some(detail) = failure {
        event.insert("status_detail".into(), json!(detail));
    }
    if let (Some(c), Some(row)) = (&call, record) {
        event.insert("start_time".into(), json!(time));
        event.insert("end_time".into(), json!(ms(row.at)));
        event.insert("duration".into(), json!(c.duration_us / 1000));
    }
    Value::Object(event)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::*;
    use crate::cli::views::http::tests::journal_with;
    use crate::cli::views::http::HTTP_ACTIVITY;

    fn head(action: &str, resources: &[&str], params: Value) -> AwsCallHead {
        let (service, _) = action.split_once(':').expect("service:Operation");
        AwsCallHead {
            service: service.into(),
            action: action.into(),
            region: "us-east-1".into(),
            resources: resources.iter().map(|r| r.to_string()).collect(),
            params,
            api: if service == "s3" { "rest-xml" } else { "query" }.into(),
            client_key_id: "AKIANHIAGENTPLACEHLD".into(),
            presigned: false,
            payload: "hash".into(),
        }
    }

    fn request(
        seq: u64,
        method: &str,
        target: &str,
        aws: Option<AwsCallHead>,
    ) -> HttpRequest<'static> {
        HttpRequest {
            seq,
            method: method.to_owned().into(),
            host: Some("127.0.0.1".into()),
            target: target.to_owned().into(),
            path: Some(target.split('?').next().unwrap_or("/").to_owned().into()),
            version: "HTTP/1.1".into(),
            verdict: "allow".into(),
            enforced: true,
            action: "forwarded".into(),
            aws,
            ..HttpRequest::default()
        }
    }

    fn to_json(v: &impl serde::Serialize) -> String {
        serde_json::to_string(v).expect("serialize")
    }

    fn response(seq: u64, status: u16, by_agent: bool, error: Option<&str>) -> String {
        serde_json::to_string(&HttpResponse {
            seq,
            status,
            by_agent,
            duration_us: 1_000,
            error: error.map(|e| e.to_owned().into()),
            ..HttpResponse::default()
        })
        .expect("serialize")
    }

    fn record(call: AwsCall) -> String {
        serde_json::to_string(&call).expect("serialize")
    }

    /// An AWS session as the proxy journals it: an allowed sts:GetCallerIdentity, an
    /// iam:CreateUser refused by a rule, an s3:GetObject AWS answers 404, a request
    /// refused before it was named (a bad signature: no `aws`, no record) and a call
    /// whose server could not be reached (no record).
    async fn aws_journal(path: &Path) -> SessionId {
        let sts = head("sts:GetCallerIdentity", &[], Value::Null);
        let iam = head(
            "iam:CreateUser",
            &["mallory"],
            json!({"UserName": "mallory"}),
        );
        let s3 = head(
            "s3:GetObject",
            &[
                "artifacts/build/app.bin",
                "arn:aws:s3:::artifacts/build/app.bin",
            ],
            json!({"Bucket": "artifacts", "Key": "build/app.bin"}),
        );
        let refused = to_json(&HttpRequest {
            verdict: "deny".into(),
            rule: Some("no-iam-users".into()),
            action: "refused".into(),
            ..request(2, "POST", "/", Some(iam.clone()))
        });
        let unsigned = to_json(&HttpRequest {
            verdict: "deny".into(),
            action: "refused".into(),
            reason: Some("nhi-agent: the signature does not match".into()),
            ..request(4, "POST", "/", None)
        });
        let call = |seq, head: &AwsCallHead| AwsCall {
            seq,
            head: head.clone(),
            workload: "bot".into(),
            enforced: true,
            verdict: "allow".into(),
            outcome: "forwarded".into(),
            signed_as: Some("AKIAADMIN (file /etc/nhi-agent/aws)".into()),
            status: 200,
            request_id: Some(format!("req-{seq}")),
            request_bytes: Some(43),
            response_bytes: Some(400),
            duration_us: 1_500,
            ..AwsCall::default()
        };
        journal_with(
            path,
            "aws",
            vec![
                (
                    100,
                    kind::REQUEST,
                    to_json(&request(1, "POST", "/", Some(sts.clone()))),
                ),
                (1_500, kind::RESPONSE, response(1, 200, false, None)),
                (1_600, AWS_CALL, record(call(1, &sts))),
                (1_700, kind::REQUEST, refused),
                (1_750, kind::RESPONSE, response(2, 403, true, None)),
                (
                    1_800,
                    AWS_CALL,
                    record(AwsCall {
                        verdict: "deny".into(),
                        rule: Some("no-iam-users".into()),
                        outcome: "refused".into(),
                        signed_as: None,
                        status: 403,
                        error_code: Some("AccessDenied".into()),
                        request_id: Some("nhi-1-2".into()),
                        response_bytes: None,
                        duration_us: 100,
                        ..call(2, &iam)
                    }),
                ),
                (
                    1_900,
                    kind::REQUEST,
                    to_json(&request(
                        3,
                        "GET",
                        "/artifacts/build/app.bin",
                        Some(s3.clone()),
                    )),
                ),
                (2_000, kind::RESPONSE, response(3, 404, false, None)),
                (
                    2_100,
                    AWS_CALL,
                    record(AwsCall {
                        status: 404,
                        error_code: Some("NoSuchKey".into()),
                        ..call(3, &s3)
                    }),
                ),
                (2_200, kind::REQUEST, unsigned),
                (2_250, kind::RESPONSE, response(4, 403, true, None)),
                (
                    2_300,
                    kind::REQUEST,
                    to_json(&request(5, "POST", "/", Some(sts))),
                ),
                (
                    2_400,
                    kind::RESPONSE,
                    response(5, 502, true, Some("upstream request failed: refused")),
                ),
            ],
        )
        .await
    }

    #[derive(Debug, Parser)]
    struct EventsCli {
        #[command(flatten)]
        args: crate::cli::events::EventsArgs,
    }

    /// `events --json PATH EXTRA...`: (kind, seq) of each event.
    fn events(path: &Path, extra: &[&str]) -> Vec<(String, u64)> {
        let mut argv = vec!["events", "--json", path.to_str().expect("utf-8")];
        argv.extend_from_slice(extra);
        let args = EventsCli::try_parse_from(argv).expect("arguments").args;
        let mut out = Vec::new();
        crate::cli::events::write_events(&args, &mut out).expect("events");
        String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
            .map(|e| {
                (
                    e["kind"].as_str().unwrap_or("").to_owned(),
                    e["data"]["seq"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn replay_adds_a_line_per_call_to_the_http_exchange() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let id = aws_journal(&path).await;
        let timeline = &super::super::replay_timeline(&path, id);
        assert_eq!(
            timeline,
            "timeline\n\
             \x20 +0.000000s  session start\n\
             \x20 +0.000100s  > POST / HTTP/1.1\n\
             \x20 +0.001500s  < 200  1.000 ms\n\
             \x20 +0.001600s  aws sts:GetCallerIdentity us-east-1 -> 200 request-id req-1\n\
             \x20                 signed as AKIAADMIN (file /etc/nhi-agent/aws)\n\
             \x20 +0.001700s  > POST / HTTP/1.1   [deny by rule no-iam-users: refused]\n\
             \x20 +0.001750s  < 403 (from the agent)  1.000 ms\n\
             \x20 +0.001800s  aws iam:CreateUser us-east-1 [mallory] -> 403 AccessDenied (refused by rule no-iam-users) request-id nhi-1-2\n\
             \x20                 params {\"UserName\":\"mallory\"}\n\
             \x20 +0.001900s  > GET /artifacts/build/app.bin HTTP/1.1\n\
             \x20 +0.002000s  < 404  1.000 ms\n\
             \x20 +0.002100s  aws s3:GetObject us-east-1 [artifacts/build/app.bin] -> 404 NoSuchKey request-id req-3\n\
             \x20                 signed as AKIAADMIN (file /etc/nhi-agent/aws)\n\
             \x20                 params {\"Bucket\":\"artifacts\",\"Key\":\"build/app.bin\"}\n\
             \x20 +0.002200s  > POST / HTTP/1.1   [deny: refused: nhi-agent: the signature does not match]\n\
             \x20 +0.002250s  < 403 (from the agent)  1.000 ms\n\
             \x20 +0.002300s  > POST / HTTP/1.1\n\
             \x20 +0.002400s  < 502 (from the agent)  1.000 ms\n\
             \x20                upstream request failed: refused\n\
             \x20 +0.003000s  session end: client closed\n\
             \x20 5 requests, 2 refused, 1 server errors\n\
             \x20 3 AWS calls: 2 forwarded (1 answered with an error), 1 refused\n"
        );
    }

    #[test]
    fn the_events_table_reads_a_call_in_one_line() {
        let call = AwsCall {
            seq: 2,
            head: head("iam:CreateUser", &["mallory"], Value::Null),
            verdict: "deny".into(),
            rule: Some("no-iam-users".into()),
            outcome: "refused".into(),
            status: 403,
            error_code: Some("AccessDenied".into()),
            request_id: Some("nhi-3-2".into()),
            ..AwsCall::default()
        };
        let data = serde_json::to_value(&call).expect("value");
        assert_eq!(
            Aws.detail(AWS_CALL, &data).as_deref(),
            Some("iam:CreateUser us-east-1 [mallory] -> 403 AccessDenied (refused by rule no-iam-users) request-id nhi-3-2")
        );
        // Approved after a hold; a deny only observed; not signed.
        let approved = AwsCall {
            verdict: "approve".into(),
            rule: Some("keys".into()),
            outcome: "forwarded".into(),
            status: 200,
            error_code: None,
            request_id: None,
            ..call.clone()
        };
        assert_eq!(
            summary(&approved),
            "iam:CreateUser us-east-1 [mallory] -> 200 (approve by rule keys: forwarded)"
        );
        let unsigned = AwsCall {
            verdict: "allow".into(),
            rule: None,
            outcome: "not signed".into(),
            status: 502,
            error_code: Some("AccessDenied".into()),
            ..approved
        };
        assert_eq!(
            summary(&unsigned),
            "iam:CreateUser us-east-1 [mallory] -> 502 AccessDenied (not signed)"
        );
        // An `http_request` names its call; other kinds read as HTTP ones.
        let r = request(
            1,
            "POST",
            "/",
            Some(head("sts:GetCallerIdentity", &[], Value::Null)),
        );
        let r = serde_json::to_value(&r).expect("JSON");
        assert_eq!(
            Aws.detail(kind::REQUEST, &r).as_deref(),
            Some("POST / (sts:GetCallerIdentity)")
        );
        assert_eq!(
            Aws.detail(kind::RESPONSE, &json!({"seq": 1, "status": 200}))
                .as_deref(),
            Some("200")
        );
        // Not an aws_call: the generic rendering.
        assert_eq!(Aws.detail(AWS_CALL, &json!({"seq": 1})), None);
    }

    #[test]
    fn resources_fold_a_name_into_its_arn() {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let s3 = list(&["b/k", "arn:aws:s3:::b/k", "other"]);
        assert_eq!(
            resources(&s3),
            [
                Resource {
                    uid: Some("arn:aws:s3:::b/k"),
                    name: Some("b/k")
                },
                Resource {
                    uid: None,
                    name: Some("other")
                },
            ]
        );
        let iam = list(&["arn:aws:iam::123456789012:role/deploy", "deploy"]);
        assert_eq!(
            resources(&iam),
            [
                Resource {
                    uid: Some("arn:aws:iam::123456789012:role/deploy"),
                    name: None
                },
                Resource {
                    uid: None,
                    name: Some("deploy")
                },
            ]
        );
        assert_eq!(
            arn_resource("arn:aws:sqs:us-east-1:1:queue:with:colons"),
            Some("queue:with:colons")
        );
        assert_eq!(arn_resource("arn:aws"), None);
    }

    #[test]
    fn activity_follows_the_operation_verb() {
        for (operation, id) in [
            ("CreateUser", 1),
            ("RunInstances", 1),
            ("GetCallerIdentity", 2),
            ("ListObjectsV2", 2),
            ("HeadObject", 2),
            ("Query", 2),
            ("PutObject", 3),
            ("UpdateSecret", 3),
            ("TagResource", 3),
            ("DeleteUser", 4),
            ("TerminateInstances", 4),
            ("AssumeRole", 99),
            ("Invoke", 99),
            // A whole word only.
            ("Settle", 99),
            ("Gettysburg", 99),
        ] {
            assert_eq!(operation_activity(operation).0, id, "{operation}");
        }
    }

    #[tokio::test]
    async fn ocsf_is_api_activity_per_call_and_http_activity_for_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        aws_journal(&path).await;
        let all = crate::cli::export::tests::export(&path, &["--format", "ocsf"]);
        for e in &all {
            assert_eq!(
                crate::cli::ocsf::check_required(e),
                Vec::<String>::new(),
                "{e:#}"
            );
        }
        let api: Vec<&Value> = all
            .iter()
            .filter(|e| e["class_uid"] == API_ACTIVITY)
            .collect();
        let http: Vec<&Value> = all
            .iter()
            .filter(|e| e["class_uid"] == HTTP_ACTIVITY)
            .collect();
        // Each request once: four calls, one request refused before it was named.
        assert_eq!(api.len(), 4, "{api:#?}");
        assert_eq!(http.len(), 1, "{http:#?}");
        assert_eq!(http[0]["http_request"]["uid"], "4");
        assert_eq!(http[0]["disposition"], "Blocked");

        let (sts, iam, s3, unreachable) = (api[0], api[1], api[2], api[3]);
        assert_eq!(sts["type_uid"], 600302);
        assert_eq!(sts["activity_name"], "Read");
        assert_eq!(sts["api"]["operation"], "GetCallerIdentity");
        assert_eq!(sts["api"]["service"]["name"], "sts");
        assert_eq!(sts["api"]["request"]["uid"], "req-1");
        assert_eq!(sts["api"]["response"]["code"], 200);
        assert_eq!(
            sts["cloud"],
            json!({"provider": "AWS", "region": "us-east-1"})
        );
        assert_eq!(
            (sts["status_id"].as_u64(), sts["disposition_id"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(sts["actor"]["app_name"], "bot");
        assert!(sts.get("resources").is_none(), "{sts:#}");
        assert_eq!(sts["http_request"]["http_method"], "POST");
        assert_eq!(
            sts["unmapped"]["aws_signed_as"],
            "AKIAADMIN (file /etc/nhi-agent/aws)"
        );
        assert_eq!(sts["duration"], 1);
        assert_eq!(
            sts["end_time"].as_i64().unwrap() - sts["start_time"].as_i64().unwrap(),
            1
        );
        // The record is the event the activity names.
        assert!(
            sts["metadata"]["original_time"]
                .as_str()
                .unwrap()
                .ends_with(":00.001600Z"),
            "{sts:#}"
        );

        assert_eq!(iam["activity_id"], 1);
        assert_eq!(iam["api"]["operation"], "CreateUser");
        assert_eq!(iam["api"]["request"]["uid"], "nhi-1-2");
        assert_eq!(
            iam["api"]["response"],
            json!({"code": 403, "error": "AccessDenied"})
        );
        assert_eq!(
            (
                iam["status_id"].as_u64(),
                iam["status_code"].as_str(),
                iam["status_detail"].as_str()
            ),
            (Some(2), Some("403"), Some("AccessDenied"))
        );
        assert_eq!(
            (iam["action_id"].as_u64(), iam["disposition"].as_str()),
            (Some(2), Some("Blocked"))
        );
        assert_eq!(iam["severity_id"], 3);
        assert_eq!(iam["resources"], json!([{"name": "mallory"}]));
        assert_eq!(iam["unmapped"]["request_rule"], "no-iam-users");
        assert_eq!(iam["unmapped"]["request_action"], "refused");
        assert_eq!(
            iam["unmapped"]["aws_params"],
            json!({"UserName": "mallory"})
        );
        assert_eq!(
            iam["message"],
            "iam:CreateUser us-east-1 [mallory] -> 403 AccessDenied (refused by rule no-iam-users) request-id nhi-1-2"
        );

        assert_eq!(s3["activity_id"], 2);
        assert_eq!(
            s3["resources"],
            json!([{"uid": "arn:aws:s3:::artifacts/build/app.bin", "name": "artifacts/build/app.bin"}])
        );
        assert_eq!(
            (s3["status_id"].as_u64(), s3["disposition_id"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(s3["status_detail"], "NoSuchKey");

        // No record: from the request and the agent's 502, at the end.
        assert_eq!(unreachable["api"]["operation"], "GetCallerIdentity");
        assert!(
            unreachable["api"].get("request").is_none(),
            "{unreachable:#}"
        );
        assert_eq!(unreachable["status_id"], 2);
        assert_eq!(
            unreachable["status_detail"],
            "upstream request failed: refused"
        );
        assert_eq!(unreachable["http_request"]["uid"], "5");

        // A record read without its request (`--kind aws_call`) still maps.
        let alone =
            crate::cli::export::tests::export(&path, &["--format", "ocsf", "--kind", "aws_call"]);
        let alone: Vec<&Value> = alone
            .iter()
            .filter(|e| e["class_uid"] == API_ACTIVITY)
            .collect();
        assert_eq!(alone.len(), 3, "{alone:#?}");
        assert_eq!(alone[1]["disposition"], "Blocked");
        assert_eq!(alone[1]["unmapped"]["request_enforced"], true);
        for e in alone {
            assert_eq!(
                crate::cli::ocsf::check_required(e),
                Vec::<String>::new(),
                "{e:#}"
            );
        }
    }

    #[tokio::test]
    async fn calls_are_found_by_action_resources_service_and_verdict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        aws_journal(&path).await;
        let call = |seq| (AWS_CALL.to_owned(), seq);
        let request = |seq| (kind::REQUEST.to_owned(), seq);
        assert_eq!(events(&path, &["--text", "iam:CreateUser"]), [call(2)]);
        // The S3 request's target names the object too.
        assert_eq!(
            events(&path, &["--text", "build/app.bin"]),
            [request(3), call(3)]
        );
        assert_eq!(
            events(&path, &["--text", "s3:GetObject artifacts/"]),
            [call(3)]
        );
        assert_eq!(events(&path, &["--regex", "^sts$"]), [call(1)]);
        assert_eq!(events(&path, &["--text", "mallory"]), [call(2)]);
        assert_eq!(
            events(&path, &["--verdict", "denied"]),
            [request(2), call(2), request(4)]
        );
        assert_eq!(
            events(&path, &["--verdict", "denied", "--kind", "aws_call"]),
            [call(2)]
        );
        assert_eq!(
            events(&path, &["--verdict", "allowed", "--kind", "aws_call"]),
            [call(1), call(3)]
        );
        assert_eq!(
            events(&path, &["--protocol", "aws", "--kind", "aws_call"]).len(),
            3
        );
    }
}
