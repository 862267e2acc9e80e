//! The view every session has: an opaque stream of chunks between its start and end
//! (`protocol = "tcp"`, and any protocol without a view of its own).
use std::io::{self, Write};

use super::{ProtocolView, Replay};
use crate::cli::replay::{format_offset_us, us_since_epoch};
use crate::cli::sessions::sanitize;
use crate::journal::{EventKind, EventRow, SessionRow};

/// Opaque TCP: a chunk timeline (offset, direction, size, gap). The journal records the
/// size and time of each chunk, not its bytes, so there is no payload preview.
pub struct Opaque;

impl ProtocolView for Opaque {
    fn protocol(&self) -> &'static str {
        "tcp"
    }

    fn replay(&self, session: &SessionRow) -> Box<dyn Replay> {
        Box::new(Timeline::new(session))
    }
}

impl Replay for Timeline {
    fn event(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<()> {
        Timeline::event(self, out, event)
    }

    fn finish(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        Timeline::finish(*self, out)
    }
}

/// Renders events one per line, keeping what is needed for gaps and the closing summary.
pub struct Timeline {
    pub start_us: i64,
    pub previous_chunk_us: Option<i64>,
    pub chunks: u64,
    pub bytes_c2s: u64,
    pub bytes_s2c: u64,
}

impl Timeline {
    pub fn new(session: &SessionRow) -> Self {
        Timeline {
            start_us: us_since_epoch(session.started_at),
            previous_chunk_us: None,
            chunks: 0,
            bytes_c2s: 0,
            bytes_s2c: 0,
        }
    }

    /// Writes one event: chunks with their gap, start and end, and any other kind as
    /// stored (kinds added by later versions are shown, not guessed at).
    pub fn event(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<()> {
        let at_us = us_since_epoch(event.at);
        let offset = format_offset_us(at_us.saturating_sub(self.start_us));
        match (&event.kind, event.direction, event.size) {
            (EventKind::Chunk, Some(direction), Some(size)) => {
                self.chunks += 1;
                match direction {
                    crate::journal::Direction::ClientToServer => self.bytes_c2s += u64::from(size),
                    crate::journal::Direction::ServerToClient => self.bytes_s2c += u64::from(size),
                }
                // The first chunk has no previous one: its offset already says it all.
                let gap = self
                    .previous_chunk_us
                    .map(|prev| format!("  gap {}", format_offset_us(at_us.saturating_sub(prev))))
                    .unwrap_or_default();
                self.previous_chunk_us = Some(at_us);
                writeln!(out, "  {offset}  {}  {size:>10} B{gap}", direction.human())
            }
            (EventKind::SessionStart, _, _) => writeln!(out, "  {offset}  session start"),
            (EventKind::SessionEnd, _, _) => {
                let reason = event
                    .data
                    .as_ref()
                    .and_then(|d| d.get("close_reason"))
                    .and_then(|r| r.as_str());
                match reason {
                    Some(reason) => {
                        writeln!(out, "  {offset}  session end: {}", sanitize(reason))
                    }
                    None => writeln!(out, "  {offset}  session end"),
                }
            }
            // Kinds added by later versions, or a chunk missing its fields: show what the
            // journal holds rather than guessing.
            (kind, _, _) => {
                let mut line = format!("  {offset}  {}", sanitize(kind.as_str()));
                if let Some(direction) = event.direction {
                    line.push_str(&format!("  {}", direction.human()));
                }
                if let Some(size) = event.size {
                    line.push_str(&format!("  {size} B"));
                }
                if let Some(data) = &event.data {
                    line.push_str(&format!("  {}", sanitize(&data.to_string())));
                }
                writeln!(out, "{line}")
            }
        }
    }

    pub fn finish(self, out: &mut dyn Write) -> io::Result<()> {
        let plural = if self.chunks == 1 { "" } else { "s" };
        writeln!(
            out,
            "  {} chunk{plural} journaled: ↑ {} bytes, ↓ {} bytes",
            self.chunks, self.bytes_c2s, self.bytes_s2c
        )
    }
}
