//! What the MySQL proxy does with each side's bytes: `PacketDecoder::decode` fed read
//! by read (as `proxy::mysql::serve` and `MysqlSession` call it), then every message
//! parser the proxy applies to a packet's payload: the v10 greeting, the
//! HandshakeResponse41 / SSL request, the authentication replies, OK / ERR / EOF,
//! column definitions, `COM_STMT_PREPARE`'s OK, text and binary rows and
//! `COM_STMT_EXECUTE`'s parameters.
//!
//! Input: a control byte (bits 0-6 the read size, 0 = one read; bit 7 unused), a
//! header byte `n` and `n & 7` column-type bytes (the columns binary rows and executes
//! are decoded with: `value::ty` codes by index, bit 7 = UNSIGNED, bit 6 = sent as
//! long data), then the packet stream.
//!
//! Properties: nothing panics or hangs; how the stream is cut into reads changes
//! nothing (the same input is decoded whole too); a packet's raw bytes are exactly what
//! was consumed and re-frame from its payload; the decoder never waits with more than
//! its bound buffered; what the proxy re-encodes decodes back to itself (a greeting the
//! agent sends, a handshake response it forwards, text and binary rows it rewrites
//! after masking, an OK it synthesises).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nhi_agent::protocol::mysql::value::{self, NewValue};
use nhi_agent::protocol::mysql::{
    self as mysql, caps, frame, AuthReply, ColumnDef, ErrPacket, Greeting, HandshakeResponse,
    OkPacket, Packet, PacketDecoder, PrepareOk,
};
use nhi_agent_fuzz::{reads, split_control};

/// The bound the start-up uses (`proxy::mysql::MAX_STARTUP_PACKET`): small enough that
/// inputs reach it.
const LIMIT: usize = 64 << 10;

/// The column types binary rows and executes are decoded with, by index.
const TYPES: [u8; 16] = [
    value::ty::TINY,
    value::ty::SHORT,
    value::ty::LONG,
    value::ty::LONGLONG,
    value::ty::FLOAT,
    value::ty::DOUBLE,
    value::ty::NULL,
    value::ty::DATE,
    value::ty::DATETIME,
    value::ty::TIME,
    value::ty::NEWDECIMAL,
    value::ty::VAR_STRING,
    value::ty::BLOB,
    value::ty::JSON,
    value::ty::YEAR,
    0x42, // unknown: refused
];

/// Every packet of `data` fed in `control`'s reads, and whether the decoder refused.
fn packets(control: u8, data: &[u8]) -> (Vec<Packet>, bool) {
    let decoder = PacketDecoder::new(LIMIT);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for read in reads(control, data) {
        buf.extend_from_slice(read);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(p)) => {
                    assert_eq!(before - buf.len(), p.raw.len());
                    assert!(p.payload.len() <= LIMIT);
                    if p.parts == 1 {
                        assert_eq!(frame::packet(p.seq, &p.payload), p.raw);
                    }
                    out.push(p);
                }
                Ok(None) => {
                    // Waiting for more: never with more than one bounded packet buffered.
                    assert!(buf.len() < LIMIT + 4 * 256, "{} bytes buffered", buf.len());
                    break;
                }
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

/// The greeting as the agent offers it to a client when it holds the credential: its
/// own 20-byte scramble and plugin. The client must read back exactly that.
fn greeting(g: &Greeting) {
    let mut offered = g.clone();
    offered.capabilities &= !(caps::STRIPPED | caps::SSL);
    offered.capabilities |= caps::PLUGIN_AUTH | caps::SECURE_CONNECTION;
    offered.mariadb_caps = 0;
    offered.scramble = b"!!!!!!!!!!!!!!!!!!!!".to_vec();
    offered.auth_plugin = Some("mysql_native_password".into());
    let back = Greeting::parse(&offered.encode()).expect("the offered greeting decodes");
    assert_eq!(back, offered);
    // Relayed unchanged (no credential): the scramble the client signs is the server's.
    let relayed = Greeting::parse(&g.encode()).expect("a re-encoded greeting decodes");
    if g.capabilities & caps::SECURE_CONNECTION != 0 && g.scramble.len() >= 20 {
        assert_eq!(relayed.scramble[..20], g.scramble[..20]);
    }
    assert_eq!(relayed.capabilities, g.capabilities);
}

fn handshake_response(payload: &[u8]) {
    let Ok(r) = HandshakeResponse::parse(payload) else {
        return;
    };
    // The agent forwards the response re-encoded: one round reaches a fixed point.
    let once = r.encode();
    let back = HandshakeResponse::parse(&once).expect("a re-encoded response decodes");
    assert_eq!(back.encode(), once);
    assert_eq!(back.user, r.user);
    assert_eq!(back.auth_response, r.auth_response);
    assert_eq!(back.capabilities, r.capabilities);
    assert_eq!(back.attributes, r.attributes);
    assert_eq!(back.ssl_request, r.ssl_request);
}

fn generic(payload: &[u8], columns: &[(u8, bool)], long_data: &[bool]) {
    let _ = AuthReply::parse(payload, caps::PROTOCOL_41);
    if let Ok(ok) = OkPacket::parse(payload, caps::PROTOCOL_41) {
        let back = OkPacket::parse(&ok.encode(), caps::PROTOCOL_41).expect("an OK decodes");
        assert_eq!(
            (back.affected_rows, back.last_insert_id, back.status),
            (ok.affected_rows, ok.last_insert_id, ok.status)
        );
    }
    if let Ok(err) = ErrPacket::parse(payload) {
        if err.sqlstate.len() == 5 {
            let back = ErrPacket::parse(&err.encode()).expect("an ERR decodes");
            assert_eq!(back, err);
        }
    }
    for deprecate_eof in [false, true] {
        if mysql::is_eof(payload, deprecate_eof) {
            let _ = mysql::eof_status(payload, deprecate_eof);
        }
    }
    let _ = ColumnDef::parse(payload);
    let _ = PrepareOk::parse(payload);
    if let Ok(values) = mysql::text_row(payload) {
        let again = mysql::encode_text_row(&values);
        assert_eq!(
            mysql::text_row(&again).expect("a re-encoded row decodes"),
            values
        );
    }
    if let Ok(values) = value::binary_row(payload, columns) {
        assert_eq!(values.len(), columns.len());
        let new: Vec<NewValue<'_>> = values
            .iter()
            .zip(columns)
            .map(|(v, &(t, _))| match v {
                None => NewValue::Null,
                Some(v) => NewValue::Same(v.raw, value::layout(t).expect("decoded")),
            })
            .collect();
        let again = value::encode_binary_row(&new);
        let back = value::binary_row(&again, columns).expect("a re-encoded row decodes");
        assert_eq!(back, values);
    }
    for previous in [None, Some(columns)] {
        if let Ok(exec) = value::Execute::parse(payload, columns.len(), previous, long_data) {
            assert_eq!(exec.params.len(), columns.len());
        }
    }
}

fn check(packets: &[Packet], columns: &[(u8, bool)], long_data: &[bool]) {
    for p in packets {
        let payload = &p.payload[..];
        if let Ok(g) = Greeting::parse(payload) {
            greeting(&g);
        }
        handshake_response(payload);
        generic(payload, columns, long_data);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((control, rest)) = split_control(data) else {
        return;
    };
    let Some((&header, rest)) = rest.split_first() else {
        return;
    };
    let n = usize::from(header & 7).min(rest.len());
    let (types, stream) = rest.split_at(n);
    let columns: Vec<(u8, bool)> = types
        .iter()
        .map(|&b| (TYPES[usize::from(b & 0x0f)], b & 0x80 != 0))
        .collect();
    let long_data: Vec<bool> = types.iter().map(|&b| b & 0x40 != 0).collect();

    let (cut, cut_err) = packets(control, stream);
    let (whole, whole_err) = packets(0, stream);
    assert_eq!(cut_err, whole_err);
    assert_eq!(cut, whole);
    check(&whole, &columns, &long_data);
});
