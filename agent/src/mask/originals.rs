//! Originals of masked values, kept for auditors (`[evidence] auditor_recipients`).
//!
//! A session's masks carry an [`Originals`] when the agent seals originals: every value
//! a configured rule masks (a whole column or member, a detected substring) is pushed
//! here with its masked form, and the journal takes the pending batch with the session's
//! next record, encrypts it to the auditors and chains it as one `sealed_originals`
//! event (see `evidence::auditor`). Pure: nothing here encrypts or writes.
//!
//! Rules the agent adds itself (`MaskRule::builtin`: AWS secret fields, the SSH
//! credential detectors) and the injected secret are never kept: they hide credentials,
//! which no one, auditors included, is to read from the journal.
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One masked value: the rule that masked it, what the client and the journal got, and
/// what it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    pub rule: String,
    pub masked: String,
    pub original: String,
}

/// What a session collected since its last record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub values: Vec<Original>,
    /// Originals not kept because the session reached its limit (counted, so the
    /// auditor knows the sealed set is incomplete).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.omitted == 0
    }
}

/// The originals one session collects. Shared by the session's maskers (`Arc`), taken
/// by the journal.
#[derive(Debug)]
pub struct Originals {
    /// The most original bytes one session keeps; beyond it values are counted only.
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pending: Batch,
    /// Original bytes kept over the session so far.
    kept_bytes: u64,
}

impl Originals {
    pub fn new(max_bytes: u64) -> Originals {
        Originals {
            max_bytes,
            state: Mutex::new(State::default()),
        }
    }

    /// Keeps one value `rule` masked.
    pub fn push(&self, rule: &str, original: &[u8], masked: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let size = original.len() as u64;
        if state.kept_bytes.saturating_add(size) > self.max_bytes {
            state.pending.omitted += 1;
            return;
        }
        state.kept_bytes += size;
        state.pending.values.push(Original {
            rule: rule.to_owned(),
            masked: readable(masked),
            original: readable(original),
        });
    }

    /// What was collected since the last call (`None`: nothing).
    pub fn take(&self) -> Option<Batch> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.pending.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut state.pending))
    }

    /// Whether anything waits to be taken.
    pub fn is_pending(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        !state.pending.is_empty()
    }
}

/// UTF-8 as it is; anything else as `\x` and hex (binary values, bytea).
fn readable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => format!("\\x{}", crate::hex::encode(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_until_the_limit_then_counted() {
        let o = Originals::new(10);
        assert_eq!(o.take(), None);
        o.push("r", b"alice@x.io", b"[redacted]");
        o.push("r", b"b", b"*");
        let batch = o.take().unwrap();
        assert_eq!(batch.values.len(), 1);
        assert_eq!(batch.values[0].original, "alice@x.io");
        assert_eq!(batch.values[0].masked, "[redacted]");
        assert_eq!(batch.omitted, 1);
        assert_eq!(o.take(), None);
        o.push("r", &[0xff, 0x00], b"\0");
        assert_eq!(o.take().unwrap().omitted, 1, "the limit is per session");
        let o = Originals::new(100);
        o.push("r", &[0xff, 0x00], &[0, 0]);
        let b = o.take().unwrap();
        assert_eq!(b.values[0].original, "\\xff00");
        assert_eq!(b.values[0].masked, "\0\0", "NUL bytes are UTF-8");
    }
}
