//! Kubernetes targets (`protocol = "kubernetes"`): the real kubectl in an intercepted
//! cgroup, its kubeconfig trusting `nhi-agent kube-ca` and holding only a placeholder
//! token, against the test API server (`tests/kube/apiserver.py`: no real one can be
//! installed here) that only the agent's own credential opens. The agent reads each
//! request as the API server does, judges it, journals it, sends it with its
//! credential and the workload's impersonation, masks Secrets' values in the answers,
//! and records exec streams channel by channel.
use std::process::Output;

use nhi_tests::http::{assert_in_no_file, data_of_kind};
use nhi_tests::kube::{
    data_when, kube_ca_bundle, kubectl, make_client_cert, output_text, secret_file,
    write_kubeconfig, KubeApiServer, PLACEHOLDER,
};
use nhi_tests::*;
use serde_json::Value;

/// The value of `db-creds`' `password` on the test server, and its base64.
const PASSWORD: &str = "s3cr3t-Pa55";
const PASSWORD_B64: &str = "czNjcjN0LVBhNTU=";

/// base64 of the agent's mask, `[redacted by nhi-agent]`.
const MASK_B64: &str = "W3JlZGFjdGVkIGJ5IG5oaS1hZ2VudF0=";

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", output_text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const POLICY: &str = "[[policy]]\nname = \"deploy\"\n\n\
     [[policy.rule]]\nname = \"no-deletes-in-prod\"\nverdict = \"deny\"\n\
     verbs = [\"delete\", \"deletecollection\"]\nresources = [\"apps/deployments\", \"secrets\"]\n\
     namespaces = [\"prod\"]\n\n\
     [[policy.rule]]\nname = \"exec-in-prod-needs-approval\"\nverdict = \"approve\"\n\
     subresources = [\"exec\"]\nnamespaces = [\"prod\"]\n";

#[test]
fn kubectl_through_the_agent_is_judged_masked_injected_and_recorded() {
    privileged!("kubectl_through_the_agent_is_judged_masked_injected_and_recorded");
    let work = tempfile::tempdir().unwrap();
    let token = "kube-agent-token-7f3a9c11e5";
    let server = KubeApiServer::start(work.path(), Some(token), None);
    let token_file = secret_file(work.path(), "cluster.token", token);
    let cg = TestCgroup::create(&format!("{}/deployer", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"deployer\"\ncgroup = \"{}\"\n\
         kube_impersonate = \"system:serviceaccount:ci:deployer\"\n\
         kube_impersonate_groups = [\"system:serviceaccounts\"]\n\n\
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
    let k = |args: &[&str]| kubectl(Some(&cg), &kubeconfig, args, &[]);

    // The same request sent directly, with the real token, shows the real value: the
    // masking below is the agent's.
    let admin = work.path().join("admin.kubeconfig");
    write_kubeconfig(&admin, &server.url(), &server.ca_file(), Some(token));
    let direct = ok(
        &kubectl(
            None,
            &admin,
            &["get", "secret", "db-creds", "-n", "prod", "-o", "yaml"],
            &[],
        ),
        "direct get secret",
    );
    assert!(direct.contains(PASSWORD_B64), "{direct}");
    // What the server saw from here on came through the agent.
    let direct_requests = server.requests().len();

    // Secrets' values are masked in every shape of answer, keys kept, still base64.
    let yaml = ok(
        &k(&["get", "secret", "db-creds", "-n", "prod", "-o", "yaml"]),
        "get secret -o yaml",
    );
    assert!(!yaml.contains(PASSWORD_B64), "{yaml}");
    assert!(yaml.contains(&format!("password: {MASK_B64}")), "{yaml}");
    assert!(yaml.contains("name: db-creds"), "{yaml}");
    let list = ok(
        &k(&["get", "secrets", "-A", "-o", "json"]),
        "get secrets -A",
    );
    let list: Value = serde_json::from_str(&list).unwrap();
    let items = list["items"].as_array().unwrap();
    assert!(items.len() >= 2, "{list}");
    for item in items {
        for (key, value) in item["data"].as_object().unwrap() {
            assert_eq!(value, MASK_B64, "{key} of {}", item["metadata"]["name"]);
        }
    }
    // A watch is masked line by line as it streams.
    let watch = ok(
        &k(&[
            "get",
            "--raw",
            "/api/v1/namespaces/prod/secrets?watch=true&timeoutSeconds=1",
        ]),
        "watch secrets",
    );
    assert!(
        watch.contains("\"ADDED\"") && watch.contains("db-creds"),
        "{watch}"
    );
    assert!(!watch.contains(PASSWORD_B64), "{watch}");
    assert!(watch.contains(MASK_B64), "{watch}");

    // A delete in prod is refused by the rule, as the API server refuses: Forbidden.
    let refused = k(&["delete", "deployment", "web", "-n", "prod"]);
    assert!(!refused.status.success());
    let text = output_text(&refused);
    assert!(
        text.contains("Error from server (Forbidden)") && text.contains("no-deletes-in-prod"),
        "{text}"
    );
    assert!(
        !server.requests().iter().any(|r| r["method"] == "DELETE"),
        "the refused delete reached the server"
    );
    ok(
        &k(&["get", "deployment", "web", "-n", "prod"]),
        "the deployment is still there",
    );
    // Elsewhere, create and delete go through.
    ok(
        &k(&[
            "create",
            "secret",
            "generic",
            "tmp",
            "--from-literal=a=b",
            "-n",
            "staging",
        ]),
        "create secret in staging",
    );
    ok(
        &k(&["delete", "secret", "tmp", "-n", "staging"]),
        "delete secret in staging",
    );
    assert!(server
        .requests()
        .iter()
        .any(|r| r["method"] == "DELETE" && r["path"] == "/api/v1/namespaces/staging/secrets/tmp"));

    // Impersonation is the agent's to say: a bot asking for another identity is refused.
    // (kubectl prints a discovery request's Status as "Forbidden: unknown", so the
    // message is read from a raw request.)
    let impersonating = k(&["--as=system:admin", "get", "pods", "-n", "prod"]);
    assert!(!impersonating.status.success());
    assert!(output_text(&impersonating).contains("Error from server (Forbidden)"));
    let impersonating = k(&[
        "--as=system:admin",
        "get",
        "--raw",
        "/api/v1/namespaces/prod/pods",
    ]);
    assert!(!impersonating.status.success());
    let text = output_text(&impersonating);
    assert!(
        text.contains("impersonation headers from the client are refused"),
        "{text}"
    );

    // An exec in prod waits for a human, then runs; its argv is journaled before.
    let socket = agent.dir.path().join("approvals.sock");
    let exec = std::thread::scope(|scope| {
        let held = scope.spawn(|| {
            k(&[
                "exec",
                "web-0",
                "-n",
                "prod",
                "--",
                "sh",
                "-c",
                "id; cat /etc/hostname",
            ])
        });
        let pending = wait_pending(&socket);
        assert_eq!(pending["rule"], "exec-in-prod-needs-approval", "{pending}");
        assert_eq!(
            pending["statement"],
            r#"create pods/exec prod/web-0 ["sh", "-c", "id; cat /etc/hostname"]"#,
            "{pending}"
        );
        assert!(
            !server.requests().iter().any(|r| r.get("exec").is_some()),
            "the held exec reached the server"
        );
        let approved = approvals(&socket, &["approve", pending["id"].as_str().unwrap()]);
        assert!(approved.status.success(), "{}", output_text(&approved));
        held.join().unwrap()
    });
    let out = ok(&exec, "approved exec");
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap();
    assert!(out.contains("uid=0(root)"), "{out}");
    assert!(out.contains(hostname.trim()), "{out}");
    // Elsewhere an exec runs at once, and its exit code comes back.
    let failed = k(&[
        "exec",
        "tool",
        "-n",
        "default",
        "--",
        "sh",
        "-c",
        "echo to-stderr >&2; exit 3",
    ]);
    assert_eq!(failed.status.code(), Some(3), "{}", output_text(&failed));

    // The server saw the agent's token and impersonation on every request, never the
    // bot's placeholder or its own impersonation.
    let seen = server.requests().split_off(direct_requests);
    assert!(seen.len() > 10, "{seen:?}");
    for r in &seen {
        assert_eq!(r["identity"], token, "{r}");
        assert_eq!(
            r["impersonation"]["impersonate-user"],
            serde_json::json!(["system:serviceaccount:ci:deployer"]),
            "{r}"
        );
        assert_eq!(
            r["impersonation"]["impersonate-group"],
            serde_json::json!(["system:serviceaccounts"]),
            "{r}"
        );
        let accept = r["headers"]["accept"].as_str().unwrap_or("");
        assert!(!accept.contains("protobuf"), "{r}");
    }
    // ... and the token is nowhere the bot or the journal can read.
    for file in [&kubeconfig, &bundle] {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(!text.contains(token), "{}: {text}", file.display());
    }
    assert_in_no_file(agent.dir.path(), &[token, PASSWORD, PASSWORD_B64]);

    // The journal: each request as kubectl's operation, the refusals with their rule,
    // the exec's argv, transcript and exit status.
    let requests = data_when(&agent, "k8s_request", |e| {
        e.iter().any(|r| {
            r["verb"] == "create" && r["subresource"] == "exec" && r["namespace"] == "default"
        })
    });
    let find = |what: &dyn Fn(&Value) -> bool| -> Value {
        requests
            .iter()
            .find(|r| what(r))
            .cloned()
            .unwrap_or_else(|| panic!("no such k8s_request in {requests:#?}"))
    };
    let delete = find(&|r| r["verb"] == "delete" && r["resource"] == "deployments");
    assert_eq!(delete["group"], "apps");
    assert_eq!(delete["namespace"], "prod");
    assert_eq!(delete["name"], "web");
    assert_eq!(delete["outcome"], "refused");
    assert_eq!(delete["status"], 403);
    assert_eq!(delete["rule"], "no-deletes-in-prod");
    let get =
        find(&|r| r["verb"] == "get" && r["resource"] == "secrets" && r["name"] == "db-creds");
    assert_eq!(get["outcome"], "forwarded");
    assert_eq!(get["status"], 200);
    assert!(get["uid"].as_str().is_some_and(|u| !u.is_empty()), "{get}");
    assert_eq!(
        get["acted_as"],
        "system:serviceaccount:ci:deployer (impersonated by the agent's bearer token)"
    );
    let held_exec = find(&|r| r["subresource"] == "exec" && r["namespace"] == "prod");
    assert_eq!(
        held_exec["command"],
        serde_json::json!(["sh", "-c", "id; cat /etc/hostname"])
    );
    assert_eq!(
        (held_exec["verdict"].as_str(), held_exec["status"].as_u64()),
        (Some("approve"), Some(101))
    );
    // The refused impersonation is journaled as the request it was.
    let impersonated = find(&|r| r["outcome"] == "refused" && r["resource"] == "pods");
    assert_eq!(
        (
            &impersonated["verb"],
            &impersonated["namespace"],
            &impersonated["status"]
        ),
        (
            &serde_json::json!("list"),
            &serde_json::json!("prod"),
            &serde_json::json!(403)
        ),
        "{impersonated}"
    );
    let ends = data_when(&agent, "k8s_exec", |e| e.len() >= 2);
    let exits: Vec<Option<i64>> = ends
        .iter()
        .map(|e| e["exit"]["exit_code"].as_i64())
        .collect();
    assert_eq!(exits, [Some(0), Some(3)], "{ends:?}");
    let frames = data_of_kind(&agent, "ws_frame");
    let said = |channel: &str, needle: &str| {
        frames.iter().any(|f| {
            f["channel"] == channel && f["excerpt"].as_str().unwrap_or("").contains(needle)
        })
    };
    assert!(said("stdout", "uid=0(root)"), "{frames:?}");
    assert!(said("stdout", hostname.trim()), "{frames:?}");
    assert!(said("stderr", "to-stderr"), "{frames:?}");

    // replay reads as kubectl's operations and the exec's transcript.
    let exec_session = held_exec_session(&agent);
    let replay = agent.cli(&[
        "replay",
        &exec_session.to_string(),
        "--journal",
        agent.journal.to_str().unwrap(),
    ]);
    let replay = ok(&replay, "replay");
    for needle in [
        r#"kubectl create pods/exec prod/web-0 ["sh", "-c", "id; cat /etc/hostname"] -> 101 (approve by rule exec-in-prod-needs-approval: forwarded)"#,
        "stdout| uid=0(root)",
        "exec ended: exit 0 (Success)",
    ] {
        assert!(replay.contains(needle), "no {needle:?} in\n{replay}");
    }
    // events finds requests by their operation; OCSF exports them as API Activity.
    let found = agent.cli(&[
        "events",
        "--journal",
        agent.journal.to_str().unwrap(),
        "--text",
        "delete apps deployments",
        "--json",
    ]);
    let found = ok(&found, "events --text");
    assert_eq!(found.lines().count(), 1, "{found}");
    assert!(found.contains("no-deletes-in-prod"), "{found}");
    let ocsf = agent.cli(&[
        "export",
        "--format",
        "ocsf",
        "--journal",
        agent.journal.to_str().unwrap(),
    ]);
    let ocsf = ok(&ocsf, "export ocsf");
    let delete_activity = ocsf
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| {
            e["class_uid"] == 6003 && e["api"]["operation"] == "delete" && e["status_id"] == 2
        })
        .unwrap_or_else(|| panic!("no refused delete API Activity in\n{ocsf}"));
    assert_eq!(delete_activity["resources"][0]["type"], "apps/deployments");
    assert_eq!(delete_activity["resources"][0]["name"], "web");
    assert_eq!(delete_activity["disposition"], "Blocked");
    agent.assert_verifies();
}

/// The session of the held exec.
fn held_exec_session(agent: &Agent) -> i64 {
    let events = agent.cli(&[
        "events",
        "--journal",
        agent.journal.to_str().unwrap(),
        "--kind",
        "k8s_exec",
        "--json",
    ]);
    let first = String::from_utf8_lossy(&events.stdout)
        .lines()
        .next()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .expect("a k8s_exec event");
    first["session_id"].as_i64().unwrap()
}

#[test]
fn a_client_certificate_authenticates_the_agent_and_exec_over_spdy_is_recorded() {
    privileged!("a_client_certificate_authenticates_the_agent_and_exec_over_spdy_is_recorded");
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("client");
    std::fs::create_dir_all(&certs).unwrap();
    let client = make_client_cert(&certs, "nhi-test-client-ca", "nhi-agent-cluster", &["ops"]);
    std::fs::set_permissions(
        &client.key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let server = KubeApiServer::start(work.path(), None, Some(&client.ca));
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"cluster\"\naddress = \"{}\"\nprotocol = \"kubernetes\"\n\
         ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        cg.rel(),
        server.addr(),
        server.ca_file().display(),
        client.cert.display(),
        client.key.display()
    ));
    let bundle = kube_ca_bundle(&agent, work.path());
    let kubeconfig = work.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, &server.url(), &bundle, Some(PLACEHOLDER));
    let pods = kubectl(Some(&cg), &kubeconfig, &["get", "pods", "-n", "prod"], &[]);
    assert!(ok(&pods, "get pods").contains("web-0"));
    for r in server.requests() {
        assert_eq!(
            (r["identity"].as_str(), r["auth"].as_str()),
            (Some("nhi-agent-cluster"), Some("client-certificate")),
            "{r}"
        );
        assert!(
            r["headers"].get("authorization").is_none(),
            "the bot's placeholder went on: {r}"
        );
        assert!(
            r["impersonation"].as_object().is_none_or(|m| m.is_empty()),
            "{r}"
        );
    }
    let requests = data_when(&agent, "k8s_request", |e| {
        e.iter().any(|r| r["resource"] == "pods")
    });
    let list = requests.iter().find(|r| r["resource"] == "pods").unwrap();
    assert_eq!(list["verb"], "list");
    assert_eq!(list["acted_as"], "client certificate CN=nhi-agent-cluster");
    // exec over SPDY/3.1 (kubectl's transport before 1.31, and its fallback) is relayed
    // frame by frame: the command's output and exit code come back, and each stream's
    // data is journaled under its stream type.
    let spdy = kubectl(
        Some(&cg),
        &kubeconfig,
        &[
            "exec",
            "web-0",
            "-n",
            "prod",
            "--",
            "sh",
            "-c",
            "id; echo spdy-err >&2; exit 4",
        ],
        &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")],
    );
    assert_eq!(spdy.status.code(), Some(4), "{}", output_text(&spdy));
    assert!(String::from_utf8_lossy(&spdy.stdout).contains("uid=0(root)"));
    assert!(String::from_utf8_lossy(&spdy.stderr).contains("spdy-err"));
    let exec = server
        .requests()
        .into_iter()
        .find_map(|r| r.get("exec").cloned())
        .expect("the exec reached the server");
    assert_eq!(exec["transport"], "spdy", "{exec}");
    let ends = data_when(&agent, "k8s_exec", |e| !e.is_empty());
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["protocol"], "v4.channel.k8s.io", "{ends:?}");
    assert_eq!(ends[0]["exit"]["exit_code"], 4, "{ends:?}");
    let frames = data_of_kind(&agent, "spdy_frame");
    let said = |channel: &str, needle: &str| {
        frames.iter().any(|f| {
            f["frame"] == "data"
                && f["channel"] == channel
                && f["excerpt"].as_str().unwrap_or("").contains(needle)
        })
    };
    assert!(said("stdout", "uid=0(root)"), "{frames:?}");
    assert!(said("stderr", "spdy-err"), "{frames:?}");
    assert!(
        frames
            .iter()
            .any(|f| f["frame"] == "syn_stream" && f["channel"] == "error"),
        "{frames:?}"
    );
    agent.assert_verifies();
}

/// A client that upgrades an exec to SPDY/3.1 and then sends a frame that is not
/// SPDY/3 (a version 2 SYN_STREAM): the agent journals the upgrade, closes that
/// connection with a `protocol_error` naming the frame, and serves the next request.
#[test]
fn a_malformed_spdy_frame_closes_the_stream_and_the_agent_lives_on() {
    privileged!("a_malformed_spdy_frame_closes_the_stream_and_the_agent_lives_on");
    let work = tempfile::tempdir().unwrap();
    let token = "kube-agent-token-malformed-2b4";
    let server = KubeApiServer::start(work.path(), Some(token), None);
    let token_file = secret_file(work.path(), "cluster.token", token);
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    // Plain HTTP from the client (a raw socket), TLS to the server.
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"cluster\"\naddress = \"{}\"\nprotocol = \"kubernetes\"\n\
         client_tls = \"refuse\"\nca_file = \"{}\"\ntoken_file = \"{}\"\n",
        cg.rel(),
        server.addr(),
        server.ca_file().display(),
        token_file.display()
    ));
    let head =
        "POST /api/v1/namespaces/default/pods/tool/exec?command=true&stdout=true HTTP/1.1\r\n\
                Host: kubernetes\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
                X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n";
    // SYN_STREAM with version 2, stream 1, no header block.
    let bad: [u8; 18] = [
        0x80, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0a, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0,
    ];
    let answer =
        nhi_tests::http::raw_exchange(&cg, &server.addr(), &[head.as_bytes(), &bad].concat());
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    let errors = data_when(&agent, "protocol_error", |e| !e.is_empty());
    let reason = errors
        .first()
        .and_then(|e| e["reason"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("malformed SPDY frame from the client"),
        "{errors:?}"
    );
    let ended = agent.wait_sessions_ended(1);
    assert!(
        ended[0]["close_reason"]
            .as_str()
            .unwrap_or("")
            .contains("malformed SPDY frame"),
        "{ended:?}"
    );
    // The agent goes on serving.
    let next = nhi_tests::http::raw_exchange(
        &cg,
        &server.addr(),
        b"GET /version HTTP/1.1\r\nHost: kubernetes\r\nConnection: close\r\n\r\n",
    );
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
    assert!(next.contains("gitVersion"), "{next}");
    agent.assert_verifies();
}
