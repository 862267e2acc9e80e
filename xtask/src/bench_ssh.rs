//! The SSH part of `cargo xtask bench`: the real OpenSSH client against a real `sshd`
//! (`nhi_tests::ssh::Sshd`, on a loopback port), two ways: directly, with the login key
//! and the host's own known_hosts entry, and through the agent as an `ssh` target, with
//! no key and only the agent's `@cert-authority` line (the agent logs in with the same
//! key, judges and journals each command and its output).
//!
//! Two figures, runs interleaved, medians: `ssh host true` connections per second (N
//! sequential connections per run: process start, key exchange, authentication, one
//! exec, exit status; twice the handshakes through the agent), and bulk upload
//! throughput of one `scp` (SFTP mode) of a file of random bytes.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};
use nhi_tests::ssh::{SshClient, Sshd};
use nhi_tests::TestCgroup;

use crate::bench_targets::Reported;

pub struct SshBench<'a> {
    pub sshd: &'a Sshd,
    pub agent_bin: &'a Path,
    pub config: &'a Path,
    pub work: &'a Path,
    pub direct_cg: &'a TestCgroup,
    pub agent_cg: &'a TestCgroup,
    pub runs: usize,
    pub conns: u64,
    pub bytes: u64,
}

/// The agent's `[[target]]` and `[[policy]]` for the bench's sshd: a rule the bench's
/// commands never meet, output recorded (`summary`).
pub fn config(sshd: &Sshd) -> String {
    format!(
        r#"
[[target]]
name = "ssh"
address = "127.0.0.1:{port}"
protocol = "ssh"
key_file = "{key}"
known_hosts = "{known_hosts}"
user = "root"

[[policy]]
name = "bench-ssh"
workload = "*"
target = "ssh"
mode = "enforce"
default = "allow"
record_results = "summary"

[[policy.rule]]
name = "no-destruction"
verdict = "deny"
commands = ["rm -rf *", "mkfs*"]
"#,
        port = sshd.port,
        key = sshd.agent_key.display(),
        known_hosts = sshd.known_hosts.display(),
    )
}

impl SshBench<'_> {
    /// Prints both figures and returns the agent's ratios to direct.
    pub fn run(&self) -> anyhow::Result<Vec<Reported>> {
        let out = Command::new(self.agent_bin)
            .args(["ssh-ca", "--config"])
            .arg(self.config)
            .output()
            .context("nhi-agent ssh-ca")?;
        if !out.status.success() {
            bail!("nhi-agent ssh-ca: {}", String::from_utf8_lossy(&out.stderr));
        }
        let through_agent = SshClient::new(&String::from_utf8_lossy(&out.stdout));
        let direct = SshClient::new("");
        std::fs::copy(&self.sshd.known_hosts, &direct.known_hosts)?;
        let file = self.work.join("ssh-bulk.bin");
        let random = Command::new("head")
            .args(["-c", &self.bytes.to_string(), "/dev/urandom"])
            .output()?;
        std::fs::write(&file, random.stdout)?;
        let dest = self.work.join("ssh-bulk-up.bin");

        println!(
            "\nSSH: OpenSSH client against sshd on loopback, {} interleaved runs, medians;\n\
             direct: the login key and the host's key; agent: no key, the agent's @cert-authority line, the agent logs in",
            self.runs
        );
        let (mut rate, mut bulk) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        let key = self.sshd.agent_key.display().to_string();
        for _ in 0..self.runs {
            rate.0
                .push(self.connections(self.direct_cg, &direct, &["-i", &key])?);
            rate.1
                .push(self.connections(self.agent_cg, &through_agent, &[])?);
            bulk.0
                .push(self.upload(self.direct_cg, &direct, &["-i", &key], &file, &dest)?);
            bulk.1
                .push(self.upload(self.agent_cg, &through_agent, &[], &file, &dest)?);
        }
        let (d, a) = (median(rate.0), median(rate.1));
        let mut reported = vec![Reported {
            what: "`ssh host true` connections/s, agent ssh".into(),
            ratio: a / d,
        }];
        println!(
            "`ssh host true`, {} sequential per run: direct {d:>7.1}/s   agent {a:>7.1}/s   ratio {:.2}x   (+{:.1} ms per connection)",
            self.conns,
            a / d,
            (1.0 / a - 1.0 / d) * 1000.0
        );
        println!(
            "  (direct includes sshd's fixed delay after the client's failed `none` probe, which\n   \
             OpenSSH clients always send first; through the agent the bot's `none` is accepted\n   \
             and the agent logs in with its key at once, so the agent can come out ahead)"
        );
        let (d, a) = (median(bulk.0), median(bulk.1));
        reported.push(Reported {
            what: format!("scp upload {} MiB, agent ssh", self.bytes >> 20),
            ratio: a / d,
        });
        println!(
            "scp upload {} MiB:                 direct {d:>7.0} MiB/s   agent {a:>7.0} MiB/s   ratio {:.2}x",
            self.bytes >> 20,
            a / d
        );
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_file(&dest);
        Ok(reported)
    }

    /// Connections per second of `ssh host true`.
    fn connections(
        &self,
        cg: &TestCgroup,
        client: &SshClient,
        extra: &[&str],
    ) -> anyhow::Result<f64> {
        let start = Instant::now();
        for _ in 0..self.conns {
            let out = client
                .ssh(cg.command("ssh"), self.sshd.port, extra, "true")
                .stdin(Stdio::null())
                .output()?;
            if !out.status.success() {
                bail!("ssh host true: {}", nhi_tests::ssh::text(&out));
            }
        }
        Ok(self.conns as f64 / start.elapsed().as_secs_f64())
    }

    /// MiB/s of one scp upload.
    fn upload(
        &self,
        cg: &TestCgroup,
        client: &SshClient,
        extra: &[&str],
        file: &Path,
        dest: &Path,
    ) -> anyhow::Result<f64> {
        let start = Instant::now();
        let out = cg
            .command("scp")
            .env("HOME", client.home.path())
            .env_remove("SSH_AUTH_SOCK")
            .args(client.options())
            .args(["-P", &self.sshd.port.to_string()])
            .args(extra)
            .arg(file)
            .arg(format!("root@127.0.0.1:{}", dest.display()))
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("scp: {}", nhi_tests::ssh::text(&out));
        }
        Ok(self.bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
