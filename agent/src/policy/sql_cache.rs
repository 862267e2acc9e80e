//! A cache of statement analyses by *shape*: the query text with its literal values
//! blanked out.
//!
//! Parsing is most of what judging a statement costs, and clients send the same few
//! statements over and over with other values (`... WHERE aid = 41`, `... = 97`), or
//! the very same text (extended protocol: `... WHERE aid = $1`). What [`analyze`]
//! reports (kinds, tables, functions, a DELETE without WHERE, opacity) does not depend
//! on literal values, so one analysis per shape serves them all; the statement's text
//! and span are those of the query at hand, and the verdict is still decided per query
//! (a rule's `text` regex sees the real text).
//!
//! # Fail-closed choices
//!
//! The shape is computed by a small scanner that only blanks what it is sure is a
//! literal: numbers not glued to a word, and plain `'...'` strings. Anything that could
//! make it disagree with the real lexer about where a literal starts or ends (a
//! comment, a dollar quote, a backslash, a prefixed string such as `E'..'`, `B'..'` or
//! `U&'..'`, a number glued to letters such as `0x1F`, an unterminated quote) and
//! every query string with more than one statement is not cached: it is analysed
//! whole, every time. A shape is stored only when the analysis found exactly one
//! statement at the span the scanner predicted.
//!
//! [`analyze`]: super::sql::analyze
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use super::sql::{analyze_with, Analysis, AnalyzeOptions};

/// Shapes kept at most; the cache is emptied when it is full (a client that generates
/// unbounded distinct statements gets no worse than no cache).
const CAPACITY: usize = 4096;

impl Default for AnalysisCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Query strings longer than this are analysed every time (and never kept).
const MAX_KEY: usize = 8 << 10;

/// Analyses by `standard_conforming_strings` and shape.
type Shapes = HashMap<(bool, Box<str>), Arc<Analysis>>;

/// Analyses by shape, shared by every session of the process.
pub struct AnalysisCache {
    shapes: Mutex<Shapes>,
}

impl AnalysisCache {
    /// An empty cache (the proxy uses [`AnalysisCache::global`]; tests and the fuzz
    /// target make their own).
    pub fn new() -> Self {
        AnalysisCache {
            shapes: Mutex::new(HashMap::new()),
        }
    }

    /// The process's cache.
    pub fn global() -> &'static AnalysisCache {
        static CACHE: OnceLock<AnalysisCache> = OnceLock::new();
        CACHE.get_or_init(AnalysisCache::new)
    }

    /// What [`analyze_with`] says of `sql`, from the cache when a query of the same
    /// shape was analysed before.
    pub fn analyze(&self, sql: &str, options: AnalyzeOptions) -> Arc<Analysis> {
        let Some(shape) = shape_of(sql) else {
            return Arc::new(analyze_with(sql, options));
        };
        let key = (options.standard_conforming_strings, shape.key);
        let hit = self.lock().get(&key).cloned();
        if let Some(cached) = hit {
            return if cached.statements[0].span == shape.span
                && cached.statements[0].text == sql[shape.span.clone()]
            {
                // The same text (no literal in it, or the same values): shared as is.
                cached
            } else {
                let mut analysis = Analysis::clone(&cached);
                let statement = &mut analysis.statements[0];
                statement.text = sql[shape.span.clone()].to_string();
                statement.span = shape.span;
                Arc::new(analysis)
            };
        }
        let analysis = Arc::new(analyze_with(sql, options));
        let fits = matches!(analysis.statements.as_slice(), [one] if one.span == shape.span)
            && same_but_text(&analysis, &analyze_with(&key.1, options));
        if fits {
            let mut shapes = self.lock();
            if shapes.len() >= CAPACITY {
                shapes.clear();
            }
            shapes.insert(key, analysis.clone());
        }
        analysis
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shapes> {
        // A panic while holding the lock leaves at worst a missing entry.
        self.shapes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether two analyses say the same but for the statements' texts and spans. A shape
/// is kept only when the query and its shape (the literals blanked) analyse the same:
/// some constructs report a literal as part of a name (`SELECT .. INTO ns(0, 'o')`
/// names the table `ns(0, 'o')`), and such an analysis is not one per shape.
fn same_but_text(a: &Analysis, b: &Analysis) -> bool {
    a.statements.len() == b.statements.len()
        && a.statements.iter().zip(&b.statements).all(|(x, y)| {
            x.kinds == y.kinds
                && x.tables == y.tables
                && x.functions == y.functions
                && x.without_where == y.without_where
                && x.opaque == y.opaque
        })
}

/// A single-statement query string's shape, and where its statement is.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    key: Box<str>,
    span: Range<usize>,
}

fn is_word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_word_char(b: u8) -> bool {
    is_word_start(b) || b.is_ascii_digit() || b == b'$'
}

/// The shape of `sql`, or `None` when the scanner cannot be sure of it (see the module
/// documentation) or the string holds more (or less) than one statement.
fn shape_of(sql: &str) -> Option<Shape> {
    if sql.len() > MAX_KEY {
        return None;
    }
    let b = sql.as_bytes();
    let mut key = String::with_capacity(sql.len());
    // Where the last `;` was copied: only `;` and whitespace may follow it.
    let mut semicolon = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if semicolon && c != b';' && !c.is_ascii_whitespace() {
            return None;
        }
        match c {
            b'\\' => return None,
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b';' => {
                semicolon = true;
                key.push(';');
                i += 1;
            }
            b'$' => {
                // `$1`: a parameter (a dollar quote's tag never starts with a digit).
                let digits = b[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
                if digits == 0 {
                    return None;
                }
                key.push_str(&sql[i..i + 1 + digits]);
                i += 1 + digits;
            }
            b'\'' => {
                // Only where nothing can glue it to what precedes it.
                if !literal_may_follow(i.checked_sub(1).map(|p| b[p])) {
                    return None;
                }
                let end = closing_quote(b, i, b'\'')?;
                key.push_str("''");
                i = end + 1;
            }
            b'"' => {
                let end = closing_quote(b, i, b'"')?;
                key.push_str(&sql[i..=end]);
                i = end + 1;
            }
            _ if is_word_start(c) => {
                let len = b[i..].iter().take_while(|&&w| is_word_char(w)).count();
                // A prefixed string (E'..', B'..', X'..', N'..', U&'..') lexes by rules
                // of its own.
                let next = b.get(i + len);
                if next == Some(&b'\'')
                    || (next == Some(&b'&') && b.get(i + len + 1) == Some(&b'\''))
                {
                    return None;
                }
                key.push_str(&sql[i..i + len]);
                i += len;
            }
            _ if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                let len = number_len(&b[i..]);
                if b.get(i + len)
                    .is_some_and(|&n| is_word_char(n) || n == b'.')
                {
                    return None;
                }
                // After `@`, `:`, `#` and the like the digits may be part of another
                // token (sqlparser reads `@11` as a name): kept as they are.
                if literal_may_follow(i.checked_sub(1).map(|p| b[p])) {
                    key.push('0');
                } else {
                    key.push_str(&sql[i..i + len]);
                }
                i += len;
            }
            _ => {
                // Everything else (operators, punctuation, whitespace) as it is: one
                // char, which may be more than one byte.
                let ch = sql[i..].chars().next()?;
                key.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    let start = b.iter().position(|c| !c.is_ascii_whitespace())?;
    let end = b.len()
        - b.iter()
            .rev()
            .take_while(|c| c.is_ascii_whitespace() || **c == b';')
            .count();
    if end <= start {
        return None;
    }
    Some(Shape {
        key: key.into_boxed_str(),
        span: start..end,
    })
}

/// Whether a literal that starts after `prev` (the byte before it, `None` at the start)
/// is a token of its own to every lexer: after whitespace, an opening bracket, a comma
/// or an arithmetic or comparison operator.
fn literal_may_follow(prev: Option<u8>) -> bool {
    match prev {
        None => true,
        Some(p) => {
            p.is_ascii_whitespace()
                || matches!(
                    p,
                    b'(' | b'['
                        | b','
                        | b'='
                        | b'<'
                        | b'>'
                        | b'+'
                        | b'-'
                        | b'*'
                        | b'/'
                        | b'%'
                        | b'|'
                )
        }
    }
}

/// The index of the quote that closes the one at `open` (a doubled quote is part of
/// the text), `None` if there is none.
fn closing_quote(b: &[u8], open: usize, quote: u8) -> Option<usize> {
    let mut j = open + 1;
    loop {
        let at = j + b.get(j..)?.iter().position(|&c| c == quote)?;
        if b.get(at + 1) == Some(&quote) {
            j = at + 2;
        } else {
            return Some(at);
        }
    }
}

/// The length of the numeric literal at the start of `b`: digits, an optional
/// fraction, an optional exponent.
fn number_len(b: &[u8]) -> usize {
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut n = digits(0);
    if b.get(n) == Some(&b'.') {
        n += 1 + digits(n + 1);
    }
    if matches!(b.get(n), Some(b'e') | Some(b'E')) {
        let sign = usize::from(matches!(b.get(n + 1), Some(b'+') | Some(b'-')));
        let exp = digits(n + 1 + sign);
        if exp > 0 {
            n += 1 + sign + exp;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> AnalyzeOptions {
        AnalyzeOptions::default()
    }

    #[test]
    fn literals_are_blanked_and_the_rest_kept() {
        let shape = shape_of("  SELECT abalance FROM t1 WHERE aid = 4711 AND b = 'x''y' ;\n")
            .expect("a shape");
        assert_eq!(
            &*shape.key,
            "  SELECT abalance FROM t1 WHERE aid = 0 AND b = '' ;\n"
        );
        assert_eq!(
            &"  SELECT abalance FROM t1 WHERE aid = 4711 AND b = 'x''y' ;\n"[shape.span],
            "SELECT abalance FROM t1 WHERE aid = 4711 AND b = 'x''y'"
        );
        let quoted = shape_of("SELECT \"col 1\", -1.5e-3, .5, $12 FROM \"T2\"").expect("shape");
        assert_eq!(&*quoted.key, "SELECT \"col 1\", -0, 0, $12 FROM \"T2\"");
    }

    #[test]
    fn what_the_scanner_cannot_be_sure_of_has_no_shape() {
        for sql in [
            "SELECT 1; SELECT 2",
            ";SELECT 1",
            "SELECT 1 -- comment",
            "SELECT /* c */ 1",
            "SELECT $$text$$",
            "SELECT $tag$ 'x' $tag$",
            "SELECT E'a\\'b'",
            "SELECT 'a\\'; DROP TABLE t; --'",
            "SELECT B'101', X'ff'",
            "SELECT U&'d0061t'",
            "SELECT N'x'",
            "SELECT 0x1F",
            "SELECT 1abc",
            "SELECT 1.2.3",
            "SELECT 'unterminated",
            "SELECT \"unterminated",
            "SELECT @'x'",
            "",
            "  ;; ",
        ] {
            assert_eq!(shape_of(sql), None, "{sql:?}");
        }
    }

    /// The cache must answer exactly what a fresh analysis answers, for every query,
    /// whatever sibling (same shape, other values) filled the cache.
    #[test]
    fn a_cached_analysis_is_the_fresh_analysis() {
        let templates = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = {}",
            "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {}",
            "DELETE FROM users WHERE id = {}",
            "DELETE FROM users",
            "INSERT INTO t1 (a, b) VALUES ({}, '{}')",
            "select pg_read_file('{}')",
            "SELECT * FROM secrets s JOIN t2 ON s.id = t2.id WHERE s.k = '{}' LIMIT {}",
            "COPY users TO STDOUT",
            "DROP TABLE t{}x",
            "SET search_path = '{}'",
            "PREPARE p AS DELETE FROM users WHERE id > {}",
            "EXECUTE p({})",
            "DO 'BEGIN END'",
            "WITH users AS (SELECT * FROM users WHERE id = {}) SELECT * FROM users",
            "SELECT {}::int, '{}'::interval, interval '{} day'",
            "  SELECT lower(email) FROM \"Users 2\" WHERE \"id{}\" = {} ;; ",
            "EXPLAIN ANALYZE DELETE FROM t WHERE x < {}",
            "SELECT * FROM t WHERE x = $1 AND y = {}",
            "VACUUM t",
            "CREATE FUNCTION f() RETURNS int AS 'SELECT {}' LANGUAGE sql",
            "SELECT 'a;b', {}",
            "SELECT * FROM a$b WHERE c$1 = {}",
            "SELECT \nFROM@{}",
            "SELECT x FROM t WHERE a = :{} OR b = #{} OR c = ?{}",
            "select ert into ns({}, 'o{}')",
        ];
        let values = ["1", "42", "3.5", "7e3", "0", "100000"];
        for template in templates {
            let cache = AnalysisCache::new();
            for (n, value) in values.iter().enumerate() {
                let sql = template.replace("{}", value);
                let fresh = analyze_with(&sql, on());
                let cached = cache.analyze(&sql, on());
                assert_eq!(*cached, fresh, "{sql:?} (after {n} siblings)");
            }
            // With standard_conforming_strings off, analyses are kept apart.
            let sql = template.replace("{}", "9");
            let off = AnalyzeOptions {
                standard_conforming_strings: false,
            };
            assert_eq!(
                *cache.analyze(&sql, off),
                analyze_with(&sql, off),
                "{sql:?}"
            );
        }
    }

    #[test]
    fn the_same_text_shares_one_analysis() {
        let cache = AnalysisCache::new();
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
        let first = cache.analyze(sql, on());
        let second = cache.analyze(sql, on());
        assert!(Arc::ptr_eq(&first, &second));
        let other = cache.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 7", on());
        assert_eq!(
            other.statements[0].text,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7"
        );
    }
}
