//! Builds the kernel programs (`agent-ebpf`) with the nightly toolchain and
//! bpf-linker, so that `include_bytes_aligned!` in `src/ebpf/` embeds a fresh object.
//! `cargo xtask setup` installs what this needs.
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
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
