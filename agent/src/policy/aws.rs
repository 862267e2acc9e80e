//! The AWS conditions of a `[[policy.rule]]`: `actions`, `regions`, `resources`.
//!
//! ```toml
//! [[policy.rule]]
//! name = "no-iam-writes"
//! verdict = "deny"
//! actions = ["iam:Create*", "iam:Delete*", "s3:DeleteBucket"]  # service:Operation globs
//! regions = ["us-east-1", "eu-*"]                            # the signature's region
//! resources = ["arn:aws:s3:::prod-*", "prod-*/*", "my-secret*"]  # any resource named
//! ```
//!
//! The action is `service:Operation` as [`crate::protocol::aws::action`] reads it from
//! the request (`X-Amz-Target`, `Action=`, S3's method, path and query); actions are
//! compared case-insensitively, as IAM does. A call whose operation the agent does not
//! recognise is named `service:?`: a glob such as `lambda:*` matches it, a glob naming
//! one operation does not. Region and resource globs are case-sensitive; `*` in them
//! spans `/` (as in IAM resource ARNs). `resources` matches when any resource the
//! request names matches; a call that names none never matches a rule with
//! `resources`.
//!
//! AWS conditions apply only to requests of `protocol = "aws"` targets. They combine
//! with HTTP ones (`methods`, `paths`, `hosts`, `headers`: an AWS call is an HTTP
//! request too); a rule with HTTP conditions alone judges AWS calls as well.
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use toml::Spanned;

use super::PolicyProblem;

/// What the rules see of one AWS call.
#[derive(Debug, Clone, Copy)]
pub struct AwsCallInfo<'a> {
    /// `service:Operation` (`iam:CreateUser`), `service:?` when not recognised.
    pub action: &'a str,
    pub region: &'a str,
    pub resources: &'a [String],
}

/// The AWS conditions of one rule; each one set must hold.
#[derive(Debug, Clone, Default)]
pub struct AwsMatch {
    actions: Option<GlobSet>,
    regions: Option<GlobSet>,
    resources: Option<GlobSet>,
}

impl AwsMatch {
    /// Whether the rule sets any AWS condition (`resources` included).
    pub fn is_set(&self) -> bool {
        self.has_own() || self.resources.is_some()
    }

    /// Whether the rule sets a condition only AWS calls have (`actions`, `regions`;
    /// `resources` is shared with Kubernetes rules).
    pub fn has_own(&self) -> bool {
        self.actions.is_some() || self.regions.is_some()
    }

    pub fn matches(&self, call: &AwsCallInfo<'_>) -> bool {
        if let Some(actions) = &self.actions {
            if !actions.is_match(call.action) {
                return false;
            }
        }
        if let Some(regions) = &self.regions {
            if !regions.is_match(call.region) {
                return false;
            }
        }
        if let Some(resources) = &self.resources {
            if !call.resources.iter().any(|r| resources.is_match(r)) {
                return false;
            }
        }
        true
    }

    /// Validates the AWS keys of rule `rule`.
    pub fn from_raw(
        rule: &str,
        actions: Option<&[Spanned<String>]>,
        regions: Option<&[Spanned<String>]>,
        resources: Option<&[Spanned<String>]>,
    ) -> Result<AwsMatch, PolicyProblem> {
        let actions = actions
            .map(|globs| {
                globs_of(globs, rule, "actions", true, |v| {
                    let Some((service, operation)) = v.split_once(':') else {
                        return Err(format!(
                            "action \"{v}\" must be service:Operation (e.g. \"iam:CreateUser\", \"s3:*\")"
                        ));
                    };
                    if service.is_empty() || operation.is_empty() {
                        return Err(format!(
                            "action \"{v}\" must be service:Operation (e.g. \"iam:CreateUser\", \"s3:*\")"
                        ));
                    }
                    Ok(())
                })
            })
            .transpose()?;
        let regions = regions
            .map(|globs| globs_of(globs, rule, "regions", false, |_| Ok(())))
            .transpose()?;
        let resources = resources
            .map(|globs| globs_of(globs, rule, "resources", false, |_| Ok(())))
            .transpose()?;
        Ok(AwsMatch {
            actions,
            regions,
            resources,
        })
    }
}

/// A rule key's globs (`*` spans `/`), each checked by `check` first; shared by the
/// AWS and Kubernetes keys.
pub(super) fn globs_of(
    values: &[Spanned<String>],
    rule: &str,
    key: &str,
    case_insensitive: bool,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<GlobSet, PolicyProblem> {
    if values.is_empty() {
        return Err(PolicyProblem {
            span: None,
            message: format!(
                "rule \"{rule}\": {key} = [] can never match; remove it or list values"
            ),
        });
    }
    let mut set = GlobSetBuilder::new();
    for value in values {
        let v = value.get_ref();
        if v.is_empty() {
            return Err(PolicyProblem::at(
                value,
                format!("an empty glob in {key} of rule \"{rule}\" can never match"),
            ));
        }
        check(v).map_err(|m| PolicyProblem::at(value, format!("{m} (rule \"{rule}\")")))?;
        let glob = GlobBuilder::new(v)
            .case_insensitive(case_insensitive)
            .build()
            .map_err(|e| {
                PolicyProblem::at(
                    value,
                    format!(
                        "invalid glob \"{v}\" in {key} of rule \"{rule}\": {}",
                        e.kind()
                    ),
                )
            })?;
        set.add(glob);
    }
    set.build().map_err(|e| PolicyProblem {
        span: None,
        message: format!("{key} of rule \"{rule}\": {e}"),
    })
}
