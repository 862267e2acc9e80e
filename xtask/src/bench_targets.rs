//! The last part of `cargo xtask bench`: every figure issue 16 (performance) sets a
//! target for, with the target beside it and whether this run met it. The phases fill in
//! [`Figures`] as they measure; a phase that was skipped (or that could not measure)
//! leaves its figures empty and they print as `not measured`, so one run always shows
//! the whole list. Figures without a target (HTTP, SSH, AWS, `journal_fsync = "each"`)
//! are listed as `reported`. Nothing here fails the bench: a missed target is a line of
//! output, never an error (these machines are noisy, and benchmarks are not assertions).
//!
//! The opaque `tcp` targets were set from what a bare tokio copy proxy costs elsewhere;
//! beside each, what the bench's bare proxy (`nhi-testclient bare-proxy`) reached in the
//! same run, and a group of their own sets the agent against that proxy (the agent's own
//! cost, apart from what any userspace proxy costs on the machine). Those are reported,
//! not judged: the targets stay the issue's.

/// A figure measured both ways in the same run (medians).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pair {
    pub direct: f64,
    pub agent: f64,
}

/// The agent's resident memory (VmRSS, KiB).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Memory {
    /// After start-up and a short warm-up, no connection open.
    pub idle_kib: u64,
    /// Idle connections held open through the agent and the RSS then; None when
    /// `--idle-conns 0` or when not all of them could be opened.
    pub held: Option<(u64, u64)>,
}

/// Which way a pgbench row went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Direct,
    PgBouncer,
    /// `nhi-testclient bare-proxy`, copying.
    BareProxy,
    AgentTcp,
    AgentPostgres,
}

/// One pgbench row: the median run's rate and mean latency, and the latency
/// percentiles of every transaction of the row's runs (pgbench's per-transaction log).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PgRow {
    pub label: &'static str,
    pub via: Via,
    pub tps: f64,
    pub latency_ms: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// One pgbench case (clients x protocol) and its rows, direct first.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PgCase {
    pub clients: u32,
    pub mode: &'static str,
    pub rows: Vec<PgRow>,
}

impl PgCase {
    pub fn row(&self, via: Via) -> Option<&PgRow> {
        self.rows.iter().find(|r| r.via == via)
    }

    /// tps through `via` over direct tps.
    pub fn ratio(&self, via: Via) -> Option<f64> {
        Some(self.row(via)?.tps / self.row(Via::Direct)?.tps)
    }

    /// p99 through `via` minus direct's p99 (us).
    pub fn added_p99(&self, via: Via) -> Option<f64> {
        Some(self.row(via)?.p99_us - self.row(Via::Direct)?.p99_us)
    }
}

/// A ratio to direct with no target (HTTP, SSH, AWS rows).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reported {
    pub what: String,
    pub ratio: f64,
}

/// What the bare proxy (`nhi-testclient bare-proxy`: a minimal tokio proxy, no eBPF, no
/// journal) reached in the same run as the agent's opaque figures, from the direct cgroup.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Bare {
    /// Bulk throughput with splice(2) (the agent's bulk path), MiB/s.
    pub bulk_splice: Option<f64>,
    /// Bulk throughput copying (`copy_bidirectional`, 64 KiB buffers), MiB/s.
    pub bulk_copy: Option<f64>,
    /// Connections per second, connect + 1-byte echo, copying.
    pub rate: Option<f64>,
    /// Set-up to the first echoed byte, median (us).
    pub setup_median: Option<f64>,
    /// Set-up to the first echoed byte, p99 (us).
    pub setup_p99: Option<f64>,
}

/// Every figure of the run that the summary lists, filled in as the phases measure.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    /// Bytes of the bulk transfer (for its label).
    pub bulk_bytes: u64,
    /// Relay bulk throughput, MiB/s.
    pub bulk: Option<Pair>,
    /// Connections per second, connect + 1-byte echo.
    pub rate: Option<Pair>,
    /// Set-up to the first echoed byte, median (us).
    pub setup_median: Option<Pair>,
    /// Set-up to the first echoed byte, p99 (us).
    pub setup_p99: Option<Pair>,
    /// The bare proxy's relay figures, beside `bulk`, `rate` and `setup_*`.
    pub bare: Bare,
    pub memory: Option<Memory>,
    /// pgbench with the default group commit: direct, pgbouncer, bare proxy, agent tcp,
    /// agent postgres.
    pub pg: Option<Vec<PgCase>>,
    /// pgbench with `journal_fsync = "each"`: direct, agent postgres.
    pub pg_fsync_each: Option<Vec<PgCase>>,
    pub http: Option<Vec<Reported>>,
    pub ssh: Option<Vec<Reported>>,
    pub aws: Option<Vec<Reported>>,
    pub mysql: Option<Vec<Reported>>,
    pub redis: Option<Vec<Reported>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    Ratio,
    Us,
    /// A latency added to direct's (signed).
    AddedUs,
    Mib,
    Kib,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Ratio => format!("{v:.2}x"),
            Unit::Us => format!("{v:.0} us"),
            Unit::AddedUs => format!("{v:+.0} us"),
            Unit::Mib => format!("{v:.1} MiB"),
            Unit::Kib => format!("{v:.1} KiB"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
    /// A target relative to another figure of the run that was not measured.
    Unknown,
    /// No target: the figure is reported.
    Report,
}

/// One line of the summary.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    group: &'static str,
    what: String,
    measured: Option<f64>,
    unit: Unit,
    goal: Goal,
    /// Said after the target (where it comes from, when it is itself measured).
    note: &'static str,
    /// Said after the verdict: what the bare proxy reached in the same run.
    beside: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Met,
    NotMet,
    Reported,
    NotMeasured,
}

impl Target {
    fn verdict(&self) -> Verdict {
        match (self.measured, self.goal) {
            (None, _) | (_, Goal::Unknown) => Verdict::NotMeasured,
            (Some(_), Goal::Report) => Verdict::Reported,
            (Some(m), Goal::AtLeast(b)) if m >= b => Verdict::Met,
            (Some(m), Goal::AtMost(b)) if m <= b => Verdict::Met,
            (Some(_), _) => Verdict::NotMet,
        }
    }

    fn target_text(&self) -> String {
        let goal = match self.goal {
            Goal::Report => return String::new(),
            Goal::Unknown => "?".to_string(),
            Goal::AtLeast(b) => format!(">= {}", self.unit.show(b)),
            Goal::AtMost(b) => format!("<= {}", self.unit.show(b)),
        };
        if self.note.is_empty() {
            goal
        } else {
            format!("{goal} ({})", self.note)
        }
    }

    /// The line of the summary, `width` the width of the widest `what`.
    fn line(&self, width: usize) -> String {
        let measured = self.measured.map_or("-".into(), |m| self.unit.show(m));
        let verdict = match self.verdict() {
            Verdict::Met => "met",
            Verdict::NotMet => "NOT met",
            Verdict::Reported => "reported",
            Verdict::NotMeasured => "not measured",
        };
        let verdict = match &self.beside {
            Some(beside) => format!("{verdict:<12} {beside}"),
            None => verdict.to_string(),
        };
        format!(
            "    {:<width$}  {measured:>10}   {:<22} {verdict}",
            self.what,
            self.target_text()
        )
    }
}

/// `(bare proxy: ...)` of the figures measured (none: None).
fn bare_beside(parts: &[(&str, Option<f64>)], unit: Unit) -> Option<String> {
    let shown: Vec<String> = parts
        .iter()
        .filter_map(|&(name, v)| {
            let v = unit.show(v?);
            Some(if name.is_empty() {
                v
            } else {
                format!("{name} {v}")
            })
        })
        .collect();
    (!shown.is_empty()).then(|| format!("(bare proxy: {})", shown.join(", ")))
}

/// The pgbench cases the targets name, in the bench's order.
const CASES: [(u32, &str); 4] = [
    (1, "simple"),
    (1, "prepared"),
    (16, "simple"),
    (16, "prepared"),
];

fn case<'a>(cases: Option<&'a [PgCase]>, clients: u32, mode: &str) -> Option<&'a PgCase> {
    cases?
        .iter()
        .find(|c| c.clients == clients && c.mode == mode)
}

/// Issue 16's targets, in its order, with what this run measured.
fn targets(f: &Figures) -> Vec<Target> {
    let mut out = Vec::new();
    let pg = f.pg.as_deref();
    let t = |group, what: String, measured, unit, goal, note| Target {
        group,
        what,
        measured,
        unit,
        goal,
        note,
        beside: None,
    };

    const PG: &str = "PostgreSQL, agent `postgres` target (ratio = tps / direct tps)";
    for (clients, mode, at_least) in [
        (1, "simple", 0.85),
        (16, "simple", 0.80),
        (16, "prepared", 0.70),
    ] {
        out.push(t(
            PG,
            format!("-c {clients} {mode}"),
            case(pg, clients, mode).and_then(|c| c.ratio(Via::AgentPostgres)),
            Unit::Ratio,
            Goal::AtLeast(at_least),
            "",
        ));
    }
    for (clients, mode) in CASES {
        let c = case(pg, clients, mode);
        let bouncer = c.and_then(|c| c.ratio(Via::PgBouncer));
        out.push(t(
            PG,
            format!("-c {clients} {mode}, against pgbouncer's ratio"),
            c.and_then(|c| c.ratio(Via::AgentPostgres)),
            Unit::Ratio,
            bouncer.map_or(Goal::Unknown, Goal::AtLeast),
            "pgbouncer",
        ));
    }
    for (clients, mode) in CASES.into_iter().filter(|(c, _)| *c == 1) {
        out.push(t(
            PG,
            format!("-c {clients} {mode}, added p99 latency"),
            case(pg, clients, mode).and_then(|c| c.added_p99(Via::AgentPostgres)),
            Unit::AddedUs,
            Goal::AtMost(50.0),
            "",
        ));
    }

    const TCP: &str = "opaque `tcp` target";
    let bare = f.bare;
    for (clients, mode) in CASES {
        let c = case(pg, clients, mode);
        out.push(Target {
            beside: bare_beside(
                &[("", c.and_then(|c| c.ratio(Via::BareProxy)))],
                Unit::Ratio,
            ),
            ..t(
                TCP,
                format!("pgbench -c {clients} {mode}, ratio to direct"),
                c.and_then(|c| c.ratio(Via::AgentTcp)),
                Unit::Ratio,
                Goal::AtLeast(0.9),
                "",
            )
        });
    }
    let direct = |p: Option<Pair>| p.map(|p| p.direct);
    let over = |x: Option<f64>, y: Option<f64>| Some(x? / y?);
    let minus = |x: Option<f64>, y: Option<f64>| Some(x? - y?);
    out.push(Target {
        beside: bare_beside(
            &[
                ("splice", over(bare.bulk_splice, direct(f.bulk))),
                ("copy", over(bare.bulk_copy, direct(f.bulk))),
            ],
            Unit::Ratio,
        ),
        ..t(
            TCP,
            format!("bulk {} MiB, ratio to direct", f.bulk_bytes >> 20),
            f.bulk.map(|p| p.agent / p.direct),
            Unit::Ratio,
            Goal::AtLeast(0.9),
            "",
        )
    });
    out.push(Target {
        beside: bare_beside(&[("", over(bare.rate, direct(f.rate)))], Unit::Ratio),
        ..t(
            TCP,
            "connection rate, ratio to direct".into(),
            f.rate.map(|p| p.agent / p.direct),
            Unit::Ratio,
            Goal::AtLeast(0.7),
            "",
        )
    });
    out.push(Target {
        beside: bare_beside(
            &[("", minus(bare.setup_median, direct(f.setup_median)))],
            Unit::AddedUs,
        ),
        ..t(
            TCP,
            "set-up to first echoed byte, median overhead".into(),
            f.setup_median.map(|p| p.agent - p.direct),
            Unit::AddedUs,
            Goal::AtMost(100.0),
            "",
        )
    });
    out.push(Target {
        beside: bare_beside(&[("", bare.setup_p99)], Unit::Us),
        ..t(
            TCP,
            "set-up to first echoed byte, p99 through the agent".into(),
            f.setup_p99.map(|p| p.agent),
            Unit::Us,
            Goal::AtMost(500.0),
            "",
        )
    });

    // The agent's own cost: its figure against the bare proxy's of the same run (rates
    // as a ratio, below 1 is slower; set-up as the microseconds it adds).
    const OWN: &str = "opaque `tcp`, agent against the bare proxy of this run (no target)";
    let agent = |p: Option<Pair>| p.map(|p| p.agent);
    for (clients, mode) in CASES {
        let c = case(pg, clients, mode);
        out.push(t(
            OWN,
            format!("pgbench -c {clients} {mode}, agent tcp / bare proxy"),
            c.and_then(|c| Some(c.row(Via::AgentTcp)?.tps / c.row(Via::BareProxy)?.tps)),
            Unit::Ratio,
            Goal::Report,
            "",
        ));
    }
    out.push(t(
        OWN,
        format!("bulk {} MiB, agent / bare proxy splice", f.bulk_bytes >> 20),
        over(agent(f.bulk), bare.bulk_splice),
        Unit::Ratio,
        Goal::Report,
        "",
    ));
    out.push(t(
        OWN,
        format!("bulk {} MiB, agent / bare proxy copy", f.bulk_bytes >> 20),
        over(agent(f.bulk), bare.bulk_copy),
        Unit::Ratio,
        Goal::Report,
        "",
    ));
    out.push(t(
        OWN,
        "connection rate, agent / bare proxy".into(),
        over(agent(f.rate), bare.rate),
        Unit::Ratio,
        Goal::Report,
        "",
    ));
    out.push(t(
        OWN,
        "set-up median, agent minus bare proxy".into(),
        minus(agent(f.setup_median), bare.setup_median),
        Unit::AddedUs,
        Goal::Report,
        "",
    ));
    out.push(t(
        OWN,
        "set-up p99, agent minus bare proxy".into(),
        minus(agent(f.setup_p99), bare.setup_p99),
        Unit::AddedUs,
        Goal::Report,
        "",
    ));

    const MEM: &str = "memory (agent VmRSS)";
    out.push(t(
        MEM,
        "idle".into(),
        f.memory.map(|m| m.idle_kib as f64 / 1024.0),
        Unit::Mib,
        Goal::AtMost(32.0),
        "",
    ));
    let held = f.memory.and_then(|m| Some((m.idle_kib, m.held?)));
    out.push(t(
        MEM,
        match held {
            Some((_, (conns, _))) => format!("per idle connection ({conns} open)"),
            None => "per idle connection".into(),
        },
        held.map(|(idle, (conns, kib))| (kib as f64 - idle as f64) / conns.max(1) as f64),
        Unit::Kib,
        Goal::AtMost(64.0),
        "",
    ));

    const EACH: &str = "journal_fsync = \"each\", agent `postgres` (no numeric target)";
    for (clients, mode) in CASES {
        let c = case(f.pg_fsync_each.as_deref(), clients, mode);
        out.push(t(
            EACH,
            format!("-c {clients} {mode}, ratio to direct"),
            c.and_then(|c| c.ratio(Via::AgentPostgres)),
            Unit::Ratio,
            Goal::Report,
            "",
        ));
        out.push(t(
            EACH,
            format!("-c {clients} {mode}, added p99 latency"),
            c.and_then(|c| c.added_p99(Via::AgentPostgres)),
            Unit::AddedUs,
            Goal::Report,
            "",
        ));
    }

    for (group, figures) in [
        ("HTTP, ratio to direct (no target)", &f.http),
        ("SSH, ratio to direct (no target)", &f.ssh),
        ("AWS, ratio to direct (no target)", &f.aws),
        ("MySQL, ratio to direct (no target)", &f.mysql),
        ("Redis, ratio to direct (no target)", &f.redis),
    ] {
        match figures {
            Some(rows) => out.extend(rows.iter().map(|r| {
                t(
                    group,
                    r.what.clone(),
                    Some(r.ratio),
                    Unit::Ratio,
                    Goal::Report,
                    "",
                )
            })),
            None => out.push(t(
                group,
                "all rows".into(),
                None,
                Unit::Ratio,
                Goal::Report,
                "",
            )),
        }
    }
    out
}

/// Prints the summary: one line per target, grouped, then the count of targets met.
pub(crate) fn print(f: &Figures) {
    let all = targets(f);
    println!("\ntargets (issue 16), this run:");
    let width = all.iter().map(|t| t.what.len()).max().unwrap_or(0);
    let mut group = "";
    for t in &all {
        if t.group != group {
            group = t.group;
            println!("  {group}");
        }
        println!("{}", t.line(width));
    }
    let count = |v| {
        all.iter()
            .filter(|t| t.goal != Goal::Report && t.verdict() == v)
            .count()
    };
    let (met, missed, unmeasured) = (
        count(Verdict::Met),
        count(Verdict::NotMet),
        count(Verdict::NotMeasured),
    );
    println!(
        "  {met} of {} targets met, {missed} not met, {unmeasured} not measured",
        met + missed + unmeasured
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(via: Via, tps: f64, p99_us: f64) -> PgRow {
        PgRow {
            label: "x",
            via,
            tps,
            latency_ms: 1000.0 / tps,
            p50_us: p99_us / 2.0,
            p99_us,
        }
    }

    fn cases(postgres: f64) -> Vec<PgCase> {
        CASES
            .iter()
            .map(|&(clients, mode)| PgCase {
                clients,
                mode,
                rows: vec![
                    row(Via::Direct, 1000.0, 100.0),
                    row(Via::PgBouncer, 700.0, 130.0),
                    row(Via::BareProxy, 800.0, 105.0),
                    row(Via::AgentTcp, 950.0, 110.0),
                    row(Via::AgentPostgres, postgres, 140.0),
                ],
            })
            .collect()
    }

    fn find<'a>(all: &'a [Target], what: &str) -> &'a Target {
        all.iter()
            .find(|t| t.what == what)
            .unwrap_or_else(|| panic!("no {what}"))
    }

    #[test]
    fn nothing_measured_is_said_so_for_every_target() {
        let all = targets(&Figures::default());
        assert!(all.len() > 20);
        assert!(all.iter().all(|t| t.verdict() == Verdict::NotMeasured));
    }

    #[test]
    fn targets_are_judged_against_their_bounds() {
        let f = Figures {
            bulk_bytes: 1 << 30,
            bulk: Some(Pair {
                direct: 4000.0,
                agent: 3800.0,
            }),
            rate: Some(Pair {
                direct: 7000.0,
                agent: 1000.0,
            }),
            setup_median: Some(Pair {
                direct: 100.0,
                agent: 180.0,
            }),
            setup_p99: Some(Pair {
                direct: 270.0,
                agent: 600.0,
            }),
            bare: Bare::default(),
            memory: Some(Memory {
                idle_kib: 20 * 1024,
                held: Some((5000, 20 * 1024 + 5000 * 70)),
            }),
            pg: Some(cases(900.0)),
            pg_fsync_each: None,
            http: Some(vec![Reported {
                what: "-c 1 agent http".into(),
                ratio: 0.5,
            }]),
            ssh: None,
            aws: None,
            mysql: None,
            redis: None,
        };
        let all = targets(&f);
        let v = |what| find(&all, what).verdict();
        assert_eq!(v("-c 1 simple"), Verdict::Met);
        assert_eq!(v("-c 16 prepared"), Verdict::Met);
        assert_eq!(v("-c 1 simple, against pgbouncer's ratio"), Verdict::Met);
        assert_eq!(
            find(&all, "-c 1 simple, against pgbouncer's ratio").target_text(),
            ">= 0.70x (pgbouncer)"
        );
        let added = find(&all, "-c 1 simple, added p99 latency");
        assert_eq!(added.measured, Some(40.0));
        assert_eq!(added.verdict(), Verdict::Met);
        assert_eq!(v("pgbench -c 16 simple, ratio to direct"), Verdict::Met);
        assert_eq!(v("bulk 1024 MiB, ratio to direct"), Verdict::Met);
        assert_eq!(v("connection rate, ratio to direct"), Verdict::NotMet);
        assert_eq!(
            v("set-up to first echoed byte, median overhead"),
            Verdict::Met
        );
        assert_eq!(
            v("set-up to first echoed byte, p99 through the agent"),
            Verdict::NotMet
        );
        assert_eq!(v("idle"), Verdict::Met);
        let per_conn = find(&all, "per idle connection (5000 open)");
        assert_eq!(per_conn.measured, Some(70.0));
        assert_eq!(per_conn.verdict(), Verdict::NotMet);
        assert_eq!(v("-c 1 agent http"), Verdict::Reported);
        assert!(all
            .iter()
            .filter(|t| t.group.starts_with("journal_fsync") || t.group.starts_with("SSH"))
            .all(|t| t.verdict() == Verdict::NotMeasured));
    }

    /// The opaque figures of a run, the bare proxy's included.
    fn opaque() -> Figures {
        Figures {
            bulk_bytes: 1 << 30,
            bulk: Some(Pair {
                direct: 4000.0,
                agent: 3400.0,
            }),
            rate: Some(Pair {
                direct: 8000.0,
                agent: 4000.0,
            }),
            setup_median: Some(Pair {
                direct: 100.0,
                agent: 180.0,
            }),
            setup_p99: Some(Pair {
                direct: 270.0,
                agent: 600.0,
            }),
            bare: Bare {
                bulk_splice: Some(3800.0),
                bulk_copy: Some(2000.0),
                rate: Some(5200.0),
                setup_median: Some(125.0),
                setup_p99: Some(350.0),
            },
            pg: Some(cases(900.0)),
            ..Figures::default()
        }
    }

    #[test]
    fn the_bare_proxy_is_beside_each_opaque_target() {
        let all = targets(&opaque());
        let beside = |what: &str| find(&all, what).beside.clone();
        for (clients, mode) in CASES {
            let what = format!("pgbench -c {clients} {mode}, ratio to direct");
            assert_eq!(
                beside(&what).as_deref(),
                Some("(bare proxy: 0.80x)"),
                "{what}"
            );
        }
        assert_eq!(
            beside("bulk 1024 MiB, ratio to direct").as_deref(),
            Some("(bare proxy: splice 0.95x, copy 0.50x)")
        );
        assert_eq!(
            beside("connection rate, ratio to direct").as_deref(),
            Some("(bare proxy: 0.65x)")
        );
        assert_eq!(
            beside("set-up to first echoed byte, median overhead").as_deref(),
            Some("(bare proxy: +25 us)")
        );
        assert_eq!(
            beside("set-up to first echoed byte, p99 through the agent").as_deref(),
            Some("(bare proxy: 350 us)")
        );
        // Nothing else has one.
        assert_eq!(all.iter().filter(|t| t.beside.is_some()).count(), 8);
        // The targets are judged as before, whatever the bare proxy reached.
        let v = |what| find(&all, what).verdict();
        assert_eq!(v("pgbench -c 1 simple, ratio to direct"), Verdict::Met);
        assert_eq!(v("bulk 1024 MiB, ratio to direct"), Verdict::NotMet);
        assert_eq!(v("connection rate, ratio to direct"), Verdict::NotMet);
        assert_eq!(
            v("set-up to first echoed byte, median overhead"),
            Verdict::Met
        );
        assert_eq!(
            find(&all, "connection rate, ratio to direct").line(40),
            format!(
                "    {:<40}  {:>10}   {:<22} {:<12} (bare proxy: 0.65x)",
                "connection rate, ratio to direct", "0.50x", ">= 0.70x", "NOT met"
            )
        );
    }

    #[test]
    fn the_agent_is_set_against_the_bare_proxy() {
        let all = targets(&opaque());
        let own = |what| {
            let t = find(&all, what);
            assert_eq!(t.verdict(), Verdict::Reported, "{what}");
            assert!(t.group.contains("bare proxy"), "{what}: {}", t.group);
            t.unit.show(t.measured.expect(what))
        };
        assert_eq!(
            own("pgbench -c 16 prepared, agent tcp / bare proxy"),
            "1.19x"
        );
        assert_eq!(own("bulk 1024 MiB, agent / bare proxy splice"), "0.89x");
        assert_eq!(own("bulk 1024 MiB, agent / bare proxy copy"), "1.70x");
        assert_eq!(own("connection rate, agent / bare proxy"), "0.77x");
        assert_eq!(own("set-up median, agent minus bare proxy"), "+55 us");
        assert_eq!(own("set-up p99, agent minus bare proxy"), "+250 us");
        // Reported only: the count of the targets does not change.
        let judged = |f: &Figures| targets(f).iter().filter(|t| t.goal != Goal::Report).count();
        assert_eq!(judged(&opaque()), judged(&Figures::default()));
    }

    #[test]
    fn no_bare_proxy_figure_leaves_the_lines_as_they_were() {
        let f = Figures {
            bare: Bare::default(),
            pg: Some(
                cases(900.0)
                    .into_iter()
                    .map(|mut c| {
                        c.rows.retain(|r| r.via != Via::BareProxy);
                        c
                    })
                    .collect(),
            ),
            ..opaque()
        };
        let all = targets(&f);
        assert!(all.iter().all(|t| t.beside.is_none()));
        assert_eq!(
            find(&all, "set-up to first echoed byte, median overhead").line(44),
            format!(
                "    {:<44}  {:>10}   {:<22} met",
                "set-up to first echoed byte, median overhead", "+80 us", "<= +100 us"
            )
        );
        assert!(all
            .iter()
            .filter(|t| t.group.contains("bare proxy"))
            .all(|t| t.verdict() == Verdict::NotMeasured));
    }

    #[test]
    fn slower_than_pgbouncer_is_not_met() {
        let all = targets(&Figures {
            pg: Some(cases(600.0)),
            ..Figures::default()
        });
        let t = find(&all, "-c 16 simple, against pgbouncer's ratio");
        assert_eq!(t.measured, Some(0.6));
        assert_eq!(t.verdict(), Verdict::NotMet);
        assert_eq!(find(&all, "-c 1 simple").verdict(), Verdict::NotMet);
    }
}
