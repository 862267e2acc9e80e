//! The flow without sockets: messages in, staged bytes and events out.
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::mask::{HashKey, MaskRule, RawMaskRule, SessionMasks};
use crate::policy::{Policy, RawPolicy};
use crate::protocol::postgres::{BackendDecoder, FrontendDecoder, PgStr};

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

const NO_DROP: &str = r#"
[[policy]]
[[policy.rule]]
name = "no-drop"
verdict = "deny"
kinds = ["drop"]
"#;

fn flow(policy_text: Option<&str>, enforce: bool, masks: SessionMasks) -> Flow {
    let rules = SessionRules {
        policy: policy_text.map(policy),
        enforce,
        masks,
        record_results: RecordResults::Summary,
    };
    let mut f = Flow::new(1, Arc::new(rules), [9, 9, 9, 9]);
    // The startup's ReadyForQuery.
    f.on_server(backend(&BackendMessage::ReadyForQuery { status: b'I' }))
        .unwrap();
    f.take_to_client();
    f
}

fn frontend(m: &FrontendMessage) -> Decoded<FrontendMessage> {
    let mut buf = BytesMut::from(&m.to_bytes()[..]);
    let mut dec = FrontendDecoder::new();
    dec.startup_done();
    dec.decode(&mut buf).unwrap().unwrap()
}

fn backend(m: &BackendMessage) -> Decoded<BackendMessage> {
    let mut buf = BytesMut::from(&m.to_bytes()[..]);
    BackendDecoder::new().decode(&mut buf).unwrap().unwrap()
}

fn query(sql: &str) -> Decoded<FrontendMessage> {
    frontend(&FrontendMessage::Query {
        sql: PgStr::from(sql.to_owned()),
    })
}

/// Every backend message in `bytes`.
fn decode_all(bytes: &[u8]) -> Vec<BackendMessage> {
    let mut buf = BytesMut::from(bytes);
    let mut dec = BackendDecoder::new();
    let mut out = Vec::new();
    while let Some(m) = dec.decode(&mut buf).unwrap() {
        out.push(m.message);
    }
    assert!(buf.is_empty(), "whole frames only");
    out
}

fn events(f: &mut Flow) -> Vec<(String, serde_json::Value)> {
    f.take_events()
        .into_iter()
        .map(|e| (e.kind.to_string(), serde_json::from_str(&e.data).unwrap()))
        .collect()
}

fn field(name: &str, type_oid: u32, format: i16) -> FieldDescription {
    FieldDescription {
        name: PgStr::from(name.to_owned()),
        table_oid: 0,
        column: 0,
        type_oid,
        type_size: -1,
        type_modifier: -1,
        format,
    }
}

fn row(values: &[Option<&[u8]>]) -> Decoded<BackendMessage> {
    let frame = encode::data_row(values);
    let mut buf = BytesMut::from(&frame[..]);
    BackendDecoder::new().decode(&mut buf).unwrap().unwrap()
}

#[test]
fn an_allowed_query_is_journaled_forwarded_and_completed() {
    let mut f = flow(Some(NO_DROP), true, SessionMasks::none());
    let q = query("select 1");
    let raw = q.raw.clone();
    assert!(matches!(f.on_client(q).unwrap(), Step::Continue));
    let ev = events(&mut f);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].0, "statement");
    assert_eq!(ev[0].1["verdict"], "allow");
    assert_eq!(ev[0].1["action"], "forwarded");
    assert_eq!(&f.take_to_server()[..], &raw[..], "forwarded as is");
    f.on_server(backend(&BackendMessage::RowDescription {
        fields: vec![field("?column?", 23, 0)],
    }))
    .unwrap();
    f.on_server(row(&[Some(b"1")])).unwrap();
    f.on_server(backend(&BackendMessage::CommandComplete {
        tag: crate::protocol::postgres::CommandTag(PgStr::from_static("SELECT 1")),
    }))
    .unwrap();
    f.on_server(backend(&BackendMessage::ReadyForQuery { status: b'I' }))
        .unwrap();
    let ev = events(&mut f);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].0, "statement_end");
    assert_eq!(ev[0].1["rows"], 1);
    assert_eq!(ev[0].1["tag"], "SELECT 1");
    assert_eq!(ev[0].1["columns"], serde_json::json!(["?column?"]));
    assert_eq!(decode_all(&f.take_to_client()).len(), 4, "all relayed");
    assert_eq!(f.outstanding(), 0);
}

#[test]
fn a_refused_query_is_answered_by_the_agent_with_the_current_transaction_status() {
    let mut f = flow(Some(NO_DROP), true, SessionMasks::none());
    // Enter a transaction.
    f.on_client(query("begin")).unwrap();
    f.take_to_server();
    f.on_server(backend(&BackendMessage::CommandComplete {
        tag: crate::protocol::postgres::CommandTag(PgStr::from_static("BEGIN")),
    }))
    .unwrap();
    f.on_server(backend(&BackendMessage::ReadyForQuery { status: b'T' }))
        .unwrap();
    f.take_to_client();
    events(&mut f);

    f.on_client(query("drop table t")).unwrap();
    assert!(f.take_to_server().is_empty(), "the server never sees it");
    let answer = decode_all(&f.take_to_client());
    match &answer[..] {
        [BackendMessage::ErrorResponse(e), BackendMessage::ReadyForQuery { status }] => {
            assert_eq!(e.code(), Some("42501"));
            assert!(e.message().unwrap().contains("no-drop"));
            assert_eq!(*status, b'T', "still in the transaction");
        }
        other => panic!("{other:?}"),
    }
    let ev = events(&mut f);
    assert_eq!(ev[0].1["action"], "refused");
    assert_eq!(ev[1].0, "statement_end");
    assert_eq!(ev[1].1["error"]["sqlstate"], "42501");
}

#[test]
fn a_refusal_waits_for_the_answers_to_earlier_pipelined_requests() {
    let mut f = flow(Some(NO_DROP), true, SessionMasks::none());
    f.on_client(query("select 1")).unwrap();
    f.on_client(query("drop table t")).unwrap();
    assert!(
        f.take_to_client().is_empty(),
        "the refusal must not overtake select 1's answer"
    );
    f.on_server(backend(&BackendMessage::EmptyQueryResponse))
        .unwrap();
    f.on_server(backend(&BackendMessage::ReadyForQuery { status: b'I' }))
        .unwrap();
    let answer = decode_all(&f.take_to_client());
    assert!(matches!(answer[0], BackendMessage::EmptyQueryResponse));
    assert!(matches!(answer[1], BackendMessage::ReadyForQuery { .. }));
    assert!(matches!(answer[2], BackendMessage::ErrorResponse(_)));
    assert!(matches!(answer[3], BackendMessage::ReadyForQuery { .. }));
}

#[test]
fn a_refused_parse_drops_its_batch_and_errors_before_the_syncs_ready() {
    let mut f = flow(Some(NO_DROP), true, SessionMasks::none());
    let parse = frontend(&FrontendMessage::Parse {
        name: PgStr::from_static(""),
        sql: PgStr::from_static("drop table t"),
        param_types: vec![],
    });
    let bind = frontend(&FrontendMessage::Bind {
        portal: PgStr::from_static(""),
        statement: PgStr::from_static(""),
        param_formats: vec![],
        params: vec![],
        result_formats: vec![],
    });
    let execute = frontend(&FrontendMessage::Execute {
        portal: PgStr::from_static(""),
        max_rows: 0,
    });
    let sync = frontend(&FrontendMessage::Sync);
    let sync_raw = sync.raw.clone();
    for m in [parse, bind, execute, sync] {
        f.on_client(m).unwrap();
    }
    assert_eq!(&f.take_to_server()[..], &sync_raw[..], "only the Sync");
    f.on_server(backend(&BackendMessage::ReadyForQuery { status: b'I' }))
        .unwrap();
    let answer = decode_all(&f.take_to_client());
    assert!(matches!(&answer[0], BackendMessage::ErrorResponse(e) if e.code() == Some("42501")));
    assert!(matches!(
        answer[1],
        BackendMessage::ReadyForQuery { status: b'I' }
    ));
}

#[test]
fn observe_mode_forwards_and_records_the_verdict() {
    let mut f = flow(Some(NO_DROP), false, SessionMasks::none());
    let q = query("drop table t");
    let raw = q.raw.clone();
    f.on_client(q).unwrap();
    assert_eq!(&f.take_to_server()[..], &raw[..]);
    let ev = events(&mut f);
    assert_eq!(ev[0].1["verdict"], "deny");
    assert_eq!(ev[0].1["enforced"], false);
    assert_eq!(ev[0].1["action"], "forwarded");
}

#[test]
fn extended_execute_without_describe_gets_a_hidden_describe_and_masked_rows() {
    let m = masks("[[mask]]\nname = \"pii\"\ncolumns = [\"email\"]\n");
    let mut f = flow(None, true, m);
    let parse = frontend(&FrontendMessage::Parse {
        name: PgStr::from_static("s1"),
        sql: PgStr::from_static("select email from users where id = $1"),
        param_types: vec![],
    });
    let bind = frontend(&FrontendMessage::Bind {
        portal: PgStr::from_static(""),
        statement: PgStr::from_static("s1"),
        param_formats: vec![0],
        params: vec![Some(Bytes::from_static(b"42"))],
        result_formats: vec![0],
    });
    let execute = frontend(&FrontendMessage::Execute {
        portal: PgStr::from_static(""),
        max_rows: 0,
    });
    for msg in [parse, bind, execute, frontend(&FrontendMessage::Sync)] {
        f.on_client(msg).unwrap();
    }
    let to_server = f.take_to_server();
    let mut buf = BytesMut::from(&to_server[..]);
    let mut dec = FrontendDecoder::new();
    dec.startup_done();
    let mut sent = Vec::new();
    while let Some(m) = dec.decode(&mut buf).unwrap() {
        sent.push(m.message);
    }
    assert!(
        matches!(&sent[2], FrontendMessage::Describe { kind: b'P', .. }),
        "a Describe of the portal precedes the Execute: {sent:?}"
    );
    let ev = events(&mut f);
    assert_eq!(ev[0].1["params"], serde_json::json!(["42"]));
    for msg in [
        BackendMessage::ParseComplete,
        BackendMessage::BindComplete,
        BackendMessage::RowDescription {
            fields: vec![field("email", 25, 0)],
        },
    ] {
        f.on_server(backend(&msg)).unwrap();
    }
    f.on_server(row(&[Some(b"alice@example.com")])).unwrap();
    f.on_server(backend(&BackendMessage::CommandComplete {
        tag: crate::protocol::postgres::CommandTag(PgStr::from_static("SELECT 1")),
    }))
    .unwrap();
    f.on_server(backend(&BackendMessage::ReadyForQuery { status: b'I' }))
        .unwrap();
    let to_client = f.take_to_client();
    assert!(
        !String::from_utf8_lossy(&to_client).contains("alice@example.com"),
        "masked before the client"
    );
    let answer = decode_all(&to_client);
    assert!(
        !answer
            .iter()
            .any(|m| matches!(m, BackendMessage::RowDescription { .. })),
        "the hidden Describe's answer is not relayed: {answer:?}"
    );
    let ev = events(&mut f);
    let end = &ev.iter().find(|e| e.0 == "statement_end").unwrap().1;
    assert_eq!(end["masked"][0]["column"], "email");
    assert_eq!(end["masked"][0]["values"], 1);
}

#[test]
fn the_client_gets_a_cancel_key_of_the_agent() {
    let mut f = flow(None, true, SessionMasks::none());
    f.on_server(backend(&BackendMessage::BackendKeyData {
        pid: 4242,
        key: Bytes::from_static(&[1, 2, 3, 4]),
    }))
    .unwrap();
    let answer = decode_all(&f.take_to_client());
    match &answer[..] {
        [BackendMessage::BackendKeyData { pid, key }] => {
            assert_eq!(*pid, 4242);
            assert_eq!(&key[..], &[9, 9, 9, 9], "the real key stays with the agent");
        }
        other => panic!("{other:?}"),
    }
    let k = f.cancel_key.clone().unwrap();
    assert_eq!(&k.real[..], &[1, 2, 3, 4]);
}

#[test]
fn a_server_error_in_a_batch_skips_to_the_sync() {
    let mut f = flow(None, true, SessionMasks::none());
    for sql in ["select 1/0", "select 2"] {
        f.on_client(frontend(&FrontendMessage::Parse {
            name: PgStr::from_static(""),
            sql: PgStr::from(sql.to_owned()),
            param_types: vec![],
        }))
        .unwrap();
        f.on_client(frontend(&FrontendMessage::Bind {
            portal: PgStr::from_static(""),
            statement: PgStr::from_static(""),
            param_formats: vec![],
            params: vec![],
            result_formats: vec![],
        }))
        .unwrap();
        f.on_client(frontend(&FrontendMessage::Execute {
            portal: PgStr::from_static(""),
            max_rows: 0,
        }))
        .unwrap();
    }
    f.on_client(frontend(&FrontendMessage::Sync)).unwrap();
    events(&mut f);
    f.on_server(backend(&BackendMessage::ParseComplete))
        .unwrap();
    f.on_server(backend(&BackendMessage::BindComplete)).unwrap();
    let mut buf = BytesMut::from(&encode::error_response("ERROR", "22012", "division by zero")[..]);
    let err = BackendDecoder::new().decode(&mut buf).unwrap().unwrap();
    f.on_server(err).unwrap();
    f.on_server(backend(&BackendMessage::ReadyForQuery { status: b'I' }))
        .unwrap();
    assert_eq!(f.outstanding(), 0);
    let ev = events(&mut f);
    assert_eq!(ev[0].1["error"]["sqlstate"], "22012");
    assert!(ev[1].1["note"].as_str().unwrap().contains("not run"));
}

#[test]
fn journaled_parameters_are_masked_bounded_and_hex_when_binary() {
    let m = masks("[[mask]]\nname = \"pii\"\ndetectors = [\"email\"]\n");
    let f = flow(None, true, m);
    // The address straddles the cut at MAX_RECORDED_VALUE bytes.
    let long = format!("{} alice@example.com", "x".repeat(MAX_RECORDED_VALUE - 8));
    let params = f.journal_params(
        &[0, 1, 0],
        &[
            Some(Bytes::from_static(b"mail alice@example.com")),
            Some(Bytes::from_static(&[0xff, 0x00])),
            Some(Bytes::from(long.clone())),
        ],
    );
    assert!(!params[0].contains("alice@example.com"), "{}", params[0]);
    assert_eq!(params[1], "\\xff00");
    assert!(
        params[2].ends_with(&format!("… ({} bytes)", long.len())),
        "{}",
        params[2]
    );
    assert!(!params[2].contains("alice@"), "masked before it is cut");
    assert_eq!(
        error_message(&encode::error_response("ERROR", "42501", "no way")),
        "no way"
    );
}

// ------------------------------------------------------------ approvals: scopes, grants,
// observe-mode announcements

const ASK_DELETE: &str = r#"
[[policy]]
[[policy.rule]]
name = "ask"
verdict = "approve"
kinds = ["delete"]
"#;

/// Answers the forwarded query of a DELETE (so the flow is ready for the next).
fn complete_delete(f: &mut Flow) {
    f.on_server(backend(&BackendMessage::CommandComplete {
        tag: crate::protocol::postgres::CommandTag(PgStr::from_static("DELETE 1")),
    }))
    .unwrap();
    f.on_server(backend(&BackendMessage::ReadyForQuery { status: b'I' }))
        .unwrap();
    f.take_to_client();
    f.take_events();
}

#[test]
fn a_session_scoped_approval_lets_later_statements_of_the_rule_through() {
    let mut f = flow(Some(ASK_DELETE), true, SessionMasks::none());
    let Step::Hold(request) = f.on_client(query("delete from t where id = 1")).unwrap() else {
        panic!("held");
    };
    assert_eq!(request.rule.as_deref(), Some("ask"));
    f.take_events();
    let note = DecisionNote {
        approval_id: Some("a-1".into()),
        scope: Some("session"),
        ..DecisionNote::default()
    };
    f.resolve_hold(HoldOutcome::Approved {
        by: "uid 0 (root)".into(),
        note,
    })
    .unwrap();
    let ev = events(&mut f);
    assert_eq!(ev[0].0, "approval");
    assert_eq!(ev[0].1["approval_id"], "a-1");
    assert_eq!(ev[0].1["scope"], "session");
    assert!(
        !f.take_to_server().is_empty(),
        "the approved statement goes"
    );
    complete_delete(&mut f);
    // The next DELETE passes without a hold; the journal says on what.
    let q = query("delete from t where id = 2");
    let raw = q.raw.clone();
    assert!(matches!(f.on_client(q).unwrap(), Step::Continue));
    let ev = events(&mut f);
    assert_eq!(ev[0].0, "statement");
    assert_eq!(ev[0].1["verdict"], "approve");
    assert_eq!(ev[0].1["action"], "forwarded");
    assert_eq!(ev[1].0, "approval");
    assert_eq!(ev[1].1["granted_by"], "a-1");
    assert_eq!(ev[1].1["by"], "uid 0 (root)");
    assert_eq!(&f.take_to_server()[..], &raw[..]);
    // A `once` approval in another session is not remembered.
    let mut g = flow(Some(ASK_DELETE), true, SessionMasks::none());
    assert!(matches!(
        g.on_client(query("delete from t")).unwrap(),
        Step::Hold(_)
    ));
    g.resolve_hold(HoldOutcome::Approved {
        by: "x".into(),
        note: DecisionNote::default(),
    })
    .unwrap();
    complete_delete(&mut g);
    assert!(matches!(
        g.on_client(query("delete from t")).unwrap(),
        Step::Hold(_)
    ));
}

#[test]
fn a_grant_check_lets_matching_statements_through_and_only_those() {
    let mut f = flow(Some(ASK_DELETE), true, SessionMasks::none());
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    f.set_grant_check(Arc::new(move |rule: Option<&str>| {
        seen.lock().unwrap().push(rule.map(str::to_owned));
        (rule == Some("ask")).then(|| Standing {
            by: "jwt:alice (kid k)".into(),
            note: DecisionNote {
                scope: Some("grant"),
                grant: Some("g-1".into()),
                granted_by: Some("a-9".into()),
                ..DecisionNote::default()
            },
        })
    }));
    assert!(matches!(
        f.on_client(query("delete from t")).unwrap(),
        Step::Continue
    ));
    let ev = events(&mut f);
    assert_eq!(ev[1].0, "approval");
    assert_eq!(ev[1].1["grant"], "g-1");
    assert_eq!(ev[1].1["granted_by"], "a-9");
    assert_eq!(*asked.lock().unwrap(), vec![Some("ask".to_owned())]);
    complete_delete(&mut f);
    // Allowed statements never consult grants.
    f.on_client(query("select 1")).unwrap();
    assert_eq!(asked.lock().unwrap().len(), 1);
}

#[test]
fn observe_mode_collects_statements_that_would_have_been_held() {
    let mut f = flow(Some(ASK_DELETE), false, SessionMasks::none());
    assert!(matches!(
        f.on_client(query("delete from t")).unwrap(),
        Step::Continue
    ));
    let would = f.take_would_hold();
    assert_eq!(would.len(), 1);
    assert_eq!(would[0].text, "delete from t");
    assert_eq!(would[0].rule.as_deref(), Some("ask"));
    assert!(f.take_would_hold().is_empty(), "taken once");
    let ev = events(&mut f);
    assert_eq!(ev[0].1["action"], "forwarded");
    assert_eq!(ev[0].1["enforced"], false);
    complete_delete(&mut f);
    f.on_client(query("select 1")).unwrap();
    assert!(f.take_would_hold().is_empty());
}

/// With `standard_conforming_strings = off` a backslash escapes a quote, so the string
/// below is a SELECT and a comment to a standard lexer but a SELECT, a DROP and a
/// comment to the server. The flow reads the setting from the server's ParameterStatus
/// (and assumes it may be off while anything is in flight): the whole string is then
/// one opaque statement, refused by `unparsed = "deny"`, never a harmless SELECT.
#[test]
fn backslash_escapes_follow_the_servers_standard_conforming_strings() {
    let policy_text = NO_DROP.replace("[[policy]]\n", "[[policy]]\nunparsed = \"deny\"\n");
    let trick = "SELECT 'a\\' -- '; DROP TABLE t; --";
    let answer = |f: &mut Flow| {
        let out = decode_all(&f.take_to_client());
        let refused = matches!(out.first(), Some(BackendMessage::ErrorResponse(_)));
        let ev = events(f);
        (refused, ev[0].1["kinds"].clone())
    };

    // On (the default): one SELECT of a string that holds a backslash.
    let mut f = flow(Some(&policy_text), true, SessionMasks::none());
    f.on_client(query(trick)).unwrap();
    let (refused, kinds) = answer(&mut f);
    assert!(!refused, "{kinds}");
    assert_eq!(kinds, serde_json::json!(["select"]));

    // Reported off: opaque, refused.
    let mut f = flow(Some(&policy_text), true, SessionMasks::none());
    f.on_server(backend(&BackendMessage::ParameterStatus {
        name: PgStr::from_static("standard_conforming_strings"),
        value: PgStr::from_static("off"),
    }))
    .unwrap();
    f.take_to_client();
    f.on_client(query(trick)).unwrap();
    let (refused, kinds) = answer(&mut f);
    assert!(refused, "refused as unparsed");
    assert_eq!(kinds, serde_json::json!(["unparsed"]));

    // On, but a statement is still in flight (it might turn the setting off first).
    let mut f = flow(Some(&policy_text), true, SessionMasks::none());
    f.on_client(query("select 1")).unwrap();
    f.take_to_server();
    events(&mut f);
    f.on_client(query(trick)).unwrap();
    let ev = events(&mut f);
    assert_eq!(ev[0].1["kinds"], serde_json::json!(["unparsed"]));
    assert!(f.take_to_server().is_empty(), "not forwarded");
}
