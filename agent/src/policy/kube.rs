//! The Kubernetes conditions of a `[[policy.rule]]`: `verbs`, `resources`,
//! `namespaces`, `names`, `subresources`.
//!
//! ```toml
//! [[policy.rule]]
//! name = "no-deletes-in-prod"
//! verdict = "deny"
//! verbs = ["delete", "deletecollection"]
//! resources = ["apps/deployments", "secrets"]   # group/resource; the core group bare
//! namespaces = ["prod", "prod-*"]
//!
//! [[policy.rule]]
//! name = "exec-needs-approval"
//! verdict = "approve"
//! subresources = ["exec", "attach", "portforward"]
//! namespaces = ["prod"]
//! ```
//!
//! A request is read as the API server reads it
//! ([`crate::protocol::kubernetes::request`]). `resources` globs are matched against
//! `resource` for the core group (`secrets`, `pods`) and `group/resource` for the others
//! (`apps/deployments`, `*/deployments` for any group); `*` spans `/`. `namespaces`
//! only matches namespaced requests, `names` requests that name an object (a list
//! filtered on `metadata.name` names it), `subresources` requests to a subresource;
//! `verbs` also matches non-resource requests (discovery: `get`), which the other keys
//! never match. `exec`, `attach` and `portforward` are `create` whatever the transport.
//!
//! Kubernetes conditions apply only to requests of `protocol = "kubernetes"` targets.
//! They combine with HTTP ones (`methods`, `paths`, `hosts`, `headers`). `resources` is
//! shared with AWS rules (where it names ARNs): a rule with `resources` alone judges
//! both kinds of request, each by its own resource names.
use globset::GlobSet;
use toml::Spanned;

use super::aws::globs_of;
use super::PolicyProblem;
use crate::protocol::kubernetes::request::KubeRequest;

/// The verbs a request can have (`verbs` refuses other names, so a typo cannot make a
/// rule that never matches).
pub const VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "proxy",
    // Non-resource requests with other methods.
    "post",
    "put",
    "head",
    "options",
];

/// The Kubernetes conditions of one rule; each one set must hold.
#[derive(Debug, Clone, Default)]
pub struct KubeMatch {
    verbs: Option<GlobSet>,
    resources: Option<GlobSet>,
    namespaces: Option<GlobSet>,
    names: Option<GlobSet>,
    subresources: Option<GlobSet>,
}

impl KubeMatch {
    /// Whether the rule sets any Kubernetes condition (`resources` included).
    pub fn is_set(&self) -> bool {
        self.has_own() || self.resources.is_some()
    }

    /// Whether the rule sets a condition only Kubernetes requests have (all but
    /// `resources`, which AWS rules share).
    pub fn has_own(&self) -> bool {
        self.verbs.is_some()
            || self.namespaces.is_some()
            || self.names.is_some()
            || self.subresources.is_some()
    }

    pub fn matches(&self, request: &KubeRequest) -> bool {
        if let Some(verbs) = &self.verbs {
            if !verbs.is_match(&request.verb) {
                return false;
            }
        }
        if let Some(resources) = &self.resources {
            if !request.resource_request || !resources.is_match(request.qualified_resource()) {
                return false;
            }
        }
        let named = |set: &Option<GlobSet>, value: &str| match set {
            None => true,
            Some(set) => request.resource_request && !value.is_empty() && set.is_match(value),
        };
        named(&self.namespaces, &request.namespace)
            && named(&self.names, &request.name)
            && named(&self.subresources, &request.subresource)
    }

    /// Validates the Kubernetes keys of rule `rule`.
    pub fn from_raw(
        rule: &str,
        verbs: Option<&[Spanned<String>]>,
        resources: Option<&[Spanned<String>]>,
        namespaces: Option<&[Spanned<String>]>,
        names: Option<&[Spanned<String>]>,
        subresources: Option<&[Spanned<String>]>,
    ) -> Result<KubeMatch, PolicyProblem> {
        let verbs = verbs
            .map(|globs| {
                globs_of(globs, rule, "verbs", false, |v| {
                    let literal = !v.contains(['*', '?', '[', '{']);
                    if literal && !VERBS.contains(&v) {
                        return Err(format!(
                            "unknown verb \"{v}\" (verbs: {})",
                            VERBS[..9].join(", ")
                        ));
                    }
                    Ok(())
                })
            })
            .transpose()?;
        let resources = resources
            .map(|globs| globs_of(globs, rule, "resources", false, |_| Ok(())))
            .transpose()?;
        let namespaces = namespaces
            .map(|globs| globs_of(globs, rule, "namespaces", false, |_| Ok(())))
            .transpose()?;
        let names = names
            .map(|globs| globs_of(globs, rule, "names", false, |_| Ok(())))
            .transpose()?;
        let subresources = subresources
            .map(|globs| {
                globs_of(globs, rule, "subresources", false, |v| {
                    if v.contains('/') {
                        return Err(format!(
                            "subresource \"{v}\" is a subresource's own name (\"exec\", \"status\"), without its resource"
                        ));
                    }
                    Ok(())
                })
            })
            .transpose()?;
        Ok(KubeMatch {
            verbs,
            resources,
            namespaces,
            names,
            subresources,
        })
    }
}
