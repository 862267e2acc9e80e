//! HTTP sessions (`protocol = "http"`): a replay like `curl -v` (requests with their
//! verdict, response heads), the `events` table summary, and OCSF HTTP Activity (4002),
//! read from the typed events of `proxy::http::events`.
use std::collections::HashMap;
use std::io::{self, Write};

use serde_json::{json, Value};

use super::opaque::Timeline;
use super::{OcsfRequests, ProtocolView, Replay, RequestEvents};
use crate::cli::ocsf::{base, context_unmapped, ms, outcome, request_members};
use crate::cli::replay::{format_offset_us, us_since_epoch};
use crate::cli::select::Selected;
use crate::cli::sessions::sanitize;
use crate::journal::{EventRow, SessionId, SessionRow, SetSession};
use crate::proxy::http::events::{
    kind, BodyExcerpt, HttpRequest, HttpResponse, HttpResponseEnd, WsFrame,
};

/// OCSF HTTP Activity.
pub const HTTP_ACTIVITY: u64 = 4002;

/// The HTTP view.
pub struct Http;

impl ProtocolView for Http {
    fn protocol(&self) -> &'static str {
        "http"
    }

    fn replay(&self, session: &SessionRow) -> Box<dyn Replay> {
        Box::new(Exchange {
            start_us: us_since_epoch(session.started_at),
            requests: 0,
            refused: 0,
            server_errors: 0,
            timeline: Timeline::new(session),
        })
    }

    fn ocsf(&self) -> Option<Box<dyn OcsfRequests>> {
        Some(Box::<HttpActivity>::default())
    }

    /// `--text 'DELETE /admin'` finds requests by method and request target as sent (the
    /// query's values masked) or by method and normalised path (what policy judged:
    /// `/%61dmin` is found as `/admin`).
    fn requests(&self) -> Option<RequestEvents> {
        Some(RequestEvents {
            kind: kind::REQUEST,
            texts: &[&["method", "target"], &["method", "path"]],
            action: "action",
        })
    }

    fn detail(&self, kind: &str, data: &Value) -> Option<String> {
        match kind {
            kind::REQUEST => {
                let r = HttpRequest::read(data)?;
                let mut line = format!("{} {}", r.method, r.target);
                if r.verdict != "allow" || r.action != "forwarded" {
                    line = format!("[{} {}] {line}", r.verdict, r.action);
                }
                Some(line)
            }
            kind::RESPONSE => {
                let r = HttpResponse::read(data)?;
                let by = if r.by_agent { " (agent)" } else { "" };
                Some(format!("{}{by}", r.status))
            }
            kind::WS_FRAME => {
                let f = WsFrame::read(data)?;
                Some(format!("{} {}", f.from, frame_line(&f)))
            }
            _ => None,
        }
    }
}

/// A WebSocket frame in one line: `text 15 B "hello"`, `close 1000 "bye"`.
fn frame_line(f: &WsFrame<'_>) -> String {
    let mut line = sanitize(&f.opcode).into_owned();
    if let Some(message) = &f.message {
        line.push_str(&format!(" ({})", sanitize(message)));
    }
    if !f.fin {
        line.push_str(" (more follows)");
    }
    if let Some(code) = f.close_code {
        line.push_str(&format!(" {code}"));
    }
    line.push_str(&format!(" {} B", f.size));
    if let Some(excerpt) = &f.excerpt {
        let cut = if f.excerpt_cut { "..." } else { "" };
        line.push_str(&format!(" \"{}\"{cut}", sanitize(excerpt)));
    }
    line
}

/// The replay of an HTTP session.
struct Exchange {
    start_us: i64,
    requests: u64,
    refused: u64,
    server_errors: u64,
    timeline: Timeline,
}

const PAD: &str = "               ";

impl Replay for Exchange {
    fn event(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<()> {
        let offset = format_offset_us(us_since_epoch(event.at).saturating_sub(self.start_us));
        let null = Value::Null;
        let data = event.data.as_ref().unwrap_or(&null);
        match event.kind.as_str() {
            kind::REQUEST if HttpRequest::read(data).is_some() => {
                let r = HttpRequest::read(data).expect("checked");
                self.requests += 1;
                let mut note = String::new();
                if r.action == "refused" {
                    self.refused += 1;
                }
                if r.verdict != "allow" || r.action != "forwarded" {
                    let rule = r
                        .rule
                        .as_deref()
                        .map(|rule| format!(" by rule {}", sanitize(rule)))
                        .unwrap_or_default();
                    let mode = if r.enforced {
                        ""
                    } else {
                        ", observe mode: not enforced"
                    };
                    let why = r
                        .reason
                        .as_deref()
                        .map(|why| format!(": {}", sanitize(why)))
                        .unwrap_or_default();
                    note = format!("   [{}{rule}: {}{mode}{why}]", r.verdict, r.action);
                }
                writeln!(
                    out,
                    "  {offset}  > {} {} {}{note}",
                    sanitize(&r.method),
                    sanitize(&r.target),
                    sanitize(&r.version)
                )?;
                for (name, value) in &r.headers {
                    writeln!(out, "{PAD}> {}: {}", sanitize(name), sanitize(value))?;
                }
                if let Some(n) = r.body_bytes {
                    writeln!(out, "{PAD}> ({n} B body)")?;
                }
                body_lines(out, '>', &r.excerpt)
            }
            kind::RESPONSE if HttpResponse::read(data).is_some() => {
                let r = HttpResponse::read(data).expect("checked");
                if r.status >= 500 {
                    self.server_errors += 1;
                }
                let by = if r.by_agent { " (from the agent)" } else { "" };
                let length = r
                    .content_length
                    .map(|n| format!("  {n} B"))
                    .unwrap_or_default();
                let version = r
                    .version
                    .as_deref()
                    .map(|v| format!("{} ", sanitize(v)))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "  {offset}  < {version}{}{by}{length}  {:.3} ms",
                    r.status,
                    r.duration_us as f64 / 1000.0
                )?;
                if let Some(error) = &r.error {
                    writeln!(out, "{PAD}  {}", sanitize(error))?;
                }
                for (name, value) in &r.headers {
                    writeln!(out, "{PAD}< {}: {}", sanitize(name), sanitize(value))?;
                }
                if let Some(coding) = &r.decoded {
                    writeln!(
                        out,
                        "{PAD}< (decoded from {} to be masked)",
                        sanitize(coding)
                    )?;
                }
                masked_line(out, r.body_bytes, &r.masked, r.secret_echoes_in_body)?;
                body_lines(out, '<', &r.excerpt)
            }
            kind::RESPONSE_END if HttpResponseEnd::read(data).is_some() => {
                let r = HttpResponseEnd::read(data).expect("checked");
                writeln!(
                    out,
                    "  {offset}  < end of body {}  {:.3} ms",
                    r.seq,
                    r.duration_us as f64 / 1000.0
                )?;
                if let Some(error) = &r.error {
                    writeln!(out, "{PAD}  cut: {}", sanitize(error))?;
                }
                masked_line(out, Some(r.body_bytes), &r.masked, r.secret_echoes_in_body)?;
                body_lines(out, '<', &r.excerpt)
            }
            kind::WS_FRAME if WsFrame::read(data).is_some() => {
                let f = WsFrame::read(data).expect("checked");
                let arrow = if f.from == "client" { ">" } else { "<" };
                writeln!(out, "  {offset}  {arrow} ws {}", frame_line(&f))
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
            _ => self.timeline.event(out, event),
        }
    }

    fn finish(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "  {} requests, {} refused, {} server errors",
            self.requests, self.refused, self.server_errors
        )
    }
}

/// The body's size and what masking changed in it.
fn masked_line(
    out: &mut dyn Write,
    bytes: Option<u64>,
    masked: &[crate::mask::MaskedValues],
    secret_echoes: u64,
) -> io::Result<()> {
    let mut parts: Vec<String> = bytes.map(|n| format!("{n} B body")).into_iter().collect();
    for m in masked {
        parts.push(format!(
            "{} masked by {} ({})",
            m.values,
            sanitize(&m.rule),
            sanitize(&m.strategy)
        ));
    }
    if secret_echoes > 0 {
        parts.push(format!(
            "{secret_echoes} echoes of the injected secret masked"
        ));
    }
    if parts.is_empty() {
        return Ok(());
    }
    writeln!(out, "{PAD}  ({})", parts.join(", "))
}

/// The body excerpt, one line per line of it, like curl prints a body.
fn body_lines(out: &mut dyn Write, arrow: char, e: &BodyExcerpt) -> io::Result<()> {
    if let Some(why) = &e.excerpt_withheld {
        writeln!(out, "{PAD}{arrow} (no excerpt: {})", sanitize(why))?;
    }
    let Some(text) = &e.excerpt else {
        return Ok(());
    };
    writeln!(out, "{PAD}{arrow}")?;
    for line in text.lines() {
        writeln!(out, "{PAD}{arrow} {}", sanitize(line))?;
    }
    if e.excerpt_truncated {
        writeln!(out, "{PAD}{arrow} ...")?;
    }
    Ok(())
}

/// A request waiting for its response (and, when the agent streamed the body, for the
/// body's end).
struct Pending {
    journal_id: String,
    host_id: Option<String>,
    session: SetSession,
    request: EventRow,
    approval: Option<Value>,
    /// The response head, held while its `http_response_end` is due.
    response: Option<EventRow>,
}

/// HTTP requests, completed by their response (or, for a body the agent streamed, by the
/// body's end: `http_response.end_follows`), as OCSF HTTP Activity.
#[derive(Default)]
pub(super) struct HttpActivity {
    pending: HashMap<(String, SessionId, u64), Pending>,
    order: Vec<(String, SessionId, u64)>,
}

impl OcsfRequests for HttpActivity {
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
            return Vec::new();
        };
        let key = (s.segment.journal_id.clone(), session.row.id, seq);
        match e.kind.as_str() {
            kind::REQUEST => {
                let mut out = Vec::new();
                if let Some(old) = self.pending.remove(&key) {
                    out.push(activity(&old, old.response.as_ref(), None));
                }
                // Keys whose request completed are dropped from time to time, so that a
                // long-lived mapper (a live stream) does not grow with every request.
                if self.order.len() >= 2 * self.pending.len() + 64 {
                    let pending = &self.pending;
                    self.order.retain(|k| pending.contains_key(k));
                }
                self.order.push(key.clone());
                self.pending.insert(
                    key,
                    Pending {
                        journal_id: s.segment.journal_id.clone(),
                        host_id: s.segment.host_id.clone(),
                        session: session.clone(),
                        request: e.clone(),
                        approval: None,
                        response: None,
                    },
                );
                out
            }
            crate::session::gate::APPROVAL => {
                if let Some(p) = self.pending.get_mut(&key) {
                    p.approval = e.data.clone();
                }
                Vec::new()
            }
            kind::RESPONSE => {
                let end_follows = e
                    .data
                    .as_ref()
                    .and_then(HttpResponse::read)
                    .is_some_and(|r| r.end_follows);
                let Some(mut p) = self.pending.remove(&key) else {
                    return Vec::new();
                };
                if end_follows && p.response.is_none() {
                    p.response = Some(e.clone());
                    self.pending.insert(key, p);
                    return Vec::new();
                }
                vec![activity(&p, Some(e), None)]
            }
            kind::RESPONSE_END => match self.pending.remove(&key) {
                Some(mut p) => {
                    let response = p.response.take();
                    vec![activity(&p, response.as_ref(), Some(e))]
                }
                None => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    fn oldest_pending(&self) -> Option<i64> {
        self.pending.values().map(|p| p.request.id).min()
    }

    fn session_ended(&mut self, _journal_id: &str, _session: SessionId) {}

    fn finish(mut self: Box<Self>) -> Vec<Value> {
        let order = std::mem::take(&mut self.order);
        order
            .into_iter()
            .filter_map(|key| self.pending.remove(&key))
            .map(|p| activity(&p, p.response.as_ref(), None))
            .collect()
    }
}

/// `activity_id` and its caption for a method (OCSF 1.3.0; PATCH is Other there).
fn method_activity(method: &str) -> (u64, &'static str) {
    match method.to_ascii_uppercase().as_str() {
        "CONNECT" => (1, "Connect"),
        "DELETE" => (2, "Delete"),
        "GET" => (3, "Get"),
        "HEAD" => (4, "Head"),
        "OPTIONS" => (5, "Options"),
        "POST" => (6, "Post"),
        "PUT" => (7, "Put"),
        "TRACE" => (8, "Trace"),
        _ => (99, "Other"),
    }
}

/// One HTTP Activity: the request, its response head if one came, and the end of a
/// streamed body if that came too (its size, what was masked in it, how it ended).
fn activity(p: &Pending, response: Option<&EventRow>, end: Option<&EventRow>) -> Value {
    let null = Value::Null;
    let data = p.request.data.as_ref().unwrap_or(&null);
    let request = HttpRequest::read(data).unwrap_or_default();
    let response_data = response.and_then(|r| r.data.as_ref()).unwrap_or(&null);
    let answer = response.and_then(|_| HttpResponse::read(response_data));
    let body_end = end
        .and_then(|e| e.data.as_ref())
        .and_then(HttpResponseEnd::read);
    let (activity_id, activity_name) = method_activity(&request.method);
    let decision = p
        .approval
        .as_ref()
        .and_then(|a| a.get("decision"))
        .and_then(Value::as_str);
    let action = request.action.as_ref();
    let judged = outcome(action, &request.verdict, request.enforced, decision);
    let (severity_id, severity) = judged.severity;
    let (status_id, status) = match &answer {
        None => (0, "Unknown"),
        Some(a) if a.status >= 400 || a.error.is_some() => (2, "Failure"),
        // The head said success but the body was cut.
        Some(_) if body_end.as_ref().is_some_and(|b| b.error.is_some()) => (2, "Failure"),
        Some(_) => (1, "Success"),
    };
    let session = &p.session;
    let mut event = base(
        HTTP_ACTIVITY,
        "HTTP Activity",
        4,
        "Network Activity",
        activity_id,
        activity_name,
        ms(p.request.at),
        (severity_id, severity),
    );
    let mut message = format!("{} {}", request.method, request.target);
    if action != "forwarded" {
        message = format!("{message} [{}: {action}]", request.verdict);
    }
    let host = request.host.as_deref().unwrap_or("");
    let mut unmapped = context_unmapped(&p.journal_id, p.host_id.as_deref(), session);
    for (key, value) in [
        ("request_verdict", json!(request.verdict)),
        ("request_rule", json!(request.rule)),
        ("request_enforced", json!(request.enforced)),
        ("request_action", json!(request.action)),
        ("request_path", json!(request.path)),
        ("request_reason", json!(request.reason)),
    ] {
        if !value.is_null() {
            unmapped.insert(key.into(), value);
        }
    }
    if let Some(a) = &p.approval {
        unmapped.insert("approval".into(), a.clone());
    }
    let mut http_request = json!({
        "http_method": request.method,
        "version": request.version,
        "url": { "hostname": host, "path": request.path.as_deref().unwrap_or(""), "url_string": request.target },
        "http_headers": request.headers.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>(),
        "uid": request.seq.to_string(),
    });
    if let Some(n) = request.content_length {
        http_request["length"] = json!(n);
    }
    for (k, v) in request_members(
        message,
        (status_id, status),
        &judged,
        Some((p.journal_id.as_str(), &p.request)),
        session,
    )
    .into_iter()
    .chain([
        ("http_request", http_request),
        ("unmapped", Value::Object(unmapped)),
    ]) {
        event.insert(k.into(), v);
    }
    if let (Some(answer), Some(row)) = (&answer, response) {
        let mut http_response = json!({
            "code": answer.status,
            "http_headers": answer.headers.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>(),
        });
        // The body as the client got it (masked, decoded), else what the server declared.
        let length = body_end
            .as_ref()
            .map(|b| b.body_bytes)
            .or(answer.body_bytes)
            .or(answer.content_length);
        if let Some(n) = length {
            http_response["length"] = json!(n);
        }
        event.insert("http_response".into(), http_response);
        event.insert("status_code".into(), json!(answer.status.to_string()));
        let detail = answer
            .error
            .as_deref()
            .or(body_end.as_ref().and_then(|b| b.error.as_deref()));
        if let Some(detail) = detail {
            event.insert("status_detail".into(), json!(detail));
        }
        event.insert("start_time".into(), json!(ms(p.request.at)));
        let (end_time, duration_us) = match (&body_end, end) {
            (Some(b), Some(end_row)) => (ms(end_row.at), b.duration_us),
            _ => (ms(row.at), answer.duration_us),
        };
        event.insert("end_time".into(), json!(end_time));
        event.insert("duration".into(), json!(duration_us / 1000));
        // What the masks replaced in the body (head: a body masked whole; end: streamed).
        let masked = match &body_end {
            Some(b) if !b.masked.is_empty() => json!(b.masked),
            _ if !answer.masked.is_empty() => json!(answer.masked),
            _ => Value::Null,
        };
        if let Some(Value::Object(unmapped)) = event.get_mut("unmapped") {
            if !masked.is_null() {
                unmapped.insert("response_masked".into(), masked);
            }
            if let Some(decoded) = &answer.decoded {
                unmapped.insert("response_decoded".into(), json!(decoded));
            }
        }
    }
    Value::Object(event)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::journal::tests::{at_us, sample_start};
    use crate::journal::{self, Event, JournalOptions, SessionEnd};

    /// An HTTP session: an allowed GET answered 200, a DELETE refused by a rule.
    async fn http_journal(path: &std::path::Path) -> SessionId {
        let get = HttpRequest {
            seq: 1,
            method: "GET".into(),
            host: Some("api.internal".into()),
            target: "/users?id=7".into(),
            path: Some("/users".into()),
            version: "HTTP/1.1".into(),
            headers: vec![("authorization".into(), "[redacted]".into())],
            verdict: "allow".into(),
            enforced: true,
            action: "forwarded".into(),
            ..HttpRequest::default()
        };
        let ok = HttpResponse {
            seq: 1,
            status: 200,
            content_length: Some(42),
            duration_us: 1500,
            ..HttpResponse::default()
        };
        let delete = HttpRequest {
            seq: 2,
            method: "DELETE".into(),
            target: "/admin/../admin".into(),
            path: Some("/admin".into()),
            version: "HTTP/1.1".into(),
            verdict: "deny".into(),
            rule: Some("no-admin-deletes".into()),
            enforced: true,
            action: "refused".into(),
            ..HttpRequest::default()
        };
        let refused = HttpResponse {
            seq: 2,
            status: 403,
            by_agent: true,
            ..HttpResponse::default()
        };
        let json = |v: &dyn ToJson| v.json();
        journal_of(
            path,
            vec![
                (100, kind::REQUEST, json(&get)),
                (1_600, kind::RESPONSE, json(&ok)),
                (2_000, kind::REQUEST, json(&delete)),
                (2_100, kind::RESPONSE, json(&refused)),
            ],
        )
        .await
    }

    /// A journal with one HTTP session holding `events` (microseconds after its start,
    /// kind, data), ended at 3 ms.
    async fn journal_of(
        path: &std::path::Path,
        events: Vec<(i64, &'static str, String)>,
    ) -> SessionId {
        journal_with(path, "http", events).await
    }

    /// A journal with one session of `protocol` holding `events` (microseconds after its
    /// start, kind, data), ended at 3 ms.
    pub(crate) async fn journal_with(
        path: &std::path::Path,
        protocol: &str,
        events: Vec<(i64, &'static str, String)>,
    ) -> SessionId {
        let j = journal::open(path, JournalOptions::default()).expect("open");
        let h = j.handle();
        let mut start = sample_start("bot", "api", at_us(0));
        std::sync::Arc::make_mut(&mut start.identity).protocol = protocol.into();
        let id = h.start_session(start).await.expect("start");
        let events: Vec<Event> = events
            .into_iter()
            .map(|(us, kind, data)| Event {
                session: id,
                at: at_us(us),
                kind: Cow::Borrowed(kind),
                data,
            })
            .collect();
        h.record(&events).expect("record");
        h.flush().await.expect("flush");
        h.end_session(SessionEnd {
            id,
            ended_at: at_us(3_000),
            bytes_from_client: 100,
            bytes_from_server: 200,
            close_reason: "client closed".into(),
        })
        .await
        .expect("end");
        h.flush().await.expect("flush");
        tokio::task::spawn_blocking(move || j.close())
            .await
            .expect("join")
            .expect("close");
        id
    }

    /// The HTTP Activity events of `export --format ocsf`, each with every attribute
    /// OCSF requires.
    fn http_activities(path: &std::path::Path) -> Vec<Value> {
        let http: Vec<Value> = crate::cli::export::tests::export(path, &["--format", "ocsf"])
            .into_iter()
            .filter(|e| e["class_uid"] == HTTP_ACTIVITY)
            .collect();
        for e in &http {
            assert_eq!(
                crate::cli::ocsf::check_required(e),
                Vec::<String>::new(),
                "{e:#}"
            );
        }
        http
    }

    trait ToJson {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> ToJson for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("serialize")
        }
    }

    #[tokio::test]
    async fn replay_reads_like_curl_verbose_and_ocsf_is_http_activity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let id = http_journal(&path).await;
        let timeline = &super::super::replay_timeline(&path, id);
        assert_eq!(
            timeline,
            "timeline\n\
             \x20 +0.000000s  session start\n\
             \x20 +0.000100s  > GET /users?id=7 HTTP/1.1\n\
             \x20              > authorization: [redacted]\n\
             \x20 +0.001600s  < 200  42 B  1.500 ms\n\
             \x20 +0.002000s  > DELETE /admin/../admin HTTP/1.1   [deny by rule no-admin-deletes: refused]\n\
             \x20 +0.002100s  < 403 (from the agent)  0.000 ms\n\
             \x20 +0.003000s  session end: client closed\n\
             \x20 2 requests, 1 refused, 0 server errors\n"
        );

        let http = http_activities(&path);
        assert_eq!(http.len(), 2, "{http:#?}");
        assert_eq!(
            (
                http[0]["activity_id"].as_u64(),
                http[0]["status_id"].as_u64()
            ),
            (Some(3), Some(1))
        );
        assert_eq!(http[0]["http_request"]["url"]["path"], "/users");
        assert_eq!(http[0]["http_response"]["code"], 200);
        assert_eq!(
            (
                http[1]["activity_id"].as_u64(),
                http[1]["action_id"].as_u64()
            ),
            (Some(2), Some(2))
        );
        assert_eq!(http[1]["unmapped"]["request_rule"], "no-admin-deletes");

        // The events table names the request and the verdict.
        assert_eq!(
            Http.detail(
                kind::REQUEST,
                &serde_json::to_value(HttpRequest {
                    method: "DELETE".into(),
                    target: "/a".into(),
                    verdict: "deny".into(),
                    action: "refused".into(),
                    ..HttpRequest::default()
                })
                .expect("value")
            ),
            Some("[deny refused] DELETE /a".to_string())
        );
    }

    #[tokio::test]
    async fn ocsf_waits_for_the_end_of_a_streamed_body() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let get = |seq: u64, target: &str| HttpRequest {
            seq,
            method: "GET".into(),
            target: target.to_owned().into(),
            path: Some(target.to_owned().into()),
            version: "HTTP/1.1".into(),
            verdict: "allow".into(),
            enforced: true,
            action: "forwarded".into(),
            ..HttpRequest::default()
        };
        let head = |seq: u64| HttpResponse {
            seq,
            status: 200,
            duration_us: 400,
            end_follows: true,
            decoded: Some("gzip".into()),
            ..HttpResponse::default()
        };
        let end = |seq: u64, bytes: u64, error: Option<&str>| HttpResponseEnd {
            seq,
            body_bytes: bytes,
            duration_us: 2_000,
            masked: vec![crate::mask::MaskedValues {
                rule: "emails".into(),
                strategy: "redact".into(),
                values: 3,
            }],
            error: error.map(str::to_owned),
            ..HttpResponseEnd::default()
        };
        let json = |v: &dyn ToJson| v.json();
        journal_of(
            &path,
            vec![
                (100, kind::REQUEST, json(&get(1, "/feed"))),
                (500, kind::RESPONSE, json(&head(1))),
                (2_100, kind::RESPONSE_END, json(&end(1, 1234, None))),
                (2_200, kind::REQUEST, json(&get(2, "/events"))),
                (2_300, kind::RESPONSE, json(&head(2))),
                (
                    2_400,
                    kind::RESPONSE_END,
                    json(&end(2, 10, Some("the client left"))),
                ),
                // The agent stopped before this body ended: the head is all there is.
                (2_500, kind::REQUEST, json(&get(3, "/stuck"))),
                (2_600, kind::RESPONSE, json(&head(3))),
            ],
        )
        .await;
        let http = http_activities(&path);
        assert_eq!(http.len(), 3, "one activity per request: {http:#?}");
        let (feed, events_req, stuck) = (&http[0], &http[1], &http[2]);
        assert_eq!(feed["http_request"]["url"]["path"], "/feed");
        assert_eq!(feed["status_id"], 1);
        // The body as the client got it, its end, its length and what was masked in it.
        assert_eq!(feed["http_response"]["length"], 1234);
        assert_eq!(feed["duration"], 2);
        assert_eq!(
            feed["end_time"].as_i64().unwrap() - feed["start_time"].as_i64().unwrap(),
            2,
            "{feed:#}"
        );
        assert_eq!(feed["unmapped"]["response_masked"][0]["rule"], "emails");
        assert_eq!(feed["unmapped"]["response_masked"][0]["values"], 3);
        assert_eq!(feed["unmapped"]["response_decoded"], "gzip");
        // A cut body fails the request although the head said 200.
        assert_eq!(events_req["http_request"]["url"]["path"], "/events");
        assert_eq!(
            (
                events_req["status_id"].as_u64(),
                events_req["status_detail"].as_str()
            ),
            (Some(2), Some("the client left"))
        );
        // No end: reported from the head at the end of the export.
        assert_eq!(stuck["http_request"]["url"]["path"], "/stuck");
        assert_eq!(stuck["http_response"]["code"], 200);
        assert_eq!(stuck["status_id"], 1);
        assert!(stuck["http_response"].get("length").is_none(), "{stuck:#}");
    }

    #[test]
    fn websocket_frames_read_in_one_line() {
        let frame = |v: serde_json::Value| Http.detail(kind::WS_FRAME, &v).expect("a frame");
        assert_eq!(
            frame(
                json!({"seq": 1, "from": "client", "n": 1, "opcode": "text", "fin": true,
                         "size": 2000, "excerpt": "hello\nworld", "excerpt_cut": true})
            ),
            "client text 2000 B \"hello\\nworld\"..."
        );
        assert_eq!(
            frame(
                json!({"seq": 1, "from": "server", "n": 2, "opcode": "continuation",
                         "message": "binary", "fin": false, "size": 10})
            ),
            "server continuation (binary) (more follows) 10 B"
        );
        assert_eq!(
            frame(
                json!({"seq": 1, "from": "server", "n": 3, "opcode": "close", "fin": true,
                         "size": 5, "close_code": 1000, "excerpt": "bye"})
            ),
            "server close 1000 5 B \"bye\""
        );
    }
}
