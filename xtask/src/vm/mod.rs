//! `cargo xtask vm`: a QEMU/KVM test bed with a real systemd and Debian's kernels.
//!
//! - `image`:   build (once, cached) a Debian root filesystem with systemd, PostgreSQL and
//!   Debian's kernel packages (mmdebstrap from Debian's archive; nothing else is
//!   downloaded), as an ext4 image plus one vmlinuz/initrd pair per kernel.
//! - `unit`:    boot it, install the Debian package (`cargo xtask package`) with `dpkg -i`
//!   and check it and the systemd unit for real (started with the shipped config, notify,
//!   reload, stop, kill -9, lineage under the syscall filter, journald priorities,
//!   `systemd-analyze security`, then `dpkg -r` and `--purge`).
//! - `kernels`: run the privileged integration tests (interception, fail-closed, lineage,
//!   a PostgreSQL session) on the host's kernel and on every cached Debian kernel; one
//!   line per kernel.
//!
//! Each boot gets a copy-on-write overlay of the image (the image itself never changes)
//! and a second disk, the *payload*: an ext4 image made from a directory holding the
//! binaries under test and the script to run (`run.sh`). A unit baked into the image
//! (`nhi-vm-runner.service`) mounts the payload, runs the script with its output on the
//! second serial port (a file on the host), and powers off. The host reads that file:
//! `NHI-CHECK ok|FAIL ...` lines and a final `NHI-VM-END <status>`.
mod image;
mod kernels;
mod qemu;
mod unit;

use std::{path::PathBuf, process::Command};

use anyhow::bail;
use clap::Subcommand;

use crate::util::{self, output, run};

#[derive(Subcommand)]
pub enum VmCmd {
    /// Build the cached Debian image (systemd, PostgreSQL, kernels) if it is missing.
    Image {
        /// Rebuild even when a cached image exists.
        #[arg(long)]
        rebuild: bool,
    },
    /// The Debian package and its systemd unit under real systemd: dpkg -i (enabled,
    /// started, serving with the shipped config), reinstall, reload, stop, kill -9,
    /// lineage, journald priorities, systemd-analyze security, dpkg -r and --purge.
    Unit {
        /// Kernel release to boot (default: the release's own, the oldest in the image).
        #[arg(long)]
        kernel: Option<String>,
        /// Install this package instead of building one (`cargo xtask package`).
        #[arg(long)]
        deb: Option<PathBuf>,
    },
    /// The privileged integration tests on every kernel obtainable here.
    Kernels {
        /// Skip the host's own kernel (run only the VM kernels).
        #[arg(long)]
        no_host: bool,
        /// Only these kernel releases (repeatable; default all).
        #[arg(long)]
        kernel: Vec<String>,
    },
}

pub fn vm(cmd: VmCmd) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("cargo xtask vm needs root (mmdebstrap, the integration tests)");
    }
    host_packages()?;
    match cmd {
        VmCmd::Image { rebuild } => {
            let image = image::ensure(rebuild)?;
            for k in &image.kernels {
                eprintln!("kernel {}", k.release);
            }
            println!(
                "vm image: {} ({} kernels)",
                image.dir.display(),
                image.kernels.len()
            );
            Ok(())
        }
        VmCmd::Unit { kernel, deb } => unit::unit(kernel.as_deref(), deb.as_deref()),
        VmCmd::Kernels { no_host, kernel } => kernels::kernels(!no_host, &kernel),
    }
}

/// The host side: QEMU, qemu-img for overlays, mmdebstrap, mkfs.ext4 -d.
const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "qemu-utils", "mmdebstrap", "e2fsprogs"];

fn host_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    newer_qemu()
}

/// The oldest QEMU that boots every kernel of the image under TCG: Debian 12's 7.2
/// crashes 6.12 guests early in boot ("Oops: double fault"); 10.0 from backports boots
/// and passes them (checked 2026-12-06).
const MIN_QEMU_MAJOR: u32 = 8;

/// Installs QEMU from `<codename>-backports` (Debian's own archive, the one the host
/// uses) when the installed one is older than [`MIN_QEMU_MAJOR`].
fn newer_qemu() -> anyhow::Result<()> {
    let major = qemu_major();
    if major.is_some_and(|m| m >= MIN_QEMU_MAJOR) {
        return Ok(());
    }
    let sources = image::apt_sources()?;
    let suite = format!("{}-backports", sources.codename);
    let Some(line) = sources
        .lines
        .iter()
        .find(|l| l.contains(&format!(" {suite} ")))
    else {
        eprintln!("vm: QEMU {major:?} is older than {MIN_QEMU_MAJOR} and apt has no {suite}; 6.12 guests may not boot under TCG");
        return Ok(());
    };
    let list = std::path::Path::new("/etc/apt/sources.list.d/nhi-vm-backports.list");
    if !list.exists() {
        std::fs::write(list, format!("{line}\n"))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", list.display()))?;
    }
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "-t", &suite])
        .args(["qemu-system-x86", "qemu-utils"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The major version of `qemu-system-x86_64` ("QEMU emulator version 10.0.2 ...").
fn qemu_major() -> Option<u32> {
    let text = output(Command::new("qemu-system-x86_64").arg("--version"))?;
    parse_qemu_major(&text)
}

fn parse_qemu_major(text: &str) -> Option<u32> {
    let rest = text.split("version ").nth(1)?;
    rest.split('.').next()?.trim().parse().ok()
}

/// Where images, overlays and payloads live (never committed): `$NHI_VM_CACHE`, else
/// `target/vm`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("NHI_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::root().join("target/vm"))
}

#[cfg(test)]
mod qemu_version_tests {
    use super::parse_qemu_major;

    #[test]
    fn qemu_major_versions_parse() {
        assert_eq!(
            parse_qemu_major(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n"
            ),
            Some(10)
        );
        assert_eq!(
            parse_qemu_major("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7)"),
            Some(7)
        );
        assert_eq!(parse_qemu_major("garbage"), None);
    }
}
