//! What `run` reads from the files a configuration names before it binds or attaches
//! anything (credentials, keys, certificates, CA files, JWKS, decision keys, the
//! shipping secret, the approver group), and what `policy check` reads the same way, so
//! a file the check passes is not one the agent then refuses.
//!
//! `run` loads with [`StateAccess::Create`] (the agent's own keys and CAs are created
//! at the first start); `policy check` with [`StateAccess::ReadOnly`]: what exists in
//! the state directory is loaded and checked, what does not is left for the agent to
//! create, and nothing is written.
use std::path::PathBuf;

use anyhow::Context as _;

use crate::approvals::token::DecisionKeys;
use crate::config::Config;
use crate::evidence::{self, HostKey};
use crate::proxy::{self, StateAccess};
use crate::ship::{Budget, Shipper};
use crate::{approvals, attest};

/// The host's journal signing key, its host id and the key's file.
pub type HostIdentity = (HostKey, String, PathBuf);

/// Everything loaded from the configuration's files.
pub struct Loaded {
    /// The targets' runtime (credentials, TLS, CAs, masking key).
    pub snapshot: proxy::Snapshot,
    /// The journal signing key and host id; `None` only in a read-only check before
    /// the agent's first start (the agent creates them).
    pub host: Option<HostIdentity>,
    /// `[agent] approver_group`, resolved.
    pub approver_gid: Option<u32>,
    /// The `[[oidc_issuer]]`s with their JWKS.
    pub verifier: attest::Verifier,
    /// `[approvals]` decision keys, when tokens are accepted.
    pub decision_keys: Option<DecisionKeys>,
    /// The shipper (its secret read), when `[shipping]` or `[retention]` is set.
    pub shipper: Option<Shipper>,
    /// The disk budget flag the shipper updates.
    pub budget: Budget,
}

/// Loads what `config` names, in `run`'s order; the first failure names its section
/// and file.
pub fn load(config: &Config, access: StateAccess) -> anyhow::Result<Loaded> {
    // Credentials, keys and certificates: a missing password file fails the start
    // instead of every session.
    let snapshot = proxy::Snapshot::build_with(std::sync::Arc::new(config.clone()), access)?;
    let host = host_identity(config, access).context("preparing the journal signing key")?;
    let approver_gid = config
        .agent
        .approver_group
        .as_ref()
        .map(approvals::server::resolve_group)
        .transpose()
        .context("[agent] approver_group")?;
    let verifier = attest::load_issuers(&config.attest).context("loading the OIDC issuers")?;
    let decision_keys =
        DecisionKeys::load(&config.approvals).context("loading the [approvals] decision keys")?;
    let budget = Budget::new();
    let shipper = if config.ship.is_active() {
        Some(
            Shipper::new(
                &config.ship,
                &config.agent.journal,
                &config.agent.state_dir,
                budget.clone(),
            )
            .context("preparing the shipping of journal segments")?
            .with_streams_opt(crate::stream::positions(
                &config.streams,
                &config.agent.state_dir,
            )),
        )
    } else {
        None
    };
    Ok(Loaded {
        snapshot,
        host,
        approver_gid,
        verifier,
        decision_keys,
        shipper,
        budget,
    })
}

fn host_identity(
    config: &Config,
    access: StateAccess,
) -> Result<Option<HostIdentity>, evidence::EvidenceError> {
    let (settings, state_dir) = (&config.evidence, &config.agent.state_dir);
    if access == StateAccess::Create {
        return evidence::host_identity(settings, state_dir, true).map(Some);
    }
    let key_path = settings.signing_key_path(state_dir);
    if !key_path.exists() {
        return Ok(None);
    }
    if settings.host_id.is_some() || state_dir.join("host-id").exists() {
        return evidence::host_identity(settings, state_dir, false).map(Some);
    }
    // The key exists, the host id is created at the next start: check the key alone.
    HostKey::load(&key_path).map(|_| None)
}
