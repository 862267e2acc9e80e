//! Per result set: which columns are masked whole, which are scanned, and the masking
//! of each row's values (the protocol re-encodes the row).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::detect::{self, Detector, DetectorSet, Hit};
use super::strategy::Strategy;
use super::Inner;

/// One column of a result set, from its RowDescription field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnInfo<'a> {
    /// The column name or alias as the server reports it.
    pub name: &'a str,
    /// pg_type OID.
    pub type_oid: u32,
    /// 0 text, 1 binary (any other code is treated as an unknown binary format).
    pub format: i16,
}

/// What was masked in one column by one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MaskedColumn {
    /// The column name; `#N` (1-based position) for a column the RowDescription did
    /// not announce.
    pub column: String,
    /// The rule's name; `(unannounced column)` for such a column.
    #[serde(default)]
    pub rule: String,
    /// `redact`, `partial` or `hash`; `null` for an unannounced column.
    #[serde(default)]
    pub strategy: std::borrow::Cow<'static, str>,
    /// How many values (not substrings) were changed.
    #[serde(default)]
    pub values: u64,
}

/// Type OIDs (pg_type.dat).
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const NUMERIC: u32 = 1700;
    pub const JSONB: u32 = 3802;
    pub const CIDR: u32 = 650;
    pub const MACADDR: u32 = 829;
    pub const INET: u32 = 869;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const UUID: u32 = 2950;
}

/// How a column's values are represented, which decides how a masked value is
/// re-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repr {
    /// UTF-8 text: every text-format value except json and bytea, and the binary form
    /// of text, varchar, bpchar, name and unknown (which is their text).
    Text,
    /// JSON text: json in either format, jsonb in text format. A masked whole value is
    /// a JSON string, and a detected substring outside a JSON string is replaced by a
    /// JSON string, so the value stays valid JSON.
    Json,
    /// Binary jsonb: a version byte (1), then JSON text.
    JsonbBinary,
    /// Text-format bytea (`\x` + hex): a masked value is the strategy's output as hex.
    ByteaHex,
    /// Binary bytea: a masked value is the strategy's output bytes.
    ByteaBinary,
    /// Binary int8: masked to 0; scanned by `credit_card` as its decimal digits.
    Int8Binary,
    /// A binary fixed-width type whose zero value is these bytes (int2, int4, oid,
    /// float4, float8, bool false, numeric 0).
    Zero(&'static [u8]),
    /// Any other binary value: masked to NULL, never scanned.
    Opaque,
}

impl Repr {
    fn of(column: &ColumnInfo<'_>) -> Repr {
        match (column.format, column.type_oid) {
            (0, oid::BYTEA) => Repr::ByteaHex,
            (0, oid::JSON | oid::JSONB) => Repr::Json,
            (0, _) => Repr::Text,
            (1, oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN) => Repr::Text,
            (1, oid::JSON) => Repr::Json,
            (1, oid::JSONB) => Repr::JsonbBinary,
            (1, oid::BYTEA) => Repr::ByteaBinary,
            (1, oid::INT8) => Repr::Int8Binary,
            (1, oid::INT2) => Repr::Zero(&[0; 2]),
            (1, oid::INT4 | oid::OID | oid::FLOAT4) => Repr::Zero(&[0; 4]),
            (1, oid::FLOAT8) => Repr::Zero(&[0; 8]),
            (1, oid::BOOL) => Repr::Zero(&[0]),
            // ndigits 0, weight 0, sign + (0), dscale 0: the numeric 0.
            (1, oid::NUMERIC) => Repr::Zero(&[0; 8]),
            _ => Repr::Opaque,
        }
    }

    /// The detectors that can run on a column of this representation and type.
    ///
    /// The text forms of booleans, int2/int4/oid, floats, dates and times, intervals,
    /// UUIDs and network addresses fit none of the detectors' shapes (a card needs 13
    /// digits in a row, a phone number or an SSN separators or '+' that these never
    /// print there), so they are not scanned: timestamps, which are everywhere, cost
    /// nothing and raise no false positives. int8 and numeric are scanned for cards only.
    fn scannable(self, type_oid: u32, active: DetectorSet) -> DetectorSet {
        match self {
            Repr::Text => match type_oid {
                oid::BOOL
                | oid::INT2
                | oid::INT4
                | oid::OID
                | oid::FLOAT4
                | oid::FLOAT8
                | oid::DATE
                | oid::TIME
                | oid::TIMETZ
                | oid::TIMESTAMP
                | oid::TIMESTAMPTZ
                | oid::INTERVAL
                | oid::UUID
                | oid::INET
                | oid::CIDR
                | oid::MACADDR => DetectorSet::default(),
                oid::INT8 | oid::NUMERIC => active.only(Detector::CreditCard),
                _ => active,
            },
            Repr::Json | Repr::JsonbBinary => active,
            Repr::Int8Binary => active.only(Detector::CreditCard),
            Repr::ByteaHex | Repr::ByteaBinary | Repr::Zero(_) | Repr::Opaque => {
                DetectorSet::default()
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    /// Passed through unchanged.
    Keep,
    /// Masked whole by this rule (index into the session's rules).
    Whole(usize),
    /// Scanned by these detectors.
    Detect(DetectorSet),
}

#[derive(Debug, Clone, Copy)]
struct ColumnPlan {
    action: Action,
    repr: Repr,
}

/// The masker of one result set: a plan per column, counters, and scratch space.
///
/// Rows with more values than the RowDescription announced (a server or proxy bug):
/// when the masker is not a no-op, every value past the plan is replaced by NULL,
/// because its name and format are unknown and it could be anything (fail closed);
/// they are counted as column `#N`, rule `(unannounced column)`. Rows with fewer values
/// are masked as far as they go.
#[derive(Debug)]
pub struct RowMasker {
    session: Arc<Inner>,
    columns: Vec<ColumnPlan>,
    names: Vec<String>,
    /// Values masked, indexed `column * rules + rule`.
    counts: Vec<u64>,
    unannounced: BTreeMap<usize, u64>,
    noop: bool,
    hits: Vec<Hit>,
}

impl RowMasker {
    pub(super) fn new(session: Arc<Inner>, columns: &[ColumnInfo<'_>]) -> RowMasker {
        let plans: Vec<ColumnPlan> = columns
            .iter()
            .map(|column| {
                let repr = Repr::of(column);
                let whole = session
                    .rules
                    .iter()
                    .position(|rule| rule.masks_column(column.name));
                let action = match whole {
                    Some(rule) => Action::Whole(rule),
                    None => {
                        let set = repr.scannable(column.type_oid, session.detectors);
                        if set.is_empty() {
                            Action::Keep
                        } else {
                            Action::Detect(set)
                        }
                    }
                };
                ColumnPlan { action, repr }
            })
            .collect();
        let noop = plans.iter().all(|p| matches!(p.action, Action::Keep));
        RowMasker {
            counts: vec![0; plans.len() * session.rules.len()],
            names: columns.iter().map(|c| c.name.to_owned()).collect(),
            columns: plans,
            session,
            unannounced: BTreeMap::new(),
            noop,
            hits: Vec::new(),
        }
    }

    /// True when no column rule matches and no detector can run on any column: the
    /// proxy skips [`Self::mask_values`] entirely (which would return `None` anyway).
    pub fn is_noop(&self) -> bool {
        self.noop
    }

    /// The number of columns the plan was made for.
    pub fn columns(&self) -> usize {
        self.columns.len()
    }

    /// Masks one row, given its values in column order (`None`: NULL): `Some(changes)`,
    /// each a column index and its new value (`None`: sent as NULL, for a value in a
    /// column the plan was not told of), when any value changed, else `None` (forward
    /// the row as it is). NULL stays NULL and is not counted. Counts masked values per
    /// (column, rule). The protocol re-encodes the row (PostgreSQL:
    /// `protocol::postgres::mask_data_row`).
    pub fn mask_values<'v>(
        &mut self,
        row: impl IntoIterator<Item = Option<&'v [u8]>>,
    ) -> Option<Vec<(usize, Option<Vec<u8>>)>> {
        if self.noop {
            return None;
        }
        let session = &*self.session;
        let nrules = session.rules.len();
        let mut changes: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
        for (i, value) in row.into_iter().enumerate() {
            let Some(plan) = self.columns.get(i) else {
                if value.is_some() {
                    changes.push((i, None));
                    *self.unannounced.entry(i).or_default() += 1;
                }
                continue;
            };
            let Some(value) = value else {
                continue;
            };
            match plan.action {
                Action::Keep => {}
                Action::Whole(rule) => {
                    let strategy = session.rules[rule].strategy();
                    let new = whole(strategy, plan.repr, value, session);
                    session.keep(rule, value, new.as_deref().unwrap_or(b"NULL"));
                    changes.push((i, new));
                    self.counts[i * nrules + rule] += 1;
                }
                Action::Detect(set) => {
                    let counts = &mut self.counts[i * nrules..(i + 1) * nrules];
                    if let Some(new) =
                        detect(set, plan.repr, value, session, &mut self.hits, counts)
                    {
                        changes.push((i, new));
                    }
                }
            }
        }
        (!changes.is_empty()).then_some(changes)
    }

    /// What was masked so far: one entry per (column index, rule) with the number of
    /// values, in column order then rule order, then unannounced columns.
    pub fn masked_columns(&self) -> Vec<MaskedColumn> {
        let rules = &self.session.rules;
        let mut out = Vec::new();
        if !rules.is_empty() {
            for (index, counts) in self.counts.chunks(rules.len()).enumerate() {
                for (rule, &values) in rules.iter().zip(counts) {
                    if values > 0 {
                        out.push(MaskedColumn {
                            column: self.names[index].clone(),
                            rule: rule.name().to_owned(),
                            strategy: rule.strategy_name().into(),
                            values,
                        });
                    }
                }
            }
        }
        for (&index, &values) in &self.unannounced {
            out.push(MaskedColumn {
                column: format!("#{}", index + 1),
                rule: "(unannounced column)".to_owned(),
                strategy: "null".into(),
                values,
            });
        }
        out
    }
}

/// The replacement of a whole value; `None` is NULL.
fn whole(strategy: Strategy, repr: Repr, value: &[u8], session: &Inner) -> Option<Vec<u8>> {
    let key = &*session.key;
    match repr {
        Repr::Text | Repr::ByteaBinary => Some(strategy.apply(value, key)),
        Repr::Json => Some(json_string(&strategy.apply(value, key))),
        Repr::JsonbBinary => match value.split_first() {
            Some((1, json)) => {
                let mut out = vec![1];
                out.extend(json_string(&strategy.apply(json, key)));
                Some(out)
            }
            _ => None,
        },
        Repr::ByteaHex => {
            let masked = strategy.apply(value, key);
            let mut out = Vec::with_capacity(2 + 2 * masked.len());
            out.extend_from_slice(b"\\x");
            crate::hex::encode_into(&mut out, &masked);
            Some(out)
        }
        Repr::Int8Binary => Some(vec![0; 8]),
        Repr::Zero(zero) => Some(zero.to_vec()),
        Repr::Opaque => None,
    }
}

/// A JSON string literal holding `text` (read lossily if it is not UTF-8).
fn json_string(text: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&String::from_utf8_lossy(text)).unwrap_or_else(|_| b"null".to_vec())
}

/// Runs the detectors over one value. `None`: unchanged; `Some(new)`: the new value
/// (`Some(None)` is NULL). Adds one to `counts[rule]` for each rule that masked part of
/// it.
fn detect(
    set: DetectorSet,
    repr: Repr,
    value: &[u8],
    session: &Inner,
    hits: &mut Vec<Hit>,
    counts: &mut [u64],
) -> Option<Option<Vec<u8>>> {
    match repr {
        Repr::Int8Binary => {
            let bytes: [u8; 8] = value.try_into().ok()?;
            let digits = i64::from_be_bytes(bytes).unsigned_abs().to_string();
            if !detect::is_card_number(digits.as_bytes()) {
                return None;
            }
            let rule = session.rule_of(Detector::CreditCard)?;
            counts[rule] += 1;
            session.keep(rule, digits.as_bytes(), b"0");
            Some(Some(vec![0; 8]))
        }
        Repr::Text | Repr::Json => {
            detect::scan(value, set, hits);
            if hits.is_empty() {
                return None;
            }
            let out = rewrite(value, hits, repr == Repr::Json, session, counts, Vec::new());
            Some(Some(out))
        }
        Repr::JsonbBinary => {
            let (&version, json) = value.split_first()?;
            detect::scan(json, set, hits);
            if hits.is_empty() {
                return None;
            }
            if version != 1 {
                // An unknown layout cannot be rewritten; the value held a match.
                for (range, d) in hits.iter() {
                    if let Some(rule) = session.rule_of(*d) {
                        counts[rule] += 1;
                        session.keep(rule, &json[range.clone()], b"NULL");
                    }
                }
                return Some(None);
            }
            Some(Some(rewrite(json, hits, true, session, counts, vec![1])))
        }
        Repr::ByteaHex | Repr::ByteaBinary | Repr::Zero(_) | Repr::Opaque => None,
    }
}

/// `value` with every hit replaced by its rule's strategy output, appended to `out`.
/// In JSON, a hit outside any string is written as a JSON string. Counts each rule once
/// per value.
pub(super) fn rewrite(
    value: &[u8],
    hits: &[Hit],
    json: bool,
    session: &Inner,
    counts: &mut [u64],
    mut out: Vec<u8>,
) -> Vec<u8> {
    out.reserve(value.len() + 16);
    let mut last = 0;
    let mut cursor = JsonCursor::default();
    let mut counted: Vec<usize> = Vec::new();
    for (range, detector) in hits {
        out.extend_from_slice(&value[last..range.start]);
        // Every active detector has a rule; the fallback keeps the value masked anyway.
        let rule = session.rule_of(*detector);
        let strategy = rule.map_or(Strategy::Redact, |r| session.rules[r].strategy());
        let quote = json && !cursor.in_string_at(value, range.start);
        if quote {
            out.push(b'"');
        }
        let at = out.len();
        strategy.apply_into(&value[range.clone()], &session.key, &mut out);
        if let Some(rule) = rule {
            session.keep(rule, &value[range.clone()], &out[at..]);
        }
        if quote {
            out.push(b'"');
        }
        if json {
            // The hit's bytes are gone from the output; the cursor must still see them
            // to keep track of strings (a hit may end inside one it did not start in).
            cursor.in_string_at(value, range.end);
        }
        if let Some(r) = rule {
            if !counted.contains(&r) {
                counted.push(r);
                if let Some(c) = counts.get_mut(r) {
                    *c += 1;
                }
            }
        }
        last = range.end;
    }
    out.extend_from_slice(&value[last..]);
    out
}

/// Tracks whether a position of JSON text is inside a string, scanning forward only.
#[derive(Debug, Default)]
struct JsonCursor {
    pos: usize,
    in_string: bool,
    escaped: bool,
}

impl JsonCursor {
    /// Advances to `target` (never backwards) and says whether it is inside a string.
    fn in_string_at(&mut self, text: &[u8], target: usize) -> bool {
        let target = target.min(text.len());
        while self.pos < target {
            let b = text[self.pos];
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
            } else if b == b'"' {
                self.in_string = true;
            }
            self.pos += 1;
        }
        self.in_string
    }
}
