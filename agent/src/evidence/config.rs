//! `[evidence]`: segment rotation limits, the signing key and the host id.
//!
//! ```toml
//! [evidence]
//! segment_max_bytes = "64MiB"   # a size (crate::size): bytes, or "64MiB", "64MB", "1G"
//! segment_max_age = "1h"        # humantime
//! checkpoint_interval = "10s"   # humantime: the live segment's head is checkpointed at least this often
//! signing_key = "/var/lib/nhi-agent/signing.key"   # default <state_dir>/signing.key
//! host_id = "web-01"            # default: <state_dir>/host-id, created once
//! auditor_recipients = ["age1..."]   # off by default: originals of masked values sealed to these
//! auditor_max_bytes = "16MiB"   # per session; beyond it originals are counted, not sealed
//! ```
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// Default `segment_max_bytes`.
pub const DEFAULT_SEGMENT_MAX_BYTES: u64 = 64 << 20;
/// Default `segment_max_age`.
pub const DEFAULT_SEGMENT_MAX_AGE: Duration = Duration::from_secs(3600);
/// Default `auditor_max_bytes`.
pub const DEFAULT_AUDITOR_MAX_BYTES: u64 = 16 << 20;
/// Default `checkpoint_interval`.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

pub use crate::size::RawSize;

/// `[evidence]` as read from the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvidence {
    pub segment_max_bytes: Option<Spanned<RawSize>>,
    pub segment_max_age: Option<Spanned<String>>,
    pub checkpoint_interval: Option<Spanned<String>>,
    pub signing_key: Option<Spanned<String>>,
    pub host_id: Option<Spanned<String>>,
    pub auditor_recipients: Option<Spanned<Vec<String>>>,
    pub auditor_max_bytes: Option<Spanned<RawSize>>,
}

/// A validation problem of `[evidence]`, with the span of the value it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceProblem {
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl EvidenceProblem {
    fn at<T>(value: &Spanned<T>, message: impl Into<String>) -> Self {
        EvidenceProblem {
            span: Some(value.span()),
            message: message.into(),
        }
    }
}

/// Validated `[evidence]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceSettings {
    /// The live segment is sealed and rotated once it is at least this large.
    pub segment_max_bytes: u64,
    /// ... or this old.
    pub segment_max_age: Duration,
    /// While the live segment's head moves, a signed checkpoint of it is written at
    /// least this often (see [`super::checkpoint`]).
    pub checkpoint_interval: Duration,
    /// `None`: `<state_dir>/signing.key`.
    pub signing_key: Option<PathBuf>,
    /// `None`: `<state_dir>/host-id`.
    pub host_id: Option<String>,
    /// `None`: originals of masked values are not kept (the default).
    pub auditors: Option<super::auditor::Auditors>,
}

impl Default for EvidenceSettings {
    fn default() -> Self {
        EvidenceSettings {
            segment_max_bytes: DEFAULT_SEGMENT_MAX_BYTES,
            segment_max_age: DEFAULT_SEGMENT_MAX_AGE,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            signing_key: None,
            host_id: None,
            auditors: None,
        }
    }
}

impl EvidenceSettings {
    /// The signing key path given the agent's state directory.
    pub fn signing_key_path(&self, state_dir: &Path) -> PathBuf {
        self.signing_key
            .clone()
            .unwrap_or_else(|| state_dir.join("signing.key"))
    }

    /// Validates the raw section (absent section: defaults).
    pub fn from_raw(raw: Option<Spanned<RawEvidence>>) -> Result<Self, EvidenceProblem> {
        let Some(raw) = raw else {
            return Ok(EvidenceSettings::default());
        };
        let raw = raw.into_inner();
        let segment_max_bytes = match &raw.segment_max_bytes {
            None => DEFAULT_SEGMENT_MAX_BYTES,
            Some(v) => {
                crate::size::value(v.get_ref(), "[evidence] segment_max_bytes", 1..=u64::MAX)
                    .map_err(|message| EvidenceProblem::at(v, message))?
            }
        };
        let segment_max_age = match &raw.segment_max_age {
            None => DEFAULT_SEGMENT_MAX_AGE,
            Some(v) => match humantime::parse_duration(v.get_ref()) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    return Err(EvidenceProblem::at(
                        v,
                        format!(
                        "invalid duration \"{}\" for segment_max_age (examples: \"10m\", \"1h\")",
                        v.get_ref()
                    ),
                    ))
                }
            },
        };
        let checkpoint_interval = match &raw.checkpoint_interval {
            None => DEFAULT_CHECKPOINT_INTERVAL,
            Some(v) => match humantime::parse_duration(v.get_ref()) {
                Ok(d) if d >= Duration::from_millis(100) => d,
                _ => {
                    return Err(EvidenceProblem::at(
                        v,
                        format!(
                            "invalid duration \"{}\" for checkpoint_interval (at least 100ms; examples: \"10s\", \"1m\")",
                            v.get_ref()
                        ),
                    ))
                }
            },
        };
        let signing_key = match &raw.signing_key {
            None => None,
            Some(p) if Path::new(p.get_ref()).is_absolute() => Some(PathBuf::from(p.get_ref())),
            Some(p) => {
                return Err(EvidenceProblem::at(
                    p,
                    "signing_key must be an absolute path",
                ));
            }
        };
        let host_id = match &raw.host_id {
            None => None,
            Some(h)
                if !h.get_ref().is_empty()
                    && h.get_ref().len() <= 128
                    && h.get_ref().chars().all(|c| c.is_ascii_graphic()) =>
            {
                Some(h.get_ref().clone())
            }
            Some(h) => {
                return Err(EvidenceProblem::at(
                    h,
                    "host_id must be 1 to 128 printable ASCII characters without spaces",
                ));
            }
        };
        let auditor_max_bytes = match &raw.auditor_max_bytes {
            None => DEFAULT_AUDITOR_MAX_BYTES,
            Some(v) => {
                crate::size::value(v.get_ref(), "[evidence] auditor_max_bytes", 1..=u64::MAX)
                    .map_err(|message| EvidenceProblem::at(v, message))?
            }
        };
        let auditors = match &raw.auditor_recipients {
            None => {
                if let Some(v) = &raw.auditor_max_bytes {
                    return Err(EvidenceProblem::at(
                        v,
                        "auditor_max_bytes needs auditor_recipients",
                    ));
                }
                None
            }
            Some(list) => Some(
                super::auditor::Auditors::parse(list.get_ref(), auditor_max_bytes)
                    .map_err(|e| EvidenceProblem::at(list, e.to_string()))?,
            ),
        };
        Ok(EvidenceSettings {
            segment_max_bytes,
            segment_max_age,
            checkpoint_interval,
            signing_key,
            host_id,
            auditors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EvidenceSettings, EvidenceProblem> {
        #[derive(Deserialize)]
        struct Doc {
            evidence: Option<Spanned<RawEvidence>>,
        }
        let doc: Doc = toml::from_str(text).unwrap();
        EvidenceSettings::from_raw(doc.evidence)
    }

    #[test]
    fn sizes_and_ages_parse_and_defaults_apply() {
        assert_eq!(parse("").unwrap(), EvidenceSettings::default());
        let s = parse("[evidence]\nsegment_max_bytes = \"512KiB\"\nsegment_max_age = \"10m\"\nhost_id = \"web-1\"\ncheckpoint_interval = \"2s\"\n").unwrap();
        assert_eq!(s.segment_max_bytes, 512 * 1024);
        assert_eq!(s.checkpoint_interval, Duration::from_secs(2));
        assert_eq!(
            EvidenceSettings::default().checkpoint_interval,
            Duration::from_secs(10)
        );
        assert_eq!(s.segment_max_age, Duration::from_secs(600));
        assert_eq!(s.host_id.as_deref(), Some("web-1"));
        assert_eq!(
            parse("[evidence]\nsegment_max_bytes = \"2GiB\"")
                .unwrap()
                .segment_max_bytes,
            2 << 30
        );
        assert_eq!(
            parse("[evidence]\nsegment_max_bytes = 4096")
                .unwrap()
                .segment_max_bytes,
            4096
        );
        assert_eq!(
            parse("[evidence]\nsegment_max_bytes = \"3MiB\"")
                .unwrap()
                .segment_max_bytes,
            3 << 20
        );
    }

    #[test]
    fn bad_values_are_refused_with_a_span() {
        for bad in [
            "segment_max_bytes = \"64 furlongs\"",
            "segment_max_bytes = 0",
            "segment_max_bytes = -5",
            "segment_max_age = \"0s\"",
            "checkpoint_interval = \"0s\"",
            "checkpoint_interval = \"often\"",
            "signing_key = \"relative.key\"",
            "host_id = \"has space\"",
        ] {
            let p = parse(&format!("[evidence]\n{bad}\n")).unwrap_err();
            assert!(p.span.is_some(), "{bad}");
        }
    }

    #[test]
    fn sizes_take_the_shared_syntax_and_errors_name_the_key() {
        // "64MB" was refused here while [retention] took it.
        let s = parse("[evidence]\nsegment_max_bytes = \"64MB\"\n").unwrap();
        assert_eq!(s.segment_max_bytes, 64_000_000);
        let s = parse("[evidence]\nsegment_max_bytes = \"1g\"\n").unwrap();
        assert_eq!(s.segment_max_bytes, 1 << 30);
        let p = parse("[evidence]\nsegment_max_bytes = \"64 furlongs\"\n").unwrap_err();
        assert!(
            p.message.starts_with(
                "invalid size \"64 furlongs\" for [evidence] segment_max_bytes: expected"
            ),
            "{}",
            p.message
        );
        let p = parse("[evidence]\nsegment_max_bytes = 0\n").unwrap_err();
        assert_eq!(
            p.message,
            "[evidence] segment_max_bytes must be at least 1 byte (got 0)"
        );
    }
}
