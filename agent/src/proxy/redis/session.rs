//! A Redis session on the session engine, sans IO: commands decoded, judged, journaled
//! and staged; replies paired with their commands, masked, journaled and staged.
//!
//! Pairing: every command the client sends gets exactly one entry in a FIFO
//! ([`Pending`]), in the order sent: forwarded commands wait for their server reply(ies),
//! the agent's own answers (a refusal, `+OK` to an `AUTH` it answers itself) wait until
//! every command before them was answered, so a pipelining client reads its replies in
//! the order it sent the commands. Commands the agent sends itself (the re-`AUTH` after
//! `RESET`) have entries whose reply is swallowed.
//!
//! Pub/sub: `(P|S)SUBSCRIBE`/`(P|S)UNSUBSCRIBE` get one confirmation per channel (for an
//! argument-less unsubscribe: one per subscription the connection holds, at least one);
//! the session follows the subscriptions from the confirmations. Messages are recognised
//! as RESP3 pushes (`>`), or in RESP2 as `message`/`pmessage`/`smessage` arrays while
//! the connection is subscribed; they are out of band (no command waits for them),
//! masked by channel name and journaled (`redis_push`).
//!
//! Transactions: commands between `MULTI` and `EXEC` are judged one by one as they are
//! queued. One the agent refuses poisons the transaction as a command the server
//! refused to queue would: its `EXEC` is sent as `DISCARD` and the client gets
//! `-EXECABORT`, so a transaction never runs without one of its commands. `EXEC`'s
//! reply array is masked element by element with the keys of the commands queued.
//!
//! Credentials: with a target credential the agent authenticated upstream before the
//! session started; the client's `AUTH` is answered `+OK` by the agent and never
//! forwarded (its password is not checked: the bot is identified by the kernel, not by
//! what it says), `HELLO ... AUTH u p` is forwarded without its `AUTH` clause, and
//! `RESET` (which logs the connection out) is followed by the agent's own `AUTH`.
//! Without a credential `AUTH` is relayed. Passwords are never journaled.
use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use super::events::{
    self, kind, RedisCommandEvent, RedisPush, RedisReply, MAX_ARGS, MAX_ARG_CHARS,
};
use crate::journal::{Event, SessionId};
use crate::mask::{ColumnInfo, MaskedColumn, RowMasker, SessionMasks};
use crate::policy::redis::RedisCommand;
use crate::policy::{RecordResults, Verdict};
use crate::protocol::redis::{
    encode_command, error_reply, names, ClientDecoder, Command, Decoded, Frame, RespError,
    ServerDecoder,
};
use crate::session::gate::{self, Action, Gate};
use crate::session::{AgentError, HoldOutcome, HoldRequest, SessionError, SessionRules, Step};

/// The text type's OID: key and field values are masked as text.
const TEXT_OID: u32 = 25;

/// The agent's credential, as the session uses it.
pub struct Credential {
    /// The upstream `AUTH` command (`AUTH [user] password`), encoded.
    pub auth_command: Bytes,
}

/// What the reply (or replies) to a pending entry are.
#[derive(Debug)]
enum Expect {
    /// One reply from the server.
    Reply,
    /// Confirmations of a subscribe-family command (`kind`: `subscribe`, ...); `left`
    /// is counted when the first one arrives for an argument-less unsubscribe.
    Confirmations {
        kind: &'static str,
        left: Option<usize>,
    },
    /// A command the agent sent itself: the reply is checked and swallowed.
    Hidden,
    /// The agent's own answer, released once everything before it was answered.
    Agent(Bytes),
    /// An `EXEC` sent as `DISCARD` (the transaction held a refused command): the
    /// `DISCARD` reply is swallowed and the client gets `-EXECABORT`.
    ExecAbort,
    /// `-ERR Protocol error: ...` for a malformed command: released like an agent
    /// answer, after which the session ends (nothing the client sent later is read).
    Close(Bytes),
}

/// What masking a reply needs to know about its command.
#[derive(Debug, Clone, Default)]
struct ReplyCtx {
    name: String,
    /// The command's key arguments (empty when none or unknown).
    keys: Vec<Bytes>,
    /// The field arguments of HGET / HMGET.
    fields: Vec<Bytes>,
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    expect: Expect,
    ctx: ReplyCtx,
    /// Sent between MULTI and EXEC (its reply should be QUEUED).
    in_multi: bool,
}

/// A command waiting for an approval.
struct Held {
    seq: u64,
    rule: Option<String>,
    wire: Bytes,
    pending: Pending,
    name: String,
}

/// Client-side view of a transaction.
#[derive(Debug, Default)]
struct Multi {
    /// A command of it was refused by the agent.
    poisoned: bool,
}

/// Subscriptions the server confirmed.
#[derive(Debug, Default)]
struct Subscriptions {
    channels: usize,
    patterns: usize,
    shard: usize,
}

impl Subscriptions {
    fn any(&self) -> bool {
        self.channels + self.patterns + self.shard > 0
    }

    fn count_of(&self, kind: &str) -> usize {
        match kind {
            "unsubscribe" | "subscribe" => self.channels,
            "punsubscribe" | "psubscribe" => self.patterns,
            _ => self.shard,
        }
    }

    fn set(&mut self, kind: &str, count: usize) {
        // RESP2 and RESP3 report the connection's channel + pattern count (shard
        // channels counted apart); the split between channels and patterns is
        // followed from the confirmations' kinds.
        match kind {
            "subscribe" => self.channels += 1,
            "psubscribe" => self.patterns += 1,
            "ssubscribe" => self.shard += 1,
            "unsubscribe" => self.channels = self.channels.saturating_sub(1),
            "punsubscribe" => self.patterns = self.patterns.saturating_sub(1),
            _ => self.shard = self.shard.saturating_sub(1),
        }
        if count == 0 && !kind.starts_with('s') {
            self.channels = 0;
            self.patterns = 0;
        }
    }
}

const CONFIRMATIONS: &[&str] = &[
    "subscribe",
    "psubscribe",
    "ssubscribe",
    "unsubscribe",
    "punsubscribe",
    "sunsubscribe",
];

/// The sans-IO Redis session (see the module documentation).
pub struct RedisSession {
    id: SessionId,
    rules: std::sync::Arc<SessionRules>,
    gate: Gate,
    credential: Option<Credential>,
    cdec: ClientDecoder,
    sdec: ServerDecoder,
    seq: u64,
    pending: VecDeque<Pending>,
    held: Option<Held>,
    multi: Option<Multi>,
    /// Contexts of the commands the server queued in the open transaction.
    queued: Vec<ReplyCtx>,
    resp3: bool,
    subs: Subscriptions,
    /// Why the client's input could not be read (a malformed or oversized command): its
    /// error reply waits in the FIFO and the session ends once it is staged.
    protocol_error: Option<String>,
    /// The protocol error's reply was staged for the client.
    closing: bool,
    to_server: BytesMut,
    to_client: BytesMut,
    events: Vec<Event>,
    /// Commands seen and refused, for the session's end log.
    pub commands_seen: u64,
    pub commands_refused: u64,
}

impl RedisSession {
    pub fn new(
        id: SessionId,
        rules: std::sync::Arc<SessionRules>,
        gate: Gate,
        credential: Option<Credential>,
    ) -> RedisSession {
        RedisSession {
            id,
            rules,
            gate,
            credential,
            cdec: ClientDecoder::default(),
            sdec: ServerDecoder::default(),
            seq: 0,
            pending: VecDeque::new(),
            held: None,
            multi: None,
            queued: Vec::new(),
            resp3: false,
            subs: Subscriptions::default(),
            protocol_error: None,
            closing: false,
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
            events: Vec::new(),
            commands_seen: 0,
            commands_refused: 0,
        }
    }

    fn masks(&self) -> &SessionMasks {
        &self.rules.masks
    }

    /// Why the client's input was refused as malformed, if it was: the session ended
    /// (or ends once the client has the error) for this reason.
    pub fn protocol_error(&self) -> Option<&str> {
        self.protocol_error.as_deref()
    }

    /// Releases the agent's own answers now at the front of the FIFO.
    fn release_agent_answers(&mut self) {
        while let Some(Pending {
            expect: Expect::Agent(_) | Expect::Close(_),
            ..
        }) = self.pending.front()
        {
            match self.pending.pop_front().map(|p| p.expect) {
                Some(Expect::Agent(bytes)) => self.to_client.extend_from_slice(&bytes),
                Some(Expect::Close(bytes)) => {
                    self.to_client.extend_from_slice(&bytes);
                    self.closing = true;
                }
                _ => {}
            }
        }
    }

    /// A command that cannot be read: answered as redis-server answers it (`-ERR
    /// Protocol error: <reason>`, after the replies of the commands before it), then the
    /// session ends. The reason is journaled now (`protocol_error`), before the client
    /// reads it.
    fn malformed(&mut self, error: RespError) {
        let reason = error.to_string();
        let why = format!("client: {reason}");
        self.events.push(Event::of(
            self.id,
            "protocol_error",
            &serde_json::json!({ "reason": why }),
        ));
        self.protocol_error = Some(why);
        self.pending.push_back(Pending {
            seq: self.seq,
            expect: Expect::Close(error_reply(&format!("ERR Protocol error: {reason}"))),
            ctx: ReplyCtx::default(),
            in_multi: false,
        });
        self.release_agent_answers();
    }

    /// Queues the agent's own answer to command `seq` behind what is pending (journaled
    /// as its reply now: the answer is decided).
    fn answer(&mut self, seq: u64, bytes: Bytes) {
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(frame)) = ServerDecoder::default().decode(&mut buf) {
            self.record_reply(seq, &frame.value, bytes.len(), Vec::new());
        }
        self.pending.push_back(Pending {
            seq,
            expect: Expect::Agent(bytes),
            ctx: ReplyCtx::default(),
            in_multi: false,
        });
        self.release_agent_answers();
    }

    fn refusal(name: &str, rule: Option<&str>) -> Bytes {
        match rule {
            Some(rule) => error_reply(&format!("ERR nhi-agent: {name} denied by rule {rule}")),
            None => error_reply(&format!(
                "ERR nhi-agent: {name} denied by the policy's default"
            )),
        }
    }

    /// Handles one client command.
    fn command(&mut self, decoded: Decoded<Command>) -> Result<Step, SessionError> {
        self.seq += 1;
        self.commands_seen += 1;
        let seq = self.seq;
        let cmd = decoded.value;
        let name = cmd.name();
        let subcommand = (names::has_subcommand(&name) && cmd.args.len() > 1).then(|| {
            format!(
                "{name} {}",
                String::from_utf8_lossy(&cmd.args[1]).to_ascii_uppercase()
            )
        });
        let key_spec = names::keys(&cmd.args);
        let keys: Option<Vec<&[u8]>> = key_spec
            .of(&cmd.args)
            .map(|k| k.into_iter().map(|b| &b[..]).collect());
        let args: Vec<&[u8]> = cmd.args[1..].iter().map(|b| &b[..]).collect();
        let (verdict, rule) = match &self.rules.policy {
            Some(policy) => {
                let (v, r) = policy.decide_redis(&RedisCommand {
                    name: &name,
                    with_subcommand: subcommand.as_deref(),
                    keys: keys.as_deref(),
                    args: &args,
                });
                (v, r.map(str::to_owned))
            }
            None if name == "MONITOR" => (
                Verdict::Deny,
                Some(crate::policy::redis::MONITOR_RULE.to_owned()),
            ),
            None => (Verdict::Allow, None),
        };
        // MONITOR's stream cannot be followed: refused even in observe mode.
        let action = if name == "MONITOR" {
            crate::metrics::get().request("redis", "deny", "refuse");
            Action::Refuse
        } else {
            self.gate.action(verdict, rule.as_deref())
        };
        let masked_key = keys
            .as_ref()
            .is_some_and(|k| k.iter().any(|k| self.masks_name(k)));
        let record_args = self.arg_previews(&name, &cmd.args, keys.as_deref(), masked_key);
        let in_multi = self.multi.is_some();
        let ctx = ReplyCtx {
            name: name.clone(),
            keys: key_spec
                .of(&cmd.args)
                .map(|k| k.into_iter().cloned().collect())
                .unwrap_or_default(),
            fields: match name.as_str() {
                "HGET" | "HMGET" => cmd.args.iter().skip(2).cloned().collect(),
                _ => Vec::new(),
            },
        };
        let text = {
            let mut t = name.clone();
            for a in &record_args {
                t.push(' ');
                t.push_str(&quote(a));
            }
            t
        };
        self.gate
            .observe(verdict, seq, rule.as_deref(), || text.clone());

        // What is sent upstream and what the client gets, by command.
        let credential = self.credential.is_some();
        let mut wire = if cmd.inline {
            cmd.encode()
        } else {
            decoded.raw.clone()
        };
        let mut expect = Expect::Reply;
        let mut what = "forwarded";
        let mut agent_answer: Option<Bytes> = None;
        let mut extra_hidden: Option<Bytes> = None;
        match name.as_str() {
            "AUTH" if credential => {
                agent_answer = Some(Bytes::from_static(b"+OK\r\n"));
                what = "answered";
            }
            "HELLO" if credential => {
                if let Some(stripped) = strip_hello_auth(&cmd.args) {
                    wire = encode_command(&stripped);
                    what = "rewritten";
                }
            }
            "RESET" if credential => {
                extra_hidden = self.credential.as_ref().map(|c| c.auth_command.clone());
            }
            "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" if cmd.args.len() > 1 => {
                expect = Expect::Confirmations {
                    kind: confirmation_kind(&name),
                    left: Some(cmd.args.len() - 1),
                };
            }
            "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE" => {
                expect = Expect::Confirmations {
                    kind: confirmation_kind(&name),
                    left: (cmd.args.len() > 1).then(|| cmd.args.len() - 1),
                };
            }
            "EXEC" if self.multi.as_ref().is_some_and(|m| m.poisoned) => {
                wire = encode_command(&["DISCARD"]);
                expect = Expect::ExecAbort;
                what = "rewritten";
            }
            _ => {}
        }
        let refused = matches!(action, Action::Refuse);
        let held = matches!(action, Action::Hold);
        if refused {
            what = "refused";
        } else if held {
            what = "held";
        }
        let event = RedisCommandEvent {
            seq,
            command: name.as_str().into(),
            subcommand: subcommand.as_deref().map(Into::into),
            keys: keys
                .as_ref()
                .map(|k| k.iter().map(|k| preview(&self.rules.masks, k)).collect()),
            sizes: cmd.args[1..]
                .iter()
                .take(MAX_ARGS)
                .map(|a| a.len())
                .collect(),
            args: record_args,
            argc: cmd.args.len() - 1,
            bytes: cmd.args[1..].iter().map(|a| a.len() as u64).sum(),
            inline: cmd.inline,
            in_multi,
            verdict: verdict.as_str().into(),
            rule: rule.as_deref().map(Into::into),
            action: what.into(),
            enforced: self.gate.enforce() || name == "MONITOR",
        };
        self.events.push(Event::of(self.id, kind::COMMAND, &event));
        if let Action::PassOnStanding(standing) = &action {
            self.events.push(Event::of(
                self.id,
                gate::APPROVAL,
                &gate::approval_on_standing(seq, standing),
            ));
        }
        let pending = Pending {
            seq,
            expect,
            ctx,
            in_multi,
        };
        if refused {
            self.commands_refused += 1;
            if let Some(m) = self.multi.as_mut() {
                m.poisoned = true;
            }
            self.answer(seq, Self::refusal(&name, rule.as_deref()));
            return Ok(Step::Continue);
        }
        if held {
            let request = self.gate.hold_request(seq, text, rule.clone());
            self.held = Some(Held {
                seq,
                rule,
                wire,
                pending,
                name,
            });
            return Ok(Step::Hold(request));
        }
        if let Some(bytes) = agent_answer {
            self.answer(seq, bytes);
            return Ok(Step::Continue);
        }
        self.forward(&name, wire, pending, extra_hidden);
        Ok(Step::Continue)
    }

    /// Stages a command for the server (and the client-side transaction state).
    fn forward(&mut self, name: &str, wire: Bytes, pending: Pending, hidden: Option<Bytes>) {
        let seq = pending.seq;
        self.to_server.extend_from_slice(&wire);
        self.pending.push_back(pending);
        if let Some(hidden) = hidden {
            self.to_server.extend_from_slice(&hidden);
            self.pending.push_back(Pending {
                seq,
                expect: Expect::Hidden,
                ctx: ReplyCtx::default(),
                in_multi: false,
            });
        }
        match name {
            "MULTI" => {
                self.multi.get_or_insert_with(Multi::default);
            }
            "EXEC" | "DISCARD" | "RESET" => self.multi = None,
            _ => {}
        }
    }

    /// Whether a mask rule masks values of this key (or field) name.
    fn masks_name(&self, name: &[u8]) -> bool {
        let masks = self.masks();
        !masks.is_empty() && {
            let name = String::from_utf8_lossy(name);
            masks.rules().iter().any(|r| r.masks_column(&name))
        }
    }

    /// The arguments as the journal keeps them (see [`RedisCommandEvent::args`]).
    fn arg_previews(
        &self,
        name: &str,
        args: &[Bytes],
        keys: Option<&[&[u8]]>,
        masked_key: bool,
    ) -> Vec<String> {
        let secret = secret_positions(name, args);
        let masks = self.masks();
        let key_index: Vec<usize> = match names::keys(args) {
            names::Keys::Known(ix) => ix,
            names::Keys::Unknown => Vec::new(),
        };
        let _ = keys;
        args.iter()
            .enumerate()
            .skip(1)
            .take(MAX_ARGS)
            .map(|(i, a)| {
                if secret.contains(&i) {
                    "[redacted]".to_owned()
                } else if key_index.contains(&i) {
                    preview(masks, a)
                } else if masked_key && !(i == 1 && names::has_subcommand(name)) {
                    "[masked]".to_owned()
                } else {
                    preview(masks, a)
                }
            })
            .collect()
    }

    /// Handles one server frame.
    fn reply(&mut self, decoded: Decoded<Frame>) -> Result<(), SessionError> {
        let frame = &decoded.value;
        // Out-of-band data: RESP3 pushes that are not subscription confirmations owed
        // to the front command, and RESP2 messages while subscribed.
        let push_kind = match frame {
            Frame::Push(elements) => Some(first_text(elements)),
            Frame::Array(Some(elements)) if !self.resp3 && self.subs.any() => {
                let k = first_text(elements);
                matches!(k.as_str(), "message" | "pmessage" | "smessage").then_some(k)
            }
            _ => None,
        };
        if let Some(push_kind) = push_kind {
            let owed = CONFIRMATIONS.contains(&push_kind.as_str())
                && matches!(
                    self.pending.front(),
                    Some(Pending {
                        expect: Expect::Confirmations { .. },
                        ..
                    })
                );
            if !owed {
                return self.out_of_band(decoded, &push_kind);
            }
        }
        let Some(front) = self.pending.front_mut() else {
            return Err(SessionError(
                "server: a reply with no command waiting for it".into(),
            ));
        };
        match &mut front.expect {
            Expect::Agent(_) | Expect::Close(_) => {
                return Err(SessionError(
                    "internal: an agent answer left at the front".into(),
                ))
            }
            Expect::Hidden => {
                if frame.is_error() {
                    return Err(SessionError(
                        "server: the agent's own AUTH after RESET was refused".into(),
                    ));
                }
                self.pending.pop_front();
                self.release_agent_answers();
                return Ok(());
            }
            Expect::ExecAbort => {
                let seq = front.seq;
                self.pending.pop_front();
                let answer = error_reply(
                    "EXECABORT Transaction discarded because of previous errors (nhi-agent refused a command of it).",
                );
                self.record_reply(
                    seq,
                    &Frame::Error(answer.slice(1..answer.len() - 2)),
                    answer.len(),
                    Vec::new(),
                );
                self.to_client.extend_from_slice(&answer);
                self.queued.clear();
                self.release_agent_answers();
                return Ok(());
            }
            Expect::Confirmations { kind, left } => {
                if !frame.is_error() {
                    let elements = frame.elements().unwrap_or(&[]);
                    let confirmed = first_text(elements);
                    let count = elements
                        .get(2)
                        .and_then(|c| match c {
                            Frame::Integer(i) => Some(*i as usize),
                            _ => None,
                        })
                        .unwrap_or(0);
                    if left.is_none() {
                        // Argument-less unsubscribe: one per subscription, at least one.
                        *left = Some(self.subs.count_of(kind).max(1));
                    }
                    if CONFIRMATIONS.contains(&confirmed.as_str()) {
                        self.subs.set(&confirmed, count);
                    }
                    let l = left.as_mut().expect("set above");
                    *l = l.saturating_sub(1);
                    if *l > 0 {
                        // More confirmations to come for this command.
                        self.to_client.extend_from_slice(&decoded.raw);
                        return Ok(());
                    }
                }
            }
            Expect::Reply => {}
        }
        let pending = self.pending.pop_front().expect("front exists");
        // Session state from the reply.
        match pending.ctx.name.as_str() {
            "HELLO" if !frame.is_error() => {
                self.resp3 = hello_protocol(frame) == Some(3);
            }
            "RESET" if !frame.is_error() => {
                self.resp3 = false;
                self.subs = Subscriptions::default();
                self.queued.clear();
            }
            "EXEC" | "DISCARD" => {}
            _ if pending.in_multi => {
                if matches!(frame, Frame::Simple(s) if &s[..] == b"QUEUED") {
                    self.queued.push(pending.ctx.clone());
                }
            }
            _ => {}
        }
        let (masked, changes) = if pending.ctx.name == "EXEC" {
            let ctxs = std::mem::take(&mut self.queued);
            self.mask_exec(frame, &ctxs)
        } else {
            self.mask_reply(frame, &pending.ctx)
        };
        let (bytes, out) = match &masked {
            Some(f) => {
                let b = f.to_bytes();
                (b.len(), b)
            }
            None => (decoded.raw.len(), decoded.raw.clone()),
        };
        self.record_reply(
            pending.seq,
            masked.as_ref().unwrap_or(frame),
            bytes,
            changes,
        );
        self.to_client.extend_from_slice(&out);
        self.release_agent_answers();
        Ok(())
    }

    fn record_reply(&mut self, seq: u64, frame: &Frame, bytes: usize, masked: Vec<MaskedColumn>) {
        if self.rules.record_results == RecordResults::None {
            return;
        }
        let event = RedisReply {
            seq,
            r#type: frame.type_name().into(),
            bytes: bytes as u64,
            elements: aggregate_len(frame),
            excerpt: excerpt(frame).map(Into::into),
            masked,
        };
        self.events.push(Event::of(self.id, kind::REPLY, &event));
    }

    /// A push or pub/sub message: masked by channel name, journaled, passed on.
    fn out_of_band(
        &mut self,
        decoded: Decoded<Frame>,
        push_kind: &str,
    ) -> Result<(), SessionError> {
        let elements = decoded.value.elements().unwrap_or(&[]);
        // message: [kind, channel, payload]; pmessage: [kind, pattern, channel, payload].
        let (channel, payload_at) = match push_kind {
            "message" | "smessage" => (elements.get(1), 2),
            "pmessage" => (elements.get(2), 3),
            _ => (None, usize::MAX),
        };
        let channel_name = channel.and_then(Frame::as_bytes).map(|c| c.to_vec());
        let mut cache = Maskers::default();
        let mut new = None;
        if !self.masks().is_empty() {
            let column = channel_name.clone().unwrap_or_default();
            let mut changed = false;
            let out: Vec<Frame> = elements
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let masked = if payload_at == usize::MAX || i == payload_at {
                        self.mask_leaves(e, &column, &mut cache)
                    } else {
                        None
                    };
                    changed |= masked.is_some();
                    masked.unwrap_or_else(|| e.clone())
                })
                .collect();
            if changed {
                new = Some(match &decoded.value {
                    Frame::Push(_) => Frame::Push(out),
                    _ => Frame::Array(Some(out)),
                });
            }
        }
        let out = new
            .as_ref()
            .map(Frame::to_bytes)
            .unwrap_or(decoded.raw.clone());
        let payload = new
            .as_ref()
            .unwrap_or(&decoded.value)
            .elements()
            .and_then(|e| e.get(payload_at))
            .cloned();
        let event = RedisPush {
            kind: push_kind.into(),
            channel: channel_name.map(|c| preview(self.masks(), &c)),
            bytes: out.len() as u64,
            excerpt: payload.as_ref().and_then(excerpt).map(Into::into),
            masked: cache.report(),
        };
        self.events.push(Event::of(self.id, kind::PUSH, &event));
        self.to_client.extend_from_slice(&out);
        Ok(())
    }

    /// The reply masked for its command's keys, if anything changed.
    fn mask_reply(&self, frame: &Frame, ctx: &ReplyCtx) -> (Option<Frame>, Vec<MaskedColumn>) {
        if self.masks().is_empty() {
            return (None, Vec::new());
        }
        let mut cache = Maskers::default();
        let masked = self.mask_for(frame, ctx, &mut cache);
        (masked, cache.report())
    }

    fn mask_exec(&self, frame: &Frame, ctxs: &[ReplyCtx]) -> (Option<Frame>, Vec<MaskedColumn>) {
        if self.masks().is_empty() {
            return (None, Vec::new());
        }
        let mut cache = Maskers::default();
        let masked = match frame {
            Frame::Array(Some(elements)) if elements.len() == ctxs.len() => {
                let mut changed = false;
                let out: Vec<Frame> = elements
                    .iter()
                    .zip(ctxs)
                    .map(|(e, c)| {
                        let m = self.mask_for(e, c, &mut cache);
                        changed |= m.is_some();
                        m.unwrap_or_else(|| e.clone())
                    })
                    .collect();
                changed.then_some(Frame::Array(Some(out)))
            }
            // Unpaired (an EXEC that did not run: null or error): the detectors.
            other => self.mask_leaves(other, b"", &mut cache),
        };
        (masked, cache.report())
    }

    /// Masks one reply to the command described by `ctx`.
    fn mask_for(&self, frame: &Frame, ctx: &ReplyCtx, cache: &mut Maskers) -> Option<Frame> {
        // Subscription confirmations name channels, not values.
        if frame.is_error() || ctx.name.ends_with("SUBSCRIBE") {
            return None;
        }
        let key0: &[u8] = ctx.keys.first().map(|k| &k[..]).unwrap_or(b"");
        match (ctx.name.as_str(), frame.unwrap_attributes()) {
            // Element i is key i's value.
            ("MGET", Frame::Array(Some(elements))) if elements.len() == ctx.keys.len() => {
                let columns: Vec<&[u8]> = ctx.keys.iter().map(|k| &k[..]).collect();
                self.mask_elements(elements, &columns, cache)
                    .map(|v| Frame::Array(Some(v)))
            }
            // Element i is field i's value (the field's name when a rule masks it).
            ("HMGET", Frame::Array(Some(elements))) if elements.len() == ctx.fields.len() => {
                let columns: Vec<&[u8]> = ctx
                    .fields
                    .iter()
                    .map(|f| if self.masks_name(f) { &f[..] } else { key0 })
                    .collect();
                self.mask_elements(elements, &columns, cache)
                    .map(|v| Frame::Array(Some(v)))
            }
            ("HGET", value) => {
                let column = match ctx.fields.first() {
                    Some(f) if self.masks_name(f) => &f[..],
                    _ => key0,
                };
                self.mask_leaves(value, column, cache)
            }
            // Field/value pairs: each value by its field's name or the key.
            ("HGETALL" | "HRANDFIELD", Frame::Array(Some(elements))) if elements.len() % 2 == 0 => {
                let columns: Vec<&[u8]> = elements
                    .chunks(2)
                    .flat_map(|pair| {
                        let field = pair[0].as_bytes().unwrap_or(b"");
                        let column = if self.masks_name(field) { field } else { key0 };
                        [None, Some(column)]
                    })
                    .map(|c| c.unwrap_or(b"\0field"))
                    .collect();
                self.mask_elements(elements, &columns, cache)
                    .map(|v| Frame::Array(Some(v)))
            }
            (_, Frame::Map(pairs)) => {
                let mut changed = false;
                let out: Vec<(Frame, Frame)> = pairs
                    .iter()
                    .map(|(k, v)| {
                        let field = k.as_bytes().unwrap_or(b"");
                        let column = if self.masks_name(field) {
                            field
                        } else {
                            self.column_of(ctx)
                        };
                        let m = self.mask_leaves(v, column, cache);
                        changed |= m.is_some();
                        (k.clone(), m.unwrap_or_else(|| v.clone()))
                    })
                    .collect();
                changed.then_some(Frame::Map(out))
            }
            (_, value) => self.mask_leaves(value, self.column_of(ctx), cache),
        }
        .map(|masked| match frame {
            // Attributes stay as they came around the masked value.
            Frame::Attribute { attrs, .. } => Frame::Attribute {
                attrs: attrs.clone(),
                value: Box::new(masked),
            },
            _ => masked,
        })
    }

    /// The name every value of a reply is masked under: the key a rule masks, else the
    /// first key (the detectors apply either way).
    fn column_of<'c>(&self, ctx: &'c ReplyCtx) -> &'c [u8] {
        ctx.keys
            .iter()
            .find(|k| self.masks_name(k))
            .or(ctx.keys.first())
            .map(|k| &k[..])
            .unwrap_or(b"")
    }

    fn mask_elements(
        &self,
        elements: &[Frame],
        columns: &[&[u8]],
        cache: &mut Maskers,
    ) -> Option<Vec<Frame>> {
        let mut changed = false;
        let out: Vec<Frame> = elements
            .iter()
            .zip(columns)
            .map(|(e, c)| {
                // Field names of HGETALL-like replies are names, not values.
                let m = if *c == b"\0field" {
                    None
                } else {
                    self.mask_leaves(e, c, cache)
                };
                changed |= m.is_some();
                m.unwrap_or_else(|| e.clone())
            })
            .collect();
        changed.then_some(out)
    }

    /// Masks every string value in `frame` as a value of `column`: bulk and verbatim
    /// strings (status replies, errors and numbers are not values), map values (not
    /// their keys), attributes' values.
    fn mask_leaves(&self, frame: &Frame, column: &[u8], cache: &mut Maskers) -> Option<Frame> {
        match frame {
            Frame::Bulk(Some(value)) => cache
                .mask(self.masks(), column, value)
                .map(|v| Frame::Bulk(Some(Bytes::from(v)))),
            Frame::Verbatim { format, text } => {
                cache
                    .mask(self.masks(), column, text)
                    .map(|v| Frame::Verbatim {
                        format: *format,
                        text: Bytes::from(v),
                    })
            }
            Frame::Array(Some(v)) => self
                .mask_all(v, column, cache)
                .map(|v| Frame::Array(Some(v))),
            Frame::Set(v) => self.mask_all(v, column, cache).map(Frame::Set),
            Frame::Push(v) => self.mask_all(v, column, cache).map(Frame::Push),
            Frame::Map(pairs) => {
                let mut changed = false;
                let out: Vec<(Frame, Frame)> = pairs
                    .iter()
                    .map(|(k, v)| {
                        let m = self.mask_leaves(v, column, cache);
                        changed |= m.is_some();
                        (k.clone(), m.unwrap_or_else(|| v.clone()))
                    })
                    .collect();
                changed.then_some(Frame::Map(out))
            }
            Frame::Attribute { attrs, value } => {
                self.mask_leaves(value, column, cache)
                    .map(|v| Frame::Attribute {
                        attrs: attrs.clone(),
                        value: Box::new(v),
                    })
            }
            _ => None,
        }
    }

    fn mask_all(&self, v: &[Frame], column: &[u8], cache: &mut Maskers) -> Option<Vec<Frame>> {
        let mut changed = false;
        let out: Vec<Frame> = v
            .iter()
            .map(|e| {
                let m = self.mask_leaves(e, column, cache);
                changed |= m.is_some();
                m.unwrap_or_else(|| e.clone())
            })
            .collect();
        changed.then_some(out)
    }
}

/// One value masker per key (or field) name, for one reply.
#[derive(Default)]
struct Maskers {
    by_name: HashMap<Vec<u8>, RowMasker>,
    /// Values of no key (replies of keyless commands) the detectors changed.
    keyless: u64,
}

impl Maskers {
    /// `value` masked as a value of key (or field) `column`; an empty `column` is no
    /// key: only the detectors apply (a `columns = ["*"]` rule masks values of keys,
    /// not `INFO` or `HELLO` answers).
    fn mask(&mut self, masks: &SessionMasks, column: &[u8], value: &[u8]) -> Option<Vec<u8>> {
        if column.is_empty() {
            let text = String::from_utf8_lossy(value);
            return match masks.mask_text(&text) {
                std::borrow::Cow::Borrowed(_) => None,
                std::borrow::Cow::Owned(new) => {
                    self.keyless += 1;
                    Some(new.into_bytes())
                }
            };
        }
        let masker = self.by_name.entry(column.to_vec()).or_insert_with(|| {
            let name = String::from_utf8_lossy(column);
            masks.plan(&[ColumnInfo {
                name: &name,
                type_oid: TEXT_OID,
                format: 0,
            }])
        });
        masker
            .mask_values([Some(value)])
            .and_then(|mut changes| changes.pop())
            .map(|(_, v)| v.unwrap_or_default())
    }

    fn report(&self) -> Vec<MaskedColumn> {
        let mut out: Vec<MaskedColumn> = self
            .by_name
            .values()
            .flat_map(RowMasker::masked_columns)
            .collect();
        out.sort_by(|a, b| (&a.column, &a.rule).cmp(&(&b.column, &b.rule)));
        if self.keyless > 0 {
            out.push(MaskedColumn {
                column: "(no key)".into(),
                rule: "(detectors)".into(),
                strategy: "".into(),
                values: self.keyless,
            });
        }
        out
    }
}

impl crate::session::Session for RedisSession {
    fn on_client(&mut self, buf: &mut BytesMut) -> Result<Step, SessionError> {
        loop {
            if self.protocol_error.is_some() {
                // redis-server reads nothing after a protocol error; once the error is
                // staged (behind the replies owed before it) the session ends.
                buf.clear();
                return Ok(if self.closing {
                    Step::Terminate
                } else {
                    Step::Continue
                });
            }
            let decoded = match self.cdec.decode(buf) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => return Ok(Step::Continue),
                Err(e) => {
                    self.malformed(e);
                    continue;
                }
            };
            match self.command(decoded)? {
                Step::Continue => {}
                other => return Ok(other),
            }
        }
    }

    fn on_server(&mut self, buf: &mut BytesMut) -> Result<(), SessionError> {
        while let Some(decoded) = self
            .sdec
            .decode(buf)
            .map_err(|e| SessionError(format!("server: {e}")))?
        {
            self.reply(decoded)?;
        }
        Ok(())
    }

    fn resolve_hold(&mut self, outcome: HoldOutcome) -> Result<Step, SessionError> {
        let Some(held) = self.held.take() else {
            return Err(SessionError(
                "internal: a decision with nothing held".into(),
            ));
        };
        let event = self.gate.decided(held.seq, held.rule.as_deref(), &outcome);
        self.events.push(Event::of(self.id, gate::APPROVAL, &event));
        match &outcome {
            HoldOutcome::Approved { .. } => {
                let name = held.name.clone();
                self.forward(&name, held.wire, held.pending, None);
            }
            HoldOutcome::Denied { by, .. } => {
                self.commands_refused += 1;
                if let Some(m) = self.multi.as_mut() {
                    m.poisoned = true;
                }
                let answer = error_reply(&format!(
                    "ERR nhi-agent: {} was not approved (denied by {by})",
                    held.name
                ));
                self.answer(held.seq, answer);
            }
            HoldOutcome::Expired => {
                self.commands_refused += 1;
                if let Some(m) = self.multi.as_mut() {
                    m.poisoned = true;
                }
                let answer = error_reply(&format!(
                    "ERR nhi-agent: {} was not approved in time",
                    held.name
                ));
                self.answer(held.seq, answer);
            }
        }
        Ok(Step::Continue)
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
        std::mem::take(&mut self.to_server)
    }

    fn take_to_client(&mut self) -> BytesMut {
        std::mem::take(&mut self.to_client)
    }

    fn agent_error(&self, error: AgentError<'_>) -> Bytes {
        match error {
            AgentError::Journal(e) => error_reply(&journal_refusal(e)),
            AgentError::SessionCap(message) => error_reply(&format!("ERR nhi-agent: {message}")),
            AgentError::Shutdown => error_reply("ERR nhi-agent: the agent is shutting down"),
        }
    }
}

/// What a client reads when the journal cannot record its command (or its session's
/// start-up): nothing was forwarded.
pub(super) fn journal_refusal(e: &(dyn std::error::Error + 'static)) -> String {
    format!(
        "ERR nhi-agent: the audit journal cannot record ({}); nothing was forwarded",
        crate::journal::root_cause(e)
    )
}

fn confirmation_kind(name: &str) -> &'static str {
    match name {
        "SUBSCRIBE" => "subscribe",
        "PSUBSCRIBE" => "psubscribe",
        "SSUBSCRIBE" => "ssubscribe",
        "UNSUBSCRIBE" => "unsubscribe",
        "PUNSUBSCRIBE" => "punsubscribe",
        _ => "sunsubscribe",
    }
}

/// The first element's text, lower case (a push's or message's kind).
fn first_text(elements: &[Frame]) -> String {
    elements
        .first()
        .and_then(Frame::as_bytes)
        .map(|b| String::from_utf8_lossy(b).to_ascii_lowercase())
        .unwrap_or_default()
}

/// `HELLO`'s arguments without its `AUTH user password` clause; `None` if it has none.
fn strip_hello_auth(args: &[Bytes]) -> Option<Vec<Bytes>> {
    let at = args.iter().position(|a| a.eq_ignore_ascii_case(b"AUTH"))?;
    let mut out = args[..at].to_vec();
    out.extend(args.iter().skip(at + 3).cloned());
    Some(out)
}

/// The argument indexes holding secrets, never journaled.
fn secret_positions(name: &str, args: &[Bytes]) -> Vec<usize> {
    let upper = |i: usize| {
        args.get(i)
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default()
    };
    match name {
        "AUTH" => (1..args.len()).collect(),
        // HELLO ... AUTH user password; MIGRATE ... AUTH password | AUTH2 user password.
        "HELLO" | "MIGRATE" => {
            let mut out = Vec::new();
            for i in 1..args.len() {
                match upper(i).as_str() {
                    "AUTH" if name == "HELLO" => out.push(i + 2),
                    "AUTH" => out.push(i + 1),
                    "AUTH2" => out.push(i + 2),
                    _ => {}
                }
            }
            out
        }
        "CONFIG" if upper(1) == "SET" => (2..args.len())
            .step_by(2)
            .filter(|&i| {
                let p = upper(i);
                p.contains("PASS") || p.contains("AUTH") || p.contains("SECRET")
            })
            .map(|i| i + 1)
            .collect(),
        // ACL SETUSER name >password <password #hash !hash.
        "ACL" => (2..args.len())
            .filter(|&i| {
                args[i]
                    .first()
                    .is_some_and(|c| matches!(c, b'>' | b'<' | b'#' | b'!'))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// An argument as the journal shows it: text through the detectors, bounded.
fn preview(masks: &SessionMasks, arg: &[u8]) -> String {
    let text = String::from_utf8_lossy(arg);
    let masked = masks.mask_text(&text);
    if masked.chars().count() > MAX_ARG_CHARS {
        let mut t: String = masked.chars().take(MAX_ARG_CHARS).collect();
        t.push('…');
        t
    } else {
        masked.into_owned()
    }
}

/// An argument as a redis-cli line shows it: quoted when needed.
pub fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && !arg
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'')
    {
        return arg.to_owned();
    }
    format!("{arg:?}")
}

/// The protocol a successful HELLO reply reports.
fn hello_protocol(frame: &Frame) -> Option<i64> {
    let find = |k: &Frame, v: &Frame| {
        (k.as_bytes() == Some(b"proto"))
            .then_some(v)
            .and_then(|v| match v {
                Frame::Integer(i) => Some(*i),
                _ => None,
            })
    };
    match frame.unwrap_attributes() {
        Frame::Map(pairs) => pairs.iter().find_map(|(k, v)| find(k, v)),
        Frame::Array(Some(e)) => e
            .chunks(2)
            .find_map(|p| p.get(1).and_then(|v| find(&p[0], v))),
        _ => None,
    }
}

fn aggregate_len(frame: &Frame) -> Option<u64> {
    match frame.unwrap_attributes() {
        Frame::Array(Some(v)) | Frame::Set(v) | Frame::Push(v) => Some(v.len() as u64),
        Frame::Map(p) => Some(p.len() as u64),
        _ => None,
    }
}

/// A short text of a reply for the journal (already masked).
fn excerpt(frame: &Frame) -> Option<String> {
    const MAX: usize = 120;
    let text = match frame.unwrap_attributes() {
        Frame::Simple(s) | Frame::Error(s) | Frame::BulkError(s) => {
            String::from_utf8_lossy(s).into_owned()
        }
        Frame::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        Frame::Verbatim { text, .. } => String::from_utf8_lossy(text).into_owned(),
        Frame::Integer(i) => i.to_string(),
        Frame::Double(d) | Frame::BigNumber(d) => String::from_utf8_lossy(d).into_owned(),
        Frame::Boolean(b) => b.to_string(),
        _ => return None,
    };
    Some(if text.chars().count() > MAX {
        let mut t: String = text.chars().take(MAX).collect();
        t.push('…');
        t
    } else {
        text
    })
}

/// Reads back a journaled command (used by the CLI's views).
pub use events::RedisCommandEvent as CommandRecord;

#[cfg(test)]
mod tests;
