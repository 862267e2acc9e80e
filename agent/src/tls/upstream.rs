//! TLS from the agent to the real server: libpq `sslmode` semantics per target.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::postgres::SSL_REQUEST_CODE;

use super::{
    provider, server_name_string, HandshakeFailure, Side, Stream, TlsError, ALPN_H2, ALPN_HTTP11,
    ALPN_POSTGRESQL,
};

/// The 8-byte SSLRequest: length 8, then the decoder's code 1234.5679.
pub const SSL_REQUEST: [u8; 8] = {
    let code = SSL_REQUEST_CODE.to_be_bytes();
    [0, 0, 0, 8, code[0], code[1], code[2], code[3]]
};

/// How the agent secures its connection to a target's server (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Clear text; no SSLRequest is sent.
    Disable,
    /// TLS if the server offers it, clear text if it answers `N`. The certificate is
    /// not verified unless a `ca_file` is given (then its chain is, as libpq does when a
    /// root certificate is present). A failed handshake is an error, not a fallback.
    Prefer,
    /// TLS mandatory. Without `ca_file` the certificate is not verified (encryption
    /// against passive eavesdropping only); with `ca_file` its chain is verified but not
    /// its name (libpq's `require` with a root certificate, i.e. `verify-ca`).
    Require,
    /// TLS mandatory, chain verified against `ca_file` and the certificate must name
    /// `server_name` (or, without one, carry the connected IP address as an IP SAN).
    VerifyFull,
}

impl fmt::Display for UpstreamTlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamTlsMode::Disable => "disable",
            UpstreamTlsMode::Prefer => "prefer",
            UpstreamTlsMode::Require => "require",
            UpstreamTlsMode::VerifyFull => "verify-full",
        })
    }
}

/// A target's upstream TLS settings, built once at config load (the CA file is read
/// then) and cheap to clone per connection.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    mode: UpstreamTlsMode,
    /// `None` exactly when `mode` is `Disable`.
    config: Option<Arc<ClientConfig>>,
    /// The configured `server_name`; `None` means "the connected IP address".
    server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// Builds the settings for one target. `ca_file` is a PEM file of one or more CA
    /// certificates; `server_name` is the DNS name (or IP address) the certificate must
    /// carry under `verify-full` and the SNI sent in every mode.
    ///
    /// `Disable` ignores `ca_file` and `server_name` (as libpq ignores `sslrootcert`
    /// under `sslmode=disable`); `VerifyFull` without `ca_file` is an error.
    pub fn new(
        mode: UpstreamTlsMode,
        ca_file: Option<&Path>,
        server_name: Option<&str>,
    ) -> Result<UpstreamTls, TlsError> {
        Self::build(mode, ca_file, server_name, false, &[ALPN_POSTGRESQL], None)
    }

    /// As [`UpstreamTls::new`], offering no ALPN: for protocols without an ALPN name
    /// (MySQL, Redis).
    pub fn without_alpn(
        mode: UpstreamTlsMode,
        ca_file: Option<&Path>,
        server_name: Option<&str>,
    ) -> Result<UpstreamTls, TlsError> {
        Self::build(mode, ca_file, server_name, false, &[], None)
    }

    /// The settings of an HTTP target: as [`UpstreamTls::new`], but ALPN offers `h2` and
    /// `http/1.1`, and `VerifyFull` without `ca_file` verifies against the system's
    /// trust store (`rustls-native-certs`: `/etc/ssl/certs` and `SSL_CERT_FILE` /
    /// `SSL_CERT_DIR`), read now, so a reload picks up `update-ca-certificates`.
    /// `Prefer` means nothing here (nothing is negotiated) and is treated as `Require`;
    /// the configuration refuses it before this is called.
    pub fn for_http(
        mode: UpstreamTlsMode,
        ca_file: Option<&Path>,
        server_name: Option<&str>,
    ) -> Result<UpstreamTls, TlsError> {
        Self::build(
            mode,
            ca_file,
            server_name,
            true,
            &[ALPN_H2, ALPN_HTTP11],
            None,
        )
    }

    /// As [`UpstreamTls::for_http`], presenting `client_cert` in every handshake (a
    /// Kubernetes API server that authenticates the agent by certificate).
    pub fn for_http_with_client_cert(
        mode: UpstreamTlsMode,
        ca_file: Option<&Path>,
        server_name: Option<&str>,
        client_cert: ClientCert,
    ) -> Result<UpstreamTls, TlsError> {
        Self::build(
            mode,
            ca_file,
            server_name,
            true,
            &[ALPN_H2, ALPN_HTTP11],
            Some(client_cert),
        )
    }

    fn build(
        mode: UpstreamTlsMode,
        ca_file: Option<&Path>,
        server_name: Option<&str>,
        system_roots: bool,
        alpn: &[&[u8]],
        client_cert: Option<ClientCert>,
    ) -> Result<UpstreamTls, TlsError> {
        if mode == UpstreamTlsMode::Disable {
            return Ok(UpstreamTls {
                mode,
                config: None,
                server_name: None,
            });
        }
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.to_owned()).map_err(|_| TlsError::InvalidServerName {
                    name: name.to_owned(),
                })
            })
            .transpose()?;
        let roots = match ca_file {
            Some(path) => Some(load_roots(path)?),
            None if system_roots && mode == UpstreamTlsMode::VerifyFull => {
                Some(load_system_roots()?)
            }
            None => None,
        };
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Config { source })?;
        let builder = match (mode, roots) {
            (UpstreamTlsMode::VerifyFull, Some(roots)) => builder.with_root_certificates(roots),
            (UpstreamTlsMode::VerifyFull, None) => return Err(TlsError::MissingCaFile { mode }),
            (_, roots) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(LibpqVerifier { roots, provider })),
        };
        let mut config = match client_cert {
            None => builder.with_no_client_auth(),
            Some(ClientCert { chain, key, path }) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::BadCertificateFile {
                    path,
                    reason: format!("the client certificate and key do not go together: {e}"),
                })?,
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(UpstreamTls {
            mode,
            config: Some(Arc::new(config)),
            server_name,
        })
    }

    /// The same settings with ALPN offering only `http/1.1`: for a connection that must
    /// stay HTTP/1.1 whatever the server prefers (a WebSocket upgrade).
    pub fn http1_only(&self) -> UpstreamTls {
        let config = self.config.as_ref().map(|config| {
            let mut config = ClientConfig::clone(config);
            config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
            Arc::new(config)
        });
        UpstreamTls {
            mode: self.mode,
            config,
            server_name: self.server_name.clone(),
        }
    }

    /// The configured mode.
    pub fn mode(&self) -> UpstreamTlsMode {
        self.mode
    }

    /// Whether the agent speaks TLS to the server at all.
    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// The TLS handshake on a fresh connection to the server at `addr`, with nothing
    /// negotiated before it (HTTPS). The SNI and verification name is `server_name`,
    /// else `default_name` (for HTTP: the name the client asked for in its own SNI),
    /// else `addr`'s IP. `Disable` returns the stream untouched. No timeout here: the
    /// caller bounds the whole upstream setup.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        default_name: Option<&str>,
    ) -> Result<Stream, TlsError> {
        let Some(config) = &self.config else {
            return Ok(Stream::Plain(tcp));
        };
        let name = self
            .server_name
            .clone()
            .or_else(|| default_name.and_then(|n| ServerName::try_from(n.to_owned()).ok()))
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        match connector.connect(name.clone(), tcp).await {
            Ok(tls) => Ok(Stream::Client(Box::new(tls))),
            Err(err) => Err(TlsError::Handshake {
                side: Side::Upstream,
                peer: addr,
                failure: HandshakeFailure::classify(&err, Some(&server_name_string(&name))),
            }),
        }
    }

    /// The PostgreSQL TLS negotiation on a fresh connection to the server at `addr`.
    ///
    /// `Disable` returns the stream untouched without sending anything. Otherwise sends
    /// the SSLRequest and reads the one-byte answer: `S` starts the TLS handshake (SNI and
    /// verification name: `server_name`, else `addr`'s IP); `N` continues in clear under
    /// `Prefer` and is an error under `Require`/`VerifyFull`; anything else is an error.
    /// Bytes following the answer are rejected (CVE-2021-23222).
    ///
    /// There is no timeout here: the caller bounds the whole upstream setup.
    pub async fn negotiate_postgres(
        &self,
        mut tcp: TcpStream,
        addr: SocketAddr,
    ) -> Result<Stream, TlsError> {
        let Some(config) = &self.config else {
            return Ok(Stream::Plain(tcp));
        };
        let io_err = |source| TlsError::Io {
            side: Side::Upstream,
            peer: addr,
            source,
        };
        tcp.write_all(&SSL_REQUEST).await.map_err(io_err)?;
        // Read exactly one byte: whatever else the server sent stays in the socket, where
        // `trailing_bytes` sees it whether it came in the same segment or a later one.
        let mut answer = [0u8; 1];
        if tcp.read(&mut answer).await.map_err(io_err)? == 0 {
            return Err(TlsError::ClosedDuringNegotiation { peer: addr });
        }
        let answer = answer[0];
        if (answer == b'S' || answer == b'N') && trailing_bytes(&tcp).map_err(io_err)? {
            return Err(TlsError::TrailingBytes {
                peer: addr,
                answer: char::from(answer),
            });
        }
        match answer {
            b'S' => {
                let name = self
                    .server_name
                    .clone()
                    .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                match connector.connect(name.clone(), tcp).await {
                    Ok(tls) => Ok(Stream::Client(Box::new(tls))),
                    Err(err) => Err(TlsError::Handshake {
                        side: Side::Upstream,
                        peer: addr,
                        failure: HandshakeFailure::classify(&err, Some(&server_name_string(&name))),
                    }),
                }
            }
            b'N' if self.mode == UpstreamTlsMode::Prefer => Ok(Stream::Plain(tcp)),
            b'N' => Err(TlsError::TlsNotOffered {
                peer: addr,
                mode: self.mode,
            }),
            byte => Err(TlsError::UnexpectedAnswer { peer: addr, byte }),
        }
    }
}

/// Whether the server already sent more than its one-byte answer, which it never does
/// before hearing from the client again. A non-blocking `MSG_PEEK` asks the kernel
/// directly (tokio's cached readiness could say "nothing" while bytes are queued); a
/// closed connection (0) counts as nothing here and fails at the next step.
fn trailing_bytes(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut probe = [0u8; 1];
    match recv(
        tcp.as_raw_fd(),
        &mut probe,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(n) => Ok(n > 0),
        Err(Errno::EAGAIN) => Ok(false),
        Err(errno) => Err(std::io::Error::from(errno)),
    }
}

/// The system's trust store as a root store. Certificates the loader cannot read or
/// rustls cannot use are skipped (a store always has a few); none at all is an error.
pub(crate) fn load_system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let reason = if found.errors.is_empty() {
            "no certificates found".to_owned()
        } else {
            found
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(TlsError::NoSystemRoots { reason });
    }
    Ok(Arc::new(roots))
}

/// Reads a PEM file of CA certificates into a root store.
/// A client certificate chain and its private key, presented to servers that ask.
pub struct ClientCert {
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    /// The certificate file, for errors.
    path: std::path::PathBuf,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("path", &self.path)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl ClientCert {
    /// Reads a PEM certificate chain (`cert_path`) and the PEM private key (`key_pem`,
    /// read by the caller with its file-mode rule). Errors name the files, never the key.
    pub fn from_pem(
        cert_path: &Path,
        key_path: &Path,
        key_pem: &[u8],
    ) -> Result<ClientCert, TlsError> {
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(cert_path).map_err(|source| TlsError::File {
            path: cert_path.to_owned(),
            source,
        })?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadCertificateFile {
                path: cert_path.to_owned(),
                reason: format!("invalid PEM: {e}"),
            })?;
        if chain.is_empty() {
            return Err(TlsError::BadCertificateFile {
                path: cert_path.to_owned(),
                reason: "no CERTIFICATE block found".into(),
            });
        }
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
            TlsError::BadCertificateFile {
                path: key_path.to_owned(),
                reason: "no PEM private key (PKCS#8, PKCS#1 or SEC1) found".into(),
            }
        })?;
        Ok(ClientCert {
            chain,
            key,
            path: cert_path.to_owned(),
        })
    }

    /// The subject's common name of the leaf, for the journal (`None`: none readable).
    pub fn common_name(&self) -> Option<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(self.chain.first()?).ok()?;
        let cn = cert.subject().iter_common_name().next()?;
        cn.as_str().ok().map(str::to_owned)
    }
}

pub(crate) fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let bad = |reason: String| TlsError::BadCertificateFile {
        path: path.to_owned(),
        reason,
    };
    // Read the file ourselves so a missing file is an I/O error with its path, not a
    // PEM error.
    let pem = std::fs::read(path).map_err(|source| TlsError::File {
        path: path.to_owned(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("invalid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no CERTIFICATE block found".to_owned()));
    }
    Ok(Arc::new(roots))
}

/// `prefer`/`require`, as libpq does them. With a `ca_file` (`roots`), the chain must
/// lead to one of the roots but the name is not checked (libpq's `verify-ca` behaviour
/// with a root certificate); without one, any certificate is accepted (libpq does the
/// same). Either way the handshake signature is checked, so the session keys belong to
/// whoever holds the presented certificate's key.
#[derive(Debug)]
struct LibpqVerifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
