//! HTTP body masking (`protocol = "http"` with `[[mask]]` rules): real curl in an
//! intercepted cgroup, real eBPF, and a fixture server (Python's http.server, started by
//! the test) that answers each path with a body the test wrote (JSON, NDJSON, text,
//! gzip and br encoded by the test), echoes the injected credential in a JSON body, and
//! streams SSE events the test releases one by one (and one stream that never ends until
//! its connection is closed). Each test checks what curl got,
//! what the journal says, and that no raw value is in any of the agent's files.
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nhi_tests::http::{assert_in_no_file, curl, events_of_kind};
use nhi_tests::*;
use serde_json::Value;

const FIXTURES: &str = r#"
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIR = sys.argv[2]

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.fixed(b'{"ok": true}', {"content-type": "application/json"})
    def do_GET(self):
        name = self.path.strip("/")
        if name == "echo-auth":
            body = json.dumps({"you_sent": self.headers.get("authorization", "-")}).encode()
            return self.fixed(body, {"content-type": "application/json"})
        if name == "sse":
            return self.sse()
        if name == "endless":
            return self.endless()
        with open(os.path.join(DIR, name + ".headers")) as f:
            headers = json.load(f)
        with open(os.path.join(DIR, name + ".body"), "rb") as f:
            body = f.read()
        self.fixed(body, headers)
    def fixed(self, body, headers):
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def sse(self):
        # Each event waits for the test to create DIR/release-N: the client must have
        # the first before the server sends the last.
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        events = [
            'event: user\ndata: {"id": 1, "email": "first.user@example.com"}\n\n',
            'data: second event mentions carol@example.org\n\n',
        ]
        for i, event in enumerate(events):
            if i > 0:
                deadline = time.time() + 60
                while not os.path.exists(os.path.join(DIR, "release-%d" % i)):
                    if time.time() > deadline:
                        return
                    time.sleep(0.05)
            self.wfile.write(event.encode())
            self.wfile.flush()
        self.close_connection = True
    def endless(self):
        # An event every 20 ms until a write fails (the agent closed the connection),
        # then DIR/endless-done.
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        i = 0
        try:
            while True:
                self.wfile.write(("data: tick %d for ticker@example.com\n\n" % i).encode())
                self.wfile.flush()
                i += 1
                time.sleep(0.02)
        except OSError:
            pass
        open(os.path.join(DIR, "endless-done"), "w").close()
        self.close_connection = True
    def log_message(self, *a):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

struct Fixtures {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Fixtures {
    fn start() -> Fixtures {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(FIXTURES)
            .arg(port.to_string())
            .arg(dir.path())
            .spawn()
            .expect("start the fixture server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the fixture server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Fixtures { child, port, dir }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Serves `body` at `/name` with these headers.
    fn serve(&self, name: &str, headers: &[(&str, &str)], body: &[u8]) {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        std::fs::write(
            self.dir.path().join(format!("{name}.headers")),
            Value::Object(headers).to_string(),
        )
        .unwrap();
        std::fs::write(self.dir.path().join(format!("{name}.body")), body).unwrap();
    }

    fn release(&self, n: usize) {
        std::fs::write(self.dir.path().join(format!("release-{n}")), b"").unwrap();
    }
}

impl Drop for Fixtures {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn secret_file(dir: &Path, secret: &str) -> PathBuf {
    let token = dir.join("token");
    std::fs::write(&token, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    token
}

/// The configuration of both tests: masks by member name and by content, excerpts
/// recorded, a 64 KiB masking limit and an injected credential.
fn config(cg: &TestCgroup, addr: &str, token: &Path) -> String {
    format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"api\"\naddress = \"{addr}\"\nprotocol = \"http\"\n\
         password_file = \"{}\"\ninject = \"Authorization: Bearer {{secret}}\"\n\
         mask_body_limit = \"64KiB\"\n\n\
         [[policy]]\nname = \"bots\"\nworkload = \"bot\"\nrecord_results = \"rows\"\n\n\
         [[mask]]\nname = \"by-name\"\ncolumns = [\"*email*\", \"ssn\"]\n\n\
         [[mask]]\nname = \"content\"\ndetectors = [\"email\", \"credit_card\"]\n",
        cg.rel(),
        token.display()
    )
}

/// A cgroup for the bot, the agent on [`config`] (through `edit`) with the injected
/// secret's file (kept while the tempdir lives).
fn bot_agent(
    fx: &Fixtures,
    edit: impl FnOnce(String) -> String,
) -> (TestCgroup, tempfile::TempDir, Agent) {
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let secrets = tempfile::tempdir().unwrap();
    let token = secret_file(secrets.path(), SECRET);
    let agent = Agent::start(&edit(config(&cg, &fx.addr(), &token)));
    (cg, secrets, agent)
}

/// curl in the cgroup reading a stream as it comes (`-N`), stdout piped.
fn curl_stream(cg: &TestCgroup, url: &str) -> Child {
    cg.command("curl")
        .args(["-sS", "-N", "--max-time", "90", url])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl")
}

const SECRET: &str = "inj3cted-b0dy-t0ken-5c1f";
const NAMED: &str = "named-value-7731"; // no detector's shape: only the member name masks it
const EMAIL: &str = "alice.smith@example.com";
const CARD: &str = "4111111111111111";

fn user_json() -> Vec<u8> {
    format!(
        r#"{{"data": {{"profile": {{"contact_email": "{NAMED}", "note": "write to {EMAIL}", "ssn": {{"v": 1}}}}}}, "card": {CARD}, "n": 1}}"#
    )
    .into_bytes()
}

/// `/user-gz`: [`user_json`] gzip-encoded; `/list`: gzip NDJSON, a member-name hit on its
/// first line and a detector hit on its second.
fn serve_gzip_json_and_ndjson(fx: &Fixtures) {
    fx.serve(
        "user-gz",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        &gzip(&user_json()),
    );
    let ndjson = format!("{{\"email\": \"{NAMED}\"}}\n{{\"note\": \"{EMAIL}\"}}\n{{\"n\": 3}}\n");
    fx.serve(
        "list",
        &[
            ("content-type", "application/x-ndjson"),
            ("content-encoding", "gzip"),
        ],
        &gzip(ndjson.as_bytes()),
    );
}

/// The values a `masked` list (one entry per rule) counts in all.
fn masked_total(masked: &Value) -> u64 {
    masked
        .as_array()
        .unwrap_or_else(|| panic!("not a masked list: {masked:#}"))
        .iter()
        .map(|m| m["values"].as_u64().unwrap())
        .sum()
}

/// The response event of the request for `target`.
fn response_for(agent: &Agent, kind: &str, target: &str) -> Value {
    let requests = events_of_kind(agent, "http_request");
    let request = requests
        .iter()
        .find(|r| r["data"]["target"] == target)
        .unwrap_or_else(|| panic!("no request {target} in {requests:#?}"));
    let events = events_of_kind(agent, kind);
    events
        .into_iter()
        .find(|e| {
            e["data"]["seq"] == request["data"]["seq"] && e["session_id"] == request["session_id"]
        })
        .unwrap_or_else(|| panic!("no {kind} for {target}"))["data"]
        .clone()
}

#[test]
fn json_ndjson_text_and_encoded_bodies_are_masked() {
    privileged!("json_ndjson_text_and_encoded_bodies_are_masked");
    let fx = Fixtures::start();
    let json = [("content-type", "application/json")];
    fx.serve("user", &json, &user_json());
    serve_gzip_json_and_ndjson(&fx);
    fx.serve(
        "user-br",
        &[
            ("content-type", "application/vnd.api+json"),
            ("content-encoding", "br"),
        ],
        &brotli(&user_json()),
    );
    // Text longer than the journal's excerpt, the address on its first line.
    let mut text = format!("contact: {EMAIL}\n");
    while text.len() < 20_000 {
        text.push_str("lorem ipsum dolor sit amet\n");
    }
    fx.serve(
        "notes",
        &[("content-type", "text/plain; charset=utf-8")],
        text.as_bytes(),
    );
    // Over mask_body_limit (64 KiB): refused, never passed raw.
    let mut big = format!("[{{\"email\": \"{NAMED}\"}}");
    while big.len() < 70_000 {
        big.push_str(", {\"n\": 12345}");
    }
    big.push(']');
    fx.serve("big", &json, big.as_bytes());
    // A type masks cannot read passes untouched (documented).
    fx.serve(
        "blob",
        &[("content-type", "application/octet-stream")],
        b"opaque bytes",
    );

    let (cg, secrets, agent) = bot_agent(&fx, |c| c);
    let base = format!("http://{}", fx.addr());

    let raw_values = [NAMED, EMAIL, CARD, SECRET];
    let assert_masked = |what: &str, body: &str| {
        for raw in raw_values {
            assert!(
                !body.contains(raw),
                "{what}: {raw} reached the client: {body}"
            );
        }
    };

    // JSON: the member-name glob at depth 3, a whole object, a detector, a card number.
    for (path, extra) in [
        ("/user", None),
        ("/user-gz", Some("--compressed")),
        ("/user-br", Some("--compressed")),
    ] {
        let url = format!("{base}{path}");
        let mut args = vec!["-i"];
        args.extend(extra);
        args.push(&url);
        let (status, out) = curl(&cg, &args);
        assert_eq!(status, 200, "{path}: {out}");
        assert_masked(path, &out);
        let lower = out.to_ascii_lowercase();
        assert!(
            !lower.contains("content-encoding"),
            "{path}: forwarded decoded: {out}"
        );
        let body = &out[out.find("\r\n\r\n").expect("head") + 4..];
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert_eq!(
            v["data"]["profile"]["contact_email"], "[redacted]",
            "{path}"
        );
        assert_eq!(v["data"]["profile"]["ssn"], "[redacted]", "{path}");
        assert_eq!(
            v["data"]["profile"]["note"], "write to [redacted]",
            "{path}"
        );
        assert_eq!(v["card"], "[redacted]", "{path}");
        assert_eq!(v["n"], 1, "{path}");
        // Content-Length follows the masked body.
        let length: usize = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("content-length")
            .trim()
            .parse()
            .unwrap();
        assert_eq!(length, body.len(), "{path}");
    }

    // NDJSON (gzip), streamed line by line.
    let (status, out) = curl(&cg, &[&format!("{base}/list")]);
    assert_eq!(status, 200, "{out}");
    assert_masked("/list", &out);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "{\"email\": \"[redacted]\"}",
            "{\"note\": \"[redacted]\"}",
            "{\"n\": 3}"
        ],
        "{out}"
    );

    // Text.
    let (status, out) = curl(&cg, &[&format!("{base}/notes")]);
    assert_eq!(status, 200);
    assert_masked("/notes", &out);
    assert!(
        out.starts_with("contact: [redacted]\nlorem ipsum"),
        "{}",
        &out[..80]
    );
    assert_eq!(out.len(), text.len() - EMAIL.len() + "[redacted]".len());

    // The injected secret, echoed by the server in a JSON body.
    let (status, out) = curl(&cg, &[&format!("{base}/echo-auth")]);
    assert_eq!(status, 200, "{out}");
    assert_masked("/echo-auth", &out);
    assert!(out.contains("Bearer [redacted by nhi-agent]"), "{out}");

    // Over the limit: 502 naming it, the raw body nowhere.
    let (status, out) = curl(&cg, &[&format!("{base}/big")]);
    assert_eq!(status, 502, "{out}");
    assert_masked("/big", &out);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("mask_body_limit (65536 bytes)"), "{error}");

    // Untouched.
    let (status, out) = curl(&cg, &[&format!("{base}/blob")]);
    assert_eq!((status, out.as_str()), (200, "opaque bytes"));

    // A request body: its excerpt is masked by member name and detector.
    let request_body = secrets.path().join("request.json");
    std::fs::write(
        &request_body,
        format!(r#"{{"user_email": "{NAMED}", "msg": "cc {EMAIL}"}}"#),
    )
    .unwrap();
    let (status, out) = curl(
        &cg,
        &[
            "-H",
            "content-type: application/json",
            // From a file: the command line is journaled (lineage), the body must not be.
            "--data-binary",
            &format!("@{}", request_body.display()),
            &format!("{base}/submit"),
        ],
    );
    assert_eq!(status, 200, "{out}");

    // The journal: counts and bounded, masked excerpts.
    let user = response_for(&agent, "http_response", "/user");
    assert_eq!(user["body_kind"], "json");
    let masked = masked_total(&user["masked"]);
    assert_eq!(masked, 4, "{user:#}");
    assert!(
        user["excerpt"].as_str().unwrap().contains("[redacted]"),
        "{user:#}"
    );
    let gz = response_for(&agent, "http_response", "/user-gz");
    assert_eq!(gz["decoded"], "gzip", "{gz:#}");
    let secret_echo = response_for(&agent, "http_response", "/echo-auth");
    assert_eq!(secret_echo["secret_echoes_in_body"], 1, "{secret_echo:#}");
    let list = response_for(&agent, "http_response_end", "/list");
    assert_eq!(list["body_kind"], "ndjson", "{list:#}");
    assert!(list["error"].is_null(), "{list:#}");
    assert_eq!(list["body_bytes"], out_len_of_list(), "{list:#}");
    let notes = response_for(&agent, "http_response_end", "/notes");
    let excerpt = notes["excerpt"].as_str().unwrap();
    assert!(excerpt.starts_with("contact: [redacted]\n"), "{excerpt}");
    assert!(excerpt.len() <= 4096, "{}", excerpt.len());
    assert_eq!(notes["excerpt_truncated"], true);
    let big = response_for(&agent, "http_response", "/big");
    assert_eq!(
        (big["status"].as_u64(), big["by_agent"].as_bool()),
        (Some(502), Some(true))
    );
    assert!(
        big["error"].as_str().unwrap().contains("mask_body_limit"),
        "{big:#}"
    );
    let requests = events_of_kind(&agent, "http_request");
    let submit = &requests
        .iter()
        .find(|r| r["data"]["target"] == "/submit")
        .expect("submit")["data"];
    let excerpt = submit["excerpt"].as_str().unwrap();
    assert!(
        excerpt.contains(r#""user_email": "[redacted]""#) && excerpt.contains("cc [redacted]"),
        "{submit:#}"
    );

    // replay shows the excerpts and what was masked.
    let replay_of = |target: &str| {
        let session = requests
            .iter()
            .find(|r| r["data"]["target"] == target)
            .expect("request")["session_id"]
            .to_string();
        let out = agent.cli(&[
            "replay",
            "--journal",
            agent.journal.to_str().unwrap(),
            &session,
        ]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let replay = replay_of("/notes");
    assert!(replay.contains("< contact: [redacted]"), "{replay}");
    let replay = replay_of("/user");
    assert!(
        replay.contains("masked by by-name") && replay.contains("[redacted]"),
        "{replay}"
    );
    let replay = replay_of("/submit");
    assert!(
        replay.contains(r#"> {"user_email": "[redacted]""#),
        "{replay}"
    );

    // No raw value in the journal, its pre-log, the log or the state.
    assert_in_no_file(agent.dir.path(), &raw_values);
}

/// The NDJSON body as the client gets it, in bytes.
fn out_len_of_list() -> u64 {
    ("{\"email\": \"[redacted]\"}\n{\"note\": \"[redacted]\"}\n{\"n\": 3}\n").len() as u64
}

#[test]
fn sse_is_masked_event_by_event() {
    privileged!("sse_is_masked_event_by_event");
    let fx = Fixtures::start();
    let (cg, _secrets, agent) = bot_agent(&fx, |c| c);

    let mut curl = curl_stream(&cg, &format!("http://{}/sse", fx.addr()));
    let stdout = curl.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_data = |what: &str| -> String {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no {what} within 30 s"));
            if line.starts_with("data:") {
                return line;
            }
        }
    };
    // The first event arrives while the server still holds the second.
    let first = next_data("first event");
    assert_eq!(first, r#"data: {"id": 1, "email": "[redacted]"}"#);
    fx.release(1);
    let second = next_data("second event");
    assert_eq!(second, "data: second event mentions [redacted]");
    let status = curl.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
        rest.push_str(&line);
    }
    assert!(!rest.contains("@example"), "{rest}");

    let end = response_for(&agent, "http_response_end", "/sse");
    assert_eq!(end["body_kind"], "sse", "{end:#}");
    assert!(end["error"].is_null(), "{end:#}");
    let masked = masked_total(&end["masked"]);
    assert_eq!(masked, 2, "{end:#}");
    // The head says its end follows, and the OCSF export reports the request once, from
    // the body's end: what the client got and what was masked in it.
    let head = response_for(&agent, "http_response", "/sse");
    assert_eq!(head["end_follows"], true, "{head:#}");
    let out = agent.cli(&[
        "export",
        "--format",
        "ocsf",
        "--journal",
        agent.journal.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let activities: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["class_uid"] == 4002 && e["http_request"]["url"]["path"] == "/sse")
        .collect();
    assert_eq!(activities.len(), 1, "{activities:#?}");
    let sse = &activities[0];
    assert_eq!(sse["http_response"]["length"], end["body_bytes"], "{sse:#}");
    let ocsf_masked = masked_total(&sse["unmapped"]["response_masked"]);
    assert_eq!(ocsf_masked, 2, "{sse:#}");
    let mut log = String::new();
    std::fs::File::open(&agent.log)
        .and_then(|mut f| f.read_to_string(&mut log))
        .unwrap();
    assert_in_no_file(
        agent.dir.path(),
        &["first.user@example.com", "carol@example.org", SECRET],
    );
}

/// What a bot on HTTPS sees: the agent terminates TLS (leaf of the agent CA), the
/// client speaks h2 and asks for compressed bodies, the server answers gzip JSON and a
/// gzip NDJSON stream. Both arrive masked over h2, decoded, on one connection.
#[test]
fn masking_holds_over_terminated_tls_h2_and_gzip() {
    privileged!("masking_holds_over_terminated_tls_h2_and_gzip");
    let fx = Fixtures::start();
    serve_gzip_json_and_ndjson(&fx);
    let (cg, _secrets, agent) = bot_agent(&fx, |c| {
        c.replace(
            "mask_body_limit = \"64KiB\"\n",
            "mask_body_limit = \"64KiB\"\nclient_tls = \"terminate\"\n",
        )
    });
    let ca = agent.dir.path().join("tls/ca.crt");
    let https = format!("https://{}", fx.addr());
    // Both in one curl: one TLS connection, two h2 streams.
    let out = cg
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "--http2",
            "--compressed",
            "--cacert",
        ])
        .arg(&ca)
        .args([
            "-w",
            "\nSTATUS %{http_code} %{http_version} %{num_connects}\n",
        ])
        .arg(format!("{https}/user-gz"))
        .arg(format!("{https}/list"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{stderr}");
    let statuses: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("STATUS "))
        .collect();
    assert_eq!(
        statuses,
        ["200 2 1", "200 2 0"],
        "h2, one connection: {text}"
    );
    for raw in [NAMED, EMAIL, CARD, SECRET] {
        assert!(!text.contains(raw), "{raw} reached the client: {text}");
    }
    let user: Value = serde_json::from_str(text.lines().next().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(user["data"]["profile"]["contact_email"], "[redacted]");
    assert_eq!(user["data"]["profile"]["note"], "write to [redacted]");
    assert!(
        text.contains(r#"{"email": "[redacted]"}"#) && text.contains(r#"{"note": "[redacted]"}"#),
        "{text}"
    );

    let user = response_for(&agent, "http_response", "/user-gz");
    assert_eq!(
        (user["decoded"].as_str(), user["version"].as_str()),
        (Some("gzip"), Some("HTTP/1.1")),
        "decoded from the server's gzip: {user:#}"
    );
    let list = response_for(&agent, "http_response_end", "/list");
    assert!(list["error"].is_null(), "{list:#}");
    let masked = masked_total(&list["masked"]);
    assert_eq!(masked, 2, "{list:#}");
    let requests = events_of_kind(&agent, "http_request");
    assert!(
        requests.iter().all(|r| r["data"]["version"] == "HTTP/2.0"),
        "{requests:#?}"
    );
    assert_in_no_file(agent.dir.path(), &[NAMED, EMAIL, CARD, SECRET]);
}

/// A client that leaves in the middle of a masked stream: the agent notices at its next
/// write, journals the end of the body with why it was cut (and what was masked until
/// then), closes the server's side, and serves the next client.
#[test]
fn a_client_leaving_a_masked_stream_is_journaled_and_the_agent_goes_on() {
    privileged!("a_client_leaving_a_masked_stream_is_journaled_and_the_agent_goes_on");
    let fx = Fixtures::start();
    fx.serve(
        "user",
        &[("content-type", "application/json")],
        &user_json(),
    );
    let (cg, _secrets, agent) = bot_agent(&fx, |c| c);

    let mut client = curl_stream(&cg, &format!("http://{}/endless", fx.addr()));
    let mut first = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut first)
        .expect("the first event");
    assert_eq!(first, "data: tick 0 for [redacted]\n");
    client.kill().unwrap();
    client.wait().unwrap();

    // The server goes on writing until its writes fail: the agent's next writes to
    // the gone client fail, the body is dropped, and its end is journaled.
    let deadline = Instant::now() + Duration::from_secs(30);
    let end = loop {
        let ends = events_of_kind(&agent, "http_response_end");
        if let Some(end) = ends.first() {
            break end["data"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no http_response_end within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(end["error"], "the body was not sent to its end", "{end:#}");
    assert_eq!(end["body_kind"], "sse", "{end:#}");
    let masked = masked_total(&end["masked"]);
    assert!(masked >= 1, "{end:#}");
    // The server saw its client go (the agent closed the upstream connection).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fx.dir.path().join("endless-done").exists() {
        assert!(
            Instant::now() < deadline,
            "the server still streams: the agent kept the upstream connection"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The agent serves the next client.
    let (status, body) = curl(&cg, &[&format!("http://{}/user", fx.addr())]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("[redacted]") && !body.contains(EMAIL),
        "{body}"
    );
    assert_in_no_file(agent.dir.path(), &["ticker@example.com"]);
}
