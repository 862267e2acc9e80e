//! The local agent CA: created once in the state directory, it issues the leaf
//! certificates the agent presents to workloads whose TLS it terminates.

use std::collections::HashMap;
use std::fs::{self, File};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::ParsedCertificate;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use time::{Duration, OffsetDateTime};

use super::{provider, TlsError, ALPN_H2, ALPN_HTTP11, ALPN_POSTGRESQL};

/// The CA private key's file name in the state directory (PKCS#8 PEM, mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// The CA certificate's file name in the state directory (PEM): what clients use as
/// `sslrootcert`.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA certificate's lifetime.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// A leaf certificate's lifetime. Short enough that a leaked leaf key ages out; leaves
/// are minted in memory on demand, so there is no renewal chore.
pub const LEAF_VALIDITY_DAYS: i64 = 90;
/// A cached leaf older than this is replaced at the next request, so a long-running
/// agent never presents one close to expiry.
pub const LEAF_RENEW_AFTER_DAYS: i64 = 60;
/// Certificates are back-dated this much to tolerate clients whose clock lags.
const BACKDATE: Duration = Duration::hours(1);
/// More SAN sets than this in the cache means something calls with ever-new names;
/// the cache is then emptied rather than grown without bound.
const MAX_CACHED_LEAVES: usize = 1024;

/// The set of names a leaf is issued for, normalised (lowercase, sorted, deduplicated)
/// so the same target always hits the same cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SanSet {
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

impl SanSet {
    fn new(dns_names: &[String], ips: &[IpAddr]) -> SanSet {
        let mut set = SanSet {
            dns: Vec::new(),
            ips: ips.to_vec(),
        };
        for name in dns_names {
            let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
            // A "name" that is an address belongs in an IP SAN: clients compare IP
            // addresses only against IP SANs.
            match name.parse::<IpAddr>() {
                Ok(ip) => set.ips.push(ip),
                Err(_) if !name.is_empty() => set.dns.push(name),
                Err(_) => {}
            }
        }
        set.dns.sort();
        set.dns.dedup();
        set.ips.sort();
        set.ips.dedup();
        set
    }
}

/// A cached leaf and when it was issued.
struct CachedLeaf {
    config: Arc<ServerConfig>,
    issued: OffsetDateTime,
}

/// The local agent CA (ECDSA P-256), loaded from or created in the state directory.
pub struct AgentCa {
    dir: PathBuf,
    cert_path: PathBuf,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    leaves: Mutex<HashMap<(SanSet, LeafAlpn), CachedLeaf>>,
}

/// The ALPN protocols a client-facing config offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeafAlpn {
    /// `postgresql` (PostgreSQL targets).
    Postgres,
    /// `h2` and `http/1.1`, in that order of preference (HTTP targets).
    Http,
    /// None: protocols without an ALPN name (MySQL, Redis). A client that offers ALPN
    /// is served as one that offers none.
    None,
}

impl LeafAlpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            LeafAlpn::Postgres => vec![ALPN_POSTGRESQL.to_vec()],
            LeafAlpn::Http => vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()],
            LeafAlpn::None => Vec::new(),
        }
    }
}

impl std::fmt::Debug for AgentCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The issuer's Debug elides the key, but say so explicitly: no key material here.
        f.debug_struct("AgentCa")
            .field("dir", &self.dir)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl AgentCa {
    /// Loads `<dir>/ca.key` + `<dir>/ca.crt`, or creates both if neither exists
    /// (ECDSA P-256, valid [`CA_VALIDITY_DAYS`], CN "nhi-agent local CA <hostname>",
    /// key written with mode 0600, directory created 0700 if missing).
    ///
    /// Refuses a key file accessible to group or other, a certificate without its key
    /// (clients may trust it: the agent will not silently replace it), and a pair that
    /// does not work together (checked by issuing and verifying a probe leaf). A key
    /// without a certificate is the trace of an interrupted creation: the certificate is
    /// issued again from that key.
    pub fn load_or_create(dir: &Path) -> Result<AgentCa, TlsError> {
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| file_err(dir, source))?;

        let key = match read_key(&key_path)? {
            Some(key) => key,
            None if cert_path.exists() => {
                return Err(TlsError::AgentCa {
                    dir: dir.to_owned(),
                    reason: format!(
                        "{CA_CERT_FILE} exists without {CA_KEY_FILE}; clients may trust it, so the \
                         agent will not replace it: restore the key, or remove {CA_CERT_FILE} to \
                         create a new CA"
                    ),
                })
            }
            None => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
                    TlsError::Generate {
                        what: "the agent CA key",
                        source,
                    }
                })?;
                write_atomically(dir, &key_path, key.serialize_pem().as_bytes(), 0o600)?;
                key
            }
        };

        let cert_pem = match fs::read_to_string(&cert_path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pem = ca_params(&key)
                    .self_signed(&key)
                    .map_err(|source| TlsError::Generate {
                        what: "the agent CA certificate",
                        source,
                    })?
                    .pem();
                write_atomically(dir, &cert_path, pem.as_bytes(), 0o644)?;
                pem
            }
            Err(source) => return Err(file_err(&cert_path, source)),
        };

        let invalid = |reason: String| TlsError::AgentCa {
            dir: dir.to_owned(),
            reason,
        };
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| {
            invalid(format!(
                "{CA_CERT_FILE} is not a usable CA certificate: {e}"
            ))
        })?;
        let ca = AgentCa {
            dir: dir.to_owned(),
            cert_path,
            cert_pem,
            issuer,
            leaves: Mutex::new(HashMap::new()),
        };
        ca.self_check().map_err(|reason| {
            invalid(format!(
                "{CA_CERT_FILE} and {CA_KEY_FILE} do not work together: {reason}"
            ))
        })?;
        Ok(ca)
    }

    /// The CA certificate, PEM: what clients put in `sslrootcert`.
    pub fn ca_cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// `<dir>/ca.crt`.
    pub fn ca_cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// A rustls server config presenting a leaf (ECDSA P-256, fresh key, valid
    /// [`LEAF_VALIDITY_DAYS`], server-auth only) that names `dns_names` and `ips`. The
    /// config is cached by SAN set (order, case and duplicates do not matter) and
    /// replaced once older than [`LEAF_RENEW_AFTER_DAYS`]. It offers ALPN
    /// `postgresql` and accepts clients that offer no ALPN.
    pub fn server_config(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_at(
            dns_names,
            ips,
            LeafAlpn::Postgres,
            OffsetDateTime::now_utc(),
        )
    }

    /// [`AgentCa::server_config`] for HTTP clients: offers ALPN `h2` and `http/1.1`
    /// (the client's choice decides how the connection is served) and accepts clients
    /// that offer no ALPN (HTTP/1.1).
    pub fn http_server_config(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_at(dns_names, ips, LeafAlpn::Http, OffsetDateTime::now_utc())
    }

    /// [`AgentCa::server_config`] without ALPN, for protocols that have no ALPN name
    /// (MySQL, Redis): offering `postgresql` would fail a client that offers another.
    pub fn server_config_no_alpn(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_at(dns_names, ips, LeafAlpn::None, OffsetDateTime::now_utc())
    }

    /// [`AgentCa::server_config`] at a given time (tests move the clock).
    pub(super) fn server_config_at(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        alpn: LeafAlpn,
        now: OffsetDateTime,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let sans = (SanSet::new(dns_names, ips), alpn);
        if sans.0.dns.is_empty() && sans.0.ips.is_empty() {
            return Err(TlsError::NoSubjectAltNames);
        }
        // Issuing under the lock costs well under a millisecond per new SAN set and
        // keeps two connections to a new target from minting two leaves.
        let mut leaves = self.leaves.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(leaf) = leaves.get(&sans) {
            if now - leaf.issued < Duration::days(LEAF_RENEW_AFTER_DAYS) && now >= leaf.issued {
                return Ok(leaf.config.clone());
            }
        }
        let config = self.issue(&sans.0, alpn, now)?;
        if leaves.len() >= MAX_CACHED_LEAVES {
            leaves.clear();
        }
        leaves.insert(
            sans,
            CachedLeaf {
                config: config.clone(),
                issued: now,
            },
        );
        Ok(config)
    }

    /// Issues a leaf for `sans` and wraps it in a server config.
    fn issue(
        &self,
        sans: &SanSet,
        alpn: LeafAlpn,
        now: OffsetDateTime,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let (cert, key) = self.issue_leaf(sans, now)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Config { source })?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(|source| TlsError::Config { source })?;
        config.alpn_protocols = alpn.protocols();
        Ok(Arc::new(config))
    }

    /// The leaf certificate and its private key.
    fn issue_leaf(
        &self,
        sans: &SanSet,
        now: OffsetDateTime,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
        let generate = |source| TlsError::Generate {
            what: "a client-facing leaf certificate",
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let common_name = sans
            .dns
            .first()
            .cloned()
            .or_else(|| sans.ips.first().map(IpAddr::to_string))
            .unwrap_or_default();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        for name in &sans.dns {
            let name = name.clone().try_into().map_err(generate)?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params
            .subject_alt_names
            .extend(sans.ips.iter().copied().map(SanType::IpAddress));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(LEAF_VALIDITY_DAYS);
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key))
    }

    /// Issues a probe leaf and verifies it against the CA certificate as a client would:
    /// catches a certificate that belongs to another key, or an expired CA, at startup
    /// rather than at the first client.
    fn self_check(&self) -> Result<(), String> {
        let ca_der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| format!("{CA_CERT_FILE}: {e}"))?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca_der)
            .map_err(|e| format!("{CA_CERT_FILE}: {e}"))?;
        let probe = SanSet::new(&["nhi-agent-self-check.invalid".to_owned()], &[]);
        let (leaf, _key) = self
            .issue_leaf(&probe, OffsetDateTime::now_utc())
            .map_err(|e| e.to_string())?;
        let parsed = ParsedCertificate::try_from(&leaf).map_err(|e| e.to_string())?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &[],
            UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
        .map_err(|e| e.to_string())
    }
}

/// The CA's parameters: self-signed, may only sign leaves (path length 0).
///
/// The subject carries the key's identifier (OU "key <hex>"): two CAs of the same host
/// (a re-created state directory, containers sharing a host name) must not share a
/// subject, or a client holding the old `ca.crt` would match the new leaf's issuer by
/// name and fail with a bad signature instead of an unknown issuer.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    let key_identifier = params.key_identifier(key);
    let key_id = crate::hex::encode(&key_identifier[..key_identifier.len().min(8)]);
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("nhi-agent local CA {}", hostname()),
    );
    dn.push(DnType::OrganizationName, "nhi-agent");
    dn.push(DnType::OrganizationalUnitName, format!("key {key_id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    params
}

/// The host name, for the CA's CN (it tells an operator which host's CA a `ca.crt` is).
pub(crate) fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// Reads the CA key if it exists, refusing one accessible to group or other. The mode
/// is checked on the opened file, so it is the mode of what is read.
fn read_key(path: &Path) -> Result<Option<KeyPair>, TlsError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(file_err(path, source)),
    };
    let mode = file
        .metadata()
        .map_err(|source| file_err(path, source))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let pem = std::io::read_to_string(file).map_err(|source| file_err(path, source))?;
    KeyPair::from_pem(&pem)
        .map(Some)
        .map_err(|e| TlsError::BadCertificateFile {
            path: path.to_owned(),
            reason: format!("not a usable private key: {e}"),
        })
}

/// Writes `path` through a temporary file created with `mode` (so the key is never
/// readable by others, not even briefly), fsynced and renamed into place; then fsyncs
/// the directory so the rename survives a crash.
/// [`crate::atomic::write`]; `dir` is `path`'s directory.
pub(crate) fn write_atomically(
    dir: &Path,
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<(), TlsError> {
    debug_assert_eq!(path.parent(), Some(dir));
    crate::atomic::write(path, contents, mode).map_err(|e| file_err(&e.path, e.source))
}

fn file_err(path: &Path, source: std::io::Error) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        source,
    }
}
