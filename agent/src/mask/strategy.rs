//! What a masked value (or a detected substring) is replaced by.

use std::fmt::Write as _;

use hmac::{KeyInit, Mac};

use super::key::HashKey;

/// The fixed marker of [`Strategy::Redact`]: the same for every value, so it reveals
/// neither the value nor its length.
pub const REDACTED: &str = "[redacted]";

/// The prefix of [`Strategy::Hash`] outputs.
pub const HASH_PREFIX: &str = "hmac:";

/// The default `keep` of [`Strategy::Partial`].
pub const DEFAULT_KEEP: usize = 4;

/// How a value is masked. The outputs, exactly:
///
/// * `Redact`: [`REDACTED`], `[redacted]`.
/// * `Partial { keep }`: the value with every character (Unicode scalar value) but the
///   last `keep` replaced by `*`, so `4111111111111111` with keep 4 becomes
///   `************1111`. A value of `keep` characters or fewer becomes all `*`
///   (keeping all of it would mask nothing). A value that is not UTF-8 is read
///   lossily (each bad sequence is one U+FFFD).
/// * `Hash`: `hmac:` and the first 16 lower-case hex digits (64 bits) of
///   HMAC-SHA256(host key, value bytes): equal values give equal outputs under one host
///   key, across sessions and restarts, so masked columns can still be joined and
///   counted; without the key the value cannot be tested by guessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Redact,
    Partial { keep: usize },
    Hash,
}

impl Strategy {
    /// The name used in the configuration and in [`super::MaskedColumn::strategy`].
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Redact => "redact",
            Strategy::Partial { .. } => "partial",
            Strategy::Hash => "hash",
        }
    }

    /// Appends the masked form of `value` to `out`.
    pub fn apply_into(self, value: &[u8], key: &HashKey, out: &mut Vec<u8>) {
        match self {
            Strategy::Redact => out.extend_from_slice(REDACTED.as_bytes()),
            Strategy::Partial { keep } => partial(value, keep, out),
            Strategy::Hash => {
                out.extend_from_slice(HASH_PREFIX.as_bytes());
                out.extend_from_slice(hmac_hex16(key, value).as_bytes());
            }
        }
    }

    /// The masked form of `value`.
    pub fn apply(self, value: &[u8], key: &HashKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len().max(REDACTED.len()));
        self.apply_into(value, key, &mut out);
        out
    }
}

fn partial(value: &[u8], keep: usize, out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(value);
    let count = text.chars().count();
    let hidden = if count <= keep { count } else { count - keep };
    out.extend(std::iter::repeat_n(b'*', hidden));
    // The kept tail, as UTF-8.
    let tail_start = text
        .char_indices()
        .nth(hidden)
        .map_or(text.len(), |(i, _)| i);
    out.extend_from_slice(text[tail_start..].as_bytes());
}

/// The first 16 hex digits of HMAC-SHA256(key, value).
fn hmac_hex16(key: &HashKey, value: &[u8]) -> String {
    // HMAC takes a key of any length, so this cannot fail (and the key is ours, not
    // input).
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(value);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(16);
    for byte in &digest[..8] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}
