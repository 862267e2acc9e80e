//! HTTP features beyond one request and one response, through real eBPF from an
//! intercepted cgroup against real clients and servers: WebSocket (Python `websockets`
//! client and server), `Expect: 100-continue` (curl's large POST), server-sent events
//! streamed, HTTP/2 to nginx over TLS, a Python `requests` client, a kill -9 under HTTP
//! load and one in the middle of a WebSocket conversation, and the request-smuggling
//! corpus.
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nhi_tests::*;
use serde_json::Value;

const PYTHON: &str = "/usr/bin/python3";

fn config(cg: &TestCgroup, addr: &str, rest: &str) -> String {
    format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"api\"\naddress = \"{addr}\"\nprotocol = \"http\"\n{rest}",
        cg.rel()
    )
}

/// Lines a child prints on stdout, collected by a thread.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(child: &mut Child) -> Lines {
        let lines = Lines::default();
        let out = child.stdout.take().expect("stdout");
        let into = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                into.0.lock().unwrap().push(line);
            }
        });
        lines
    }

    fn with_prefix(&self, prefix: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix(prefix).map(str::to_owned))
            .collect()
    }
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a Python script in the cgroup and returns its stdout parsed as JSON (the
/// script prints one JSON document).
fn python_json(cg: &TestCgroup, script: &str, args: &[&str]) -> Value {
    let out = cg
        .command(PYTHON)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

// ---------------------------------------------------------------- WebSocket

/// A WebSocket echo server (Python `websockets`, with its default permessage-deflate
/// support): prints `PATH <path>` and `EXT <offered extensions or ->` per connection,
/// `MSG <text>` for each text message starting `msg-` as it arrives, and echoes every
/// message.
struct WsServer {
    child: Child,
    port: u16,
    lines: Lines,
}

const WS_SERVER: &str = r#"
import asyncio, sys, websockets

async def echo(ws, path):
    print("PATH", path, flush=True)
    print("EXT", ws.request_headers.get("Sec-WebSocket-Extensions") or "-", flush=True)
    async for message in ws:
        if isinstance(message, str) and message.startswith("msg-"):
            print("MSG", message, flush=True)
        await ws.send(message)

async def main():
    async with websockets.serve(echo, "127.0.0.1", int(sys.argv[1])):
        await asyncio.Future()

asyncio.run(main())
"#;

impl WsServer {
    fn start() -> WsServer {
        let port = free_port();
        let mut child = Command::new(PYTHON)
            .arg("-c")
            .arg(WS_SERVER)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the WebSocket server");
        let lines = Lines::follow(&mut child);
        wait_listening(port, "the WebSocket server");
        WsServer { child, port, lines }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real WebSocket client (Python `websockets`, offering permessage-deflate as it does
/// by default): a text message, a fragmented one, a 100 kB one (64-bit length), a
/// ping; prints what came back as JSON. A refused handshake prints its status.
const WS_CLIENT: &str = r#"
import asyncio, json, sys, websockets

async def main():
    out = {}
    try:
        async with websockets.connect(sys.argv[1], max_size=None) as ws:
            await ws.send("hello from alice@example.com")
            out["echo"] = await ws.recv()
            await ws.send(["part one, ", "part two"])
            out["fragmented"] = await ws.recv()
            await ws.send("y" * 100000)
            out["big"] = len(await ws.recv())
            pong = await ws.ping(b"are you there")
            await pong
            out["pong"] = True
            out["extensions"] = [str(e) for e in ws.extensions]
    except websockets.exceptions.InvalidStatusCode as e:
        out["status"] = e.status_code
    print(json.dumps(out))

asyncio.run(main())
"#;

#[test]
fn websocket_frames_are_journaled_before_they_are_relayed() {
    privileged!("websocket_frames_are_journaled_before_they_are_relayed");
    let server = WsServer::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&config(
        &cg,
        &server.addr(),
        "\n[[policy]]\nname = \"bots\"\nrecord_results = \"rows\"\n\n\
         [[policy.rule]]\nname = \"no-private-sockets\"\nverdict = \"deny\"\npaths = [\"/private/**\"]\n\n\
         [[mask]]\nname = \"pii\"\ncolumns = [\"email\"]\ndetectors = [\"email\"]\n",
    ));
    let url = format!("ws://{}/chat", server.addr());
    let out = python_json(&cg, WS_CLIENT, &[&url]);
    assert_eq!(out["echo"], "hello from alice@example.com", "{out}");
    assert_eq!(out["fragmented"], "part one, part two", "{out}");
    assert_eq!(out["big"], 100_000, "{out}");
    assert_eq!(out["pong"], true, "{out}");
    // The agent took the client's permessage-deflate offer out of the handshake, so
    // every payload is visible to the journal.
    assert_eq!(out["extensions"], serde_json::json!([]), "{out}");
    assert_eq!(server.lines.with_prefix("EXT "), ["-"]);

    // Denied by rule: the handshake gets the agent's 403, the server never sees it.
    let denied = python_json(
        &cg,
        WS_CLIENT,
        &[&format!("ws://{}/private/feed", server.addr())],
    );
    assert_eq!(denied["status"], 403, "{denied}");
    assert_eq!(server.lines.with_prefix("PATH "), ["/chat"]);

    agent.wait_sessions_ended(2);
    let requests = data_of_kind(&agent, "http_request");
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0]["upgrade"], "websocket");
    assert_eq!(requests[0]["action"], "forwarded");
    assert_eq!(
        (requests[1]["action"].as_str(), requests[1]["rule"].as_str()),
        (Some("refused"), Some("no-private-sockets"))
    );
    let statuses: Vec<u64> = data_of_kind(&agent, "http_response")
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [101, 403]);

    let frames = events_of_kind(&agent, "ws_frame");
    let of = |from: &str| -> Vec<Value> {
        frames
            .iter()
            .filter(|f| f["data"]["from"] == from)
            .cloned()
            .collect()
    };
    let (client, server_frames) = (of("client"), of("server"));
    let shape = |frames: &[Value]| -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                let d = &f["data"];
                format!(
                    "{} fin={} size={}",
                    d["opcode"].as_str().unwrap(),
                    d["fin"],
                    d["size"]
                )
            })
            .collect()
    };
    // The fragmented message: a text frame, then continuations (websockets ends it with
    // an empty one), each naming the message they continue; the close frame last.
    let mut client_shape = shape(&client);
    let fragments: Vec<String> = client_shape.drain(1..client_shape.len() - 3).collect();
    assert_eq!(
        client_shape,
        [
            "text fin=true size=28",
            "text fin=true size=100000",
            "ping fin=true size=13",
            "close fin=true size=2",
        ],
        "{client_shape:?}"
    );
    assert_eq!(fragments[0], "text fin=false size=10", "{fragments:?}");
    assert!(fragments
        .last()
        .unwrap()
        .starts_with("continuation fin=true"));
    let continued = &client[2..fragments.len() + 1];
    assert!(continued.iter().all(|f| f["data"]["message"] == "text"));
    let fragment_bytes: u64 = client[1..fragments.len() + 1]
        .iter()
        .map(|f| f["data"]["size"].as_u64().unwrap())
        .sum();
    assert_eq!(fragment_bytes, 18);
    let after = fragments.len() + 1;
    let server_shape = shape(&server_frames);
    assert_eq!(
        server_shape,
        [
            "text fin=true size=28",
            "text fin=true size=18",
            "text fin=true size=100000",
            "pong fin=true size=13",
            "close fin=true size=2",
        ],
        "{server_shape:?}"
    );
    assert!(client
        .iter()
        .chain(&server_frames)
        .filter(|f| f["data"]["opcode"] == "close")
        .all(|f| f["data"]["close_code"] == 1000));
    // Excerpts: masked, bounded, and kept for server frames under record_results = rows.
    let hello = client[0]["data"]["excerpt"].as_str().unwrap();
    assert!(hello.starts_with("hello from ") && !hello.contains("alice@example.com"));
    assert_eq!(server_frames[0]["data"]["excerpt"], hello);
    let big = client[after]["data"]["excerpt"].as_str().unwrap();
    assert_eq!(big.len(), 1024);
    assert_eq!(client[after]["data"]["excerpt_cut"], true);
    assert_eq!(server_frames[1]["data"]["excerpt"], "part one, part two");
    // Record before forward: the server echoes a message only after it got it, which
    // was after the client's frame was journaled; the client got the echo only after
    // the server's frame was journaled.
    let id = |f: &Value| f["id"].as_i64().unwrap();
    for (sent, echoed) in [(0, 0), (after - 1, 1), (after, 2), (after + 1, 3)] {
        assert!(id(&client[sent]) < id(&server_frames[echoed]));
    }
    let journal_text = events_of_kind(&agent, "ws_frame")
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    assert!(!journal_text.contains("alice@example.com"));
    // replay shows the frames.
    let session = frames[0]["session_id"].as_i64().unwrap();
    let out = agent.cli(&[
        "replay",
        &session.to_string(),
        "--journal",
        agent.journal.to_str().unwrap(),
    ]);
    let replay = String::from_utf8_lossy(&out.stdout);
    assert!(replay.contains("> ws text 28 B \"hello from "), "{replay}");
    assert!(replay.contains("< ws close 1000 2 B"), "{replay}");
}

/// A raw WebSocket client: the handshake, one valid masked text frame (whose echo it
/// reads), then `bad` (hex), then reads until the agent closes. Prints what it got.
const RAW_WS_CLIENT: &str = r#"
import base64, json, os, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=20)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET /raw HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (sys.argv[1], key)).encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
mask = b"\x01\x02\x03\x04"
payload = b"fine"
s.sendall(b"\x81\x84" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
echo = s.recv(6)
s.sendall(bytes.fromhex(sys.argv[2]))
rest = b""
try:
    while True:
        b = s.recv(4096)
        if not b:
            break
        rest += b
except Exception as e:
    rest += repr(e).encode()
print(json.dumps({"status": head.split(b" ")[1].decode(), "echo": echo.hex(), "after": rest.hex()}))
"#;

#[test]
fn a_malformed_websocket_frame_closes_the_connection_and_the_agent_lives_on() {
    privileged!("a_malformed_websocket_frame_closes_the_connection_and_the_agent_lives_on");
    let server = WsServer::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&config(&cg, &server.addr(), ""));
    let cases = [
        // An unmasked client frame.
        ("810568656c6c6f", "a client frame is not masked"),
        // RSV1 without a negotiated extension.
        ("c18001020304", "reserved bits"),
        // A ping of 126 bytes.
        ("89fe007e01020304", "at most 125"),
    ];
    for (bad, why) in cases {
        let out = python_json(&cg, RAW_WS_CLIENT, &[&server.addr(), bad]);
        assert_eq!(out["status"], "101", "{out}");
        // The valid frame before went through and came back.
        assert_eq!(out["echo"], "810466696e65", "{out}");
        // Nothing after the bad frame: the agent closed both sides.
        assert_eq!(out["after"], "", "{why}: {out}");
    }
    agent.wait_sessions_ended(3);
    let errors: Vec<String> = data_of_kind(&agent, "protocol_error")
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    for (_, why) in cases {
        assert!(
            errors
                .iter()
                .any(|e| e.contains("malformed WebSocket frame from the client") && e.contains(why)),
            "{why}: {errors:?}"
        );
    }
    // What was journaled stays: each session's valid frame and its echo.
    let frames = data_of_kind(&agent, "ws_frame");
    assert_eq!(frames.len(), 6, "{frames:#?}");
    assert!(agent.log_text().contains("malformed WebSocket frame"));
    // The agent lives on: a real client after it works.
    let out = python_json(&cg, WS_CLIENT, &[&format!("ws://{}/after", server.addr())]);
    assert_eq!(out["echo"], "hello from alice@example.com", "{out}");
}

/// Upgrades other than WebSocket are declined (served as HTTP/1.1), CONNECT refused.
#[test]
fn other_upgrades_are_declined_and_connect_is_refused() {
    privileged!("other_upgrades_are_declined_and_connect_is_refused");
    let app = EchoApp::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&config(&cg, &app.addr(), ""));
    let base = format!("http://{}", app.addr());
    // curl --http2 on http:// asks for h2c by Upgrade; it goes on with HTTP/1.1, on the
    // same connection for the next request.
    let (status, version, body) = curl_version(
        &cg,
        &["--http2", &format!("{base}/one"), &format!("{base}/two")],
    );
    assert_eq!((status, version.as_str()), (200, "1.1"), "{body}");
    assert_eq!(app.seen(), ["GET /one", "GET /two"]);
    // The echoed request headers: what the Connection header named (HTTP2-Settings)
    // is hop-by-hop and never reaches the server, nor do Upgrade and Connection.
    let echoed = body.to_ascii_lowercase();
    assert!(
        echoed.contains("\"host\""),
        "the app echoes headers: {body}"
    );
    for hop in ["http2-settings", "\"upgrade\"", "\"connection\""] {
        assert!(!echoed.contains(hop), "{hop} forwarded: {body}");
    }
    // curl asking the target to be its proxy for a tunnel.
    let (status, body) = curl(
        &cg,
        &[
            "--proxytunnel",
            "--proxy",
            &base,
            "http://internal.example/",
        ],
    );
    assert_eq!(status, 0, "{body}");
    assert!(
        body.contains("CONNECT tunnel failed, response 405"),
        "{body}"
    );
    assert_eq!(app.seen(), ["GET /one", "GET /two"]);
    // One connection for curl's two requests, one for the CONNECT.
    assert_eq!(agent.wait_sessions_ended(2).len(), 2);
    let requests = data_of_kind(&agent, "http_request");
    for declined in &requests[..2] {
        assert_eq!(declined["upgrade"], "h2c", "{requests:#?}");
        assert_eq!(declined["upgrade_declined"], true);
        assert_eq!(declined["action"], "forwarded");
    }
    assert_eq!(requests[2]["method"], "CONNECT");
    assert_eq!(requests[2]["action"], "refused");
    assert!(
        requests[2]["reason"]
            .as_str()
            .unwrap()
            .contains("CONNECT is not supported"),
        "{requests:#?}"
    );
}

// ---------------------------------------------------------------- Expect, SSE

/// curl sends `Expect: 100-continue` with a body over 1 MiB. hyper answers `100
/// Continue` only when the body is first read, which the agent does only when it
/// forwards: after judging and journaling. A refused request gets its 403 without the
/// body ever being asked for.
#[test]
fn expect_100_continue_is_answered_only_after_the_request_is_judged() {
    privileged!("expect_100_continue_is_answered_only_after_the_request_is_judged");
    let app = EchoApp::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&config(
        &cg,
        &app.addr(),
        "\n[[policy]]\nname = \"bots\"\n\n\
         [[policy.rule]]\nname = \"no-uploads-here\"\nverdict = \"deny\"\nmethods = [\"POST\"]\npaths = [\"/denied/**\"]\n",
    ));
    const SIZE: usize = 2 * 1024 * 1024;
    let file = agent.dir.path().join("big.bin");
    std::fs::write(&file, vec![b'a'; SIZE]).unwrap();
    let data = format!("@{}", file.display());
    let base = format!("http://{}", app.addr());

    let (status, text) = curl(
        &cg,
        &["-v", "--data-binary", &data, &format!("{base}/upload")],
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("> Expect: 100-continue"), "{text}");
    assert!(text.contains("< HTTP/1.1 100 Continue"), "{text}");
    assert_eq!(app.body_lengths(), [SIZE]);

    let (status, text) = curl(
        &cg,
        &[
            "-v",
            "--data-binary",
            &data,
            &format!("{base}/denied/upload"),
        ],
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("no-uploads-here"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert_eq!(app.seen(), ["POST /upload"]);

    let sessions = agent.wait_sessions_ended(2);
    let from_client: Vec<u64> = sessions
        .iter()
        .map(|s| s["bytes_from_client"].as_u64().unwrap())
        .collect();
    // The allowed body went through the agent; the refused one was never sent.
    assert!(from_client[0] > SIZE as u64, "{from_client:?}");
    assert!(from_client[1] < 64 * 1024, "{from_client:?}");
    let requests = data_of_kind(&agent, "http_request");
    assert_eq!(requests[1]["action"], "refused");
    assert_eq!(requests[1]["content_length"], SIZE);
}

/// A `text/event-stream` response reaches the client event by event: the client sees the
/// first event while the server still waits (on a file the test creates only then) to
/// send the last. An agent that buffered the response would hold the first event until
/// the server gave up after 60 s; the test waits 30 s for it.
#[test]
fn server_sent_events_are_streamed_not_buffered() {
    privileged!("server_sent_events_are_streamed_not_buffered");
    let app = EchoApp::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&config(&cg, &app.addr(), ""));
    let gate = agent.dir.path().join("gate");
    let mut curl = cg
        .command("curl")
        .args(["-sS", "-N", "--max-time", "90"])
        .arg(format!("http://{}/sse?gate={}", app.addr(), gate.display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let out = curl.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|l| l == "data: one") {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the first event while the server holds the last");
        seen.push(line);
    }
    assert!(!seen.iter().any(|l| l == "data: two"));
    std::fs::write(&gate, b"go").unwrap();
    seen.extend(rx.iter());
    assert!(curl.wait().unwrap().success());
    assert_eq!(
        seen,
        [
            "event: first",
            "data: one",
            "",
            "event: last",
            "data: two",
            ""
        ]
    );
    agent.wait_sessions_ended(1);
    let responses = data_of_kind(&agent, "http_response");
    let headers = responses[0]["headers"].to_string();
    assert!(headers.contains("text/event-stream"), "{headers}");
}

// ---------------------------------------------------------------- HTTP/2 to nginx

/// nginx from apt serving HTTPS with h2 (`listen ... ssl http2`) on a free loopback port,
/// answering every request with `{"nginx": "<protocol it spoke>", "uri": ...}` and logging
/// `<method> <uri> <protocol>` to `access.log`.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(certs: &Path) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n\
               log_format p '$request_method $request_uri $server_protocol';\n\
               access_log {d}/access.log p;\n\
               client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
               server {{\n\
                 listen 127.0.0.1:{port} ssl http2;\n\
                 ssl_certificate {crt};\nssl_certificate_key {key};\n\
                 location / {{ default_type application/json;\n\
                   return 200 '{{\"nginx\": \"$server_protocol\", \"uri\": \"$request_uri\"}}'; }}\n\
               }}\n\
             }}\n",
            crt = certs.join("server.crt").display(),
            key = certs.join("server.key").display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .spawn()
            .expect("start nginx (cargo xtask setup installs it)");
        wait_listening(port, "nginx");
        Nginx { child, port, dir }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn http2_to_nginx_over_tls_with_both_versions_journaled() {
    privileged!("http2_to_nginx_over_tls_with_both_versions_journaled");
    let certs = tempfile::tempdir().unwrap();
    make_test_certs(certs.path(), "nginx-test-ca", "api.test");
    let nginx = Nginx::start(certs.path());
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&config(
        &cg,
        &nginx.addr(),
        &format!(
            "client_tls = \"terminate\"\ntls = \"verify-full\"\nca_file = \"{}\"\n",
            certs.path().join("ca.crt").display()
        ),
    ));
    let ca = agent.dir.path().join("tls/ca.crt");
    let ca = ca.to_str().unwrap();
    let https = format!("https://{}", nginx.addr());
    // h2 from curl to the agent, h2 from the agent to nginx.
    let (status, version, body) =
        curl_version(&cg, &["--cacert", ca, "--http2", &format!("{https}/h2")]);
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    assert!(body.contains("\"nginx\": \"HTTP/2.0\""), "{body}");
    // HTTP/1.1 from curl, still h2 to nginx (ALPN on the agent's own connection).
    let (status, version, body) =
        curl_version(&cg, &["--cacert", ca, "--http1.1", &format!("{https}/h1")]);
    assert_eq!((status, version.as_str()), (200, "1.1"), "{body}");
    assert!(body.contains("\"nginx\": \"HTTP/2.0\""), "{body}");
    assert_eq!(nginx.access_log(), ["GET /h2 HTTP/2.0", "GET /h1 HTTP/2.0"]);

    agent.wait_sessions_ended(2);
    let versions = |kind: &str| -> Vec<String> {
        data_of_kind(&agent, kind)
            .iter()
            .map(|e| e["version"].as_str().unwrap_or("-").to_owned())
            .collect()
    };
    assert_eq!(versions("http_request"), ["HTTP/2.0", "HTTP/1.1"]);
    assert_eq!(versions("http_response"), ["HTTP/2.0", "HTTP/2.0"]);
}

// ---------------------------------------------------------------- Python requests

const REQUESTS_CLIENT: &str = r#"
import json, sys, requests
base = sys.argv[1]
s = requests.Session()
out = {}
r = s.get(base + "/items?id=7")
out["get"] = [r.status_code, r.json()["path"]]
r = s.post(base + "/items", json={"name": "widget", "n": 3})
out["post"] = [r.status_code, r.json()["body"], r.json()["headers"]["content-type"]]
r = s.delete(base + "/items/7")
out["delete"] = [r.status_code, r.json()]
r = s.get(base + "/after")
out["after"] = r.status_code
print(json.dumps(out))
"#;

#[test]
fn a_python_requests_client_is_judged_like_curl() {
    privileged!("a_python_requests_client_is_judged_like_curl");
    let app = EchoApp::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&config(
        &cg,
        &app.addr(),
        "\n[[policy]]\nname = \"bots\"\n\n\
         [[policy.rule]]\nname = \"no-deletes\"\nverdict = \"deny\"\nmethods = [\"DELETE\"]\n",
    ));
    let out = python_json(&cg, REQUESTS_CLIENT, &[&format!("http://{}", app.addr())]);
    assert_eq!(out["get"], serde_json::json!([200, "/items?id=7"]), "{out}");
    assert_eq!(
        out["post"],
        serde_json::json!([200, "{\"name\": \"widget\", \"n\": 3}", "application/json"]),
        "{out}"
    );
    assert_eq!(out["delete"][0], 403, "{out}");
    assert_eq!(out["delete"][1]["rule"], "no-deletes", "{out}");
    assert!(
        out["delete"][1]["error"]
            .as_str()
            .unwrap()
            .contains("refused by policy rule \"no-deletes\""),
        "{out}"
    );
    // The session goes on after the refusal (one keep-alive connection).
    assert_eq!(out["after"], 200, "{out}");
    assert_eq!(app.seen(), ["GET /items?id=7", "POST /items", "GET /after"]);
    assert_eq!(agent.wait_sessions_ended(1).len(), 1);
    let requests = data_of_kind(&agent, "http_request");
    let summary: Vec<String> = requests
        .iter()
        .map(|r| format!("{} {} {}", r["method"], r["target"], r["action"]))
        .collect();
    assert_eq!(
        summary,
        [
            "\"GET\" \"/items?id=7\" \"forwarded\"",
            "\"POST\" \"/items\" \"forwarded\"",
            "\"DELETE\" \"/items/7\" \"refused\"",
            "\"GET\" \"/after\" \"forwarded\"",
        ]
    );
    assert_eq!(requests[1]["content_length"], 26);
}

// ---------------------------------------------------------------- kill -9

/// Eight keep-alive clients (Python requests, one thread each) GET unique paths until
/// their connections die.
const LOAD_CLIENT: &str = r#"
import sys, threading, requests
base, n = sys.argv[1], int(sys.argv[2])
def run(t):
    s = requests.Session()
    i = 0
    while True:
        try:
            s.get("%s/load/%d/%d" % (base, t, i), timeout=10)
        except Exception:
            return
        i += 1
threads = [threading.Thread(target=run, args=(t,)) for t in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"#;

/// Waits up to 60 s for a client whose connections the killed agent cut to exit.
fn wait_exit(child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{what} did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILL while clients hammer an HTTP target: after the restart the journal verifies
/// and every request the server saw has its `http_request` (record before forward; the
/// pre-log survives the kill).
#[test]
fn kill_9_under_http_load_loses_no_request_the_server_saw() {
    privileged!("kill_9_under_http_load_loses_no_request_the_server_saw");
    let app = EchoApp::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let mut agent = Agent::start(&config(&cg, &app.addr(), ""));
    let mut load = cg
        .command(PYTHON)
        .arg("-c")
        .arg(LOAD_CLIENT)
        .args([&format!("http://{}", app.addr()), "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("load client");
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.seen().len() < 400 {
        assert!(Instant::now() < deadline, "load: {}", app.seen().len());
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.kill9();
    // Fail-closed: the clients' connections die and reconnects are refused.
    wait_exit(&mut load, "the load client");
    agent.spawn();
    agent.assert_verifies();
    let seen: Vec<String> = app
        .seen()
        .into_iter()
        .filter_map(|l| l.strip_prefix("GET ").map(str::to_owned))
        .collect();
    assert!(seen.len() >= 400);
    let journaled: HashSet<String> = data_of_kind(&agent, "http_request")
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_owned())
        .collect();
    let missing: Vec<&String> = seen.iter().filter(|p| !journaled.contains(*p)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} requests the server saw are not journaled: {missing:?}",
        missing.len(),
        seen.len()
    );
}

/// Sends `msg-000000`, `msg-000001`, ... over one WebSocket, each after the echo of the
/// one before, until the connection dies.
const WS_LOAD_CLIENT: &str = r#"
import asyncio, sys, websockets

async def main():
    try:
        async with websockets.connect(sys.argv[1]) as ws:
            i = 0
            while True:
                await ws.send("msg-%06d" % i)
                await ws.recv()
                i += 1
    except Exception:
        pass

asyncio.run(main())
"#;

/// SIGKILL in the middle of a WebSocket conversation: after the restart the journal
/// verifies, every message the server received has its `ws_frame` (journaled before its
/// bytes moved), and the next start closes the session as interrupted.
#[test]
fn kill_9_mid_websocket_loses_no_frame_the_server_saw() {
    privileged!("kill_9_mid_websocket_loses_no_frame_the_server_saw");
    let server = WsServer::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let mut agent = Agent::start(&config(&cg, &server.addr(), ""));
    let mut client = cg
        .command(PYTHON)
        .arg("-c")
        .arg(WS_LOAD_CLIENT)
        .arg(format!("ws://{}/stream", server.addr()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("WebSocket client");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.lines.with_prefix("MSG ").len() < 300 {
        assert!(
            Instant::now() < deadline,
            "messages: {}",
            server.lines.with_prefix("MSG ").len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.kill9();
    wait_exit(&mut client, "the client");
    agent.spawn();
    agent.assert_verifies();
    let seen = server.lines.with_prefix("MSG ");
    assert!(seen.len() >= 300, "{}", seen.len());
    let journaled: HashSet<String> = data_of_kind(&agent, "ws_frame")
        .iter()
        .filter(|f| f["from"] == "client" && f["opcode"] == "text")
        .filter_map(|f| f["excerpt"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = seen.iter().filter(|m| !journaled.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages the server received are not journaled: {missing:?}",
        missing.len(),
        seen.len()
    );
    let sessions = agent.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    assert!(
        sessions[0]["close_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("agent stopped before the session ended")),
        "{:#}",
        sessions[0]
    );
}

// ---------------------------------------------------------------- smuggling corpus

/// Request framing and heads that servers read differently (issue 12 §2), on top of
/// `http_proxy.rs`'s two lengths, obs-fold and CL + TE: each is answered 4xx by the
/// agent, never reaches the server, and the agent serves the next client.
#[test]
fn the_smuggling_corpus_is_refused_and_never_forwarded() {
    privileged!("the_smuggling_corpus_is_refused_and_never_forwarded");
    let app = EchoApp::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&config(&cg, &app.addr(), ""));
    let big_header = format!(
        "GET /big-header HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let many_headers = format!(
        "GET /many-headers HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let chunked = |path: &str, body: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
    };
    let cases: Vec<(&str, String)> = vec![
        ("a chunk size that is not hex", chunked("/chunk-zz", "zz\r\nabc\r\n0\r\n\r\n")),
        (
            "a chunk size that overflows 64 bits",
            chunked("/chunk-overflow", "1ffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
        ),
        ("a 0x chunk size", chunked("/chunk-0x", "0x3\r\nabc\r\n0\r\n\r\n")),
        ("a negative chunk size", chunked("/chunk-negative", "-3\r\nabc\r\n0\r\n\r\n")),
        ("chunk lines ended by bare LF", chunked("/chunk-lf", "3\nabc\n0\n\n")),
        (
            "chunk data longer than its size",
            chunked("/chunk-long", "3\r\nabcdef\r\n0\r\n\r\n"),
        ),
        ("an oversized header", big_header),
        ("too many headers", many_headers),
        (
            "Transfer-Encoding: chunked, identity",
            "POST /te-chunked-identity HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n".into(),
        ),
        (
            "Transfer-Encoding: identity, chunked",
            "POST /te-identity-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n".into(),
        ),
        (
            "Transfer-Encoding twice",
            "POST /te-twice HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            "POST /te-http10 HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
        ),
        (
            "Content-Length with a leading +",
            "POST /cl-plus HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc".into(),
        ),
        (
            "Content-Length as a list of different values",
            "POST /cl-list HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd".into(),
        ),
        (
            "Content-Length in hex",
            "POST /cl-hex HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc".into(),
        ),
        (
            "a space before the colon",
            "POST /space-colon HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc".into(),
        ),
        (
            "a tab before the colon",
            "POST /tab-colon HTTP/1.1\r\nHost: x\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n".into(),
        ),
        (
            "two spaces in the request line",
            "GET  /double-space HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        ),
        ("a tab in the request line", "GET\t/tab HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        (
            "a space in the request target",
            "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        ),
        (
            "a space after the version",
            "GET /trailing-space HTTP/1.1 \r\nHost: x\r\n\r\n".into(),
        ),
        (
            "a space before the method",
            " GET /leading-space HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        ),
        (
            "two Host headers",
            "GET /two-hosts HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n".into(),
        ),
        (
            "a NUL in a header value",
            "GET /nul HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".into(),
        ),
        (
            "a bare CR in a header value",
            "GET /bare-cr HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n".into(),
        ),
    ];
    let mut failures = Vec::new();
    for (what, raw) in &cases {
        let answer = raw_exchange(&cg, &app.addr(), raw.as_bytes());
        let status_line = answer.lines().next().unwrap_or_default().to_owned();
        if !status_line.starts_with("HTTP/1.1 4") && !status_line.starts_with("HTTP/1.0 4") {
            failures.push(format!("{what}: answered {status_line:?}"));
        }
        let seen = app.seen();
        if !seen.is_empty() {
            failures.push(format!("{what}: forwarded, the server saw {seen:?}"));
            break;
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", agent.log_text());
    // Each refusal is journaled: a refused `http_request` with its reason where hyper
    // handed the request over, a `protocol_error` where hyper refused the head itself.
    agent.wait_sessions_ended(cases.len());
    let mut refused: HashSet<i64> = events_of_kind(&agent, "protocol_error")
        .iter()
        .map(|e| e["session_id"].as_i64().unwrap())
        .collect();
    for r in events_of_kind(&agent, "http_request") {
        assert_eq!(r["data"]["action"], "refused", "{r}");
        assert!(r["data"]["reason"].is_string(), "{r}");
        refused.insert(r["session_id"].as_i64().unwrap());
    }
    assert_eq!(refused.len(), cases.len(), "{refused:?}");
    // The agent lives on and serves the next client.
    let (status, body) = curl(&cg, &[&format!("http://{}/after", app.addr())]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.seen(), ["GET /after"]);
    assert!(!agent.log_text().contains("panicked"));
}
