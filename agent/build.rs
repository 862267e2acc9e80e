//! Builds the kernel programs (`agent-ebpf`) with the nightly toolchain and
//! bpf-linker, so that `include_bytes_aligned!` in `src/ebpf/` embeds a fresh object.
//! `cargo xtask setup` installs what this needs.
//!
//! Also records the commit the binary is built from (`nhi-agent --version`):
//! `NHI_BUILD_COMMIT`, the short hash with `-dirty` when tracked files differ from it.
//! A build outside a git checkout of this workspace (a source tarball) takes
//! `NHI_BUILD_COMMIT` from the environment, else says `unknown`.
use std::{path::PathBuf, process::Command};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rustc-env=NHI_BUILD_COMMIT={}", commit());
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = meta
        .packages
        .into_iter()
        .find(|p| p.name == "nhi-agent-ebpf")
        .ok_or_else(|| anyhow!("nhi-agent-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("manifest path has no parent"))?;
    // Changes to the shared types must rebuild the kernel object too.
    println!("cargo:rerun-if-changed=../agent-common/src");
    aya_build::build_ebpf(
        [Package {
            name: "nhi-agent-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}

/// The commit for `--version`: `NHI_BUILD_COMMIT` when set (a packager building from a
/// tarball), else `git rev-parse --short=12 HEAD` plus `-dirty` when `git status` shows
/// changed tracked files, else `unknown`. This script runs again when HEAD moves (a
/// commit, a checkout), so the dirty flag is as of the last of those. The index is not
/// watched: every `git status` refreshes it, and each run of this script recompiles the
/// whole agent.
fn commit() -> String {
    println!("cargo:rerun-if-env-changed=NHI_BUILD_COMMIT");
    if let Ok(c) = std::env::var("NHI_BUILD_COMMIT") {
        if !c.trim().is_empty() {
            return c.trim().to_string();
        }
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // Only this workspace's own checkout counts: a source tarball unpacked inside another
    // repository (a distribution's packaging tree) must not report that one's commit.
    // Read when the script runs, not compiled in: cargo reuses a compiled build script
    // for another copy of the workspace sharing the target directory.
    let workspace =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default()).join("..");
    let toplevel = git(&["rev-parse", "--show-toplevel"]).map(PathBuf::from);
    let ours = match (toplevel.map(|t| t.canonicalize()), workspace.canonicalize()) {
        (Some(Ok(t)), Ok(w)) => t == w,
        _ => false,
    };
    let hash = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) if ours => hash,
        _ => return "unknown".into(),
    };
    // In a worktree HEAD and the index live in the worktree's git dir, the branch refs
    // in the common one (loose, or in packed-refs).
    let dirs = [
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ];
    let head_ref = git(&["symbolic-ref", "-q", "HEAD"]);
    for dir in dirs.iter().flatten().map(PathBuf::from) {
        for name in ["HEAD", "packed-refs"] {
            watch(&dir.join(name));
        }
        if let Some(r) = &head_ref {
            watch(&dir.join(r));
        }
    }
    // --no-optional-locks: status must not refresh the index it watches.
    match git(&[
        "--no-optional-locks",
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]) {
        Some(s) if !s.is_empty() => format!("{hash}-dirty"),
        _ => hash,
    }
}

fn watch(path: &std::path::Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
