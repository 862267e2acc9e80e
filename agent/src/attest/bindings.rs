//! Claims bound to cgroups. Pure: whether a cgroup still exists is asked through a
//! closure (the agent passes [`crate::identity::CgroupFs::id_of`]).
//!
//! A binding is keyed by the cgroup's path and remembers its id: cgroup ids are never
//! reused while the machine is up, so a binding whose path now has another id (or none)
//! belongs to a removed cgroup and is dropped. Sessions from the bound cgroup or any
//! descendant carry the claims; the nearest bound ancestor wins.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Claims;

/// Claims bound to one cgroup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    /// Path relative to the cgroup2 mount (`""` is the root).
    pub cgroup: String,
    /// The cgroup's id (inode number) when it was bound.
    pub cgroup_id: u64,
    /// The token's issuer.
    pub issuer: String,
    /// The token's subject.
    pub subject: Option<String>,
    /// The bound claims.
    pub claims: Claims,
    /// When it was bound, microseconds since the epoch.
    pub bound_at_us: i64,
    /// The token's expiry, seconds since the epoch (the binding outlives it: it lasts as
    /// long as the cgroup, i.e. the job).
    pub token_expires_at: u64,
    /// Who attested: process id and uid.
    pub pid: i32,
    /// See `pid`.
    pub uid: u32,
}

/// Every binding, by cgroup path.
#[derive(Debug, Default)]
pub struct Bindings {
    by_path: HashMap<String, Binding>,
}

/// `a/b/c`, `a/b`, `a`, `` : a path and its ancestors, nearest first.
fn self_and_ancestors(path: &str) -> impl Iterator<Item = &str> {
    let path = path.trim_matches('/');
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = if current.is_empty() {
            None
        } else {
            Some(current.rfind('/').map_or("", |i| &current[..i]))
        };
        Some(current)
    })
}

impl Bindings {
    /// Binds `binding` to its cgroup, replacing an earlier binding of the same cgroup
    /// (the latest verified token speaks for the job).
    pub fn bind(&mut self, binding: Binding) -> Option<Binding> {
        self.by_path.insert(binding.cgroup.clone(), binding)
    }

    /// The binding that governs the cgroup at `path` with id `id`: its own, or its nearest
    /// bound ancestor's. `id_of` gives the current id of a path (`None`: no such cgroup);
    /// bindings it shows to be stale are dropped on the way.
    pub fn nearest(
        &mut self,
        path: &str,
        id: u64,
        id_of: impl Fn(&str) -> Option<u64>,
    ) -> Option<&Binding> {
        let mut found: Option<String> = None;
        for candidate in self_and_ancestors(path) {
            let Some(binding) = self.by_path.get(candidate) else {
                continue;
            };
            // The session's own cgroup id is known; an ancestor's is looked up.
            let current = if candidate == path.trim_matches('/') {
                Some(id)
            } else {
                id_of(candidate)
            };
            if current == Some(binding.cgroup_id) {
                found = Some(candidate.to_string());
                break;
            }
            // The bound cgroup is gone (maybe replaced by a namesake).
            let stale = candidate.to_string();
            self.by_path.remove(&stale);
        }
        found.and_then(|p| self.by_path.get(&p))
    }

    /// Drops the bindings of cgroups that no longer exist; returns how many.
    pub fn retain_existing(&mut self, id_of: impl Fn(&str) -> Option<u64>) -> usize {
        let before = self.by_path.len();
        self.by_path
            .retain(|path, binding| id_of(path) == Some(binding.cgroup_id));
        before - self.by_path.len()
    }

    /// Every binding, ordered by cgroup path.
    pub fn list(&self) -> Vec<Binding> {
        let mut all: Vec<Binding> = self.by_path.values().cloned().collect();
        all.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        all
    }

    /// How many cgroups are bound.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(path: &str, id: u64, run: &str) -> Binding {
        let mut claims = Claims::new();
        claims.insert("run_id".into(), run.into());
        Binding {
            cgroup: path.into(),
            cgroup_id: id,
            issuer: "https://issuer".into(),
            subject: None,
            claims,
            bound_at_us: 0,
            token_expires_at: 0,
            pid: 1,
            uid: 0,
        }
    }

    #[test]
    fn ancestors_are_listed_nearest_first() {
        let all: Vec<&str> = self_and_ancestors("a/b/c").collect();
        assert_eq!(all, ["a/b/c", "a/b", "a", ""]);
        let root: Vec<&str> = self_and_ancestors("").collect();
        assert_eq!(root, [""]);
    }

    #[test]
    fn nearest_bound_ancestor_wins_and_stale_bindings_are_dropped() {
        let ids: HashMap<&str, u64> = [("job", 10), ("job/step", 11), ("job/step/x", 12)].into();
        let id_of = |p: &str| ids.get(p).copied();
        let mut b = Bindings::default();
        b.bind(binding("job", 10, "1"));
        assert_eq!(
            b.nearest("job/step/x", 12, id_of)
                .map(|b| b.cgroup.as_str()),
            Some("job")
        );
        b.bind(binding("job/step", 11, "2"));
        assert_eq!(
            b.nearest("job/step/x", 12, id_of)
                .map(|b| b.claims["run_id"].clone()),
            Some("2".into())
        );
        assert!(b.nearest("other", 99, id_of).is_none());

        // "job/step" removed and re-created with another id: its binding is stale.
        let ids2: HashMap<&str, u64> = [("job", 10), ("job/step", 21), ("job/step/x", 22)].into();
        let id_of2 = |p: &str| ids2.get(p).copied();
        assert_eq!(
            b.nearest("job/step/x", 22, id_of2)
                .map(|b| b.cgroup.as_str()),
            Some("job")
        );
        assert_eq!(b.len(), 1, "the stale binding was dropped");

        // The session's own cgroup: its id, not a lookup, decides.
        b.bind(binding("job/step", 21, "3"));
        assert!(b.nearest("job/step", 21, |_| None).is_some());
        assert_eq!(b.retain_existing(|_| None), 2);
        assert!(b.is_empty());
    }
}
