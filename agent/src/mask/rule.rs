//! `[[mask]]` rules: the serde shape and its validation.

use std::ops::Range;

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use toml::Spanned;

use super::detect::{Detector, DetectorSet};
use super::strategy::{Strategy, DEFAULT_KEEP};

/// The largest `keep` accepted: more would leave most real values unmasked.
pub const MAX_KEEP: i64 = 64;

/// One `[[mask]]` table as serde reads it. Every value validation may reject is
/// `Spanned`, so the problem can point at it; unknown keys are refused by serde.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaskRule {
    /// Required, unique across masks (the configuration loader checks uniqueness).
    pub name: Spanned<String>,
    /// Glob over workload names; default `"*"`.
    pub workload: Option<Spanned<String>>,
    /// Glob over target names; default `"*"`.
    pub target: Option<Spanned<String>>,
    /// Globs over result column names (case-insensitive).
    pub columns: Option<Spanned<Vec<Spanned<String>>>>,
    /// Detector names, or `"all"`.
    pub detectors: Option<Spanned<Vec<Spanned<String>>>>,
    /// `"redact"` (default), `"partial"` or `"hash"`.
    pub strategy: Option<Spanned<String>>,
    /// `partial` only: how many trailing characters stay visible (default 4).
    pub keep: Option<Spanned<i64>>,
}

/// A validation problem of one rule: the byte span (in the configuration text) of the
/// value it is about, when there is one, and a sentence saying what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskProblem {
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl MaskProblem {
    fn at<T>(value: &Spanned<T>, message: impl Into<String>) -> MaskProblem {
        MaskProblem {
            span: Some(value.span()),
            message: message.into(),
        }
    }
}

/// A validated `[[mask]]` rule.
#[derive(Debug, Clone)]
pub struct MaskRule {
    name: String,
    workload: GlobMatcher,
    target: GlobMatcher,
    /// The column globs as written, for messages.
    column_patterns: Vec<String>,
    columns: GlobSet,
    detectors: DetectorSet,
    strategy: Strategy,
    /// Added by the agent (credentials it hides), not from the configuration: the
    /// originals of what it masks are never kept for auditors.
    builtin: bool,
}

impl MaskRule {
    /// Validates one rule. Checks: a non-empty name; valid `workload`, `target` and
    /// `columns` globs; at least one of `columns`/`detectors`, not both empty; known
    /// detector names (or `"all"`); a known strategy; `keep` only with `partial`, and
    /// between 0 and [`MAX_KEEP`].
    pub fn from_raw(raw: Spanned<RawMaskRule>) -> Result<MaskRule, MaskProblem> {
        let span = raw.span();
        let raw = raw.into_inner();
        let name = raw.name.get_ref().trim();
        if name.is_empty() {
            return Err(MaskProblem::at(&raw.name, "mask name must not be empty"));
        }
        let workload = selector(raw.workload.as_ref(), "workload")?;
        let target = selector(raw.target.as_ref(), "target")?;

        let empty = |list: &Option<Spanned<Vec<Spanned<String>>>>| {
            list.as_ref().is_none_or(|l| l.get_ref().is_empty())
        };
        if empty(&raw.columns) && empty(&raw.detectors) {
            return Err(MaskProblem {
                span: Some(span),
                message: format!(
                    "mask \"{name}\" masks nothing: give `columns` (globs over result column \
                     names, e.g. [\"email\", \"*_token\"]), `detectors` (e.g. [\"email\", \
                     \"credit_card\"] or [\"all\"]), or both"
                ),
            });
        }

        let mut column_patterns = Vec::new();
        let mut columns = GlobSetBuilder::new();
        for pattern in raw.columns.iter().flat_map(|l| l.get_ref()) {
            let glob = GlobBuilder::new(pattern.get_ref())
                .case_insensitive(true)
                .build()
                .map_err(|e| {
                    MaskProblem::at(
                        pattern,
                        format!(
                            "invalid column pattern \"{}\": {}",
                            pattern.get_ref(),
                            e.kind()
                        ),
                    )
                })?;
            columns.add(glob);
            column_patterns.push(pattern.get_ref().clone());
        }
        let columns = columns.build().map_err(|e| MaskProblem {
            span: raw.columns.as_ref().map(Spanned::span),
            message: format!("invalid column patterns: {e}"),
        })?;

        let mut detectors = DetectorSet::default();
        for d in raw.detectors.iter().flat_map(|l| l.get_ref()) {
            if d.get_ref() == "all" {
                Detector::ALL.into_iter().for_each(|x| detectors.insert(x));
                continue;
            }
            let detector = Detector::from_name(d.get_ref()).ok_or_else(|| {
                let known: Vec<&str> = Detector::ALL.iter().map(|x| x.name()).collect();
                MaskProblem::at(
                    d,
                    format!(
                        "unknown detector \"{}\"; known detectors: {}, or \"all\"",
                        d.get_ref(),
                        known.join(", ")
                    ),
                )
            })?;
            detectors.insert(detector);
        }

        let strategy_name = raw
            .strategy
            .as_ref()
            .map_or("redact", |s| s.get_ref().as_str());
        let strategy = match strategy_name {
            "redact" => Strategy::Redact,
            "hash" => Strategy::Hash,
            "partial" => Strategy::Partial { keep: DEFAULT_KEEP },
            other => {
                return Err(MaskProblem::at(
                    raw.strategy.as_ref().unwrap_or(&raw.name),
                    format!(
                        "unknown strategy \"{other}\"; known strategies: redact, partial, hash"
                    ),
                ));
            }
        };
        let strategy = match (&raw.keep, strategy) {
            (None, s) => s,
            (Some(keep), Strategy::Partial { .. }) => {
                let n = *keep.get_ref();
                if !(0..=MAX_KEEP).contains(&n) {
                    return Err(MaskProblem::at(
                        keep,
                        format!("keep must be between 0 and {MAX_KEEP} (got {n})"),
                    ));
                }
                // In range, so the conversion cannot fail.
                Strategy::Partial {
                    keep: usize::try_from(n).unwrap_or(DEFAULT_KEEP),
                }
            }
            (Some(keep), other) => {
                return Err(MaskProblem::at(
                    keep,
                    format!(
                        "keep only applies to strategy = \"partial\" (this mask's strategy is \"{}\")",
                        other.name()
                    ),
                ));
            }
        };

        Ok(MaskRule {
            name: name.to_owned(),
            workload,
            target,
            column_patterns,
            columns,
            detectors,
            strategy,
            builtin: false,
        })
    }

    /// A rule the agent adds itself (not from the configuration): `detectors` over free
    /// text (redacted) for every workload and target.
    pub fn builtin_detectors(name: &str, detectors: DetectorSet) -> MaskRule {
        let mut rule = MaskRule::builtin(name, &[]);
        rule.detectors = detectors;
        rule
    }

    /// A rule the agent adds itself (not from the configuration): `columns` (valid
    /// globs, case-insensitive) redacted for every workload and target.
    pub fn builtin(name: &str, columns: &[&str]) -> MaskRule {
        let mut set = GlobSetBuilder::new();
        for pattern in columns {
            if let Ok(glob) = GlobBuilder::new(pattern).case_insensitive(true).build() {
                set.add(glob);
            }
        }
        let any = Glob::new("*")
            .map(|g| g.compile_matcher())
            .expect("the match-all glob is valid");
        MaskRule {
            name: name.to_owned(),
            workload: any.clone(),
            target: any,
            column_patterns: columns.iter().map(|c| (*c).to_owned()).collect(),
            columns: set.build().unwrap_or_else(|_| GlobSet::empty()),
            detectors: DetectorSet::default(),
            strategy: Strategy::Redact,
            builtin: true,
        }
    }

    /// Whether the agent added the rule itself (it hides credentials).
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this rule governs sessions of `workload` to `target`.
    pub fn applies_to(&self, workload: &str, target: &str) -> bool {
        self.workload.is_match(workload) && self.target.is_match(target)
    }

    /// Whether the column called `name` is masked whole by this rule (case-insensitive).
    pub fn masks_column(&self, name: &str) -> bool {
        !self.column_patterns.is_empty() && self.columns.is_match(name)
    }

    /// The column globs as written.
    pub fn column_patterns(&self) -> &[String] {
        &self.column_patterns
    }

    pub(crate) fn detectors(&self) -> DetectorSet {
        self.detectors
    }

    /// The names of this rule's detectors.
    pub fn detector_names(&self) -> Vec<&'static str> {
        self.detectors.iter().map(Detector::name).collect()
    }

    /// How this rule masks.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// `"redact"`, `"partial"` or `"hash"`.
    pub fn strategy_name(&self) -> &'static str {
        self.strategy.name()
    }
}

/// A workload or target selector: a glob over names, `*` (everything) by default.
/// `*` crosses '/' here: names are not paths.
fn selector(value: Option<&Spanned<String>>, key: &str) -> Result<GlobMatcher, MaskProblem> {
    let Some(value) = value else {
        return Ok(Glob::new("*")
            .expect("the match-everything glob compiles")
            .compile_matcher());
    };
    if value.get_ref().is_empty() {
        return Err(MaskProblem::at(
            value,
            format!("{key} must not be empty; write \"*\" for every {key}"),
        ));
    }
    GlobBuilder::new(value.get_ref())
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| {
            MaskProblem::at(
                value,
                format!(
                    "invalid {key} pattern \"{}\": {}",
                    value.get_ref(),
                    e.kind()
                ),
            )
        })
}
