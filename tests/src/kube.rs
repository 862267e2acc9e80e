//! The Kubernetes tests' cluster and client. No real Kubernetes API server can be
//! installed here, so [`KubeApiServer`] runs `tests/kube/apiserver.py`, a fake
//! kube-apiserver (Python standard library only) that answers what the real `kubectl`
//! asks, as the real server does: discovery, objects seeded in memory (namespaces
//! `default`, `prod`, `staging`; in `prod` pod `web-0`, secret `db-creds`, deployment
//! `web`; in `default` pod `tool`), get/list/watch/create/delete, server-side tables,
//! `pods/log`, `pods/exec` over WebSocket and SPDY running the command for real,
//! `pods/attach` over both joining the container's main process (a real cat-like process,
//! one per container, started on its first attach and kept running: it echoes stdin to
//! stdout and writes `<container>: line <n>` to stderr per line, n counting its whole
//! life), and `pods/portforward` over SPDY and SPDY tunnelled in WebSocket, each
//! forwarded connection connected to the loopback port the test maps the pod's port to
//! ([`KubeApiServer::start_with_pod_ports`]). It serves HTTPS with its own test CA,
//! authenticates a bearer token and/or client certificates, and records every request
//! (headers, body, identity, exec and attach streams, forwarded connections) as one JSON
//! line, written before the request's answer leaves (a port-forward: once its connection
//! has ended), so once `kubectl` has returned, [`KubeApiServer::requests`] holds all it
//! asked. [`kubectl`] runs the real client (`/usr/bin/kubectl`, apt package `kubectl`)
//! with an empty HOME and a fresh cache directory, so no discovery cache or kubeconfig
//! leaks between runs; [`PortForward`] runs `kubectl port-forward` in the background the
//! same way. The server's behaviour and kubectl's requests are described in
//! `tests/kube/testdata/README.md`.
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{free_port, make_test_certs, workspace_root, TestCgroup};

/// The real Kubernetes client the tests run.
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// The fake API server's certificate names: its CA's CN and the DNS name (with
/// `IP:127.0.0.1`) of its server certificate.
pub const KUBE_CA_NAME: &str = "nhi-test-kube-ca";
pub const KUBE_DNS_NAME: &str = "kubernetes.default.svc";

/// How long one kubectl run may take before it is killed and the test fails.
const KUBECTL_DEADLINE: Duration = Duration::from_secs(60);

/// A running `tests/kube/apiserver.py`, killed on drop.
pub struct KubeApiServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl KubeApiServer {
    /// Starts the server on a free loopback port, with its own test CA and server
    /// certificate in `dir/kube-apiserver/` (also its request record and log). With
    /// `token`, `Authorization: Bearer <token>` authenticates; with `client_ca`, so does a
    /// client certificate signed by it (requested, not required); with neither, every
    /// request is served as `system:anonymous`. Anything else is answered 401. Returns
    /// once it accepts connections. No pod port is mapped: a port-forward's connections
    /// are refused.
    pub fn start(dir: &Path, token: Option<&str>, client_ca: Option<&Path>) -> KubeApiServer {
        Self::start_with_pod_ports(dir, token, client_ca, &[])
    }

    /// Like [`KubeApiServer::start`], with `pod_ports` as (pod port, loopback port): a
    /// connection `kubectl port-forward` forwards to port P of any pod is connected to
    /// `127.0.0.1:<its loopback port>` (`--pod-port P=HOSTPORT`), as a kubelet connects it
    /// to the pod; a port not mapped refuses, as a pod where nothing listens.
    pub fn start_with_pod_ports(
        dir: &Path,
        token: Option<&str>,
        client_ca: Option<&Path>,
        pod_ports: &[(u16, u16)],
    ) -> KubeApiServer {
        let dir = dir.join("kube-apiserver");
        std::fs::create_dir_all(&dir).expect("mkdir kube-apiserver");
        make_test_certs(&dir, KUBE_CA_NAME, KUBE_DNS_NAME);
        let port = free_port();
        let log = std::fs::File::create(dir.join("server.log")).expect("server log");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(workspace_root().join("tests/kube/apiserver.py"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--cert")
            .arg(dir.join("server.crt"))
            .arg("--key")
            .arg(dir.join("server.key"))
            .arg("--record")
            .arg(dir.join("requests.jsonl"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        if let Some(token) = token {
            cmd.arg("--token").arg(token);
        }
        if let Some(ca) = client_ca {
            cmd.arg("--client-ca").arg(ca);
        }
        for (pod_port, host_port) in pod_ports {
            cmd.arg("--pod-port").arg(format!("{pod_port}={host_port}"));
        }
        let mut child = cmd.spawn().expect("start tests/kube/apiserver.py");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the fake API server exited ({status}): {}",
                    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the fake API server did not listen"
            );
            thread::sleep(Duration::from_millis(50));
        }
        KubeApiServer { child, port, dir }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:<port>`, the kubeconfig's `server`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    /// The CA that signed the server's certificate (the kubeconfig's
    /// `certificate-authority`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Every request recorded so far, in the order they were answered: `method`, `path`,
    /// `query` (raw), `headers` (lowercase names, repeated ones joined with ", "), `body`
    /// (text, first 64 KiB), `body_decoded` (a protobuf body as JSON), `identity` (the
    /// token or the client certificate's CN, null when unauthenticated), `auth` (`token`,
    /// `client-certificate`, `anonymous` or null), `impersonation` (`impersonate-*`
    /// header → values), `status` (the HTTP status answered), `peer`, `time`, and for an
    /// exec `exec`: `command`, `container`, `options`, `transport` (`websocket`, `spdy`),
    /// `protocol`, `offered`, `stdin`, `stdout`, `stderr`, `exit_code`, `status`,
    /// `resize`, `streams` (SPDY); for an attach (recorded when it ends) `attach`:
    /// `container`, `options`, `transport`, `protocol`, `offered`, `process` (`pid`, and
    /// `started`: whether this attach started it), `stdin_delivered` (whether the
    /// container takes stdin), `stdin`, `stdout`, `stderr` (what went each way, first
    /// 64 KiB), `status` (the `Status` on the error channel, null when the client went
    /// away), `end` (`stdin closed`: the client closed stdin and got the answer to all
    /// it sent; `client gone`; `process exited`), `resize`, `streams`; for a port-forward (recorded once its connection has
    /// ended) `portforward`: `transport` (`websocket`: SPDY tunnelled in WebSocket;
    /// `spdy`), `protocol` (`portforward.k8s.io`), `subprotocol` (the WebSocket one,
    /// `SPDY/3.1+portforward.k8s.io`), `offered`, `query_ports` (`ports=` of the query),
    /// `ports` (those the streams named, in order), `streams` (id and headers of each
    /// SPDY stream the client opened), `connections` (per forwarded connection:
    /// `request_id`, `port`, `to` (the loopback address, null when unmapped),
    /// `bytes_to_pod`, `bytes_from_pod`, `to_pod` and `from_pod` (their text, first
    /// 64 KiB), `error` (what the error stream said), `end`), `bytes_to_pod`,
    /// `bytes_from_pod`, `end`, and over WebSocket `messages` (binary messages
    /// `from_client`, `to_client`).
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a recorded request is JSON"))
            .collect()
    }

    /// The `pods/attach` requests recorded so far (each with its `attach`), in order.
    pub fn attach_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.get("attach").is_some())
            .collect()
    }

    /// The requests once `done` holds for them (at most 20 s), for requests made by
    /// something other than a kubectl run that has returned (an agent, a background
    /// client).
    pub fn requests_when(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen in {} requests: {requests:#?}",
                requests.len()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's output (startup line, TLS handshake failures, errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a kubeconfig at `path` with one cluster (`server_url`, trusting `ca_file`), one
/// user (with `token`, or no credential at all when None) and one context (namespace
/// `default`), current.
pub fn write_kubeconfig(path: &Path, server_url: &str, ca_file: &Path, token: Option<&str>) {
    let user = match token {
        Some(token) => json!({ "token": token }),
        None => json!({}),
    };
    write_config(path, server_url, ca_file, user);
}

/// Like [`write_kubeconfig`], the user authenticating with a client certificate.
pub fn write_kubeconfig_with_cert(
    path: &Path,
    server_url: &str,
    ca_file: &Path,
    cert: &Path,
    key: &Path,
) {
    let user = json!({ "client-certificate": cert, "client-key": key });
    write_config(path, server_url, ca_file, user);
}

fn write_config(path: &Path, server_url: &str, ca_file: &Path, user: Value) {
    // JSON is YAML: kubectl reads it as is, and no path or token needs YAML quoting.
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "nhi-test", "cluster": {
            "server": server_url,
            "certificate-authority": ca_file,
        }}],
        "users": [{ "name": "nhi-test", "user": user }],
        "contexts": [{ "name": "nhi-test", "context": {
            "cluster": "nhi-test",
            "user": "nhi-test",
            "namespace": "default",
        }}],
        "current-context": "nhi-test",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&config).expect("json"))
        .expect("write kubeconfig");
}

/// A client certificate for `cn` (its groups: `O=` each of `groups`) signed by a new CA
/// named `ca_name`, all in `dir`: `client-ca.crt`, `client.crt`, `client.key`.
pub struct ClientCert {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make_client_cert(dir: &Path, ca_name: &str, cn: &str, groups: &[&str]) -> ClientCert {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca_subject = format!("/CN={ca_name}");
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-days",
            "2",
            "-subj",
            &ca_subject,
            "-keyout",
            "client-ca.key",
            "-out",
            "client-ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    ]
    .concat());
    let subject: String = groups
        .iter()
        .map(|g| format!("/O={g}"))
        .chain([format!("/CN={cn}")])
        .collect();
    run(&[
        &["req"][..],
        &ec,
        &[
            "-subj",
            &subject,
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
        ],
    ]
    .concat());
    std::fs::write(dir.join("client-ext.cnf"), "extendedKeyUsage=clientAuth\n")
        .expect("write client-ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "client-ca.crt",
        "-CAkey",
        "client-ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "client-ext.cnf",
        "-out",
        "client.crt",
    ]);
    ClientCert {
        ca: dir.join("client-ca.crt"),
        cert: dir.join("client.crt"),
        key: dir.join("client.key"),
    }
}

/// Runs `kubectl --kubeconfig <kubeconfig> --cache-dir <fresh> <args>` (in `cg` when
/// given) with `env` added, HOME an empty temp dir, no KUBECONFIG, and stdin empty;
/// fails the test if it runs longer than a minute.
pub fn kubectl(
    cg: Option<&TestCgroup>,
    kubeconfig: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    kubectl_with_input(cg, kubeconfig, args, env, None)
}

/// Like [`kubectl`], with `input` on kubectl's stdin (then closed) when given.
pub fn kubectl_with_input(
    cg: Option<&TestCgroup>,
    kubeconfig: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    input: Option<&[u8]>,
) -> Output {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = match cg {
        Some(cg) => cg.command(KUBECTL),
        None => Command::new(KUBECTL),
    };
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(home.path().join("cache"))
        .args(args)
        .env("HOME", home.path())
        .env_remove("KUBECONFIG")
        .envs(env.iter().copied())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("run {KUBECTL} (cargo xtask setup installs it): {e}"));
    let feeder = input.map(|input| {
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        })
    });
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + KUBECTL_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for kubectl") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kubectl {args:?} ran longer than {KUBECTL_DEADLINE:?}; stderr so far: {}",
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// How long `kubectl port-forward` may take to say it listens.
const PORT_FORWARD_READY: Duration = Duration::from_secs(60);

/// A `kubectl port-forward` running in the background, stopped (interrupted, then killed)
/// on drop. Its local connections are the test's to make: connect to
/// [`PortForward::addr`].
pub struct PortForward {
    child: Child,
    local_port: u16,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
    /// kubectl's HOME and cache directory, kept while it runs.
    _home: tempfile::TempDir,
}

impl PortForward {
    /// Runs `kubectl --kubeconfig <kubeconfig> --cache-dir <fresh> port-forward <args>` (in
    /// `cg` when given) with `env` added, HOME an empty temp dir, no KUBECONFIG and stdin
    /// empty, and returns once kubectl printed `Forwarding from 127.0.0.1:<port>` (the
    /// local port of its first forward: `args` may ask for `:80`, kubectl then picks a
    /// free one). Fails the test when kubectl exits first or is not listening within a
    /// minute.
    pub fn start(
        cg: Option<&TestCgroup>,
        kubeconfig: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> PortForward {
        let home = tempfile::tempdir().expect("tempdir");
        let mut cmd = match cg {
            Some(cg) => cg.command(KUBECTL),
            None => Command::new(KUBECTL),
        };
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(home.path().join("cache"))
            .arg("port-forward")
            .args(args)
            .env("HOME", home.path())
            .env_remove("KUBECONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("run {KUBECTL} (cargo xtask setup installs it): {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        let mut forward = PortForward {
            child,
            local_port: 0,
            stdout,
            stderr,
            readers,
            _home: home,
        };
        let deadline = Instant::now() + PORT_FORWARD_READY;
        loop {
            let out = String::from_utf8_lossy(&forward.stdout.lock().unwrap()).into_owned();
            if let Some(port) = out
                .lines()
                .filter_map(|l| l.strip_prefix("Forwarding from 127.0.0.1:"))
                .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
                .next()
            {
                forward.local_port = port;
                return forward;
            }
            if let Ok(Some(status)) = forward.child.try_wait() {
                panic!(
                    "kubectl port-forward {args:?} exited ({status}) before it listened:\n{}",
                    forward.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "kubectl port-forward {args:?} not listening after {PORT_FORWARD_READY:?}:\n{}",
                forward.output()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The local port kubectl listens on (127.0.0.1 and ::1).
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    /// `127.0.0.1:<local port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.local_port))
    }

    /// What kubectl printed so far (stdout, then stderr), for assertion messages.
    pub fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&self.stdout.lock().unwrap()),
            String::from_utf8_lossy(&self.stderr.lock().unwrap())
        )
    }

    /// Whether kubectl still runs (it exits when it loses its connection to the pod).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops kubectl as Ctrl-C does (SIGINT: it closes its connection to the server, then
    /// exits; killed when it has not within 10 s) and returns all it printed.
    pub fn stop(mut self) -> String {
        self.interrupt();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.output()
    }

    fn interrupt(&mut self) {
        if self.running() {
            // SAFETY: kill(2) on our own child, which has not been reaped (try_wait said
            // it runs), so the pid is still its.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.running() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.interrupt();
    }
}

/// Reads `from` to its end into `into`, on a thread of its own.
fn collect(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// kubectl's stdout and stderr, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What a bot's kubeconfig holds instead of a credential: kubectl asks for a user name
/// when its user entry has none, so the entry names a token the agent replaces.
pub const PLACEHOLDER: &str = "nhi-agent-placeholder";

/// A file only root reads (the agent refuses credential files others can read).
pub fn secret_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write the secret file");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod 600");
    path
}

/// `nhi-agent kube-ca` for `agent` (the agent CA, then the cluster CA), written to
/// `dir/bundle.pem`.
pub fn kube_ca_bundle(agent: &crate::Agent, dir: &Path) -> PathBuf {
    let config = agent.config_path.to_str().expect("a UTF-8 path");
    let out = agent.cli(&["kube-ca", "--config", config]);
    assert!(out.status.success(), "kube-ca: {}", output_text(&out));
    let pem = String::from_utf8(out.stdout).expect("PEM is text");
    assert_eq!(
        pem.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "the agent CA, then the cluster CA: {pem}"
    );
    let path = dir.join("bundle.pem");
    std::fs::write(&path, pem).expect("write the bundle");
    path
}

/// The events of `kind` (whole: `session_id`, `data`, ...) once `done` holds for them
/// (at most 20 s; then as they are, for the assertions to show): the writer commits
/// shortly after the pre-log write, in order.
pub fn events_when(
    agent: &crate::Agent,
    kind: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = crate::http::events_of_kind(agent, kind);
        if done(&events) || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`events_when`], the events' data only.
pub fn data_when(agent: &crate::Agent, kind: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = crate::http::data_of_kind(agent, kind);
        if done(&events) || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which request of which session an event belongs to.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub session: i64,
    pub seq: u64,
}

impl Request {
    pub fn owns(&self, event: &Value) -> bool {
        event["session_id"].as_i64() == Some(self.session)
            && event["data"]["seq"].as_u64() == Some(self.seq)
    }

    /// The data of those of `events` (whole events) that belong to this request.
    pub fn of(&self, events: Vec<Value>) -> Vec<Value> {
        events
            .into_iter()
            .filter(|e| self.owns(e))
            .map(|e| e["data"].clone())
            .collect()
    }
}
