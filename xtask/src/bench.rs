//! `cargo xtask bench`: figures, not assertions. Every figure through the agent is
//! paired with the same measurement taken directly in the same run (runs interleaved,
//! medians reported), and printed as a ratio: these machines are noisy.
//!
//! The opaque relay figures (bulk throughput to a sink, connection rate and set-up time
//! against an echo server) are taken directly, through the agent as a `tcp` target, and
//! through a bare proxy (`nhi-testclient bare-proxy`: a minimal tokio proxy with nothing
//! of the agent's, no eBPF, no journal, no log), the yardstick of what any userspace
//! proxy costs on this machine: bulk through it twice, copying (tokio
//! `copy_bidirectional`, 64 KiB buffers) and with splice(2) (the agent's bulk path), the
//! connection figures copying. The clients of direct and bare proxy runs are in the
//! direct cgroup, the agent's in the intercepted one; all runs interleaved.
//!
//! The PostgreSQL part runs pgbench -S five ways against one server: directly, through
//! pgbouncer (a well-known proxy, as a yardstick), through the bare proxy (copying),
//! through the agent as an opaque `tcp` target, and through the agent as a `postgres`
//! target (statements decoded, judged by a policy, results run through a mask, every
//! statement journaled before it is forwarded). Two targets for one server need two
//! addresses, so the server also listens on 127.0.0.2: the `tcp` target is
//! 127.0.0.2:port, the `postgres` one 127.0.0.1:port; the bare proxy listens on
//! 127.0.0.3. Then the agent is restarted with `journal_fsync = "each"` and the
//! `postgres` case is measured again against a fresh direct baseline. The HTTP part is
//! `bench_http`, the AWS part (boto3 against moto, directly and through an `aws` target)
//! `bench_aws`, the SSH part (OpenSSH against sshd, directly and through an `ssh`
//! target) `bench_ssh`, the MySQL part (sysbench oltp_read_only against MariaDB,
//! directly and through a `mysql` target) `bench_mysql`, the agent's memory (idle, and with N idle connections)
//! `bench_memory`. Each phase
//! records its figures in [`Figures`] as it goes; `bench_targets` prints them at the end
//! beside issue 16's targets, each `met` or `NOT met` (never an error), the opaque `tcp`
//! ones with what the bare proxy reached in the same run beside them.
use std::{
    fs,
    io::BufRead as _,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nhi_tests::TestCgroup;
use serde_json::Value;

use crate::{
    bench_targets::{Figures, Pair, PgCase, PgRow, Via},
    setup,
    util::{self, run},
};

#[allow(clippy::too_many_arguments)]
pub fn bench(
    bytes: u64,
    conns: u64,
    runs: usize,
    pg_seconds: u64,
    http_seconds: u64,
    aws_calls: u64,
    ssh_conns: u64,
    ssh_bytes: u64,
    evidence_events: u64,
    idle_conns: u64,
    redis_requests: u64,
) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("the benchmark attaches eBPF programs and creates cgroups: run it as root");
    }
    setup::setup()?;
    run(Command::new(util::cargo()).args([
        "build",
        "--release",
        "-p",
        "nhi-agent",
        "-p",
        "nhi-tests",
        "--bins",
    ]))?;
    let root = util::root();
    // NHI_BENCH_AGENT: another build of the agent (an A/B of two commits, each run of
    // the bench against the same servers and clients).
    let agent_bin = std::env::var_os("NHI_BENCH_AGENT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/nhi-agent"));
    let client_bin = root.join("target/release/nhi-testclient");

    // The harness appends conf lines and the last setting wins: 127.0.0.2 gives the
    // opaque `tcp` target an address of its own on the same server.
    let pg = nhi_tests::PgServer::start_with(&["listen_addresses = '127.0.0.1,127.0.0.2,::1'"]);
    // The test harness's loopback servers: a sink for bulk, an echo for round trips.
    let sink = nhi_tests::EchoServer::start_sink("127.0.0.2:0").addr;
    let echo = nhi_tests::EchoServer::start("127.0.0.2:0").addr;
    let base = format!("nhi-bench-{}", std::process::id());
    // Removed (with anything left in them) when the bench ends.
    let parent = TestCgroup::create(&base);
    let direct_cg = parent.child("direct");
    let agent_cg = parent.child("agent");
    let work = TempDir::create(std::env::temp_dir().join(&base))?;
    let nginx = crate::bench_http::Nginx::start(&work.path().join("nginx"))?;
    let aws = match aws_calls {
        0 => None,
        _ => crate::bench_aws::AwsServer::start(&work.path().join("aws"))?,
    };
    if aws_calls > 0 && aws.is_none() {
        println!("(no AWS figures: moto is not in target/venv; run `cargo xtask setup`)");
    }
    let sshd = match ssh_conns {
        0 => None,
        _ => nhi_tests::ssh::Sshd::bin().map(|_| nhi_tests::ssh::Sshd::start()),
    };
    if ssh_conns > 0 && sshd.is_none() {
        println!("(no SSH figures: sshd is not installed; run `cargo xtask setup`)");
    }
    // MariaDB for the MySQL figures (`bench_mysql`), timed like pgbench (`--pg-seconds`).
    let mariadb = (pg_seconds > 0 && nhi_tests::mysql::MariaDb::available())
        .then(nhi_tests::mysql::MariaDb::start);
    if pg_seconds > 0 && mariadb.is_none() {
        println!("(no MySQL figures: mariadb-server is not installed; run `cargo xtask setup`)");
    }
    let redis = match redis_requests {
        0 => None,
        _ => nhi_tests::redis::RedisServer::bin().map(|_| nhi_tests::redis::RedisServer::start()),
    };
    if redis_requests > 0 && redis.is_none() {
        println!("(no Redis figures: redis-server is not installed; run `cargo xtask setup`)");
    }
    let pins = PathBuf::from("/sys/fs/bpf").join(&base);
    let journal = work.path().join("journal.db");
    // The Kubernetes target's credential: a file only root reads, as the agent requires.
    let kube_token = work.path().join("kube.token");
    fs::write(&kube_token, "bench-kube-token")?;
    fs::set_permissions(
        &kube_token,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let config = |fsync_each: bool| {
        BenchConfig {
            journal: &journal,
            listen_port: nhi_tests::free_port(),
            pins: &pins,
            cgroup: &format!("{base}/agent"),
            sink: &sink.to_string(),
            echo: &echo.to_string(),
            pg_port: pg.port,
            http_port: nginx.port,
            kube_token: &kube_token,
            aws: aws.as_ref().map(|a| a.config()),
            ssh: sshd.as_ref().map(crate::bench_ssh::config),
            mysql: mariadb.as_ref().map(crate::bench_mysql::config),
            redis: redis.as_ref().map(|r| {
                crate::bench_redis::config(
                    r,
                    &nhi_tests::redis::RedisServer::password_file(work.path()),
                )
            }),
            fsync_each,
            // The default (4096, three quarters of it per workload) would refuse some of
            // the idle connections of the memory figure.
            max_connections: 4096.max(idle_conns + 1024),
        }
        .render()
    };
    let config_group = work.path().join("bench.toml");
    fs::write(&config_group, config(false))?;
    let mut agent = AgentProcess::start(
        &agent_bin,
        &config_group,
        &work.path().join("agent.log"),
        &pins,
    )?;

    let client = |cg: &TestCgroup, args: &[String]| -> anyhow::Result<Value> {
        let out = cg
            .command(&client_bin)
            .args(args)
            .output()
            .context("running nhi-testclient")?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("client said: {}", String::from_utf8_lossy(&out.stdout)))?;
        if let Some(e) = v.get("error") {
            bail!("client failed: {e}");
        }
        Ok(v)
    };

    println!(
        "nhi-agent bench: {runs} interleaved runs each, medians; release build; 'direct' = same client \
         in a cgroup that is not intercepted;\n'bare proxy' = nhi-testclient bare-proxy (a minimal tokio \
         proxy: no eBPF, no journal), what any userspace proxy costs on this machine\n"
    );
    let mut figures = Figures {
        bulk_bytes: bytes,
        ..Figures::default()
    };
    figures.memory = Some(crate::bench_memory::measure(
        agent.pid().context("the agent's pid")?,
        &client_bin,
        &agent_cg,
        echo,
        idle_conns,
    )?);
    println!();
    let bulk_args = |to: SocketAddr| {
        vec![
            "bulk".to_string(),
            to.to_string(),
            "--bytes".into(),
            bytes.to_string(),
        ]
    };
    let rate_args = |to: SocketAddr| {
        vec![
            "connect-rate".to_string(),
            to.to_string(),
            "--conns".into(),
            conns.to_string(),
        ]
    };
    // The yardsticks: bulk to the sink copying and splicing, round trips to the echo
    // server copying.
    let bare_copy = BareProxy::start(&client_bin, sink, false)?;
    let bare_splice = BareProxy::start(&client_bin, sink, true)?;
    let bare_echo = BareProxy::start(&client_bin, echo, false)?;
    let mut bulk = Runs::default();
    let mut bulk_copy = Vec::new();
    let mut rate = Runs::default();
    for _ in 0..runs {
        bulk.direct.push(client(&direct_cg, &bulk_args(sink))?);
        bulk.agent.push(client(&agent_cg, &bulk_args(sink))?);
        bulk.bare
            .push(client(&direct_cg, &bulk_args(bare_splice.addr))?);
        bulk_copy.push(client(&direct_cg, &bulk_args(bare_copy.addr))?);
        rate.direct.push(client(&direct_cg, &rate_args(echo))?);
        rate.agent.push(client(&agent_cg, &rate_args(echo))?);
        rate.bare
            .push(client(&direct_cg, &rate_args(bare_echo.addr))?);
    }
    drop((bare_copy, bare_splice, bare_echo));

    let (d, a, b) = bulk.medians("mib_per_sec");
    let c = median_of(&bulk_copy, "mib_per_sec");
    figures.bulk = Some(Pair {
        direct: d,
        agent: a,
    });
    figures.bare.bulk_splice = Some(b);
    figures.bare.bulk_copy = Some(c);
    println!(
        "relay throughput, {} MiB one way:  direct {d:>9.0} MiB/s   agent {a:>9.0} MiB/s   ratio {:.2}x   \
         bare proxy: splice {b:.0} MiB/s ratio {:.2}x, copy {c:.0} MiB/s ratio {:.2}x",
        bytes >> 20,
        a / d,
        b / d,
        c / d
    );
    let (d, a, b) = rate.medians("per_sec");
    figures.rate = Some(Pair {
        direct: d,
        agent: a,
    });
    figures.bare.rate = Some(b);
    println!(
        "connection rate (connect + 1-byte echo, sequential, {conns}): direct {d:>7.0}/s   agent {a:>7.0}/s   ratio {:.2}x   \
         bare proxy {b:.0}/s ratio {:.2}x",
        a / d,
        b / d
    );
    let (d, a, b) = rate.medians("connect_median_us");
    println!(
        "connect() median:                 direct {d:>7.1} us   agent {a:>7.1} us   overhead {:+.1} us   \
         bare proxy {b:.1} us overhead {:+.1} us",
        a - d,
        b - d
    );
    let (d, a, b) = rate.medians("setup_median_us");
    let (dp, ap, bp) = rate.medians("setup_p99_us");
    figures.setup_median = Some(Pair {
        direct: d,
        agent: a,
    });
    figures.setup_p99 = Some(Pair {
        direct: dp,
        agent: ap,
    });
    figures.bare.setup_median = Some(b);
    figures.bare.setup_p99 = Some(bp);
    println!(
        "setup to first echoed byte median: direct {d:>7.1} us   agent {a:>7.1} us   overhead {:+.1} us (p99 {dp:.0} vs {ap:.0} us)   \
         bare proxy {b:.1} us overhead {:+.1} us (p99 {bp:.0} us)",
        a - d,
        b - d
    );

    if http_seconds > 0 {
        figures.http = Some(
            crate::bench_http::HttpBench {
                nginx: &nginx,
                client_bin: &client_bin,
                direct_cg: &direct_cg,
                agent_cg: &agent_cg,
                runs,
                seconds: http_seconds,
            }
            .run()?,
        );
    }

    if let Some(server) = &aws {
        let home = work.path().join("aws-home");
        fs::create_dir_all(&home)?;
        figures.aws = Some(
            crate::bench_aws::AwsBench {
                server,
                // The agent's CA, in its state directory (the journal's).
                ca: &work.path().join("tls/ca.crt"),
                home: &home,
                direct_cg: &direct_cg,
                agent_cg: &agent_cg,
                runs,
                calls: aws_calls,
            }
            .run()?,
        );
    }

    if let Some(sshd) = &sshd {
        figures.ssh = Some(
            crate::bench_ssh::SshBench {
                sshd,
                agent_bin: &agent_bin,
                config: &config_group,
                work: work.path(),
                direct_cg: &direct_cg,
                agent_cg: &agent_cg,
                runs,
                conns: ssh_conns,
                bytes: ssh_bytes,
            }
            .run()?,
        );
    }

    if let Some(db) = &mariadb {
        figures.mysql = Some(
            crate::bench_mysql::MysqlBench {
                db,
                direct_cg: &direct_cg,
                agent_cg: &agent_cg,
                runs,
                seconds: pg_seconds,
            }
            .run()?,
        );
    }

    if let Some(server) = &redis {
        figures.redis = Some(
            crate::bench_redis::RedisBench {
                server,
                direct_cg: &direct_cg,
                agent_cg: &agent_cg,
                runs,
                requests: redis_requests,
            }
            .run()?,
        );
    }

    if pg_seconds > 0 {
        let bench = PgBench {
            pg: &pg,
            client_bin: &client_bin,
            direct_cg: &direct_cg,
            agent_cg: &agent_cg,
            runs,
            seconds: pg_seconds,
            work: work.path(),
        };
        bench.prepare()?;
        let statements_before = count_statements(&journal);
        let (cases, sql_transactions) = bench.phase_group()?;
        figures.pg = Some(cases);
        // The journal is complete only once the agent has stopped (its writer drains
        // the pre-log into SQLite on the way out).
        agent.stop();
        let statements = count_statements(&journal);
        print_statements(
            "journal_fsync = \"group\"",
            statements_before,
            statements,
            sql_transactions,
        );

        let config_each = work.path().join("bench-fsync-each.toml");
        fs::write(&config_each, config(true))?;
        agent = AgentProcess::start(
            &agent_bin,
            &config_each,
            &work.path().join("agent-fsync-each.log"),
            &pins,
        )?;
        let (cases, sql_transactions) = bench.phase_fsync_each()?;
        figures.pg_fsync_each = Some(cases);
        agent.stop();
        print_statements(
            "journal_fsync = \"each\"",
            statements,
            count_statements(&journal),
            sql_transactions,
        );
    }

    // The journal directory: the live file and the segments it rotated into.
    let sessions = Command::new(&agent_bin)
        .args(["sessions", "--journal"])
        .arg(work.path())
        .arg("--json")
        .output()?;
    let journaled = String::from_utf8_lossy(&sessions.stdout).lines().count();
    println!("\njournaled sessions during the run: {journaled}");

    agent.stop();
    if evidence_events > 0 {
        crate::bench_evidence::bench(evidence_events, runs, work.path())?;
    }
    crate::bench_targets::print(&figures);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median of one figure of the clients' JSON answers.
fn median_of(runs: &[Value], key: &str) -> f64 {
    median(runs.iter().filter_map(|v| v[key].as_f64()).collect())
}

/// The clients' answers of one relay figure, per way.
#[derive(Default)]
struct Runs {
    direct: Vec<Value>,
    agent: Vec<Value>,
    bare: Vec<Value>,
}

impl Runs {
    /// Direct's, the agent's and the bare proxy's medians of `key`.
    fn medians(&self, key: &str) -> (f64, f64, f64) {
        (
            median_of(&self.direct, key),
            median_of(&self.agent, key),
            median_of(&self.bare, key),
        )
    }
}

/// `nhi-testclient bare-proxy` on [`BARE_HOST`] (a port of its own choosing), relaying to
/// `to`: the yardstick for the agent's opaque relay. Started outside the bench's cgroups,
/// as the agent and pgbouncer are. Stopped on drop.
struct BareProxy {
    child: Child,
    addr: SocketAddr,
}

impl BareProxy {
    fn start(client_bin: &Path, to: SocketAddr, splice: bool) -> anyhow::Result<Self> {
        let mut cmd = Command::new(client_bin);
        cmd.args(["bare-proxy", "--listen", &format!("{BARE_HOST}:0"), "--to"])
            .arg(to.to_string());
        if splice {
            cmd.arg("--splice");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nhi-testclient bare-proxy")?;
        // Its first line: where it listens (or, if it could not, why).
        let listening = child
            .stdout
            .take()
            .context("the bare proxy's stdout")
            .and_then(|out| {
                let mut line = String::new();
                std::io::BufReader::new(out).read_line(&mut line)?;
                serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["listen"].as_str()?.parse().ok())
                    .with_context(|| format!("bare proxy to {to} said: {line:?}"))
            });
        match listening {
            Ok(addr) => Ok(Self { child, addr }),
            Err(e) => {
                terminate(&mut child);
                Err(e)
            }
        }
    }
}

impl Drop for BareProxy {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// The bench's agent config: `tcp` targets for the relay figures and for PostgreSQL on
/// 127.0.0.2, a `postgres` target on 127.0.0.1 with a policy and a mask that pgbench's
/// statements and columns never trigger, so what is measured is the cost of decoding,
/// judging, scanning and journaling, not of refusing.
struct BenchConfig<'a> {
    journal: &'a Path,
    listen_port: u16,
    pins: &'a Path,
    cgroup: &'a str,
    sink: &'a str,
    echo: &'a str,
    pg_port: u16,
    http_port: u16,
    /// The Kubernetes target's token file (0600).
    kube_token: &'a Path,
    /// The AWS target and its policy (`bench_aws`), when moto runs.
    aws: Option<String>,
    /// The SSH target and its policy (`bench_ssh`), when sshd runs.
    ssh: Option<String>,
    /// The MySQL target and its policy (`bench_mysql`), when MariaDB runs.
    mysql: Option<String>,
    /// The Redis target and its policy (`bench_redis`), when redis-server runs.
    redis: Option<String>,
    fsync_each: bool,
    /// `max_connections` and `max_connections_per_workload` (one workload holds every
    /// connection of the bench).
    max_connections: u64,
}

impl BenchConfig<'_> {
    fn render(&self) -> String {
        let fsync = if self.fsync_each {
            "journal_fsync = \"each\"\n"
        } else {
            ""
        };
        format!(
            r#"[agent]
mode = "enforce"
journal = "{journal}"
listen_port = {listen_port}
bpffs = "{pins}"
approvals_socket = "{approvals}"
max_connections = {max_connections}
max_connections_per_workload = {max_connections}
{fsync}
[[workload]]
name = "bench"
cgroup = "{cgroup}"

[[target]]
name = "sink"
address = "{sink}"
protocol = "tcp"

[[target]]
name = "echo"
address = "{echo}"
protocol = "tcp"

[[target]]
name = "pg-tcp"
address = "127.0.0.2:{pg_port}"
protocol = "tcp"

[[target]]
name = "pg-sql"
address = "127.0.0.1:{pg_port}"
protocol = "postgres"

[[policy]]
name = "bench"
workload = "*"
target = "pg-sql"
mode = "enforce"
default = "allow"
unparsed = "deny"
record_results = "summary"

[[policy.rule]]
name = "no-drop"
verdict = "deny"
kinds = ["drop", "truncate"]

[[policy.rule]]
name = "no-unbounded-delete"
verdict = "deny"
kinds = ["delete", "update"]
without_where = true

[[policy.rule]]
name = "no-secrets"
verdict = "deny"
tables = ["secrets", "*.secrets"]

[[policy.rule]]
name = "no-file-access"
verdict = "deny"
functions = ["pg_read_file", "pg_read_binary_file", "lo_*"]

[[mask]]
name = "pii"
target = "pg-sql"
columns = ["email"]
detectors = ["email", "credit_card"]
strategy = "redact"

[[target]]
name = "http-tcp"
address = "127.0.0.2:{http_port}"
protocol = "tcp"

[[target]]
name = "http-api"
address = "127.0.0.1:{http_port}"
protocol = "http"

[[policy]]
name = "bench-http"
workload = "*"
target = "http-api"
mode = "enforce"
default = "allow"
record_results = "summary"

[[policy.rule]]
name = "no-admin-deletes"
verdict = "deny"
methods = ["DELETE"]
paths = ["/admin/**"]

[[policy.rule]]
name = "prod-keys"
verdict = "approve"
paths = ["/v1/*/keys"]
headers = {{ "x-env" = "prod*" }}

[[mask]]
name = "pii-http"
target = "http-api"
columns = ["email"]
detectors = ["email", "credit_card"]
strategy = "redact"

[[target]]
name = "kube-api"
address = "127.0.0.3:{http_port}"
protocol = "kubernetes"
tls = "disable"
client_tls = "refuse"
token_file = "{kube_token}"

[[policy]]
name = "bench-kube"
workload = "*"
target = "kube-api"
mode = "enforce"
default = "allow"
record_results = "summary"

[[policy.rule]]
name = "no-deletes-in-prod"
verdict = "deny"
verbs = ["delete", "deletecollection"]
resources = ["apps/deployments", "secrets"]
namespaces = ["prod"]

[[policy.rule]]
name = "exec-needs-approval"
verdict = "approve"
subresources = ["exec", "attach", "portforward"]
{aws}{ssh}{mysql}{redis}"#,
            journal = self.journal.display(),
            listen_port = self.listen_port,
            pins = self.pins.display(),
            // Its own socket: another agent on the host (a test's, the installed
            // service) may hold the default one.
            approvals = self.journal.with_file_name("approvals.sock").display(),
            cgroup = self.cgroup,
            sink = self.sink,
            echo = self.echo,
            pg_port = self.pg_port,
            http_port = self.http_port,
            kube_token = self.kube_token.display(),
            aws = self.aws.as_deref().unwrap_or(""),
            ssh = self.ssh.as_deref().unwrap_or(""),
            mysql = self.mysql.as_deref().unwrap_or(""),
            redis = self.redis.as_deref().unwrap_or(""),
            max_connections = self.max_connections,
        )
    }
}

/// A directory removed (with its contents) on drop, so an error path cleans up too.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn create(path: PathBuf) -> anyhow::Result<Self> {
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `nhi-agent run --detach-on-exit`, stopped (SIGTERM, then its pins removed) by
/// [`AgentProcess::stop`] or on drop.
pub(crate) struct AgentProcess {
    child: Option<Child>,
    pins: PathBuf,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts the agent with warnings logged to `log` and waits until its proxy answers.
    pub(crate) fn start(
        bin: &Path,
        config: &Path,
        log: &Path,
        pins: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_logging(bin, config, log, pins, "warn,nhi_agent=warn")
    }

    /// Like [`AgentProcess::start`], with an `NHI_LOG` filter.
    pub(crate) fn start_logging(
        bin: &Path,
        config: &Path,
        log: &Path,
        pins: &Path,
        filter: &str,
    ) -> anyhow::Result<Self> {
        let log_file = fs::File::create(log)?;
        let child = Command::new(bin)
            .args(["run", "--detach-on-exit", "--config"])
            .arg(config)
            .env("NHI_LOG", filter)
            .env("NO_COLOR", "1")
            .stderr(log_file)
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut this = Self {
            child: Some(child),
            pins: pins.to_path_buf(),
            log: log.to_path_buf(),
        };
        // Ready when the listener answers.
        let port = fs::read_to_string(config)?
            .lines()
            .find_map(|l| l.strip_prefix("listen_port = ").map(str::to_string))
            .context("listen_port")?
            .trim()
            .parse::<u16>()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = this
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                bail!("the agent exited ({status}):\n{}", this.log_text());
            }
            if Instant::now() > deadline {
                bail!("agent not ready after 30 s:\n{}", this.log_text());
            }
            thread::sleep(Duration::from_millis(50));
        }
        // The probe connection above is refused by the agent (not redirected); give
        // the kernel side a moment to finish attaching before measuring.
        thread::sleep(Duration::from_millis(200));
        Ok(this)
    }

    /// The agent's process id while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the agent logged so far.
    pub(crate) fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait for the exit (SIGKILL after 60 s), remove the pins. Idempotent.
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_dir_all(&self.pins);
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where a pgbench client connects, and from which cgroup.
struct Route<'a> {
    label: &'static str,
    via: Via,
    cgroup: &'a TestCgroup,
    host: &'static str,
    port: u16,
}

/// One pgbench report, and the latency of each of its transactions (us, from its
/// per-transaction log).
#[derive(Debug, Clone, PartialEq)]
struct PgRun {
    tps: f64,
    latency_ms: f64,
    transactions: u64,
    latencies_us: Vec<u32>,
}

/// Where the bare proxy listens: a loopback address no server of the bench uses.
const BARE_HOST: &str = "127.0.0.3";

/// The pgbench modes measured: clients x query protocol.
const PG_CASES: [(u32, &str); 4] = [
    (1, "simple"),
    (1, "prepared"),
    (16, "simple"),
    (16, "prepared"),
];

/// pgbench -S (read-only, one indexed SELECT per transaction), -c 1 and -c 16, simple
/// and prepared protocol.
struct PgBench<'a> {
    pg: &'a nhi_tests::PgServer,
    /// nhi-testclient, for the bare proxy.
    client_bin: &'a Path,
    direct_cg: &'a TestCgroup,
    agent_cg: &'a TestCgroup,
    runs: usize,
    seconds: u64,
    work: &'a Path,
}

impl PgBench<'_> {
    fn direct(&self) -> Route<'_> {
        Route {
            label: "direct",
            via: Via::Direct,
            cgroup: self.direct_cg,
            host: "127.0.0.1",
            port: self.pg.port,
        }
    }

    fn agent_postgres(&self, label: &'static str) -> Route<'_> {
        Route {
            label,
            via: Via::AgentPostgres,
            cgroup: self.agent_cg,
            host: "127.0.0.1",
            port: self.pg.port,
        }
    }

    /// Creates pgbench's tables (scale 10) directly; vacuumed as part of `-i`.
    fn prepare(&self) -> anyhow::Result<()> {
        self.pgbench(&self.direct(), &["-i", "-s", "10", "-q"])?;
        Ok(())
    }

    fn pgbench(&self, route: &Route<'_>, args: &[&str]) -> anyhow::Result<String> {
        let out = route
            .cgroup
            .command("pgbench")
            .args([
                "-h",
                route.host,
                "-p",
                &route.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(args)
            .arg("postgres")
            .output()
            .context("running pgbench")?;
        if !out.status.success() {
            bail!(
                "pgbench {args:?} via {}: {}{}",
                route.label,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs every case `runs` times over `routes`, interleaved (route by route within a
    /// repetition), and returns the runs per case and route.
    ///
    /// Each run writes pgbench's per-transaction log (`-l`: one line per transaction,
    /// its latency in us), read for the p50 and p99 and removed at once: the latency
    /// percentiles issue 16 asks for are not in pgbench's report. Writing it costs the
    /// client the same on every route.
    fn measure(&self, routes: &[Route<'_>]) -> anyhow::Result<Vec<Vec<Vec<PgRun>>>> {
        let t = self.seconds.to_string();
        let logs = self.work.join("pgbench-log");
        let prefix = logs.join("tx").display().to_string();
        let mut all = Vec::new();
        for (clients, mode) in PG_CASES {
            let c = clients.to_string();
            let j = clients.min(2).to_string();
            // -n: no vacuum before the run (it would also TRUNCATE pgbench_history, which
            // the policy refuses); `-i` has just vacuumed.
            let args = [
                "-n",
                "-S",
                "-M",
                mode,
                "-c",
                &c,
                "-j",
                &j,
                "-T",
                &t,
                "-l",
                "--log-prefix",
                &prefix,
            ];
            let mut per_route = vec![Vec::new(); routes.len()];
            for _ in 0..self.runs {
                for (i, route) in routes.iter().enumerate() {
                    let _ = fs::remove_dir_all(&logs);
                    fs::create_dir_all(&logs)?;
                    let mut run = parse_pgbench(&self.pgbench(route, &args)?)?;
                    run.latencies_us = read_pgbench_logs(&logs)?;
                    per_route[i].push(run);
                }
            }
            let _ = fs::remove_dir_all(&logs);
            all.push(per_route);
        }
        Ok(all)
    }

    /// Direct, pgbouncer, bare proxy, agent `tcp`, agent `postgres`; returns the figures
    /// and the transactions the `postgres` route ran (to set against the statements
    /// journaled).
    fn phase_group(&self) -> anyhow::Result<(Vec<PgCase>, u64)> {
        let bouncer = PgBouncer::start(&self.work.join("pgbouncer"), self.pg.port)?;
        let bare = BareProxy::start(
            self.client_bin,
            SocketAddr::from(([127, 0, 0, 1], self.pg.port)),
            false,
        )?;
        let routes = [
            self.direct(),
            Route {
                label: "pgbouncer (session pool)",
                via: Via::PgBouncer,
                cgroup: self.direct_cg,
                host: "127.0.0.1",
                port: bouncer.port,
            },
            Route {
                label: "bare proxy (tokio copy)",
                via: Via::BareProxy,
                cgroup: self.direct_cg,
                host: BARE_HOST,
                port: bare.addr.port(),
            },
            Route {
                label: "agent, protocol tcp",
                via: Via::AgentTcp,
                cgroup: self.agent_cg,
                host: "127.0.0.2",
                port: self.pg.port,
            },
            self.agent_postgres("agent, protocol postgres"),
        ];
        println!(
            "\npgbench -S -n (scale 10), {} s per run, median of {} interleaved runs; \
             ratio = tps / direct tps; +us/tx = mean latency minus direct's;\n\
             p50/p99 over every transaction of the runs (pgbench -l), added p99 = p99 minus direct's:",
            self.seconds, self.runs
        );
        let results = self.measure(&routes)?;
        drop((bouncer, bare));
        let cases = summarise(&routes, &results);
        print_table(&cases);
        let postgres = routes
            .iter()
            .position(|r| r.via == Via::AgentPostgres)
            .expect("a postgres route");
        let transactions = results
            .iter()
            .flat_map(|per_route| per_route[postgres].iter().map(|r| r.transactions))
            .sum();
        Ok((cases, transactions))
    }

    /// Direct and agent `postgres` with `journal_fsync = "each"` (the agent restarted).
    fn phase_fsync_each(&self) -> anyhow::Result<(Vec<PgCase>, u64)> {
        let routes = [
            self.direct(),
            self.agent_postgres("agent, postgres, fsync each"),
        ];
        println!(
            "\nagent restarted with journal_fsync = \"each\" (a statement is forwarded only once \
             its event is committed; commits are shared); direct measured again alongside:"
        );
        let results = self.measure(&routes)?;
        let cases = summarise(&routes, &results);
        print_table(&cases);
        let transactions = results
            .iter()
            .flat_map(|per_route| per_route[1].iter().map(|r| r.transactions))
            .sum();
        Ok((cases, transactions))
    }
}

/// The figures of each case: per route, the median tps and mean latency of its runs,
/// and the p50 and p99 over all their transactions.
fn summarise(routes: &[Route<'_>], results: &[Vec<Vec<PgRun>>]) -> Vec<PgCase> {
    PG_CASES
        .iter()
        .zip(results)
        .map(|(&(clients, mode), per_route)| PgCase {
            clients,
            mode,
            rows: routes
                .iter()
                .zip(per_route)
                .map(|(route, runs)| {
                    let mut all: Vec<u32> = runs
                        .iter()
                        .flat_map(|r| r.latencies_us.iter().copied())
                        .collect();
                    all.sort_unstable();
                    PgRow {
                        label: route.label,
                        via: route.via,
                        tps: median(runs.iter().map(|r| r.tps).collect()),
                        latency_ms: median(runs.iter().map(|r| r.latency_ms).collect()),
                        p50_us: percentile(&all, 50),
                        p99_us: percentile(&all, 99),
                    }
                })
                .collect(),
        })
        .collect()
}

/// The `p`th percentile of sorted values (NaN when there are none).
fn percentile(sorted: &[u32], p: usize) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => f64::from(sorted[(n * p / 100).min(n - 1)]),
    }
}

/// Prints one block per case: a line per route, the first row being the baseline.
fn print_table(cases: &[PgCase]) {
    let width = cases
        .iter()
        .flat_map(|c| c.rows.iter().map(|r| r.label.len()))
        .max()
        .unwrap_or(0);
    for case in cases {
        let base = &case.rows[0];
        for (i, row) in case.rows.iter().enumerate() {
            let name = if i == 0 {
                format!("-c {:>2} {:<8}", case.clients, case.mode)
            } else {
                String::new()
            };
            let versus = if i == 0 {
                String::new()
            } else {
                format!(
                    "   {:>5.2}x   {:>+6.0} us/tx   added p99 {:>+6.0} us",
                    row.tps / base.tps,
                    (row.latency_ms - base.latency_ms) * 1000.0,
                    row.p99_us - base.p99_us
                )
            };
            println!(
                "  {name:<17} {:<width$}  {:>8.0} tps  {:>7.3} ms  p50 {:>6.0} us  p99 {:>6.0} us{versus}",
                row.label, row.tps, row.latency_ms, row.p50_us, row.p99_us
            );
        }
    }
}

fn print_statements(phase: &str, before: Option<u64>, after: Option<u64>, transactions: u64) {
    match (before, after) {
        (Some(b), Some(a)) => println!(
            "statement events journaled with {phase}: {} (pgbench reported {transactions} \
             transactions through the postgres target; its start-up queries add a few)",
            a.saturating_sub(b)
        ),
        _ => println!(
            "statement events journaled with {phase}: unknown (sqlite3 could not read the journal)"
        ),
    }
}

/// `select count(*) from events where kind = 'statement'`, with the sqlite3 shell:
/// counting through `nhi-agent replay --json` session by session would take longer than
/// the runs. None when the journal does not exist yet or sqlite3 fails.
/// Statement events in the whole journal: the live file and every sealed segment next to
/// it (`segments/*.db`: the journal rotates by size during the run).
fn count_statements(journal: &Path) -> Option<u64> {
    let mut files = Vec::new();
    if journal.exists() {
        files.push(journal.to_path_buf());
    }
    if let Some(dir) = journal.parent() {
        if let Ok(entries) = fs::read_dir(dir.join("segments")) {
            files.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "db")),
            );
        }
    }
    let mut total = 0;
    for file in files {
        total += util::output(
            Command::new("sqlite3")
                .arg("-readonly")
                .arg(&file)
                .arg("select count(*) from events where kind = 'statement'"),
        )?
        .trim()
        .parse::<u64>()
        .ok()?;
    }
    Some(total)
}

/// pgbouncer on a free loopback port, in session pooling mode with `trust` auth, run as
/// the `postgres` user (it refuses to run as root), its config, pid file and log in
/// `dir`. Stopped on drop.
struct PgBouncer {
    child: Child,
    port: u16,
}

impl PgBouncer {
    fn start(dir: &Path, server_port: u16) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        let id = |flag: &str| -> anyhow::Result<u32> {
            util::output(Command::new("id").args([flag, "postgres"]))
                .context("no `postgres` user (apt install postgresql)")?
                .trim()
                .parse()
                .context("id output")
        };
        let (uid, gid) = (id("-u")?, id("-g")?);
        let port = nhi_tests::free_port();
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("userlist.txt");
        let log = dir.join("pgbouncer.log");
        // trust still looks the user up in auth_file; the password is not checked.
        fs::write(&users, "\"postgres\" \"\"\n")?;
        fs::write(
            &ini,
            format!(
                "[databases]\npostgres = host=127.0.0.1 port={server_port} dbname=postgres\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = session\n\
                 max_client_conn = 200\ndefault_pool_size = 40\n\
                 log_connections = 0\nlog_disconnections = 0\n\
                 logfile = {log}\npidfile = {pid}\n",
                users = users.display(),
                log = log.display(),
                pid = dir.join("pgbouncer.pid").display(),
            ),
        )?;
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(dir)
            .status()?;
        if !status.success() {
            bail!("chown {}: {status}", dir.display());
        }
        let child = Command::new("pgbouncer")
            .arg(&ini)
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pgbouncer (apt install pgbouncer)")?;
        let mut this = Self { child, port };
        wait_listening(&mut this.child, "pgbouncer", &[port], || {
            fs::read_to_string(&log).unwrap_or_default()
        })?;
        Ok(this)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // SIGTERM: immediate shutdown (the runs are over).
        terminate(&mut self.child);
    }
}

/// Waits (10 s at most) until a server the bench started listens on every port of
/// 127.0.0.1 in `ports`; an error with its `log` if it exits or does not.
pub(crate) fn wait_listening(
    child: &mut Child,
    what: &str,
    ports: &[u16],
    log: impl Fn() -> String,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for &port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("{what} exited ({status}):\n{}", log());
            }
            if Instant::now() > deadline {
                bail!("{what} not listening on {port} after 10 s:\n{}", log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Stops a server the bench started: SIGTERM, then SIGKILL after 10 s.
pub(crate) fn terminate(child: &mut Child) {
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Figures from pgbench's report.
fn parse_pgbench(report: &str) -> anyhow::Result<PgRun> {
    let number_after = |prefix: &str| -> Option<f64> {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let tps = number_after("tps = ").context("no tps in pgbench output")?;
    let latency_ms = number_after("latency average = ").context("no latency in pgbench output")?;
    let transactions = number_after("number of transactions actually processed: ")
        .context("no transaction count in pgbench output")?;
    Ok(PgRun {
        tps,
        latency_ms,
        transactions: transactions as u64,
        latencies_us: Vec::new(),
    })
}

/// Every transaction latency (us) in pgbench's per-transaction logs in `dir` (one file
/// per worker thread): the third field of each line. A failed or skipped transaction
/// says so in that field and is left out.
fn read_pgbench_logs(dir: &Path) -> anyhow::Result<Vec<u32>> {
    let mut latencies = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        latencies.extend(parse_pgbench_log(&text));
    }
    Ok(latencies)
}

fn parse_pgbench_log(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_report_is_parsed() {
        let report = "pgbench (15.8 (Debian 15.8-0+deb12u1))\n\
            transaction type: <builtin: select only>\n\
            number of transactions actually processed: 49254\n\
            number of failed transactions: 0 (0.000%)\n\
            latency average = 0.162 ms\n\
            initial connection time = 0.814 ms\n\
            tps = 24631.606110 (without initial connection time)\n";
        let run = parse_pgbench(report).expect("a complete report");
        assert_eq!(run.transactions, 49254);
        assert!((run.tps - 24631.606110).abs() < 1e-6, "{run:?}");
        assert!((run.latency_ms - 0.162).abs() < 1e-9, "{run:?}");
        assert!(parse_pgbench("tps = 1\n").is_err());
    }

    #[test]
    fn pgbench_log_latencies_are_the_third_field() {
        let log = "0 199 85 0 1718000000 123456\n\
            1 200 1203 0 1718000000 123999\n\
            0 200 failed 0 1718000001 000001\n\
            \n";
        assert_eq!(parse_pgbench_log(log).collect::<Vec<_>>(), vec![85, 1203]);
    }

    #[test]
    fn percentiles_of_sorted_latencies() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 51.0);
        assert_eq!(percentile(&v, 99), 100.0);
        assert_eq!(percentile(&[7], 99), 7.0);
        assert!(percentile(&[], 50).is_nan());
    }

    #[test]
    fn median_takes_the_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn bench_config_sets_fsync_only_when_asked() {
        let cfg = |fsync_each| {
            BenchConfig {
                journal: Path::new("/tmp/j.db"),
                listen_port: 15999,
                pins: Path::new("/sys/fs/bpf/x"),
                cgroup: "nhi-bench-1/agent",
                sink: "127.0.0.2:1",
                echo: "127.0.0.2:2",
                pg_port: 5433,
                http_port: 8088,
                kube_token: Path::new("/tmp/kube.token"),
                aws: None,
                ssh: None,
                mysql: None,
                redis: None,
                fsync_each,
                max_connections: 6024,
            }
            .render()
        };
        let (group, each) = (cfg(false), cfg(true));
        assert!(!group.contains("journal_fsync"));
        assert!(each.contains("journal_fsync = \"each\"\n"));
        for text in [&group, &each] {
            assert!(text.contains("address = \"127.0.0.2:5433\"\nprotocol = \"tcp\""));
            assert!(text.contains("address = \"127.0.0.1:5433\"\nprotocol = \"postgres\""));
            assert!(text.contains("listen_port = 15999\n"));
            assert!(text.contains("max_connections = 6024\nmax_connections_per_workload = 6024\n"));
            assert!(text.contains("approvals_socket = \"/tmp/approvals.sock\"\n"));
            assert!(text.contains("address = \"127.0.0.2:8088\"\nprotocol = \"tcp\""));
            assert!(text.contains("address = \"127.0.0.1:8088\"\nprotocol = \"http\""));
            assert!(text.contains(
                "address = \"127.0.0.3:8088\"\nprotocol = \"kubernetes\"\ntls = \"disable\""
            ));
            assert!(text.contains("token_file = \"/tmp/kube.token\"\n"));
            assert!(!text.contains("protocol = \"aws\""));
        }
        let aws = "\n[[target]]\nname = \"aws\"\nprotocol = \"aws\"\n";
        let with_aws = BenchConfig {
            journal: Path::new("/tmp/j.db"),
            listen_port: 15999,
            pins: Path::new("/sys/fs/bpf/x"),
            cgroup: "nhi-bench-1/agent",
            sink: "127.0.0.2:1",
            echo: "127.0.0.2:2",
            pg_port: 5433,
            http_port: 8088,
            kube_token: Path::new("/tmp/kube.token"),
            aws: Some(aws.to_string()),
            ssh: Some("\n[[target]]\nname = \"ssh\"\n".into()),
            mysql: None,
            redis: None,
            fsync_each: false,
            max_connections: 4096,
        }
        .render();
        assert!(
            with_aws.ends_with(&format!("{aws}\n[[target]]\nname = \"ssh\"\n")),
            "{with_aws}"
        );
    }
}
