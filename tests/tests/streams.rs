//! Live streams to SIEMs (`[[stream]]`), end to end as root: real traffic through the
//! real eBPF path (a client in a test cgroup to an echo server through an intercepted
//! `tcp` target), a TLS syslog receiver and a HEC-shaped HTTPS endpoint written here
//! (rustls servers on free loopback ports; the syslog one parses octet-counted RFC 5424
//! frames, the HEC one checks the token and reads the batch of event objects), and a
//! file sink. Every journal event must arrive exactly once at each, with the journal id,
//! event id and event hash the journal itself shows (`nhi-agent export --format jsonl`);
//! events journaled while the receivers were down arrive once they are back; the proxy
//! serves while they are down; a stream added by SIGHUP catches up from the oldest event.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nhi_tests::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

const TOKEN: &str = "hec-token-7b1f0c2e-not-for-logs";

/// (journal id, event id, event hash) of one event.
type Identity = (String, i64, String);

fn tls_config(dir: &Path) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.crt"))
        .expect("server.crt")
        .collect::<Result<_, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server certificate");
    Arc::new(config)
}

type ServerStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;
type Serve = Arc<dyn Fn(ServerStream) + Send + Sync>;
/// The accept loop's stop flag and thread, and the connections it accepted.
type Accepting = (
    Arc<AtomicBool>,
    thread::JoinHandle<()>,
    Arc<Mutex<Vec<TcpStream>>>,
);

/// A TLS listener on a fixed loopback port that can be stopped (listener closed and
/// every connection shut down, as a crashed receiver would) and started again on the
/// same port. Each connection is served by `serve` on a thread of its own.
struct TlsReceiver {
    port: u16,
    config: Arc<rustls::ServerConfig>,
    serve: Serve,
    running: Option<Accepting>,
}

impl TlsReceiver {
    fn start(
        config: Arc<rustls::ServerConfig>,
        serve: impl Fn(ServerStream) + Send + Sync + 'static,
    ) -> TlsReceiver {
        let mut r = TlsReceiver {
            port: free_port(),
            config,
            serve: Arc::new(serve),
            running: None,
        };
        r.start_again();
        r
    }

    fn start_again(&mut self) {
        assert!(self.running.is_none());
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind the receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (config, serve, flag, open) = (
            self.config.clone(),
            self.serve.clone(),
            stop.clone(),
            conns.clone(),
        );
        let accept = thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        tcp.set_nonblocking(false).expect("blocking");
                        open.lock().unwrap().push(tcp.try_clone().expect("clone"));
                        let conn = rustls::ServerConnection::new(config.clone()).expect("tls");
                        let serve = serve.clone();
                        thread::spawn(move || serve(rustls::StreamOwned::new(conn, tcp)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            // The listener is dropped here: the port refuses connections.
        });
        self.running = Some((stop, accept, conns));
    }

    fn stop(&mut self) {
        let (stop, accept, conns) = self.running.take().expect("running");
        stop.store(true, Ordering::SeqCst);
        accept.join().expect("accept thread");
        for c in conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // Until then the port may still accept: make sure it refuses now.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "the receiver still listens");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One syslog message as received.
#[derive(Debug, Clone)]
struct SyslogMessage {
    pri: u32,
    msgid: String,
    sd: BTreeMap<String, String>,
    body: String,
}

/// Parses `<PRI>1 TIMESTAMP HOST APP PROCID MSGID [nhi@32473 k="v" ...] BODY`.
fn parse_rfc5424(msg: &str) -> SyslogMessage {
    let rest = msg.strip_prefix('<').expect("<PRI>");
    let (pri, rest) = rest.split_once('>').expect("PRI>");
    let rest = rest.strip_prefix("1 ").expect("version 1");
    let mut fields = rest.splitn(6, ' ');
    let _time = fields.next().expect("timestamp");
    let _host = fields.next().expect("hostname");
    assert_eq!(fields.next(), Some("nhi-agent"), "APP-NAME");
    let _pid = fields.next().expect("procid");
    let msgid = fields.next().expect("msgid").to_owned();
    let rest = fields.next().expect("structured data and body");
    let rest = rest.strip_prefix("[nhi@32473").expect("the nhi SD element");
    let mut sd = BTreeMap::new();
    let mut chars = rest.char_indices().peekable();
    let mut end = None;
    // key="value" pairs, values with \" \\ \] escapes, up to the closing ].
    let mut key = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            ' ' => key.clear(),
            ']' => {
                end = Some(i);
                break;
            }
            '=' => {
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'));
                let mut value = String::new();
                loop {
                    match chars.next().expect("value").1 {
                        '\\' => value.push(chars.next().expect("escaped").1),
                        '"' => break,
                        c => value.push(c),
                    }
                }
                sd.insert(std::mem::take(&mut key), value);
            }
            c => key.push(c),
        }
    }
    let end = end.expect("end of the SD element");
    let body = rest[end + 1..]
        .strip_prefix(' ')
        .expect("SP before MSG")
        .to_owned();
    SyslogMessage {
        pri: pri.parse().expect("PRI number"),
        msgid,
        sd,
        body,
    }
}

/// Reads octet-counted frames (`LEN SP MSG`) until the connection ends.
fn read_frames(stream: impl Read, out: &Mutex<Vec<SyslogMessage>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut len = Vec::new();
        match reader.read_until(b' ', &mut len) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let digits = std::str::from_utf8(&len[..len.len() - 1]).expect("ascii length");
        let n: usize = digits
            .parse()
            .unwrap_or_else(|_| panic!("bad frame length {digits:?}"));
        let mut msg = vec![0u8; n];
        if reader.read_exact(&mut msg).is_err() {
            return;
        }
        let msg = String::from_utf8(msg).expect("utf-8 message");
        out.lock().unwrap().push(parse_rfc5424(&msg));
    }
}

/// Serves HEC-shaped requests on one connection: `POST` with `Authorization: Splunk
/// TOKEN`, a body of concatenated event objects; 200 `{"text":"Success","code":0}`, or
/// 401 for another token.
fn serve_hec(stream: ServerStream, out: &Mutex<Vec<Value>>, bad_tokens: &Mutex<usize>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_owned());
        }
        let header = |name: &str| {
            head.iter().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        assert!(
            head[0].starts_with("POST /services/collector/event "),
            "{head:?}"
        );
        let length: usize = header("content-length")
            .expect("content-length")
            .parse()
            .expect("length");
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer: &[u8] = if header("authorization").as_deref()
            == Some(&format!("Splunk {TOKEN}"))
        {
            let events: Vec<Value> = serde_json::Deserializer::from_slice(&body)
                .into_iter::<Value>()
                .collect::<Result<_, _>>()
                .expect("concatenated JSON event objects");
            out.lock().unwrap().extend(events);
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 27\r\n\r\n{\"text\":\"Success\",\"code\":0}"
        } else {
            *bad_tokens.lock().unwrap() += 1;
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"
        };
        let stream = reader.get_mut();
        if stream
            .write_all(answer)
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
    }
}

/// Every event of the journal (its sealed segments included) with its identity, as
/// `nhi-agent export --format jsonl` shows it.
fn journal_events(agent: &Agent) -> Vec<Identity> {
    let dir = agent.journal.parent().expect("journal dir");
    let out = agent.cli(&["export", "--format", "jsonl", dir.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            (
                v["journal_id"].as_str().expect("journal_id").to_owned(),
                v["id"].as_i64().expect("id"),
                v["hash"]
                    .as_str()
                    .expect("every event has its hash")
                    .to_owned(),
            )
        })
        .collect()
}

/// Waits until `received()` holds exactly the journal's events (the same identities),
/// then asserts none came twice. Polls both: the journal may grow meanwhile (exec and
/// exit events of the client processes).
fn assert_received_once(what: &str, agent: &Agent, received: impl Fn() -> Vec<Identity>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let journal: BTreeSet<Identity> = journal_events(agent).into_iter().collect();
        let got = received();
        let set: BTreeSet<Identity> = got.iter().cloned().collect();
        assert_eq!(
            set.len(),
            got.len(),
            "{what}: an event arrived twice: {got:?}"
        );
        if set == journal {
            return set.len();
        }
        let extra: Vec<_> = set.difference(&journal).collect();
        assert!(
            extra.is_empty(),
            "{what}: received events the journal does not hold (or with another hash): {extra:?}"
        );
        assert!(
            Instant::now() < deadline,
            "{what}: after 60 s, {} of {} journal events arrived; missing {:?}\n{}",
            set.len(),
            journal.len(),
            journal.difference(&set).take(10).collect::<Vec<_>>(),
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The identities in the complete lines of a file sink's output (the agent may be
/// writing the last one).
fn file_identities(path: &Path) -> Vec<Identity> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            (
                v["journal_id"].as_str().expect("journal_id").to_owned(),
                v["id"].as_i64().expect("id"),
                v["hash"].as_str().expect("hash").to_owned(),
            )
        })
        .collect()
}

fn stream_toml(name: &str, keys: &str) -> String {
    format!("\n[[stream]]\nname = \"{name}\"\n{keys}\n")
}

#[test]
fn siem_streams_receive_every_event_once_including_those_journaled_while_they_were_down() {
    privileged!(
        "siem_streams_receive_every_event_once_including_those_journaled_while_they_were_down"
    );
    let certs = tempfile::tempdir().expect("tempdir");
    make_test_certs(certs.path(), "nhi-test-siem-ca", "siem.test");
    let ca = certs.path().join("ca.crt");
    let tls = tls_config(certs.path());

    let syslog_got: Arc<Mutex<Vec<SyslogMessage>>> = Arc::default();
    let mut syslog = {
        let got = syslog_got.clone();
        TlsReceiver::start(tls.clone(), move |s| read_frames(s, &got))
    };
    let hec_got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let bad_tokens: Arc<Mutex<usize>> = Arc::default();
    let mut hec = {
        let (got, bad) = (hec_got.clone(), bad_tokens.clone());
        TlsReceiver::start(tls, move |s| serve_hec(s, &got, &bad))
    };

    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    let token_file = certs.path().join("hec.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let file_out = out_dir.path().join("events.jsonl");
    let streams = [
        stream_toml(
            "siem-syslog",
            &format!(
                "type = \"syslog\"\naddress = \"127.0.0.1:{}\"\ntls = true\nca_file = \"{}\"\n\
                 backoff_initial = \"50ms\"\nbackoff_max = \"500ms\"",
                syslog.port,
                ca.display()
            ),
        ),
        stream_toml(
            "splunk",
            &format!(
                "type = \"splunk_hec\"\nformat = \"ocsf\"\n\
                 url = \"https://127.0.0.1:{}/services/collector/event\"\n\
                 token_file = \"{}\"\nca_file = \"{}\"\nindex = \"nhi\"\n\
                 backoff_initial = \"50ms\"\nbackoff_max = \"500ms\"",
                hec.port,
                token_file.display(),
                ca.display()
            ),
        ),
        stream_toml(
            "local",
            &format!("type = \"file\"\npath = \"{}\"", file_out.display()),
        ),
    ]
    .concat();
    let body = format!(
        "[[workload]]\nname = \"stream-bot\"\ncgroup = \"{}\"\n\
         [[target]]\nname = \"echo\"\naddress = \"{}\"\nprotocol = \"tcp\"\n{streams}",
        cg.rel(),
        echo.addr
    );
    let agent = Agent::start(&body);

    let syslog_ids = || -> Vec<Identity> {
        syslog_got
            .lock()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m.sd["journal_id"].clone(),
                    m.sd["event_id"].parse().expect("event id"),
                    m.sd["event_hash"].clone(),
                )
            })
            .collect()
    };
    let hec_ids = || -> Vec<Identity> {
        hec_got
            .lock()
            .unwrap()
            .iter()
            .map(|e| {
                let f = &e["fields"];
                (
                    f["journal_id"].as_str().expect("journal_id").to_owned(),
                    f["event_id"]
                        .as_str()
                        .expect("event_id")
                        .parse()
                        .expect("id"),
                    f["event_hash"].as_str().expect("event_hash").to_owned(),
                )
            })
            .collect()
    };

    // Traffic through the agent: two sessions.
    for _ in 0..2 {
        let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "20000"]);
        assert_eq!(r["identical"], true, "{r}");
    }
    agent.wait_sessions_ended(2);
    let n = assert_received_once("syslog", &agent, syslog_ids);
    assert!(n >= 6, "two sessions: starts, chunks, ends ({n} events)");
    assert_received_once("HEC", &agent, hec_ids);
    assert_received_once("file", &agent, || file_identities(&file_out));

    // What arrived is the journal's event: the syslog body is the export's line, with
    // the RFC 5424 header naming its kind; the HEC events are OCSF with the same identity.
    {
        let got = syslog_got.lock().unwrap();
        let start = got
            .iter()
            .find(|m| m.msgid == "session_start")
            .expect("a start");
        let line: Value = serde_json::from_str(&start.body).expect("JSON body");
        assert_eq!(line["kind"], "session_start");
        assert_eq!(line["workload"], "stream-bot");
        assert_eq!(line["id"].to_string(), start.sd["event_id"]);
        assert_eq!(line["hash"], start.sd["event_hash"].as_str());
        assert_eq!(start.pri, 13 * 8 + 6, "log audit, informational");
        let hec = hec_got.lock().unwrap();
        let open = hec
            .iter()
            .find(|e| e["event"]["class_uid"] == 4001 && e["event"]["activity_id"] == 1)
            .expect("an OCSF Network Activity Open");
        assert_eq!(open["index"], "nhi");
        assert_eq!(open["event"]["actor"]["app_name"], "stream-bot");
        assert_eq!(
            open["event"]["metadata"]["uid"],
            format!(
                "{}:{}",
                open["fields"]["journal_id"].as_str().unwrap(),
                open["fields"]["event_id"].as_str().unwrap()
            )
        );
    }
    assert_eq!(
        *bad_tokens.lock().unwrap(),
        0,
        "the token was sent as configured"
    );

    // Both receivers go down; the proxy keeps serving and journaling meanwhile.
    syslog.stop();
    hec.stop();
    let before = journal_events(&agent).len();
    let started = Instant::now();
    for _ in 0..3 {
        let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "20000"]);
        assert_eq!(
            r["identical"], true,
            "the proxy serves while the sinks are down: {r}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the proxy was not slowed down: {:?}",
        started.elapsed()
    );
    agent.wait_sessions_ended(5);
    assert!(journal_events(&agent).len() > before);
    // Both streams noticed: they tried, failed, and wait.
    for stream in ["siem-syslog", "splunk"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !agent
            .log_text()
            .lines()
            .any(|l| l.contains("stream sink unavailable") && l.contains(stream))
        {
            assert!(
                Instant::now() < deadline,
                "{stream} never failed:\n{}",
                agent.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    // The file sink kept up all along.
    assert_received_once("file (receivers down)", &agent, || {
        file_identities(&file_out)
    });

    // Back on the same ports: caught up, each event once.
    syslog.start_again();
    hec.start_again();
    assert_received_once("syslog after the outage", &agent, syslog_ids);
    assert_received_once("HEC after the outage", &agent, hec_ids);
    agent.wait_log("stream sink reachable again; catching up", 2);

    // SIGHUP adding a stream: it starts from the oldest event and catches up.
    let late = out_dir.path().join("late.jsonl");
    agent.rewrite_config(|c| {
        c + &stream_toml(
            "late",
            &format!("type = \"file\"\npath = \"{}\"", late.display()),
        )
    });
    agent.signal(libc::SIGHUP);
    agent.wait_log("stream configured by reload", 1);
    assert_received_once("stream added by reload", &agent, || file_identities(&late));
    let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "1000"]);
    assert_eq!(r["identical"], true, "{r}");
    agent.wait_sessions_ended(6);
    assert_received_once("late, new traffic", &agent, || file_identities(&late));
    assert_received_once("syslog, new traffic", &agent, syslog_ids);

    // No stream took a catch-up for lost events.
    assert_eq!(
        agent.count_log("events were deleted from the journal"),
        0,
        "{}",
        agent.log_text()
    );
    // The token is in no file of the agent (journal, log, cursors).
    nhi_tests::http::assert_in_no_file(agent.dir.path(), &[TOKEN]);
}

/// The sealed segment files (`NNN.db`) next to the journal.
fn sealed_segments(agent: &Agent) -> BTreeSet<std::path::PathBuf> {
    let dir = agent
        .journal
        .parent()
        .expect("journal dir")
        .join("segments");
    match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "db"))
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

#[test]
fn retention_keeps_the_segments_a_down_stream_has_not_sent() {
    privileged!("retention_keeps_the_segments_a_down_stream_has_not_sent");
    // The SIEM is down: nothing listens on its port yet.
    let siem_port = free_port();
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let body = format!(
        "[[workload]]\nname = \"stream-bot\"\ncgroup = \"{}\"\n\
         [[target]]\nname = \"echo\"\naddress = \"{}\"\nprotocol = \"tcp\"\n\
         [evidence]\nsegment_max_age = \"1s\"\n\n\
         [retention]\nkeep = \"1s\"\ndelete_unshipped = true\n{}",
        cg.rel(),
        echo.addr,
        stream_toml(
            "siem",
            &format!(
                "type = \"syslog\"\naddress = \"127.0.0.1:{siem_port}\"\n\
                 backoff_initial = \"50ms\"\nbackoff_max = \"200ms\""
            )
        )
    );
    let mut agent = Agent::start(&body);
    // Two sessions over a second apart: the first one's segment is sealed at rotation.
    for n in 1..=2 {
        if n == 2 {
            thread::sleep(Duration::from_millis(1200));
        }
        let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "2000"]);
        assert_eq!(r["identical"], true, "{r}");
        // Read from the directory, sealed segments included: the live file may be
        // between a rotation and its first write.
        let dir = agent
            .journal
            .parent()
            .expect("journal dir")
            .to_str()
            .unwrap()
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = agent.cli(&["sessions", "--journal", &dir, "--json"]);
            let ended = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|s| !s["ended_at"].is_null())
                .count();
            if out.status.success() && ended >= n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{ended} sessions ended, {n} expected"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    agent.terminate();
    let sealed = sealed_segments(&agent);
    assert!(!sealed.is_empty(), "segments were sealed");
    let phase_one: BTreeSet<Identity> = journal_events(&agent).into_iter().collect();
    // Older than `keep`, and not shipped (`delete_unshipped`): only the stream holds them.
    thread::sleep(Duration::from_millis(1500));
    let config = agent.config_path.to_str().expect("utf-8").to_owned();
    let ship = agent.cli(&["ship", "--once", "--config", &config]);
    assert!(
        ship.status.success(),
        "{}",
        String::from_utf8_lossy(&ship.stderr)
    );
    assert!(
        String::from_utf8_lossy(&ship.stdout).contains("deleted 0 by retention"),
        "{}",
        String::from_utf8_lossy(&ship.stdout)
    );
    assert!(
        sealed.iter().all(|p| p.exists()),
        "a segment the stream has not sent was deleted"
    );

    // The SIEM comes back; the restarted agent's stream sends everything, and the
    // segments may go.
    let got: Arc<Mutex<Vec<SyslogMessage>>> = Arc::default();
    let listener = TcpListener::bind(("127.0.0.1", siem_port)).expect("bind the SIEM");
    {
        let got = got.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let got = got.clone();
                thread::spawn(move || read_frames(conn, &got));
            }
        });
    }
    agent.spawn();
    let last = phase_one
        .iter()
        .map(|(_, id, _)| *id)
        .max()
        .expect("events");
    let cursor_path = agent
        .journal
        .parent()
        .expect("journal dir")
        .join("streams/siem.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let received: BTreeSet<Identity> = got
            .lock()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m.sd["journal_id"].clone(),
                    m.sd["event_id"].parse().expect("event id"),
                    m.sd["event_hash"].clone(),
                )
            })
            .collect();
        let cursor = std::fs::read(&cursor_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|c| c["event_id"].as_i64())
            .unwrap_or(0);
        if received.is_superset(&phase_one) && cursor >= last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream did not catch up: {} of {} events, cursor {cursor} of {last}",
            received.intersection(&phase_one).count(),
            phase_one.len()
        );
        thread::sleep(Duration::from_millis(100));
    }
    agent.terminate();
    let ship = agent.cli(&["ship", "--once", "--config", &config]);
    assert!(
        ship.status.success(),
        "{}",
        String::from_utf8_lossy(&ship.stderr)
    );
    assert!(
        sealed.iter().all(|p| !p.exists()),
        "sent, older than keep: deleted ({})",
        String::from_utf8_lossy(&ship.stdout)
    );
}
