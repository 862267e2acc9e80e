//! The scrambles of the authentication plugins the agent answers with its credential.
use sha1::{Digest as _, Sha1};
use sha2::Sha256;

pub const NATIVE_PASSWORD: &str = "mysql_native_password";
pub const CACHING_SHA2: &str = "caching_sha2_password";
pub const CLEAR_PASSWORD: &str = "mysql_clear_password";
/// MariaDB's `auth_ed25519` server plugin asks for this client plugin.
pub const ED25519: &str = "client_ed25519";

/// caching_sha2_password's one-byte messages inside AuthMoreData.
pub mod caching_sha2 {
    /// The server found the scramble's hash in its cache: OK follows.
    pub const FAST_AUTH_OK: u8 = 0x03;
    /// The server needs the password itself (over TLS in clear, or RSA-encrypted).
    pub const FULL_AUTH: u8 = 0x04;
    /// The client's request for the server's RSA public key.
    pub const REQUEST_PUBLIC_KEY: u8 = 0x02;
}

/// `mysql_native_password`: SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)));
/// empty for an empty password.
pub fn native_password(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha1::digest(password);
    let stage2 = Sha1::digest(stage1);
    let mut h = Sha1::new();
    h.update(&scramble[..scramble.len().min(20)]);
    h.update(stage2);
    let mix = h.finalize();
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

/// `caching_sha2_password`'s fast-auth scramble:
/// SHA256(password) XOR SHA256(SHA256(SHA256(password)) + scramble); empty for an
/// empty password.
pub fn caching_sha2(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha256::digest(password);
    let stage2 = Sha256::digest(stage1);
    let mut h = Sha256::new();
    h.update(stage2);
    h.update(&scramble[..scramble.len().min(20)]);
    let mix = h.finalize();
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

/// The password XORed with the scramble (repeated), NUL-terminated: what
/// caching_sha2_password's full authentication encrypts with the server's RSA key.
pub fn xor_with_scramble(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    let mut data = password.to_vec();
    data.push(0);
    if scramble.is_empty() {
        return data;
    }
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= scramble[i % scramble.len()];
    }
    data
}

/// caching_sha2_password's full authentication without TLS: `xor_with_scramble`
/// encrypted with RSA-OAEP (SHA-1 and MGF1-SHA-1, as the server's
/// `RSA_PKCS1_OAEP_PADDING` decrypts) under the server's public key. `scramble` is the
/// 20-byte challenge of the greeting or the auth switch (longer input is cut to 20, the
/// NUL a switch appends is not part of it).
pub fn rsa_encrypted_password(
    key: &rsa::PublicKey,
    password: &[u8],
    scramble: &[u8],
) -> Result<Vec<u8>, RsaError> {
    let clear = zeroize::Zeroizing::new(xor_with_scramble(
        password,
        &scramble[..scramble.len().min(20)],
    ));
    key.oaep_encrypt::<sha1::Sha1>(&clear)
        .map_err(|e| RsaError(format!("RSA encryption with the server's key: {e}")))
}

/// The RSA public key of a PEM document: the SubjectPublicKeyInfo MySQL servers send
/// (`-----BEGIN PUBLIC KEY-----`, its `public_key.pem`), or PKCS#1
/// (`-----BEGIN RSA PUBLIC KEY-----`). Surrounding whitespace and a trailing NUL are
/// allowed.
pub fn rsa_public_key(pem: &[u8]) -> Result<rsa::PublicKey, RsaError> {
    use rsa::pkcs1::DecodeRsaPublicKey as _;
    use rsa::pkcs8::DecodePublicKey as _;
    let text = std::str::from_utf8(pem)
        .map_err(|_| RsaError("not a PEM document (not text)".into()))?
        .trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if text.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
        rsa::PublicKey::from_pkcs1_pem(text)
            .map_err(|e| RsaError(format!("not an RSA public key in PKCS#1 PEM ({e})")))
    } else if text.starts_with("-----BEGIN PUBLIC KEY-----") {
        rsa::PublicKey::from_public_key_pem(text)
            .map_err(|e| RsaError(format!("not an RSA public key in PEM ({e})")))
    } else {
        Err(RsaError(
            "not a PEM public key (expected -----BEGIN PUBLIC KEY-----)".into(),
        ))
    }
}

/// A key that cannot be read or used (the message names what, never the password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RsaError(pub String);

/// MariaDB's `client_ed25519`: the Ed25519 signature of the server's nonce with the
/// expanded secret key SHA-512(password) (the server stores the matching public key,
/// `ed25519_password(password)`).
pub fn ed25519(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    use ed25519_dalek::hazmat::{raw_sign, ExpandedSecretKey};
    use sha2::Sha512;
    let expanded: [u8; 64] = Sha512::digest(password).into();
    let esk = ExpandedSecretKey::from_bytes(&expanded);
    let public = ed25519_dalek::VerifyingKey::from(&esk);
    raw_sign::<Sha512>(&esk, nonce, &public).to_bytes().to_vec()
}

/// The public key `ed25519_password(password)` gives (the server's stored form,
/// base64 without padding), for tests and diagnostics.
pub fn ed25519_public_key(password: &[u8]) -> [u8; 32] {
    use ed25519_dalek::hazmat::ExpandedSecretKey;
    use sha2::Sha512;
    let expanded: [u8; 64] = Sha512::digest(password).into();
    ed25519_dalek::VerifyingKey::from(&ExpandedSecretKey::from_bytes(&expanded)).to_bytes()
}
