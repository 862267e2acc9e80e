//! SSH targets (`protocol = "ssh"`): the real OpenSSH clients (`ssh`, `scp`, `sftp`,
//! `rsync`) in an intercepted cgroup, with no key of their own and a known_hosts file
//! holding only the agent's `@cert-authority` line, against a real `sshd` (started by
//! the test on a loopback port, its authorized_keys holding only the agent's key). The
//! agent presents a host certificate for the dialled address, logs into the host with
//! its own key, judges each exec before it reaches the host and journals it with its
//! output and exit status.
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use nhi_tests::http::data_of_kind;
use nhi_tests::ssh::{text, SshClient, Sshd};
use nhi_tests::*;
use serde_json::Value;

/// An agent with one SSH target for `sshd` (its key, its known_hosts, user root) and
/// `rules` as the policy's rules; `target_keys` replace the host key check when given.
fn agent_for(sshd: &Sshd, cg: &TestCgroup, target_keys: Option<&str>, rules: &str) -> Agent {
    let check = target_keys
        .map(str::to_owned)
        .unwrap_or_else(|| format!("known_hosts = \"{}\"", sshd.known_hosts.display()));
    Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"host\"\naddress = \"127.0.0.1:{}\"\nprotocol = \"ssh\"\n\
         key_file = \"{}\"\nuser = \"root\"\n{check}\n\n\
         [[policy]]\nname = \"bots\"\n\n{rules}",
        cg.rel(),
        sshd.port,
        sshd.agent_key.display(),
    ))
}

/// The bot's client: known_hosts with only the line `nhi-agent ssh-ca` prints.
fn bot_client(agent: &Agent) -> SshClient {
    let out = agent.cli(&["ssh-ca", "--config", agent.config_path.to_str().unwrap()]);
    assert!(out.status.success(), "ssh-ca: {}", text(&out));
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        line.starts_with("@cert-authority * ssh-ed25519 AAAA"),
        "{line}"
    );
    SshClient::new(&line)
}

fn ssh(cg: &TestCgroup, client: &SshClient, sshd: &Sshd, command: &str) -> Output {
    client
        .ssh(cg.command("ssh"), sshd.port, &[], command)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh")
}

fn text_of_event(d: &Value) -> String {
    d["text"].as_str().unwrap_or("").to_owned()
}

/// The events of `kind` once `done` holds for them (the writer commits shortly after
/// the pre-log write).
fn events_when(agent: &Agent, kind: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = data_of_kind(agent, kind);
        if done(&events) || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ssh_commands_are_judged_journaled_and_relayed() {
    privileged!("ssh_commands_are_judged_journaled_and_relayed");
    if Sshd::bin().is_none() {
        panic!("sshd is not installed: run `cargo xtask setup` (openssh-server)");
    }
    let sshd = Sshd::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let work = tempfile::tempdir().unwrap();
    let agent = agent_for(
        &sshd,
        &cg,
        None,
        "[[policy.rule]]\nname = \"no-destruction\"\nverdict = \"deny\"\n\
         commands = [\"rm -rf *\", \"touch */denied-*\"]\n\n\
         [[policy.rule]]\nname = \"needs-a-human\"\nverdict = \"approve\"\n\
         commands = [\"touch */held-*\"]\n",
    );
    let client = bot_client(&agent);

    // Sent directly (not intercepted), the bot has no key the host accepts... and no
    // known_hosts entry for the host's own key either.
    let direct = client
        .ssh(
            TestCgroup::create(&unique("nhi-direct")).command("ssh"),
            sshd.port,
            &[],
            "true",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(direct.status.code(), Some(255), "{}", text(&direct));

    // Through the agent: the host certificate is trusted, the agent logs in with its key.
    let uname = ssh(&cg, &client, &sshd, "uname -a");
    assert!(uname.status.success(), "{}", text(&uname));
    let local = std::process::Command::new("uname")
        .arg("-a")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&uname.stdout),
        String::from_utf8_lossy(&local.stdout)
    );

    // Exit status, stdout and stderr come back apart.
    let mixed = ssh(&cg, &client, &sshd, "echo out; echo err >&2; exit 3");
    assert_eq!(mixed.status.code(), Some(3), "{}", text(&mixed));
    assert_eq!(String::from_utf8_lossy(&mixed.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&mixed.stderr), "err\n");

    // A denied command never reaches the host: exit 126, the rule on stderr.
    let denied_file = work.path().join("denied-1");
    let denied = ssh(
        &cg,
        &client,
        &sshd,
        &format!("touch {}", denied_file.display()),
    );
    assert_eq!(denied.status.code(), Some(126), "{}", text(&denied));
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("no-destruction"),
        "{}",
        text(&denied)
    );
    assert!(!denied_file.exists(), "the denied command ran on the host");
    // What the bot read is in the transcript.
    let stderr_lines = events_when(&agent, "ssh_data", |e| {
        e.iter()
            .any(|d| d["stream"] == "stderr" && text_of_event(d).contains("no-destruction"))
    });
    assert!(
        stderr_lines
            .iter()
            .any(|d| d["stream"] == "stderr" && text_of_event(d).contains("no-destruction")),
        "{stderr_lines:?}"
    );
    let rm = ssh(
        &cg,
        &client,
        &sshd,
        &format!("cd {} && rm -rf .", work.path().display()),
    );
    assert_eq!(rm.status.code(), Some(126), "{}", text(&rm));
    assert!(work.path().exists());

    // A held command waits for a human, then runs.
    let socket = agent.dir.path().join("approvals.sock");
    let held_file = work.path().join("held-1");
    let held = client
        .ssh(
            cg.command("ssh"),
            sshd.port,
            &[],
            &format!("touch {} && echo done", held_file.display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pending = wait_pending(&socket);
    assert_eq!(pending["rule"], "needs-a-human", "{pending}");
    assert!(
        pending["statement"].as_str().unwrap().contains("held-1"),
        "{pending}"
    );
    assert!(
        !held_file.exists(),
        "the held command ran before the approval"
    );
    let id = pending["id"].as_str().unwrap();
    let approved = approvals(&socket, &["approve", id]);
    assert!(approved.status.success(), "{}", text(&approved));
    let held = held.wait_with_output().unwrap();
    assert!(held.status.success(), "{}", text(&held));
    assert_eq!(String::from_utf8_lossy(&held.stdout), "done\n");
    assert!(held_file.exists());

    // The journal: how each side logged in, each command before it ran, its output and
    // exit status.
    let logins = events_when(&agent, "ssh_login", |e| e.len() >= 5);
    assert_eq!(logins.len(), 5, "{logins:?}");
    for login in &logins {
        assert_eq!(login["user"], "root", "{login}");
        assert_eq!(login["method"], "none", "{login}");
        assert_eq!(login["upstream_user"], "root", "{login}");
        assert_eq!(login["outcome"], "ok", "{login}");
        assert_eq!(login["host_key"], sshd.host_fingerprint.as_str(), "{login}");
    }
    let execs = events_when(&agent, "ssh_exec", |e| e.len() >= 5);
    let exec = |needle: &str| {
        execs
            .iter()
            .find(|e| e["command"].as_str().unwrap_or("").contains(needle))
            .unwrap_or_else(|| panic!("no ssh_exec for {needle}: {execs:?}"))
            .clone()
    };
    assert_eq!(exec("uname -a")["action"], "forwarded");
    assert_eq!(exec("denied-1")["action"], "refused");
    assert_eq!(exec("denied-1")["rule"], "no-destruction");
    assert_eq!(exec("rm -rf")["action"], "refused");
    assert_eq!(exec("held-1")["action"], "held");
    let closes = events_when(&agent, "ssh_channel", |e| {
        e.iter().filter(|c| c["event"] == "close").count() >= 5
    });
    let statuses: Vec<u64> = closes
        .iter()
        .filter(|c| c["event"] == "close")
        .filter_map(|c| c["exit_status"].as_u64())
        .collect();
    assert!(statuses.contains(&0) && statuses.contains(&3), "{closes:?}");
    // A channel's close says what it ran.
    assert!(
        closes
            .iter()
            .any(|c| c["event"] == "close" && c["detail"] == "exec" && c["exit_status"] == 3),
        "{closes:?}"
    );
    let data = events_when(&agent, "ssh_data", |e| {
        e.iter()
            .any(|d| d["stream"] == "stderr" && d["text"] == "err\n")
    });
    let uname_out = String::from_utf8_lossy(&local.stdout).into_owned();
    assert!(
        data.iter()
            .any(|d| d["stream"] == "stdout" && d["text"] == uname_out.as_str()),
        "{data:?}"
    );
    assert!(
        data.iter()
            .any(|d| d["stream"] == "stderr" && d["text"] == "err\n"),
        "{data:?}"
    );

    // The CLI reads it: commands found by text, replayed as a transcript, exported as
    // OCSF SSH Activity (4007) and as an asciicast.
    let journal = agent.journal.to_str().unwrap().to_string();
    let out = agent.cli(&[
        "events",
        "--journal",
        &journal,
        "--text",
        "rm -rf",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let found: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !found.is_empty()
            && found
                .iter()
                .all(|e| e["kind"] == "ssh_exec" && e["data"]["rule"] == "no-destruction"),
        "{found:#?}"
    );
    let sessions = agent.sessions();
    let uname_session = sessions
        .iter()
        .map(|s| s["id"].to_string())
        .find(|id| {
            let out = agent.cli(&["replay", id, "--journal", &journal, "--instant"]);
            String::from_utf8_lossy(&out.stdout).contains("uname -a")
        })
        .expect("a session replaying uname -a");
    let out = agent.cli(&["replay", &uname_session, "--journal", &journal, "--instant"]);
    let replay = String::from_utf8_lossy(&out.stdout);
    assert!(replay.contains(uname_out.trim_end()), "{replay}");
    let out = agent.cli(&["export", "--format", "ocsf", "--journal", &journal]);
    assert!(out.status.success(), "{}", text(&out));
    let ssh_activity: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["class_uid"] == 4007)
        .collect();
    let mixed_activity = ssh_activity
        .iter()
        .find(|e| {
            e["unmapped"]["ssh_command"]
                .as_str()
                .unwrap_or("")
                .contains("exit 3")
        })
        .unwrap_or_else(|| panic!("{ssh_activity:#?}"));
    assert_eq!(mixed_activity["status_code"], "3", "{mixed_activity}");
    let cast = agent.dir.path().join("uname.cast");
    let out = agent.cli(&[
        "export",
        "--format",
        "asciicast",
        "--session",
        &uname_session,
        "--journal",
        &journal,
        "--out",
        cast.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let cast = std::fs::read_to_string(&cast).unwrap();
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2, "{cast}");
    let output: String = lines
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e[1] == "o")
        .filter_map(|e| e[2].as_str().map(str::to_owned))
        .collect();
    assert!(
        output.contains(uname_out.trim_end()),
        "{output:?} vs {uname_out:?}"
    );
    agent.assert_verifies();
}

#[test]
fn forwarding_follows_policy_and_a_wrong_host_key_refuses_the_session() {
    privileged!("forwarding_follows_policy_and_a_wrong_host_key_refuses_the_session");
    let sshd = Sshd::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let echo_port = free_port();
    let _echo = EchoServer::start(&format!("127.0.0.1:{echo_port}"));
    {
        let agent = agent_for(&sshd, &cg, None, "");
        let client = bot_client(&agent);
        // `ssh -W` opens a direct-tcpip channel at once; `-L` when a connection comes.
        let w = client
            .ssh(
                cg.command("ssh"),
                sshd.port,
                &["-W", &format!("127.0.0.1:{echo_port}")],
                "",
            )
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_ne!(w.status.code(), Some(0), "{}", text(&w));
        assert!(
            String::from_utf8_lossy(&w.stderr).contains("administratively prohibited"),
            "{}",
            text(&w)
        );
        let local_port = free_port();
        let mut tunnel = client
            .ssh(
                cg.command("ssh"),
                sshd.port,
                &[
                    "-N",
                    "-o",
                    "ExitOnForwardFailure=yes",
                    "-L",
                    &format!("127.0.0.1:{local_port}:127.0.0.1:{echo_port}"),
                ],
                "",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", local_port)).is_err() {
            assert!(Instant::now() < deadline, "no -L listener");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The listener's first connection above was refused already; this one too.
        match direct_echo(format!("127.0.0.1:{local_port}").parse().unwrap(), b"ping") {
            Ok((_, answer)) => assert!(answer.is_empty(), "the tunnel carried data: {answer:?}"),
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        }
        let _ = tunnel.kill();
        let _ = tunnel.wait();
        let refused = events_when(&agent, "ssh_channel", |e| {
            e.iter().filter(|c| c["kind"] == "direct-tcpip").count() >= 2
        });
        let tcpip: Vec<&Value> = refused
            .iter()
            .filter(|c| c["kind"] == "direct-tcpip")
            .collect();
        assert!(tcpip.len() >= 2, "{refused:?}");
        for c in tcpip {
            assert_eq!(c["action"], "refused", "{c}");
            assert_eq!(
                c["detail"],
                format!("127.0.0.1:{echo_port}").as_str(),
                "{c}"
            );
        }
        drop(agent);
    }
    // A rule allows tunnels: `ssh -W` reaches the echo server through the host.
    {
        let agent = agent_for(
            &sshd,
            &cg,
            None,
            "[[policy.rule]]\nname = \"tunnels\"\nverdict = \"allow\"\n\
             ssh_requests = [\"direct-tcpip\", \"tcpip-forward\", \"agent\"]\n",
        );
        let client = bot_client(&agent);
        let mut w = client
            .ssh(
                cg.command("ssh"),
                sshd.port,
                &["-W", &format!("127.0.0.1:{echo_port}")],
                "",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = w.stdin.take().unwrap();
            stdin.write_all(b"ping through the host").unwrap();
        }
        let w = w.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&w.stdout),
            "ping through the host",
            "{}",
            text(&w)
        );
        let channels = events_when(&agent, "ssh_channel", |e| {
            e.iter()
                .any(|c| c["kind"] == "direct-tcpip" && c["event"] == "close")
        });
        let request = channels
            .iter()
            .find(|c| c["kind"] == "direct-tcpip" && c["event"] == "request")
            .unwrap_or_else(|| panic!("{channels:?}"));
        assert_eq!(request["action"], "forwarded", "{request}");
        assert_eq!(request["rule"], "tunnels", "{request}");
        let close = channels
            .iter()
            .find(|c| c["kind"] == "direct-tcpip" && c["event"] == "close")
            .unwrap_or_else(|| panic!("{channels:?}"));
        assert_eq!(close["bytes_in"], 21, "{close}");
        assert_eq!(close["bytes_out"], 21, "{close}");

        // `ssh -R`: the host listens; a connection to it comes back through the agent
        // to the bot, which connects to the echo server on its side.
        let remote_port = free_port();
        let mut remote = client
            .ssh(
                cg.command("ssh"),
                sshd.port,
                &[
                    "-N",
                    "-o",
                    "ExitOnForwardFailure=yes",
                    "-R",
                    &format!("127.0.0.1:{remote_port}:127.0.0.1:{echo_port}"),
                ],
                "",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", remote_port)).is_err() {
            assert!(Instant::now() < deadline, "the host does not listen for -R");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (_, answer) = direct_echo(
            format!("127.0.0.1:{remote_port}").parse().unwrap(),
            b"back through the agent",
        )
        .unwrap();
        assert_eq!(answer, b"back through the agent");
        let _ = remote.kill();
        let _ = remote.wait();
        let channels = events_when(&agent, "ssh_channel", |e| {
            e.iter().any(|c| {
                c["kind"] == "forwarded-tcpip" && c["event"] == "close" && c["bytes_out"] == 22
            })
        });
        let request = channels
            .iter()
            .find(|c| c["kind"] == "tcpip-forward")
            .unwrap_or_else(|| panic!("{channels:?}"));
        assert_eq!(request["action"], "forwarded", "{request}");
        assert!(
            channels.iter().any(|c| c["kind"] == "forwarded-tcpip"
                && c["event"] == "close"
                && c["bytes_in"] == 22
                && c["bytes_out"] == 22),
            "{channels:?}"
        );

        // `ssh -A`: a program on the host lists the keys of the bot's agent.
        let agent_dir = tempfile::tempdir().unwrap();
        let socket = agent_dir.path().join("agent.sock");
        let mut ssh_agent = std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "ssh-agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let bot_key = agent_dir.path().join("bot_key");
        nhi_tests::ssh::keygen(&bot_key);
        let added = std::process::Command::new("ssh-add")
            .arg(&bot_key)
            .env("SSH_AUTH_SOCK", &socket)
            .output()
            .unwrap();
        assert!(added.status.success(), "{}", text(&added));
        // (Without the helper's IdentityAgent=none: OpenSSH forwards the agent it would
        // use, and keeps the first value an option is given.)
        let mut options = client.options();
        let at = options
            .iter()
            .position(|o| o == "IdentityAgent=none")
            .expect("the helper's option");
        options.drain(at - 1..=at);
        let listed = cg
            .command("ssh")
            .env("HOME", client.home.path())
            .env("SSH_AUTH_SOCK", &socket)
            .args(&options)
            .args([
                "-A",
                "-p",
                &sshd.port.to_string(),
                "root@127.0.0.1",
                "ssh-add -l",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let _ = ssh_agent.kill();
        let _ = ssh_agent.wait();
        let bot_fingerprint = nhi_tests::ssh::fingerprint(&bot_key.with_extension("pub"));
        assert!(
            String::from_utf8_lossy(&listed.stdout).contains(&bot_fingerprint),
            "{}",
            text(&listed)
        );
        let channels = events_when(&agent, "ssh_channel", |e| {
            e.iter()
                .any(|c| c["kind"] == "agent" && c["event"] == "close")
        });
        let request = channels
            .iter()
            .find(|c| c["kind"] == "agent" && c["event"] == "request")
            .unwrap_or_else(|| panic!("{channels:?}"));
        assert_eq!(request["action"], "forwarded", "{request}");
        assert!(
            channels.iter().any(|c| c["kind"] == "agent"
                && c["event"] == "open"
                && c["action"] == "forwarded"),
            "{channels:?}"
        );
        drop(agent);
    }
    // The host's key is not the pinned one: the session is refused with the reason.
    let logged_in = sshd.log_text().matches("Accepted publickey").count();
    let other = tempfile::tempdir().unwrap();
    nhi_tests::ssh::keygen(&other.path().join("k"));
    let wrong = nhi_tests::ssh::fingerprint(&other.path().join("k.pub"));
    let agent = agent_for(&sshd, &cg, Some(&format!("host_key = \"{wrong}\"")), "");
    let client = bot_client(&agent);
    let out = ssh(&cg, &client, &sshd, "true");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pinned host_key"), "{}", text(&out));
    assert!(stderr.contains(&sshd.host_fingerprint), "{}", text(&out));
    let logins = events_when(&agent, "ssh_login", |e| !e.is_empty());
    assert_eq!(logins[0]["outcome"], "failed", "{logins:?}");
    assert!(
        logins[0]["reason"]
            .as_str()
            .unwrap()
            .contains("pinned host_key"),
        "{logins:?}"
    );
    // Nothing was logged into on the host.
    assert_eq!(
        sshd.log_text().matches("Accepted publickey").count(),
        logged_in,
        "{}",
        sshd.log_text()
    );
}

/// The SHA-256 of a file, hex.
fn sha256_of(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Runs `program` (scp, sftp, rsync) in the cgroup with the bot's HOME; fails the test
/// with its output unless it succeeds.
fn run_ok(mut cmd: std::process::Command, client: &SshClient, what: &str) -> Output {
    let started = Instant::now();
    let out = cmd
        .env("HOME", client.home.path())
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}", text(&out));
    eprintln!("{what}: {:?}", started.elapsed());
    out
}

#[test]
fn scp_sftp_and_rsync_move_64_mib_both_ways_with_their_paths_journaled() {
    privileged!("scp_sftp_and_rsync_move_64_mib_both_ways_with_their_paths_journaled");
    let sshd = Sshd::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = agent_for(&sshd, &cg, None, "");
    let client = bot_client(&agent);
    let local = tempfile::tempdir().unwrap();
    let remote = tempfile::tempdir().unwrap();
    let source = local.path().join("source.bin");
    let out = std::process::Command::new("head")
        .args(["-c", "67108864", "/dev/urandom"])
        .output()
        .unwrap();
    std::fs::write(&source, &out.stdout).unwrap();
    let want = sha256_of(&source);
    let port = sshd.port.to_string();
    let at = |path: &std::path::Path| format!("root@127.0.0.1:{}", path.display());

    // scp over SFTP (OpenSSH's default) and the legacy protocol (-O: `scp -t` / `-f`
    // run as an exec), both ways.
    for (legacy, name) in [(false, "scp"), (true, "scp-legacy")] {
        let up = remote.path().join(format!("{name}-up.bin"));
        let down = local.path().join(format!("{name}-down.bin"));
        let mut cmd = cg.command("scp");
        cmd.args(client.options()).args(["-P", &port]);
        if legacy {
            cmd.arg("-O");
        }
        cmd.arg(&source).arg(at(&up));
        run_ok(cmd, &client, &format!("{name} upload"));
        assert_eq!(sha256_of(&up), want, "{name} upload");
        let mut cmd = cg.command("scp");
        cmd.args(client.options()).args(["-P", &port]);
        if legacy {
            cmd.arg("-O");
        }
        cmd.arg(at(&up)).arg(&down);
        run_ok(cmd, &client, &format!("{name} download"));
        assert_eq!(sha256_of(&down), want, "{name} download");
    }

    // sftp: put, get, mkdir, rename, remove.
    let batch = local.path().join("batch");
    let sftp_up = remote.path().join("sftp-up.bin");
    let sftp_down = local.path().join("sftp-down.bin");
    let dir = remote.path().join("made");
    let renamed = remote.path().join("made/renamed.bin");
    std::fs::write(
        &batch,
        format!(
            "put {} {}\nget {} {}\nmkdir {}\nrename {} {}\nrm {}\n",
            source.display(),
            sftp_up.display(),
            sftp_up.display(),
            sftp_down.display(),
            dir.display(),
            sftp_up.display(),
            renamed.display(),
            renamed.display(),
        ),
    )
    .unwrap();
    let mut cmd = cg.command("sftp");
    cmd.args(client.options())
        .args(["-P", &port, "-b"])
        .arg(&batch)
        .arg("root@127.0.0.1");
    run_ok(cmd, &client, "sftp");
    assert_eq!(sha256_of(&sftp_down), want, "sftp get");
    assert!(dir.is_dir() && !renamed.exists() && !sftp_up.exists());

    // rsync runs `rsync --server` as an exec.
    let rsync_up = remote.path().join("rsync-up.bin");
    let rsync_down = local.path().join("rsync-down.bin");
    let rsh = format!("ssh {} -p {port}", client.options().join(" "));
    let mut cmd = cg.command("rsync");
    cmd.args(["-e", &rsh]).arg(&source).arg(at(&rsync_up));
    run_ok(cmd, &client, "rsync upload");
    assert_eq!(sha256_of(&rsync_up), want, "rsync upload");
    let mut cmd = cg.command("rsync");
    cmd.args(["-e", &rsh]).arg(at(&rsync_up)).arg(&rsync_down);
    run_ok(cmd, &client, "rsync download");
    assert_eq!(sha256_of(&rsync_down), want, "rsync download");

    // The journal names what moved where.
    let execs = events_when(&agent, "ssh_exec", |e| e.len() >= 4);
    let commands: Vec<&str> = execs.iter().filter_map(|e| e["command"].as_str()).collect();
    let legacy_up = remote.path().join("scp-legacy-up.bin");
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("scp -t") && c.contains(legacy_up.to_str().unwrap())),
        "{commands:?}"
    );
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("scp -f") && c.contains(legacy_up.to_str().unwrap())),
        "{commands:?}"
    );
    assert!(
        commands
            .iter()
            .filter(|c| c.starts_with("rsync --server"))
            .count()
            >= 2,
        "{commands:?}"
    );
    let ops = events_when(&agent, "sftp_op", |e| e.iter().any(|o| o["op"] == "remove"));
    let op = |name: &str, path: &std::path::Path| {
        ops.iter()
            .find(|o| o["op"] == name && o["path"] == path.to_str().unwrap())
            .unwrap_or_else(|| panic!("no sftp_op {name} {}: {ops:?}", path.display()))
            .clone()
    };
    let put = op("open", &sftp_up);
    assert!(
        put["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "write"),
        "{put}"
    );
    let written = op("close", &sftp_up);
    assert_eq!(written["bytes"], 67108864, "{written}");
    let read = ops
        .iter()
        .filter(|o| o["op"] == "close" && o["path"] == sftp_up.to_str().unwrap())
        .filter_map(|o| o["bytes"].as_u64())
        .collect::<Vec<_>>();
    assert_eq!(read, vec![67108864, 67108864], "written then read: {ops:?}");
    op("mkdir", &dir);
    assert_eq!(op("rename", &sftp_up)["target"], renamed.to_str().unwrap());
    op("remove", &renamed);
    let scp_up = remote.path().join("scp-up.bin");
    assert_eq!(op("close", &scp_up)["bytes"], 67108864);
    agent.assert_verifies();
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                stack.push(entry.path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn printed_secrets_are_masked_terminals_and_sftp_follow_policy() {
    privileged!("printed_secrets_are_masked_terminals_and_sftp_follow_policy");
    let sshd = Sshd::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let remote = tempfile::tempdir().unwrap();
    let keep = remote.path().join("keep.txt");
    std::fs::write(&keep, "keep me\n").unwrap();
    let key_id = "AKIA2E3XPLM4QRST5UVW";
    {
        let agent = agent_for(
            &sshd,
            &cg,
            Some(&format!(
                "known_hosts = \"{}\"\nmask_output = true",
                sshd.known_hosts.display()
            )),
            &format!(
                "[[policy.rule]]\nname = \"keep-files\"\nverdict = \"deny\"\n\
                 sftp_ops = [\"remove\", \"rename\"]\nsftp_paths = [\"{}/*\"]\n",
                remote.path().display()
            ),
        );
        let client = bot_client(&agent);

        // A credential printed by a command is masked in the journal and, with
        // mask_output = true, for the bot too.
        // (Read from a file on the host: the bot's own command line, journaled with its
        // process, holds no secret.)
        let secret_file = remote.path().join("creds");
        std::fs::write(&secret_file, format!("key={key_id}\n")).unwrap();
        let out = ssh(
            &cg,
            &client,
            &sshd,
            &format!("cat {}; echo done", secret_file.display()),
        );
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains(key_id), "{stdout}");
        assert!(
            stdout.contains("key=[redacted]") && stdout.contains("done"),
            "{stdout}"
        );
        let data = events_when(&agent, "ssh_data", |e| {
            e.iter()
                .any(|d| d["text"].as_str().unwrap_or("").contains("done"))
        });
        assert!(
            data.iter()
                .any(|d| d["text"].as_str().unwrap_or("").contains("key=[redacted]")),
            "{data:?}"
        );

        // A terminal session: the pty (with its size), the shell, what was typed and
        // printed, the exit status.
        let mut shell = client
            .ssh(cg.command("ssh"), sshd.port, &["-tt"], "")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let stdin = shell.stdin.as_mut().unwrap();
            stdin.write_all(b"echo hello-$((6*7))\nexit 7\n").unwrap();
        }
        let shell = shell.wait_with_output().unwrap();
        assert_eq!(shell.status.code(), Some(7), "{}", text(&shell));
        assert!(
            String::from_utf8_lossy(&shell.stdout).contains("hello-42"),
            "{}",
            text(&shell)
        );
        let channels = events_when(&agent, "ssh_channel", |e| {
            e.iter()
                .any(|c| c["event"] == "close" && c["exit_status"] == 7)
        });
        let pty = channels
            .iter()
            .find(|c| c["kind"] == "pty")
            .unwrap_or_else(|| panic!("{channels:?}"));
        assert_eq!(pty["action"], "forwarded", "{pty}");
        assert!(pty["cols"].is_u64() && pty["rows"].is_u64(), "{pty}");
        assert!(
            channels
                .iter()
                .any(|c| c["kind"] == "shell" && c["action"] == "forwarded"),
            "{channels:?}"
        );
        let data = events_when(&agent, "ssh_data", |e| {
            e.iter().any(|d| {
                d["stream"] == "stdout" && d["text"].as_str().unwrap_or("").contains("hello-42")
            })
        });
        // What was typed is in the transcript as the terminal echoed it; stdin itself
        // is not recorded on a terminal (a password typed at a prompt is not echoed).
        let text_of = |d: &Value| d["text"].as_str().unwrap_or("").to_owned();
        assert!(
            data.iter()
                .any(|d| d["stream"] == "stdout" && text_of(d).contains("echo hello-$((6*7))")),
            "{data:?}"
        );
        assert!(
            !data
                .iter()
                .any(|d| d["stream"] == "stdin" && text_of(d).contains("hello")),
            "{data:?}"
        );

        // SFTP: a removal under the protected directory is refused with the rule and
        // never reaches the host; reading it is fine.
        let batch = remote.path().join("batch");
        let fetched = remote.path().join("fetched.txt");
        std::fs::write(
            &batch,
            format!(
                "get {} {}\nrm {}\n",
                keep.display(),
                fetched.display(),
                keep.display()
            ),
        )
        .unwrap();
        let mut cmd = cg.command("sftp");
        cmd.env("HOME", client.home.path())
            .args(client.options())
            .args(["-P", &sshd.port.to_string(), "-b"])
            .arg(&batch)
            .arg("root@127.0.0.1")
            .stdin(Stdio::null());
        let out = cmd.output().unwrap();
        assert!(
            !out.status.success(),
            "the batch should stop at the refused rm: {}",
            text(&out)
        );
        // OpenSSH's sftp prints the status code's text, not the agent's message (which
        // names the rule; the journal does too).
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            text(&out)
        );
        assert!(keep.exists(), "the refused removal reached the host");
        assert_eq!(std::fs::read_to_string(&fetched).unwrap(), "keep me\n");
        let ops = events_when(&agent, "sftp_op", |e| e.iter().any(|o| o["op"] == "remove"));
        let remove = ops.iter().find(|o| o["op"] == "remove").unwrap();
        assert_eq!(remove["action"], "refused", "{remove}");
        assert_eq!(remove["rule"], "keep-files", "{remove}");
        assert_eq!(remove["path"], keep.to_str().unwrap(), "{remove}");

        // The raw key is in no file of the agent's directory (journal, WAL, pre-log,
        // log).
        agent.assert_verifies();
        let holding = files_holding(agent.dir.path(), key_id);
        assert!(holding.is_empty(), "{holding:?}");
        drop(agent);
    }
    // pty = false: terminals are refused (OpenSSH's client gives up when a terminal
    // it was told to get (-t) is refused).
    // (And ssh_user: the agent logs in as the policy's user, whoever the bot asked for.)
    let agent = agent_for(&sshd, &cg, None, "pty = false\nssh_user = \"nobody\"\n");
    let client = bot_client(&agent);
    let out = client
        .ssh(cg.command("ssh"), sshd.port, &["-tt"], "true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PTY allocation request failed"),
        "{}",
        text(&out)
    );
    let channels = events_when(&agent, "ssh_channel", |e| {
        e.iter().any(|c| c["kind"] == "pty")
    });
    let pty = channels.iter().find(|c| c["kind"] == "pty").unwrap();
    assert_eq!(pty["action"], "refused", "{pty}");
    assert_eq!(pty["rule"], "pty = false", "{pty}");
    let logins = events_when(&agent, "ssh_login", |e| !e.is_empty());
    assert_eq!(logins[0]["user"], "root", "{logins:?}");
    assert_eq!(logins[0]["upstream_user"], "nobody", "{logins:?}");
    assert!(
        sshd.log_text().contains("Accepted publickey for nobody"),
        "{}",
        sshd.log_text()
    );
}

#[test]
fn bad_input_and_a_killed_bot_leave_the_agent_serving_and_the_journal_whole() {
    privileged!("bad_input_and_a_killed_bot_leave_the_agent_serving_and_the_journal_whole");
    let sshd = Sshd::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = agent_for(&sshd, &cg, None, "");
    let client = bot_client(&agent);
    let addr = format!("127.0.0.1:{}", sshd.port);

    // Not SSH at all: the agent answers with its version line, then closes.
    let answer = nhi_tests::http::raw_exchange(&cg, &addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("SSH-2.0-nhi-agent"), "{answer:?}");

    // A command that is not UTF-8 is refused (exit 126) and journaled, never run.
    use std::os::unix::ffi::OsStrExt;
    let marker = tempfile::tempdir().unwrap();
    let file = marker.path().join("odd");
    let mut command = format!("touch {} #", file.display()).into_bytes();
    command.push(0xff);
    let out = client
        .ssh(cg.command("ssh"), sshd.port, &[], "")
        .arg(std::ffi::OsStr::from_bytes(&command))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(!file.exists(), "the unreadable command ran");
    let execs = events_when(&agent, "ssh_exec", |e| !e.is_empty());
    assert_eq!(execs[0]["action"], "refused", "{execs:?}");
    assert!(
        execs[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not UTF-8"),
        "{execs:?}"
    );

    // The bot is killed in the middle of an upload: 2 MiB sent, then its producer
    // waits (so the kill always lands mid-stream).
    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("big.bin");
    let bytes = std::process::Command::new("head")
        .args(["-c", "2097152", "/dev/urandom"])
        .output()
        .unwrap()
        .stdout;
    std::fs::write(&source, bytes).unwrap();
    let dest = local.path().join("up.bin");
    let upload = cg
        .command("sh")
        .arg("-c")
        .arg(format!(
            "(cat {}; sleep 120) | ssh {} -p {} root@127.0.0.1 'cat > {}'",
            source.display(),
            client.options().join(" "),
            sshd.port,
            dest.display()
        ))
        .env("HOME", client.home.path())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0) < 2 << 20 {
        assert!(Instant::now() < deadline, "the upload did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    cg.kill_all();
    let _ = upload.wait_with_output();
    // The agent ends that session (journaled, with a close reason) and serves the next.
    let ended = agent.wait_sessions_ended(3);
    assert!(
        ended
            .iter()
            .all(|s| s["close_reason"].as_str().is_some_and(|r| !r.is_empty())),
        "{ended:#?}"
    );
    let out = ssh(&cg, &client, &sshd, "echo still-here");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still-here\n");
    let closes = events_when(&agent, "ssh_channel", |e| {
        e.iter().filter(|c| c["event"] == "close").count() >= 3
    });
    // The killed upload's channel is closed with the 2 MiB that reached the host.
    assert!(
        closes
            .iter()
            .any(|c| c["event"] == "close" && c["bytes_in"] == 2 << 20),
        "{closes:?}"
    );
    agent.assert_verifies();
}
