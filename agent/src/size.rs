//! Byte sizes in the configuration file: one syntax for every size key
//! (`[evidence] segment_max_bytes`, `[retention] disk_budget`, a target's
//! `mask_body_limit`, `[lineage] argv_max_bytes`).
//!
//! A size is an integer number of bytes (`67108864`) or a string: an integer, optional
//! spaces, an optional unit, case-insensitive:
//!
//! | unit | factor |
//! |------|--------|
//! | none, `B` | 1 |
//! | `KiB`, `MiB`, `GiB`, `TiB` (also `K`, `M`, `G`, `T`) | 1024, 1024², 1024³, 1024⁴ |
//! | `KB`, `MB`, `GB`, `TB` | 1000, 1000², 1000³, 1000⁴ |
//!
//! So `"64MiB"` is 67108864 bytes and `"64MB"` 64000000. Fractions, signs and other
//! units are refused with the key's name in the message.
use std::ops::RangeInclusive;

use serde::Deserialize;

/// A size as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    /// `segment_max_bytes = 67108864`.
    Bytes(i64),
    /// `segment_max_bytes = "64MiB"`.
    Text(String),
}

impl std::fmt::Display for RawSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawSize::Bytes(n) => write!(f, "{n}"),
            RawSize::Text(s) => write!(f, "\"{s}\""),
        }
    }
}

/// What the syntax is, for error messages.
pub const SYNTAX: &str = "a number of bytes, or a string with a unit: \"512KiB\", \"64MiB\", \
                          \"1GiB\" (×1024; also K, M, G, T), \"64MB\", \"1GB\" (×1000)";

/// The bytes `text` names, or `None` when it is not a size or overflows.
pub fn parse(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// The bytes of `key`'s value, which must lie in `range`; the error names the key, the
/// value and what is accepted.
pub fn value(raw: &RawSize, key: &str, range: RangeInclusive<u64>) -> Result<u64, String> {
    let bytes = match raw {
        RawSize::Bytes(n) => u64::try_from(*n).ok(),
        RawSize::Text(s) => parse(s),
    };
    match bytes {
        None => Err(format!("invalid size {raw} for {key}: expected {SYNTAX}")),
        Some(n) if range.contains(&n) => Ok(n),
        Some(_) if *range.end() == u64::MAX => Err(format!(
            "{key} must be at least {} (got {raw})",
            human(*range.start())
        )),
        Some(n) => Err(format!(
            "{key} must be between {} and {} (got {raw}, {n} bytes)",
            human(*range.start()),
            human(*range.end())
        )),
    }
}

/// `n` bytes for a message: the largest binary unit that divides it, else bytes.
pub fn human(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n} byte{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_any_section_accepted_is_accepted() {
        let cases: &[(&str, u64)] = &[
            ("4096", 4096),
            ("0", 0),
            ("64B", 64),
            ("64 b", 64),
            ("512KiB", 512 << 10),
            ("64MiB", 64 << 20),
            ("64 MiB", 64 << 20),
            ("64mib", 64 << 20),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("1k", 1 << 10),
            ("1M", 1 << 20),
            ("1G", 1 << 30),
            ("1t", 1 << 40),
            ("64MB", 64_000_000),
            ("2GB", 2_000_000_000),
            ("3kb", 3_000),
            ("1TB", 1_000_000_000_000),
            (" 10GiB ", 10 << 30),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse(text), Some(*bytes), "{text}");
            assert_eq!(
                value(&RawSize::Text((*text).into()), "k", 0..=u64::MAX),
                Ok(*bytes),
                "{text}"
            );
        }
        assert_eq!(
            value(&RawSize::Bytes(67108864), "k", 1..=u64::MAX),
            Ok(64 << 20)
        );
    }

    #[test]
    fn what_is_not_a_size_is_refused_naming_the_key() {
        for text in [
            "",
            "lots",
            "64 furlongs",
            "1.5GiB",
            "-5",
            "+5",
            "MiB",
            "64MiBs",
            "64 Mi B",
        ] {
            assert_eq!(parse(text), None, "{text}");
            let err =
                value(&RawSize::Text(text.into()), "disk_budget", 1..=u64::MAX).expect_err(text);
            assert_eq!(
                err,
                format!("invalid size \"{text}\" for disk_budget: expected {SYNTAX}")
            );
        }
        assert_eq!(parse("99999999999999999999"), None, "overflow");
        assert_eq!(parse("20000000TiB"), None, "overflow");
        let err = value(&RawSize::Bytes(-5), "segment_max_bytes", 1..=u64::MAX).expect_err("neg");
        assert!(
            err.starts_with("invalid size -5 for segment_max_bytes"),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_names_the_key_and_the_bounds() {
        assert_eq!(
            value(
                &RawSize::Text("10".into()),
                "mask_body_limit",
                1 << 10..=1 << 30
            ),
            Err("mask_body_limit must be between 1KiB and 1GiB (got \"10\", 10 bytes)".into())
        );
        assert_eq!(
            value(&RawSize::Bytes(0), "disk_budget", 1..=u64::MAX),
            Err("disk_budget must be at least 1 byte (got 0)".into())
        );
        assert_eq!(human(3 << 20), "3MiB");
        assert_eq!(human(1_000), "1000 bytes");
    }
}
