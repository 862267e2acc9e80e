//! `kubectl attach` through the agent (`protocol = "kubernetes"` target): the real
//! kubectl in an intercepted cgroup attaches to the main process of a container on the
//! test API server (`tests/kube/apiserver.py`: a cat-like process per container, started
//! on its first attach and kept running, which echoes its stdin to stdout and writes
//! `app: line <n>` to stderr per line), with input on stdin, over both of kubectl's
//! transports: WebSocket (`v5.channel.k8s.io`, its default) and SPDY/3.1
//! (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`, `v4.channel.k8s.io`). The agent treats
//! `pods/attach` as `pods/exec`: a `create` judged by policy (here an attach in `prod`
//! waits for a human on the approvals socket, one in `default` goes at once), relayed
//! channel by channel. Checked: what kubectl printed; the server's record of each attach
//! (the agent's token, the transport, what went each way); and the journal: the
//! `k8s_request` (`create pods/attach`, `stdin` and the container), the frames of the
//! `stdin`, `stdout` and `stderr` channels with their excerpts (`ws_frame` or
//! `spdy_frame`), and the stream's end (`k8s_exec`: `Success`, bytes per channel).
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use nhi_tests::http::events_of_kind;
use nhi_tests::kube::{
    events_when, kube_ca_bundle, kubectl_with_input, output_text, secret_file, write_kubeconfig,
    KubeApiServer, Request, PLACEHOLDER,
};
use nhi_tests::*;
use serde_json::Value;

/// The agent's credential for the cluster.
const TOKEN: &str = "kube-agent-token-attach-91e4b7";

/// The policy: an attach in prod waits for a human.
const POLICY: &str = "[[policy]]\nname = \"attach\"\n\n\
     [[policy.rule]]\nname = \"attach-in-prod-needs-approval\"\nverdict = \"approve\"\n\
     subresources = [\"attach\"]\nnamespaces = [\"prod\"]\n";

/// What the tests send to the containers' main processes.
const TO_TOOL: &str = "hello through the agent\nsecond line\n";
const TO_WEB: &str = "approved input for web-0\n";

/// A cluster, an agent holding its token with [`POLICY`], and the bot's cgroup and
/// kubeconfig (a placeholder token, the agent's CA bundle).
struct Setup {
    _work: tempfile::TempDir,
    server: KubeApiServer,
    cg: TestCgroup,
    agent: Agent,
    kubeconfig: PathBuf,
}

fn setup() -> Setup {
    let work = tempfile::tempdir().unwrap();
    let server = KubeApiServer::start(work.path(), Some(TOKEN), None);
    let token_file = secret_file(work.path(), "cluster.token", TOKEN);
    let cg = TestCgroup::create(&format!("{}/attacher", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"attacher\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"cluster\"\naddress = \"{}\"\nprotocol = \"kubernetes\"\n\
         ca_file = \"{}\"\ntoken_file = \"{}\"\n\n{POLICY}",
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
        server,
        cg,
        agent,
        kubeconfig,
    }
}

/// `kubectl attach -i <pod> -n <ns> -c app` in the bot's cgroup with `input` on stdin
/// (bounded: kubectl is killed after a minute); fails unless it succeeded.
fn attach(s: &Setup, pod: &str, ns: &str, input: &str, env: &[(&str, &str)]) -> Output {
    let out = kubectl_with_input(
        Some(&s.cg),
        &s.kubeconfig,
        &["attach", "-i", pod, "-n", ns, "-c", "app"],
        env,
        Some(input.as_bytes()),
    );
    assert!(
        out.status.success(),
        "attach {ns}/{pod}: {}\n{}",
        output_text(&out),
        s.agent.log_text()
    );
    out
}

/// The stderr the main process writes for lines `from..=to` of its life.
fn counted(from: u32, to: u32) -> String {
    (from..=to).map(|n| format!("app: line {n}\n")).collect()
}

/// Attaches to `tool` in `default` (at once) and to `web-0` in `prod` (held until
/// approved on the approvals socket) over `transport` (`env` chooses it), and checks
/// what kubectl printed and what the server recorded. Returns the two requests'
/// identities in the journal (default's, prod's).
fn attach_both(s: &Setup, transport: &str, env: &[(&str, &str)]) -> (Request, Request) {
    // default: no rule applies; the attach goes at once. The main process answers each
    // line, and the attach ends once kubectl's stdin has, with all the answer delivered.
    let out = attach(s, "tool", "default", TO_TOOL, env);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed, TO_TOOL, "{transport}: {}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&counted(1, 2)),
        "{transport}: {}",
        output_text(&out)
    );

    // prod: held until a human approves; nothing reaches the server before.
    let socket = s.agent.dir.path().join("approvals.sock");
    let out = std::thread::scope(|scope| {
        let held = scope.spawn(|| attach(s, "web-0", "prod", TO_WEB, env));
        let pending = wait_pending(&socket);
        assert_eq!(
            pending["rule"], "attach-in-prod-needs-approval",
            "{pending}"
        );
        assert_eq!(
            pending["statement"], "create pods/attach prod/web-0",
            "{pending}"
        );
        assert_eq!(
            s.server.attach_requests().len(),
            1,
            "the held attach reached the server"
        );
        let approved = approvals(&socket, &["approve", pending["id"].as_str().unwrap()]);
        assert!(approved.status.success(), "{}", output_text(&approved));
        held.join().unwrap()
    });
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        TO_WEB,
        "{transport}: {}",
        output_text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&counted(1, 1)),
        "{transport}: {}",
        output_text(&out)
    );

    // The server: both attaches opened with the agent's token, over `transport`, each
    // to its container's main process, with what went each way.
    let attaches = s.server.attach_requests();
    assert_eq!(attaches.len(), 2, "{attaches:#?}");
    for r in s.server.requests() {
        assert_eq!(r["identity"], TOKEN, "{r:#}");
    }
    let method = if transport == "websocket" {
        "GET"
    } else {
        "POST"
    };
    for (r, path, sent, lines) in [
        (
            &attaches[0],
            "/api/v1/namespaces/default/pods/tool/attach",
            TO_TOOL,
            counted(1, 2),
        ),
        (
            &attaches[1],
            "/api/v1/namespaces/prod/pods/web-0/attach",
            TO_WEB,
            counted(1, 1),
        ),
    ] {
        assert_eq!(r["path"], path, "{r:#}");
        assert_eq!(r["method"], method, "{r:#}");
        assert_eq!(r["status"], 101, "{r:#}");
        assert_eq!(
            r["query"], "container=app&stderr=true&stdin=true&stdout=true",
            "{r:#}"
        );
        let a = &r["attach"];
        assert_eq!(a["transport"], transport, "{a:#}");
        assert_eq!(a["container"], "app", "{a:#}");
        assert_eq!(a["process"]["started"], true, "{a:#}");
        assert_eq!(a["stdin"], sent, "{a:#}");
        assert_eq!(a["stdout"], sent, "{a:#}");
        assert_eq!(a["stderr"], lines.as_str(), "{a:#}");
        assert_eq!(a["end"], "stdin closed", "{a:#}");
        assert_eq!(a["status"]["status"], "Success", "{a:#}");
    }
    (
        attach_request(&s.agent, "default", "tool"),
        attach_request(&s.agent, "prod", "web-0"),
    )
}

/// The `k8s_request` of the attach to `ns/pod` (checked: `create pods/attach` with stdin
/// to container `app`, answered 101 and forwarded) and which request it was.
fn attach_request(agent: &Agent, ns: &str, pod: &str) -> Request {
    let is_it = |r: &Value| r["data"]["subresource"] == "attach" && r["data"]["namespace"] == ns;
    let requests = events_when(agent, "k8s_request", |e| e.iter().any(is_it));
    let event = requests
        .iter()
        .find(|r| is_it(r))
        .unwrap_or_else(|| panic!("no attach k8s_request in {ns} in {requests:#?}"));
    let request = &event["data"];
    assert_eq!(request["verb"], "create", "{request:#}");
    assert_eq!(request["resource"], "pods", "{request:#}");
    assert_eq!(request["name"], pod, "{request:#}");
    assert_eq!(request["stdin"], true, "{request:#}");
    assert_eq!(request["container"], "app", "{request:#}");
    assert!(request.get("command").is_none(), "{request:#}");
    assert_eq!(request["status"], 101, "{request:#}");
    assert_eq!(request["outcome"], "forwarded", "{request:#}");
    let (verdict, rule) = if ns == "prod" {
        ("approve", Some("attach-in-prod-needs-approval"))
    } else {
        ("allow", None)
    };
    assert_eq!(request["verdict"], verdict, "{request:#}");
    assert_eq!(request["rule"].as_str(), rule, "{request:#}");
    Request {
        session: event["session_id"].as_i64().unwrap(),
        seq: request["seq"].as_u64().unwrap(),
    }
}

/// The record of `id`'s session once it has ended: its relay is over, so every frame of
/// the stream, journaled before it was relayed, is on record.
fn session_ended(agent: &Agent, id: Request) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sessions = agent.sessions();
        if sessions
            .iter()
            .any(|s| s["id"].as_i64() == Some(id.session) && !s["ended_at"].is_null())
        {
            return;
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

/// What the journal holds of one attach: `frames` (`ws_frame` or `spdy_frame`) carry
/// `sent` on `stdin` from the client, and its echo on `stdout` and the line counts
/// `lines` on `stderr` from the server, as excerpts of those channels; the end
/// (`k8s_exec`) says `Success`, in `protocol`, with the bytes per channel.
fn journaled(agent: &Agent, id: Request, kind: &str, protocol: &str, sent: &str, lines: &str) {
    session_ended(agent, id);
    let frames = id.of(events_of_kind(agent, kind));
    let said = |from: &str, channel: &str| -> String {
        frames
            .iter()
            .filter(|f| f["from"] == from && f["channel"] == channel)
            .filter(|f| kind == "ws_frame" || f["frame"] == "data")
            .filter_map(|f| f["excerpt"].as_str())
            .collect()
    };
    assert_eq!(said("client", "stdin"), sent, "{kind}: {frames:#?}");
    assert_eq!(said("server", "stdout"), sent, "{kind}: {frames:#?}");
    assert_eq!(said("server", "stderr"), lines, "{kind}: {frames:#?}");
    if kind == "spdy_frame" {
        // kubectl opens one stream per channel, the error stream first.
        let opened: Vec<&str> = frames
            .iter()
            .filter(|f| f["frame"] == "syn_stream" && f["from"] == "client")
            .filter_map(|f| f["channel"].as_str())
            .collect();
        assert_eq!(
            opened,
            ["error", "stdin", "stdout", "stderr"],
            "{frames:#?}"
        );
    }
    let ends = id.of(events_of_kind(agent, "k8s_exec"));
    assert_eq!(ends.len(), 1, "{ends:#?}");
    let end = &ends[0];
    assert_eq!(end["protocol"], protocol, "{end:#}");
    assert_eq!(end["exit"]["status"], "Success", "{end:#}");
    assert_eq!(end["exit"]["exit_code"], 0, "{end:#}");
    let bytes = |channel: &str| {
        end["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b[0] == channel)
            .and_then(|b| b[1].as_u64())
    };
    assert_eq!(bytes("stdin"), Some(sent.len() as u64), "{end:#}");
    assert_eq!(bytes("stdout"), Some(sent.len() as u64), "{end:#}");
    assert_eq!(bytes("stderr"), Some(lines.len() as u64), "{end:#}");
}

#[test]
fn kubectl_attach_over_websocket_is_judged_relayed_and_journaled() {
    privileged!("kubectl_attach_over_websocket_is_judged_relayed_and_journaled");
    let s = setup();
    let (tool, web) = attach_both(&s, "websocket", &[]);
    let protocol = "v5.channel.k8s.io";
    journaled(
        &s.agent,
        tool,
        "ws_frame",
        protocol,
        TO_TOOL,
        &counted(1, 2),
    );
    journaled(&s.agent, web, "ws_frame", protocol, TO_WEB, &counted(1, 1));
    // v5: kubectl says it closed stdin on channel 255 ("close"), naming stdin (0).
    let closes: Vec<Value> = tool
        .of(events_of_kind(&s.agent, "ws_frame"))
        .into_iter()
        .filter(|f| f["channel"] == "close")
        .collect();
    assert_eq!(closes.len(), 1, "{closes:#?}");
    assert_eq!(closes[0]["from"], "client", "{closes:#?}");
    assert_eq!(closes[0]["excerpt"], "stdin", "{closes:#?}");
    s.agent.assert_verifies();
}

#[test]
fn kubectl_attach_over_spdy_is_judged_relayed_and_journaled() {
    privileged!("kubectl_attach_over_spdy_is_judged_relayed_and_journaled");
    let s = setup();
    let (tool, web) = attach_both(
        &s,
        "spdy",
        &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")],
    );
    let protocol = "v4.channel.k8s.io";
    journaled(
        &s.agent,
        tool,
        "spdy_frame",
        protocol,
        TO_TOOL,
        &counted(1, 2),
    );
    journaled(
        &s.agent,
        web,
        "spdy_frame",
        protocol,
        TO_WEB,
        &counted(1, 1),
    );
    s.agent.assert_verifies();
}
