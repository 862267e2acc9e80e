//! `cargo xtask demo`: the tour a newcomer takes after the README. A throwaway
//! PostgreSQL with a `customers` table, the agent with policies/demo.toml, and a "bot"
//! (psql in a cgroup of its own) that reads customers (e-mail addresses and card numbers
//! come back masked), tries to drop the table and to delete every row (both refused,
//! naming the rule) and updates one row (allowed). Then the journal, as `nhi-agent
//! sessions` and `nhi-agent replay` show it.
//!
//! Every step states what should happen and is checked: the demo exits non-zero when an
//! expectation fails, so it doubles as an end-to-end smoke test. Everything it creates
//! (server, agent, pins, cgroup, temp dir) is removed on the way out, error or not, by
//! guards dropped in reverse order of creation.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nhi_tests::{PgServer, TestCgroup};

use crate::{
    bench::{AgentProcess, TempDir},
    setup,
    util::{self, run as sh},
};

/// The agent config, with `@NAME@` placeholders (documented at the top of the file).
const TEMPLATE: &str = include_str!("../../policies/demo.toml");

/// The seeded table. The card numbers are the card networks' published test numbers
/// (Luhn-valid, so the `credit_card` detector recognises them).
const SEED: &str =
    "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text, card text);
INSERT INTO customers VALUES
  (1, 'Ada Lovelace', 'ada@example.com', '4111 1111 1111 1111'),
  (2, 'Grace Hopper', 'grace.hopper@example.org', '5555-5555-5555-4444'),
  (3, 'Alan Turing', 'alan.turing@example.net', '378282246310005');";

/// Values that must never reach the bot or the journal.
const SECRETS: &[&str] = &[
    "ada@example.com",
    "grace.hopper@example.org",
    "alan.turing@example.net",
    "4111 1111 1111 1111",
    "5555-5555-5555-4444",
    "378282246310005",
];

/// What the `redact` strategy puts in place of a value (agent/src/mask/strategy.rs).
const REDACTED: &str = "[redacted]";

/// What a step's output must show.
enum Expect {
    /// Rows come back (this name among them, and this row-count footer), with
    /// [`REDACTED`] and no value from [`SECRETS`].
    Masked {
        shows: &'static str,
        footer: &'static str,
    },
    /// An error that names the rule.
    Refused { rule: &'static str },
    /// The server's command tag, and no error.
    Allowed { tag: &'static str },
}

/// One statement the bot runs, and why.
struct Step {
    sql: &'static str,
    why: &'static str,
    expect: Expect,
}

const STEPS: &[Step] = &[
    Step {
        sql: "SELECT id, name, email, card FROM customers ORDER BY id",
        why: "The bot reads its customers. The rows come back, but mask \"pii\" has replaced \
              the email and card columns on the way.",
        expect: Expect::Masked {
            shows: "Ada Lovelace",
            footer: "(3 rows)",
        },
    },
    Step {
        sql: "SELECT name || ' <' || email || '>' AS contact FROM customers WHERE id = 2",
        why: "Column \"contact\" is not on the mask's list, but the e-mail detector finds the \
              address inside the value and masks just that part.",
        expect: Expect::Masked {
            shows: "Grace Hopper",
            footer: "(1 row)",
        },
    },
    Step {
        sql: "DROP TABLE customers",
        why: "Refused by rule \"no-drop\": the statement never reaches the server, and the \
              bot gets an ordinary PostgreSQL error.",
        expect: Expect::Refused { rule: "no-drop" },
    },
    Step {
        sql: "DELETE FROM customers",
        why: "A DELETE without WHERE: refused by rule \"no-unbounded-delete\". The session \
              goes on.",
        expect: Expect::Refused {
            rule: "no-unbounded-delete",
        },
    },
    Step {
        sql: "UPDATE customers SET name = 'Ada King' WHERE id = 1",
        why: "An UPDATE with a WHERE clause: no rule matches, the policy's default (allow) \
              applies, and it is journaled before it is forwarded.",
        expect: Expect::Allowed { tag: "UPDATE 1" },
    },
];

/// Marks where a step's output starts in psql's output (`\echo` is client-side: it
/// never reaches the server or the journal).
fn marker(i: usize) -> String {
    format!("--- nhi-demo step {i} ---")
}

pub fn demo() -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("the demo attaches eBPF programs and creates a cgroup: run it as root");
    }
    setup::setup()?;
    sh(Command::new(util::cargo()).args(["build", "--release", "-p", "nhi-agent"]))?;
    let bin = util::root().join("target/release/nhi-agent");
    let pid = std::process::id();
    let mut failures = Vec::new();

    heading("A throwaway PostgreSQL with a customers table (fake data)");
    let pg = PgServer::start();
    pg.sql(SEED);
    say(&format!(
        "PostgreSQL listens on 127.0.0.1:{}; customers holds:",
        pg.port
    ));
    print_output(&pg.sql("SELECT id, name, email, card FROM customers ORDER BY id"));

    heading("The agent, with policies/demo.toml");
    let work = TempDir::create(std::env::temp_dir().join(format!("nhi-demo-{pid}")))?;
    let bot = TestCgroup::create(&format!("nhi-demo-bot-{pid}"));
    let pins = Path::new("/sys/fs/bpf").join(format!("nhi-demo-{pid}"));
    let journal = work.path().join("journal.db");
    let config = work.path().join("demo.toml");
    fs::write(
        &config,
        fill(
            TEMPLATE,
            &[
                ("JOURNAL", &journal.display().to_string()),
                ("LISTEN_PORT", &nhi_tests::free_port().to_string()),
                ("BPFFS", &pins.display().to_string()),
                ("BOT_CGROUP", bot.rel()),
                ("PG_PORT", &pg.port.to_string()),
            ],
        )?,
    )?;
    say(&format!(
        "Filled in as {}; `nhi-agent policy check` says:",
        config.display()
    ));
    print_output(&agent_cli(
        Command::new(&bin).args(["policy", "check"]).arg(&config),
    )?);
    let mut agent =
        AgentProcess::start_logging(&bin, &config, &work.path().join("agent.log"), &pins, "info")?;
    say(&format!(
        "The agent runs. It intercepts connections to 127.0.0.1:{} made from cgroup {} \
         (\"the bot\"), and nothing else.",
        pg.port,
        bot.rel()
    ));

    heading("The bot: one psql session, five statements");
    let output = run_bot(&bot, pg.port, &work.path().join("bot.out"))?;
    let sections = split_steps(&output, STEPS.len());
    if let Some(before) = sections.first().filter(|s| !s.trim().is_empty()) {
        say("psql said, before the first statement:");
        print_output(before);
    }
    for (i, step) in STEPS.iter().enumerate() {
        let out = sections.get(i + 1).map(String::as_str).unwrap_or_default();
        println!("\n[{}/{}] {}", i + 1, STEPS.len(), step.sql);
        say(step.why);
        print_output(out);
        let problems = check_step(&step.expect, out);
        verdict(&problems);
        failures.extend(
            problems
                .into_iter()
                .map(|p| format!("step {} ({}): {p}", i + 1, step.sql)),
        );
    }

    heading("The server, asked directly (not through the agent)");
    let tables = pg.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'customers'");
    let mut problems = Vec::new();
    if tables.trim() == "1" {
        let rows = pg.sql("SELECT count(*) FROM customers");
        let name = pg.sql("SELECT name FROM customers WHERE id = 1");
        say(&format!(
            "customers still exists with {} rows; row 1 is now named {}.",
            rows.trim(),
            name.trim()
        ));
        if rows.trim() != "3" {
            problems.push(format!("customers has {} rows, expected 3", rows.trim()));
        }
        if name.trim() != "Ada King" {
            problems.push(format!(
                "row 1 is named {:?}, expected Ada King",
                name.trim()
            ));
        }
    } else {
        say("customers is gone.");
        problems.push("the table was dropped".to_string());
    }
    verdict(&problems);
    failures.extend(problems.into_iter().map(|p| format!("server: {p}")));

    heading("The journal");
    let session = wait_bot_session(&bin, &journal, bot.rel())?;
    say(&format!(
        "nhi-agent sessions --journal {}",
        journal.display()
    ));
    print_output(&agent_cli(
        Command::new(&bin)
            .args(["sessions", "--journal"])
            .arg(&journal),
    )?);
    say(&format!(
        "nhi-agent replay {session} --journal {}",
        journal.display()
    ));
    let replay = |json: bool| {
        let mut cmd = Command::new(&bin);
        cmd.args(["replay", &session.to_string(), "--journal"])
            .arg(&journal);
        if json {
            cmd.arg("--json");
        }
        agent_cli(&mut cmd)
    };
    let (replay, replay_json) = (replay(false)?, replay(true)?);
    print_output(&replay);
    let problems = check_replay(&replay, &replay_json);
    verdict(&problems);
    failures.extend(problems.into_iter().map(|p| format!("replay: {p}")));

    agent.stop();
    if !failures.is_empty() {
        eprintln!("\nagent log:\n{}", agent.log_text());
        bail!(
            "{} expectation(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    println!(
        "\nTour complete: every expectation held. The agent, the server, cgroup {} and {} \
         are removed now. Edit policies/demo.toml and run `cargo xtask demo` again to try \
         your own rules.",
        bot.rel(),
        work.path().display()
    );
    Ok(())
}

/// Replaces every `@NAME@` placeholder; a placeholder left over (a typo in the template
/// or a missing value) is an error, not a config the agent would reject less clearly.
fn fill(template: &str, values: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut text = template.to_string();
    for (name, value) in values {
        let placeholder = format!("@{name}@");
        if !text.contains(&placeholder) {
            bail!("policies/demo.toml has no {placeholder}");
        }
        text = text.replace(&placeholder, value);
    }
    // Only lines that are not comments: the header documents the placeholders.
    let left: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(placeholders)
        .collect();
    if !left.is_empty() {
        bail!("policies/demo.toml: no value for {}", left.join(", "));
    }
    Ok(text)
}

/// The `@NAME@` placeholders in a line (NAME: capitals, digits, underscores).
fn placeholders(line: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find('@') {
        let after = &rest[start + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with('@') {
            found.push(&rest[start..start + name_len + 2]);
            rest = &after[name_len + 1..];
        } else {
            rest = after;
        }
    }
    found
}

/// Runs psql in the bot's cgroup: one session, every step as its own `-c` (psql goes on
/// after an error), each preceded by an `\echo` marker. Output and errors go to one file
/// so they stay in order. Returns what psql printed.
fn run_bot(bot: &TestCgroup, port: u16, out_path: &Path) -> anyhow::Result<String> {
    let out = fs::File::create(out_path)?;
    let mut cmd = bot.command("psql");
    cmd.args(["-X", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-P", "pager=off"]);
    for (i, step) in STEPS.iter().enumerate() {
        cmd.arg("-c")
            .arg(format!("\\echo {}", marker(i + 1)))
            .arg("-c")
            .arg(step.sql);
    }
    let mut child = cmd
        .env("PGAPPNAME", "demo-bot")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting psql (apt install postgresql-client)")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "psql did not finish within 60 s; it printed:\n{}",
                fs::read_to_string(out_path).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(fs::read_to_string(out_path)?)
}

/// Splits psql's output at the step markers: element 0 is what came before the first
/// marker, element i is step i's output (empty when its marker never came).
fn split_steps(output: &str, steps: usize) -> Vec<String> {
    let mut sections = vec![String::new(); steps + 1];
    let mut current = 0;
    for line in output.lines() {
        if let Some(i) = (1..=steps).find(|&i| line.trim() == marker(i)) {
            current = i;
            continue;
        }
        sections[current].push_str(line);
        sections[current].push('\n');
    }
    sections
}

/// What is wrong with a step's output (empty: as expected).
fn check_step(expect: &Expect, out: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let has_error = out.contains("ERROR");
    match expect {
        Expect::Masked { shows, footer } => {
            for secret in SECRETS {
                if out.contains(secret) {
                    problems.push(format!("{secret:?} came back unmasked"));
                }
            }
            for needle in [shows, footer, &REDACTED] {
                if !out.contains(needle) {
                    problems.push(format!("expected {needle:?} in the output"));
                }
            }
            if has_error {
                problems.push("unexpected error".to_string());
            }
        }
        Expect::Refused { rule } => {
            if !has_error {
                problems.push("expected an ERROR".to_string());
            }
            if !out.contains(rule) {
                problems.push(format!("the refusal does not name rule {rule:?}"));
            }
        }
        Expect::Allowed { tag } => {
            if !out.contains(tag) {
                problems.push(format!("expected {tag:?}"));
            }
            if has_error {
                problems.push("unexpected error".to_string());
            }
        }
    }
    problems
}

/// The replay must show every statement the bot sent (refused ones too: an audit trail
/// records attempts) and no unmasked value, in the transcript or in its JSON.
fn check_replay(replay: &str, replay_json: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for step in STEPS {
        if !replay.contains(step.sql) {
            problems.push(format!("statement {:?} is not in the replay", step.sql));
        }
    }
    for secret in SECRETS {
        if replay.contains(secret) || replay_json.contains(secret) {
            problems.push(format!("{secret:?} is in the journal"));
        }
    }
    problems
}

/// The bot's session id, once the journal records its end.
fn wait_bot_session(bin: &Path, journal: &Path, cgroup: &str) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = agent_cli(
            Command::new(bin)
                .args(["sessions", "--journal"])
                .arg(journal)
                .arg("--json"),
        )?;
        let sessions: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .context("`nhi-agent sessions --json` printed something that is not JSON")?;
        let bot = sessions.iter().find(|s| s["cgroup"] == cgroup);
        if let Some(s) = bot.filter(|s| !s["ended_at"].is_null()) {
            return s["id"].as_i64().context("session without an id");
        }
        if Instant::now() > deadline {
            bail!(
                "no ended session from cgroup {cgroup} in the journal after 15 s; it holds:\n{text}"
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs an `nhi-agent` subcommand and returns its stdout; a non-zero exit is an error.
fn agent_cli(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", util::describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            util::describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn heading(text: &str) {
    println!("\n== {text}");
}

fn say(text: &str) {
    println!("  {text}");
}

/// A client's or a command's real output, indented and fenced so it stands apart.
fn print_output(text: &str) {
    for line in text.lines() {
        println!("    | {line}");
    }
}

fn verdict(problems: &[String]) {
    if problems.is_empty() {
        println!("  -> as expected");
    }
    for p in problems {
        println!("  -> UNEXPECTED: {p}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Vec<(&'static str, &'static str)> {
        vec![
            ("JOURNAL", "/tmp/nhi-demo-1/journal.db"),
            ("LISTEN_PORT", "15999"),
            ("BPFFS", "/sys/fs/bpf/nhi-demo-1"),
            ("BOT_CGROUP", "nhi-demo-bot-1"),
            ("PG_PORT", "5433"),
        ]
    }

    #[test]
    fn template_is_filled_completely() {
        let text = fill(TEMPLATE, &values()).expect("every placeholder has a value");
        assert!(text.contains("listen_port = 15999\n"), "{text}");
        assert!(text.contains("address = \"127.0.0.1:5433\""), "{text}");
        assert!(text.contains("cgroup = \"nhi-demo-bot-1\""), "{text}");
        assert!(text.starts_with("# "), "house style: opens with a comment");
    }

    #[test]
    fn a_missing_value_is_an_error() {
        let mut v = values();
        v.retain(|(name, _)| *name != "PG_PORT");
        let err = fill(TEMPLATE, &v).expect_err("@PG_PORT@ left over");
        assert!(err.to_string().contains("@PG_PORT@"), "{err}");
        assert!(
            fill("x = 1\n", &values()).is_err(),
            "a value without a placeholder"
        );
    }

    #[test]
    fn placeholders_are_found() {
        assert_eq!(
            placeholders("a = \"@A_1@:@B@\" # x@y.z"),
            vec!["@A_1@", "@B@"]
        );
        assert!(placeholders("email = \"ada@example.com\"").is_empty());
    }

    #[test]
    fn output_is_split_at_markers() {
        let out = format!("noise\n{}\nrow\n{}\nERROR: x\n", marker(1), marker(2));
        let s = split_steps(&out, 3);
        assert_eq!(s, vec!["noise\n", "row\n", "ERROR: x\n", ""]);
    }

    #[test]
    fn step_checks_catch_leaks_and_missing_refusals() {
        let masked = Expect::Masked {
            shows: "Ada",
            footer: "(1 row)",
        };
        assert!(check_step(&masked, "Ada | [redacted]\n(1 row)\n").is_empty());
        // The leak, and no marker where the value should be.
        assert_eq!(
            check_step(&masked, "Ada | ada@example.com\n(1 row)\n").len(),
            2
        );
        // Values gone but not redacted (say, NULLs): not what the policy asks for.
        assert_eq!(check_step(&masked, "Ada | \n(1 row)\n").len(), 1);
        let refused = Expect::Refused { rule: "no-drop" };
        assert!(check_step(&refused, "ERROR:  denied by rule \"no-drop\"\n").is_empty());
        assert_eq!(check_step(&refused, "DROP TABLE\n").len(), 2);
        let allowed = Expect::Allowed { tag: "UPDATE 1" };
        assert!(check_step(&allowed, "UPDATE 1\n").is_empty());
        assert_eq!(check_step(&allowed, "ERROR: no\n").len(), 2);
    }

    #[test]
    fn every_secret_is_seeded() {
        for secret in SECRETS {
            assert!(SEED.contains(secret), "{secret}");
        }
    }
}
