//! A real OpenSSH server for the SSH tests: `sshd` started on a free loopback port with
//! its own host key and configuration in a temp dir (the distribution's service is not
//! used), whose `authorized_keys` holds only the agent's login key; and the real `ssh`
//! client, run with an empty HOME (no key of its own) and a known_hosts file given.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::free_port;

/// A running `sshd`.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The agent's login key (private, 0600) and its public half in authorized_keys.
    pub agent_key: PathBuf,
    /// A known_hosts file naming this server's host key (for the agent).
    pub known_hosts: PathBuf,
    /// The host key's fingerprint (`SHA256:...`).
    pub host_fingerprint: String,
    pub log: PathBuf,
    child: Child,
}

/// Makes an Ed25519 key pair at `path` (and `path.pub`) with `ssh-keygen`.
pub fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "nhi-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

/// `ssh-keygen -lf PUB`'s fingerprint.
pub fn fingerprint(public: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public)
        .output()
        .expect("ssh-keygen -lf");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_owned()
}

impl Sshd {
    /// The path of sshd, if installed.
    pub fn bin() -> Option<PathBuf> {
        let p = PathBuf::from("/usr/sbin/sshd");
        p.exists().then_some(p)
    }

    pub fn start() -> Self {
        let bin =
            Self::bin().expect("sshd is not installed (cargo xtask setup installs openssh-server)");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let host_key = dir.path().join("host_key");
        keygen(&host_key);
        let agent_key = dir.path().join("agent_key");
        keygen(&agent_key);
        let authorized = dir.path().join("authorized_keys");
        fs::copy(dir.path().join("agent_key.pub"), &authorized).expect("authorized_keys");
        let known_hosts = dir.path().join("known_hosts");
        let host_pub = fs::read_to_string(dir.path().join("host_key.pub")).expect("host key");
        fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}")).expect("known_hosts");
        let host_fingerprint = fingerprint(&dir.path().join("host_key.pub"));
        // Privilege separation needs its empty directory.
        let _ = fs::create_dir_all("/run/sshd");
        let config = dir.path().join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
                 AuthorizedKeysFile {}\nStrictModes no\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 PubkeyAuthentication yes\nAllowTcpForwarding yes\nAllowAgentForwarding yes\n\
                 X11Forwarding no\nPrintMotd no\nLogLevel VERBOSE\nMaxStartups 100\n\
                 MaxSessions 100\nSubsystem sftp internal-sftp\n",
                host_key.display(),
                dir.path().join("sshd.pid").display(),
                authorized.display(),
            ),
        )
        .expect("sshd_config");
        let log = dir.path().join("sshd.log");
        let child = Command::new(bin)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("sshd log"))
            .spawn()
            .expect("start sshd");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(20));
        }
        Sshd {
            dir,
            port,
            agent_key,
            known_hosts,
            host_fingerprint,
            log,
            child,
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bot's SSH client setup: an empty HOME (no key of its own, no config) and a
/// known_hosts file holding only `line` (the agent's `@cert-authority` line).
pub struct SshClient {
    pub home: tempfile::TempDir,
    pub known_hosts: PathBuf,
}

impl SshClient {
    pub fn new(line: &str) -> Self {
        let home = tempfile::tempdir().expect("home");
        let known_hosts = home.path().join("known_hosts");
        fs::write(&known_hosts, format!("{}\n", line.trim())).expect("bot known_hosts");
        SshClient { home, known_hosts }
    }

    /// The options every client (ssh, scp, sftp) gets: strict host key checking against
    /// the bot's known_hosts only, no keys, no agent, batch mode.
    pub fn options(&self) -> Vec<String> {
        [
            "-F".to_owned(),
            "/dev/null".to_owned(),
            "-o".to_owned(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".to_owned(),
            "GlobalKnownHostsFile=/dev/null".to_owned(),
            "-o".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
            "-o".to_owned(),
            "BatchMode=yes".to_owned(),
            "-o".to_owned(),
            "IdentitiesOnly=yes".to_owned(),
            "-o".to_owned(),
            "IdentityAgent=none".to_owned(),
            "-o".to_owned(),
            "ConnectTimeout=20".to_owned(),
        ]
        .to_vec()
    }

    /// `ssh [options] -p PORT root@127.0.0.1 COMMAND` as a command (not run), with HOME
    /// set to the empty home.
    pub fn ssh(&self, program: Command, port: u16, extra: &[&str], command: &str) -> Command {
        let mut cmd = program;
        cmd.env("HOME", self.home.path())
            .env_remove("SSH_AUTH_SOCK")
            .args(self.options())
            .args(["-p", &port.to_string()])
            .args(extra)
            .arg("root@127.0.0.1")
            .arg(command);
        cmd
    }
}

/// stdout + stderr of `out`, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
