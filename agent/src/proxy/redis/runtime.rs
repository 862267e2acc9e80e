//! What the Redis proxy builds once per configuration (at start and at each reload): per
//! Redis target, TLS to the server (the PostgreSQL targets' [`UpstreamTls`], read
//! `ca_file` now), whether the client's TLS is terminated (with the agent CA, the
//! PostgreSQL runtime's), and the agent's credential, read from its file or systemd
//! credential.
use std::sync::Arc;

use anyhow::Context;

use crate::config::{ClientTls, Config, Protocol};
use crate::credential::Secret;
use crate::tls::{AgentCa, UpstreamTls};

/// Per-target state of a `protocol = "redis"` target.
pub struct RedisTargetRuntime {
    /// TLS to the server (`Disable`: plain).
    pub upstream: UpstreamTls,
    /// `client_tls = "terminate"`: the CA whose leaf the client's TLS is terminated with.
    pub client_tls: Option<Arc<AgentCa>>,
    /// `server_name`: also named by the leaf the client gets.
    pub server_name: Option<String>,
    /// The password the agent authenticates with, when it holds one.
    pub credential: Option<Secret>,
    /// The ACL user it authenticates as (`None`: `AUTH <password>`, the default user).
    pub user: Option<String>,
}

/// Everything the Redis sessions of one configuration share, indexed like
/// [`Config::targets`].
#[derive(Default)]
pub struct RedisRuntime {
    targets: Vec<Option<Arc<RedisTargetRuntime>>>,
}

impl RedisRuntime {
    /// Reads the credentials and CA files of `config`'s Redis targets; `ca` is the agent
    /// CA (loaded when a target terminates client TLS). Errors name the target and the
    /// key, never the secret.
    pub fn build(config: &Config, ca: Option<Arc<AgentCa>>) -> anyhow::Result<RedisRuntime> {
        let mut targets = Vec::with_capacity(config.targets.len());
        for target in &config.targets {
            let Some(redis) = target
                .redis
                .as_ref()
                .filter(|_| target.protocol == Protocol::Redis)
            else {
                targets.push(None);
                continue;
            };
            let credential = redis
                .credential
                .as_ref()
                .map(|c| c.load(&target.name, "password_file"))
                .transpose()?;
            let upstream = UpstreamTls::without_alpn(
                redis.tls.into(),
                redis.ca_file.as_deref(),
                redis.server_name.as_deref(),
            )
            .with_context(|| format!("target \"{}\": TLS to the server", target.name))?;
            let client_tls = match (redis.client_tls, &ca) {
                (ClientTls::Refuse, _) => None,
                (ClientTls::Terminate, Some(ca)) => Some(ca.clone()),
                (ClientTls::Terminate, None) => anyhow::bail!(
                    "target \"{}\": client_tls = \"terminate\" but no agent CA was loaded",
                    target.name
                ),
            };
            targets.push(Some(Arc::new(RedisTargetRuntime {
                upstream,
                client_tls,
                server_name: redis.server_name.clone(),
                credential,
                user: redis.user.clone(),
            })));
        }
        Ok(RedisRuntime { targets })
    }

    /// The runtime of target `index`; `None` if it is not a Redis target.
    pub fn target(&self, index: usize) -> Option<&Arc<RedisTargetRuntime>> {
        self.targets.get(index).and_then(Option::as_ref)
    }
}
