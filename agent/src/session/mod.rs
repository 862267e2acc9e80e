//! The protocol-neutral session core: what every decoded protocol shares.
//!
//! A protocol plugs in as a sans-IO [`Session`]: it is handed the bytes read from the
//! client and the server, decodes and judges them, and *stages* what to send each way
//! plus the journal events that describe it. The [`engine`] owns the IO loop of the
//! session: it journals the staged events and only then releases the staged bytes
//! (record-before-forward, in one place for every protocol), applies the per-direction
//! high-water marks, runs holds through an [`approval::Approver`], and enforces the idle
//! timeout, the session-duration cap and agent shutdown, answering each with the
//! protocol's own error ([`Session::agent_error`]).
//!
//! This module imports no protocol and no `approvals`: `approvals` implements
//! [`approval::Approver`], the protocols implement [`Session`].
//!
//! Architecture invariant: a client request reaches the server only after the journal
//! accepted the events the session staged for the read that carried it
//! ([`crate::journal::JournalHandle::record`], durably with `journal_fsync = "each"`); if
//! the journal refuses, the client gets the protocol's error and the session ends.
pub mod approval;
pub mod engine;
pub mod gate;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::journal::Event;
use gate::Gate;

pub use approval::{
    Approver, DecisionNote, GrantCheck, HoldOutcome, HoldRequest, HoldWait, Pending, PendingHold,
    Process, Requester, Standing,
};

/// What governs one session, whatever its protocol: decided once, when the session is
/// accepted.
#[derive(Debug, Clone)]
pub struct SessionRules {
    /// The policy that applies to this workload × target, if any; none allows everything.
    pub policy: Option<crate::policy::Policy>,
    /// Whether verdicts are acted on (`enforce`) or only journaled (`observe`).
    pub enforce: bool,
    pub masks: crate::mask::SessionMasks,
    pub record_results: crate::policy::RecordResults,
}

impl SessionRules {
    /// How long a held request waits for a decision: the policy's `approval_timeout`.
    pub fn approval_timeout(&self) -> std::time::Duration {
        self.policy
            .as_ref()
            .map(|p| p.approval_timeout)
            .unwrap_or(crate::policy::DEFAULT_APPROVAL_TIMEOUT)
    }

    /// The policy's `max_session_duration`, armed for a session accepted at `accepted`.
    pub fn session_cap(&self, accepted: std::time::Instant) -> Option<engine::SessionCap> {
        let policy = self.policy.as_ref()?;
        let limit = policy.max_session_duration?;
        Some(engine::SessionCap {
            at: accepted + limit,
            limit,
            policy: policy.name.clone(),
        })
    }

    /// The session's gate: its enforcement, its approval timeout and, with `approvals`,
    /// the standing grants of its workload and target.
    pub fn gate(
        &self,
        protocol: &'static str,
        approvals: Option<&Arc<dyn Approver>>,
        requester: &Requester,
    ) -> Gate {
        let mut gate = Gate::new(protocol, self.enforce, self.approval_timeout());
        if let Some(approvals) = approvals {
            gate.set_grant_check(requester.grant_check(approvals));
        }
        gate
    }
}

/// Anything a session can read and write: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What a session asks of the engine after the client bytes it was given.
#[derive(Debug)]
pub enum Step {
    /// Go on with the next message.
    Continue,
    /// Stop handing client bytes over until [`Session::resolve_hold`] is called: the
    /// request just read waits for an approval. What is staged is journaled and released
    /// first.
    Hold(HoldRequest),
    /// The client ended the session (a protocol-level goodbye).
    Terminate,
}

/// Input a session cannot accept: the session closes with this reason journaled.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SessionError(pub String);

/// The conditions under which the agent itself ends (or answers) a session; the session
/// turns each into its protocol's error message.
#[derive(Clone, Copy)]
pub enum AgentError<'a> {
    /// The journal cannot record (this error): nothing more is forwarded.
    Journal(&'a (dyn std::error::Error + 'static)),
    /// A policy's `max_session_duration` was reached (the message says which).
    SessionCap(&'a str),
    /// The agent is shutting down and the drain period ran out.
    Shutdown,
}

/// A decoded protocol's session, sans IO (see the module documentation).
pub trait Session: Send {
    /// Decodes and judges the complete client messages at the front of `buf` (consuming
    /// them), until `buf` holds no complete message, a request is held, or the client
    /// ended the session.
    fn on_client(&mut self, buf: &mut BytesMut) -> Result<Step, SessionError>;
    /// Decodes the complete server messages at the front of `buf` (consuming them).
    fn on_server(&mut self, buf: &mut BytesMut) -> Result<(), SessionError>;
    /// The decision on the request held by the last [`Step::Hold`].
    fn resolve_hold(&mut self, outcome: HoldOutcome) -> Result<Step, SessionError>;
    /// Observe mode: requests that would have been held, to announce (never waited for).
    fn take_would_hold(&mut self) -> Vec<HoldRequest>;
    /// Stages a journal event of this session, behind those the session staged (the
    /// engine adds `approval_request` and `session_limit`).
    fn push_event(&mut self, event: Event);
    fn has_events(&self) -> bool;
    /// The staged events, to be journaled before the staged bytes are released.
    fn take_events(&mut self) -> Vec<Event>;
    /// Bytes staged for the server.
    fn take_to_server(&mut self) -> BytesMut;
    /// Bytes staged for the client.
    fn take_to_client(&mut self) -> BytesMut;
    /// The protocol's error message for the client when the agent ends the session.
    fn agent_error(&self, error: AgentError<'_>) -> Bytes;
}

/// Why a session ended early, journaled as its close reason. Which side failed is part
/// of the reason: client, server (upstream), the protocol, the journal, a limit.
#[derive(Debug)]
pub enum Failure {
    Client(String),
    Server(String),
    Protocol(String),
    Journal(String),
    Upstream(String),
    Auth(String),
    /// A policy limit (`max_session_duration`) ended the session.
    Limit(String),
    Idle,
    Shutdown,
}

impl From<SessionError> for Failure {
    fn from(e: SessionError) -> Failure {
        Failure::Protocol(e.0)
    }
}

/// How a session that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed (or said goodbye) and everything staged was delivered.
    ClientClosed,
    /// The server closed and everything staged for the client was delivered.
    ServerClosed,
}

/// Byte counters for the session's totals.
#[derive(Debug, Default)]
pub struct Counts {
    pub from_client: u64,
    pub from_server: u64,
}
