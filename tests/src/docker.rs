//! Docker for the container tests: a running engine ([`docker_ready`]), a local
//! image with the host's `psql` built without any registry ([`psql_image`]), and
//! containers removed on drop ([`Container`]).
//!
//! Rootful Podman too ([`podman_ready`], [`podman_psql_image`]): the same image,
//! `docker save | podman load`ed, and containers with `--pull never`.
//!
//! Nothing is ever pulled: the only image is assembled from host files and
//! `docker import`ed, and containers talk only to loopback (with `--network host`)
//! or to docker's own bridge.
//!
//! The engine is the Debian `docker.io` package's `dockerd` (installed by `cargo
//! xtask setup`), started here when none runs. On the Firecracker test VM (kernel
//! 6.18, hybrid cgroup layout with cgroup2 at /sys/fs/cgroup/unified) it needs no
//! flags at all: overlay2 works on the ext4 root, iptables (nf_tables) sets up the
//! bridge's NAT, and the cgroupfs driver on cgroup v1 also places every container
//! in `/docker/<id>` of the unified hierarchy, the path the agent sees.
use std::{
    fs,
    io::Read as _,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

/// How long a freshly started `dockerd` may take to answer `docker info`.
const DAEMON_START: Duration = Duration::from_secs(30);

/// Bumped whenever [`psql_image`] puts different files in the image, so that an
/// image built by an older harness is not reused.
const IMAGE_RECIPE: &str = "nhi-test-psql recipe 1";

/// Runs `docker args...` and returns its output (never panics on a failed command).
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the docker CLI: {e}"))
}

/// `docker run args...`.
pub fn docker_run(args: &[&str]) -> Output {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    docker(&all)
}

/// Stdout of `docker args...`, trimmed, or Err with the command and its stderr.
pub fn docker_ok(args: &[&str]) -> Result<String, String> {
    let out = docker(args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// Ok when the docker CLI works against a running engine, starting `dockerd` in the
/// background first when none runs (once per test process; the daemon is left
/// running for later tests and test processes). Err says precisely why not: the
/// missing program, or the daemon's own error lines from its log.
pub fn docker_ready() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY.get_or_init(start_engine).clone()
}

fn engine_answers() -> Result<(), String> {
    docker_ok(&["info", "--format", "{{.ServerVersion}}"]).map(|_| ())
}

fn start_engine() -> Result<(), String> {
    match Command::new("docker").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Err(format!(
                "the docker CLI does not work: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Err(e) => {
            return Err(format!(
                "no docker CLI ({e}); cargo xtask setup installs docker.io"
            ))
        }
    }
    let not_running = match engine_answers() {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let log_path = std::env::temp_dir().join(format!("nhi-dockerd-{}.log", std::process::id()));
    let log = fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("cannot dup the dockerd log: {e}"))?;
    // Its own process group, so that the test's Ctrl-C or a killed test process
    // does not take the daemon (and its containers) down half-way.
    let mut daemon = Command::new("dockerd")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| {
            format!(
                "no engine running ({not_running}) and cannot start dockerd ({e}); \
                 cargo xtask setup installs docker.io"
            )
        })?;
    let started = Instant::now();
    loop {
        if engine_answers().is_ok() {
            return Ok(());
        }
        if let Some(status) = daemon
            .try_wait()
            .map_err(|e| format!("wait for dockerd: {e}"))?
        {
            return Err(format!(
                "dockerd exited ({status}) before answering; its log {}:\n{}",
                log_path.display(),
                daemon_errors(&log_path)
            ));
        }
        if started.elapsed() > DAEMON_START {
            let _ = daemon.kill();
            let _ = daemon.wait();
            return Err(format!(
                "dockerd did not answer `docker info` within {DAEMON_START:?}; its log {}:\n{}",
                log_path.display(),
                daemon_errors(&log_path)
            ));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The error and fatal lines of a dockerd log, or its last lines when it has none.
fn daemon_errors(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("level=error") || l.contains("level=fatal") || l.contains("failed to start")
        })
        .collect();
    let lines: Vec<&str> = if errors.is_empty() {
        text.lines().collect()
    } else {
        errors
    };
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The host's real `psql` binary: the newest `/usr/lib/postgresql/N/bin/psql`
/// (Debian's /usr/bin/psql is a Perl wrapper), else the `psql` on PATH if it is an
/// ELF executable.
pub fn host_psql() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let psql = e.path().join("bin/psql");
            psql.exists().then_some((v, psql))
        })
        .collect();
    versions.sort();
    if let Some((_, psql)) = versions.pop() {
        return Some(psql);
    }
    let which = Command::new("sh")
        .args(["-c", "command -v psql"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&which.stdout).trim());
    is_elf(&path).then_some(path)
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// A local image `nhi-test-psql:<hash>` with the host's `psql` (as `/usr/bin/psql`
/// too), `/bin/sh` and `/bin/sleep`, the libraries and loader they link, an
/// `/etc/passwd` and `/etc/group` with root and nobody, and an empty `/tmp`; built
/// from host files with `docker import` (no registry), once per process and only
/// when no image of that tag exists. The hash covers the binaries and the recipe,
/// so a PostgreSQL upgrade makes a new image.
pub fn psql_image() -> Result<String, String> {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    IMAGE.get_or_init(build_psql_image).clone()
}

fn build_psql_image() -> Result<String, String> {
    docker_ready()?;
    let psql = host_psql().ok_or("no psql binary on this host (apt install postgresql-client)")?;
    let sh = PathBuf::from("/bin/sh");
    let sleep = PathBuf::from("/bin/sleep");
    let binaries = [psql.clone(), sh, sleep];
    let tag = format!("nhi-test-psql:{}", content_hash(&binaries)?);
    if docker(&["image", "inspect", &tag]).status.success() {
        return Ok(tag);
    }

    let root = tempfile::Builder::new()
        .prefix("nhi-psql-image-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    for bin in &binaries {
        copy_keeping_path(root.path(), bin)?;
        for lib in linked_libraries(bin)? {
            copy_keeping_path(root.path(), &lib)?;
        }
    }
    let usr_bin = root.path().join("usr/bin");
    fs::create_dir_all(&usr_bin).map_err(|e| format!("mkdir {}: {e}", usr_bin.display()))?;
    if psql != Path::new("/usr/bin/psql") {
        std::os::unix::fs::symlink(&psql, usr_bin.join("psql"))
            .map_err(|e| format!("symlink psql: {e}"))?;
    }
    let etc = root.path().join("etc");
    fs::create_dir_all(&etc).map_err(|e| format!("mkdir etc: {e}"))?;
    let write = |name: &str, text: &str| {
        fs::write(etc.join(name), text).map_err(|e| format!("write /etc/{name}: {e}"))
    };
    write(
        "passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )?;
    write("group", "root:x:0:\nnogroup:x:65534:\n")?;
    let tmp = root.path().join("tmp");
    fs::create_dir_all(&tmp).map_err(|e| format!("mkdir tmp: {e}"))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))
        .map_err(|e| format!("chmod tmp: {e}"))?;

    // tar -C root -c . | docker import - tag
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .args(["--numeric-owner", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("tar: {e}"))?;
    let import = Command::new("docker")
        .args([
            "import",
            "--change",
            "ENV PATH=/usr/local/bin:/usr/bin:/bin",
            "-",
            &tag,
        ])
        .stdin(tar.stdout.take().expect("tar stdout"))
        .output()
        .map_err(|e| format!("docker import: {e}"))?;
    let tar_status = tar.wait().map_err(|e| format!("tar: {e}"))?;
    if !tar_status.success() {
        return Err(format!("tar of the image root failed: {tar_status}"));
    }
    if !import.status.success() {
        return Err(format!(
            "docker import {tag}: {}",
            String::from_utf8_lossy(&import.stderr).trim()
        ));
    }
    Ok(tag)
}

/// First 16 hex digits of SHA-256 over the recipe and the binaries' SHA-256 sums.
fn content_hash(binaries: &[PathBuf]) -> Result<String, String> {
    let sums = Command::new("sha256sum")
        .args(binaries)
        .output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    if !sums.status.success() {
        return Err(format!(
            "sha256sum: {}",
            String::from_utf8_lossy(&sums.stderr).trim()
        ));
    }
    let mut text = IMAGE_RECIPE.as_bytes().to_vec();
    text.extend_from_slice(&sums.stdout);
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("sha256sum: {e}"))?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(&text)
            .map_err(|e| format!("sha256sum: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    let hex = String::from_utf8_lossy(&out.stdout);
    let hex = hex.split_whitespace().next().unwrap_or_default();
    if hex.len() != 64 {
        return Err(format!("sha256sum printed {hex:?}"));
    }
    Ok(hex[..16].to_owned())
}

/// The absolute paths `ldd` prints for `bin`: its libraries and the dynamic loader.
fn linked_libraries(bin: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("ldd {}: {text}", bin.display()));
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            return Err(format!("ldd {}: {}", bin.display(), line.trim()));
        }
        // "libpq.so.5 => /lib/x86_64-linux-gnu/libpq.so.5 (0x...)", or the loader
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no path.
        libs.extend(
            line.split_whitespace()
                .filter(|w| w.starts_with('/'))
                .map(PathBuf::from),
        );
    }
    Ok(libs)
}

/// Copies host file `path` (following symlinks) to the same path under `root`.
fn copy_keeping_path(root: &Path, path: &Path) -> Result<(), String> {
    let dest = root.join(path.strip_prefix("/").unwrap_or(path));
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    fs::copy(path, &dest).map_err(|e| format!("copy {}: {e}", path.display()))?;
    Ok(())
}

/// A container started with `docker run -d`, removed (`docker rm -f`) on drop.
pub struct Container {
    pub id: String,
}

impl Container {
    /// `docker run -d args...`; `args` are the options, the image and the command.
    pub fn start(args: &[&str]) -> Result<Self, String> {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        let id = docker_ok(&all)?;
        Ok(Container { id })
    }

    /// The container's init process on the host.
    pub fn pid(&self) -> Option<u32> {
        docker_ok(&["inspect", "-f", "{{.State.Pid}}", &self.id])
            .ok()?
            .parse()
            .ok()
            .filter(|&pid| pid != 0)
    }

    /// See [`container_cgroup`].
    pub fn cgroup(&self) -> Option<String> {
        container_cgroup(&self.id)
    }

    /// `docker exec args...` in this container.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", &self.id];
        all.extend_from_slice(args);
        docker(&all)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The cgroup2 path (relative to the cgroup2 root, no leading `/`) of container
/// `id`'s init process, from its `/proc/<pid>/cgroup` `0::` line; `None` when the
/// container does not run.
pub fn container_cgroup(id: &str) -> Option<String> {
    let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", id])
        .ok()?
        .parse::<u32>()
        .ok()
        .filter(|&pid| pid != 0)?;
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/').to_owned())
}

/// The IPv4 address of docker's default bridge (`docker0`) on the host, the one
/// address besides loopback the container tests may use.
pub fn bridge_gateway() -> Result<String, String> {
    let from_ipam = docker_ok(&[
        "network",
        "inspect",
        "bridge",
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
    ])?;
    if !from_ipam.is_empty() {
        return Ok(from_ipam);
    }
    // Docker 20.10 leaves the default bridge's IPAM without a gateway on some fresh
    // installs (only the subnet is listed); the gateway is then the address of the
    // bridge's own interface, docker0 unless the daemon was told otherwise.
    let name = docker_ok(&[
        "network",
        "inspect",
        "bridge",
        "-f",
        r#"{{index .Options "com.docker.network.bridge.name"}}"#,
    ])
    .ok()
    .filter(|n| !n.is_empty() && n != "<no value>")
    .unwrap_or_else(|| "docker0".to_owned());
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &name])
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    interface_ipv4(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        format!("docker's bridge network has no gateway, and {name} has no IPv4 address")
    })
}

/// The first IPv4 address in `ip -4 -o addr show` output ("... inet 172.17.0.1/16 ...").
fn interface_ipv4(ip_output: &str) -> Option<String> {
    let mut words = ip_output.split_whitespace();
    words.find(|w| *w == "inet")?;
    let cidr = words.next()?;
    let addr = cidr.split('/').next()?;
    addr.parse::<std::net::Ipv4Addr>()
        .ok()
        .map(|a| a.to_string())
}

/// Returns false (after printing why) when docker cannot run here; panics instead
/// when `NHI_REQUIRE_PRIVILEGED=1`, as [`crate::require_privileged`] does.
pub fn require_docker(test: &str) -> bool {
    match docker_ready() {
        Ok(()) => true,
        Err(reason) => {
            if std::env::var(crate::REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{test}: docker cannot run: {reason}");
            }
            eprintln!(
                "SKIPPED {test}: docker cannot run: {reason} (set {}=1 to make this a failure)",
                crate::REQUIRE_ENV
            );
            false
        }
    }
}

// ---------------------------------------------------------------- podman (rootful)

/// The Podman API socket the agent asks for container names ([`podman_ready`] starts
/// `podman system service` on it when nothing answers there).
pub const PODMAN_SOCKET: &str = "/run/podman/podman.sock";

/// Flags every rootful `podman run`/`create` of the tests needs on the project's VMs:
/// their capability bounding set lacks `CAP_SYS_RESOURCE`, so podman's default raised
/// rlimits are refused ("error setting rlimit type 7: operation not permitted").
pub const PODMAN_LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// Runs `podman args...` and returns its output.
pub fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run podman {args:?}: {e}"))
}

/// `podman args...`, its trimmed stdout, or Err with its stderr.
pub fn podman_ok(args: &[&str]) -> Result<String, String> {
    let out = podman(args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Ok when rootful podman works and its Docker-compatible API answers on
/// [`PODMAN_SOCKET`] (started once per test process when it does not; left running).
pub fn podman_ready() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            podman_ok(&["--version"])
                .map_err(|e| format!("{e}; cargo xtask setup installs podman"))?;
            if std::os::unix::net::UnixStream::connect(PODMAN_SOCKET).is_ok() {
                return Ok(());
            }
            let _ = fs::create_dir_all("/run/podman");
            let mut service = Command::new("podman")
                .args(["system", "service", "--time=0"])
                .arg(format!("unix://{PODMAN_SOCKET}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot start podman system service: {e}"))?;
            let started = Instant::now();
            while std::os::unix::net::UnixStream::connect(PODMAN_SOCKET).is_err() {
                if let Ok(Some(status)) = service.try_wait() {
                    return Err(format!("podman system service exited ({status})"));
                }
                if started.elapsed() > DAEMON_START {
                    let _ = service.kill();
                    return Err(format!(
                        "podman system service did not listen on {PODMAN_SOCKET} within {DAEMON_START:?}"
                    ));
                }
                thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
        .clone()
}

/// Returns false (after printing why) when podman cannot run here; panics instead
/// when `NHI_REQUIRE_PRIVILEGED=1`.
pub fn require_podman(test: &str) -> bool {
    match podman_ready() {
        Ok(()) => true,
        Err(reason) => {
            if std::env::var(crate::REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{test}: podman cannot run: {reason}");
            }
            eprintln!(
                "SKIPPED {test}: podman cannot run: {reason} (set {}=1 to make this a failure)",
                crate::REQUIRE_ENV
            );
            false
        }
    }
}

/// The [`psql_image`] in podman's storage (`docker save | podman load`, never pulled),
/// as `localhost/<tag>`.
pub fn podman_psql_image() -> Result<String, String> {
    let tag = psql_image()?;
    let local = format!("localhost/{tag}");
    if podman(&["image", "exists", &local]).status.success() {
        return Ok(local);
    }
    let mut save = Command::new("docker")
        .args(["save", &tag])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("docker save: {e}"))?;
    let stdout = save
        .stdout
        .take()
        .ok_or_else(|| "docker save: no stdout".to_string())?;
    let load = Command::new("podman")
        .arg("load")
        .stdin(stdout)
        .output()
        .map_err(|e| format!("podman load: {e}"))?;
    let saved = save.wait().map_err(|e| format!("docker save: {e}"))?;
    if !saved.success() || !load.status.success() {
        return Err(format!(
            "docker save | podman load: {}",
            String::from_utf8_lossy(&load.stderr).trim()
        ));
    }
    Ok(local)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bridge_address_is_read_from_ip_output() {
        let out = "5: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(super::interface_ipv4(out).as_deref(), Some("172.17.0.1"));
        assert_eq!(super::interface_ipv4(""), None);
        assert_eq!(super::interface_ipv4("5: docker0 inet garbage"), None);
    }
}
