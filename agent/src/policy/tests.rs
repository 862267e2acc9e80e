use super::*;

#[test]
fn probe() {
    for sql in std::env::var("PROBE").unwrap_or_default().split("|||") {
        let a = analyze(sql);
        println!("{sql:?}");
        for s in a.statements {
            println!(
                "  {:?} {:?} t={:?} f={:?} ww={} op={}",
                s.text, s.kinds, s.tables, s.functions, s.without_where, s.opaque
            );
        }
    }
}

#[test]
fn probe_psql() {
    let text = include_str!("testdata/psql_meta_commands.sql");
    for q in text.split("\n-- next\n") {
        let a = analyze(q);
        for s in &a.statements {
            println!(
                "{:?} t={:?} f={:?} op={}",
                s.kinds, s.tables, s.functions, s.opaque
            );
            if s.opaque {
                println!("OPAQUE: {}", s.text);
            }
        }
    }
}
