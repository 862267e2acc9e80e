//! Response masking: sensitive values in query results are rewritten before they reach
//! the client and before anything is journaled.
//!
//! Pure, apart from [`HashKey::load_or_create`]: columns and rows in, rewritten rows
//! and statistics out.
//!
//! # Configuration
//!
//! A top-level array of tables in the agent's configuration file:
//!
//! ```toml
//! [[mask]]
//! name = "contact-data"        # required, unique across masks
//! workload = "*"               # glob over workload names, default "*"
//! target = "*"                 # glob over target names, default "*"
//! columns = ["email", "*_email", "card*"]   # globs over result column names, case-insensitive
//! detectors = ["email", "credit_card"]      # or ["all"]
//! strategy = "redact"          # "redact" (default) | "partial" | "hash"
//! keep = 4                     # partial only: the last N characters stay visible (default 4)
//! ```
//!
//! A column whose name matches a rule's `columns` is masked whole, whatever it holds,
//! by the first such rule (file order). Every other column's text values are scanned by
//! every detector any rule lists (except text forms that cannot hold any detector's
//! shape: booleans, int2/int4/oid, floats, dates and times, intervals, UUIDs, network
//! addresses; int8 and numeric only for `credit_card`); a detected substring is replaced in place using the
//! strategy of the first rule (file order) listing that detector. The outputs of the
//! strategies are documented on [`Strategy`]: `redact` gives `[redacted]`, `partial`
//! gives `************1111`, `hash` gives `hmac:` + 16 hex digits.
//!
//! # Data path
//!
//! [`SessionMasks`] holds the rules governing one session (filtered with
//! [`MaskRule::applies_to`]). On each RowDescription the proxy calls
//! [`SessionMasks::plan`] and gets a [`RowMasker`]; if [`RowMasker::is_noop`] it
//! forwards DataRows untouched, otherwise it calls [`RowMasker::mask_values`] on each (`protocol::postgres::encode::mask_data_row`) and
//! forwards the new frame when there is one. [`RowMasker::masked_columns`] says what
//! was masked, for the journal.
//!
//! HTTP bodies are masked by [`BodyMasker`] (see `body.rs`): `columns` globs match JSON
//! member names at any depth, detectors read every JSON string and text line. XML bodies
//! (AWS query and REST-XML APIs) likewise (see `xml.rs`): `columns` globs match element
//! local names, detectors read every text node and attribute value.
//!
//! # Formats
//!
//! Text-format values are text for every type. A masked text-format value of a
//! non-text type (an int8 column matched by `columns`, or holding a card number) is
//! replaced by the strategy's text, which a client parsing the column as its type may
//! reject: that is the price of not leaking. JSON values (json, jsonb) stay valid JSON:
//! a whole masked value becomes a JSON string (`"[redacted]"`), and a detected
//! substring outside a string becomes a string. Text-format bytea masks to `\x` + the
//! hex of the strategy's output.
//!
//! Binary values: text, varchar, bpchar, name, unknown and json are their UTF-8 text
//! and are treated like text; jsonb is a version byte (1) and JSON text. Masked whole,
//! int2/int4/int8/oid become 0, float4/float8 0.0, bool false, numeric 0, bytea the
//! strategy's output bytes, anything else NULL: never the raw value. Detectors scan the
//! text-like binary types, and binary int8 (its decimal digits) for `credit_card`
//! only; binary numeric, arrays, composites and other types are not scanned.
#![forbid(unsafe_code)]

pub mod argv;
mod body;
mod detect;
mod key;
pub mod originals;
mod row;
mod rule;
mod strategy;
mod xml;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::Arc;

pub use body::{BodyMasker, MaskedValues, NotJson, SECRET_MASK};
pub use detect::{Detector, DetectorSet};
pub use key::{HashKey, MaskError, KEY_LEN};
pub use originals::Originals;
pub use row::{ColumnInfo, MaskedColumn, RowMasker};
pub use rule::{MaskProblem, MaskRule, RawMaskRule, MAX_KEEP};
pub use strategy::{Strategy, DEFAULT_KEEP, HASH_PREFIX, REDACTED};
pub use xml::NotXml;

/// The masks that govern one session (already filtered by workload and target). Cheap
/// to clone: an `Arc` inside.
#[derive(Clone, Debug)]
pub struct SessionMasks {
    inner: Arc<Inner>,
}

/// What a session's masks compile to.
#[derive(Debug)]
pub(crate) struct Inner {
    rules: Vec<MaskRule>,
    key: Arc<HashKey>,
    /// Every detector some rule lists.
    detectors: DetectorSet,
    /// Per detector (index `Detector as usize`), the first rule listing it.
    detector_rule: [Option<usize>; Detector::ALL.len()],
    /// A protocol's transform of whole JSON documents, run before the rules, and the
    /// index of the rule its changes are counted under.
    transform: Option<(JsonTransform, usize)>,
    /// Where the originals of masked values go, when they are sealed for auditors.
    originals: Option<Arc<Originals>>,
}

/// A transform of one JSON document that knows its protocol's structure (Kubernetes
/// Secrets' values, which must stay valid base64): `Ok(None)` when nothing changed,
/// else the new document and how many values it masked; `Err` when the document cannot
/// be read (it is then refused, never passed).
pub type JsonTransform = fn(&[u8]) -> Result<Option<(Vec<u8>, u64)>, String>;

impl Inner {
    fn rule_of(&self, detector: Detector) -> Option<usize> {
        self.detector_rule[detector as usize]
    }

    /// Keeps the original of a value `rule` masked, for the auditors (a no-op unless
    /// originals are collected, and for the agent's own rules).
    #[inline]
    fn keep(&self, rule: usize, original: &[u8], masked: &[u8]) {
        if let Some(originals) = &self.originals {
            if let Some(rule) = self.rules.get(rule).filter(|r| !r.is_builtin()) {
                originals.push(rule.name(), original, masked);
            }
        }
    }
}

impl SessionMasks {
    /// The masks of `rules`, in the order given (which decides which rule masks a
    /// column or owns a detector when several could), hashing with `key`.
    pub fn new(rules: Vec<MaskRule>, key: Arc<HashKey>) -> SessionMasks {
        let mut detectors = DetectorSet::default();
        let mut detector_rule = [None; Detector::ALL.len()];
        for (index, rule) in rules.iter().enumerate() {
            for d in rule.detectors().iter() {
                detectors.insert(d);
                detector_rule[d as usize].get_or_insert(index);
            }
        }
        SessionMasks {
            inner: Arc::new(Inner {
                rules,
                key,
                detectors,
                detector_rule,
                transform: None,
                originals: None,
            }),
        }
    }

    /// Keeps the original of every value these masks mask in `originals` (see
    /// [`originals`]); `None` keeps nothing. The masks a session was just given are its
    /// own: they are changed in place, not copied.
    pub fn collect_originals(&mut self, originals: Option<Arc<Originals>>) {
        if originals.is_none() && self.inner.originals.is_none() {
            return;
        }
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.originals = originals;
            return;
        }
        let inner = &*self.inner;
        self.inner = Arc::new(Inner {
            rules: inner.rules.clone(),
            key: inner.key.clone(),
            detectors: inner.detectors,
            detector_rule: inner.detector_rule,
            transform: inner.transform,
            originals,
        });
    }

    /// These masks with `transform` run on every JSON document first, its changes
    /// counted under a rule named `name` (which masks nothing else).
    pub fn with_json_transform(&self, name: &str, transform: JsonTransform) -> SessionMasks {
        let mut rules = self.inner.rules.clone();
        rules.push(MaskRule::builtin(name, &[]));
        let mut masks = SessionMasks::new(rules, self.inner.key.clone());
        let index = masks.inner.rules.len() - 1;
        let inner = Arc::get_mut(&mut masks.inner).expect("just built, not shared");
        inner.transform = Some((transform, index));
        inner.originals = self.inner.originals.clone();
        masks
    }

    /// Masks nothing.
    pub fn none() -> SessionMasks {
        // No rule, so the key is never used.
        SessionMasks::new(Vec::new(), Arc::new(HashKey::from_bytes([0; KEY_LEN])))
    }

    /// True when there is no rule: every plan is a no-op.
    pub fn is_empty(&self) -> bool {
        self.inner.rules.is_empty()
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[MaskRule] {
        &self.inner.rules
    }

    /// True when some rule masks by name (`columns`): JSON member names and XML element
    /// names are looked at.
    pub fn has_column_rules(&self) -> bool {
        // A document transform reads member names too.
        self.inner.transform.is_some()
            || self
                .inner
                .rules
                .iter()
                .any(|r| !r.column_patterns().is_empty())
    }

    /// A masker of documents (JSON, XML, text lines), for HTTP bodies; see [`BodyMasker`].
    pub fn body_masker(&self) -> BodyMasker {
        BodyMasker::new(Arc::clone(&self.inner))
    }

    /// A masker for a result set with these columns (from RowDescription).
    pub fn plan(&self, columns: &[ColumnInfo<'_>]) -> RowMasker {
        RowMasker::new(Arc::clone(&self.inner), columns)
    }

    /// Runs the detectors over free text (a bound parameter or a query text, for the
    /// journal); `Borrowed` when nothing was found. Column rules do not apply: free
    /// text has no column.
    pub fn mask_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let inner = &*self.inner;
        if inner.detectors.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut hits = Vec::new();
        detect::scan(text.as_bytes(), inner.detectors, &mut hits);
        if hits.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut counts = [];
        let out = row::rewrite(
            text.as_bytes(),
            &hits,
            false,
            inner,
            &mut counts,
            Vec::new(),
        );
        // Hits start and end on ASCII bytes or at the end and every output is UTF-8, so
        // this is UTF-8; the lossy conversion only guards that reasoning.
        match String::from_utf8(out) {
            Ok(s) => Cow::Owned(s),
            Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        }
    }
}
