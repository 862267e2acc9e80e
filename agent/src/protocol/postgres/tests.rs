//! Tests of the PostgreSQL codec: golden captures of real clients (see
//! `testdata/README.md`) decoded whole, split at every byte and as every prefix; a
//! corpus of malformed messages; encoder round trips; a deterministic random-input run.

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};

use super::*;

// ---------------------------------------------------------------------------------------
// Harness

/// Both decoders behind one interface, so the stream checks are written once.
trait Harness {
    type Msg: Clone + Debug + PartialEq;
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded<Self::Msg>>, ProtocolError>;
    fn encode(msg: &Self::Msg) -> Bytes;
}

impl Harness for FrontendDecoder {
    type Msg = FrontendMessage;
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded<Self::Msg>>, ProtocolError> {
        FrontendDecoder::decode(self, buf)
    }
    fn encode(msg: &Self::Msg) -> Bytes {
        msg.to_bytes()
    }
}

impl Harness for BackendDecoder {
    type Msg = BackendMessage;
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded<Self::Msg>>, ProtocolError> {
        BackendDecoder::decode(self, buf)
    }
    fn encode(msg: &Self::Msg) -> Bytes {
        msg.to_bytes()
    }
}

/// The messages decoded and the number of bytes left in the buffer.
type Fed<M> = (Vec<Decoded<M>>, usize);

/// Feeds `chunks` one after the other, decoding everything available after each.
/// Returns the messages and the bytes left undecoded.
fn feed<D: Harness>(mut decoder: D, chunks: &[&[u8]]) -> Result<Fed<D::Msg>, ProtocolError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(msg) = decoder.decode(&mut buf)? {
            assert!(!msg.raw.is_empty(), "a message must consume bytes");
            out.push(msg);
        }
    }
    Ok((out, buf.len()))
}

/// The stream checks every golden file goes through.
fn check_stream<D: Harness>(name: &str, bytes: &[u8], make: impl Fn() -> D) -> Vec<D::Msg> {
    // Whole.
    let (whole, left) = feed(make(), &[bytes]).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(left, 0, "{name}: bytes left after the last message");
    let joined: Vec<u8> = whole.iter().flat_map(|m| m.raw.iter().copied()).collect();
    assert_eq!(joined, bytes, "{name}: the raw frames must tile the stream");
    for m in &whole {
        assert_eq!(
            D::encode(&m.message),
            m.raw,
            "{name}: re-encoding {:?} must give its raw bytes",
            m.message
        );
    }

    // Split in two at every offset.
    for at in 0..=bytes.len() {
        let (msgs, left) = feed(make(), &[&bytes[..at], &bytes[at..]])
            .unwrap_or_else(|e| panic!("{name}: split at {at}: {e}"));
        assert_eq!(left, 0, "{name}: split at {at}");
        assert_eq!(msgs, whole, "{name}: split at {at}");
    }

    // One byte at a time.
    let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
    let (msgs, _) = feed(make(), &chunks).unwrap_or_else(|e| panic!("{name}: bytewise: {e}"));
    assert_eq!(msgs, whole, "{name}: byte at a time");

    // Every prefix: the whole messages it holds, no error, the rest left in the buffer.
    let mut ends = Vec::new();
    let mut end = 0;
    for m in &whole {
        end += m.raw.len();
        ends.push(end);
    }
    for len in 0..=bytes.len() {
        let (msgs, left) =
            feed(make(), &[&bytes[..len]]).unwrap_or_else(|e| panic!("{name}: prefix {len}: {e}"));
        let complete = ends.iter().filter(|&&e| e <= len).count();
        assert_eq!(msgs.len(), complete, "{name}: prefix {len}");
        assert_eq!(msgs, whole[..complete], "{name}: prefix {len}");
        let consumed = if complete == 0 { 0 } else { ends[complete - 1] };
        assert_eq!(left, len - consumed, "{name}: prefix {len}");
    }
    whole.into_iter().map(|m| m.message).collect()
}

fn frontend_stream(name: &str, bytes: &[u8]) -> Vec<FrontendMessage> {
    check_stream(name, bytes, FrontendDecoder::new)
}

fn backend_stream(name: &str, bytes: &[u8], ssl_answer_first: bool) -> Vec<BackendMessage> {
    check_stream(name, bytes, || {
        let mut d = BackendDecoder::new();
        if ssl_answer_first {
            d.expect_ssl_answer();
        }
        d
    })
}

macro_rules! golden {
    ($file:literal) => {
        include_bytes!(concat!("testdata/", $file))
    };
}

fn startup(msgs: &[FrontendMessage]) -> &StartupMessage {
    msgs.iter()
        .find_map(|m| match m {
            FrontendMessage::Startup(s) => Some(s),
            _ => None,
        })
        .expect("a StartupMessage")
}

fn queries(msgs: &[FrontendMessage]) -> Vec<&str> {
    msgs.iter()
        .filter_map(|m| match m {
            FrontendMessage::Query { sql } => Some(sql.as_str()),
            _ => None,
        })
        .collect()
}

fn rows_of(msgs: &[BackendMessage]) -> Vec<Vec<Option<Vec<u8>>>> {
    msgs.iter()
        .filter_map(|m| match m {
            BackendMessage::DataRow(row) => {
                Some(row.values().map(|v| v.map(<[u8]>::to_vec)).collect())
            }
            _ => None,
        })
        .collect()
}

fn tags_of(msgs: &[BackendMessage]) -> Vec<(&str, Option<u64>)> {
    msgs.iter()
        .filter_map(|m| match m {
            BackendMessage::CommandComplete { tag } => Some((tag.as_str(), tag.rows())),
            _ => None,
        })
        .collect()
}

fn auth_requests(msgs: &[BackendMessage]) -> Vec<&AuthRequest> {
    msgs.iter()
        .filter_map(|m| match m {
            BackendMessage::Authentication(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn auth_responses(msgs: &[FrontendMessage]) -> Vec<&AuthResponse> {
    msgs.iter()
        .filter_map(|m| match m {
            FrontendMessage::AuthResponse(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn key_data(msgs: &[BackendMessage]) -> (u32, Bytes) {
    msgs.iter()
        .find_map(|m| match m {
            BackendMessage::BackendKeyData { pid, key } => Some((*pid, key.clone())),
            _ => None,
        })
        .expect("BackendKeyData")
}

fn param_status<'a>(msgs: &'a [BackendMessage], name: &str) -> Option<&'a str> {
    msgs.iter().find_map(|m| match m {
        BackendMessage::ParameterStatus { name: n, value } if *n == name => Some(value.as_str()),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------
// Golden captures

#[test]
fn golden_psql_session_frontend() {
    let msgs = frontend_stream(
        "psql-session.frontend",
        golden!("psql-session.frontend.bin"),
    );
    // sslmode=prefer: SSLRequest first, then (after 'N') the StartupMessage in clear.
    assert_eq!(msgs[0], FrontendMessage::SslRequest);
    let s = startup(&msgs);
    assert_eq!(s.version, ProtocolVersion(PROTOCOL_3_0));
    assert_eq!(s.version.to_string(), "3.0");
    assert_eq!(s.user(), Some("postgres"));
    assert_eq!(s.database(), Some("postgres"));
    assert_eq!(s.application_name(), Some("nhi-golden"));
    assert_eq!(
        queries(&msgs),
        [
            "select 42 as answer, 'hello' as greeting, null::text as nothing;",
            "create temp table golden(id int, name text);",
            // psql sends `a \; b \; c;` as one Query, separators rewritten to " ;".
            "select 1 as one ; select 2 as two ; insert into golden values (0, 'zero');",
            "select 1/0;",
            // \copy becomes a server-side COPY ... STDIN/STDOUT, with a doubled space.
            "COPY  golden FROM STDIN with (format csv)",
            "COPY  ( select * from golden order by id ) TO STDOUT with (format csv)",
            "select count(*) from golden;",
        ]
    );
    // psql sends the whole file in one CopyData, then CopyDone.
    let copy_in: Vec<&Bytes> = msgs
        .iter()
        .filter_map(|m| match m {
            FrontendMessage::CopyData(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        copy_in,
        [&Bytes::from_static(
            b"1,alpha\n2,beta\n3,gamma\n4,\"delta, with comma\"\n"
        )]
    );
    assert!(msgs.contains(&FrontendMessage::CopyDone));
    assert_eq!(msgs.last(), Some(&FrontendMessage::Terminate));
    assert_eq!(msgs.len(), 12);
}

#[test]
fn golden_psql_session_backend() {
    let msgs = backend_stream(
        "psql-session.backend",
        golden!("psql-session.backend.bin"),
        true,
    );
    assert_eq!(msgs[0], BackendMessage::SslAnswer(b'N'));
    assert_eq!(msgs[1], BackendMessage::Authentication(AuthRequest::Ok));
    assert!(param_status(&msgs, "server_version").is_some_and(|v| v.starts_with("15.")));
    assert_eq!(param_status(&msgs, "client_encoding"), Some("UTF8"));
    assert_eq!(param_status(&msgs, "application_name"), Some("nhi-golden"));
    let (pid, key) = key_data(&msgs);
    assert!(pid > 0);
    assert_eq!(key.len(), 4);

    // The first result: three columns, an int4, a text and a NULL text.
    let BackendMessage::RowDescription { fields } = &msgs
        .iter()
        .find(|m| matches!(m, BackendMessage::RowDescription { .. }))
        .expect("RowDescription")
    else {
        unreachable!()
    };
    let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["answer", "greeting", "nothing"]);
    let types: Vec<u32> = fields.iter().map(|f| f.type_oid).collect();
    assert_eq!(types, [23, 25, 25]);
    assert_eq!(fields[0].type_size, 4);
    assert_eq!(fields[1].type_size, -1);
    assert!(fields.iter().all(|f| f.format == 0 && f.table_oid == 0));

    let rows = rows_of(&msgs);
    assert_eq!(
        rows[0],
        [Some(b"42".to_vec()), Some(b"hello".to_vec()), None]
    );
    // The multi-statement query: two one-row results, then the count.
    assert_eq!(rows[1], [Some(b"1".to_vec())]);
    assert_eq!(rows[2], [Some(b"2".to_vec())]);
    assert_eq!(rows[3], [Some(b"5".to_vec())]);
    // Ranges point into the body, for masking.
    let BackendMessage::DataRow(first) = msgs
        .iter()
        .find(|m| matches!(m, BackendMessage::DataRow(_)))
        .expect("DataRow")
    else {
        unreachable!()
    };
    let ranges: Vec<_> = first.ranges().collect();
    assert_eq!(ranges, [Some(6..8), Some(12..17), None]);
    assert_eq!(&first.body()[12..17], b"hello");
    assert_eq!(first.get(1), Some(Some(&b"hello"[..])));
    assert_eq!(first.get(2), Some(None));
    assert_eq!(first.get(3), None);

    assert_eq!(
        tags_of(&msgs),
        [
            ("SELECT 1", Some(1)),
            ("CREATE TABLE", None),
            ("SELECT 1", Some(1)),
            ("SELECT 1", Some(1)),
            ("INSERT 0 1", Some(1)),
            ("COPY 4", Some(4)),
            ("COPY 5", Some(5)),
            ("SELECT 1", Some(1)),
        ]
    );

    let errors: Vec<&ErrorFields> = msgs
        .iter()
        .filter_map(|m| match m {
            BackendMessage::ErrorResponse(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code(), Some("22012"));
    assert_eq!(errors[0].severity(), Some("ERROR"));
    assert_eq!(errors[0].message(), Some("division by zero"));

    // COPY FROM STDIN: text format, two columns; COPY TO STDOUT: one CopyData per row.
    let copy_text = CopyResponse {
        format: 0,
        column_formats: vec![0, 0],
    };
    assert!(msgs.contains(&BackendMessage::CopyInResponse(copy_text.clone())));
    assert!(msgs.contains(&BackendMessage::CopyOutResponse(copy_text)));
    let copy_out: Vec<&[u8]> = msgs
        .iter()
        .filter_map(|m| match m {
            BackendMessage::CopyData(d) => Some(&d[..]),
            _ => None,
        })
        .collect();
    assert_eq!(
        copy_out,
        [
            &b"0,zero\n"[..],
            b"1,alpha\n",
            b"2,beta\n",
            b"3,gamma\n",
            b"4,\"delta, with comma\"\n"
        ]
    );
    // One ReadyForQuery per Query (seven; the multi-statement one gets a single one),
    // plus the one after startup; all idle.
    let ready: Vec<u8> = msgs
        .iter()
        .filter_map(|m| match m {
            BackendMessage::ReadyForQuery { status } => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(ready, [b'I'; 8]);
}

#[test]
fn golden_pgbench_extended() {
    let fe = frontend_stream(
        "pgbench-extended.frontend",
        golden!("pgbench-extended.frontend.bin"),
    );
    assert_eq!(startup(&fe).application_name(), Some("pgbench"));
    assert_eq!(startup(&fe).database(), Some("bench"));
    // -M extended: the unnamed statement, re-parsed for each transaction.
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
    let mut transactions = 0;
    for window in fe.windows(5) {
        let [FrontendMessage::Parse {
            name,
            sql: parsed,
            param_types,
        }, FrontendMessage::Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        }, FrontendMessage::Describe {
            kind,
            name: described,
        }, FrontendMessage::Execute {
            portal: executed,
            max_rows,
        }, FrontendMessage::Sync] = window
        else {
            continue;
        };
        transactions += 1;
        assert_eq!(*name, "");
        assert_eq!(*parsed, sql);
        assert!(param_types.is_empty(), "pgbench lets the server infer $1");
        assert_eq!((portal.as_str(), statement.as_str()), ("", ""));
        // libpq sends no parameter format (all text) but one result format, 0 (text).
        assert!(param_formats.is_empty());
        assert_eq!(*result_formats, [0]);
        assert_eq!(params.len(), 1);
        let aid: u32 = std::str::from_utf8(params[0].as_deref().expect("not NULL"))
            .expect("text")
            .parse()
            .expect("an integer");
        assert!((1..=100_000).contains(&aid), "scale 1 has 100 000 accounts");
        assert_eq!((*kind, described.as_str()), (b'P', ""));
        assert_eq!((executed.as_str(), *max_rows), ("", 0));
    }
    assert_eq!(transactions, 3);
    assert_eq!(fe.last(), Some(&FrontendMessage::Terminate));

    let be = backend_stream(
        "pgbench-extended.backend",
        golden!("pgbench-extended.backend.bin"),
        false,
    );
    let count = |want: &BackendMessage| be.iter().filter(|m| *m == want).count();
    assert_eq!(count(&BackendMessage::ParseComplete), 3);
    assert_eq!(count(&BackendMessage::BindComplete), 3);
    let BackendMessage::RowDescription { fields } = be
        .iter()
        .find(|m| matches!(m, BackendMessage::RowDescription { .. }))
        .expect("RowDescription")
    else {
        unreachable!()
    };
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].name, "abalance");
    assert_ne!(
        fields[0].table_oid, 0,
        "a table column carries its table OID"
    );
    assert_eq!(
        fields[0].column, 3,
        "abalance is pgbench_accounts' third column"
    );
    assert_eq!(fields[0].type_oid, 23);
    assert_eq!(tags_of(&be), [("SELECT 1", Some(1)); 3]);
}

#[test]
fn golden_pgbench_prepared() {
    let fe = frontend_stream(
        "pgbench-prepared.frontend",
        golden!("pgbench-prepared.frontend.bin"),
    );
    // -M prepared: one named Parse (+ Sync), then Bind/Describe/Execute/Sync per
    // transaction against the named statement.
    let parses: Vec<(&str, &str)> = fe
        .iter()
        .filter_map(|m| match m {
            FrontendMessage::Parse { name, sql, .. } => Some((name.as_str(), sql.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        parses,
        [(
            "P_0",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
        )]
    );
    let binds: Vec<&str> = fe
        .iter()
        .filter_map(|m| match m {
            FrontendMessage::Bind { statement, .. } => Some(statement.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(binds, ["P_0"; 3]);
    assert_eq!(
        fe.iter().filter(|m| **m == FrontendMessage::Sync).count(),
        4
    );

    let be = backend_stream(
        "pgbench-prepared.backend",
        golden!("pgbench-prepared.backend.bin"),
        false,
    );
    assert_eq!(
        be.iter()
            .filter(|m| **m == BackendMessage::ParseComplete)
            .count(),
        1
    );
    assert_eq!(rows_of(&be).len(), 3);
}

#[test]
fn golden_scram_login() {
    let fe = frontend_stream("scram-login.frontend", golden!("scram-login.frontend.bin"));
    assert_eq!(startup(&fe).user(), Some("scram_user"));
    let responses = auth_responses(&fe);
    assert_eq!(responses.len(), 2);
    let initial = responses[0].sasl_initial().expect("SASLInitialResponse");
    assert_eq!(initial.mechanism, "SCRAM-SHA-256");
    let client_first = initial.data.clone().expect("client-first message");
    // gs2 header "n,," (no channel binding), empty user name (the server uses the
    // startup user), then the client nonce.
    assert!(client_first.starts_with(b"n,,n=,r="), "{client_first:?}");
    // The client-final message carries the proof; Debug must not show it.
    assert!(responses[1].body().starts_with(b"c=biws,r="));
    let shown = format!("{:?} {:?}", fe, initial);
    assert!(!shown.contains("p="), "{shown}");
    assert!(!shown.contains("r="), "{shown}");
    assert_eq!(queries(&fe), ["select current_user"]);

    let be = backend_stream(
        "scram-login.backend",
        golden!("scram-login.backend.bin"),
        false,
    );
    let auth = auth_requests(&be);
    assert_eq!(auth.len(), 4);
    assert_eq!(
        *auth[0],
        AuthRequest::Sasl {
            mechanisms: vec![PgStr::from_static("SCRAM-SHA-256")]
        }
    );
    let AuthRequest::SaslContinue { data } = auth[1] else {
        panic!("{:?}", auth[1])
    };
    // The server-first message extends the client nonce, gives salt and iterations.
    let server_first = std::str::from_utf8(data).expect("text");
    let client_nonce = std::str::from_utf8(&client_first[8..]).expect("text");
    assert!(server_first.starts_with(&format!("r={client_nonce}")));
    assert!(server_first.ends_with(",i=4096"), "{server_first}");
    let AuthRequest::SaslFinal { data } = auth[2] else {
        panic!("{:?}", auth[2])
    };
    assert!(data.starts_with(b"v="));
    assert_eq!(*auth[3], AuthRequest::Ok);
    assert_eq!(rows_of(&be), [[Some(b"scram_user".to_vec())]]);
}

#[test]
fn golden_md5_login() {
    let fe = frontend_stream("md5-login.frontend", golden!("md5-login.frontend.bin"));
    let responses = auth_responses(&fe);
    assert_eq!(responses.len(), 1);
    let password = responses[0].password().expect("PasswordMessage");
    assert!(password.starts_with(b"md5"));
    assert_eq!(password.len(), 3 + 32);
    let hash = std::str::from_utf8(&password).expect("hex");
    assert!(
        !format!("{fe:?}").contains(hash),
        "Debug must hide the hash"
    );

    let be = backend_stream("md5-login.backend", golden!("md5-login.backend.bin"), false);
    let auth = auth_requests(&be);
    let raw = golden!("md5-login.backend.bin");
    assert_eq!(
        *auth[0],
        AuthRequest::Md5Password {
            salt: [raw[9], raw[10], raw[11], raw[12]]
        }
    );
    assert_eq!(*auth[1], AuthRequest::Ok);
    assert_eq!(rows_of(&be), [[Some(b"md5_user".to_vec())]]);
}

#[test]
fn golden_cancel() {
    let session_fe = frontend_stream(
        "cancel-session.frontend",
        golden!("cancel-session.frontend.bin"),
    );
    assert_eq!(session_fe[0], FrontendMessage::SslRequest);
    assert_eq!(queries(&session_fe), ["select pg_sleep(10)"]);
    let session_be = backend_stream(
        "cancel-session.backend",
        golden!("cancel-session.backend.bin"),
        true,
    );
    let (pid, key) = key_data(&session_be);
    let error = session_be
        .iter()
        .find_map(|m| match m {
            BackendMessage::ErrorResponse(e) => Some(e),
            _ => None,
        })
        .expect("the cancelled statement's error");
    assert_eq!(error.code(), Some("57014"));
    assert_eq!(
        error.message(),
        Some("canceling statement due to user request")
    );

    // The cancel connection: one CancelRequest quoting the session's key, in clear
    // although the session asked for SSL; the server answers nothing and closes.
    let cancel = frontend_stream(
        "cancel-request.frontend",
        golden!("cancel-request.frontend.bin"),
    );
    assert_eq!(cancel, [FrontendMessage::CancelRequest { pid, key }]);
    let answer = backend_stream(
        "cancel-request.backend",
        golden!("cancel-request.backend.bin"),
        false,
    );
    assert!(answer.is_empty());
}

#[test]
fn frontend_phases_follow_the_startup() {
    let bytes = golden!("psql-session.frontend.bin");
    let mut d = FrontendDecoder::new();
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(d.phase(), FrontendPhase::Startup);
    let m = d.decode(&mut buf).unwrap().unwrap();
    assert_eq!(m.message, FrontendMessage::SslRequest);
    assert_eq!(d.phase(), FrontendPhase::Startup);
    let m = d.decode(&mut buf).unwrap().unwrap();
    assert!(matches!(m.message, FrontendMessage::Startup(_)));
    assert_eq!(d.phase(), FrontendPhase::Normal);

    let mut d = FrontendDecoder::new();
    let mut buf = BytesMut::from(&golden!("cancel-request.frontend.bin")[..]);
    d.decode(&mut buf).unwrap().unwrap();
    assert_eq!(d.phase(), FrontendPhase::Cancelled);
    assert_eq!(d.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"Q");
    assert_eq!(
        d.decode(&mut buf),
        Err(ProtocolError::DataAfterCancel { len: 1 })
    );

    // startup_done: a stream that starts past the startup.
    let mut d = FrontendDecoder::new();
    d.startup_done();
    let mut buf = BytesMut::from(&encode::frame(b'Q', b"select 1\0")[..]);
    assert_eq!(
        d.decode(&mut buf).unwrap().unwrap().message,
        FrontendMessage::Query {
            sql: PgStr::from_static("select 1")
        }
    );
}

#[test]
fn gssenc_then_ssl_then_startup() {
    // libpq with gssencmode=prefer and sslmode=prefer: GSSENCRequest, refused, then
    // SSLRequest, refused, then the StartupMessage.
    let mut fe = BytesMut::new();
    FrontendMessage::GssEncRequest.encode(&mut fe);
    FrontendMessage::SslRequest.encode(&mut fe);
    FrontendMessage::Startup(StartupMessage {
        version: ProtocolVersion(PROTOCOL_3_0),
        params: vec![("user".into(), "bot".into())],
    })
    .encode(&mut fe);
    let fe_bytes = fe.to_vec();
    let msgs = frontend_stream("gss-ssl-startup", &fe_bytes);
    assert_eq!(msgs[0], FrontendMessage::GssEncRequest);
    assert_eq!(msgs[1], FrontendMessage::SslRequest);
    assert_eq!(startup(&msgs).user(), Some("bot"));

    let mut be = BackendDecoder::new();
    let mut buf = BytesMut::from(&b"NN"[..]);
    be.expect_gssenc_answer();
    assert_eq!(be.phase(), BackendPhase::GssEncAnswer);
    let m = be.decode(&mut buf).unwrap().unwrap();
    assert_eq!(m.message, BackendMessage::GssEncAnswer(b'N'));
    assert_eq!(m.raw, &b"N"[..]);
    assert_eq!(be.phase(), BackendPhase::Normal);
    be.expect_ssl_answer();
    assert_eq!(
        be.decode(&mut buf).unwrap().unwrap().message,
        BackendMessage::SslAnswer(b'N')
    );
    assert!(buf.is_empty());

    // Accepted: 'G' / 'S'.
    let mut buf = BytesMut::from(&b"G"[..]);
    be.expect_gssenc_answer();
    assert_eq!(
        be.decode(&mut buf).unwrap().unwrap().message,
        BackendMessage::GssEncAnswer(b'G')
    );
    let mut buf = BytesMut::from(&b"S"[..]);
    be.expect_ssl_answer();
    assert_eq!(
        be.decode(&mut buf).unwrap().unwrap().message,
        BackendMessage::SslAnswer(b'S')
    );

    // 'S' is not a GSSENC answer, nor 'G' an SSL one; nothing is consumed.
    let mut buf = BytesMut::from(&b"S"[..]);
    be.expect_gssenc_answer();
    assert!(matches!(
        be.decode(&mut buf),
        Err(ProtocolError::UnexpectedAnswer { byte: b'S', .. })
    ));
    let mut buf = BytesMut::from(&b"G"[..]);
    be.expect_ssl_answer();
    let err = be.decode(&mut buf).unwrap_err();
    assert_eq!(
        err.to_string(),
        "expected the one-byte answer to SSLRequest ('S' or 'N'), got 'G'"
    );

    // An old server answers an ErrorResponse, decoded as one (split anywhere).
    let error = encode::error_response("FATAL", "08P01", "unsupported frontend protocol");
    let msgs = backend_stream("ssl-answered-by-error", &error, true);
    assert_eq!(msgs.len(), 1);
    let BackendMessage::ErrorResponse(e) = &msgs[0] else {
        panic!("{msgs:?}")
    };
    assert_eq!(e.code(), Some("08P01"));
}

#[test]
fn protocol_3_2_startup_and_long_cancel_key() {
    // Protocol 3.2 (PostgreSQL 18): accepted, the server negotiates down if it must;
    // cancel keys may be up to 256 bytes.
    let startup = FrontendMessage::Startup(StartupMessage {
        version: ProtocolVersion((3 << 16) | 2),
        params: vec![
            ("user".into(), "bot".into()),
            ("_pq_.something".into(), "on".into()),
        ],
    });
    let msgs = frontend_stream("startup-3.2", &startup.to_bytes());
    assert_eq!(msgs, [startup]);

    let key = Bytes::from(vec![7u8; 32]);
    let cancel = FrontendMessage::CancelRequest {
        pid: 4242,
        key: key.clone(),
    };
    assert_eq!(frontend_stream("cancel-3.2", &cancel.to_bytes()), [cancel]);
    let keydata = BackendMessage::BackendKeyData { pid: 4242, key };
    let negotiate = BackendMessage::NegotiateProtocolVersion {
        newest_minor: 0,
        unrecognized: vec!["_pq_.something".into()],
    };
    let mut be = BytesMut::new();
    negotiate.encode(&mut be);
    keydata.encode(&mut be);
    let be = be.to_vec();
    assert_eq!(
        backend_stream("3.2-backend", &be, false),
        [negotiate, keydata]
    );
}

// ---------------------------------------------------------------------------------------
// Encoders

#[test]
fn encoders_round_trip() {
    let one = |bytes: &[u8], ssl: bool| {
        let msgs = backend_stream("encoder output", bytes, ssl);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        msgs.into_iter().next().unwrap()
    };

    let e = encode::error_response("ERROR", "42501", "permission denied: policy forbids DROP");
    assert_eq!(
        one(&e, false),
        BackendMessage::ErrorResponse(ErrorFields {
            fields: vec![
                (b'S', "ERROR".into()),
                (b'V', "ERROR".into()),
                (b'C', "42501".into()),
                (b'M', "permission denied: policy forbids DROP".into()),
            ]
        })
    );
    // A NUL in a string cannot travel: it is dropped rather than truncating the frame.
    let e = encode::error_response("ERROR", "XX000", "a\0b");
    let BackendMessage::ErrorResponse(fields) = one(&e, false) else {
        panic!()
    };
    assert_eq!(fields.message(), Some("ab"));

    for status in [b'I', b'T', b'E'] {
        assert_eq!(
            one(&encode::ready_for_query(status), false),
            BackendMessage::ReadyForQuery { status }
        );
    }
    assert_eq!(&encode::ready_for_query(b'I')[..], b"Z\0\0\0\x05I");
    assert_eq!(&encode::ssl_refused()[..], b"N");
    assert_eq!(
        one(&encode::ssl_refused(), true),
        BackendMessage::SslAnswer(b'N')
    );
    assert_eq!(&encode::authentication_ok()[..], b"R\0\0\0\x08\0\0\0\0");
    assert_eq!(
        one(&encode::authentication_ok(), false),
        BackendMessage::Authentication(AuthRequest::Ok)
    );
    assert_eq!(
        one(&encode::command_complete("DELETE 3"), false),
        BackendMessage::CommandComplete {
            tag: CommandTag("DELETE 3".into())
        }
    );

    let values: [Option<&[u8]>; 4] = [
        Some(&b"42"[..]),
        None,
        Some(&b""[..]),
        Some(&b"\xff\x00binary"[..]),
    ];
    let row = encode::data_row(&values);
    let BackendMessage::DataRow(decoded) = one(&row, false) else {
        panic!()
    };
    assert_eq!(decoded.len(), 4);
    assert_eq!(decoded.values().collect::<Vec<_>>(), values);
    let empty = encode::data_row(&[]);
    let BackendMessage::DataRow(decoded) = one(&empty, false) else {
        panic!()
    };
    assert!(decoded.is_empty());

    // The generic frame: an unknown backend tag is relayed as Other.
    let f = encode::frame(b'!', b"future");
    assert_eq!(&f[..], b"!\0\0\0\x0afuture");
    assert_eq!(
        one(&f, false),
        BackendMessage::Other {
            tag: b'!',
            body: Bytes::from_static(b"future")
        }
    );
    let mut d = FrontendDecoder::new();
    d.startup_done();
    let (q, _) = feed(d, &[&encode::frame(b'Q', b"select 1\0")]).unwrap();
    assert_eq!(
        q[0].message,
        FrontendMessage::Query {
            sql: "select 1".into()
        }
    );
}

/// One of every message type, built by hand, encoded then decoded.
#[test]
fn every_message_type_round_trips() {
    let s = PgStr::from_static;
    let frontend_startup = [
        FrontendMessage::SslRequest,
        FrontendMessage::GssEncRequest,
        FrontendMessage::Startup(StartupMessage {
            version: ProtocolVersion(PROTOCOL_3_0),
            params: vec![
                (s("user"), s("ci-bot")),
                (s("database"), s("app")),
                (s("options"), s("-c search_path=x")),
            ],
        }),
    ];
    let frontend_normal = [
        FrontendMessage::Query {
            sql: s("select 1; select 2"),
        },
        FrontendMessage::Parse {
            name: s("s1"),
            sql: s("select $1::int, $2"),
            param_types: vec![23, 0],
        },
        FrontendMessage::Bind {
            portal: s("p1"),
            statement: s("s1"),
            param_formats: vec![0, 1],
            params: vec![Some(Bytes::from_static(b"7")), None],
            result_formats: vec![1],
        },
        FrontendMessage::Describe {
            kind: b'S',
            name: s("s1"),
        },
        FrontendMessage::Execute {
            portal: s("p1"),
            max_rows: 100,
        },
        FrontendMessage::Close {
            kind: b'P',
            name: s("p1"),
        },
        FrontendMessage::Flush,
        FrontendMessage::Sync,
        FrontendMessage::CopyData(Bytes::from_static(b"1\t2\n")),
        FrontendMessage::CopyDone,
        FrontendMessage::CopyFail {
            message: s("aborted by the client"),
        },
        FrontendMessage::FunctionCall {
            oid: 1598,
            arg_formats: vec![1],
            args: vec![Some(Bytes::from_static(&[0, 0, 0, 1])), None],
            result_format: 1,
        },
        FrontendMessage::AuthResponse(AuthResponse::new(Bytes::from_static(b"secret\0"))),
        FrontendMessage::Terminate,
    ];
    let mut bytes = BytesMut::new();
    for m in frontend_startup.iter().chain(&frontend_normal) {
        m.encode(&mut bytes);
    }
    let bytes = bytes.to_vec();
    let decoded = frontend_stream("every frontend type", &bytes);
    let expected: Vec<_> = frontend_startup
        .iter()
        .chain(&frontend_normal)
        .cloned()
        .collect();
    assert_eq!(decoded, expected);

    let backend = [
        BackendMessage::Authentication(AuthRequest::CleartextPassword),
        BackendMessage::Authentication(AuthRequest::Md5Password { salt: [1, 2, 3, 4] }),
        BackendMessage::Authentication(AuthRequest::Sasl {
            mechanisms: vec![s("SCRAM-SHA-256-PLUS"), s("SCRAM-SHA-256")],
        }),
        BackendMessage::Authentication(AuthRequest::SaslContinue {
            data: Bytes::from_static(b"r=abc,s=xyz,i=4096"),
        }),
        BackendMessage::Authentication(AuthRequest::SaslFinal {
            data: Bytes::from_static(b"v=sig"),
        }),
        BackendMessage::Authentication(AuthRequest::Other {
            code: 7,
            data: Bytes::new(),
        }),
        BackendMessage::Authentication(AuthRequest::Ok),
        BackendMessage::ParameterStatus {
            name: s("TimeZone"),
            value: s("UTC"),
        },
        BackendMessage::BackendKeyData {
            pid: 99,
            key: Bytes::from_static(&[1, 2, 3, 4]),
        },
        BackendMessage::ReadyForQuery { status: b'T' },
        BackendMessage::RowDescription {
            fields: vec![FieldDescription {
                name: s("id"),
                table_oid: 16384,
                column: 1,
                type_oid: 20,
                type_size: 8,
                type_modifier: -1,
                format: 1,
            }],
        },
        BackendMessage::CommandComplete {
            tag: CommandTag(s("MERGE 2")),
        },
        BackendMessage::EmptyQueryResponse,
        BackendMessage::NoticeResponse(ErrorFields {
            fields: vec![(b'S', s("NOTICE")), (b'M', s("hello"))],
        }),
        BackendMessage::ParseComplete,
        BackendMessage::BindComplete,
        BackendMessage::CloseComplete,
        BackendMessage::NoData,
        BackendMessage::PortalSuspended,
        BackendMessage::ParameterDescription {
            types: vec![23, 25],
        },
        BackendMessage::NotificationResponse {
            pid: 7,
            channel: s("jobs"),
            payload: s("{\"id\": 1}"),
        },
        BackendMessage::CopyInResponse(CopyResponse {
            format: 1,
            column_formats: vec![1, 1],
        }),
        BackendMessage::CopyOutResponse(CopyResponse {
            format: 0,
            column_formats: vec![],
        }),
        BackendMessage::CopyBothResponse(CopyResponse {
            format: 0,
            column_formats: vec![0],
        }),
        BackendMessage::CopyData(Bytes::from_static(b"row\n")),
        BackendMessage::CopyDone,
        BackendMessage::FunctionCallResponse { value: None },
        BackendMessage::FunctionCallResponse {
            value: Some(Bytes::from_static(b"x")),
        },
        BackendMessage::Other {
            tag: b'~',
            body: Bytes::new(),
        },
    ];
    let mut bytes = BytesMut::new();
    for m in &backend {
        m.encode(&mut bytes);
    }
    let bytes = bytes.to_vec();
    assert_eq!(backend_stream("every backend type", &bytes, false), backend);
}

#[test]
fn command_tag_rows() {
    let rows = |tag: &str| CommandTag(PgStr::from(tag)).rows();
    assert_eq!(rows("SELECT 5"), Some(5));
    assert_eq!(rows("INSERT 0 3"), Some(3));
    assert_eq!(rows("UPDATE 2"), Some(2));
    assert_eq!(rows("DELETE 0"), Some(0));
    assert_eq!(rows("MERGE 7"), Some(7));
    assert_eq!(rows("FETCH 10"), Some(10));
    assert_eq!(rows("MOVE 1"), Some(1));
    assert_eq!(rows("COPY 1000000"), Some(1_000_000));
    assert_eq!(rows("SELECT 18446744073709551615"), Some(u64::MAX));
    assert_eq!(rows("CREATE TABLE"), None);
    assert_eq!(rows("BEGIN"), None);
    assert_eq!(rows("INSERT 3"), None, "INSERT always has the OID word");
    assert_eq!(rows("SELECT"), None);
    assert_eq!(rows("SELECT x"), None);
    assert_eq!(rows("UPDATE 1 2"), None);
    assert_eq!(rows(""), None);
    let tag = CommandTag(PgStr::from("INSERT 0 3"));
    assert_eq!(tag.command(), "INSERT");
    assert_eq!(
        CommandTag(PgStr::from("CREATE TABLE")).command(),
        "CREATE TABLE"
    );
}

#[test]
fn auth_response_accessors() {
    let r = AuthResponse::new(Bytes::from_static(b"hunter2\0"));
    assert_eq!(r.password().unwrap(), &b"hunter2"[..]);
    assert!(!format!("{r:?}").contains("hunter2"));
    assert!(format!("{r:?}").contains("len: 8"));
    // A decoded 'p' frame: neither the message nor the Decoded wrapper shows it.
    let mut d = FrontendDecoder::new();
    d.startup_done();
    let mut buf = BytesMut::from(&encode::frame(b'p', b"hunter2\0")[..]);
    let m = d.decode(&mut buf).unwrap().unwrap();
    assert!(!format!("{m:?}").contains("hunter2"), "{m:?}");

    let unterminated = AuthResponse::new(Bytes::from_static(b"hunter2"));
    assert!(matches!(
        unterminated.password(),
        Err(ProtocolError::MissingNul { .. })
    ));
    // SASLInitialResponse with no initial data (-1) and with an overrunning length.
    let r = AuthResponse::new(Bytes::from_static(b"SCRAM-SHA-256\0\xff\xff\xff\xff"));
    assert_eq!(r.sasl_initial().unwrap().data, None);
    let r = AuthResponse::new(Bytes::from_static(b"SCRAM-SHA-256\0\0\0\0\x09n,,"));
    assert!(matches!(
        r.sasl_initial(),
        Err(ProtocolError::Truncated {
            needed: 9,
            remaining: 3,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------
// Malformed input

fn fe_startup_err(bytes: &[u8]) -> ProtocolError {
    let mut buf = BytesMut::from(bytes);
    FrontendDecoder::new()
        .decode(&mut buf)
        .expect_err("must be rejected")
}

fn fe_err(bytes: &[u8]) -> ProtocolError {
    let mut d = FrontendDecoder::new();
    d.startup_done();
    let mut buf = BytesMut::from(bytes);
    d.decode(&mut buf).expect_err("must be rejected")
}

fn be_err(bytes: &[u8]) -> ProtocolError {
    let mut buf = BytesMut::from(bytes);
    BackendDecoder::new()
        .decode(&mut buf)
        .expect_err("must be rejected")
}

/// A tagged frame with a declared length that may lie.
fn lying(tag: u8, len: u32, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn startup_packet(code: u32, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn malformed_lengths() {
    for len in 0..4 {
        for (tag, name) in [(b'Q', "Query"), (b'S', "Sync"), (b'B', "Bind")] {
            let err = fe_err(&lying(tag, len, b""));
            let want = if tag == b'S' {
                ProtocolError::UnexpectedLength {
                    message: MessageId {
                        name,
                        tag: Some(tag),
                    },
                    len,
                    expected: 4,
                }
            } else {
                ProtocolError::LengthTooShort {
                    message: MessageId {
                        name,
                        tag: Some(tag),
                    },
                    len,
                    min: 4,
                }
            };
            assert_eq!(err, want);
        }
        let err = be_err(&lying(b'D', len, b""));
        assert_eq!(
            err.to_string(),
            format!("DataRow ('D'): declared length {len} is below the minimum of 4")
        );
        // Startup packets: the length word of an untagged packet.
        let mut packet = len.to_be_bytes().to_vec();
        packet.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        assert!(matches!(
            fe_startup_err(&packet),
            ProtocolError::LengthTooShort { min: 8, .. }
        ));
    }

    // Too large: rejected from the 5-byte header alone, without waiting for the body.
    let err = be_err(&lying(b'D', u32::MAX, b""));
    assert_eq!(
        err.to_string(),
        format!(
            "DataRow ('D'): declared length {} exceeds the limit of {} bytes",
            u32::MAX,
            DEFAULT_MAX_MESSAGE
        )
    );
    let just_over = (DEFAULT_MAX_MESSAGE + 1) as u32;
    assert!(matches!(
        fe_err(&lying(b'Q', just_over, b"")),
        ProtocolError::LengthTooLarge { len, limit: DEFAULT_MAX_MESSAGE, .. } if len == just_over
    ));
    assert!(matches!(
        fe_err(&lying(b'd', just_over, b"")),
        ProtocolError::LengthTooLarge { .. }
    ));
    // Exactly at the limit is waited for, not rejected.
    let mut d = BackendDecoder::new();
    let mut buf = BytesMut::from(&lying(b'd', DEFAULT_MAX_MESSAGE as u32, b"")[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    // ... without reserving the 64 MiB a 5-byte header announces.
    assert!(buf.capacity() <= 128 << 10, "{}", buf.capacity());
    // Control messages have the smaller limit.
    let err = fe_err(&lying(b'D', 1 << 20, b""));
    assert_eq!(
        err,
        ProtocolError::LengthTooLarge {
            message: MessageId {
                name: "Describe",
                tag: Some(b'D')
            },
            len: 1 << 20,
            limit: DEFAULT_MAX_CONTROL,
        }
    );
    // Fixed-length messages must have their length.
    assert!(matches!(
        be_err(&lying(b'Z', 6, b"I\0")),
        ProtocolError::UnexpectedLength {
            len: 6,
            expected: 5,
            ..
        }
    ));
    assert!(matches!(
        fe_err(&lying(b'X', 1000, b"")),
        ProtocolError::UnexpectedLength { .. }
    ));
    assert!(matches!(
        be_err(&lying(b'K', 8, b"\0\0\0\x01")),
        ProtocolError::LengthTooShort { min: 12, .. }
    ));
    // Configured limits.
    let limits = Limits {
        max_message: 100,
        ..Limits::default()
    };
    let mut d = BackendDecoder::with_limits(limits);
    let mut buf = BytesMut::from(&lying(b'D', 101, b"")[..]);
    assert!(matches!(
        d.decode(&mut buf),
        Err(ProtocolError::LengthTooLarge { limit: 100, .. })
    ));
    assert_eq!(d.limits().max_message, 100);
    // max_control is capped by max_message.
    let mut d = FrontendDecoder::with_limits(limits);
    d.startup_done();
    let mut buf = BytesMut::from(&lying(b'E', 101, b"")[..]);
    assert!(matches!(
        d.decode(&mut buf),
        Err(ProtocolError::LengthTooLarge { limit: 100, .. })
    ));

    // Startup packets: over max_startup with 4 bytes in hand.
    let err = fe_startup_err(&20_000u32.to_be_bytes());
    assert_eq!(
        err.to_string(),
        "startup packet: declared length 20000 exceeds the limit of 10240 bytes"
    );
    // SSLRequest is always 8 bytes; a CancelRequest at least 16.
    assert!(matches!(
        fe_startup_err(&startup_packet(SSL_REQUEST_CODE, b"\0\0\0\0")),
        ProtocolError::UnexpectedLength { len: 12, .. }
    ));
    assert!(matches!(
        fe_startup_err(&startup_packet(CANCEL_REQUEST_CODE, b"\0\0\0\x01\0\0\0")),
        ProtocolError::LengthTooShort {
            len: 15,
            min: 16,
            ..
        }
    ));
}

#[test]
fn malformed_startup() {
    // An unterminated parameter value, then a missing list terminator.
    let err = fe_startup_err(&startup_packet(PROTOCOL_3_0, b"user\0bob"));
    assert_eq!(
        err.to_string(),
        "StartupMessage: parameter value is not NUL-terminated"
    );
    let err = fe_startup_err(&startup_packet(PROTOCOL_3_0, b"user\0bob\0"));
    assert!(matches!(
        err,
        ProtocolError::MissingNul {
            field: "parameter name",
            ..
        }
    ));
    // Bytes after the terminator.
    assert!(matches!(
        fe_startup_err(&startup_packet(PROTOCOL_3_0, b"user\0bob\0\0x")),
        ProtocolError::TrailingBytes { extra: 1, .. }
    ));
    // Invalid UTF-8 in a value.
    assert!(matches!(
        fe_startup_err(&startup_packet(PROTOCOL_3_0, b"user\0b\xffb\0\0")),
        ProtocolError::InvalidUtf8 {
            field: "parameter value",
            offset: 1,
            ..
        }
    ));
    // Protocol 2.0 and an unknown 1234.x request code, rejected from 8 bytes.
    let err = fe_startup_err(&startup_packet(2 << 16, b"user\0bob\0\0")[..8]);
    assert_eq!(
        err,
        ProtocolError::UnsupportedProtocolVersion {
            code: 131072,
            major: 2,
            minor: 0
        }
    );
    assert!(err.to_string().contains("version 2.0"), "{err}");
    assert!(matches!(
        fe_startup_err(&startup_packet((1234 << 16) | 9999, b"")),
        ProtocolError::UnknownRequestCode { minor: 9999, .. }
    ));
    // A TLS ClientHello (direct SSL negotiation).
    assert_eq!(
        fe_startup_err(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        ProtocolError::DirectTls
    );
    assert_eq!(fe_startup_err(b"\x16"), ProtocolError::DirectTls);
}

#[test]
fn malformed_frontend_bodies() {
    // A string without its NUL.
    assert_eq!(
        fe_err(&encode::frame(b'Q', b"select 1")).to_string(),
        "Query ('Q'): query string is not NUL-terminated"
    );
    // Invalid UTF-8 in the SQL and in a statement name.
    assert!(matches!(
        fe_err(&encode::frame(b'Q', b"select '\xc3\x28'\0")),
        ProtocolError::InvalidUtf8 { offset: 8, .. }
    ));
    assert!(matches!(
        fe_err(&encode::frame(b'P', b"\xfe\0select 1\0\0\0")),
        ProtocolError::InvalidUtf8 {
            field: "statement name",
            ..
        }
    ));
    // Bytes after the string.
    assert!(matches!(
        fe_err(&encode::frame(b'Q', b"select 1\0junk")),
        ProtocolError::TrailingBytes { extra: 4, .. }
    ));
    // A Parse announcing 65535 parameter types in a 2-byte rest.
    let err = fe_err(&encode::frame(b'P', b"\0select $1\0\xff\xff\0\0"));
    assert_eq!(
        err.to_string(),
        "Parse ('P'): parameter type count needs 262140 bytes but only 2 remain in the body"
    );
    // A Bind announcing 1000 parameters with none there.
    assert!(matches!(
        fe_err(&encode::frame(b'B', b"\0\0\0\0\x03\xe8")),
        ProtocolError::Truncated {
            field: "parameter count",
            needed: 4000,
            remaining: 0,
            ..
        }
    ));
    // A parameter whose length overruns, and one with a negative length other than -1.
    assert!(matches!(
        fe_err(&encode::frame(b'B', b"\0\0\0\0\0\x01\0\0\0\x10abc\0\0")),
        ProtocolError::Truncated {
            field: "parameter value",
            needed: 16,
            ..
        }
    ));
    assert!(matches!(
        fe_err(&encode::frame(b'B', b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0")),
        ProtocolError::InvalidValue {
            field: "parameter value",
            ..
        }
    ));
    // Describe/Close kinds.
    let err = fe_err(&encode::frame(b'D', b"X\0"));
    assert_eq!(
        err.to_string(),
        "Describe ('D'): kind (expected 'S' or 'P') has the invalid value 0x58"
    );
    assert!(matches!(
        fe_err(&encode::frame(b'C', b"")),
        ProtocolError::Truncated { .. }
    ));
    // Execute without its row count.
    assert!(matches!(
        fe_err(&encode::frame(b'E', b"\0\0\0")),
        ProtocolError::Truncated {
            field: "maximum row count",
            needed: 4,
            remaining: 2,
            ..
        }
    ));
    // A FunctionCall whose argument count overruns.
    assert!(matches!(
        fe_err(&encode::frame(b'F', b"\0\0\x06\x3e\0\0\x7f\xff")),
        ProtocolError::Truncated { .. }
    ));
    // A type byte the protocol lacks, rejected from the first byte.
    assert_eq!(
        fe_err(b"z"),
        ProtocolError::UnknownTag {
            side: Side::Frontend,
            tag: b'z'
        }
    );
    assert_eq!(
        fe_err(b"\x00\x00\x00\x08").to_string(),
        "frontend sent an unknown message type 0x00"
    );
}

#[test]
fn malformed_backend_bodies() {
    // A DataRow announcing 5 columns and holding 1.
    let err = be_err(&encode::frame(b'D', b"\0\x05\0\0\0\x01x"));
    assert_eq!(
        err.to_string(),
        "DataRow ('D'): column value needs 4 bytes but only 0 remain in the body"
    );
    // A column length overrunning the body.
    assert!(matches!(
        be_err(&encode::frame(b'D', b"\0\x01\0\0\0\x64abc")),
        ProtocolError::Truncated {
            needed: 100,
            remaining: 3,
            ..
        }
    ));
    // i32::MAX column length, and a negative one other than -1.
    assert!(matches!(
        be_err(&encode::frame(b'D', b"\0\x01\x7f\xff\xff\xffabc")),
        ProtocolError::Truncated { .. }
    ));
    assert!(matches!(
        be_err(&encode::frame(b'D', b"\0\x01\x80\0\0\0")),
        ProtocolError::InvalidValue { .. }
    ));
    // Bytes after the last column.
    assert!(matches!(
        be_err(&encode::frame(b'D', b"\0\x01\0\0\0\x01xy")),
        ProtocolError::TrailingBytes { extra: 1, .. }
    ));
    // A RowDescription announcing 1000 fields in a 30-byte body.
    assert!(matches!(
        be_err(&encode::frame(
            b'T',
            &[&[0x03, 0xe8][..], &[0; 28]].concat()
        )),
        ProtocolError::Truncated {
            field: "field count",
            needed: 19_000,
            ..
        }
    ));
    // A field name without NUL.
    assert!(matches!(
        be_err(&encode::frame(b'T', &[&[0, 1][..], &[b'a'; 20]].concat())),
        ProtocolError::MissingNul { .. }
    ));
    // ReadyForQuery with an unknown status.
    assert!(matches!(
        be_err(&encode::frame(b'Z', b"X")),
        ProtocolError::InvalidValue { .. }
    ));
    // An ErrorResponse without its final NUL, and one with a field without NUL.
    assert!(matches!(
        be_err(&encode::frame(b'E', b"SERROR\0")),
        ProtocolError::Truncated {
            field: "field type",
            ..
        }
    ));
    assert!(matches!(
        be_err(&encode::frame(b'E', b"SERROR")),
        ProtocolError::MissingNul { .. }
    ));
    // A SASL mechanism list without its terminator.
    assert!(matches!(
        be_err(&encode::frame(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0")),
        ProtocolError::MissingNul {
            field: "SASL mechanism",
            ..
        }
    ));
    // An MD5 request without its salt; an Authentication without its code.
    assert!(matches!(
        be_err(&encode::frame(b'R', b"\0\0\0\x05\x01\x02")),
        ProtocolError::Truncated {
            field: "MD5 salt",
            ..
        }
    ));
    assert!(matches!(
        be_err(&encode::frame(b'R', b"")),
        ProtocolError::Truncated { .. }
    ));
    // NegotiateProtocolVersion with a negative count, or an overrunning one.
    assert!(matches!(
        be_err(&encode::frame(b'v', b"\0\0\0\0\xff\xff\xff\xff")),
        ProtocolError::InvalidValue { .. }
    ));
    assert!(matches!(
        be_err(&encode::frame(b'v', b"\0\0\0\0\0\0\x10\0a\0")),
        ProtocolError::Truncated { .. }
    ));
    // A copy response announcing more columns than it holds.
    assert!(matches!(
        be_err(&encode::frame(b'G', b"\0\0\x05\0\0")),
        ProtocolError::Truncated { .. }
    ));
    // Non-UTF-8 in a ParameterStatus value.
    assert!(matches!(
        be_err(&encode::frame(b'S', b"TimeZone\0\xff\0")),
        ProtocolError::InvalidUtf8 { .. }
    ));
}

// ---------------------------------------------------------------------------------------
// Random input

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Decodes `bytes` fed in random chunks until an error, "need more" at the end, or the
/// end. Every decoded message must re-encode to its raw bytes.
fn survive<D: Harness>(mut decoder: D, bytes: &[u8], rng: &mut Rng) -> usize {
    let mut buf = BytesMut::new();
    let mut rest = bytes;
    let mut decoded = 0;
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(m)) => {
                    assert!(!m.raw.is_empty());
                    assert_eq!(D::encode(&m.message), m.raw, "{:?}", m.message);
                    decoded += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    return decoded;
                }
            }
        }
    }
    decoded
}

#[test]
fn random_bytes_never_panic() {
    // Small limits so that random lengths are often within them.
    let limits = Limits {
        max_message: 1 << 12,
        max_startup: 1 << 10,
        max_control: 1 << 10,
    };
    let tags = b"QPBDECSHXdcfFpRSKZTDCIEN123nstAGHWdcVv";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut decoded = 0;
    for round in 0..20_000 {
        let len = rng.below(96);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Make most inputs plausible: a known tag and a small length.
        if len >= 5 && round % 4 != 0 {
            bytes[0] = tags[rng.below(tags.len())];
            let declared = (4 + rng.below(len)) as u32;
            bytes[1..5].copy_from_slice(&declared.to_be_bytes());
        }
        let mut fe = FrontendDecoder::with_limits(limits);
        if round % 3 != 0 {
            fe.startup_done();
        }
        decoded += survive(fe, &bytes, &mut rng);
        let mut be = BackendDecoder::with_limits(limits);
        match round % 5 {
            0 => be.expect_ssl_answer(),
            1 => be.expect_gssenc_answer(),
            _ => {}
        }
        decoded += survive(be, &bytes, &mut rng);
    }
    assert!(
        decoded > 1_000,
        "the generator must reach the body decoders"
    );
}

#[test]
fn mutated_golden_streams_never_panic() {
    let streams: [(&[u8], bool, bool); 6] = [
        (golden!("psql-session.frontend.bin"), true, false),
        (golden!("psql-session.backend.bin"), false, true),
        (golden!("pgbench-extended.frontend.bin"), true, false),
        (golden!("pgbench-prepared.backend.bin"), false, false),
        (golden!("scram-login.frontend.bin"), true, false),
        (golden!("scram-login.backend.bin"), false, false),
    ];
    let mut rng = Rng(42);
    for round in 0..3_000 {
        let (original, frontend, ssl) = streams[round % streams.len()];
        let mut bytes = original.to_vec();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(bytes.len());
            bytes[at] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                2 => bytes[at].wrapping_add(1),
                _ => rng.next() as u8,
            };
        }
        if frontend {
            survive(FrontendDecoder::new(), &bytes, &mut rng);
        } else {
            let mut d = BackendDecoder::new();
            if ssl {
                d.expect_ssl_answer();
            }
            survive(d, &bytes, &mut rng);
        }
    }
}
