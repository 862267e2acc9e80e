//! `cargo xtask test`: the whole suite, as CI runs it.
use std::process::Command;

use crate::{
    setup,
    util::{self, run},
};

pub fn test(extra: &[String]) -> anyhow::Result<()> {
    setup::setup()?;
    let cargo = util::cargo();
    run(Command::new(&cargo).args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new(&cargo).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    if !util::is_root() {
        eprintln!(
            "note: not root: the eBPF integration tests will be skipped (with NHI_REQUIRE_PRIVILEGED=1 they fail)"
        );
    }
    // Unit tests run in parallel; the integration tests serialise themselves.
    run(Command::new(&cargo)
        .args(["test", "--workspace"])
        .args(extra))?;
    Ok(())
}
