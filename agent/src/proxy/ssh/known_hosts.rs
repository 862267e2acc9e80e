//! Verifying an SSH host's key as OpenSSH does, against a known_hosts file or a pinned
//! fingerprint. Pure: the file's text is given; no trust on first use.
//!
//! known_hosts lines: `[marker] patterns keytype base64 [comment]`; patterns are
//! comma-separated host names or addresses (`[host]:port` for a port other than 22),
//! with `*` / `?` wildcards and `!` negation, or a hashed name (`|1|salt|hash`, HMAC-SHA1).
//! `@cert-authority` lines name CAs whose host certificates are trusted for the matching
//! hosts; `@revoked` lines refuse a key everywhere.
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Certificate, HashAlg, PublicKey};
use sha1::Sha1;

/// What the host presented.
pub enum Presented<'a> {
    Key(&'a PublicKey),
    Certificate(&'a Certificate),
}

/// Why a host key is not accepted (the session is refused with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyError {
    #[error("the host key of {host} ({fingerprint}) does not match the one in {file} line {line}: refusing (possible man-in-the-middle; if the host was re-keyed, update the file)")]
    Changed {
        host: String,
        fingerprint: String,
        file: String,
        line: usize,
    },
    #[error("the host key of {host} ({fingerprint}) is not in {file}: refusing (the agent never trusts a host key on first use; add it, e.g. with ssh-keyscan)")]
    Unknown {
        host: String,
        fingerprint: String,
        file: String,
    },
    #[error("the host key of {host} ({fingerprint}) is marked @revoked in {file} line {line}")]
    Revoked {
        host: String,
        fingerprint: String,
        file: String,
        line: usize,
    },
    #[error("the host key of {host} is {fingerprint}, not the pinned host_key {pinned}: refusing (possible man-in-the-middle; if the host was re-keyed, update host_key)")]
    NotPinned {
        host: String,
        fingerprint: String,
        pinned: String,
    },
}

/// The SHA-256 fingerprint of a key as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Checks `presented` against the pinned `SHA256:...` fingerprint (a certificate's key is
/// what is pinned).
pub fn check_pinned(
    host: &str,
    presented: &Presented<'_>,
    pinned: &str,
) -> Result<(), HostKeyError> {
    let key = match presented {
        Presented::Key(k) => k.key_data(),
        Presented::Certificate(c) => c.public_key(),
    };
    let actual = fingerprint(key);
    if actual == pinned {
        Ok(())
    } else {
        Err(HostKeyError::NotPinned {
            host: host.to_owned(),
            fingerprint: actual,
            pinned: pinned.to_owned(),
        })
    }
}

/// Checks `presented` against the known_hosts `text` (from `file`, for messages) for a
/// host known by any of `names` (e.g. `[127.0.0.1]:2222`, `db.internal`); `now` in
/// Unix seconds, for certificates.
pub fn check_known_hosts(
    text: &str,
    file: &str,
    names: &[String],
    presented: &Presented<'_>,
    now: u64,
) -> Result<(), HostKeyError> {
    let host = names.first().cloned().unwrap_or_default();
    let key = match presented {
        Presented::Key(k) => k.key_data(),
        Presented::Certificate(c) => c.public_key(),
    };
    let fp = fingerprint(key);
    let lines: Vec<Line<'_>> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            Line::parse(l).map(|mut parsed| {
                parsed.number = i + 1;
                parsed
            })
        })
        .collect();
    // A revoked key (or a certificate signed by a revoked CA) is refused everywhere.
    for line in lines.iter().filter(|l| l.marker == Marker::Revoked) {
        let revoked = line.key.as_ref() == Some(key)
            || matches!(presented, Presented::Certificate(c) if line.key.as_ref() == Some(c.signature_key()));
        if revoked {
            return Err(HostKeyError::Revoked {
                host,
                fingerprint: fp,
                file: file.to_owned(),
                line: line.number,
            });
        }
    }
    let matching = |l: &&Line<'_>| names.iter().any(|n| l.matches_host(n));
    if let Presented::Certificate(cert) = presented {
        let trusted = lines
            .iter()
            .filter(|l| l.marker == Marker::CertAuthority)
            .filter(matching)
            .any(|l| l.key.as_ref() == Some(cert.signature_key()));
        let for_host = cert.cert_type() == CertType::Host
            && cert
                .valid_principals()
                .iter()
                .any(|p| names.iter().any(|n| principal_matches(p, n)))
            && cert.valid_after() <= now
            && now < cert.valid_before();
        if trusted && for_host {
            let fps = [cert.signature_key().fingerprint(HashAlg::Sha256)];
            if cert.validate_at(now, &fps).is_ok() {
                return Ok(());
            }
        }
    }
    let mut changed = None;
    for line in lines
        .iter()
        .filter(|l| l.marker == Marker::None)
        .filter(matching)
    {
        let Some(recorded) = &line.key else { continue };
        if recorded == key {
            return Ok(());
        }
        if recorded.algorithm() == key.algorithm() && changed.is_none() {
            changed = Some(line.number);
        }
    }
    match changed {
        Some(line) => Err(HostKeyError::Changed {
            host,
            fingerprint: fp,
            file: file.to_owned(),
            line,
        }),
        None => Err(HostKeyError::Unknown {
            host,
            fingerprint: fp,
            file: file.to_owned(),
        }),
    }
}

/// A principal of a host certificate names `name` (`[host]:port` → `host`).
fn principal_matches(principal: &str, name: &str) -> bool {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.split_once("]:"))
        .map_or(name, |(h, _)| h);
    principal == bare || principal == name
}

#[derive(Debug, PartialEq, Eq)]
enum Marker {
    None,
    CertAuthority,
    Revoked,
}

struct Line<'a> {
    number: usize,
    marker: Marker,
    patterns: &'a str,
    /// `None`: a key that does not decode (the line is ignored, as OpenSSH does).
    key: Option<KeyData>,
}

impl<'a> Line<'a> {
    fn parse(text: &'a str) -> Option<Line<'a>> {
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            return None;
        }
        let mut fields = text.split_whitespace();
        let mut first = fields.next()?;
        let marker = match first {
            "@cert-authority" => Marker::CertAuthority,
            "@revoked" => Marker::Revoked,
            m if m.starts_with('@') => return None,
            _ => Marker::None,
        };
        if marker != Marker::None {
            first = fields.next()?;
        }
        let _keytype = fields.next()?;
        let blob = fields.next()?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .ok()
            .and_then(|bytes| {
                use russh::keys::ssh_encoding::Decode;
                KeyData::decode(&mut bytes.as_slice()).ok()
            });
        Some(Line {
            number: 0,
            marker,
            patterns: first,
            key,
        })
    }

    /// OpenSSH's rule: some positive pattern matches and no negated one does.
    fn matches_host(&self, name: &str) -> bool {
        let mut matched = false;
        for pattern in self.patterns.split(',') {
            if let Some(negated) = pattern.strip_prefix('!') {
                if wildcard(negated, name) {
                    return false;
                }
            } else if let Some(hashed) = pattern.strip_prefix("|1|") {
                if hashed_matches(hashed, name) {
                    matched = true;
                }
            } else if wildcard(pattern, name) {
                matched = true;
            }
        }
        matched
    }
}

fn hashed_matches(hashed: &str, name: &str) -> bool {
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let (Ok(salt), Ok(hash)) = (engine.decode(salt), engine.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// `*` and `?` wildcards, case-insensitive (host names). Iterative, backtracking only
/// to the last `*`: time grows with the product of the lengths, never exponentially
/// (a pattern of many `*` from a hostile file cannot stall the login).
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(c) if *c == b'?' || c.eq_ignore_ascii_case(&n[ni]) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// How known_hosts names a host at `ip` and `port`.
pub fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

#[cfg(test)]
mod tests {
    use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
    use russh::keys::PrivateKey;

    use super::*;

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::new(
            KeypairData::Ed25519(Ed25519Keypair::from_seed(&[seed; 32])),
            "",
        )
        .unwrap()
    }

    fn line(k: &PrivateKey) -> String {
        k.public_key().to_openssh().unwrap()
    }

    fn names() -> Vec<String> {
        vec!["[127.0.0.1]:2222".into(), "db.internal".into()]
    }

    #[test]
    fn plain_keys_match_change_and_unknown() {
        let host = key(1);
        let other = key(2);
        let text = format!(
            "# comment\nfoo.example {}\n[127.0.0.1]:2222 {}\n",
            line(&other),
            line(&host)
        );
        let ok = check_known_hosts(&text, "kh", &names(), &Presented::Key(host.public_key()), 0);
        assert_eq!(ok, Ok(()));
        let changed = check_known_hosts(
            &text,
            "kh",
            &names(),
            &Presented::Key(other.public_key()),
            0,
        );
        assert!(
            matches!(changed, Err(HostKeyError::Changed { line: 3, .. })),
            "{changed:?}"
        );
        let unknown = check_known_hosts(
            &text,
            "kh",
            &["[127.0.0.2]:22".into()],
            &Presented::Key(host.public_key()),
            0,
        );
        assert!(matches!(unknown, Err(HostKeyError::Unknown { .. })));
        // Wildcards, negation, names.
        let text = format!("*.internal,!bad.internal {}\n", line(&host));
        assert!(
            check_known_hosts(&text, "kh", &names(), &Presented::Key(host.public_key()), 0).is_ok()
        );
        assert!(check_known_hosts(
            &text,
            "kh",
            &["bad.internal".into()],
            &Presented::Key(host.public_key()),
            0
        )
        .is_err());
        // Revoked wins.
        let text = format!(
            "[127.0.0.1]:2222 {}\n@revoked * {}\n",
            line(&host),
            line(&host)
        );
        assert!(matches!(
            check_known_hosts(&text, "kh", &names(), &Presented::Key(host.public_key()), 0),
            Err(HostKeyError::Revoked { line: 2, .. })
        ));
    }

    #[test]
    fn wildcards_match_without_blowing_up() {
        assert!(wildcard("*.internal", "db.INTERNAL"));
        assert!(wildcard("db?.internal", "db1.internal"));
        assert!(!wildcard("db?.internal", "db.internal"));
        assert!(wildcard("*", ""));
        assert!(wildcard("a*b*c", "axxbyyc"));
        assert!(!wildcard("a*b*c", "axxbyy"));
        // A fuzzer's find: many stars against a long name took exponential time (the
        // recursive matcher never finished this one).
        let stars = "*".repeat(40) + "x";
        assert!(!wildcard(&stars, &"a".repeat(200)));
        assert!(wildcard(&stars, &("a".repeat(200) + "x")));
    }

    #[test]
    fn hashed_names_match() {
        // `ssh-keygen -H` style: |1|base64(salt)|base64(HMAC-SHA1(salt, name)).
        let salt = [7u8; 20];
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt).unwrap();
        mac.update(b"[127.0.0.1]:2222");
        let hash = mac.finalize().into_bytes();
        let engine = base64::engine::general_purpose::STANDARD;
        let host = key(3);
        let text = format!(
            "|1|{}|{} {}\n",
            engine.encode(salt),
            engine.encode(hash),
            line(&host)
        );
        assert!(
            check_known_hosts(&text, "kh", &names(), &Presented::Key(host.public_key()), 0).is_ok()
        );
        assert!(check_known_hosts(
            &text,
            "kh",
            &["[127.0.0.1]:2223".into()],
            &Presented::Key(host.public_key()),
            0
        )
        .is_err());
    }

    #[test]
    fn pinned_fingerprints() {
        let host = key(4);
        let fp = fingerprint(host.public_key().key_data());
        assert!(fp.starts_with("SHA256:"));
        assert!(check_pinned("h", &Presented::Key(host.public_key()), &fp).is_ok());
        let other = key(5);
        assert!(matches!(
            check_pinned("h", &Presented::Key(other.public_key()), &fp),
            Err(HostKeyError::NotPinned { .. })
        ));
    }

    #[test]
    fn certificates_from_a_listed_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = super::super::ca::SshCa::load_or_create(dir.path()).unwrap();
        let cert = ca.host_certificate(&["127.0.0.1".into()]).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let text = format!("{}\n", ca.known_hosts_line());
        assert!(
            check_known_hosts(&text, "kh", &names(), &Presented::Certificate(&cert), now).is_ok()
        );
        // Another host name is not a principal; the cert's key is not listed either.
        assert!(check_known_hosts(
            &text,
            "kh",
            &["[10.0.0.1]:22".into()],
            &Presented::Certificate(&cert),
            now
        )
        .is_err());
        // Expired.
        assert!(check_known_hosts(
            &text,
            "kh",
            &names(),
            &Presented::Certificate(&cert),
            now + 30 * 86400
        )
        .is_err());
        // A CA line for other hosts only.
        let text = text.replace("@cert-authority *", "@cert-authority *.example");
        assert!(
            check_known_hosts(&text, "kh", &names(), &Presented::Certificate(&cert), now).is_err()
        );
    }
}
