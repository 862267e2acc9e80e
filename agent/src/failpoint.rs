//! Named pauses for the integration tests, in debug builds only: a test that must hold a
//! connection at one point of its handling (to race a reload against it, say) sets
//! `NHI_FAILPOINTS=name=wait:/path/to/file` in the agent's environment, and the agent
//! stops at `pause("name")` until that file exists. Release builds compile both kinds
//! of point to nothing and never read the variable.
//!
//! `name=hold:/path` is the opposite, for a thread that must hang on demand (the journal
//! writer, to starve the watchdog): `hold_blocking("name")` blocks the calling thread
//! while that file exists, and goes on at once when it does not.
//!
//! Several points are separated by `;`: `a=wait:/tmp/x;b=hold:/tmp/y`. The agent logs
//! `failpoint NAME: waiting for PATH` / `holding while PATH exists` when it stops, so
//! the test knows it got there.

/// Stops at the failpoint `name` if the environment configures one (debug builds).
#[cfg(debug_assertions)]
pub async fn pause(name: &str) {
    let Some(path) = configured(name, Action::Wait) else {
        return;
    };
    tracing::warn!(failpoint = name, path = %path.display(), "failpoint {name}: waiting for {}", path.display());
    while !path.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tracing::warn!(failpoint = name, "failpoint {name}: released");
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub async fn pause(_name: &str) {}

/// Blocks the calling thread while the file of the `hold:` failpoint `name` exists
/// (debug builds).
#[cfg(debug_assertions)]
pub fn hold_blocking(name: &str) {
    let Some(path) = configured(name, Action::Hold) else {
        return;
    };
    if !path.exists() {
        return;
    }
    tracing::warn!(failpoint = name, path = %path.display(), "failpoint {name}: holding while {} exists", path.display());
    while path.exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!(failpoint = name, "failpoint {name}: released");
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hold_blocking(_name: &str) {}

#[cfg(debug_assertions)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Wait until the file exists.
    Wait,
    /// Hold while the file exists.
    Hold,
}

#[cfg(debug_assertions)]
fn configured(name: &str, action: Action) -> Option<std::path::PathBuf> {
    use std::sync::OnceLock;
    static POINTS: OnceLock<Vec<(String, Action, std::path::PathBuf)>> = OnceLock::new();
    POINTS
        .get_or_init(|| parse(&std::env::var("NHI_FAILPOINTS").unwrap_or_default()))
        .iter()
        .find(|(n, a, _)| n == name && *a == action)
        .map(|(_, _, p)| p.clone())
}

#[cfg(debug_assertions)]
fn parse(spec: &str) -> Vec<(String, Action, std::path::PathBuf)> {
    spec.split(';')
        .filter_map(|point| {
            let (name, action) = point.trim().split_once('=')?;
            let (action, path) = if let Some(path) = action.strip_prefix("wait:") {
                (Action::Wait, path)
            } else {
                (Action::Hold, action.strip_prefix("hold:")?)
            };
            Some((name.to_string(), action, std::path::PathBuf::from(path)))
        })
        .collect()
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn spec_names_points_and_their_files() {
        assert_eq!(
            parse("a.b=wait:/tmp/x; c=hold:/tmp/y;bad;d=sleep:1"),
            vec![
                (
                    "a.b".to_string(),
                    Action::Wait,
                    std::path::PathBuf::from("/tmp/x")
                ),
                (
                    "c".to_string(),
                    Action::Hold,
                    std::path::PathBuf::from("/tmp/y")
                ),
            ]
        );
        assert!(parse("").is_empty());
    }
}
