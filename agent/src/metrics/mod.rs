//! Prometheus metrics (`[agent] metrics_listen`): what an SRE graphs and alerts on.
//!
//! One process-wide [`Metrics`] ([`get`]): counters and histograms are updated where the
//! thing happens (the proxy's session set-up and end, the session core's [`Gate`], the
//! journal writer's commits, the shipper's passes, the lineage reader); gauges that are
//! cheaper to read than to keep (queue depth, pending holds, pre-log size) are refreshed
//! when `/metrics` is scraped ([`Gauges`]). Names follow Prometheus conventions:
//! `nhi_` prefix, `_total` counters, `_seconds` and `_bytes` units.
//!
//! Labels are bounded: workloads by their configured name (or their cgroup pattern when
//! unnamed, never the per-cgroup derived name), targets by name, close reasons and
//! verdicts from fixed sets. Nothing secret or per-request (SQL, paths, users) is a label.
//!
//! [`Gate`]: crate::session::gate::Gate
pub mod server;

use std::sync::{
    atomic::{AtomicU64, Ordering},
    LazyLock,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
        info::Info,
    },
    registry::{Registry, Unit},
};

/// A session's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    pub workload: String,
    pub target: String,
    pub protocol: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    workload: String,
    target: String,
    protocol: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    protocol: &'static str,
    verdict: &'static str,
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    protocol: &'static str,
    decision: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: String,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    sessions_opened: Family<SessionLabels, Counter>,
    sessions_closed: Family<CloseLabels, Counter>,
    sessions_refused: Family<SessionLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    holds_decided: Family<DecisionLabels, Counter>,
    decode_errors: Family<ProtocolLabels, Counter>,
    setup_seconds: Histogram,
    journal_batch_records: Histogram,
    journal_commit_seconds: Histogram,
    journal_fsync_seconds: Histogram,
    journal_failed_batches: Counter,
    ship_errors: Counter,
    ship_segments_uploaded: Counter,
    ship_last_shipped_seq: Gauge,
    ship_segments_pending: Gauge,
    lineage_drops: Counter,
    disk_used_bytes: Gauge,
    disk_budget_bytes: Gauge,
    reloads: Family<ReloadLabels, Counter>,
    stream_sent: Family<StreamLabels, Counter>,
    stream_errors: Family<StreamLabels, Counter>,
    stream_missing: Family<StreamLabels, Counter>,
    stream_cursor: Family<StreamLabels, Gauge>,
    /// Refreshed at each scrape (see [`Gauges`]).
    gauges: GaugeSet,
    /// The last value of the lineage reader's drop counter, so the exported counter only
    /// moves by what was dropped since.
    lineage_seen: AtomicU64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

struct GaugeSet {
    active_connections: Gauge,
    holds_pending: Gauge,
    journal_queue_depth: Gauge,
    journal_prelog_bytes: Gauge,
}

/// Values read when `/metrics` is scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub active_connections: u64,
    pub holds_pending: u64,
    pub journal_queue_depth: u64,
    pub journal_prelog_bytes: u64,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The agent's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 10 µs to about 2.6 s.
    exponential_buckets(0.000_01, 2.0, 19)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("nhi");
        let m = Metrics {
            sessions_opened: Family::default(),
            sessions_closed: Family::default(),
            sessions_refused: Family::default(),
            requests: Family::default(),
            holds_decided: Family::default(),
            decode_errors: Family::default(),
            setup_seconds: Histogram::new(seconds_buckets()),
            journal_batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            journal_commit_seconds: Histogram::new(seconds_buckets()),
            journal_fsync_seconds: Histogram::new(seconds_buckets()),
            journal_failed_batches: Counter::default(),
            ship_errors: Counter::default(),
            ship_segments_uploaded: Counter::default(),
            ship_last_shipped_seq: Gauge::default(),
            ship_segments_pending: Gauge::default(),
            lineage_drops: Counter::default(),
            disk_used_bytes: Gauge::default(),
            disk_budget_bytes: Gauge::default(),
            reloads: Family::default(),
            stream_sent: Family::default(),
            stream_errors: Family::default(),
            stream_missing: Family::default(),
            stream_cursor: Family::default(),
            gauges: GaugeSet {
                active_connections: Gauge::default(),
                holds_pending: Gauge::default(),
                journal_queue_depth: Gauge::default(),
                journal_prelog_bytes: Gauge::default(),
            },
            lineage_seen: AtomicU64::new(0),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "build",
            "The running agent: version, commit and map layout",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("commit", env!("NHI_BUILD_COMMIT").to_string()),
                (
                    "map_layout",
                    nhi_agent_common::MAP_LAYOUT_VERSION.to_string(),
                ),
            ]),
        );
        r.register(
            "sessions_opened",
            "Audited sessions opened (journaled), by workload, target and protocol",
            m.sessions_opened.clone(),
        );
        r.register(
            "sessions_closed",
            "Audited sessions closed, by workload, target, protocol and close reason",
            m.sessions_closed.clone(),
        );
        r.register(
            "sessions_refused",
            "Audited connections refused before a session could be journaled (the journal \
             could not record it)",
            m.sessions_refused.clone(),
        );
        r.register(
            "requests",
            "Judged requests (statements, HTTP and API requests, SSH execs), by protocol, \
             policy verdict and what the agent did (forward, hold, refuse)",
            m.requests.clone(),
        );
        r.register(
            "holds_decided",
            "Held requests decided, by protocol and decision (approved, denied, expired)",
            m.holds_decided.clone(),
        );
        r.register(
            "holds_pending",
            "Requests waiting for an approval now",
            m.gauges.holds_pending.clone(),
        );
        r.register(
            "decode_errors",
            "Sessions ended by a message the agent could not accept (malformed, out of \
             sequence, refused at start-up), by protocol",
            m.decode_errors.clone(),
        );
        r.register(
            "active_connections",
            "Connections the proxy holds open now",
            m.gauges.active_connections.clone(),
        );
        r.register_with_unit(
            "connection_setup",
            "From accepting an audited connection to its session being journaled (process \
             read, workload and target resolved), before the upstream connect",
            Unit::Seconds,
            m.setup_seconds.clone(),
        );
        r.register(
            "journal_queue_depth",
            "Commands waiting for the journal writer",
            m.gauges.journal_queue_depth.clone(),
        );
        r.register(
            "journal_batch_records",
            "Records (commands and pre-log records) per journal commit",
            m.journal_batch_records.clone(),
        );
        r.register_with_unit(
            "journal_commit",
            "One journal batch, from its first statement to its commit",
            Unit::Seconds,
            m.journal_commit_seconds.clone(),
        );
        r.register_with_unit(
            "journal_fsync",
            "The commit of one journal batch (SQLite's WAL write and fsync)",
            Unit::Seconds,
            m.journal_fsync_seconds.clone(),
        );
        r.register(
            "journal_failed_batches",
            "Journal batches that could not be committed",
            m.journal_failed_batches.clone(),
        );
        r.register_with_unit(
            "journal_prelog",
            "Size of the pre-log file (records written, not yet truncated)",
            Unit::Bytes,
            m.gauges.journal_prelog_bytes.clone(),
        );
        r.register(
            "ship_errors",
            "Shipping passes that failed",
            m.ship_errors.clone(),
        );
        r.register(
            "ship_segments_uploaded",
            "Sealed journal segments uploaded",
            m.ship_segments_uploaded.clone(),
        );
        r.register(
            "ship_last_shipped_seq",
            "Sequence number of the last segment uploaded",
            m.ship_last_shipped_seq.clone(),
        );
        r.register(
            "ship_segments_pending",
            "Sealed segments not uploaded yet (as of the last pass)",
            m.ship_segments_pending.clone(),
        );
        r.register(
            "lineage_drops",
            "Process lineage records the kernel could not hand over (ring buffer full)",
            m.lineage_drops.clone(),
        );
        r.register_with_unit(
            "disk_used",
            "Bytes used by the journal directory (as of the last measurement)",
            Unit::Bytes,
            m.disk_used_bytes.clone(),
        );
        r.register_with_unit(
            "disk_budget",
            "[retention] disk_budget (0: none)",
            Unit::Bytes,
            m.disk_budget_bytes.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads, by result (applied, rejected)",
            m.reloads.clone(),
        );
        r.register(
            "stream_records_sent",
            "Records a [[stream]] sink acknowledged",
            m.stream_sent.clone(),
        );
        r.register(
            "stream_send_errors",
            "Failed sends to a [[stream]] sink (retried with backoff)",
            m.stream_errors.clone(),
        );
        r.register(
            "stream_missing_events",
            "Events deleted from the journal before a [[stream]] sent them",
            m.stream_missing.clone(),
        );
        r.register(
            "stream_cursor_event_id",
            "The journal event id a [[stream]] has delivered up to",
            m.stream_cursor.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A session was journaled; `setup` is the time from its accept.
    pub fn session_opened(&self, labels: &SessionLabels, setup: std::time::Duration) {
        self.sessions_opened.get_or_create(labels).inc();
        self.setup_seconds.observe(setup.as_secs_f64());
    }

    /// A session ended with `reason` (a [`crate::proxy::relay::CloseReason::label`]).
    pub fn session_closed(&self, labels: &SessionLabels, reason: &'static str) {
        self.sessions_closed
            .get_or_create(&CloseLabels {
                workload: labels.workload.clone(),
                target: labels.target.clone(),
                protocol: labels.protocol.clone(),
                reason,
            })
            .inc();
        if reason == "protocol_error" {
            self.decode_errors
                .get_or_create(&ProtocolLabels {
                    protocol: labels.protocol.clone(),
                })
                .inc();
        }
    }

    /// An audited connection refused because the journal could not record its session.
    pub fn session_refused(&self, labels: &SessionLabels) {
        self.sessions_refused.get_or_create(labels).inc();
    }

    /// A request judged `verdict` and handled by `action` (`forward`, `hold`, `refuse`).
    pub fn request(&self, protocol: &'static str, verdict: &'static str, action: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                protocol,
                verdict,
                action,
            })
            .inc();
    }

    /// A held request was decided (`approved`, `denied`, `expired`).
    pub fn hold_decided(&self, protocol: &'static str, decision: &'static str) {
        self.holds_decided
            .get_or_create(&DecisionLabels { protocol, decision })
            .inc();
    }

    /// One journal batch committed: `records` in it, `took` from its first statement to
    /// the end of its commit, `commit` the commit alone.
    pub fn journal_batch(
        &self,
        records: u64,
        took: std::time::Duration,
        commit: std::time::Duration,
    ) {
        self.journal_batch_records.observe(records as f64);
        self.journal_commit_seconds.observe(took.as_secs_f64());
        self.journal_fsync_seconds.observe(commit.as_secs_f64());
    }

    pub fn journal_batch_failed(&self) {
        self.journal_failed_batches.inc();
    }

    /// A shipping pass ended, `ok` or failed: the segments it `uploaded` and how many
    /// are still `pending`.
    pub fn ship_pass(&self, ok: bool, uploaded: &[u64], pending: u64) {
        if !ok {
            self.ship_errors.inc();
        }
        self.ship_segments_uploaded.inc_by(uploaded.len() as u64);
        if let Some(&last) = uploaded.iter().max() {
            self.ship_last_shipped_seq.set(last as i64);
        }
        self.ship_segments_pending.set(pending as i64);
    }

    /// The lineage reader's running total of dropped records.
    pub fn lineage_dropped_total(&self, total: u64) {
        let before = self.lineage_seen.swap(total, Ordering::Relaxed);
        if total > before {
            self.lineage_drops.inc_by(total - before);
        }
    }

    /// A measurement of the journal directory against its budget.
    pub fn disk(&self, used: u64, budget: Option<u64>) {
        self.disk_used_bytes.set(used as i64);
        self.disk_budget_bytes.set(budget.unwrap_or(0) as i64);
    }

    /// A stream's sink took `records`.
    pub fn stream_sent(&self, stream: &str, records: u64) {
        self.stream_sent
            .get_or_create(&StreamLabels {
                stream: stream.to_string(),
            })
            .inc_by(records);
    }

    /// A send to a stream's sink failed.
    pub fn stream_send_failed(&self, stream: &str) {
        self.stream_errors
            .get_or_create(&StreamLabels {
                stream: stream.to_string(),
            })
            .inc();
    }

    /// `count` events were gone before the stream sent them.
    pub fn stream_missing(&self, stream: &str, count: u64) {
        self.stream_missing
            .get_or_create(&StreamLabels {
                stream: stream.to_string(),
            })
            .inc_by(count);
    }

    /// A stream's cursor moved to `event_id`.
    pub fn stream_cursor(&self, stream: &str, event_id: i64) {
        self.stream_cursor
            .get_or_create(&StreamLabels {
                stream: stream.to_string(),
            })
            .set(event_id);
    }

    /// A configuration reload was `applied` or `rejected`.
    pub fn reload(&self, applied: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                result: if applied { "applied" } else { "rejected" },
            })
            .inc();
    }

    /// The metrics in the Prometheus/OpenMetrics text format, gauges refreshed from
    /// `gauges` first.
    pub fn encode(&self, gauges: Gauges) -> String {
        let g = &self.gauges;
        g.active_connections.set(gauges.active_connections as i64);
        g.holds_pending.set(gauges.holds_pending as i64);
        g.journal_queue_depth.set(gauges.journal_queue_depth as i64);
        g.journal_prelog_bytes
            .set(gauges.journal_prelog_bytes as i64);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line starting with `prefix` (name and labels).
    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counters_move_by_what_happened_and_names_follow_conventions() {
        let m = Metrics::new();
        let labels = SessionLabels {
            workload: "ci".into(),
            target: "db".into(),
            protocol: "postgres".into(),
        };
        m.session_opened(&labels, std::time::Duration::from_micros(150));
        m.session_opened(&labels, std::time::Duration::from_micros(90));
        m.session_closed(&labels, "client_closed");
        m.session_closed(&labels, "protocol_error");
        m.request("postgres", "deny", "refuse");
        m.request("postgres", "allow", "forward");
        m.request("postgres", "allow", "forward");
        m.hold_decided("http", "approved");
        m.journal_batch(
            12,
            std::time::Duration::from_millis(2),
            std::time::Duration::from_millis(1),
        );
        m.ship_pass(false, &[], 3);
        m.ship_pass(true, &[3, 4], 1);
        m.lineage_dropped_total(5);
        m.lineage_dropped_total(7);
        m.disk(1000, Some(4000));
        m.reload(false);
        m.stream_sent("siem", 3);
        m.stream_send_failed("siem");
        m.stream_cursor("siem", 41);
        let text = m.encode(Gauges {
            active_connections: 3,
            holds_pending: 2,
            journal_queue_depth: 1,
            journal_prelog_bytes: 4096,
        });
        let s = |p: &str| sample(&text, p).unwrap_or_else(|| panic!("no {p} in\n{text}"));
        assert_eq!(
            s(r#"nhi_sessions_opened_total{workload="ci",target="db",protocol="postgres"}"#),
            2.0
        );
        assert_eq!(
            s(
                r#"nhi_sessions_closed_total{workload="ci",target="db",protocol="postgres",reason="client_closed"}"#
            ),
            1.0
        );
        assert_eq!(s(r#"nhi_decode_errors_total{protocol="postgres"}"#), 1.0);
        assert_eq!(
            s(r#"nhi_requests_total{protocol="postgres",verdict="allow",action="forward"}"#),
            2.0
        );
        assert_eq!(
            s(r#"nhi_requests_total{protocol="postgres",verdict="deny",action="refuse"}"#),
            1.0
        );
        assert_eq!(
            s(r#"nhi_holds_decided_total{protocol="http",decision="approved"}"#),
            1.0
        );
        assert_eq!(s("nhi_holds_pending "), 2.0);
        assert_eq!(s("nhi_active_connections "), 3.0);
        assert_eq!(s("nhi_connection_setup_seconds_count "), 2.0);
        assert_eq!(s("nhi_journal_batch_records_count "), 1.0);
        assert_eq!(s("nhi_journal_fsync_seconds_count "), 1.0);
        assert_eq!(s("nhi_journal_prelog_bytes "), 4096.0);
        assert_eq!(s("nhi_ship_errors_total "), 1.0);
        assert_eq!(s("nhi_ship_segments_uploaded_total "), 2.0);
        assert_eq!(s("nhi_ship_last_shipped_seq "), 4.0);
        assert_eq!(s("nhi_ship_segments_pending "), 1.0);
        assert_eq!(s("nhi_lineage_drops_total "), 7.0);
        assert_eq!(s("nhi_disk_used_bytes "), 1000.0);
        assert_eq!(s("nhi_disk_budget_bytes "), 4000.0);
        assert_eq!(s(r#"nhi_config_reloads_total{result="rejected"}"#), 1.0);
        assert_eq!(s(r#"nhi_stream_records_sent_total{stream="siem"}"#), 3.0);
        assert_eq!(s(r#"nhi_stream_send_errors_total{stream="siem"}"#), 1.0);
        assert_eq!(s(r#"nhi_stream_cursor_event_id{stream="siem"}"#), 41.0);
        assert!(text.contains("# TYPE nhi_connection_setup_seconds histogram"));
        assert!(text.contains("nhi_build_info{version="), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
