//! Holding a request for a human's decision, protocol-neutral: what the session engine
//! asks of an approver ([`Approver`]), what a hold carries ([`HoldRequest`]) and how it
//! ends ([`HoldOutcome`]). `approvals::Registry` implements [`Approver`]; the engine and
//! the protocols never depend on `approvals`.
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::identity::SessionIdentity;
use crate::journal::SessionId;

/// A statement waiting for a human's decision (verdict `approve`).
#[derive(Debug, Clone)]
pub struct HoldRequest {
    /// The statement's sequence number in the session.
    pub seq: u64,
    /// The statement's text, with the session's mask detectors applied.
    pub text: String,
    pub rule: Option<String>,
    pub timeout: std::time::Duration,
}

/// How a hold ended.
#[derive(Debug, Clone)]
pub enum HoldOutcome {
    Approved {
        by: String,
        note: DecisionNote,
    },
    Denied {
        by: String,
        reason: Option<String>,
        note: DecisionNote,
    },
    Expired,
}

/// What the `approval` event says about a decision besides who took it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DecisionNote {
    /// The approval request ("a-N") the decision was taken on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// "once" | "session" | "grant".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'static str>,
    /// The grant ("g-N") created by, or letting through, this statement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// RFC 3339: end of the grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Set when the statement passed without a hold: the approval that covers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted_by: Option<String>,
    /// SHA-256 (hex) of the signed decision token, when one decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// The token's `jti`, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// A standing approval (scope `grant`) that lets a statement through without a hold.
#[derive(Debug, Clone)]
pub struct Standing {
    /// Who gave the original approval.
    pub by: String,
    /// `granted_by`, `grant`, `scope`, ... for the `approval` event.
    pub note: DecisionNote,
}

/// Looks up a grant covering a statement of this session, by the rule that matched.
pub type GrantCheck = Arc<dyn Fn(Option<&str>) -> Option<Standing> + Send + Sync>;

pub use crate::identity::Process;

/// A statement waiting for a decision, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub id: String,
    pub session: SessionId,
    pub workload: String,
    /// The session's client process.
    #[serde(default)]
    pub process: Process,
    pub target: String,
    /// The statement's sequence number in its session (as journaled).
    pub seq: u64,
    pub statement: String,
    pub rule: Option<String>,
    /// RFC 3339, UTC.
    pub requested_at: String,
    /// RFC 3339, UTC: when the hold counts as denied ("not approved in time").
    pub expires_at: String,
}

/// The session a held request belongs to, as approvers are told.
#[derive(Debug, Clone)]
pub struct Requester {
    pub session: SessionId,
    pub identity: Arc<SessionIdentity>,
}

impl Requester {
    /// The lookup of standing grants for this session's workload and target, as its gate
    /// consults it before holding a request.
    pub fn grant_check(&self, approvals: &Arc<dyn Approver>) -> GrantCheck {
        let approvals = approvals.clone();
        let workload = self.identity.workload.clone();
        let target = self.identity.target.clone();
        Arc::new(move |rule| approvals.grant_for(&workload, &target, rule))
    }
}

/// The wait for a decision on a held request.
pub type HoldWait = std::pin::Pin<Box<dyn std::future::Future<Output = HoldOutcome> + Send>>;

/// A registered hold: what to journal (kind `approval_request`) before waiting, and the wait.
pub struct PendingHold {
    pub announcement: Pending,
    pub wait: HoldWait,
}

/// Who decides on held requests (the approvals registry).
pub trait Approver: Send + Sync {
    /// Registers and announces `request`; the wait ends with a decision or its timeout.
    fn hold(&self, who: &Requester, request: HoldRequest) -> PendingHold;
    /// Observe mode: announces a request that would have been held (no wait).
    fn would_hold(&self, who: &Requester, request: HoldRequest);
    /// A grant (scope `grant`) covering a request of `workload` to `target` matched by
    /// `rule`, now.
    fn grant_for(&self, workload: &str, target: &str, rule: Option<&str>) -> Option<Standing>;
}

/// Starts the hold of `request`: registered with the approver, whose announcement is
/// returned to be journaled (kind `approval_request`) before the wait starts; without
/// approvers, a wait that expires (counts as denied) at the request's timeout.
pub fn start_hold(
    approvals: Option<&Arc<dyn Approver>>,
    who: &Requester,
    request: HoldRequest,
) -> (Option<Pending>, HoldWait) {
    match approvals {
        Some(a) => {
            let pending = a.hold(who, request);
            (Some(pending.announcement), pending.wait)
        }
        None => {
            let timeout = request.timeout;
            (
                None,
                Box::pin(async move {
                    tokio::time::sleep(timeout).await;
                    HoldOutcome::Expired
                }),
            )
        }
    }
}
