//! The request path as policy sees it: one normal form for every spelling a server may
//! treat as the same resource, and a refusal for every spelling servers disagree on.
//!
//! Policy globs (`paths = ["/admin/**"]`) are matched against [`NormalPath`], never
//! against the raw request target, so `/admin/../admin`, `/%61dmin`, `//admin` and
//! `/admin;jsessionid=1` all meet the rule for `/admin`. The request itself is forwarded
//! as the client sent it: normalisation only decides, it does not rewrite. Anything whose
//! meaning depends on the server is refused ([`PathError`]) rather than guessed:
//!
//! - `%2F` / `%5C` (an encoded separator: one server splits on it, another does not),
//!   a backslash (IIS treats it as `/`), `%00` and other control characters, a `%` that
//!   does not start a valid escape, an escape that still decodes to an escape (`%252e`:
//!   a server that decodes twice sees `.`), an encoded `;`, an encoded dot segment
//!   (`%2e%2e`: resolved by some servers, a name to others), bytes that are not UTF-8
//!   once decoded;
//! - a `..` that would climb above the root, or that follows an empty segment
//!   (`/x//../a` is `/x/a` per RFC 3986 but `/a` where `//` is merged);
//! - a request target that is not a path (authority-form `host:443`, anything but `*`
//!   without a leading `/`), or an absolute-form target with another scheme than http(s).
//!
//! What is normalised: percent-escapes of any byte but `/`, `\`, `%`, `;` and controls
//! are decoded; `;params` are removed from every segment (Tomcat and Spring strip them,
//! nginx does not: the rule must hold for both); empty segments (`//`) are merged; `.`
//! and `..` segments are resolved (RFC 3986 §5.2.4). The query is kept apart, raw.

use std::fmt;

/// A request path in normal form (always starts with `/`; `*` for `OPTIONS *`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    pub path: String,
    /// The raw query (after `?`), if any: not part of path matching.
    pub query: Option<String>,
}

/// Why a request target was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The target is not a path this proxy judges (authority-form, a scheme, ...).
    NotAPath(String),
    /// An escape or character whose meaning depends on the server.
    Ambiguous(String),
    /// `..` above the root.
    AboveRoot,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::NotAPath(why) => write!(f, "request target is not a path: {why}"),
            PathError::Ambiguous(why) => write!(f, "ambiguous request path: {why}"),
            PathError::AboveRoot => f.write_str("ambiguous request path: `..` above the root"),
        }
    }
}

impl std::error::Error for PathError {}

/// Normalises a request target (origin-form `/a/b?q`, absolute-form
/// `http://host/a/b?q`, or `*`).
pub fn normalize(target: &str) -> Result<NormalPath, PathError> {
    if target == "*" {
        return Ok(NormalPath {
            path: "*".into(),
            query: None,
        });
    }
    let origin = match target.find("://") {
        Some(at) if !target[..at].contains('/') => {
            let scheme = &target[..at];
            if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                return Err(PathError::NotAPath(format!("scheme {scheme:?}")));
            }
            let rest = &target[at + 3..];
            match rest.find(['/', '?']) {
                Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
                Some(i) => return with_query("/", Some(&rest[i + 1..])),
                None => "/",
            }
        }
        _ => target,
    };
    if !origin.starts_with('/') {
        return Err(PathError::NotAPath(
            "it does not start with `/` (authority-form or garbage)".into(),
        ));
    }
    let (path, query) = match origin.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (origin, None),
    };
    with_query(path, query)
}

fn with_query(path: &str, query: Option<&str>) -> Result<NormalPath, PathError> {
    if let Some(q) = query {
        if q.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(PathError::Ambiguous(
                "a control character in the query".into(),
            ));
        }
    }
    Ok(NormalPath {
        path: normalize_path(path)?,
        query: query.map(str::to_owned),
    })
}

/// Strips `;params`, decodes, merges `//`, resolves dot segments, segment by segment.
fn normalize_path(raw: &str) -> Result<String, PathError> {
    let mut out: Vec<String> = Vec::new();
    // A path ending in `/` (or in a dot segment) names a directory: keep the slash.
    let mut trailing_slash = false;
    // An empty segment seen: a later `..` then means `/x/` for a server that keeps
    // `//` (RFC 3986) and `/` for one that merges it (nginx): ambiguous.
    let mut saw_empty = false;
    for raw_segment in raw.split('/').skip(1) {
        // `;params` belong to the segment they follow (RFC 3986 §3.3); servers differ
        // on whether they are part of the resource, so rules see the segment without.
        let raw_segment = raw_segment.split(';').next().unwrap_or("");
        let segment = decode(raw_segment)?;
        if segment != raw_segment && (segment == "." || segment == "..") {
            // Some servers resolve `%2e%2e` as `..`, others serve it as a name.
            return Err(PathError::Ambiguous("an encoded dot segment".into()));
        }
        trailing_slash = false;
        match segment.as_str() {
            "" => {
                saw_empty = true;
                trailing_slash = true;
            }
            "." => trailing_slash = true,
            ".." => {
                if saw_empty {
                    return Err(PathError::Ambiguous("`//` before `..`".into()));
                }
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            _ => out.push(segment),
        }
    }
    let mut path = String::with_capacity(raw.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

/// Percent-decoding that refuses what servers disagree on (see the module docs).
fn decode(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or_else(|| PathError::Ambiguous("a `%` without two hex digits".into()))?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| PathError::Ambiguous("a `%` without two hex digits".into()))?;
                match value {
                    b'/' | b'\\' => {
                        return Err(PathError::Ambiguous(format!(
                            "an encoded separator (%{})",
                            String::from_utf8_lossy(hex)
                        )))
                    }
                    b'%' => {
                        return Err(PathError::Ambiguous(
                            "an encoded `%` (double encoding)".into(),
                        ))
                    }
                    b';' => {
                        return Err(PathError::Ambiguous(
                            "an encoded `;` (a parameter delimiter to some servers)".into(),
                        ))
                    }
                    v if v.is_ascii_control() => {
                        return Err(PathError::Ambiguous("an encoded control character".into()))
                    }
                    v => out.push(v),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Ambiguous("a backslash".into())),
            b if b.is_ascii_control() || b == b' ' => {
                return Err(PathError::Ambiguous("a control character or space".into()))
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| PathError::Ambiguous("bytes that are not UTF-8 once decoded".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(target: &str) -> String {
        normalize(target)
            .unwrap_or_else(|e| panic!("{target}: {e}"))
            .path
    }

    #[test]
    fn spellings_of_one_resource_normalise_alike() {
        for target in [
            "/admin",
            "/admin/../admin",
            "/%61dmin",
            "/%61%64%6D%69%6E",
            "//admin",
            "/./admin",
            "/x/y/../../admin",
            "/x/./../admin",
            "/admin;jsessionid=1",
            "/admin;a=b;c",
            "http://billing.internal/admin",
            "HTTPS://billing.internal:8443/admin",
        ] {
            assert_eq!(path(target), "/admin", "{target}");
        }
        assert_eq!(path("/admin/"), "/admin/");
        assert_eq!(path("/admin/."), "/admin/");
        assert_eq!(path("/admin/users/.."), "/admin/");
        assert_eq!(path("/admin//users"), "/admin/users");
        assert_eq!(path("/"), "/");
        assert_eq!(path("http://h"), "/");
        assert_eq!(path("/caf%C3%A9"), "/café");
        assert_eq!(path("*"), "*");
    }

    #[test]
    fn the_query_is_kept_apart_and_raw() {
        let n = normalize("/a/../b?x=%2F&y=1").expect("valid");
        assert_eq!(
            (n.path.as_str(), n.query.as_deref()),
            ("/b", Some("x=%2F&y=1"))
        );
        let n = normalize("http://h?q=1").expect("valid");
        assert_eq!((n.path.as_str(), n.query.as_deref()), ("/", Some("q=1")));
        assert!(normalize("/a?x=\u{1}").is_err());
    }

    #[test]
    fn what_servers_read_differently_is_refused() {
        for target in [
            "/admin%2Fusers",
            "/admin%2fusers",
            "/admin%5Cusers",
            "/admin\\users",
            "/%252e%252e/admin",
            "/admin%00",
            "/admin%0a",
            "/admin%",
            "/admin%2",
            "/admin%zz",
            "/%FF",
            "/a b",
            "/..",
            "/a/../../admin",
            "/x/%2e%2e/admin",
            "/x/.%2e/admin",
            "/x/%2E/admin",
            "/x//../admin",
            "/admin%3Bx/secret",
        ] {
            assert!(normalize(target).is_err(), "{target} must be refused");
        }
        assert_eq!(normalize("/..").unwrap_err(), PathError::AboveRoot);
        for target in ["billing.internal:443", "admin", "ftp://h/admin", ""] {
            assert!(
                matches!(normalize(target), Err(PathError::NotAPath(_))),
                "{target}"
            );
        }
    }

    /// Every target is either refused or normalised to a path that normalises to itself
    /// (a normal form is a fixed point), on a corpus of tricky spellings.
    #[test]
    fn normal_forms_are_fixed_points() {
        let parts = [
            "", "/", "//", ".", "..", "%2e", "%2E%2e", ";p", "a", "%61", "?q", "%3b",
        ];
        for a in parts {
            for b in parts {
                for c in parts {
                    let target = format!("/{a}/{b}{c}");
                    if let Ok(n) = normalize(&target) {
                        assert_eq!(path(&n.path), n.path, "{target} -> {}", n.path);
                    }
                }
            }
        }
    }
}
