//! Scopes of an approval and the book of time-boxed grants. Pure: the clock is a
//! parameter, so expiry is tested without waiting.
//!
//! - `once`: the held statement only.
//! - `session`: later statements of the same session that match the same rule pass
//!   without a hold (remembered by the session's flow, gone with the session).
//! - `grant`: for a bounded time, every statement of the same workload × target ×
//!   rule passes without a hold, in any session ([`Grants`]).
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

/// How far an approval reaches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The held statement only.
    #[default]
    Once,
    /// The rest of the session, for statements matching the same rule.
    Session,
    /// A time-boxed grant over workload × target × rule.
    Grant,
}

impl Scope {
    /// The name used on the command line, in tokens and in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Once => "once",
            Scope::Session => "session",
            Scope::Grant => "grant",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "once" => Ok(Scope::Once),
            "session" => Ok(Scope::Session),
            "grant" => Ok(Scope::Grant),
            other => Err(format!(
                "unknown scope \"{other}\": expected once, session or grant"
            )),
        }
    }
}

/// Why a scope request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// `grant` without `--for` / `grant_for`.
    #[error("scope grant needs a duration (--for 15m / \"grant_for\")")]
    MissingDuration,
    /// A duration for a scope that has none.
    #[error("a duration (--for) only applies to scope grant")]
    DurationWithoutGrant,
    /// Not a humantime duration, or zero.
    #[error("invalid grant duration \"{value}\": {why}")]
    BadDuration { value: String, why: String },
    /// Longer than `[approvals] max_grant`.
    #[error("grant duration {asked} is longer than [approvals] max_grant ({max})")]
    TooLong { asked: String, max: String },
}

/// Checks a scope and its duration; returns the grant's length for `grant`.
pub fn check_scope(
    scope: Scope,
    grant_for: Option<&str>,
    max_grant: Duration,
) -> Result<Option<Duration>, ScopeError> {
    match (scope, grant_for) {
        (Scope::Grant, None) => Err(ScopeError::MissingDuration),
        (Scope::Grant, Some(value)) => {
            let d = humantime::parse_duration(value).map_err(|e| ScopeError::BadDuration {
                value: value.to_owned(),
                why: e.to_string(),
            })?;
            if d.is_zero() {
                return Err(ScopeError::BadDuration {
                    value: value.to_owned(),
                    why: "must be longer than zero".into(),
                });
            }
            if d > max_grant {
                return Err(ScopeError::TooLong {
                    asked: humantime::format_duration(d).to_string(),
                    max: humantime::format_duration(max_grant).to_string(),
                });
            }
            Ok(Some(d))
        }
        (_, Some(_)) => Err(ScopeError::DurationWithoutGrant),
        (_, None) => Ok(None),
    }
}

/// What a grant covers and who gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// "g-N".
    pub id: String,
    pub workload: String,
    pub target: String,
    /// The policy rule (`None`: the policy's default verdict).
    pub rule: Option<String>,
    /// The approval request the grant was given on.
    pub approval_id: String,
    /// Who gave it (as journaled in `by`).
    pub approver: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC: the grant no longer applies from then on.
    pub until: String,
    #[serde(skip)]
    until_time: Option<SystemTime>,
}

impl Grant {
    fn until_time(&self) -> SystemTime {
        self.until_time.unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// Whether it covers a statement of `workload` to `target` matched by `rule` at `now`.
    pub fn covers(
        &self,
        workload: &str,
        target: &str,
        rule: Option<&str>,
        now: SystemTime,
    ) -> bool {
        self.workload == workload
            && self.target == target
            && self.rule.as_deref() == rule
            && now < self.until_time()
    }
}

/// The active grants; ids are never reused while the agent runs.
#[derive(Debug, Default)]
pub struct Grants {
    next: u64,
    active: BTreeMap<u64, Grant>,
}

/// What a new grant is about.
#[derive(Debug, Clone)]
pub struct GrantSpec<'a> {
    pub workload: &'a str,
    pub target: &'a str,
    pub rule: Option<&'a str>,
    pub approval_id: &'a str,
    pub approver: &'a str,
}

impl Grants {
    /// Adds a grant for `length` from `now`.
    pub fn add(&mut self, spec: GrantSpec<'_>, now: SystemTime, length: Duration) -> Grant {
        self.next += 1;
        let until = now + length;
        let grant = Grant {
            id: format!("g-{}", self.next),
            workload: spec.workload.to_owned(),
            target: spec.target.to_owned(),
            rule: spec.rule.map(str::to_owned),
            approval_id: spec.approval_id.to_owned(),
            approver: spec.approver.to_owned(),
            created_at: humantime::format_rfc3339_seconds(now).to_string(),
            until: humantime::format_rfc3339_millis(until).to_string(),
            until_time: Some(until),
        };
        self.active.insert(self.next, grant.clone());
        grant
    }

    /// The oldest active grant covering the statement, if any.
    pub fn covering(
        &self,
        workload: &str,
        target: &str,
        rule: Option<&str>,
        now: SystemTime,
    ) -> Option<&Grant> {
        self.active
            .values()
            .find(|g| g.covers(workload, target, rule, now))
    }

    /// Removes and returns the grants that ran out at `now`.
    pub fn expire(&mut self, now: SystemTime) -> Vec<Grant> {
        let gone: Vec<u64> = self
            .active
            .iter()
            .filter(|(_, g)| now >= g.until_time())
            .map(|(n, _)| *n)
            .collect();
        gone.iter().filter_map(|n| self.active.remove(n)).collect()
    }

    /// Removes a grant by id ("g-N").
    pub fn revoke(&mut self, id: &str) -> Option<Grant> {
        self.active.remove(&parse_grant_id(id)?)
    }

    /// The grants still active at `now`, oldest first.
    pub fn active(&self, now: SystemTime) -> Vec<Grant> {
        self.active
            .values()
            .filter(|g| now < g.until_time())
            .cloned()
            .collect()
    }

    /// The number the next grant's id takes after (`g-<next + 1>`) and every grant held,
    /// expired or not: what the state file keeps.
    pub fn snapshot(&self) -> (u64, Vec<Grant>) {
        (self.next, self.active.values().cloned().collect())
    }

    /// Takes back grants saved by [`Grants::snapshot`] (agent start). Returns the grants
    /// in force again and those that ran out while the agent was down (not taken back).
    /// Ids are never reused: numbering goes on after the highest one seen.
    pub fn restore(
        &mut self,
        next: u64,
        grants: Vec<Grant>,
        now: SystemTime,
    ) -> Result<(Vec<Grant>, Vec<Grant>), String> {
        let mut restored = Vec::new();
        let mut expired = Vec::new();
        let mut parsed = Vec::with_capacity(grants.len());
        for mut g in grants {
            let n = parse_grant_id(&g.id).ok_or_else(|| format!("bad grant id {:?}", g.id))?;
            let until = humantime::parse_rfc3339(&g.until)
                .map_err(|e| format!("grant {}: bad until {:?}: {e}", g.id, g.until))?;
            humantime::parse_rfc3339(&g.created_at)
                .map_err(|e| format!("grant {}: bad created_at {:?}: {e}", g.id, g.created_at))?;
            g.until_time = Some(until);
            parsed.push((n, g));
        }
        for (n, g) in parsed {
            self.next = self.next.max(n);
            if now < g.until_time() {
                self.active.insert(n, g.clone());
                restored.push(g);
            } else {
                expired.push(g);
            }
        }
        self.next = self.next.max(next);
        Ok((restored, expired))
    }
}

fn parse_grant_id(id: &str) -> Option<u64> {
    id.strip_prefix("g-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(rule: Option<&'a str>) -> GrantSpec<'a> {
        GrantSpec {
            workload: "bot",
            target: "db",
            rule,
            approval_id: "a-1",
            approver: "uid 0 (root)",
        }
    }

    #[test]
    fn a_grant_covers_its_workload_target_and_rule_until_it_expires() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut grants = Grants::default();
        let g = grants.add(spec(Some("ask")), t0, Duration::from_secs(60));
        assert_eq!(g.id, "g-1");
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(
            grants
                .covering("bot", "db", Some("ask"), at(59))
                .map(|g| &g.id),
            Some(&g.id)
        );
        assert!(grants.covering("bot", "db", Some("other"), at(1)).is_none());
        assert!(grants.covering("bot", "db", None, at(1)).is_none());
        assert!(grants.covering("bot2", "db", Some("ask"), at(1)).is_none());
        assert!(grants.covering("bot", "db2", Some("ask"), at(1)).is_none());
        // At the deadline it no longer applies, and expire() hands it back once.
        assert!(grants.covering("bot", "db", Some("ask"), at(60)).is_none());
        assert!(grants.expire(at(59)).is_empty());
        assert_eq!(grants.active(at(59)).len(), 1);
        let gone = grants.expire(at(60));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, "g-1");
        assert!(grants.expire(at(61)).is_empty());
        assert!(grants.active(at(0)).is_empty());
    }

    #[test]
    fn revoked_grants_stop_covering_and_ids_are_not_reused() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        let mut grants = Grants::default();
        grants.add(spec(None), t0, Duration::from_secs(60));
        assert!(grants.covering("bot", "db", None, t0).is_some());
        assert_eq!(grants.revoke("g-1").map(|g| g.id), Some("g-1".into()));
        assert!(grants.revoke("g-1").is_none());
        assert!(grants.revoke("x").is_none());
        assert!(grants.covering("bot", "db", None, t0).is_none());
        assert_eq!(grants.add(spec(None), t0, Duration::from_secs(1)).id, "g-2");
    }

    #[test]
    fn scopes_and_durations_are_checked() {
        let max = Duration::from_secs(3600);
        assert_eq!(check_scope(Scope::Once, None, max), Ok(None));
        assert_eq!(check_scope(Scope::Session, None, max), Ok(None));
        assert_eq!(
            check_scope(Scope::Grant, Some("15m"), max),
            Ok(Some(Duration::from_secs(900)))
        );
        assert_eq!(
            check_scope(Scope::Grant, None, max),
            Err(ScopeError::MissingDuration)
        );
        assert_eq!(
            check_scope(Scope::Once, Some("1m"), max),
            Err(ScopeError::DurationWithoutGrant)
        );
        assert!(matches!(
            check_scope(Scope::Grant, Some("2h"), max),
            Err(ScopeError::TooLong { .. })
        ));
        assert!(matches!(
            check_scope(Scope::Grant, Some("0s"), max),
            Err(ScopeError::BadDuration { .. })
        ));
        assert!(matches!(
            check_scope(Scope::Grant, Some("soon"), max),
            Err(ScopeError::BadDuration { .. })
        ));
        assert_eq!("grant".parse::<Scope>(), Ok(Scope::Grant));
        assert!("forever".parse::<Scope>().is_err());
    }
}
