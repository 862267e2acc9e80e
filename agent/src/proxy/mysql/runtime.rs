//! What the MySQL proxy builds once per configuration: per target, TLS to the server,
//! whether client TLS is terminated, the credential. Rules and masks come from
//! `PgRuntime::rules_for` (protocol-neutral), the CA from the PostgreSQL runtime (one CA
//! per agent).
use std::sync::Arc;

use anyhow::Context;

use crate::config::{ClientTls, Config, CredentialRef, Protocol, UpstreamTlsMode};
use crate::credential::{CredentialSource, Secret};
use crate::tls::{self, AgentCa, UpstreamTls};

/// Per-target state, indexed like [`Config::targets`].
pub struct MysqlTargetRuntime {
    pub upstream: UpstreamTls,
    /// Whether the agent offers TLS to the client (terminated with the agent CA).
    pub client_tls: bool,
    pub server_name: Option<String>,
    /// The password the agent logs in with, when it holds one.
    pub credential: Option<Secret>,
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
            let mode = match my.tls {
                UpstreamTlsMode::Disable => tls::UpstreamTlsMode::Disable,
                UpstreamTlsMode::Prefer => tls::UpstreamTlsMode::Prefer,
                UpstreamTlsMode::Require => tls::UpstreamTlsMode::Require,
                UpstreamTlsMode::VerifyFull => tls::UpstreamTlsMode::VerifyFull,
            };
            let upstream = UpstreamTls::new(mode, my.ca_file.as_deref(), my.server_name.as_deref())
                .with_context(|| format!("target \"{}\": TLS to the server", target.name))?;
            let credential = match &my.credential {
                None => None,
                Some(CredentialRef::File(path)) => Some(
                    CredentialSource::File(path.clone())
                        .load()
                        .with_context(|| format!("target \"{}\": password_file", target.name))?,
                ),
                Some(CredentialRef::Systemd(name)) => Some(
                    CredentialSource::Systemd(name.clone())
                        .load()
                        .with_context(|| format!("target \"{}\": credential", target.name))?,
                ),
            };
            targets.push(Some(Arc::new(MysqlTargetRuntime {
                upstream,
                client_tls: my.client_tls == ClientTls::Terminate,
                server_name: my.server_name.clone(),
                credential,
            })));
        }
        Ok(MysqlRuntime { targets, ca })
    }

    pub fn target(&self, index: usize) -> Option<&Arc<MysqlTargetRuntime>> {
        self.targets.get(index).and_then(Option::as_ref)
    }
}
