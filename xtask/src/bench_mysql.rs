//! The MySQL part of `cargo xtask bench`: sysbench `oltp_read_only` (server-side
//! prepared statements: COM_STMT_PREPARE / EXECUTE, binary rows) against a real
//! MariaDB (`nhi_tests::mysql::MariaDb`, on a loopback port), directly and through the
//! agent as a `mysql` target that judges and journals every execute; runs interleaved,
//! medians, transactions per second at 1 and 8 threads.
use anyhow::{bail, Context as _};
use nhi_tests::mysql::MariaDb;
use nhi_tests::TestCgroup;

use crate::bench_targets::Reported;

const PASSWORD: &str = "bench-secret";

pub struct MysqlBench<'a> {
    pub db: &'a MariaDb,
    pub direct_cg: &'a TestCgroup,
    pub agent_cg: &'a TestCgroup,
    pub runs: usize,
    pub seconds: u64,
}

/// The agent's `[[target]]` and `[[policy]]` for the bench's MariaDB: a rule the
/// bench's statements never meet, results summarised.
pub fn config(db: &MariaDb) -> String {
    format!(
        r#"
[[target]]
name = "mysql"
address = "127.0.0.1:{port}"
protocol = "mysql"

[[policy]]
name = "bench-mysql"
workload = "*"
target = "mysql"
mode = "enforce"
default = "allow"
record_results = "summary"

[[policy.rule]]
name = "no-drop"
verdict = "deny"
kinds = ["drop", "truncate"]
"#,
        port = db.port
    )
}

impl MysqlBench<'_> {
    /// Prints the figures and returns the agent's ratios to direct.
    pub fn run(&self) -> anyhow::Result<Vec<Reported>> {
        self.db.sql(&format!(
            "create database if not exists sbtest;
             create user if not exists 'bench'@'%' identified by '{PASSWORD}';
             grant all on sbtest.* to 'bench'@'%';"
        ));
        // Loaded directly (its CREATE TABLE carries an executable comment, which the
        // policy would see as opaque).
        self.sysbench(self.direct_cg, "prepare", 1)?;
        println!(
            "\nMySQL: sysbench oltp_read_only (prepared statements) against MariaDB on loopback, \
             {} interleaved runs of {} s, medians; agent: a mysql target, every execute judged and journaled",
            self.runs, self.seconds
        );
        let mut reported = Vec::new();
        for threads in [1u64, 8] {
            let (mut direct, mut agent) = (Vec::new(), Vec::new());
            for _ in 0..self.runs {
                direct.push(tps(&self.sysbench(self.direct_cg, "run", threads)?)?);
                agent.push(tps(&self.sysbench(self.agent_cg, "run", threads)?)?);
            }
            let (d, a) = (median(direct), median(agent));
            println!(
                "oltp_read_only --threads={threads}: direct {d:>8.1} tps   agent {a:>8.1} tps   ratio {:.2}x",
                a / d
            );
            reported.push(Reported {
                what: format!("sysbench oltp_read_only --threads={threads} tps, agent mysql"),
                ratio: a / d,
            });
        }
        Ok(reported)
    }

    fn sysbench(&self, cg: &TestCgroup, command: &str, threads: u64) -> anyhow::Result<String> {
        let out = cg
            .command("sysbench")
            .args([
                "oltp_read_only",
                "--db-driver=mysql",
                "--mysql-host=127.0.0.1",
            ])
            .arg(format!("--mysql-port={}", self.db.port))
            .args(["--mysql-user=bench", "--mysql-db=sbtest"])
            .arg(format!("--mysql-password={PASSWORD}"))
            .args(["--tables=4", "--table-size=10000", "--db-ps-mode=auto"])
            .arg(format!("--threads={threads}"))
            .arg(format!("--time={}", self.seconds))
            .arg("--report-interval=0")
            .arg(command)
            .output()
            .context("running sysbench (apt install sysbench)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "sysbench {command}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    }
}

/// Transactions per second from a sysbench report (`transactions: N (X per sec.)`);
/// a run with errors is refused.
fn tps(report: &str) -> anyhow::Result<f64> {
    let field = |name: &str| {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).map(str::trim))
            .map(str::to_owned)
    };
    if let Some(errors) = field("ignored errors:") {
        if !errors.starts_with("0 ") {
            bail!("sysbench reported errors: {errors}");
        }
    }
    let line = field("transactions:").context("no transactions line in the sysbench report")?;
    let per_sec = line
        .split('(')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("cannot read the rate of {line:?}"))?;
    Ok(per_sec)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sysbench_report_is_read() {
        let report =
            "SQL statistics:\n    transactions:                        524    (174.43 per sec.)\n\
                      \x20   ignored errors:                      0      (0.00 per sec.)\n";
        assert_eq!(tps(report).unwrap(), 174.43);
        let bad = report.replace(
            "ignored errors:                      0 ",
            "ignored errors:                      3 ",
        );
        assert!(tps(&bad).is_err());
        assert!(tps("nothing").is_err());
    }
}
