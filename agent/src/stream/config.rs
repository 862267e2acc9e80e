//! `[[stream]]`: the serde shape and its validation.
//!
//! Pure: nothing here reads a file. The HEC token and CA files are named here and read
//! when the stream starts (`super::sink::open`), so `policy check` never touches them and
//! a bad token file fails the start (or the reload of that stream) with its path.
use std::{ops::Range, path::PathBuf, time::Duration};

use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use toml::Spanned;

/// Default `max_bytes` of a file sink: rotated at 64 MiB.
pub const DEFAULT_FILE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default `keep` of a file sink: rotated files kept besides the current one.
pub const DEFAULT_FILE_KEEP: u32 = 5;
/// Default `batch`: events read and sent at once.
pub const DEFAULT_BATCH: usize = 500;
/// Default `backoff_initial`.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Default `backoff_max`.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default `timeout` of one send.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `[[stream]]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub format: Option<Spanned<String>>,
    #[serde(default)]
    pub kinds: Vec<Spanned<String>>,
    #[serde(default)]
    pub verdicts: Vec<Spanned<String>>,
    #[serde(default)]
    pub workloads: Vec<Spanned<String>>,
    pub start_at: Option<Spanned<String>>,
    pub batch: Option<Spanned<usize>>,
    pub backoff_initial: Option<Spanned<String>>,
    pub backoff_max: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    // syslog
    pub address: Option<Spanned<String>>,
    pub tls: Option<bool>,
    pub server_name: Option<Spanned<String>>,
    // syslog (tls), splunk_hec, otlp
    pub ca_file: Option<Spanned<String>>,
    // splunk_hec, otlp
    pub url: Option<Spanned<String>>,
    // splunk_hec
    pub token_file: Option<Spanned<String>>,
    pub index: Option<Spanned<String>>,
    pub sourcetype: Option<Spanned<String>>,
    // file
    pub path: Option<Spanned<String>>,
    pub max_bytes: Option<Spanned<crate::size::RawSize>>,
    pub keep: Option<Spanned<u32>>,
}

/// A validation error with the span of the offending value (the config module turns it
/// into a `ConfigError` with line and column).
#[derive(Debug)]
pub struct StreamProblem {
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl StreamProblem {
    fn at<T>(value: &Spanned<T>, message: impl Into<String>) -> Self {
        StreamProblem {
            span: Some(value.span()),
            message: message.into(),
        }
    }
}

/// What is sent for each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The event as `nhi-agent export --format jsonl` writes it.
    Json,
    /// OCSF 1.3.0, as `nhi-agent export --format ocsf` writes it.
    Ocsf,
}

/// Where a new stream (no cursor yet) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest event still on the host (sealed segments included).
    Oldest,
    /// The events journaled from its first start on.
    Now,
}

/// Where the events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// RFC 5424 over TCP, octet-counting framing (RFC 6587), optionally TLS (RFC 5425).
    Syslog {
        address: String,
        /// `Some`: TLS, verified against `ca_file` or the system roots.
        tls: Option<TlsSettings>,
    },
    /// Splunk HTTP Event Collector (`/services/collector/event`).
    SplunkHec {
        url: url::Url,
        token_file: PathBuf,
        index: Option<String>,
        sourcetype: Option<String>,
        ca_file: Option<PathBuf>,
    },
    /// OTLP/HTTP logs, JSON encoding (`/v1/logs`).
    Otlp {
        url: url::Url,
        ca_file: Option<PathBuf>,
    },
    /// JSON lines in a local file, rotated at `max_bytes` (`path.1` ... `path.<keep>`).
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: u32,
    },
}

impl SinkConfig {
    /// The `type` key's value.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::Syslog { .. } => "syslog",
            SinkConfig::SplunkHec { .. } => "splunk_hec",
            SinkConfig::Otlp { .. } => "otlp",
            SinkConfig::File { .. } => "file",
        }
    }
}

/// TLS of a syslog sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The CA bundle to verify the receiver with; `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    /// The name the certificate must carry; default: the host of `address`.
    pub server_name: String,
}

/// Which events a stream sends; every condition set must hold. Empty lists hold.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Event kinds (`statement`, `session_start`, `chunk`, `exec`, ...).
    pub kinds: Vec<String>,
    /// Verdicts of judged requests (`allow`, `approve`, `deny`); an event without a
    /// verdict does not pass a verdict filter.
    pub verdicts: Vec<String>,
    /// Workload names, globs (`ci-*`); an event naming no workload does not pass.
    pub workloads: Vec<GlobMatcher>,
}

impl PartialEq for Filters {
    fn eq(&self, other: &Self) -> bool {
        let globs = |f: &Filters| -> Vec<String> {
            f.workloads.iter().map(|g| g.glob().to_string()).collect()
        };
        self.kinds == other.kinds && self.verdicts == other.verdicts && globs(self) == globs(other)
    }
}
impl Eq for Filters {}

impl Filters {
    /// Whether an event of `kind`, with this verdict and workload, passes.
    pub fn pass(&self, kind: &str, verdict: Option<&str>, workload: Option<&str>) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
            && (self.verdicts.is_empty()
                || verdict.is_some_and(|v| self.verdicts.iter().any(|x| x == v)))
            && (self.workloads.is_empty()
                || workload.is_some_and(|w| self.workloads.iter().any(|g| g.is_match(w))))
    }
}

/// One `[[stream]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// `name` (required, unique): names the stream in logs and its cursor file.
    pub name: String,
    pub sink: SinkConfig,
    /// `format` (`"json"`).
    pub format: Format,
    pub filters: Filters,
    /// `start_at` (`"oldest"`).
    pub start_at: StartAt,
    /// `batch` (500): events read and sent at once.
    pub batch: usize,
    /// `backoff_initial` (`"500ms"`) / `backoff_max` (`"30s"`): retries of a sink that is
    /// down.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// `timeout` (`"10s"`): connect and send.
    pub timeout: Duration,
}

const VERDICTS: &[&str] = &["allow", "approve", "deny"];

fn duration(value: &Option<Spanned<String>>, default: Duration) -> Result<Duration, StreamProblem> {
    match value {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v.get_ref())
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                StreamProblem::at(
                    v,
                    format!(
                        "invalid duration \"{}\" (e.g. \"500ms\", \"30s\")",
                        v.get_ref()
                    ),
                )
            }),
    }
}

fn url_of(value: &Spanned<String>) -> Result<url::Url, StreamProblem> {
    let url = url::Url::parse(value.get_ref()).map_err(|e| {
        StreamProblem::at(value, format!("invalid URL \"{}\": {e}", value.get_ref()))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(StreamProblem::at(
            value,
            format!("\"{}\" is not an http:// or https:// URL", value.get_ref()),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(StreamProblem::at(
            value,
            "credentials do not belong in the URL (use token_file)",
        ));
    }
    Ok(url)
}

fn path_of(value: &Spanned<String>, key: &str) -> Result<PathBuf, StreamProblem> {
    let path = PathBuf::from(value.get_ref());
    if !path.is_absolute() {
        return Err(StreamProblem::at(
            value,
            format!(
                "{key} must be an absolute path, got \"{}\"",
                value.get_ref()
            ),
        ));
    }
    Ok(path)
}

impl StreamConfig {
    /// Validates every `[[stream]]`: names unique, keys of the right sink type.
    pub fn from_raw_list(raw: Vec<Spanned<RawStream>>) -> Result<Vec<StreamConfig>, StreamProblem> {
        let mut out: Vec<StreamConfig> = Vec::new();
        for r in raw {
            let span = r.span();
            let s = StreamConfig::from_raw(r.into_inner())?;
            if out.iter().any(|o| o.name == s.name) {
                return Err(StreamProblem {
                    span: Some(span),
                    message: format!(
                        "duplicate [[stream]] name \"{}\": names are unique (each names a cursor)",
                        s.name
                    ),
                });
            }
            out.push(s);
        }
        Ok(out)
    }

    fn from_raw(raw: RawStream) -> Result<StreamConfig, StreamProblem> {
        let name = raw.name.get_ref().clone();
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
        {
            return Err(StreamProblem::at(
                &raw.name,
                format!(
                    "invalid stream name \"{name}\": 1 to 64 of A-Z a-z 0-9 - _ . (not starting with .)"
                ),
            ));
        }
        let kind = raw.kind.get_ref().as_str();
        // Which keys each type takes; any other key set is an error naming it.
        let allowed: &[&str] = match kind {
            "syslog" => &["address", "tls", "ca_file", "server_name"],
            "splunk_hec" => &["url", "token_file", "index", "sourcetype", "ca_file"],
            "otlp" => &["url", "ca_file"],
            "file" => &["path", "max_bytes", "keep"],
            other => {
                return Err(StreamProblem::at(
                    &raw.kind,
                    format!(
                        "unknown stream type \"{other}\" (expected \"syslog\", \"splunk_hec\", \"otlp\" or \"file\")"
                    ),
                ))
            }
        };
        let set: [(&str, Option<Range<usize>>); 10] = [
            ("address", raw.address.as_ref().map(Spanned::span)),
            ("tls", raw.tls.map(|_| raw.kind.span())),
            ("ca_file", raw.ca_file.as_ref().map(Spanned::span)),
            ("server_name", raw.server_name.as_ref().map(Spanned::span)),
            ("url", raw.url.as_ref().map(Spanned::span)),
            ("token_file", raw.token_file.as_ref().map(Spanned::span)),
            ("index", raw.index.as_ref().map(Spanned::span)),
            ("sourcetype", raw.sourcetype.as_ref().map(Spanned::span)),
            ("path", raw.path.as_ref().map(Spanned::span)),
            ("max_bytes", raw.max_bytes.as_ref().map(Spanned::span)),
        ];
        let keep_span = raw.keep.as_ref().map(Spanned::span);
        for (key, span) in set.into_iter().chain([("keep", keep_span)]) {
            if let Some(span) = span {
                if !allowed.contains(&key) {
                    return Err(StreamProblem {
                        span: Some(span),
                        message: format!("{key} does not apply to a stream of type \"{kind}\""),
                    });
                }
            }
        }
        let required = |v: &Option<Spanned<String>>, key: &str| {
            v.clone().ok_or_else(|| StreamProblem {
                span: Some(raw.kind.span()),
                message: format!("a stream of type \"{kind}\" needs {key}"),
            })
        };
        let ca_file = raw
            .ca_file
            .as_ref()
            .map(|v| path_of(v, "ca_file"))
            .transpose()?;
        let sink = match kind {
            "syslog" => {
                let address = required(&raw.address, "address = \"host:port\"")?;
                let host = match address.get_ref().rsplit_once(':') {
                    Some((host, port))
                        if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) =>
                    {
                        host.trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_owned()
                    }
                    _ => {
                        return Err(StreamProblem::at(
                            &address,
                            format!(
                                "invalid address \"{}\": expected host:port",
                                address.get_ref()
                            ),
                        ))
                    }
                };
                let tls = raw.tls.unwrap_or(false);
                if !tls {
                    if let Some(v) = raw.ca_file.as_ref().or(raw.server_name.as_ref()) {
                        return Err(StreamProblem::at(
                            v,
                            "ca_file and server_name need tls = true",
                        ));
                    }
                }
                SinkConfig::Syslog {
                    address: address.get_ref().clone(),
                    tls: tls.then(|| TlsSettings {
                        ca_file,
                        server_name: raw
                            .server_name
                            .as_ref()
                            .map(|s| s.get_ref().clone())
                            .unwrap_or(host),
                    }),
                }
            }
            "splunk_hec" => SinkConfig::SplunkHec {
                url: url_of(&required(&raw.url, "url")?)?,
                token_file: path_of(&required(&raw.token_file, "token_file")?, "token_file")?,
                index: raw.index.map(Spanned::into_inner),
                sourcetype: raw.sourcetype.map(Spanned::into_inner),
                ca_file,
            },
            "otlp" => SinkConfig::Otlp {
                url: url_of(&required(&raw.url, "url")?)?,
                ca_file,
            },
            _ => {
                let max_bytes = match &raw.max_bytes {
                    None => DEFAULT_FILE_MAX_BYTES,
                    Some(v) => crate::size::value(v.get_ref(), "max_bytes", 4096..=u64::MAX)
                        .map_err(|e| StreamProblem::at(v, e))?,
                };
                let keep = match &raw.keep {
                    None => DEFAULT_FILE_KEEP,
                    Some(k) if (1..=1000).contains(k.get_ref()) => *k.get_ref(),
                    Some(k) => return Err(StreamProblem::at(k, "keep must be between 1 and 1000")),
                };
                SinkConfig::File {
                    path: path_of(&required(&raw.path, "path")?, "path")?,
                    max_bytes,
                    keep,
                }
            }
        };
        let format = match raw.format.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("json") => Format::Json,
            Some("ocsf") => Format::Ocsf,
            Some(other) => {
                return Err(StreamProblem::at(
                    raw.format.as_ref().expect("format set"),
                    format!("unknown format \"{other}\" (expected \"json\" or \"ocsf\")"),
                ))
            }
        };
        let start_at = match raw.start_at.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("oldest") => StartAt::Oldest,
            Some("now") => StartAt::Now,
            Some(other) => {
                return Err(StreamProblem::at(
                    raw.start_at.as_ref().expect("start_at set"),
                    format!("unknown start_at \"{other}\" (expected \"oldest\" or \"now\")"),
                ))
            }
        };
        let mut filters = Filters::default();
        for k in &raw.kinds {
            if k.get_ref().is_empty() {
                return Err(StreamProblem::at(k, "an event kind cannot be empty"));
            }
            filters.kinds.push(k.get_ref().clone());
        }
        for v in &raw.verdicts {
            if !VERDICTS.contains(&v.get_ref().as_str()) {
                return Err(StreamProblem::at(
                    v,
                    format!(
                        "unknown verdict \"{}\" (expected allow, approve or deny)",
                        v.get_ref()
                    ),
                ));
            }
            filters.verdicts.push(v.get_ref().clone());
        }
        for w in &raw.workloads {
            let glob = Glob::new(w.get_ref())
                .map_err(|e| StreamProblem::at(w, format!("invalid workload glob: {e}")))?;
            filters.workloads.push(glob.compile_matcher());
        }
        let batch = match &raw.batch {
            None => DEFAULT_BATCH,
            Some(b) if (1..=10_000).contains(b.get_ref()) => *b.get_ref(),
            Some(b) => return Err(StreamProblem::at(b, "batch must be between 1 and 10000")),
        };
        let backoff_initial = duration(&raw.backoff_initial, DEFAULT_BACKOFF_INITIAL)?;
        let backoff_max = duration(&raw.backoff_max, DEFAULT_BACKOFF_MAX)?;
        let timeout = duration(&raw.timeout, DEFAULT_TIMEOUT)?;
        Ok(StreamConfig {
            name,
            sink,
            format,
            filters,
            start_at,
            batch,
            backoff_initial,
            backoff_max,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        stream: Vec<Spanned<RawStream>>,
    }

    fn parse(text: &str) -> Result<Vec<StreamConfig>, String> {
        let doc: Doc = toml::from_str(text).map_err(|e| e.to_string())?;
        StreamConfig::from_raw_list(doc.stream).map_err(|p| p.message)
    }

    #[test]
    fn every_sink_type_parses_with_its_keys() {
        let streams = parse(
            r#"
            [[stream]]
            name = "siem"
            type = "syslog"
            address = "127.0.0.1:6514"
            tls = true
            ca_file = "/etc/nhi-agent/siem-ca.pem"
            format = "ocsf"
            kinds = ["statement", "http_request"]
            verdicts = ["deny"]
            workloads = ["ci-*"]

            [[stream]]
            name = "splunk"
            type = "splunk_hec"
            url = "https://splunk.example:8088/services/collector/event"
            token_file = "/etc/nhi-agent/hec.token"
            index = "nhi"

            [[stream]]
            name = "otel"
            type = "otlp"
            url = "http://127.0.0.1:4318/v1/logs"

            [[stream]]
            name = "local"
            type = "file"
            path = "/var/log/nhi-agent/events.jsonl"
            max_bytes = "1MB"
            keep = 3
            start_at = "now"
            "#,
        )
        .expect("valid");
        assert_eq!(streams.len(), 4);
        assert_eq!(
            streams[0].sink,
            SinkConfig::Syslog {
                address: "127.0.0.1:6514".into(),
                tls: Some(TlsSettings {
                    ca_file: Some("/etc/nhi-agent/siem-ca.pem".into()),
                    server_name: "127.0.0.1".into(),
                }),
            }
        );
        assert_eq!(streams[0].format, Format::Ocsf);
        assert!(streams[0]
            .filters
            .pass("statement", Some("deny"), Some("ci-build")));
        assert!(!streams[0]
            .filters
            .pass("statement", Some("allow"), Some("ci-build")));
        assert!(!streams[0]
            .filters
            .pass("statement", Some("deny"), Some("backup")));
        assert!(!streams[0].filters.pass("chunk", None, Some("ci-build")));
        assert!(streams[1].filters.pass("chunk", None, None), "no filter");
        assert_eq!(streams[1].format, Format::Json);
        assert!(
            matches!(&streams[1].sink, SinkConfig::SplunkHec { index: Some(i), .. } if i == "nhi")
        );
        assert_eq!(
            streams[3].sink,
            SinkConfig::File {
                path: "/var/log/nhi-agent/events.jsonl".into(),
                max_bytes: 1_000_000,
                keep: 3
            }
        );
        assert_eq!(streams[3].start_at, StartAt::Now);
    }

    /// The commented `[[stream]]` of policies/example.toml, uncommented, is valid.
    #[test]
    fn the_example_stream_parses() {
        let example = include_str!("../../../policies/example.toml");
        let block: Vec<&str> = example
            .lines()
            .skip_while(|l| *l != "# [[stream]]")
            .take_while(|l| l.starts_with("# "))
            .map(|l| &l[2..])
            .collect();
        assert!(block.len() > 3, "the example has a [[stream]]");
        let streams = parse(&block.join("\n")).expect("the example stream");
        assert_eq!(streams[0].name, "siem");
        assert_eq!(streams[0].format, Format::Ocsf);
        assert!(matches!(
            &streams[0].sink,
            SinkConfig::Syslog { tls: Some(_), .. }
        ));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, expected) in [
            (
                "name = \"a\"\ntype = \"kafka\"",
                "unknown stream type \"kafka\"",
            ),
            ("name = \"a\"\ntype = \"syslog\"", "needs address"),
            (
                "name = \"a\"\ntype = \"syslog\"\naddress = \"nohost\"",
                "expected host:port",
            ),
            (
                "name = \"a\"\ntype = \"syslog\"\naddress = \"h:1\"\nca_file = \"/x\"",
                "need tls = true",
            ),
            (
                "name = \"a\"\ntype = \"syslog\"\naddress = \"h:1\"\nurl = \"http://x\"",
                "url does not apply",
            ),
            (
                "name = \"a\"\ntype = \"splunk_hec\"\nurl = \"https://h/\"",
                "needs token_file",
            ),
            (
                "name = \"a\"\ntype = \"splunk_hec\"\nurl = \"https://h/\"\ntoken_file = \"rel\"",
                "absolute path",
            ),
            (
                "name = \"a\"\ntype = \"otlp\"\nurl = \"ftp://h/\"",
                "not an http",
            ),
            (
                "name = \"a\"\ntype = \"otlp\"\nurl = \"https://u:p@h/\"",
                "credentials",
            ),
            (
                "name = \"a\"\ntype = \"file\"\npath = \"/x\"\nmax_bytes = \"10\"",
                "at least 4KiB",
            ),
            (
                "name = \"a\"\ntype = \"file\"\npath = \"/x\"\nformat = \"xml\"",
                "unknown format",
            ),
            (
                "name = \"a\"\ntype = \"file\"\npath = \"/x\"\nverdicts = [\"maybe\"]",
                "unknown verdict",
            ),
            (
                "name = \"../x\"\ntype = \"file\"\npath = \"/x\"",
                "invalid stream name",
            ),
            (
                "name = \"a\"\ntype = \"file\"\npath = \"/x\"\nbogus = 1",
                "unknown field",
            ),
        ] {
            let err = parse(&format!("[[stream]]\n{text}")).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
        let err = parse(
            "[[stream]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\n\
             [[stream]]\nname = \"a\"\ntype = \"file\"\npath = \"/y\"",
        )
        .expect_err("duplicate");
        assert!(err.contains("duplicate [[stream]] name \"a\""), "{err}");
    }
}
