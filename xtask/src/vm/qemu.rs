//! One boot: a copy-on-write overlay of the image, a payload disk made from a directory,
//! QEMU with KVM and no network, and the guest's report read from the second serial port.
use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{
    cache_dir,
    image::{Image, Kernel},
};
use crate::util::run;

/// What a boot reported.
#[derive(Debug)]
pub struct Outcome {
    /// Everything the guest's run.sh printed (second serial port).
    pub report: String,
    /// The kernel's and systemd's console (first serial port), for diagnosis.
    pub console: PathBuf,
    /// run.sh's exit status, when the guest got as far as reporting it.
    pub status: Option<i32>,
}

impl Outcome {
    /// The first line where the guest kernel crashed (oops=panic makes any oops one),
    /// if it did.
    pub fn crash(&self) -> Option<String> {
        let text = fs::read_to_string(&self.console).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("BUG:") || l.contains("Oops") || l.contains("Kernel panic"))
            .map(|l| l.trim().to_string())
    }

    /// The last lines of the console, for a failure message.
    pub fn console_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Boots `kernel` of `image` with `payload` (a directory whose `run.sh` the guest runs)
/// and waits for it to power off, at most `timeout`. Report lines are echoed to stderr
/// with `prefix` as they arrive.
pub fn boot(
    image: &Image,
    kernel: &Kernel,
    payload: &Path,
    timeout: Duration,
    prefix: &str,
) -> anyhow::Result<Outcome> {
    let runs = cache_dir().join("runs");
    let dir = runs.join(format!("{}-{}", kernel.release, std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let overlay = dir.join("overlay.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&image.root)
        .arg(&overlay))?;
    let payload_img = dir.join("payload.img");
    let size_mib = dir_size(payload)? / (1 << 20) * 5 / 4 + 64;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "nhi-payload", "-d"])
        .arg(payload)
        .arg(&payload_img)
        .arg(format!("{size_mib}M")))?;
    let console = dir.join("console.log");
    let report = dir.join("report.log");
    let started = Instant::now();
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10", "qemu-system-x86_64"])
        .args(accel_args())
        .args(["-smp", "2", "-m", "3072"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&kernel.initrd)
        .args([
            "-append",
            "root=/dev/vda rw console=ttyS0 panic=-1 oops=panic systemd.show_status=0 loglevel=4",
        ])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            payload_img.display()
        ))
        .args(["-device", "virtio-rng-pci"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", report.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("qemu.stderr"))?);
    eprintln!(
        "{prefix}booting {} with {} ({})",
        kernel.release,
        accel(),
        dir.display()
    );
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let mut shown = 0usize;
    let mut err = std::io::stderr();
    let status = loop {
        let text = fs::read_to_string(&report).unwrap_or_default();
        // Echo whole lines only.
        if let Some(end) = text[shown.min(text.len())..].rfind('\n') {
            for line in text[shown..shown + end].lines() {
                let _ = writeln!(err, "{prefix}{line}");
            }
            shown += end + 1;
        }
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let text = fs::read_to_string(&report).unwrap_or_default();
    for line in text[shown.min(text.len())..].lines() {
        let _ = writeln!(err, "{prefix}{line}");
    }
    let end = text
        .lines()
        .filter_map(|l| l.strip_prefix("NHI-VM-END "))
        .next_back()
        .and_then(|r| r.split_whitespace().next()?.parse::<i32>().ok());
    // The overlay and payload are per boot; the logs stay for diagnosis.
    let _ = fs::remove_file(&overlay);
    let _ = fs::remove_file(&payload_img);
    if status.is_none() {
        bail!(
            "the VM ({}) did not power off within {} s; console tail:\n{}",
            kernel.release,
            timeout.as_secs(),
            tail(&console, 30)
        );
    }
    Ok(Outcome {
        report: text,
        console,
        status: end,
    })
}

/// KVM where it runs stock kernels, else QEMU's software emulation (TCG, several times
/// slower). `$NHI_VM_ACCEL` (`kvm` or `tcg`) overrides the choice.
///
/// Why not KVM whenever /dev/kvm exists: on the project's machines /dev/kvm is served by
/// `kvm_pvm` (KVM inside a VM without hardware virtualisation), which boots only kernels
/// built as PVM guests; Debian's kernels hang or stop with "KVM internal error"
/// (emulation failure) before they print anything.
pub fn accel() -> &'static str {
    match std::env::var("NHI_VM_ACCEL").as_deref() {
        Ok("kvm") => "kvm",
        Ok("tcg") => "tcg",
        _ if Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists() => "kvm",
        _ => "tcg",
    }
}

fn accel_args() -> Vec<&'static str> {
    match accel() {
        "kvm" => vec!["-machine", "q35,accel=kvm", "-cpu", "host"],
        _ => vec![
            "-machine",
            "q35",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
        ],
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let meta = fs::symlink_metadata(e.path())?;
        total += if meta.is_dir() {
            dir_size(&e.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// A fresh payload directory under the cache.
pub fn payload_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = cache_dir().join("payload").join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Copies `from` into the payload directory as `rel`, with `mode`.
pub fn add(payload: &Path, rel: &str, from: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let to = payload.join(rel);
    if let Some(p) = to.parent() {
        fs::create_dir_all(p)?;
    }
    fs::copy(from, &to).with_context(|| format!("copying {} to the payload", from.display()))?;
    fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Writes `text` into the payload directory as `rel`, with `mode`.
pub fn write(payload: &Path, rel: &str, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let to = payload.join(rel);
    if let Some(p) = to.parent() {
        fs::create_dir_all(p)?;
    }
    fs::write(&to, text)?;
    fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
    Ok(())
}
