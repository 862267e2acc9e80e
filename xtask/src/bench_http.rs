//! The HTTP part of `cargo xtask bench`: small JSON GETs over keep-alive connections
//! (`nhi-testclient http-get`), at -c 1 and -c 16, five ways against one nginx serving
//! the JSON itself: directly, through the agent as an opaque `tcp` target, through the
//! agent as an `http` target (each request normalised, judged by a policy, its headers
//! masked and journaled before it is forwarded, the response head journaled, the body
//! through the target's masks), through the agent as a `kubernetes` target (a `get` of
//! a pod: read as the API server reads it, judged, journaled, the token and
//! impersonation set, the JSON answer read whole for its uid, `k8s_request` journaled;
//! nginx stands in for the API server, plain HTTP on both legs), and through nginx as a
//! plain reverse proxy (upstream keep-alive) as the yardstick. Runs are interleaved;
//! medians of requests/s and of mean and p99 latency are printed as ratios to direct.
//!
//! Like the PostgreSQL part, targets for one server need addresses of their own: nginx
//! listens on 127.0.0.1:port (the `http` target), 127.0.0.2:port (the `tcp` one) and
//! 127.0.0.3:port (the `kubernetes` one).
use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context as _};
use nhi_tests::TestCgroup;
use serde_json::Value;

use crate::bench::{terminate, wait_listening};
use crate::bench_targets::Reported;

/// What the JSON API answers (with an e-mail address for the masks to find).
pub const BODY: &str =
    r#"{"id":42,"name":"Ada Lovelace","email":"ada@example.com","roles":["reader","writer"]}"#;

/// What the stand-in API server answers to `get pods prod/web-0`.
pub const POD_BODY: &str = r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-0","namespace":"prod","uid":"6f1c2d1e-0c5e-4f7a-9d55-3b1c9a7e2b10","resourceVersion":"1005"},"spec":{"containers":[{"name":"app","image":"registry.internal/web:1.4"}]},"status":{"phase":"Running"}}"#;

/// The Kubernetes route's request path.
pub const POD_PATH: &str = "/api/v1/namespaces/prod/pods/web-0";

/// nginx serving `BODY` on `port` (127.0.0.1, 127.0.0.2 and 127.0.0.3; `POD_BODY` under
/// `/api/`) and proxying to it on
/// `proxy_port` (127.0.0.1), one worker per core, logs off.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub proxy_port: u16,
}

impl Nginx {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir.join("tmp"))?;
        let (port, proxy_port) = (nhi_tests::free_port(), nhi_tests::free_port());
        let conf = dir.join("nginx.conf");
        let tmp = dir.join("tmp");
        let tmp = tmp.display();
        fs::write(
            &conf,
            format!(
                r#"user root;
worker_processes auto;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    upstream api {{ server 127.0.0.1:{port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.2:{port};
        listen 127.0.0.3:{port};
        location / {{
            default_type application/json;
            return 200 '{BODY}';
        }}
        location /api/ {{
            default_type application/json;
            return 200 '{POD_BODY}';
        }}
    }}
    server {{
        listen 127.0.0.1:{proxy_port};
        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
                dir = dir.display(),
            ),
        )?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (apt install nginx)")?;
        let mut this = Self {
            child,
            port,
            proxy_port,
        };
        wait_listening(&mut this.child, "nginx", &[port, proxy_port], || {
            fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        })?;
        Ok(this)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT would wait for keep-alive clients; the runs are over: SIGTERM.
        terminate(&mut self.child);
    }
}

/// One measurement: requests (or calls) per second, mean and p99 latency (us); the AWS
/// rows use it too.
#[derive(Clone, Copy)]
pub(crate) struct Run {
    pub per_sec: f64,
    pub mean_us: f64,
    pub p99_us: f64,
}

pub struct HttpBench<'a> {
    pub nginx: &'a Nginx,
    pub client_bin: &'a Path,
    pub direct_cg: &'a TestCgroup,
    pub agent_cg: &'a TestCgroup,
    pub runs: usize,
    pub seconds: u64,
}

impl HttpBench<'_> {
    /// Runs every route at -c 1 and -c 16, prints the table and returns each route's
    /// ratio to direct (requests/s).
    pub fn run(&self) -> anyhow::Result<Vec<Reported>> {
        let port = self.nginx.port;
        // (label, cgroup, address, path)
        let users = "/api/users/42";
        let routes: [(&str, &TestCgroup, String, &str); 5] = [
            ("direct", self.direct_cg, format!("127.0.0.1:{port}"), users),
            (
                "agent tcp",
                self.agent_cg,
                format!("127.0.0.2:{port}"),
                users,
            ),
            (
                "agent http",
                self.agent_cg,
                format!("127.0.0.1:{port}"),
                users,
            ),
            (
                "agent kubernetes",
                self.agent_cg,
                format!("127.0.0.3:{port}"),
                POD_PATH,
            ),
            (
                "nginx proxy",
                self.direct_cg,
                format!("127.0.0.1:{}", self.nginx.proxy_port),
                users,
            ),
        ];
        println!(
            "\nHTTP: small JSON GETs ({} B) over keep-alive, {} s per run, {} interleaved runs, medians",
            BODY.len(),
            self.seconds,
            self.runs
        );
        println!(
            "{:<26} {:>12} {:>8} {:>10} {:>10}",
            "", "requests/s", "ratio", "mean us", "p99 us"
        );
        let mut reported = Vec::new();
        for conns in [1u64, 16] {
            let mut results: Vec<Vec<Run>> = vec![Vec::new(); routes.len()];
            for _ in 0..self.runs {
                for (i, (_, cg, addr, path)) in routes.iter().enumerate() {
                    results[i].push(self.one(cg, addr, path, conns)?);
                }
            }
            let medians: Vec<Run> = results.iter().map(|r| median_run(r)).collect();
            let direct = medians[0];
            for ((label, _, _, _), m) in routes.iter().zip(&medians) {
                println!(
                    "{:<26} {:>12.0} {:>7.2}x {:>10.1} {:>10.0}",
                    format!("-c {conns:<2} {label}"),
                    m.per_sec,
                    m.per_sec / direct.per_sec,
                    m.mean_us,
                    m.p99_us
                );
            }
            for ((label, _, _, _), m) in routes.iter().zip(&medians).skip(1) {
                let yardstick = if *label == "nginx proxy" {
                    " (yardstick)"
                } else {
                    ""
                };
                reported.push(Reported {
                    what: format!("-c {conns} {label}{yardstick}"),
                    ratio: m.per_sec / direct.per_sec,
                });
            }
        }
        Ok(reported)
    }

    fn one(&self, cg: &TestCgroup, addr: &str, path: &str, conns: u64) -> anyhow::Result<Run> {
        let out = cg
            .command(self.client_bin)
            .args(["http-get", addr, "--path", path, "--host", "api.internal"])
            .args(["--conns", &conns.to_string()])
            .args(["--seconds", &self.seconds.to_string()])
            .output()
            .context("running nhi-testclient http-get")?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("client said: {}", String::from_utf8_lossy(&out.stdout)))?;
        if let Some(e) = v.get("error") {
            bail!("http-get {addr} -c {conns}: {e}");
        }
        let f = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
        Ok(Run {
            per_sec: f("per_sec")?,
            mean_us: f("mean_us")?,
            p99_us: f("p99_us")?,
        })
    }
}

/// The run with the median rate (its latencies with it).
pub(crate) fn median_run(runs: &[Run]) -> Run {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    sorted[sorted.len() / 2]
}
