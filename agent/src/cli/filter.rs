//! Inputs and filters shared by `sessions`, `events`, `replay` and `export`.
//!
//! Session-level conditions (workload, target, protocol) are matched on the merged
//! session rows; request-level conditions (verdict, text, regex) on each protocol's
//! request events (`cli::views::request_events`: PostgreSQL's `statement`, HTTP's
//! `http_request`, AWS's `aws_call`, SSH's `ssh_exec`), which all carry the judgement's
//! members. For PostgreSQL (see `proxy/postgres/flow.rs`):
//! `{"seq", "text", "verdict": "allow"|"approve"|"deny", "action":
//! "forwarded"|"refused"|"held", "enforced", "rule", ...}` followed by a `statement_end`
//! with the same `seq` whose `masked` lists the masked columns. The verdict classes are:
//! - `denied`: the policy said deny (enforced or only observed) or the agent refused it;
//! - `held`: the policy asked for approval, or the agent held it;
//! - `allowed`: the policy allowed it and the agent forwarded it;
//! - `masked`: its result had masked values (from its `statement_end`).
//!
//! An `aws_call` says what the agent did in `outcome` (its `action` is the API action):
//! `forwarded` and `refused` read as above; `not approved` (held, then refused) is
//! `held` by its verdict, as the call's `http_request` (action `held`) is; `not signed`
//! (allowed, but the agent could not sign it) is in no class but its verdict's. In an
//! AWS session a judged call is thus found twice, by its `http_request` and its
//! `aws_call` (`--kind aws_call` keeps one line per call); a request refused before it
//! was judged (its signature, its body) has only the `http_request`.
//!
//! This module does no IO: the commands feed it rows.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, ValueEnum};
use globset::{Glob, GlobMatcher};
use regex::Regex;
use serde_json::Value;

use super::sessions::parse_since;
use super::views::RequestEvents;
use crate::journal::SessionRow;
use crate::proxy::postgres::events::StatementEnd;

/// Where to read: journal files and directories, by option or as trailing arguments.
#[derive(Debug, Clone, Default, Args)]
pub struct InputArgs {
    /// A journal file, or a directory read recursively (every *.db in it, segments
    /// included). Repeatable.
    #[arg(long = "journal", value_name = "PATH")]
    pub journal: Vec<PathBuf>,

    /// More journal files or directories.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

impl InputArgs {
    /// Every input, `--journal` ones first; an error when there is none.
    pub fn all(&self) -> anyhow::Result<Vec<PathBuf>> {
        let all: Vec<PathBuf> = self.journal.iter().chain(&self.paths).cloned().collect();
        if all.is_empty() {
            anyhow::bail!("no journal given: pass --journal PATH or PATH (a file or a directory)");
        }
        Ok(all)
    }
}

/// What a statement's outcome was, for `--verdict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerdictClass {
    Denied,
    Held,
    Masked,
    Allowed,
}

/// The filter options of `sessions`, `events` and `export`.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only this workload: an exact name or a glob (`ci-*`).
    #[arg(long, value_name = "W")]
    pub workload: Option<String>,

    /// Only this target: an exact name or a glob.
    #[arg(long, value_name = "T")]
    pub target: Option<String>,

    /// Only sessions of this container: its name (a glob), or its id or an id prefix of
    /// at least 4 hex digits as `docker ps` shows it.
    #[arg(long, value_name = "NAME|ID")]
    pub container: Option<String>,

    /// Only from this time on: RFC 3339 (2026-11-22T10:00:00Z) or a duration meaning
    /// "that long ago" (2h, 30m, 1d). Sessions: their start; events: their time.
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<SystemTime>,

    /// Only up to this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub until: Option<SystemTime>,

    /// Only requests (SQL statements, HTTP requests, AWS calls) with this outcome (sessions: having
    /// such a request).
    #[arg(long, value_enum, value_name = "V")]
    pub verdict: Option<VerdictClass>,

    /// Only sessions of this protocol (tcp, postgres, http, aws, aws-imds, ssh).
    #[arg(long, value_name = "P")]
    pub protocol: Option<String>,

    /// Only requests whose text contains this (case-sensitive; sessions: having one): a
    /// statement's SQL, an HTTP request's method and target as sent (`GET /admin?id=7`) or
    /// method and normalised path, an AWS call's action and resources
    /// (`iam:CreateUser mallory`) or service.
    #[arg(long, value_name = "SUBSTR")]
    pub text: Option<String>,

    /// Only requests whose text matches this regular expression (sessions: having one).
    #[arg(long, value_name = "RE")]
    pub regex: Option<String>,

    /// Only sessions whose attested claim KEY has this value (string compare; numbers by
    /// their decimal text). Repeat for several claims; all must match.
    #[arg(long = "claim", value_name = "KEY=VALUE", value_parser = parse_claim)]
    pub claims: Vec<(String, String)>,

    /// Only the N most recent matches (still listed oldest first).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// Parses `--claim KEY=VALUE` (the value may contain `=`).
fn parse_claim(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, v)) if !key.is_empty() => Ok((key.to_string(), v.to_string())),
        _ => Err(format!(
            "expected KEY=VALUE, e.g. run_id=123 (got {value:?})"
        )),
    }
}

/// [`FilterArgs`] compiled.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub workload: Option<GlobMatcher>,
    pub container: Option<ContainerMatch>,
    pub target: Option<GlobMatcher>,
    pub protocol: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub verdict: Option<VerdictClass>,
    pub text: Option<String>,
    pub regex: Option<Regex>,
    pub claims: Vec<(String, String)>,
    pub limit: Option<usize>,
}

fn glob(what: &str, pattern: &str) -> anyhow::Result<GlobMatcher> {
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| anyhow::anyhow!("--{what} {pattern:?} is not a valid glob: {e}"))
}

/// `--container`: a name glob, and the id prefix it may also be.
#[derive(Debug, Clone)]
pub struct ContainerMatch {
    name: GlobMatcher,
    id_prefix: Option<String>,
}

impl ContainerMatch {
    fn new(value: &str) -> anyhow::Result<ContainerMatch> {
        let hex = value.len() >= 4 && value.bytes().all(|b| b.is_ascii_hexdigit());
        Ok(ContainerMatch {
            name: glob("container", value)?,
            id_prefix: hex.then(|| value.to_ascii_lowercase()),
        })
    }

    fn matches(&self, c: &crate::identity::ContainerIdentity) -> bool {
        c.name.as_deref().is_some_and(|n| self.name.is_match(n))
            || self
                .id_prefix
                .as_deref()
                .is_some_and(|p| c.id.as_deref().is_some_and(|id| id.starts_with(p)))
    }
}

impl Filter {
    /// Compiles the globs and the regular expression.
    pub fn new(args: &FilterArgs) -> anyhow::Result<Filter> {
        Ok(Filter {
            container: args
                .container
                .as_deref()
                .map(ContainerMatch::new)
                .transpose()?,
            workload: args
                .workload
                .as_deref()
                .map(|w| glob("workload", w))
                .transpose()?,
            target: args
                .target
                .as_deref()
                .map(|t| glob("target", t))
                .transpose()?,
            protocol: args.protocol.clone(),
            since: args.since,
            until: args.until,
            verdict: args.verdict,
            text: args.text.clone(),
            regex: args
                .regex
                .as_deref()
                .map(|r| {
                    Regex::new(r).map_err(|e| anyhow::anyhow!("--regex {r:?} is not valid: {e}"))
                })
                .transpose()?,
            claims: args.claims.clone(),
            limit: args.limit,
        })
    }

    /// Whether any condition is about a session's identity (workload, target, protocol,
    /// claims).
    pub fn has_identity(&self) -> bool {
        self.workload.is_some()
            || self.container.is_some()
            || self.target.is_some()
            || self.protocol.is_some()
            || !self.claims.is_empty()
    }

    /// Whether any condition is about requests (verdict, text, regex): statements,
    /// HTTP requests, ... (`cli::views::request_events`).
    pub fn has_request(&self) -> bool {
        self.verdict.is_some() || self.text.is_some() || self.regex.is_some()
    }

    /// The workload, target, protocol and claim conditions on a session.
    pub fn identity_matches(&self, row: &SessionRow) -> bool {
        self.who_matches(&Who::of_session(row))
    }

    /// The workload, target, protocol and claim conditions on whoever an event is about:
    /// its session, or for an event of no session (exec, exit, attestation, grant) what
    /// its data names (see [`Who::of_event_data`]). A condition on something the event
    /// does not name (the target of an exec) does not match, as for a session of another
    /// target. `--claim`: every KEY=VALUE must be an attested claim; a number or a
    /// boolean matches its text (`run_id=123`); nothing unattested matches a claim.
    pub fn who_matches(&self, who: &Who<'_>) -> bool {
        self.container
            .as_ref()
            .is_none_or(|m| who.container.is_some_and(|c| m.matches(c)))
            && self.claims.iter().all(|(name, value)| {
                who.claims
                    .and_then(|claims| claims.get(name))
                    .and_then(crate::policy::claim_text)
                    .is_some_and(|text| text == value.as_str())
            })
            && self
                .workload
                .as_ref()
                .is_none_or(|g| who.workload.is_some_and(|w| g.is_match(w)))
            && self
                .target
                .as_ref()
                .is_none_or(|g| who.target.is_some_and(|t| g.is_match(t)))
            && self.protocol.as_deref().is_none_or(|p| {
                who.protocol
                    .is_some_and(|proto| p.eq_ignore_ascii_case(proto))
            })
    }

    /// The identity conditions plus the session's start within --since/--until.
    pub fn session_matches(&self, row: &SessionRow) -> bool {
        self.identity_matches(row) && self.time_matches(row.started_at)
    }

    /// --since/--until.
    pub fn time_matches(&self, at: SystemTime) -> bool {
        self.since.is_none_or(|s| at >= s) && self.until.is_none_or(|u| at <= u)
    }

    /// The request conditions on a request event's data (`requests`: what its protocol
    /// makes of it); `masked` says whether its result had masked values.
    pub fn request_matches(&self, requests: RequestEvents, data: &Value, masked: bool) -> bool {
        let texts = requests.texts(data);
        self.verdict
            .is_none_or(|v| verdict_classes(requests.judgement(data), masked).contains(&v))
            && self
                .text
                .as_deref()
                .is_none_or(|t| texts.iter().any(|text| text.contains(t)))
            && self
                .regex
                .as_ref()
                .is_none_or(|r| texts.iter().any(|text| r.is_match(text)))
    }
}

/// Whom a session or an event is about, for the identity conditions of a [`Filter`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Who<'a> {
    pub workload: Option<&'a str>,
    pub target: Option<&'a str>,
    pub protocol: Option<&'a str>,
    pub claims: Option<&'a serde_json::Map<String, Value>>,
    /// The session's container; events of no session name none.
    pub container: Option<&'a crate::identity::ContainerIdentity>,
}

impl<'a> Who<'a> {
    pub fn of_session(row: &'a SessionRow) -> Who<'a> {
        Who {
            workload: Some(&row.identity.workload),
            target: Some(&row.identity.target),
            protocol: Some(&row.identity.protocol),
            claims: row.claims.as_ref(),
            container: row.identity.container.as_ref(),
        }
    }

    /// What the data of an event of no session names: the top-level `workload`,
    /// `target` and `claims` every writer of session-less events uses (exec, exit,
    /// attestation), or those of the `grant` object of an `approval_grant` event.
    pub fn of_event_data(data: Option<&'a Value>) -> Who<'a> {
        let Some(data) = data else {
            return Who::default();
        };
        let grant = data.get("grant");
        let field = |name: &str| {
            data.get(name)
                .and_then(Value::as_str)
                .or_else(|| grant.and_then(|g| g.get(name)).and_then(Value::as_str))
        };
        Who {
            workload: field("workload"),
            target: field("target"),
            protocol: None,
            claims: data.get("claims").and_then(Value::as_object),
            container: None,
        }
    }
}

/// The verdict classes of a request event from its judgement (`verdict`, and what the
/// agent did: `RequestEvents::judgement`); see the module documentation.
pub fn verdict_classes((verdict, action): (&str, &str), masked: bool) -> Vec<VerdictClass> {
    let mut classes = Vec::new();
    if verdict == "deny" || action == "refused" {
        classes.push(VerdictClass::Denied);
    }
    if verdict == "approve" || action == "held" {
        classes.push(VerdictClass::Held);
    }
    if verdict == "allow" && action == "forwarded" {
        classes.push(VerdictClass::Allowed);
    }
    if masked {
        classes.push(VerdictClass::Masked);
    }
    classes
}

/// Whether a `statement_end`'s data records masked values.
pub fn end_has_masks(data: &Value) -> bool {
    StatementEnd::read(data).is_some_and(|end| end.has_masks())
}

/// Keeps the last `limit` items of a stream (all of them without a limit).
pub struct Tail<T> {
    limit: Option<usize>,
    items: std::collections::VecDeque<T>,
}

impl<T> Tail<T> {
    pub fn new(limit: Option<usize>) -> Self {
        Tail {
            limit,
            items: std::collections::VecDeque::new(),
        }
    }

    pub fn push(&mut self, item: T) {
        if self.limit == Some(0) {
            return;
        }
        if self.limit.is_some_and(|l| self.items.len() >= l) {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    pub fn into_vec(self) -> Vec<T> {
        self.items.into()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::identity::SessionIdentity;
    use crate::journal::tests::{at_us, sample_start};

    fn row(workload: &str, target: &str, protocol: &str, started_us: i64) -> SessionRow {
        let s = sample_start(workload, target, at_us(started_us));
        SessionRow {
            identity: SessionIdentity {
                protocol: protocol.to_string(),
                ..s.identity.as_ref().clone()
            },
            id: 1,
            started_at: s.started_at,
            ended_at: None,
            duration_ms: None,
            bytes_from_client: 0,
            bytes_from_server: 0,
            close_reason: None,
            claims: s.claims,
        }
    }

    #[test]
    fn claims_match_by_text_and_never_match_unattested_sessions() {
        let mut attested = row("ci", "db", "postgres", 0);
        attested.claims = json!({ "ref": "refs/heads/main", "run_id": 123, "ok": true })
            .as_object()
            .cloned();
        let unattested = row("ci", "db", "postgres", 0);
        let run = filter(|a| a.claims = vec![("run_id".into(), "123".into())]);
        assert!(run.has_identity());
        assert!(run.session_matches(&attested), "a number matches its text");
        assert!(!run.session_matches(&unattested));
        let both = filter(|a| {
            a.claims = vec![
                ("ref".into(), "refs/heads/main".into()),
                ("ok".into(), "true".into()),
            ]
        });
        assert!(both.session_matches(&attested));
        let other = filter(|a| a.claims = vec![("ref".into(), "refs/heads/dev".into())]);
        assert!(!other.session_matches(&attested));
        let missing = filter(|a| a.claims = vec![("actor".into(), "x".into())]);
        assert!(!missing.session_matches(&attested));
        assert!(filter(|_| {}).session_matches(&unattested));
    }

    #[test]
    fn container_matches_its_name_or_an_id_prefix() {
        let mut job = row("ci", "db", "postgres", 0);
        job.identity.container = Some(crate::identity::ContainerIdentity {
            runtime: Some("docker".into()),
            id: Some(format!("4f1e2d3c{}", "0".repeat(56))),
            name: Some("build-42".into()),
            ..Default::default()
        });
        let host = row("ci", "db", "postgres", 0);
        for (value, matches) in [
            ("build-42", true),
            ("build-*", true),
            ("build", false),
            ("4f1e", true),
            ("4F1E2D3C", true),
            ("4f1", false),
            ("1e2d", false),
        ] {
            let f = filter(|a| a.container = Some(value.into()));
            assert_eq!(f.session_matches(&job), matches, "--container {value}");
            assert!(!f.session_matches(&host), "a host session has no container");
            assert!(f.has_identity());
        }
    }

    fn filter(f: impl FnOnce(&mut FilterArgs)) -> Filter {
        let mut args = FilterArgs::default();
        f(&mut args);
        Filter::new(&args).expect("valid filter")
    }

    #[test]
    fn workload_is_exact_or_glob_and_target_protocol_time_apply() {
        let ci = row("ci-build", "pg", "postgres", 0);
        let backup = row("backup", "s3", "tcp", 10_000_000);
        let exact = filter(|a| a.workload = Some("ci".into()));
        assert!(!exact.session_matches(&ci), "exact name is not a prefix");
        let glob = filter(|a| a.workload = Some("ci-*".into()));
        assert!(glob.session_matches(&ci) && !glob.session_matches(&backup));
        let target = filter(|a| a.target = Some("s3".into()));
        assert!(target.session_matches(&backup) && !target.session_matches(&ci));
        let proto = filter(|a| a.protocol = Some("POSTGRES".into()));
        assert!(proto.session_matches(&ci) && !proto.session_matches(&backup));
        let since = filter(|a| a.since = Some(at_us(5_000_000)));
        assert!(since.session_matches(&backup) && !since.session_matches(&ci));
        let until = filter(|a| a.until = Some(at_us(5_000_000)));
        assert!(until.session_matches(&ci) && !until.session_matches(&backup));
        assert!(!filter(|_| ()).has_identity());
        assert!(glob.has_identity() && !glob.has_request());
        let err = Filter::new(&FilterArgs {
            workload: Some("a[".into()),
            ..FilterArgs::default()
        })
        .expect_err("bad glob");
        assert!(err.to_string().contains("--workload"), "{err}");
    }

    #[test]
    fn verdict_classes_follow_the_statement_event() {
        let allowed = json!({"text": "select 1", "verdict": "allow", "action": "forwarded"});
        let refused = json!({"text": "drop table t", "verdict": "deny", "action": "refused"});
        let observed = json!({"text": "drop table t", "verdict": "deny", "action": "forwarded",
                              "enforced": false});
        let held = json!({"text": "delete from t", "verdict": "approve", "action": "held"});
        use VerdictClass::*;
        let classes = |data: &Value, masked| verdict_classes(PG.judgement(data), masked);
        assert_eq!(classes(&allowed, false), vec![Allowed]);
        assert_eq!(classes(&allowed, true), vec![Allowed, Masked]);
        assert_eq!(classes(&refused, false), vec![Denied]);
        assert_eq!(classes(&observed, false), vec![Denied]);
        assert_eq!(classes(&held, false), vec![Held]);

        let denied = filter(|a| a.verdict = Some(Denied));
        assert!(denied.request_matches(PG, &refused, false));
        assert!(!denied.request_matches(PG, &allowed, true));
        let masked = filter(|a| a.verdict = Some(Masked));
        assert!(masked.request_matches(PG, &allowed, true));
        assert!(!masked.request_matches(PG, &allowed, false));
        assert!(end_has_masks(&json!({"masked": [{"column": "email"}]})));
        assert!(!end_has_masks(&json!({"masked": []})));
        assert!(!end_has_masks(&json!({"rows": 1})));
    }

    const PG: RequestEvents = RequestEvents {
        kind: "statement",
        texts: &[&["text"]],
        action: "action",
    };

    #[test]
    fn http_requests_match_by_method_and_target() {
        let http = crate::cli::views::request_events_of("http_request").expect("http");
        let refused = json!({"method": "DELETE", "target": "/%61dmin/users/7",
                             "path": "/admin/users/7", "verdict": "deny", "action": "refused"});
        assert!(
            filter(|a| a.text = Some("/admin/users".into())).request_matches(http, &refused, false)
        );
        assert!(filter(|a| a.text = Some("DELETE /admin".into()))
            .request_matches(http, &refused, false));
        assert!(
            !filter(|a| a.text = Some("GET /admin".into())).request_matches(http, &refused, false)
        );
        assert!(filter(|a| a.text = Some("/%61dmin".into())).request_matches(http, &refused, false));
        let re = filter(|a| a.regex = Some("^DELETE /admin/users/[0-9]+$".into()));
        assert!(re.request_matches(http, &refused, false));
        let denied = filter(|a| a.verdict = Some(VerdictClass::Denied));
        assert!(denied.request_matches(http, &refused, false));
        let allowed = filter(|a| a.verdict = Some(VerdictClass::Allowed));
        assert!(!allowed.request_matches(http, &refused, false));
    }

    #[test]
    fn text_is_a_case_sensitive_substring_and_regex_a_regex() {
        let data = json!({"text": "SELECT email FROM users WHERE id = $1"});
        assert!(filter(|a| a.text = Some("FROM users".into())).request_matches(PG, &data, false));
        assert!(!filter(|a| a.text = Some("from users".into())).request_matches(PG, &data, false));
        let re = filter(|a| a.regex = Some(r"(?i)from\s+users".into()));
        assert!(re.request_matches(PG, &data, false));
        assert!(!filter(|a| a.regex = Some("^DELETE".into())).request_matches(PG, &data, false));
        assert!(Filter::new(&FilterArgs {
            regex: Some("(".into()),
            ..FilterArgs::default()
        })
        .is_err());
    }

    #[test]
    fn tail_keeps_the_last_n() {
        let mut t = Tail::new(Some(2));
        for i in 0..5 {
            t.push(i);
        }
        assert_eq!(t.into_vec(), vec![3, 4]);
        let mut all = Tail::new(None);
        all.push(1);
        all.push(2);
        assert_eq!(all.into_vec(), vec![1, 2]);
        let mut none = Tail::new(Some(0));
        none.push(1);
        assert!(none.into_vec().is_empty());
    }
}
