//! HTTP targets (`protocol = "http"`): real curl (HTTP/1.1 and h2 with prior knowledge)
//! in an intercepted cgroup, a real HTTP server (a JSON echo app on Python's http.server,
//! started by the test), real eBPF. Each test checks what the client sees, what the
//! server saw and what the journal says.
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nhi_tests::*;
use serde_json::Value;

/// A JSON echo server: answers every request with `{"method", "path", "headers"}` and
/// prints one line per request it served (`SEEN <method> <path>`) on stdout.
struct EchoApp {
    child: Child,
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

const APP: &str = r#"
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"method": self.command, "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        print("SEEN", self.command, self.path, flush=True)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = answer
    def log_message(self, *a):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

impl EchoApp {
    fn start() -> EchoApp {
        let port = free_port();
        let mut child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(APP)
            .arg(port.to_string())
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

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The requests the app served, as `METHOD PATH`.
    fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix("SEEN ").map(str::to_owned))
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
fn curl(cg: &TestCgroup, args: &[&str]) -> (u16, String) {
    let out: Output = cg
        .command("curl")
        .args(["-sS", "--max-time", "30", "-w", "\nSTATUS %{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once("\nSTATUS ").unwrap_or((&text, "0"));
    (
        status.trim().parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

fn events_of_kind(agent: &Agent, kind: &str) -> Vec<Value> {
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

#[test]
fn curl_requests_are_judged_journaled_and_forwarded() {
    privileged!("curl_requests_are_judged_journaled_and_forwarded");
    let app = EchoApp::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"api\"\naddress = \"{}\"\nprotocol = \"http\"\n\n\
         [[policy]]\nname = \"bots\"\nworkload = \"bot\"\n\n\
         [[policy.rule]]\nname = \"no-admin-deletes\"\nverdict = \"deny\"\nmethods = [\"DELETE\"]\npaths = [\"/admin/**\"]\n",
        cg.rel(),
        app.addr()
    ));
    let base = format!("http://{}", app.addr());

    // Allowed: forwarded as sent, the answer comes back; keep-alive carries two.
    let (status, body) = curl(
        &cg,
        &[&format!("{base}/hello?x=1"), &format!("{base}/again")],
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"path\": \"/hello?x=1\"") && body.contains("\"/again\""),
        "{body}"
    );

    // Refused by the rule, whatever the spelling of the path; the session goes on.
    for path in [
        "/admin",
        "/admin/users/7",
        "/admin/../admin",
        "/%61dmin",
        "//admin",
    ] {
        let (status, body) = curl(
            &cg,
            &["--path-as-is", "-X", "DELETE", &format!("{base}{path}")],
        );
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("no-admin-deletes"), "{path}: {body}");
    }
    // A path servers read differently is refused as such, before any rule.
    let (status, body) = curl(&cg, &["--path-as-is", &format!("{base}/x/%2e%2e/admin")]);
    assert_eq!(status, 400, "{body}");
    // GET on /admin is not what the rule is about.
    let (status, _) = curl(&cg, &[&format!("{base}/admin/users")]);
    assert_eq!(status, 200);
    // h2 with prior knowledge, judged the same way.
    let (status, body) = curl(
        &cg,
        &["--http2-prior-knowledge", &format!("{base}/over-h2")],
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = curl(
        &cg,
        &[
            "--http2-prior-knowledge",
            "-X",
            "DELETE",
            &format!("{base}/admin/x"),
        ],
    );
    assert_eq!(status, 403);

    // The server saw exactly the allowed requests.
    let seen = app.seen();
    assert_eq!(
        seen,
        [
            "GET /hello?x=1",
            "GET /again",
            "GET /admin/users",
            "GET /over-h2"
        ],
        "{seen:?}"
    );

    // The journal: every request with its verdict, before its response.
    let sessions = agent.wait_sessions_ended(10);
    assert!(
        sessions.iter().all(|s| s["protocol"] == "http"),
        "{sessions:#?}"
    );
    let requests = events_of_kind(&agent, "http_request");
    assert_eq!(requests.len(), 11, "{requests:#?}");
    let by_target = |t: &str| {
        requests
            .iter()
            .find(|r| r["data"]["target"] == t)
            .unwrap_or_else(|| panic!("no request {t} in {requests:#?}"))["data"]
            .clone()
    };
    let hello = by_target("/hello?x=1");
    assert_eq!(
        (hello["verdict"].as_str(), hello["action"].as_str()),
        (Some("allow"), Some("forwarded"))
    );
    assert_eq!(hello["path"], "/hello");
    let dotted = by_target("/admin/../admin");
    assert_eq!(dotted["path"], "/admin");
    assert_eq!(
        (dotted["rule"].as_str(), dotted["action"].as_str()),
        (Some("no-admin-deletes"), Some("refused"))
    );
    let ambiguous = by_target("/x/%2e%2e/admin");
    assert_eq!(ambiguous["action"], "refused");
    assert!(
        ambiguous["reason"]
            .as_str()
            .unwrap()
            .contains("encoded dot segment"),
        "{ambiguous}"
    );
    let responses = events_of_kind(&agent, "http_response");
    assert_eq!(responses.len(), 11);
    let statuses: Vec<u64> = responses
        .iter()
        .map(|r| r["data"]["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 403).count(),
        6,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 400).count(),
        1,
        "{statuses:?}"
    );
    // Each response comes after its request in the journal.
    for r in &responses {
        let seq = &r["data"]["seq"];
        let session = &r["session_id"];
        let request = requests
            .iter()
            .find(|q| &q["data"]["seq"] == seq && &q["session_id"] == session)
            .expect("its request");
        assert!(request["id"].as_i64() < r["id"].as_i64());
    }
}

#[test]
fn credentials_sent_by_the_client_are_never_journaled() {
    privileged!("credentials_sent_by_the_client_are_never_journaled");
    let app = EchoApp::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let mut agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"api\"\naddress = \"{}\"\nprotocol = \"http\"\n",
        cg.rel(),
        app.addr()
    ));
    let secret = "s3cr3t-token-5f1c";
    // From a file, so the secret is not in curl's command line (which the journal keeps
    // as the process's identity).
    let header_file = agent.dir.path().join("headers.txt");
    std::fs::write(
        &header_file,
        format!("Authorization: Bearer {secret}\nCookie: session={secret}\n"),
    )
    .expect("write headers");
    let header_arg = format!("@{}", header_file.display());
    let (status, body) = curl(
        &cg,
        &["-H", &header_arg, &format!("http://{}/private", app.addr())],
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(secret),
        "the server got the client's header: {body}"
    );
    agent.wait_sessions_ended(1);
    let requests = events_of_kind(&agent, "http_request");
    assert_eq!(requests.len(), 1);
    let headers = requests[0]["data"]["headers"].to_string();
    assert!(headers.contains("[redacted]"), "{headers}");
    // Every file the agent wrote (journal, WAL, pre-log, segments, log), after a stop.
    agent.terminate();
    let mut files = vec![agent.dir.path().to_path_buf()];
    while let Some(path) = files.pop() {
        if path == header_file {
            continue;
        }
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(secret),
                "the secret is in {}",
                path.display()
            );
        }
    }
}

/// `nhi-agent approvals ARGS --socket S`.
fn approvals(socket: &std::path::Path, args: &[&str]) -> Output {
    Command::new(agent_bin())
        .arg("approvals")
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run nhi-agent approvals")
}

/// Waits until one request is pending and returns it.
fn wait_pending(socket: &std::path::Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = approvals(socket, &["list", "--json"]);
        if out.status.success() {
            let answer: Value = serde_json::from_slice(&out.stdout).expect("json");
            if let Some(p) = answer["pending"].as_array().and_then(|a| a.first()) {
                return p.clone();
            }
        }
        assert!(Instant::now() < deadline, "nothing pending");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_held_request_waits_for_a_decision() {
    privileged!("a_held_request_waits_for_a_decision");
    let app = EchoApp::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"api\"\naddress = \"{}\"\nprotocol = \"http\"\n\n\
         [[policy]]\nname = \"bots\"\n\n\
         [[policy.rule]]\nname = \"ask-before-deploy\"\nverdict = \"approve\"\nmethods = [\"POST\"]\npaths = [\"/deploy\"]\n",
        cg.rel(),
        app.addr()
    ));
    let socket = agent.dir.path().join("approvals.sock");
    let url = format!("http://{}/deploy", app.addr());
    for (decision, expected) in [("approve", 200), ("deny", 403)] {
        let child = cg
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "60",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(["-X", "POST", "-d", "v=1", &url])
            .stdout(Stdio::piped())
            .spawn()
            .expect("curl");
        let pending = wait_pending(&socket);
        assert_eq!(pending["rule"], "ask-before-deploy");
        assert_eq!(pending["statement"], "POST /deploy");
        assert!(app.seen().len() < 2, "nothing forwarded while held");
        let id = pending["id"].as_str().expect("id").to_string();
        let out = approvals(&socket, &[decision, &id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = child.wait_with_output().expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected.to_string());
    }
    assert_eq!(
        app.seen(),
        ["POST /deploy"],
        "only the approved request reached the server"
    );
    agent.wait_sessions_ended(2);
    let decisions: Vec<String> = events_of_kind(&agent, "approval")
        .iter()
        .map(|e| e["data"]["decision"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(decisions, ["approved", "denied"]);
    let requests = events_of_kind(&agent, "http_request");
    assert!(
        requests.iter().all(|r| r["data"]["action"] == "held"),
        "{requests:#?}"
    );
}
