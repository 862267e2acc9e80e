//! Just-in-time approvals: statements held by a policy rule with `verdict = "approve"`
//! wait here until a human decides on them.
//!
//! - [`Registry`] keeps the pending requests and the active grants and implements the
//!   session engine's [`Approver`](crate::session::Approver): `hold` registers a request,
//!   announces it (log line, [`webhook`]) and waits for a decision (or the policy's
//!   `approval_timeout`, which counts as denied).
//! - Decisions come from the control socket ([`server`]: root or `approver_group`,
//!   checked with `SO_PEERCRED`), or as signed tokens ([`token`]) through the socket
//!   (`submit`) or the loopback HTTP endpoint ([`http`]); the signature is the authority.
//! - An approval reaches `once` (the statement), the `session` (later statements of the
//!   same rule in that session, remembered by the session's flow) or is a time-boxed
//!   `grant` over workload × target × rule ([`scope`]).
//! - [`wire`] is the control socket's format, shared with `nhi-agent approvals`;
//!   [`config`] is the `[approvals]` section.
//!
//! Grants survive a restart: with [`Registry::with_state`] the registry keeps them in
//! `<state_dir>/approvals.json` ([`crate::state`]), together with the used decision
//! tokens (by jti or SHA-256) and the request and grant numbering, so an id is never
//! handed out twice and a decision token can never decide a later request that got the
//! same id. Their creation, expiry (also of those that ran out while the agent was
//! down) and revocation are journaled as `approval_grant` events, their restoration as a
//! `state_restored` event. An invalid file is moved aside and the agent starts without
//! grants (statements are held again: the safe side), numbering requests after the
//! current Unix time so earlier ids are not reused.
//!
//! Architecture invariant: a request leaves the registry exactly once: decided,
//! expired, or dropped with its session. A decision on a request that is gone is an
//! error for the approver, never a decision for some other statement.
pub mod config;
pub mod http;
pub mod scope;
pub mod server;
pub mod token;
pub mod webhook;
pub mod wire;

use std::{
    borrow::Cow,
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::{
    journal::{Event, JournalHandle, NO_SESSION},
    session::{Approver, DecisionNote, HoldOutcome, HoldRequest, PendingHold, Requester, Standing},
    state::{Loaded, Restoration, StateFile},
};
pub use config::{ApprovalsConfig, RawApprovals};
use scope::{check_scope, Grant, GrantSpec, Grants, Scope, ScopeError};
use token::{DecisionKeys, ReplayGuard, TokenError, VerifiedDecision};
use webhook::Announcer;
pub use wire::Pending;

/// Why a decision (or a grant operation) could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// No pending request has this id (never existed, already decided, or expired).
    #[error("no pending request {id} (already decided, expired, or its session ended)")]
    NotFound { id: String },
    /// No active grant has this id.
    #[error("no active grant {id}")]
    NoGrant { id: String },
    /// The scope or its duration is refused.
    #[error("{0}")]
    Scope(#[from] ScopeError),
    /// The signed token is refused.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// The token decides on another request than the one addressed.
    #[error("the token is for request {token}, not {addressed}")]
    Mismatch { token: String, addressed: String },
}

impl DecideError {
    /// The HTTP status the decision endpoint answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            DecideError::NotFound { .. } | DecideError::NoGrant { .. } => 404,
            DecideError::Token(TokenError::Replay(_)) => 409,
            DecideError::Token(TokenError::Malformed(_)) => 400,
            DecideError::Token(_) => 401,
            DecideError::Scope(_) | DecideError::Mismatch { .. } => 400,
        }
    }
}

/// A decision on one pending request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Approve (true) or deny.
    pub approve: bool,
    /// Who decides, as journaled ("uid 0 (root)", "jwt:alice (kid k1)").
    pub by: String,
    pub reason: Option<String>,
    /// How far an approval reaches (ignored for a denial).
    pub scope: Scope,
    /// The length of a `grant` ("15m").
    pub grant_for: Option<String>,
}

impl Decision {
    /// A plain `once` approval or denial.
    pub fn new(approve: bool, by: impl Into<String>) -> Self {
        Self {
            approve,
            by: by.into(),
            reason: None,
            scope: Scope::Once,
            grant_for: None,
        }
    }
}

/// What a decision did.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The request, as it was pending.
    pub request: Pending,
    /// Who decided.
    pub by: String,
    /// The grant created (approval with scope `grant`).
    pub grant: Option<Grant>,
}

/// The time source; a parameter so grant expiry can be tested without waiting.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The pending requests and active grants, shared by the proxy sessions, the control
/// socket and the HTTP endpoint.
#[derive(Clone)]
pub struct Registry {
    state: Arc<Mutex<State>>,
    /// Shown in the log line that tells how to approve.
    socket: PathBuf,
    journal: Option<JournalHandle>,
    /// What `[approvals]` configures; replaced as a whole on reload.
    settings: Arc<std::sync::RwLock<Settings>>,
    clock: Clock,
    /// Where grants, used tokens and numbering are kept across restarts.
    file: Option<StateFile>,
}

/// The reloadable part of a [`Registry`]: `[approvals]`' webhook, decision keys and
/// longest grant.
#[derive(Clone)]
struct Settings {
    announcer: Option<Announcer>,
    keys: Option<Arc<DecisionKeys>>,
    max_grant: Duration,
}

#[derive(Default)]
struct State {
    next: u64,
    /// Request numbers up to this one may have been handed out (saved in blocks of
    /// [`ID_BLOCK`], so not every request costs a write).
    reserved: u64,
    pending: BTreeMap<u64, Entry>,
    grants: Grants,
    replay: ReplayGuard,
}

/// Request numbers are reserved in the state file this many at a time.
const ID_BLOCK: u64 = 100;

/// The state file's name in `[agent] state_dir`.
pub const STATE_FILE: &str = "approvals.json";
/// Its kind (and the `kind` of its `state_restored` event).
pub const STATE_KIND: &str = "approval_grants";

/// What `approvals.json` holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    /// Request numbers up to this one may have been used.
    reserved_requests: u64,
    /// The highest grant number handed out.
    next_grant: u64,
    grants: Vec<Grant>,
    /// Used decision tokens: replay key (jti or SHA-256) -> `exp`.
    used_tokens: BTreeMap<String, u64>,
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
            journal: None,
            settings: Arc::new(std::sync::RwLock::new(Settings {
                announcer: None,
                keys: None,
                max_grant: config::DEFAULT_MAX_GRANT,
            })),
            clock: Arc::new(SystemTime::now),
            file: None,
        }
    }

    /// Keeps grants, used decision tokens and numbering in `state_dir` (see the module
    /// documentation); call [`Registry::restore`] before serving.
    pub fn with_state(mut self, state_dir: &std::path::Path) -> Self {
        self.file = Some(StateFile::new(state_dir, STATE_FILE, STATE_KIND));
        self
    }

    /// Takes back what the state file holds (agent start): grants still in force, used
    /// decision tokens, numbering. Grants that ran out while the agent was down, or are
    /// longer than `max_grant` allows now, are dropped and journaled as expired. The
    /// result is logged; the caller journals it ([`crate::state::restored_event`]).
    pub fn restore(&self) -> Option<Restoration> {
        let file = self.file.as_ref()?;
        let now = (self.clock)();
        let loaded = file.load::<Saved>(|saved| {
            for g in &saved.grants {
                if g.id
                    .strip_prefix("g-")
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_none()
                {
                    return Err(format!("bad grant id {:?}", g.id));
                }
                for (what, at) in [("created_at", &g.created_at), ("until", &g.until)] {
                    humantime::parse_rfc3339(at)
                        .map_err(|e| format!("grant {}: bad {what} {at:?}: {e}", g.id))?;
                }
            }
            Ok(())
        });
        let restoration = match loaded {
            Loaded::Missing => {
                let r = Restoration::new(file, crate::state::Outcome::Missing);
                return Some(r);
            }
            Loaded::Invalid { reason, moved_to } => {
                // Ids after the current time: no earlier run can have reached them
                // unless it handed out more than one request per second on average.
                let floor = crate::state::unix_secs(now);
                {
                    let mut state = self.lock();
                    state.next = state.next.max(floor);
                    state.reserved = state.next;
                }
                Restoration::invalid(
                    file,
                    reason,
                    moved_to,
                    "started without grants (held statements wait for a new approval); request ids continue after the current Unix time",
                )
            }
            Loaded::Found(saved) => {
                let max_grant = self.settings().max_grant;
                let (keep, too_long): (Vec<Grant>, Vec<Grant>) =
                    saved.grants.into_iter().partition(|g| {
                        match (
                            humantime::parse_rfc3339(&g.created_at),
                            humantime::parse_rfc3339(&g.until),
                        ) {
                            (Ok(from), Ok(until)) => until
                                .duration_since(from)
                                .is_ok_and(|d| d <= max_grant + Duration::from_secs(1)),
                            // Refused as a whole by Grants::restore.
                            _ => true,
                        }
                    });
                let mut state = self.lock();
                let result = state.grants.restore(saved.next_grant, keep, now);
                let (restored, expired) = match result {
                    Ok(r) => r,
                    Err(reason) => {
                        drop(state);
                        return Some(Restoration::invalid(
                            file,
                            reason,
                            None,
                            "started without grants (held statements wait for a new approval)",
                        ));
                    }
                };
                let dropped_tokens = state.replay.restore(saved.used_tokens, unix_secs(now));
                state.next = state.next.max(saved.reserved_requests);
                state.reserved = state.next;
                drop(state);
                for g in expired.iter().chain(&too_long) {
                    self.journal_grant("expired", g);
                }
                for g in &too_long {
                    warn!(grant = %g.id, max_grant = %humantime::format_duration(max_grant), "saved grant is longer than [approvals] max_grant; not restored");
                }
                let mut r = Restoration::new(file, crate::state::Outcome::Restored);
                r.restored = restored.len();
                r.dropped = expired.len() + too_long.len();
                r.detail = serde_json::json!({
                    "grants": restored.iter().map(|g| &g.id).collect::<Vec<_>>(),
                    "expired": expired.iter().map(|g| &g.id).collect::<Vec<_>>(),
                    "over_max_grant": too_long.iter().map(|g| &g.id).collect::<Vec<_>>(),
                    "used_tokens": self.lock().replay.len(),
                    "used_tokens_expired": dropped_tokens,
                });
                r
            }
        };
        // Write back what is in force now (expired grants gone, numbering reserved).
        {
            let mut state = self.lock();
            state.reserved = state.next + ID_BLOCK;
            self.save(&state);
        }
        restoration.log();
        Some(restoration)
    }

    /// Writes the state file (when there is one). A failure is logged: what is in memory
    /// stays in force, it only would not survive a restart.
    fn save(&self, state: &State) {
        let Some(file) = &self.file else { return };
        let (next_grant, grants) = state.grants.snapshot();
        let saved = Saved {
            reserved_requests: state.reserved,
            next_grant,
            grants,
            used_tokens: state.replay.entries(),
        };
        if let Err(e) = file.store(&saved) {
            error!(error = %e, "cannot save the approvals state; grants and used tokens would not survive a restart");
        }
    }

    /// Journals grant changes (agent-level events) in `journal`.
    pub fn with_journal(mut self, journal: JournalHandle) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Announces requests to a webhook.
    pub fn with_announcer(self, announcer: Announcer) -> Self {
        self.settings_mut().announcer = Some(announcer);
        self
    }

    /// Accepts decision tokens signed by one of `keys`.
    pub fn with_keys(self, keys: DecisionKeys) -> Self {
        self.settings_mut().keys = Some(Arc::new(keys));
        self
    }

    /// Bounds `grant` durations (`[approvals] max_grant`).
    pub fn with_max_grant(self, max_grant: Duration) -> Self {
        self.settings_mut().max_grant = max_grant;
        self
    }

    /// A reload of `[approvals]`: from now on, requests are announced by `announcer`,
    /// tokens checked against `keys` and grants bounded by `max_grant` (grants already
    /// given keep their end). Every clone of this registry sees the change.
    pub fn reconfigure(
        &self,
        announcer: Option<Announcer>,
        keys: Option<DecisionKeys>,
        max_grant: Duration,
    ) {
        *self.settings_mut() = Settings {
            announcer,
            keys: keys.map(Arc::new),
            max_grant,
        };
    }

    fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn settings_mut(&self) -> std::sync::RwLockWriteGuard<'_, Settings> {
        self.settings.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
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

    /// Takes a decision on a pending request.
    pub fn decide(&self, id: &str, decision: Decision) -> Result<Decided, DecideError> {
        self.decide_inner(id, decision, None)
    }

    /// Verifies a signed decision token and takes its decision. With `addressed`, the
    /// token must be for that request. `via` names the channel and caller (logged).
    pub fn submit(
        &self,
        token: &str,
        addressed: Option<&str>,
        via: &str,
    ) -> Result<Decided, DecideError> {
        let keys = self.settings().keys.ok_or(TokenError::NoKeys)?;
        let verified = match keys.verify(token) {
            Ok(v) => v,
            Err(e) => {
                warn!(via, error = %e, "signed decision refused");
                return Err(e.into());
            }
        };
        if let Some(addressed) = addressed {
            if addressed != verified.approval_id {
                return Err(DecideError::Mismatch {
                    token: verified.approval_id,
                    addressed: addressed.to_owned(),
                });
            }
        }
        let decision = Decision {
            approve: verified.approve,
            by: verified.by(),
            reason: verified.reason.clone(),
            scope: verified.scope,
            grant_for: verified.grant_for.clone(),
        };
        let id = verified.approval_id.clone();
        let result = self.decide_inner(&id, decision, Some(&verified));
        match &result {
            Ok(d) => info!(
                id = %id, via, by = %d.by, sha256 = %verified.sha256, jti = ?verified.jti,
                "signed decision accepted"
            ),
            Err(e) => warn!(id = %id, via, error = %e, "signed decision refused"),
        }
        result
    }

    fn decide_inner(
        &self,
        id: &str,
        decision: Decision,
        token: Option<&VerifiedDecision>,
    ) -> Result<Decided, DecideError> {
        let n = parse_id(id)?;
        let length = if decision.approve {
            check_scope(
                decision.scope,
                decision.grant_for.as_deref(),
                self.settings().max_grant,
            )?
        } else {
            None
        };
        let now = (self.clock)();
        let (entry, grant) = {
            let mut state = self.lock();
            if let Some(t) = token {
                state.replay.check(t)?;
            }
            let entry = state
                .pending
                .remove(&n)
                .ok_or_else(|| DecideError::NotFound { id: id.to_owned() })?;
            if let Some(t) = token {
                state.replay.remember(t, unix_secs(now));
            }
            let grant = length.map(|length| {
                state.grants.add(
                    GrantSpec {
                        workload: &entry.info.workload,
                        target: &entry.info.target,
                        rule: entry.info.rule.as_deref(),
                        approval_id: &entry.info.id,
                        approver: &decision.by,
                    },
                    now,
                    length,
                )
            });
            if token.is_some() || grant.is_some() {
                self.save(&state);
            }
            (entry, grant)
        };
        let note = DecisionNote {
            approval_id: Some(entry.info.id.clone()),
            scope: decision.approve.then_some(decision.scope.as_str()),
            grant: grant.as_ref().map(|g| g.id.clone()),
            until: grant.as_ref().map(|g| g.until.clone()),
            granted_by: None,
            token_sha256: token.map(|t| t.sha256.clone()),
            jti: token.and_then(|t| t.jti.clone()),
        };
        let outcome = if decision.approve {
            HoldOutcome::Approved {
                by: decision.by.clone(),
                note,
            }
        } else {
            HoldOutcome::Denied {
                by: decision.by.clone(),
                reason: decision.reason.clone(),
                note,
            }
        };
        // The session may have ended a moment ago; the request is gone either way.
        let _ = entry.decide.send(outcome);
        if let Some(g) = &grant {
            info!(grant = %g.id, id = %entry.info.id, until = %g.until, by = %g.approver, "grant created");
            self.journal_grant("created", g);
        }
        Ok(Decided {
            request: entry.info,
            by: decision.by,
            grant,
        })
    }

    /// The active grants (expired ones are journaled and dropped first).
    pub fn grants(&self) -> Vec<Grant> {
        self.sweep();
        let now = (self.clock)();
        self.lock().grants.active(now)
    }

    /// Ends a grant before its time.
    pub fn revoke(&self, id: &str, by: &str) -> Result<Grant, DecideError> {
        let grant = {
            let mut state = self.lock();
            let grant = state
                .grants
                .revoke(id)
                .ok_or_else(|| DecideError::NoGrant { id: id.to_owned() })?;
            self.save(&state);
            grant
        };
        info!(grant = %grant.id, by, "grant revoked");
        self.journal_grant_by("revoked", &grant, Some(by));
        Ok(grant)
    }

    /// Drops expired grants, journaling each.
    pub fn sweep(&self) {
        let now = (self.clock)();
        let gone = {
            let mut state = self.lock();
            let gone = state.grants.expire(now);
            if !gone.is_empty() {
                self.save(&state);
            }
            gone
        };
        for g in &gone {
            info!(grant = %g.id, "grant expired");
            self.journal_grant("expired", g);
        }
    }

    fn journal_grant(&self, change: &str, grant: &Grant) {
        self.journal_grant_by(change, grant, None);
    }

    fn journal_grant_by(&self, change: &str, grant: &Grant, by: Option<&str>) {
        let Some(journal) = &self.journal else {
            return;
        };
        let data = serde_json::json!({
            "change": change,
            "grant": grant,
            "by": by,
        });
        let event = Event {
            session: NO_SESSION,
            at: SystemTime::now(),
            kind: Cow::Borrowed("approval_grant"),
            data: data.to_string(),
        };
        if let Err(e) = journal.record(&[event]) {
            warn!(grant = %grant.id, change, error = %e, "cannot journal a grant change");
        }
    }

    /// A request record for `who` and `request`, with a new id.
    fn pending(&self, state: &mut State, who: &Requester, request: &HoldRequest) -> (u64, Pending) {
        let now = (self.clock)();
        state.next += 1;
        let n = state.next;
        if self.file.is_some() && n > state.reserved {
            state.reserved = n + ID_BLOCK;
            self.save(state);
        }
        let info = Pending {
            id: format_id(n),
            session: who.session,
            workload: who.identity.workload.clone(),
            process: who.identity.process(),
            target: who.identity.target.clone(),
            seq: request.seq,
            statement: request.text.clone(),
            rule: request.rule.clone(),
            requested_at: humantime::format_rfc3339_seconds(now).to_string(),
            expires_at: humantime::format_rfc3339_seconds(now + request.timeout).to_string(),
        };
        (n, info)
    }

    /// Registers a request; returns its number, its record and the receiver of the decision.
    fn register(
        &self,
        who: &Requester,
        request: &HoldRequest,
    ) -> (u64, Pending, oneshot::Receiver<HoldOutcome>) {
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        let (n, info) = self.pending(&mut state, who, request);
        state.pending.insert(
            n,
            Entry {
                info: info.clone(),
                decide: tx,
            },
        );
        (n, info, rx)
    }

    fn announce(&self, info: &Pending, would_hold: bool) {
        let Some(announcer) = self.settings().announcer else {
            return;
        };
        announcer.announce(&announcement(info, would_hold, &self.socket));
    }
}

/// The webhook body: the request, plus a human `text` (chat incoming-webhooks show it).
pub fn announcement(
    info: &Pending,
    would_hold: bool,
    socket: &std::path::Path,
) -> serde_json::Value {
    let exe = info.process.exe.as_deref().unwrap_or("?");
    let text = if would_hold {
        format!(
            "[observe] would have been held for approval ({id}): {w} -> {t}, rule {r}, pid {pid} {exe}: {s}",
            id = info.id,
            w = info.workload,
            t = info.target,
            r = info.rule.as_deref().unwrap_or("default"),
            pid = info.process.pid,
            s = one_line(&info.statement, 300),
        )
    } else {
        format!(
            "Approval needed ({id}): {w} -> {t}, rule {r}, pid {pid} {exe}: {s} -- approve with `nhi-agent approvals approve {id} --socket {sock}` before {exp}",
            id = info.id,
            w = info.workload,
            t = info.target,
            r = info.rule.as_deref().unwrap_or("default"),
            pid = info.process.pid,
            s = one_line(&info.statement, 300),
            sock = socket.display(),
            exp = info.expires_at,
        )
    };
    let mut v = serde_json::to_value(info).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("event".into(), "approval_request".into());
        o.insert("would_hold".into(), would_hold.into());
        o.insert("text".into(), text.into());
    }
    v
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}...", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
    fn hold(&self, who: &Requester, request: HoldRequest) -> PendingHold {
        let (n, info, rx) = self.register(who, &request);
        info!(
            id = %info.id,
            session = who.session,
            workload = %who.identity.workload,
            target = %who.identity.target,
            pid = who.identity.pid,
            seq = request.seq,
            rule = info.rule.as_deref().unwrap_or("default"),
            timeout = %humantime::format_duration(request.timeout),
            "statement waits for approval: `nhi-agent approvals approve {id} --socket {socket}` \
             (or `deny {id}`)",
            id = info.id,
            socket = self.socket.display(),
        );
        self.announce(&info, false);
        let forget = Forget {
            state: self.state.clone(),
            n,
        };
        let id = info.id.clone();
        let wait = Box::pin(async move {
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
        });
        PendingHold {
            announcement: info,
            wait,
        }
    }

    fn would_hold(&self, who: &Requester, request: HoldRequest) {
        let info = {
            let mut state = self.lock();
            self.pending(&mut state, who, &request).1
        };
        info!(
            id = %info.id,
            session = who.session,
            workload = %who.identity.workload,
            target = %who.identity.target,
            seq = request.seq,
            rule = info.rule.as_deref().unwrap_or("default"),
            "observe mode: statement would have been held for approval (forwarded)"
        );
        self.announce(&info, true);
    }

    fn grant_for(&self, workload: &str, target: &str, rule: Option<&str>) -> Option<Standing> {
        self.sweep();
        let now = (self.clock)();
        let state = self.lock();
        let g = state.grants.covering(workload, target, rule, now)?;
        Some(Standing {
            by: g.approver.clone(),
            note: DecisionNote {
                approval_id: None,
                scope: Some(Scope::Grant.as_str()),
                grant: Some(g.id.clone()),
                until: Some(g.until.clone()),
                granted_by: Some(g.approval_id.clone()),
                token_sha256: None,
                jti: None,
            },
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
