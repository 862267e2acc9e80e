use super::*;
use serde::Deserialize;

// ---------------------------------------------------------------------------
// Statement analysis
// ---------------------------------------------------------------------------

/// What one single-statement input must analyse to.
struct Expect {
    sql: &'static str,
    kinds: &'static [&'static str],
    tables: &'static [&'static str],
    functions: &'static [&'static str],
    without_where: bool,
    opaque: bool,
}

const fn ex(
    sql: &'static str,
    kinds: &'static [&'static str],
    tables: &'static [&'static str],
    functions: &'static [&'static str],
) -> Expect {
    Expect {
        sql,
        kinds,
        tables,
        functions,
        without_where: false,
        opaque: false,
    }
}

impl Expect {
    const fn without_where(mut self) -> Self {
        self.without_where = true;
        self
    }
    const fn opaque(mut self) -> Self {
        self.opaque = true;
        self
    }
}

fn kind_names(kinds: KindSet) -> Vec<&'static str> {
    kinds.iter().map(StatementKind::as_str).collect()
}

fn sorted(names: &[impl AsRef<str>]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|n| n.as_ref().to_owned()).collect();
    v.sort();
    v
}

const CASES: &[Expect] = &[
    // pgbench, simple and extended/prepared protocol.
    ex(
        "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
        &["select"],
        &["pgbench_accounts"],
        &[],
    ),
    ex(
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
        &["select"],
        &["pgbench_accounts"],
        &[],
    ),
    ex(
        "UPDATE pgbench_accounts SET abalance = abalance + -4 WHERE aid = 5;",
        &["update"],
        &["pgbench_accounts"],
        &[],
    ),
    ex(
        "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;",
        &["update"],
        &["pgbench_tellers"],
        &[],
    ),
    ex(
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (10, 1, 76914, 4284, CURRENT_TIMESTAMP);",
        &["insert"],
        &["pgbench_history"],
        &["current_timestamp"],
    ),
    ex(
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
        &["insert"],
        &["pgbench_history"],
        &["current_timestamp"],
    ),
    ex("BEGIN;", &["transaction"], &[], &[]),
    ex("END;", &["transaction"], &[], &[]),
    ex("START TRANSACTION", &["transaction"], &[], &[]),
    ex("BEGIN ISOLATION LEVEL REPEATABLE READ", &["transaction"], &[], &[]),
    ex("COMMIT AND CHAIN", &["transaction"], &[], &[]),
    ex("ROLLBACK TO SAVEPOINT a", &["transaction"], &[], &[]),
    ex("SAVEPOINT a", &["transaction"], &[], &[]),
    ex("RELEASE SAVEPOINT a", &["transaction"], &[], &[]),
    ex("ABORT", &["transaction"], &[], &[]),
    // Reads: joins, subqueries, CTEs, qualified and quoted names.
    ex(
        "SELECT * FROM a JOIN public.b ON a.id = b.id WHERE a.x IN (SELECT y FROM s.c)",
        &["select"],
        &["a", "public.b", "s.c"],
        &[],
    ),
    ex(
        r#"SELECT * FROM "Users" u, Public."X""#,
        &["select"],
        &["users", "public.x"],
        &[],
    ),
    ex(
        "SELECT * FROM users FOR UPDATE",
        &["select"],
        &["users"],
        &[],
    ),
    ex("VALUES (1), (2)", &["select"], &[], &[]),
    ex(
        "SELECT EXISTS (SELECT 1 FROM orders o WHERE o.uid = u.id) FROM users u",
        &["select"],
        &["orders", "users"],
        &[],
    ),
    ex(
        "SELECT 1 UNION SELECT id FROM users EXCEPT SELECT id FROM banned",
        &["select"],
        &["users", "banned"],
        &[],
    ),
    // CTE names are not tables; a CTE body that names itself reads the real table;
    // a CTE is only visible in the query that defines it.
    ex(
        "WITH recent AS (SELECT * FROM orders) SELECT * FROM recent",
        &["select"],
        &["orders"],
        &[],
    ),
    ex(
        "WITH users AS (SELECT * FROM users) SELECT * FROM users",
        &["select"],
        &["users"],
        &[],
    ),
    ex(
        "SELECT * FROM secrets, (WITH secrets AS (SELECT 1) SELECT * FROM secrets) s",
        &["select"],
        &["secrets"],
        &[],
    ),
    ex(
        "WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a, b",
        &["select"],
        &["b"],
        &[],
    ),
    ex(
        "WITH RECURSIVE r AS (SELECT 1 UNION SELECT * FROM r) SELECT * FROM r",
        &["select"],
        &[],
        &[],
    ),
    // Data-modifying CTEs add their kinds (and without_where).
    ex(
        "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM d",
        &["select", "delete"],
        &["orders"],
        &[],
    ),
    ex(
        "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
        &["select", "delete"],
        &["orders"],
        &[],
    )
    .without_where(),
    ex(
        "WITH u AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM u",
        &["select", "update"],
        &["t"],
        &[],
    )
    .without_where(),
    // A DML target is never a CTE, even with the same name.
    ex(
        "WITH users AS (SELECT 1) DELETE FROM users",
        &["delete"],
        &["users"],
        &[],
    )
    .without_where(),
    // Writes.
    ex(
        "INSERT INTO a SELECT * FROM b JOIN c ON true WHERE x IN (SELECT y FROM d)",
        &["insert"],
        &["a", "b", "c", "d"],
        &[],
    ),
    ex(
        "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 1",
        &["insert"],
        &["t"],
        &[],
    ),
    ex(
        "UPDATE t SET a = 1 FROM u WHERE t.id = u.id",
        &["update"],
        &["t", "u"],
        &[],
    ),
    ex("UPDATE t SET a = 1", &["update"], &["t"], &[]).without_where(),
    ex("DELETE FROM t USING u", &["delete"], &["t", "u"], &[]).without_where(),
    ex("DELETE FROM t WHERE id = 1", &["delete"], &["t"], &[]),
    ex(
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        &["merge"],
        &["t", "s"],
        &[],
    ),
    // COPY.
    ex("COPY t FROM STDIN", &["copy_from"], &["t"], &[]),
    ex(
        "COPY t (a, b) FROM STDIN WITH (FORMAT csv)",
        &["copy_from"],
        &["t"],
        &[],
    ),
    ex("COPY t FROM PROGRAM 'id'", &["copy_from"], &["t"], &[]),
    ex("COPY t TO STDOUT", &["copy_to"], &["t"], &[]),
    ex("COPY t TO '/tmp/x'", &["copy_to"], &["t"], &[]),
    ex(
        "COPY (SELECT * FROM s.secrets) TO STDOUT",
        &["copy_to"],
        &["s.secrets"],
        &[],
    ),
    // DDL. SELECT INTO creates a table.
    ex(
        "SELECT * INTO newt FROM old",
        &["select", "create"],
        &["newt", "old"],
        &[],
    ),
    ex(
        "CREATE TABLE x AS SELECT * FROM y",
        &["create"],
        &["x", "y"],
        &[],
    ),
    ex(
        "CREATE TEMP TABLE tt (id serial primary key, v text default current_user)",
        &["create"],
        &["tt"],
        &["current_user"],
    ),
    ex("CREATE INDEX ON t (c)", &["create"], &["t"], &[]),
    ex("CREATE ROLE r LOGIN", &["create"], &[], &[]),
    ex(
        "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; DELETE FROM x; $$ LANGUAGE sql",
        &["create"],
        &[],
        &[],
    ),
    ex(
        "CREATE OR REPLACE FUNCTION g() RETURNS trigger AS $body$ BEGIN DELETE FROM x; RETURN NULL; END $body$ LANGUAGE plpgsql",
        &["create"],
        &[],
        &[],
    ),
    ex("ALTER TABLE t ADD COLUMN c int", &["alter"], &["t"], &[]),
    ex("ALTER ROLE bob WITH PASSWORD 'x'", &["alter"], &[], &[]),
    ex("COMMENT ON TABLE t IS 'x'", &["alter"], &[], &[]),
    ex("DROP TABLE users, s.secrets", &["drop"], &["users", "s.secrets"], &[]),
    ex("DROP ROLE bob", &["drop"], &[], &[]),
    ex("TRUNCATE users", &["truncate"], &["users"], &[]),
    ex("GRANT SELECT ON users TO bob", &["grant"], &["users"], &[]),
    ex("REVOKE ALL ON users FROM bob", &["revoke"], &["users"], &[]),
    // Session settings.
    ex("SET LOCAL statement_timeout = 0", &["set"], &[], &[]),
    ex("SET search_path TO x, public", &["set"], &[], &[]),
    ex("SET ROLE admin", &["set"], &[], &[]),
    ex("SET SESSION AUTHORIZATION bob", &["set"], &[], &[]),
    ex("RESET ALL", &["set"], &[], &[]),
    ex("SHOW search_path", &["set"], &[], &[]),
    ex(
        "SELECT set_config('a', 'b', false)",
        &["select"],
        &[],
        &["set_config"],
    ),
    // EXPLAIN: only ANALYZE runs the statement.
    ex("EXPLAIN DELETE FROM t", &["explain"], &["t"], &[]),
    ex(
        "EXPLAIN ANALYZE UPDATE t SET a = 1",
        &["update", "explain"],
        &["t"],
        &[],
    )
    .without_where(),
    ex(
        "EXPLAIN (ANALYZE) DELETE FROM t",
        &["delete", "explain"],
        &["t"],
        &[],
    )
    .without_where(),
    ex("EXPLAIN (ANALYZE off) DELETE FROM t", &["explain"], &["t"], &[]),
    ex("EXPLAIN SELECT pg_sleep(1)", &["explain"], &[], &["pg_sleep"]),
    // Prepared statements: PREPARE carries its statement's kinds, EXECUTE is opaque.
    ex(
        "PREPARE st(int) AS SELECT * FROM users WHERE id = $1",
        &["select", "prepare"],
        &["users"],
        &[],
    ),
    ex("PREPARE p AS DELETE FROM t", &["delete", "prepare"], &["t"], &[]).without_where(),
    ex("EXECUTE st(1)", &["execute"], &[], &[]).opaque(),
    ex("DEALLOCATE ALL", &["deallocate"], &[], &[]),
    // Functions.
    ex(
        "SELECT pg_sleep(1), pg_catalog.pg_read_file('x') FROM generate_series(1, 3) g",
        &["select"],
        &[],
        &["pg_sleep", "pg_catalog.pg_read_file", "generate_series"],
    ),
    ex(
        "SELECT * FROM LATERAL pg_ls_dir('.') x",
        &["select"],
        &[],
        &["pg_ls_dir"],
    ),
    ex(
        "SELECT LO_IMPORT('/etc/passwd')",
        &["select"],
        &[],
        &["lo_import"],
    ),
    ex(
        "SELECT id FROM users WHERE name = upper(lower($1))",
        &["select"],
        &["users"],
        &["upper", "lower"],
    ),
    // Opaque: DO, CALL, unparsed.
    ex("DO $$ BEGIN PERFORM 1; END $$", &["do"], &[], &[]).opaque(),
    ex("DO LANGUAGE plpgsql $$ BEGIN END $$", &["do"], &[], &[]).opaque(),
    ex("CALL p(1)", &["call"], &[], &["p"]).opaque(),
    ex("SELEC 1", &["unparsed"], &[], &[]).opaque(),
    ex("SELECT 'unterminated", &["unparsed"], &[], &[]).opaque(),
    ex("CLUSTER t", &["maintenance", "unparsed"], &[], &[]).opaque(),
    ex("CHECKPOINT", &["maintenance", "unparsed"], &[], &[]).opaque(),
    // Other statement families.
    ex("LISTEN c", &["listen"], &[], &[]),
    ex("UNLISTEN c", &["listen"], &[], &[]),
    ex("NOTIFY c, 'x'", &["notify"], &[], &[]),
    ex("LOCK TABLE t", &["lock"], &["t"], &[]),
    ex("VACUUM t", &["maintenance"], &["t"], &[]),
    ex("ANALYZE t", &["maintenance"], &["t"], &[]),
    ex("DISCARD ALL", &["other"], &[], &[]),
    ex(
        "DECLARE c CURSOR FOR SELECT * FROM users",
        &["other"],
        &["users"],
        &[],
    ),
    // Lexical corners.
    ex("SELECT E'a\\'b;c', $x$;$x$, $$ ' $$", &["select"], &[], &[]),
    ex("SELECT /* a /* nested ; */ b */ 1", &["select"], &[], &[]),
    ex("SELECT U&'d\\0061t\\+000061'", &["select"], &[], &[]),
    ex(
        "SELECT 1 FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(users)$' COLLATE pg_catalog.default AND c.oid = 'users'::regclass",
        &["select"],
        &["pg_catalog.pg_class"],
        &[],
    ),
];

#[test]
fn analysis_of_single_statements() {
    let mut failures = Vec::new();
    for case in CASES {
        let analysis = analyze(case.sql);
        let [s] = analysis.statements.as_slice() else {
            failures.push(format!(
                "{:?}: {} statements",
                case.sql,
                analysis.statements.len()
            ));
            continue;
        };
        let got = (
            kind_names(s.kinds),
            sorted(&s.tables),
            sorted(&s.functions),
            s.without_where,
            s.opaque,
        );
        let mut want_kinds: Vec<&str> = case.kinds.to_vec();
        want_kinds.sort_by_key(|k| StatementKind::from_name(k));
        let want = (
            want_kinds,
            sorted(case.tables),
            sorted(case.functions),
            case.without_where,
            case.opaque,
        );
        if got != want {
            failures.push(format!("{:?}:\n  got  {got:?}\n  want {want:?}", case.sql));
        }
        assert_eq!(
            s.text,
            case.sql.trim().trim_end_matches(';'),
            "text of {:?}",
            case.sql
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_kind_name_round_trips() {
    for kind in StatementKind::ALL {
        assert_eq!(StatementKind::from_name(kind.as_str()), Some(kind));
    }
    assert_eq!(StatementKind::from_name("SELECT"), None);
    assert_eq!(StatementKind::from_name("copy"), None);
}

#[test]
fn statements_are_split_with_their_own_text_and_span() {
    let sql = "  BEGIN; SELECT 'a;b' -- c;\n , $t$ ; $t$ ;\n/* ; */ UPDATE t SET x = 1 WHERE y = 'é';;  COMMIT  ";
    let analysis = analyze(sql);
    let texts: Vec<&str> = analysis
        .statements
        .iter()
        .map(|s| s.text.as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "BEGIN",
            "SELECT 'a;b' -- c;\n , $t$ ; $t$",
            "UPDATE t SET x = 1 WHERE y = 'é'",
            "COMMIT"
        ]
    );
    for s in &analysis.statements {
        assert_eq!(&sql[s.span.clone()], s.text);
    }
    let kinds: Vec<Vec<&str>> = analysis
        .statements
        .iter()
        .map(|s| kind_names(s.kinds))
        .collect();
    assert_eq!(
        kinds,
        [
            vec!["transaction"],
            vec!["select"],
            vec!["update"],
            vec!["transaction"]
        ]
    );
}

#[test]
fn spans_are_byte_offsets_after_multibyte_text() {
    let sql = "SELECT 'ü€😀';\r\nSELECT 'ä'\tFROM t; SELECT\r\n x FROM y";
    let analysis = analyze(sql);
    assert_eq!(analysis.statements.len(), 3);
    for s in &analysis.statements {
        assert_eq!(&sql[s.span.clone()], s.text);
    }
    assert_eq!(analysis.statements[2].text, "SELECT\r\n x FROM y");
    assert_eq!(analysis.statements[2].tables, ["y"]);
}

#[test]
fn empty_input_has_no_statements() {
    for sql in [
        "",
        "   ",
        ";",
        " ; ;; ",
        "-- only a comment",
        "/* c */ ; -- d\n",
    ] {
        assert!(analyze(sql).is_empty(), "{sql:?}");
    }
}

#[test]
fn one_unparsable_statement_does_not_hide_the_others() {
    let analysis = analyze("SELEC 1; DROP TABLE users; SELECT 2");
    let kinds: Vec<Vec<&str>> = analysis
        .statements
        .iter()
        .map(|s| kind_names(s.kinds))
        .collect();
    assert_eq!(kinds, [vec!["unparsed"], vec!["drop"], vec!["select"]]);
    assert!(analysis.statements[0].opaque);
    assert!(!analysis.statements[1].opaque);
}

#[test]
fn begin_atomic_body_is_one_statement() {
    let analysis = analyze(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END; SELECT 3",
    );
    assert_eq!(analysis.statements.len(), 2, "{analysis:?}");
    assert!(analysis.statements[0].text.ends_with("SELECT 2; END"));
    assert_eq!(analysis.statements[1].text, "SELECT 3");
    // An identifier named `begin` outside CREATE does not glue statements together.
    let analysis = analyze("SELECT begin FROM t; DROP TABLE users");
    assert_eq!(analysis.statements.len(), 2);
    assert_eq!(kind_names(analysis.statements[1].kinds), ["drop"]);
}

#[test]
fn backslashes_follow_standard_conforming_strings() {
    // With standard_conforming_strings on (the default) a backslash is an ordinary
    // character in '...', so the server runs the DROP: so must the analysis see it.
    let sql = r"SELECT 'a\'; DROP TABLE x; --'";
    let analysis = analyze(sql);
    let kinds: Vec<Vec<&str>> = analysis
        .statements
        .iter()
        .map(|s| kind_names(s.kinds))
        .collect();
    assert_eq!(kinds, [vec!["select"], vec!["drop"]]);
    // E'' strings escape in either mode.
    let analysis = analyze(r"SELECT E'a\'; DROP TABLE y; --'");
    assert_eq!(analysis.statements.len(), 1);
    assert_eq!(kind_names(analysis.statements[0].kinds), ["select"]);

    let legacy = AnalyzeOptions {
        standard_conforming_strings: false,
    };
    // Off: the server would read `'x\'; --'` as one string and run the DROP that a
    // standard lexer takes for a comment. Backslashes make the message opaque.
    let sql = "SELECT 'x\\'; --'; DROP TABLE t; --";
    assert_eq!(
        analyze(sql).statements.len(),
        1,
        "the standard reading hides the DROP"
    );
    let analysis = analyze_with(sql, legacy);
    assert_eq!(analysis.statements.len(), 1);
    assert!(analysis.statements[0].opaque);
    assert_eq!(kind_names(analysis.statements[0].kinds), ["unparsed"]);
    assert_eq!(analysis.statements[0].text, sql);
    // Without a backslash both readings agree.
    assert_eq!(
        analyze_with("SELECT 1; DROP TABLE t", legacy),
        analyze("SELECT 1; DROP TABLE t")
    );
}

/// Every prefix of a string full of lexical corners analyses without a panic, and
/// every statement's span is the exact slice of its text (the proxy may see a query
/// cut anywhere by a client bug or an attacker).
#[test]
fn every_prefix_analyses_with_consistent_spans() {
    let sql = "BEGIN; SELECT 'ü;€' AS \"a;b\", $q$ ; $q$ FROM t -- x;y\n; /* /* ; */ */ \
               UPDATE \"Ü\".t SET v = E'\\'' WHERE k = $1;\nDO $$ BEGIN END $$; END";
    for (cut, _) in sql.char_indices().chain([(sql.len(), ' ')]) {
        let prefix = &sql[..cut];
        for s in analyze(prefix).statements {
            assert_eq!(&prefix[s.span.clone()], s.text, "prefix {prefix:?}");
            assert!(!s.kinds.is_empty(), "prefix {prefix:?}");
            assert!(!s.text.is_empty(), "prefix {prefix:?}");
        }
    }
    let whole: Vec<Vec<&str>> = analyze(sql)
        .statements
        .iter()
        .map(|s| kind_names(s.kinds))
        .collect();
    assert_eq!(
        whole,
        [
            vec!["transaction"],
            vec!["select"],
            vec!["update"],
            vec!["do"],
            vec!["transaction"]
        ]
    );
}

#[test]
fn deep_nesting_is_opaque_not_a_crash() {
    let sql = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    let analysis = analyze(&sql);
    assert_eq!(analysis.statements.len(), 1);
    assert!(analysis.statements[0].opaque);
}

/// The catalog queries psql 15 sends for its \d family (captured with `psql -E`).
fn psql_queries() -> Vec<&'static str> {
    include_str!("testdata/psql_meta_commands.sql")
        .split("\n-- next\n")
        .collect()
}

#[test]
fn psql_catalog_queries_parse() {
    let queries = psql_queries();
    assert!(queries.len() >= 20, "capture has {} queries", queries.len());
    let mut operator_forms = 0;
    for query in queries {
        let analysis = analyze(query);
        let [s] = analysis.statements.as_slice() else {
            panic!("{query}: {} statements", analysis.statements.len());
        };
        assert!(!s.opaque, "opaque: {query}");
        assert_eq!(kind_names(s.kinds), ["select"], "{query}");
        assert!(!s.tables.is_empty(), "{query}");
        for table in &s.tables {
            assert!(table.starts_with("pg_catalog."), "{table} in {query}");
        }
        if query.contains("OPERATOR(pg_catalog.~)") {
            operator_forms += 1;
        }
    }
    assert!(operator_forms > 0, "the capture has OPERATOR() forms");
}

#[test]
fn name_candidates_cover_implicit_schemas() {
    let all = |name: &str| {
        let mut seen = Vec::new();
        name_candidates(name, |c| {
            seen.push(c.to_owned());
            false
        });
        seen
    };
    assert_eq!(all("users"), ["users", "public.users", "pg_catalog.users"]);
    assert_eq!(all("public.users"), ["public.users", "users"]);
    assert_eq!(
        all("pg_catalog.pg_class"),
        ["pg_catalog.pg_class", "pg_class"]
    );
    assert_eq!(all("s.secrets"), ["s.secrets"]);
    assert_eq!(all("db.public.users"), ["db.public.users"]);
    // Stops at the first match.
    let mut calls = 0;
    assert!(name_candidates("users", |c| {
        calls += 1;
        c == "users"
    }));
    assert_eq!(calls, 1);
}

/// Not a test of behaviour: a timing to run by hand (debug build, as the brief
/// requires): `cargo test -p nhi-agent --lib policy::tests::analyze_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn analyze_timing() {
    let statements = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
        "UPDATE pgbench_accounts SET abalance = abalance + -4 WHERE aid = 5;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (10, 1, 76914, 4284, CURRENT_TIMESTAMP);",
        "BEGIN;",
    ];
    let policy = policies(EXAMPLE).policies.remove(0);
    for sql in statements
        .iter()
        .copied()
        .chain(psql_queries().into_iter().take(1))
    {
        let n = 2000;
        let start = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(analyze(std::hint::black_box(sql)));
        }
        let analysis = analyze(sql);
        let analyse = start.elapsed() / n;
        let start = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(policy.decide(std::hint::black_box(&analysis)));
        }
        let decide = start.elapsed() / n;
        println!(
            "analyze {:>8.1} µs  decide {:>6.2} µs  {}",
            analyse.as_secs_f64() * 1e6,
            decide.as_secs_f64() * 1e6,
            sql.lines().next().unwrap_or_default()
        );
    }
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    policy: Vec<Spanned<RawPolicy>>,
}

fn try_policies(text: &str) -> Result<PolicySet, PolicyProblem> {
    let file: File = toml::from_str(text).map_err(|e| PolicyProblem {
        span: e.span(),
        message: e.message().to_owned(),
    })?;
    PolicySet::from_raw(file.policy)
}

fn policies(text: &str) -> PolicySet {
    match try_policies(text) {
        Ok(set) => set,
        Err(problem) => panic!("{problem}\n{text}"),
    }
}

fn policy(text: &str) -> Policy {
    let mut set = policies(text);
    assert_eq!(set.policies.len(), 1);
    set.policies.remove(0)
}

/// The example of the configuration syntax, as documented.
const EXAMPLE: &str = r#"
[[policy]]
name = "bots-on-orders"
workload = "nhi-demo*"
target = "orders-*"
mode = "observe"
default = "allow"
unparsed = "deny"
db_user = "app_ro"
record_results = "summary"
approval_timeout = "5m"

[[policy.rule]]
name = "no-drop"
verdict = "deny"
kinds = ["drop", "truncate"]

[[policy.rule]]
name = "secrets"
verdict = "approve"
tables = ["users", "*.secrets"]

[[policy.rule]]
name = "files"
verdict = "deny"
functions = ["pg_read_file", "lo_*"]

[[policy.rule]]
name = "mass-update"
verdict = "approve"
without_where = true

[[policy.rule]]
name = "sleep"
verdict = "deny"
text = '(?i)\bpg_sleep\b'
"#;

#[test]
fn the_documented_example_parses() {
    let p = policy(EXAMPLE);
    assert_eq!(p.name.as_deref(), Some("bots-on-orders"));
    assert_eq!(p.mode, Some(PolicyMode::Observe));
    assert_eq!(p.db_user.as_deref(), Some("app_ro"));
    assert_eq!(p.record_results, RecordResults::Summary);
    assert_eq!(p.approval_timeout, Duration::from_secs(300));
    assert!(p.applies_to("nhi-demo-7", "orders-eu"));
    assert!(!p.applies_to("other", "orders-eu"));
    assert!(!p.applies_to("nhi-demo-7", "billing"));
}

#[test]
fn defaults_of_a_bare_policy() {
    let p = policy("[[policy]]\n");
    assert_eq!(p.name, None);
    assert_eq!(p.mode, None);
    assert_eq!(p.db_user, None);
    assert_eq!(p.record_results, RecordResults::Summary);
    assert_eq!(p.approval_timeout, DEFAULT_APPROVAL_TIMEOUT);
    assert!(p.applies_to("anything", "anywhere"));
    // default allow, unparsed deny.
    assert_eq!(p.decide(&analyze("DELETE FROM t")).verdict, Verdict::Allow);
    assert_eq!(p.decide(&analyze("SELEC 1")).verdict, Verdict::Deny);
    assert_eq!(p.decide(&analyze("DO $$ $$")).verdict, Verdict::Deny);
}

#[test]
fn mode_record_results_and_timeout_values() {
    let p = policy(
        "[[policy]]\nmode = \"enforce\"\nrecord_results = \"rows\"\napproval_timeout = \"90s\"\n",
    );
    assert_eq!(p.mode, Some(PolicyMode::Enforce));
    assert_eq!(p.record_results, RecordResults::Rows);
    assert_eq!(p.approval_timeout, Duration::from_secs(90));
    let p = policy("[[policy]]\nmode = \"observe\"\nrecord_results = \"none\"\n");
    assert_eq!(p.mode, Some(PolicyMode::Observe));
    assert_eq!(p.record_results, RecordResults::None);
}

/// Each invalid value is reported with a message naming it and a span that points
/// at it in the file.
#[test]
fn validation_errors_name_and_point_at_the_value() {
    let cases: &[(&str, &str, &str)] = &[
        // (file, the offending value as written, a fragment of the message)
        ("[[policy]]\nmode = \"audit\"\n", "\"audit\"", "invalid mode \"audit\""),
        ("[[policy]]\ndefault = \"block\"\n", "\"block\"", "invalid default \"block\""),
        ("[[policy]]\nunparsed = \"ok\"\n", "\"ok\"", "invalid unparsed \"ok\""),
        ("[[policy]]\nrecord_results = \"all\"\n", "\"all\"", "invalid record_results \"all\""),
        ("[[policy]]\napproval_timeout = \"0s\"\n", "\"0s\"", "approval_timeout \"0s\" must be longer than zero"),
        ("[[policy]]\napproval_timeout = \"soon\"\n", "\"soon\"", "invalid duration \"soon\""),
        ("[[policy]]\ndb_user = \"\"\n", "\"\"", "db_user must not be empty"),
        ("[[policy]]\nname = \" \"\n", "\" \"", "policy name must not be empty"),
        ("[[policy]]\nworkload = \"a[\"\n", "\"a[\"", "invalid workload glob \"a[\""),
        ("[[policy]]\ntarget = \"{x\"\n", "\"{x\"", "invalid target glob \"{x\""),
        ("[[policy]]\ntarget = \"\"\n", "\"\"", "target must not be empty"),
        (
            "[[policy]]\n[[policy.rule]]\nname = \"r\"\nverdict = \"maybe\"\n",
            "\"maybe\"",
            "invalid verdict \"maybe\"",
        ),
        (
            "[[policy]]\n[[policy.rule]]\nname = \"r\"\nverdict = \"deny\"\nkinds = [\"drop\", \"dropp\"]\n",
            "\"dropp\"",
            "unknown statement kind \"dropp\" in rule \"r\"",
        ),
        (
            "[[policy]]\n[[policy.rule]]\nname = \"r\"\nverdict = \"deny\"\ntables = [\"ok\", \"users[\"]\n",
            "\"users[\"",
            "invalid glob \"users[\" in tables of rule \"r\"",
        ),
        (
            "[[policy]]\n[[policy.rule]]\nname = \"r\"\nverdict = \"deny\"\nfunctions = [\"lo_{\"]\n",
            "\"lo_{\"",
            "invalid glob \"lo_{\" in functions of rule \"r\"",
        ),
        (
            "[[policy]]\n[[policy.rule]]\nname = \"r\"\nverdict = \"deny\"\ntext = '(unclosed'\n",
            "'(unclosed'",
            "invalid regex \"(unclosed\" in rule \"r\"",
        ),
        (
            "[[policy]]\n[[policy.rule]]\nname = \"r\"\nverdict = \"deny\"\n[[policy.rule]]\nname = \"r2\"\nverdict = \"deny\"\n[[policy.rule]]\nname = \"r\"\nverdict = \"allow\"\n",
            "\"r\"\nverdict = \"allow\"",
            "duplicate rule name \"r\"",
        ),
        (
            "[[policy]]\n[[policy.rule]]\nname = \"\"\nverdict = \"deny\"\n",
            "\"\"",
            "rule name must not be empty",
        ),
    ];
    for (text, value, message) in cases {
        let problem = match try_policies(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(problem) => problem,
        };
        assert!(
            problem.message.contains(message),
            "{text}\nmessage {:?} lacks {message:?}",
            problem.message
        );
        let span = problem
            .span
            .clone()
            .unwrap_or_else(|| panic!("no span: {problem}"));
        // The duplicate case names a value that occurs twice: point at the second.
        let value_first_line = value.lines().next().unwrap_or(value);
        let at = &text[span.clone()];
        assert_eq!(at, value_first_line, "{text}\nspan {span:?} is {at:?}");
        if value.contains('\n') {
            assert!(
                text[span.start..].starts_with(value),
                "{text}\nspan {span:?}"
            );
        }
    }
}

#[test]
fn empty_lists_are_errors() {
    for key in ["kinds", "tables", "functions"] {
        let text =
            format!("[[policy]]\n[[policy.rule]]\nname = \"r\"\nverdict = \"deny\"\n{key} = []\n");
        let problem = try_policies(&text)
            .err()
            .unwrap_or_else(|| panic!("accepted {key} = []"));
        assert!(
            problem.message.contains(&format!("{key} = []")),
            "{problem}"
        );
    }
}

#[test]
fn unknown_and_missing_keys_are_errors() {
    for (text, fragment) in [
        ("[[policy]]\nworkloads = \"x\"\n", "workloads"),
        ("[[policy]]\n[[policy.rule]]\nname = \"r\"\nverdict = \"deny\"\ntable = [\"x\"]\n", "table"),
        ("[[policy]]\n[[policy.rule]]\nname = \"r\"\n", "verdict"),
        ("[[policy]]\n[[policy.rule]]\nverdict = \"deny\"\n", "name"),
        ("[[policy]]\n[[policy.rule]]\nname = \"r\"\nverdict = \"deny\"\nwithout_where = \"yes\"\n", "bool"),
    ] {
        let problem = try_policies(text).err().unwrap_or_else(|| panic!("accepted:\n{text}"));
        assert!(problem.message.contains(fragment), "{problem} lacks {fragment}");
        assert!(problem.span.is_some(), "{problem}");
    }
}

// ---------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------

fn rule_policy(rule: &str) -> Policy {
    policy(&format!(
        "[[policy]]\ndefault = \"allow\"\nunparsed = \"approve\"\n[[policy.rule]]\nname = \"r\"\nverdict = \"deny\"\n{rule}\n"
    ))
}

/// For one rule: which statements it matches (deny) and which it does not.
fn check_rule(rule: &str, matching: &[&str], not_matching: &[&str]) {
    let p = rule_policy(rule);
    for sql in matching {
        let decision = p.decide(&analyze(sql));
        assert_eq!(
            (decision.verdict, decision.rule.as_deref()),
            (Verdict::Deny, Some("r")),
            "rule {rule} should match {sql:?}"
        );
    }
    for sql in not_matching {
        let decision = p.decide(&analyze(sql));
        assert_eq!(decision.rule, None, "rule {rule} should not match {sql:?}");
    }
}

#[test]
fn condition_kinds() {
    check_rule(
        "kinds = [\"drop\", \"delete\"]",
        &[
            "DROP TABLE t",
            "DELETE FROM t WHERE id = 1",
            "WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d",
            "EXPLAIN ANALYZE DELETE FROM t",
            "PREPARE p AS DELETE FROM t",
        ],
        &["SELECT 1", "EXPLAIN DELETE FROM t", "TRUNCATE t"],
    );
}

#[test]
fn condition_tables() {
    check_rule(
        "tables = [\"users\", \"*.secrets\", \"pg_catalog.pg_authid\"]",
        &[
            "SELECT * FROM users",
            "SELECT * FROM USERS",
            "SELECT * FROM \"Users\"",
            // Qualified with the default schema.
            "SELECT * FROM public.users",
            "SELECT * FROM s.secrets",
            // Unqualified: tried as public.secrets.
            "SELECT * FROM secrets",
            "SELECT * FROM pg_authid",
            "SELECT 1 FROM orders o JOIN users u ON o.uid = u.id",
            "INSERT INTO log SELECT * FROM users",
            "UPDATE users SET a = 1 WHERE id = 2",
            "COPY users TO STDOUT",
            "SELECT (SELECT count(*) FROM users)",
        ],
        &[
            "SELECT * FROM orders",
            "SELECT * FROM other.users",
            "SELECT * FROM users_archive",
            "WITH users AS (SELECT 1) SELECT * FROM users",
        ],
    );
}

#[test]
fn condition_functions() {
    check_rule(
        "functions = [\"pg_read_file\", \"lo_*\", \"dblink*\"]",
        &[
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT pg_catalog.pg_read_file('/etc/passwd')",
            "SELECT PG_READ_FILE('x')",
            "SELECT lo_import('/etc/passwd')",
            "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
            "SELECT * FROM users WHERE id IN (SELECT lo_export(1, '/tmp/x'))",
        ],
        &[
            "SELECT read_file('x')",
            "SELECT 1",
            "SELECT * FROM lo_table",
        ],
    );
}

#[test]
fn condition_without_where() {
    check_rule(
        "without_where = true",
        &[
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        ],
        &[
            "UPDATE t SET a = 1 WHERE id = 1",
            "DELETE FROM t WHERE id = 1",
            "SELECT * FROM t",
            "EXPLAIN DELETE FROM t",
        ],
    );
    // `without_where = false` sets no condition.
    check_rule(
        "without_where = false",
        &["SELECT 1", "DELETE FROM t WHERE x"],
        &[],
    );
}

#[test]
fn condition_text() {
    check_rule(
        r"text = '(?i)\bpg_sleep\b'",
        &[
            "SELECT pg_sleep(10)",
            "select PG_SLEEP(1)",
            "DO $$ BEGIN PERFORM pg_sleep(1); END $$",
        ],
        &["SELECT pg_sleeping(1)", "SELECT 1"],
    );
}

#[test]
fn conditions_combine_with_and() {
    check_rule(
        "kinds = [\"update\", \"delete\"]\ntables = [\"orders\"]\nwithout_where = true",
        &["UPDATE orders SET a = 1", "DELETE FROM public.orders"],
        &[
            "UPDATE orders SET a = 1 WHERE id = 1",
            "UPDATE users SET a = 1",
            "SELECT * FROM orders",
        ],
    );
    check_rule(
        "kinds = [\"select\"]\nfunctions = [\"pg_sleep\"]\ntext = 'FROM'",
        &["SELECT pg_sleep(1) FROM t"],
        &[
            "SELECT pg_sleep(1)",
            "SELECT 1 FROM t",
            "UPDATE t SET a = pg_sleep(1) FROM u",
        ],
    );
}

#[test]
fn a_rule_without_conditions_matches_every_parsed_statement() {
    check_rule(
        "",
        &["SELECT 1", "DROP TABLE t", "BEGIN"],
        &["SELEC 1", "EXECUTE p"],
    );
}

#[test]
fn opaque_statements_match_only_by_kind_or_text() {
    // Only a table condition: the statement's tables are not visible.
    let p = rule_policy("tables = [\"*\"]");
    for sql in [
        "SELEC * FROM users",
        "DO $$ BEGIN DELETE FROM users; END $$",
        "EXECUTE p",
        "CALL p()",
    ] {
        let d = p.decide(&analyze(sql));
        assert_eq!((d.verdict, d.rule), (Verdict::Approve, None), "{sql}");
    }
    // Listing the kind matches.
    check_rule(
        "kinds = [\"unparsed\", \"do\", \"execute\", \"call\"]",
        &["SELEC 1", "DO $$ $$", "EXECUTE p(1)", "CALL p(1)"],
        &["SELECT 1"],
    );
    // Other conditions still apply to what is visible: CALL names its procedure,
    // EXECUTE shows no table.
    check_rule(
        "kinds = [\"call\"]\nfunctions = [\"p\"]",
        &["CALL p(1)"],
        &[],
    );
    check_rule(
        "kinds = [\"execute\"]\ntables = [\"t\"]",
        &[],
        &["EXECUTE p"],
    );
    // The text regex sees opaque text.
    check_rule(
        "text = 'DELETE'",
        &["DO $$ BEGIN DELETE FROM t; END $$"],
        &["DO $$ $$"],
    );
}

#[test]
fn first_matching_rule_wins() {
    let p = policy(
        r#"
[[policy]]
default = "deny"
[[policy.rule]]
name = "reads"
verdict = "allow"
kinds = ["select"]
[[policy.rule]]
name = "users"
verdict = "approve"
tables = ["users"]
"#,
    );
    let verdict = |sql: &str| {
        let d = p.decide(&analyze(sql));
        (d.verdict, d.rule)
    };
    assert_eq!(
        verdict("SELECT * FROM users"),
        (Verdict::Allow, Some("reads".into()))
    );
    assert_eq!(
        verdict("UPDATE users SET a = 1 WHERE id = 1"),
        (Verdict::Approve, Some("users".into()))
    );
    assert_eq!(verdict("UPDATE orders SET a = 1"), (Verdict::Deny, None));
}

#[test]
fn the_most_severe_statement_decides_a_message() {
    let p = policy(
        r#"
[[policy]]
[[policy.rule]]
name = "no-drop"
verdict = "deny"
kinds = ["drop"]
[[policy.rule]]
name = "hold-deletes"
verdict = "approve"
kinds = ["delete"]
"#,
    );
    let d = p.decide(&analyze(
        "SELECT 1; DELETE FROM t WHERE id = 1; DROP TABLE a; DROP TABLE b; DELETE FROM u",
    ));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rule.as_deref(), Some("no-drop"));
    assert_eq!(d.statement, Some(2));
    let verdicts: Vec<Verdict> = d.per_statement.iter().map(|s| s.verdict).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Allow,
            Verdict::Approve,
            Verdict::Deny,
            Verdict::Deny,
            Verdict::Approve
        ]
    );
    assert_eq!(d.per_statement[0].rule, None);
    assert_eq!(d.per_statement[1].rule.as_deref(), Some("hold-deletes"));

    let d = p.decide(&analyze("SELECT 1; DELETE FROM t WHERE x; SELECT 2"));
    assert_eq!((d.verdict, d.statement), (Verdict::Approve, Some(1)));

    let d = p.decide(&analyze("SELECT 1; SELECT 2"));
    assert_eq!(
        (d.verdict, d.rule, d.statement),
        (Verdict::Allow, None, Some(0))
    );

    // An unparsed statement next to allowed ones: the `unparsed` verdict (deny).
    let d = p.decide(&analyze("SELECT 1; SELEC 2"));
    assert_eq!(
        (d.verdict, d.rule, d.statement),
        (Verdict::Deny, None, Some(1))
    );
}

#[test]
fn a_string_is_journaled_statement_by_statement_with_each_verdict() {
    let p = policy(
        r#"
[[policy]]
[[policy.rule]]
name = "no-drop"
verdict = "deny"
kinds = ["drop"]
"#,
    );
    let text = "SELECT 1;  DROP TABLE a";
    let analysis = analyze(text);
    let d = p.decide(&analysis);
    let parts = statement_parts(
        text,
        &analysis,
        d.verdict,
        d.rule.as_deref(),
        &d.per_statement,
    );
    let summary: Vec<(&str, Verdict, Option<&str>, usize)> = parts
        .iter()
        .map(|p| {
            (
                p.text.as_str(),
                p.verdict,
                p.rule.as_deref(),
                p.analysis.statements.len(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("SELECT 1", Verdict::Allow, None, 1),
            ("DROP TABLE a", Verdict::Deny, Some("no-drop"), 1),
        ]
    );
    assert_eq!(parts[1].analysis.statements[0], analysis.statements[1]);

    // One statement: the text as sent (comments, trailing semicolon), the whole verdict.
    let text = "DROP TABLE a; -- why";
    let analysis = analyze(text);
    let d = p.decide(&analysis);
    let parts = statement_parts(
        text,
        &analysis,
        d.verdict,
        d.rule.as_deref(),
        &d.per_statement,
    );
    assert_eq!(parts.len(), 1);
    assert_eq!(
        (
            parts[0].text.as_str(),
            parts[0].verdict,
            parts[0].rule.as_deref()
        ),
        (text, Verdict::Deny, Some("no-drop"))
    );
    assert_eq!(parts[0].analysis, analysis);
}

#[test]
fn an_empty_message_is_allowed_without_a_rule() {
    let p = policy("[[policy]]\ndefault = \"deny\"\n");
    let d = p.decide(&analyze("  ; -- nothing"));
    assert_eq!(
        d,
        Decision {
            verdict: Verdict::Allow,
            rule: None,
            statement: None,
            per_statement: Vec::new()
        }
    );
}

#[test]
fn default_and_unparsed_verdicts_apply_when_no_rule_matches() {
    let p = policy("[[policy]]\ndefault = \"approve\"\nunparsed = \"allow\"\n");
    assert_eq!(p.decide(&analyze("SELECT 1")).verdict, Verdict::Approve);
    assert_eq!(p.decide(&analyze("SELEC 1")).verdict, Verdict::Allow);
    assert_eq!(p.decide(&analyze("CALL p()")).verdict, Verdict::Allow);
}

#[test]
fn verdicts_order_by_severity_and_serialize_lower_case() {
    assert!(Verdict::Allow < Verdict::Approve && Verdict::Approve < Verdict::Deny);
    for v in [Verdict::Allow, Verdict::Approve, Verdict::Deny] {
        assert_eq!(
            serde_json::to_string(&v).ok(),
            Some(format!("\"{}\"", v.as_str()))
        );
    }
    let sv = StatementVerdict {
        verdict: Verdict::Deny,
        rule: Some("r".into()),
    };
    assert_eq!(
        serde_json::to_string(&sv).ok().as_deref(),
        Some(r#"{"verdict":"deny","rule":"r"}"#)
    );
}

#[test]
fn the_first_applicable_policy_governs_a_session() {
    let set = policies(
        r#"
[[policy]]
name = "bots"
workload = "bot-*"
[[policy]]
name = "orders"
target = "orders-*"
[[policy]]
name = "rest"
"#,
    );
    let governing = |w: &str, t: &str| set.for_session(w, t, None).and_then(|p| p.name.clone());
    assert_eq!(governing("bot-1", "orders-eu").as_deref(), Some("bots"));
    assert_eq!(governing("ci", "orders-eu").as_deref(), Some("orders"));
    assert_eq!(governing("ci", "billing").as_deref(), Some("rest"));
    let narrow = policies("[[policy]]\nworkload = \"bot-*\"\ntarget = \"orders\"\n");
    assert!(narrow.for_session("bot-1", "orders", None).is_some());
    assert!(narrow.for_session("bot-1", "orders-2", None).is_none());
    assert!(narrow.for_session("Bot-1", "orders", None).is_none());
    assert!(PolicySet::default().for_session("a", "b", None).is_none());
}

#[test]
fn the_example_policy_decides_pgbench_and_psql_traffic() {
    let p = policy(EXAMPLE);
    for sql in [
        "BEGIN;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
        "UPDATE pgbench_accounts SET abalance = abalance + -4 WHERE aid = 5;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
        "END;",
    ] {
        let d = p.decide(&analyze(sql));
        assert_eq!((d.verdict, d.rule), (Verdict::Allow, None), "{sql}");
    }
    for query in psql_queries() {
        assert_eq!(p.decide(&analyze(query)).verdict, Verdict::Allow, "{query}");
    }
    let expect = [
        ("TRUNCATE pgbench_history", Verdict::Deny, "no-drop"),
        ("SELECT * FROM public.users", Verdict::Approve, "secrets"),
        (
            "SELECT pg_catalog.pg_read_file('x')",
            Verdict::Deny,
            "files",
        ),
        (
            "UPDATE pgbench_accounts SET abalance = 0",
            Verdict::Approve,
            "mass-update",
        ),
        ("SELECT 1; SELECT PG_SLEEP(5)", Verdict::Deny, "sleep"),
    ];
    for (sql, verdict, rule) in expect {
        let d = p.decide(&analyze(sql));
        assert_eq!(
            (d.verdict, d.rule.as_deref()),
            (verdict, Some(rule)),
            "{sql}"
        );
    }
}

/// Runs `analyze` on a thread with a tokio worker's default stack (2 MiB).
fn analyze_on_small_stack(sql: String) -> Analysis {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || analyze(&sql))
        .expect("spawn")
        .join()
        .expect("analysis on a 2 MiB stack")
}

/// Found while probing past the fuzzer's input size: a statement with a 200,000-long
/// operator chain overflowed the stack (dropping sqlparser's left-deep tree) and
/// aborted the process. Past `MAX_INFIX_OPERATORS` it is opaque instead.
#[test]
fn very_long_operator_chains_are_opaque_instead_of_overflowing_the_stack() {
    for sql in [
        format!("select {}1", "1+".repeat(200_000)),
        format!(
            "update t set x = 1 where {}true",
            "a = 1 or ".repeat(100_000)
        ),
        format!("select 'a'{}", " || 'a'".repeat(200_000)),
        format!("select x{}", "::text".repeat(200_000)),
    ] {
        let analysis = analyze_on_small_stack(sql);
        assert_eq!(analysis.statements.len(), 1);
        let statement = &analysis.statements[0];
        assert!(statement.opaque);
        assert!(statement.kinds.contains(StatementKind::Unparsed));
    }
    // Below the limit the chain is parsed as usual, and long lists of values (commas,
    // unary minus) never count.
    let chain = analyze_on_small_stack(format!("select {}1", "1+".repeat(5_000)));
    assert_eq!(
        chain.statements[0].kinds,
        KindSet::of(StatementKind::Select)
    );
    let values: Vec<String> = (0..20_000).map(|i| format!("(-{i}, 'v{i}')")).collect();
    let insert = analyze_on_small_stack(format!("insert into t values {}", values.join(", ")));
    assert_eq!(
        insert.statements[0].kinds,
        KindSet::of(StatementKind::Insert)
    );
    assert!(!insert.statements[0].opaque);
}

// ---------------------------------------------------------------------------
// HTTP rules
// ---------------------------------------------------------------------------

fn request<'a>(
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
) -> http::HttpRequestInfo<'a> {
    http::HttpRequestInfo {
        method,
        host,
        path,
        headers,
    }
}

const HTTP_POLICY: &str = r#"
[[policy]]
name = "api"
default = "allow"

[[policy.rule]]
name = "no-sql-here"
verdict = "deny"
kinds = ["drop"]

[[policy.rule]]
name = "no-admin-deletes"
verdict = "deny"
methods = ["delete", "PUT"]
paths = ["/admin/**"]

[[policy.rule]]
name = "prod-keys"
verdict = "approve"
paths = ["/v1/*/keys"]
hosts = ["*.corp"]
headers = { "X-Env" = "prod*" }

[[policy.rule]]
name = "everything-else-on-billing"
verdict = "approve"
hosts = ["billing.internal"]
"#;

#[test]
fn http_rules_match_method_path_host_and_headers() {
    let p = policy(HTTP_POLICY);
    let decide = |r: http::HttpRequestInfo<'_>| {
        let (v, rule) = p.decide_http(&r);
        (v, rule.map(str::to_owned))
    };
    let deny = (Verdict::Deny, Some("no-admin-deletes".to_string()));
    assert_eq!(
        decide(request("DELETE", None, "/admin", &[])),
        deny,
        "/x/** covers /x"
    );
    assert_eq!(decide(request("delete", None, "/admin/", &[])), deny);
    assert_eq!(decide(request("PUT", None, "/admin/users/7", &[])), deny);
    assert_eq!(
        decide(request("GET", None, "/admin/users", &[])).0,
        Verdict::Allow
    );
    assert_eq!(
        decide(request("DELETE", None, "/administrator", &[])).0,
        Verdict::Allow
    );
    // `*` stays in one segment; hosts are case-insensitive; every header listed must match.
    let prod = [("x-env", "production")];
    let held = (Verdict::Approve, Some("prod-keys".to_string()));
    assert_eq!(
        decide(request("GET", Some("API.corp"), "/v1/acme/keys", &prod)),
        held
    );
    assert_eq!(
        decide(request("GET", Some("api.corp"), "/v1/a/b/keys", &prod)).0,
        Verdict::Allow
    );
    assert_eq!(
        decide(request(
            "GET",
            Some("api.corp"),
            "/v1/acme/keys",
            &[("x-env", "dev")]
        ))
        .0,
        Verdict::Allow
    );
    assert_eq!(
        decide(request("GET", None, "/v1/acme/keys", &prod)).0,
        Verdict::Allow,
        "no host: no match"
    );
    // A rule without SQL keys matches any request of its hosts; SQL rules never match HTTP.
    assert_eq!(
        decide(request("GET", Some("billing.internal"), "/", &[])),
        (
            Verdict::Approve,
            Some("everything-else-on-billing".to_string())
        )
    );
    // ... and HTTP rules never match SQL statements.
    let analysis = analyze("drop table t; delete from admin");
    assert_eq!(p.decide(&analysis).rule.as_deref(), Some("no-sql-here"));
}

#[test]
fn http_rule_keys_are_validated() {
    let base = "[[policy]]\n[[policy.rule]]\nname = \"r\"\nverdict = \"deny\"\n";
    for (keys, needle) in [
        ("methods = []", "can never match"),
        ("methods = [\"GE T\"]", "invalid method"),
        ("paths = [\"admin\"]", "must start with `/`"),
        ("paths = [\"/a[\"]", "invalid path glob"),
        ("hosts = [\"a[\"]", "invalid host glob"),
        ("headers = { \"x y\" = \"1\" }", "invalid header name"),
        (
            "kinds = [\"drop\"]\nmethods = [\"GET\"]",
            "mixes SQL conditions",
        ),
        ("mehtods = [\"GET\"]", "unknown field"),
    ] {
        let err = try_policies(&format!("{base}{keys}\n")).expect_err(keys);
        assert!(err.message.contains(needle), "{keys}: {}", err.message);
    }
}

const AWS_POLICY: &str = r#"
[[policy]]
name = "bots-on-aws"

[[policy.rule]]
name = "no-iam-writes"
verdict = "deny"
actions = ["iam:Create*", "iam:Delete*", "s3:DeleteBucket"]

[[policy.rule]]
name = "prod-objects-in-eu"
verdict = "approve"
actions = ["s3:*"]
regions = ["eu-*"]
resources = ["arn:aws:s3:::prod-*"]

[[policy.rule]]
name = "no-admin-path"
verdict = "deny"
paths = ["/admin/**"]

[[policy.rule]]
name = "not-for-sql"
verdict = "deny"
kinds = ["drop"]
"#;

#[test]
fn aws_rules_match_actions_regions_and_resources() {
    let p = policy(AWS_POLICY);
    let decide = |path: &str, action: &str, region: &str, resources: &[&str]| {
        let resources: Vec<String> = resources.iter().map(|r| r.to_string()).collect();
        let call = aws::AwsCallInfo {
            action,
            region,
            resources: &resources,
        };
        let (v, rule) = p.decide_aws(&request("POST", Some("x.amazonaws.com"), path, &[]), &call);
        (v, rule.map(str::to_owned))
    };
    let deny = (Verdict::Deny, Some("no-iam-writes".to_string()));
    assert_eq!(
        decide("/", "iam:CreateUser", "us-east-1", &["mallory"]),
        deny
    );
    // IAM actions are case-insensitive.
    assert_eq!(decide("/", "IAM:createaccesskey", "us-east-1", &[]), deny);
    assert_eq!(decide("/", "s3:DeleteBucket", "us-east-1", &[]), deny);
    assert_eq!(
        decide("/", "iam:ListUsers", "us-east-1", &[]).0,
        Verdict::Allow
    );
    // Every condition must hold; a resource glob's `*` spans `/`.
    let held = (Verdict::Approve, Some("prod-objects-in-eu".to_string()));
    assert_eq!(
        decide(
            "/prod-data/a/b.csv",
            "s3:GetObject",
            "eu-west-1",
            &["prod-data/a/b.csv", "arn:aws:s3:::prod-data/a/b.csv"]
        ),
        held
    );
    assert_eq!(
        decide(
            "/",
            "s3:GetObject",
            "us-east-1",
            &["arn:aws:s3:::prod-data/x"]
        )
        .0,
        Verdict::Allow
    );
    assert_eq!(
        decide(
            "/",
            "s3:GetObject",
            "eu-west-1",
            &["arn:aws:s3:::dev-data/x"]
        )
        .0,
        Verdict::Allow
    );
    assert_eq!(
        decide("/", "s3:GetObject", "eu-west-1", &[]).0,
        Verdict::Allow,
        "a call naming no resource never matches `resources`"
    );
    // An operation the agent does not recognise matches service-wide globs only.
    assert_eq!(
        decide("/", "s3:?", "eu-west-1", &["arn:aws:s3:::prod-x"]),
        held
    );
    assert_eq!(decide("/", "iam:?", "us-east-1", &[]).0, Verdict::Allow);
    // HTTP-only rules judge AWS calls too; SQL rules never do.
    assert_eq!(
        decide("/admin/x", "sts:GetCallerIdentity", "us-east-1", &[]),
        (Verdict::Deny, Some("no-admin-path".to_string()))
    );
    // AWS rules never match plain HTTP requests.
    let (v, rule) = p.decide_http(&request("POST", None, "/", &[]));
    assert_eq!((v, rule), (Verdict::Allow, None));
    assert_eq!(
        p.decide(&analyze("drop table t")).rule.as_deref(),
        Some("not-for-sql")
    );
}

#[test]
fn aws_rule_keys_are_validated() {
    let base = "[[policy]]\n[[policy.rule]]\nname = \"r\"\nverdict = \"deny\"\n";
    for (keys, needle) in [
        ("actions = []", "can never match"),
        ("actions = [\"CreateUser\"]", "must be service:Operation"),
        ("actions = [\"iam:\"]", "must be service:Operation"),
        ("actions = [\"iam:[\"]", "invalid glob"),
        ("regions = [\"\"]", "can never match"),
        ("resources = []", "can never match"),
        (
            "kinds = [\"drop\"]\nactions = [\"iam:*\"]",
            "mixes SQL conditions",
        ),
        ("action = [\"iam:*\"]", "unknown field"),
    ] {
        let err = try_policies(&format!("{base}{keys}\n")).expect_err(keys);
        assert!(err.message.contains(needle), "{keys}: {}", err.message);
    }
}

const KUBE_POLICY: &str = r#"
[[policy]]
[[policy.rule]]
name = "no-deletes-in-prod"
verdict = "deny"
verbs = ["delete", "deletecollection"]
resources = ["apps/deployments", "secrets"]
namespaces = ["prod", "prod-*"]

[[policy.rule]]
name = "exec-needs-approval"
verdict = "approve"
subresources = ["exec", "attach", "portforward"]
namespaces = ["prod"]

[[policy.rule]]
name = "any-group-statefulsets"
verdict = "deny"
resources = ["*/statefulsets"]
names = ["db-*"]

[[policy.rule]]
name = "no-arn-writes"
verdict = "deny"
actions = ["iam:*"]

[[policy.rule]]
name = "shared-resources"
verdict = "approve"
resources = ["arn:aws:s3:::vault", "configmaps"]

[[policy.rule]]
name = "no-discovery-posts"
verdict = "deny"
verbs = ["post"]
"#;

#[test]
fn kubernetes_rules_match_verbs_resources_namespaces_names_and_subresources() {
    use crate::protocol::kubernetes::request::resolve;
    let p = policy(KUBE_POLICY);
    let decide = |method: &str, target: &str| {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let kube = resolve(method, path, query).expect(target);
        let (v, rule) = p.decide_kube(&request(method, Some("k8s"), path, &[]), &kube);
        (v, rule.map(str::to_owned))
    };
    let rule = |v: Verdict, r: &str| (v, Some(r.to_owned()));
    let deny = rule(Verdict::Deny, "no-deletes-in-prod");
    assert_eq!(
        decide("DELETE", "/apis/apps/v1/namespaces/prod/deployments/web"),
        deny
    );
    assert_eq!(decide("DELETE", "/api/v1/namespaces/prod-eu/secrets"), deny);
    // Another namespace, another verb, another group: not this rule.
    assert_eq!(
        decide("DELETE", "/apis/apps/v1/namespaces/staging/deployments/web").0,
        Verdict::Allow
    );
    assert_eq!(
        decide("GET", "/apis/apps/v1/namespaces/prod/deployments/web").0,
        Verdict::Allow
    );
    assert_eq!(
        decide(
            "DELETE",
            "/apis/extensions/v1beta1/namespaces/prod/deployments/web"
        )
        .0,
        Verdict::Allow,
        "`apps/deployments` names one group"
    );
    // Both exec transports are create on pods/exec.
    let held = rule(Verdict::Approve, "exec-needs-approval");
    assert_eq!(
        decide("GET", "/api/v1/namespaces/prod/pods/web-0/exec?command=id"),
        held
    );
    assert_eq!(
        decide("POST", "/api/v1/namespaces/prod/pods/web-0/exec?command=id"),
        held
    );
    assert_eq!(
        decide("GET", "/api/v1/namespaces/prod/pods/web-0/log").0,
        Verdict::Allow
    );
    // `*/x` spans groups; names need a named object (a name selector counts).
    let sts = rule(Verdict::Deny, "any-group-statefulsets");
    assert_eq!(
        decide("GET", "/apis/apps/v1/namespaces/a/statefulsets/db-0"),
        sts
    );
    assert_eq!(
        decide(
            "GET",
            "/apis/apps/v1/namespaces/a/statefulsets?watch=1&fieldSelector=metadata.name%3Ddb-1"
        ),
        sts
    );
    assert_eq!(
        decide("GET", "/apis/apps/v1/namespaces/a/statefulsets").0,
        Verdict::Allow
    );
    // `resources` shared with AWS rules judges Kubernetes requests by their names; an
    // AWS-only rule never does.
    assert_eq!(
        decide("GET", "/api/v1/namespaces/a/configmaps/x"),
        rule(Verdict::Approve, "shared-resources")
    );
    // Non-resource requests: only `verbs` (and HTTP conditions) can match them.
    assert_eq!(
        decide("POST", "/apis/authorization.k8s.io"),
        rule(Verdict::Deny, "no-discovery-posts")
    );
    assert_eq!(decide("GET", "/api/v1").0, Verdict::Allow);
    // Kubernetes rules never judge plain HTTP requests.
    assert_eq!(
        p.decide_http(&request("POST", None, "/", &[])),
        (Verdict::Allow, None)
    );
    // ... nor AWS calls, except through the shared `resources`.
    let resources = vec!["arn:aws:s3:::vault".to_owned()];
    let call = aws::AwsCallInfo {
        action: "s3:GetObject",
        region: "us-east-1",
        resources: &resources,
    };
    assert_eq!(
        p.decide_aws(&request("POST", None, "/", &[]), &call).1,
        Some("shared-resources")
    );
}

#[test]
fn kubernetes_rule_keys_are_validated() {
    let base = "[[policy]]\n[[policy.rule]]\nname = \"r\"\nverdict = \"deny\"\n";
    for (keys, needle) in [
        ("verbs = []", "can never match"),
        ("verbs = [\"remove\"]", "unknown verb \"remove\""),
        ("namespaces = [\"\"]", "can never match"),
        ("subresources = [\"pods/exec\"]", "without its resource"),
        ("names = [\"[\"]", "invalid glob"),
        (
            "verbs = [\"get\"]\nkinds = [\"select\"]",
            "mixes SQL conditions",
        ),
        (
            "verbs = [\"get\"]\nactions = [\"iam:*\"]",
            "mixes Kubernetes conditions",
        ),
        (
            "verbs = [\"get\"]\ncommands = [\"id\"]",
            "mixes SSH conditions",
        ),
    ] {
        let err = try_policies(&format!("{base}{keys}\n")).expect_err(keys);
        assert!(err.message.contains(needle), "{keys}: {}", err.message);
    }
    // Globs in verbs are not checked against the list.
    assert!(try_policies(&format!("{base}verbs = [\"delete*\"]\n")).is_ok());
}

#[test]
fn redis_rules_judge_commands_and_keys_and_leave_other_protocols_alone() {
    let p = policy(
        r#"
[[policy]]
default = "allow"
[[policy.rule]]
name = "no-admin"
verdict = "deny"
commands = ["FLUSHALL", "rm -rf *"]
[[policy.rule]]
name = "sessions"
verdict = "approve"
keys = ["session:*"]
"#,
    );
    let redis_cmd = |name: &'static str, keys: &'static [&'static [u8]]| redis::RedisCommand {
        name,
        with_subcommand: None,
        keys: Some(keys),
        args: keys,
    };
    assert_eq!(
        p.decide_redis(&redis_cmd("FLUSHALL", &[])),
        (Verdict::Deny, Some("no-admin"))
    );
    assert_eq!(
        p.decide_redis(&redis_cmd("GET", &[b"session:1"])),
        (Verdict::Approve, Some("sessions"))
    );
    assert_eq!(
        p.decide_redis(&redis_cmd("GET", &[b"user:1"])),
        (Verdict::Allow, None)
    );
    assert_eq!(
        p.decide_redis(&redis_cmd("MONITOR", &[])),
        (Verdict::Deny, Some(redis::MONITOR_RULE))
    );
    // `commands` keeps its SSH meaning on SSH targets; a `keys` rule judges nothing but
    // Redis commands.
    let exec = ssh::SshRequest {
        kind: ssh::SshKind::Exec,
        command: Some("rm -rf /tmp/x"),
    };
    assert_eq!(p.decide_ssh(&exec), (Verdict::Deny, Some("no-admin")));
    let ls = ssh::SshRequest {
        kind: ssh::SshKind::Exec,
        command: Some("ls"),
    };
    assert_eq!(p.decide_ssh(&ls), (Verdict::Allow, None));
    let get = http::HttpRequestInfo {
        method: "GET",
        host: None,
        path: "/session:1",
        headers: &[],
    };
    assert_eq!(p.decide_http(&get), (Verdict::Allow, None));
    // `keys` with another protocol's conditions is refused.
    let mixed = try_policies(
        "[[policy]]\n[[policy.rule]]\nname = \"x\"\nverdict = \"deny\"\nkeys = [\"a\"]\nregex = \"b\"\n",
    )
    .unwrap_err();
    assert!(mixed.message.contains("mixes Redis conditions"), "{mixed}");
}
