//! The session without sockets: packets in, staged bytes and events out.
use std::sync::Arc;

use bytes::BytesMut;

use super::*;
use crate::mask::{HashKey, MaskRule, RawMaskRule, SessionMasks};
use crate::policy::{Policy, RawPolicy};
use crate::protocol::mysql::{put_lenenc_bytes, value::ty};
use crate::session::Session;

fn policy(toml_text: &str) -> Policy {
    #[derive(serde::Deserialize)]
    struct File {
        policy: Vec<toml::Spanned<RawPolicy>>,
    }
    let file: File = toml::from_str(toml_text).expect("policy toml");
    Policy::from_raw(file.policy.into_iter().next().expect("one policy"))
        .unwrap_or_else(|p| panic!("policy: {}", p.message))
}

fn masks(toml_text: &str) -> SessionMasks {
    #[derive(serde::Deserialize)]
    struct File {
        mask: Vec<toml::Spanned<RawMaskRule>>,
    }
    let file: File = toml::from_str(toml_text).expect("mask toml");
    let rules: Vec<MaskRule> = file
        .mask
        .into_iter()
        .map(|r| MaskRule::from_raw(r).unwrap_or_else(|p| panic!("mask: {}", p.message)))
        .collect();
    SessionMasks::new(rules, Arc::new(HashKey::from_bytes([7; 32])))
}

const RULES: &str = r#"
[[policy]]
[[policy.rule]]
name = "no-drop"
verdict = "deny"
kinds = ["drop"]
[[policy.rule]]
name = "no-unbounded-delete"
verdict = "deny"
kinds = ["delete"]
without_where = true
"#;

const PII: &str = r#"
[[mask]]
name = "pii"
columns = ["email"]
detectors = ["email"]
"#;

fn session(masks: SessionMasks, deprecate_eof: bool) -> MysqlSession {
    let rules = SessionRules {
        policy: Some(policy(RULES)),
        enforce: true,
        masks,
        record_results: RecordResults::Rows,
    };
    let caps = caps::PROTOCOL_41
        | caps::MULTI_STATEMENTS
        | caps::MULTI_RESULTS
        | if deprecate_eof {
            caps::DEPRECATE_EOF
        } else {
            0
        };
    MysqlSession::new(1, Arc::new(rules), caps)
}

fn command(code: u8, body: &[u8]) -> BytesMut {
    let mut payload = vec![code];
    payload.extend_from_slice(body);
    BytesMut::from(&frame::packet(0, &payload)[..])
}

fn packets(bytes: &[u8]) -> Vec<Packet> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(p) = PacketDecoder::new(1 << 24).decode(&mut buf).unwrap() {
        out.push(p);
    }
    assert!(buf.is_empty());
    out
}

fn json(e: &Event) -> serde_json::Value {
    serde_json::from_str(&e.data).expect("event data is JSON")
}

fn kinds(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.kind.to_string()).collect()
}

fn column(name: &str, org_name: &str, org_table: &str, t: u8) -> Vec<u8> {
    let mut p = BytesMut::new();
    for s in ["def", "shop", org_table, org_table, name, org_name] {
        put_lenenc_bytes(&mut p, s.as_bytes());
    }
    p.extend_from_slice(&[0x0c, 45, 0, 80, 0, 0, 0, t, 0, 0, 0, 0, 0]);
    p.to_vec()
}

fn eof(status: u16) -> Vec<u8> {
    let s = status.to_le_bytes();
    vec![0xfe, 0, 0, s[0], s[1]]
}

/// A server answer: the packets' payloads framed from sequence id 1.
fn answer(payloads: &[Vec<u8>]) -> BytesMut {
    let mut out = BytesMut::new();
    let mut seq = 1;
    for p in payloads {
        seq = frame::encode(&mut out, seq, p);
    }
    out
}

#[test]
fn a_refused_statement_is_answered_with_err_1142_and_the_session_goes_on() {
    let mut s = session(SessionMasks::none(), false);
    let mut c = command(command::QUERY, b"drop table users");
    assert!(matches!(s.on_client(&mut c).unwrap(), Step::Continue));
    assert!(s.take_to_server().is_empty(), "nothing reaches the server");
    let out = packets(&s.take_to_client());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].seq, 1);
    let err = ErrPacket::parse(&out[0].payload).unwrap();
    assert_eq!((err.code, err.sqlstate.as_str()), (1142, "42000"));
    assert!(err.message.contains("rule \"no-drop\""), "{}", err.message);
    let events = s.take_events();
    assert_eq!(kinds(&events), ["statement", "statement_end"]);
    assert_eq!(json(&events[0])["action"], "refused");
    // The next command is forwarded as it came.
    let mut c = command(command::QUERY, b"select 1");
    s.on_client(&mut c).unwrap();
    assert_eq!(
        &s.take_to_server()[..],
        &command(command::QUERY, b"select 1")[..]
    );
}

#[test]
fn a_multi_statement_query_is_refused_whole_when_one_statement_is() {
    let mut s = session(SessionMasks::none(), false);
    let mut c = command(command::QUERY, b"select 1; delete from users; select 2");
    s.on_client(&mut c).unwrap();
    assert!(s.take_to_server().is_empty());
    let events = s.take_events();
    let statements: Vec<_> = events.iter().filter(|e| e.kind == "statement").collect();
    assert_eq!(statements.len(), 3);
    assert_eq!(json(statements[1])["rule"], "no-unbounded-delete");
    assert_eq!(json(statements[0])["verdict"], "allow");
}

#[test]
fn commands_wait_for_the_answer_in_flight() {
    let mut s = session(SessionMasks::none(), false);
    let mut c = command(command::QUERY, b"select 1");
    c.extend_from_slice(&command(command::PING, b""));
    s.on_client(&mut c).unwrap();
    assert_eq!(s.take_to_server().len(), 4 + 9);
    assert_eq!(c.len(), 5, "the ping waits");
    let mut a = answer(&[OkPacket::default().encode().to_vec()]);
    s.on_server(&mut a).unwrap();
    s.on_client(&mut c).unwrap();
    assert!(c.is_empty());
    assert_eq!(s.take_to_server().len(), 5);
}

fn users_result(deprecate_eof: bool, org_name: &str, name: &str) -> BytesMut {
    let mut p = vec![
        vec![2],
        column("id", "id", "users", ty::LONG),
        column(
            name,
            org_name,
            if org_name.is_empty() { "" } else { "users" },
            ty::VAR_STRING,
        ),
    ];
    if !deprecate_eof {
        p.push(eof(2));
    }
    p.push(encode_row(&[Some(b"1"), Some(b"ada@example.com")]));
    p.push(encode_row(&[Some(b"2"), None]));
    if deprecate_eof {
        let mut end = OkPacket {
            status: 2,
            ..OkPacket::default()
        }
        .encode()
        .to_vec();
        end[0] = 0xfe;
        p.push(end);
    } else {
        p.push(eof(2));
    }
    answer(&p)
}

fn encode_row(values: &[Option<&[u8]>]) -> Vec<u8> {
    mysql::encode_text_row(values).to_vec()
}

#[test]
fn text_rows_are_masked_by_column_alias_and_derived_expression() {
    for deprecate_eof in [false, true] {
        for (sql, org_name, name) in [
            ("select id, email from users", "email", "email"),
            ("select id, email as e from users", "email", "e"),
            ("select id, concat(email) from users", "", "concat(email)"),
        ] {
            let mut s = session(masks(PII), deprecate_eof);
            let mut c = command(command::QUERY, sql.as_bytes());
            s.on_client(&mut c).unwrap();
            s.take_to_server();
            let mut a = users_result(deprecate_eof, org_name, name);
            let whole = a.len();
            s.on_server(&mut a).unwrap();
            let out = s.take_to_client();
            let got = packets(&out);
            let rows: Vec<_> = got
                .iter()
                .filter(|p| {
                    mysql::text_row(&p.payload).is_ok_and(|v| v.first() == Some(&Some(&b"1"[..])))
                })
                .collect();
            assert_eq!(rows.len(), 1, "{sql}");
            let values = mysql::text_row(&rows[0].payload).unwrap();
            assert_eq!(values[1], Some(&b"[redacted]"[..]), "{sql}");
            // Sequence ids are consecutive from 1.
            for (i, p) in got.iter().enumerate() {
                assert_eq!(p.seq as usize, i + 1, "{sql}");
            }
            assert!(out.len() < whole);
            let events = s.take_events();
            let end = events.iter().find(|e| e.kind == "statement_end").unwrap();
            assert_eq!(json(end)["rows"], 2, "{sql}");
            assert_eq!(json(end)["masked"][0]["rule"], "pii");
            assert!(!end.data.contains("ada@"), "{sql}");
        }
    }
}

#[test]
fn the_answer_split_at_every_byte_gives_the_same_output() {
    let mut whole = session(masks(PII), false);
    whole
        .on_client(&mut command(command::QUERY, b"select id, email from users"))
        .unwrap();
    let answer_bytes = users_result(false, "email", "email");
    whole.on_server(&mut answer_bytes.clone()).unwrap();
    let expected = whole.take_to_client();
    for cut in 0..answer_bytes.len() {
        let mut s = session(masks(PII), false);
        s.on_client(&mut command(command::QUERY, b"select id, email from users"))
            .unwrap();
        let mut buf = BytesMut::from(&answer_bytes[..cut]);
        s.on_server(&mut buf).unwrap();
        buf.extend_from_slice(&answer_bytes[cut..]);
        s.on_server(&mut buf).unwrap();
        assert_eq!(s.take_to_client(), expected, "cut at {cut}");
    }
}

#[test]
fn binary_rows_are_masked_and_parameters_journaled_through_the_detectors() {
    let mut s = session(masks(PII), false);
    s.on_client(&mut command(
        command::STMT_PREPARE,
        b"select id, email from users where email = ?",
    ))
    .unwrap();
    s.take_to_server();
    // PREPARE OK: id 9, 2 columns, 1 param; then param def + EOF, column defs + EOF.
    let ok = vec![0, 9, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0];
    s.on_server(&mut answer(&[
        ok,
        column("?", "", "", ty::VAR_STRING),
        eof(2),
        column("id", "id", "users", ty::LONG),
        column("email", "email", "users", ty::VAR_STRING),
        eof(2),
    ]))
    .unwrap();
    assert_eq!(packets(&s.take_to_client()).len(), 6);
    // EXECUTE with "ada@example.com" bound as a string.
    let mut body = vec![9, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, ty::VAR_STRING, 0, 15];
    body.extend_from_slice(b"ada@example.com");
    s.on_client(&mut command(command::STMT_EXECUTE, &body))
        .unwrap();
    s.take_to_server();
    let events = s.take_events();
    let statement = events.iter().find(|e| e.kind == "statement").unwrap();
    assert_eq!(json(statement)["params"], serde_json::json!(["[redacted]"]));
    assert_eq!(json(statement)["protocol"], "execute");
    let row = value::encode_binary_row(&[
        value::NewValue::Same(&7i32.to_le_bytes(), value::Layout::Int(4)),
        value::NewValue::String(b"ada@example.com"),
    ]);
    s.on_server(&mut answer(&[
        vec![2],
        column("id", "id", "users", ty::LONG),
        column("email", "email", "users", ty::VAR_STRING),
        eof(2),
        row.to_vec(),
        eof(2),
    ]))
    .unwrap();
    let out = packets(&s.take_to_client());
    let types = [(ty::LONG, false), (ty::VAR_STRING, false)];
    let values = value::binary_row(&out[4].payload, &types).unwrap();
    assert_eq!(values[0].as_ref().unwrap().text.as_deref(), Some(&b"7"[..]));
    assert_eq!(
        values[1].as_ref().unwrap().text.as_deref(),
        Some(&b"[redacted]"[..])
    );
}

#[test]
fn load_data_local_needs_a_rule_and_an_unasked_infile_request_is_refused() {
    let mut s = session(SessionMasks::none(), false);
    s.on_client(&mut command(
        command::QUERY,
        b"LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t",
    ))
    .unwrap();
    assert!(s.take_to_server().is_empty());
    let events = s.take_events();
    assert_eq!(json(&events[0])["rule"], RULE_LOCAL_INFILE);
    let refused = packets(&s.take_to_client());
    assert_eq!(
        ErrPacket::parse(&refused[0].payload).unwrap().code,
        ER_REFUSED
    );
    // A statement that was not LOAD DATA LOCAL but got an infile request anyway.
    s.on_client(&mut command(command::QUERY, b"select 1"))
        .unwrap();
    s.take_to_server();
    let mut req = answer(&[b"\xfb/etc/passwd".to_vec()]);
    s.on_server(&mut req).unwrap();
    assert!(s.take_to_client().is_empty(), "the request is not relayed");
    let to_server = packets(&s.take_to_server());
    assert_eq!((to_server[0].seq, to_server[0].payload.len()), (2, 0));
    // The server's answer to the empty file: the client gets the refusal, id 1.
    let mut ok = BytesMut::new();
    frame::encode(&mut ok, 3, &OkPacket::default().encode());
    s.on_server(&mut ok).unwrap();
    let out = packets(&s.take_to_client());
    assert_eq!(out[0].seq, 1);
    assert_eq!(
        ErrPacket::parse(&out[0].payload).unwrap().code,
        ER_NOT_ALLOWED_COMMAND
    );
}

#[test]
fn unsupported_commands_are_refused_without_reaching_the_server() {
    let mut s = session(SessionMasks::none(), false);
    s.on_client(&mut command(command::BINLOG_DUMP, &[0; 10]))
        .unwrap();
    assert!(s.take_to_server().is_empty());
    let out = packets(&s.take_to_client());
    assert!(ErrPacket::parse(&out[0].payload)
        .unwrap()
        .message
        .contains("COM_BINLOG_DUMP"));
}

#[test]
fn mysql_executable_comments_and_dashes_are_opaque() {
    for sql in [
        "select 1 /*! ; drop table t */",
        "select 1 --1",
        "select /*M!100000 sleep(1) */ 1",
    ] {
        let a = policy::analyze_mysql(sql, false);
        assert_eq!(a.statements.len(), 1, "{sql}");
        assert!(a.statements[0].opaque, "{sql}");
    }
    let a = policy::analyze_mysql(
        "select `email` from `shop`.`users` where id = 1 -- note",
        false,
    );
    assert_eq!(a.statements[0].tables, ["shop.users"]);
    assert!(!a.statements[0].opaque);
    let a = policy::analyze_mysql("select 'a\\'; drop table t; --'", false);
    assert_eq!(a.statements.len(), 1, "a backslash escapes the quote");
    assert!(policy::analyze_mysql("select 'a\\'", true).statements[0].opaque);
}

#[test]
fn a_held_statement_waits_then_goes_or_is_refused() {
    const HOLD: &str = r#"
[[policy]]
[[policy.rule]]
name = "needs-approval"
verdict = "approve"
kinds = ["update"]
"#;
    let rules = SessionRules {
        policy: Some(policy(HOLD)),
        enforce: true,
        masks: SessionMasks::none(),
        record_results: RecordResults::Summary,
    };
    let mut s = MysqlSession::new(1, Arc::new(rules), caps::PROTOCOL_41);
    let mut c = command(command::QUERY, b"update users set name = 'x' where id = 1");
    c.extend_from_slice(&command(command::PING, b""));
    let Step::Hold(request) = s.on_client(&mut c).unwrap() else {
        panic!("held");
    };
    assert_eq!(request.rule.as_deref(), Some("needs-approval"));
    assert!(s.take_to_server().is_empty());
    // Nothing behind the held command is read meanwhile.
    assert!(matches!(s.on_client(&mut c).unwrap(), Step::Continue));
    assert_eq!(c.len(), 5);
    s.resolve_hold(HoldOutcome::Approved {
        by: "alice".into(),
        note: Default::default(),
    })
    .unwrap();
    assert_eq!(
        &s.take_to_server()[..],
        &command(command::QUERY, b"update users set name = 'x' where id = 1")[..]
    );
    s.on_server(&mut answer(&[OkPacket {
        affected_rows: 1,
        ..OkPacket::default()
    }
    .encode()
    .to_vec()]))
        .unwrap();
    s.on_client(&mut c).unwrap();
    assert_eq!(s.take_to_server().len(), 5, "the ping follows");
    s.on_server(&mut answer(&[OkPacket::default().encode().to_vec()]))
        .unwrap();
    s.take_to_client();
    // A second one, denied: ERR with sequence id 1.
    let mut c = command(command::QUERY, b"update users set name = 'y' where id = 2");
    assert!(matches!(s.on_client(&mut c).unwrap(), Step::Hold(_)));
    s.resolve_hold(HoldOutcome::Expired).unwrap();
    assert!(s.take_to_server().is_empty());
    let out = packets(&s.take_to_client());
    assert_eq!(out[0].seq, 1);
    assert!(ErrPacket::parse(&out[0].payload)
        .unwrap()
        .message
        .contains("not approved in time"));
}

/// Garbage from either side is an error (the connection closes), never a panic: random
/// packets after each kind of command, and every prefix of valid answers cut and
/// corrupted at each byte.
#[test]
fn garbage_is_an_error_never_a_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let commands: [(u8, &[u8]); 4] = [
        (command::QUERY, b"select id, email from users"),
        (
            command::STMT_PREPARE,
            b"select email from users where id = ?",
        ),
        (command::PING, b""),
        (command::FIELD_LIST, b"users\0"),
    ];
    for round in 0..500 {
        let (code, body) = commands[round % commands.len()];
        let mut s = session(masks(PII), round % 2 == 0);
        s.on_client(&mut command(code, body)).unwrap();
        let mut garbage = BytesMut::new();
        for _ in 0..(next() % 6 + 1) {
            let len = (next() % 40) as usize;
            let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            frame::encode(&mut garbage, (next() % 4) as u8, &payload);
        }
        let _ = s.on_server(&mut garbage);
        // And from the client: a random command packet.
        let len = (next() % 40) as usize;
        let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let mut c = BytesMut::from(&frame::packet(0, &payload)[..]);
        let mut fresh = session(masks(PII), false);
        let _ = fresh.on_client(&mut c);
    }
    // A valid answer with one byte changed, at every position.
    let valid = users_result(false, "email", "email");
    for at in 0..valid.len() {
        for delta in [1u8, 0x7f, 0xff] {
            let mut corrupted = valid.clone();
            corrupted[at] = corrupted[at].wrapping_add(delta);
            let mut s = session(masks(PII), false);
            s.on_client(&mut command(command::QUERY, b"select id, email from users"))
                .unwrap();
            let _ = s.on_server(&mut corrupted);
            // Whatever was relayed never holds the unmasked value.
            let out = s.take_to_client();
            assert!(
                !out.windows(7).any(|w| w == b"example"),
                "corrupted at {at}"
            );
        }
    }
}

fn change_user(user: &str) -> BytesMut {
    let mut body = user.as_bytes().to_vec();
    body.push(0);
    body.push(20);
    body.extend_from_slice(&[9; 20]);
    body.extend_from_slice(b"shop\0");
    body.extend_from_slice(&45u16.to_le_bytes());
    body.extend_from_slice(b"mysql_native_password\0");
    command(command::CHANGE_USER, &body)
}

#[test]
fn change_user_is_relayed_with_its_auth_switch_or_refused_with_the_credential() {
    let mut s = session(SessionMasks::none(), false);
    s.capabilities |= caps::SECURE_CONNECTION;
    s.on_client(&mut change_user("other")).unwrap();
    assert_eq!(
        packets(&s.take_to_server())[0].payload[0],
        command::CHANGE_USER
    );
    let events = s.take_events();
    assert_eq!(kinds(&events), ["mysql_change_user"]);
    assert_eq!(json(&events[0])["user"], "other");
    // The auth response (twenty 0x09 bytes) is not journaled.
    assert!(!events[0].data.contains("\\t\\t"));
    // The server switches plugin: the client's answer (id 3) is relayed, not a command.
    let mut switch = b"\xfemysql_native_password\0".to_vec();
    switch.extend_from_slice(&[7; 20]);
    switch.push(0);
    s.on_server(&mut answer(&[switch])).unwrap();
    assert_eq!(packets(&s.take_to_client())[0].seq, 1);
    let mut auth = BytesMut::from(&frame::packet(2, &[5; 20])[..]);
    s.on_client(&mut auth).unwrap();
    assert_eq!(packets(&s.take_to_server())[0].seq, 2);
    let mut ok = BytesMut::new();
    frame::encode(&mut ok, 3, &OkPacket::default().encode());
    s.on_server(&mut ok).unwrap();
    let events = s.take_events();
    assert_eq!(kinds(&events), ["mysql_auth"]);
    assert_eq!(json(&events[0])["change_user"], true);
    // Commands go on.
    s.on_client(&mut command(command::PING, b"")).unwrap();
    assert_eq!(s.take_to_server().len(), 5);

    // With the agent's credential: refused, the server never sees it.
    let mut s = session(SessionMasks::none(), false);
    s.set_credential_held(true);
    s.on_client(&mut change_user("root")).unwrap();
    assert!(s.take_to_server().is_empty());
    let out = packets(&s.take_to_client());
    assert!(ErrPacket::parse(&out[0].payload)
        .unwrap()
        .message
        .contains("COM_CHANGE_USER"));
}

#[test]
fn observe_mode_forwards_what_it_would_refuse_and_journals_the_verdict() {
    let rules = SessionRules {
        policy: Some(policy(RULES)),
        enforce: false,
        masks: masks(PII),
        record_results: RecordResults::Summary,
    };
    let mut s = MysqlSession::new(1, Arc::new(rules), caps::PROTOCOL_41);
    s.on_client(&mut command(command::QUERY, b"drop table users"))
        .unwrap();
    assert_eq!(packets(&s.take_to_server()).len(), 1, "forwarded");
    let events = s.take_events();
    assert_eq!(json(&events[0])["verdict"], "deny");
    assert_eq!(json(&events[0])["enforced"], false);
    assert_eq!(json(&events[0])["action"], "forwarded");
}

#[test]
fn the_agents_own_errors_carry_the_sequence_id_the_client_expects() {
    let mut s = session(SessionMasks::none(), false);
    let shutdown = s.agent_error(AgentError::Shutdown);
    assert_eq!(packets(&shutdown)[0].seq, 1);
    // In the middle of an answer: the next id of the answer.
    s.on_client(&mut command(command::QUERY, b"select id, email from users"))
        .unwrap();
    let mut partial = users_result(false, "email", "email");
    let _ = partial.split_off(30);
    s.on_server(&mut partial).unwrap();
    let relayed = packets(&s.take_to_client());
    let next = relayed.last().unwrap().seq + 1;
    let err = s.agent_error(AgentError::SessionCap("max_session_duration reached"));
    let err = packets(&err);
    assert_eq!(err[0].seq, next);
    assert!(ErrPacket::parse(&err[0].payload)
        .unwrap()
        .message
        .contains("max_session_duration"));
}

/// MariaDB reports a derived table's column under its outer name (`org_name` "x",
/// `org_table` "t"): a statement that reads a masked column through one has its
/// renamed columns masked whole.
#[test]
fn a_masked_column_renamed_in_a_derived_table_is_masked() {
    let mut s = session(masks(PII), false);
    s.on_client(&mut command(
        command::QUERY,
        b"select x from (select email as x from users) t",
    ))
    .unwrap();
    s.take_to_server();
    s.on_server(&mut answer(&[
        vec![1],
        column("x", "x", "t", ty::VAR_STRING),
        eof(2),
        encode_row(&[Some(b"someone")]),
        eof(2),
    ]))
    .unwrap();
    let out = packets(&s.take_to_client());
    assert_eq!(
        mysql::text_row(&out[3].payload).unwrap(),
        vec![Some(&b"[redacted]"[..])]
    );
    // A plain read of an unmasked column is left alone.
    let mut s = session(masks(PII), false);
    s.on_client(&mut command(command::QUERY, b"select name from users"))
        .unwrap();
    s.on_server(&mut answer(&[
        vec![1],
        column("name", "name", "users", ty::VAR_STRING),
        eof(2),
        encode_row(&[Some(b"Ada")]),
        eof(2),
    ]))
    .unwrap();
    let out = packets(&s.take_to_client());
    assert_eq!(
        mysql::text_row(&out[3].payload).unwrap(),
        vec![Some(&b"Ada"[..])]
    );
}
