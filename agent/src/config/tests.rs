//! Tests of parsing, validation, error positions and the lookup methods.
use super::*;

const MINIMAL: &str = r#"[agent]
mode = "enforce"                      # or "observe"
journal = "/var/lib/nhi-agent/journal.db"

[[workload]]
name = "backup-bot"
cgroup = "system.slice/backup*.service"

[[target]]
name = "orders-db"
address = "10.0.0.5:5432"
protocol = "tcp"
"#;

fn ok(text: &str) -> Config {
    parse(text, "test.toml").unwrap_or_else(|e| panic!("should parse:\n{e}"))
}

fn err(text: &str) -> ConfigError {
    match parse(text, "test.toml") {
        Ok(c) => panic!("should be rejected, parsed to {c:?}"),
        Err(e) => e,
    }
}

/// The 1-based (line, column) of the `nth` (0-based) occurrence of `needle` in
/// `text`, computed independently of the implementation.
fn position_of(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let offset = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} occurs fewer than {} times", nth + 1))
        .0;
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Asserts the error is at the `nth` occurrence of `needle` and mentions `words`.
fn assert_error_at(e: &ConfigError, text: &str, needle: &str, nth: usize, words: &str) {
    let (line, column) = position_of(text, needle, nth);
    assert_eq!(
        e.position(),
        Some((line, column)),
        "wrong position for:\n{e}"
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("test.toml:{line}:{column}: ")),
        "{shown}"
    );
    assert!(shown.contains(words), "{shown:?} lacks {words:?}");
    // The snippet repeats the offending line under a gutter and puts a caret under
    // the token.
    let source_line = text.lines().nth(line - 1).expect("line exists");
    assert!(
        shown.contains(&format!("{line} | {source_line}\n")),
        "{shown}"
    );
    let caret_line = shown.lines().last().expect("snippet has lines");
    let caret_column = caret_line
        .split_once(" | ")
        .map(|(_, rest)| rest.chars().take_while(|&c| c == ' ' || c == '\t').count() + 1);
    assert_eq!(caret_column, Some(column), "caret misplaced:\n{shown}");
}

#[test]
fn position_helper_counts_lines_and_columns() {
    assert_eq!(position_of("ab\ncd", "a", 0), (1, 1));
    assert_eq!(position_of("ab\ncd", "d", 0), (2, 2));
    assert_eq!(position_of("ab\n\nxd", "x", 0), (3, 1));
}

#[test]
fn minimal_example_parses_to_the_expected_model() {
    let config = ok(MINIMAL);
    assert_eq!(
        config.agent,
        AgentSettings {
            mode: Mode::Enforce,
            journal: PathBuf::from("/var/lib/nhi-agent/journal.db"),
            listen_port: 15001,
            fail: FailMode::Closed,
            bpffs: PathBuf::from("/sys/fs/bpf/nhi-agent"),
            max_connections: 4096,
            max_connections_per_workload: 3072,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(30),
            rescan_interval: Duration::from_secs(5),
            cgroup_root: None,
            state_dir: PathBuf::from("/var/lib/nhi-agent"),
            journal_fsync: JournalFsync::Group,
            approvals_socket: PathBuf::from("/run/nhi-agent/approvals.sock"),
            approver_group: None,
            metrics_listen: None,
        }
    );
    assert_eq!(config.workloads.len(), 1);
    let w = &config.workloads[0];
    assert_eq!(w.name.as_deref(), Some("backup-bot"));
    assert_eq!(w.cgroup.as_str(), "system.slice/backup*.service");
    assert_eq!(w.uid, None);
    assert_eq!(
        config.targets,
        vec![Target {
            name: "orders-db".into(),
            destination: Destination::Exact("10.0.0.5:5432".parse().expect("addr")),
            protocol: Protocol::Tcp,
            postgres: None,
            http: None,
            aws: None,
            imds: None,
            ssh: None,
            kube: None,
            mysql: None,
            redis: None,
            netns: crate::config::NetnsScope::Any,
        }]
    );
    assert_eq!(config.targets[0].protocol.to_string(), "tcp");
    assert_eq!(config.source, None);
}

#[test]
fn every_agent_key_is_read() {
    let config = ok(r#"
[agent]
mode = "observe"
journal = "/tmp/j.db"
listen_port = 15999
fail = "closed"
bpffs = "/sys/fs/bpf/other"
max_connections = 10
max_connections_per_workload = 3
connect_timeout = "1s 500ms"
idle_timeout = "2m"
drain_timeout = "0s"
rescan_interval = "250ms"
cgroup_root = "/sys/fs/cgroup/unified"

[[target]]
name = "t"
address = "*:1"
"#);
    let a = &config.agent;
    assert_eq!(a.mode, Mode::Observe);
    assert_eq!(a.listen_port, 15999);
    assert_eq!(a.fail, FailMode::Closed);
    assert_eq!(a.bpffs, PathBuf::from("/sys/fs/bpf/other"));
    assert_eq!(a.max_connections, 10);
    assert_eq!(a.max_connections_per_workload, 3);
    assert_eq!(a.connect_timeout, Duration::from_millis(1500));
    assert_eq!(a.idle_timeout, Duration::from_secs(120));
    assert_eq!(a.drain_timeout, Duration::ZERO);
    assert_eq!(a.rescan_interval, Duration::from_millis(250));
    assert_eq!(a.cgroup_root, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    assert!(config.workloads.is_empty());
    assert_eq!(
        config.targets[0].protocol,
        Protocol::Tcp,
        "tcp is the default"
    );
}

#[test]
fn fail_mode_defaults_follow_the_mode() {
    let observe = MINIMAL.replace("mode = \"enforce\"", "mode = \"observe\"");
    assert_eq!(ok(&observe).agent.fail, FailMode::Open);
    assert_eq!(ok(MINIMAL).agent.fail, FailMode::Closed);
    let open = MINIMAL.replace("[[workload]]", "fail = \"open\"\n\n[[workload]]");
    assert_eq!(ok(&open).agent.fail, FailMode::Open);
}

#[test]
fn every_address_form_parses() {
    let text = r#"
[agent]
mode = "enforce"
journal = "/j"

[[target]]
name = "v4"
address = "10.0.0.5:5432"
[[target]]
name = "v6"
address = "[::1]:5432"
[[target]]
name = "net4"
address = "10.0.0.0/8:5432"
[[target]]
name = "net6"
address = "[fd00::/8]:5432"
[[target]]
name = "mapped"
address = "[::ffff:10.0.0.1]:5432"
[[target]]
name = "any"
address = "*:5432"
"#;
    let dests: Vec<Destination> = ok(text).targets.iter().map(|t| t.destination).collect();
    assert_eq!(
        dests,
        vec![
            Destination::Exact("10.0.0.5:5432".parse().expect("addr")),
            Destination::Exact("[::1]:5432".parse().expect("addr")),
            Destination::Network {
                net: "10.0.0.0/8".parse().expect("net"),
                port: 5432
            },
            Destination::Network {
                net: "fd00::/8".parse().expect("net"),
                port: 5432
            },
            Destination::Exact("10.0.0.1:5432".parse().expect("addr")),
            Destination::AnyHost { port: 5432 },
        ]
    );
}

#[test]
fn bad_addresses_are_rejected_at_the_value() {
    for (address, words) in [
        ("db.internal:5432", "host name"),
        ("10.0.0.5:0", "out of range"),
        ("10.0.0.5:70000", "out of range"),
        ("10.0.0.0/40:5432", "too long"),
        ("10.0.0.0/abc:5432", "invalid prefix"),
    ] {
        let text = MINIMAL.replace("10.0.0.5:5432", address);
        let e = err(&text);
        assert_error_at(&e, &text, &format!("\"{address}\""), 0, words);
    }
}

#[test]
fn toml_syntax_error_position() {
    let text = "[agent]\nmode = \"enforce\"\njournal = \"/j\"\nlisten_port = = 5\n";
    let e = err(text);
    // The parser stops at the second '='.
    assert_error_at(&e, text, "= 5", 0, "");
}

#[test]
fn unknown_key_position() {
    let text = MINIMAL.replace(
        "name = \"backup-bot\"",
        "name = \"backup-bot\"\n  cgroups = \"x\"",
    );
    let e = err(&text);
    assert_error_at(&e, &text, "cgroups", 0, "unknown field `cgroups`");
    // Unknown tables are caught too.
    let text = MINIMAL.replace("[[target]]", "[[targets]]");
    let e = err(&text);
    assert_error_at(&e, &text, "targets", 0, "unknown field `targets`");
}

#[test]
fn single_bracket_tables_get_a_hint() {
    let text = MINIMAL.replace("[[target]]", "[target]");
    let e = err(&text);
    assert_error_at(
        &e,
        &text,
        "[target]",
        0,
        "write [[target]], with double brackets",
    );
}

#[test]
fn columns_count_characters_and_tabs() {
    // A tab and a multi-byte character before the value: the column counts
    // characters, and the caret padding keeps the tab so it lines up.
    let text = MINIMAL.replace(
        "address = \"10.0.0.5:5432\"",
        "\taddress = \"10.0.0.5:5432\" # é\naddress2 = \"é\"",
    );
    let e = err(&text);
    assert_error_at(&e, &text, "address2", 0, "unknown field `address2`");
    let text = MINIMAL.replace(
        "name = \"orders-db\"",
        "name = \"é\"\n\taddress = \"[::1]:0\"",
    );
    let text = text.replacen("address = \"10.0.0.5:5432\"\n", "", 1);
    let e = err(&text);
    assert_error_at(&e, &text, "\"[::1]:0\"", 0, "out of range");
    assert!(e.to_string().ends_with("| \t          ^^^^^^^^^"), "{e}");
}

#[test]
fn duplicate_target_name_position() {
    let text = format!(
        "{MINIMAL}\n[[target]]\nname = \"other\"\naddress = \"*:1\"\n\n[[target]]\nname = \"orders-db\"\naddress = \"*:2\"\n"
    );
    let e = err(&text);
    assert_error_at(
        &e,
        &text,
        "\"orders-db\"",
        1,
        "duplicate target name \"orders-db\"",
    );
    let first_line = position_of(&text, "\"orders-db\"", 0).0;
    assert!(
        e.to_string()
            .contains(&format!("first defined on line {first_line}")),
        "{e}"
    );
}

#[test]
fn the_per_workload_limit_defaults_to_three_quarters_of_max_connections() {
    use super::default_max_connections_per_workload as d;
    assert_eq!(d(4096), 3072);
    assert_eq!(d(64), 48);
    assert_eq!(d(10), 7);
    assert_eq!(d(2), 1);
    assert_eq!(d(1), 1);
}

#[test]
fn semantic_errors_point_at_the_value() {
    let cases: [(&str, &str, &str, &str); 10] = [
        (
            "protocol = \"tcp\"",
            "protocol = \"mongodb\"",
            "\"mongodb\"",
            "protocol \"mongodb\" is not supported yet (supported: tcp, postgres, http, aws, aws-imds, kubernetes, ssh, mysql, redis)",
        ),
        (
            "cgroup = \"system.slice/backup*.service\"",
            "cgroup = \"system.slice/[oops\"",
            "\"system.slice/[oops\"",
            "invalid cgroup pattern",
        ),
        (
            "journal = \"/var/lib/nhi-agent/journal.db\"",
            "journal = \"/var/lib/nhi-agent/journal.db\"\nconnect_timeout = \"10 parsecs\"",
            "\"10 parsecs\"",
            "invalid duration",
        ),
        (
            "journal = \"/var/lib/nhi-agent/journal.db\"",
            "journal = \"/var/lib/nhi-agent/journal.db\"\nmax_connections = 0",
            "0\n",
            "max_connections must be at least 1",
        ),
        (
            "journal = \"/var/lib/nhi-agent/journal.db\"",
            "journal = \"/var/lib/nhi-agent/journal.db\"\nmax_connections_per_workload = 0",
            "0\n",
            "max_connections_per_workload must be at least 1",
        ),
        (
            "journal = \"/var/lib/nhi-agent/journal.db\"",
            "journal = \"/var/lib/nhi-agent/journal.db\"\nmax_connections = 8\nmax_connections_per_workload = 9",
            "9\n",
            "max_connections_per_workload (9) cannot exceed max_connections (8)",
        ),
        (
            "journal = \"/var/lib/nhi-agent/journal.db\"",
            "journal = \"/var/lib/nhi-agent/journal.db\"\nrescan_interval = \"0s\"",
            "\"0s\"",
            "rescan_interval must be longer than zero",
        ),
        (
            "journal = \"/var/lib/nhi-agent/journal.db\"",
            "journal = \"journal.db\"",
            "\"journal.db\"",
            "absolute path",
        ),
        (
            "mode = \"enforce\"",
            "mode = \"enforcing\"",
            "\"enforcing\"",
            "unknown variant `enforcing`",
        ),
        (
            "journal = \"/var/lib/nhi-agent/journal.db\"",
            "journal = \"/var/lib/nhi-agent/journal.db\"\nlisten_port = 70000",
            "70000",
            "expected u16",
        ),
    ];
    for (from, to, needle, words) in cases {
        let text = MINIMAL.replace(from, to);
        let e = err(&text);
        assert_error_at(&e, &text, needle, 0, words);
    }
}

#[test]
fn type_error_position() {
    let text = MINIMAL.replace(
        "name = \"backup-bot\"",
        "name = \"backup-bot\"\nuid = \"root\"",
    );
    let e = err(&text);
    assert_error_at(&e, &text, "\"root\"", 0, "invalid type");
}

#[test]
fn missing_targets_and_keys_are_positioned() {
    let text = "[agent]\nmode = \"enforce\"\njournal = \"/j\"\n";
    let e = err(text);
    assert_eq!(e.position(), Some((1, 1)));
    assert!(e.to_string().contains("no [[target]] is configured"), "{e}");

    // A missing required key is reported at the enclosing table or the start.
    let text =
        "# comment\n[agent]\nmode = \"enforce\"\n\n[[target]]\nname = \"t\"\naddress = \"*:1\"\n";
    let e = err(text);
    assert!(e.to_string().contains("missing field `journal`"), "{e}");
    let (line, _) = e.position().expect("positioned");
    assert!(line == 1 || line == 2, "{e}");

    let text = "[[target]]\nname = \"t\"\naddress = \"*:1\"\n";
    let e = err(text);
    assert!(e.to_string().contains("missing field `agent`"), "{e}");
    assert_eq!(e.position(), Some((1, 1)), "{e}");
}

#[test]
fn workload_needs_cgroup_or_uid() {
    let text = MINIMAL.replace("cgroup = \"system.slice/backup*.service\"", "");
    let e = err(&text);
    assert!(e.to_string().contains("needs `cgroup`"), "{e}");
    let (line, _) = e.position().expect("positioned");
    let table_line = position_of(&text, "[[workload]]", 0).0;
    assert!(line == table_line || line == table_line + 1, "{e}");

    let uid_only = MINIMAL.replace("cgroup = \"system.slice/backup*.service\"", "uid = 1000");
    let w = &ok(&uid_only).workloads[0];
    assert_eq!(w.cgroup.as_str(), "**");
    assert_eq!(w.uid, Some(1000));
    assert!(w.cgroup.matches("anything/at/all"));
}

fn config_with(workloads: &str, targets: &str) -> Config {
    ok(&format!(
        "[agent]\nmode = \"enforce\"\njournal = \"/j\"\n\n{workloads}\n{targets}"
    ))
}

const ONE_TARGET: &str = "[[target]]\nname = \"t\"\naddress = \"*:1\"\n";

#[test]
fn workload_for_respects_order_and_uid() {
    let config = config_with(
        r#"
[[workload]]
name = "backup-as-root"
cgroup = "system.slice/backup*.service"
uid = 0

[[workload]]
name = "backup-any"
cgroup = "system.slice/backup*.service"

[[workload]]
name = "ci"
uid = 1001
"#,
        ONE_TARGET,
    );
    let name = |path: &str, uid: u32| config.workload_for(path, uid).and_then(|w| w.name.clone());
    assert_eq!(
        name("system.slice/backup.service", 0).as_deref(),
        Some("backup-as-root")
    );
    assert_eq!(
        name("system.slice/backup.service/job", 1000).as_deref(),
        Some("backup-any")
    );
    assert_eq!(
        name("user.slice/user-1001.slice", 1001).as_deref(),
        Some("ci")
    );
    assert_eq!(
        name("system.slice/backup.service", 1001).as_deref(),
        Some("backup-any")
    );
    assert_eq!(name("user.slice/user-1000.slice", 1000), None);
}

#[test]
fn workload_display_name_derives_when_absent() {
    let config = config_with(
        "[[workload]]\ncgroup = \"system.slice/*\"\n[[workload]]\nname = \"n\"\ncgroup = \"x\"\n",
        ONE_TARGET,
    );
    assert_eq!(
        config.workloads[0].display_name("system.slice/backup.service"),
        "backup.service"
    );
    assert_eq!(config.workloads[1].display_name("x/y"), "n");
}

#[test]
fn cgroup_selection_combinations() {
    let config = config_with(
        r#"
[[workload]]
cgroup = "a"
uid = 1

[[workload]]
cgroup = "a"
uid = 1

[[workload]]
cgroup = "b"
uid = 1

[[workload]]
cgroup = "b"
uid = 2

[[workload]]
cgroup = "c"

[[workload]]
cgroup = "c"
uid = 3

[[workload]]
cgroup = "d/**"
uid = 4
"#,
        ONE_TARGET,
    );
    assert_eq!(
        config.cgroup_selection("a"),
        Some(Some(1)),
        "same uid twice"
    );
    assert_eq!(
        config.cgroup_selection("a/child"),
        Some(Some(1)),
        "descendant"
    );
    assert_eq!(config.cgroup_selection("b"), Some(None), "different uids");
    assert_eq!(config.cgroup_selection("c"), Some(None), "one without uid");
    assert_eq!(config.cgroup_selection("d/x"), Some(Some(4)));
    assert_eq!(
        config.cgroup_selection("d"),
        None,
        "d/** does not match d itself"
    );
    assert_eq!(config.cgroup_selection("e"), None);
    assert_eq!(config.cgroup_selection(""), None);

    let everything = config_with("[[workload]]\nuid = 7\n", ONE_TARGET);
    assert_eq!(everything.cgroup_selection(""), Some(Some(7)));
    assert_eq!(everything.cgroup_selection("x/y"), Some(Some(7)));
    let nothing = config_with("", ONE_TARGET);
    assert_eq!(nothing.cgroup_selection("x"), None);
}

#[test]
fn target_for_takes_the_first_match() {
    let config = config_with(
        "",
        r#"
[[target]]
name = "exact"
address = "10.0.0.5:5432"

[[target]]
name = "net"
address = "10.0.0.0/8:5432"

[[target]]
name = "any"
address = "*:5432"

[[target]]
name = "v6"
address = "[::1]:6432"
"#,
    );
    let find = |addr: &str| {
        config
            .target_for(addr.parse().expect("addr"))
            .map(|(i, t)| (i, t.name.clone()))
    };
    assert_eq!(find("10.0.0.5:5432"), Some((0, "exact".into())));
    assert_eq!(find("[::ffff:10.0.0.5]:5432"), Some((0, "exact".into())));
    assert_eq!(find("10.0.0.6:5432"), Some((1, "net".into())));
    assert_eq!(find("192.0.2.1:5432"), Some((2, "any".into())));
    assert_eq!(find("[::1]:6432"), Some((3, "v6".into())));
    assert_eq!(find("127.0.0.1:6432"), None);
}

#[test]
fn load_reads_files_and_reports_io_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, MINIMAL).expect("write config");
    let config = load(&path).expect("loads");
    assert_eq!(config.source.as_deref(), Some(path.as_path()));

    let missing = dir.path().join("missing.toml");
    match load(&missing) {
        Err(ConfigError::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }

    // Errors in a loaded file are named after the file.
    let text = MINIMAL.replace("tcp", "udp");
    std::fs::write(&path, &text).expect("write config");
    let e = load(&path).expect_err("udp is not supported");
    let (line, column) = position_of(&text, "\"udp\"", 0);
    let prefix = format!("{}:{line}:{column}: ", path.display());
    assert!(e.to_string().starts_with(&prefix), "{e}");
}

#[test]
fn example_policy_parses() {
    let config = ok(include_str!("../../../policies/example.toml"));
    assert_eq!(config.agent.mode, Mode::Enforce);
    assert_eq!(config.ship.retention.disk_budget, Some(10 << 30));
    assert_eq!(config.evidence.segment_max_bytes, 64 << 20);
    assert_eq!(
        config.agent.journal,
        PathBuf::from("/var/lib/nhi-agent/journal.db")
    );
    assert!(config.workload_for("nhi-demo", 0).is_some());
    assert!(config.workload_for("nhi-demo/job-1", 1000).is_some());
    assert!(config
        .workload_for("system.slice/backup-nightly.service", 0)
        .is_some());
    assert!(config
        .workload_for("system.slice/sshd.service", 0)
        .is_none());
    assert!(config
        .target_for("127.0.0.1:5432".parse().expect("addr"))
        .is_some());
    assert!(config
        .target_for("[::1]:5432".parse().expect("addr"))
        .is_some());
    assert!(config
        .target_for("127.0.0.1:5433".parse().expect("addr"))
        .is_none());
}

#[test]
fn postgres_target_keys_are_validated() {
    let target = |keys: &str| {
        format!(
            "[agent]\nmode = \"enforce\"\njournal = \"/j.db\"\n\n[[target]]\nname = \"pg\"\naddress = \"127.0.0.1:5432\"\n{keys}\n"
        )
    };
    let c = ok(&target(
        "protocol = \"postgres\"\ntls = \"verify-full\"\nca_file = \"/ca.pem\"\nserver_name = \"db\"\nclient_tls = \"terminate\"\npassword_file = \"/pw\"\nuser = \"app\"",
    ));
    let pg = c.targets[0].postgres.as_ref().expect("postgres settings");
    assert_eq!(pg.tls, UpstreamTlsMode::VerifyFull);
    assert_eq!(pg.client_tls, ClientTls::Terminate);
    assert_eq!(
        pg.credential,
        Some(CredentialRef::File(PathBuf::from("/pw")))
    );
    assert_eq!(pg.user.as_deref(), Some("app"));
    let defaults = ok(&target("protocol = \"postgres\""));
    assert_eq!(
        defaults.targets[0].postgres,
        Some(PostgresTarget::default())
    );
    for (keys, expected) in [
        (
            "password_file = \"/pw\"",
            "only applies to protocol = \"postgres\"",
        ),
        (
            "protocol = \"postgres\"\ntls = \"verify-full\"",
            "needs `ca_file`",
        ),
        (
            "protocol = \"postgres\"\npassword_file = \"/pw\"\ncredential = \"x\"",
            "not both",
        ),
        (
            "protocol = \"postgres\"\ncredential = \"../x\"",
            "systemd credential name",
        ),
        (
            "protocol = \"postgres\"\nuser = \"app\"",
            "needs `password_file` or `credential`",
        ),
        (
            "protocol = \"postgres\"\npassword_file = \"pw\"",
            "absolute path",
        ),
    ] {
        let e = parse(&target(keys), "t.toml").expect_err(keys).to_string();
        assert!(e.contains(expected), "{keys}: {e}");
    }
}

#[test]
fn http_target_keys_are_validated() {
    let target = |keys: &str| {
        format!(
            "[agent]\nmode = \"enforce\"\njournal = \"/j.db\"\n\n[[target]]\nname = \"api\"\naddress = \"127.0.0.1:8080\"\nprotocol = \"http\"\n{keys}\n"
        )
    };
    let c = ok(&target(
        "tls = \"verify-full\"\nserver_name = \"api.internal\"\nclient_tls = \"terminate\"\npassword_file = \"/tok\"\ninject = \"X-Api-Key:  key={secret};v=1 \"",
    ));
    let http = c.targets[0].http.as_ref().expect("http settings");
    assert!(c.targets[0].postgres.is_none());
    assert_eq!(http.tls, UpstreamTlsMode::VerifyFull);
    // verify-full without ca_file: the system's roots (PostgreSQL still needs ca_file).
    assert_eq!(http.ca_file, None);
    assert_eq!(http.server_name.as_deref(), Some("api.internal"));
    assert_eq!(http.client_tls, ClientTls::Terminate);
    assert_eq!(
        http.credential,
        Some(CredentialRef::File(PathBuf::from("/tok")))
    );
    assert_eq!(
        http.inject,
        Some(InjectHeader {
            name: "x-api-key".into(),
            prefix: "key=".into(),
            suffix: ";v=1".into(),
        })
    );
    let c = ok(&target(
        "credential = \"api-token\"\ninject = \"Authorization: Basic {secret}\"",
    ));
    let http = c.targets[0].http.as_ref().expect("http settings");
    assert_eq!(
        http.credential,
        Some(CredentialRef::Systemd("api-token".into()))
    );
    let inject = http.inject.as_ref().expect("inject");
    assert_eq!(
        (
            inject.name.as_str(),
            inject.prefix.as_str(),
            inject.suffix.as_str()
        ),
        ("authorization", "Basic ", "")
    );
    assert_eq!(
        ok(&target("")).targets[0].http,
        Some(HttpTarget {
            mask_body_limit: crate::protocol::http::body::DEFAULT_MASK_BODY_LIMIT,
            ..HttpTarget::default()
        })
    );
    let c = ok(&target("mask_body_limit = \"512KiB\""));
    assert_eq!(
        c.targets[0].http.as_ref().unwrap().mask_body_limit,
        512 << 10
    );

    // Each error points at the value it is about.
    for (keys, value, expected) in [
        (
            "inject = \"Authorization: Bearer {secret}\"",
            "\"Authorization: Bearer {secret}\"",
            "needs the secret it injects",
        ),
        (
            "password_file = \"/tok\"",
            "\"/tok\"",
            "only through `inject`",
        ),
        ("credential = \"tok\"", "\"tok\"", "only through `inject`"),
        (
            "password_file = \"/tok\"\ninject = \"Authorization: Bearer\"",
            "\"Authorization: Bearer\"",
            "exactly once",
        ),
        (
            "password_file = \"/tok\"\ninject = \"Authorization: {secret} {secret}\"",
            "\"Authorization: {secret} {secret}\"",
            "exactly once",
        ),
        (
            "password_file = \"/tok\"\ninject = \"Bearer {secret}\"",
            "\"Bearer {secret}\"",
            "no ':' found",
        ),
        (
            "password_file = \"/tok\"\ninject = \"Auth header: {secret}\"",
            "\"Auth header: {secret}\"",
            "not a valid HTTP header name",
        ),
        (
            "password_file = \"/tok\"\ninject = \"Host: {secret}\"",
            "\"Host: {secret}\"",
            "does not set",
        ),
        (
            "password_file = \"/tok\"\ninject = \"X-Key: {secret}\\r\\nX-Other: 1\"",
            "\"X-Key: {secret}\\r\\nX-Other: 1\"",
            "control character",
        ),
        ("tls = \"prefer\"", "\"prefer\"", "no meaning for HTTP"),
        (
            "mask_body_limit = \"lots\"",
            "\"lots\"",
            "invalid size \"lots\" for mask_body_limit",
        ),
        (
            "mask_body_limit = \"10\"",
            "\"10\"",
            "between 1KiB and 1GiB",
        ),
        (
            "user = \"app\"",
            "\"app\"",
            "only applies to protocol = \"postgres\"",
        ),
        ("ca_file = \"ca.pem\"", "\"ca.pem\"", "absolute path"),
    ] {
        let text = target(keys);
        let e = parse(&text, "t.toml").expect_err(keys).to_string();
        assert!(e.contains(expected), "{keys}: {e}");
        let (line, column) = position_of(&text, value, 0);
        assert!(
            e.starts_with(&format!("t.toml:{line}:{column}: ")),
            "{keys}: {e}"
        );
    }
    // `inject` belongs to HTTP only.
    let pg = target("password_file = \"/pw\"\ninject = \"Authorization: Bearer {secret}\"")
        .replace("\"http\"", "\"postgres\"");
    let e = parse(&pg, "t.toml")
        .expect_err("inject on postgres")
        .to_string();
    assert!(e.contains("only applies to protocol = \"http\""), "{e}");
    let tcp = target("inject = \"Authorization: Bearer {secret}\"").replace("\"http\"", "\"tcp\"");
    let e = parse(&tcp, "t.toml")
        .expect_err("inject on tcp")
        .to_string();
    assert!(e.contains("only applies to protocol = \"http\""), "{e}");
}

#[test]
fn policies_and_masks_are_read_and_mask_names_are_unique() {
    let base = "[agent]\nmode = \"enforce\"\njournal = \"/j.db\"\n\n[[target]]\nname = \"pg\"\naddress = \"127.0.0.1:5432\"\nprotocol = \"postgres\"\n";
    let c = ok(&format!(
        "{base}\n[[policy]]\nworkload = \"bot*\"\n[[policy.rule]]\nname = \"no-drop\"\nverdict = \"deny\"\nkinds = [\"drop\"]\n\n[[mask]]\nname = \"pii\"\ncolumns = [\"email\"]\n"
    ));
    assert!(c.policies.for_session("bot-1", "pg", None).is_some());
    assert!(c.policies.for_session("other", "pg", None).is_none());
    assert_eq!(c.masks.len(), 1);
    let dup = format!("{base}\n[[mask]]\nname = \"pii\"\ncolumns = [\"a\"]\n\n[[mask]]\nname = \"pii\"\ncolumns = [\"b\"]\n");
    let e = parse(&dup, "t.toml").expect_err("duplicate").to_string();
    assert!(e.contains("duplicate mask name"), "{e}");
    assert!(e.contains("t.toml:14"), "points at the second mask: {e}");
    let bad = format!("{base}\n[[policy]]\n[[policy.rule]]\nname = \"r\"\nverdict = \"deny\"\nkinds = [\"dropp\"]\n");
    let e = parse(&bad, "t.toml").expect_err("bad kind").to_string();
    assert!(e.contains("dropp"), "{e}");
}

#[test]
fn netns_scopes_a_target_to_the_host_or_containers() {
    const AGENT: &str = "[agent]\nmode = \"enforce\"\njournal = \"/tmp/j.db\"\n";
    let config = ok(&format!(
        r#"{AGENT}
[[workload]]
cgroup = "ci.slice/*"

[[target]]
name = "db-host"
address = "10.0.0.5:5432"
netns = "host"

[[target]]
name = "db-containers"
address = "10.0.0.0/24:5432"
netns = "container"

[[target]]
name = "any"
address = "*:6379"
"#
    ));
    let db: SocketAddr = "10.0.0.5:5432".parse().expect("addr");
    assert_eq!(config.target_in(db, false).map(|(i, _)| i), Some(0));
    assert_eq!(config.target_in(db, true).map(|(i, _)| i), Some(1));
    let other: SocketAddr = "10.0.0.9:5432".parse().expect("addr");
    assert_eq!(config.target_in(other, false), None);
    assert_eq!(config.target_in(other, true).map(|(i, _)| i), Some(1));
    let redis: SocketAddr = "10.1.1.1:6379".parse().expect("addr");
    assert_eq!(config.target_in(redis, false).map(|(i, _)| i), Some(2));
    assert_eq!(config.target_in(redis, true).map(|(i, _)| i), Some(2));

    let e = err(&format!(
        r#"{AGENT}
[[target]]
name = "x"
address = "10.0.0.5:5432"
netns = "pod"
"#
    ));
    assert!(
        e.to_string()
            .contains("netns must be \"host\" or \"container\""),
        "{e}"
    );
}

#[test]
fn aws_target_keys_are_validated() {
    let config = |protocol: &str, keys: &str| {
        format!(
            "[agent]\nmode = \"enforce\"\njournal = \"/j.db\"\n\n[[workload]]\nname = \"ci\"\ncgroup = \"ci.slice/**\"\naws_role_arn = \"arn:aws:iam::123456789012:role/ci-deployer\"\n\n[[target]]\nname = \"aws\"\naddress = \"*:443\"\nprotocol = \"{protocol}\"\n{keys}\n"
        )
    };
    let c = ok(&config(
        "aws",
        "aws_credentials_file = \"/etc/nhi-agent/aws\"\naws_profile = \"ci\"\naws_sts_endpoint = \"https://sts.eu-west-1.amazonaws.com/\"",
    ));
    let t = &c.targets[0];
    assert_eq!(t.protocol, Protocol::Aws);
    assert_eq!(
        t.aws,
        Some(AwsTarget {
            credentials: AwsCredentialSource::File {
                path: PathBuf::from("/etc/nhi-agent/aws"),
                profile: "ci".into()
            },
            accept_any_client_key: false,
            sts_endpoint: Some("https://sts.eu-west-1.amazonaws.com".into()),
        })
    );
    // An AWS target serves HTTPS to the client unless told otherwise.
    let http = t.http.as_ref().expect("an AWS target is an HTTP one");
    assert_eq!(http.client_tls, ClientTls::Terminate);
    assert_eq!(http.credential, None);
    assert_eq!(
        c.workloads[0].aws_role_arn.as_deref(),
        Some("arn:aws:iam::123456789012:role/ci-deployer")
    );
    let c = ok(&config(
        "aws",
        "credential = \"aws-key\"\naccept_any_client_key = true",
    ));
    let aws = c.targets[0].aws.as_ref().unwrap();
    assert_eq!(
        aws.credentials,
        AwsCredentialSource::Systemd {
            name: "aws-key".into(),
            profile: "default".into()
        }
    );
    assert!(aws.accept_any_client_key);
    let c = ok(&config("aws", "aws_instance_role = true"));
    assert_eq!(
        c.targets[0].aws.as_ref().unwrap().credentials,
        AwsCredentialSource::InstanceRole
    );
    let c = ok(&config(
        "aws-imds",
        "aws_region = \"eu-west-1\"\naws_role_name = \"ci-runner\"",
    ));
    assert_eq!(
        c.targets[0].imds,
        Some(ImdsTarget {
            region: Some("eu-west-1".into()),
            role_name: "ci-runner".into()
        })
    );
    assert_eq!(
        c.targets[0].http.as_ref().unwrap().client_tls,
        ClientTls::Refuse
    );
    assert_eq!(c.targets[0].aws, None);

    for (protocol, keys, value, expected) in [
        ("aws", "", "\"aws\"", "needs the agent's own credential"),
        (
            "aws",
            "aws_credentials_file = \"/a\"\naws_instance_role = true",
            "true",
            "give one of",
        ),
        (
            "aws",
            "aws_credentials_file = \"relative\"",
            "\"relative\"",
            "absolute",
        ),
        (
            "aws",
            "aws_instance_role = true\naws_profile = \"x\"",
            "\"x\"",
            "an instance role has none",
        ),
        (
            "aws",
            "aws_credentials_file = \"/a\"\ninject = \"A: {secret}\"",
            "\"A: {secret}\"",
            "only applies to protocol = \"http\"",
        ),
        (
            "aws",
            "aws_credentials_file = \"/a\"\naws_sts_endpoint = \"sts.amazonaws.com\"",
            "\"sts.amazonaws.com\"",
            "http(s) URL",
        ),
        (
            "aws-imds",
            "credential = \"x\"",
            "\"x\"",
            "hands out the placeholder",
        ),
        (
            "aws-imds",
            "aws_region = \"EU west\"",
            "\"EU west\"",
            "region name",
        ),
        (
            "aws-imds",
            "aws_credentials_file = \"/a\"",
            "\"/a\"",
            "only applies to protocol = \"aws\"",
        ),
        (
            "http",
            "accept_any_client_key = true",
            "true",
            "only applies to protocol = \"aws\"",
        ),
        (
            "tcp",
            "aws_region = \"eu-west-1\"",
            "\"eu-west-1\"",
            "only applies to protocol = \"aws-imds\"",
        ),
    ] {
        let text = config(protocol, keys);
        assert_error_at(&err(&text), &text, value, 0, expected);
    }
    let text = config("aws", "aws_instance_role = true")
        .replace("arn:aws:iam::123456789012:role/ci-deployer", "ci-deployer");
    assert_error_at(&err(&text), &text, "\"ci-deployer\"", 0, "role ARN");
}

#[test]
fn the_aws_example_is_valid() {
    let c = ok(include_str!("../../../policies/aws.toml"));
    let protocols: Vec<Protocol> = c.targets.iter().map(|t| t.protocol).collect();
    assert_eq!(
        protocols,
        [Protocol::Aws, Protocol::AwsImds, Protocol::AwsImds]
    );
    assert!(c.workloads[0].aws_role_arn.is_some());
}

#[test]
fn the_kubernetes_example_is_valid() {
    let c = ok(include_str!("../../../policies/kubernetes.toml"));
    assert_eq!(c.targets[0].protocol, Protocol::Kubernetes);
    assert!(matches!(
        &c.targets[0].kube.as_ref().unwrap().credential,
        KubeCredential::Token(CredentialRef::File(_))
    ));
    let impersonated: Vec<&str> = c
        .workloads
        .iter()
        .filter_map(|w| w.kube_impersonate.as_ref().map(|i| i.user.as_str()))
        .collect();
    assert_eq!(
        impersonated,
        [
            "system:serviceaccount:ci:deployer",
            "system:serviceaccount:ci:runner"
        ]
    );
}

#[test]
fn the_ssh_example_is_valid() {
    let c = ok(include_str!("../../../policies/ssh.toml"));
    let ssh: Vec<&SshTarget> = c.targets.iter().filter_map(|t| t.ssh.as_ref()).collect();
    assert_eq!(ssh.len(), 2);
    assert_eq!(ssh[0].user.as_deref(), Some("deploy"));
    assert!(matches!(ssh[0].host_key, HostKeyCheck::KnownHosts(_)));
    assert_eq!(ssh[0].host_names, ["web1.internal", "web2.internal"]);
    assert!(ssh[0].mask_output);
    assert!(matches!(&ssh[1].key, CredentialRef::Systemd(n) if n == "bastion-key"));
    assert!(matches!(&ssh[1].host_key, HostKeyCheck::Fingerprint(f) if f.starts_with("SHA256:")));
}

#[test]
fn ssh_target_keys_are_validated() {
    let config = |keys: &str| {
        format!(
            "[agent]\nmode = \"enforce\"\njournal = \"/j.db\"\n\n[[target]]\nname = \"h\"\naddress = \"127.0.0.1:22\"\n{keys}\n"
        )
    };
    let fp = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
    ok(&config(&format!(
        "protocol = \"ssh\"\nkey_file = \"/k\"\nhost_key = \"{fp}\""
    )));
    for (keys, value, expected) in [
        (
            format!("protocol = \"ssh\"\nhost_key = \"{fp}\""),
            "\"h\"",
            "needs the key the agent logs into the host with",
        ),
        (
            "protocol = \"ssh\"\nkey_file = \"/k\"".to_owned(),
            "\"h\"",
            "never trusts a host key on first use",
        ),
        (
            format!(
                "protocol = \"ssh\"\nkey_file = \"/k\"\nhost_key = \"{fp}\"\nknown_hosts = \"/kh\""
            ),
            format!("\"{fp}\"").leak(),
            "either `known_hosts` or `host_key`",
        ),
        (
            "protocol = \"ssh\"\nkey_file = \"/k\"\nhost_key = \"ab:cd\"".to_owned(),
            "\"ab:cd\"",
            "SHA256 fingerprint",
        ),
        (
            "protocol = \"ssh\"\nkey_file = \"k\"\nhost_key = \"x\"".to_owned(),
            "\"k\"",
            "absolute",
        ),
        (
            "protocol = \"tcp\"\nkey_file = \"/k\"".to_owned(),
            "\"/k\"",
            "only applies to protocol = \"ssh\"",
        ),
        (
            format!(
                "protocol = \"ssh\"\nkey_file = \"/k\"\nhost_key = \"{fp}\"\ntls = \"require\""
            ),
            "\"require\"",
            "only applies to",
        ),
    ] {
        let text = config(&keys);
        assert_error_at(&err(&text), &text, value, 0, expected);
    }
}

#[test]
fn kubernetes_target_and_workload_keys_are_validated() {
    let config = |workload_keys: &str, keys: &str| {
        format!(
            "[agent]\nmode = \"enforce\"\njournal = \"/j.db\"\n\n[[workload]]\nname = \"ci\"\ncgroup = \"ci.slice/**\"\n{workload_keys}\n\n[[target]]\nname = \"cluster\"\naddress = \"10.0.0.1:6443\"\nprotocol = \"kubernetes\"\n{keys}\n"
        )
    };
    let c = ok(&config(
        "kube_impersonate = \"system:serviceaccount:ci:deployer\"\nkube_impersonate_groups = [\"system:serviceaccounts\"]",
        "ca_file = \"/etc/nhi-agent/cluster-ca.pem\"\ntoken_file = \"/etc/nhi-agent/cluster.token\"",
    ));
    let t = &c.targets[0];
    assert_eq!(t.protocol, Protocol::Kubernetes);
    assert_eq!(
        t.kube,
        Some(KubeTarget {
            credential: KubeCredential::Token(CredentialRef::File(PathBuf::from(
                "/etc/nhi-agent/cluster.token"
            )))
        })
    );
    // kubectl speaks HTTPS to an API server that speaks HTTPS, checked against the
    // cluster CA.
    let http = t.http.as_ref().expect("a Kubernetes target is an HTTP one");
    assert_eq!(http.client_tls, ClientTls::Terminate);
    assert_eq!(http.tls, UpstreamTlsMode::VerifyFull);
    assert_eq!(
        (http.credential.as_ref(), http.inject.as_ref()),
        (None, None)
    );
    assert_eq!(
        c.workloads[0].kube_impersonate,
        Some(KubeImpersonation {
            user: "system:serviceaccount:ci:deployer".into(),
            groups: vec!["system:serviceaccounts".into()],
        })
    );
    let c = ok(&config("", "credential = \"cluster-token\""));
    assert_eq!(
        c.targets[0].kube.as_ref().unwrap().credential,
        KubeCredential::Token(CredentialRef::Systemd("cluster-token".into()))
    );
    let c = ok(&config(
        "",
        "client_cert_file = \"/etc/k/agent.crt\"\nclient_key_file = \"/etc/k/agent.key\"\ntls = \"require\"",
    ));
    assert_eq!(
        c.targets[0].kube.as_ref().unwrap().credential,
        KubeCredential::ClientCert {
            cert: PathBuf::from("/etc/k/agent.crt"),
            key: PathBuf::from("/etc/k/agent.key")
        }
    );
    assert_eq!(c.workloads[0].kube_impersonate, None);

    for (workload_keys, keys, expected) in [
        ("", "", "needs the agent's own credential"),
        ("", "token_file = \"/t\"\ncredential = \"c\"", "not both"),
        ("", "client_cert_file = \"/c\"", "needs client_key_file"),
        ("", "client_key_file = \"/k\"", "needs client_cert_file"),
        (
            "",
            "token_file = \"/t\"\nclient_cert_file = \"/c\"\nclient_key_file = \"/k\"",
            "give one credential",
        ),
        ("", "token_file = \"t\"", "absolute"),
        (
            "",
            "token_file = \"/t\"\ninject = \"X-A: {secret}\"",
            "`inject` only applies",
        ),
        (
            "",
            "token_file = \"/t\"\npassword_file = \"/p\"",
            "`password_file` only applies",
        ),
        (
            "kube_impersonate = \"\"",
            "token_file = \"/t\"",
            "kube_impersonate must be",
        ),
        (
            "kube_impersonate_groups = [\"a\"]",
            "token_file = \"/t\"",
            "needs kube_impersonate",
        ),
    ] {
        let e = err(&config(workload_keys, keys));
        assert!(e.to_string().contains(expected), "{keys}: {e}");
    }
    // The Kubernetes keys belong to Kubernetes targets.
    let e = err("[agent]\nmode = \"enforce\"\njournal = \"/j.db\"\n\n[[target]]\nname = \"t\"\naddress = \"10.0.0.1:80\"\nprotocol = \"http\"\ntoken_file = \"/t\"\n");
    assert!(
        e.to_string()
            .contains("`token_file` only applies to protocol = \"kubernetes\""),
        "{e}"
    );
}

#[test]
fn metrics_listen_is_an_address_and_a_bad_one_is_pointed_at() {
    let with = |value: &str| {
        MINIMAL.replacen(
            "[agent]\n",
            &format!("[agent]\nmetrics_listen = \"{value}\"\n"),
            1,
        )
    };
    let config = ok(&with("127.0.0.1:9464"));
    assert_eq!(
        config.agent.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    let e = err(&with("localhost:9464")).to_string();
    assert!(
        e.contains("metrics_listen \"localhost:9464\" is not an address:port"),
        "{e}"
    );
}

#[test]
fn mysql_targets_take_the_postgres_keys() {
    let target = |keys: &str| {
        format!(
            "[agent]\nmode = \"enforce\"\njournal = \"/j.db\"\n\n[[target]]\nname = \"my\"\naddress = \"127.0.0.1:3306\"\n{keys}\n"
        )
    };
    let c = ok(&target(
        "protocol = \"mysql\"\ntls = \"require\"\nclient_tls = \"terminate\"\npassword_file = \"/pw\"\nuser = \"app\"",
    ));
    assert_eq!(c.targets[0].protocol, Protocol::Mysql);
    assert!(c.targets[0].postgres.is_none());
    let my = c.targets[0].mysql.as_ref().expect("mysql settings");
    assert_eq!(my.tls, UpstreamTlsMode::Require);
    assert_eq!(my.client_tls, ClientTls::Terminate);
    assert_eq!(
        my.credential,
        Some(CredentialRef::File(PathBuf::from("/pw")))
    );
    assert_eq!(my.user.as_deref(), Some("app"));
    let defaults = ok(&target("protocol = \"mysql\""));
    assert_eq!(defaults.targets[0].mysql, Some(MysqlTarget::default()));
    // `user` without a credential is refused as on PostgreSQL targets.
    let problem = err(&target("protocol = \"mysql\"\nuser = \"app\"")).to_string();
    assert!(
        problem.contains("needs `password_file` or `credential`"),
        "{problem}"
    );
}

#[test]
fn mysql_server_public_key_keys_are_validated() {
    let target = |protocol: &str, keys: &str| {
        format!(
            "[agent]\nmode = \"enforce\"\njournal = \"/j.db\"\n\n[[target]]\nname = \"my\"\naddress = \"127.0.0.1:3306\"\nprotocol = \"{protocol}\"\n{keys}\n"
        )
    };
    let key = |keys: &str| {
        ok(&target(
            "mysql",
            &format!("password_file = \"/pw\"\n{keys}"),
        ))
        .targets[0]
            .mysql
            .as_ref()
            .expect("mysql settings")
            .server_public_key
            .clone()
    };
    assert_eq!(key(""), ServerPublicKey::Refuse);
    assert_eq!(
        key("get_server_public_key = false"),
        ServerPublicKey::Refuse
    );
    assert_eq!(
        key("get_server_public_key = true"),
        ServerPublicKey::Request
    );
    assert_eq!(
        key("server_public_key = \"/etc/nhi/mysql.pem\""),
        ServerPublicKey::Pinned(PathBuf::from("/etc/nhi/mysql.pem"))
    );
    // A pinned key with `get_server_public_key = false` is the pinned key.
    assert_eq!(
        key("server_public_key = \"/k.pem\"\nget_server_public_key = false"),
        ServerPublicKey::Pinned(PathBuf::from("/k.pem"))
    );
    let problem = |protocol: &str, keys: &str| err(&target(protocol, keys)).to_string();
    let both = problem(
        "mysql",
        "password_file = \"/pw\"\nserver_public_key = \"/k.pem\"\nget_server_public_key = true",
    );
    assert!(both.contains("not both"), "{both}");
    let relative = problem(
        "mysql",
        "password_file = \"/pw\"\nserver_public_key = \"k.pem\"",
    );
    assert!(
        relative.contains("server_public_key must be an absolute path"),
        "{relative}"
    );
    // Without the agent's credential: for passwords TLS clients send.
    assert_eq!(
        ok(&target("mysql", "get_server_public_key = true")).targets[0]
            .mysql
            .as_ref()
            .expect("mysql settings")
            .server_public_key,
        ServerPublicKey::Request
    );
    let elsewhere = problem("postgres", "server_public_key = \"/k.pem\"");
    assert!(
        elsewhere.contains("`server_public_key` only applies to protocol = \"mysql\""),
        "{elsewhere}"
    );
    let elsewhere = problem("tcp", "get_server_public_key = true");
    assert!(
        elsewhere.contains("`get_server_public_key` only applies to protocol = \"mysql\""),
        "{elsewhere}"
    );
}

#[test]
fn redis_target_keys_are_validated() {
    let target = |keys: &str| {
        format!(
            "[agent]\nmode = \"enforce\"\njournal = \"/j.db\"\n\n[[target]]\nname = \"cache\"\naddress = \"127.0.0.1:6379\"\nprotocol = \"redis\"\n{keys}\n"
        )
    };
    let c = ok(&target("password_file = \"/pw\"\nuser = \"bot\""));
    assert_eq!(c.targets[0].protocol.to_string(), "redis");
    let redis = c.targets[0].redis.as_ref().expect("redis settings");
    assert_eq!(
        redis.credential,
        Some(CredentialRef::File(PathBuf::from("/pw")))
    );
    assert_eq!(redis.user.as_deref(), Some("bot"));
    assert!(c.targets[0].postgres.is_none() && c.targets[0].http.is_none());
    let c = ok(&target("credential = \"redis-pw\""));
    assert_eq!(
        c.targets[0].redis.as_ref().expect("redis").credential,
        Some(CredentialRef::Systemd("redis-pw".into()))
    );
    assert_eq!(
        ok(&target("")).targets[0].redis,
        Some(RedisTarget::default())
    );
    // TLS on both legs, with the PostgreSQL targets' keys.
    let c = ok(&target(
        "tls = \"verify-full\"\nca_file = \"/ca.crt\"\nserver_name = \"cache.internal\"\nclient_tls = \"terminate\"",
    ));
    let redis = c.targets[0].redis.as_ref().expect("redis");
    assert_eq!(redis.tls, UpstreamTlsMode::VerifyFull);
    assert_eq!(
        redis.ca_file.as_deref(),
        Some(std::path::Path::new("/ca.crt"))
    );
    assert_eq!(redis.server_name.as_deref(), Some("cache.internal"));
    assert_eq!(redis.client_tls, ClientTls::Terminate);
    let c = ok(&target("tls = \"require\""));
    assert_eq!(
        c.targets[0].redis.as_ref().unwrap().tls,
        UpstreamTlsMode::Require
    );
    for (keys, expected) in [
        ("user = \"bot\"", "needs `password_file` or `credential`"),
        ("password_file = \"/pw\"\nuser = \"a b\"", "without spaces"),
        ("password_file = \"/pw\"\ncredential = \"x\"", "not both"),
        ("tls = \"prefer\"", "no meaning for Redis"),
        ("tls = \"verify-full\"", "needs `ca_file`"),
        ("ca_file = \"relative.crt\"", "absolute"),
        ("inject = \"X-Key: {secret}\"", "only applies to"),
        ("key_file = \"/k\"", "only applies to protocol = \"ssh\""),
    ] {
        let e = parse(&target(keys), "t.toml").expect_err(keys).to_string();
        assert!(e.contains(expected), "{keys}: {e}");
    }
}
