//! `kubectl port-forward` through the agent (`protocol = "kubernetes"` target): the real
//! kubectl in an intercepted cgroup forwards a local port to port 80 of pod `web-0`,
//! which the test API server (`tests/kube/apiserver.py`) connects to a loopback echo
//! server, as a kubelet connects it to the pod. The test process (not intercepted)
//! connects to kubectl's local port and gets its bytes echoed, over both of kubectl's
//! transports: SPDY/3.1 tunnelled in WebSocket (its default since 1.31, subprotocol
//! `SPDY/3.1+portforward.k8s.io`) and plain SPDY/3.1
//! (`KUBECTL_PORT_FORWARD_WEBSOCKETS=false`). The server saw the agent's token and
//! carried the bytes; the journal holds the request (`k8s_request`: `create
//! pods/portforward`) and the stream's SPDY frames, decoded from plain SPDY or from the
//! tunnel's messages alike: each with its stream's port and type, and the data as
//! excerpts of its stream (`port 80 data`), then the stream's end (`k8s_exec`) with the
//! bytes per stream. kubectl names the pod's port only inside the stream (each forwarded
//! connection opens an `error` and a `data` SPDY stream with a `port` header), never in
//! the request's query, so `k8s_request.ports` is empty for kubectl.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nhi_tests::http::events_of_kind;
use nhi_tests::kube::{
    events_when, kube_ca_bundle, secret_file, write_kubeconfig, KubeApiServer, PortForward,
    Request, PLACEHOLDER,
};
use nhi_tests::*;
use serde_json::Value;

/// The agent's credential for the cluster.
const TOKEN: &str = "kube-agent-token-pf-5d21c0";

/// A cluster whose pods' port 80 is an echo server, an agent holding its token, and the
/// bot's cgroup and kubeconfig (a placeholder token, the agent's CA bundle).
struct Setup {
    _work: tempfile::TempDir,
    echo: EchoServer,
    server: KubeApiServer,
    cg: TestCgroup,
    agent: Agent,
    kubeconfig: PathBuf,
}

fn setup() -> Setup {
    let work = tempfile::tempdir().unwrap();
    let echo = EchoServer::start("127.0.0.1:0");
    let server = KubeApiServer::start_with_pod_ports(
        work.path(),
        Some(TOKEN),
        None,
        &[(80, echo.addr.port())],
    );
    let token_file = secret_file(work.path(), "cluster.token", TOKEN);
    let cg = TestCgroup::create(&format!("{}/forwarder", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"forwarder\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"cluster\"\naddress = \"{}\"\nprotocol = \"kubernetes\"\n\
         ca_file = \"{}\"\ntoken_file = \"{}\"\n",
        cg.rel(),
        server.addr(),
        server.ca_file().display(),
        token_file.display()
    ));
    let bot = work.path().join("bot");
    std::fs::create_dir_all(&bot).unwrap();
    let bundle = kube_ca_bundle(&agent, &bot);
    let kubeconfig = bot.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &server.url(), &bundle, Some(PLACEHOLDER));
    Setup {
        _work: work,
        echo,
        server,
        cg,
        agent,
        kubeconfig,
    }
}

/// Connects to kubectl's local port from the test process (not intercepted), sends each
/// of `messages` and reads its echo before the next, then closes its side and reads to
/// the end. Returns what came back.
fn echo_through(forward: &PortForward, messages: &[&[u8]]) -> Vec<u8> {
    let mut conn = TcpStream::connect(forward.addr()).expect("connect to kubectl's port");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut echoed = Vec::new();
    for message in messages {
        conn.write_all(message).unwrap();
        let mut back = vec![0u8; message.len()];
        conn.read_exact(&mut back).unwrap_or_else(|e| {
            panic!(
                "no echo of {:?} through the port-forward: {e}\n{}",
                String::from_utf8_lossy(message),
                forward.output()
            )
        });
        echoed.extend_from_slice(&back);
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    conn.read_to_end(&mut echoed)
        .unwrap_or_else(|e| panic!("the forwarded connection did not end: {e}"));
    echoed
}

const FIRST: &[u8] = b"hello through kubectl port-forward\n";
const SECOND: &[u8] = b"second line, same connection\n";

/// Runs `kubectl port-forward pod/web-0 -n prod :80` with `env` in the bot's cgroup,
/// echoes [`FIRST`] and [`SECOND`] over one forwarded connection, stops kubectl, and
/// returns the server's record of the port-forward (checked: the transport, the agent's
/// token, the forwarded connection and its bytes).
fn forward_and_echo(s: &Setup, transport: &str, env: &[(&str, &str)]) -> Value {
    let forward = PortForward::start(
        Some(&s.cg),
        &s.kubeconfig,
        &["pod/web-0", "-n", "prod", ":80"],
        env,
    );
    let echoed = echo_through(&forward, &[FIRST, SECOND]);
    assert_eq!(
        String::from_utf8_lossy(&echoed),
        String::from_utf8_lossy(&[FIRST, SECOND].concat()),
        "{transport}"
    );
    assert_eq!(
        s.echo.peers().len(),
        1,
        "one connection reached the pod's port"
    );
    let printed = forward.stop();
    assert!(
        printed.contains("Handling connection for"),
        "{transport}: {printed}"
    );
    assert!(!printed.contains("error"), "{transport}: {printed}");

    // The server records a port-forward once its connection has ended (kubectl stopped).
    let requests = s.server.requests_when("the port-forward", |r| {
        r.iter().any(|r| r.get("portforward").is_some())
    });
    let pf = requests
        .iter()
        .find(|r| r.get("portforward").is_some())
        .cloned()
        .unwrap();
    assert_eq!(pf["path"], "/api/v1/namespaces/prod/pods/web-0/portforward");
    assert_eq!(pf["status"], 101, "{pf:#}");
    assert_eq!(pf["identity"], TOKEN, "the agent's token opened it: {pf:#}");
    for r in &requests {
        assert_eq!(r["identity"], TOKEN, "{r:#}");
    }
    let record = &pf["portforward"];
    assert_eq!(record["transport"], transport, "{record:#}");
    assert_eq!(record["protocol"], "portforward.k8s.io", "{record:#}");
    assert_eq!(record["ports"], serde_json::json!(["80"]), "{record:#}");
    let connections = record["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 1, "{record:#}");
    let c = &connections[0];
    assert_eq!(c["to"], s.echo.addr.to_string(), "{c:#}");
    let sent = [FIRST, SECOND].concat();
    assert_eq!(c["bytes_to_pod"], sent.len(), "{c:#}");
    assert_eq!(c["bytes_from_pod"], sent.len(), "{c:#}");
    assert_eq!(c["to_pod"], *String::from_utf8_lossy(&sent), "{c:#}");
    assert_eq!(c["error"], Value::Null, "{c:#}");
    pf
}

/// The record of `id`'s session once it has ended: its relay is over, so every frame of
/// the stream, journaled before it was relayed, is on record.
fn session_ended(agent: &Agent, id: Request) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sessions = agent.sessions();
        if let Some(session) = sessions
            .iter()
            .find(|s| s["id"].as_i64() == Some(id.session) && !s["ended_at"].is_null())
        {
            return session.clone();
        }
        assert!(
            Instant::now() < deadline,
            "session {} has not ended: {sessions:#?}\n{}",
            id.session,
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `k8s_request` of the port-forward (`create pods/portforward prod/web-0`, answered
/// 101 and forwarded) and which request it was.
fn portforward_request(agent: &Agent) -> (Request, Value) {
    let requests = events_when(agent, "k8s_request", |e| {
        e.iter().any(|r| r["data"]["subresource"] == "portforward")
    });
    let event = requests
        .iter()
        .find(|r| r["data"]["subresource"] == "portforward")
        .unwrap_or_else(|| panic!("no portforward k8s_request in {requests:#?}"));
    let request = event["data"].clone();
    let id = Request {
        session: event["session_id"].as_i64().unwrap(),
        seq: request["seq"].as_u64().unwrap(),
    };
    assert_eq!(request["verb"], "create", "{request:#}");
    assert_eq!(request["resource"], "pods", "{request:#}");
    assert_eq!(request["namespace"], "prod", "{request:#}");
    assert_eq!(request["name"], "web-0", "{request:#}");
    assert_eq!(request["status"], 101, "{request:#}");
    assert_eq!(request["outcome"], "forwarded", "{request:#}");
    (id, request)
}

#[test]
fn kubectl_port_forward_over_websocket_is_relayed_and_journaled() {
    privileged!("kubectl_port_forward_over_websocket_is_relayed_and_journaled");
    let s = setup();
    let pf = forward_and_echo(&s, "websocket", &[]);
    assert_eq!(pf["method"], "GET");
    assert_eq!(
        pf["portforward"]["subprotocol"], "SPDY/3.1+portforward.k8s.io",
        "{pf:#}"
    );
    let (id, _) = portforward_request(&s.agent);
    session_ended(&s.agent, id);
    // The tunnel's frames: binary messages both ways, each journaled with its size.
    let frames = id.of(events_of_kind(&s.agent, "ws_frame"));
    let bytes_from = |from: &str| -> u64 {
        frames
            .iter()
            .filter(|f| f["from"] == from && f["opcode"] == "binary")
            .map(|f| f["size"].as_u64().unwrap_or(0))
            .sum()
    };
    // SPDY framing around the payload: more than the payload each way.
    let sent = (FIRST.len() + SECOND.len()) as u64;
    assert!(bytes_from("client") > sent, "{frames:#?}");
    assert!(bytes_from("server") > sent, "{frames:#?}");
    let messages = &pf["portforward"]["messages"];
    assert_eq!(
        frames
            .iter()
            .filter(|f| f["from"] == "client" && f["opcode"] == "binary")
            .count() as u64,
        messages["from_client"].as_u64().unwrap(),
        "every binary message the server got was journaled: {messages}"
    );
    // The SPDY connection inside the messages is decoded: the same record as over
    // plain SPDY (kubectl sends no `ports=`; the port is in the streams' headers).
    spdy_journaled(&s.agent, id, "SPDY/3.1+portforward.k8s.io");
    s.agent.assert_verifies();
}

#[test]
fn kubectl_port_forward_over_spdy_is_relayed_and_journaled() {
    privileged!("kubectl_port_forward_over_spdy_is_relayed_and_journaled");
    let s = setup();
    let pf = forward_and_echo(&s, "spdy", &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")]);
    assert_eq!(pf["method"], "POST");
    assert_eq!(
        pf["headers"]["x-stream-protocol-version"], "portforward.k8s.io",
        "{pf:#}"
    );
    let (id, _) = portforward_request(&s.agent);
    session_ended(&s.agent, id);
    spdy_journaled(&s.agent, id, "portforward.k8s.io");
    s.agent.assert_verifies();
}

/// What the journal holds of one forwarded connection's SPDY streams (plain, or
/// tunnelled in WebSocket: `protocol`): both streams opened by the client naming the
/// port, the bytes each way as excerpts of the data stream, and the stream's end with
/// its bytes.
fn spdy_journaled(agent: &Agent, id: Request, protocol: &str) {
    let frames = id.of(events_of_kind(agent, "spdy_frame"));
    // Each forwarded connection: an error stream, then a data stream, naming the port.
    let opened: Vec<(&str, &str)> = frames
        .iter()
        .filter(|f| f["frame"] == "syn_stream")
        .map(|f| {
            (
                f["channel"].as_str().unwrap_or(""),
                f["from"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        opened,
        [("port 80 error", "client"), ("port 80 data", "client")],
        "{frames:#?}"
    );
    // The bytes each way, under the data stream's channel, as excerpts.
    let said = |from: &str| -> String {
        frames
            .iter()
            .filter(|f| f["frame"] == "data" && f["from"] == from && f["channel"] == "port 80 data")
            .filter_map(|f| f["excerpt"].as_str())
            .collect()
    };
    let sent = String::from_utf8_lossy(&[FIRST, SECOND].concat()).into_owned();
    assert_eq!(said("client"), sent, "{frames:#?}");
    assert_eq!(said("server"), sent, "{frames:#?}");
    // The stream's end: bytes per channel.
    let ends = id.of(events_of_kind(agent, "k8s_exec"));
    let end = ends
        .first()
        .unwrap_or_else(|| panic!("no k8s_exec for the port-forward"));
    assert_eq!(end["protocol"], protocol, "{end:#}");
    let data_bytes = end["bytes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b[0] == "port 80 data")
        .map(|b| b[1].as_u64().unwrap());
    assert_eq!(data_bytes, Some(2 * sent.len() as u64), "{end:#}");
}
