//! The configuration file as serde reads it, before validation.
//!
//! Every field that validation may reject is `Spanned`, so that the error can point
//! at the value in the file. `deny_unknown_fields` everywhere turns typos into
//! errors instead of silently ignored settings.
use serde::Deserialize;
use toml::Spanned;

use super::{ClientTls, FailMode, JournalFsync, Mode, UpstreamTlsMode};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub agent: Spanned<RawAgent>,
    #[serde(default)]
    pub workload: Vec<Spanned<RawWorkload>>,
    #[serde(default)]
    pub target: Vec<Spanned<RawTarget>>,
    #[serde(default)]
    pub policy: Vec<Spanned<crate::policy::RawPolicy>>,
    #[serde(default)]
    pub mask: Vec<Spanned<crate::mask::RawMaskRule>>,
    /// `[lineage]` (see [`crate::lineage::config`]).
    pub lineage: Option<crate::lineage::config::RawLineage>,
    // [shipping] and [retention] (see crate::ship::config).
    pub shipping: Option<Spanned<crate::ship::RawShipping>>,
    pub retention: Option<Spanned<crate::ship::RawRetention>>,
    // attest: `[[oidc_issuer]]` and `[attest]` (see crate::attest::config).
    #[serde(default)]
    pub oidc_issuer: Vec<Spanned<crate::attest::RawOidcIssuer>>,
    pub attest: Option<Spanned<crate::attest::RawAttest>>,
    pub approvals: Option<Spanned<crate::approvals::RawApprovals>>,
    pub evidence: Option<Spanned<crate::evidence::RawEvidence>>,
    /// `[[stream]]` (see [`crate::stream::config`]).
    #[serde(default)]
    pub stream: Vec<Spanned<crate::stream::RawStream>>,
}

/// `[agent]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub mode: Mode,
    pub journal: Spanned<String>,
    pub listen_port: Option<Spanned<u16>>,
    pub fail: Option<FailMode>,
    pub bpffs: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<usize>>,
    pub max_connections_per_workload: Option<Spanned<usize>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub drain_timeout: Option<Spanned<String>>,
    pub rescan_interval: Option<Spanned<String>>,
    pub cgroup_root: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub journal_fsync: Option<JournalFsync>,
    pub approvals_socket: Option<Spanned<String>>,
    pub approver_group: Option<Spanned<super::GroupRef>>,
    pub metrics_listen: Option<Spanned<String>>,
}

/// One `[[workload]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkload {
    pub name: Option<Spanned<String>>,
    pub cgroup: Option<Spanned<String>>,
    pub uid: Option<u32>,
    pub aws_role_arn: Option<Spanned<String>>,
    pub kube_impersonate: Option<Spanned<String>>,
    pub kube_impersonate_groups: Option<Vec<Spanned<String>>>,
}

/// One `[[target]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub protocol: Option<Spanned<String>>,
    // PostgreSQL and HTTP only (checked in validation, so the error can say why).
    pub tls: Option<Spanned<UpstreamTlsMode>>,
    pub ca_file: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub client_tls: Option<Spanned<ClientTls>>,
    pub password_file: Option<Spanned<String>>,
    pub credential: Option<Spanned<String>>,
    /// PostgreSQL only.
    pub user: Option<Spanned<String>>,
    /// MySQL only: caching_sha2_password's RSA key (see `super::ServerPublicKey`).
    pub server_public_key: Option<Spanned<String>>,
    pub get_server_public_key: Option<Spanned<bool>>,
    /// HTTP only: `"Header-Name: value with {secret}"`.
    pub inject: Option<Spanned<String>>,
    /// HTTP only: the largest body (JSON) or line (NDJSON, SSE, text) masked, `"4MiB"`.
    pub mask_body_limit: Option<Spanned<crate::size::RawSize>>,
    /// `"host"` or `"container"`: only connections made in that kind of network
    /// namespace match (default: both).
    pub netns: Option<Spanned<String>>,
    /// AWS only (see `super::AwsTarget`).
    pub aws_credentials_file: Option<Spanned<String>>,
    pub aws_profile: Option<Spanned<String>>,
    pub aws_instance_role: Option<Spanned<bool>>,
    pub aws_sts_endpoint: Option<Spanned<String>>,
    pub accept_any_client_key: Option<Spanned<bool>>,
    /// aws-imds only.
    pub aws_region: Option<Spanned<String>>,
    pub aws_role_name: Option<Spanned<String>>,
    /// Kubernetes only (see `super::KubeTarget`).
    pub token_file: Option<Spanned<String>>,
    pub client_cert_file: Option<Spanned<String>>,
    pub client_key_file: Option<Spanned<String>>,
    /// SSH only (see `super::SshTarget`).
    pub key_file: Option<Spanned<String>>,
    pub known_hosts: Option<Spanned<String>>,
    pub host_key: Option<Spanned<String>>,
    pub host_names: Option<Vec<Spanned<String>>>,
    pub mask_output: Option<Spanned<bool>>,
}
