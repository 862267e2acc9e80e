//! The agent's configuration: which workloads to intercept, which destinations
//! ("targets") to proxy, and how the agent itself runs.
//!
//! The file is TOML, written by SREs. It is parsed once into raw serde structs
//! ([`raw`]) and then validated into the types below, which cannot hold an invalid
//! value: a [`Config`] always has at least one target, unique target names, usable
//! ports, compiled cgroup patterns and positive limits. Every error, syntax or
//! semantic, carries the file name, line and column (see [`ConfigError`]).
//!
//! A minimal file:
//!
//! ```toml
//! [agent]
//! mode = "enforce"                      # or "observe"
//! journal = "/var/lib/nhi-agent/journal.db"
//!
//! [[workload]]
//! name = "backup-bot"
//! cgroup = "system.slice/backup*.service"
//!
//! [[target]]
//! name = "orders-db"
//! address = "10.0.0.5:5432"
//! protocol = "tcp"
//! ```
mod destination;
mod error;
mod pattern;
mod raw;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use destination::Destination;
pub use error::ConfigError;
pub use pattern::CgroupPattern;

use raw::{RawAgent, RawConfig, RawTarget, RawWorkload};

/// Default for `[agent] listen_port`.
pub const DEFAULT_LISTEN_PORT: u16 = 15001;
/// Default for `[agent] bpffs`.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/nhi-agent";
/// Default for `[agent] max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default for `[agent] max_connections_per_workload`: three quarters of
/// `max_connections` (at least 1). One runaway workload then always leaves a quarter of
/// the slots to the others, while a host with a single workload keeps most of its
/// capacity (a smaller fraction would cut that host's connections for no one's benefit).
pub fn default_max_connections_per_workload(max_connections: usize) -> usize {
    (max_connections.saturating_mul(3) / 4).max(1)
}
/// Default for `[agent] connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `[agent] idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default for `[agent] drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `[agent] rescan_interval`.
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(5);

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[agent]`: how the agent runs.
    pub agent: AgentSettings,
    /// `[[workload]]` tables, in file order (order matters: see [`Config::workload_for`]).
    pub workloads: Vec<Workload>,
    /// `[[target]]` tables, in file order; never empty, names unique.
    pub targets: Vec<Target>,
    /// `[[policy]]` tables (see [`crate::policy`]): what decoded statements may do.
    pub policies: crate::policy::PolicySet,
    /// `[[mask]]` tables (see [`crate::mask`]): what values are masked in results.
    pub masks: Vec<crate::mask::MaskRule>,
    /// `[lineage]` (see [`crate::lineage`]): exec/fork/exit tracking of intercepted cgroups.
    pub lineage: crate::lineage::config::LineageSettings,
    /// `[shipping]` and `[retention]` (see [`crate::ship`]): upload of sealed segments,
    /// local retention, disk budget.
    pub ship: crate::ship::ShipConfig,
    /// `[[stream]]` (see [`crate::stream`]): live event streams to SIEMs.
    pub streams: Vec<crate::stream::StreamConfig>,
    /// `[[oidc_issuer]]` and `[attest]` (see [`crate::attest`]): CI job identity.
    pub attest: crate::attest::AttestConfig,
    /// `[approvals]` (see [`crate::approvals::config`]): announcements and signed decisions.
    pub approvals: crate::approvals::ApprovalsConfig,
    /// `[evidence]` (see [`crate::evidence::config`]): segment rotation, key, host id.
    pub evidence: crate::evidence::EvidenceSettings,
    /// The file the configuration was loaded from; `None` when parsed from a string.
    pub source: Option<PathBuf>,
}

/// `[agent] mode`: what happens to intercepted connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `"enforce"`: connections are proxied and journaled, and refused if that fails.
    Enforce,
    /// `"observe"`: connections are proxied and journaled, never refused.
    Observe,
}

/// `[agent] fail`: what happens to intercepted connections while the agent is not
/// running (its proxy does not answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// `"closed"`: they fail, so nothing reaches a target unjournaled.
    Closed,
    /// `"open"`: they go straight to the target, unjournaled.
    Open,
}

/// `[agent]`: how the agent itself runs. Every key but `mode` and `journal` is optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    /// `mode` (required): `"enforce"` or `"observe"`.
    pub mode: Mode,
    /// `journal` (required): absolute path of the journal database.
    pub journal: PathBuf,
    /// `listen_port` (15001): the port the proxy listens on, on 127.0.0.1 and ::1.
    pub listen_port: u16,
    /// `fail` (`"closed"` in enforce mode, `"open"` in observe mode): what happens
    /// to intercepted connections when the agent is not running.
    pub fail: FailMode,
    /// `bpffs` ("/sys/fs/bpf/nhi-agent"): absolute directory on the BPF filesystem
    /// where the agent pins its programs and maps.
    pub bpffs: PathBuf,
    /// `max_connections` (4096, at least 1): proxied connections open at once.
    pub max_connections: usize,
    /// `max_connections_per_workload` (3/4 of `max_connections`, at least 1, at most
    /// `max_connections`): audited connections one workload may have open at once; over
    /// it, its new connections are refused while other workloads still connect.
    pub max_connections_per_workload: usize,
    /// `connect_timeout` ("10s", humantime syntax, not zero): how long the proxy
    /// waits to connect to the target.
    pub connect_timeout: Duration,
    /// `idle_timeout` ("1h", not zero): a proxied connection with no traffic in
    /// either direction for that long is closed.
    pub idle_timeout: Duration,
    /// `drain_timeout` ("30s"): how long SIGTERM waits for open connections to finish.
    pub drain_timeout: Duration,
    /// `rescan_interval` ("5s", not zero): how often the cgroup tree is rescanned
    /// to pick up new cgroups.
    pub rescan_interval: Duration,
    /// `cgroup_root` (discovered from /proc/self/mountinfo): absolute path of the
    /// cgroup2 mount, for machines where discovery picks the wrong one.
    pub cgroup_root: Option<PathBuf>,
    /// `state_dir` (the journal's directory): absolute directory for the agent's own
    /// secrets: the masking hash key (`mask.key`) and the local TLS CA (`tls/`).
    pub state_dir: PathBuf,
    /// `journal_fsync` (`"group"`): when a protocol event (e.g. a SQL statement) counts as
    /// recorded. `"group"`: once it is written to the journal's pre-log (it survives an
    /// agent crash; it reaches the disk with the next group commit, within milliseconds).
    /// `"each"`: once the commit that holds it is on disk (survives power loss; costs
    /// an fsync wait per statement, shared between concurrent sessions).
    pub journal_fsync: JournalFsync,
    /// `approvals_socket` ("/run/nhi-agent/approvals.sock"): absolute path of the Unix
    /// socket where `nhi-agent approvals` lists and decides held statements.
    pub approvals_socket: PathBuf,
    /// `approver_group` (none: root only): a group name or numeric gid whose members
    /// may approve or deny held statements, besides root.
    pub approver_group: Option<GroupRef>,
    /// `metrics_listen` (off): `address:port` where `GET /metrics` serves Prometheus
    /// metrics (see [`crate::metrics`]). They name workloads and targets: bind loopback or
    /// a management address.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Default `[agent] approvals_socket`.
pub const DEFAULT_APPROVALS_SOCKET: &str = "/run/nhi-agent/approvals.sock";

/// `[agent] approver_group` (defined by `approvals`, which resolves it).
pub use crate::approvals::config::GroupRef;

/// `[agent] journal_fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JournalFsync {
    /// Forward once the event is written to the pre-log (in the OS).
    #[default]
    Group,
    /// Forward once the event is fsynced.
    Each,
}

/// `[[workload]]`: a set of processes to intercept, selected by cgroup and/or uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `name` (derived from each matched cgroup, see
    /// [`crate::identity::derive_workload_name`]): how the journal calls it.
    pub name: Option<String>,
    /// `cgroup` (`"**"`, every cgroup): glob over cgroup paths relative to the
    /// cgroup2 mount; see [`CgroupPattern`] for the semantics.
    pub cgroup: CgroupPattern,
    /// `uid` (any): only processes running as this (real) uid.
    /// At least one of `cgroup` and `uid` must be given.
    pub uid: Option<u32>,
    /// `aws_role_arn`: on `protocol = "aws"` targets, the workload's calls are signed
    /// with this role, assumed through STS by the agent's credential, one role session
    /// per journal session (`RoleSessionName` `nhi-<session>-<workload>`,
    /// `SourceIdentity` the workload), so CloudTrail names the session.
    pub aws_role_arn: Option<String>,
    /// `kube_impersonate` and `kube_impersonate_groups`: on `protocol = "kubernetes"`
    /// targets, the workload's requests carry `Impersonate-User` (and
    /// `Impersonate-Group`), so the API server authorizes and audits them as that user
    /// rather than as the agent's credential.
    pub kube_impersonate: Option<KubeImpersonation>,
}

/// Who a workload's Kubernetes requests impersonate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeImpersonation {
    /// `Impersonate-User` (`system:serviceaccount:ci:deployer`).
    pub user: String,
    /// `Impersonate-Group`, one header each.
    pub groups: Vec<String>,
}

impl Workload {
    /// The name to journal for a connection from `cgroup_path`: the configured name,
    /// or one derived from the cgroup (`"backup.service"`, `"container:0123456789ab"`).
    pub fn display_name(&self, cgroup_path: &str) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => crate::identity::derive_workload_name(cgroup_path),
        }
    }

    /// The workload as a metrics label: its configured name, else its selector (never a
    /// name derived per cgroup, which would make one series per container or job).
    pub fn metric_label(&self) -> String {
        match (&self.name, self.uid) {
            (Some(name), _) => name.clone(),
            (None, Some(uid)) => format!("cgroup={} uid={uid}", self.cgroup),
            (None, None) => format!("cgroup={}", self.cgroup),
        }
    }
}

/// `[[target]]`: a destination whose connections are intercepted and journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `name` (required, unique): how the journal calls it.
    pub name: String,
    /// `address` (required): `ip:port`, `[ipv6]:port`, `CIDR:port`,
    /// `[ipv6-CIDR]:port` or `*:port`; never a host name.
    pub destination: Destination,
    /// `protocol` (`"tcp"`): how the proxy handles the stream.
    pub protocol: Protocol,
    /// PostgreSQL settings; `Some` exactly when `protocol = "postgres"`.
    pub postgres: Option<PostgresTarget>,
    /// HTTP settings; `Some` exactly when `protocol = "http"` or `"aws"` (an AWS API is
    /// served over HTTP: TLS on both legs, body limits).
    pub http: Option<HttpTarget>,
    /// AWS settings; `Some` exactly when `protocol = "aws"`.
    pub aws: Option<AwsTarget>,
    /// Metadata-service settings; `Some` exactly when `protocol = "aws-imds"`.
    pub imds: Option<ImdsTarget>,
    /// SSH settings; `Some` exactly when `protocol = "ssh"`.
    pub ssh: Option<SshTarget>,
    /// Kubernetes settings; `Some` exactly when `protocol = "kubernetes"`.
    pub kube: Option<KubeTarget>,
    /// MySQL / MariaDB settings (the PostgreSQL keys: `tls`, `ca_file`, `server_name`,
    /// `client_tls`, `password_file` / `credential`, `user`); `Some` exactly when
    /// `protocol = "mysql"`.
    pub mysql: Option<MysqlTarget>,
    /// Redis settings; `Some` exactly when `protocol = "redis"`.
    pub redis: Option<RedisTarget>,
    /// `netns` (both): the network namespaces whose connections match: `"host"` (the
    /// agent's), `"container"` (any other), both when unset. The address is always
    /// the one the client dialled, as its namespace sees it.
    pub netns: NetnsScope,
}

/// The `[[target]]` keys of `protocol = "ssh"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// `key_file` (an OpenSSH private key, mode 0600, unencrypted; a certificate beside
    /// it as `<key_file>-cert.pub` is used when present) or `credential` (a systemd
    /// credential holding such a key): what the agent logs into the host with.
    pub key: CredentialRef,
    /// `user`: who the agent logs in as (default: the user the client asked for; a
    /// policy's `ssh_user` overrides it per workload).
    pub user: Option<String>,
    /// How the host's key is verified: `known_hosts` or `host_key` (exactly one).
    pub host_key: HostKeyCheck,
    /// `host_names`: names the agent's host certificate names besides the address the
    /// client dialled (the names bots use in `ssh NAME`).
    pub host_names: Vec<String>,
    /// `mask_output` (`false`): the text detectors also mask what the bot receives
    /// (stdout/stderr), not only the journal.
    pub mask_output: bool,
}

/// How an SSH target's host key is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// `known_hosts = "/path"`: an OpenSSH known_hosts file (plain or hashed names;
    /// `@cert-authority` lines trust host certificates; `@revoked` lines refuse).
    KnownHosts(PathBuf),
    /// `host_key = "SHA256:..."`: the pinned fingerprint of the host's key (as
    /// `ssh-keygen -lf` prints it).
    Fingerprint(String),
}

/// Which network namespaces a target applies to (`netns` on a `[[target]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetnsScope {
    #[default]
    Any,
    Host,
    Container,
}

impl NetnsScope {
    /// Whether a connection made in the agent's namespace (`in_container == false`)
    /// or another one matches.
    pub fn admits(self, in_container: bool) -> bool {
        match self {
            NetnsScope::Any => true,
            NetnsScope::Host => !in_container,
            NetnsScope::Container => in_container,
        }
    }
}

/// The `[[target]]` keys of `protocol = "http"`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpTarget {
    /// `tls` (`"disable"`): TLS from the agent to the server: `disable`, `require` (no
    /// verification without `ca_file`; with it, the chain but not the name) or
    /// `verify-full` (chain and name; against `ca_file`, else the system's roots).
    /// `prefer` has no meaning for HTTP (nothing to negotiate) and is refused.
    pub tls: UpstreamTlsMode,
    /// `ca_file`: absolute path of the CA bundle that verifies the server.
    pub ca_file: Option<PathBuf>,
    /// `server_name`: the name sent as SNI and checked under verify-full (default: the
    /// name the client asked for in its own TLS SNI, else the IP address it dialled);
    /// also a name of the certificate clients get under `client_tls = "terminate"`.
    pub server_name: Option<String>,
    /// `client_tls` (`"refuse"`): `"terminate"` serves HTTPS to the client with a leaf
    /// of the agent CA; `"refuse"` serves plain HTTP and refuses a TLS ClientHello.
    pub client_tls: ClientTls,
    /// `password_file` or `credential`: the secret the agent injects (needs `inject`).
    pub credential: Option<CredentialRef>,
    /// `inject`: the header the agent sets upstream with the secret (needs a credential).
    pub inject: Option<InjectHeader>,
    /// `mask_body_limit` (`"4MiB"`): the largest decoded response body (JSON) or line
    /// (NDJSON, SSE, text) the agent masks; a response that must be masked and exceeds
    /// it is refused (502), never passed raw. Between 1 KiB and 1 GiB.
    pub mask_body_limit: u64,
}

/// The `[[target]]` keys of `protocol = "aws"` (with the HTTP ones: `tls`, `ca_file`,
/// `server_name`, `client_tls` (default `"terminate"`: SDKs speak HTTPS),
/// `mask_body_limit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsTarget {
    /// Where the agent's own AWS credential comes from (exactly one of
    /// `aws_credentials_file`, `credential`, `aws_instance_role = true`).
    pub credentials: AwsCredentialSource,
    /// `accept_any_client_key` (`false`): accept requests signed with any access key
    /// (only the signature's shape is checked), not only the agent's placeholder key.
    pub accept_any_client_key: bool,
    /// `aws_sts_endpoint` (`https://sts.<region>.amazonaws.com`, the region of the
    /// call): where the agent assumes workloads' `aws_role_arn`.
    pub sts_endpoint: Option<String>,
}

/// The `[[target]]` keys of `protocol = "kubernetes"` (with the HTTP ones: `tls`
/// (default `"verify-full"`), `ca_file` (the cluster CA), `server_name`, `client_tls`
/// (default `"terminate"`: kubectl speaks HTTPS), `mask_body_limit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeTarget {
    /// What the agent authenticates to the API server with.
    pub credential: KubeCredential,
}

/// The agent's credential for an API server (exactly one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeCredential {
    /// `token_file` (mode 0600 or stricter) or `credential` (a systemd credential): a
    /// bearer token, sent as `Authorization: Bearer ...`.
    Token(CredentialRef),
    /// `client_cert_file` (PEM, the chain) and `client_key_file` (PEM, mode 0600 or
    /// stricter): a client certificate presented in the TLS handshake.
    ClientCert { cert: PathBuf, key: PathBuf },
}

/// The `[[target]]` keys of `protocol = "aws-imds"` (with the HTTP ones, for what is
/// forwarded to the real metadata service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsTarget {
    /// `aws_region`: the region answered to placement requests (else forwarded).
    pub region: Option<String>,
    /// `aws_role_name` (`"nhi-agent"`): the role name the instance appears to have.
    pub role_name: String,
}

/// The agent's own AWS credential for a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsCredentialSource {
    /// `aws_credentials_file` (an AWS shared-credentials INI file, mode 0600 or
    /// stricter) and `aws_profile` (`"default"`).
    File { path: PathBuf, profile: String },
    /// `credential`: a systemd credential holding such an INI file; `aws_profile`.
    Systemd { name: String, profile: String },
    /// `aws_instance_role = true`: the host's instance role, from the EC2 metadata
    /// service (IMDSv2).
    InstanceRole,
}

/// The smallest `mask_body_limit`.
pub const MIN_MASK_BODY_LIMIT: u64 = 1 << 10;
/// The largest `mask_body_limit` (it is held in memory per masked response).
pub const MAX_MASK_BODY_LIMIT: u64 = 1 << 30;

/// `[[target]] inject = "Authorization: Bearer {secret}"`: the header the agent sets on
/// every forwarded request, replacing any of that name the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectHeader {
    /// The header name, lowercase (a valid HTTP token).
    pub name: String,
    /// The value's text before `{secret}`.
    pub prefix: String,
    /// The value's text after `{secret}`.
    pub suffix: String,
}

impl InjectHeader {
    /// The placeholder the secret replaces.
    pub const PLACEHOLDER: &'static str = "{secret}";

    /// Headers the agent never injects: framing, routing and hop-by-hop headers, which
    /// would change how the request is delivered rather than authenticate it.
    const FORBIDDEN: &'static [&'static str] = &[
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
    ];

    /// Parses `"Name: prefix{secret}suffix"`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<InjectHeader, String> {
        let Some((name, value)) = text.split_once(':') else {
            return Err(format!(
                "inject must be \"Header-Name: value with {}\", e.g. \"Authorization: Bearer {}\" (no ':' found)",
                Self::PLACEHOLDER,
                Self::PLACEHOLDER
            ));
        };
        if name.is_empty() || name.trim() != name {
            return Err(
                "inject: the header name must come first, without spaces before the ':'".into(),
            );
        }
        let valid_token = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_token {
            return Err(format!("inject: {name:?} is not a valid HTTP header name"));
        }
        let lower = name.to_ascii_lowercase();
        if lower.starts_with(':') || Self::FORBIDDEN.contains(&lower.as_str()) {
            return Err(format!(
                "inject: the agent does not set {name:?}: it would change how the request is delivered, not authenticate it"
            ));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.matches(Self::PLACEHOLDER).count() != 1 {
            return Err(format!(
                "inject: the value must hold {} exactly once (got {:?})",
                Self::PLACEHOLDER,
                value
            ));
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err("inject: the value holds a control character".into());
        }
        let (prefix, suffix) = value
            .split_once(Self::PLACEHOLDER)
            .expect("the placeholder was counted");
        Ok(InjectHeader {
            name: lower,
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }
}

/// The `[[target]]` keys that only apply to `protocol = "postgres"`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PostgresTarget {
    /// `tls` (`"disable"`): whether the agent speaks TLS to the server, like libpq's sslmode.
    pub tls: UpstreamTlsMode,
    /// `ca_file`: absolute path of the CA bundle that verifies the server (verify-full).
    pub ca_file: Option<PathBuf>,
    /// `server_name`: the name verify-full checks the server certificate against
    /// (default: the IP address the client connected to).
    pub server_name: Option<String>,
    /// `client_tls` (`"refuse"`): what the agent answers to a client's SSLRequest.
    pub client_tls: ClientTls,
    /// `password_file` or `credential`: a password the agent logs in with itself; the
    /// client then needs none.
    pub credential: Option<CredentialRef>,
    /// `user`: the database user the agent logs in as with the credential (default: the
    /// user the client asked for; a policy's `db_user` overrides it per workload).
    pub user: Option<String>,
}

/// The `[[target]]` keys of `protocol = "mysql"`: those of PostgreSQL targets, with
/// the same meaning (`tls` per libpq's sslmode, `user` who the agent logs in as), and
/// where the RSA key of caching_sha2_password's full authentication without TLS comes
/// from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MysqlTarget {
    pub tls: UpstreamTlsMode,
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub client_tls: ClientTls,
    pub credential: Option<CredentialRef>,
    pub user: Option<String>,
    /// `server_public_key` / `get_server_public_key`.
    pub server_public_key: ServerPublicKey,
}

/// The RSA public key the agent encrypts the password with when a MySQL server asks for
/// caching_sha2_password's full authentication over a connection without TLS (the agent
/// logging in with its credential, or passing on a password a TLS client sent it).
/// Fetched from the server over plain TCP, the key can be replaced by a
/// man-in-the-middle, so the agent does that only when told to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ServerPublicKey {
    /// Neither key set: full authentication without TLS is refused.
    #[default]
    Refuse,
    /// `get_server_public_key = true`: ask the server for its key (as MySQL clients'
    /// `--get-server-public-key`).
    Request,
    /// `server_public_key = "/path/to/public_key.pem"`: this key, never the server's.
    Pinned(PathBuf),
}
/// The `[[target]]` keys of `protocol = "redis"`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedisTarget {
    /// `tls` (`"disable"`): TLS from the agent to the server, started at once (Redis
    /// negotiates nothing): `disable`, `require` (no verification without `ca_file`;
    /// with it the chain but not the name: libpq's `verify-ca`) or `verify-full` (chain
    /// against `ca_file` and name against `server_name`, else the dialled IP address).
    /// `prefer` has no meaning here (there is nothing to fall back from) and is refused.
    pub tls: UpstreamTlsMode,
    /// `ca_file`: absolute path of the CA bundle that verifies the server.
    pub ca_file: Option<PathBuf>,
    /// `server_name`: the SNI sent and the name verify-full checks; also a name of the
    /// certificate clients get under `client_tls = "terminate"`.
    pub server_name: Option<String>,
    /// `client_tls` (`"refuse"`): `"terminate"` terminates a client's TLS (a ClientHello
    /// as its first byte) with a leaf of the agent CA; plain RESP is served either way.
    /// Under `"refuse"` a ClientHello gets a `handshake_failure` alert.
    pub client_tls: ClientTls,
    /// `password_file` or `credential`: the password the agent authenticates with
    /// itself (`AUTH`, or `HELLO ... AUTH`); the client then needs none, and a password
    /// the client sends is never forwarded.
    pub credential: Option<CredentialRef>,
    /// `user`: the ACL user the agent authenticates as with the credential (default:
    /// the `default` user, `AUTH <password>`).
    pub user: Option<String>,
}

/// Where a target's password is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialRef {
    /// `password_file = "/abs/path"`: a file readable by the agent only.
    File(PathBuf),
    /// `credential = "name"`: a systemd credential (`LoadCredential=name:...`), read
    /// from `$CREDENTIALS_DIRECTORY/name`.
    Systemd(String),
}

impl CredentialRef {
    /// Where the secret is read from.
    pub fn source(&self) -> crate::credential::CredentialSource {
        match self {
            CredentialRef::File(path) => crate::credential::CredentialSource::File(path.clone()),
            CredentialRef::Systemd(name) => {
                crate::credential::CredentialSource::Systemd(name.clone())
            }
        }
    }

    /// The key that named it: `file_key` (`password_file`, `token_file`) or
    /// `credential`, for errors.
    pub fn key<'a>(&self, file_key: &'a str) -> &'a str {
        match self {
            CredentialRef::File(_) => file_key,
            CredentialRef::Systemd(_) => "credential",
        }
    }

    /// Reads the secret of target `target`; an error names the target and the key that
    /// named the secret (`file_key` or `credential`), never the secret.
    pub fn load(&self, target: &str, file_key: &str) -> anyhow::Result<crate::credential::Secret> {
        use anyhow::Context;
        self.source()
            .load()
            .with_context(|| format!("target \"{target}\": {}", self.key(file_key)))
    }
}

/// `[[target]] tls`: TLS from the agent to the server (libpq's sslmode semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Never: clear text.
    #[default]
    Disable,
    /// TLS if the server offers it, clear text otherwise.
    Prefer,
    /// TLS or nothing; the certificate is verified only against `ca_file` if given.
    Require,
    /// TLS, certificate chain verified against `ca_file` and its name against
    /// `server_name` (or the IP address).
    VerifyFull,
}

impl From<UpstreamTlsMode> for crate::tls::UpstreamTlsMode {
    fn from(mode: UpstreamTlsMode) -> Self {
        match mode {
            UpstreamTlsMode::Disable => Self::Disable,
            UpstreamTlsMode::Prefer => Self::Prefer,
            UpstreamTlsMode::Require => Self::Require,
            UpstreamTlsMode::VerifyFull => Self::VerifyFull,
        }
    }
}

/// `[[target]] client_tls`: what the agent answers when a client asks for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientTls {
    /// Answer `N`: sslmode=prefer clients go on in clear text (on loopback), clients
    /// that require TLS give up.
    #[default]
    Refuse,
    /// Answer `S` and terminate TLS with a certificate of the agent's local CA.
    Terminate,
}

/// `[[target]] protocol`: how the proxy handles a target's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `"tcp"`: bytes are relayed as they are.
    Tcp,
    /// `"postgres"`: the PostgreSQL wire protocol is decoded, judged by policy and
    /// journaled statement by statement.
    Postgres,
    /// `"http"`: HTTP/1.1 and h2 (prior knowledge) requests are decoded, judged by
    /// policy and journaled request by request.
    Http,
    /// `"aws"`: an AWS API over HTTPS: each call's SigV4 signature checked, the call
    /// judged by action, region and resource, journaled, and signed again with the
    /// agent's credential.
    Aws,
    /// `"aws-imds"`: the EC2 metadata service and the ECS/EKS container-credential
    /// endpoints, answered by the agent with the placeholder credential.
    AwsImds,
    /// `"kubernetes"`: a Kubernetes API server over HTTPS: each request read as the API
    /// server reads it (verb, resource, namespace, name), judged, journaled, and sent
    /// with the agent's credential; Secret values masked; exec streams recorded.
    Kubernetes,
    /// `"ssh"`: the agent is the SSH server the client talks to (with a host
    /// certificate of the agent's SSH CA) and logs into the host with its own key; exec
    /// requests are judged and journaled before they are forwarded, channel data
    /// recorded.
    Ssh,
    /// `"mysql"`: the MySQL / MariaDB client/server protocol is decoded, judged by
    /// policy and journaled command by command.
    Mysql,
    /// `"redis"`: RESP2/RESP3: every command judged by name and keys and journaled
    /// before it is forwarded, replies masked, the agent's credential injected.
    Redis,
}

impl Protocol {
    /// Every protocol, for error messages.
    const ALL: &'static [Protocol] = &[
        Protocol::Tcp,
        Protocol::Postgres,
        Protocol::Http,
        Protocol::Aws,
        Protocol::AwsImds,
        Protocol::Kubernetes,
        Protocol::Ssh,
        Protocol::Mysql,
        Protocol::Redis,
    ];

    /// Whether the target is served as HTTP (`proxy::http`): `http`, `aws`, `aws-imds`,
    /// `kubernetes`.
    pub fn over_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Aws | Protocol::AwsImds | Protocol::Kubernetes
        )
    }

    /// The name used in the configuration and the journal.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
            Protocol::Http => "http",
            Protocol::Aws => "aws",
            Protocol::AwsImds => "aws-imds",
            Protocol::Kubernetes => "kubernetes",
            Protocol::Ssh => "ssh",
            Protocol::Mysql => "mysql",
            Protocol::Redis => "redis",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut config = parse(&text, &path.display().to_string())?;
    config.source = Some(path.to_owned());
    Ok(config)
}

/// Parses and validates configuration text; `origin` names it in error messages
/// (usually the file name).
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let message = with_hint(text, e.span(), e.message());
        ConfigError::invalid(origin, text, e.span(), message)
    })?;
    Config::try_from(raw).map_err(|p| p.into_error(origin, text))
}

/// Adds a hint to serde messages that are correct but unhelpful for a common
/// mistake: `[target]` where `[[target]]` (an array of tables) is meant.
fn with_hint(text: &str, span: Option<Range<usize>>, message: &str) -> String {
    let token = span.and_then(|s| text.get(s)).unwrap_or("").trim_start();
    for table in ["target", "workload"] {
        if token.starts_with(&format!("[{table}]")) && message.contains("expected a sequence") {
            return format!("{message}: write [[{table}]], with double brackets, for each {table}");
        }
    }
    message.to_owned()
}

impl Config {
    /// The workload a connection belongs to: the first workload (in file order)
    /// whose cgroup pattern matches and whose uid, if set, equals `uid`.
    pub fn workload_for(&self, cgroup_path: &str, uid: u32) -> Option<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.uid.is_none_or(|u| u == uid) && w.cgroup.matches(cgroup_path))
    }

    /// What the kernel should be told about this cgroup: `None` = bypass;
    /// `Some(None)` = intercept any uid; `Some(Some(uid))` = intercept only that uid.
    /// If several matching workloads name different uids, or one has no uid, any uid
    /// is intercepted: the kernel filter only has room for one uid per cgroup, and
    /// userspace then filters precisely with [`Config::workload_for`].
    pub fn cgroup_selection(&self, cgroup_path: &str) -> Option<Option<u32>> {
        let mut selection: Option<Option<u32>> = None;
        for w in self
            .workloads
            .iter()
            .filter(|w| w.cgroup.matches(cgroup_path))
        {
            selection = match (selection, w.uid) {
                (None, uid) => Some(uid),
                (Some(Some(a)), Some(b)) if a == b => Some(Some(a)),
                _ => Some(None),
            };
        }
        selection
    }

    /// False when no workload pattern can match any cgroup below `cgroup_path`: the
    /// kernel then leaves cgroups created there alone without asking the agent, even
    /// while no agent runs (see [`CgroupPattern::may_match_below`]).
    pub fn subtree_may_be_selected(&self, cgroup_path: &str) -> bool {
        self.workloads
            .iter()
            .any(|w| w.cgroup.may_match_below(cgroup_path))
    }

    /// The first target (in file order) whose destination matches `addr`, with its
    /// index in [`Config::targets`].
    pub fn target_for(&self, addr: SocketAddr) -> Option<(usize, &Target)> {
        self.targets
            .iter()
            .enumerate()
            .find(|(_, t)| t.destination.matches(addr))
    }

    /// The first target (in file order) whose destination matches `addr` and whose
    /// `netns` scope admits a connection made in a container (`in_container`) or not.
    pub fn target_in(&self, addr: SocketAddr, in_container: bool) -> Option<(usize, &Target)> {
        self.targets
            .iter()
            .enumerate()
            .find(|(_, t)| t.netns.admits(in_container) && t.destination.matches(addr))
    }
}

/// A validation problem: a message and the byte span of the value it is about.
/// [`parse`] turns it into a [`ConfigError`] with line and column.
#[derive(Debug)]
pub struct Problem {
    span: Option<Range<usize>>,
    message: String,
    /// Where a conflicting earlier definition is, for "first defined on line N".
    earlier: Option<Range<usize>>,
}

impl Problem {
    fn at<T>(value: &Spanned<T>, message: impl Into<String>) -> Self {
        Problem {
            span: Some(value.span()),
            message: message.into(),
            earlier: None,
        }
    }

    fn into_error(self, origin: &str, text: &str) -> ConfigError {
        let mut message = self.message;
        if let Some(earlier) = self.earlier {
            let before = &text.as_bytes()[..earlier.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            message.push_str(&format!(" (first defined on line {line})"));
        }
        ConfigError::invalid(origin, text, self.span, message)
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = Problem;

    fn try_from(raw: RawConfig) -> Result<Self, Problem> {
        let agent = AgentSettings::try_from(raw.agent)?;
        let workloads = raw
            .workload
            .into_iter()
            .map(Workload::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        if raw.target.is_empty() {
            // There is no place in the file to point at for something missing.
            return Err(Problem {
                span: None,
                earlier: None,
                message: "no [[target]] is configured: at least one is required, for example\n\n[[target]]\nname = \"orders-db\"\naddress = \"10.0.0.5:5432\"\nprotocol = \"tcp\"\n".to_owned(),
            });
        }
        // Target names key the journal, so two targets with one name would make
        // journal entries ambiguous.
        let mut seen: HashMap<String, Range<usize>> = HashMap::new();
        let mut targets = Vec::with_capacity(raw.target.len());
        for raw_target in raw.target {
            let name = &raw_target.get_ref().name;
            if let Some(earlier) = seen.get(name.get_ref()) {
                let mut problem = Problem::at(
                    name,
                    format!(
                        "duplicate target name \"{}\": target names must be unique",
                        name.get_ref()
                    ),
                );
                problem.earlier = Some(earlier.clone());
                return Err(problem);
            }
            seen.insert(name.get_ref().clone(), name.span());
            targets.push(Target::try_from(raw_target)?);
        }
        let policies = crate::policy::PolicySet::from_raw(raw.policy).map_err(|p| Problem {
            span: p.span,
            earlier: None,
            message: p.message,
        })?;
        let mut masks: Vec<crate::mask::MaskRule> = Vec::with_capacity(raw.mask.len());
        for raw_mask in raw.mask {
            let span = raw_mask.span();
            let rule = crate::mask::MaskRule::from_raw(raw_mask).map_err(|p| Problem {
                span: p.span,
                earlier: None,
                message: p.message,
            })?;
            if masks.iter().any(|m| m.name() == rule.name()) {
                return Err(Problem {
                    span: Some(span),
                    earlier: None,
                    message: format!(
                        "duplicate mask name \"{}\": mask names must be unique (the journal names them)",
                        rule.name()
                    ),
                });
            }
            masks.push(rule);
        }
        let lineage =
            crate::lineage::config::LineageSettings::from_raw(raw.lineage).map_err(|p| {
                Problem {
                    span: p.span,
                    earlier: None,
                    message: p.message,
                }
            })?;
        let ship = crate::ship::ShipConfig::from_raw(raw.shipping, raw.retention).map_err(|p| {
            Problem {
                span: p.span,
                earlier: None,
                message: p.message,
            }
        })?;
        let attest =
            crate::attest::AttestConfig::from_raw(raw.attest, raw.oidc_issuer).map_err(|p| {
                Problem {
                    span: p.span,
                    earlier: None,
                    message: p.message,
                }
            })?;
        let approvals =
            crate::approvals::ApprovalsConfig::from_raw(raw.approvals).map_err(|p| Problem {
                span: p.span,
                earlier: None,
                message: p.message,
            })?;
        let evidence =
            crate::evidence::EvidenceSettings::from_raw(raw.evidence).map_err(|p| Problem {
                span: p.span,
                earlier: None,
                message: p.message,
            })?;
        let streams =
            crate::stream::StreamConfig::from_raw_list(raw.stream).map_err(|p| Problem {
                span: p.span,
                earlier: None,
                message: p.message,
            })?;
        Ok(Config {
            streams,
            lineage,
            agent,
            workloads,
            targets,
            policies,
            masks,
            ship,
            attest,
            approvals,
            evidence,
            source: None,
        })
    }
}

impl TryFrom<Spanned<RawAgent>> for AgentSettings {
    type Error = Problem;

    fn try_from(raw: Spanned<RawAgent>) -> Result<Self, Problem> {
        let raw = raw.into_inner();
        let journal = absolute_path(&raw.journal, "journal")?;
        let state_dir = match &raw.state_dir {
            Some(p) => absolute_path(p, "state_dir")?,
            // An absolute file path always has a parent ("/" at least).
            None => journal
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/")),
        };
        let listen_port = match raw.listen_port {
            None => DEFAULT_LISTEN_PORT,
            Some(p) if *p.get_ref() == 0 => {
                return Err(Problem::at(&p, "listen_port must be between 1 and 65535"));
            }
            Some(p) => p.into_inner(),
        };
        let max_connections = match raw.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) if *n.get_ref() == 0 => {
                return Err(Problem::at(&n, "max_connections must be at least 1"));
            }
            Some(n) => n.into_inner(),
        };
        let max_connections_per_workload = match raw.max_connections_per_workload {
            None => default_max_connections_per_workload(max_connections),
            Some(n) if *n.get_ref() == 0 => {
                return Err(Problem::at(
                    &n,
                    "max_connections_per_workload must be at least 1",
                ));
            }
            Some(n) if *n.get_ref() > max_connections => {
                return Err(Problem::at(
                    &n,
                    format!(
                        "max_connections_per_workload ({}) cannot exceed max_connections ({max_connections})",
                        n.get_ref()
                    ),
                ));
            }
            Some(n) => n.into_inner(),
        };
        Ok(AgentSettings {
            mode: raw.mode,
            journal,
            listen_port,
            fail: raw.fail.unwrap_or(match raw.mode {
                Mode::Enforce => FailMode::Closed,
                Mode::Observe => FailMode::Open,
            }),
            bpffs: match &raw.bpffs {
                Some(p) => absolute_path(p, "bpffs")?,
                None => PathBuf::from(DEFAULT_BPFFS),
            },
            max_connections,
            max_connections_per_workload,
            connect_timeout: duration(
                raw.connect_timeout,
                "connect_timeout",
                DEFAULT_CONNECT_TIMEOUT,
                false,
            )?,
            idle_timeout: duration(
                raw.idle_timeout,
                "idle_timeout",
                DEFAULT_IDLE_TIMEOUT,
                false,
            )?,
            drain_timeout: duration(
                raw.drain_timeout,
                "drain_timeout",
                DEFAULT_DRAIN_TIMEOUT,
                true,
            )?,
            rescan_interval: duration(
                raw.rescan_interval,
                "rescan_interval",
                DEFAULT_RESCAN_INTERVAL,
                false,
            )?,
            cgroup_root: raw
                .cgroup_root
                .as_ref()
                .map(|p| absolute_path(p, "cgroup_root"))
                .transpose()?,
            state_dir,
            journal_fsync: raw.journal_fsync.unwrap_or_default(),
            approvals_socket: match &raw.approvals_socket {
                Some(p) => absolute_path(p, "approvals_socket")?,
                None => PathBuf::from(DEFAULT_APPROVALS_SOCKET),
            },
            approver_group: match raw.approver_group {
                Some(g) if matches!(g.get_ref(), GroupRef::Name(n) if n.is_empty()) => {
                    return Err(Problem::at(&g, "approver_group must not be empty"));
                }
                Some(g) => Some(g.into_inner()),
                None => None,
            },
            metrics_listen: match &raw.metrics_listen {
                Some(addr) => Some(addr.get_ref().parse().map_err(|_| {
                    Problem::at(
                        addr,
                        format!(
                            "metrics_listen \"{}\" is not an address:port (e.g. \"127.0.0.1:9464\")",
                            addr.get_ref()
                        ),
                    )
                })?),
                None => None,
            },
        })
    }
}

/// An absolute path. Relative paths are refused because the agent runs as a
/// service whose working directory nobody thinks about.
fn absolute_path(value: &Spanned<String>, key: &str) -> Result<PathBuf, Problem> {
    let path = PathBuf::from(value.get_ref());
    if value.get_ref().is_empty() {
        return Err(Problem::at(value, format!("{key} must not be empty")));
    }
    if !path.is_absolute() {
        return Err(Problem::at(
            value,
            format!(
                "{key} must be an absolute path (got \"{}\")",
                value.get_ref()
            ),
        ));
    }
    Ok(path)
}

/// A humantime duration ("10s", "1h 30m", "500ms").
fn duration(
    value: Option<Spanned<String>>,
    key: &str,
    default: Duration,
    zero_ok: bool,
) -> Result<Duration, Problem> {
    let Some(value) = value else {
        return Ok(default);
    };
    let parsed = humantime::parse_duration(value.get_ref()).map_err(|e| {
        Problem::at(
            &value,
            format!(
                "invalid duration \"{}\" for {key}: {e} (examples: \"500ms\", \"10s\", \"5m\", \"1h\")",
                value.get_ref()
            ),
        )
    })?;
    if parsed.is_zero() && !zero_ok {
        return Err(Problem::at(
            &value,
            format!("{key} must be longer than zero"),
        ));
    }
    Ok(parsed)
}

impl TryFrom<Spanned<RawWorkload>> for Workload {
    type Error = Problem;

    fn try_from(raw: Spanned<RawWorkload>) -> Result<Self, Problem> {
        let span = raw.span();
        let raw = raw.into_inner();
        if raw.cgroup.is_none() && raw.uid.is_none() {
            return Err(Problem {
                span: Some(span),
                earlier: None,
                message: "a [[workload]] needs `cgroup` (a glob such as \"system.slice/backup*.service\"), `uid`, or both".to_owned(),
            });
        }
        let name = match raw.name {
            Some(name) if name.get_ref().trim().is_empty() => {
                return Err(Problem::at(
                    &name,
                    "workload name must not be empty; remove `name` to derive it from the cgroup",
                ));
            }
            Some(name) => Some(name.into_inner()),
            None => None,
        };
        let cgroup = match &raw.cgroup {
            Some(pattern) => {
                CgroupPattern::new(pattern.get_ref()).map_err(|m| Problem::at(pattern, m))?
            }
            None => CgroupPattern::new(CgroupPattern::ANY)
                .expect("the match-everything pattern compiles"),
        };
        let aws_role_arn = match &raw.aws_role_arn {
            Some(arn) => {
                let v = arn.get_ref();
                let valid = v.starts_with("arn:")
                    && v.split(':').nth(2) == Some("iam")
                    && v.split(':')
                        .nth(5)
                        .is_some_and(|r| r.starts_with("role/") && r.len() > 5)
                    && v.len() <= 2048;
                if !valid {
                    return Err(Problem::at(
                        arn,
                        "aws_role_arn must be a role ARN such as \"arn:aws:iam::123456789012:role/ci-deployer\"",
                    ));
                }
                Some(v.clone())
            }
            None => None,
        };
        let kube_impersonate = match (&raw.kube_impersonate, &raw.kube_impersonate_groups) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(Problem {
                    span: None,
                    earlier: None,
                    message: "kube_impersonate_groups needs kube_impersonate: the API server impersonates groups only with a user".into(),
                })
            }
            (Some(user), groups) => {
                let valid = |v: &str| !v.trim().is_empty() && v.bytes().all(|b| b >= 0x20 && b != 0x7f);
                if !valid(user.get_ref()) {
                    return Err(Problem::at(
                        user,
                        "kube_impersonate must be a Kubernetes user name such as \"system:serviceaccount:ci:deployer\"",
                    ));
                }
                let mut names = Vec::new();
                for group in groups.iter().flatten() {
                    if !valid(group.get_ref()) {
                        return Err(Problem::at(group, "a group name must not be empty"));
                    }
                    names.push(group.get_ref().clone());
                }
                Some(KubeImpersonation {
                    user: user.get_ref().clone(),
                    groups: names,
                })
            }
        };
        Ok(Workload {
            name,
            cgroup,
            uid: raw.uid,
            aws_role_arn,
            kube_impersonate,
        })
    }
}

impl TryFrom<Spanned<RawTarget>> for Target {
    type Error = Problem;

    fn try_from(raw: Spanned<RawTarget>) -> Result<Self, Problem> {
        let raw = raw.into_inner();
        if raw.name.get_ref().trim().is_empty() {
            return Err(Problem::at(&raw.name, "target name must not be empty"));
        }
        let destination = raw
            .address
            .get_ref()
            .parse::<Destination>()
            .map_err(|m| Problem::at(&raw.address, m))?;
        let protocol = match &raw.protocol {
            None => Protocol::Tcp,
            Some(p) => Protocol::ALL
                .iter()
                .copied()
                .find(|known| known.name() == p.get_ref())
                .ok_or_else(|| {
                    let supported: Vec<&str> = Protocol::ALL.iter().map(|p| p.name()).collect();
                    Problem::at(
                        p,
                        format!(
                            "protocol \"{}\" is not supported yet (supported: {})",
                            p.get_ref(),
                            supported.join(", ")
                        ),
                    )
                })?,
        };
        let postgres = postgres_settings(&raw, protocol)?;
        // MySQL targets take the PostgreSQL keys (validated alike), kept apart.
        let (postgres, mysql) = if protocol == Protocol::Mysql {
            (None, postgres)
        } else {
            (postgres, None)
        };
        let mysql = mysql_settings(&raw, protocol, mysql)?;
        let http = http_settings(&raw, protocol)?;
        let aws = aws_settings(&raw, protocol)?;
        let imds = imds_settings(&raw, protocol)?;
        let ssh = ssh_settings(&raw, protocol)?;
        let kube = kube_settings(&raw, protocol)?;
        let redis = redis_settings(&raw, protocol)?;
        let netns = match &raw.netns {
            None => NetnsScope::Any,
            Some(v) => match v.get_ref().as_str() {
                "host" => NetnsScope::Host,
                "container" => NetnsScope::Container,
                other => {
                    return Err(Problem::at(
                        v,
                        format!("netns must be \"host\" or \"container\", not \"{other}\""),
                    ))
                }
            },
        };
        Ok(Target {
            name: raw.name.into_inner(),
            destination,
            protocol,
            postgres,
            http,
            aws,
            imds,
            ssh,
            kube,
            redis,
            netns,
            mysql,
        })
    }
}

/// Refuses the first of `keys` that is set, saying which protocols it applies to (a
/// `password_file` on a tcp target would silently do nothing).
fn refuse_keys(
    keys: &[(&str, Option<Range<usize>>)],
    applies_to: &str,
    protocol: Protocol,
) -> Result<(), Problem> {
    if let Some((key, span)) = keys.iter().find(|(_, s)| s.is_some()) {
        return Err(Problem {
            span: span.clone(),
            earlier: None,
            message: format!(
                "`{key}` only applies to {applies_to} (this target is \"{protocol}\")"
            ),
        });
    }
    Ok(())
}

/// A secret given as a file (`key`: `password_file`, `token_file`: an absolute path) or
/// as a systemd credential (`credential`: a name), at most one of the two.
fn credential_ref(
    (key, file): (&str, Option<&Spanned<String>>),
    credential: Option<&Spanned<String>>,
) -> Result<Option<CredentialRef>, Problem> {
    Ok(match (file, credential) {
        (Some(_), Some(c)) => {
            return Err(Problem::at(
                c,
                format!("give either `{key}` or `credential`, not both"),
            ));
        }
        (Some(p), None) => Some(CredentialRef::File(absolute_path(p, key)?)),
        (None, Some(c)) => {
            let name = c.get_ref();
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(Problem::at(
                    c,
                    "credential must be a systemd credential name (no '/')",
                ));
            }
            Some(CredentialRef::Systemd(name.clone()))
        }
        (None, None) => None,
    })
}

/// The TLS and credential keys PostgreSQL and HTTP targets share.
struct Common {
    tls: UpstreamTlsMode,
    ca_file: Option<PathBuf>,
    server_name: Option<String>,
    client_tls: ClientTls,
    credential: Option<CredentialRef>,
}

fn common_settings(raw: &RawTarget) -> Result<Common, Problem> {
    let tls = raw.tls.as_ref().map(|t| *t.get_ref()).unwrap_or_default();
    let ca_file = raw
        .ca_file
        .as_ref()
        .map(|p| absolute_path(p, "ca_file"))
        .transpose()?;
    if let Some(name) = &raw.server_name {
        if name.get_ref().trim().is_empty() {
            return Err(Problem::at(name, "server_name must not be empty"));
        }
    }
    let credential = credential_ref(
        ("password_file", raw.password_file.as_ref()),
        raw.credential.as_ref(),
    )?;
    Ok(Common {
        tls,
        ca_file,
        server_name: raw.server_name.as_ref().map(|s| s.get_ref().clone()),
        client_tls: raw
            .client_tls
            .as_ref()
            .map(|c| *c.get_ref())
            .unwrap_or_default(),
        credential,
    })
}

/// Validates the PostgreSQL-only keys of a target: refused on other protocols, checked
/// for consistency on postgres targets.
fn postgres_settings(
    raw: &RawTarget,
    protocol: Protocol,
) -> Result<Option<PostgresTarget>, Problem> {
    if !matches!(protocol, Protocol::Postgres | Protocol::Mysql) {
        let shared: [(&str, Option<Range<usize>>); 6] = [
            ("tls", raw.tls.as_ref().map(Spanned::span)),
            ("ca_file", raw.ca_file.as_ref().map(Spanned::span)),
            ("server_name", raw.server_name.as_ref().map(Spanned::span)),
            ("client_tls", raw.client_tls.as_ref().map(Spanned::span)),
            (
                "password_file",
                raw.password_file.as_ref().map(Spanned::span),
            ),
            ("credential", raw.credential.as_ref().map(Spanned::span)),
        ];
        if protocol == Protocol::Redis {
            // A Redis target's TLS, password and user: redis_settings.
        } else if protocol == Protocol::Ssh {
            // An SSH target's `credential` is its login key (ssh_settings).
            refuse_keys(
                &shared[..5],
                "protocol = \"postgres\", \"http\", \"aws\" and \"aws-imds\"",
                protocol,
            )?;
        } else if !matches!(
            protocol,
            Protocol::Http | Protocol::Aws | Protocol::AwsImds | Protocol::Kubernetes
        ) {
            refuse_keys(
                &shared,
                "protocol = \"postgres\", \"http\", \"aws\", \"aws-imds\", \"kubernetes\" and \"ssh\"",
                protocol,
            )?;
        }
        if protocol != Protocol::Ssh && protocol != Protocol::Redis {
            refuse_keys(
                &[("user", raw.user.as_ref().map(Spanned::span))],
                "protocol = \"postgres\" and \"ssh\"",
                protocol,
            )?;
        }
        return Ok(None);
    }
    refuse_keys(
        &[("inject", raw.inject.as_ref().map(Spanned::span))],
        "protocol = \"http\" (a PostgreSQL target logs in with its credential instead)",
        protocol,
    )?;
    let common = common_settings(raw)?;
    if common.tls == UpstreamTlsMode::VerifyFull && common.ca_file.is_none() {
        let tls_value = raw.tls.as_ref().expect("verify-full was read from `tls`");
        return Err(Problem::at(
            tls_value,
            "tls = \"verify-full\" needs `ca_file`, the CA that signed the server's certificate",
        ));
    }
    if let Some(user) = &raw.user {
        if common.credential.is_none() {
            return Err(Problem::at(
                user,
                "`user` sets who the agent logs in as with its own credential: it needs `password_file` or `credential`",
            ));
        }
        if user.get_ref().is_empty() {
            return Err(Problem::at(user, "user must not be empty"));
        }
    }
    Ok(Some(PostgresTarget {
        tls: common.tls,
        ca_file: common.ca_file,
        server_name: common.server_name,
        client_tls: common.client_tls,
        credential: common.credential,
        user: raw.user.as_ref().map(|u| u.get_ref().clone()),
    }))
}

/// The MySQL-only keys (`server_public_key`, `get_server_public_key`): refused on other
/// protocols; on a MySQL target at most one of the two. They serve the agent's own login
/// and a password a client sent over TLS to the agent while the server has none (a
/// client without TLS fetches or pins its key itself).
fn mysql_settings(
    raw: &RawTarget,
    protocol: Protocol,
    sql: Option<PostgresTarget>,
) -> Result<Option<MysqlTarget>, Problem> {
    let pinned = raw.server_public_key.as_ref();
    let request = raw.get_server_public_key.as_ref();
    let Some(sql) = sql.filter(|_| protocol == Protocol::Mysql) else {
        refuse_keys(
            &[
                ("server_public_key", pinned.map(Spanned::span)),
                ("get_server_public_key", request.map(Spanned::span)),
            ],
            "protocol = \"mysql\"",
            protocol,
        )?;
        return Ok(None);
    };
    let server_public_key = match (pinned, request) {
        (Some(_), Some(r)) if *r.get_ref() => {
            return Err(Problem::at(
                r,
                "give either `server_public_key` (the server's key, pinned) or `get_server_public_key = true` (ask the server for it), not both",
            ));
        }
        (Some(p), _) => ServerPublicKey::Pinned(absolute_path(p, "server_public_key")?),
        (None, Some(r)) if *r.get_ref() => ServerPublicKey::Request,
        (None, _) => ServerPublicKey::Refuse,
    };
    Ok(Some(MysqlTarget {
        tls: sql.tls,
        ca_file: sql.ca_file,
        server_name: sql.server_name,
        client_tls: sql.client_tls,
        credential: sql.credential,
        user: sql.user,
        server_public_key,
    }))
}

/// Validates the keys of a Redis target: the agent's password and ACL user (the other
/// protocols' keys are refused by their own settings functions).
fn redis_settings(raw: &RawTarget, protocol: Protocol) -> Result<Option<RedisTarget>, Problem> {
    if protocol != Protocol::Redis {
        return Ok(None);
    }
    refuse_keys(
        &[("inject", raw.inject.as_ref().map(Spanned::span))],
        "protocol = \"http\" (a Redis target authenticates with its credential instead)",
        protocol,
    )?;
    let common = common_settings(raw)?;
    let credential = common.credential;
    match common.tls {
        UpstreamTlsMode::Prefer => {
            return Err(Problem::at(
                raw.tls.as_ref().expect("prefer was read from `tls`"),
                "tls = \"prefer\" has no meaning for Redis (TLS starts at once, there is nothing to fall back from): use \"disable\", \"require\" or \"verify-full\"",
            ));
        }
        UpstreamTlsMode::VerifyFull if common.ca_file.is_none() => {
            return Err(Problem::at(
                raw.tls.as_ref().expect("verify-full was read from `tls`"),
                "tls = \"verify-full\" needs `ca_file`, the CA that signed the server's certificate",
            ));
        }
        _ => {}
    }
    if let Some(user) = &raw.user {
        if credential.is_none() {
            return Err(Problem::at(
                user,
                "`user` sets the ACL user the agent authenticates as with its own credential: it needs `password_file` or `credential`",
            ));
        }
        if user.get_ref().is_empty() || user.get_ref().contains(char::is_whitespace) {
            return Err(Problem::at(
                user,
                "user must be a non-empty name without spaces",
            ));
        }
    }
    Ok(Some(RedisTarget {
        tls: common.tls,
        ca_file: common.ca_file,
        server_name: common.server_name,
        client_tls: common.client_tls,
        credential,
        user: raw.user.as_ref().map(|u| u.get_ref().clone()),
    }))
}

/// Validates the keys of an HTTP target: TLS on both legs and the injected credential.
fn http_settings(raw: &RawTarget, protocol: Protocol) -> Result<Option<HttpTarget>, Problem> {
    if protocol == Protocol::Kubernetes {
        refuse_keys(
            &[
                ("inject", raw.inject.as_ref().map(Spanned::span)),
                (
                    "password_file",
                    raw.password_file.as_ref().map(Spanned::span),
                ),
            ],
            "protocol = \"http\" (a Kubernetes target authenticates with `token_file`, `credential` or `client_cert_file` + `client_key_file`)",
            protocol,
        )?;
    } else if matches!(protocol, Protocol::Aws | Protocol::AwsImds) {
        refuse_keys(
            &[
                ("inject", raw.inject.as_ref().map(Spanned::span)),
                (
                    "password_file",
                    raw.password_file.as_ref().map(Spanned::span),
                ),
            ],
            "protocol = \"http\" (an AWS target signs with the credential of `aws_credentials_file`, `credential` or `aws_instance_role`; a metadata target hands out the placeholder)",
            protocol,
        )?;
    } else if !matches!(protocol, Protocol::Http) {
        refuse_keys(
            &[
                ("inject", raw.inject.as_ref().map(Spanned::span)),
                (
                    "mask_body_limit",
                    raw.mask_body_limit.as_ref().map(Spanned::span),
                ),
            ],
            "protocol = \"http\"",
            protocol,
        )?;
        return Ok(None);
    }
    let mask_body_limit = match &raw.mask_body_limit {
        None => crate::protocol::http::body::DEFAULT_MASK_BODY_LIMIT,
        Some(value) => crate::size::value(
            value.get_ref(),
            "mask_body_limit",
            MIN_MASK_BODY_LIMIT..=MAX_MASK_BODY_LIMIT,
        )
        .map_err(|message| Problem::at(value, message))?,
    };
    let mut common = common_settings(raw)?;
    if matches!(protocol, Protocol::Aws | Protocol::Kubernetes) && raw.client_tls.is_none() {
        // SDKs and kubectl speak HTTPS; plain HTTP to them is the exception.
        common.client_tls = ClientTls::Terminate;
    }
    if protocol == Protocol::Kubernetes && raw.tls.is_none() {
        // API servers serve HTTPS only, with a cluster CA.
        common.tls = UpstreamTlsMode::VerifyFull;
    }
    if matches!(
        protocol,
        Protocol::Aws | Protocol::AwsImds | Protocol::Kubernetes
    ) {
        // `credential` is the agent's AWS key (aws_settings; refused on a metadata
        // target by imds_settings), never an injected header.
        common.credential = None;
    }
    if common.tls == UpstreamTlsMode::Prefer {
        let tls_value = raw.tls.as_ref().expect("prefer was read from `tls`");
        return Err(Problem::at(
            tls_value,
            "tls = \"prefer\" has no meaning for HTTP (there is no negotiation to fall back from): use \"disable\", \"require\" or \"verify-full\"",
        ));
    }
    let inject = raw
        .inject
        .as_ref()
        .map(|i| InjectHeader::parse(i.get_ref()).map_err(|m| Problem::at(i, m)))
        .transpose()?;
    match (&inject, &common.credential) {
        (Some(_), None) => {
            return Err(Problem::at(
                raw.inject.as_ref().expect("inject was read"),
                "`inject` needs the secret it injects: `password_file` or `credential`",
            ));
        }
        (None, Some(_)) => {
            let span = raw
                .password_file
                .as_ref()
                .or(raw.credential.as_ref())
                .expect("a credential was read");
            return Err(Problem::at(
                span,
                "an HTTP target uses its credential only through `inject` (e.g. inject = \"Authorization: Bearer {secret}\"); without it the secret would do nothing",
            ));
        }
        _ => {}
    }
    Ok(Some(HttpTarget {
        tls: common.tls,
        ca_file: common.ca_file,
        server_name: common.server_name,
        client_tls: common.client_tls,
        credential: common.credential,
        inject,
        mask_body_limit,
    }))
}

/// Validates the keys of an AWS target: where the agent's credential comes from.
fn aws_settings(raw: &RawTarget, protocol: Protocol) -> Result<Option<AwsTarget>, Problem> {
    let aws_keys = [
        (
            "aws_credentials_file",
            raw.aws_credentials_file.as_ref().map(Spanned::span),
        ),
        ("aws_profile", raw.aws_profile.as_ref().map(Spanned::span)),
        (
            "aws_instance_role",
            raw.aws_instance_role.as_ref().map(Spanned::span),
        ),
        (
            "accept_any_client_key",
            raw.accept_any_client_key.as_ref().map(Spanned::span),
        ),
        (
            "aws_sts_endpoint",
            raw.aws_sts_endpoint.as_ref().map(Spanned::span),
        ),
    ];
    if protocol != Protocol::Aws {
        refuse_keys(&aws_keys, "protocol = \"aws\"", protocol)?;
        return Ok(None);
    }
    let profile = match &raw.aws_profile {
        Some(p) => {
            let v = p.get_ref();
            if v.is_empty() || v.contains(['[', ']', '\n', '\r']) {
                return Err(Problem::at(p, "aws_profile must be a profile name"));
            }
            v.clone()
        }
        None => "default".to_owned(),
    };
    let instance_role = raw.aws_instance_role.as_ref().map(|v| *v.get_ref());
    let credentials = match (&raw.aws_credentials_file, &raw.credential, instance_role) {
        (Some(path), None, None | Some(false)) => AwsCredentialSource::File {
            path: absolute_path(path, "aws_credentials_file")?,
            profile,
        },
        (None, Some(c), None | Some(false)) => {
            let name = c.get_ref();
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(Problem::at(
                    c,
                    "credential must be a systemd credential name (no '/')",
                ));
            }
            AwsCredentialSource::Systemd {
                name: name.clone(),
                profile,
            }
        }
        (None, None, Some(true)) => {
            if let Some(p) = &raw.aws_profile {
                return Err(Problem::at(
                    p,
                    "aws_profile names a profile of a credentials file; an instance role has none",
                ));
            }
            AwsCredentialSource::InstanceRole
        }
        (None, None, _) => {
            return Err(Problem::at(
                &raw.name,
                "an AWS target needs the agent's own credential: aws_credentials_file, credential (a systemd credential) or aws_instance_role = true",
            ))
        }
        _ => {
            let span = raw
                .credential
                .as_ref()
                .map(Spanned::span)
                .or(raw.aws_instance_role.as_ref().map(Spanned::span))
                .unwrap_or_else(|| raw.name.span());
            return Err(Problem {
                span: Some(span),
                earlier: None,
                message: "give one of aws_credentials_file, credential and aws_instance_role = true".into(),
            });
        }
    };
    let sts_endpoint = match &raw.aws_sts_endpoint {
        Some(e) => {
            let v = e.get_ref().trim_end_matches('/');
            let valid = (v.starts_with("https://") || v.starts_with("http://"))
                && url::Url::parse(v).is_ok_and(|u| u.host().is_some() && u.path() == "/");
            if !valid {
                return Err(Problem::at(
                    e,
                    "aws_sts_endpoint must be an http(s) URL without a path, e.g. \"https://sts.eu-west-1.amazonaws.com\"",
                ));
            }
            Some(v.to_owned())
        }
        None => None,
    };
    Ok(Some(AwsTarget {
        credentials,
        sts_endpoint,
        accept_any_client_key: raw
            .accept_any_client_key
            .as_ref()
            .is_some_and(|v| *v.get_ref()),
    }))
}

/// Validates the keys of an SSH target: the login key, the user, the host key check.
/// Validates the keys of a Kubernetes target: the agent's credential, exactly one of a
/// token (`token_file` or `credential`) and a client certificate.
fn kube_settings(raw: &RawTarget, protocol: Protocol) -> Result<Option<KubeTarget>, Problem> {
    let keys = [
        ("token_file", raw.token_file.as_ref().map(Spanned::span)),
        (
            "client_cert_file",
            raw.client_cert_file.as_ref().map(Spanned::span),
        ),
        (
            "client_key_file",
            raw.client_key_file.as_ref().map(Spanned::span),
        ),
    ];
    if protocol != Protocol::Kubernetes {
        refuse_keys(&keys, "protocol = \"kubernetes\"", protocol)?;
        return Ok(None);
    }
    let token = credential_ref(
        ("token_file", raw.token_file.as_ref()),
        raw.credential.as_ref(),
    )?;
    let cert = match (&raw.client_cert_file, &raw.client_key_file) {
        (Some(cert), Some(key)) => Some((
            absolute_path(cert, "client_cert_file")?,
            absolute_path(key, "client_key_file")?,
        )),
        (Some(v), None) => {
            return Err(Problem::at(
                v,
                "client_cert_file needs client_key_file, the certificate's private key",
            ))
        }
        (None, Some(v)) => {
            return Err(Problem::at(
                v,
                "client_key_file needs client_cert_file, the certificate it belongs to",
            ))
        }
        (None, None) => None,
    };
    let credential = match (token, cert) {
        (Some(token), None) => KubeCredential::Token(token),
        (None, Some((cert, key))) => KubeCredential::ClientCert { cert, key },
        (Some(_), Some(_)) => {
            return Err(Problem {
                span: raw.client_cert_file.as_ref().map(Spanned::span),
                earlier: None,
                message: "give one credential: a token (token_file or credential) or a client certificate (client_cert_file and client_key_file), not both".into(),
            })
        }
        (None, None) => {
            return Err(Problem {
                span: Some(raw.name.span()),
                earlier: None,
                message: "a Kubernetes target needs the agent's own credential for the API server: token_file, credential (a systemd credential holding the token) or client_cert_file + client_key_file (the bots need none)".into(),
            })
        }
    };
    Ok(Some(KubeTarget { credential }))
}

fn ssh_settings(raw: &RawTarget, protocol: Protocol) -> Result<Option<SshTarget>, Problem> {
    if protocol != Protocol::Ssh {
        refuse_keys(
            &[
                ("key_file", raw.key_file.as_ref().map(Spanned::span)),
                ("known_hosts", raw.known_hosts.as_ref().map(Spanned::span)),
                ("host_key", raw.host_key.as_ref().map(Spanned::span)),
                (
                    "host_names",
                    raw.host_names
                        .as_ref()
                        .and_then(|n| n.first())
                        .map(Spanned::span),
                ),
                ("mask_output", raw.mask_output.as_ref().map(Spanned::span)),
            ],
            "protocol = \"ssh\"",
            protocol,
        )?;
        return Ok(None);
    }
    let key = match (&raw.key_file, &raw.credential) {
        (Some(_), Some(c)) => {
            return Err(Problem::at(
                c,
                "give either `key_file` or `credential` (the agent's login key), not both",
            ))
        }
        (Some(p), None) => CredentialRef::File(absolute_path(p, "key_file")?),
        (None, Some(c)) => {
            let name = c.get_ref();
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(Problem::at(
                    c,
                    "credential must be a systemd credential name (no '/')",
                ));
            }
            CredentialRef::Systemd(name.clone())
        }
        (None, None) => {
            return Err(Problem::at(
                &raw.name,
                "an SSH target needs the key the agent logs into the host with: key_file (an OpenSSH private key, mode 0600) or credential (a systemd credential)",
            ))
        }
    };
    let host_key = match (&raw.known_hosts, &raw.host_key) {
        (Some(_), Some(h)) => {
            return Err(Problem::at(
                h,
                "give either `known_hosts` or `host_key`, not both",
            ))
        }
        (Some(p), None) => HostKeyCheck::KnownHosts(absolute_path(p, "known_hosts")?),
        (None, Some(h)) => {
            let v = h.get_ref().trim();
            let valid = v.strip_prefix("SHA256:").is_some_and(|b64| {
                b64.len() == 43
                    && b64
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
            });
            if !valid {
                return Err(Problem::at(
                    h,
                    "host_key must be the host key's SHA256 fingerprint as `ssh-keygen -lf KEY.pub` prints it (\"SHA256:\" and 43 base64 characters)",
                ));
            }
            HostKeyCheck::Fingerprint(v.to_owned())
        }
        (None, None) => {
            return Err(Problem::at(
                &raw.name,
                "an SSH target needs a way to verify the host's key: known_hosts (a file) or host_key (\"SHA256:...\"); the agent never trusts a host key on first use",
            ))
        }
    };
    if let Some(user) = &raw.user {
        if user.get_ref().is_empty() || user.get_ref().contains(['\0', '\n', '\r']) {
            return Err(Problem::at(user, "user must be a login name"));
        }
    }
    let mut host_names = Vec::new();
    for name in raw.host_names.iter().flatten() {
        let v = name.get_ref();
        if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c == ',' || c == '*') {
            return Err(Problem::at(
                name,
                "host_names must be host names (no spaces, commas or wildcards)",
            ));
        }
        host_names.push(v.clone());
    }
    Ok(Some(SshTarget {
        key,
        user: raw.user.as_ref().map(|u| u.get_ref().clone()),
        host_key,
        host_names,
        mask_output: raw.mask_output.as_ref().is_some_and(|m| *m.get_ref()),
    }))
}

/// Validates the keys of a metadata-service target.
fn imds_settings(raw: &RawTarget, protocol: Protocol) -> Result<Option<ImdsTarget>, Problem> {
    if protocol != Protocol::AwsImds {
        refuse_keys(
            &[
                ("aws_region", raw.aws_region.as_ref().map(Spanned::span)),
                (
                    "aws_role_name",
                    raw.aws_role_name.as_ref().map(Spanned::span),
                ),
            ],
            "protocol = \"aws-imds\"",
            protocol,
        )?;
        return Ok(None);
    }
    if let Some(c) = &raw.credential {
        return Err(Problem::at(
            c,
            "a metadata target hands out the placeholder credential; the real one belongs on the protocol = \"aws\" target",
        ));
    }
    let region = match &raw.aws_region {
        Some(r) => {
            let v = r.get_ref();
            if v.is_empty()
                || v.len() > 32
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(Problem::at(
                    r,
                    "aws_region must be a region name such as \"eu-west-1\"",
                ));
            }
            Some(v.clone())
        }
        None => None,
    };
    let role_name = match &raw.aws_role_name {
        Some(r) => {
            let v = r.get_ref();
            if v.is_empty()
                || v.len() > 64
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
            {
                return Err(Problem::at(r, "aws_role_name must be an IAM role name"));
            }
            v.clone()
        }
        None => "nhi-agent".to_owned(),
    };
    Ok(Some(ImdsTarget { region, role_name }))
}

#[cfg(test)]
mod tests;
