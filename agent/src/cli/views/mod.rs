//! What the CLI knows about each protocol's journal events, registered by the value of
//! a session's `protocol` column: how `replay` renders its events and how `export
//! --format ocsf` maps its requests. The readers (`replay`, `ocsf`) only ask
//! [`view`]; a new protocol adds a view here instead of new string matches in each reader.
//! What every session has (start, chunks, end) is the [`opaque`] view's, which the
//! others fall back to.
use std::io::{self, Write};

use serde_json::Value;

use super::select::Selected;
use crate::journal::{EventRow, SessionRow};

pub mod http;
pub mod opaque;
pub mod postgres;

/// A replay rendering of one session's events (after the header and lineage chain).
pub trait Replay {
    /// Writes one event (in journal order).
    fn event(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<()>;
    /// Writes the closing summary.
    fn finish(self: Box<Self>, out: &mut dyn Write) -> io::Result<()>;
}

/// Maps a protocol's request events to OCSF events (session open/close are mapped for
/// every protocol by `cli::ocsf`).
pub trait OcsfRequests {
    /// Feeds one event of a session of this protocol; returns the OCSF events it completes.
    fn push(&mut self, s: &Selected<'_>) -> Vec<Value>;
    /// The requests that never completed, in journal order.
    fn finish(self: Box<Self>) -> Vec<Value>;
}

/// One protocol's way of reading its events.
pub trait ProtocolView: Sync {
    /// The `protocol` value of the sessions it reads.
    fn protocol(&self) -> &'static str;
    /// A replay rendering for `session`.
    fn replay(&self, session: &SessionRow) -> Box<dyn Replay>;
    /// Its OCSF mapping of requests, if it has requests.
    fn ocsf(&self) -> Option<Box<dyn OcsfRequests>> {
        None
    }
    /// A one-line summary of one of its events for the `events` table, when it has a
    /// better one than the generic rendering (`None`).
    fn detail(&self, _kind: &str, _data: &Value) -> Option<String> {
        None
    }
}

/// The registered views; sessions of any other protocol read as opaque streams.
static VIEWS: &[&dyn ProtocolView] = &[&postgres::Postgres, &http::Http];

/// The view for sessions whose `protocol` is `protocol`.
pub fn view(protocol: &str) -> &'static dyn ProtocolView {
    VIEWS
        .iter()
        .copied()
        .find(|v| v.protocol() == protocol)
        .unwrap_or(&opaque::Opaque)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_found_by_protocol_with_opaque_as_fallback() {
        assert_eq!(view("postgres").protocol(), "postgres");
        assert_eq!(view("tcp").protocol(), "tcp");
        assert_eq!(view("something-newer").protocol(), "tcp");
        assert!(view("postgres").ocsf().is_some());
        assert!(view("tcp").ocsf().is_none());
        assert_eq!(view("http").protocol(), "http");
        assert!(view("http").ocsf().is_some());
    }
}
