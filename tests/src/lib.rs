//! Test harness for nhi-agent integration tests: real cgroups, the real agent binary
//! with its real eBPF programs, real servers on loopback.
//!
//! - [`require_privileged`] skips a test with a printed reason when it cannot run
//!   (not root, no cgroup2, no BPF), unless `NHI_REQUIRE_PRIVILEGED=1` (set by CI),
//!   in which case the skip becomes a failure.
//! - [`TestCgroup`] creates a child cgroup under the cgroup2 root and removes it (and
//!   kills what is left in it) on drop; [`TestCgroup::command`] starts a process in it.
//! - [`Agent`] writes a config, starts `nhi-agent run`, waits until it is ready, and
//!   kills it and removes its pins on drop.
//! - [`EchoServer`] echoes (or sinks) on a loopback address and records the peers it
//!   saw, so a test can tell whether a connection came from the agent or directly.
//! - [`docker`] brings up a Docker engine and builds a local `psql` image without any
//!   registry, for the container tests.
//! - [`kube`] runs a fake Kubernetes API server (`tests/kube/apiserver.py`) and the real
//!   `kubectl` against it, for the Kubernetes tests.
pub mod aws;
pub mod docker;
pub mod http;
pub mod kube;
pub mod mysql;
pub mod netns;
pub mod redis;
pub mod ssh;
pub use http::*;

use std::{
    fs,
    io::{BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, OnceLock,
    },
    thread,
    time::{Duration, Instant},
};

/// Environment variable that turns privileged-test skips into failures (CI sets it).
pub const REQUIRE_ENV: &str = "NHI_REQUIRE_PRIVILEGED";

/// Opens a privileged test: serialises it with the others and returns early (after
/// printing why) when it cannot run here, or fails under `NHI_REQUIRE_PRIVILEGED=1`.
#[macro_export]
macro_rules! privileged {
    ($name:expr) => {
        let _serial = $crate::serial();
        if !$crate::require_privileged($name) {
            return;
        }
    };
}

/// Integration tests share the cgroup root attachment point and must not overlap.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Returns false (after printing why) when privileged tests cannot run here; panics
/// instead when `NHI_REQUIRE_PRIVILEGED=1`.
pub fn require_privileged(test: &str) -> bool {
    let reason = if !nix_is_root() {
        Some("not running as root".to_string())
    } else if cgroup2_root().is_none() {
        Some("no cgroup2 mount found".to_string())
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) => {
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{test}: privileged test cannot run ({r}) and {REQUIRE_ENV}=1");
            }
            eprintln!("SKIPPED {test}: {r} (set {REQUIRE_ENV}=1 to make this a failure)");
            false
        }
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// Path of the built `nhi-agent` binary (built once per test process), or
/// `$NHI_AGENT_BIN` when set (the VM test bed runs the test binaries without cargo).
pub fn agent_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("NHI_AGENT_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "nhi-agent", "--bin", "nhi-agent"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building nhi-agent failed");
        target_dir().join("nhi-agent")
    })
    .clone()
}

/// Path of the test client binary (cargo builds it alongside the integration tests).
pub fn client_bin() -> PathBuf {
    target_dir().join("nhi-testclient")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    // The test binary lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A test CA named `ca_name` (`dir/ca.crt`, `ca.key`) and a server certificate it signed
/// (`server.crt`, `server.key`) for `IP:127.0.0.1` and `DNS:dns_name`, made with the
/// openssl CLI (P-256, valid two days).
pub fn make_test_certs(dir: &Path, ca_name: &str, dns_name: &str) {
    let subject = format!("/CN={ca_name}");
    let server_subject = format!("/CN={dns_name}");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-days",
            "2",
            "-subj",
            &subject,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-subj",
            &server_subject,
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName=IP:127.0.0.1,DNS:{dns_name}\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
}

/// Whether `needle` occurs in `text` as a whole: not preceded or followed by a letter or
/// digit. `contains("at event 12")` also matches "at event 123"; this does not.
pub fn contains_whole(text: &str, needle: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices(needle).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + needle.len()..].chars().next();
        let starts_word = needle.chars().next().is_some_and(|c| word(Some(c)));
        let ends_word = needle.chars().next_back().is_some_and(|c| word(Some(c)));
        !(starts_word && word(before) || ends_word && word(after))
    })
}

#[test]
fn contains_whole_matches_whole_values_only() {
    assert!(contains_whole("damage at event 12.", "at event 12"));
    assert!(contains_whole("at event 12", "at event 12"));
    assert!(!contains_whole("damage at event 123", "at event 12"));
    assert!(!contains_whole("xat event 12", "at event 12"));
    assert!(contains_whole("(segment 3)", "(segment 3)"));
    assert!(contains_whole("approve 7 and approve 71", "approve 7"));
    assert!(!contains_whole("approve 71", "approve 7"));
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A unique name for this test process: cgroups, pins and files use it.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::SeqCst)
    )
}

/// A child cgroup (and its descendants), removed on drop.
pub struct TestCgroup {
    root: PathBuf,
    rel: String,
    /// Only the cgroup made by [`TestCgroup::create`] removes its tree on drop;
    /// children are cleaned up with it.
    owned: bool,
}

impl TestCgroup {
    /// Creates `<cgroup2 root>/<rel>` (and parents).
    pub fn create(rel: &str) -> Self {
        let root = cgroup2_root().expect("cgroup2 mount");
        fs::create_dir_all(root.join(rel)).unwrap_or_else(|e| panic!("mkdir cgroup {rel}: {e}"));
        Self {
            root,
            rel: rel.to_string(),
            owned: true,
        }
    }

    /// Path relative to the cgroup2 root (what the agent journals).
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// A child of this cgroup (not removed separately: the parent's drop removes it).
    pub fn child(&self, name: &str) -> TestCgroup {
        let rel = format!("{}/{name}", self.rel);
        fs::create_dir_all(self.root.join(&rel)).expect("mkdir child cgroup");
        TestCgroup {
            root: self.root.clone(),
            rel,
            owned: false,
        }
    }

    /// The cgroup id (inode of the directory).
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(self.root.join(&self.rel))
            .expect("stat cgroup")
            .ino()
    }

    /// A command that starts inside this cgroup.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let procs = self.root.join(&self.rel).join("cgroup.procs");
        let mut cmd = Command::new(program);
        // SAFETY: the closure only calls async-signal-safe functions (open/write).
        unsafe {
            cmd.pre_exec(move || {
                fs::write(&procs, b"0")?;
                Ok(())
            });
        }
        cmd
    }

    /// Runs the test client in this cgroup and parses its JSON answer.
    pub fn client(&self, args: &[&str]) -> serde_json::Value {
        let out = self
            .command(client_bin())
            .args(args)
            .output()
            .expect("run nhi-testclient");
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "client output is not JSON ({e}): {stdout} / {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Sends SIGKILL to everything in the cgroup.
    pub fn kill_all(&self) {
        let dir = self.root.join(&self.rel);
        if fs::write(dir.join("cgroup.kill"), b"1").is_err() {
            for entry in walk_dirs(&dir) {
                if let Ok(procs) = fs::read_to_string(entry.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                        // SAFETY: plain kill(2).
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk_dirs(&e.path()));
            }
        }
    }
    out
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        self.kill_all();
        let dir = self.root.join(&self.rel);
        let mut dirs = walk_dirs(&dir);
        // Deepest first.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        let deadline = Instant::now() + Duration::from_secs(5);
        for d in dirs {
            while fs::remove_dir(&d).is_err() && d.exists() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
        }
        // Remove now-empty parents created for this test (e.g. "nhi-test-123/").
        if let Some((top, _)) = self.rel.split_once('/') {
            let _ = fs::remove_dir(self.root.join(top));
        }
    }
}

/// A loopback TCP server that echoes (or, in sink mode, counts and acknowledges) and
/// records every peer address it accepted.
pub struct EchoServer {
    pub addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl EchoServer {
    pub fn start(addr: &str) -> Self {
        Self::start_mode(addr, false)
    }

    /// Sink mode: reads until EOF, then writes one byte (for one-way throughput).
    pub fn start_sink(addr: &str) -> Self {
        Self::start_mode(addr, true)
    }

    fn start_mode(addr: &str, sink: bool) -> Self {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let _ = s.set_nodelay(true);
                if let Ok(p) = s.peer_addr() {
                    seen.lock().unwrap().push(p);
                }
                thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if !sink && s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    if sink {
                        let _ = s.write_all(b"k");
                    }
                });
            }
        });
        Self { addr, peers }
    }

    /// Peers accepted so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

/// A port that is free on both 127.0.0.1 and ::1 right now.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        if TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
}

/// A running `nhi-agent run`.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub journal: PathBuf,
    pub pin_dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Agent {
    /// Writes a config with the given `[[workload]]`/`[[target]]` TOML (the `[agent]`
    /// table is generated: free port, journal and pins in a temp dir) and starts it.
    pub fn start(body: &str) -> Self {
        Self::start_with(body, "", &[])
    }

    /// Like [`Agent::start`], with extra `[agent]` keys and command line arguments.
    pub fn start_with(body: &str, agent_keys: &str, args: &[&str]) -> Self {
        let mut agent = Self::configure(body, agent_keys, args);
        agent.spawn();
        agent
    }

    /// Writes the config without starting the agent.
    pub fn configure(body: &str, agent_keys: &str, args: &[&str]) -> Self {
        Self::configure_journal(body, agent_keys, args, None)
    }

    /// Like [`Agent::configure`], with the journal at `journal` instead of the temp dir.
    pub fn configure_journal(
        body: &str,
        agent_keys: &str,
        args: &[&str],
        journal: Option<&Path>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let journal = journal
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("journal.db"));
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique("nhi-test"));
        let config_path = dir.path().join("agent.toml");
        // A short drain keeps tests quick unless the test sets its own.
        let drain = if agent_keys.contains("drain_timeout") {
            ""
        } else {
            "drain_timeout = \"3s\"\n"
        };
        // Each agent gets its own approvals socket, so agents of different tests (or a
        // restarted one) never meet on the default path.
        let approvals = if agent_keys.contains("approvals_socket") {
            String::new()
        } else {
            format!(
                "approvals_socket = \"{}\"\n",
                dir.path().join("approvals.sock").display()
            )
        };
        let config = format!(
            "[agent]\nmode = \"enforce\"\njournal = \"{}\"\nlisten_port = {port}\nbpffs = \"{}\"\n\
             {drain}{approvals}{agent_keys}\n\n{body}\n",
            journal.display(),
            pin_dir.display()
        );
        fs::write(&config_path, config).expect("write config");
        let log = dir.path().join("agent.log");
        Self {
            dir,
            config_path,
            journal,
            pin_dir,
            port,
            log,
            child: None,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for the next [`Agent::spawn`] (e.g. `NHI_FAILPOINTS`,
    /// see the agent's `failpoint` module).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Waits until the agent's log holds `needle` `n` times (at most 30 s).
    pub fn wait_log(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count_log(needle) < n {
            assert!(
                Instant::now() < deadline,
                "no {n}x {needle:?} in the agent's log after 30 s:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts (or restarts) the agent and waits until it logs that it is ready.
    pub fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(agent_bin())
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .args(&self.extra_args)
            .env("NHI_LOG", "debug")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nhi-agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ready_lines = self.count_log("nhi-agent ready");
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!("nhi-agent exited early ({status}):\n{}", self.log_text());
            }
            let now = self.count_log("nhi-agent ready");
            if now > ready_lines {
                break;
            }
            ready_lines = ready_lines.min(now);
            assert!(
                Instant::now() < deadline,
                "nhi-agent not ready after 30 s:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log_text().matches(needle).count()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal without waiting.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// SIGTERM and wait for the exit (returns the exit code), at most 30 s.
    pub fn terminate(&mut self) -> Option<i32> {
        self.terminate_within(Duration::from_secs(30))
    }

    /// SIGTERM and wait for the exit, at most `limit` (longer than the agent's
    /// `drain_timeout` when a test keeps connections open through the stop).
    pub fn terminate_within(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = c.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("nhi-agent did not stop within {limit:?} of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Rewrites the config file (for reload tests).
    pub fn rewrite_config(&self, f: impl FnOnce(String) -> String) {
        let text = fs::read_to_string(&self.config_path).expect("read config");
        fs::write(&self.config_path, f(text)).expect("write config");
    }

    /// Runs an `nhi-agent` subcommand.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(agent_bin())
            .args(args)
            .output()
            .expect("run nhi-agent")
    }

    /// `nhi-agent sessions --json` on this agent's journal.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&[
            "sessions",
            "--journal",
            self.journal.to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "nhi-agent sessions failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
            .collect()
    }

    /// The events of one session, as `nhi-agent replay SESSION --json` prints them.
    pub fn events(&self, session: i64) -> Vec<serde_json::Value> {
        let out = self.cli(&[
            "replay",
            &session.to_string(),
            "--journal",
            self.journal.to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "replay {session}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("replay --json prints JSON lines"))
            .collect()
    }

    /// The statement events (kind "statement") of every session, in journal order.
    pub fn statements(&self) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        for s in self.sessions() {
            let id = s["id"].as_i64().expect("session id");
            all.extend(
                self.events(id)
                    .into_iter()
                    .filter(|e| e["kind"] == "statement")
                    .map(|e| e["data"].clone()),
            );
        }
        all
    }

    /// `nhi-agent key export-public` of this agent's signing key into its directory;
    /// returns the PEM file's path.
    pub fn export_public_key(&self) -> PathBuf {
        let key = self.dir.path().join("host.pub");
        let out = self.cli(&[
            "key",
            "export-public",
            "--config",
            self.config_path.to_str().expect("utf-8"),
            "--out",
            key.to_str().expect("utf-8"),
        ]);
        assert!(
            out.status.success(),
            "key export: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        key
    }

    /// `nhi-agent verify` of the agent's journal directory with its public key; asserts
    /// that it passes.
    pub fn assert_verifies(&self) {
        let text = |out: &Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let key = self.export_public_key();
        let dir = self.journal.parent().expect("journal dir");
        let out = self.cli(&[
            "verify",
            dir.to_str().expect("utf-8"),
            "--key",
            key.to_str().expect("utf-8"),
        ]);
        assert_eq!(out.status.code(), Some(0), "verify: {}", text(&out));
        assert!(text(&out).contains("OK: intact"), "verify: {}", text(&out));
    }

    /// Waits until the journal holds `n` sessions that have ended.
    pub fn wait_sessions_ended(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.sessions();
            if s.iter().filter(|v| !v["ended_at"].is_null()).count() >= n {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} ended sessions, journal has: {s:#?}\nlog:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        remove_pins(&self.pin_dir);
    }
}

/// Removes a pin directory tree (detaching pinned links).
pub fn remove_pins(dir: &Path) {
    let mut dirs = walk_dirs(dir);
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_file()).unwrap_or(true) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let _ = fs::remove_dir(&d);
    }
}

/// Convenience: a one-shot TCP exchange from the current process (not in a test cgroup).
pub fn direct_echo(addr: SocketAddr, data: &[u8]) -> std::io::Result<(SocketAddr, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    let local = s.local_addr()?;
    s.write_all(data)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    BufReader::new(s).read_to_end(&mut out)?;
    Ok((local, out))
}

/// A real PostgreSQL server for one test: initdb in a temp dir (as the `postgres`
/// user; initdb refuses root), listening on a free port on 127.0.0.1 and ::1, unix
/// socket in the temp dir. Stopped and removed on drop.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl PgServer {
    /// The newest installed server's bin directory (Debian: /usr/lib/postgresql/N/bin).
    pub fn bin_dir() -> Option<PathBuf> {
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, b)| b)
    }

    /// Starts a server with `trust` authentication on loopback.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server, with extra `postgresql.conf` lines.
    pub fn start_with(conf: &[&str]) -> Self {
        Self::start_full(conf, &[], |_| {})
    }

    /// Starts a server with extra `postgresql.conf` lines, `pg_hba.conf` lines placed
    /// before the default ones (first match wins), and `prepare` run on the data
    /// directory before the start (e.g. to install TLS files).
    pub fn start_full(conf: &[&str], hba: &[&str], prepare: impl FnOnce(&Path)) -> Self {
        let bin = Self::bin_dir().expect("PostgreSQL server binaries (apt install postgresql)");
        let dir = tempfile::Builder::new()
            .prefix("nhi-pg-")
            .tempdir()
            .expect("tempdir");
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown the PostgreSQL temp dir");
        let data = dir.path().join("data");
        as_postgres(
            Command::new(bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
        );
        let port = free_port();
        let mut extra = format!(
            "listen_addresses = '127.0.0.1,::1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_connections = 200\n",
            dir.path().display()
        );
        for line in conf {
            extra.push_str(line);
            extra.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text.push_str(&extra);
        fs::write(&conf_path, text).expect("write postgresql.conf");
        if !hba.is_empty() {
            let hba_path = data.join("pg_hba.conf");
            let old = fs::read_to_string(&hba_path).expect("read pg_hba.conf");
            let mut new = hba.join("\n");
            new.push('\n');
            new.push_str(&old);
            fs::write(&hba_path, new).expect("write pg_hba.conf");
        }
        prepare(&data);
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&data)
            .status();
        as_postgres(
            Command::new(bin.join("pg_ctl"))
                .args(["-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("server.log"))
                .arg("start"),
        );
        Self { dir, bin, port }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `[::1]:port`.
    pub fn addr6(&self) -> SocketAddr {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.port))
    }

    /// The directory holding the unix socket (and the data directory `data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs SQL with psql over the unix socket (never intercepted) and returns stdout.
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn as_postgres(cmd: &mut Command) {
    let mut wrapped = Command::new("runuser");
    wrapped
        .args(["-u", "postgres", "--"])
        .arg(cmd.get_program());
    wrapped.args(cmd.get_args());
    let out = wrapped.output().expect("runuser");
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- shipping (S3)

/// A real S3-compatible server (`s3s-fs`, installed by `cargo xtask setup`) on a free
/// loopback port, storing objects under a temp directory as plain files
/// (`<root>/<bucket>/<key>`). [`S3Server::stop`] / [`S3Server::start_again`] keep the
/// port and the directory, to simulate an outage. Killed on drop.
pub struct S3Server {
    pub root: tempfile::TempDir,
    pub port: u16,
    pub bucket: String,
    child: Option<Child>,
}

impl S3Server {
    /// Access key id the server accepts.
    pub const ACCESS_KEY: &'static str = "nhi-test-access";
    /// Secret key the server accepts.
    pub const SECRET_KEY: &'static str = "nhi-test-secret-key-0123456789";

    /// The `s3s-fs` binary: `$S3S_FS`, else `~/.cargo/bin/s3s-fs`, else `PATH`.
    pub fn bin() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("S3S_FS") {
            return Some(PathBuf::from(p));
        }
        if let Some(home) = std::env::var_os("HOME") {
            let p = Path::new(&home).join(".cargo/bin/s3s-fs");
            if p.exists() {
                return Some(p);
            }
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("s3s-fs"))
                .find(|p| p.exists())
        })
    }

    /// Starts a server with one (empty) bucket, `audit`.
    pub fn start() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let bucket = "audit".to_string();
        fs::create_dir_all(root.path().join(&bucket)).expect("bucket dir");
        let mut server = Self {
            root,
            port: free_port(),
            bucket,
            child: None,
        };
        server.start_again();
        server
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (Re)starts on the same port and directory; waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let bin = Self::bin().expect("s3s-fs not found: run `cargo xtask setup`");
        let log = fs::File::create(self.root.path().join("s3s-fs.log")).expect("log");
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--access-key",
                Self::ACCESS_KEY,
                "--secret-key",
                Self::SECRET_KEY,
            ])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen within 20 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL); the stored objects stay.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The stored object `key` as a file path.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(&self.bucket).join(key)
    }

    /// Every stored object key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let base = self.root.path().join(&self.bucket);
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&base) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `nhi-agent approvals ARGS --socket S`, as root.
pub fn approvals(socket: &Path, args: &[&str]) -> Output {
    Command::new(agent_bin())
        .arg("approvals")
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run nhi-agent approvals")
}

/// Waits (up to 60 s) until a request is pending on `socket` and returns the first one
/// (`approvals list --json`'s entry: id, rule, statement, ...).
pub fn wait_pending(socket: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = approvals(socket, &["list", "--json"]);
        if out.status.success() {
            let answer: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("approvals list --json");
            if let Some(p) = answer["pending"].as_array().and_then(|a| a.first()) {
                return p.clone();
            }
        }
        assert!(Instant::now() < deadline, "nothing pending after 60 s");
        thread::sleep(Duration::from_millis(100));
    }
}
