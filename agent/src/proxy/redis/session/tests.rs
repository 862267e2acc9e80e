//! The session without sockets: client bytes in, staged bytes and events out; server
//! bytes in, staged replies out, in the order a pipelining client expects.
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::*;
use crate::mask::{HashKey, MaskRule, RawMaskRule};
use crate::policy::{Policy, RawPolicy};
use crate::session::Session;

const POLICY: &str = r#"
[[policy]]
[[policy.rule]]
name = "no-admin"
verdict = "deny"
commands = ["FLUSHALL", "CONFIG SET", "EVAL*"]
[[policy.rule]]
name = "ask"
verdict = "approve"
commands = ["DEL"]
keys = ["session:*"]
"#;

const MASKS: &str = r#"
[[mask]]
name = "contact"
columns = ["user:*:email", "email"]
detectors = ["email"]
"#;

fn session(credential: bool) -> RedisSession {
    #[derive(serde::Deserialize)]
    struct File {
        policy: Vec<toml::Spanned<RawPolicy>>,
        mask: Vec<toml::Spanned<RawMaskRule>>,
    }
    let file: File = toml::from_str(&format!("{POLICY}\n{MASKS}")).unwrap();
    let policy = Policy::from_raw(file.policy.into_iter().next().unwrap()).unwrap();
    let rules: Vec<MaskRule> = file
        .mask
        .into_iter()
        .map(|r| MaskRule::from_raw(r).unwrap())
        .collect();
    let rules = SessionRules {
        policy: Some(policy),
        enforce: true,
        masks: SessionMasks::new(rules, Arc::new(HashKey::from_bytes([7; 32]))),
        record_results: RecordResults::Summary,
    };
    RedisSession::new(
        1,
        Arc::new(rules),
        Gate::new("redis", true, Duration::from_secs(5)),
        credential.then(|| Credential {
            auth_command: encode_command(&["AUTH", "bot", "agent-secret-pw"]),
        }),
    )
}

fn cmd(args: &[&str]) -> Vec<u8> {
    encode_command(args).to_vec()
}

/// Feeds client bytes; returns (to server, to client).
fn client(s: &mut RedisSession, bytes: &[u8]) -> (String, String) {
    let mut buf = BytesMut::from(bytes);
    assert!(matches!(s.on_client(&mut buf).unwrap(), Step::Continue));
    assert!(buf.is_empty());
    (
        String::from_utf8_lossy(&s.take_to_server()).into_owned(),
        String::from_utf8_lossy(&s.take_to_client()).into_owned(),
    )
}

/// Feeds server bytes in reads of `split` bytes; returns what the client gets.
fn server(s: &mut RedisSession, bytes: &[u8], split: usize) -> String {
    let mut buf = BytesMut::new();
    let mut out = String::new();
    for chunk in bytes.chunks(split) {
        buf.extend_from_slice(chunk);
        s.on_server(&mut buf).unwrap();
        out.push_str(&String::from_utf8_lossy(&s.take_to_client()));
    }
    assert!(buf.is_empty());
    out
}

fn events(s: &mut RedisSession) -> Vec<(String, serde_json::Value)> {
    s.take_events()
        .into_iter()
        .map(|e| (e.kind.to_string(), serde_json::from_str(&e.data).unwrap()))
        .collect()
}

#[test]
fn refusals_take_their_place_among_pipelined_replies() {
    for split in [1, 3, 1000] {
        let mut s = session(false);
        let mut input = cmd(&["SET", "a", "1"]);
        input.extend(cmd(&["FLUSHALL"]));
        input.extend(cmd(&["GET", "a"]));
        input.extend(cmd(&["config", "set", "x", "y"]));
        input.extend(cmd(&["CONFIG", "GET", "x"]));
        let (up, down) = client(&mut s, &input);
        // FLUSHALL and CONFIG SET never reach the server; nothing is answered yet
        // (the refusal waits for SET's reply).
        assert_eq!(
            up,
            "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$1\r\nx\r\n"
        );
        assert_eq!(down, "");
        let evs = events(&mut s);
        let commands: Vec<_> = evs.iter().filter(|(k, _)| k == "redis_command").collect();
        assert_eq!(commands.len(), 5);
        assert_eq!(commands[1].1["verdict"], "deny");
        assert_eq!(commands[1].1["rule"], "no-admin");
        assert_eq!(commands[3].1["subcommand"], "CONFIG SET");
        assert_eq!(commands[3].1["action"], "refused");
        assert_eq!(commands[4].1["action"], "forwarded");
        let got = server(&mut s, b"+OK\r\n$1\r\n1\r\n*0\r\n", split);
        assert_eq!(
            got,
            "+OK\r\n-ERR nhi-agent: FLUSHALL denied by rule no-admin\r\n$1\r\n1\r\n-ERR nhi-agent: CONFIG denied by rule no-admin\r\n*0\r\n",
            "split {split}"
        );
    }
}

#[test]
fn a_reply_nobody_asked_for_is_a_protocol_error() {
    let mut s = session(false);
    let mut buf = BytesMut::from(&b"+OK\r\n"[..]);
    assert!(s.on_server(&mut buf).is_err());
}

/// Feeds client bytes that end in a malformed command; returns the step and what the
/// client gets.
fn malformed(s: &mut RedisSession, bytes: &[u8]) -> (Step, String) {
    let mut buf = BytesMut::from(bytes);
    let step = s.on_client(&mut buf).unwrap();
    assert!(buf.is_empty(), "nothing after the error is kept");
    (
        step,
        String::from_utf8_lossy(&s.take_to_client()).into_owned(),
    )
}

#[test]
fn a_malformed_command_is_answered_as_redis_server_does_then_the_session_ends() {
    let long_inline = vec![b'x'; 70 << 10];
    let cases: [(&[u8], &str); 6] = [
        (
            b"*1\r\n:1\r\n",
            "client command: a command argument must be a bulk string, not integer",
        ),
        (b"*1\r\n$abc\r\n", "invalid bulk length in a RESP header"),
        (
            b"*1\r\n$99999999999\r\n",
            "bulk length of 99999999999 exceeds the limit of 67108864",
        ),
        (
            b"SET k \"unbalanced\r\n",
            "client command: unbalanced quotes in an inline command",
        ),
        (&long_inline, "line without CRLF within 65536 bytes"),
        (b"*-x\r\n", "invalid element count in a RESP header"),
    ];
    for (bytes, reason) in cases {
        let mut s = session(false);
        let (step, down) = malformed(&mut s, bytes);
        assert!(matches!(step, Step::Terminate), "{reason}: {step:?}");
        assert_eq!(down, format!("-ERR Protocol error: {reason}\r\n"));
        assert!(s.take_to_server().is_empty(), "nothing is forwarded");
        assert_eq!(
            s.protocol_error(),
            Some(format!("client: {reason}").as_str())
        );
        let evs = events(&mut s);
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert_eq!(evs[0].0, "protocol_error");
        assert_eq!(evs[0].1["reason"], format!("client: {reason}"));
    }
}

#[test]
fn empty_and_null_command_arrays_are_skipped_as_redis_server_skips_them() {
    // redis-server reads `*0` and `*-1` as no command: nothing to run, no reply. The
    // agent neither forwards them nor answers them, and the commands around them go on.
    let mut s = session(false);
    let mut input = b"*0\r\n*-1\r\n".to_vec();
    input.extend(cmd(&["GET", "a"]));
    input.extend(b"*0\r\n");
    input.extend(cmd(&["FLUSHALL"]));
    let (up, down) = client(&mut s, &input);
    assert_eq!(
        up, "*2\r\n$3\r\nGET\r\n$1\r\na\r\n",
        "only the command goes up"
    );
    assert_eq!(down, "", "FLUSHALL's refusal waits for GET's reply");
    assert_eq!(
        server(&mut s, b"$1\r\n1\r\n", 1),
        "$1\r\n1\r\n-ERR nhi-agent: FLUSHALL denied by rule no-admin\r\n"
    );
    let kinds: Vec<String> = events(&mut s).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        [
            "redis_command",
            "redis_command",
            "redis_reply",
            "redis_reply"
        ]
    );
    assert_eq!(s.protocol_error(), None);
}

#[test]
fn a_protocol_error_waits_for_the_replies_of_the_commands_before_it() {
    let mut s = session(false);
    let mut input = cmd(&["SET", "a", "1"]);
    input.extend(cmd(&["FLUSHALL"]));
    input.extend(b"*2\r\n$3\r\nGET\r\n+a\r\n");
    input.extend(cmd(&["DEL", "a"]));
    let (step, down) = malformed(&mut s, &input);
    assert!(matches!(step, Step::Continue), "SET's reply is owed first");
    assert_eq!(down, "");
    assert_eq!(
        String::from_utf8_lossy(&s.take_to_server()),
        "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n",
        "what came before is forwarded, nothing after"
    );
    // The client keeps sending: ignored, as redis-server ignores it.
    let (step, _) = malformed(&mut s, &cmd(&["GET", "a"]));
    assert!(matches!(step, Step::Continue));
    assert!(s.take_to_server().is_empty());
    assert_eq!(
        server(&mut s, b"+OK\r\n", 1),
        "+OK\r\n-ERR nhi-agent: FLUSHALL denied by rule no-admin\r\n\
         -ERR Protocol error: client command: a command argument must be a bulk string, not simple\r\n"
    );
    let (step, _) = malformed(&mut s, b"");
    assert!(
        matches!(step, Step::Terminate),
        "ended once the error is out"
    );
    let kinds: Vec<String> = events(&mut s).into_iter().map(|(k, _)| k).collect();
    assert!(kinds.contains(&"protocol_error".to_owned()), "{kinds:?}");
}

#[test]
fn auth_is_answered_with_the_agents_credential_and_never_journaled() {
    let mut s = session(true);
    let mut input = cmd(&["AUTH", "client-pw-1"]);
    input.extend(cmd(&[
        "HELLO",
        "3",
        "AUTH",
        "someone",
        "client-pw-2",
        "SETNAME",
        "x",
    ]));
    input.extend(cmd(&["RESET"]));
    input.extend(b"PING\r\n");
    let (up, down) = client(&mut s, &input);
    assert_eq!(down, "+OK\r\n", "AUTH answered by the agent at once");
    assert!(!up.contains("client-pw"), "{up}");
    // HELLO without its AUTH clause; RESET followed by the agent's AUTH; the inline
    // PING in its array form.
    assert_eq!(
        up,
        "*4\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$7\r\nSETNAME\r\n$1\r\nx\r\n*1\r\n$5\r\nRESET\r\n*3\r\n$4\r\nAUTH\r\n$3\r\nbot\r\n$15\r\nagent-secret-pw\r\n*1\r\n$4\r\nPING\r\n"
    );
    let evs = events(&mut s);
    let text = format!("{evs:?}");
    assert!(
        !text.contains("client-pw") && !text.contains("agent-secret-pw"),
        "{text}"
    );
    assert_eq!(evs[0].1["action"], "answered");
    assert_eq!(evs[2].1["args"][2], "someone");
    assert_eq!(evs[2].1["args"][3], "[redacted]");
    // HELLO 3's map, RESET, the hidden AUTH's OK (swallowed), PONG.
    let got = server(
        &mut s,
        b"%1\r\n$5\r\nproto\r\n:3\r\n+RESET\r\n+OK\r\n+PONG\r\n",
        2,
    );
    assert_eq!(got, "%1\r\n$5\r\nproto\r\n:3\r\n+RESET\r\n+PONG\r\n");
    // A refused re-AUTH ends the session.
    let mut s = session(true);
    client(&mut s, &cmd(&["RESET"]));
    let mut buf = BytesMut::from(&b"+RESET\r\n-WRONGPASS no\r\n"[..]);
    assert!(s.on_server(&mut buf).is_err());
}

#[test]
fn replies_are_masked_by_key_field_and_detector() {
    let mut s = session(false);
    let mut input = cmd(&["MGET", "user:1:email", "note", "nokey"]);
    input.extend(cmd(&["HGETALL", "user:2"]));
    input.extend(cmd(&["GET", "user:3:email"]));
    input.extend(cmd(&["SET", "user:3:email", "x@y.org"]));
    client(&mut s, &input);
    let evs = events(&mut s);
    assert_eq!(
        evs[3].1["args"],
        serde_json::json!(["user:3:email", "[masked]"])
    );
    let got = server(
        &mut s,
        b"*3\r\n$13\r\na@example.com\r\n$14\r\nhi b@b.example\r\n$-1\r\n\
          %2\r\n$5\r\nemail\r\n$5\r\nc@d.e\r\n$4\r\nname\r\n$3\r\nAnn\r\n\
          |1\r\n+ttl\r\n:5\r\n$3\r\nabc\r\n+OK\r\n",
        1000,
    );
    assert_eq!(
        got,
        "*3\r\n$10\r\n[redacted]\r\n$13\r\nhi [redacted]\r\n$-1\r\n\
         %2\r\n$5\r\nemail\r\n$10\r\n[redacted]\r\n$4\r\nname\r\n$3\r\nAnn\r\n\
         |1\r\n+ttl\r\n:5\r\n$10\r\n[redacted]\r\n+OK\r\n"
    );
    let evs = events(&mut s);
    let replies: Vec<_> = evs.iter().filter(|(k, _)| k == "redis_reply").collect();
    assert_eq!(replies[0].1["masked"][0]["column"], "note");
    assert_eq!(replies[0].1["masked"][1]["column"], "user:1:email");
    assert_eq!(replies[1].1["type"], "map");
    assert_eq!(
        replies[3].1["excerpt"], "OK",
        "status replies are not values"
    );
}

#[test]
fn a_transaction_with_a_refused_command_is_discarded() {
    let mut s = session(false);
    let mut input = cmd(&["MULTI"]);
    input.extend(cmd(&["SET", "a", "1"]));
    input.extend(cmd(&["FLUSHALL"]));
    input.extend(cmd(&["EXEC"]));
    input.extend(cmd(&["MULTI"]));
    input.extend(cmd(&["GET", "user:1:email"]));
    input.extend(cmd(&["EXEC"]));
    let (up, _) = client(&mut s, &input);
    assert!(up.contains("*1\r\n$7\r\nDISCARD\r\n"), "{up}");
    assert_eq!(up.matches("EXEC").count(), 1, "{up}");
    let got = server(
        &mut s,
        b"+OK\r\n+QUEUED\r\n+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n$7\r\na@b.com\r\n",
        4,
    );
    assert_eq!(
        got,
        "+OK\r\n+QUEUED\r\n-ERR nhi-agent: FLUSHALL denied by rule no-admin\r\n\
         -EXECABORT Transaction discarded because of previous errors (nhi-agent refused a command of it).\r\n\
         +OK\r\n+QUEUED\r\n*1\r\n$10\r\n[redacted]\r\n"
    );
}

#[test]
fn pubsub_confirmations_and_messages_in_resp2_and_resp3() {
    let mut s = session(false);
    let mut input = cmd(&["SUBSCRIBE", "news", "alerts"]);
    input.extend(cmd(&["PSUBSCRIBE", "n*"]));
    client(&mut s, &input);
    let data = include_bytes!("../../../protocol/redis/testdata/pubsub-resp2.s2c");
    // The capture's confirmations and messages (its PING, UNSUBSCRIBE and PUNSUBSCRIBE
    // are sent before their replies are fed).
    let first = b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$6\r\nalerts\r\n:2\r\n*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:3\r\n";
    assert!(data.starts_with(first));
    let got = server(&mut s, first, 5);
    assert_eq!(got.as_bytes(), first);
    let rest = &data[first.len()..];
    let mut input = cmd(&["PING"]);
    input.extend(cmd(&["UNSUBSCRIBE"]));
    input.extend(cmd(&["PUNSUBSCRIBE"]));
    client(&mut s, &input);
    let got = server(&mut s, rest, 7);
    assert!(got.contains("hello [redacted]"), "{got}");
    assert!(!got.contains("alice@example.com"));
    assert!(
        s.pending.is_empty(),
        "every command answered: {:?}",
        s.pending
    );
    let evs = events(&mut s);
    let pushes: Vec<_> = evs.iter().filter(|(k, _)| k == "redis_push").collect();
    assert_eq!(pushes.len(), 2);
    assert_eq!(pushes[1].1["kind"], "pmessage");
    assert_eq!(pushes[1].1["channel"], "news");

    // RESP3: the confirmation is a push owed to SUBSCRIBE; a push before a reply is
    // out of band.
    let mut s = session(false);
    let c2s = include_bytes!("../../../protocol/redis/testdata/pubsub-resp3.c2s");
    let s2c = include_bytes!("../../../protocol/redis/testdata/pubsub-resp3.s2c");
    let (up, _) = client(&mut s, c2s);
    assert_eq!(up.as_bytes(), c2s);
    let got = server(&mut s, s2c, 3);
    assert_eq!(got.as_bytes(), s2c, "nothing to mask: passed as it came");
    assert!(s.pending.is_empty());
    let evs = events(&mut s);
    assert_eq!(
        evs.iter().filter(|(k, _)| k == "redis_push").count(),
        1,
        "{evs:?}"
    );
}

#[test]
fn held_commands_wait_and_monitor_is_refused() {
    let mut s = session(false);
    let mut buf = BytesMut::from(&cmd(&["DEL", "session:9", "other"])[..]);
    let Step::Hold(request) = s.on_client(&mut buf).unwrap() else {
        panic!("held");
    };
    assert_eq!(request.text, "DEL session:9 other");
    assert_eq!(request.rule.as_deref(), Some("ask"));
    assert!(s.take_to_server().is_empty());
    s.resolve_hold(HoldOutcome::Expired).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&s.take_to_client()),
        "-ERR nhi-agent: DEL was not approved in time\r\n"
    );
    let (up, down) = client(&mut s, &cmd(&["MONITOR"]));
    assert_eq!(up, "");
    assert!(down.contains("MONITOR is not allowed"), "{down}");
}

#[test]
fn the_agents_own_errors_are_resp_errors() {
    let s = session(false);
    let e = std::io::Error::other("No space left on device");
    let journal = s.agent_error(AgentError::Journal(&e));
    assert_eq!(
        &journal[..],
        b"-ERR nhi-agent: the audit journal cannot record (No space left on device); nothing was forwarded\r\n"
    );
    let cap = s.agent_error(AgentError::SessionCap("session exceeded\r\nmax"));
    assert_eq!(
        &cap[..],
        b"-ERR nhi-agent: session exceeded  max\r\n",
        "one line"
    );
    assert!(s
        .agent_error(AgentError::Shutdown)
        .starts_with(b"-ERR nhi-agent: "));
}
