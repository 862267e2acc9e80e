//! The agent's SSH certificate authority: an Ed25519 CA key and the agent's host key
//! in `<state_dir>/ssh/` (mode 0600), and host certificates signed by the CA for the
//! names a client dialled. A bot trusts the agent with one line in its known_hosts,
//! `@cert-authority * ssh-ed25519 AAAA...` ([`SshCa::known_hosts_line`], printed by
//! `nhi-agent ssh-ca`).
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Certificate, PrivateKey};

use crate::tls::ca::{hostname, write_atomically};

/// The CA key's file in the SSH directory.
pub const CA_KEY_FILE: &str = "ca";
/// The CA's public key, for operators (`ssh-keygen -lf`).
pub const CA_PUB_FILE: &str = "ca.pub";
/// The agent's host key (certified by the CA for each dialled address).
pub const HOST_KEY_FILE: &str = "host_key";

/// How long a host certificate is valid; a new one is signed after [`CERT_RENEW_AFTER`].
const CERT_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
const CERT_RENEW_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Backdating for clocks a little behind the agent's.
const CERT_BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum SshCaError {
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is readable by group or others (mode {mode:04o}); it must be 0600", path.display())]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{}: not a usable OpenSSH Ed25519 private key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("{0}")]
    Write(#[from] crate::tls::TlsError),
    #[error("signing a host certificate: {0}")]
    Sign(String),
}

/// The agent's SSH CA and host key (see the module documentation).
pub struct SshCa {
    dir: PathBuf,
    ca: PrivateKey,
    host_key: PrivateKey,
    /// Host certificates by their sorted principals, with when each was signed.
    certs: Mutex<HashMap<Vec<String>, (Certificate, SystemTime)>>,
}

impl std::fmt::Debug for SshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl SshCa {
    /// Loads `<dir>/ca` and `<dir>/host_key`, creating whichever is missing (Ed25519;
    /// the directory 0700, the keys 0600, `ca.pub` 0644). A key readable by group or
    /// others is refused.
    pub fn load_or_create(dir: &Path) -> Result<SshCa, SshCaError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| SshCaError::File {
                path: dir.to_owned(),
                source,
            })?;
        let host = hostname();
        let ca = load_or_create_key(dir, CA_KEY_FILE, &format!("nhi-agent SSH CA {host}"))?;
        let ca_pub = dir.join(CA_PUB_FILE);
        let pub_line = public_line(&ca);
        if fs::read_to_string(&ca_pub).ok().as_deref() != Some(pub_line.as_str()) {
            write_atomically(dir, &ca_pub, pub_line.as_bytes(), 0o644)?;
        }
        let host_key =
            load_or_create_key(dir, HOST_KEY_FILE, &format!("nhi-agent host key {host}"))?;
        Ok(SshCa {
            dir: dir.to_owned(),
            ca,
            host_key,
            certs: Mutex::new(HashMap::new()),
        })
    }

    /// The line that makes OpenSSH clients trust the agent's host certificates, for
    /// `/etc/ssh/ssh_known_hosts` or a bot's known_hosts file.
    pub fn known_hosts_line(&self) -> String {
        format!("@cert-authority * {}", public_line(&self.ca).trim_end())
    }

    /// The CA's public key, OpenSSH format.
    pub fn ca_public(&self) -> &russh::keys::PublicKey {
        self.ca.public_key()
    }

    /// The agent's host key (what host certificates certify).
    pub fn host_key(&self) -> &PrivateKey {
        &self.host_key
    }

    /// A host certificate for the agent's host key naming `principals` (the dialled
    /// address and the target's `host_names`), signed by the CA; cached, and signed
    /// again after a day.
    pub fn host_certificate(&self, principals: &[String]) -> Result<Certificate, SshCaError> {
        let mut key: Vec<String> = principals.to_vec();
        key.sort();
        key.dedup();
        let now = SystemTime::now();
        let mut certs = self.certs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cert, signed)) = certs.get(&key) {
            if now.duration_since(*signed).unwrap_or_default() < CERT_RENEW_AFTER {
                return Ok(cert.clone());
            }
        }
        let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| SshCaError::Sign(e.to_string()))?;
        let sign = || -> Result<Certificate, russh::keys::ssh_key::Error> {
            let mut builder = Builder::new(
                nonce.to_vec(),
                self.host_key.public_key().key_data().clone(),
                unix(now - CERT_BACKDATE),
                unix(now + CERT_VALIDITY),
            )?;
            builder.cert_type(CertType::Host)?;
            builder.serial(unix(now))?;
            builder.key_id(format!("nhi-agent host {}", key.join(",")))?;
            for principal in &key {
                builder.valid_principal(principal.clone())?;
            }
            builder.sign(&self.ca)
        };
        let cert = sign().map_err(|e| SshCaError::Sign(e.to_string()))?;
        certs.insert(key, (cert.clone(), now));
        Ok(cert)
    }
}

fn public_line(key: &PrivateKey) -> String {
    let mut line = key
        .public_key()
        .to_openssh()
        .unwrap_or_else(|e| format!("# cannot encode the public key: {e}"));
    line.push('\n');
    line
}

/// Reads `<dir>/<name>` (mode checked on the opened file), or creates it.
fn load_or_create_key(dir: &Path, name: &str, comment: &str) -> Result<PrivateKey, SshCaError> {
    let path = dir.join(name);
    let file_err = |source| SshCaError::File {
        path: path.clone(),
        source,
    };
    match File::open(&path) {
        Ok(mut file) => {
            let mode = file.metadata().map_err(file_err)?.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(SshCaError::Permissions { path, mode });
            }
            let mut text = zeroize::Zeroizing::new(String::new());
            file.read_to_string(&mut text).map_err(file_err)?;
            parse_private_key(&text).map_err(|reason| SshCaError::BadKey { path, reason })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = zeroize::Zeroizing::new([0u8; 32]);
            getrandom::fill(seed.as_mut()).map_err(|e| SshCaError::Sign(e.to_string()))?;
            let keypair = Ed25519Keypair::from_seed(&seed);
            let key = PrivateKey::new(KeypairData::Ed25519(keypair), comment)
                .map_err(|e| SshCaError::Sign(e.to_string()))?;
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| SshCaError::Sign(e.to_string()))?;
            write_atomically(dir, &path, text.as_bytes(), 0o600)?;
            Ok(key)
        }
        Err(e) => Err(file_err(e)),
    }
}

/// An unencrypted OpenSSH private key.
pub fn parse_private_key(text: &str) -> Result<PrivateKey, String> {
    let key =
        PrivateKey::from_openssh(text.trim_end().to_owned() + "\n").map_err(|e| e.to_string())?;
    if key.is_encrypted() {
        return Err("the key is encrypted with a passphrase; the agent needs it unencrypted (mode 0600 protects it)".into());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_keeps_and_certifies() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join("ssh");
        let ca = SshCa::load_or_create(&ssh).unwrap();
        for f in [CA_KEY_FILE, HOST_KEY_FILE] {
            let mode = fs::metadata(ssh.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let line = ca.known_hosts_line();
        assert!(
            line.starts_with("@cert-authority * ssh-ed25519 AAAA"),
            "{line}"
        );
        // The same keys on the next start.
        let again = SshCa::load_or_create(&ssh).unwrap();
        assert_eq!(again.known_hosts_line(), line);
        assert_eq!(again.host_key().public_key(), ca.host_key().public_key());
        let cert = ca
            .host_certificate(&["127.0.0.1".into(), "db.internal".into()])
            .unwrap();
        assert_eq!(cert.cert_type(), CertType::Host);
        assert_eq!(cert.valid_principals(), ["127.0.0.1", "db.internal"]);
        assert_eq!(cert.public_key(), ca.host_key().public_key().key_data());
        cert.validate([&ca.ca_public().fingerprint(Default::default())])
            .unwrap();
        // Cached by principal set, in any order.
        let same = ca
            .host_certificate(&["db.internal".into(), "127.0.0.1".into()])
            .unwrap();
        assert_eq!(same.nonce(), cert.nonce());
        // A key others can read is refused.
        fs::set_permissions(ssh.join(CA_KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SshCa::load_or_create(&ssh),
            Err(SshCaError::Permissions { .. })
        ));
    }
}
