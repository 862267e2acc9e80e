//! `cargo xtask run`: the quick start. Builds the agent in release mode and runs it in
//! the foreground with the example policy, on a local SQLite journal.
use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{
    setup,
    util::{self, run as sh},
};

/// The cgroup the example policy intercepts; created here so there is something to try.
const DEMO_CGROUP: &str = "nhi-demo";

pub fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    setup::setup()?;
    let root = util::root();
    sh(Command::new(util::cargo()).args(["build", "--release", "-p", "nhi-agent"]))?;
    let config = config.unwrap_or_else(|| root.join("policies/example.toml"));
    let cgroup2 = nhi_tests::cgroup2_root().context("no cgroup2 mount found")?;
    let demo = cgroup2.join(DEMO_CGROUP);
    fs::create_dir_all(&demo).with_context(|| format!("creating {}", demo.display()))?;
    let bin = root.join("target/release/nhi-agent");
    eprintln!(
        "\nnhi-agent starting with {config}.\n\
         Try it from another shell (as root):\n\
         \x20 bash -c 'echo $$ > {procs}; exec psql -h 127.0.0.1 -p 5432 -U postgres -c \"select 1\"'\n\
         \x20 {bin} sessions --journal /var/lib/nhi-agent/journal.db\n\
         Stop with Ctrl-C; `{bin} detach --config {config}` removes the programs it leaves (fail-closed).\n",
        config = config.display(),
        procs = demo.join("cgroup.procs").display(),
        bin = bin.display(),
    );
    let status = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}
