//! HTTP targets (`protocol = "http"`): real curl (HTTP/1.1 and h2 with prior knowledge)
//! in an intercepted cgroup, a real HTTP server (a JSON echo app on Python's http.server,
//! started by the test), real eBPF. Each test checks what the client sees, what the
//! server saw and what the journal says.
use std::process::Stdio;

use nhi_tests::*;
use serde_json::Value;

/// Asserts that no file under `dir` (journal, -wal, .prelog, segments, log, state)
/// holds `secret`.
fn assert_secret_in_no_file(dir: &std::path::Path, secret: &str, except: &[&std::path::Path]) {
    let mut files = vec![dir.to_path_buf()];
    let mut read = 0;
    while let Some(path) = files.pop() {
        if except.contains(&path.as_path()) {
            continue;
        }
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            read += 1;
            assert!(
                memchr_find(&bytes, secret.as_bytes()).is_none(),
                "the secret is in {}",
                path.display()
            );
        }
    }
    assert!(read > 2, "the agent's files were read");
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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
    // An incident responder's search: the refused DELETEs under /admin, by text and
    // verdict, as `nhi-agent events` finds them in the real journal.
    let out = agent.cli(&[
        "events",
        agent.journal.to_str().unwrap(),
        "--json",
        "--text",
        "DELETE /admin",
        "--verdict",
        "denied",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let targets: Vec<&str> = found
        .iter()
        .map(|e| e["data"]["target"].as_str().unwrap_or("-"))
        .collect();
    // Found by the target as sent or by the normalised path policy judged (`/%61dmin`,
    // `//admin`), over HTTP/1.1 and h2.
    assert_eq!(
        targets,
        [
            "/admin",
            "/admin/users/7",
            "/admin/../admin",
            "/%61dmin",
            "//admin",
            "/admin/x"
        ],
        "{found:#?}"
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
    assert_secret_in_no_file(agent.dir.path(), secret, &[&header_file]);
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

#[test]
fn https_clients_are_served_with_the_agent_ca() {
    privileged!("https_clients_are_served_with_the_agent_ca");
    let app = EchoApp::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"api\"\naddress = \"{}\"\nprotocol = \"http\"\n\
         client_tls = \"terminate\"\nserver_name = \"api.internal\"\n",
        cg.rel(),
        app.addr()
    ));
    let ca = agent.dir.path().join("tls/ca.crt");
    let ca = ca.to_str().unwrap();
    let https = format!("https://{}", app.addr());

    // HTTP/1.1 and h2 (chosen by ALPN), the certificate verified by curl against the
    // agent CA for the dialled address.
    let (status, version, body) =
        curl_version(&cg, &["--cacert", ca, "--http1.1", &format!("{https}/one")]);
    assert_eq!((status, version.as_str()), (200, "1.1"), "{body}");
    assert!(body.contains("\"path\": \"/one\""), "{body}");
    let (status, version, body) =
        curl_version(&cg, &["--cacert", ca, "--http2", &format!("{https}/two")]);
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    // A name the client asks for (SNI) is on the leaf too, and so is server_name.
    for name in ["api.test", "api.internal"] {
        let (status, body) = curl(
            &cg,
            &[
                "--cacert",
                ca,
                "--resolve",
                &format!("{name}:{}:127.0.0.1", app.port),
                &format!("https://{name}:{}/named", app.port),
            ],
        );
        assert_eq!(status, 200, "{name}: {body}");
    }
    // Without the agent CA, curl refuses the certificate: it is the agent's, not a
    // public one.
    let (status, body) = curl(&cg, &[&format!("{https}/untrusted")]);
    assert_eq!(status, 0, "{body}");
    assert!(body.contains("certificate"), "{body}");

    // Plain HTTP to a target that serves HTTPS: a 400 saying so, not a hang.
    let (status, body) = curl(&cg, &[&format!("http://{}/plain", app.addr())]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("serves HTTPS only"), "{body}");

    assert_eq!(
        app.seen(),
        ["GET /one", "GET /two", "GET /named", "GET /named"]
    );
    agent.wait_sessions_ended(6);
    let requests = data_of_kind(&agent, "http_request");
    let versions: Vec<&str> = requests
        .iter()
        .map(|r| r["version"].as_str().unwrap())
        .collect();
    assert_eq!(
        versions,
        // curl offers h2 by default over TLS.
        ["HTTP/1.1", "HTTP/2.0", "HTTP/2.0", "HTTP/2.0"],
        "{requests:#?}"
    );
    let errors: Vec<String> = data_of_kind(&agent, "protocol_error")
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("plain HTTP to a target with client_tls")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("client TLS handshake failed")),
        "the untrusted client's abort is journaled: {errors:?}"
    );
    assert!(agent
        .log_text()
        .contains("plain HTTP to a target with client_tls"));
}

#[test]
fn tls_to_the_server_is_verified_and_failures_are_named() {
    privileged!("tls_to_the_server_is_verified_and_failures_are_named");
    let certs = tempfile::tempdir().unwrap();
    make_test_certs(certs.path(), "http-test-ca", "api.test");
    let other = tempfile::tempdir().unwrap();
    make_test_certs(other.path(), "another-ca", "api.test");
    let good = EchoApp::start_tls(certs.path());
    let bad = EchoApp::start_tls(certs.path());
    let plain_client = EchoApp::start_tls(certs.path());
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"good\"\naddress = \"{}\"\nprotocol = \"http\"\n\
         client_tls = \"terminate\"\ntls = \"verify-full\"\nca_file = \"{}\"\n\n\
         [[target]]\nname = \"wrong-ca\"\naddress = \"{}\"\nprotocol = \"http\"\n\
         client_tls = \"terminate\"\ntls = \"verify-full\"\nca_file = \"{}\"\n\n\
         [[target]]\nname = \"plain-client\"\naddress = \"{}\"\nprotocol = \"http\"\n\
         tls = \"verify-full\"\nca_file = \"{}\"\nserver_name = \"api.test\"\n",
        cg.rel(),
        good.addr(),
        certs.path().join("ca.crt").display(),
        bad.addr(),
        other.path().join("ca.crt").display(),
        plain_client.addr(),
        certs.path().join("ca.crt").display(),
    ));
    let ca = agent.dir.path().join("tls/ca.crt");
    let ca = ca.to_str().unwrap();

    // HTTPS in, HTTPS out, the server verified by its CA and the dialled IP address.
    for version in ["--http1.1", "--http2"] {
        let (status, body) = curl(
            &cg,
            &[
                "--cacert",
                ca,
                version,
                &format!("https://{}/ok", good.addr()),
            ],
        );
        assert_eq!(status, 200, "{version}: {body}");
        assert!(body.contains("\"path\": \"/ok\""), "{body}");
    }
    assert_eq!(good.seen(), ["GET /ok", "GET /ok"]);
    // Plain HTTP in, HTTPS out (verified against server_name).
    let (status, body) = curl(&cg, &[&format!("http://{}/up", plain_client.addr())]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(plain_client.seen(), ["GET /up"]);

    // A server whose certificate another CA signed: 502 naming the failure, nothing
    // reached it.
    let (status, body) = curl(
        &cg,
        &["--cacert", ca, &format!("https://{}/never", bad.addr())],
    );
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("unknown issuer"), "{body}");
    assert!(bad.seen().is_empty());

    // TLS to a target that does not terminate it: a TLS alert, not a hang.
    let (status, body) = curl(
        &cg,
        &[
            "--cacert",
            ca,
            &format!("https://{}/tls", plain_client.addr()),
        ],
    );
    assert_eq!(status, 0, "{body}");
    assert!(body.contains("handshake failure"), "{body}");
    assert_eq!(plain_client.seen(), ["GET /up"]);

    agent.wait_sessions_ended(5);
    let failed: Vec<Value> = data_of_kind(&agent, "http_response")
        .into_iter()
        .filter(|r| r["status"] == 502)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("unknown issuer"),
        "{failed:#?}"
    );
    let errors = data_of_kind(&agent, "protocol_error");
    assert!(
        errors.iter().any(|e| e["reason"]
            .as_str()
            .unwrap()
            .contains("TLS to a target without client_tls")),
        "{errors:#?}"
    );
}

#[test]
fn an_injected_credential_reaches_the_server_and_nothing_else() {
    privileged!("an_injected_credential_reaches_the_server_and_nothing_else");
    let app = EchoApp::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let secrets = tempfile::tempdir().unwrap();
    let secret = "inj3cted-t0ken-9a7e";
    let token = secrets.path().join("token");
    std::fs::write(&token, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"api\"\naddress = \"{}\"\nprotocol = \"http\"\n\
         password_file = \"{}\"\ninject = \"Authorization: Bearer {{secret}}\"\n",
        cg.rel(),
        app.addr(),
        token.display()
    ));
    let base = format!("http://{}", app.addr());
    let mut client_output = String::new();
    // No credential from the client; one of its own (replaced); h2; and a server that
    // echoes the header back in a response header (masked).
    for args in [
        vec!["-i".to_string(), format!("{base}/none")],
        vec![
            "-i".into(),
            "-H".into(),
            "Authorization: Bearer client-token".into(),
            format!("{base}/replaced"),
        ],
        vec![
            "-i".into(),
            "--http2-prior-knowledge".into(),
            format!("{base}/h2"),
        ],
        vec![
            "-v".into(),
            "-i".into(),
            "-H".into(),
            "x-echo-authorization: 1".into(),
            format!("{base}/echo"),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, text) = curl(&cg, &args);
        assert_eq!(status, 200, "{args:?}: {text}");
        client_output.push_str(&text);
    }
    let bearer = format!("Bearer {secret}");
    assert_eq!(app.auth(), vec![bearer.clone(); 4]);
    assert!(
        client_output.contains("x-seen-authorization: Bearer [redacted by nhi-agent]"),
        "{client_output}"
    );
    assert!(!client_output.contains(secret), "{client_output}");

    agent.wait_sessions_ended(4);
    let requests = data_of_kind(&agent, "http_request");
    assert_eq!(requests.len(), 4);
    assert!(
        requests.iter().all(|r| r["injected"] == "authorization"),
        "{requests:#?}"
    );
    let replaced: Vec<bool> = requests
        .iter()
        .map(|r| r["replaced_client_header"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(replaced, [false, true, false, false]);
    let masked: Vec<u64> = data_of_kind(&agent, "http_response")
        .iter()
        .map(|r| r["secret_echoes_masked"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(masked, [0, 0, 0, 1]);
    agent.terminate();
    assert_secret_in_no_file(agent.dir.path(), secret, &[]);
}

/// Request framing a server could read differently from the agent (two lengths,
/// obs-fold) and bytes that are not HTTP: answered 400 by the agent, never forwarded, and
/// the agent serves the next client. (Both Content-Length and Transfer-Encoding: see the
/// ignored test below.)
#[test]
fn ambiguous_framing_and_garbage_are_refused_and_the_agent_lives_on() {
    privileged!("ambiguous_framing_and_garbage_are_refused_and_the_agent_lives_on");
    let app = EchoApp::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"api\"\naddress = \"{}\"\nprotocol = \"http\"\n",
        cg.rel(),
        app.addr()
    ));
    let addr = app.addr();
    let cases: [(&str, &[u8]); 3] = [
        (
            "two different Content-Lengths",
            b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ),
        (
            "an obs-folded header",
            b"GET /folded HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
        ),
        (
            "bytes that are not HTTP",
            b"\x01\x02 not http at all\r\n\r\n",
        ),
    ];
    for (what, raw) in cases {
        let answer = raw_exchange(&cg, &addr, raw);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{what}: {answer:?}"
        );
    }
    let seen = app.seen();
    assert!(
        seen.is_empty(),
        "nothing ambiguous reached the server: {seen:?}"
    );
    // The agent lives on and serves the next client.
    let (status, body) = curl(&cg, &[&format!("http://{addr}/after")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.seen(), ["GET /after"]);
    assert!(
        !agent.log_text().contains("panicked"),
        "{}",
        agent.log_text()
    );
}

/// Two lengths for one body (Content-Length and Transfer-Encoding) is the request
/// smuggling shape: answered 400, never forwarded (neither the request nor what its
/// body would smuggle), journaled as refused. hyper alone would let Transfer-Encoding
/// win and drop the length; the agent checks the raw head first
/// (`protocol::http::framing`).
#[test]
fn both_content_length_and_transfer_encoding_are_refused() {
    privileged!("both_content_length_and_transfer_encoding_are_refused");
    let app = EchoApp::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"api\"\naddress = \"{}\"\nprotocol = \"http\"\n",
        cg.rel(),
        app.addr()
    ));
    let answer = raw_exchange(
        &cg,
        &app.addr(),
        b"POST /both HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(
        answer.contains("both Content-Length and Transfer-Encoding"),
        "{answer:?}"
    );
    assert!(!answer.contains("smuggled"), "{answer:?}");
    assert!(app.seen().is_empty(), "{:?}", app.seen());
    // The request was journaled before the answer, but committed with the session's end
    // at the latest: read once the session has ended, not as soon as the answer came.
    agent.wait_sessions_ended(1);
    let refused = events_of_kind(&agent, "http_request");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0]["data"]["action"], "refused");
    assert_eq!(refused[0]["data"]["target"], "/both");
    let reason = refused[0]["data"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("Transfer-Encoding"), "{reason}");
}
