//! A real `redis-server` (from apt: `redis-server`) on a free loopback port for the Redis
//! tests: no persistence, its files in a temporary directory, `requirepass` for the
//! default user and one ACL user (`bot`) whose password only the agent holds.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The ACL user the agent authenticates as.
pub const AGENT_USER: &str = "bot";
/// Its password: in the agent's `password_file`, never in a client's hands.
pub const AGENT_PASSWORD: &str = "s3cret-bot-pw-8f2c";
/// The default user's password (`requirepass`), for the test's own direct checks.
pub const ADMIN_PASSWORD: &str = "adm1n-pw-77d1";

pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// `Some(ca.crt)`: the server speaks TLS only (`--tls-port`), with a certificate
    /// this CA signed; `admin` connects with it.
    pub tls_ca: Option<PathBuf>,
    child: Child,
}

impl RedisServer {
    /// `redis-server`, if installed.
    pub fn bin() -> Option<PathBuf> {
        let path = PathBuf::from("/usr/bin/redis-server");
        path.exists().then_some(path)
    }

    pub fn start() -> RedisServer {
        RedisServer::start_with(None)
    }

    /// A server that speaks TLS only (`--port 0`, `--tls-port`), with `server.crt` /
    /// `server.key` from `certs` (as [`crate::make_test_certs`] writes them); clients
    /// need no certificate (`--tls-auth-clients no`).
    pub fn start_tls(certs: &Path) -> RedisServer {
        RedisServer::start_with(Some(certs))
    }

    fn start_with(certs: Option<&Path>) -> RedisServer {
        let bin = RedisServer::bin()
            .expect("redis-server is not installed: run `cargo xtask setup` (redis-server)");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let mut command = Command::new(bin);
        match certs {
            None => command.args(["--port", &port.to_string()]),
            Some(certs) => command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(certs.join("server.crt"))
                .arg("--tls-key-file")
                .arg(certs.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(certs.join("ca.crt"))
                .args(["--tls-auth-clients", "no"]),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", ADMIN_PASSWORD])
            .args(["--user", AGENT_USER, "on"])
            .arg(format!(">{AGENT_PASSWORD}"))
            .args(["~*", "&*", "+@all"])
            .args(["--logfile"])
            .arg(dir.path().join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = RedisServer {
            port,
            dir,
            tls_ca: certs.map(|c| c.join("ca.crt")),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = server.admin(&["PING"]);
            if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
                return server;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis-cli` straight to the server as the default user (not intercepted: run
    /// from the test's own cgroup).
    pub fn admin(&self, args: &[&str]) -> Output {
        let mut command = Command::new("redis-cli");
        if let Some(ca) = &self.tls_ca {
            command.arg("--tls").arg("--cacert").arg(ca);
        }
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-a", ADMIN_PASSWORD, "--no-auth-warning"])
            .args(args)
            .output()
            .expect("run redis-cli")
    }

    /// The agent's `password_file` (mode 0600) in `dir`.
    pub fn password_file(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("redis-bot.pw");
        std::fs::write(&path, format!("{AGENT_PASSWORD}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
