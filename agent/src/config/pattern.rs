//! Cgroup path patterns, which select the workloads to intercept.
use std::fmt;

use globset::{GlobBuilder, GlobMatcher};

/// A glob over cgroup paths relative to the cgroup2 mount, without a leading slash
/// (`system.slice/backup.service`; the root cgroup is the empty path).
///
/// `*`, `?` and `[...]` stay within one path component and `**` crosses `/`. A
/// cgroup is selected when the pattern matches its path or the path of any of its
/// ancestors, root included, so processes a selected service moves into child
/// cgroups (systemd's delegation, CI runners' job scopes) stay intercepted.
#[derive(Debug, Clone)]
pub struct CgroupPattern {
    /// The pattern as written in the configuration, for messages and summaries.
    source: String,
    /// The normalised pattern (no leading or trailing '/'), compiled.
    matcher: GlobMatcher,
}

impl CgroupPattern {
    /// The pattern selecting every cgroup; the default for a workload without `cgroup`.
    pub const ANY: &'static str = "**";

    /// Compiles a pattern. One leading '/' (or several) is accepted and ignored,
    /// because people write cgroup paths the way /proc/PID/cgroup shows them.
    /// Returns a sentence saying what is wrong for an invalid or empty pattern.
    pub fn new(source: &str) -> Result<Self, String> {
        let normalised = source.trim_start_matches('/').trim_end_matches('/');
        if normalised.is_empty() {
            // The root matches everything through the ancestor rule, so an empty
            // pattern would intercept the whole machine: make the SRE say so.
            return Err(format!(
                "cgroup pattern \"{source}\" is empty; write \"**\" to select every cgroup"
            ));
        }
        let glob = GlobBuilder::new(normalised)
            .literal_separator(true)
            // systemd escapes unit names with backslashes
            // (`system-systemd\x2dfsck.slice`), so a backslash must match itself;
            // a literal `*` or `?` can still be written `[*]` or `[?]`.
            .backslash_escape(false)
            .build()
            .map_err(|e| format!("invalid cgroup pattern \"{source}\": {}", e.kind()))?;
        Ok(CgroupPattern {
            source: source.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }

    /// The pattern as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// False when no cgroup below `cgroup_path` can ever match this pattern, so a
    /// cgroup created there later needs no classification before it connects.
    ///
    /// Conservative and sound: a path that matches must start with the pattern's
    /// literal prefix (everything before its first wildcard), and a descendant starts
    /// with `cgroup_path/`; if neither of those two is a prefix of the other, no
    /// descendant can match.
    pub fn may_match_below(&self, cgroup_path: &str) -> bool {
        let pattern = self.source.trim_start_matches('/').trim_end_matches('/');
        let literal_end = pattern.find(['*', '?', '[', '{']).unwrap_or(pattern.len());
        let literal = &pattern[..literal_end];
        let path = cgroup_path.trim_start_matches('/').trim_end_matches('/');
        if path.is_empty() {
            return true;
        }
        let below = format!("{path}/");
        literal.starts_with(&below) || below.starts_with(literal)
    }

    /// Whether a cgroup is selected: the pattern matches `cgroup_path` (relative to
    /// the cgroup2 mount; a leading '/' is ignored) or one of its ancestors.
    pub fn matches(&self, cgroup_path: &str) -> bool {
        let mut path = cgroup_path.trim_start_matches('/').trim_end_matches('/');
        loop {
            if self.matcher.is_match(path) {
                return true;
            }
            match path.rfind('/') {
                Some(i) => path = &path[..i],
                None if !path.is_empty() => path = "",
                None => return false,
            }
        }
    }
}

impl PartialEq for CgroupPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for CgroupPattern {}

impl fmt::Display for CgroupPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(text: &str) -> CgroupPattern {
        CgroupPattern::new(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn star_stays_within_a_component_and_children_are_selected() {
        let p = pat("system.slice/backup*.service");
        assert!(p.matches("system.slice/backup-nightly.service"));
        assert!(p.matches("system.slice/backup.service"));
        assert!(p.matches("system.slice/backup.service/job1"));
        assert!(p.matches("/system.slice/backup.service/job1"));
        assert!(!p.matches("system.slice/other.service"));
        assert!(!p.matches("user.slice/backup.service"));
        assert!(!p.matches("system.slice"));
        assert!(!p.matches(""));
        // '*' must not cross '/': this would match if it did.
        assert!(!pat("system.slice/*.service").matches("system.slice/a/b.service"));
        assert!(!pat("system.slice/backup?service").matches("system.slice/backup/service"));
    }

    #[test]
    fn double_star_crosses_slashes() {
        let p = pat("**/backup.service");
        assert!(p.matches("system.slice/backup.service"));
        assert!(p.matches("a/b/c/backup.service/child"));
        assert!(!p.matches("a/b/c/other.service"));
        let p = pat("kubepods.slice/**/cri-containerd-*.scope");
        assert!(
            p.matches("kubepods.slice/kubepods-burstable.slice/pod1.slice/cri-containerd-ab.scope")
        );
        assert!(!p.matches("kubepods.slice/cri-containerd.scope"));
    }

    #[test]
    fn any_selects_everything_including_the_root() {
        let p = pat(CgroupPattern::ANY);
        assert!(p.matches(""));
        assert!(p.matches("/"));
        assert!(p.matches("system.slice"));
        assert!(p.matches("a/b/c"));
    }

    #[test]
    fn leading_slash_and_classes() {
        let p = pat("/nhi-demo");
        assert_eq!(p.as_str(), "/nhi-demo");
        assert!(p.matches("nhi-demo"));
        assert!(p.matches("nhi-demo/child/grandchild"));
        assert!(!p.matches("nhi-demo2"));
        let p = pat("user.slice/user-[0-9]*.slice");
        assert!(p.matches("user.slice/user-1000.slice/session-3.scope"));
        assert!(!p.matches("user.slice/user-x.slice"));
    }

    #[test]
    fn backslashes_are_literal() {
        let p = pat(r"system.slice/system-systemd\x2dfsck.slice");
        assert!(p.matches(r"system.slice/system-systemd\x2dfsck.slice/x"));
        assert!(!p.matches("system.slice/system-systemdx2dfsck.slice"));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert!(CgroupPattern::new("system.slice/[oops").is_err());
        assert!(CgroupPattern::new("").is_err());
        assert!(CgroupPattern::new("/").is_err());
    }
}

#[cfg(test)]
mod may_match_below_tests {
    use super::CgroupPattern;

    #[test]
    fn only_subtrees_that_can_hold_a_match_say_so() {
        let p = CgroupPattern::new("system.slice/backup*.service").unwrap();
        assert!(p.may_match_below(""), "the root holds everything");
        assert!(p.may_match_below("system.slice"));
        assert!(p.may_match_below("/system.slice/"));
        assert!(!p.may_match_below("user.slice"));
        assert!(!p.may_match_below("user.slice/user-1000.slice"));
        assert!(!p.may_match_below("system.slice/other.service"));
        // "system.slice/backup" is a cgroup name too: its children do not start with
        // the literal "system.slice/backup" followed by more name characters...
        assert!(p.may_match_below("system.slice/backup-nightly.service"));
        // A pattern starting with a wildcard can match anywhere.
        let any = CgroupPattern::new("**/ci-job-*.scope").unwrap();
        assert!(any.may_match_below("user.slice"));
        // Exact paths: only their ancestors and themselves.
        let exact = CgroupPattern::new("a/b/c").unwrap();
        assert!(exact.may_match_below("a"));
        assert!(exact.may_match_below("a/b"));
        assert!(!exact.may_match_below("a/x"));
        assert!(!exact.may_match_below("ab"));
    }

    /// Soundness against the matcher itself: whenever a descendant matches, the
    /// ancestor must have said "may match below".
    #[test]
    fn never_says_no_when_a_descendant_matches() {
        let patterns = [
            "system.slice/backup*.service",
            "a/b/c",
            "x/*/y",
            "**",
            "k?/z",
            "n/[ab]*",
        ];
        let paths = [
            "system.slice/backup.service/job",
            "system.slice/backup-x.service",
            "a/b/c/d",
            "x/q/y",
            "k1/z",
            "n/b1",
            "user.slice/u/s",
        ];
        for pat in patterns {
            let p = CgroupPattern::new(pat).unwrap();
            for path in paths {
                if p.matches(path) {
                    let mut ancestor = path;
                    while let Some(i) = ancestor.rfind('/') {
                        ancestor = &ancestor[..i];
                        assert!(
                            p.may_match_below(ancestor),
                            "{pat}: {path} matches but {ancestor} said no"
                        );
                    }
                }
            }
        }
    }
}
