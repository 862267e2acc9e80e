//! The command line as an SRE meets it: exit statuses and messages of `detach` and
//! `verify` run by the real binary (no agent needed).
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

use nhi_tests::*;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn detach_by_a_user_who_cannot_read_the_pins_fails_instead_of_saying_nothing_is_pinned() {
    // Root is needed to become another user; no eBPF is touched.
    privileged!(
        "detach_by_a_user_who_cannot_read_the_pins_fails_instead_of_saying_nothing_is_pinned"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let pins = dir.path().join("nhi-agent");
    std::fs::create_dir_all(pins.join("v0").join("links")).expect("mkdir");
    // The binary must be reachable by nobody: the target directory usually is.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(agent_bin())
        .args(["detach", "--bpffs"])
        .arg(&pins)
        .output()
        .expect("run setpriv");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(!said.contains("nothing pinned"), "{said}");
    assert!(said.contains("cannot read the pins under"), "{said}");
    assert!(said.contains("Permission denied"), "{said}");
    assert!(said.contains("needs root"), "{said}");
    assert!(pins.join("v0").exists(), "nothing was removed");

    // Root, with nothing there: nothing pinned, and that is a success.
    let missing = dir.path().join("absent");
    let out = Command::new(agent_bin())
        .args(["detach", "--bpffs"])
        .arg(&missing)
        .output()
        .expect("run detach");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("nothing pinned at"), "{}", text(&out));
}

#[test]
fn verify_exits_2_when_nothing_can_be_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "A".repeat(43); // a syntactically valid base64url Ed25519 key
    let run = |args: &[&str]| {
        let out = Command::new(agent_bin())
            .arg("verify")
            .args(args)
            .output()
            .expect("run verify");
        (out.status.code(), text(&out))
    };
    let d = dir.path().to_str().expect("utf-8");
    let missing = dir
        .path()
        .join("missing")
        .to_str()
        .expect("utf-8")
        .to_owned();
    // Usage errors, clap's and ours.
    let (code, said) = run(&[d]);
    assert_eq!(code, Some(2), "no --key: {said}");
    let (code, said) = run(&[d, "--key", "not a key"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("neither a readable PEM file nor a base64url public key"),
        "{said}"
    );
    // Inputs that cannot be read, or hold nothing to verify.
    let (code, said) = run(&[&missing, "--key", &key]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(&format!("cannot read {missing}")), "{said}");
    let (code, said) = run(&[d, "--key", &key]);
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("no journal segment (*.db) or checkpoint in"),
        "{said}"
    );
    let (code, said) = run(&[d, "--key", &key, "--hwm", &missing]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(&format!("reading {missing}")), "{said}");
    // The help says which status means what.
    let (code, said) = run(&["--help"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("0 intact; 1 damage found; 2 nothing verified"),
        "{said}"
    );
}

#[test]
fn run_exits_64_on_a_file_the_configuration_names_that_it_refuses() {
    // Refused before anything is probed, bound or attached: no privilege needed.
    let dir = tempfile::tempdir().expect("tempdir");
    let password = dir.path().join("db.pw");
    std::fs::write(&password, "s3cr3t\n").expect("write");
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nmode = \"enforce\"\njournal = \"{d}/journal/journal.db\"\nstate_dir = \"{d}/state\"\n\
             bpffs = \"{d}/bpffs\"\n\n[[workload]]\nname = \"ci\"\ncgroup = \"ci\"\n\n\
             [[target]]\nname = \"db\"\naddress = \"127.0.0.1:5432\"\nprotocol = \"postgres\"\n\
             password_file = \"{p}\"\n",
            d = dir.path().display(),
            p = password.display()
        ),
    )
    .expect("write config");
    for args in [
        vec!["policy", "check", config.to_str().expect("utf-8")],
        vec!["run", "--config", config.to_str().expect("utf-8")],
    ] {
        let out = Command::new(agent_bin())
            .args(&args)
            .output()
            .expect("run nhi-agent");
        let said = text(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {said}");
        assert!(said.contains("has mode 0644"), "{args:?}: {said}");
        assert!(said.contains(&password.display().to_string()), "{said}");
    }
    // Nothing was created: no journal, no state, no pins.
    for made in ["journal", "state", "bpffs"] {
        assert!(!dir.path().join(made).exists(), "{made} was created");
    }
}
