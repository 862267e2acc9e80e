//! TLS for the proxy, on both legs of a relayed PostgreSQL connection.
//!
//! * **Upstream** ([`UpstreamTls`]): per target, the agent may originate TLS to the real
//!   server itself, with libpq's `sslmode` semantics (`disable`, `prefer`, `require`,
//!   `verify-full`). [`UpstreamTls::negotiate_postgres`] sends the SSLRequest, reads the
//!   one-byte answer and runs the handshake.
//! * **Client side** ([`AgentCa`], [`accept_client`]): the agent may terminate the client's
//!   TLS with a leaf certificate issued by a local agent CA (`<state dir>/ca.key`,
//!   `ca.crt`). The leaf carries the target's addresses and names as SANs, so a client
//!   using `sslmode=verify-full sslrootcert=ca.crt` accepts it as the server it meant to
//!   reach.
//!
//! Both legs yield a [`Stream`], which the relay reads and writes without caring whether
//! it is TLS.
//!
//! rustls runs with the `ring` provider, always passed explicitly (never the process
//! default), so another crate enabling `aws-lc-rs` cannot make provider selection
//! ambiguous at run time.

pub(crate) mod ca;
mod stream;
mod upstream;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use ca::{
    AgentCa, LeafAlpn, CA_CERT_FILE, CA_KEY_FILE, CA_VALIDITY_DAYS, LEAF_RENEW_AFTER_DAYS,
    LEAF_VALIDITY_DAYS,
};
pub use stream::{accept_client, Stream};
pub(crate) use upstream::{load_roots, load_system_roots};
pub use upstream::{ClientCert, UpstreamTls, UpstreamTlsMode, SSL_REQUEST};

/// The ALPN protocol name PostgreSQL 17 registered. libpq 17+ offers it; older clients
/// and servers ignore ALPN, so offering and accepting it costs nothing and keeps
/// PostgreSQL 17 `sslnegotiation=direct` clients possible later.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";
/// ALPN for HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The crypto provider every TLS config of the agent uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which leg of a relayed connection a TLS error happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The workload's connection, which the agent terminates.
    Client,
    /// The agent's connection to the real server.
    Upstream,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        })
    }
}

/// Why a TLS handshake failed, classified from rustls' error so callers (and tests) can
/// tell a wrong name from an untrusted issuer without parsing messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer's certificate chains to a trusted CA but does not name the expected
    /// server (`server_name`, or the IP address when none is configured).
    NameMismatch {
        /// The name (DNS name or IP address) the certificate had to carry.
        expected: String,
        /// The names the certificate carries, when rustls reports them.
        presented: Vec<String>,
    },
    /// The peer's certificate does not chain to a trusted CA (the `ca_file`).
    UnknownIssuer,
    /// The peer's certificate is expired or not yet valid.
    NotValidNow,
    /// Any other problem with the peer's certificate.
    BadCertificate {
        /// rustls' description.
        reason: String,
    },
    /// The peer aborted the handshake with a TLS alert, e.g. `UnknownCA` from a client
    /// that does not trust the agent CA.
    PeerAlert {
        /// The alert's name.
        alert: String,
    },
    /// A TLS protocol error (no common cipher suite or version, garbage instead of TLS, ...).
    Protocol {
        /// rustls' description.
        reason: String,
    },
    /// The connection failed or was closed during the handshake.
    Io {
        /// The I/O error kind.
        kind: io::ErrorKind,
        /// The I/O error's description.
        reason: String,
    },
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeFailure::NameMismatch {
                expected,
                presented,
            } if presented.is_empty() => {
                write!(
                    f,
                    "certificate name mismatch: it is not valid for {expected:?}"
                )
            }
            HandshakeFailure::NameMismatch {
                expected,
                presented,
            } => write!(
                f,
                "certificate name mismatch: it is not valid for {expected:?} (it names {})",
                presented.join(", ")
            ),
            HandshakeFailure::UnknownIssuer => {
                f.write_str("certificate signed by an unknown issuer (not the configured CA)")
            }
            HandshakeFailure::NotValidNow => f.write_str("certificate expired or not yet valid"),
            HandshakeFailure::BadCertificate { reason } => write!(f, "bad certificate: {reason}"),
            HandshakeFailure::PeerAlert { alert } => write!(f, "peer sent TLS alert {alert}"),
            HandshakeFailure::Protocol { reason } => write!(f, "TLS protocol error: {reason}"),
            HandshakeFailure::Io { reason, .. } => write!(f, "I/O error: {reason}"),
        }
    }
}

impl HandshakeFailure {
    /// Classifies the error of a tokio-rustls handshake. `expected` is the name the
    /// certificate had to carry, for a mismatch that rustls reports without context.
    fn classify(err: &io::Error, expected: Option<&str>) -> HandshakeFailure {
        use rustls::CertificateError as C;
        let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return HandshakeFailure::Io {
                kind: err.kind(),
                reason: err.to_string(),
            };
        };
        match tls {
            rustls::Error::InvalidCertificate(cert) => match cert {
                C::NotValidForNameContext {
                    expected,
                    presented,
                } => HandshakeFailure::NameMismatch {
                    expected: server_name_string(expected),
                    presented: presented.clone(),
                },
                C::NotValidForName => HandshakeFailure::NameMismatch {
                    expected: expected.unwrap_or("?").to_owned(),
                    presented: Vec::new(),
                },
                C::UnknownIssuer => HandshakeFailure::UnknownIssuer,
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => HandshakeFailure::NotValidNow,
                other => HandshakeFailure::BadCertificate {
                    reason: format!("{other:?}"),
                },
            },
            rustls::Error::AlertReceived(alert) => HandshakeFailure::PeerAlert {
                alert: format!("{alert:?}"),
            },
            other => HandshakeFailure::Protocol {
                reason: other.to_string(),
            },
        }
    }
}

/// A rustls server name as text (`db.example.com`, `10.0.0.5`).
fn server_name_string(name: &rustls_pki_types::ServerName<'_>) -> String {
    match name {
        rustls_pki_types::ServerName::DnsName(dns) => dns.as_ref().to_owned(),
        rustls_pki_types::ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// Errors of the TLS subsystem: configuration (CA files, the agent CA) and per-connection
/// negotiation, each saying which side failed and why.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `tls = "verify-full"` without a `ca_file`: there would be nothing to verify against.
    #[error("upstream tls = \"{mode}\" needs a ca_file to verify the server certificate")]
    MissingCaFile {
        /// The mode that needs it.
        mode: UpstreamTlsMode,
    },
    /// `server_name` is neither a DNS name nor an IP address.
    #[error("invalid TLS server_name {name:?}: not a DNS name or IP address")]
    InvalidServerName {
        /// The configured name.
        name: String,
    },
    /// A file could not be read, written or created.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A certificate file holds no usable certificate.
    #[error("{}: {reason}", path.display())]
    BadCertificateFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The agent CA's private key is accessible to group or other.
    #[error("{}: private key has mode {mode:04o}, accessible to group/other; it must be 0600 (chmod 600 it, or remove the CA to create a new one)", path.display())]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The agent CA directory is in a state the agent refuses to repair by itself.
    #[error("agent CA in {}: {reason}", dir.display())]
    AgentCa {
        /// The state directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rcgen failed to create a key or certificate.
    #[error("generating {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// rustls rejected a configuration (key, certificate, protocol versions).
    #[error("TLS configuration: {source}")]
    Config {
        /// rustls' error.
        source: rustls::Error,
    },
    /// `tls = "verify-full"` without `ca_file` on an HTTP target, and the system's trust
    /// store yielded no usable CA certificate.
    #[error("tls = \"verify-full\" without ca_file uses the system's CA certificates, but none could be loaded ({reason}); install ca-certificates or set ca_file")]
    NoSystemRoots {
        /// What the loader reported.
        reason: String,
    },
    /// [`AgentCa::server_config`] was asked for a certificate with no name at all.
    #[error("a client-facing certificate needs at least one DNS name or IP address")]
    NoSubjectAltNames,
    /// Reading or writing the socket failed outside the TLS handshake (SSLRequest exchange,
    /// socket address lookup).
    #[error("{side} {peer}: {source}")]
    Io {
        /// Which leg.
        side: Side,
        /// The peer's address (unspecified when it could not be read).
        peer: SocketAddr,
        /// The underlying error.
        source: io::Error,
    },
    /// The server closed the connection instead of answering the SSLRequest.
    #[error("upstream {peer}: closed the connection instead of answering the SSLRequest")]
    ClosedDuringNegotiation {
        /// The server's address.
        peer: SocketAddr,
    },
    /// The server answered `N` (no TLS) but the mode requires TLS.
    #[error("upstream {peer}: server does not offer TLS (answered 'N' to SSLRequest) but tls = \"{mode}\"")]
    TlsNotOffered {
        /// The server's address.
        peer: SocketAddr,
        /// The configured mode.
        mode: UpstreamTlsMode,
    },
    /// The server answered the SSLRequest with something other than `S` or `N` (an old
    /// server's ErrorResponse `E`, or not PostgreSQL at all).
    #[error("upstream {peer}: answered SSLRequest with byte {byte:#04x}, not 'S' or 'N'")]
    UnexpectedAnswer {
        /// The server's address.
        peer: SocketAddr,
        /// The byte received.
        byte: u8,
    },
    /// Bytes followed the one-byte answer before the agent sent anything more: a server
    /// never does that, a man in the middle injecting plaintext does (CVE-2021-23222).
    #[error("upstream {peer}: data followed the SSLRequest answer '{answer}' (possible injection, CVE-2021-23222)")]
    TrailingBytes {
        /// The server's address.
        peer: SocketAddr,
        /// The answer byte as a character.
        answer: char,
    },
    /// The TLS handshake failed.
    #[error("{side} {peer}: TLS handshake failed: {failure}")]
    Handshake {
        /// Which leg.
        side: Side,
        /// The peer's address.
        peer: SocketAddr,
        /// Why.
        failure: HandshakeFailure,
    },
}
