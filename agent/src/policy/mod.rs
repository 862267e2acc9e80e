//! SQL-aware policy: per statement, allow, deny, or hold for a human (approve).
//!
//! Pure: text in, decision out. [`analyze`] describes a query string's statements;
//! [`Policy::decide`] gives the message's [`Verdict`]. The configuration file's
//! `[[policy]]` tables deserialize as [`RawPolicy`] and are validated once, by
//! [`Policy::from_raw`], into [`Policy`] (globs and regexes compiled, names checked);
//! a bad value is a [`PolicyProblem`] pointing at it in the file.
//!
//! # Evaluation
//!
//! For each statement the rules are tried in file order and the first that matches
//! gives the statement's verdict; with none, an opaque statement gets `unparsed` and
//! any other gets `default`. A rule matches when every condition it sets holds
//! (`kinds`: the statement has one of them; `tables` / `functions`: one name matches
//! one glob, see [`name_candidates`]; `without_where`; `text`: the regex finds a
//! match in the statement's text). A rule that sets neither `kinds` nor `text` never
//! matches an opaque statement: its other conditions describe SQL that is not visible.
//! The message gets the most severe verdict of its statements (deny > approve >
//! allow), and the decision names the first statement that has it.
//!
//! # Configuration
//!
//! ```toml
//! [[policy]]
//! name = "bots-on-orders"      # optional, for messages
//! workload = "nhi-demo*"       # glob over workload names (case-sensitive); default "*"
//! target = "orders-*"          # glob over target names (case-sensitive); default "*"
//! mode = "observe"             # optional: "enforce" | "observe"; overrides [agent] mode
//! default = "allow"            # parsed statement, no rule matched: allow (default) | deny | approve
//! unparsed = "deny"            # opaque statement, no rule matched: default "deny"
//! db_user = "app_ro"           # optional: log in as this database user
//! record_results = "summary"   # "none" | "summary" (default) | "rows"
//! approval_timeout = "5m"      # humantime, > 0, default 5m
//! claims = { ref = "refs/heads/main", repository = "org/*" } # optional: attested CI job claims
//! attested = true              # optional: true = attested sessions only, false = unattested only
//! max_session_duration = "1h"  # optional, > 0: sessions are closed (FATAL 57P05) after it
//!
//! [[policy.rule]]
//! name = "no-drop"             # required, unique within the policy
//! verdict = "deny"             # required: allow | deny | approve
//! kinds = ["drop", "truncate"] # statement kinds (StatementKind::as_str); any of them
//! tables = ["users", "*.secrets"]      # globs, case-insensitive; any touched table
//! functions = ["pg_read_file", "lo_*"] # globs, case-insensitive; any called function
//! without_where = true         # only UPDATE/DELETE without WHERE (false: no condition)
//! text = '(?i)\bpg_sleep\b'    # regex, searched in the statement's text
//! ```
//!
//! `claims` (see [`crate::attest`]): every listed claim must be present in the session's
//! attested claims and its value must match the glob (case-sensitive; `*` also matches
//! `/`). A string claim is compared as is, a number by its decimal text, a boolean as
//! `true`/`false`; other values never match. A policy with `claims` never matches an
//! unattested session. `attested = false` with `claims` is an error (it could never match).
//!
//! HTTP targets are judged by the rules' HTTP conditions instead (`methods`, `paths`,
//! `hosts`, `headers`: see [`http`] and [`Policy::decide_http`]); a rule sets SQL
//! conditions or HTTP ones, never both, and a rule with neither matches every request
//! of either protocol.
//!
//! Unknown keys are errors. An empty `kinds`/`tables`/`functions` list is an error
//! (it could never match). Table and function names are compared through
//! [`name_candidates`]: `users` also matches `public.users` and
//! `pg_catalog.users`, and `public.users` also matches `users`.
#![forbid(unsafe_code)]

pub mod aws;
pub mod http;
pub mod kube;
mod lint;
mod raw;
pub mod redis;
mod sql;
mod sql_cache;
pub mod ssh;

#[cfg(test)]
mod tests;

use std::ops::Range;
use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use regex::Regex;
use serde::Serialize;
use toml::Spanned;

pub use lint::{Lint, TargetKind};
pub use raw::{RawPolicy, RawRule};
pub use sql::{
    analyze, analyze_mysql, analyze_with, name_candidates, Analysis, AnalyzeOptions, KindSet,
    StatementInfo, StatementKind,
};
pub use sql_cache::AnalysisCache;

/// How long an `approve` hold waits when the policy does not say.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// A validation problem in one `[[policy]]`: a message and the byte span (in the
/// configuration file) of the value it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PolicyProblem {
    /// Where the offending value is in the file; `None` when nothing can be pointed at.
    pub span: Option<Range<usize>>,
    /// What is wrong, naming the offending value.
    pub message: String,
}

impl PolicyProblem {
    fn at<T>(value: &Spanned<T>, message: impl Into<String>) -> Self {
        PolicyProblem {
            span: Some(value.span()),
            message: message.into(),
        }
    }
}

/// What happens to a statement (and a message).
///
/// The variants are declared from least to most severe, so the derived `Ord` is the
/// severity order: `max()` of verdicts is the message's verdict.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Forward it.
    Allow,
    /// Hold it until a human approves it (or the approval times out).
    Approve,
    /// Refuse it.
    Deny,
}

impl Verdict {
    /// The name used in policy files and in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }

    fn parse(value: &Spanned<String>, key: &str) -> Result<Verdict, PolicyProblem> {
        match value.get_ref().as_str() {
            "allow" => Ok(Verdict::Allow),
            "approve" => Ok(Verdict::Approve),
            "deny" => Ok(Verdict::Deny),
            other => Err(PolicyProblem::at(
                value,
                format!("invalid {key} \"{other}\": expected \"allow\", \"deny\" or \"approve\""),
            )),
        }
    }
}

/// Whether a policy's verdicts are carried out or only recorded; overrides the
/// agent's mode for the sessions the policy governs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PolicyMode {
    /// Deny and approve verdicts are carried out.
    Enforce,
    /// Verdicts are journaled; everything is forwarded.
    Observe,
}

impl PolicyMode {
    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Observe => "observe",
        }
    }
}

/// How much of a statement's result the journal keeps.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum RecordResults {
    /// Nothing about the result.
    None,
    /// The command tag and row count.
    #[default]
    Summary,
    /// The rows themselves (after masking).
    Rows,
}

impl RecordResults {
    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordResults::None => "none",
            RecordResults::Summary => "summary",
            RecordResults::Rows => "rows",
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    verdict: Verdict,
    /// Its conditions as comparable text ([`RawRule::conditions_key`]), for `lint`.
    conditions: String,
    kinds: Option<KindSet>,
    tables: Option<GlobSet>,
    functions: Option<GlobSet>,
    without_where: bool,
    text: Option<Regex>,
    /// HTTP conditions; a rule sets SQL conditions or HTTP ones, never both.
    http: http::HttpMatch,
    /// AWS conditions (with HTTP ones or alone, never with SQL ones).
    aws: aws::AwsMatch,
    /// SSH conditions (alone).
    ssh: ssh::SshMatch,
    /// Kubernetes conditions (with HTTP ones or alone; `resources` is shared with AWS).
    kube: kube::KubeMatch,
    /// Redis conditions (`commands`, shared with SSH, and `keys`).
    redis: redis::RedisMatch,
}

impl Rule {
    /// Whether the rule sets any SQL condition.
    fn has_sql(&self) -> bool {
        self.kinds.is_some()
            || self.tables.is_some()
            || self.functions.is_some()
            || self.without_where
            || self.text.is_some()
    }

    /// An HTTP request: the rule's HTTP conditions (a rule with SQL conditions is not
    /// about HTTP; one with no condition at all matches every request).
    fn matches_http(&self, request: &http::HttpRequestInfo<'_>) -> bool {
        !self.has_sql()
            && !self.aws.is_set()
            && !self.kube.is_set()
            && !self.ssh.is_set()
            && !self.redis.has_own()
            && self.http.matches(request)
    }

    /// A Kubernetes API request: its Kubernetes conditions and its HTTP ones (a rule
    /// with AWS-only conditions is not about Kubernetes).
    fn matches_kube(
        &self,
        request: &http::HttpRequestInfo<'_>,
        kube: &crate::protocol::kubernetes::request::KubeRequest,
    ) -> bool {
        !self.has_sql()
            && !self.ssh.is_set()
            && !self.redis.has_own()
            && !self.aws.has_own()
            && self.http.matches(request)
            && self.kube.matches(kube)
    }

    /// An SSH request: the rule's SSH conditions (a rule with conditions of another
    /// protocol is not about SSH; one with no condition matches every request but
    /// forwarding, see [`ssh`]).
    fn matches_ssh(&self, request: &ssh::SshRequest<'_>) -> bool {
        !self.has_sql()
            && !self.http.is_set()
            && !self.aws.is_set()
            && !self.kube.is_set()
            && !self.redis.has_own()
            && self.ssh.matches(request)
    }

    /// An AWS call: its AWS conditions and its HTTP ones (it is an HTTP request too).
    fn matches_aws(
        &self,
        request: &http::HttpRequestInfo<'_>,
        call: &aws::AwsCallInfo<'_>,
    ) -> bool {
        !self.has_sql()
            && !self.ssh.is_set()
            && !self.redis.has_own()
            && !self.kube.has_own()
            && self.http.matches(request)
            && self.aws.matches(call)
    }

    /// A Redis command: the rule's Redis conditions (`commands`, `keys`); a rule with
    /// conditions of another protocol (SSH's `regex`, `ssh_requests`, SFTP ones
    /// included) is not about Redis; one with no condition matches every command.
    fn matches_redis(&self, command: &redis::RedisCommand<'_>) -> bool {
        !self.has_sql()
            && !self.http.is_set()
            && !self.aws.is_set()
            && !self.kube.is_set()
            && !self.ssh.has_non_command_conditions()
            && self.redis.matches(command, self.verdict)
    }

    fn matches(&self, statement: &StatementInfo) -> bool {
        if self.http.is_set()
            || self.aws.is_set()
            || self.ssh.is_set()
            || self.kube.is_set()
            || self.redis.has_own()
        {
            return false;
        }
        // Cheapest conditions first; the regex last.
        if statement.opaque && self.kinds.is_none() && self.text.is_none() {
            return false;
        }
        if let Some(kinds) = self.kinds {
            if !kinds.intersects(statement.kinds) {
                return false;
            }
        }
        if self.without_where && !statement.without_where {
            return false;
        }
        if let Some(globs) = &self.tables {
            if !any_name_matches(globs, &statement.tables) {
                return false;
            }
        }
        if let Some(globs) = &self.functions {
            if !any_name_matches(globs, &statement.functions) {
                return false;
            }
        }
        if let Some(text) = &self.text {
            if !text.is_match(&statement.text) {
                return false;
            }
        }
        true
    }
}

fn any_name_matches(globs: &GlobSet, names: &[String]) -> bool {
    names
        .iter()
        .any(|name| name_candidates(name, |candidate| globs.is_match(candidate)))
}

/// One validated `[[policy]]`.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `name`, for messages.
    pub name: Option<String>,
    /// `mode`: overrides the agent's mode for the sessions this policy governs.
    pub mode: Option<PolicyMode>,
    /// `db_user`: the database user to log in as (with the target's credentials).
    pub db_user: Option<String>,
    /// `record_results`.
    pub record_results: RecordResults,
    /// `approval_timeout`: how long an `approve` hold waits.
    pub approval_timeout: Duration,
    /// `max_session_duration`: sessions this policy governs end after it.
    pub max_session_duration: Option<Duration>,
    /// `ssh_user`: the user the agent logs into SSH hosts as (with the target's key).
    pub ssh_user: Option<String>,
    /// `pty` (`true`): `false` refuses terminals on SSH targets.
    pub pty: bool,
    workload: GlobMatcher,
    target: GlobMatcher,
    default: Verdict,
    unparsed: Verdict,
    rules: Vec<Rule>,
    claims: Vec<(String, GlobMatcher)>,
    attested: Option<bool>,
}

/// The attested claims of a session (see [`crate::attest::Claims`]).
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// A claim's value as policy globs and the `--claim` filter see it: a string as is, a
/// number by its decimal text, a boolean as `true`/`false`; `None` for other values.
pub fn claim_text(value: &serde_json::Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        serde_json::Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
        serde_json::Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
        serde_json::Value::Bool(b) => Some(std::borrow::Cow::Borrowed(if *b {
            "true"
        } else {
            "false"
        })),
        _ => None,
    }
}

/// The verdict for one statement and the rule that gave it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatementVerdict {
    /// The statement's verdict.
    pub verdict: Verdict,
    /// The rule that matched; `None` for the `default` / `unparsed` verdict.
    pub rule: Option<String>,
}

/// One statement of a query string, journaled on its own so each can be found and
/// replayed: its text, its analysis, and its verdict and rule.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementPart {
    pub text: String,
    pub analysis: Analysis,
    pub verdict: Verdict,
    pub rule: Option<String>,
}

/// The statements of `text`, one part each, for a string judged as a whole (`verdict`,
/// `rule`) and statement by statement (`per_statement`, in order). A string of one
/// statement, or none, is one part: the text as the client sent it, with the whole
/// string's verdict. Every decoded SQL protocol journals a query string this way.
pub fn statement_parts(
    text: &str,
    analysis: &Analysis,
    verdict: Verdict,
    rule: Option<&str>,
    per_statement: &[StatementVerdict],
) -> Vec<StatementPart> {
    if analysis.statements.len() <= 1 {
        return vec![StatementPart {
            text: text.to_string(),
            analysis: analysis.clone(),
            verdict,
            rule: rule.map(str::to_string),
        }];
    }
    analysis
        .statements
        .iter()
        .enumerate()
        .map(|(i, statement)| {
            let (verdict, rule) = match per_statement.get(i) {
                Some(own) => (own.verdict, own.rule.clone()),
                None => (verdict, rule.map(str::to_string)),
            };
            StatementPart {
                text: statement.text.clone(),
                analysis: Analysis {
                    statements: vec![statement.clone()],
                },
                verdict,
                rule,
            }
        })
        .collect()
}

/// The verdict for one message (one query string) and how it came about.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The message's verdict: the most severe of its statements'.
    pub verdict: Verdict,
    /// The rule that decided it (`None`: the `default` / `unparsed` verdict, or no
    /// statement at all).
    pub rule: Option<String>,
    /// Index of the deciding statement: the first with the message's verdict.
    pub statement: Option<usize>,
    /// One entry per statement of the analysis, in order.
    pub per_statement: Vec<StatementVerdict>,
}

impl Policy {
    /// Validates one `[[policy]]` table.
    pub fn from_raw(raw: Spanned<RawPolicy>) -> Result<Policy, PolicyProblem> {
        let raw = raw.into_inner();
        let name = match raw.name {
            Some(name) if name.get_ref().trim().is_empty() => {
                return Err(PolicyProblem::at(
                    &name,
                    "policy name must not be empty; remove `name` if the policy needs none",
                ));
            }
            other => other.map(Spanned::into_inner),
        };
        let workload = name_glob(raw.workload.as_ref(), "workload")?;
        let target = name_glob(raw.target.as_ref(), "target")?;
        let mode = raw
            .mode
            .as_ref()
            .map(|mode| match mode.get_ref().as_str() {
                "enforce" => Ok(PolicyMode::Enforce),
                "observe" => Ok(PolicyMode::Observe),
                other => Err(PolicyProblem::at(
                    mode,
                    format!("invalid mode \"{other}\": expected \"enforce\" or \"observe\""),
                )),
            })
            .transpose()?;
        let default = match &raw.default {
            Some(value) => Verdict::parse(value, "default")?,
            None => Verdict::Allow,
        };
        let unparsed = match &raw.unparsed {
            Some(value) => Verdict::parse(value, "unparsed")?,
            // Fail closed: nobody can say what an unparsed statement does.
            None => Verdict::Deny,
        };
        let db_user = match raw.db_user {
            Some(user) if user.get_ref().is_empty() => {
                return Err(PolicyProblem::at(&user, "db_user must not be empty"));
            }
            other => other.map(Spanned::into_inner),
        };
        let record_results = match &raw.record_results {
            None => RecordResults::default(),
            Some(value) => match value.get_ref().as_str() {
                "none" => RecordResults::None,
                "summary" => RecordResults::Summary,
                "rows" => RecordResults::Rows,
                other => {
                    return Err(PolicyProblem::at(
                        value,
                        format!(
                            "invalid record_results \"{other}\": expected \"none\", \"summary\" or \"rows\""
                        ),
                    ))
                }
            },
        };
        let approval_timeout = match &raw.approval_timeout {
            None => DEFAULT_APPROVAL_TIMEOUT,
            Some(value) => {
                let parsed = humantime::parse_duration(value.get_ref()).map_err(|e| {
                    PolicyProblem::at(
                        value,
                        format!(
                            "invalid duration \"{}\" for approval_timeout: {e} (examples: \"30s\", \"5m\", \"1h\")",
                            value.get_ref()
                        ),
                    )
                })?;
                if parsed.is_zero() {
                    return Err(PolicyProblem::at(
                        value,
                        format!(
                            "approval_timeout \"{}\" must be longer than zero",
                            value.get_ref()
                        ),
                    ));
                }
                parsed
            }
        };
        let attested = raw.attested.as_ref().map(|a| *a.get_ref());
        let mut claims = Vec::new();
        if let Some(table) = &raw.claims {
            if table.get_ref().is_empty() {
                return Err(PolicyProblem::at(
                    table,
                    "claims = {} sets no condition; remove it or use attested = true",
                ));
            }
            if let Some(false) = attested {
                return Err(PolicyProblem::at(
                    table,
                    "claims with attested = false can never match: an unattested session has no claims",
                ));
            }
            for (name, glob) in table.get_ref() {
                let matcher = Glob::new(glob.get_ref())
                    .map(|g| g.compile_matcher())
                    .map_err(|e| {
                        PolicyProblem::at(
                            glob,
                            format!(
                                "invalid glob \"{}\" for claim \"{name}\": {}",
                                glob.get_ref(),
                                e.kind()
                            ),
                        )
                    })?;
                claims.push((name.clone(), matcher));
            }
        }
        let max_session_duration = raw
            .max_session_duration
            .as_ref()
            .map(|value| {
                match humantime::parse_duration(value.get_ref()) {
                    Ok(d) if !d.is_zero() => Ok(d),
                    Ok(_) => Err("must be longer than zero".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
                .map_err(|why| {
                    PolicyProblem::at(
                        value,
                        format!(
                            "invalid max_session_duration \"{}\": {why} (examples: \"30m\", \"1h\")",
                            value.get_ref()
                        ),
                    )
                })
            })
            .transpose()?;
        let ssh_user = match raw.ssh_user {
            Some(user)
                if user.get_ref().is_empty() || user.get_ref().contains(['\0', '\n', '\r']) =>
            {
                return Err(PolicyProblem::at(&user, "ssh_user must be a login name"));
            }
            other => other.map(Spanned::into_inner),
        };
        let pty = raw.pty.as_ref().is_none_or(|p| *p.get_ref());
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rule.len());
        for raw_rule in raw.rule {
            let rule = Rule::from_raw(raw_rule.into_inner(), &rules)?;
            rules.push(rule);
        }
        Ok(Policy {
            name,
            mode,
            db_user,
            record_results,
            approval_timeout,
            max_session_duration,
            ssh_user,
            pty,
            workload,
            target,
            default,
            unparsed,
            rules,
            claims,
            attested,
        })
    }

    /// Whether this policy's `workload` and `target` globs match the session.
    pub fn applies_to(&self, workload: &str, target: &str) -> bool {
        self.workload.is_match(workload) && self.target.is_match(target)
    }

    /// Whether this policy's `attested` and `claims` conditions hold for a session with
    /// these attested claims (`None`: not attested).
    pub fn claims_match(&self, claims: Option<&Claims>) -> bool {
        if let Some(attested) = self.attested {
            if attested != claims.is_some() {
                return false;
            }
        }
        if self.claims.is_empty() {
            return true;
        }
        let Some(claims) = claims else {
            return false;
        };
        self.claims.iter().all(|(name, glob)| {
            claims
                .get(name)
                .and_then(claim_text)
                .is_some_and(|text| glob.is_match(text.as_ref()))
        })
    }

    /// The verdict for one statement and the rule that gave it (`None`: the
    /// `default` / `unparsed` verdict).
    pub fn decide_statement(&self, statement: &StatementInfo) -> (Verdict, Option<&str>) {
        match self.rules.iter().find(|rule| rule.matches(statement)) {
            Some(rule) => (rule.verdict, Some(rule.name.as_str())),
            None if statement.opaque => (self.unparsed, None),
            None => (self.default, None),
        }
    }

    /// The verdict for an HTTP request: the first rule whose HTTP conditions match (rules
    /// with SQL conditions are skipped), else `default`.
    pub fn decide_http(&self, request: &http::HttpRequestInfo<'_>) -> (Verdict, Option<&str>) {
        match self.rules.iter().find(|rule| rule.matches_http(request)) {
            Some(rule) => (rule.verdict, Some(rule.name.as_str())),
            None => (self.default, None),
        }
    }

    /// The verdict for an AWS call (a request to a `protocol = "aws"` target): the first
    /// rule whose AWS and HTTP conditions match (rules with SQL conditions are skipped),
    /// else `default`.
    pub fn decide_aws(
        &self,
        request: &http::HttpRequestInfo<'_>,
        call: &aws::AwsCallInfo<'_>,
    ) -> (Verdict, Option<&str>) {
        match self
            .rules
            .iter()
            .find(|rule| rule.matches_aws(request, call))
        {
            Some(rule) => (rule.verdict, Some(rule.name.as_str())),
            None => (self.default, None),
        }
    }

    /// The verdict for a Kubernetes API request (to a `protocol = "kubernetes"` target):
    /// the first rule whose Kubernetes and HTTP conditions match (rules with SQL, SSH or
    /// AWS-only conditions are skipped), else `default`.
    pub fn decide_kube(
        &self,
        request: &http::HttpRequestInfo<'_>,
        kube: &crate::protocol::kubernetes::request::KubeRequest,
    ) -> (Verdict, Option<&str>) {
        match self
            .rules
            .iter()
            .find(|rule| rule.matches_kube(request, kube))
        {
            Some(rule) => (rule.verdict, Some(rule.name.as_str())),
            None => (self.default, None),
        }
    }

    /// The verdict for an SSH request: `pty = false` refuses terminals; then the first
    /// rule whose SSH conditions match; else `default`, except for forwarding requests,
    /// which only a rule naming them can allow (see [`ssh`]).
    pub fn decide_ssh(&self, request: &ssh::SshRequest<'_>) -> (Verdict, Option<&str>) {
        if request.kind == ssh::SshKind::Pty && !self.pty {
            return (Verdict::Deny, Some("pty = false"));
        }
        match self.rules.iter().find(|rule| rule.matches_ssh(request)) {
            Some(rule) => (rule.verdict, Some(rule.name.as_str())),
            None if request.kind.is_forwarding() => (Verdict::Deny, None),
            None => (self.default, None),
        }
    }

    /// The verdict for a Redis command: `MONITOR` is refused; then the first rule whose
    /// Redis conditions match (rules with conditions of another protocol are skipped);
    /// else `default` (see [`redis`]).
    pub fn decide_redis(&self, command: &redis::RedisCommand<'_>) -> (Verdict, Option<&str>) {
        if command.name == "MONITOR" {
            return (Verdict::Deny, Some(redis::MONITOR_RULE));
        }
        match self.rules.iter().find(|rule| rule.matches_redis(command)) {
            Some(rule) => (rule.verdict, Some(rule.name.as_str())),
            None => (self.default, None),
        }
    }

    /// The verdict for an SFTP request: the first rule with SFTP conditions that
    /// matches, else `default` (see [`ssh`]).
    pub fn decide_sftp(&self, request: &ssh::SftpRequest<'_>) -> (Verdict, Option<&str>) {
        match self
            .rules
            .iter()
            .find(|rule| rule.ssh.matches_sftp(request))
        {
            Some(rule) => (rule.verdict, Some(rule.name.as_str())),
            None => (self.default, None),
        }
    }

    /// The verdict for a message: see the module documentation. An analysis without
    /// statements is allowed with no rule.
    pub fn decide(&self, analysis: &Analysis) -> Decision {
        let mut per_statement = Vec::with_capacity(analysis.statements.len());
        let mut deciding: Option<(usize, Verdict)> = None;
        for (index, statement) in analysis.statements.iter().enumerate() {
            let (verdict, rule) = self.decide_statement(statement);
            // Strictly more severe: ties keep the earliest statement.
            if deciding.is_none_or(|(_, worst)| verdict > worst) {
                deciding = Some((index, verdict));
            }
            per_statement.push(StatementVerdict {
                verdict,
                rule: rule.map(str::to_owned),
            });
        }
        let (verdict, rule, statement) = match deciding {
            Some((index, verdict)) => (
                verdict,
                per_statement.get(index).and_then(|d| d.rule.clone()),
                Some(index),
            ),
            None => (Verdict::Allow, None, None),
        };
        Decision {
            verdict,
            rule,
            statement,
            per_statement,
        }
    }
}

impl Rule {
    fn from_raw(raw: RawRule, earlier: &[Rule]) -> Result<Rule, PolicyProblem> {
        let name = raw.name.get_ref();
        if name.trim().is_empty() {
            return Err(PolicyProblem::at(&raw.name, "rule name must not be empty"));
        }
        if earlier.iter().any(|rule| &rule.name == name) {
            return Err(PolicyProblem::at(
                &raw.name,
                format!(
                    "duplicate rule name \"{name}\": rule names must be unique within a policy"
                ),
            ));
        }
        let verdict = Verdict::parse(&raw.verdict, "verdict")?;
        let conditions = raw.conditions_key();
        let http_match = http::HttpMatch::from_raw(
            name,
            raw.methods.as_deref(),
            raw.paths.as_deref(),
            raw.hosts.as_deref(),
            raw.headers.as_ref(),
        )?;
        let aws_match = aws::AwsMatch::from_raw(
            name,
            raw.actions.as_deref(),
            raw.regions.as_deref(),
            raw.resources.as_deref(),
        )?;
        let kube_match = kube::KubeMatch::from_raw(
            name,
            raw.verbs.as_deref(),
            raw.resources.as_deref(),
            raw.namespaces.as_deref(),
            raw.names.as_deref(),
            raw.subresources.as_deref(),
        )?;
        if kube_match.has_own() && aws_match.has_own() {
            return Err(PolicyProblem::at(
                &raw.name,
                format!(
                    "rule \"{name}\" mixes Kubernetes conditions (verbs, namespaces, names, \
                     subresources) with AWS ones (actions, regions); a rule is about one \
                     protocol: split it"
                ),
            ));
        }
        let ssh_match = ssh::SshMatch::from_raw(
            name,
            raw.commands.as_deref(),
            raw.regex.as_ref(),
            raw.ssh_requests.as_deref(),
            raw.sftp_ops.as_deref(),
            raw.sftp_paths.as_deref(),
        )?;
        if ssh_match.is_set()
            && (http_match.is_set()
                || aws_match.is_set()
                || kube_match.is_set()
                || raw.kinds.is_some()
                || raw.tables.is_some()
                || raw.functions.is_some()
                || raw.without_where.is_some()
                || raw.text.is_some())
        {
            return Err(PolicyProblem::at(
                &raw.name,
                format!(
                    "rule \"{name}\" mixes SSH conditions (commands, regex, ssh_requests) with \
                     conditions of another protocol; a rule is about one protocol: split it"
                ),
            ));
        }
        let redis_match =
            redis::RedisMatch::from_raw(name, raw.commands.as_deref(), raw.keys.as_deref())?;
        if redis_match.has_own()
            && (http_match.is_set()
                || aws_match.is_set()
                || kube_match.is_set()
                || ssh_match.has_non_command_conditions()
                || raw.kinds.is_some()
                || raw.tables.is_some()
                || raw.functions.is_some()
                || raw.without_where.is_some()
                || raw.text.is_some())
        {
            return Err(PolicyProblem::at(
                &raw.name,
                format!(
                    "rule \"{name}\" mixes Redis conditions (keys) with conditions of another \
                     protocol; a rule is about one protocol: split it"
                ),
            ));
        }
        let sql_keys = raw.kinds.is_some()
            || raw.tables.is_some()
            || raw.functions.is_some()
            || raw.without_where.is_some()
            || raw.text.is_some();
        if sql_keys && http_match.is_set() {
            return Err(PolicyProblem::at(
                &raw.name,
                format!(
                    "rule \"{name}\" mixes SQL conditions (kinds, tables, functions, \
                     without_where, text) with HTTP ones (methods, paths, hosts, headers); \
                     a rule is about one protocol: split it in two"
                ),
            ));
        }
        if sql_keys && kube_match.is_set() {
            return Err(PolicyProblem::at(
                &raw.name,
                format!(
                    "rule \"{name}\" mixes SQL conditions (kinds, tables, functions, \
                     without_where, text) with Kubernetes ones (verbs, resources, \
                     namespaces, names, subresources); a rule is about one protocol: split it"
                ),
            ));
        }
        if sql_keys && aws_match.is_set() {
            return Err(PolicyProblem::at(
                &raw.name,
                format!(
                    "rule \"{name}\" mixes SQL conditions (kinds, tables, functions, \
                     without_where, text) with AWS ones (actions, regions, resources); \
                     a rule is about one protocol: split it in two"
                ),
            ));
        }
        let kinds = raw
            .kinds
            .as_ref()
            .map(|kinds| {
                if kinds.is_empty() {
                    return Err(PolicyProblem {
                        span: None,
                        message: format!(
                            "rule \"{name}\": kinds = [] can never match; remove it or list kinds"
                        ),
                    });
                }
                kinds
                    .iter()
                    .map(|kind| {
                        StatementKind::from_name(kind.get_ref()).ok_or_else(|| {
                            let known: Vec<&str> =
                                StatementKind::ALL.iter().map(|k| k.as_str()).collect();
                            PolicyProblem::at(
                                kind,
                                format!(
                                    "unknown statement kind \"{}\" in rule \"{name}\"; known kinds: {}",
                                    kind.get_ref(),
                                    known.join(", ")
                                ),
                            )
                        })
                    })
                    .collect::<Result<KindSet, _>>()
            })
            .transpose()?;
        let tables = raw
            .tables
            .as_deref()
            .map(|globs| sql_globs(globs, name, "tables"))
            .transpose()?;
        let functions = raw
            .functions
            .as_deref()
            .map(|globs| sql_globs(globs, name, "functions"))
            .transpose()?;
        let text = raw
            .text
            .as_ref()
            .map(|text| {
                Regex::new(text.get_ref()).map_err(|e| {
                    PolicyProblem::at(
                        text,
                        format!(
                            "invalid regex \"{}\" in rule \"{name}\": {e}",
                            text.get_ref()
                        ),
                    )
                })
            })
            .transpose()?;
        Ok(Rule {
            name: name.clone(),
            verdict,
            conditions,
            kinds,
            tables,
            functions,
            without_where: raw.without_where.unwrap_or(false),
            text,
            http: http_match,
            aws: aws_match,
            ssh: ssh_match,
            kube: kube_match,
            redis: redis_match,
        })
    }
}

/// A `workload` / `target` glob; absent means every name.
fn name_glob(value: Option<&Spanned<String>>, key: &str) -> Result<GlobMatcher, PolicyProblem> {
    let Some(value) = value else {
        return Ok(Glob::new("*")
            .map_err(|e| PolicyProblem {
                span: None,
                message: format!("internal error: the match-all glob: {e}"),
            })?
            .compile_matcher());
    };
    if value.get_ref().is_empty() {
        return Err(PolicyProblem::at(
            value,
            format!("{key} must not be empty; remove it to match every {key}"),
        ));
    }
    Glob::new(value.get_ref())
        .map(|glob| glob.compile_matcher())
        .map_err(|e| {
            PolicyProblem::at(
                value,
                format!("invalid {key} glob \"{}\": {}", value.get_ref(), e.kind()),
            )
        })
}

/// The `tables` / `functions` globs of a rule, case-insensitive like unquoted SQL names.
fn sql_globs(globs: &[Spanned<String>], rule: &str, key: &str) -> Result<GlobSet, PolicyProblem> {
    if globs.is_empty() {
        return Err(PolicyProblem {
            span: None,
            message: format!(
                "rule \"{rule}\": {key} = [] can never match; remove it or list globs"
            ),
        });
    }
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        let compiled = GlobBuilder::new(glob.get_ref())
            .case_insensitive(true)
            .build()
            .map_err(|e| {
                PolicyProblem::at(
                    glob,
                    format!(
                        "invalid glob \"{}\" in {key} of rule \"{rule}\": {}",
                        glob.get_ref(),
                        e.kind()
                    ),
                )
            })?;
        if glob.get_ref().is_empty() {
            return Err(PolicyProblem::at(
                glob,
                format!("empty glob in {key} of rule \"{rule}\""),
            ));
        }
        set.add(compiled);
    }
    set.build().map_err(|e| PolicyProblem {
        span: None,
        message: format!("{key} of rule \"{rule}\": {e}"),
    })
}

/// All policies of a configuration, in file order; the first that applies to a
/// session's (workload, target) governs it.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// The policies, in file order.
    pub policies: Vec<Policy>,
}

impl PolicySet {
    /// Validates every `[[policy]]`, stopping at the first problem.
    pub fn from_raw(raw: Vec<Spanned<RawPolicy>>) -> Result<PolicySet, PolicyProblem> {
        Ok(PolicySet {
            policies: raw
                .into_iter()
                .map(Policy::from_raw)
                .collect::<Result<_, _>>()?,
        })
    }

    /// The policy governing a session of `workload` to `target` with these attested
    /// claims (`None`: unattested), if any: the first whose workload, target and claims
    /// conditions all match.
    pub fn for_session(
        &self,
        workload: &str,
        target: &str,
        claims: Option<&Claims>,
    ) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|policy| policy.applies_to(workload, target) && policy.claims_match(claims))
    }
}
