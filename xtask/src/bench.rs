//! `cargo xtask bench`: figures, not assertions. Every figure through the agent is
//! paired with the same measurement taken directly in the same run (runs interleaved,
//! medians reported), and printed as a ratio: these machines are noisy.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nhi_tests::TestCgroup;
use serde_json::Value;

use crate::{
    setup,
    util::{self, run},
};

pub fn bench(bytes: u64, conns: u64, runs: usize, pg_seconds: u64) -> anyhow::Result<()> {
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
    let agent_bin = root.join("target/release/nhi-agent");
    let client_bin = root.join("target/release/nhi-testclient");

    // The test harness's loopback servers: a sink for bulk, an echo for round trips.
    let pg = nhi_tests::PgServer::start();
    let sink = nhi_tests::EchoServer::start_sink("127.0.0.2:0").addr;
    let echo = nhi_tests::EchoServer::start("127.0.0.2:0").addr;
    let base = format!("nhi-bench-{}", std::process::id());
    // Removed (with anything left in them) when the bench ends.
    let parent = TestCgroup::create(&base);
    let direct_cg = parent.child("direct");
    let agent_cg = parent.child("agent");
    let work = std::env::temp_dir().join(&base);
    fs::create_dir_all(&work)?;
    let pins = PathBuf::from("/sys/fs/bpf").join(&base);
    let port = nhi_tests::free_port();
    let config = work.join("bench.toml");
    fs::write(
        &config,
        format!(
            "[agent]\nmode = \"enforce\"\njournal = \"{}\"\nlisten_port = {port}\nbpffs = \"{}\"\n\
             max_connections = 4096\n\n[[workload]]\nname = \"bench\"\ncgroup = \"{base}/agent\"\n\n\
             [[target]]\nname = \"sink\"\naddress = \"{sink}\"\nprotocol = \"tcp\"\n\n\
             [[target]]\nname = \"echo\"\naddress = \"{echo}\"\nprotocol = \"tcp\"\n\n\
             [[target]]\nname = \"postgres\"\naddress = \"{pg}\"\nprotocol = \"tcp\"\n",
            work.join("journal.db").display(),
            pins.display(),
            pg = pg.addr(),
        ),
    )?;
    let mut agent = AgentProcess::start(&agent_bin, &config, &work.join("agent.log"), &pins)?;

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

    println!("nhi-agent bench: {runs} interleaved runs each, medians; release build; 'direct' = same client in a cgroup that is not intercepted\n");
    let bulk_args = vec![
        "bulk".to_string(),
        sink.to_string(),
        "--bytes".into(),
        bytes.to_string(),
    ];
    let rate_args = vec![
        "connect-rate".to_string(),
        echo.to_string(),
        "--conns".into(),
        conns.to_string(),
    ];
    let mut bulk = (Vec::new(), Vec::new());
    let mut rate = (Vec::new(), Vec::new());
    for _ in 0..runs {
        bulk.0.push(client(&direct_cg, &bulk_args)?);
        bulk.1.push(client(&agent_cg, &bulk_args)?);
        rate.0.push(client(&direct_cg, &rate_args)?);
        rate.1.push(client(&agent_cg, &rate_args)?);
    }
    let m = |v: &[Value], key: &str| median(v.iter().filter_map(|x| x[key].as_f64()).collect());

    let (d, a) = (m(&bulk.0, "mib_per_sec"), m(&bulk.1, "mib_per_sec"));
    println!(
        "relay throughput, {} MiB one way:  direct {d:>9.0} MiB/s   agent {a:>9.0} MiB/s   ratio {:.2}x",
        bytes >> 20,
        a / d
    );
    let (d, a) = (m(&rate.0, "per_sec"), m(&rate.1, "per_sec"));
    println!(
        "connection rate (connect + 1-byte echo, sequential, {conns}): direct {d:>7.0}/s   agent {a:>7.0}/s   ratio {:.2}x",
        a / d
    );
    let (d, a) = (
        m(&rate.0, "connect_median_us"),
        m(&rate.1, "connect_median_us"),
    );
    println!(
        "connect() median:                 direct {d:>7.1} us   agent {a:>7.1} us   overhead {:+.1} us",
        a - d
    );
    let (d, a) = (m(&rate.0, "setup_median_us"), m(&rate.1, "setup_median_us"));
    let (dp, ap) = (m(&rate.0, "setup_p99_us"), m(&rate.1, "setup_p99_us"));
    println!(
        "setup to first echoed byte median: direct {d:>7.1} us   agent {a:>7.1} us   overhead {:+.1} us (p99 {dp:.0} vs {ap:.0} us)",
        a - d
    );

    if pg_seconds > 0 {
        pgbench(&pg, &direct_cg, &agent_cg, runs, pg_seconds)?;
    }

    let sessions = Command::new(&agent_bin)
        .args(["sessions", "--journal"])
        .arg(work.join("journal.db"))
        .arg("--json")
        .output()?;
    let journaled = String::from_utf8_lossy(&sessions.stdout).lines().count();
    println!("\njournaled sessions during the run: {journaled}");

    agent.stop();
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

struct AgentProcess {
    child: Child,
    pins: PathBuf,
}

impl AgentProcess {
    fn start(bin: &Path, config: &Path, log: &Path, pins: &Path) -> anyhow::Result<Self> {
        let log_file = fs::File::create(log)?;
        let child = Command::new(bin)
            .args(["run", "--detach-on-exit", "--config"])
            .arg(config)
            .env("NHI_LOG", "warn,nhi_agent=warn")
            .stderr(log_file)
            .stdout(Stdio::null())
            .spawn()?;
        let this = Self {
            child,
            pins: pins.to_path_buf(),
        };
        // Ready when the listener answers.
        let port = fs::read_to_string(config)?
            .lines()
            .find_map(|l| l.strip_prefix("listen_port = ").map(str::to_string))
            .context("listen_port")?
            .parse::<u16>()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "agent not ready: {}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        // The probe connection above is refused by the agent (not redirected); give
        // the kernel side a moment to finish attaching before measuring.
        thread::sleep(Duration::from_millis(200));
        Ok(this)
    }

    fn stop(&mut self) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.pins);
    }
}

/// pgbench -S (read-only, one indexed SELECT per transaction) through the agent (opaque
/// tcp for now) and directly, -c 1 and -c 16, simple and prepared protocol.
fn pgbench(
    pg: &nhi_tests::PgServer,
    direct_cg: &TestCgroup,
    agent_cg: &TestCgroup,
    runs: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let port = pg.port.to_string();
    let pgbench = |cg: &TestCgroup, args: &[&str]| -> anyhow::Result<String> {
        let out = cg
            .command("pgbench")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(args)
            .arg("postgres")
            .output()
            .context("running pgbench")?;
        if !out.status.success() {
            bail!("pgbench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    pgbench(direct_cg, &["-i", "-s", "10", "-q"])?;
    println!("\npgbench -S, {seconds} s per run, median of {runs} (tps / mean latency):");
    for clients in [1u32, 16] {
        for mode in ["simple", "prepared"] {
            let c = clients.to_string();
            let j = clients.min(2).to_string();
            let t = seconds.to_string();
            let args = ["-S", "-M", mode, "-c", &c, "-j", &j, "-T", &t];
            let (mut d, mut a) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                d.push(parse_pgbench(&pgbench(direct_cg, &args)?)?);
                a.push(parse_pgbench(&pgbench(agent_cg, &args)?)?);
            }
            let tps = |v: &[(f64, f64)]| median(v.iter().map(|x| x.0).collect());
            let lat = |v: &[(f64, f64)]| median(v.iter().map(|x| x.1).collect());
            println!(
                "  -c {clients:>2} {mode:<8}  direct {:>8.0} tps {:>6.3} ms   agent (opaque tcp) {:>8.0} tps {:>6.3} ms   ratio {:.2}x",
                tps(&d),
                lat(&d),
                tps(&a),
                lat(&a),
                tps(&a) / tps(&d)
            );
        }
    }
    Ok(())
}

/// (tps, mean latency in ms) from pgbench's report.
fn parse_pgbench(report: &str) -> anyhow::Result<(f64, f64)> {
    let number_after = |prefix: &str| -> Option<f64> {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let tps = number_after("tps = ").context("no tps in pgbench output")?;
    let latency = number_after("latency average = ").context("no latency in pgbench output")?;
    Ok((tps, latency))
}
