//! The HTTP conditions of a `[[policy.rule]]`: `methods`, `paths`, `hosts`, `headers`.
//!
//! ```toml
//! [[policy.rule]]
//! name = "no-admin-deletes"
//! verdict = "deny"
//! methods = ["DELETE", "PUT"]            # any of them (case-insensitive)
//! paths = ["/admin/**", "/v1/*/keys"]    # globs on the normalised path
//! hosts = ["billing.internal", "*.corp"] # Host / :authority (port ignored), case-insensitive
//! headers = { "x-env" = "prod*" }        # every header listed, value glob
//! ```
//!
//! Paths are matched after `protocol::http::path::normalize` (a request whose path
//! cannot be normalised unambiguously never reaches the rules: it is refused). In path
//! globs `*` stays within one segment and `**` spans segments; `/x/**` also matches `/x`
//! itself, so a rule for a subtree covers its root.
use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use toml::Spanned;

use super::PolicyProblem;

/// What the rules see of one HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequestInfo<'a> {
    /// The method, as sent (compared case-insensitively).
    pub method: &'a str,
    /// Host or :authority, without the port; `None` when the request has none.
    pub host: Option<&'a str>,
    /// The normalised path (`protocol::http::path::NormalPath::path`).
    pub path: &'a str,
    /// The request headers (name, value); names compared case-insensitively.
    pub headers: &'a [(&'a str, &'a str)],
}

/// The HTTP conditions of one rule; each one set must hold.
#[derive(Debug, Clone, Default)]
pub struct HttpMatch {
    methods: Option<Vec<String>>,
    paths: Option<GlobSet>,
    hosts: Option<GlobSet>,
    headers: Vec<(String, GlobMatcher)>,
}

impl HttpMatch {
    /// Whether the rule sets any HTTP condition.
    pub fn is_set(&self) -> bool {
        self.methods.is_some()
            || self.paths.is_some()
            || self.hosts.is_some()
            || !self.headers.is_empty()
    }

    pub fn matches(&self, request: &HttpRequestInfo<'_>) -> bool {
        if let Some(methods) = &self.methods {
            if !methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(request.method))
            {
                return false;
            }
        }
        if let Some(hosts) = &self.hosts {
            if !request.host.is_some_and(|h| hosts.is_match(h)) {
                return false;
            }
        }
        if let Some(paths) = &self.paths {
            if !paths.is_match(request.path) {
                return false;
            }
        }
        self.headers.iter().all(|(name, glob)| {
            request
                .headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name) && glob.is_match(v))
        })
    }

    /// Validates the HTTP keys of rule `rule`.
    pub fn from_raw(
        rule: &str,
        methods: Option<&[Spanned<String>]>,
        paths: Option<&[Spanned<String>]>,
        hosts: Option<&[Spanned<String>]>,
        headers: Option<&std::collections::BTreeMap<String, Spanned<String>>>,
    ) -> Result<HttpMatch, PolicyProblem> {
        let methods = methods
            .map(|methods| {
                non_empty(methods, rule, "methods")?;
                methods
                    .iter()
                    .map(|m| {
                        let v = m.get_ref();
                        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-')
                        {
                            return Err(PolicyProblem::at(
                                m,
                                format!("invalid method \"{v}\" in rule \"{rule}\""),
                            ));
                        }
                        Ok(v.to_ascii_uppercase())
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let paths = paths
            .map(|paths| {
                non_empty(paths, rule, "paths")?;
                let mut set = GlobSetBuilder::new();
                for p in paths {
                    let v = p.get_ref();
                    if !v.starts_with('/') {
                        return Err(PolicyProblem::at(
                            p,
                            format!("path glob \"{v}\" in rule \"{rule}\" must start with `/`"),
                        ));
                    }
                    let mut add = |glob: &str| -> Result<(), PolicyProblem> {
                        let g = GlobBuilder::new(glob)
                            .literal_separator(true)
                            .build()
                            .map_err(|e| {
                                PolicyProblem::at(
                                    p,
                                    format!(
                                        "invalid path glob \"{v}\" in rule \"{rule}\": {}",
                                        e.kind()
                                    ),
                                )
                            })?;
                        set.add(g);
                        Ok(())
                    };
                    add(v)?;
                    // `/x/**` covers `/x` and `/x/` too.
                    if let Some(root) = v.strip_suffix("/**") {
                        add(if root.is_empty() { "/" } else { root })?;
                        add(&format!("{root}/"))?;
                    }
                }
                set.build().map_err(|e| PolicyProblem {
                    span: None,
                    message: format!("paths of rule \"{rule}\": {e}"),
                })
            })
            .transpose()?;
        let hosts = hosts
            .map(|hosts| {
                non_empty(hosts, rule, "hosts")?;
                let mut set = GlobSetBuilder::new();
                for h in hosts {
                    let g = GlobBuilder::new(h.get_ref())
                        .case_insensitive(true)
                        .build()
                        .map_err(|e| {
                            PolicyProblem::at(
                                h,
                                format!(
                                    "invalid host glob \"{}\" in rule \"{rule}\": {}",
                                    h.get_ref(),
                                    e.kind()
                                ),
                            )
                        })?;
                    set.add(g);
                }
                set.build().map_err(|e| PolicyProblem {
                    span: None,
                    message: format!("hosts of rule \"{rule}\": {e}"),
                })
            })
            .transpose()?;
        let headers = headers
            .map(|headers| {
                headers
                    .iter()
                    .map(|(name, value)| {
                        if name.is_empty()
                            || !name
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                        {
                            return Err(PolicyProblem::at(
                                value,
                                format!("invalid header name \"{name}\" in rule \"{rule}\""),
                            ));
                        }
                        let glob = GlobBuilder::new(value.get_ref())
                            .build()
                            .map_err(|e| {
                                PolicyProblem::at(
                                    value,
                                    format!(
                                        "invalid glob \"{}\" for header {name} in rule \"{rule}\": {}",
                                        value.get_ref(),
                                        e.kind()
                                    ),
                                )
                            })?
                            .compile_matcher();
                        Ok((name.to_ascii_lowercase(), glob))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        Ok(HttpMatch {
            methods,
            paths,
            hosts,
            headers,
        })
    }
}

fn non_empty(values: &[Spanned<String>], rule: &str, key: &str) -> Result<(), PolicyProblem> {
    if values.is_empty() {
        return Err(PolicyProblem {
            span: None,
            message: format!(
                "rule \"{rule}\": {key} = [] can never match; remove it or list values"
            ),
        });
    }
    Ok(())
}
