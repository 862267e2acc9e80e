//! The Redis part of `cargo xtask bench`: `redis-benchmark -t get,set -P 16` against a
//! real `redis-server` (`nhi_tests::redis::RedisServer`, on a loopback port, requiring a
//! password), two ways: directly, with the ACL user's password, and through the agent as
//! a `redis` target with no password (the agent authenticates, judges and journals each
//! command and reply). Runs interleaved, medians of requests per second, per command.

use anyhow::{bail, Context as _};
use nhi_tests::redis::{RedisServer, AGENT_PASSWORD, AGENT_USER};
use nhi_tests::TestCgroup;

use crate::bench_targets::Reported;

pub struct RedisBench<'a> {
    pub server: &'a RedisServer,
    pub direct_cg: &'a TestCgroup,
    pub agent_cg: &'a TestCgroup,
    pub runs: usize,
    pub requests: u64,
}

/// The agent's `[[target]]` and `[[policy]]` for the bench's server: its credential
/// (written to `password_file`), a rule the bench's commands never meet.
pub fn config(server: &RedisServer, password_file: &std::path::Path) -> String {
    format!(
        r#"
[[target]]
name = "redis"
address = "127.0.0.1:{port}"
protocol = "redis"
password_file = "{pw}"
user = "{AGENT_USER}"

[[policy]]
name = "bench-redis"
workload = "*"
target = "redis"
mode = "enforce"
default = "allow"

[[policy.rule]]
name = "no-admin"
verdict = "deny"
commands = ["FLUSHALL", "FLUSHDB", "CONFIG", "EVAL*"]
"#,
        port = server.port,
        pw = password_file.display(),
    )
}

impl RedisBench<'_> {
    /// Prints the figures and returns the agent's ratios to direct.
    pub fn run(&self) -> anyhow::Result<Vec<Reported>> {
        println!(
            "\nRedis: redis-benchmark -t get,set -P 16 -c 50 -n {} against redis-server on loopback, {} interleaved runs, medians;\n\
             direct: the ACL user's password; agent: no password, the agent authenticates",
            self.requests, self.runs
        );
        let (mut direct, mut agent) = (Vec::new(), Vec::new());
        for _ in 0..self.runs {
            direct.push(self.once(self.direct_cg, true)?);
            agent.push(self.once(self.agent_cg, false)?);
        }
        let mut reported = Vec::new();
        for (i, test) in ["SET", "GET"].iter().enumerate() {
            let d = median(direct.iter().map(|r: &[f64; 2]| r[i]).collect());
            let a = median(agent.iter().map(|r: &[f64; 2]| r[i]).collect());
            println!(
                "{test} -P 16:   direct {d:>10.0} req/s   agent {a:>10.0} req/s   ratio {:.2}x",
                a / d
            );
            reported.push(Reported {
                what: format!("redis-benchmark {test} -P 16, agent redis"),
                ratio: a / d,
            });
        }
        Ok(reported)
    }

    /// Requests per second of SET and GET.
    fn once(&self, cg: &TestCgroup, with_password: bool) -> anyhow::Result<[f64; 2]> {
        let mut cmd = cg.command("redis-benchmark");
        cmd.args(["-h", "127.0.0.1", "-p", &self.server.port.to_string()])
            .args(["-t", "set,get", "-P", "16", "-c", "50", "-q", "--csv"])
            .args(["-n", &self.requests.to_string()]);
        if with_password {
            cmd.args(["--user", AGENT_USER, "-a", AGENT_PASSWORD]);
        }
        let out = cmd.output().context("running redis-benchmark")?;
        if !out.status.success() {
            bail!("redis-benchmark: {}", String::from_utf8_lossy(&out.stderr));
        }
        parse_csv(&String::from_utf8_lossy(&out.stdout))
    }
}

/// `"SET","123456.78",...` lines: the requests per second of SET and GET.
fn parse_csv(text: &str) -> anyhow::Result<[f64; 2]> {
    let mut found = [f64::NAN; 2];
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        let slot = match fields.first() {
            Some(&"SET") => 0,
            Some(&"GET") => 1,
            _ => continue,
        };
        found[slot] = fields
            .get(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("redis-benchmark line {line:?}"))?;
    }
    if found.iter().any(|v| v.is_nan()) {
        bail!("redis-benchmark printed no SET and GET figures: {text}");
    }
    Ok(found)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_figures() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"250000.00\",\"1.2\"\n\"GET\",\"312500.50\",\"0.9\"\n";
        assert_eq!(super::parse_csv(csv).unwrap(), [250000.0, 312500.5]);
        assert!(super::parse_csv("\"SET\",\"1\"\n").is_err());
    }
}
