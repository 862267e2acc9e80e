//! `[[policy]]` as serde reads it from the configuration file, before validation.
//!
//! Every value validation may reject is `Spanned`, so the problem can point at it;
//! `deny_unknown_fields` turns a misspelt key into an error instead of a rule that
//! silently never matches.
use serde::Deserialize;
use toml::Spanned;

/// One `[[policy]]` table. Validate it with [`super::Policy::from_raw`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub(super) name: Option<Spanned<String>>,
    pub(super) workload: Option<Spanned<String>>,
    pub(super) target: Option<Spanned<String>>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) default: Option<Spanned<String>>,
    pub(super) unparsed: Option<Spanned<String>>,
    pub(super) db_user: Option<Spanned<String>>,
    pub(super) record_results: Option<Spanned<String>>,
    pub(super) approval_timeout: Option<Spanned<String>>,
    /// attest: claim name -> glob over the claim's value (see `crate::attest`).
    pub(super) claims: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    /// attest: only attested (`true`) or only unattested (`false`) sessions.
    pub(super) attested: Option<Spanned<bool>>,
    pub(super) max_session_duration: Option<Spanned<String>>,
    /// SSH: the user the agent logs into the host as.
    pub(super) ssh_user: Option<Spanned<String>>,
    /// SSH: `false` refuses terminals (pty requests).
    pub(super) pty: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) rule: Vec<Spanned<RawRule>>,
}

/// One `[[policy.rule]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub(super) name: Spanned<String>,
    pub(super) verdict: Spanned<String>,
    pub(super) kinds: Option<Vec<Spanned<String>>>,
    pub(super) tables: Option<Vec<Spanned<String>>>,
    pub(super) functions: Option<Vec<Spanned<String>>>,
    pub(super) without_where: Option<bool>,
    pub(super) text: Option<Spanned<String>>,
    /// HTTP (see `super::http`).
    pub(super) methods: Option<Vec<Spanned<String>>>,
    pub(super) paths: Option<Vec<Spanned<String>>>,
    pub(super) hosts: Option<Vec<Spanned<String>>>,
    pub(super) headers: Option<std::collections::BTreeMap<String, Spanned<String>>>,
    /// AWS (see `super::aws`).
    pub(super) actions: Option<Vec<Spanned<String>>>,
    pub(super) regions: Option<Vec<Spanned<String>>>,
    pub(super) resources: Option<Vec<Spanned<String>>>,
    /// Kubernetes (see `super::kube`; `resources` above is shared).
    pub(super) verbs: Option<Vec<Spanned<String>>>,
    pub(super) namespaces: Option<Vec<Spanned<String>>>,
    pub(super) names: Option<Vec<Spanned<String>>>,
    pub(super) subresources: Option<Vec<Spanned<String>>>,
    /// SSH (see `super::ssh`).
    pub(super) commands: Option<Vec<Spanned<String>>>,
    pub(super) regex: Option<Spanned<String>>,
    pub(super) ssh_requests: Option<Vec<Spanned<String>>>,
    pub(super) sftp_ops: Option<Vec<Spanned<String>>>,
    pub(super) sftp_paths: Option<Vec<Spanned<String>>>,
    /// Redis (see `super::redis`; `commands` above is shared).
    pub(super) keys: Option<Vec<Spanned<String>>>,
}

impl RawRule {
    /// The rule's conditions as one comparable text (name and verdict left out): two
    /// rules with the same text match the same statements and requests.
    pub(super) fn conditions_key(&self) -> String {
        fn list(v: &Option<Vec<Spanned<String>>>) -> Option<Vec<&str>> {
            v.as_ref()
                .map(|v| v.iter().map(|s| s.get_ref().as_str()).collect())
        }
        let one = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.get_ref().clone());
        let headers = self.headers.as_ref().map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.get_ref().clone()))
                .collect::<Vec<_>>()
        });
        format!(
            "{:?}",
            (
                (list(&self.kinds), list(&self.tables), list(&self.functions)),
                (self.without_where.unwrap_or(false), one(&self.text)),
                (
                    list(&self.methods),
                    list(&self.paths),
                    list(&self.hosts),
                    headers
                ),
                (
                    list(&self.actions),
                    list(&self.regions),
                    list(&self.resources)
                ),
                (
                    list(&self.verbs),
                    list(&self.namespaces),
                    list(&self.names),
                    list(&self.subresources)
                ),
                (
                    list(&self.commands),
                    one(&self.regex),
                    list(&self.ssh_requests),
                    list(&self.sftp_ops),
                    list(&self.sftp_paths)
                ),
                list(&self.keys),
            )
        )
    }
}
