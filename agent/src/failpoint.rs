//! Named pauses for the integration tests, in debug builds only: a test that must hold a
//! connection at one point of its handling (to race a reload against it, say) sets
//! `NHI_FAILPOINTS=name=wait:/path/to/file` in the agent's environment, and the agent
//! stops at `pause("name")` until that file exists. Release builds compile `pause` to
//! nothing and never read the variable.
//!
//! Several points are separated by `;`: `a=wait:/tmp/x;b=wait:/tmp/y`. The agent logs
//! `failpoint NAME: waiting for PATH` when it stops, so the test knows it got there.

/// Stops at the failpoint `name` if the environment configures one (debug builds).
#[cfg(debug_assertions)]
pub async fn pause(name: &str) {
    let Some(path) = configured(name) else {
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

#[cfg(debug_assertions)]
fn configured(name: &str) -> Option<std::path::PathBuf> {
    use std::sync::OnceLock;
    static POINTS: OnceLock<Vec<(String, std::path::PathBuf)>> = OnceLock::new();
    POINTS
        .get_or_init(|| parse(&std::env::var("NHI_FAILPOINTS").unwrap_or_default()))
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p.clone())
}

#[cfg(debug_assertions)]
fn parse(spec: &str) -> Vec<(String, std::path::PathBuf)> {
    spec.split(';')
        .filter_map(|point| {
            let (name, action) = point.trim().split_once('=')?;
            let path = action.strip_prefix("wait:")?;
            Some((name.to_string(), std::path::PathBuf::from(path)))
        })
        .collect()
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn spec_names_points_and_their_files() {
        assert_eq!(
            parse("a.b=wait:/tmp/x; c=wait:/tmp/y;bad;d=sleep:1"),
            vec![
                ("a.b".to_string(), std::path::PathBuf::from("/tmp/x")),
                ("c".to_string(), std::path::PathBuf::from("/tmp/y")),
            ]
        );
        assert!(parse("").is_empty());
    }
}
