//! `cargo xtask package`: the Debian package, `target/debian/nhi-agent_<version>_<arch>.deb`.
//!
//! Built with `dpkg-deb` from a staged tree rather than cargo-deb: dpkg-deb and
//! dpkg-shlibdeps come with build-essential (already installed by `cargo xtask setup`),
//! and what the package needs beyond a file list (the unit's path rewritten, pages and
//! completions made by the binary itself, maintainer scripts that detach the pinned
//! programs on removal) is a few lines here either way. The steps:
//!
//! 1. `cargo build --release -p nhi-agent` (agent/build.rs builds the eBPF object and
//!    records the commit for `--version`), then `strip --strip-unneeded` (the embedded
//!    eBPF object is data and keeps its BTF).
//! 2. `nhi-agent generate` writes the man pages and completions from the real clap
//!    command; pages are gzipped (`-9n`, reproducible).
//! 3. The staged tree ([`layout`]): `/usr/bin/nhi-agent`, the unit in
//!    `/lib/systemd/system` with `ExecStart=/usr/bin/nhi-agent` ([`packaged_unit`]; the
//!    repository's unit keeps `/usr/local/bin` for the hand install),
//!    `/etc/nhi-agent/agent.toml` (a conffile: `policies/example.toml`, which starts
//!    without any secret file), pages, completions, the example policies and the
//!    copyright file.
//! 4. `DEBIAN/control` ([`control`], `Depends` from dpkg-shlibdeps), `conffiles`,
//!    `postinst`/`prerm`/`postrm` (`debian/`), then `dpkg-deb --root-owner-group --build`.
//! 5. [`inspect`]: the built package is read back (`dpkg-deb --info`/`--contents`) and its
//!    binary's `--version` must name this checkout's commit; a package missing a piece
//!    fails the command.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _};

use crate::{setup, util};

const POSTINST: &str = include_str!("debian/postinst");
const PRERM: &str = include_str!("debian/prerm");
const POSTRM: &str = include_str!("debian/postrm");

pub const PACKAGE: &str = "nhi-agent";
const CONFFILE: &str = "/etc/nhi-agent/agent.toml";
const HOMEPAGE: &str = "https://github.com/nhi-agent/nhi-agent";
/// Where the repository's unit (`systemd/nhi-agent.service`) expects a hand install.
const HAND_INSTALLED_BIN: &str = "/usr/local/bin/nhi-agent";
const PACKAGED_BIN: &str = "/usr/bin/nhi-agent";

/// Which build goes into the package. `Debug` is for `cargo xtask test`, which has the
/// debug binary already and checks the packaging without a release build (uncompressed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Profile {
    Release,
    Debug,
}

/// One file of the package: where it goes, where it comes from, its mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub dest: String,
    pub source: Source,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A file of the workspace (relative to its root) or of the build (absolute).
    File(PathBuf),
    /// `systemd/nhi-agent.service` with the packaged binary's path.
    Unit,
    /// A generated file (man page, completion) under the generate directory, gzipped
    /// when the destination ends in `.gz`.
    Generated(String),
}

/// `cargo xtask package`: builds, stages, packs and inspects; prints the path.
pub fn package(profile: Profile) -> anyhow::Result<PathBuf> {
    for tool in ["dpkg-deb", "dpkg-shlibdeps", "strip", "gzip"] {
        ensure!(
            util::output(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_some(),
            "{tool} is missing (apt-get install dpkg-dev binutils gzip)"
        );
    }
    setup::build_tools()?;
    let mut build = Command::new(util::cargo());
    build.args(["build", "-p", "nhi-agent", "--bin", "nhi-agent"]);
    let profile_dir = match profile {
        Profile::Release => {
            build.arg("--release");
            "release"
        }
        Profile::Debug => "debug",
    };
    util::run(&mut build)?;
    let target = util::target_dir();
    let built = target.join(profile_dir).join("nhi-agent");

    let version = env!("CARGO_PKG_VERSION");
    let arch = util::output(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg --print-architecture")?
        .trim()
        .to_string();
    let out_dir = match profile {
        Profile::Release => target.join("debian"),
        Profile::Debug => target.join("debian/debug"),
    };
    let name = format!("{PACKAGE}_{version}_{arch}");
    let work = out_dir.join(format!("{name}.work"));
    let _ = fs::remove_dir_all(&work);
    let staged = work.join("root");
    let generated = work.join("generated");
    fs::create_dir_all(&staged)?;

    let bin = work.join("nhi-agent");
    fs::copy(&built, &bin).with_context(|| format!("copying {}", built.display()))?;
    util::run(Command::new("strip").arg("--strip-unneeded").arg(&bin))?;
    // It prints the paths it wrote; the layout lists them.
    util::run(
        Command::new(&bin)
            .arg("generate")
            .arg(&generated)
            .stdout(std::process::Stdio::null()),
    )?;
    let man_pages = list_dir(&generated.join("man"))?;
    fs::write(generated.join("changelog"), changelog_for(version)?)?;
    let depends = shlib_depends(&bin, &work)?;

    let root = util::root();
    let entries = layout(&man_pages, &bin);
    let mut installed_bytes = 0u64;
    for e in &entries {
        let dest = staged.join(e.dest.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().expect("a file in a directory"))?;
        match &e.source {
            Source::File(p) => {
                let src = root.join(p);
                fs::copy(&src, &dest).with_context(|| format!("copying {}", src.display()))?;
            }
            Source::Unit => {
                let text = fs::read_to_string(root.join("systemd/nhi-agent.service"))?;
                fs::write(&dest, packaged_unit(&text)?)?;
            }
            Source::Generated(rel) => {
                let src = generated.join(rel);
                if e.dest.ends_with(".gz") {
                    let gz = Command::new("gzip")
                        .args(["-9n", "-c"])
                        .arg(&src)
                        .output()
                        .with_context(|| format!("gzip {}", src.display()))?;
                    ensure!(gz.status.success(), "gzip {} failed", src.display());
                    fs::write(&dest, gz.stdout)?;
                } else {
                    fs::copy(&src, &dest).with_context(|| format!("copying {}", src.display()))?;
                }
            }
        }
        fs::set_permissions(&dest, fs::Permissions::from_mode(e.mode))?;
        installed_bytes += fs::metadata(&dest)?.len();
    }

    let debian = staged.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let control_text = control(version, &arch, &depends, installed_bytes.div_ceil(1024));
    fs::write(debian.join("control"), control_text)?;
    fs::write(debian.join("conffiles"), format!("{CONFFILE}\n"))?;
    for (script, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        let p = debian.join(script);
        fs::write(&p, text)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
    }
    // Directories 0755 whatever the umask (dpkg keeps the staged modes).
    set_dir_modes(&staged)?;

    let deb = out_dir.join(format!("{name}.deb"));
    let compression = match profile {
        Profile::Release => "-Zxz",
        Profile::Debug => "-Znone",
    };
    util::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", compression, "--build"])
            .arg(&staged)
            .arg(&deb),
    )?;
    inspect(&deb, &entries)?;
    let _ = fs::remove_dir_all(&work);
    let size = fs::metadata(&deb)?.len();
    eprintln!(
        "package: {} ({:.1} MiB, {} files, Depends: {})",
        deb.display(),
        size as f64 / (1 << 20) as f64,
        entries.len(),
        depends.join(", ")
    );
    println!("{}", deb.display());
    Ok(deb)
}

/// The package's files. `man_pages` are the names `nhi-agent generate` wrote
/// (`nhi-agent.1`, `nhi-agent-sessions.1`, ...); `bin` the stripped binary.
pub fn layout(man_pages: &[String], bin: &Path) -> Vec<Entry> {
    let file = |dest: &str, src: PathBuf, mode: u32| Entry {
        dest: dest.to_string(),
        source: Source::File(src),
        mode,
    };
    let generated = |dest: String, rel: String| Entry {
        dest,
        source: Source::Generated(rel),
        mode: 0o644,
    };
    let mut v = vec![
        file(PACKAGED_BIN, bin.to_path_buf(), 0o755),
        Entry {
            dest: "/lib/systemd/system/nhi-agent.service".into(),
            source: Source::Unit,
            mode: 0o644,
        },
        file(CONFFILE, "policies/example.toml".into(), 0o644),
    ];
    let mut pages = man_pages.to_vec();
    pages.sort();
    for page in pages {
        v.push(generated(
            format!("/usr/share/man/man1/{page}.gz"),
            format!("man/{page}"),
        ));
    }
    v.push(generated(
        "/usr/share/bash-completion/completions/nhi-agent".into(),
        "completions/nhi-agent.bash".into(),
    ));
    v.push(generated(
        "/usr/share/zsh/vendor-completions/_nhi-agent".into(),
        "completions/_nhi-agent".into(),
    ));
    v.push(generated(
        "/usr/share/fish/vendor_completions.d/nhi-agent.fish".into(),
        "completions/nhi-agent.fish".into(),
    ));
    v.push(Entry {
        dest: "/usr/share/doc/nhi-agent/changelog.gz".into(),
        source: Source::Generated("changelog".into()),
        mode: 0o644,
    });
    v.push(file(
        "/usr/share/doc/nhi-agent/copyright",
        "xtask/src/debian/copyright".into(),
        0o644,
    ));
    for policy in ["example", "demo", "aws", "kubernetes", "ssh"] {
        v.push(file(
            &format!("/usr/share/doc/nhi-agent/examples/{policy}.toml"),
            format!("policies/{policy}.toml").into(),
            0o644,
        ));
    }
    v
}

/// `DEBIAN/control`. `installed_kib`: the staged files' size.
pub fn control(version: &str, arch: &str, depends: &[String], installed_kib: u64) -> String {
    let maintainer = maintainer(
        std::env::var("DEBFULLNAME").ok().as_deref(),
        std::env::var("DEBEMAIL").ok().as_deref(),
    );
    let mut s = format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {maintainer}\n\
         Installed-Size: {installed_kib}\n"
    );
    if !depends.is_empty() {
        s.push_str(&format!("Depends: {}\n", depends.join(", ")));
    }
    s.push_str(&format!(
        "Section: admin\n\
         Priority: optional\n\
         Homepage: {HOMEPAGE}\n\
         Description: audit trail and guardrails for non-human identities\n \
         nhi-agent intercepts the TCP connections of selected workloads (bots, CI\n \
         jobs, services) with eBPF, relays them through a local proxy and journals\n \
         who connected where before forwarding. PostgreSQL, HTTP, AWS, Kubernetes\n \
         and SSH sessions are decoded, judged by policy, masked and recorded in a\n \
         hash-chained, signed journal.\n \
         .\n \
         The service starts with /etc/nhi-agent/agent.toml, the example policy:\n \
         edit it, then `systemctl reload nhi-agent`.\n"
    ));
    s
}

/// The changelog of a native package (Debian policy wants one): a single entry naming
/// the commit, dated with the commit's date, so the same commit packs the same file.
fn changelog_for(version: &str) -> anyhow::Result<String> {
    let git =
        |args: &[&str]| util::output(Command::new("git").args(args)).map(|s| s.trim().to_string());
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    let date = git(&["log", "-1", "--format=%aD"])
        .or_else(|| util::output(Command::new("date").arg("-R")).map(|s| s.trim().to_string()))
        .context("no date for the changelog")?;
    Ok(changelog(
        version,
        commit.as_deref(),
        &maintainer(
            std::env::var("DEBFULLNAME").ok().as_deref(),
            std::env::var("DEBEMAIL").ok().as_deref(),
        ),
        &date,
    ))
}

/// One Debian changelog entry (`dpkg-parsechangelog` format).
pub fn changelog(version: &str, commit: Option<&str>, maintainer: &str, date: &str) -> String {
    let what = match commit {
        Some(c) => format!("Built by `cargo xtask package` from commit {c}."),
        None => "Built by `cargo xtask package`.".to_string(),
    };
    format!("{PACKAGE} ({version}) unstable; urgency=medium\n\n  * {what}\n\n -- {maintainer}  {date}\n")
}

/// `Name <email>` from the Debian packaging variables, else the project's.
pub fn maintainer(full_name: Option<&str>, email: Option<&str>) -> String {
    match (full_name, email) {
        (Some(n), Some(e)) if !n.trim().is_empty() && !e.trim().is_empty() => {
            format!("{} <{}>", n.trim(), e.trim())
        }
        _ => "nhi-agent developers <nhi-agent@users.noreply.github.com>".into(),
    }
}

/// The repository's unit with the packaged binary's path: every `/usr/local/bin/nhi-agent`
/// becomes `/usr/bin/nhi-agent`, and the hand-install instructions at the top are replaced
/// by a line saying the package installed it. Fails when the unit does not start the
/// hand-installed path (the two would have drifted apart).
pub fn packaged_unit(unit: &str) -> anyhow::Result<String> {
    let exec_start = format!("ExecStart={HAND_INSTALLED_BIN} ");
    ensure!(
        unit.lines().any(|l| l.starts_with(&exec_start)),
        "systemd/nhi-agent.service has no `{exec_start}...` line to rewrite"
    );
    let body_start = unit
        .find("\n[Unit]")
        .map(|i| i + 1)
        .or_else(|| unit.starts_with("[Unit]").then_some(0))
        .context("systemd/nhi-agent.service has no [Unit] section")?;
    let mut out = String::from(
        "# nhi-agent as a system service, installed by the nhi-agent package. Local\n\
         # changes: `systemctl edit nhi-agent` (a drop-in), not this file.\n",
    );
    out.push_str(&unit[body_start..].replace(HAND_INSTALLED_BIN, PACKAGED_BIN));
    Ok(out)
}

/// `Depends` from dpkg-shlibdeps (the libraries the binary links, with the versions its
/// symbols need), run in a scratch dir holding the minimal `debian/control` it wants.
fn shlib_depends(bin: &Path, work: &Path) -> anyhow::Result<Vec<String>> {
    let dir = work.join("shlibdeps");
    fs::create_dir_all(dir.join("debian"))?;
    fs::write(
        dir.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let out = Command::new("dpkg-shlibdeps")
        .arg("-O")
        .arg(format!("-e{}", bin.display()))
        .current_dir(&dir)
        .output()
        .context("running dpkg-shlibdeps")?;
    if !out.status.success() {
        bail!(
            "dpkg-shlibdeps failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let depends = parse_shlibdeps(&String::from_utf8_lossy(&out.stdout));
    ensure!(
        depends.iter().any(|d| d.starts_with("libc6")),
        "dpkg-shlibdeps found no libc6 dependency: {depends:?}"
    );
    Ok(depends)
}

/// `shlibs:Depends=libc6 (>= 2.34), libgcc-s1 (>= 4.2)` → its items.
pub fn parse_shlibdeps(out: &str) -> Vec<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(|deps| {
            deps.split(',')
                .map(|d| d.trim().to_string())
                .filter(|d| !d.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Reads the package back: control fields, conffile, maintainer scripts, every file of
/// `entries`, the unit's `ExecStart`, and the binary's `--version` naming the commit.
pub fn inspect(deb: &Path, entries: &[Entry]) -> anyhow::Result<()> {
    let info =
        util::output(Command::new("dpkg-deb").arg("--info").arg(deb)).context("dpkg-deb --info")?;
    for needle in [
        "Package: nhi-agent",
        "Depends: libc6",
        " conffiles ",
        " postinst ",
        " prerm ",
        " postrm ",
    ] {
        ensure!(
            info.contains(needle),
            "dpkg-deb --info lacks {needle:?}:\n{info}"
        );
    }
    let conffiles = util::output(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(deb)
            .arg("conffiles"),
    )
    .context("dpkg-deb --info conffiles")?;
    ensure!(
        conffiles.trim() == CONFFILE,
        "conffiles is {conffiles:?}, expected {CONFFILE}"
    );
    let contents = util::output(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .context("dpkg-deb --contents")?;
    let listed = contents_paths(&contents);
    for e in entries {
        ensure!(
            listed.iter().any(|(path, _)| path == &e.dest),
            "{} is not in the package",
            e.dest
        );
    }
    for (path, owner) in &listed {
        ensure!(
            owner == "root/root",
            "{path} is owned by {owner}, not root/root"
        );
    }
    let x = deb.with_extension("inspect");
    let _ = fs::remove_dir_all(&x);
    util::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&x))?;
    let unit = fs::read_to_string(x.join("lib/systemd/system/nhi-agent.service"))?;
    ensure!(
        unit.contains(&format!("ExecStart={PACKAGED_BIN} run --config {CONFFILE}"))
            && !unit.contains(HAND_INSTALLED_BIN),
        "the packaged unit does not start {PACKAGED_BIN}"
    );
    let version = util::output(Command::new(x.join("usr/bin/nhi-agent")).arg("--version"))
        .context("the packaged nhi-agent --version")?;
    let commit = util::output(Command::new("git").args(["rev-parse", "--short=12", "HEAD"]))
        .map(|c| c.trim().to_string());
    if let Some(commit) = &commit {
        ensure!(
            version.contains(&format!("(commit {commit}")) && version.contains("map layout v"),
            "the packaged binary says {version:?}, expected commit {commit} and the map layout"
        );
    }
    let _ = fs::remove_dir_all(&x);
    eprintln!(
        "package: inspected: {} files, {}",
        listed.len(),
        version.trim()
    );
    Ok(())
}

/// (path, owner) of each regular file in `dpkg-deb --contents` output
/// (`-rw-r--r-- root/root 1234 2026-12-07 15:00 ./usr/bin/nhi-agent`).
pub fn contents_paths(contents: &str) -> Vec<(String, String)> {
    contents
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let owner = f.nth(1)?.to_string();
            let path = f.nth(3)?.trim_start_matches('.').to_string();
            Some((path, owner))
        })
        .collect()
}

fn list_dir(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        v.push(e?.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    ensure!(!v.is_empty(), "no man pages in {}", dir.display());
    Ok(v)
}

fn set_dir_modes(dir: &Path) -> anyhow::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            set_dir_modes(&e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: &str = include_str!("../../systemd/nhi-agent.service");

    #[test]
    fn the_packaged_unit_starts_usr_bin_and_keeps_the_rest() {
        let unit = packaged_unit(UNIT).unwrap();
        assert!(unit
            .starts_with("# nhi-agent as a system service, installed by the nhi-agent package."));
        assert!(unit
            .contains("\nExecStart=/usr/bin/nhi-agent run --config /etc/nhi-agent/agent.toml\n"));
        assert!(unit.contains(
            "\nExecReload=/usr/bin/nhi-agent reload --config /etc/nhi-agent/agent.toml\n"
        ));
        assert!(!unit.contains("/usr/local"), "{unit}");
        // Everything from [Unit] on is the repository's, but for the path.
        let body = &UNIT[UNIT.find("[Unit]").unwrap()..];
        assert_eq!(
            unit[unit.find("[Unit]").unwrap()..],
            body.replace("/usr/local/bin/nhi-agent", "/usr/bin/nhi-agent")
        );
    }

    #[test]
    fn a_unit_without_the_hand_installed_path_is_refused() {
        let e = packaged_unit("[Unit]\n[Service]\nExecStart=/opt/nhi-agent run\n").unwrap_err();
        assert!(
            e.to_string().contains("ExecStart=/usr/local/bin/nhi-agent"),
            "{e}"
        );
    }

    #[test]
    fn control_has_the_fields_dpkg_needs() {
        let deps = vec![
            "libc6 (>= 2.34)".to_string(),
            "libgcc-s1 (>= 4.2)".to_string(),
        ];
        let c = control("0.1.0", "amd64", &deps, 31_000);
        let fields: Vec<&str> = c
            .lines()
            .filter(|l| !l.starts_with(' '))
            .map(|l| l.split(':').next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "Package",
                "Version",
                "Architecture",
                "Maintainer",
                "Installed-Size",
                "Depends",
                "Section",
                "Priority",
                "Homepage",
                "Description"
            ]
        );
        assert!(c.contains("\nDepends: libc6 (>= 2.34), libgcc-s1 (>= 4.2)\n"));
        assert!(c.contains("\nInstalled-Size: 31000\n"));
        assert!(c.ends_with('\n'));
        // Continuation lines start with a space; a paragraph break is " .".
        for l in c
            .lines()
            .skip_while(|l| !l.starts_with("Description:"))
            .skip(1)
        {
            assert!(l.starts_with(' ') && l.len() <= 80, "{l:?}");
        }
    }

    #[test]
    fn maintainer_comes_from_debfullname_and_debemail() {
        assert_eq!(
            maintainer(Some("A B"), Some("a@b.example")),
            "A B <a@b.example>"
        );
        assert!(maintainer(None, Some("a@b.example")).starts_with("nhi-agent developers <"));
    }

    #[test]
    fn changelog_is_one_entry_dpkg_can_parse() {
        let c = changelog(
            "0.1.0",
            Some("0c125b669539"),
            "A B <a@b.example>",
            "Mon, 7 Dec 2026 15:40:00 +0000",
        );
        assert_eq!(
            c,
            "nhi-agent (0.1.0) unstable; urgency=medium\n\n  \
             * Built by `cargo xtask package` from commit 0c125b669539.\n\n \
             -- A B <a@b.example>  Mon, 7 Dec 2026 15:40:00 +0000\n"
        );
        let dir = tempdir();
        fs::write(dir.join("changelog"), &c).unwrap();
        let parsed = util::output(
            Command::new("dpkg-parsechangelog")
                .arg("-l")
                .arg(dir.join("changelog")),
        );
        if let Some(parsed) = parsed {
            assert!(parsed.contains("Version: 0.1.0"), "{parsed}");
        }
        let _ = fs::remove_dir_all(dir);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-package-test-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn shlibdeps_output_is_split_into_items() {
        assert_eq!(
            parse_shlibdeps("shlibs:Depends=libc6 (>= 2.34), libgcc-s1 (>= 4.2)\n"),
            ["libc6 (>= 2.34)", "libgcc-s1 (>= 4.2)"]
        );
        assert!(parse_shlibdeps("").is_empty());
    }

    #[test]
    fn layout_puts_each_piece_where_debian_looks_for_it() {
        let pages = vec!["nhi-agent.1".to_string(), "nhi-agent-run.1".to_string()];
        let l = layout(&pages, Path::new("/tmp/nhi-agent"));
        let dests: Vec<&str> = l.iter().map(|e| e.dest.as_str()).collect();
        for want in [
            "/usr/bin/nhi-agent",
            "/lib/systemd/system/nhi-agent.service",
            "/etc/nhi-agent/agent.toml",
            "/usr/share/man/man1/nhi-agent.1.gz",
            "/usr/share/man/man1/nhi-agent-run.1.gz",
            "/usr/share/bash-completion/completions/nhi-agent",
            "/usr/share/zsh/vendor-completions/_nhi-agent",
            "/usr/share/fish/vendor_completions.d/nhi-agent.fish",
            "/usr/share/doc/nhi-agent/copyright",
            "/usr/share/doc/nhi-agent/changelog.gz",
            "/usr/share/doc/nhi-agent/examples/example.toml",
        ] {
            assert!(dests.contains(&want), "{want} missing from {dests:?}");
        }
        let bin = l.iter().find(|e| e.dest == "/usr/bin/nhi-agent").unwrap();
        assert_eq!(bin.mode, 0o755);
        assert!(l
            .iter()
            .filter(|e| e.dest != "/usr/bin/nhi-agent")
            .all(|e| e.mode == 0o644));
        let conf = l.iter().find(|e| e.dest == CONFFILE).unwrap();
        assert_eq!(conf.source, Source::File("policies/example.toml".into()));
        // Every workspace file the layout names exists.
        for e in &l {
            if let Source::File(p) = &e.source {
                if p.is_relative() {
                    assert!(util::root().join(p).is_file(), "{} is missing", p.display());
                }
            }
        }
    }

    #[test]
    fn contents_listing_is_read_as_paths_and_owners() {
        let listing = "drwxr-xr-x root/root         0 2026-12-07 15:00 ./\n\
                       -rwxr-xr-x root/root  30339848 2026-12-07 15:00 ./usr/bin/nhi-agent\n\
                       -rw-r--r-- root/root      2345 2026-12-07 15:00 ./etc/nhi-agent/agent.toml\n";
        assert_eq!(
            contents_paths(listing),
            [
                ("/usr/bin/nhi-agent".to_string(), "root/root".to_string()),
                (
                    "/etc/nhi-agent/agent.toml".to_string(),
                    "root/root".to_string()
                )
            ]
        );
    }

    #[test]
    fn maintainer_scripts_are_posix_sh_and_detach_on_remove() {
        for (name, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
            assert!(text.starts_with("#!/bin/sh\n"), "{name}");
            let status = Command::new("sh")
                .args(["-n", "-c", text])
                .status()
                .unwrap();
            assert!(status.success(), "{name} is not valid sh");
        }
        assert!(PRERM.contains("nhi-agent detach --config /etc/nhi-agent/agent.toml"));
        assert!(POSTRM.contains("rm -rf /var/lib/nhi-agent"));
        let purge_only = POSTRM.split("if [ \"$1\" = \"purge\" ]").nth(1).unwrap();
        assert!(purge_only.contains("rm -rf /var/lib/nhi-agent"));
    }
}
