//! The journal events of a PostgreSQL session: their kinds and payloads, one type each,
//! written by the proxy ([`super::flow`], [`super::serve`]) and read back by `replay`,
//! `export`, `events` and the filters (through `cli::views::postgres`). Fields borrow
//! (`Cow`) so the writer serializes without copying and a reader deserializes from a
//! stored `serde_json::Value` without copying either (`Statement::read(&value)`).
//!
//! Changing a field here changes the journal format: old journals must stay readable
//! (new fields optional, `#[serde(default)]`). Readers are lenient: only what makes an
//! event what it is is required (a statement's `text`); the rest defaults.
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::mask::MaskedColumn;

/// The event kinds of a PostgreSQL session.
pub mod kind {
    /// [`super::Startup`]: the client's start-up packet, once.
    pub const STARTUP: &str = "pg_startup";
    /// Authentication: method, whether the agent answered with its credential, error.
    pub const AUTH: &str = "pg_auth";
    /// [`super::Statement`]: one statement, judged, before it is forwarded or refused.
    pub const STATEMENT: &str = "statement";
    /// [`super::StatementEnd`]: how the statement of the same `seq` ended.
    pub const STATEMENT_END: &str = "statement_end";
    /// A CancelRequest on this connection (forwarded or not).
    pub const CANCEL: &str = "pg_cancel";
    /// This session's statement was cancelled by another connection's request.
    pub const CANCEL_REQUESTED: &str = "pg_cancel_requested";
}

/// Kind [`kind::STARTUP`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Startup<'a> {
    /// The user the client asked for.
    #[serde(borrow)]
    pub user: Cow<'a, str>,
    /// The user the agent logged in as (differs when it holds the credential).
    #[serde(borrow)]
    pub db_user: Cow<'a, str>,
    #[serde(borrow)]
    pub database: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<Cow<'a, str>>,
    /// The other start-up parameters, in order.
    #[serde(borrow, default)]
    pub params: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    #[serde(borrow, default)]
    pub protocol_version: Cow<'a, str>,
    #[serde(default)]
    pub client_tls: bool,
    #[serde(default)]
    pub credential_injected: bool,
}

impl<'a> Startup<'a> {
    /// The start-up event stored as `data` (borrowing from it); `None` if it is not one.
    pub fn read(data: &'a serde_json::Value) -> Option<Startup<'a>> {
        Startup::deserialize(data).ok()
    }
}

/// Kind [`kind::STATEMENT`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Statement<'a> {
    #[serde(default)]
    pub seq: u64,
    /// "simple", "extended" or "function".
    #[serde(borrow, default)]
    pub protocol: Cow<'a, str>,
    #[serde(borrow)]
    pub text: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub portal: Option<Cow<'a, str>>,
    /// Bound parameters, through the session's mask detectors.
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    pub params: Cow<'a, [String]>,
    /// Statement kinds (select, insert, drop, ...), each once.
    #[serde(borrow, default)]
    pub kinds: Vec<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    pub tables: Cow<'a, [String]>,
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    pub functions: Cow<'a, [String]>,
    /// The policy's verdict: "allow", "approve", "deny".
    #[serde(borrow, default)]
    pub verdict: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Cow<'a, str>>,
    /// False in observe mode: the verdict was only recorded.
    #[serde(default = "yes")]
    pub enforced: bool,
    /// What the agent did: "forwarded", "refused", "held".
    #[serde(borrow, default)]
    pub action: Cow<'a, str>,
}

fn yes() -> bool {
    true
}

/// Kind [`kind::STATEMENT_END`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatementEnd<'a> {
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub duration_us: u64,
    /// The command tag (`SELECT 3`, `INSERT 0 1`).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    pub columns: Cow<'a, [String]>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<MaskedColumn>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorSummary<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyCount>,
    /// The result rows, masked, with `record_results = "rows"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_rows: Option<Cow<'a, [Vec<Option<String>>]>>,
    /// Observe mode: masks were computed and journaled but the client got the values.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mask_not_enforced: bool,
    /// Why the statement has no result (not run, ...).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Cow<'a, str>>,
}

/// The error a statement ended with (the server's, or the agent's refusal).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorSummary<'a> {
    #[serde(borrow)]
    pub sqlstate: Cow<'a, str>,
    #[serde(borrow)]
    pub message: Cow<'a, str>,
}

/// What a COPY moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyCount {
    pub direction: CopyDirection,
    pub messages: u64,
    pub bytes: u64,
}

/// The direction of a COPY: `in` (to the server) or `out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyDirection {
    In,
    Out,
}

impl<'a> Statement<'a> {
    /// The statement event stored as `data` (borrowing from it); `None` if it is not one.
    pub fn read(data: &'a serde_json::Value) -> Option<Statement<'a>> {
        Statement::deserialize(data).ok()
    }
}

impl<'a> StatementEnd<'a> {
    /// The statement end stored as `data` (borrowing from it); `None` if it is not one.
    pub fn read(data: &'a serde_json::Value) -> Option<StatementEnd<'a>> {
        StatementEnd::deserialize(data).ok()
    }

    /// Whether the result had masked values.
    pub fn has_masks(&self) -> bool {
        !self.masked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_the_same() {
        let params = vec!["$1=42".to_string()];
        let tables = vec!["users".to_string()];
        let written = Statement {
            seq: 3,
            protocol: "extended".into(),
            text: "select email from users where id = $1".into(),
            statement: Some("s1".into()),
            portal: None,
            params: Cow::Borrowed(&params),
            kinds: vec!["select".into()],
            tables: Cow::Borrowed(&tables),
            functions: Cow::Borrowed(&[]),
            verdict: "allow".into(),
            rule: None,
            enforced: true,
            action: "forwarded".into(),
        };
        let value = serde_json::to_value(&written).expect("serialize");
        assert_eq!(Statement::read(&value), Some(written));
        let end = StatementEnd {
            seq: 3,
            duration_us: 900,
            tag: Some("SELECT 1".into()),
            rows: Some(1),
            masked: vec![MaskedColumn {
                column: "email".into(),
                rule: "pii".into(),
                strategy: "hash".into(),
                values: 1,
            }],
            copy: Some(CopyCount {
                direction: CopyDirection::Out,
                messages: 2,
                bytes: 10,
            }),
            ..StatementEnd::default()
        };
        let value = serde_json::to_value(&end).expect("serialize");
        let read = StatementEnd::read(&value).expect("reads");
        assert_eq!(read, end);
        assert!(read.has_masks());
    }

    /// Journals written before a field existed still read: the optional fields default.
    #[test]
    fn the_minimal_stored_forms_read() {
        let value = serde_json::json!({"seq": 1, "protocol": "simple", "text": "select 1",
            "verdict": "allow", "action": "forwarded"});
        let s = Statement::read(&value).expect("reads");
        assert!(s.enforced && s.kinds.is_empty() && s.rule.is_none());
        let end = serde_json::json!({"seq": 2, "error": {"sqlstate": "42501", "message": "no"}});
        let e = StatementEnd::read(&end).expect("reads");
        assert_eq!(e.error.map(|e| e.sqlstate), Some("42501".into()));
        assert!(Statement::read(&serde_json::json!({"pid": 1})).is_none());
    }
}
