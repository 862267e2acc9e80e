//! The host's Ed25519 signing key and host id, and public keys as `verify` takes them.
//!
//! The private key is PKCS#8 (as ring generates it) in a file of mode 0600; a key file that
//! group or others can read is refused, because anyone who can read it can forge seals.
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{hex, EvidenceError};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (32 bytes) }. The key follows it.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// An Ed25519 public key (the raw 32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as `openssl pkey -pubout` writes it.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    }

    /// The raw key in unpadded base64url (as in a JWK's `x`).
    pub fn to_base64url(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// `SHA256:` + hex of SHA-256 over the raw key.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", hex(&Sha256::digest(self.0)))
    }

    /// Parses a PEM `PUBLIC KEY` or an unpadded/padded base64url raw key.
    pub fn parse(text: &str) -> Result<PublicKey, EvidenceError> {
        let bad = |reason: &str| EvidenceError::BadPublicKey {
            reason: reason.to_string(),
        };
        let text = text.trim();
        if text.starts_with("-----BEGIN PUBLIC KEY-----") {
            let body: String = text
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<Vec<_>>()
                .concat();
            let der = base64::engine::general_purpose::STANDARD
                .decode(body.trim())
                .map_err(|e| bad(&format!("PEM body is not base64: {e}")))?;
            return match der.strip_prefix(&SPKI_PREFIX[..]) {
                Some(raw) => raw
                    .try_into()
                    .map(PublicKey)
                    .map_err(|_| bad("the PEM key is not 32 bytes")),
                None => Err(bad("the PEM key is not an Ed25519 SubjectPublicKeyInfo")),
            };
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|e| bad(&format!("neither PEM nor base64url: {e}")))?;
        raw.as_slice()
            .try_into()
            .map(PublicKey)
            .map_err(|_| bad("a raw Ed25519 key has 32 bytes"))
    }
}

/// The host's signing key.
pub struct HostKey {
    pkcs8: Zeroizing<Vec<u8>>,
    public: PublicKey,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("public", &self.public.fingerprint())
            .finish_non_exhaustive()
    }
}

impl HostKey {
    /// A key from PKCS#8 bytes.
    pub fn from_pkcs8(pkcs8: Vec<u8>, path: &Path) -> Result<HostKey, EvidenceError> {
        let pkcs8 = Zeroizing::new(pkcs8);
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| EvidenceError::BadKey {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(HostKey {
            pkcs8,
            public: PublicKey(public),
        })
    }

    /// A new random key (not stored anywhere).
    pub fn generate() -> Result<HostKey, EvidenceError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| EvidenceError::BadKey {
            path: "<generated>".into(),
            reason: e.to_string(),
        })?;
        HostKey::from_pkcs8(doc.as_ref().to_vec(), Path::new("<generated>"))
    }

    /// Reads the key at `path`, refusing a file readable by group or others.
    pub fn load(path: &Path) -> Result<HostKey, EvidenceError> {
        let meta =
            std::fs::metadata(path).map_err(EvidenceError::io("cannot read signing key", path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(EvidenceError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let bytes =
            std::fs::read(path).map_err(EvidenceError::io("cannot read signing key", path))?;
        HostKey::from_pkcs8(bytes, path)
    }

    /// Reads the key at `path`, or creates it (mode 0600) if there is no file yet.
    pub fn load_or_create(path: &Path) -> Result<HostKey, EvidenceError> {
        if path.exists() {
            return HostKey::load(path);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(EvidenceError::io("cannot create", dir))?;
        }
        let key = HostKey::generate()?;
        // create_new: two agents started at once must not overwrite each other's key.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(EvidenceError::io("cannot create signing key", path))?;
        file.write_all(&key.pkcs8)
            .and_then(|()| file.sync_all())
            .map_err(EvidenceError::io("cannot write signing key", path))?;
        tracing::info!(path = %path.display(), fingerprint = %key.public.fingerprint(), "created the journal signing key");
        Ok(key)
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The PKCS#8 document, for jsonwebtoken's `EncodingKey::from_ed_der`.
    pub(crate) fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }
}

/// Reads `<path>` (a host id), or creates it with 128 random bits in hex.
pub fn load_or_create_host_id(path: &Path) -> Result<String, EvidenceError> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(EvidenceError::Io {
                op: "cannot read host id",
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let mut raw = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).map_err(|_| {
        EvidenceError::Io {
            op: "no randomness for host id",
            path: path.to_path_buf(),
            source: std::io::Error::other("getrandom failed"),
        }
    })?;
    let id = hex(&raw);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(EvidenceError::io("cannot create", dir))?;
    }
    super::write_atomically(path, id.as_bytes())?;
    Ok(id)
}

/// Reads a host id without creating one.
pub fn read_host_id(path: &Path) -> Result<String, EvidenceError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(EvidenceError::io("cannot read host id", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_through_pem_and_base64url() {
        let key = HostKey::generate().unwrap();
        let public = key.public();
        assert_eq!(PublicKey::parse(&public.to_pem()).unwrap(), public);
        assert_eq!(PublicKey::parse(&public.to_base64url()).unwrap(), public);
        assert!(PublicKey::parse("not a key").is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reloaded_and_a_readable_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/signing.key");
        let key = HostKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            HostKey::load_or_create(&path).unwrap().public(),
            key.public()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = HostKey::load(&path).unwrap_err();
        assert!(matches!(err, EvidenceError::KeyPermissions { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn host_id_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host-id");
        let id = load_or_create_host_id(&path).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(load_or_create_host_id(&path).unwrap(), id);
    }
}
