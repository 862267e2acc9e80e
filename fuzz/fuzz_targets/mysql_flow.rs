//! The MySQL session as the proxy runs it after authentication (`proxy::mysql::serve`
//! hands a `MysqlSession` to `session::engine::run`): client and server bytes arrive in
//! reads, each read goes through `Session::on_client` / `Session::on_server` (commands
//! judged, refused ones answered by the agent, answers paired with the command in
//! flight, result rows masked), holds are resolved, and the staged events and bytes are
//! taken after every step, as the engine does. A `SessionError` ends the "session", as
//! it ends the connection.
//!
//! Input: a control byte, a little-endian u16 (bits 0-14 the length of the client part,
//! bit 15 set when the agent logged in with its own credential, so COM_CHANGE_USER is
//! refused), the client stream, the server stream. Both start after authentication:
//! the client's first packet is a command (sequence id 0).
//!
//! Control byte: bits 0-3 the read size (0 = whole streams), bit 4 observe mode (else
//! enforce), bits 5-6 how holds end (approved, denied, expired, approved for the
//! session), bit 7 `CLIENT_DEPRECATE_EOF` agreed.
//!
//! Properties, beyond "nothing panics or hangs":
//! - what the session stages either way is whole packets;
//! - in enforce mode, no COM_QUERY or COM_STMT_PREPARE reaching the server has a text
//!   the policy denies (however the server's NO_BACKSLASH_ESCAPES lexes it), and no
//!   request is announced as "would hold";
//! - every COM_QUERY, COM_STMT_EXECUTE, COM_INIT_DB, COM_FIELD_LIST and
//!   COM_PROCESS_KILL reaching the server was journaled first (a `statement` event,
//!   staged no later than the bytes);
//! - the journal's recorded result rows never hold the e-mail [`SECRET`] in a column
//!   masked by name, in either mode (in enforce mode they are what the client got);
//! - events are taken every step, are JSON of this session, and statement numbers
//!   increase.
#![no_main]

use std::sync::OnceLock;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nhi_agent::config::Config;
use nhi_agent::journal::Event;
use nhi_agent::mask::SessionMasks;
use nhi_agent::policy::{self, Verdict};
use nhi_agent::protocol::mysql::{caps, command, PacketDecoder};
use nhi_agent::proxy::mysql::session::{is_load_local, MAX_PACKET};
use nhi_agent::proxy::mysql::MysqlSession;
use nhi_agent::session::{Session, Step};
use nhi_agent_fuzz::{hold_outcome, parse_config, session_rules};

/// A policy with every verdict (deny, hold for approval, allow) and masks by column
/// and by detector, recording result rows.
const CONFIG: &str = r#"
[agent]
mode = "enforce"
journal = "/nonexistent/journal.db"
[[target]]
name = "db"
address = "127.0.0.1:3306"
protocol = "mysql"
[[policy]]
name = "fuzz"
record_results = "rows"
[[policy.rule]]
name = "no-drop"
verdict = "deny"
kinds = ["drop", "truncate"]
[[policy.rule]]
name = "no-unbounded-delete"
verdict = "deny"
kinds = ["delete", "update"]
without_where = true
[[policy.rule]]
name = "hold-alter"
verdict = "approve"
kinds = ["alter", "grant"]
[[policy.rule]]
name = "no-secrets"
verdict = "deny"
tables = ["secrets"]
[[policy.rule]]
name = "reads"
verdict = "allow"
kinds = ["select"]
[[mask]]
name = "pii"
columns = ["email", "*_email", "card*"]
detectors = ["all"]
strategy = "partial"
"#;

/// The value the seeds put in masked columns of server rows.
const SECRET: &str = "fuzz.secret@example.com";

const SESSION: i64 = 1;

fn config() -> &'static (Config, SessionMasks) {
    static CONFIG_: OnceLock<(Config, SessionMasks)> = OnceLock::new();
    CONFIG_.get_or_init(|| parse_config(CONFIG))
}

/// Whether the policy denies `sql` however the server lexes backslashes (the session
/// judges with the server's last NO_BACKSLASH_ESCAPES flag).
fn denied(sql: &str) -> bool {
    let (config, _) = config();
    let Some(policy) = config.policies.for_session("bot", "db", None) else {
        return false;
    };
    [false, true]
        .iter()
        .all(|&nbe| policy.decide(&policy::analyze_mysql(sql, nbe)).verdict == Verdict::Deny)
}

/// What the checks carry from step to step.
#[derive(Default)]
struct Checker {
    enforce: bool,
    /// The client may now send packets that are not commands (COM_CHANGE_USER's
    /// authentication data, a LOCAL INFILE file): forwarded packets are no longer
    /// judged as commands.
    relaying: bool,
    /// `statement` events staged so far, and the commands that reached the server.
    statements: usize,
    forwarded_commands: usize,
    last_seq: u64,
}

impl Checker {
    fn events(&mut self, session: &mut MysqlSession) {
        let events: Vec<Event> = session.take_events();
        assert!(!session.has_events(), "events are taken whole");
        for e in &events {
            assert_eq!(e.session, SESSION);
            let data: serde_json::Value =
                serde_json::from_str(&e.data).expect("event data is JSON");
            match &*e.kind {
                "statement" => {
                    self.statements += 1;
                    let seq = data["seq"].as_u64().expect("a statement has a seq");
                    assert!(
                        seq > self.last_seq,
                        "statement seq {seq} after {}",
                        self.last_seq
                    );
                    self.last_seq = seq;
                    if self.enforce && data["verdict"] == "deny" {
                        assert_eq!(data["action"], "refused", "{data}");
                    }
                }
                "statement_end" => {
                    let seq = data["seq"].as_u64().unwrap_or(0);
                    assert!(seq <= self.last_seq, "statement_end {seq} of no statement");
                    self.recorded_rows(&data);
                }
                _ => {}
            }
        }
    }

    /// The recorded rows never hold [`SECRET`] in a column a mask rule names.
    fn recorded_rows(&self, end: &serde_json::Value) {
        let (_, masks) = config();
        let (Some(columns), Some(rows)) =
            (end["columns"].as_array(), end["result_rows"].as_array())
        else {
            return;
        };
        for (i, name) in columns.iter().enumerate() {
            let Some(name) = name.as_str() else { continue };
            if !masks.rules().iter().any(|r| r.masks_column(name)) {
                continue;
            }
            for row in rows {
                if let Some(cell) = row.get(i).and_then(|c| c.as_str()) {
                    assert!(
                        !cell.contains(SECRET),
                        "column {name:?} recorded unmasked: {cell:?}"
                    );
                }
            }
        }
    }

    /// Bytes for the server: whole packets; commands journaled first; in enforce mode
    /// no denied text.
    fn to_server(&mut self, mut bytes: BytesMut) {
        for payload in whole_packets(&mut bytes, "server") {
            let Some((&code, body)) = payload.split_first() else {
                continue;
            };
            if self.relaying {
                continue;
            }
            match code {
                command::QUERY | command::STMT_PREPARE => {
                    // A prepare is journaled by its executes (or when refused or held).
                    if code == command::QUERY {
                        self.forwarded_commands += 1;
                    }
                    let sql = String::from_utf8_lossy(body);
                    if code == command::QUERY && may_load_local(&sql) {
                        self.relaying = true;
                    }
                    if self.enforce {
                        assert!(!denied(&sql), "denied statement forwarded: {sql:?}");
                    }
                }
                command::STMT_EXECUTE
                | command::INIT_DB
                | command::FIELD_LIST
                | command::PROCESS_KILL => self.forwarded_commands += 1,
                command::CHANGE_USER => self.relaying = true,
                _ => {}
            }
            assert!(
                self.forwarded_commands <= self.statements,
                "a command reached the server without a statement event"
            );
        }
    }
}

/// Whether a statement of `sql` may be a LOAD DATA LOCAL (the client then sends a file):
/// more often than the session finds one, never less.
fn may_load_local(sql: &str) -> bool {
    let lower = sql.to_lowercase();
    is_load_local(sql) || (lower.contains("load") && lower.contains("local"))
}

/// The payloads of `bytes`, which must be whole packets.
fn whole_packets(bytes: &mut BytesMut, to: &str) -> Vec<bytes::Bytes> {
    let decoder = PacketDecoder::new(MAX_PACKET);
    let mut out = Vec::new();
    while let Some(p) = decoder.decode(bytes).expect("staged bytes decode") {
        out.push(p.payload);
    }
    assert!(bytes.is_empty(), "a partial packet staged for the {to}");
    out
}

/// One side: its reads and its buffer.
struct Side<'a> {
    reads: std::slice::Chunks<'a, u8>,
    buf: BytesMut,
}

impl Side<'_> {
    /// Appends the next read; false when the stream is over.
    fn read(&mut self) -> bool {
        match self.reads.next() {
            Some(read) => {
                self.buf.extend_from_slice(read);
                true
            }
            None => false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let Some((len, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let len = u16::from_le_bytes(*len);
    let credential_held = len & 0x8000 != 0;
    let Some((client, server)) = rest.split_at_checked(usize::from(len & 0x7fff)) else {
        return;
    };
    let size = match usize::from(control & 0x0f) {
        0 => data.len().max(1),
        n => n,
    };
    let enforce = control & 0x10 == 0;
    let mut c = Side {
        reads: client.chunks(size),
        buf: BytesMut::new(),
    };
    let mut s = Side {
        reads: server.chunks(size),
        buf: BytesMut::new(),
    };
    let capabilities = caps::PROTOCOL_41
        | caps::SECURE_CONNECTION
        | caps::PLUGIN_AUTH
        | caps::TRANSACTIONS
        | caps::MULTI_STATEMENTS
        | caps::MULTI_RESULTS
        | caps::PS_MULTI_RESULTS
        | if control & 0x80 != 0 {
            caps::DEPRECATE_EOF
        } else {
            0
        };
    let mut session = MysqlSession::new(SESSION, session_rules(config(), enforce), capabilities);
    session.set_credential_held(credential_held);
    let mut check = Checker {
        enforce,
        ..Checker::default()
    };
    let mut held = false;
    let mut terminated = false;
    loop {
        if !held && !terminated {
            match session.on_client(&mut c.buf) {
                Ok(Step::Continue) => {}
                Ok(Step::Terminate) => terminated = true,
                Ok(Step::Hold(request)) => {
                    assert!(enforce, "observe mode never holds");
                    let _ = request.text.len();
                    held = true;
                }
                Err(e) => {
                    let _ = e.to_string();
                    return;
                }
            }
        }
        let would = session.take_would_hold();
        assert!(
            !enforce || would.is_empty(),
            "enforce mode holds, never announces"
        );
        // Journaled, then released: the events first.
        check.events(&mut session);
        check.to_server(session.take_to_server());
        let _ = whole_packets(&mut session.take_to_client(), "client");
        if held {
            // The decision arrives before the server's next bytes.
            held = false;
            match session.resolve_hold(hold_outcome(control)) {
                Ok(Step::Terminate) => terminated = true,
                Ok(_) => {}
                Err(_) => return,
            }
            continue;
        }
        if session.on_server(&mut s.buf).is_err() {
            return;
        }
        check.events(&mut session);
        check.to_server(session.take_to_server());
        let _ = whole_packets(&mut session.take_to_client(), "client");
        let more_client = !terminated && c.read();
        let more_server = s.read();
        if !more_client && !more_server {
            return;
        }
    }
});
