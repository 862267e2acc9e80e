//! Tests of both TLS legs against in-process peers on loopback: a fake "PostgreSQL TLS
//! front" (reads the SSLRequest, answers, then a rustls server handshake and echo) for
//! the upstream side, a rustls client for the terminating side, and real `psql` when
//! installed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;

const LOCALHOST_V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const DB_NAME: &str = "db.example.test";

fn new_ca() -> (tempfile::TempDir, AgentCa) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = AgentCa::load_or_create(dir.path()).expect("create agent CA");
    (dir, ca)
}

/// What the fake server does after reading the SSLRequest.
struct Front {
    /// The bytes it answers with (`S`, `N`, `S` + injected bytes, ...).
    answer: &'static [u8],
    /// The server config for the handshake after an `S`.
    tls: Option<Arc<ServerConfig>>,
}

/// Starts a one-connection fake PostgreSQL TLS front on `ip`; the task returns an error
/// string if the client did not open with an SSLRequest.
async fn fake_front(ip: IpAddr, front: Front) -> (SocketAddr, JoinHandle<Result<(), String>>) {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut request = [0u8; 8];
        tcp.read_exact(&mut request)
            .await
            .map_err(|e| e.to_string())?;
        if request != SSL_REQUEST {
            return Err(format!("expected SSLRequest, got {request:?}"));
        }
        tcp.write_all(front.answer)
            .await
            .map_err(|e| e.to_string())?;
        if front.answer.is_empty() {
            // Hang up without answering.
            return Ok(());
        }
        let stream = match (front.answer.first(), front.tls) {
            (Some(b'S'), Some(config)) => accept_client(tcp, config)
                .await
                .map_err(|e| e.to_string())?,
            _ => Stream::Plain(tcp),
        };
        echo(stream).await
    });
    (addr, task)
}

async fn echo(mut stream: Stream) -> Result<(), String> {
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        stream
            .write_all(&buf[..n])
            .await
            .map_err(|e| e.to_string())?;
    }
}

/// Connects with `tls` to `addr` and round-trips a message, returning the stream.
async fn negotiate(tls: &UpstreamTls, addr: SocketAddr) -> Result<Stream, TlsError> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tls.negotiate_postgres(tcp, addr).await
}

async fn round_trip(stream: &mut Stream, message: &[u8]) {
    stream.write_all(message).await.expect("write");
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).await.expect("read echo");
    assert_eq!(back, message);
}

fn handshake_failure(err: TlsError) -> (Side, HandshakeFailure) {
    match err {
        TlsError::Handshake { side, failure, .. } => (side, failure),
        other => panic!("expected a handshake error, got {other}"),
    }
}

#[tokio::test]
async fn prefer_falls_back_to_clear_on_n() {
    let tls = UpstreamTls::new(UpstreamTlsMode::Prefer, None, None).unwrap();
    let (addr, server) = fake_front(
        LOCALHOST_V4,
        Front {
            answer: b"N",
            tls: None,
        },
    )
    .await;
    let mut stream = negotiate(&tls, addr)
        .await
        .expect("prefer + N is clear text");
    assert!(!stream.is_tls());
    round_trip(&mut stream, b"startup in clear").await;
    drop(stream);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn prefer_uses_tls_on_s_without_verifying() {
    let (_dir, ca) = new_ca();
    // The certificate names neither the address nor anything configured: prefer
    // without ca_file does not verify, as libpq.
    let config = ca
        .server_config(&["unrelated.example".to_owned()], &[])
        .unwrap();
    let tls = UpstreamTls::new(UpstreamTlsMode::Prefer, None, None).unwrap();
    let (addr, server) = fake_front(
        LOCALHOST_V4,
        Front {
            answer: b"S",
            tls: Some(config),
        },
    )
    .await;
    let mut stream = negotiate(&tls, addr).await.expect("prefer + S is TLS");
    assert!(stream.is_tls());
    assert!(matches!(stream, Stream::Client(_)));
    assert_eq!(stream.peer_addr().unwrap(), addr);
    round_trip(&mut stream, b"over tls").await;
    stream.shutdown().await.unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn require_refuses_clear_text() {
    let tls = UpstreamTls::new(UpstreamTlsMode::Require, None, None).unwrap();
    let (addr, _server) = fake_front(
        LOCALHOST_V4,
        Front {
            answer: b"N",
            tls: None,
        },
    )
    .await;
    match negotiate(&tls, addr).await {
        Err(TlsError::TlsNotOffered { peer, mode }) => {
            assert_eq!(peer, addr);
            assert_eq!(mode, UpstreamTlsMode::Require);
        }
        other => panic!("expected TlsNotOffered, got {other:?}"),
    }
}

#[tokio::test]
async fn verify_full_refuses_clear_text() {
    let (_dir, ca) = new_ca();
    let tls = UpstreamTls::new(UpstreamTlsMode::VerifyFull, Some(ca.ca_cert_path()), None).unwrap();
    let (addr, _server) = fake_front(
        LOCALHOST_V4,
        Front {
            answer: b"N",
            tls: None,
        },
    )
    .await;
    let err = negotiate(&tls, addr).await.unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::TlsNotOffered {
                mode: UpstreamTlsMode::VerifyFull,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn disable_sends_nothing() {
    let tls = UpstreamTls::new(UpstreamTlsMode::Disable, None, Some("ignored.example")).unwrap();
    assert_eq!(tls.mode(), UpstreamTlsMode::Disable);
    let listener = TcpListener::bind((LOCALHOST_V4, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut first = [0u8; 8];
        tcp.read_exact(&mut first).await.unwrap();
        first
    });
    let mut stream = negotiate(&tls, addr).await.unwrap();
    assert!(!stream.is_tls());
    stream.write_all(b"STARTUP!").await.unwrap();
    assert_eq!(&server.await.unwrap(), b"STARTUP!");
}

#[tokio::test]
async fn verify_full_accepts_right_ca_and_name() {
    let (_dir, ca) = new_ca();
    let config = ca.server_config(&[DB_NAME.to_owned()], &[]).unwrap();
    let tls = UpstreamTls::new(
        UpstreamTlsMode::VerifyFull,
        Some(ca.ca_cert_path()),
        Some(DB_NAME),
    )
    .unwrap();
    let (addr, server) = fake_front(
        LOCALHOST_V4,
        Front {
            answer: b"S",
            tls: Some(config),
        },
    )
    .await;
    let mut stream = negotiate(&tls, addr)
        .await
        .expect("verify-full with the right CA and name");
    assert!(stream.tls_version().is_some());
    round_trip(&mut stream, b"verified").await;
    stream.shutdown().await.unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn verify_full_names_the_mismatch() {
    let (_dir, ca) = new_ca();
    let config = ca.server_config(&[DB_NAME.to_owned()], &[]).unwrap();
    let tls = UpstreamTls::new(
        UpstreamTlsMode::VerifyFull,
        Some(ca.ca_cert_path()),
        Some("other.example.test"),
    )
    .unwrap();
    let (addr, _server) = fake_front(
        LOCALHOST_V4,
        Front {
            answer: b"S",
            tls: Some(config),
        },
    )
    .await;
    let err = negotiate(&tls, addr).await.unwrap_err();
    let message = err.to_string();
    let (side, failure) = handshake_failure(err);
    assert_eq!(side, Side::Upstream);
    match failure {
        HandshakeFailure::NameMismatch {
            expected,
            presented,
        } => {
            assert_eq!(expected, "other.example.test");
            assert!(
                presented.iter().any(|p| p.contains(DB_NAME)),
                "{presented:?}"
            );
        }
        other => panic!("expected a name mismatch, got {other}"),
    }
    assert!(
        message.contains("name mismatch") && message.contains("other.example.test"),
        "{message}"
    );
    assert!(message.starts_with("upstream "), "{message}");
}

#[tokio::test]
async fn verify_full_rejects_another_ca() {
    let (_dir, ca) = new_ca();
    let (_other_dir, other_ca) = new_ca();
    let config = ca.server_config(&[DB_NAME.to_owned()], &[]).unwrap();
    let tls = UpstreamTls::new(
        UpstreamTlsMode::VerifyFull,
        Some(other_ca.ca_cert_path()),
        Some(DB_NAME),
    )
    .unwrap();
    let (addr, _server) = fake_front(
        LOCALHOST_V4,
        Front {
            answer: b"S",
            tls: Some(config),
        },
    )
    .await;
    let err = negotiate(&tls, addr).await.unwrap_err();
    assert!(err.to_string().contains("unknown issuer"), "{err}");
    assert_eq!(
        handshake_failure(err),
        (Side::Upstream, HandshakeFailure::UnknownIssuer)
    );
}

#[tokio::test]
async fn verify_full_checks_ip_san_without_server_name() {
    let (_dir, ca) = new_ca();
    let tls = UpstreamTls::new(UpstreamTlsMode::VerifyFull, Some(ca.ca_cert_path()), None).unwrap();

    // A leaf carrying the address is accepted...
    let config = ca.server_config(&[], &[LOCALHOST_V4]).unwrap();
    let (addr, server) = fake_front(
        LOCALHOST_V4,
        Front {
            answer: b"S",
            tls: Some(config),
        },
    )
    .await;
    let mut stream = negotiate(&tls, addr)
        .await
        .expect("IP SAN 127.0.0.1 matches");
    round_trip(&mut stream, b"ip san").await;
    stream.shutdown().await.unwrap();
    server.await.unwrap().unwrap();

    // ...one carrying only a DNS name (or another address) is not: the address is
    // what the certificate must name.
    let other_ip: IpAddr = "127.0.0.2".parse().unwrap();
    let config = ca
        .server_config(&[DB_NAME.to_owned()], &[other_ip])
        .unwrap();
    let (addr, _server) = fake_front(
        LOCALHOST_V4,
        Front {
            answer: b"S",
            tls: Some(config),
        },
    )
    .await;
    let (_, failure) = handshake_failure(negotiate(&tls, addr).await.unwrap_err());
    match failure {
        HandshakeFailure::NameMismatch { expected, .. } => assert_eq!(expected, "127.0.0.1"),
        other => panic!("expected a name mismatch, got {other}"),
    }
}

#[tokio::test]
async fn verify_full_checks_ipv6_san() {
    let v6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    if TcpListener::bind((v6, 0)).await.is_err() {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    let (_dir, ca) = new_ca();
    let tls = UpstreamTls::new(UpstreamTlsMode::VerifyFull, Some(ca.ca_cert_path()), None).unwrap();
    let config = ca.server_config(&[], &[v6]).unwrap();
    let (addr, server) = fake_front(
        v6,
        Front {
            answer: b"S",
            tls: Some(config),
        },
    )
    .await;
    let mut stream = negotiate(&tls, addr).await.expect("IP SAN ::1 matches");
    round_trip(&mut stream, b"v6").await;
    stream.shutdown().await.unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn require_with_ca_file_verifies_chain_but_not_name() {
    let (_dir, ca) = new_ca();
    let (_other_dir, other_ca) = new_ca();
    let tls = UpstreamTls::new(
        UpstreamTlsMode::Require,
        Some(ca.ca_cert_path()),
        Some("not-the-name.example"),
    )
    .unwrap();

    let config = ca.server_config(&[DB_NAME.to_owned()], &[]).unwrap();
    let (addr, server) = fake_front(
        LOCALHOST_V4,
        Front {
            answer: b"S",
            tls: Some(config),
        },
    )
    .await;
    let mut stream = negotiate(&tls, addr)
        .await
        .expect("chain verifies, name is not checked");
    round_trip(&mut stream, b"verify-ca").await;
    stream.shutdown().await.unwrap();
    server.await.unwrap().unwrap();

    let config = other_ca.server_config(&[DB_NAME.to_owned()], &[]).unwrap();
    let (addr, _server) = fake_front(
        LOCALHOST_V4,
        Front {
            answer: b"S",
            tls: Some(config),
        },
    )
    .await;
    let (_, failure) = handshake_failure(negotiate(&tls, addr).await.unwrap_err());
    assert_eq!(failure, HandshakeFailure::UnknownIssuer);
}

#[tokio::test]
async fn bytes_after_the_answer_are_rejected() {
    let (_dir, ca) = new_ca();
    let config = ca.server_config(&[DB_NAME.to_owned()], &[]).unwrap();
    for (answer, expected) in [
        (&b"SR\0\0\0\x08\0\0\0\0"[..], 'S'),
        (&b"NE\0\0\0\x04"[..], 'N'),
    ] {
        let tls = UpstreamTls::new(UpstreamTlsMode::Prefer, None, None).unwrap();
        let (addr, _server) = fake_front(
            LOCALHOST_V4,
            Front {
                answer,
                tls: Some(config.clone()),
            },
        )
        .await;
        match negotiate(&tls, addr).await {
            Err(TlsError::TrailingBytes { answer, peer }) => {
                assert_eq!(answer, expected);
                assert_eq!(peer, addr);
            }
            other => panic!("expected TrailingBytes after {expected:?}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn other_answers_are_errors() {
    let tls = UpstreamTls::new(UpstreamTlsMode::Prefer, None, None).unwrap();
    let (addr, _server) = fake_front(
        LOCALHOST_V4,
        Front {
            answer: b"E",
            tls: None,
        },
    )
    .await;
    let err = negotiate(&tls, addr).await.unwrap_err();
    assert!(
        matches!(err, TlsError::UnexpectedAnswer { byte: b'E', .. }),
        "{err}"
    );

    let (addr, _server) = fake_front(
        LOCALHOST_V4,
        Front {
            answer: b"",
            tls: None,
        },
    )
    .await;
    let err = negotiate(&tls, addr).await.unwrap_err();
    assert!(
        matches!(err, TlsError::ClosedDuringNegotiation { .. }),
        "{err}"
    );
}

#[test]
fn configuration_errors() {
    let err = UpstreamTls::new(UpstreamTlsMode::VerifyFull, None, Some(DB_NAME)).unwrap_err();
    assert!(matches!(err, TlsError::MissingCaFile { .. }), "{err}");

    let err = UpstreamTls::new(UpstreamTlsMode::Require, None, Some("not a name")).unwrap_err();
    assert!(matches!(err, TlsError::InvalidServerName { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.crt");
    let err = UpstreamTls::new(UpstreamTlsMode::VerifyFull, Some(&missing), None).unwrap_err();
    assert!(
        matches!(err, TlsError::File { ref path, .. } if path == &missing),
        "{err}"
    );

    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "no pem here\n").unwrap();
    let err = UpstreamTls::new(UpstreamTlsMode::VerifyFull, Some(&empty), None).unwrap_err();
    assert!(matches!(err, TlsError::BadCertificateFile { .. }), "{err}");

    // An IP address is a valid server_name (verified against IP SANs).
    assert!(UpstreamTls::new(UpstreamTlsMode::Require, None, Some("10.1.2.3")).is_ok());
}

#[test]
fn ssl_request_bytes() {
    // What libpq sends: length 8, code 80877103 (1234 << 16 | 5679).
    assert_eq!(SSL_REQUEST, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
}

#[test]
fn mode_parses_from_config_spelling() {
    #[derive(serde::Deserialize)]
    struct Target {
        tls: UpstreamTlsMode,
    }
    for (text, mode) in [
        ("disable", UpstreamTlsMode::Disable),
        ("prefer", UpstreamTlsMode::Prefer),
        ("require", UpstreamTlsMode::Require),
        ("verify-full", UpstreamTlsMode::VerifyFull),
    ] {
        let target: Target = toml::from_str(&format!("tls = \"{text}\"")).unwrap();
        assert_eq!(target.tls, mode);
        assert_eq!(mode.to_string(), text);
    }
    assert!(toml::from_str::<Target>("tls = \"verify_full\"").is_err());
}

/// A rustls client that trusts `ca_pem` only.
fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

#[tokio::test]
async fn accept_client_round_trips_with_a_client_trusting_ca_crt() {
    let (_dir, ca) = new_ca();
    let config = ca
        .server_config(&[DB_NAME.to_owned()], &[LOCALHOST_V4])
        .unwrap();
    let listener = TcpListener::bind((LOCALHOST_V4, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let stream = accept_client(tcp, config).await.unwrap();
        assert!(matches!(stream, Stream::Server(_)));
        let sni = stream.client_sni().map(str::to_owned);
        echo(stream).await.unwrap();
        sni
    });
    // The client reads ca.crt from disk, as `sslrootcert=ca.crt` would.
    let ca_pem = std::fs::read_to_string(ca.ca_cert_path()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&ca_pem));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from(DB_NAME).unwrap(), tcp)
        .await
        .expect("client trusting ca.crt accepts the leaf");
    tls.write_all(b"query through terminated tls")
        .await
        .unwrap();
    let mut back = [0u8; 28];
    tls.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"query through terminated tls");
    tls.shutdown().await.unwrap();
    assert_eq!(server.await.unwrap().as_deref(), Some(DB_NAME));

    // By IP address too.
    let config = ca
        .server_config(&[DB_NAME.to_owned()], &[LOCALHOST_V4])
        .unwrap();
    let listener = TcpListener::bind((LOCALHOST_V4, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        echo(accept_client(tcp, config).await.unwrap()).await
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::IpAddress(LOCALHOST_V4.into()), tcp)
        .await
        .expect("IP SAN");
    tls.write_all(b"x").await.unwrap();
    tls.read_exact(&mut [0u8; 1]).await.unwrap();
    tls.shutdown().await.unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn accept_client_reports_a_client_that_distrusts_the_ca() {
    let (_dir, ca) = new_ca();
    let (_other_dir, other_ca) = new_ca();
    let config = ca.server_config(&[DB_NAME.to_owned()], &[]).unwrap();
    let listener = TcpListener::bind((LOCALHOST_V4, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept_client(tcp, config).await
    });
    let connector = tokio_rustls::TlsConnector::from(client_config(other_ca.ca_cert_pem()));
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert!(connector
        .connect(ServerName::try_from(DB_NAME).unwrap(), tcp)
        .await
        .is_err());
    let err = server.await.unwrap().unwrap_err();
    let message = err.to_string();
    let (side, failure) = handshake_failure(err);
    assert_eq!(side, Side::Client);
    assert!(
        matches!(failure, HandshakeFailure::PeerAlert { .. }),
        "{failure}"
    );
    assert!(message.starts_with("client 127.0.0.1:"), "{message}");
}

#[test]
fn agent_ca_reload_keeps_the_same_ca() {
    let dir = tempfile::tempdir().unwrap();
    let first = AgentCa::load_or_create(dir.path()).unwrap();
    let key_before = std::fs::read(dir.path().join(CA_KEY_FILE)).unwrap();
    assert!(first.ca_cert_pem().contains("BEGIN CERTIFICATE"));
    assert_eq!(first.ca_cert_path(), dir.path().join(CA_CERT_FILE));
    assert_eq!(
        std::fs::read_to_string(first.ca_cert_path()).unwrap(),
        first.ca_cert_pem()
    );

    let second = AgentCa::load_or_create(dir.path()).unwrap();
    assert_eq!(second.ca_cert_pem(), first.ca_cert_pem());
    assert_eq!(
        std::fs::read(dir.path().join(CA_KEY_FILE)).unwrap(),
        key_before
    );
    // And the reloaded CA issues leaves the original certificate verifies.
    let leaf = leaf_of(&second, &[DB_NAME.to_owned()], &[]);
    verify_leaf(first.ca_cert_pem(), &leaf, DB_NAME).expect("reloaded CA signs for ca.crt");
}

#[test]
fn ca_key_is_private_and_a_readable_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _ca = AgentCa::load_or_create(dir.path()).unwrap();
    let key_path = dir.path().join(CA_KEY_FILE);
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    for bad_mode in [0o640, 0o604, 0o660] {
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(bad_mode)).unwrap();
        match AgentCa::load_or_create(dir.path()) {
            Err(TlsError::KeyPermissions { path, mode }) => {
                assert_eq!(path, key_path);
                assert_eq!(mode, bad_mode);
            }
            other => panic!("mode {bad_mode:o}: expected KeyPermissions, got {other:?}"),
        }
    }
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(AgentCa::load_or_create(dir.path()).is_ok());
}

#[test]
fn agent_ca_refuses_a_certificate_without_its_key_and_recovers_a_key_without_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let first = AgentCa::load_or_create(dir.path()).unwrap();
    let key = std::fs::read(dir.path().join(CA_KEY_FILE)).unwrap();

    std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
    let err = AgentCa::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, TlsError::AgentCa { .. }), "{err}");
    // Nothing was overwritten.
    assert_eq!(
        std::fs::read_to_string(first.ca_cert_path()).unwrap(),
        first.ca_cert_pem()
    );

    // Key back, certificate gone (an interrupted creation): re-issued from the key.
    write_private(&dir.path().join(CA_KEY_FILE), &key);
    std::fs::remove_file(first.ca_cert_path()).unwrap();
    let again = AgentCa::load_or_create(dir.path()).unwrap();
    let leaf = leaf_of(&again, &[DB_NAME.to_owned()], &[]);
    verify_leaf(again.ca_cert_pem(), &leaf, DB_NAME).unwrap();
}

#[test]
fn agent_ca_refuses_a_certificate_of_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let _ca = AgentCa::load_or_create(dir.path()).unwrap();
    let other_ca = AgentCa::load_or_create(other.path()).unwrap();
    std::fs::write(dir.path().join(CA_CERT_FILE), other_ca.ca_cert_pem()).unwrap();
    let err = AgentCa::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, TlsError::AgentCa { .. }), "{err}");
    assert!(err.to_string().contains("do not work together"), "{err}");
}

#[test]
fn server_config_is_cached_by_san_set_and_renewed() {
    let (_dir, ca) = new_ca();
    let a = ca
        .server_config(
            &["B.example".to_owned(), "a.example".to_owned()],
            &[LOCALHOST_V4],
        )
        .unwrap();
    let b = ca
        .server_config(
            &[
                "a.example".to_owned(),
                "b.example.".to_owned(),
                "a.example".to_owned(),
            ],
            &[LOCALHOST_V4, LOCALHOST_V4],
        )
        .unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "same SAN set, other order/case/duplicates"
    );
    let c = ca
        .server_config(&["a.example".to_owned()], &[LOCALHOST_V4])
        .unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
    // An address given as a name goes into an IP SAN: same set as given as an address.
    let d = ca
        .server_config(&["a.example".to_owned(), "127.0.0.1".to_owned()], &[])
        .unwrap();
    assert!(Arc::ptr_eq(&c, &d));

    let now = time::OffsetDateTime::now_utc();
    let names = ["a.example".to_owned()];
    let pg = LeafAlpn::Postgres;
    let fresh = ca
        .server_config_at(&names, &[LOCALHOST_V4], pg, now)
        .unwrap();
    let soon = ca
        .server_config_at(
            &names,
            &[LOCALHOST_V4],
            pg,
            now + time::Duration::days(LEAF_RENEW_AFTER_DAYS - 1),
        )
        .unwrap();
    assert!(Arc::ptr_eq(&fresh, &soon));
    let later = ca
        .server_config_at(
            &names,
            &[LOCALHOST_V4],
            pg,
            now + time::Duration::days(LEAF_RENEW_AFTER_DAYS + 1),
        )
        .unwrap();
    assert!(
        !Arc::ptr_eq(&fresh, &later),
        "a leaf past its renewal age is replaced"
    );

    // HTTP clients get their own leaf, offering h2 and http/1.1 instead of postgresql.
    let http = ca
        .http_server_config(&["a.example".to_owned()], &[LOCALHOST_V4])
        .unwrap();
    assert!(!Arc::ptr_eq(&http, &c));
    assert_eq!(http.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(c.alpn_protocols, [b"postgresql".to_vec()]);
    let again = ca
        .http_server_config(&["a.example".to_owned()], &[LOCALHOST_V4])
        .unwrap();
    assert!(Arc::ptr_eq(&http, &again));
    // MySQL and Redis clients get a leaf offering no ALPN (a client's offer is ignored).
    let plain = ca
        .server_config_no_alpn(&["a.example".to_owned()], &[LOCALHOST_V4])
        .unwrap();
    assert!(!Arc::ptr_eq(&plain, &c) && !Arc::ptr_eq(&plain, &http));
    assert!(plain.alpn_protocols.is_empty());

    assert!(matches!(
        ca.server_config(&[], &[]),
        Err(TlsError::NoSubjectAltNames)
    ));
    assert!(matches!(
        ca.server_config(&[" ".to_owned()], &[]),
        Err(TlsError::NoSubjectAltNames)
    ));
}

#[test]
fn leaf_carries_the_sans_and_a_bounded_validity() {
    let (_dir, ca) = new_ca();
    let now = time::OffsetDateTime::now_utc();
    let leaf = leaf_of(&ca, &[DB_NAME.to_owned()], &[LOCALHOST_V4]);
    verify_leaf(ca.ca_cert_pem(), &leaf, DB_NAME).unwrap();
    verify_leaf(ca.ca_cert_pem(), &leaf, "127.0.0.1").unwrap();
    assert!(verify_leaf(ca.ca_cert_pem(), &leaf, "127.0.0.2").is_err());
    assert!(verify_leaf(ca.ca_cert_pem(), &leaf, "other.example").is_err());

    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let not_after = parsed.validity().not_after.timestamp();
    let expected = (now + time::Duration::days(LEAF_VALIDITY_DAYS)).unix_timestamp();
    assert!(
        (not_after - expected).abs() < 120,
        "leaf not_after {not_after}, expected ~{expected}"
    );
    assert!(!parsed.is_ca());

    let ca_der = CertificateDer::from_pem_slice(ca.ca_cert_pem().as_bytes()).unwrap();
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert!(ca_cert.is_ca());
    let ca_not_after = ca_cert.validity().not_after.timestamp();
    let expected = (now + time::Duration::days(CA_VALIDITY_DAYS)).unix_timestamp();
    assert!((ca_not_after - expected).abs() < 120);
    let cn = ca_cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert!(cn.starts_with("nhi-agent local CA "), "{cn}");
    // Two CAs never share a subject (see ca_params).
    let (_dir2, other) = new_ca();
    let other_der = CertificateDer::from_pem_slice(other.ca_cert_pem().as_bytes()).unwrap();
    let (_, other_cert) = x509_parser::parse_x509_certificate(&other_der).unwrap();
    assert_ne!(other_cert.subject().as_raw(), ca_cert.subject().as_raw());
}

/// The leaf certificate (DER) `ca` presents for these SANs, taken from a real handshake
/// against its server config, so the test sees exactly what a client sees.
fn leaf_of(ca: &AgentCa, dns: &[String], ips: &[IpAddr]) -> CertificateDer<'static> {
    let config = ca.server_config(dns, ips).unwrap();
    let mut server = rustls::ServerConnection::new(config).unwrap();
    let mut client = rustls::ClientConnection::new(
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth(),
        ),
        ServerName::try_from("leaf.probe").unwrap(),
    )
    .unwrap();
    // Pump the in-memory handshake until the client has the server's certificate.
    for _ in 0..10 {
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets().unwrap();
        let mut buf = Vec::new();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets().unwrap();
        if let Some(certs) = client.peer_certificates() {
            return certs[0].clone().into_owned();
        }
    }
    panic!("handshake did not deliver the certificate");
}

/// Verifies `leaf` against `ca_pem` for `name` as rustls' WebPKI verifier does.
fn verify_leaf(ca_pem: &str, leaf: &CertificateDer<'_>, name: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_server_cert(
            leaf,
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            rustls_pki_types::UnixTime::now(),
        )
        .map(|_| ())
}

use rustls::client::danger::ServerCertVerifier as _;

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn write_private(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut file, contents).unwrap();
}

/// Real `psql` (libpq) against a tiny harness that answers the SSLRequest with `S`,
/// terminates TLS with [`accept_client`], reads the startup packet through TLS and
/// answers an ErrorResponse carrying a marker. Seeing the marker in psql's stderr proves
/// libpq accepted the leaf under `sslmode=verify-full sslrootcert=ca.crt`.
mod with_real_psql {
    use super::*;
    use crate::protocol::postgres::encode::error_response;

    const MARKER: &str = "nhi-agent tls harness: startup arrived over TLS";

    fn psql_available() -> bool {
        std::process::Command::new("psql")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Serves one connection as the proxy would; returns the handshake outcome.
    async fn harness(listener: TcpListener, config: Arc<ServerConfig>) -> Result<(), String> {
        let (mut tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut request = [0u8; 8];
        tcp.read_exact(&mut request)
            .await
            .map_err(|e| e.to_string())?;
        if request != SSL_REQUEST {
            return Err(format!("expected SSLRequest, got {request:?}"));
        }
        tcp.write_all(b"S").await.map_err(|e| e.to_string())?;
        let mut stream = accept_client(tcp, config)
            .await
            .map_err(|e| e.to_string())?;
        let mut len = [0u8; 4];
        stream
            .read_exact(&mut len)
            .await
            .map_err(|e| e.to_string())?;
        let len = u32::from_be_bytes(len) as usize;
        if !(8..=10_000).contains(&len) {
            return Err(format!("startup packet length {len}"));
        }
        let mut body = vec![0u8; len - 4];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(&error_response("FATAL", "28000", MARKER))
            .await
            .map_err(|e| e.to_string())?;
        stream.shutdown().await.map_err(|e| e.to_string())
    }

    /// Runs `psql` against the harness with `sslrootcert`, returning its stderr and
    /// the harness's result.
    async fn run_psql(
        config: Arc<ServerConfig>,
        host: &str,
        rootcert: &Path,
    ) -> (String, Result<(), String>) {
        let listener = TcpListener::bind((LOCALHOST_V4, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(harness(listener, config));
        let conninfo = format!(
            "host={host} hostaddr=127.0.0.1 port={port} user=nhi dbname=nhi \
             sslmode=verify-full sslrootcert={} gssencmode=disable connect_timeout=10",
            rootcert.display()
        );
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("psql")
                .arg(conninfo)
                .args(["-X", "-c", "select 1"])
                .env("PGSSLCERT", "/nonexistent/nhi-test.crt")
                .env("PGSSLKEY", "/nonexistent/nhi-test.key")
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let served = tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .map_err(|_| "harness timed out".to_owned())
            .and_then(|joined| joined.map_err(|e| e.to_string()))
            .and_then(|result| result);
        (stderr, served)
    }

    #[tokio::test]
    async fn psql_verify_full_accepts_the_agent_leaf_by_ip_and_name() {
        if !psql_available() {
            eprintln!("skipped: psql is not installed");
            return;
        }
        let (_dir, ca) = new_ca();
        let config = ca
            .server_config(&[DB_NAME.to_owned()], &[LOCALHOST_V4])
            .unwrap();
        for host in ["127.0.0.1", DB_NAME] {
            let (stderr, served) = run_psql(config.clone(), host, ca.ca_cert_path()).await;
            assert!(stderr.contains(MARKER), "host={host}: psql said: {stderr}");
            assert_eq!(served, Ok(()), "host={host}");
        }
    }

    #[tokio::test]
    async fn psql_verify_full_rejects_another_ca_and_a_missing_ip_san() {
        if !psql_available() {
            eprintln!("skipped: psql is not installed");
            return;
        }
        let (_dir, ca) = new_ca();
        let (_other_dir, other_ca) = new_ca();

        let config = ca.server_config(&[], &[LOCALHOST_V4]).unwrap();
        let (stderr, served) = run_psql(config, "127.0.0.1", other_ca.ca_cert_path()).await;
        assert!(!stderr.contains(MARKER), "{stderr}");
        assert!(stderr.contains("certificate verify failed"), "{stderr}");
        assert!(served.unwrap_err().contains("client 127.0.0.1"));

        // A leaf for a DNS name only: libpq connecting to the address refuses it.
        let config = ca.server_config(&[DB_NAME.to_owned()], &[]).unwrap();
        let (stderr, _served) = run_psql(config, "127.0.0.1", ca.ca_cert_path()).await;
        assert!(!stderr.contains(MARKER), "{stderr}");
        assert!(stderr.contains("does not match host name"), "{stderr}");
    }
}
