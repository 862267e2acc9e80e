//! The Kubernetes tests' cluster and client. No real Kubernetes API server can be
//! installed here, so [`KubeApiServer`] runs `tests/kube/apiserver.py`, a fake
//! kube-apiserver (Python standard library only) that answers what the real `kubectl`
//! asks, as the real server does: discovery, objects seeded in memory (namespaces
//! `default`, `prod`, `staging`; in `prod` pod `web-0`, secret `db-creds`, deployment
//! `web`), get/list/watch/create/delete, server-side tables, `pods/log`, and `pods/exec`
//! over WebSocket and SPDY running the command for real. It serves HTTPS with its own test
//! CA, authenticates a bearer token and/or client certificates, and records every request
//! (headers, body, identity, exec streams) as one JSON line, written before the request's
//! answer leaves, so once `kubectl` has returned, [`KubeApiServer::requests`] holds all it
//! asked. [`kubectl`] runs the real client (`/usr/bin/kubectl`, apt package `kubectl`)
//! with an empty HOME and a fresh cache directory, so no discovery cache or kubeconfig
//! leaks between runs. The server's behaviour and kubectl's requests are described in
//! `tests/kube/testdata/README.md`.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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
    /// once it accepts connections.
    pub fn start(dir: &Path, token: Option<&str>, client_ca: Option<&Path>) -> KubeApiServer {
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
    /// `resize`, `streams` (SPDY).
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a recorded request is JSON"))
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

/// kubectl's stdout and stderr, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
