//! `[lineage]`: process lineage for intercepted cgroups.
//!
//! ```toml
//! [lineage]
//! enabled = true          # default: attach the exec/fork/exit tracepoints
//! argv_max = 16           # arguments kept per exec (1..=32)
//! argv_max_bytes = 512    # bytes of arguments kept per exec (16..=1024; a size, crate::size)
//! mask_argv = ["-p", "--db-pass*"]   # more flags whose values are masked (crate::mask::argv)
//! ```
use std::ops::Range;

use nhi_agent_common::lineage::{ARGV_BYTES, ARGV_MAX_ARGS};
use serde::Deserialize;
use toml::Spanned;

/// Default of `argv_max`.
pub const DEFAULT_ARGV_MAX: u32 = 16;
/// Default of `argv_max_bytes`.
pub const DEFAULT_ARGV_MAX_BYTES: u32 = 512;

/// `[lineage]` as serde reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLineage {
    pub enabled: Option<bool>,
    pub argv_max: Option<Spanned<i64>>,
    pub argv_max_bytes: Option<Spanned<crate::size::RawSize>>,
    pub mask_argv: Option<Vec<Spanned<String>>>,
}

/// The validated `[lineage]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageSettings {
    /// Attach the tracepoints and journal `exec`/`exit` events.
    pub enabled: bool,
    /// Arguments kept per exec; more are cut and the exec is marked truncated.
    pub argv_max: u32,
    /// Bytes of arguments (NULs included) kept per exec.
    pub argv_max_bytes: u32,
    /// What is masked in argv before it is journaled (exec events, lineage chains, a
    /// session's cmdline): the credential detectors, the default flag patterns and
    /// `mask_argv`.
    pub argv_mask: crate::mask::argv::ArgvMask,
}

impl Default for LineageSettings {
    fn default() -> Self {
        LineageSettings {
            enabled: true,
            argv_max: DEFAULT_ARGV_MAX,
            argv_max_bytes: DEFAULT_ARGV_MAX_BYTES,
            argv_mask: crate::mask::argv::ArgvMask::default(),
        }
    }
}

/// A validation problem: the span of the offending value and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageProblem {
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl LineageSettings {
    /// Validates `[lineage]`; an absent section gives the defaults.
    pub fn from_raw(raw: Option<RawLineage>) -> Result<Self, LineageProblem> {
        let raw = raw.unwrap_or_default();
        let bounded = |v: &Option<Spanned<i64>>, key: &str, lo: u32, hi: u32, default: u32| {
            let Some(v) = v else { return Ok(default) };
            match u32::try_from(*v.get_ref()) {
                Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(LineageProblem {
                    span: Some(v.span()),
                    message: format!(
                        "[lineage] {key} must be between {lo} and {hi} (the kernel side's limit)"
                    ),
                }),
            }
        };
        let extra: Vec<&str> = raw
            .mask_argv
            .iter()
            .flatten()
            .map(|p| p.get_ref().as_str())
            .collect();
        let argv_mask = crate::mask::argv::ArgvMask::new(&extra).map_err(|message| {
            // Name the pattern that failed (the first whose compilation alone fails).
            let span = raw.mask_argv.iter().flatten().find_map(|p| {
                crate::mask::argv::ArgvMask::new(&[p.get_ref().as_str()])
                    .is_err()
                    .then(|| p.span())
            });
            LineageProblem {
                span,
                message: format!("[lineage] mask_argv: {message}"),
            }
        })?;
        Ok(LineageSettings {
            argv_mask,
            enabled: raw.enabled.unwrap_or(true),
            argv_max: bounded(
                &raw.argv_max,
                "argv_max",
                1,
                ARGV_MAX_ARGS,
                DEFAULT_ARGV_MAX,
            )?,
            argv_max_bytes: match &raw.argv_max_bytes {
                None => DEFAULT_ARGV_MAX_BYTES,
                // The upper bound is the kernel side's record size.
                Some(v) => crate::size::value(
                    v.get_ref(),
                    "[lineage] argv_max_bytes",
                    16..=ARGV_BYTES as u64,
                )
                .map(|n| n as u32)
                .map_err(|message| LineageProblem {
                    span: Some(v.span()),
                    message,
                })?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LineageSettings, LineageProblem> {
        #[derive(Deserialize)]
        struct Doc {
            lineage: Option<RawLineage>,
        }
        let doc: Doc = toml::from_str(text).expect("toml");
        LineageSettings::from_raw(doc.lineage)
    }

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(parse("").unwrap(), LineageSettings::default());
        let s = parse("[lineage]\nenabled = false\nargv_max = 4\nargv_max_bytes = 64\n").unwrap();
        assert_eq!(
            s,
            LineageSettings {
                enabled: false,
                argv_max: 4,
                argv_max_bytes: 64,
                argv_mask: crate::mask::argv::ArgvMask::default(),
            }
        );
        let e = parse("[lineage]\nargv_max = 33\n").unwrap_err();
        assert!(e.message.contains("argv_max"), "{}", e.message);
        assert!(e.span.is_some());
        assert!(parse("[lineage]\nargv_max_bytes = 4096\n").is_err());
        let s = parse("[lineage]\nmask_argv = [\"-p\"]\n").unwrap();
        let mut argv = vec!["mysql".to_string(), "-p".into(), "pw".into()];
        assert!(s.argv_mask.mask(&mut argv));
        assert_eq!(argv, ["mysql", "-p", "[redacted]"]);
        let e = parse("[lineage]\nmask_argv = [\"-p\", \"[x\"]\n").unwrap_err();
        assert!(
            e.message
                .starts_with("[lineage] mask_argv: \"[x\" is not a glob"),
            "{}",
            e.message
        );
        assert!(e.span.is_some());
        let s = parse("[lineage]\nargv_max_bytes = \"1KiB\"\n").unwrap();
        assert_eq!(s.argv_max_bytes, 1024);
        let e = parse("[lineage]\nargv_max_bytes = \"2KiB\"\n").unwrap_err();
        assert_eq!(
            e.message,
            "[lineage] argv_max_bytes must be between 16 bytes and 1KiB (got \"2KiB\", 2048 bytes)"
        );
        assert!(parse("[lineage]\nargv_max = -1\n").is_err());
    }
}
