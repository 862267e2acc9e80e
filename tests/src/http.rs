//! HTTP helpers shared by the HTTP integration tests: a JSON echo app on Python's
//! http.server, curl in a cgroup, raw bytes over one connection, the journal's events of
//! a kind, and a check that a value is in none of the agent's files.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port, Agent, TestCgroup};

/// A JSON echo server: answers every request with `{"method", "path", "headers", "body"}`
/// (the body's first 1000 characters) and prints one line per request it served
/// (`SEEN <method> <path>`) on stdout, then the Authorization header it got
/// (`AUTH <value>`, or `AUTH -`) and the length of the body it read (`BODY <n>`). That
/// header stays out of the body (a body echo is the business of body masking, not of
/// injection); a request with `x-echo-authorization` gets it back in the response header
/// `x-seen-authorization`. `GET /sse?gate=FILE` answers `text/event-stream`: the event
/// `first`, then, once FILE exists (at most 60 s), the event `last`, and closes. With a
/// certificate and key, it serves HTTPS (HTTP/1.1).
pub struct EchoApp {
    child: Child,
    pub port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

const APP: &str = r#"
import json, os, ssl, sys, threading, time, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
def say(*words):
    # One whole line at a time: the server's threads print concurrently.
    with LOCK:
        sys.stdout.write(" ".join(str(w) for w in words) + "\n")
        sys.stdout.flush()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        if self.path.startswith("/sse"):
            return self.sse()
        length = int(self.headers.get("content-length") or 0)
        got = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        auth = headers.pop("authorization", "-")
        body = json.dumps({"method": self.command, "path": self.path,
                           "headers": headers,
                           "body": got[:1000].decode(errors="replace")}).encode()
        say("SEEN", self.command, self.path)
        say("AUTH", auth)
        say("BODY", len(got))
        self.send_response(200)
        if "x-echo-authorization" in headers:
            self.send_header("x-seen-authorization", auth)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = answer
    def sse(self):
        gate = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["gate"][0]
        say("SEEN", self.command, self.path)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(b"event: first\ndata: one\n\n")
        self.wfile.flush()
        deadline = time.time() + 60
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.02)
        self.wfile.write(b"event: last\ndata: two\n\n")
        self.wfile.flush()
        self.close_connection = True
    def log_message(self, *a):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
if len(sys.argv) > 3:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

impl EchoApp {
    pub fn start() -> EchoApp {
        Self::start_with(&[])
    }

    /// Serves HTTPS with `dir/server.crt` and `dir/server.key` (see `make_test_certs`).
    pub fn start_tls(dir: &std::path::Path) -> EchoApp {
        let cert = dir.join("server.crt");
        let key = dir.join("server.key");
        Self::start_with(&[cert.to_str().unwrap(), key.to_str().unwrap()])
    }

    fn start_with(tls: &[&str]) -> EchoApp {
        let port = free_port();
        let mut child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(APP)
            .arg(port.to_string())
            .args(tls)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the echo app");
        let stdout = child.stdout.take().expect("stdout");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the echo app did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        EchoApp { child, port, seen }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The requests the app served, as `METHOD PATH`.
    pub fn seen(&self) -> Vec<String> {
        self.lines("SEEN ")
    }

    /// The body length of each request the app served.
    pub fn body_lengths(&self) -> Vec<usize> {
        self.lines("BODY ")
            .iter()
            .map(|n| n.parse().expect("a length"))
            .collect()
    }

    /// The Authorization header of each request the app served (`-`: none).
    pub fn auth(&self) -> Vec<String> {
        self.lines("AUTH ")
    }

    pub fn lines(&self, prefix: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix(prefix).map(str::to_owned))
            .collect()
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl in the cgroup: prints the body, then `\nSTATUS <code>`.
pub fn curl(cg: &TestCgroup, args: &[&str]) -> (u16, String) {
    let (status, _, text) = curl_version(cg, args);
    (status, text)
}

/// Like [`curl`], with the HTTP version curl used (`1.1`, `2`; `0` when none).
pub fn curl_version(cg: &TestCgroup, args: &[&str]) -> (u16, String, String) {
    let out: Output = cg
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-w",
            "\nSTATUS %{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once("\nSTATUS ").unwrap_or((&text, "0 0"));
    let (code, version) = status.trim().split_once(' ').unwrap_or(("0", "0"));
    (
        code.parse().unwrap_or(0),
        version.to_string(),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

pub fn events_of_kind(agent: &Agent, kind: &str) -> Vec<Value> {
    let out = agent.cli(&[
        "events",
        agent.journal.to_str().unwrap(),
        "--json",
        "--kind",
        kind,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// Events of `kind` as (session id, data).
pub fn data_of_kind(agent: &Agent, kind: &str) -> Vec<Value> {
    events_of_kind(agent, kind)
        .into_iter()
        .map(|e| e["data"].clone())
        .collect()
}

/// Sends `raw` bytes from the cgroup over one TCP connection (Python, so nothing
/// normalises them) and returns what came back within a few seconds. A server that
/// answers (and closes) before it read everything may make the sending fail; what it
/// answered is still read.
pub fn raw_exchange(cg: &TestCgroup, addr: &str, raw: &[u8]) -> String {
    let out = cg
        .command("/usr/bin/python3")
        .args([
            "-c",
            "import socket,sys\n\
             h,p=sys.argv[1].rsplit(':',1)\n\
             s=socket.create_connection((h,int(p)),timeout=10)\n\
             try:\n\
             \x20 s.sendall(sys.stdin.buffer.read())\n\
             \x20 s.shutdown(socket.SHUT_WR)\n\
             except OSError: pass\n\
             out=b''\n\
             try:\n\
             \x20 while True:\n\
             \x20\x20 b=s.recv(65536)\n\
             \x20\x20 if not b: break\n\
             \x20\x20 out+=b\n\
             except Exception: pass\n\
             sys.stdout.buffer.write(out)\n",
            addr,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().expect("stdin").write_all(raw)?;
            child.wait_with_output()
        })
        .expect("python client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that no file under `dir` (journal, -wal, .prelog, segments, log, state)
/// holds any of `values`; at least three files must have been read.
pub fn assert_in_no_file(dir: &Path, values: &[&str]) {
    let mut files = vec![dir.to_path_buf()];
    let mut read = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            read += 1;
            for value in values {
                assert!(
                    !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                    "{value:?} is in {}",
                    path.display()
                );
            }
        }
    }
    assert!(read > 2, "the agent's files were read");
}

/// A tiny webhook receiver: answers 200 to every POST and keeps the bodies.
pub fn webhook_listener() -> (String, std::sync::mpsc::Receiver<serde_json::Value>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if let Ok(v) = serde_json::from_slice(&body) {
                let _ = tx.send(v);
            }
        }
    });
    (url, rx)
}
