//! What the MySQL proxy builds once per configuration: per target, TLS to the server,
//! whether client TLS is terminated, the credential, the server's RSA key (pinned, read
//! and checked here so a bad file is a configuration error). Rules and masks come from
//! `PgRuntime::rules_for` (protocol-neutral), the CA from the PostgreSQL runtime (one CA
//! per agent).
use std::sync::Arc;

use anyhow::Context;

use crate::config::{ClientTls, Config, Protocol, ServerPublicKey};
use crate::credential::Secret;
use crate::tls::{AgentCa, UpstreamTls};

/// Per-target state, indexed like [`Config::targets`].
pub struct MysqlTargetRuntime {
    pub upstream: UpstreamTls,
    /// Whether the agent offers TLS to the client (terminated with the agent CA).
    pub client_tls: bool,
    pub server_name: Option<String>,
    /// The password the agent logs in with, when it holds one.
    pub credential: Option<Secret>,
    /// Where caching_sha2_password's RSA key comes from without TLS.
    pub server_key: ServerKey,
}

/// The RSA key of caching_sha2_password's full authentication over a connection without
/// TLS (`config::ServerPublicKey`, the pinned file read).
#[derive(Debug, Clone)]
pub enum ServerKey {
    /// Full authentication without TLS is refused.
    Refuse,
    /// Asked of the server.
    Request,
    /// The pinned key (the server is never asked).
    Pinned(Arc<rsa::PublicKey>),
}

impl ServerKey {
    fn load(config: &ServerPublicKey) -> anyhow::Result<ServerKey> {
        Ok(match config {
            ServerPublicKey::Refuse => ServerKey::Refuse,
            ServerPublicKey::Request => ServerKey::Request,
            ServerPublicKey::Pinned(path) => {
                let pem = std::fs::read(path).with_context(|| {
                    format!("server_public_key {}: cannot read", path.display())
                })?;
                let key = crate::protocol::mysql::auth::rsa_public_key(&pem)
                    .map_err(|e| anyhow::anyhow!("server_public_key {}: {e}", path.display()))?;
                ServerKey::Pinned(Arc::new(key))
            }
        })
    }
}

/// Everything the MySQL sessions of one configuration share.
pub struct MysqlRuntime {
    targets: Vec<Option<Arc<MysqlTargetRuntime>>>,
    pub ca: Option<Arc<AgentCa>>,
}

impl MysqlRuntime {
    pub fn build(config: &Config, ca: Option<Arc<AgentCa>>) -> anyhow::Result<MysqlRuntime> {
        let mut targets = Vec::with_capacity(config.targets.len());
        for target in &config.targets {
            let Some(my) = target
                .mysql
                .as_ref()
                .filter(|_| target.protocol == Protocol::Mysql)
            else {
                targets.push(None);
                continue;
            };
            // No ALPN: MySQL has no ALPN name, and offering `postgresql` is wrong.
            let upstream = UpstreamTls::without_alpn(
                my.tls.into(),
                my.ca_file.as_deref(),
                my.server_name.as_deref(),
            )
            .with_context(|| format!("target \"{}\": TLS to the server", target.name))?;
            let credential = my
                .credential
                .as_ref()
                .map(|c| c.load(&target.name, "password_file"))
                .transpose()?;
            let server_key = ServerKey::load(&my.server_public_key)
                .with_context(|| format!("target \"{}\"", target.name))?;
            targets.push(Some(Arc::new(MysqlTargetRuntime {
                upstream,
                client_tls: my.client_tls == ClientTls::Terminate,
                server_name: my.server_name.clone(),
                credential,
                server_key,
            })));
        }
        Ok(MysqlRuntime { targets, ca })
    }

    pub fn target(&self, index: usize) -> Option<&Arc<MysqlTargetRuntime>> {
        self.targets.get(index).and_then(Option::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pinned key that cannot be read or is not an RSA public key in PEM stops the
    /// configuration with the file named.
    #[test]
    fn a_bad_pinned_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = format!(
            "{:#}",
            ServerKey::load(&ServerPublicKey::Pinned(missing.clone())).unwrap_err()
        );
        assert!(
            e.contains(&format!(
                "server_public_key {}: cannot read",
                missing.display()
            )),
            "{e}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a key").unwrap();
        let e = format!(
            "{:#}",
            ServerKey::load(&ServerPublicKey::Pinned(garbage.clone())).unwrap_err()
        );
        assert!(
            e.contains(&format!(
                "server_public_key {}: not a PEM public key",
                garbage.display()
            )),
            "{e}"
        );
        let good = dir.path().join("good.pem");
        std::fs::write(
            &good,
            include_str!("../../protocol/mysql/testdata/rsa-test-public.pem"),
        )
        .unwrap();
        assert!(matches!(
            ServerKey::load(&ServerPublicKey::Pinned(good)).unwrap(),
            ServerKey::Pinned(_)
        ));
        assert!(matches!(
            ServerKey::load(&ServerPublicKey::Request).unwrap(),
            ServerKey::Request
        ));
    }
}
