//! The PostgreSQL session as the proxy runs it after authentication
//! (`proxy::postgres::session_loop`): client and server bytes arrive in reads, each
//! read's whole messages go through `Flow::on_client` / `Flow::on_server` (statements
//! analysed and judged, refusals synthesised, results masked and summarised, cancel
//! keys substituted), holds are resolved, and the staged events and bytes are taken.
//! A `FlowError` or a decoder error ends the "session", as it ends the connection.
//!
//! Input: a control byte, the length of the client part (u16, little-endian), the
//! client stream, the server stream. Both may start with their start-up and
//! authentication messages (the golden captures do): the client's start-up packets and
//! password messages, and the server's messages up to AuthenticationOk, are consumed
//! before the flow starts, as `serve` and `authenticate` consume them.
//!
//! Control byte: bits 0-3 the read size (0 = whole streams), bit 4 observe mode (else
//! enforce), bits 5-6 how holds end (approved, denied, expired, approved for the
//! session).
#![no_main]

use std::sync::OnceLock;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nhi_agent::config::Config;
use nhi_agent::mask::SessionMasks;
use nhi_agent::protocol::postgres::{
    AuthRequest, BackendDecoder, BackendMessage, Decoded, FrontendDecoder, FrontendMessage,
};
use nhi_agent::proxy::postgres::{Flow, Step};
use nhi_agent_fuzz::{hold_outcome, parse_config, session_rules};

/// A policy with every verdict (deny, hold for approval, allow) and masks by column
/// and by detector, recording result rows.
const CONFIG: &str = r#"
[agent]
mode = "enforce"
journal = "/nonexistent/journal.db"
[[target]]
name = "db"
address = "127.0.0.1:5432"
protocol = "postgres"
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
[[mask]]
name = "pii"
columns = ["email", "*_email", "card*"]
detectors = ["all"]
strategy = "partial"
"#;

fn config() -> &'static (Config, SessionMasks) {
    static CONFIG_: OnceLock<(Config, SessionMasks)> = OnceLock::new();
    CONFIG_.get_or_init(|| parse_config(CONFIG))
}

/// One side: its reads, its buffer, its decoder.
struct Side<'a, D> {
    reads: std::slice::Chunks<'a, u8>,
    buf: BytesMut,
    decoder: D,
}

impl<D> Side<'_, D> {
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
    let Some((client, server)) = rest.split_at_checked(usize::from(u16::from_le_bytes(*len)))
    else {
        return;
    };
    let size = match usize::from(control & 0x0f) {
        0 => data.len().max(1),
        n => n,
    };
    let mut c = Side {
        reads: client.chunks(size),
        buf: BytesMut::new(),
        decoder: FrontendDecoder::new(),
    };
    let mut s = Side {
        reads: server.chunks(size),
        buf: BytesMut::new(),
        decoder: BackendDecoder::new(),
    };

    // Start-up and authentication, consumed as `serve` and `authenticate` do.
    let mut first: Option<Decoded<FrontendMessage>> = None;
    while first.is_none() {
        match c.decoder.decode(&mut c.buf) {
            Ok(Some(m)) => match m.message {
                FrontendMessage::SslRequest
                | FrontendMessage::GssEncRequest
                | FrontendMessage::Startup(_)
                | FrontendMessage::AuthResponse(_) => {}
                FrontendMessage::CancelRequest { .. } => return,
                _ => first = Some(m),
            },
            Ok(None) if c.read() => {}
            Ok(None) => break,
            Err(_) => return,
        }
    }
    c.decoder.startup_done();
    loop {
        match s.decoder.decode(&mut s.buf) {
            Ok(Some(m)) => match m.message {
                BackendMessage::Authentication(AuthRequest::Ok) => break,
                BackendMessage::ErrorResponse(_) => return,
                _ => {}
            },
            Ok(None) if s.read() => {}
            Ok(None) => return,
            Err(_) => return,
        }
    }

    let mut flow = Flow::new(
        1,
        session_rules(config(), control & 0x10 == 0),
        [1, 2, 3, 4],
    );
    let mut held = false;
    let mut terminated = false;
    let mut pending = first;
    loop {
        // Client messages, unless one is held.
        while !held && !terminated {
            let msg = match pending.take() {
                Some(m) => m,
                None => match c.decoder.decode(&mut c.buf) {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(_) => return,
                },
            };
            match flow.on_client(msg) {
                Ok(Step::Continue) => {}
                Ok(Step::Terminate) => terminated = true,
                Ok(Step::Hold(request)) => {
                    let _ = request.text.len();
                    held = true;
                }
                Err(e) => {
                    let _ = e.to_string();
                    return;
                }
            }
        }
        let _ = flow.take_would_hold();
        let _ = flow.take_events();
        loop {
            match s.decoder.decode(&mut s.buf) {
                Ok(Some(m)) => {
                    if flow.on_server(m).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        let _ = flow.take_events();
        let _ = flow.take_to_server();
        let _ = flow.take_to_client();
        let _ = (flow.tx_status(), flow.outstanding(), flow.is_holding());
        if held {
            held = false;
            match flow.resolve_hold(hold_outcome(control)) {
                Ok(Step::Terminate) => terminated = true,
                Ok(_) => {}
                Err(_) => return,
            }
            continue;
        }
        let more_client = !terminated && c.read();
        let more_server = s.read();
        if !more_client && !more_server {
            return;
        }
    }
});
