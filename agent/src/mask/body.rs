//! Masking of documents rather than result rows: JSON (member names matched by the
//! rules' `columns` globs, at any depth; detectors on every string and, for
//! `credit_card`, on integers) and free text (detectors). Used for HTTP bodies.
//!
//! JSON is validated first (serde_json; nesting is bounded at 128 levels), then
//! walked over its bytes: only the ranges of masked values are rewritten, everything
//! else (whitespace, member order, number spellings, duplicate names) is copied as is.
//!
//! What becomes of a masked JSON value:
//! * a member whose name matches a rule's `columns` glob is masked whole by the first
//!   such rule, whatever it holds: a string by the strategy applied to its text, a
//!   number, boolean, object or array by the strategy applied to its JSON text; the
//!   result is a JSON string (`"[redacted]"`). `null` stays `null` and is not counted.
//!   Inside a masked member nothing else is looked at.
//! * every other string (member names included) is scanned by the detectors; each hit
//!   is replaced in place by the strategy of the first rule listing that detector.
//! * an integer of 13 to 19 digits that is a valid card number becomes a string of its
//!   masked form when a rule lists `credit_card`.
//!
//! The secret an HTTP target injects is replaced by [`SECRET_MASK`] wherever it appears
//! in a string or a text line (counted apart: it is not a rule of the configuration).
//!
//! XML documents are masked by [`BodyMasker::mask_xml`] (xml.rs), element names standing
//! for member names.
use std::borrow::Cow;
use std::sync::Arc;

use memchr::memmem;
use serde::{Deserialize, Serialize};

use super::detect::{self, Detector, Hit};
use super::row;
use super::Inner;

/// What replaces an echo of an injected secret.
pub const SECRET_MASK: &str = "[redacted by nhi-agent]";

/// How many values one rule masked in a document (or a stream of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedValues {
    /// The rule's name.
    pub rule: String,
    /// `redact`, `partial` or `hash`.
    pub strategy: Cow<'static, str>,
    /// Values (strings, members, numbers, text lines) changed.
    pub values: u64,
}

/// A JSON document that cannot be masked: not JSON at all, or nested deeper than the
/// parser allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not valid JSON: {0}")]
pub struct NotJson(pub String);

/// Masks documents for one session (or one HTTP response) and counts what it masked.
#[derive(Debug)]
pub struct BodyMasker {
    pub(super) session: Arc<Inner>,
    /// Values masked per rule (index into the session's rules).
    pub(super) counts: Vec<u64>,
    /// Echoes of the injected secret replaced.
    pub(super) secret_echoes: u64,
    hits: Vec<Hit>,
}

impl BodyMasker {
    pub(super) fn new(session: Arc<Inner>) -> BodyMasker {
        BodyMasker {
            counts: vec![0; session.rules.len()],
            session,
            secret_echoes: 0,
            hits: Vec::new(),
        }
    }

    /// Masks one JSON document. `Ok(None)`: nothing changed (send the original bytes).
    pub fn mask_json(
        &mut self,
        json: &[u8],
        secret: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, NotJson> {
        // A protocol's own transform first (Kubernetes Secrets' values), then the rules.
        if let Some((transform, rule)) = self.session.transform {
            if let Some((changed, values)) = transform(json).map_err(NotJson)? {
                self.counts[rule] += values;
                return Ok(Some(self.walk_json(&changed, secret)?.unwrap_or(changed)));
            }
        }
        self.walk_json(json, secret)
    }

    /// The rules' masking of one JSON document.
    fn walk_json(
        &mut self,
        json: &[u8],
        secret: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, NotJson> {
        serde_json::from_slice::<serde::de::IgnoredAny>(json)
            .map_err(|e| NotJson(e.to_string()))?;
        let secret = secret.filter(|s| !s.is_empty());
        let mut walk = Walk {
            src: json,
            pos: 0,
            out: Vec::new(),
            copied: 0,
            masker: self,
            secret: secret.map(memmem::Finder::new),
            depth: 0,
            too_deep: false,
        };
        walk.value(None);
        if walk.too_deep {
            return Err(NotJson(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        if walk.copied == 0 {
            return Ok(None);
        }
        let Walk {
            mut out, copied, ..
        } = walk;
        out.extend_from_slice(&json[copied..]);
        Ok(Some(out))
    }

    /// Masks free text (a line of a text body): detectors and the secret. `None`:
    /// unchanged.
    pub fn mask_text(&mut self, text: &[u8], secret: Option<&[u8]>) -> Option<Vec<u8>> {
        let secret = secret.filter(|s| !s.is_empty()).map(memmem::Finder::new);
        self.text(text, secret.as_ref())
    }

    /// Free text through the secret then the detectors (a JSON string, an XML text
    /// node or attribute value); `None`: unchanged.
    pub(super) fn text(
        &mut self,
        text: &[u8],
        secret: Option<&memmem::Finder<'_>>,
    ) -> Option<Vec<u8>> {
        let mut replaced: Option<Vec<u8>> = None;
        if let Some(finder) = secret {
            if finder.find(text).is_some() {
                let mut out = Vec::with_capacity(text.len());
                let mut rest = text;
                while let Some(at) = finder.find(rest) {
                    out.extend_from_slice(&rest[..at]);
                    out.extend_from_slice(SECRET_MASK.as_bytes());
                    rest = &rest[at + finder.needle().len()..];
                    self.secret_echoes += 1;
                }
                out.extend_from_slice(rest);
                replaced = Some(out);
            }
        }
        let inner = &*self.session;
        if inner.detectors.is_empty() {
            return replaced;
        }
        let current = replaced.as_deref().unwrap_or(text);
        detect::scan(current, inner.detectors, &mut self.hits);
        if self.hits.is_empty() {
            return replaced;
        }
        Some(row::rewrite(
            current,
            &self.hits,
            false,
            inner,
            &mut self.counts,
            Vec::new(),
        ))
    }

    /// Counts a whole text value masked by `rule` (a multi-line private key's lines).
    pub fn count_rule_of(&mut self, detector: Detector) {
        if let Some(rule) = self.session.rule_of(detector) {
            self.counts[rule] += 1;
        }
    }

    /// Whether a detector is active in this session.
    pub fn detects(&self, detector: Detector) -> bool {
        self.session.detectors.contains(detector)
    }

    /// What was masked so far, per rule (rules that masked nothing are left out).
    pub fn masked(&self) -> Vec<MaskedValues> {
        self.session
            .rules
            .iter()
            .zip(&self.counts)
            .filter(|(_, n)| **n > 0)
            .map(|(rule, n)| MaskedValues {
                rule: rule.name().to_owned(),
                strategy: rule.strategy_name().into(),
                values: *n,
            })
            .collect()
    }

    /// Values masked so far, all rules together.
    pub fn masked_total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Echoes of the injected secret replaced so far.
    pub fn secret_echoes(&self) -> u64 {
        self.secret_echoes
    }
}

/// One walk over a valid JSON document, copying it to `out` with replacements.
struct Walk<'s, 'm> {
    src: &'s [u8],
    pos: usize,
    /// Output so far; `src[copied..pos]` is still to be copied.
    out: Vec<u8>,
    copied: usize,
    masker: &'m mut BodyMasker,
    secret: Option<memmem::Finder<'m>>,
    depth: usize,
    too_deep: bool,
}

/// The deepest nesting walked (serde_json's own parser stops at 128 as well; its
/// validation of an ignored value does not, so the walk checks). XML element nesting
/// has the same bound (xml.rs).
pub(super) const MAX_DEPTH: usize = 128;

impl Walk<'_, '_> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.src.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> u8 {
        self.src.get(self.pos).copied().unwrap_or(0)
    }

    /// Keeps the original of a value `rule` masked whole for the auditors, unless it
    /// holds the injected secret.
    fn keep(&self, rule: usize, original: &[u8], masked: &[u8]) {
        if self
            .secret
            .as_ref()
            .is_some_and(|f| f.find(original).is_some())
        {
            return;
        }
        self.masker.session.keep(rule, original, masked);
    }

    /// Replaces `src[start..self.pos]` by `with`.
    fn replace(&mut self, start: usize, with: &[u8]) {
        self.out.extend_from_slice(&self.src[self.copied..start]);
        self.out.extend_from_slice(with);
        self.copied = self.pos;
    }

    /// One value at `pos` (the document is valid, so every token is well-formed).
    /// `whole`: the rule that masks this value whole (its member name matched).
    fn value(&mut self, whole: Option<usize>) {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.too_deep = true;
            self.pos = self.src.len();
        } else {
            self.value_at(whole);
        }
        self.depth -= 1;
    }

    fn value_at(&mut self, whole: Option<usize>) {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            b'{' => {
                self.pos += 1;
                if whole.is_some() {
                    self.skip_container(start, whole);
                    return;
                }
                loop {
                    self.skip_ws();
                    match self.peek() {
                        b'}' => {
                            self.pos += 1;
                            return;
                        }
                        b',' => {
                            self.pos += 1;
                            continue;
                        }
                        b'"' => {}
                        _ => return, // unreachable in valid JSON
                    }
                    let name = self.string(None, true);
                    let rule = name.as_deref().and_then(|n| {
                        self.masker
                            .session
                            .rules
                            .iter()
                            .position(|r| r.masks_column(n))
                    });
                    self.skip_ws();
                    if self.peek() == b':' {
                        self.pos += 1;
                    }
                    self.value(rule);
                }
            }
            b'[' => {
                self.pos += 1;
                if whole.is_some() {
                    self.skip_container(start, whole);
                    return;
                }
                loop {
                    self.skip_ws();
                    match self.peek() {
                        b']' => {
                            self.pos += 1;
                            return;
                        }
                        b',' => {
                            self.pos += 1;
                        }
                        0 => return,
                        _ => self.value(None),
                    }
                }
            }
            b'"' => {
                self.string(whole, false);
            }
            _ => {
                while let Some(b) = self.src.get(self.pos) {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.pos += 1;
                }
                let token = &self.src[start..self.pos];
                if token == b"null" {
                    return;
                }
                let inner = Arc::clone(&self.masker.session);
                let (rule, text): (Option<usize>, &[u8]) = match whole {
                    Some(rule) => (Some(rule), token),
                    None => {
                        let digits = token.strip_prefix(b"-").unwrap_or(token);
                        if inner.detectors.contains(Detector::CreditCard)
                            && detect::is_card_number(digits)
                        {
                            (inner.rule_of(Detector::CreditCard), digits)
                        } else {
                            (None, token)
                        }
                    }
                };
                if let Some(rule) = rule {
                    let masked = inner.rules[rule].strategy().apply(text, &inner.key);
                    self.masker.counts[rule] += 1;
                    self.keep(rule, text, &masked);
                    let quoted = json_string(&masked);
                    self.replace(start, &quoted);
                }
            }
        }
    }

    /// Skips the rest of an object or array opened at `start` (its opening byte read)
    /// and masks it whole by `whole`.
    fn skip_container(&mut self, start: usize, whole: Option<usize>) {
        let mut depth = 1usize;
        while depth > 0 && self.pos < self.src.len() {
            match self.src[self.pos] {
                b'"' => {
                    self.skip_string();
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth -= 1,
                _ => {}
            }
            self.pos += 1;
        }
        if let Some(rule) = whole {
            let inner = Arc::clone(&self.masker.session);
            let masked = inner.rules[rule]
                .strategy()
                .apply(&self.src[start..self.pos], &inner.key);
            self.masker.counts[rule] += 1;
            self.keep(rule, &self.src[start..self.pos], &masked);
            let quoted = json_string(&masked);
            self.replace(start, &quoted);
        }
    }

    /// Moves `pos` past the string starting at `pos`.
    fn skip_string(&mut self) {
        self.pos += 1;
        while let Some(&b) = self.src.get(self.pos) {
            self.pos += 1;
            match b {
                b'\\' => self.pos += 1,
                b'"' => return,
                _ => {}
            }
        }
    }

    /// The string at `pos`: masks it (whole by `whole`, else by the detectors and the
    /// secret); with `want`, returns its original text (a member name, for its rule).
    fn string(&mut self, whole: Option<usize>, want: bool) -> Option<String> {
        let start = self.pos;
        self.skip_string();
        let raw = &self.src[start..self.pos];
        let body = &raw[1..raw.len().saturating_sub(1).max(1)];
        let text: Cow<'_, str> = if body.contains(&b'\\') {
            Cow::Owned(serde_json::from_slice::<String>(raw).unwrap_or_default())
        } else {
            String::from_utf8_lossy(body)
        };
        let inner = Arc::clone(&self.masker.session);
        let replacement = match whole {
            Some(rule) => {
                self.masker.counts[rule] += 1;
                let masked = inner.rules[rule]
                    .strategy()
                    .apply(text.as_bytes(), &inner.key);
                self.keep(rule, text.as_bytes(), &masked);
                Some(masked)
            }
            None => self.masker.text(text.as_bytes(), self.secret.as_ref()),
        };
        if let Some(new) = replacement {
            let quoted = json_string(&new);
            self.replace(start, &quoted);
        }
        want.then(|| text.into_owned())
    }
}

/// A JSON string literal holding `text` (read lossily if it is not UTF-8).
fn json_string(text: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&String::from_utf8_lossy(text)).unwrap_or_else(|_| b"null".to_vec())
}
