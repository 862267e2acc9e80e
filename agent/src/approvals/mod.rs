//! Just-in-time approvals: statements held by a policy rule with `verdict = "approve"`
//! wait here until a human decides on them through the local control socket.
//!
//! - [`Registry`] keeps the pending requests and implements the proxy's
//!   [`Approver`](crate::proxy::postgres::Approver): `hold` registers a request and waits
//!   for a decision (or the policy's `approval_timeout`, which counts as denied).
//! - [`server`] serves the registry on a Unix socket, one JSON request per line, and
//!   checks every caller with `SO_PEERCRED` (root, or a member of `approver_group`).
//! - [`wire`] is the request/answer format, shared with `nhi-agent approvals`.
//!
//! Architecture invariant: a request leaves the registry exactly once: decided,
//! expired, or dropped with its session. A decision on a request that is gone is an
//! error for the approver, never a decision for some other statement.
pub mod server;
pub mod wire;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use tokio::sync::oneshot;
use tracing::info;

use crate::{
    journal::SessionId,
    proxy::postgres::{Approver, HoldOutcome, HoldRequest},
};
pub use wire::Pending;

/// Why a decision could not be taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    /// No pending request has this id (never existed, already decided, or expired).
    #[error("no pending request {id} (already decided, expired, or its session ended)")]
    NotFound { id: String },
}

/// The pending requests, shared by the proxy sessions and the control socket.
#[derive(Clone)]
pub struct Registry {
    state: Arc<Mutex<State>>,
    /// Shown in the log line that tells how to approve.
    socket: PathBuf,
}

#[derive(Default)]
struct State {
    next: u64,
    pending: BTreeMap<u64, Entry>,
}

struct Entry {
    info: Pending,
    decide: oneshot::Sender<HoldOutcome>,
}

impl Registry {
    /// An empty registry; `socket` is where the control server listens (for log lines).
    pub fn new(socket: PathBuf) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            socket,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every pending request, oldest first.
    pub fn list(&self) -> Vec<Pending> {
        self.lock()
            .pending
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    /// One pending request.
    pub fn show(&self, id: &str) -> Result<Pending, DecideError> {
        let n = parse_id(id)?;
        self.lock()
            .pending
            .get(&n)
            .map(|e| e.info.clone())
            .ok_or_else(|| DecideError::NotFound { id: id.to_owned() })
    }

    /// Takes a decision (`Approved` or `Denied`) on a pending request.
    pub fn decide(&self, id: &str, outcome: HoldOutcome) -> Result<Pending, DecideError> {
        let n = parse_id(id)?;
        let entry = self
            .lock()
            .pending
            .remove(&n)
            .ok_or_else(|| DecideError::NotFound { id: id.to_owned() })?;
        // The session may have ended a moment ago; the request is gone either way.
        let _ = entry.decide.send(outcome);
        Ok(entry.info)
    }

    /// Registers a request; returns its number and the receiver of the decision.
    fn register(
        &self,
        session: SessionId,
        workload: &str,
        target: &str,
        request: &HoldRequest,
    ) -> (u64, Pending, oneshot::Receiver<HoldOutcome>) {
        let (tx, rx) = oneshot::channel();
        let now = SystemTime::now();
        let mut state = self.lock();
        state.next += 1;
        let n = state.next;
        let info = Pending {
            id: format_id(n),
            session,
            workload: workload.to_owned(),
            target: target.to_owned(),
            seq: request.seq,
            statement: request.text.clone(),
            rule: request.rule.clone(),
            requested_at: humantime::format_rfc3339_seconds(now).to_string(),
            expires_at: humantime::format_rfc3339_seconds(now + request.timeout).to_string(),
        };
        state.pending.insert(
            n,
            Entry {
                info: info.clone(),
                decide: tx,
            },
        );
        (n, info, rx)
    }
}

/// Removes a request from the registry when its wait ends for any reason (timeout,
/// decision, or the session being dropped while it waits).
struct Forget {
    state: Arc<Mutex<State>>,
    n: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .remove(&self.n);
    }
}

impl Approver for Registry {
    fn hold(
        &self,
        session: SessionId,
        workload: &str,
        target: &str,
        request: HoldRequest,
    ) -> Pin<Box<dyn std::future::Future<Output = HoldOutcome> + Send>> {
        let (n, info, rx) = self.register(session, workload, target, &request);
        info!(
            id = %info.id,
            session,
            workload,
            target,
            seq = request.seq,
            rule = info.rule.as_deref().unwrap_or("default"),
            timeout = %humantime::format_duration(request.timeout),
            "statement waits for approval: `nhi-agent approvals approve {id} --socket {socket}` \
             (or `deny {id}`)",
            id = info.id,
            socket = self.socket.display(),
        );
        let forget = Forget {
            state: self.state.clone(),
            n,
        };
        let id = info.id;
        Box::pin(async move {
            let _forget = forget;
            match tokio::time::timeout(request.timeout, rx).await {
                Ok(Ok(outcome)) => outcome,
                // The sender is only dropped with the registry entry, i.e. never
                // before a decision or the timeout; treat it as no decision.
                Ok(Err(_)) | Err(_) => {
                    info!(id = %id, "approval request expired");
                    HoldOutcome::Expired
                }
            }
        })
    }
}

/// Request ids are short: "a-" and a counter that is never reused while the agent runs.
fn format_id(n: u64) -> String {
    format!("a-{n}")
}

fn parse_id(id: &str) -> Result<u64, DecideError> {
    id.strip_prefix("a-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| DecideError::NotFound { id: id.to_owned() })
}

#[cfg(test)]
mod tests;
