//! `nhi-agent generate DIR` (hidden): the man pages and shell completions the package
//! ships, made from the clap `Command` this binary parses, so they always describe its
//! real options. `cargo xtask package` runs it on the release binary it packs.
//!
//! Writes `DIR/man/nhi-agent.1` and one page per subcommand (`nhi-agent-sessions.1`,
//! `nhi-agent-policy-check.1`, ...) and `DIR/completions/{nhi-agent.bash, _nhi-agent,
//! nhi-agent.fish}`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::LazyLock,
};

use anyhow::Context as _;
use clap::{Args, Command, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Directory to write `man/` and `completions/` into (created if missing).
    pub dir: PathBuf,
}

/// The version line: the crate version, the commit it was built from (`agent/build.rs`)
/// and the BPF map layout, which an upgrade must match to take over pinned programs.
pub fn version() -> &'static str {
    static VERSION: LazyLock<String> = LazyLock::new(|| {
        format!(
            "{} (commit {}, map layout v{})",
            env!("CARGO_PKG_VERSION"),
            env!("NHI_BUILD_COMMIT"),
            nhi_agent_common::MAP_LAYOUT_VERSION
        )
    });
    &VERSION
}

/// The command users see: `Cli`'s, without hidden subcommands (this one), which the
/// completion generators would otherwise offer.
pub fn public_command() -> Command {
    let full = Cli::command().version(version());
    let mut cmd = Command::new("nhi-agent")
        .version(version())
        .subcommand_required(full.is_subcommand_required_set())
        .args(full.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    if let Some(about) = full.get_long_about() {
        cmd = cmd.long_about(about.clone());
    }
    cmd
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let man = args.dir.join("man");
    let completions = args.dir.join("completions");
    for dir in [&man, &completions] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut pages = Vec::new();
    write_man_pages(public_command(), &man, &mut pages)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = public_command();
        let path = clap_complete::generate_to(shell, &mut cmd, "nhi-agent", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
        pages.push(path);
    }
    for p in pages {
        println!("{}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// One page for the command and one for each visible subcommand at every depth, named
/// as man(1) looks them up (`nhi-agent-policy-check.1`), each in section 1.
fn write_man_pages(cmd: Command, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    fn walk(cmd: Command, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, dir, out)?;
        }
        let page = clap_mangen::Man::new(cmd)
            .source(format!("nhi-agent {}", env!("CARGO_PKG_VERSION")))
            .manual("nhi-agent");
        let path = page
            .generate_to(dir)
            .with_context(|| format!("writing {}", page.get_filename()))?;
        out.push(path);
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    walk(cmd, dir, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_the_commit_and_the_map_layout() {
        let v = version();
        assert!(v.starts_with(env!("CARGO_PKG_VERSION")), "{v}");
        assert!(v.contains(" (commit "), "{v}");
        assert!(
            v.ends_with(&format!(
                ", map layout v{})",
                nhi_agent_common::MAP_LAYOUT_VERSION
            )),
            "{v}"
        );
    }

    #[test]
    fn pages_and_completions_cover_every_visible_subcommand_and_not_generate() {
        let dir = tempfile::tempdir().unwrap();
        run(&GenerateArgs {
            dir: dir.path().to_path_buf(),
        })
        .unwrap();
        let names = |sub: &str| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(dir.path().join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let man = names("man");
        for page in [
            "nhi-agent.1",
            "nhi-agent-run.1",
            "nhi-agent-sessions.1",
            "nhi-agent-policy.1",
            "nhi-agent-kube-ca.1",
        ] {
            assert!(man.contains(&page.to_string()), "{page} missing: {man:?}");
        }
        assert!(!man.iter().any(|p| p.contains("generate")), "{man:?}");
        assert_eq!(
            names("completions"),
            ["_nhi-agent", "nhi-agent.bash", "nhi-agent.fish"]
        );
        let bash = fs::read_to_string(dir.path().join("completions/nhi-agent.bash")).unwrap();
        assert!(bash.contains("sessions") && !bash.contains("generate"));
        let top = fs::read_to_string(dir.path().join("man/nhi-agent.1")).unwrap();
        assert!(top.contains("map layout v"), "the version section names it");
    }
}
