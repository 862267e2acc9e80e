//! Containers on this host: the harness brings up a real Docker engine and a local
//! `psql` image (no registry, no external network); a container reaches the host
//! over docker's bridge; and the agent's container identity (cgroup path and the
//! engine's API) names a real running container.
use std::{
    io::Read as _,
    net::{IpAddr, TcpListener},
    thread,
    time::{Duration, Instant},
};

use nhi_agent::identity::{container_of_cgroup, ContainerDirectory, ContainerRef, Runtime};
use nhi_tests::docker::*;
use nhi_tests::*;

/// The container's command: psql running `sql` against PostgreSQL at `host`:`port`.
fn psql_command<'a>(host: &'a str, port: &'a str, sql: &'a str) -> [&'a str; 11] {
    [
        "psql", "-X", "-At", "-h", host, "-p", port, "-U", "postgres", "-c", sql,
    ]
}

/// The trimmed stdout of a command that must have succeeded (`what` names it).
fn succeeded(out: std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{what}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

macro_rules! docker_test {
    ($name:expr) => {
        nhi_tests::privileged!($name);
        if !require_docker($name) {
            return;
        }
    };
}

#[test]
fn docker_runs_a_locally_built_psql_image() {
    docker_test!("docker_runs_a_locally_built_psql_image");
    let image = psql_image().expect("psql image");
    assert!(image.starts_with("nhi-test-psql:"), "{image}");
    // Built once: a second call (and a later test process) reuses the tag.
    assert_eq!(psql_image().unwrap(), image);
    let out = docker_run(&["--rm", "--network", "none", &image, "psql", "--version"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("psql (PostgreSQL) "), "{stdout}");
    // The same version as the host's binary.
    let host = std::process::Command::new(host_psql().unwrap())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(stdout, String::from_utf8_lossy(&host.stdout));
    // The shell and the unprivileged user are there too.
    let out = docker_run(&[
        "--rm",
        "--network",
        "none",
        "--user",
        "nobody",
        &image,
        "sh",
        "-c",
        "id -u; sleep 0",
    ]);
    // `id` is not in the image: sh reports it, then sleep runs.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("id: not found"), "{stderr}");
}

#[test]
fn a_container_reaches_a_host_listener_over_the_bridge() {
    docker_test!("a_container_reaches_a_host_listener_over_the_bridge");
    let image = psql_image().expect("psql image");
    let gateway = bridge_gateway().expect("bridge gateway");
    let listener = TcpListener::bind((gateway.as_str(), 0)).expect("bind on the bridge");
    let port = listener.local_addr().unwrap().port().to_string();
    let client = {
        let (image, gateway) = (image.clone(), gateway.clone());
        thread::spawn(move || {
            docker_run(&[
                "--rm", &image, "psql", "-h", &gateway, "-p", &port, "-U", "bot", "-d", "db", "-c",
                "select 1",
            ])
        })
    };
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut stream, peer) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no connection from the container"
                );
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // psql opens with an SSLRequest (sslmode=prefer; code 80877103), or a
    // GSSENCRequest (80877104) where it finds Kerberos credentials: 8 bytes each.
    let mut first = [0u8; 8];
    stream.read_exact(&mut first).expect("psql's first message");
    let code = u32::from_be_bytes(first[4..].try_into().unwrap());
    assert_eq!(first[..4], [0, 0, 0, 8], "{first:?}");
    assert!(matches!(code, 80877103 | 80877104), "{first:?}");
    let gateway: IpAddr = gateway.parse().unwrap();
    assert_ne!(
        peer.ip(),
        gateway,
        "the peer is the container, not the host"
    );
    match (peer.ip(), gateway) {
        (IpAddr::V4(p), IpAddr::V4(g)) => {
            assert_eq!(p.octets()[..2], g.octets()[..2], "{p} in the bridge's /16")
        }
        other => panic!("unexpected addresses {other:?}"),
    }
    drop(stream);
    let out = client.join().unwrap();
    // The "server" hung up: psql fails, having tried.
    assert!(!out.status.success());
}

#[test]
fn container_identity_names_a_real_container() {
    docker_test!("container_identity_names_a_real_container");
    let image = psql_image().expect("psql image");
    let name = unique("nhi-identity");
    let container = Container::start(&[
        "--name",
        &name,
        "--network",
        "none",
        "--label",
        "nhi.test/role=identity",
        &image,
        "sleep",
        "300",
    ])
    .expect("start container");
    let cgroup = container.cgroup().expect("container cgroup");
    let found = container_of_cgroup(&cgroup).unwrap_or_else(|| panic!("no container in {cgroup}"));
    assert_eq!(
        found,
        ContainerRef {
            runtime: Runtime::Docker,
            id: container.id.clone(),
            pod_uid: None,
        },
        "{cgroup}"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let directory = ContainerDirectory::new(ContainerDirectory::default_sockets());
    let info = rt.block_on(directory.lookup(&found));
    assert_eq!(info.name.as_deref(), Some(name.as_str()));
    assert_eq!(info.image.as_deref(), Some(image.as_str()));
    assert_eq!(
        info.labels.get("nhi.test/role").map(String::as_str),
        Some("identity")
    );
    assert!(info.pod.is_none());
    // An id the engine does not know (404): runtime and id only.
    let unknown = ContainerRef {
        runtime: Runtime::Docker,
        id: "f".repeat(64),
        pod_uid: None,
    };
    let info = rt.block_on(directory.lookup(&unknown));
    assert_eq!((info.name, info.image), (None, None));
    assert!(info.labels.is_empty());
}

/// The check (2): psql in a real Docker container, against the host's
/// PostgreSQL on the bridge address: intercepted in the container's own network
/// namespace, decoded, and journaled with the container's id, name, image and labels.
#[test]
fn psql_in_a_docker_container_is_intercepted_and_named() {
    docker_test!("psql_in_a_docker_container_is_intercepted_and_named");
    let image = psql_image().expect("psql image");
    let gateway = bridge_gateway().expect("bridge gateway");
    let pg = PgServer::start_full(
        &[&format!("listen_addresses = '127.0.0.1,{gateway}'")],
        &["host all all 172.16.0.0/12 trust"],
        |_| {},
    );
    pg.sql("create table t (x int); insert into t values (42)");
    let name = unique("nhi-psql");
    let sql = "select x, inet_client_addr() from t";
    let port = pg.port.to_string();
    let mut create = vec![
        "create",
        "--name",
        &name,
        "--label",
        "nhi.test/job=e2e",
        &image,
    ];
    create.extend(psql_command(&gateway, &port, sql));
    let id = docker_ok(&create).expect("docker create");
    let _container = Container { id: id.clone() };
    // The container's cgroup is `docker/<id>` (cgroupfs driver) or
    // `system.slice/docker-<id>.scope` (systemd driver): select it by its id.
    let target = format!("{gateway}:{}", pg.port);
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"ci-container\"\ncgroup = \"**/*{id}*\"\n\n\
         [[target]]\nname = \"db\"\naddress = \"{target}\"\nprotocol = \"postgres\"\nnetns = \"container\"\n"
    ));

    let stdout = succeeded(docker(&["start", "-a", &id]), "psql in the container");
    // The server saw the container's own address: the agent dialled from the
    // container's namespace.
    let container_ip =
        docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &id]).unwrap_or_default();
    let (x, client) = stdout.split_once('|').expect("x|addr");
    assert_eq!(x, "42");
    assert!(client.starts_with("172."), "{client}");
    if !container_ip.is_empty() {
        assert_eq!(client, container_ip);
    }

    let sessions = agent.wait_sessions_ended(1);
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let s = &sessions[0];
    assert_eq!(s["workload"], "ci-container");
    assert_eq!(s["orig_dst"], target);
    let c = &s["container"];
    assert_eq!(c["runtime"], "docker", "{s:#}");
    assert_eq!(c["id"], id);
    assert_eq!(c["name"], name);
    assert_eq!(c["image"], image);
    assert_eq!(c["labels"]["nhi.test/job"], "e2e");
    assert!(c["netns"].as_u64().is_some(), "{c}");
    // psql is the container's first process: pid 1 in its pid namespace.
    assert_eq!(c["ns_pid"], 1, "{c}");
    assert_ne!(s["pid"], 1);
    let statements = agent.statements();
    assert!(
        statements.iter().any(|st| st["text"] == sql),
        "{statements:#?}"
    );
    // Lineage works inside the container: psql's exec is journaled with the host pid
    // of the session, the container's runtime and id, and (when psql was still running
    // as the agent read it) its pid inside the container.
    let execs = nhi_tests::http::data_of_kind(&agent, "exec");
    let exec = execs
        .iter()
        .find(|e| e["container"]["id"] == id.as_str())
        .unwrap_or_else(|| panic!("no exec in the container: {execs:#?}"));
    assert_eq!(exec["container"]["runtime"], "docker");
    assert_eq!(exec["pid"], s["pid"], "{exec:#}");
    assert!(
        exec["exe"].as_str().is_some_and(|e| e.ends_with("/psql")),
        "{exec:#}"
    );
    assert!(exec["ns_pid"].is_null() || exec["ns_pid"] == 1, "{exec:#}");
    // A responder selects the container's sessions by name or by the short id.
    let journal = agent.journal.to_str().unwrap();
    for (value, n) in [(name.as_str(), 1), (&id[..12], 1), ("someone-else", 0)] {
        let out = agent.cli(&[
            "sessions",
            "--journal",
            journal,
            "--json",
            "--container",
            value,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = String::from_utf8_lossy(&out.stdout).lines().count();
        assert_eq!(lines, n, "--container {value}");
    }
}

/// Rootful Podman: psql in a podman container (its own cgroup,
/// `libpod_parent/libpod-<id>` or `machine.slice/libpod-<id>.scope`) joined to a
/// network namespace the test made, against the host's PostgreSQL on the veth:
/// intercepted there and named by podman's API (runtime, id, name, image, labels).
#[test]
fn psql_in_a_podman_container_is_intercepted_and_named() {
    docker_test!("psql_in_a_podman_container_is_intercepted_and_named");
    if !require_podman("psql_in_a_podman_container_is_intercepted_and_named") {
        return;
    }
    let image = podman_psql_image().expect("psql image in podman");
    let net = nhi_tests::netns::TestNetns::create();
    let pg = PgServer::start_full(
        &[&format!("listen_addresses = '127.0.0.1,{}'", net.host_ip)],
        &[&format!("host all all {}/32 trust", net.ns_ip)],
        |_| {},
    );
    pg.sql("create table t (x int); insert into t values (5)");
    let name = unique("nhi-podman");
    let sql = "select x, inet_client_addr() from t";
    let port = pg.port.to_string();
    let host = net.host_ip.to_string();
    let network = format!("ns:/run/netns/{}", net.name);
    let mut create = vec![
        "create",
        "--pull",
        "never",
        "--name",
        &name,
        "--label",
        "nhi.test/job=podman",
        "--network",
        &network,
    ];
    create.extend(PODMAN_LIMITS);
    create.push(&image);
    create.extend(psql_command(&host, &port, sql));
    let id = podman_ok(&create).expect("podman create");
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = podman(&["rm", "-f", &self.0]);
        }
    }
    let _remove = Remove(id.clone());
    let target = format!("{host}:{}", pg.port);
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"podman-job\"\ncgroup = \"**/*{id}*\"\n\n\
         [[target]]\nname = \"db\"\naddress = \"{target}\"\nprotocol = \"postgres\"\n"
    ));

    let stdout = succeeded(
        podman(&["start", "-a", &id]),
        "psql in the podman container",
    );
    assert_eq!(stdout, format!("5|{}", net.ns_ip));
    let sessions = agent.wait_sessions_ended(1);
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let c = &sessions[0]["container"];
    assert_eq!(sessions[0]["workload"], "podman-job");
    assert_eq!(c["runtime"], "podman", "{c:#}");
    assert_eq!(c["id"], id);
    assert_eq!(c["name"], name);
    assert_eq!(c["image"], image);
    assert_eq!(c["labels"]["nhi.test/job"], "podman");
    assert_eq!(c["ns_pid"], 1, "{c}");
    let inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", net.name))
            .expect("netns file")
            .ino()
    };
    assert_eq!(c["netns"], inode);
}
