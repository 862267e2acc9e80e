//! From a policy verdict to what the agent does with a request, protocol-neutral: the
//! mode (enforce / observe), holds for approval, standing approvals (scope `session`,
//! remembered here; scope `grant`, asked of the approver), and the `approval` event. A
//! protocol judges its request (SQL analysis, HTTP matching), asks the [`Gate`] for an
//! [`Action`], and carries it out in its own terms (ErrorResponse, 403, ...).
use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use super::approval::{DecisionNote, GrantCheck, HoldOutcome, HoldRequest, Standing};
use crate::policy::Verdict;

/// What to do with a judged request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Forward it (allowed; or in observe mode, whatever the verdict).
    Forward,
    /// Forward it: it needs an approval and one on record covers it. Journal
    /// [`approval_on_standing`] with it.
    PassOnStanding(Standing),
    /// Hold it until a decision ([`HoldRequest`] from [`Gate::hold_request`]).
    Hold,
    /// Refuse it (an enforced deny).
    Refuse,
}

/// The verdict-to-action rules of one session.
pub struct Gate {
    /// The session's protocol, as metrics name it.
    protocol: &'static str,
    enforce: bool,
    approval_timeout: Duration,
    /// Rules approved with scope `session`: their requests pass without a hold.
    session_approvals: HashMap<Option<String>, Standing>,
    /// Grants (scope `grant`) that apply across sessions.
    grant_check: Option<GrantCheck>,
    /// Observe mode: requests that would have been held, to announce.
    would_hold: Vec<HoldRequest>,
}

impl Gate {
    /// `protocol`: the session's, as metrics name it; `enforce`: act on verdicts (else
    /// only journal them); `approval_timeout`: how long a hold waits before it counts as
    /// denied.
    pub fn new(protocol: &'static str, enforce: bool, approval_timeout: Duration) -> Gate {
        Gate {
            protocol,
            enforce,
            approval_timeout,
            session_approvals: HashMap::new(),
            grant_check: None,
            would_hold: Vec::new(),
        }
    }

    pub fn enforce(&self) -> bool {
        self.enforce
    }

    /// How grants covering this session's requests are looked up.
    pub fn set_grant_check(&mut self, check: GrantCheck) {
        self.grant_check = Some(check);
    }

    /// A standing approval for a request matched by `rule`: the session's own (scope
    /// `session`) first, then a grant.
    pub fn standing(&self, rule: Option<&str>) -> Option<Standing> {
        if let Some(s) = self.session_approvals.get(&rule.map(str::to_owned)) {
            return Some(s.clone());
        }
        self.grant_check.as_ref().and_then(|check| check(rule))
    }

    /// What to do with a request the policy gave `verdict` by `rule`.
    /// Each call is one judged request (counted in the metrics).
    pub fn action(&self, verdict: Verdict, rule: Option<&str>) -> Action {
        let action = match (self.enforce, verdict) {
            (true, Verdict::Deny) => Action::Refuse,
            (true, Verdict::Approve) => match self.standing(rule) {
                Some(standing) => Action::PassOnStanding(standing),
                None => Action::Hold,
            },
            _ => Action::Forward,
        };
        let done = match action {
            Action::Forward | Action::PassOnStanding(_) => "forward",
            Action::Hold => "hold",
            Action::Refuse => "refuse",
        };
        crate::metrics::get().request(self.protocol, verdict.as_str(), done);
        action
    }

    /// The hold of request `seq`; `text` is what approvers are shown (announcements may
    /// leave the host: mask it first).
    pub fn hold_request(&self, seq: u64, text: String, rule: Option<String>) -> HoldRequest {
        HoldRequest {
            seq,
            text,
            rule,
            timeout: self.approval_timeout,
        }
    }

    /// Observe mode: notes a request that would have been held (`verdict` approve while
    /// not enforcing), to announce; nothing otherwise. `text` is only called then.
    pub fn observe(
        &mut self,
        verdict: Verdict,
        seq: u64,
        rule: Option<&str>,
        text: impl FnOnce() -> String,
    ) {
        if !self.enforce && verdict == Verdict::Approve {
            let request = self.hold_request(seq, text(), rule.map(str::to_owned));
            self.would_hold.push(request);
        }
    }

    /// The requests noted by [`Gate::observe`] since the last call.
    pub fn take_would_hold(&mut self) -> Vec<HoldRequest> {
        std::mem::take(&mut self.would_hold)
    }

    /// Remembers what a decision on a request matched by `rule` means for the rest of
    /// the session (an approval with scope `session` lets the rule's later requests
    /// through), and returns the `approval` event of request `seq`.
    pub fn decided<'a>(
        &mut self,
        seq: u64,
        rule: Option<&str>,
        outcome: &'a HoldOutcome,
    ) -> ApprovalEvent<'a> {
        if let HoldOutcome::Approved { by, note } = outcome {
            if note.scope == Some("session") {
                self.session_approvals.insert(
                    rule.map(str::to_owned),
                    Standing {
                        by: by.clone(),
                        note: DecisionNote {
                            scope: Some("session"),
                            granted_by: note.approval_id.clone(),
                            ..DecisionNote::default()
                        },
                    },
                );
            }
        }
        let event = match outcome {
            HoldOutcome::Approved { by, note } => ApprovalEvent {
                seq,
                decision: "approved",
                by: Some(by),
                reason: None,
                note,
            },
            HoldOutcome::Denied { by, reason, note } => ApprovalEvent {
                seq,
                decision: "denied",
                by: Some(by),
                reason: reason.as_deref(),
                note,
            },
            HoldOutcome::Expired => ApprovalEvent {
                seq,
                decision: "expired",
                by: None,
                reason: None,
                note: &NO_NOTE,
            },
        };
        crate::metrics::get().hold_decided(self.protocol, event.decision);
        event
    }
}

static NO_NOTE: DecisionNote = DecisionNote {
    approval_id: None,
    scope: None,
    grant: None,
    until: None,
    granted_by: None,
    token_sha256: None,
    jti: None,
};

/// The kind of [`ApprovalEvent`].
pub const APPROVAL: &str = "approval";
/// The kind of the [`super::Pending`] journaled when a request is held.
pub const APPROVAL_REQUEST: &str = "approval_request";

/// The `approval` event: how a held (or standing-approved) request was decided.
#[derive(Debug, Serialize)]
pub struct ApprovalEvent<'a> {
    pub seq: u64,
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(flatten)]
    pub note: &'a DecisionNote,
}

/// The `approval` event of request `seq`, which passed on a standing approval.
pub fn approval_on_standing(seq: u64, standing: &Standing) -> ApprovalEvent<'_> {
    ApprovalEvent {
        seq,
        decision: "approved",
        by: Some(&standing.by),
        reason: None,
        note: &standing.note,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn standing(by: &str) -> Standing {
        Standing {
            by: by.into(),
            note: DecisionNote::default(),
        }
    }

    #[test]
    fn enforce_refuses_holds_and_passes_on_standing_approvals() {
        let mut gate = Gate::new("test", true, Duration::from_secs(7));
        assert!(matches!(gate.action(Verdict::Allow, None), Action::Forward));
        assert!(matches!(
            gate.action(Verdict::Deny, Some("r")),
            Action::Refuse
        ));
        assert!(matches!(
            gate.action(Verdict::Approve, Some("r")),
            Action::Hold
        ));
        gate.set_grant_check(Arc::new(|rule| {
            (rule == Some("g")).then(|| standing("alice"))
        }));
        assert!(
            matches!(gate.action(Verdict::Approve, Some("g")), Action::PassOnStanding(s) if s.by == "alice")
        );
        // An approval with scope `session` covers the rule's later requests.
        let outcome = HoldOutcome::Approved {
            by: "bob".into(),
            note: DecisionNote {
                scope: Some("session"),
                approval_id: Some("a-3".into()),
                ..DecisionNote::default()
            },
        };
        let event = gate.decided(4, Some("r"), &outcome);
        assert_eq!(
            (event.seq, event.decision, event.by),
            (4, "approved", Some("bob"))
        );
        match gate.action(Verdict::Approve, Some("r")) {
            Action::PassOnStanding(s) => {
                assert_eq!(s.by, "bob");
                assert_eq!(s.note.granted_by.as_deref(), Some("a-3"));
            }
            other => panic!("expected a standing approval, got {other:?}"),
        }
        // Scope `once` is not remembered; other rules still hold.
        assert!(matches!(
            gate.action(Verdict::Approve, Some("other")),
            Action::Hold
        ));
        let request = gate.hold_request(9, "delete".into(), Some("r".into()));
        assert_eq!(request.timeout, Duration::from_secs(7));
        gate.observe(Verdict::Approve, 9, None, || "x".into());
        assert!(
            gate.take_would_hold().is_empty(),
            "enforce mode holds, never announces"
        );
    }

    #[test]
    fn observe_mode_forwards_everything_and_notes_would_be_holds() {
        let mut gate = Gate::new("test", false, Duration::from_secs(1));
        for v in [Verdict::Allow, Verdict::Approve, Verdict::Deny] {
            assert!(matches!(gate.action(v, Some("r")), Action::Forward));
        }
        gate.observe(Verdict::Deny, 1, None, || "drop".into());
        gate.observe(Verdict::Approve, 2, Some("ask"), || "delete".into());
        let noted = gate.take_would_hold();
        assert_eq!(noted.len(), 1);
        assert_eq!((noted[0].seq, noted[0].rule.as_deref()), (2, Some("ask")));
        assert!(gate.take_would_hold().is_empty());
        let denied = HoldOutcome::Denied {
            by: "carol".into(),
            reason: Some("no".into()),
            note: DecisionNote::default(),
        };
        let event = gate.decided(2, Some("ask"), &denied);
        assert_eq!((event.decision, event.reason), ("denied", Some("no")));
        let expired = gate.decided(3, None, &HoldOutcome::Expired);
        assert_eq!((expired.decision, expired.by), ("expired", None));
    }
}
