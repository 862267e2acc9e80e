//! A real MariaDB server (`mariadb-server` from apt) for the MySQL tests: a fresh data
//! directory in a temp dir, `mariadbd` on a free loopback port and a unix socket
//! (which the agent never intercepts, so [`MariaDb::sql`] reaches the server directly).
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::free_port;

/// A running `mariadbd`, killed (and its directory removed) on drop.
pub struct MariaDb {
    dir: tempfile::TempDir,
    child: Child,
    pub port: u16,
}

impl MariaDb {
    /// Whether the server and client binaries are installed.
    pub fn available() -> bool {
        Path::new("/usr/sbin/mariadbd").exists()
            && Command::new("mariadb")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
    }

    /// Initialises a data directory and starts the server on a free loopback port. The
    /// server runs as root (`--user=root`: the test harness is root and the temp dir is
    /// root's), with a small buffer pool.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`MariaDb::start`] with extra `mariadbd` options (`--ssl-cert=...`).
    pub fn start_with(extra: &[String]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nhi-mariadb-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--auth-root-authentication-method=normal",
                "--user=root",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .expect("mariadb-install-db (apt install mariadb-server)");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = fs::File::create(dir.path().join("server.log")).expect("server log");
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=16M",
                "--innodb-log-file-size=8M",
                "--max-connections=200",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mariadbd");
        let server = MariaDb { dir, child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new("mariadb")
                .args(server.client_args())
                .args(["-e", "select 1"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start: {}",
                fs::read_to_string(server.dir.path().join("server.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn client_args(&self) -> Vec<String> {
        vec![
            "--no-defaults".into(),
            "-uroot".into(),
            format!("--socket={}", self.socket().display()),
        ]
    }

    /// Runs SQL as root over the unix socket (never intercepted); returns stdout (tab
    /// separated, no column names).
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new("mariadb")
            .args(self.client_args())
            .args(["-N", "-B", "-e", sql])
            .output()
            .expect("mariadb");
        assert!(
            out.status.success(),
            "mariadb {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
