//! The fake Kubernetes API server (`tests/kube/apiserver.py`) against the real `kubectl`,
//! without the agent and without privilege: what the Kubernetes tests rely on. kubectl
//! reads a secret's real base64 data, deletes a deployment (a following get is
//! NotFound), runs a command over WebSocket (its default) and over SPDY
//! (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`) with the command's genuine output, stdin
//! and exit status; attaches to a container's main process over both (the same process
//! across attaches, each attach getting the answer to the input it sent); forwards a port to a pod over SPDY tunnelled in WebSocket (its
//! default) and over SPDY (`KUBECTL_PORT_FORWARD_WEBSOCKETS=false`), reaching the
//! loopback port the pod's port is mapped to, or failing as kubectl does against a pod
//! where nothing listens; a wrong token is unauthorized; a client certificate
//! authenticates; and kubectl still sends the requests of the golden capture
//! (`tests/kube/testdata/kubectl-requests.jsonl`).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nhi_tests::kube::*;
use nhi_tests::{workspace_root, EchoServer};
use serde_json::Value;

const TOKEN: &str = "nhi-test-token-3f9c";

/// A server accepting `TOKEN` and a kubeconfig using it.
fn cluster() -> (tempfile::TempDir, KubeApiServer, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = KubeApiServer::start(dir.path(), Some(TOKEN), None);
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, &server.url(), &server.ca_file(), Some(TOKEN));
    (dir, server, kubeconfig)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn requests_to(server: &KubeApiServer, method: &str, path: &str) -> Vec<Value> {
    server
        .requests()
        .into_iter()
        .filter(|r| r["method"] == method && r["path"] == path)
        .collect()
}

#[test]
fn kubectl_reads_a_secret_and_deletes_a_deployment() {
    let (_dir, server, kubeconfig) = cluster();

    let out = kubectl(
        None,
        &kubeconfig,
        &["get", "secret", "db-creds", "-n", "prod", "-o", "yaml"],
        &[],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let yaml = stdout(&out);
    // base64("s3cr3t-Pa55"), base64("app")
    assert!(yaml.contains("password: czNjcjN0LVBhNTU="), "{yaml}");
    assert!(yaml.contains("username: YXBw"), "{yaml}");
    assert!(yaml.contains("type: Opaque"), "{yaml}");
    let got = requests_to(&server, "GET", "/api/v1/namespaces/prod/secrets/db-creds");
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["identity"], TOKEN);
    assert_eq!(got[0]["auth"], "token");
    assert_eq!(got[0]["status"], 200);
    assert_eq!(
        got[0]["headers"]["authorization"],
        format!("Bearer {TOKEN}")
    );

    let out = kubectl(None, &kubeconfig, &["get", "pods", "-n", "prod"], &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    let table = stdout(&out);
    assert!(
        table.contains("web-0") && table.contains("Running") && table.contains("1/1"),
        "{table}"
    );

    let out = kubectl(
        None,
        &kubeconfig,
        &["delete", "deployment", "web", "-n", "prod"],
        &[],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        stdout(&out).contains("deployment.apps \"web\" deleted"),
        "{}",
        output_text(&out)
    );
    let deletes = requests_to(
        &server,
        "DELETE",
        "/apis/apps/v1/namespaces/prod/deployments/web",
    );
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert_eq!(deletes[0]["status"], 200);

    let out = kubectl(
        None,
        &kubeconfig,
        &["get", "deployment", "web", "-n", "prod"],
        &[],
    );
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("(NotFound): deployments.apps \"web\" not found"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn kubectl_exec_runs_the_command_over_websocket_and_spdy() {
    let (_dir, server, kubeconfig) = cluster();
    let hostname = std::fs::read_to_string("/etc/hostname").expect("/etc/hostname");
    for (transport, protocol, env) in [
        ("websocket", "v5.channel.k8s.io", &[][..]),
        (
            "spdy",
            "v4.channel.k8s.io",
            &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")][..],
        ),
    ] {
        let out = kubectl(
            None,
            &kubeconfig,
            &[
                "exec",
                "web-0",
                "-n",
                "prod",
                "--",
                "sh",
                "-c",
                "id; cat /etc/hostname",
            ],
            env,
        );
        assert!(out.status.success(), "{transport}: {}", output_text(&out));
        let text = stdout(&out);
        assert!(text.contains("uid="), "{transport}: {text}");
        assert!(text.contains(hostname.trim()), "{transport}: {text}");

        let out = kubectl(
            None,
            &kubeconfig,
            &["exec", "web-0", "-n", "prod", "--", "sh", "-c", "exit 3"],
            env,
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "{transport}: {}",
            output_text(&out)
        );
        assert!(
            stderr(&out).contains("command terminated with exit code 3"),
            "{transport}: {}",
            output_text(&out)
        );

        let out = kubectl_with_input(
            None,
            &kubeconfig,
            &[
                "exec",
                "-i",
                "web-0",
                "-n",
                "prod",
                "--",
                "sh",
                "-c",
                "tr a-z A-Z",
            ],
            env,
            Some(b"hello from stdin\n"),
        );
        assert!(out.status.success(), "{transport}: {}", output_text(&out));
        assert_eq!(stdout(&out), "HELLO FROM STDIN\n", "{transport}");

        let execs: Vec<Value> = server
            .requests()
            .into_iter()
            .filter(|r| r["exec"]["transport"] == transport)
            .collect();
        assert_eq!(execs.len(), 3, "{transport}: {execs:#?}");
        for e in &execs {
            assert_eq!(e["status"], 101, "{e:#}");
            assert_eq!(e["identity"], TOKEN, "{e:#}");
            assert_eq!(e["exec"]["protocol"], protocol, "{e:#}");
            assert_eq!(e["exec"]["container"], "app", "{e:#}");
        }
        assert_eq!(
            execs[0]["exec"]["command"],
            serde_json::json!(["sh", "-c", "id; cat /etc/hostname"])
        );
        assert!(execs[0]["exec"]["stdout"]
            .as_str()
            .unwrap()
            .contains("uid="));
        assert_eq!(execs[0]["exec"]["exit_code"], 0);
        assert_eq!(execs[1]["exec"]["exit_code"], 3);
        assert_eq!(
            execs[1]["exec"]["status"]["details"]["causes"][0],
            serde_json::json!({"reason": "ExitCode", "message": "3"})
        );
        assert_eq!(execs[2]["exec"]["stdin"], "hello from stdin\n");
        assert_eq!(execs[2]["exec"]["stdout"], "HELLO FROM STDIN\n");
        let method = if transport == "websocket" {
            "GET"
        } else {
            "POST"
        };
        assert!(execs.iter().all(|e| e["method"] == method), "{execs:#?}");
    }
}

#[test]
fn kubectl_attach_joins_the_main_process_over_websocket_and_spdy() {
    let (_dir, server, kubeconfig) = cluster();
    let attach = |pod: &str, ns: &str, input: &[u8], env: &[(&str, &str)]| {
        let out = kubectl_with_input(
            None,
            &kubeconfig,
            &["attach", "-i", pod, "-n", ns, "-c", "app"],
            env,
            Some(input),
        );
        assert!(out.status.success(), "{}", output_text(&out));
        out
    };
    let spdy = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")];
    // The first attach starts tool's main process; it answers each line (stdout: the
    // line, stderr: its count) and the attach ends once the client's stdin has, with
    // every answer delivered.
    let ws = attach("tool", "default", b"hello attach\nsecond line\n", &[]);
    assert_eq!(
        stdout(&ws),
        "hello attach\nsecond line\n",
        "{}",
        output_text(&ws)
    );
    assert!(
        stderr(&ws).contains("app: line 1\napp: line 2\n"),
        "{}",
        output_text(&ws)
    );
    // Over SPDY, the same process: it goes on counting.
    let sp = attach("tool", "default", b"third\n", &spdy);
    assert_eq!(stdout(&sp), "third\n", "{}", output_text(&sp));
    assert!(
        stderr(&sp).contains("app: line 3\n"),
        "{}",
        output_text(&sp)
    );
    // Another pod's container has a process of its own.
    let web = attach("web-0", "prod", b"to web\n", &[]);
    assert_eq!(stdout(&web), "to web\n", "{}", output_text(&web));
    assert!(
        stderr(&web).contains("app: line 1\n"),
        "{}",
        output_text(&web)
    );

    let attaches = server.attach_requests();
    assert_eq!(attaches.len(), 3, "{attaches:#?}");
    for (r, (method, transport, protocol)) in attaches.iter().zip([
        ("GET", "websocket", "v5.channel.k8s.io"),
        ("POST", "spdy", "v4.channel.k8s.io"),
        ("GET", "websocket", "v5.channel.k8s.io"),
    ]) {
        assert_eq!(r["method"], method, "{r:#}");
        assert_eq!(r["status"], 101, "{r:#}");
        assert_eq!(r["identity"], TOKEN, "{r:#}");
        assert_eq!(
            r["query"], "container=app&stderr=true&stdin=true&stdout=true",
            "{r:#}"
        );
        let a = &r["attach"];
        assert_eq!(a["transport"], transport, "{a:#}");
        assert_eq!(a["protocol"], protocol, "{a:#}");
        assert_eq!(a["container"], "app", "{a:#}");
        assert_eq!(a["stdin_delivered"], true, "{a:#}");
        assert_eq!(a["end"], "stdin closed", "{a:#}");
        assert_eq!(a["status"]["status"], "Success", "{a:#}");
    }
    let [first, second, web] = [&attaches[0], &attaches[1], &attaches[2]].map(|r| &r["attach"]);
    assert_eq!(first["process"]["started"], true, "{first:#}");
    assert_eq!(second["process"]["started"], false, "{second:#}");
    assert_eq!(second["process"]["pid"], first["process"]["pid"]);
    assert_eq!(web["process"]["started"], true, "{web:#}");
    assert_ne!(web["process"]["pid"], first["process"]["pid"]);
    assert_eq!(first["stdin"], "hello attach\nsecond line\n");
    assert_eq!(first["stdout"], "hello attach\nsecond line\n");
    assert_eq!(first["stderr"], "app: line 1\napp: line 2\n");
    assert_eq!(second["stdin"], "third\n");
    assert_eq!(second["stdout"], "third\n");
    assert_eq!(second["stderr"], "app: line 3\n");
    assert_eq!(
        second["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["headers"]["streamtype"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["error", "stdin", "stdout", "stderr"],
        "{second:#}"
    );
}

/// Sends `data` over a connection to kubectl's forwarded port and reads its echo, then
/// closes its side and reads to the end; returns all that came back.
fn echo_through(forward: &PortForward, data: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(forward.addr()).expect("connect to kubectl's port");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(data).unwrap();
    let mut back = vec![0u8; data.len()];
    conn.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("no echo: {e}\n{}", forward.output()));
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    conn.read_to_end(&mut back).unwrap();
    back
}

#[test]
fn kubectl_port_forward_reaches_the_pods_port_over_websocket_and_spdy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = EchoServer::start("127.0.0.1:0");
    let server = KubeApiServer::start_with_pod_ports(
        dir.path(),
        Some(TOKEN),
        None,
        &[(80, echo.addr.port())],
    );
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, &server.url(), &server.ca_file(), Some(TOKEN));
    let port_forwards = |transport: &str| -> Vec<Value> {
        server
            .requests()
            .into_iter()
            .filter(|r| r["portforward"]["transport"] == transport)
            .collect()
    };
    for (transport, method, env) in [
        ("websocket", "GET", &[][..]),
        (
            "spdy",
            "POST",
            &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")][..],
        ),
    ] {
        // Port 80 is the echo server.
        let forward =
            PortForward::start(None, &kubeconfig, &["pod/web-0", "-n", "prod", ":80"], env);
        let data = format!("through {transport}\n");
        assert_eq!(echo_through(&forward, data.as_bytes()), data.as_bytes());
        let printed = forward.stop();
        assert!(printed.contains("Handling connection for"), "{printed}");
        let records = server.requests_when(transport, |_| port_forwards(transport).len() == 1);
        let pf = records
            .iter()
            .find(|r| r["portforward"]["transport"] == transport)
            .unwrap();
        assert_eq!(
            (&pf["method"], &pf["status"], &pf["identity"]),
            (&Value::from(method), &Value::from(101), &Value::from(TOKEN)),
            "{pf:#}"
        );
        let record = &pf["portforward"];
        assert_eq!(record["protocol"], "portforward.k8s.io", "{record:#}");
        assert_eq!(record["ports"], serde_json::json!(["80"]), "{record:#}");
        assert_eq!(record["query_ports"], serde_json::json!([]), "{record:#}");
        let streams: Vec<(&str, &str, &str)> = record["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let h = &s["headers"];
                (
                    h["streamtype"].as_str().unwrap(),
                    h["port"].as_str().unwrap(),
                    h["requestid"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            streams,
            [("error", "80", "0"), ("data", "80", "0")],
            "{record:#}"
        );
        let c = &record["connections"][0];
        assert_eq!(c["to"], echo.addr.to_string(), "{c:#}");
        assert_eq!(c["bytes_to_pod"], data.len(), "{c:#}");
        assert_eq!(c["bytes_from_pod"], data.len(), "{c:#}");
        assert_eq!(c["to_pod"], data, "{c:#}");
        assert_eq!(c["from_pod"], data, "{c:#}");
        assert_eq!(c["end"], "both sides closed", "{c:#}");

        // Port 81 is not mapped: nothing listens there. The connection is refused on the
        // error stream, and kubectl gives up the whole forward, as it does against a
        // kubelet.
        let mut forward =
            PortForward::start(None, &kubeconfig, &["pod/web-0", "-n", "prod", ":81"], env);
        let mut conn = TcpStream::connect(forward.addr()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut nothing = Vec::new();
        let _ = conn.read_to_end(&mut nothing);
        assert!(nothing.is_empty(), "{nothing:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while forward.running() {
            assert!(
                Instant::now() < deadline,
                "kubectl still runs:\n{}",
                forward.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let printed = forward.stop();
        assert!(
            printed.contains("an error occurred forwarding")
                && printed.contains("connect: connection refused")
                && printed.contains("lost connection to pod"),
            "{transport}: {printed}"
        );
        let records = server.requests_when(transport, |_| port_forwards(transport).len() == 2);
        let refused = &records
            .iter()
            .filter(|r| r["portforward"]["transport"] == transport)
            .nth(1)
            .unwrap()["portforward"]["connections"][0];
        assert_eq!(refused["port"], 81, "{refused:#}");
        assert_eq!(refused["to"], Value::Null, "{refused:#}");
        assert!(
            refused["error"]
                .as_str()
                .is_some_and(|e| e.contains("connection refused")),
            "{refused:#}"
        );
    }
}

#[test]
fn a_wrong_token_is_unauthorized() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = KubeApiServer::start(dir.path(), Some(TOKEN), None);
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(
        &kubeconfig,
        &server.url(),
        &server.ca_file(),
        Some("not-the-token"),
    );
    let out = kubectl(None, &kubeconfig, &["get", "pods", "-n", "prod"], &[]);
    assert!(!out.status.success(), "{}", output_text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("Unauthorized") || err.contains("must be logged in"),
        "{}",
        output_text(&out)
    );
    let requests = server.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r["status"], 401, "{r:#}");
        assert_eq!(r["identity"], Value::Null, "{r:#}");
    }
    // Without any credential, the same.
    write_kubeconfig(&kubeconfig, &server.url(), &server.ca_file(), None);
    let out = kubectl(None, &kubeconfig, &["get", "pods", "-n", "prod"], &[]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        !requests_to(&server, "GET", "/api")
            .iter()
            .any(|r| r["status"] != 401),
        "{:#?}",
        server.requests()
    );
}

#[test]
fn a_client_certificate_authenticates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = make_client_cert(dir.path(), "nhi-test-kube-client-ca", "bot-1", &["ci"]);
    let server = KubeApiServer::start(dir.path(), Some(TOKEN), Some(&client.ca));
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig_with_cert(
        &kubeconfig,
        &server.url(),
        &server.ca_file(),
        &client.cert,
        &client.key,
    );
    let out = kubectl(None, &kubeconfig, &["auth", "whoami", "-o", "json"], &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    let review: Value = serde_json::from_slice(&out.stdout).expect("whoami JSON");
    assert_eq!(
        review["status"]["userInfo"]["username"], "bot-1",
        "{review:#}"
    );
    let reviews = requests_to(
        &server,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
    );
    assert_eq!(reviews.len(), 1, "{reviews:#?}");
    assert_eq!(reviews[0]["identity"], "bot-1");
    assert_eq!(reviews[0]["auth"], "client-certificate");
    // kubectl's typed clients send protobuf; the server decodes it.
    assert_eq!(
        reviews[0]["headers"]["content-type"],
        "application/vnd.kubernetes.protobuf"
    );
    assert_eq!(reviews[0]["body_decoded"]["kind"], "SelfSubjectReview");
}

/// Recaptures kubectl's requests (`tests/kube/capture_golden.py`) and compares them with
/// the golden capture: the fake server and the golden stay true to what this kubectl
/// sends.
#[test]
fn kubectl_sends_the_golden_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fresh = dir.path().join("kubectl-requests.jsonl");
    let out = Command::new("/usr/bin/python3")
        .arg(workspace_root().join("tests/kube/capture_golden.py"))
        .arg("--out")
        .arg(&fresh)
        .output()
        .expect("run capture_golden.py");
    assert!(out.status.success(), "{}", output_text(&out));
    let golden_path = workspace_root().join("tests/kube/testdata/kubectl-requests.jsonl");
    let read = |p: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    };
    let golden = read(&golden_path);
    let fresh = read(&fresh);
    for (i, (g, f)) in golden.iter().zip(&fresh).enumerate() {
        assert_eq!(
            g, f,
            "request {i} differs from the golden capture (regenerate with \
             `python3 tests/kube/capture_golden.py` if kubectl changed)"
        );
    }
    assert_eq!(golden.len(), fresh.len(), "number of requests: {fresh:#?}");
}
