//! Statement analysis: what a query string does, as far as policy needs to know.
//!
//! [`analyze`] cuts a query string into statements and describes each one by its
//! [`StatementKind`]s, the tables and functions it names, whether it is an UPDATE or
//! DELETE without WHERE, and whether it runs SQL that no parser can see (`opaque`).
//!
//! Lexing and parsing are sqlparser's (PostgreSQL dialect): it already knows dollar
//! quotes, `E''` strings, nested comments, `OPERATOR(schema.op)` and the rest of the
//! PostgreSQL surface that psql's catalog queries use, which a hand-written splitter
//! would get subtly wrong. Statements are cut at top-level `;` tokens *before* parsing,
//! so one statement the parser does not understand is one opaque statement, not a
//! lost query string, and each statement's text is the exact slice of the input.
//!
//! # Naming
//!
//! Tables and functions are reported lower-cased and as written (`users`,
//! `public.users`, `pg_catalog.pg_read_file`); quoted identifiers lose their quotes.
//! Names are not resolved against a search_path (the analysis has no database):
//! [`name_candidates`] gives the spellings a policy glob is tried against.
//!
//! # Fail-closed choices
//!
//! * Tables and functions are collected everywhere, including under a plain
//!   `EXPLAIN` (which does not run its statement) and in bodies that are stored rather
//!   than run: over-reporting a name can only make a deny rule match more often.
//! * A name in `FROM` that refers to a CTE in scope is not a table. CTE scoping follows
//!   PostgreSQL (a non-recursive CTE's body sees only the CTEs before it), so
//!   `WITH users AS (SELECT * FROM users) ...` still reports the real `users`. The
//!   target of INSERT/UPDATE/DELETE/MERGE is always reported, since PostgreSQL never
//!   resolves it to a CTE.
//! * `PREPARE p AS <stmt>` gets the kinds of `<stmt>` besides `prepare`, because the
//!   later `EXECUTE p` is opaque: a rule against DELETE must stop it where it is visible.
use std::fmt;
use std::ops::{ControlFlow, Range};

use sqlparser::ast::{
    CopySource, Expr, FromTable, GrantObjects, ObjectName, ObjectNamePart, ObjectType, Query,
    Select, SetExpr, Statement, TableFactor, TableObject, TableWithJoins, UtilityOption, Visit,
    Visitor,
};
use sqlparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

/// What a statement does, coarsely; a statement has one or more.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub enum StatementKind {
    /// SELECT, VALUES, TABLE: reads.
    Select,
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// MERGE.
    Merge,
    /// `COPY ... FROM` (STDIN, a file or a program): writes a table.
    CopyFrom,
    /// `COPY ... TO` (STDOUT, a file or a program), including `COPY (query) TO`.
    CopyTo,
    /// CREATE ..., and `SELECT ... INTO` (which creates a table).
    Create,
    /// ALTER ..., and COMMENT ON.
    Alter,
    /// DROP ...
    Drop,
    /// TRUNCATE.
    Truncate,
    /// GRANT.
    Grant,
    /// REVOKE.
    Revoke,
    /// BEGIN, START TRANSACTION, COMMIT, END, ROLLBACK, ABORT, SAVEPOINT, RELEASE.
    Transaction,
    /// SET (including SET LOCAL), RESET, SHOW.
    Set,
    /// EXPLAIN (with ANALYZE the explained statement's kinds are added: it runs).
    Explain,
    /// PREPARE.
    Prepare,
    /// EXECUTE of a prepared statement: opaque.
    Execute,
    /// DEALLOCATE.
    Deallocate,
    /// DO: an anonymous code block, opaque.
    Do,
    /// CALL of a procedure: opaque.
    Call,
    /// LISTEN, UNLISTEN.
    Listen,
    /// NOTIFY.
    Notify,
    /// LOCK.
    Lock,
    /// VACUUM, ANALYZE, CLUSTER, REINDEX, CHECKPOINT, REFRESH MATERIALIZED VIEW.
    Maintenance,
    /// Anything parsed that fits none of the above (DISCARD, FETCH, DECLARE, ...).
    Other,
    /// Text the parser could not parse: opaque.
    Unparsed,
}

impl StatementKind {
    /// Every kind, in declaration order.
    pub const ALL: [StatementKind; 27] = [
        Self::Select,
        Self::Insert,
        Self::Update,
        Self::Delete,
        Self::Merge,
        Self::CopyFrom,
        Self::CopyTo,
        Self::Create,
        Self::Alter,
        Self::Drop,
        Self::Truncate,
        Self::Grant,
        Self::Revoke,
        Self::Transaction,
        Self::Set,
        Self::Explain,
        Self::Prepare,
        Self::Execute,
        Self::Deallocate,
        Self::Do,
        Self::Call,
        Self::Listen,
        Self::Notify,
        Self::Lock,
        Self::Maintenance,
        Self::Other,
        Self::Unparsed,
    ];

    /// The name used in policy files (`kinds = ["copy_from"]`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Select => "select",
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Merge => "merge",
            Self::CopyFrom => "copy_from",
            Self::CopyTo => "copy_to",
            Self::Create => "create",
            Self::Alter => "alter",
            Self::Drop => "drop",
            Self::Truncate => "truncate",
            Self::Grant => "grant",
            Self::Revoke => "revoke",
            Self::Transaction => "transaction",
            Self::Set => "set",
            Self::Explain => "explain",
            Self::Prepare => "prepare",
            Self::Execute => "execute",
            Self::Deallocate => "deallocate",
            Self::Do => "do",
            Self::Call => "call",
            Self::Listen => "listen",
            Self::Notify => "notify",
            Self::Lock => "lock",
            Self::Maintenance => "maintenance",
            Self::Other => "other",
            Self::Unparsed => "unparsed",
        }
    }

    /// The kind with this policy-file name, if any (exact, lower-case).
    pub fn from_name(name: &str) -> Option<StatementKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for StatementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`StatementKind`]s, as a bit set: copying and intersecting it is free,
/// which matters because a rule's `kinds` is checked against every statement.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct KindSet(u32);

impl KindSet {
    /// The empty set.
    pub const EMPTY: KindSet = KindSet(0);

    /// A set holding just `kind`.
    pub fn of(kind: StatementKind) -> KindSet {
        KindSet(kind.bit())
    }

    /// Adds `kind`.
    pub fn insert(&mut self, kind: StatementKind) {
        self.0 |= kind.bit();
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: StatementKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Whether the two sets share a kind.
    pub fn intersects(self, other: KindSet) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = StatementKind> {
        StatementKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

impl FromIterator<StatementKind> for KindSet {
    fn from_iter<I: IntoIterator<Item = StatementKind>>(iter: I) -> Self {
        let mut set = KindSet::EMPTY;
        for kind in iter {
            set.insert(kind);
        }
        set
    }
}

impl fmt::Debug for KindSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// What policy knows about one statement of a query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementInfo {
    /// The statement's own source text, without the `;` and the surrounding
    /// whitespace and comments.
    pub text: String,
    /// Where [`StatementInfo::text`] is in the analysed string (byte offsets).
    pub span: Range<usize>,
    /// Never empty; `{unparsed}` when the text could not be parsed.
    pub kinds: KindSet,
    /// Tables read or written, lower-cased, as written, without duplicates.
    pub tables: Vec<String>,
    /// Functions called, lower-cased, as written, without duplicates.
    pub functions: Vec<String>,
    /// An UPDATE or DELETE without WHERE runs here (also inside a CTE or under
    /// `EXPLAIN ANALYZE`).
    pub without_where: bool,
    /// The statement runs SQL the analysis cannot see: unparsed text, DO, CALL,
    /// EXECUTE. Such a statement only matches rules that name its kind or whose
    /// `text` regex matches.
    pub opaque: bool,
}

/// The statements of one query string, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    /// One entry per statement; empty for an empty string or only comments/semicolons.
    pub statements: Vec<StatementInfo>,
}

impl Analysis {
    /// Whether the string held no statement.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }
}

/// How the session's server reads the text; see [`analyze_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnalyzeOptions {
    /// The session's `standard_conforming_strings` (the server reports it in a
    /// ParameterStatus message; `on` unless a client or the database turned it off).
    pub standard_conforming_strings: bool,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            standard_conforming_strings: true,
        }
    }
}

/// Cuts `sql` into statements and describes each one, for a session with
/// `standard_conforming_strings = on` (PostgreSQL's default). Never fails: what
/// cannot be lexed or parsed becomes an opaque statement of kind `unparsed`.
pub fn analyze(sql: &str) -> Analysis {
    analyze_with(sql, AnalyzeOptions::default())
}

/// [`analyze`] for a session whose settings may differ from the defaults.
///
/// With `standard_conforming_strings = off` a backslash escapes a quote inside
/// `'...'`, so `'a\'; DROP TABLE t; --'` is one string to the server but a string,
/// a DROP and a comment to a standard lexer, and the reverse trick hides a
/// statement in what the lexer takes for a comment. The lexer has no such mode, so
/// in that case a query string holding any backslash is one opaque statement.
pub fn analyze_with(sql: &str, options: AnalyzeOptions) -> Analysis {
    if !options.standard_conforming_strings && sql.contains('\\') {
        return whole_unparsed(sql);
    }
    analyze_in(&PostgreSqlDialect {}, sql)
}

/// [`analyze`] with the MySQL / MariaDB dialect (for `protocol = "mysql"`): the same
/// [`Analysis`], so the same rule keys apply. `no_backslash_escapes`: the session's
/// `NO_BACKSLASH_ESCAPES` SQL mode as the server last reported it (a string holding a
/// backslash is then opaque, as with PostgreSQL's `standard_conforming_strings = off`:
/// the lexer knows only the default). What the server reads but a lexer takes for a
/// comment makes the whole string one opaque statement: executable comments
/// (`/*!...*/`, `/*M!...*/`), and `--` not followed by a space (not a comment in MySQL).
pub fn analyze_mysql(sql: &str, no_backslash_escapes: bool) -> Analysis {
    if no_backslash_escapes && sql.contains('\\') {
        return whole_unparsed(sql);
    }
    if sql.contains("/*!") || sql.contains("/*M!") || sql.contains("/*m!") {
        return whole_unparsed(sql);
    }
    let bytes = sql.as_bytes();
    let dashes_without_space = bytes
        .windows(3)
        .any(|w| w[0] == b'-' && w[1] == b'-' && !matches!(w[2], b' ' | b'\t' | b'\n' | b'\r'))
        || sql.ends_with("--");
    if dashes_without_space {
        return whole_unparsed(sql);
    }
    let mut analysis = analyze_in(&MySqlDialect {}, sql);
    for statement in &mut analysis.statements {
        if let Some(inner) = mysql_prepare_text(&statement.text) {
            // `PREPARE s FROM '<stmt>'`: the later `EXECUTE s` is opaque, so the
            // statement is judged here by what it prepares (as PostgreSQL's PREPARE).
            let inner = analyze_mysql(&inner, no_backslash_escapes);
            let mut kinds = KindSet::of(StatementKind::Prepare);
            let mut opaque = inner.statements.len() != 1;
            for s in &inner.statements {
                for k in s.kinds.iter() {
                    kinds.insert(k);
                }
                statement.tables.extend(s.tables.iter().cloned());
                statement.functions.extend(s.functions.iter().cloned());
                statement.without_where |= s.without_where;
                opaque |= s.opaque;
            }
            statement.kinds = kinds;
            statement.opaque = opaque;
        }
    }
    analysis
}

/// The statement text of MySQL's `PREPARE name FROM 'text'` (a string literal, not a
/// user variable, which would be opaque).
fn mysql_prepare_text(text: &str) -> Option<String> {
    let tokens = Tokenizer::new(&MySqlDialect {}, text).tokenize().ok()?;
    let mut words = tokens.into_iter().filter(|t| !is_trivia(t));
    if !matches!(words.next()?, Token::Word(w) if w.keyword == Keyword::PREPARE) {
        return None;
    }
    if !matches!(words.next()?, Token::Word(_)) {
        return None;
    }
    if !matches!(words.next()?, Token::Word(w) if w.keyword == Keyword::FROM) {
        return None;
    }
    let inner = match words.next()? {
        Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => s,
        _ => return None,
    };
    words.next().is_none().then_some(inner)
}

fn analyze_in(dialect: &dyn Dialect, sql: &str) -> Analysis {
    let tokens = match Tokenizer::new(dialect, sql).tokenize_with_location() {
        Ok(tokens) => tokens,
        // An unterminated quote or comment swallows the rest of the string for the
        // server too, so the whole (trimmed) string is one opaque statement.
        Err(_) => return whole_unparsed(sql),
    };
    let offsets = ByteOffsets::new(sql);
    let mut statements = Vec::new();
    let mut piece: Vec<TokenWithSpan> = Vec::new();
    let mut atomic = AtomicBody::default();
    for token in tokens {
        match token.token {
            Token::EOF => break,
            Token::SemiColon if !atomic.inside() => {
                atomic = AtomicBody::default();
                if let Some(info) =
                    analyze_piece(dialect, sql, &offsets, std::mem::take(&mut piece))
                {
                    statements.push(info);
                }
            }
            _ => {
                atomic.feed(&token.token);
                piece.push(token);
            }
        }
    }
    if let Some(info) = analyze_piece(dialect, sql, &offsets, piece) {
        statements.push(info);
    }
    Analysis { statements }
}

/// The whole (trimmed) string as one opaque statement; nothing if it is blank.
fn whole_unparsed(sql: &str) -> Analysis {
    let trimmed = sql.trim();
    if trimmed.is_empty() {
        return Analysis::default();
    }
    let start = sql.len() - sql.trim_start().len();
    Analysis {
        statements: vec![unparsed(sql, start..start + trimmed.len())],
    }
}

/// Tracks whether the tokens so far are inside the `BEGIN ATOMIC ... END` body of a
/// `CREATE FUNCTION/PROCEDURE`, the one place where PostgreSQL's grammar lets `;`
/// occur inside a statement. Inside it, `CASE ... END` nests (as in psql's scanner).
/// Only a statement that starts with CREATE and has the word pair BEGIN ATOMIC
/// enters the body, so an identifier named `begin` cannot glue statements together.
#[derive(Default)]
struct AtomicBody {
    /// Non-trivia tokens seen in this statement (capped: only the first matters).
    seen: u8,
    starts_with_create: bool,
    after_begin: bool,
    depth: u32,
}

impl AtomicBody {
    fn inside(&self) -> bool {
        self.depth > 0
    }

    fn feed(&mut self, token: &Token) {
        let Token::Word(word) = token else {
            if !is_trivia(token) {
                self.seen = self.seen.saturating_add(1);
                self.after_begin = false;
            }
            return;
        };
        if self.seen == 0 {
            self.starts_with_create = word.keyword == Keyword::CREATE;
        }
        self.seen = self.seen.saturating_add(1);
        if !self.starts_with_create {
            return;
        }
        match word.keyword {
            Keyword::ATOMIC if self.after_begin && self.depth == 0 => self.depth = 1,
            Keyword::CASE if self.depth > 0 => self.depth += 1,
            Keyword::END if self.depth > 0 => self.depth -= 1,
            _ => {}
        }
        self.after_begin = word.keyword == Keyword::BEGIN;
    }
}

/// Converts the tokenizer's (line, column) locations, where columns count
/// characters, to byte offsets.
struct ByteOffsets<'a> {
    sql: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> ByteOffsets<'a> {
    fn new(sql: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(
            sql.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        ByteOffsets { sql, line_starts }
    }

    fn offset(&self, location: Location) -> usize {
        let line = usize::try_from(location.line.saturating_sub(1)).unwrap_or(usize::MAX);
        let Some(&start) = self.line_starts.get(line) else {
            return self.sql.len();
        };
        let column = usize::try_from(location.column.saturating_sub(1)).unwrap_or(usize::MAX);
        let rest = &self.sql[start..];
        if rest.is_ascii() {
            return (start + column).min(self.sql.len());
        }
        rest.char_indices()
            .nth(column)
            .map_or(self.sql.len(), |(i, _)| start + i)
    }
}

fn first_word_is(token: &Token, word: &str) -> bool {
    matches!(token, Token::Word(w) if w.value.eq_ignore_ascii_case(word))
}

/// The most tokens in operator position (after an operand) a statement may have and
/// still be parsed; past it the statement is opaque (kind `unparsed`, which policies
/// refuse unless told otherwise).
///
/// sqlparser builds an operator chain (`1+1+1...`, `a = 1 OR a = 2 OR ...`, `x::t::t`)
/// as a left-deep tree, one level per operator, without its recursion limit (that
/// bounds only nesting such as parentheses), and dropping the tree recurses once per
/// level: a query of a few hundred KiB of `1+` overflowed the stack of the task that
/// analyses it and aborted the agent. 10,000 levels are far from a 2 MiB tokio stack's
/// limit even in a debug build; real statements stay far below it (IN and VALUES
/// lists are commas, which do not count; a few keywords per clause do).
pub const MAX_INFIX_OPERATORS: usize = 10_000;

/// Tokens of a statement that come right after an operand (an identifier or keyword,
/// a literal, a placeholder, a closing bracket) and are not a separator: an upper
/// bound on the depth of the operator chains the parser would build. Unary operators
/// (`-1` after `(` or `,`) do not count; they nest through the parser's recursion,
/// which its limit bounds.
fn infix_operators(tokens: &[TokenWithSpan]) -> usize {
    let mut count = 0;
    let mut after_operand = false;
    for token in tokens.iter().map(|t| &t.token).filter(|t| !is_trivia(t)) {
        let separator = matches!(
            token,
            Token::Comma
                | Token::SemiColon
                | Token::LParen
                | Token::RParen
                | Token::RBracket
                | Token::RBrace
                | Token::Period
        );
        if after_operand && !separator {
            count += 1;
        }
        after_operand = ends_operand(token);
    }
    count
}

fn ends_operand(token: &Token) -> bool {
    matches!(
        token,
        Token::Word(_)
            | Token::Number(..)
            | Token::Char(_)
            | Token::Placeholder(_)
            | Token::RParen
            | Token::RBracket
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

fn is_trivia(token: &Token) -> bool {
    matches!(token, Token::Whitespace(_))
}

/// The text of a span. Spans come from the tokenizer's locations and are char
/// boundaries by construction; `get` keeps a mistake there from becoming a panic.
fn text_at(sql: &str, span: &Range<usize>) -> String {
    sql.get(span.clone()).unwrap_or(sql).to_owned()
}

fn unparsed(sql: &str, span: Range<usize>) -> StatementInfo {
    StatementInfo {
        text: text_at(sql, &span),
        span,
        kinds: KindSet::of(StatementKind::Unparsed),
        tables: Vec::new(),
        functions: Vec::new(),
        without_where: false,
        opaque: true,
    }
}

/// Analyses the tokens between two top-level semicolons; `None` when they are only
/// whitespace and comments.
fn analyze_piece(
    dialect: &dyn Dialect,
    sql: &str,
    offsets: &ByteOffsets<'_>,
    tokens: Vec<TokenWithSpan>,
) -> Option<StatementInfo> {
    let first = tokens.iter().find(|t| !is_trivia(&t.token))?;
    let last = tokens.iter().rev().find(|t| !is_trivia(&t.token))?;
    let start = offsets.offset(first.span.start);
    let end = offsets.offset(last.span.end).max(start);
    let span = start..end;
    let first_keyword = match &first.token {
        Token::Word(word) => Some(word.keyword),
        _ => None,
    };

    // DO runs a code block in a procedural language; sqlparser has no syntax for it
    // and its body would be invisible anyway.
    if first_keyword == Some(Keyword::DO) {
        return Some(StatementInfo {
            kinds: KindSet::of(StatementKind::Do),
            ..unparsed(sql, span)
        });
    }

    let unknown_maintenance = matches!(
        first_keyword,
        Some(Keyword::CLUSTER | Keyword::REINDEX | Keyword::REFRESH)
    ) || first_word_is(&first.token, "checkpoint");
    // Too many operators to build (and drop) the tree safely: opaque, as unparsed text.
    if infix_operators(&tokens) > MAX_INFIX_OPERATORS {
        let mut info = unparsed(sql, span);
        if unknown_maintenance {
            info.kinds.insert(StatementKind::Maintenance);
        }
        return Some(info);
    }
    let mut parser = Parser::new(dialect).with_tokens_with_locations(tokens);
    let statement = match parser.parse_statement() {
        Ok(statement) if parser.peek_token().token == Token::EOF => statement,
        _ => {
            let mut info = unparsed(sql, span);
            // These statements sqlparser does not know can only be what their first
            // keyword says, and embed no SQL; naming the kind lets a rule that lists
            // `maintenance` decide them. They stay opaque (their tables are unknown).
            if unknown_maintenance {
                info.kinds.insert(StatementKind::Maintenance);
            }
            return Some(info);
        }
    };
    let mut collector = Collector::default();
    // Visiting cannot break: the collector's Break type is uninhabited.
    let _ = statement.visit(&mut collector);
    let mut kinds = collector.kinds;
    if kinds.is_empty() {
        kinds.insert(keyword_kind(first_keyword));
    }
    Some(StatementInfo {
        text: text_at(sql, &span),
        span,
        kinds,
        tables: collector.tables,
        functions: collector.functions,
        without_where: collector.without_where,
        opaque: collector.opaque,
    })
}

/// The kind of a parsed top-level statement that [`own_kind`] does not place, by its
/// first keyword: sqlparser has a variant per object type for CREATE/ALTER/DROP, and
/// the keyword says the same thing without listing them all.
fn keyword_kind(keyword: Option<Keyword>) -> StatementKind {
    use StatementKind as K;
    match keyword {
        Some(Keyword::CREATE) => K::Create,
        Some(Keyword::ALTER | Keyword::COMMENT) => K::Alter,
        Some(Keyword::DROP) => K::Drop,
        Some(Keyword::TRUNCATE) => K::Truncate,
        Some(Keyword::GRANT) => K::Grant,
        Some(Keyword::REVOKE) => K::Revoke,
        Some(
            Keyword::BEGIN
            | Keyword::START
            | Keyword::COMMIT
            | Keyword::END
            | Keyword::ROLLBACK
            | Keyword::ABORT
            | Keyword::SAVEPOINT
            | Keyword::RELEASE,
        ) => K::Transaction,
        Some(Keyword::SET | Keyword::RESET | Keyword::SHOW) => K::Set,
        Some(Keyword::LISTEN | Keyword::UNLISTEN) => K::Listen,
        Some(Keyword::NOTIFY) => K::Notify,
        Some(Keyword::LOCK) => K::Lock,
        Some(
            Keyword::VACUUM
            | Keyword::ANALYZE
            | Keyword::CLUSTER
            | Keyword::REINDEX
            | Keyword::REFRESH,
        ) => K::Maintenance,
        Some(Keyword::DEALLOCATE) => K::Deallocate,
        _ => K::Other,
    }
}

/// The kind a statement has by itself (not counting nested statements), if the AST
/// says it precisely; `None` leaves it to the first keyword (top level) or `other`.
fn own_kind(statement: &Statement) -> Option<StatementKind> {
    use StatementKind as K;
    Some(match statement {
        Statement::Query(query) => match &*query.body {
            // `WITH ... INSERT/UPDATE/DELETE/MERGE`: the nested statement gives the kind.
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                return None
            }
            _ => K::Select,
        },
        Statement::Insert(_) => K::Insert,
        Statement::Update(_) => K::Update,
        Statement::Delete(_) => K::Delete,
        Statement::Merge(_) => K::Merge,
        Statement::Copy { to: true, .. } => K::CopyTo,
        Statement::Copy { to: false, .. } => K::CopyFrom,
        Statement::Explain { .. } => K::Explain,
        Statement::Prepare { .. } => K::Prepare,
        Statement::Execute { .. } => K::Execute,
        Statement::Deallocate { .. } => K::Deallocate,
        Statement::Call(_) => K::Call,
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => K::Transaction,
        Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::Reset(_) => K::Set,
        Statement::Truncate(_) => K::Truncate,
        Statement::Lock(_) => K::Lock,
        Statement::Analyze(_) | Statement::Vacuum(_) => K::Maintenance,
        Statement::LISTEN { .. } | Statement::UNLISTEN { .. } => K::Listen,
        Statement::NOTIFY { .. } => K::Notify,
        Statement::Grant(_) => K::Grant,
        Statement::Revoke(_) => K::Revoke,
        Statement::CreateTable(_) | Statement::CreateView(_) | Statement::CreateIndex(_) => {
            K::Create
        }
        _ => return None,
    })
}

/// Whether statements nested in `statement` run when it runs (and so count for
/// kinds, `without_where` and `opaque`).
fn runs_nested(statement: &Statement) -> bool {
    match statement {
        Statement::Explain {
            analyze, options, ..
        } => *analyze || options.as_deref().is_some_and(analyze_option),
        // Stored bodies run later, if ever, and then as their own statements.
        Statement::CreateFunction(_)
        | Statement::CreateProcedure { .. }
        | Statement::CreateTrigger(_)
        | Statement::CreateMacro { .. } => false,
        _ => true,
    }
}

/// Whether an `EXPLAIN (...)` option turns ANALYZE on. Anything but an explicit
/// false/off/0 counts as on: PostgreSQL's boolean option syntax is lenient, and
/// guessing "on" only makes the statement's own kinds count.
fn analyze_option(options: &[UtilityOption]) -> bool {
    options.iter().any(|option| {
        option.name.value.eq_ignore_ascii_case("analyze")
            && option.arg.as_ref().is_none_or(|arg| {
                let arg = arg.to_string();
                let arg = arg.trim_matches('\'');
                !["false", "off", "0", "no"]
                    .iter()
                    .any(|off| arg.eq_ignore_ascii_case(off))
            })
    })
}

/// The CTE names visible in one query, and what each of its CTE bodies sees.
struct Scope {
    visible: Vec<String>,
    /// (address of a CTE body, the CTE names visible inside it).
    cte_bodies: Vec<(usize, Vec<String>)>,
}

/// Walks one parsed statement and collects what policy needs.
#[derive(Default)]
struct Collector {
    kinds: KindSet,
    tables: Vec<String>,
    functions: Vec<String>,
    without_where: bool,
    opaque: bool,
    /// One entry per enclosing statement: whether statements at this depth run.
    runs: Vec<bool>,
    scopes: Vec<Scope>,
    /// The name of a table function in FROM (`FROM generate_series(1, 3)`), which the
    /// visitor reports as a relation right after the table factor.
    function_relation: Option<usize>,
}

fn address<T>(value: &T) -> usize {
    value as *const T as usize
}

/// `schema.name`, lower-cased, quotes dropped.
pub(crate) fn render_name(name: &ObjectName) -> String {
    let mut out = String::new();
    for (i, part) in name.0.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match part {
            ObjectNamePart::Identifier(ident) => out.push_str(&ident.value.to_lowercase()),
            // A dialect-specific computed name part; PostgreSQL has none.
            ObjectNamePart::Function(_) => out.push('?'),
        }
    }
    out
}

fn push_unique(list: &mut Vec<String>, name: String) {
    if !list.contains(&name) {
        list.push(name);
    }
}

impl Collector {
    fn running(&self) -> bool {
        self.runs.last().copied().unwrap_or(true)
    }

    fn table(&mut self, name: &ObjectName) {
        push_unique(&mut self.tables, render_name(name));
    }

    fn function(&mut self, name: &ObjectName) {
        push_unique(&mut self.functions, render_name(name));
    }

    fn target_tables(&mut self, from: &[TableWithJoins]) {
        for table in from {
            if let TableFactor::Table { name, .. } = &table.relation {
                self.table(name);
            }
        }
    }

    fn statement_facts(&mut self, statement: &Statement) {
        match statement {
            // DML targets are never CTEs in PostgreSQL: record them before the
            // relation visitor applies CTE scoping to the same name.
            Statement::Insert(insert) => {
                if let TableObject::TableName(name) = &insert.table {
                    self.table(name);
                }
            }
            Statement::Update(update) => {
                self.target_tables(std::slice::from_ref(&update.table));
            }
            Statement::Delete(delete) => {
                for name in &delete.tables {
                    self.table(name);
                }
                match &delete.from {
                    FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from) => {
                        self.target_tables(from)
                    }
                }
            }
            Statement::Merge(merge) => {
                if let TableFactor::Table { name, .. } = &merge.table {
                    self.table(name);
                }
            }
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                ..
            } => self.table(table_name),
            Statement::Drop {
                object_type: ObjectType::Table | ObjectType::View | ObjectType::MaterializedView,
                names,
                ..
            } => {
                for name in names {
                    self.table(name);
                }
            }
            Statement::Grant(grant) => self.grant_objects(grant.objects.as_ref()),
            Statement::Revoke(revoke) => self.grant_objects(revoke.objects.as_ref()),
            Statement::Call(function) => self.function(&function.name),
            Statement::Vacuum(vacuum) => {
                if let Some(name) = &vacuum.table_name {
                    self.table(name);
                }
            }
            _ => {}
        }
    }

    fn grant_objects(&mut self, objects: Option<&GrantObjects>) {
        if let Some(GrantObjects::Tables(names)) = objects {
            for name in names {
                self.table(name);
            }
        }
    }
}

impl Visitor for Collector {
    type Break = std::convert::Infallible;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<Self::Break> {
        let running = self.running();
        if running {
            if let Some(kind) = own_kind(statement) {
                self.kinds.insert(kind);
            }
            match statement {
                Statement::Update(update) if update.selection.is_none() => {
                    self.without_where = true
                }
                Statement::Delete(delete) if delete.selection.is_none() => {
                    self.without_where = true
                }
                Statement::Execute { .. } | Statement::Call(_) => self.opaque = true,
                _ => {}
            }
        }
        self.statement_facts(statement);
        self.runs.push(running && runs_nested(statement));
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<Self::Break> {
        self.runs.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Self::Break> {
        let here = address(query);
        let outer: Vec<String> = match self.scopes.last() {
            None => Vec::new(),
            Some(scope) => scope
                .cte_bodies
                .iter()
                .find(|(body, _)| *body == here)
                .map_or_else(|| scope.visible.clone(), |(_, visible)| visible.clone()),
        };
        let mut visible = outer.clone();
        let mut cte_bodies = Vec::new();
        if let Some(with) = &query.with {
            let names: Vec<String> = with
                .cte_tables
                .iter()
                .map(|cte| cte.alias.name.value.to_lowercase())
                .collect();
            for (i, cte) in with.cte_tables.iter().enumerate() {
                let mut inside = outer.clone();
                let seen = if with.recursive { names.len() } else { i };
                inside.extend(names[..seen].iter().cloned());
                cte_bodies.push((address(&*cte.query), inside));
            }
            visible.extend(names);
        }
        self.scopes.push(Scope {
            visible,
            cte_bodies,
        });
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<Self::Break> {
        self.scopes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<Self::Break> {
        if let Some(into) = &select.into {
            if self.running() {
                self.kinds.insert(StatementKind::Create);
            }
            for target in &into.targets {
                let name = match target {
                    Expr::Identifier(ident) => ident.value.to_lowercase(),
                    Expr::CompoundIdentifier(parts) => parts
                        .iter()
                        .map(|p| p.value.to_lowercase())
                        .collect::<Vec<_>>()
                        .join("."),
                    other => other.to_string().to_lowercase(),
                };
                push_unique(&mut self.tables, name);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<Self::Break> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.function(name);
                self.function_relation = Some(address(name));
            }
            TableFactor::Function { name, .. } => self.function(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<Self::Break> {
        if self.function_relation == Some(address(relation)) {
            self.function_relation = None;
            return ControlFlow::Continue(());
        }
        let name = render_name(relation);
        let is_cte = relation.0.len() == 1
            && self
                .scopes
                .last()
                .is_some_and(|scope| scope.visible.contains(&name));
        if !is_cte {
            push_unique(&mut self.tables, name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Self::Break> {
        if let Expr::Function(function) = expr {
            self.function(&function.name);
        }
        ControlFlow::Continue(())
    }
}

/// The spellings of a table or function name that a policy glob is tried against,
/// in order; the name itself always comes first.
///
/// PostgreSQL resolves an unqualified name through the search_path, which the
/// analysis cannot know; `pg_catalog` is always searched (first, implicitly) and
/// `public` is the usual default. So `users` is also tried as `public.users` and
/// `pg_catalog.users`, and `public.users` / `pg_catalog.users` are also tried as
/// `users`: writing a schema, or leaving it out, never slips past a rule.
pub fn name_candidates(name: &str, mut each: impl FnMut(&str) -> bool) -> bool {
    const IMPLICIT: [&str; 2] = ["public.", "pg_catalog."];
    if each(name) {
        return true;
    }
    if !name.contains('.') {
        let mut buf = String::with_capacity(name.len() + 11);
        for schema in IMPLICIT {
            buf.clear();
            buf.push_str(schema);
            buf.push_str(name);
            if each(&buf) {
                return true;
            }
        }
        return false;
    }
    IMPLICIT.iter().any(|schema| {
        name.strip_prefix(schema)
            .is_some_and(|rest| !rest.contains('.') && each(rest))
    })
}
