//! What SSH targets need at run time, built once per configuration (see
//! `proxy::Snapshot`): the agent's SSH CA and host key, and per target the login key
//! (and certificate), the host key check, the names for host certificates.
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use russh::keys::{Certificate, PrivateKey};

use super::ca::{parse_private_key, SshCa};
use crate::config::{Config, CredentialRef, HostKeyCheck, Protocol};
use crate::credential::CredentialSource;
use crate::proxy::StateAccess;

/// The SSH directory under the state directory.
pub const SSH_DIR: &str = "ssh";

/// One SSH target's run-time settings.
pub struct SshTargetRuntime {
    /// The key the agent logs into the host with (never logged, never journaled).
    pub key: Arc<PrivateKey>,
    /// `<key_file>-cert.pub`, when present: the agent logs in with the certificate.
    pub cert: Option<Certificate>,
    /// The login key's fingerprint, for the journal.
    pub key_fingerprint: String,
    pub user: Option<String>,
    pub host_key: HostKeyCheck,
    pub host_names: Vec<String>,
    pub mask_output: bool,
}

impl std::fmt::Debug for SshTargetRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTargetRuntime")
            .field("key", &self.key_fingerprint)
            .field("cert", &self.cert.is_some())
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The SSH runtime of one configuration.
#[derive(Default)]
pub struct SshRuntime {
    /// `Some` when any target is `protocol = "ssh"`.
    pub ca: Option<Arc<SshCa>>,
    targets: Vec<Option<Arc<SshTargetRuntime>>>,
}

impl SshRuntime {
    /// Loads the CA (creating it on first use) and every SSH target's key. Errors name
    /// the target and the file, never key material.
    pub fn build(config: &Config, access: StateAccess) -> anyhow::Result<SshRuntime> {
        let mut runtime = SshRuntime::default();
        if !config.targets.iter().any(|t| t.protocol == Protocol::Ssh) {
            return Ok(runtime);
        }
        let dir = config.agent.state_dir.join(SSH_DIR);
        let complete = [super::ca::CA_KEY_FILE, super::ca::HOST_KEY_FILE]
            .iter()
            .all(|name| dir.join(name).exists());
        let (dir, _scratch) = access
            .dir(&dir, complete)
            .context("a temporary directory for a throwaway SSH CA")?;
        runtime.ca = Some(Arc::new(
            SshCa::load_or_create(&dir)
                .with_context(|| format!("the agent's SSH CA in {}", dir.display()))?,
        ));
        for target in &config.targets {
            let Some(ssh) = &target.ssh else {
                runtime.targets.push(None);
                continue;
            };
            let source = match &ssh.key {
                CredentialRef::File(p) => CredentialSource::File(p.clone()),
                CredentialRef::Systemd(n) => CredentialSource::Systemd(n.clone()),
            };
            let secret = source
                .load()
                .with_context(|| format!("target {}: the login key ({source})", target.name))?;
            let text = secret
                .expose_str()
                .with_context(|| format!("target {}: the login key ({source})", target.name))?;
            let key = parse_private_key(text).map_err(|why| {
                anyhow::anyhow!("target {}: the login key ({source}): {why}", target.name)
            })?;
            let cert = match &ssh.key {
                CredentialRef::File(p) => load_cert_beside(p)
                    .with_context(|| format!("target {}: the login certificate", target.name))?,
                CredentialRef::Systemd(_) => None,
            };
            if let HostKeyCheck::KnownHosts(path) = &ssh.host_key {
                std::fs::read_to_string(path).with_context(|| {
                    format!("target {}: known_hosts {}", target.name, path.display())
                })?;
            }
            let key_fingerprint = super::known_hosts::fingerprint(key.public_key().key_data());
            runtime.targets.push(Some(Arc::new(SshTargetRuntime {
                key: Arc::new(key),
                cert,
                key_fingerprint,
                user: ssh.user.clone(),
                host_key: ssh.host_key.clone(),
                host_names: ssh.host_names.clone(),
                mask_output: ssh.mask_output,
            })));
        }
        Ok(runtime)
    }

    /// The runtime of the target at `index` (of the same configuration).
    pub fn target(&self, index: usize) -> Option<&Arc<SshTargetRuntime>> {
        self.targets.get(index).and_then(Option::as_ref)
    }
}

/// `<key>-cert.pub`, as OpenSSH looks for it.
fn load_cert_beside(key: &Path) -> anyhow::Result<Option<Certificate>> {
    let mut path = key.as_os_str().to_owned();
    path.push("-cert.pub");
    let path = std::path::PathBuf::from(path);
    match std::fs::read_to_string(&path) {
        Ok(text) => Certificate::from_openssh(text.trim())
            .map(Some)
            .with_context(|| format!("{} is not an OpenSSH certificate", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
