//! The PostgreSQL session after authentication, sans IO: what to forward, what to
//! refuse, what to mask and what to journal, message by message.
//!
//! The IO loop ([`super::run`]) feeds every decoded client message to
//! [`Flow::on_client`] and every decoded server message to [`Flow::on_server`]. The flow
//! stages the bytes to send each way and the journal events; the loop journals the events
//! ([`Flow::take_events`]) and only then releases the staged bytes
//! ([`Flow::take_to_server`], [`Flow::take_to_client`]). That is record-before-forward at
//! the granularity of one read.
//!
//! # Matching answers to requests
//!
//! The server answers requests strictly in order, so the flow keeps a FIFO of what it
//! expects ([`Expect`]): one entry per forwarded Query, Parse, Bind, Describe, Execute,
//! Close, Sync and FunctionCall. A refused request has no server answer; its error is an
//! [`Expect::Injected`] entry that reaches the client once every answer queued before it
//! has been relayed, so the client sees answers in the order of its requests even when
//! it pipelines. An ErrorResponse in the extended protocol makes the server skip to the
//! next Sync; the flow drops the entries up to it likewise.
//!
//! # Refusing a statement
//!
//! A refused simple Query is answered with ErrorResponse (SQLSTATE 42501, naming the
//! rule) and ReadyForQuery with the transaction status the server last reported: the
//! server never saw the statement, so its state is unchanged and the session goes on. A
//! refused Parse makes the flow drop the client's messages up to its Sync, forward the
//! Sync (the server must answer what was forwarded before), and put the error in front of
//! that Sync's ReadyForQuery — the same shape as an error the server raised itself.
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use crate::journal::{Event, SessionId};
use crate::mask::{ColumnInfo, RowMasker};
use crate::policy::{self, Analysis, RecordResults, StatementVerdict, Verdict};
use crate::protocol::postgres::{
    encode, BackendMessage, Decoded, FieldDescription, FrontendMessage,
};
use crate::session::gate::{approval_on_standing, Action, Gate};

use super::events::{self, kind};
pub use crate::session::{
    DecisionNote, GrantCheck, HoldOutcome, HoldRequest, SessionRules, Standing, Step,
};

/// SQLSTATE insufficient_privilege: what PostgreSQL itself answers to a statement the
/// user may not run, so clients and their retry logic treat a refusal as such.
pub const SQLSTATE_REFUSED: &str = "42501";

/// Rows kept per statement in the journal with `record_results = "rows"`.
pub const MAX_RECORDED_ROWS: usize = 1000;
/// Bytes of one value or parameter kept in the journal.
const MAX_RECORDED_VALUE: usize = 1024;

/// A message that cannot be handled: the session must close (with this reason journaled).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FlowError(pub String);

/// A prepared statement, by name.
#[derive(Debug)]
struct Prepared {
    text: Arc<str>,
    analysis: Arc<Analysis>,
    verdict: Verdict,
    rule: Option<String>,
    /// From a Describe of the statement (formats still unknown: the Bind decides).
    columns: Option<Arc<Vec<FieldDescription>>>,
}

/// A bound portal, by name.
#[derive(Debug)]
struct Portal {
    statement: String,
    result_formats: Vec<i16>,
    params: Vec<String>,
    /// From a Describe of the portal (formats final).
    columns: Option<Arc<Vec<FieldDescription>>>,
}

/// One statement being answered: what its completion event will say.
#[derive(Debug)]
struct Run {
    seq: u64,
    started: Instant,
    columns: Vec<String>,
    masker: Option<RowMasker>,
    rows: u64,
    recorded: Vec<Vec<Option<String>>>,
    copy: Option<events::CopyCount>,
}

impl Run {
    fn new(seq: u64) -> Run {
        Run {
            seq,
            started: Instant::now(),
            columns: Vec::new(),
            masker: None,
            rows: 0,
            recorded: Vec::new(),
            copy: None,
        }
    }
}

/// A simple Query being answered: its statements in order, each completed by a
/// CommandComplete, EmptyQueryResponse or ErrorResponse.
#[derive(Debug)]
struct QueryRun {
    /// Sequence numbers of its statements, in order; `next` is the one being answered.
    seqs: Vec<u64>,
    next: usize,
    current: Option<Run>,
}

/// What the flow expects from the server, in order.
#[derive(Debug)]
enum Expect {
    /// The ReadyForQuery that ends the startup.
    Startup,
    Query(QueryRun),
    Parse,
    Bind,
    /// `hidden`: sent by the agent (to learn the columns for masking); its answer is
    /// not relayed.
    Describe {
        statement: Option<String>,
        portal: Option<String>,
        hidden: bool,
    },
    Execute(Run),
    Close,
    Sync {
        error: Option<Bytes>,
    },
    FunctionCall(Run),
    /// No server answer: an error the agent answers itself, then ReadyForQuery.
    Injected {
        error: Bytes,
    },
}

/// The session state.
pub struct Flow {
    session: SessionId,
    rules: Arc<SessionRules>,
    tx_status: u8,
    expect: VecDeque<Expect>,
    statements: HashMap<String, Prepared>,
    portals: HashMap<String, Portal>,
    /// A Parse was refused: drop client messages up to Sync, then answer this error.
    refused_until_sync: Option<Bytes>,
    /// The server reported an error since the last Sync (so an agent error need not follow).
    server_error_in_batch: bool,
    next_seq: u64,
    held: Option<Held>,
    to_server: BytesMut,
    to_client: BytesMut,
    events: Vec<Event>,
    /// The backend's real cancel key, and the one the client was given instead.
    pub cancel_key: Option<CancelKey>,
    fake_key: [u8; 4],
    /// Values the server reported (server_version, client_encoding, ...).
    pub parameters: HashMap<String, String>,
    /// Statements judged so far, and those refused.
    pub statements_seen: u64,
    pub statements_refused: u64,
    /// Verdict to action: enforce/observe, holds, standing approvals.
    gate: Gate,
}

/// What the agent keeps to forward a client's CancelRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelKey {
    pub pid: u32,
    pub real: Bytes,
    pub fake: Bytes,
}

#[derive(Debug)]
struct Held {
    message: Decoded<FrontendMessage>,
    seq: u64,
    rule: Option<String>,
    analysis: Arc<Analysis>,
    text: Arc<str>,
}

impl Flow {
    /// A flow for a session whose startup is done; `fake_key` is the cancel key the
    /// client will be given instead of the backend's.
    pub fn new(session: SessionId, rules: Arc<SessionRules>, fake_key: [u8; 4]) -> Flow {
        Flow {
            session,
            gate: Gate::new("postgres", rules.enforce, rules.approval_timeout()),
            rules,
            tx_status: b'I',
            expect: VecDeque::from([Expect::Startup]),
            statements: HashMap::new(),
            portals: HashMap::new(),
            refused_until_sync: None,
            server_error_in_batch: false,
            next_seq: 1,
            held: None,
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
            events: Vec::new(),
            cancel_key: None,
            fake_key,
            parameters: HashMap::new(),
            statements_seen: 0,
            statements_refused: 0,
        }
    }

    /// Installs the lookup of cross-session grants.
    pub fn set_grant_check(&mut self, check: GrantCheck) {
        self.gate.set_grant_check(check);
    }

    /// Observe mode: the statements since the last call that would have been held.
    pub fn take_would_hold(&mut self) -> Vec<HoldRequest> {
        self.gate.take_would_hold()
    }

    /// Journals that statement `seq` passed on a standing approval.
    fn passed_on(&mut self, seq: u64, standing: &Standing) {
        self.event(
            crate::session::gate::APPROVAL,
            &approval_on_standing(seq, standing),
        );
    }

    /// The journal events staged since the last call; journal them before taking the bytes.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// True when events are staged.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Bytes to forward to the server (after the events are journaled).
    pub fn take_to_server(&mut self) -> BytesMut {
        self.to_server.split()
    }

    /// Bytes to send to the client (after the events are journaled).
    pub fn take_to_client(&mut self) -> BytesMut {
        self.to_client.split()
    }

    /// Whether a statement is waiting for approval.
    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Stages an event built elsewhere (by the session engine), behind those staged.
    pub fn push_event(&mut self, event: Event) {
        self.events.push(event);
    }

    /// A journal event of this session, stamped now.
    pub fn event(&mut self, kind: &'static str, data: &impl Serialize) {
        self.events.push(Event::of(self.session, kind, data));
    }

    fn seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.statements_seen += 1;
        seq
    }

    /// How the server will lex the next query string: as it reported
    /// `standard_conforming_strings` (on unless reported off), and with backslashes
    /// taken as escapes while anything is still in flight, since a statement in the
    /// pipeline may turn the setting off before this one is parsed (a query string that
    /// then holds a backslash is one opaque statement).
    fn analyze_options(&self) -> policy::AnalyzeOptions {
        let reported_on = self
            .parameters
            .get("standard_conforming_strings")
            .is_none_or(|v| v == "on");
        policy::AnalyzeOptions {
            standard_conforming_strings: reported_on && self.expect.is_empty(),
        }
    }

    /// The verdict for some SQL text, and the analysis it came from.
    fn judge(&self, sql: &str) -> (Arc<Analysis>, Verdict, Option<String>) {
        let (analysis, verdict, rule, _) = self.judge_each(sql);
        (analysis, verdict, rule)
    }

    /// [`Flow::judge`], with the verdict of each statement of the string.
    fn judge_each(
        &self,
        sql: &str,
    ) -> (
        Arc<Analysis>,
        Verdict,
        Option<String>,
        Vec<StatementVerdict>,
    ) {
        let analysis = policy::AnalysisCache::global().analyze(sql, self.analyze_options());
        let (mut verdict, mut rule, per_statement) = match &self.rules.policy {
            Some(p) => {
                let d = p.decide(&analysis);
                (d.verdict, d.rule, d.per_statement)
            }
            None => (Verdict::Allow, None, Vec::new()),
        };
        // COPY ... TO sends rows as text lines the agent cannot attribute to column
        // names, so with masks in force it would be a way around them.
        if verdict != Verdict::Deny
            && !self.rules.masks.is_empty()
            && analysis
                .statements
                .iter()
                .any(|s| s.kinds.contains(policy::StatementKind::CopyTo))
        {
            verdict = Verdict::Deny;
            rule = Some("masks-forbid-copy-to".to_owned());
        }
        (analysis, verdict, rule, per_statement)
    }

    fn refusal(&self, rule: Option<&str>, verdict: Verdict) -> Bytes {
        let why = match verdict {
            Verdict::Approve => "was not approved",
            _ => "is not allowed",
        };
        let message = match rule {
            Some(rule) => format!("nhi-agent: statement {why} by policy rule \"{rule}\""),
            None => format!("nhi-agent: statement {why} by policy (default verdict)"),
        };
        encode::error_response("ERROR", SQLSTATE_REFUSED, &message)
    }

    #[allow(clippy::too_many_arguments)]
    fn statement_event(
        &mut self,
        seq: u64,
        protocol: &'static str,
        text: &str,
        analysis: &Analysis,
        names: (Option<&str>, Option<&str>),
        params: &[String],
        verdict: Verdict,
        rule: Option<&str>,
        action: &'static str,
    ) {
        let mut kinds = Vec::new();
        let mut tables = Vec::new();
        let mut functions = Vec::new();
        for s in &analysis.statements {
            for k in s.kinds.iter() {
                let k = Cow::Borrowed(k.as_str());
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
            tables.extend(s.tables.iter().cloned());
            functions.extend(s.functions.iter().cloned());
        }
        tables.dedup();
        functions.dedup();
        let event = events::Statement {
            seq,
            protocol: Cow::Borrowed(protocol),
            text: Cow::Borrowed(text),
            statement: names.0.map(Cow::Borrowed),
            portal: names.1.map(Cow::Borrowed),
            params: Cow::Borrowed(params),
            kinds,
            tables: Cow::Borrowed(&tables),
            functions: Cow::Borrowed(&functions),
            verdict: Cow::Borrowed(verdict.as_str()),
            rule: rule.map(Cow::Borrowed),
            enforced: self.rules.enforce,
            action: Cow::Borrowed(action),
        };
        self.event(kind::STATEMENT, &event);
    }

    fn refused_end(&mut self, seq: u64, error: &Bytes) {
        let message = error_message(error);
        let end = events::StatementEnd {
            seq,
            error: Some(events::ErrorSummary {
                sqlstate: Cow::Borrowed(SQLSTATE_REFUSED),
                message: Cow::Borrowed(&message),
            }),
            ..events::StatementEnd::default()
        };
        self.event(kind::STATEMENT_END, &end);
        self.statements_refused += 1;
    }

    // ---------------------------------------------------------------- client side

    /// Handles one client message. Forwarded messages are staged as their raw bytes.
    pub fn on_client(&mut self, msg: Decoded<FrontendMessage>) -> Result<Step, FlowError> {
        debug_assert!(self.held.is_none(), "no client message while holding");
        if let Some(error) = &self.refused_until_sync {
            // The extended-protocol batch of a refused Parse: drop up to the Sync.
            match msg.message {
                FrontendMessage::Sync => {
                    let error = error.clone();
                    self.refused_until_sync = None;
                    self.to_server.extend_from_slice(&msg.raw);
                    self.expect.push_back(Expect::Sync { error: Some(error) });
                }
                FrontendMessage::Terminate => return Ok(Step::Terminate),
                _ => {}
            }
            return Ok(Step::Continue);
        }
        match &msg.message {
            FrontendMessage::Query { sql } => {
                let sql = sql.as_str().to_owned();
                let (analysis, verdict, rule, per_statement) = self.judge_each(&sql);
                self.on_query(msg, sql.into(), analysis, (verdict, rule), per_statement)
            }
            FrontendMessage::Parse { name, sql, .. } => {
                let text: Arc<str> = sql.as_str().into();
                let (analysis, verdict, rule) = self.judge(&text);
                let name = name.as_str().to_owned();
                self.on_parse(msg, name, text, analysis, verdict, rule)
            }
            FrontendMessage::Bind {
                portal,
                statement,
                param_formats,
                params,
                result_formats,
            } => {
                let params = self.journal_params(param_formats, params);
                self.portals.insert(
                    portal.as_str().to_owned(),
                    Portal {
                        statement: statement.as_str().to_owned(),
                        result_formats: result_formats.clone(),
                        params,
                        columns: None,
                    },
                );
                self.forward(&msg.raw, Expect::Bind);
                Ok(Step::Continue)
            }
            FrontendMessage::Describe { kind, name } => {
                let name = name.as_str().to_owned();
                let (statement, portal) = if *kind == b'S' {
                    (Some(name), None)
                } else {
                    (None, Some(name))
                };
                self.forward(
                    &msg.raw,
                    Expect::Describe {
                        statement,
                        portal,
                        hidden: false,
                    },
                );
                Ok(Step::Continue)
            }
            FrontendMessage::Execute { portal, .. } => {
                let portal = portal.as_str().to_owned();
                self.on_execute(msg, portal)
            }
            FrontendMessage::Close { kind, name } => {
                if *kind == b'S' {
                    self.statements.remove(name.as_str());
                } else {
                    self.portals.remove(name.as_str());
                }
                self.forward(&msg.raw, Expect::Close);
                Ok(Step::Continue)
            }
            FrontendMessage::Sync => {
                self.forward(&msg.raw, Expect::Sync { error: None });
                Ok(Step::Continue)
            }
            FrontendMessage::Flush => {
                self.to_server.extend_from_slice(&msg.raw);
                Ok(Step::Continue)
            }
            FrontendMessage::Terminate => {
                self.to_server.extend_from_slice(&msg.raw);
                Ok(Step::Terminate)
            }
            FrontendMessage::CopyData(data) => {
                let len = data.len() as u64;
                if let Some(copy) = self.current_run_mut().and_then(|r| r.copy.as_mut()) {
                    copy.messages += 1;
                    copy.bytes += len;
                }
                self.to_server.extend_from_slice(&msg.raw);
                Ok(Step::Continue)
            }
            FrontendMessage::CopyDone | FrontendMessage::CopyFail { .. } => {
                self.to_server.extend_from_slice(&msg.raw);
                Ok(Step::Continue)
            }
            FrontendMessage::FunctionCall { oid, .. } => {
                // Fast-path calls carry no SQL: judge them as an opaque statement.
                let text: Arc<str> = format!("-- fast-path function call (oid {oid})").into();
                let (analysis, verdict, rule) = self.judge("DO $$ $$");
                let seq = self.seq();
                let (verdict, rule) = match &self.rules.policy {
                    Some(_) => (verdict, rule),
                    None => (Verdict::Allow, None),
                };
                if verdict != Verdict::Allow && self.rules.enforce {
                    let error = self.refusal(rule.as_deref(), Verdict::Deny);
                    self.statement_event(
                        seq,
                        "function",
                        &text,
                        &analysis,
                        (None, None),
                        &[],
                        verdict,
                        rule.as_deref(),
                        "refused",
                    );
                    self.refused_end(seq, &error);
                    self.inject(error);
                    return Ok(Step::Continue);
                }
                self.statement_event(
                    seq,
                    "function",
                    &text,
                    &analysis,
                    (None, None),
                    &[],
                    verdict,
                    rule.as_deref(),
                    "forwarded",
                );
                let run = self.new_run(seq);
                self.forward(&msg.raw, Expect::FunctionCall(run));
                Ok(Step::Continue)
            }
            FrontendMessage::AuthResponse(_) => Err(FlowError(
                "protocol violation: password message after authentication".into(),
            )),
            FrontendMessage::SslRequest
            | FrontendMessage::GssEncRequest
            | FrontendMessage::CancelRequest { .. }
            | FrontendMessage::Startup(_) => Err(FlowError(
                "protocol violation: startup packet after the startup".into(),
            )),
        }
    }

    fn forward(&mut self, raw: &Bytes, expect: Expect) {
        self.to_server.extend_from_slice(raw);
        self.expect.push_back(expect);
    }

    fn inject(&mut self, error: Bytes) {
        self.expect.push_back(Expect::Injected { error });
        self.release_injected();
    }

    fn new_run(&self, seq: u64) -> Run {
        Run::new(seq)
    }

    fn on_query(
        &mut self,
        msg: Decoded<FrontendMessage>,
        text: Arc<str>,
        analysis: Arc<Analysis>,
        (verdict, rule): (Verdict, Option<String>),
        per_statement: Vec<StatementVerdict>,
    ) -> Result<Step, FlowError> {
        let action = self.gate.action(verdict, rule.as_deref());
        let mut standing = None;
        match action {
            Action::PassOnStanding(ref s) => standing = Some(s.clone()),
            Action::Hold => {
                let seq = self.seq();
                self.statement_event(
                    seq,
                    "simple",
                    &text,
                    &analysis,
                    (None, None),
                    &[],
                    verdict,
                    rule.as_deref(),
                    "held",
                );
                return Ok(self.hold(msg, seq, text, analysis, rule));
            }
            Action::Forward | Action::Refuse => {}
        }
        let refused = matches!(action, Action::Refuse);
        // One event per statement of the string, so each can be found and replayed.
        let what = if refused { "refused" } else { "forwarded" };
        let parts =
            policy::statement_parts(&text, &analysis, verdict, rule.as_deref(), &per_statement);
        let mut seqs = Vec::with_capacity(parts.len());
        for part in &parts {
            let seq = self.seq();
            seqs.push(seq);
            self.statement_event(
                seq,
                "simple",
                &part.text,
                &part.analysis,
                (None, None),
                &[],
                part.verdict,
                part.rule.as_deref(),
                what,
            );
        }
        if refused {
            let error = self.refusal(rule.as_deref(), verdict);
            for seq in seqs {
                self.refused_end(seq, &error);
            }
            self.inject(error);
            return Ok(Step::Continue);
        }
        if let (Some(standing), Some(&first)) = (&standing, seqs.first()) {
            self.passed_on(first, standing);
        }
        let masks = &self.rules.masks;
        self.gate.observe(
            verdict,
            seqs.first().copied().unwrap_or_default(),
            rule.as_deref(),
            || masks.mask_text(&text).into_owned(),
        );
        self.forward(
            &msg.raw,
            Expect::Query(QueryRun {
                seqs,
                next: 0,
                current: None,
            }),
        );
        Ok(Step::Continue)
    }

    fn on_parse(
        &mut self,
        msg: Decoded<FrontendMessage>,
        name: String,
        text: Arc<str>,
        analysis: Arc<Analysis>,
        verdict: Verdict,
        rule: Option<String>,
    ) -> Result<Step, FlowError> {
        let mut verdict = verdict;
        let action = self.gate.action(verdict, rule.as_deref());
        if let Action::Hold | Action::PassOnStanding(_) = action {
            let standing = match action {
                Action::PassOnStanding(ref s) => Some(s.clone()),
                _ => None,
            };
            let seq = self.seq();
            self.statement_event(
                seq,
                "extended",
                &text,
                &analysis,
                (Some(&name), None),
                &[],
                verdict,
                rule.as_deref(),
                if standing.is_some() {
                    "forwarded"
                } else {
                    "held"
                },
            );
            match standing {
                // As after an approval: the statement is prepared as allowed.
                Some(standing) => {
                    self.passed_on(seq, &standing);
                    verdict = Verdict::Allow;
                }
                None => return Ok(self.hold(msg, seq, text, analysis, rule)),
            }
        }
        let masks = &self.rules.masks;
        self.gate
            .observe(verdict, self.next_seq, rule.as_deref(), || {
                masks.mask_text(&text).into_owned()
            });
        if let Action::Refuse = action {
            let seq = self.seq();
            self.statement_event(
                seq,
                "extended",
                &text,
                &analysis,
                (Some(&name), None),
                &[],
                verdict,
                rule.as_deref(),
                "refused",
            );
            let error = self.refusal(rule.as_deref(), verdict);
            self.refused_end(seq, &error);
            self.refused_until_sync = Some(error);
            return Ok(Step::Continue);
        }
        self.statements.insert(
            name,
            Prepared {
                text,
                analysis,
                verdict,
                rule,
                columns: None,
            },
        );
        self.forward(&msg.raw, Expect::Parse);
        Ok(Step::Continue)
    }

    fn on_execute(
        &mut self,
        msg: Decoded<FrontendMessage>,
        portal_name: String,
    ) -> Result<Step, FlowError> {
        let seq = self.seq();
        let mut run = self.new_run(seq);
        let masks_on = !self.rules.masks.is_empty();
        let (text, analysis, verdict, rule, statement_name, params, known_columns) =
            match self.portals.get(&portal_name) {
                Some(portal) => match self.statements.get(&portal.statement) {
                    Some(st) => {
                        let columns = portal.columns.clone().or_else(|| {
                            st.columns
                                .clone()
                                .map(|c| Arc::new(with_formats(&c, &portal.result_formats)))
                        });
                        (
                            st.text.clone(),
                            st.analysis.clone(),
                            st.verdict,
                            st.rule.clone(),
                            Some(portal.statement.clone()),
                            portal.params.clone(),
                            columns,
                        )
                    }
                    None => (
                        Arc::from("-- unknown prepared statement"),
                        Arc::new(Analysis::default()),
                        Verdict::Allow,
                        None,
                        Some(portal.statement.clone()),
                        portal.params.clone(),
                        None,
                    ),
                },
                // The server will answer with an error; journal the attempt.
                None => (
                    Arc::from("-- unknown portal"),
                    Arc::new(Analysis::default()),
                    Verdict::Allow,
                    None,
                    None,
                    Vec::new(),
                    None,
                ),
            };
        self.statement_event(
            seq,
            "extended",
            &text,
            &analysis,
            (statement_name.as_deref(), Some(&portal_name)),
            &params,
            verdict,
            rule.as_deref(),
            "forwarded",
        );
        match known_columns {
            Some(columns) => self.start_result(&mut run, &columns),
            None if masks_on => {
                // Without the columns the agent cannot tell what to mask: ask the server
                // first, in the same batch, and keep its answer to itself.
                let mut body = BytesMut::new();
                body.extend_from_slice(b"P");
                body.extend_from_slice(portal_name.as_bytes());
                body.extend_from_slice(&[0]);
                let frame = encode::frame(b'D', &body);
                self.forward(
                    &frame,
                    Expect::Describe {
                        statement: None,
                        portal: Some(portal_name.clone()),
                        hidden: true,
                    },
                );
            }
            None => {}
        }
        self.forward(&msg.raw, Expect::Execute(run));
        Ok(Step::Continue)
    }

    /// Bound parameters as the journal keeps them: text through the detectors, binary
    /// as text if it is UTF-8 (a text-like type) else hex, each cut to a bounded size.
    fn journal_params(&self, formats: &[i16], params: &[Option<Bytes>]) -> Vec<String> {
        params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let Some(value) = p else {
                    return "NULL".to_owned();
                };
                let format = match formats.len() {
                    0 => 0,
                    1 => formats[0],
                    _ => formats.get(i).copied().unwrap_or(0),
                };
                self.journal_value(value, format)
            })
            .collect()
    }

    fn journal_value(&self, value: &[u8], format: i16) -> String {
        let masked = match std::str::from_utf8(value) {
            Ok(s) if format == 0 || !s.contains('\0') => self.rules.masks.mask_text(s),
            _ => return bounded(hex_value, value, value.len()),
        };
        // Masked before it is cut, so a match across the cut cannot leave a piece behind;
        // the length said is the value's own.
        bounded(show_text, masked.as_bytes(), value.len())
    }

    /// Keeps `msg` until a decision comes ([`Flow::resolve_hold`]).
    fn hold(
        &mut self,
        message: Decoded<FrontendMessage>,
        seq: u64,
        text: Arc<str>,
        analysis: Arc<Analysis>,
        rule: Option<String>,
    ) -> Step {
        // Announcements may leave the host (webhook): detectors apply to them.
        let request = self.gate.hold_request(
            seq,
            self.rules.masks.mask_text(&text).into_owned(),
            rule.clone(),
        );
        self.held = Some(Held {
            message,
            seq,
            rule,
            analysis,
            text,
        });
        Step::Hold(request)
    }

    /// Resolves a hold: the held message is then forwarded or refused.
    pub fn resolve_hold(&mut self, outcome: HoldOutcome) -> Result<Step, FlowError> {
        let Some(held) = self.held.take() else {
            return Ok(Step::Continue);
        };
        // Scope `session`: the gate lets the session's later statements of this rule pass.
        let event = self.gate.decided(held.seq, held.rule.as_deref(), &outcome);
        self.event(crate::session::gate::APPROVAL, &event);
        let approved = matches!(outcome, HoldOutcome::Approved { .. });
        let is_parse = matches!(held.message.message, FrontendMessage::Parse { .. });
        if approved {
            match held.message.message {
                FrontendMessage::Parse { ref name, .. } => {
                    let name = name.as_str().to_owned();
                    self.statements.insert(
                        name,
                        Prepared {
                            text: held.text.clone(),
                            analysis: held.analysis.clone(),
                            verdict: Verdict::Allow,
                            rule: held.rule.clone(),
                            columns: None,
                        },
                    );
                    self.forward(&held.message.raw, Expect::Parse);
                }
                _ => {
                    self.forward(
                        &held.message.raw,
                        Expect::Query(QueryRun {
                            seqs: vec![held.seq],
                            next: 0,
                            current: None,
                        }),
                    );
                }
            }
            return Ok(Step::Continue);
        }
        let message = match &outcome {
            HoldOutcome::Expired => format!(
                "nhi-agent: statement held for approval (rule \"{}\") was not approved in time",
                held.rule.as_deref().unwrap_or("default")
            ),
            HoldOutcome::Denied { by, reason, .. } => format!(
                "nhi-agent: statement held for approval (rule \"{}\") was denied by {by}{}",
                held.rule.as_deref().unwrap_or("default"),
                reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            HoldOutcome::Approved { .. } => unreachable!("handled above"),
        };
        let error = encode::error_response("ERROR", SQLSTATE_REFUSED, &message);
        self.refused_end(held.seq, &error);
        if is_parse {
            self.refused_until_sync = Some(error);
        } else {
            self.inject(error);
        }
        Ok(Step::Continue)
    }

    fn current_run_mut(&mut self) -> Option<&mut Run> {
        match self.expect.iter_mut().find(|e| {
            !matches!(
                e,
                Expect::Parse | Expect::Bind | Expect::Close | Expect::Describe { .. }
            )
        })? {
            Expect::Query(q) => q.current.as_mut(),
            Expect::Execute(run) | Expect::FunctionCall(run) => Some(run),
            _ => None,
        }
    }

    // ---------------------------------------------------------------- server side

    /// Handles one server message; relayed messages are staged (possibly rewritten).
    pub fn on_server(&mut self, msg: Decoded<BackendMessage>) -> Result<(), FlowError> {
        match &msg.message {
            BackendMessage::ReadyForQuery { status } => {
                self.tx_status = *status;
                match self.expect.pop_front() {
                    Some(Expect::Query(mut q)) => {
                        self.finish_query(&mut q, None);
                        self.relay(&msg.raw);
                    }
                    Some(Expect::Sync { error }) => {
                        if let Some(error) = error {
                            if !self.server_error_in_batch {
                                self.to_client.extend_from_slice(&error);
                            }
                        }
                        self.relay(&msg.raw);
                    }
                    Some(Expect::FunctionCall(run)) => {
                        self.finish_run(run, None, None);
                        self.relay(&msg.raw);
                    }
                    Some(Expect::Startup) | None => self.relay(&msg.raw),
                    Some(other) => {
                        return Err(FlowError(format!(
                            "protocol desynchronized: ReadyForQuery while expecting {}",
                            other.name()
                        )))
                    }
                }
                self.server_error_in_batch = false;
                self.release_injected();
            }
            BackendMessage::ParseComplete => {
                self.pop_expected("ParseComplete", |e| matches!(e, Expect::Parse))?;
                self.relay(&msg.raw);
            }
            BackendMessage::BindComplete => {
                self.pop_expected("BindComplete", |e| matches!(e, Expect::Bind))?;
                self.relay(&msg.raw);
            }
            BackendMessage::CloseComplete => {
                self.pop_expected("CloseComplete", |e| matches!(e, Expect::Close))?;
                self.relay(&msg.raw);
            }
            BackendMessage::ParameterDescription { .. } => {
                let hidden = matches!(
                    self.expect.front(),
                    Some(Expect::Describe { hidden: true, .. })
                );
                if !hidden {
                    self.relay(&msg.raw);
                }
            }
            BackendMessage::NoData => {
                let hidden = matches!(
                    self.expect.front(),
                    Some(Expect::Describe { hidden: true, .. })
                );
                self.pop_expected("NoData", |e| matches!(e, Expect::Describe { .. }))?;
                if !hidden {
                    self.relay(&msg.raw);
                }
            }
            BackendMessage::RowDescription { fields } => {
                let fields = Arc::new(fields.clone());
                match self.expect.front_mut() {
                    Some(Expect::Describe {
                        statement,
                        portal,
                        hidden,
                    }) => {
                        let hidden = *hidden;
                        if let Some(name) = statement.take() {
                            if let Some(st) = self.statements.get_mut(&name) {
                                st.columns = Some(fields.clone());
                            }
                        }
                        if let Some(name) = portal.take() {
                            if let Some(p) = self.portals.get_mut(&name) {
                                p.columns = Some(fields.clone());
                            }
                        }
                        self.expect.pop_front();
                        // A hidden Describe precedes its Execute, which starts now.
                        if hidden {
                            if let Some(Expect::Execute(_)) = self.expect.front() {
                                if let Some(Expect::Execute(mut run)) = self.expect.pop_front() {
                                    self.start_result(&mut run, &fields);
                                    self.expect.push_front(Expect::Execute(run));
                                }
                            }
                        } else {
                            self.relay(&msg.raw);
                        }
                    }
                    Some(Expect::Query(q)) => {
                        let seq = q.seqs.get(q.next).copied().unwrap_or(0);
                        let mut run = self.new_run(seq);
                        self.start_result(&mut run, &fields);
                        if let Some(Expect::Query(q)) = self.expect.front_mut() {
                            q.current = Some(run);
                        }
                        self.relay(&msg.raw);
                    }
                    _ => self.relay(&msg.raw),
                }
            }
            BackendMessage::DataRow(row) => {
                let enforce = self.rules.enforce;
                let record_rows = self.rules.record_results == RecordResults::Rows;
                let run = match self.expect.front_mut() {
                    Some(Expect::Query(q)) => q.current.as_mut(),
                    Some(Expect::Execute(run)) => Some(run),
                    _ => None,
                };
                let mut masked_frame = None;
                if let Some(run) = run {
                    run.rows += 1;
                    if let Some(masker) = run.masker.as_mut() {
                        masked_frame = encode::mask_data_row(masker, row);
                    }
                    if record_rows && run.recorded.len() < MAX_RECORDED_ROWS {
                        let shown = match &masked_frame {
                            Some(frame) => decode_row_values(frame),
                            None => row.values().map(|v| v.map(recorded_value)).collect(),
                        };
                        run.recorded.push(shown);
                    }
                }
                match masked_frame {
                    Some(frame) if enforce => self.to_client.extend_from_slice(&frame),
                    _ => self.relay(&msg.raw),
                }
            }
            BackendMessage::CommandComplete { tag } => {
                let tag = tag.as_str().to_owned();
                self.complete(Some(&tag), None)?;
                self.relay(&msg.raw);
            }
            BackendMessage::EmptyQueryResponse => {
                self.complete(Some(""), None)?;
                self.relay(&msg.raw);
            }
            BackendMessage::PortalSuspended => {
                self.complete(Some("(portal suspended)"), None)?;
                self.relay(&msg.raw);
            }
            BackendMessage::ErrorResponse(fields) => {
                let sqlstate = fields.code().unwrap_or("XX000").to_owned();
                let message = fields.message().unwrap_or("").to_owned();
                self.server_error_in_batch = true;
                self.on_server_error(&sqlstate, &message);
                self.relay(&msg.raw);
            }
            BackendMessage::CopyInResponse(_) | BackendMessage::CopyOutResponse(_) => {
                let direction = if matches!(msg.message, BackendMessage::CopyInResponse(_)) {
                    events::CopyDirection::In
                } else {
                    events::CopyDirection::Out
                };
                if let Some(run) = self.front_run_mut() {
                    run.copy = Some(events::CopyCount {
                        direction,
                        messages: 0,
                        bytes: 0,
                    });
                }
                self.relay(&msg.raw);
            }
            BackendMessage::CopyData(data) => {
                let len = data.len() as u64;
                if let Some(copy) = self.front_run_mut().and_then(|r| r.copy.as_mut()) {
                    copy.messages += 1;
                    copy.bytes += len;
                }
                self.relay(&msg.raw);
            }
            BackendMessage::FunctionCallResponse { .. } => {
                if let Some(Expect::FunctionCall(run)) = self.expect.front_mut() {
                    run.rows = 1;
                }
                self.relay(&msg.raw);
            }
            BackendMessage::BackendKeyData { pid, key } => {
                let fake = Bytes::copy_from_slice(&self.fake_key);
                self.cancel_key = Some(CancelKey {
                    pid: *pid,
                    real: key.clone(),
                    fake: fake.clone(),
                });
                let rewritten = BackendMessage::BackendKeyData {
                    pid: *pid,
                    key: fake,
                };
                self.to_client.extend_from_slice(&rewritten.to_bytes());
            }
            BackendMessage::ParameterStatus { name, value } => {
                self.parameters
                    .insert(name.as_str().to_owned(), value.as_str().to_owned());
                self.relay(&msg.raw);
            }
            BackendMessage::Authentication(_) => {
                return Err(FlowError(
                    "protocol violation: authentication request after the startup".into(),
                ))
            }
            BackendMessage::CopyBothResponse(_) => {
                return Err(FlowError(
                    "streaming replication (CopyBoth) is not supported through the agent".into(),
                ))
            }
            BackendMessage::SslAnswer(_) | BackendMessage::GssEncAnswer(_) => {
                return Err(FlowError(
                    "protocol violation: unexpected encryption answer".into(),
                ))
            }
            BackendMessage::NoticeResponse(_)
            | BackendMessage::NotificationResponse { .. }
            | BackendMessage::NegotiateProtocolVersion { .. }
            | BackendMessage::CopyDone
            | BackendMessage::Other { .. } => self.relay(&msg.raw),
        }
        Ok(())
    }

    fn relay(&mut self, raw: &Bytes) {
        self.to_client.extend_from_slice(raw);
    }

    fn front_run_mut(&mut self) -> Option<&mut Run> {
        match self.expect.front_mut()? {
            Expect::Query(q) => {
                if q.current.is_none() {
                    let seq = q.seqs.get(q.next).copied().unwrap_or(0);
                    q.current = Some(Run::new(seq));
                }
                q.current.as_mut()
            }
            Expect::Execute(run) | Expect::FunctionCall(run) => Some(run),
            _ => None,
        }
    }

    fn pop_expected(&mut self, what: &str, ok: impl Fn(&Expect) -> bool) -> Result<(), FlowError> {
        match self.expect.front() {
            Some(e) if ok(e) => {
                self.expect.pop_front();
                Ok(())
            }
            Some(e) => Err(FlowError(format!(
                "protocol desynchronized: {what} while expecting {}",
                e.name()
            ))),
            None => Err(FlowError(format!(
                "protocol desynchronized: {what} with no request outstanding"
            ))),
        }
    }

    fn start_result(&self, run: &mut Run, fields: &[FieldDescription]) {
        run.columns = fields.iter().map(|f| f.name.as_str().to_owned()).collect();
        if !self.rules.masks.is_empty() {
            let infos: Vec<ColumnInfo<'_>> = fields
                .iter()
                .map(|f| ColumnInfo {
                    name: f.name.as_str(),
                    type_oid: f.type_oid,
                    format: f.format,
                })
                .collect();
            let masker = self.rules.masks.plan(&infos);
            if !masker.is_noop() {
                run.masker = Some(masker);
            }
        }
    }

    /// CommandComplete / EmptyQueryResponse / PortalSuspended: the current statement is done.
    fn complete(
        &mut self,
        tag: Option<&str>,
        error: Option<(&str, &str)>,
    ) -> Result<(), FlowError> {
        match self.expect.front_mut() {
            Some(Expect::Query(q)) => {
                let seq = q.seqs.get(q.next).copied().unwrap_or(0);
                let run = q.current.take();
                q.next += 1;
                let run = run.unwrap_or_else(|| Run::new(seq));
                self.finish_run(run, tag, error);
                Ok(())
            }
            Some(Expect::Execute(_)) => {
                if let Some(Expect::Execute(run)) = self.expect.pop_front() {
                    self.finish_run(run, tag, error);
                }
                Ok(())
            }
            Some(e) => Err(FlowError(format!(
                "protocol desynchronized: command completion while expecting {}",
                e.name()
            ))),
            None => Err(FlowError(
                "protocol desynchronized: command completion with no request outstanding".into(),
            )),
        }
    }

    fn on_server_error(&mut self, sqlstate: &str, message: &str) {
        match self.expect.front_mut() {
            // A simple query stops at its first error; RFQ follows.
            Some(Expect::Query(q)) => {
                let seq = q.seqs.get(q.next).copied().unwrap_or(0);
                let run = q.current.take();
                q.next += 1;
                let run = run.unwrap_or_else(|| Run::new(seq));
                self.finish_run(run, None, Some((sqlstate, message)));
            }
            Some(Expect::FunctionCall(run)) => {
                run.rows = 0;
                let taken = std::mem::replace(run, Run::new(0));
                self.finish_run(taken, None, Some((sqlstate, message)));
                // Leave a placeholder: the RFQ pops it without a second event.
                if let Some(Expect::FunctionCall(_)) = self.expect.front() {
                    self.expect.pop_front();
                    self.expect.push_front(Expect::Sync { error: None });
                }
            }
            Some(Expect::Startup) | None => {}
            // Extended protocol: the server skips to the next Sync.
            Some(_) => {
                while let Some(front) = self.expect.front() {
                    if matches!(front, Expect::Sync { .. }) {
                        break;
                    }
                    match self.expect.pop_front() {
                        Some(Expect::Execute(run)) => {
                            self.finish_run(run, None, Some((sqlstate, message)));
                            // Only the first one failed; the others were skipped.
                            return self.skip_rest_of_batch();
                        }
                        Some(_) => continue,
                        None => break,
                    }
                }
            }
        }
    }

    fn skip_rest_of_batch(&mut self) {
        while let Some(front) = self.expect.front() {
            if matches!(front, Expect::Sync { .. }) {
                break;
            }
            if let Some(Expect::Execute(run)) = self.expect.pop_front() {
                let end = events::StatementEnd {
                    seq: run.seq,
                    note: Some(Cow::Borrowed(
                        "not run: an earlier message of the batch failed",
                    )),
                    ..events::StatementEnd::default()
                };
                self.event(kind::STATEMENT_END, &end);
            }
        }
    }

    fn finish_query(&mut self, q: &mut QueryRun, _error: Option<()>) {
        // Statements after a failed one were never run.
        while q.next < q.seqs.len() {
            let end = events::StatementEnd {
                seq: q.seqs[q.next],
                note: Some(Cow::Borrowed(
                    "not run: an earlier statement of the query failed",
                )),
                ..events::StatementEnd::default()
            };
            self.event(kind::STATEMENT_END, &end);
            q.next += 1;
        }
    }

    fn finish_run(&mut self, run: Run, tag: Option<&str>, error: Option<(&str, &str)>) {
        let rows = tag
            .and_then(tag_rows)
            .or(if run.rows > 0 { Some(run.rows) } else { None });
        let masked = run
            .masker
            .as_ref()
            .map(|m| m.masked_columns())
            .unwrap_or_default();
        let mask_not_enforced = !self.rules.enforce && !masked.is_empty();
        let recorded = (self.rules.record_results == RecordResults::Rows
            && !run.columns.is_empty())
        .then_some(run.recorded.as_slice());
        let end = events::StatementEnd {
            seq: run.seq,
            duration_us: run.started.elapsed().as_micros() as u64,
            tag: tag.map(Cow::Borrowed),
            rows,
            columns: if self.rules.record_results == RecordResults::None {
                Cow::Borrowed(&[])
            } else {
                Cow::Borrowed(&run.columns)
            },
            masked,
            error: error.map(|(sqlstate, message)| events::ErrorSummary {
                sqlstate: Cow::Borrowed(sqlstate),
                message: Cow::Borrowed(message),
            }),
            copy: run.copy,
            result_rows: recorded.map(Cow::Borrowed),
            mask_not_enforced,
            note: None,
        };
        self.event(kind::STATEMENT_END, &end);
    }

    /// Sends the agent's own answers that are now at the front of the queue.
    fn release_injected(&mut self) {
        while let Some(Expect::Injected { .. }) = self.expect.front() {
            if let Some(Expect::Injected { error }) = self.expect.pop_front() {
                self.to_client.extend_from_slice(&error);
                self.to_client
                    .extend_from_slice(&encode::ready_for_query(self.tx_status));
            }
        }
    }

    /// The transaction status last reported by the server.
    pub fn tx_status(&self) -> u8 {
        self.tx_status
    }

    /// Requests still waiting for an answer (for tests and diagnostics).
    pub fn outstanding(&self) -> usize {
        self.expect.len()
    }
}

impl Expect {
    fn name(&self) -> &'static str {
        match self {
            Expect::Startup => "the end of the startup",
            Expect::Query(_) => "a query's results",
            Expect::Parse => "ParseComplete",
            Expect::Bind => "BindComplete",
            Expect::Describe { .. } => "a Describe's answer",
            Expect::Execute(_) => "an Execute's results",
            Expect::Close => "CloseComplete",
            Expect::Sync { .. } => "ReadyForQuery",
            Expect::FunctionCall(_) => "a function call's result",
            Expect::Injected { .. } => "nothing (agent answer)",
        }
    }
}

/// The statement's columns with the result formats a Bind asked for.
fn with_formats(columns: &[FieldDescription], formats: &[i16]) -> Vec<FieldDescription> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut c = c.clone();
            c.format = match formats.len() {
                0 => 0,
                1 => formats[0],
                _ => formats.get(i).copied().unwrap_or(0),
            };
            c
        })
        .collect()
}

/// Rows affected or returned, from a command tag ("SELECT 3", "INSERT 0 2", "COPY 5").
fn tag_rows(tag: &str) -> Option<u64> {
    crate::protocol::postgres::CommandTag(crate::protocol::postgres::PgStr::from(tag.to_owned()))
        .rows()
}

/// The message of an ErrorResponse frame the agent built.
fn error_message(frame: &Bytes) -> String {
    let mut buf = BytesMut::from(&frame[..]);
    match crate::protocol::postgres::BackendDecoder::new().decode(&mut buf) {
        Ok(Some(Decoded {
            message: BackendMessage::ErrorResponse(fields),
            ..
        })) => fields.message().unwrap_or("").to_owned(),
        _ => String::new(),
    }
}

/// A value as the journal shows it: text if it is UTF-8, hex otherwise; bounded.
fn recorded_value(value: &[u8]) -> String {
    bounded(show_text, value, value.len())
}

/// Text if it is UTF-8, hex otherwise.
fn show_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => hex_value(bytes),
    }
}

/// `\x` and the bytes in hex, as psql shows bytea.
fn hex_value(bytes: &[u8]) -> String {
    format!("\\x{}", crate::hex::encode(bytes))
}

/// `show` of at most [`MAX_RECORDED_VALUE`] bytes of `value`; when cut, says the
/// original length `len`.
fn bounded(show: impl Fn(&[u8]) -> String, value: &[u8], len: usize) -> String {
    let cut = &value[..value.len().min(MAX_RECORDED_VALUE)];
    let mut text = show(cut);
    if value.len() > cut.len() {
        text.push_str(&format!("… ({len} bytes)"));
    }
    text
}

/// The values of a DataRow frame the masker built.
fn decode_row_values(frame: &Bytes) -> Vec<Option<String>> {
    let mut buf = BytesMut::from(&frame[..]);
    match crate::protocol::postgres::BackendDecoder::new().decode(&mut buf) {
        Ok(Some(Decoded {
            message: BackendMessage::DataRow(row),
            ..
        })) => row.values().map(|v| v.map(recorded_value)).collect(),
        _ => vec![Some("(unreadable masked row)".to_owned())],
    }
}

#[cfg(test)]
mod tests;
