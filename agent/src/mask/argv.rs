//! Secrets on command lines: what the journal keeps of a process's argv (lineage `exec`
//! events, a session's lineage chain and its `cmdline`) is masked before it is
//! journaled, so it is never shipped or shown in clear.
//!
//! Two things apply to every argument, whatever the configuration:
//! - the credential detectors (AWS, GCP and GitHub keys, JWTs, private keys): what
//!   they find is replaced by `[redacted]`;
//! - flag patterns, [`DEFAULT_PATTERNS`] plus `[lineage] mask_argv`: case-insensitive
//!   globs over one argument.
//!   - A pattern with `=` (`"--password=*"`, `"*token*=*"`) matches a whole
//!     argument; what follows its first `=` is masked: `--password=[redacted]`.
//!   - A pattern without `=` (`"-p"`, `"--password"`) names a flag: the argument after
//!     it is masked (`-p [redacted]`), and so is the value of `FLAG=value`.
//!
//! The command stays recognisable: the program, the flags and every other argument are
//! kept.
use globset::{GlobBuilder, GlobMatcher};

use super::detect::{self, Detector, DetectorSet};
use super::strategy::REDACTED;

/// The flag patterns that always apply.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "-*password*",
    "-*passwd*",
    "-*secret*",
    "-*token*",
    "-*api-key*",
    "-*api_key*",
    "-*apikey*",
    // redis-cli's and redis-benchmark's password flag (`-a` is too common a flag to
    // mask by default: add it with `[lineage] mask_argv`).
    "--pass",
    "*password*=*",
    "*passwd*=*",
    "*secret*=*",
    "*token*=*",
];

/// The detectors run over each argument.
pub fn argv_detectors() -> DetectorSet {
    [
        Detector::AwsKey,
        Detector::GcpKey,
        Detector::GithubToken,
        Detector::PrivateKey,
        Detector::Jwt,
    ]
    .into_iter()
    .collect()
}

#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    glob: GlobMatcher,
    /// Contains `=`: matched against the whole `NAME=value` argument.
    with_value: bool,
}

/// The compiled masking of argv: the default patterns, the configured ones, the
/// detectors.
#[derive(Debug, Clone)]
pub struct ArgvMask {
    patterns: Vec<Pattern>,
    detectors: DetectorSet,
}

impl PartialEq for ArgvMask {
    fn eq(&self, other: &Self) -> bool {
        self.patterns
            .iter()
            .map(|p| &p.text)
            .eq(other.patterns.iter().map(|p| &p.text))
    }
}

impl Eq for ArgvMask {}

impl Default for ArgvMask {
    fn default() -> Self {
        ArgvMask::new(&[]).unwrap_or_else(|_| ArgvMask {
            patterns: Vec::new(),
            detectors: argv_detectors(),
        })
    }
}

impl ArgvMask {
    /// The defaults plus `extra` patterns; an error names a pattern that is empty or
    /// not a glob.
    pub fn new(extra: &[&str]) -> Result<ArgvMask, String> {
        let mut patterns = Vec::new();
        for text in DEFAULT_PATTERNS.iter().chain(extra) {
            if text.trim().is_empty() {
                return Err("an empty pattern masks nothing; remove it".into());
            }
            let glob = GlobBuilder::new(text)
                .case_insensitive(true)
                .build()
                .map_err(|e| format!("\"{text}\" is not a glob: {}", e.kind()))?
                .compile_matcher();
            patterns.push(Pattern {
                text: (*text).to_owned(),
                glob,
                with_value: text.contains('='),
            });
        }
        Ok(ArgvMask {
            patterns,
            detectors: argv_detectors(),
        })
    }

    /// Masks `argv` in place; whether anything changed.
    pub fn mask(&self, argv: &mut [String]) -> bool {
        let mut changed = mask_mysql_password(argv);
        let mut mask_next = false;
        let mut hits = Vec::new();
        for arg in argv.iter_mut() {
            if std::mem::take(&mut mask_next) {
                if arg != REDACTED {
                    *arg = REDACTED.to_owned();
                    changed = true;
                }
                continue;
            }
            if let Some((name, value)) = arg.split_once('=') {
                let flagged = self.patterns.iter().any(|p| {
                    if p.with_value {
                        p.glob.is_match(arg.as_str())
                    } else {
                        p.glob.is_match(name)
                    }
                });
                if flagged && !value.is_empty() {
                    *arg = format!("{name}={REDACTED}");
                    changed = true;
                    continue;
                }
            } else if self
                .patterns
                .iter()
                .any(|p| !p.with_value && p.glob.is_match(arg.as_str()))
            {
                mask_next = true;
                continue;
            }
            detect::scan(arg.as_bytes(), self.detectors, &mut hits);
            if !hits.is_empty() {
                *arg = redact(arg, &hits);
                changed = true;
            }
        }
        changed
    }
}

/// The MySQL / MariaDB command-line clients, whose `-pSECRET` (the password glued to
/// `-p`) no flag pattern can name: `-p` is a port for other programs.
const MYSQL_CLIENTS: &[&str] = &[
    "mysql",
    "mariadb",
    "mysqldump",
    "mariadb-dump",
    "mysqladmin",
    "mariadb-admin",
    "mysqlslap",
    "mariadb-slap",
    "mysqlimport",
    "mariadb-import",
    "mysqlcheck",
    "mariadb-check",
    "mysqlshow",
    "mariadb-show",
    "mysqlbinlog",
    "mariadb-binlog",
    "mysqlpump",
    "mysqlsh",
    "mariadb-test",
    "mysqltest",
];

/// `-pSECRET` of a MySQL client becomes `-p[redacted]`; whether anything changed.
fn mask_mysql_password(argv: &mut [String]) -> bool {
    let Some(program) = argv.first() else {
        return false;
    };
    let name = program.rsplit('/').next().unwrap_or(program);
    if !MYSQL_CLIENTS.contains(&name) {
        return false;
    }
    let mut changed = false;
    for arg in argv.iter_mut().skip(1) {
        if arg == "--" {
            break;
        }
        if arg.len() > 2 && arg.starts_with("-p") && arg != "-p[redacted]" {
            *arg = format!("-p{REDACTED}");
            changed = true;
        }
    }
    changed
}

/// `text` with each hit replaced by [`REDACTED`]. Hits start and end on ASCII bytes
/// (see [`detect`]), so the slices are on character boundaries.
fn redact(text: &str, hits: &[detect::Hit]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (range, _) in hits {
        out.push_str(text.get(at..range.start).unwrap_or_default());
        out.push_str(REDACTED);
        at = range.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_glued_to_a_mysql_clients_p_is_masked() {
        let mask = ArgvMask::default();
        assert_eq!(
            masked(
                &mask,
                &["/usr/bin/mariadb", "-uapp", "-pS3cr3t", "-e", "select 1"]
            ),
            [
                "/usr/bin/mariadb",
                "-uapp",
                "-p[redacted]",
                "-e",
                "select 1"
            ]
        );
        // Elsewhere -p glued to a value is a port (psql -p5432).
        assert_eq!(masked(&mask, &["psql", "-p5432"]), ["psql", "-p5432"]);
    }

    fn masked(mask: &ArgvMask, argv: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        mask.mask(&mut v);
        v
    }

    #[test]
    fn flags_values_and_detected_keys_are_masked_and_the_command_stays() {
        let mask = ArgvMask::new(&["-p"]).expect("mask");
        assert_eq!(
            masked(
                &mask,
                &[
                    "mysql",
                    "--password=hunter2",
                    "-u",
                    "app",
                    "-p",
                    "s3cr3t",
                    "--host=db.internal",
                    "--key",
                    "AKIAIOSFODNN7EXAMPLE",
                    "--Client-Secret",
                    "x",
                    "PGPASSWORD=pw",
                    "--token=",
                ]
            ),
            [
                "mysql",
                "--password=[redacted]",
                "-u",
                "app",
                "-p",
                "[redacted]",
                "--host=db.internal",
                "--key",
                "[redacted]",
                "--Client-Secret",
                "[redacted]",
                "PGPASSWORD=[redacted]",
                "--token=",
            ]
        );
        // A key inside a longer argument: only the key goes.
        assert_eq!(
            masked(&mask, &["aws", "--profile=AKIAIOSFODNN7EXAMPLE:x"]),
            ["aws", "--profile=[redacted]:x"]
        );
        // Without "-p" configured, -p is a port like any other argument.
        let default = ArgvMask::default();
        assert_eq!(
            masked(&default, &["psql", "-p", "5432"]),
            ["psql", "-p", "5432"]
        );
        let mut untouched = vec!["ls".to_string(), "-la".to_string()];
        assert!(!default.mask(&mut untouched));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(ArgvMask::new(&[""]).unwrap_err().contains("empty"));
        assert!(ArgvMask::new(&["--pass[word"])
            .unwrap_err()
            .contains("--pass[word"));
    }
}
