//! Policies and rules that can never take effect, for `nhi-agent policy check`.
//!
//! Only what is certain from the file alone is reported, never a guess:
//! - a policy whose `target` glob names no `[[target]]`, or whose `workload` glob names
//!   no `[[workload]]` (only when every workload has a `name`: a derived name is known
//!   only at run time);
//! - a policy every session of which an earlier policy governs (the earlier one has the
//!   same or a match-all `workload` and `target` glob and no `claims`/`attested`
//!   condition: the first policy that applies governs);
//! - a rule whose conditions are about a protocol none of the policy's targets speaks
//!   (SQL conditions: `postgres`; HTTP ones: `http`, `aws`, `kubernetes`; SSH ones:
//!   `ssh`), see [`super::Rule`]'s `matches_*`;
//! - a rule with exactly the conditions of an earlier rule of the same policy (the
//!   first matching rule decides, whatever its verdict).
use super::{Policy, PolicySet, Rule};

/// A `[[target]]` as the lint sees it.
#[derive(Debug, Clone, Copy)]
pub struct TargetKind<'a> {
    /// `name`.
    pub name: &'a str,
    /// `protocol`, as written in the file (`postgres`, `http`, ...).
    pub protocol: &'a str,
}

/// One warning: which policy (and rule) and why it never takes effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lint {
    /// The policy's name, or `#N` (1-based, file order).
    pub policy: String,
    /// The rule's name, when the warning is about a rule.
    pub rule: Option<String>,
    /// Why it never takes effect.
    pub message: String,
}

impl std::fmt::Display for Lint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "policy {}", self.policy)?;
        if let Some(rule) = &self.rule {
            write!(f, ", rule \"{rule}\"")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The target protocols a rule's conditions can match on; `None`: any.
fn rule_protocols(rule: &Rule) -> Option<(&'static str, &'static [&'static str])> {
    if rule.has_sql() {
        Some(("SQL", &["postgres"]))
    } else if rule.redis.has_own() {
        Some(("Redis", &["redis"]))
    } else if rule.ssh.has_non_command_conditions() {
        Some(("SSH", &["ssh"]))
    } else if rule.ssh.is_set() {
        // `commands` alone: command lines on SSH targets, command names on Redis ones.
        Some(("SSH or Redis", &["ssh", "redis"]))
    } else if rule.http.is_set() {
        Some(("HTTP", &["http", "aws", "kubernetes"]))
    } else {
        None
    }
}

fn label(policy: &Policy, index: usize) -> String {
    match &policy.name {
        Some(name) => format!("\"{name}\""),
        None => format!("#{}", index + 1),
    }
}

impl PolicySet {
    /// What can never take effect. `workloads`: every `[[workload]]`'s name, or `None`
    /// when one has none (its name is derived at run time); `targets`: every
    /// `[[target]]`.
    pub fn lint(&self, workloads: Option<&[&str]>, targets: &[TargetKind<'_>]) -> Vec<Lint> {
        let mut lints = Vec::new();
        for (i, policy) in self.policies.iter().enumerate() {
            let at = |rule: Option<&str>, message: String| Lint {
                policy: label(policy, i),
                rule: rule.map(str::to_owned),
                message,
            };
            let governed: Vec<&TargetKind<'_>> = targets
                .iter()
                .filter(|t| policy.target.is_match(t.name))
                .collect();
            if governed.is_empty() {
                lints.push(at(
                    None,
                    format!(
                        "target = \"{}\" matches no [[target]]: the policy never applies",
                        policy.target.glob().glob()
                    ),
                ));
                continue;
            }
            if let Some(names) = workloads {
                if !names.iter().any(|w| policy.workload.is_match(w)) {
                    lints.push(at(
                        None,
                        format!(
                            "workload = \"{}\" matches no [[workload]] name: the policy never \
                             applies",
                            policy.workload.glob().glob()
                        ),
                    ));
                    continue;
                }
            }
            if let Some((j, earlier)) = self.policies[..i]
                .iter()
                .enumerate()
                .find(|(_, earlier)| covers(earlier, policy))
            {
                lints.push(at(
                    None,
                    format!(
                        "policy {} before it governs every session this one could (the \
                         first policy that applies governs): it never applies",
                        label(earlier, j)
                    ),
                ));
                continue;
            }
            for (k, rule) in policy.rules.iter().enumerate() {
                if let Some((what, protocols)) = rule_protocols(rule) {
                    if !governed.iter().any(|t| protocols.contains(&t.protocol)) {
                        let names: Vec<String> = governed
                            .iter()
                            .map(|t| format!("{} ({})", t.name, t.protocol))
                            .collect();
                        lints.push(at(
                            Some(&rule.name),
                            format!(
                                "{what} conditions, but the policy's targets are {}: it never \
                                 matches (they are for {} targets)",
                                names.join(", "),
                                protocols.join("/")
                            ),
                        ));
                        continue;
                    }
                }
                if let Some(first) = policy.rules[..k]
                    .iter()
                    .find(|r| r.conditions == rule.conditions)
                {
                    lints.push(at(
                        Some(&rule.name),
                        format!(
                            "the same conditions as rule \"{}\" before it, which decides \
                             first: it never matches",
                            first.name
                        ),
                    ));
                }
            }
        }
        lints
    }
}

/// Whether `earlier` applies to every session `later` could apply to.
fn covers(earlier: &Policy, later: &Policy) -> bool {
    let glob_covers = |e: &globset::GlobMatcher, l: &globset::GlobMatcher| {
        e.glob().glob() == "*" || e.glob().glob() == l.glob().glob()
    };
    earlier.claims.is_empty()
        && earlier.attested.is_none()
        && glob_covers(&earlier.workload, &later.workload)
        && glob_covers(&earlier.target, &later.target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> PolicySet {
        #[derive(serde::Deserialize)]
        struct File {
            policy: Vec<toml::Spanned<super::super::RawPolicy>>,
        }
        let file: File = toml::from_str(text).expect("toml");
        PolicySet::from_raw(file.policy).expect("valid policies")
    }

    const TARGETS: &[TargetKind<'static>] = &[
        TargetKind {
            name: "orders-db",
            protocol: "postgres",
        },
        TargetKind {
            name: "api",
            protocol: "http",
        },
        TargetKind {
            name: "bastion",
            protocol: "ssh",
        },
    ];

    fn lint(text: &str, workloads: Option<&[&str]>) -> Vec<String> {
        set(text)
            .lint(workloads, TARGETS)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_sound_file_gets_no_warning() {
        let text = r#"
[[policy]]
name = "db"
workload = "ci-*"
target = "orders-*"
[[policy.rule]]
name = "no-drop"
verdict = "deny"
kinds = ["drop"]
[[policy.rule]]
name = "no-truncate"
verdict = "deny"
kinds = ["truncate"]

[[policy]]
name = "web"
target = "api"
[[policy.rule]]
name = "no-admin"
verdict = "deny"
paths = ["/admin/**"]

[[policy]]
name = "ci-main"
claims = { ref = "refs/heads/main" }
[[policy]]
name = "rest"
[[policy.rule]]
name = "anything"
verdict = "allow"
"#;
        assert_eq!(
            lint(text, Some(&["ci-build", "backup"])),
            Vec::<String>::new()
        );
        assert_eq!(lint(text, None), Vec::<String>::new());
    }

    #[test]
    fn policies_that_never_apply_are_named() {
        let text = r#"
[[policy]]
name = "typo"
target = "orders-dbx"
[[policy]]
name = "nobody"
workload = "deploy-*"
[[policy]]
name = "all-db"
target = "orders-db"
[[policy]]
target = "orders-db"
workload = "ci-*"
"#;
        assert_eq!(
            lint(text, Some(&["ci-build"])),
            [
                "policy \"typo\": target = \"orders-dbx\" matches no [[target]]: the policy never applies",
                "policy \"nobody\": workload = \"deploy-*\" matches no [[workload]] name: the policy never applies",
                "policy #4: policy \"all-db\" before it governs every session this one could (the first policy that applies governs): it never applies",
            ]
        );
        // With a derived workload name somewhere, "deploy-*" might match: no warning.
        let derived = lint(text, None);
        assert!(!derived.iter().any(|l| l.contains("nobody")), "{derived:?}");
    }

    #[test]
    fn rules_that_never_match_are_named() {
        let text = r#"
[[policy]]
name = "web"
target = "api"
[[policy.rule]]
name = "no-drop"
verdict = "deny"
kinds = ["drop"]
[[policy.rule]]
name = "no-admin"
verdict = "deny"
paths = ["/admin/**"]
[[policy.rule]]
name = "no-admin-again"
verdict = "approve"
paths = ["/admin/**"]
[[policy.rule]]
name = "no-sudo"
verdict = "deny"
commands = ["sudo *"]

[[policy]]
name = "db"
target = "orders-db"
[[policy.rule]]
name = "reads"
verdict = "allow"
kinds = ["select"]
[[policy.rule]]
name = "admin"
verdict = "deny"
methods = ["DELETE"]
"#;
        assert_eq!(
            lint(text, None),
            [
                "policy \"web\", rule \"no-drop\": SQL conditions, but the policy's targets are api (http): it never matches (they are for postgres targets)",
                "policy \"web\", rule \"no-admin-again\": the same conditions as rule \"no-admin\" before it, which decides first: it never matches",
                "policy \"web\", rule \"no-sudo\": SSH or Redis conditions, but the policy's targets are api (http): it never matches (they are for ssh/redis targets)",
                "policy \"db\", rule \"admin\": HTTP conditions, but the policy's targets are orders-db (postgres): it never matches (they are for http/aws/kubernetes targets)",
            ]
        );
        // "web" over a target of each kind: each of its rules can match somewhere, and
        // it governs every session "db" could.
        let wide = text.replace("target = \"api\"", "target = \"*\"");
        let lints = lint(&wide, None);
        assert_eq!(lints.len(), 2, "{lints:?}");
        assert!(lints[0].contains("rule \"no-admin-again\""), "{lints:?}");
        assert!(
            lints[1].starts_with("policy \"db\": policy \"web\" before it governs"),
            "{lints:?}"
        );
    }
}
