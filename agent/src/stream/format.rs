//! What a stream sends: [`Record`]s, made from journal events by a [`Formatter`]. The
//! formatter is the export's (`cli::stream_format`, the same JSON and OCSF as `nhi-agent
//! export`), handed in by `cli::run` so that `stream` imports nothing of `cli`.
use super::config::{Filters, Format};
use super::source::Item;

/// One event as sent, with what identifies it in the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub journal_id: String,
    pub event_id: i64,
    /// Hex SHA-256 of the event in the chain (`None` only for rows older than the chain).
    pub event_hash: Option<String>,
    /// The journal event kind (of the first event, for an OCSF event that folds several).
    pub kind: String,
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    /// Syslog severity (RFC 5424: 4 warning, 5 notice, 6 informational).
    pub severity: u8,
    /// The event, serialized (one line of JSON).
    pub body: String,
}

/// Formats the events of one stream, in journal order. It is made on the stream's own
/// thread, so it need not be `Send`.
pub trait Formatter {
    /// The records `item` makes (none when filtered out, or held to be completed by
    /// later events).
    fn push(&mut self, item: &Item) -> Vec<Record>;
    /// How far the cursor may move once the records of the events up to `last_read`
    /// were sent: not past an event held for a record not made yet.
    fn safe_cursor(&self, last_read: i64) -> i64;
}

/// Makes a stream's formatter for its format and filters.
pub type MakeFormatter = fn(Format, Filters) -> Box<dyn Formatter>;
