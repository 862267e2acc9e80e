//! The cached Debian image: mmdebstrap from the host's own Debian archive (the one apt
//! already uses), systemd as PID 1, PostgreSQL, and Debian's cloud kernels (the release's
//! own and the newest from its backports), with the runner unit that executes a payload.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use super::cache_dir;
use crate::util::run;

/// Packages in the image beside the `apt` variant's essentials.
const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "initramfs-tools",
    "linux-image-cloud-amd64",
    "postgresql",
    "postgresql-client",
    "procps",
    "iproute2",
    "util-linux",
    "e2fsprogs",
    "sqlite3",
];

/// Mounts the payload disk, runs its `run.sh` with the output on the second serial port
/// (the host reads it from a file), and powers the VM off whatever happened.
const RUNNER_SCRIPT: &str = include_str!("guest/nhi-vm-runner");
const RUNNER_UNIT: &str = include_str!("guest/nhi-vm-runner.service");

/// Bump to force a rebuild when the recipe changes in a way the hashed inputs miss.
const RECIPE_VERSION: u32 = 1;

/// One bootable kernel of the image.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` inside the VM, e.g. `6.1.0-28-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
}

/// A built image: `root.img` (ext4, never written: each boot gets an overlay) and kernels.
#[derive(Debug)]
pub struct Image {
    pub dir: PathBuf,
    pub root: PathBuf,
    /// Oldest first.
    pub kernels: Vec<Kernel>,
}

impl Image {
    /// The kernel whose release is `want`, or the release's own (the oldest).
    pub fn kernel(&self, want: Option<&str>) -> anyhow::Result<&Kernel> {
        match want {
            None => self.kernels.first().context("the image has no kernel"),
            Some(w) => self
                .kernels
                .iter()
                .find(|k| k.release == w)
                .with_context(|| {
                    format!(
                        "no kernel {w} in the image (have: {})",
                        self.kernels
                            .iter()
                            .map(|k| k.release.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }),
        }
    }
}

/// Returns the cached image, building it first when it is missing (or `rebuild`).
pub fn ensure(rebuild: bool) -> anyhow::Result<Image> {
    let sources = apt_sources()?;
    let key = recipe_key(&sources);
    let dir = cache_dir().join(format!("image-{key:016x}"));
    if rebuild && dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    if !dir.join("root.img").exists() {
        let started = std::time::Instant::now();
        build(&dir, &sources)?;
        eprintln!(
            "vm image built in {:.0} s: {}",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
    }
    load(&dir)
}

fn load(dir: &Path) -> anyhow::Result<Image> {
    let mut kernels = Vec::new();
    for entry in fs::read_dir(dir.join("kernels")).context("reading the image's kernels")? {
        let path = entry?.path();
        let release = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("kernel directory name")?
            .to_string();
        kernels.push(Kernel {
            release,
            vmlinuz: path.join("vmlinuz"),
            initrd: path.join("initrd.img"),
        });
    }
    kernels.sort_by_key(|k| version_key(&k.release));
    if kernels.is_empty() {
        bail!("the image in {} has no kernel", dir.display());
    }
    Ok(Image {
        dir: dir.to_path_buf(),
        root: dir.join("root.img"),
        kernels,
    })
}

/// `6.12.9+bpo-cloud-amd64` -> [6, 12, 9]: numeric order of the leading version.
pub fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .take_while(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The apt archive the host uses, for the image: the release's codename and the
/// `deb URI SUITE main` lines of its Debian suites (plus backports, for newer kernels).
#[derive(Debug, Clone, PartialEq)]
pub struct Sources {
    pub codename: String,
    pub lines: Vec<String>,
}

pub fn apt_sources() -> anyhow::Result<Sources> {
    let os = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let codename = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .context("no VERSION_CODENAME in /etc/os-release")?;
    let mut text = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    text.push('\n');
    let mut deb822 = String::new();
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            let p = e.path();
            match p.extension().and_then(|e| e.to_str()) {
                Some("list") => {
                    text.push_str(&fs::read_to_string(&p).unwrap_or_default());
                    text.push('\n');
                }
                Some("sources") => {
                    deb822.push_str(&fs::read_to_string(&p).unwrap_or_default());
                    deb822.push_str("\n\n");
                }
                _ => {}
            }
        }
    }
    sources_from(&codename, &text, &deb822)
}

/// Picks the entries of `codename`'s suites (`bookworm`, `bookworm-updates`,
/// `bookworm-security`) from one-line and deb822 apt sources, and adds
/// `<codename>-backports` on the archive that serves `<codename>` itself.
pub fn sources_from(codename: &str, one_line: &str, deb822: &str) -> anyhow::Result<Sources> {
    let mut entries: Vec<(String, String)> = Vec::new(); // (uri, suite)
    for line in one_line.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
        if words.next() != Some("deb") {
            continue;
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            entries.push((uri.to_string(), suite.to_string()));
        }
    }
    for stanza in deb822.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            })
        };
        if !field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb")) {
            continue;
        }
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
            continue;
        };
        for uri in uris.split_whitespace() {
            for suite in suites.split_whitespace() {
                entries.push((uri.to_string(), suite.to_string()));
            }
        }
    }
    let ours =
        |s: &str| s == codename || s.strip_prefix(codename).is_some_and(|r| r.starts_with('-'));
    let mut lines: Vec<String> = Vec::new();
    let mut main_uri = None;
    for (uri, suite) in &entries {
        if !ours(suite) {
            continue;
        }
        if suite == codename {
            main_uri.get_or_insert_with(|| uri.clone());
        }
        let line = format!("deb {uri} {suite} main");
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    let main_uri = main_uri.with_context(|| {
        format!("apt has no source for {codename} (the image is built from it)")
    })?;
    let backports = format!("deb {main_uri} {codename}-backports main");
    if !lines.contains(&backports) {
        lines.push(backports);
    }
    Ok(Sources {
        codename: codename.to_string(),
        lines,
    })
}

/// FNV-1a over everything that shapes the image.
fn recipe_key(sources: &Sources) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |s: &str| {
        for b in s.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(&RECIPE_VERSION.to_string());
    feed(&sources.codename);
    for l in &sources.lines {
        feed(l);
    }
    for p in PACKAGES {
        feed(p);
    }
    feed(RUNNER_SCRIPT);
    feed(RUNNER_UNIT);
    h
}

fn build(dir: &Path, sources: &Sources) -> anyhow::Result<()> {
    let work = dir.with_extension("building");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work)?;
    let rootfs = work.join("rootfs");
    // The newest kernel of the release's backports beside the release's own: the
    // metapackage from backports pulls the newer versioned image; the older one stays.
    let backports_kernel = format!(
        "chroot \"$1\" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -t {}-backports linux-image-cloud-amd64",
        sources.codename
    );
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--mode=root", "--variant=apt", "--components=main"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(format!("--customize-hook={backports_kernel}"))
        .arg(&sources.codename)
        .arg(&rootfs);
    for l in &sources.lines {
        cmd.arg(l);
    }
    run(&mut cmd)?;
    customize(&rootfs)?;

    let kernels = work.join("kernels");
    fs::create_dir_all(&kernels)?;
    let mut found = 0;
    for e in fs::read_dir(rootfs.join("boot"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        let Some(release) = name.strip_prefix("vmlinuz-") else {
            continue;
        };
        let initrd = rootfs.join("boot").join(format!("initrd.img-{release}"));
        if !initrd.exists() {
            bail!("kernel {release} has no initrd in the image");
        }
        let kdir = kernels.join(release);
        fs::create_dir_all(&kdir)?;
        fs::copy(rootfs.join("boot").join(&name), kdir.join("vmlinuz"))?;
        fs::copy(&initrd, kdir.join("initrd.img"))?;
        found += 1;
    }
    if found == 0 {
        bail!("mmdebstrap installed no kernel");
    }
    // ext4 straight from the directory: no loop device, no mount.
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "nhi-root", "-d"])
        .arg(&rootfs)
        .arg(work.join("root.img"))
        .arg("6G"))?;
    fs::remove_dir_all(&rootfs).context("removing the staging root filesystem")?;
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::rename(&work, dir).context("moving the built image into place")?;
    Ok(())
}

/// Files the image needs beside its packages.
fn customize(rootfs: &Path) -> anyhow::Result<()> {
    let write = |rel: &str, text: &str, mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = rootfs.join(rel);
        if let Some(p) = path.parent() {
            fs::create_dir_all(p)?;
        }
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    write(
        "etc/fstab",
        "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
        0o644,
    )?;
    write("etc/hostname", "nhi-vm\n", 0o644)?;
    write("usr/local/sbin/nhi-vm-runner", RUNNER_SCRIPT, 0o755)?;
    write(
        "etc/systemd/system/nhi-vm-runner.service",
        RUNNER_UNIT,
        0o644,
    )?;
    let wants = rootfs.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    let link = wants.join("nhi-vm-runner.service");
    if !link.exists() {
        std::os::unix::fs::symlink("/etc/systemd/system/nhi-vm-runner.service", link)?;
    }
    // The tests' clients log in over TCP on loopback without a password (the VM has no
    // network but its own loopback).
    for e in
        fs::read_dir(rootfs.join("etc/postgresql")).context("no PostgreSQL cluster in the image")?
    {
        let hba = e?.path().join("main/pg_hba.conf");
        let old = fs::read_to_string(&hba).with_context(|| format!("reading {}", hba.display()))?;
        let new = format!("host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n{old}");
        fs::write(&hba, new)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_keep_the_release_suites_and_add_backports() {
        let one_line = "deb http://mirror.test/debian bookworm main contrib\n\
                        # deb http://old.test/debian bookworm main\n\
                        deb https://vendor.test/apt vendor-bookworm main\n";
        let deb822 = "Types: deb\nURIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb\nURIs: http://security.test/debian-security\n\
                      Suites: bookworm-security\nComponents: main\n\nTypes: deb\nURIs: https://node.test\n\
                      Suites: nodistro\n";
        let s = sources_from("bookworm", one_line, deb822).unwrap();
        assert_eq!(
            s.lines,
            vec![
                "deb http://mirror.test/debian bookworm main",
                "deb http://mirror.test/debian bookworm-updates main",
                "deb http://security.test/debian-security bookworm-security main",
                "deb http://mirror.test/debian bookworm-backports main",
            ]
        );
        assert!(sources_from("trixie", one_line, deb822).is_err());
    }

    #[test]
    fn kernels_sort_by_version_not_text() {
        let mut r = vec!["6.12.9+bpo-cloud-amd64", "6.1.0-28-cloud-amd64", "6.10.1"];
        r.sort_by_key(|a| version_key(a));
        assert_eq!(
            r,
            vec!["6.1.0-28-cloud-amd64", "6.10.1", "6.12.9+bpo-cloud-amd64"]
        );
    }
}
