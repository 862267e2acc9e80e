//! `cargo xtask setup`: everything building and testing need, installed only when
//! missing, so running it again costs a few checks.
use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::util::{self, output, run};

/// Debian packages: a PostgreSQL server and clients for the integration tests and
/// benchmarks, nginx and Python HTTP/WebSocket libraries for the HTTP tests, sqlite3 to
/// inspect journals, curl and iproute2 for tests, Docker for the container tests, and a
/// C toolchain for the bundled SQLite.
const APT_PACKAGES: &[&str] = &[
    "build-essential",
    "pkg-config",
    "postgresql",
    "postgresql-client",
    "postgresql-contrib",
    // A driver from another language for the PostgreSQL tests (psycopg 3, binary results).
    "python3-psycopg",
    // The pooler and the reverse proxy the benchmark compares the agent with.
    "pgbouncer",
    // The HTTP tests' real servers and clients: nginx (TLS and h2 upstream), Python
    // `websockets` (a WebSocket client and server) and `requests` (an HTTP client from
    // another language), for the /usr/bin/python3 the tests run, as psycopg above.
    "nginx",
    "python3-websockets",
    "python3-requests",
    "openssl",
    // age-keygen: the auditor keys of the sealed-originals test ([evidence]
    // auditor_recipients), made as an auditor makes them.
    "age",
    "sqlite3",
    "curl",
    "iproute2",
    "util-linux",
    // The container tests' engine (tests/src/docker.rs): dockerd with its containerd and
    // runc, started by the tests when none runs; images are built locally with `docker
    // import` from host files, never pulled.
    "docker.io",
    // Rootful podman for the podman container test (tests/src/docker.rs): images are
    // `docker save | podman load`ed, never pulled; its API answers on
    // /run/podman/podman.sock (`podman system service`, started by the test).
    "podman",
    // `python3 -m venv` (with ensurepip) for the AWS test tools' venv, target/venv.
    "python3-venv",
    // The SSH tests' real server (sshd, started by the tests on a loopback port with its
    // own host key and configuration; the distribution's service is not used) and
    // rsync, one of the real clients run over SSH.
    "openssh-server",
    "rsync",
    // The Kubernetes tests' real client, run against the fake API server
    // tests/kube/apiserver.py (no real cluster can be installed here). Debian has no
    // kubectl: this is the Google Cloud SDK repository's package (`deb
    // https://packages.cloud.google.com/apt cloud-sdk-bookworm main`, not added by setup),
    // whose /usr/bin/kubectl dispatches to the bundled kubectl matching the server's
    // /version (1.32 for the fake server).
    "kubectl",
    // The MySQL tests (tests/tests/mysql.rs): a real MariaDB server (started by the tests
    // in a temp data directory on a loopback port) and real clients: the `mariadb` CLI,
    // PyMySQL (text protocol) and Perl's DBD::MariaDB on libmariadb with
    // `mariadb_server_prepare=1` (the binary protocol: COM_STMT_PREPARE / EXECUTE);
    // sysbench for the `cargo xtask bench` MySQL row.
    "mariadb-server",
    "mariadb-client",
    "python3-pymysql",
    "libdbd-mariadb-perl",
    "sysbench",
    // The Redis tests' real server (started by the tests on a loopback port, no
    // persistence, with an ACL user) and clients: redis-cli, redis-benchmark (also the
    // bench's `redis-benchmark -t get,set -P 16`) and redis-py for /usr/bin/python3.
    "redis-server",
    "redis-tools",
    "python3-redis",
];

/// s3s-fs, the S3-compatible server the shipping tests upload to (tests/tests/shipping.rs).
const S3S_FS_VERSION: &str = "0.14.1";

/// The AWS test tools, pip-installed into `target/venv` (tests/src/aws.rs): the AWS CLI v1
/// and boto3 as real clients, and moto's server as the AWS endpoint (IAM, STS, Secrets
/// Manager, S3, ...) with IAM authentication enforced. Changing this list reinstalls.
const PYTHON_REQUIREMENTS: &[&str] = &["awscli==1.46.3", "boto3==1.44.18", "moto[server]==5.2.6"];

/// bpf-linker release known to build here (see EBPF-FACTS.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> anyhow::Result<()> {
    apt()?;
    nightly()?;
    bpf_linker()?;
    bpffs()?;
    s3s_fs()?;
    python_venv()?;
    eprintln!("setup: done");
    Ok(())
}

/// Only what building the agent needs (the eBPF object: nightly with rust-src and
/// bpf-linker), for `cargo xtask package`, which runs no tests.
pub fn build_tools() -> anyhow::Result<()> {
    nightly()?;
    bpf_linker()
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "missing apt packages {missing:?}; run as root or install them: apt-get install {}",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

fn nightly() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker built against the nightly toolchain's own libLLVM: its default feature
/// wants a system LLVM this machine does not have. The binary links the versioned
/// library by name, so a changed nightly needs a rebuild; `--version` failing tells.
fn bpf_linker() -> anyhow::Result<()> {
    let works = output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if works {
        return Ok(());
    }
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
            .context("finding the nightly sysroot")?;
    let sysroot = sysroot.trim();
    let verbose = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
        .context("rustc -vV")?;
    let major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no LLVM version in rustc -vV")?
        .to_string();
    let lib_dir = Path::new(sysroot).join("lib");
    let lib = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
            })
        })
        .with_context(|| format!("no libLLVM in {}", lib_dir.display()))?;
    let link_dir = std::env::temp_dir().join(format!("nhi-bpf-linker-llvm-{}", std::process::id()));
    fs::create_dir_all(&link_dir)?;
    let link = link_dir.join("libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)?;
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (1-2 minutes)",
        lib.display()
    );
    let result = run(Command::new(util::cargo())
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", sysroot)
        .env("RUSTFLAGS", format!("-L {}", link_dir.display())));
    let _ = fs::remove_dir_all(&link_dir);
    result
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted = mounts
        .lines()
        .any(|l| l.contains(" /sys/fs/bpf ") && l.contains(" - bpf "));
    if mounted {
        return Ok(());
    }
    if !util::is_root() {
        eprintln!(
            "setup: bpffs is not mounted at /sys/fs/bpf (the agent mounts it when run as root)"
        );
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// `s3s-fs` for the shipping tests, from crates.io (a source build, a few minutes the
/// first time). The harness looks in `$S3S_FS`, `~/.cargo/bin`, then `PATH`.
fn s3s_fs() -> anyhow::Result<()> {
    let works = output(Command::new("s3s-fs").arg("--version"))
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            output(Command::new(Path::new(&home).join(".cargo/bin/s3s-fs")).arg("--version"))
        })
        .is_some_and(|v| v.contains(S3S_FS_VERSION));
    if works {
        return Ok(());
    }
    eprintln!("setup: installing s3s-fs {S3S_FS_VERSION} (a few minutes)");
    run(Command::new(util::cargo()).args([
        "install",
        "s3s-fs",
        "--version",
        S3S_FS_VERSION,
        "--locked",
        "--features",
        "binary",
    ]))
}

/// A venv at `target/venv` with [`PYTHON_REQUIREMENTS`], made with the system
/// `/usr/bin/python3` (python3-venv). A stamp file in it holds the requirement list it
/// was installed with: when it matches and the venv's python runs, nothing is done; a
/// changed list reinstalls, and a venv whose python no longer runs (e.g. after a Python
/// upgrade) is recreated.
fn python_venv() -> anyhow::Result<()> {
    let venv = util::root().join("target/venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("nhi-requirements.txt");
    let wanted = format!("{}\n", PYTHON_REQUIREMENTS.join("\n"));
    let python_runs = output(Command::new(&python).arg("--version")).is_some();
    let installed = fs::read_to_string(&stamp).ok();
    if python_runs && installed.as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    eprintln!("setup: installing the AWS test tools into target/venv");
    if !python_runs {
        fs::create_dir_all(util::root().join("target"))?;
        // --clear: start over when a broken or half-made venv is in the way.
        run(Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
    }
    // The stamp goes only after a complete install: a failed one is retried next time.
    let _ = fs::remove_file(&stamp);
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PYTHON_REQUIREMENTS))?;
    fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))
}
