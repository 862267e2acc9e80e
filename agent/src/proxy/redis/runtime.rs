//! What the Redis proxy builds once per configuration (at start and at each reload): the
//! agent's credential of each Redis target, read from its file or systemd credential.
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, CredentialRef, Protocol};
use crate::credential::{CredentialSource, Secret};

/// Per-target state of a `protocol = "redis"` target.
pub struct RedisTargetRuntime {
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
    /// Reads the credentials of `config`'s Redis targets. Errors name the target and the
    /// key, never the secret.
    pub fn build(config: &Config) -> anyhow::Result<RedisRuntime> {
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
            let credential = match &redis.credential {
                None => None,
                Some(r @ CredentialRef::File(path)) => Some(
                    CredentialSource::File(path.clone())
                        .load()
                        .with_context(|| {
                            format!("target \"{}\": {}", target.name, r.key("password_file"))
                        })?,
                ),
                Some(r @ CredentialRef::Systemd(name)) => Some(
                    CredentialSource::Systemd(name.clone())
                        .load()
                        .with_context(|| {
                            format!("target \"{}\": {}", target.name, r.key("password_file"))
                        })?,
                ),
            };
            targets.push(Some(Arc::new(RedisTargetRuntime {
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
