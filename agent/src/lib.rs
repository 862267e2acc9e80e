//! nhi-agent: a tamper-evident audit trail and guardrails for non-human identities.
//!
//! See ARCHITECTURE.md at the repository root for the bird's-eye view and the code map.
pub mod approvals;
pub mod atomic;
pub mod attest;
pub mod cli;
pub mod config;
pub mod credential;
pub mod ebpf;
pub mod evidence;
pub mod failpoint;
pub mod hex;
pub mod identity;
pub mod journal;
pub mod jwk;
pub mod lineage;
pub mod mask;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod proxy;
pub mod sdnotify;
pub mod session;
pub mod ship;
pub mod size;
pub mod state;
pub mod status;
pub mod stream;
pub mod tls;
