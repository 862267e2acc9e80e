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

/// A MySQL-8-like server for caching_sha2_password (`tests/mysql/caching_sha2_server.py`,
/// on python3-cryptography): a fixture, since no MySQL 8 server can be installed here
/// and MariaDB has no caching_sha2_password server plugin. It greets with
/// `caching_sha2_password`, keeps the fast-authentication cache in memory (so
/// [`CachingSha2Server::restart`] forces full authentication), does full authentication
/// over plain TCP with an RSA key generated per instance (`openssl genrsa`), checks the
/// password properly (ERR 1045 otherwise), and answers `SELECT` of literals and
/// `CURRENT_USER()` with one text row. Its limits are in the script's docstring.
pub struct CachingSha2Server {
    dir: tempfile::TempDir,
    child: Child,
    pub port: u16,
}

impl CachingSha2Server {
    /// Whether python3-cryptography and openssl are installed.
    pub fn available() -> bool {
        Command::new("/usr/bin/python3")
            .args(["-c", "import cryptography"])
            .output()
            .is_ok_and(|o| o.status.success())
            && Command::new("openssl")
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
    }

    /// A server knowing one user, `user` / `password`, on a free loopback port.
    pub fn start(user: &str, password: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nhi-caching-sha2-")
            .tempdir()
            .expect("tempdir");
        openssl_rsa_key(&dir.path().join("private.pem"));
        let out = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(dir.path().join("private.pem"))
            .arg("-out")
            .arg(dir.path().join("public.pem"))
            .output()
            .expect("openssl pkey");
        assert!(out.status.success(), "openssl pkey: {out:?}");
        fs::write(dir.path().join("user"), user).unwrap();
        fs::write(dir.path().join("password"), password).unwrap();
        let port = free_port();
        let child = Self::spawn(dir.path(), port);
        CachingSha2Server { dir, child, port }
    }

    fn spawn(dir: &Path, port: u16) -> Child {
        use std::io::{BufRead as _, BufReader};
        let script = crate::workspace_root().join("tests/mysql/caching_sha2_server.py");
        let user = fs::read_to_string(dir.join("user")).unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--key")
            .arg(dir.join("private.pem"))
            .args(["--user", &user])
            .arg("--password-file")
            .arg(dir.join("password"))
            .arg("--log")
            .arg(dir.join("auth.jsonl"))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start caching_sha2_server.py");
        // It prints "ready PORT" once listening (or exits, closing stdout).
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("ready"),
            "caching_sha2_server.py did not start: {}",
            fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        child
    }

    /// Stops the server and starts a new process on the same port: an empty
    /// fast-authentication cache, as after a MySQL restart.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.dir.path(), self.port);
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its RSA public key, PEM (SubjectPublicKeyInfo, as the server sends it).
    pub fn public_key(&self) -> PathBuf {
        self.dir.path().join("public.pem")
    }

    /// One line per authentication, in order: `{"user", "plugin", "auth", "ok"}` with
    /// `auth` one of `fast`, `full`, `full_key_requested` (the client sent 0x02 for the
    /// key), `full_undecryptable`, `full_key_requested_undecryptable`, `empty`,
    /// `unknown_user`.
    pub fn auths(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.dir.path().join("auth.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }
}

impl Drop for CachingSha2Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh 2048-bit RSA private key (PKCS#8 PEM) at `path`.
pub fn openssl_rsa_key(path: &Path) {
    let out = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(path)
        .arg("2048")
        .output()
        .expect("openssl genrsa");
    assert!(out.status.success(), "openssl genrsa: {out:?}");
}
