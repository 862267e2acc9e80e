//! The MySQL session after authentication, sans IO: commands judged, journaled and
//! forwarded or refused; answers paired with the command in flight, result rows masked.
//!
//! MySQL has one command in flight: the client sends a command (sequence id 0) and
//! reads the server's answer (ids 1, 2, ...) before it sends the next. The session keeps
//! what it expects of the answer in [`Pending`]; client bytes that arrive meanwhile stay
//! buffered (bounded) until the answer is complete. A refused command is answered by
//! the agent with an ERR of sequence id 1, as the server would have answered, and the
//! server never sees it: the session goes on.
//!
//! Every server packet of an answer is relayed with the sequence id the client expects:
//! unchanged packets as they came, rewritten ones (masked rows) framed again; if a
//! rewrite changes the number of physical packets (a row crossing 16 MiB), the ids of
//! the rest of the answer shift with it.
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use crate::journal::{Event, SessionId};
use crate::mask::{ColumnInfo, RowMasker};
use crate::policy::{self, Analysis, RecordResults, StatementVerdict, Verdict};
use crate::protocol::mysql::{
    self, caps, command, frame, status, value, ColumnDef, ErrPacket, OkPacket, Packet,
    PacketDecoder, PrepareOk,
};
use crate::proxy::postgres::events::{self as pg_events, kind};
use crate::session::gate::{approval_on_standing, Action, Gate};
use crate::session::{
    AgentError, GrantCheck, HoldOutcome, HoldRequest, SessionError, SessionRules, Standing, Step,
};

/// ER_TABLEACCESS_DENIED_ERROR: what the server answers to a statement the user may not
/// run; the agent's refusals use it so clients treat them alike.
pub const ER_REFUSED: u16 = 1142;
pub const SQLSTATE_REFUSED: &str = "42000";
/// ER_NOT_ALLOWED_COMMAND: a LOCAL INFILE request the agent did not allow.
pub const ER_NOT_ALLOWED_COMMAND: u16 = 1148;
/// Rows kept per statement in the journal with `record_results = "rows"`.
const MAX_RECORDED_ROWS: usize = 1000;
/// Bytes of one value or parameter kept in the journal.
const MAX_RECORDED_VALUE: usize = 1024;
/// The largest logical packet either side may send (the server's own
/// `max_allowed_packet` cannot exceed 1 GiB; clients rarely go past 64 MiB).
pub const MAX_PACKET: usize = 64 << 20;
/// Client bytes kept while a command is in flight (MySQL clients do not pipeline).
const MAX_CLIENT_BACKLOG: usize = MAX_PACKET + (1 << 20);
/// The rule name of refused LOCAL INFILE statements no rule allowed.
pub const RULE_LOCAL_INFILE: &str = "local-infile-needs-a-rule";
/// The rule name of commands the agent does not pass.
pub const RULE_UNSUPPORTED: &str = "unsupported-command";

/// A statement prepared on the server, by the id the server gave it.
#[derive(Debug)]
struct Prepared {
    text: Arc<str>,
    analysis: Arc<Analysis>,
    verdict: Verdict,
    rule: Option<String>,
    params: usize,
    /// The types the last execute bound (a later execute may reuse them).
    param_types: Option<Vec<(u8, bool)>>,
    /// Parameters sent as long data since the last execute.
    long_data: Vec<bool>,
}

/// One statement being answered: what its `statement_end` will say.
#[derive(Debug)]
struct Run {
    seq: u64,
    started: Instant,
    columns: Vec<String>,
    defs: Vec<ColumnDef>,
    masker: Option<RowMasker>,
    rows: u64,
    recorded: Vec<Vec<Option<String>>>,
}

impl Run {
    fn new(seq: u64) -> Run {
        Run {
            seq,
            started: Instant::now(),
            columns: Vec::new(),
            defs: Vec::new(),
            masker: None,
            rows: 0,
            recorded: Vec::new(),
        }
    }
}

/// Where an answer with result sets is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RState {
    /// Its first packet: OK, ERR, LOCAL INFILE request, or a column count.
    Start,
    Columns {
        left: u64,
    },
    /// The EOF after the column definitions (without `CLIENT_DEPRECATE_EOF`).
    ColumnsEof,
    Rows,
    /// The client is sending a LOCAL INFILE file, up to an empty packet.
    InfileData,
    /// A LOCAL INFILE request the agent refused: it sent the empty packet itself and
    /// keeps the server's answer from the client, which gets an ERR instead.
    InfileRefused,
}

/// The answer of a COM_QUERY or COM_STMT_EXECUTE: one result per statement.
#[derive(Debug)]
struct ResultRun {
    binary: bool,
    seqs: Vec<u64>,
    next: usize,
    state: RState,
    run: Option<Run>,
    /// LOCAL INFILE allowed for this command.
    infile_allowed: bool,
    /// Identifiers of the statement text that name masked columns (derived columns of
    /// such a statement are masked whole).
    masked_idents: Arc<MaskedIdents>,
}

/// The identifiers of a statement that name masked columns, and whether the statement
/// can rename columns out of the agent's sight (a nested SELECT, a CTE, a set
/// operation): then every column of its result that is not plainly another table column
/// is masked whole by the first such identifier's rule.
#[derive(Debug, Default)]
struct MaskedIdents {
    idents: Vec<String>,
    nested: bool,
}

/// What the session expects of the server.
#[derive(Debug)]
enum Pending {
    Result(Box<ResultRun>),
    Prepare {
        text: Arc<str>,
        analysis: Arc<Analysis>,
        verdict: Verdict,
        rule: Option<String>,
        /// The packets still to come after the OK, in reverse order: `true` a
        /// definition (parameters then columns), `false` the EOF after each group.
        left: Vec<bool>,
        ok: Option<PrepareOk>,
    },
    /// One packet: OK, ERR or EOF (COM_PING, COM_INIT_DB, ...); `seq`: the statement
    /// the command was journaled as, if any.
    Simple {
        seq: Option<u64>,
        started: Instant,
    },
    /// Column definitions then EOF (COM_FIELD_LIST), or ERR.
    FieldList {
        seq: Option<u64>,
    },
    /// One packet of text (COM_STATISTICS).
    Text,
    /// COM_CHANGE_USER (relayed): the server's OK or ERR, or authentication exchanges;
    /// `client_turn`: the client's next packet answers an exchange.
    ChangeUser {
        user: String,
        plugin: String,
        client_turn: bool,
    },
}

#[derive(Debug)]
struct Held {
    packet: Packet,
    seq: u64,
    rule: Option<String>,
    pending: Pending,
}

/// The session state.
pub struct MysqlSession {
    session: SessionId,
    rules: Arc<SessionRules>,
    /// The capabilities both sides agreed on (as the server sees them).
    capabilities: u32,
    decoder: PacketDecoder,
    pending: Option<Pending>,
    /// Sequence-id shift of the answer being relayed (see the module documentation).
    shift: u8,
    /// The sequence id the client expects next from the server.
    client_next: u8,
    statements: HashMap<u32, Prepared>,
    /// The server's last status flags (NO_BACKSLASH_ESCAPES decides the lexing).
    status: u16,
    next_seq: u64,
    held: Option<Held>,
    to_server: BytesMut,
    to_client: BytesMut,
    events: Vec<Event>,
    gate: Gate,
    /// The agent logged in with its own credential: COM_CHANGE_USER is refused.
    credential_held: bool,
    pub statements_seen: u64,
    pub statements_refused: u64,
}

impl MysqlSession {
    pub fn new(session: SessionId, rules: Arc<SessionRules>, capabilities: u32) -> MysqlSession {
        MysqlSession {
            session,
            gate: Gate::new("mysql", rules.enforce, rules.approval_timeout()),
            rules,
            capabilities,
            decoder: PacketDecoder::new(MAX_PACKET),
            pending: None,
            shift: 0,
            client_next: 1,
            statements: HashMap::new(),
            status: status::AUTOCOMMIT,
            next_seq: 1,
            held: None,
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
            events: Vec::new(),
            credential_held: false,
            statements_seen: 0,
            statements_refused: 0,
        }
    }

    /// The agent logged in with its credential (COM_CHANGE_USER is then refused).
    pub fn set_credential_held(&mut self, held: bool) {
        self.credential_held = held;
    }

    /// The server status flags the authentication's OK reported.
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn set_grant_check(&mut self, check: GrantCheck) {
        self.gate.set_grant_check(check);
    }

    fn deprecate_eof(&self) -> bool {
        self.capabilities & caps::DEPRECATE_EOF != 0
    }

    fn event(&mut self, kind: &'static str, data: &impl Serialize) {
        self.events.push(Event::of(self.session, kind, data));
    }

    fn seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.statements_seen += 1;
        seq
    }

    /// An ERR for the client, framed with the sequence id it expects.
    fn err_packet(&self, err: &ErrPacket) -> Bytes {
        frame::packet(self.client_next, &err.encode())
    }

    /// The analysis and verdict of SQL text, with the MySQL-only refusals.
    fn judge(
        &self,
        sql: &str,
    ) -> (
        Arc<Analysis>,
        Verdict,
        Option<String>,
        Vec<StatementVerdict>,
    ) {
        let analysis = Arc::new(policy::analyze_mysql(
            sql,
            self.status & status::NO_BACKSLASH_ESCAPES != 0,
        ));
        let (mut verdict, mut rule, mut per_statement) = match &self.rules.policy {
            Some(p) => {
                let d = p.decide(&analysis);
                (d.verdict, d.rule, d.per_statement)
            }
            None => (Verdict::Allow, None, Vec::new()),
        };
        // LOAD DATA LOCAL makes the client send a file of its own host: only a rule
        // that names it (by `text`, `kinds`) lets it through, never the default verdict.
        for (i, statement) in analysis.statements.iter().enumerate() {
            if is_load_local(&statement.text) {
                let ruled = per_statement
                    .get(i)
                    .is_some_and(|sv| sv.rule.is_some() && sv.verdict == Verdict::Allow);
                if !ruled {
                    verdict = Verdict::Deny;
                    rule = Some(RULE_LOCAL_INFILE.to_owned());
                    if let Some(sv) = per_statement.get_mut(i) {
                        sv.verdict = Verdict::Deny;
                        sv.rule = rule.clone();
                    }
                }
            }
        }
        (analysis, verdict, rule, per_statement)
    }

    fn refusal(&self, rule: Option<&str>, verdict: Verdict) -> ErrPacket {
        let why = match verdict {
            Verdict::Approve => "was not approved",
            _ => "is not allowed",
        };
        let message = match rule {
            Some(rule) => format!("nhi-agent: statement {why} by policy rule \"{rule}\""),
            None => format!("nhi-agent: statement {why} by policy (default verdict)"),
        };
        ErrPacket::new(ER_REFUSED, SQLSTATE_REFUSED, message)
    }

    #[allow(clippy::too_many_arguments)]
    fn statement_event(
        &mut self,
        seq: u64,
        protocol: &'static str,
        text: &str,
        analysis: &Analysis,
        statement_id: Option<u32>,
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
        let id = statement_id.map(|id| id.to_string());
        let masked_text = self.rules.masks.mask_text(text).into_owned();
        let event = pg_events::Statement {
            seq,
            protocol: Cow::Borrowed(protocol),
            text: Cow::Owned(masked_text),
            statement: id.map(Cow::Owned),
            portal: None,
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

    fn refused_end(&mut self, seq: u64, error: &ErrPacket) {
        let end = pg_events::StatementEnd {
            seq,
            error: Some(pg_events::ErrorSummary {
                sqlstate: Cow::Borrowed(&error.sqlstate),
                message: Cow::Owned(error_text(error)),
            }),
            ..pg_events::StatementEnd::default()
        };
        self.event(kind::STATEMENT_END, &end);
        self.statements_refused += 1;
    }

    /// Answers the command just read with the agent's own ERR (the server never saw it).
    fn answer_err(&mut self, err: &ErrPacket) {
        let packet = self.err_packet(err);
        self.to_client.extend_from_slice(&packet);
    }

    // ---------------------------------------------------------------- client side

    fn on_client_packet(&mut self, packet: Packet) -> Result<Step, SessionError> {
        // A LOCAL INFILE file on its way: data packets up to an empty one.
        if let Some(Pending::Result(r)) = &mut self.pending {
            if r.state == RState::InfileData {
                if packet.payload.is_empty() {
                    r.state = RState::Start;
                }
                self.client_next = packet.next_seq();
                self.to_server.extend_from_slice(&packet.raw);
                return Ok(Step::Continue);
            }
        }
        if let Some(Pending::ChangeUser { client_turn, .. }) = &mut self.pending {
            if *client_turn {
                // Authentication data for COM_CHANGE_USER: relayed, never journaled.
                *client_turn = false;
                self.client_next = packet.next_seq();
                self.to_server.extend_from_slice(&packet.raw);
                return Ok(Step::Continue);
            }
        }
        if packet.seq != 0 {
            return Err(SessionError(format!(
                "client command with sequence id {} (a command starts at 0)",
                packet.seq
            )));
        }
        self.client_next = packet.next_seq();
        self.shift = 0;
        let Some(&code) = packet.payload.first() else {
            return Err(SessionError("empty client command".into()));
        };
        let body = packet.payload.slice(1..);
        match code {
            command::QUERY => {
                let sql = String::from_utf8_lossy(&body).into_owned();
                self.on_query(packet, sql)
            }
            command::STMT_PREPARE => {
                let sql = String::from_utf8_lossy(&body).into_owned();
                self.on_prepare(packet, sql)
            }
            command::STMT_EXECUTE => self.on_execute(packet),
            command::STMT_SEND_LONG_DATA => {
                // statement id (4), parameter (2), data: no answer.
                if body.len() < 6 {
                    return Err(SessionError("truncated COM_STMT_SEND_LONG_DATA".into()));
                }
                let id = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                let param = usize::from(u16::from_le_bytes([body[4], body[5]]));
                if let Some(st) = self.statements.get_mut(&id) {
                    if param < st.long_data.len() {
                        st.long_data[param] = true;
                    }
                }
                self.to_server.extend_from_slice(&packet.raw);
                Ok(Step::Continue)
            }
            command::STMT_CLOSE => {
                if body.len() >= 4 {
                    let id = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                    self.statements.remove(&id);
                }
                self.to_server.extend_from_slice(&packet.raw);
                Ok(Step::Continue)
            }
            command::STMT_RESET => {
                if body.len() >= 4 {
                    let id = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                    if let Some(st) = self.statements.get_mut(&id) {
                        st.long_data.iter_mut().for_each(|b| *b = false);
                    }
                }
                self.forward(packet, Pending::simple(None));
                Ok(Step::Continue)
            }
            command::QUIT => {
                self.to_server.extend_from_slice(&packet.raw);
                Ok(Step::Terminate)
            }
            command::PING | command::SET_OPTION | command::RESET_CONNECTION => {
                if code == command::RESET_CONNECTION {
                    self.statements.clear();
                }
                self.forward(packet, Pending::simple(None));
                Ok(Step::Continue)
            }
            command::CHANGE_USER => self.on_change_user(packet, &body),
            command::STATISTICS => {
                self.forward(packet, Pending::Text);
                Ok(Step::Continue)
            }
            // Commands that carry an object name: judged as the statement they stand for.
            command::INIT_DB => {
                let db = String::from_utf8_lossy(&body).into_owned();
                let text = format!("USE `{}`", db.replace('`', "``"));
                self.on_command_as_sql(packet, text, "init_db", |seq| Pending::simple(Some(seq)))
            }
            command::PROCESS_KILL => {
                if body.len() < 4 {
                    return Err(SessionError("truncated COM_PROCESS_KILL".into()));
                }
                let id = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                self.on_command_as_sql(packet, format!("KILL {id}"), "kill", |seq| {
                    Pending::simple(Some(seq))
                })
            }
            command::FIELD_LIST => {
                let table = String::from_utf8_lossy(body.split(|b| *b == 0).next().unwrap_or(&[]))
                    .into_owned();
                let text = format!("SHOW COLUMNS FROM `{}`", table.replace('`', "``"));
                self.on_command_as_sql(packet, text, "field_list", |seq| Pending::FieldList {
                    seq: Some(seq),
                })
            }
            other => {
                // Replication, shutdown, debugging, re-authentication, cursors, bulk
                // execution: not passed, refused as a statement the agent cannot judge.
                let seq = self.seq();
                let text = format!("-- {} (0x{other:02x})", command::name(other));
                let analysis = Analysis::default();
                self.statement_event(
                    seq,
                    "command",
                    &text,
                    &analysis,
                    None,
                    &[],
                    Verdict::Deny,
                    Some(RULE_UNSUPPORTED),
                    "refused",
                );
                let err = ErrPacket::new(
                    ER_REFUSED,
                    SQLSTATE_REFUSED,
                    format!(
                        "nhi-agent: {} is not supported through the agent",
                        command::name(other)
                    ),
                );
                self.refused_end(seq, &err);
                self.answer_err(&err);
                Ok(Step::Continue)
            }
        }
    }

    /// COM_CHANGE_USER: relayed (its authentication exchange included, never
    /// journaled) when the client authenticated itself; refused when the agent logged
    /// in with its credential (the bot would leave the user the agent chose).
    fn on_change_user(&mut self, packet: Packet, body: &[u8]) -> Result<Step, SessionError> {
        let malformed = |e: mysql::ProtocolError| SessionError(format!("client: {e}"));
        let mut r = mysql::Reader::new(body);
        let user =
            String::from_utf8_lossy(r.nul_str("COM_CHANGE_USER").map_err(malformed)?).into_owned();
        // The auth response, then the schema (what is after is not needed).
        if self.capabilities & caps::SECURE_CONNECTION != 0 {
            let n = r.u8("COM_CHANGE_USER").map_err(malformed)?;
            r.take(usize::from(n), "COM_CHANGE_USER")
                .map_err(malformed)?;
        } else {
            r.nul_str("COM_CHANGE_USER").map_err(malformed)?;
        }
        let database = String::from_utf8_lossy(r.nul_or_end()).into_owned();
        let _ = r.u16("charset");
        let plugin = String::from_utf8_lossy(r.nul_or_end()).into_owned();
        if self.credential_held {
            let seq = self.seq();
            let text = format!("-- COM_CHANGE_USER {user}");
            self.statement_event(
                seq,
                "command",
                &text,
                &Analysis::default(),
                None,
                &[],
                Verdict::Deny,
                Some(RULE_UNSUPPORTED),
                "refused",
            );
            let err = ErrPacket::new(
                ER_REFUSED,
                SQLSTATE_REFUSED,
                "nhi-agent: COM_CHANGE_USER is not allowed: the agent logs in with its own credential",
            );
            self.refused_end(seq, &err);
            self.answer_err(&err);
            return Ok(Step::Continue);
        }
        self.event(
            super::events::kind::CHANGE_USER,
            &serde_json::json!({ "user": user, "database": database, "plugin": plugin }),
        );
        self.forward(
            packet,
            Pending::ChangeUser {
                user,
                plugin,
                client_turn: false,
            },
        );
        Ok(Step::Continue)
    }

    fn forward(&mut self, packet: Packet, pending: Pending) {
        self.to_server.extend_from_slice(&packet.raw);
        self.pending = Some(pending);
    }

    /// Judges a command that names an object (a database, a thread, a table) as the SQL
    /// statement it is equivalent to.
    fn on_command_as_sql(
        &mut self,
        packet: Packet,
        text: String,
        protocol: &'static str,
        pending: impl FnOnce(u64) -> Pending,
    ) -> Result<Step, SessionError> {
        let (analysis, verdict, rule, _) = self.judge(&text);
        let action = self.gate.action(verdict, rule.as_deref());
        let seq = self.seq();
        match action {
            Action::Refuse => {
                self.statement_event(
                    seq,
                    protocol,
                    &text,
                    &analysis,
                    None,
                    &[],
                    verdict,
                    rule.as_deref(),
                    "refused",
                );
                let err = self.refusal(rule.as_deref(), verdict);
                self.refused_end(seq, &err);
                self.answer_err(&err);
                Ok(Step::Continue)
            }
            Action::Hold => {
                self.statement_event(
                    seq,
                    protocol,
                    &text,
                    &analysis,
                    None,
                    &[],
                    verdict,
                    rule.as_deref(),
                    "held",
                );
                Ok(self.hold(packet, seq, &text, rule, pending(seq)))
            }
            Action::Forward | Action::PassOnStanding(_) => {
                self.statement_event(
                    seq,
                    protocol,
                    &text,
                    &analysis,
                    None,
                    &[],
                    verdict,
                    rule.as_deref(),
                    "forwarded",
                );
                if let Action::PassOnStanding(standing) = &action {
                    self.passed_on(seq, standing);
                }
                self.forward(packet, pending(seq));
                Ok(Step::Continue)
            }
        }
    }

    fn passed_on(&mut self, seq: u64, standing: &Standing) {
        self.event(
            crate::session::gate::APPROVAL,
            &approval_on_standing(seq, standing),
        );
    }

    fn on_query(&mut self, packet: Packet, sql: String) -> Result<Step, SessionError> {
        let (analysis, verdict, rule, per_statement) = self.judge(&sql);
        // More than one statement needs CLIENT_MULTI_STATEMENTS; without it the server
        // refuses the string, so it is judged (and journaled) as the one text it is.
        let action = self.gate.action(verdict, rule.as_deref());
        let masked_idents = Arc::new(self.masked_identifiers(&sql));
        let infile_allowed = analysis.statements.iter().any(|s| is_load_local(&s.text));
        if let Action::Hold = action {
            let seq = self.seq();
            self.statement_event(
                seq,
                "query",
                &sql,
                &analysis,
                None,
                &[],
                verdict,
                rule.as_deref(),
                "held",
            );
            let pending = Pending::Result(Box::new(ResultRun::new(
                false,
                vec![seq],
                infile_allowed,
                masked_idents,
            )));
            return Ok(self.hold(packet, seq, &sql, rule, pending));
        }
        let refused = matches!(action, Action::Refuse);
        let what = if refused { "refused" } else { "forwarded" };
        let parts =
            policy::statement_parts(&sql, &analysis, verdict, rule.as_deref(), &per_statement);
        let mut seqs = Vec::with_capacity(parts.len());
        for part in &parts {
            let seq = self.seq();
            seqs.push(seq);
            self.statement_event(
                seq,
                "query",
                &part.text,
                &part.analysis,
                None,
                &[],
                part.verdict,
                part.rule.as_deref(),
                what,
            );
        }
        if refused {
            let err = self.refusal(rule.as_deref(), verdict);
            for seq in seqs {
                self.refused_end(seq, &err);
            }
            self.answer_err(&err);
            return Ok(Step::Continue);
        }
        if let (Action::PassOnStanding(standing), Some(&first)) = (&action, seqs.first()) {
            self.passed_on(first, standing);
        }
        let masks = &self.rules.masks;
        self.gate.observe(
            verdict,
            seqs.first().copied().unwrap_or_default(),
            rule.as_deref(),
            || masks.mask_text(&sql).into_owned(),
        );
        self.forward(
            packet,
            Pending::Result(Box::new(ResultRun::new(
                false,
                seqs,
                infile_allowed,
                masked_idents,
            ))),
        );
        Ok(Step::Continue)
    }

    fn on_prepare(&mut self, packet: Packet, sql: String) -> Result<Step, SessionError> {
        let (analysis, verdict, rule, _) = self.judge(&sql);
        let action = self.gate.action(verdict, rule.as_deref());
        let text: Arc<str> = sql.into();
        match action {
            Action::Refuse => {
                let seq = self.seq();
                self.statement_event(
                    seq,
                    "prepare",
                    &text,
                    &analysis,
                    None,
                    &[],
                    verdict,
                    rule.as_deref(),
                    "refused",
                );
                let err = self.refusal(rule.as_deref(), verdict);
                self.refused_end(seq, &err);
                self.answer_err(&err);
                Ok(Step::Continue)
            }
            Action::Hold => {
                let seq = self.seq();
                self.statement_event(
                    seq,
                    "prepare",
                    &text,
                    &analysis,
                    None,
                    &[],
                    verdict,
                    rule.as_deref(),
                    "held",
                );
                let pending = Pending::Prepare {
                    text: text.clone(),
                    analysis,
                    verdict: Verdict::Allow,
                    rule: rule.clone(),
                    left: Vec::new(),
                    ok: None,
                };
                Ok(self.hold(packet, seq, &text, rule, pending))
            }
            Action::Forward | Action::PassOnStanding(_) => {
                if let Action::PassOnStanding(standing) = &action {
                    // Journaled with the prepare: its executes pass as approved.
                    let seq = self.seq();
                    self.statement_event(
                        seq,
                        "prepare",
                        &text,
                        &analysis,
                        None,
                        &[],
                        verdict,
                        rule.as_deref(),
                        "forwarded",
                    );
                    self.passed_on(seq, standing);
                }
                let verdict = if matches!(action, Action::PassOnStanding(_)) {
                    Verdict::Allow
                } else {
                    verdict
                };
                self.forward(
                    packet,
                    Pending::Prepare {
                        text,
                        analysis,
                        verdict,
                        rule,
                        left: Vec::new(),
                        ok: None,
                    },
                );
                Ok(Step::Continue)
            }
        }
    }

    fn on_execute(&mut self, packet: Packet) -> Result<Step, SessionError> {
        let body = &packet.payload;
        if body.len() < 10 {
            return Err(SessionError("truncated COM_STMT_EXECUTE".into()));
        }
        let id = u32::from_le_bytes([body[1], body[2], body[3], body[4]]);
        let flags = body[5];
        let seq = self.seq();
        let Some(st) = self.statements.get(&id) else {
            // The server answers an unknown id with an error; journal the attempt.
            let text = format!("-- execute of unknown statement {id}");
            self.statement_event(
                seq,
                "execute",
                &text,
                &Analysis::default(),
                Some(id),
                &[],
                Verdict::Allow,
                None,
                "forwarded",
            );
            self.forward(
                packet,
                Pending::Result(Box::new(ResultRun::new(
                    true,
                    vec![seq],
                    false,
                    Arc::new(MaskedIdents::default()),
                ))),
            );
            return Ok(Step::Continue);
        };
        if flags & 0x0f != 0 {
            // Cursors answer with COM_STMT_FETCH, which the agent does not follow.
            let (text, analysis) = (st.text.clone(), st.analysis.clone());
            self.statement_event(
                seq,
                "execute",
                &text,
                &analysis,
                Some(id),
                &[],
                Verdict::Deny,
                Some(RULE_UNSUPPORTED),
                "refused",
            );
            let err = ErrPacket::new(
                ER_REFUSED,
                SQLSTATE_REFUSED,
                "nhi-agent: cursors (COM_STMT_EXECUTE with a cursor flag) are not supported through the agent",
            );
            self.refused_end(seq, &err);
            self.answer_err(&err);
            return Ok(Step::Continue);
        }
        let exec =
            mysql::value::Execute::parse(body, st.params, st.param_types.as_deref(), &st.long_data)
                .map_err(|e| SessionError(format!("client: {e}")))?;
        let params: Vec<String> = exec
            .params
            .iter()
            .map(|p| match p {
                None => "NULL".to_owned(),
                Some(v) => self.journal_value(v),
            })
            .collect();
        let (text, analysis, verdict, rule) = (
            st.text.clone(),
            st.analysis.clone(),
            st.verdict,
            st.rule.clone(),
        );
        let masked_idents = Arc::new(self.masked_identifiers(&text));
        if let Some(st) = self.statements.get_mut(&id) {
            if exec.types.is_some() {
                st.param_types = exec.types.clone();
            }
            st.long_data.iter_mut().for_each(|b| *b = false);
        }
        self.statement_event(
            seq,
            "execute",
            &text,
            &analysis,
            Some(id),
            &params,
            verdict,
            rule.as_deref(),
            "forwarded",
        );
        self.forward(
            packet,
            Pending::Result(Box::new(ResultRun::new(
                true,
                vec![seq],
                false,
                masked_idents,
            ))),
        );
        Ok(Step::Continue)
    }

    /// A parameter value as the journal keeps it: through the detectors, bounded.
    fn journal_value(&self, value: &[u8]) -> String {
        match std::str::from_utf8(value) {
            Ok(s) => bounded(&self.rules.masks.mask_text(s)),
            Err(_) => {
                let cut = &value[..value.len().min(MAX_RECORDED_VALUE)];
                format!("0x{}", crate::hex::encode(cut))
            }
        }
    }

    /// The identifiers of `sql` some mask rule masks by name.
    fn masked_identifiers(&self, sql: &str) -> MaskedIdents {
        let masks = &self.rules.masks;
        if !masks.has_column_rules() {
            return MaskedIdents::default();
        }
        let words = identifiers(sql);
        let mut out = MaskedIdents {
            // A derived table, a CTE or a set operation renames columns out of sight:
            // MariaDB reports a derived table's column under its outer name
            // (`org_name` = the alias, `org_table` = the derived table).
            nested: words.iter().filter(|w| *w == "select").count() > 1
                || words
                    .iter()
                    .any(|w| w == "with" || w == "union" || w == "intersect" || w == "except"),
            idents: Vec::new(),
        };
        for word in words {
            if masks.rules().iter().any(|r| r.masks_column(&word)) && !out.idents.contains(&word) {
                out.idents.push(word);
            }
        }
        out
    }

    fn hold(
        &mut self,
        packet: Packet,
        seq: u64,
        text: &str,
        rule: Option<String>,
        pending: Pending,
    ) -> Step {
        let request = self.gate.hold_request(
            seq,
            self.rules.masks.mask_text(text).into_owned(),
            rule.clone(),
        );
        self.held = Some(Held {
            packet,
            seq,
            rule,
            pending,
        });
        Step::Hold(request)
    }

    fn resolve(&mut self, outcome: HoldOutcome) -> Result<Step, SessionError> {
        let Some(held) = self.held.take() else {
            return Ok(Step::Continue);
        };
        let event = self.gate.decided(held.seq, held.rule.as_deref(), &outcome);
        self.event(crate::session::gate::APPROVAL, &event);
        if matches!(outcome, HoldOutcome::Approved { .. }) {
            self.forward(held.packet, held.pending);
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
        let err = ErrPacket::new(ER_REFUSED, SQLSTATE_REFUSED, message);
        self.refused_end(held.seq, &err);
        self.answer_err(&err);
        Ok(Step::Continue)
    }

    // ---------------------------------------------------------------- server side

    /// Relays a server packet of the current answer, with `payload` instead of its own
    /// when given, renumbered per the answer's shift.
    fn relay(&mut self, packet: &Packet, payload: Option<&[u8]>) {
        let seq = packet.seq.wrapping_add(self.shift);
        match payload {
            None if self.shift == 0 => self.to_client.extend_from_slice(&packet.raw),
            None => {
                frame::encode(&mut self.to_client, seq, &packet.payload);
            }
            Some(payload) => {
                let next = frame::encode(&mut self.to_client, seq, payload);
                let parts = next.wrapping_sub(seq);
                self.shift = self.shift.wrapping_add(parts.wrapping_sub(packet.parts));
            }
        }
        self.client_next = packet.next_seq().wrapping_add(self.shift);
    }

    fn on_server_packet(&mut self, packet: Packet) -> Result<(), SessionError> {
        let Some(pending) = self.pending.take() else {
            // Nothing asked: the server's own goodbye (an ERR before it closes).
            self.to_client.extend_from_slice(&packet.raw);
            return Ok(());
        };
        let payload = packet.payload.clone();
        let first = payload.first().copied();
        match pending {
            Pending::Simple { seq, started } => {
                let (ok, err) = match first {
                    Some(0x00) | Some(0xFE) => {
                        let ok = OkPacket::parse(&payload, self.capabilities).ok();
                        if let Some(ok) = &ok {
                            self.status = ok.status;
                        }
                        (ok, None)
                    }
                    Some(0xFF) => (None, ErrPacket::parse(&payload).ok()),
                    _ => {
                        return Err(SessionError(
                            "protocol desynchronized: expected OK or ERR".into(),
                        ))
                    }
                };
                if let Some(seq) = seq {
                    self.finish(
                        Run {
                            started,
                            ..Run::new(seq)
                        },
                        ok.as_ref(),
                        err.as_ref(),
                        None,
                    );
                }
                self.relay(&packet, None);
            }
            Pending::Text => self.relay(&packet, None),
            Pending::ChangeUser {
                user,
                mut plugin,
                client_turn: _,
            } => {
                self.relay(&packet, None);
                let done = match first {
                    Some(0x00) => {
                        if let Ok(ok) = OkPacket::parse(&payload, self.capabilities) {
                            self.status = ok.status;
                        }
                        // The server forgets the session's prepared statements.
                        self.statements.clear();
                        Some(
                            serde_json::json!({ "method": plugin, "injected": false, "user": user, "change_user": true }),
                        )
                    }
                    Some(0xFF) => {
                        let e = ErrPacket::parse(&payload).ok();
                        Some(
                            serde_json::json!({ "method": plugin, "injected": false, "user": user, "change_user": true,
                            "error": e.map(|e| serde_json::json!({ "code": e.code, "sqlstate": e.sqlstate, "message": e.message })) }),
                        )
                    }
                    Some(0xFE) => {
                        let mut r = mysql::Reader::new(&payload[1..]);
                        plugin = String::from_utf8_lossy(r.nul_or_end()).into_owned();
                        self.pending = Some(Pending::ChangeUser {
                            user: user.clone(),
                            plugin: plugin.clone(),
                            client_turn: true,
                        });
                        None
                    }
                    Some(0x01) => {
                        let fast_ok = plugin == mysql::auth::CACHING_SHA2
                            && payload.get(1) == Some(&mysql::auth::caching_sha2::FAST_AUTH_OK);
                        self.pending = Some(Pending::ChangeUser {
                            user: user.clone(),
                            plugin: plugin.clone(),
                            client_turn: !fast_ok,
                        });
                        None
                    }
                    _ => {
                        return Err(SessionError(
                            "protocol desynchronized: unexpected answer to COM_CHANGE_USER".into(),
                        ))
                    }
                };
                if let Some(event) = done {
                    self.event(super::events::kind::AUTH, &event);
                }
            }
            Pending::FieldList { seq } => {
                let done = first == Some(0xFF) || mysql::is_eof(&payload, self.deprecate_eof());
                if done {
                    if let Some(seq) = seq {
                        let err = if first == Some(0xFF) {
                            ErrPacket::parse(&payload).ok()
                        } else {
                            None
                        };
                        self.finish(Run::new(seq), None, err.as_ref(), None);
                    }
                } else {
                    self.pending = Some(Pending::FieldList { seq });
                }
                self.relay(&packet, None);
            }
            Pending::Prepare {
                text,
                analysis,
                verdict,
                rule,
                mut left,
                mut ok,
            } => {
                match ok {
                    None => {
                        if first == Some(0xFF) {
                            self.relay(&packet, None);
                            return Ok(());
                        }
                        let prepared = PrepareOk::parse(&payload)
                            .map_err(|e| SessionError(format!("server: {e}")))?;
                        let eof = !self.deprecate_eof();
                        for (n, _) in [(prepared.columns, ()), (prepared.params, ())] {
                            if n > 0 && eof {
                                left.push(false);
                            }
                            left.extend(std::iter::repeat_n(true, usize::from(n)));
                        }
                        self.statements.insert(
                            prepared.statement_id,
                            Prepared {
                                text: text.clone(),
                                analysis: analysis.clone(),
                                verdict,
                                rule: rule.clone(),
                                params: usize::from(prepared.params),
                                param_types: None,
                                long_data: vec![false; usize::from(prepared.params)],
                            },
                        );
                        ok = Some(prepared);
                    }
                    Some(_) => match left.pop() {
                        Some(true) => {
                            ColumnDef::parse(&payload)
                                .map_err(|e| SessionError(format!("server: {e}")))?;
                        }
                        Some(false) if mysql::is_eof(&payload, false) => {}
                        _ => {
                            return Err(SessionError(
                                "protocol desynchronized: unexpected packet in a COM_STMT_PREPARE answer"
                                    .into(),
                            ))
                        }
                    },
                }
                self.relay(&packet, None);
                if !left.is_empty() {
                    self.pending = Some(Pending::Prepare {
                        text,
                        analysis,
                        verdict,
                        rule,
                        left,
                        ok,
                    });
                }
            }
            Pending::Result(mut r) => {
                let more = self.on_result_packet(&mut r, &packet)?;
                if more {
                    self.pending = Some(Pending::Result(r));
                }
            }
        }
        Ok(())
    }

    /// One packet of a result answer; `Ok(true)` while the answer goes on.
    fn on_result_packet(
        &mut self,
        r: &mut ResultRun,
        packet: &Packet,
    ) -> Result<bool, SessionError> {
        let payload = &packet.payload;
        let first = payload.first().copied();
        let deprecate_eof = self.deprecate_eof();
        match r.state {
            RState::InfileData => Err(SessionError(
                "protocol desynchronized: server packet during a LOCAL INFILE upload".into(),
            )),
            RState::InfileRefused => {
                // The server's answer to the empty file: kept from the client, which
                // gets the refusal instead (with the id the server's answer had).
                let seq = r.current_seq();
                let err = ErrPacket::new(
                    ER_NOT_ALLOWED_COMMAND,
                    SQLSTATE_REFUSED,
                    "nhi-agent: LOAD DATA LOCAL INFILE is not allowed by policy",
                );
                let out = frame::packet(
                    packet.seq.wrapping_add(self.shift).wrapping_sub(2),
                    &err.encode(),
                );
                self.to_client.extend_from_slice(&out);
                self.client_next = packet.seq.wrapping_add(self.shift).wrapping_sub(1);
                let run = r.run.take().unwrap_or_else(|| Run::new(seq));
                self.finish(run, None, Some(&err), None);
                r.next = r.seqs.len();
                self.statements_refused += 1;
                Ok(false)
            }
            RState::Start => match first {
                Some(0x00) => {
                    let ok = OkPacket::parse(payload, self.capabilities)
                        .map_err(|e| SessionError(format!("server: {e}")))?;
                    self.status = ok.status;
                    let seq = r.current_seq();
                    let run = r.run.take().unwrap_or_else(|| Run::new(seq));
                    self.finish(run, Some(&ok), None, None);
                    r.next += 1;
                    self.relay(packet, None);
                    Ok(self.after_result(r, ok.status))
                }
                Some(0xFF) => {
                    let err = ErrPacket::parse(payload)
                        .map_err(|e| SessionError(format!("server: {e}")))?;
                    let seq = r.current_seq();
                    let run = r.run.take().unwrap_or_else(|| Run::new(seq));
                    self.finish(run, None, Some(&err), None);
                    r.next += 1;
                    self.relay(packet, None);
                    self.not_run(r);
                    Ok(false)
                }
                Some(0xFB) => {
                    if r.infile_allowed && !r.binary {
                        r.state = RState::InfileData;
                        self.relay(packet, None);
                    } else {
                        // Not relayed: the agent answers the server with an empty file.
                        let empty = frame::packet(packet.next_seq(), &[]);
                        self.to_server.extend_from_slice(&empty);
                        r.state = RState::InfileRefused;
                    }
                    Ok(true)
                }
                _ => {
                    let mut rd = mysql::Reader::new(payload);
                    let n = rd
                        .lenenc_int("column count")
                        .map_err(|e| SessionError(format!("server: {e}")))?;
                    if n == 0 || n > 4096 || !rd.is_empty() {
                        return Err(SessionError(format!(
                            "server: unexpected result-set header ({n} columns)"
                        )));
                    }
                    let seq = r.current_seq();
                    r.run.get_or_insert_with(|| Run::new(seq));
                    r.state = RState::Columns { left: n };
                    self.relay(packet, None);
                    Ok(true)
                }
            },
            RState::Columns { left } => {
                let def =
                    ColumnDef::parse(payload).map_err(|e| SessionError(format!("server: {e}")))?;
                if let Some(run) = r.run.as_mut() {
                    run.columns.push(def.name.clone());
                    run.defs.push(def);
                }
                r.state = if left > 1 {
                    RState::Columns { left: left - 1 }
                } else if deprecate_eof {
                    RState::Rows
                } else {
                    RState::ColumnsEof
                };
                if r.state == RState::Rows || r.state == RState::ColumnsEof {
                    self.plan(r);
                }
                self.relay(packet, None);
                Ok(true)
            }
            RState::ColumnsEof => {
                if !mysql::is_eof(payload, false) {
                    return Err(SessionError(
                        "protocol desynchronized: expected EOF after the column definitions".into(),
                    ));
                }
                r.state = RState::Rows;
                self.relay(packet, None);
                Ok(true)
            }
            RState::Rows => {
                if first == Some(0xFF) {
                    let err = ErrPacket::parse(payload)
                        .map_err(|e| SessionError(format!("server: {e}")))?;
                    let seq = r.current_seq();
                    let run = r.run.take().unwrap_or_else(|| Run::new(seq));
                    self.finish(run, None, Some(&err), None);
                    r.next += 1;
                    self.relay(packet, None);
                    self.not_run(r);
                    return Ok(false);
                }
                if mysql::is_eof(payload, deprecate_eof) {
                    let status = mysql::eof_status(payload, deprecate_eof);
                    self.status = status;
                    let seq = r.current_seq();
                    let run = r.run.take().unwrap_or_else(|| Run::new(seq));
                    let rows = run.rows;
                    self.finish(run, None, None, Some(rows));
                    r.next += 1;
                    self.relay(packet, None);
                    r.state = RState::Start;
                    return Ok(self.after_result(r, status));
                }
                self.on_row(r, packet)?;
                Ok(true)
            }
        }
    }

    /// After a complete result: more follow when the server says so.
    fn after_result(&mut self, r: &mut ResultRun, status: u16) -> bool {
        r.state = RState::Start;
        if status & status::MORE_RESULTS_EXISTS != 0 {
            // A procedure's extra results count for its statement.
            if r.next >= r.seqs.len() && !r.seqs.is_empty() {
                r.next = r.seqs.len() - 1;
            }
            true
        } else {
            self.not_run(r);
            false
        }
    }

    /// Statements after a failed one were never run.
    fn not_run(&mut self, r: &mut ResultRun) {
        while r.next < r.seqs.len() {
            let end = pg_events::StatementEnd {
                seq: r.seqs[r.next],
                note: Some(Cow::Borrowed(
                    "not run: an earlier statement of the query failed",
                )),
                ..pg_events::StatementEnd::default()
            };
            self.event(kind::STATEMENT_END, &end);
            r.next += 1;
        }
    }

    /// The masker of a result whose column definitions are all in.
    fn plan(&self, r: &mut ResultRun) {
        let masks = &self.rules.masks;
        let Some(run) = r.run.as_mut() else { return };
        if masks.is_empty() {
            return;
        }
        let rules = masks.rules();
        let masked_by_name =
            |name: &str| !name.is_empty() && rules.iter().any(|m| m.masks_column(name));
        // The name each column is masked by: its alias, the table column it comes
        // from, or, for an expression or renamed column of a statement that reads a
        // masked column, that column (masked whole: never derived values of it).
        let names: Vec<String> = run
            .defs
            .iter()
            .map(|d| {
                if masked_by_name(&d.name) {
                    d.name.clone()
                } else if masked_by_name(&d.org_name) {
                    d.org_name.clone()
                } else if (d.org_name.is_empty()
                    || d.org_name != d.name
                    || d.org_table.is_empty()
                    || r.masked_idents.nested)
                    && !r.masked_idents.idents.is_empty()
                {
                    r.masked_idents.idents[0].clone()
                } else {
                    d.name.clone()
                }
            })
            .collect();
        let infos: Vec<ColumnInfo<'_>> = run
            .defs
            .iter()
            .zip(&names)
            .map(|(d, name)| ColumnInfo {
                name,
                type_oid: value::mask_type_oid(d.column_type),
                format: 0,
            })
            .collect();
        let masker = masks.plan(&infos);
        if !masker.is_noop() {
            run.masker = Some(masker);
        }
    }

    fn on_row(&mut self, r: &mut ResultRun, packet: &Packet) -> Result<(), SessionError> {
        let enforce = self.rules.enforce;
        let record = self.rules.record_results == RecordResults::Rows;
        let Some(run) = r.run.as_mut() else {
            self.relay(packet, None);
            return Ok(());
        };
        run.rows += 1;
        let payload = &packet.payload;
        let mut new_payload: Option<Bytes> = None;
        let mut shown: Option<Vec<Option<String>>> = None;
        if r.binary {
            let types: Vec<(u8, bool)> = run
                .defs
                .iter()
                .map(|d| (d.column_type, d.flags & 0x20 != 0))
                .collect();
            let values = value::binary_row(payload, &types)
                .map_err(|e| SessionError(format!("server: {e}")))?;
            let texts: Vec<Option<&[u8]>> = values
                .iter()
                .map(|v| v.as_ref().and_then(|v| v.text.as_deref()))
                .collect();
            let changes = run
                .masker
                .as_mut()
                .and_then(|m| m.mask_values(texts.iter().copied()));
            if let Some(changes) = &changes {
                let mut new: Vec<value::NewValue<'_>> = values
                    .iter()
                    .zip(&types)
                    .map(|(v, (t, _))| match v {
                        None => value::NewValue::Null,
                        Some(v) => value::NewValue::Same(
                            v.raw,
                            value::layout(*t).unwrap_or(value::Layout::Bytes),
                        ),
                    })
                    .collect();
                for (i, changed) in changes {
                    let Some(slot) = new.get_mut(*i) else {
                        continue;
                    };
                    *slot = match (changed, types.get(*i)) {
                        (Some(bytes), Some((t, _))) if value::is_string(*t) => {
                            value::NewValue::String(bytes)
                        }
                        _ => value::NewValue::Null,
                    };
                }
                new_payload = Some(value::encode_binary_row(&new));
            }
            if record && run.recorded.len() < MAX_RECORDED_ROWS {
                let mut row: Vec<Option<String>> = texts
                    .iter()
                    .map(|v| v.map(|b| bounded(&String::from_utf8_lossy(b))))
                    .collect();
                if let Some(changes) = &changes {
                    for (i, changed) in changes {
                        if let Some(slot) = row.get_mut(*i) {
                            *slot = changed
                                .as_ref()
                                .map(|b| bounded(&String::from_utf8_lossy(b)));
                        }
                    }
                }
                shown = Some(row);
            }
        } else {
            let values =
                mysql::text_row(payload).map_err(|e| SessionError(format!("server: {e}")))?;
            let changes = run
                .masker
                .as_mut()
                .and_then(|m| m.mask_values(values.iter().copied()));
            let mut out: Vec<Option<&[u8]>> = values.clone();
            if let Some(changes) = &changes {
                for (i, changed) in changes {
                    if let Some(slot) = out.get_mut(*i) {
                        *slot = changed.as_deref();
                    }
                }
                new_payload = Some(mysql::encode_text_row(&out));
            }
            if record && run.recorded.len() < MAX_RECORDED_ROWS {
                shown = Some(
                    out.iter()
                        .map(|v| v.map(|b| bounded(&String::from_utf8_lossy(b))))
                        .collect(),
                );
            }
        }
        if let Some(row) = shown {
            run.recorded.push(row);
        }
        match new_payload {
            Some(p) if enforce => self.relay(packet, Some(&p)),
            _ => self.relay(packet, None),
        }
        Ok(())
    }

    fn finish(
        &mut self,
        run: Run,
        ok: Option<&OkPacket>,
        err: Option<&ErrPacket>,
        rows: Option<u64>,
    ) {
        let masked = run
            .masker
            .as_ref()
            .map(|m| m.masked_columns())
            .unwrap_or_default();
        let mask_not_enforced = !self.rules.enforce && !masked.is_empty();
        let recorded = (self.rules.record_results == RecordResults::Rows
            && !run.columns.is_empty())
        .then_some(run.recorded.as_slice());
        let tag = match (ok, rows) {
            (Some(ok), _) => Some(format!("OK {}", ok.affected_rows)),
            (None, Some(rows)) => Some(format!("SELECT {rows}")),
            _ => None,
        };
        let end = pg_events::StatementEnd {
            seq: run.seq,
            duration_us: run.started.elapsed().as_micros() as u64,
            tag: tag.map(Cow::Owned),
            rows: ok.map(|ok| ok.affected_rows).or(rows),
            columns: if self.rules.record_results == RecordResults::None {
                Cow::Borrowed(&[])
            } else {
                Cow::Borrowed(&run.columns)
            },
            masked,
            error: err.map(|e| pg_events::ErrorSummary {
                sqlstate: Cow::Borrowed(&e.sqlstate),
                message: Cow::Owned(error_text(e)),
            }),
            copy: None,
            result_rows: recorded.map(Cow::Borrowed),
            mask_not_enforced,
            note: None,
        };
        self.event(kind::STATEMENT_END, &end);
    }
}

impl Pending {
    fn simple(seq: Option<u64>) -> Pending {
        Pending::Simple {
            seq,
            started: Instant::now(),
        }
    }
}

impl ResultRun {
    fn new(
        binary: bool,
        seqs: Vec<u64>,
        infile_allowed: bool,
        masked_idents: Arc<MaskedIdents>,
    ) -> ResultRun {
        ResultRun {
            binary,
            seqs,
            next: 0,
            state: RState::Start,
            run: None,
            infile_allowed,
            masked_idents,
        }
    }

    fn current_seq(&self) -> u64 {
        self.seqs
            .get(self.next)
            .or(self.seqs.last())
            .copied()
            .unwrap_or(0)
    }
}

impl crate::session::Session for MysqlSession {
    fn on_client(&mut self, buf: &mut BytesMut) -> Result<Step, SessionError> {
        loop {
            if self.held.is_some() {
                return Ok(Step::Continue);
            }
            let client_turn = match &self.pending {
                Some(Pending::Result(r)) => r.state == RState::InfileData,
                Some(Pending::ChangeUser { client_turn, .. }) => *client_turn,
                _ => false,
            };
            if self.pending.is_some() && !client_turn {
                if buf.len() > MAX_CLIENT_BACKLOG {
                    return Err(SessionError(format!(
                        "client sent more than {MAX_CLIENT_BACKLOG} bytes while a command was in flight"
                    )));
                }
                return Ok(Step::Continue);
            }
            let Some(packet) = self
                .decoder
                .decode(buf)
                .map_err(|e| SessionError(format!("client: {e}")))?
            else {
                return Ok(Step::Continue);
            };
            match self.on_client_packet(packet)? {
                Step::Continue => continue,
                other => return Ok(other),
            }
        }
    }

    fn on_server(&mut self, buf: &mut BytesMut) -> Result<(), SessionError> {
        while let Some(packet) = self
            .decoder
            .decode(buf)
            .map_err(|e| SessionError(format!("server: {e}")))?
        {
            self.on_server_packet(packet)?;
        }
        Ok(())
    }

    fn resolve_hold(&mut self, outcome: HoldOutcome) -> Result<Step, SessionError> {
        self.resolve(outcome)
    }

    fn take_would_hold(&mut self) -> Vec<HoldRequest> {
        self.gate.take_would_hold()
    }

    fn push_event(&mut self, event: Event) {
        self.events.push(event);
    }

    fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn take_to_server(&mut self) -> BytesMut {
        self.to_server.split()
    }

    fn take_to_client(&mut self) -> BytesMut {
        self.to_client.split()
    }

    fn agent_error(&self, error: AgentError<'_>) -> Bytes {
        let err = match error {
            AgentError::Journal(e) => ErrPacket::new(
                1053,
                "08S01",
                format!(
                    "nhi-agent: the audit journal cannot record this session ({}); nothing more is forwarded",
                    crate::journal::root_cause(e)
                ),
            ),
            AgentError::SessionCap(message) => {
                ErrPacket::new(1927, "70100", format!("nhi-agent: {message}"))
            }
            AgentError::Shutdown => {
                ErrPacket::new(1053, "08S01", "nhi-agent: the agent is shutting down")
            }
        };
        self.err_packet(&err)
    }
}

/// Whether a statement is `LOAD DATA [LOW_PRIORITY|CONCURRENT] LOCAL INFILE` (or `LOAD
/// XML ... LOCAL`): the client is asked for a file of its own.
pub fn is_load_local(text: &str) -> bool {
    let words: Vec<String> = text
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .take(5)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    words.first().is_some_and(|w| w == "load") && words.iter().any(|w| w == "local")
}

/// The identifiers (words, backquoted names) of SQL text, lower-cased; quoted strings
/// and comments are skipped by the tokenizer.
fn identifiers(sql: &str) -> Vec<String> {
    use sqlparser::dialect::MySqlDialect;
    use sqlparser::tokenizer::{Token, Tokenizer};
    match Tokenizer::new(&MySqlDialect {}, sql).tokenize() {
        Ok(tokens) => tokens
            .into_iter()
            .filter_map(|t| match t {
                Token::Word(w) => Some(w.value.to_lowercase()),
                _ => None,
            })
            .collect(),
        // Unlexable text: every word-like run counts (more masking, never less).
        Err(_) => sql
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect(),
    }
}

/// An ERR as the journal keeps it: the SQLSTATE apart, the MySQL error code in front of
/// the message (`(1142) nhi-agent: ...`).
fn error_text(e: &ErrPacket) -> String {
    format!("({}) {}", e.code, e.message)
}

fn bounded(s: &str) -> String {
    if s.len() <= MAX_RECORDED_VALUE {
        return s.to_owned();
    }
    let mut cut = MAX_RECORDED_VALUE;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &s[..cut], s.len())
}

#[cfg(test)]
mod tests;
