//! `nhi-agent policy`: work with configuration files without running the agent.
//!
//! `nhi-agent policy check FILE` validates a file the way the agent would at start,
//! so SREs can check a change (in CI, or before a reload) and get every error with
//! its line and column; then it reads the files the configuration names as `run` does
//! before attaching anything (secret files and their modes, keys, certificates, CA
//! files, JWKS, decision keys, the shipping secret, the approver group: see
//! [`super::preflight`]), without creating or binding anything, and warns about
//! policies and rules that can never take effect ([`crate::policy::Lint`]).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{self, Config, ConfigError, FailMode, Mode};

/// sysexits.h EX_USAGE: the configuration is invalid.
pub const EX_USAGE: u8 = 64;
/// sysexits.h EX_NOINPUT: the configuration file cannot be read.
pub const EX_NOINPUT: u8 = 66;

/// Where systemd keeps the credentials of the running `nhi-agent.service`.
const UNIT_CREDENTIALS: &str = "/run/credentials/nhi-agent.service";

/// `nhi-agent policy ...`
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub cmd: PolicyCmd,
}

/// The `policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Validate a configuration file and the files it names (secrets, keys, CA files,
    /// JWKS, the approver group) as `run` does before attaching, and summarise it;
    /// warn about policies and rules that can never take effect. Exits 0 if it is valid
    /// (warnings or not), 64 if it or a file it names is refused (`run` exits 64 too),
    /// 66 if it cannot be read.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
}

/// Runs a `policy` subcommand, printing to stdout and stderr.
pub fn run(args: &PolicyArgs) -> anyhow::Result<ExitCode> {
    match &args.cmd {
        PolicyCmd::Check { file } => {
            // Run by hand while the unit runs, the check reads the unit's systemd
            // credentials where systemd keeps them (root only), as ExecReload sees them.
            if std::env::var_os(crate::credential::CREDENTIALS_DIRECTORY).is_none() {
                let unit = Path::new(UNIT_CREDENTIALS);
                if unit.is_dir() {
                    std::env::set_var(crate::credential::CREDENTIALS_DIRECTORY, unit);
                }
            }
            let code = check(
                file,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            )?;
            Ok(ExitCode::from(code))
        }
    }
}

/// `policy check`: returns the exit code; fails only if writing the output fails.
fn check(file: &Path, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<u8> {
    match config::load(file) {
        Ok(config) => {
            if let Err(e) = super::preflight::load(&config, crate::proxy::StateAccess::ReadOnly) {
                if !unchecked_credential(&e) {
                    writeln!(err, "error: {}: {e:#}", file.display())?;
                    return Ok(EX_USAGE);
                }
                // Not a fault of the file: only the unit has its credentials.
                writeln!(
                    err,
                    "warning: {}: {e:#}; the files named after it were not checked either \
                     (the unit's ExecReload checks with its credentials)",
                    file.display()
                )?;
            }
            write_summary(&config, file, out)?;
            for lint in lints(&config) {
                writeln!(err, "warning: {lint}")?;
            }
            Ok(0)
        }
        Err(e @ ConfigError::Io { .. }) => {
            writeln!(err, "error: {e}")?;
            Ok(EX_NOINPUT)
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            writeln!(err, "error: {e}")?;
            Ok(EX_USAGE)
        }
    }
}

/// A short, human summary of what the configuration will do.
fn write_summary(config: &Config, file: &Path, out: &mut dyn Write) -> std::io::Result<()> {
    let agent = &config.agent;
    writeln!(out, "{}: valid", file.display())?;
    let mode = match agent.mode {
        Mode::Enforce => "enforce",
        Mode::Observe => "observe",
    };
    let fail = match agent.fail {
        FailMode::Closed => "closed",
        FailMode::Open => "open",
    };
    writeln!(
        out,
        "mode: {mode} (fail {fail} while the agent is not running)"
    )?;
    writeln!(out, "journal: {}", agent.journal.display())?;
    writeln!(
        out,
        "proxy: 127.0.0.1:{port} and [::1]:{port}",
        port = agent.listen_port
    )?;

    let workloads = &config.workloads;
    writeln!(out, "{}:", plural(workloads.len(), "workload"))?;
    if workloads.is_empty() {
        writeln!(out, "  (none: no connection will be intercepted)")?;
    }
    let width = workloads
        .iter()
        .map(|w| w.name.as_deref().map_or(0, str::len))
        .max()
        .unwrap_or(0)
        .max("(derived)".len());
    for w in workloads {
        let name = w.name.as_deref().unwrap_or("(derived)");
        let uid = w.uid.map(|u| format!(", uid {u}")).unwrap_or_default();
        writeln!(out, "  {name:<width$}  cgroup {}{uid}", w.cgroup.as_str())?;
    }

    let targets = &config.targets;
    writeln!(out, "{}:", plural(targets.len(), "target"))?;
    let width = targets.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in targets {
        writeln!(
            out,
            "  {:<width$}  {} ({})",
            t.name, t.destination, t.protocol
        )?;
    }

    let policies = &config.policies.policies;
    writeln!(
        out,
        "{}:",
        plural(policies.len(), "policy").replace("policys", "policies")
    )?;
    for (i, p) in policies.iter().enumerate() {
        let name = p.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
        let mode = p.mode.map(|m| m.as_str()).unwrap_or("agent mode");
        writeln!(
            out,
            "  {name}  ({mode}, results recorded: {})",
            p.record_results.as_str()
        )?;
    }
    writeln!(out, "{}:", plural(config.masks.len(), "mask"))?;
    for m in &config.masks {
        writeln!(out, "  {}  ({})", m.name(), m.strategy_name())?;
    }
    Ok(())
}

/// Whether `e` is a systemd credential that cannot be read outside the unit.
fn unchecked_credential(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<crate::credential::CredentialError>(),
            Some(crate::credential::CredentialError::NoCredentialsDirectory { .. })
        )
    })
}

/// What in the policies can never take effect.
fn lints(config: &Config) -> Vec<crate::policy::Lint> {
    let workloads: Option<Vec<&str>> = config.workloads.iter().map(|w| w.name.as_deref()).collect();
    let targets: Vec<crate::policy::TargetKind<'_>> = config
        .targets
        .iter()
        .map(|t| crate::policy::TargetKind {
            name: &t.name,
            protocol: t.protocol.name(),
        })
        .collect();
    config.policies.lint(workloads.as_deref(), &targets)
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_check(path: &Path) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = check(path, &mut out, &mut err).expect("writing to a Vec cannot fail");
        let text = |v: Vec<u8>| String::from_utf8(v).expect("utf-8 output");
        (code, text(out), text(err))
    }

    #[test]
    fn valid_file_is_summarised() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/example.toml"
        ));
        let (code, out, err) = run_check(path);
        assert_eq!(code, 0, "{err}");
        assert!(err.is_empty(), "{err}");
        assert!(out.contains("mode: enforce (fail closed"), "{out}");
        assert!(out.contains("2 workloads:"), "{out}");
        assert!(out.contains("cgroup system.slice/backup*.service"), "{out}");
        assert!(out.contains("2 targets:"), "{out}");
        assert!(out.contains("127.0.0.1:5432 (postgres)"), "{out}");
        assert!(out.contains("[::1]:5432 (postgres)"), "{out}");
        assert!(out.contains("1 policy:\n  bots  (agent mode"), "{out}");
        assert!(out.contains("1 mask:\n  pii  (redact)"), "{out}");
    }

    #[test]
    fn invalid_file_exits_64_with_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        let text = "[agent]\nmode = \"enforce\"\njournal = \"/j\"\n\n[[target]]\nname = \"db\"\naddress = \"db.local:5432\"\n";
        std::fs::write(&path, text).expect("write");
        let (code, out, err) = run_check(&path);
        assert_eq!(code, EX_USAGE);
        assert!(out.is_empty(), "{out}");
        assert!(err.contains(&format!("{}:7:11: ", path.display())), "{err}");
        assert!(err.contains("host name"), "{err}");
    }

    /// A config in `dir` (state dir `dir/state`) with `extra` appended.
    fn config_in(dir: &Path, extra: &str) -> PathBuf {
        let path = dir.join("agent.toml");
        let text = format!(
            "[agent]\nmode = \"enforce\"\njournal = \"{d}/j/journal.db\"\nstate_dir = \"{d}/state\"\n\n\
             [[workload]]\nname = \"ci\"\ncgroup = \"ci\"\n\n\
             [[target]]\nname = \"echo\"\naddress = \"127.0.0.1:7\"\nprotocol = \"tcp\"\n\n{extra}",
            d = dir.display()
        );
        std::fs::write(&path, text).expect("write");
        path
    }

    fn secret(dir: &Path, name: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        std::fs::write(&path, "s3cr3t\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn files_run_refuses_are_refused_with_64() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let open = secret(d, "open.pw", 0o644);
        let cases = [
            (
                format!(
                    "[[target]]\nname = \"db\"\naddress = \"127.0.0.1:5432\"\nprotocol = \"postgres\"\n\
                     password_file = \"{}\"\n",
                    open.display()
                ),
                "has mode 0644: it must not be accessible by group or others",
            ),
            (
                format!(
                    "[[oidc_issuer]]\nissuer = \"https://token.actions.githubusercontent.com\"\n\
                     audience = \"nhi-agent\"\njwks_file = \"{}/missing.jwks\"\n",
                    d.display()
                ),
                "missing.jwks",
            ),
            (
                "[approvals]\ndecision_keys = [\"/nonexistent/approver.pem\"]\n".to_string(),
                "/nonexistent/approver.pem",
            ),
        ];
        for (extra, want) in cases {
            let path = config_in(d, &extra);
            assert_eq!(
                config::load(&path).map(|_| ()).map_err(|e| e.to_string()),
                Ok(()),
                "{extra}"
            );
            let (code, out, err) = run_check(&path);
            assert_eq!(code, EX_USAGE, "{extra}: {out} {err}");
            assert!(out.is_empty(), "{out}");
            assert!(err.contains(want), "{extra}: {err}");
        }
        // The same with the group by name: unknown groups are refused too.
        let path = config_in(d, "").with_file_name("agent.toml");
        let text = std::fs::read_to_string(&path).expect("read").replace(
            "state_dir",
            "approver_group = \"no-such-group-nhi\"\nstate_dir",
        );
        std::fs::write(&path, text).expect("write");
        let (code, _, err) = run_check(&path);
        assert_eq!(code, EX_USAGE, "{err}");
        assert!(err.contains("no-such-group-nhi"), "{err}");
    }

    #[test]
    fn a_systemd_credential_outside_the_unit_is_a_warning_not_a_refusal() {
        if std::env::var_os(crate::credential::CREDENTIALS_DIRECTORY).is_some() {
            eprintln!("skipping: CREDENTIALS_DIRECTORY is set");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let extra =
            "[[target]]\nname = \"db\"\naddress = \"127.0.0.1:5432\"\nprotocol = \"postgres\"\n\
                     credential = \"db-password\"\n";
        let path = config_in(dir.path(), extra);
        let (code, out, err) = run_check(&path);
        assert_eq!(code, 0, "{out} {err}");
        assert!(err.starts_with("warning: "), "{err}");
        assert!(err.contains("CREDENTIALS_DIRECTORY"), "{err}");
        assert!(err.contains("were not checked either"), "{err}");
    }

    #[test]
    fn a_check_creates_nothing_in_the_state_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let pw = secret(d, "db.pw", 0o600);
        // Masks (masking key), TLS termination (agent CA), the signing key and host id:
        // what the agent creates at its first start.
        let extra = format!(
            "[[target]]\nname = \"db\"\naddress = \"127.0.0.1:5432\"\nprotocol = \"postgres\"\n\
             client_tls = \"terminate\"\npassword_file = \"{}\"\n\n\
             [[mask]]\nname = \"pii\"\ncolumns = [\"email\"]\nstrategy = \"redact\"\n",
            pw.display()
        );
        let path = config_in(d, &extra);
        let (code, out, err) = run_check(&path);
        assert_eq!(code, 0, "{out} {err}");
        assert!(
            !d.join("state").exists(),
            "the check wrote the state directory"
        );
        assert!(
            !d.join("j").exists(),
            "the check wrote the journal directory"
        );
        // Once the agent has created them, they are checked: a masking key readable by
        // others is refused, as the agent refuses it.
        std::fs::create_dir_all(d.join("state")).expect("mkdir");
        secret(&d.join("state"), "mask.key", 0o644);
        let (code, _, err) = run_check(&path);
        assert_eq!(code, EX_USAGE, "{err}");
        assert!(err.contains("mask.key"), "{err}");
    }

    #[test]
    fn policies_that_never_apply_are_warned_about_and_the_file_still_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = "[[target]]\nname = \"api\"\naddress = \"127.0.0.1:8080\"\nprotocol = \"http\"\n\n\
                     [[policy]]\nname = \"web\"\n[[policy.rule]]\nname = \"no-drop\"\nverdict = \"deny\"\n\
                     kinds = [\"drop\"]\n";
        let path = config_in(dir.path(), extra);
        let (code, out, err) = run_check(&path);
        assert_eq!(code, 0, "{out} {err}");
        assert_eq!(
            err,
            "warning: policy \"web\", rule \"no-drop\": SQL conditions, but the policy's targets \
             are echo (tcp), api (http): it never matches (they are for postgres targets)\n"
        );
    }

    #[test]
    fn unreadable_file_exits_66() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing.toml");
        let (code, _, err) = run_check(&path);
        assert_eq!(code, EX_NOINPUT);
        assert!(err.contains("cannot read configuration file"), "{err}");
        assert!(err.contains("missing.toml"), "{err}");
    }
}
