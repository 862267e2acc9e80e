//! SQL analysis as the PostgreSQL flow runs it on every query text: `policy::analyze`
//! (and `analyze_with` for a session with `standard_conforming_strings = off`), the
//! flow's `AnalysisCache`, which must answer exactly what a fresh analysis answers
//! even after a sibling of the text (its digits changed: the same shape when they are
//! literals) filled it, then
//! `Policy::decide` with the policy of policies/example.toml, and `mask_text`, which
//! the flow applies to statement texts before they are journaled. Query texts reach
//! the flow as UTF-8 (the decoder refuses anything else), so other inputs are skipped.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use nhi_agent::config::{self, Config};
use nhi_agent::mask::{HashKey, SessionMasks};
use nhi_agent::policy::{self, Analysis, AnalysisCache, AnalyzeOptions};

fn example() -> &'static (Config, SessionMasks) {
    static EXAMPLE: OnceLock<(Config, SessionMasks)> = OnceLock::new();
    EXAMPLE.get_or_init(|| {
        let config = config::parse(
            include_str!("../../policies/example.toml"),
            "policies/example.toml",
        )
        .expect("policies/example.toml is valid");
        // Every detector, so that mask_text has something to find in any text.
        let masks = config::parse(
            "[agent]\nmode = \"enforce\"\njournal = \"/nonexistent/journal.db\"\n\
             [[target]]\nname = \"db\"\naddress = \"127.0.0.1:5432\"\nprotocol = \"postgres\"\n\
             [[mask]]\nname = \"all\"\ndetectors = [\"all\"]\nstrategy = \"partial\"\n",
            "fuzz masks",
        )
        .expect("the fuzz mask config is valid")
        .masks;
        let masks = SessionMasks::new(masks, Arc::new(HashKey::from_bytes([7; 32])));
        (config, masks)
    })
}

fn off_options() -> AnalyzeOptions {
    AnalyzeOptions {
        standard_conforming_strings: false,
    }
}

fn check(sql: &str, analysis: &Analysis) {
    let mut end = 0;
    for statement in &analysis.statements {
        assert!(!statement.kinds.is_empty(), "a statement has a kind");
        assert_eq!(
            sql.get(statement.span.clone()),
            Some(statement.text.as_str()),
            "the span locates the text"
        );
        assert!(statement.span.start >= end, "statements in order, apart");
        end = statement.span.end;
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let (config, masks) = example();
    let analysis = policy::analyze(sql);
    check(sql, &analysis);
    if let Some(policy) = config.policies.for_session("nhi-demo", "postgres-v4", None) {
        let _ = policy.decide(&analysis);
    }
    let off = policy::analyze_with(sql, off_options());
    check(sql, &off);
    for (options, fresh) in [
        (AnalyzeOptions::default(), &analysis),
        (off_options(), &off),
    ] {
        let cache = AnalysisCache::new();
        let sibling: String = sql
            .chars()
            .map(|c| match c.to_digit(10) {
                Some(d) => char::from_digit((d + 1) % 10, 10).unwrap_or(c),
                None => c,
            })
            .collect();
        let _ = cache.analyze(&sibling, options);
        assert_eq!(
            &*cache.analyze(sql, options),
            fresh,
            "the cache answers as a fresh analysis"
        );
    }
    let _ = masks.mask_text(sql);
});
