//! What the PostgreSQL proxy builds once per configuration (at start and at each
//! reload): TLS configurations, credentials read from their files, the masking key, and
//! the rules of each workload × target pair.
use std::sync::Arc;

use anyhow::Context;

use crate::config::{ClientTls, Config, Mode, Protocol};
use crate::credential::Secret;
use crate::mask::{HashKey, SessionMasks};
use crate::policy::PolicyMode;
use crate::tls::{AgentCa, UpstreamTls};

use super::flow::SessionRules;
use crate::proxy::StateAccess;

/// Per-target state, indexed like [`Config::targets`].
pub struct TargetRuntime {
    pub upstream: UpstreamTls,
    /// Whether the agent terminates the client's TLS for this target (with a
    /// certificate of [`PgRuntime::ca`] for the address the client dialled).
    pub client_tls: bool,
    /// `server_name`: also a name of the certificate clients get.
    pub server_name: Option<String>,
    /// The password the agent logs in with, when it holds one.
    pub credential: Option<Secret>,
}

/// Everything the PostgreSQL sessions of one configuration share.
pub struct PgRuntime {
    targets: Vec<Option<Arc<TargetRuntime>>>,
    key: Arc<HashKey>,
    /// The local CA, when a target terminates client TLS.
    pub ca: Option<Arc<AgentCa>>,
}

impl PgRuntime {
    /// Builds the runtime of `config`: reads credentials, loads (or creates) the masking
    /// key and the local CA in the state directory. Errors name the target and the file.
    pub fn build(config: &Config, access: StateAccess) -> anyhow::Result<PgRuntime> {
        let state_dir = &config.agent.state_dir;
        let needs_key = !config.masks.is_empty();
        let key_path = state_dir.join("mask.key");
        let key = if needs_key && access == StateAccess::ReadOnly && key_path.exists() {
            Arc::new(
                HashKey::load(&key_path)
                    .with_context(|| format!("masking key {}", key_path.display()))?,
            )
        } else if needs_key && access == StateAccess::Create {
            std::fs::create_dir_all(state_dir)
                .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
            let path = state_dir.join("mask.key");
            Arc::new(
                HashKey::load_or_create(&path)
                    .with_context(|| format!("masking key {}", path.display()))?,
            )
        } else {
            // No mask can hash anything: a throwaway key keeps the types simple.
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).context("no randomness for a key")?;
            Arc::new(HashKey::from_bytes(bytes))
        };
        // One CA for every protocol (the HTTP runtime borrows it): loading it twice could
        // race two creations at the first start.
        let needs_ca = config.targets.iter().any(|t| {
            t.postgres
                .as_ref()
                .is_some_and(|p| p.client_tls == ClientTls::Terminate)
                || t.http
                    .as_ref()
                    .is_some_and(|h| h.client_tls == ClientTls::Terminate)
                || t.mysql
                    .as_ref()
                    .is_some_and(|m| m.client_tls == ClientTls::Terminate)
                || t.redis
                    .as_ref()
                    .is_some_and(|r| r.client_tls == ClientTls::Terminate)
        });
        let ca = if needs_ca {
            let dir = state_dir.join("tls");
            // Loading writes nothing once the certificate exists (without its key, the
            // load refuses).
            let complete = dir.join(crate::tls::ca::CA_CERT_FILE).exists();
            let (dir, _scratch) = access
                .dir(&dir, complete)
                .context("a temporary directory for a throwaway CA")?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            Some(Arc::new(AgentCa::load_or_create(&dir).with_context(
                || format!("local TLS CA in {}", dir.display()),
            )?))
        } else {
            None
        };
        let mut targets = Vec::with_capacity(config.targets.len());
        for target in &config.targets {
            let Some(pg) = target
                .postgres
                .as_ref()
                .filter(|_| target.protocol == Protocol::Postgres)
            else {
                targets.push(None);
                continue;
            };
            let upstream = UpstreamTls::new(
                pg.tls.into(),
                pg.ca_file.as_deref(),
                pg.server_name.as_deref(),
            )
            .with_context(|| format!("target \"{}\": TLS to the server", target.name))?;
            let client_tls = pg.client_tls == ClientTls::Terminate;
            let credential = pg
                .credential
                .as_ref()
                .map(|c| c.load(&target.name, "password_file"))
                .transpose()?;
            targets.push(Some(Arc::new(TargetRuntime {
                server_name: pg.server_name.clone(),
                upstream,
                client_tls,
                credential,
            })));
        }
        Ok(PgRuntime { targets, key, ca })
    }

    /// The runtime of target `index` of the configuration this runtime was built from;
    /// `None` if that target is not a PostgreSQL one. (The proxy reads a configuration
    /// and its runtime as one snapshot, see `proxy::Snapshot`, so an index never meets
    /// another configuration's runtime.)
    pub fn target(&self, index: usize) -> Option<&Arc<TargetRuntime>> {
        self.targets.get(index).and_then(Option::as_ref)
    }

    /// The rules of one session of `workload` on `target`, with the session's attested
    /// claims (`None`: unattested; see [`crate::attest`]).
    pub fn rules_for(
        &self,
        config: &Config,
        workload: &str,
        target: &str,
        claims: Option<&crate::policy::Claims>,
    ) -> SessionRules {
        let policy = config
            .policies
            .for_session(workload, target, claims)
            .cloned();
        let enforce = match policy.as_ref().and_then(|p| p.mode) {
            Some(PolicyMode::Enforce) => true,
            Some(PolicyMode::Observe) => false,
            None => config.agent.mode == Mode::Enforce,
        };
        let mut rules: Vec<_> = config
            .masks
            .iter()
            .filter(|m| m.applies_to(workload, target))
            .cloned()
            .collect();
        // AWS answers carry credentials and secrets by field name: masked whatever the
        // configuration says (after its own rules, which may mask them differently).
        if config
            .targets
            .iter()
            .any(|t| t.name == target && t.protocol == crate::config::Protocol::Aws)
        {
            rules.push(crate::mask::MaskRule::builtin(
                crate::protocol::aws::AWS_SECRET_FIELDS_RULE,
                crate::protocol::aws::AWS_SECRET_FIELDS,
            ));
        }
        // What commands print on SSH targets goes through the credential detectors
        // (keys, tokens, private keys) whatever the configuration says.
        if config
            .targets
            .iter()
            .any(|t| t.name == target && t.protocol == crate::config::Protocol::Ssh)
        {
            rules.push(crate::mask::MaskRule::builtin_detectors(
                crate::proxy::ssh::SSH_SECRETS_RULE,
                crate::proxy::ssh::ssh_secret_detectors(),
            ));
        }
        let masks = if rules.is_empty() {
            SessionMasks::none()
        } else {
            SessionMasks::new(rules, self.key.clone())
        };
        SessionRules {
            record_results: policy
                .as_ref()
                .map(|p| p.record_results)
                .unwrap_or_default(),
            policy,
            enforce,
            masks,
        }
    }
}
