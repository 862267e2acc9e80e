//! `nhi-agent run`: load the config, open the journal, attach the kernel programs,
//! serve until SIGTERM/SIGINT; SIGHUP reloads the config.
use std::{
    collections::HashMap,
    path::PathBuf,
    process::ExitCode,
    sync::{atomic::AtomicUsize, Arc, Mutex, RwLock},
};

use anyhow::Context as _;
use clap::Args;
use nhi_agent_common::CgroupPolicy;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use tracing::{error, info, warn};

use crate::{
    approvals, attest,
    config::{self, Config, FailMode},
    ebpf::{self, InstallOptions, Interceptor},
    identity::CgroupFs,
    journal, proxy, sdnotify,
};

/// Exit status for a configuration the agent refuses (EX_USAGE).
pub const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Detach the programs when the agent exits (fail open), whatever `[agent] fail` says.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Journal file, overriding `[agent] journal`.
    #[arg(long)]
    pub journal: Option<PathBuf>,
}

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut config = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            // Nothing is attached yet: a broken config changes nothing on the host.
            eprintln!("{}error: {e}", super::logging::error_prefix());
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    if let Some(journal) = &args.journal {
        config.agent.journal = journal.clone();
    }
    if args.detach_on_exit {
        config.agent.fail = FailMode::Open;
    }
    // What the configuration's files hold, read before anything is bound or attached,
    // as `policy check` reads it: a file it refuses is a bad configuration (64).
    let loaded = match super::preflight::load(&config, proxy::StateAccess::Create) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{}error: {e:#}", super::logging::error_prefix());
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nhi-agent")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, args.config.clone(), loaded))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    config: Config,
    config_path: PathBuf,
    loaded: super::preflight::Loaded,
) -> anyhow::Result<()> {
    // What the kernel offers, before anything is created: a kernel without a required
    // feature gets one sentence naming it (and the release that has it), not a verifier
    // dump from the real programs.
    let features = ebpf::probe::Report::probe();
    if let Some(why) = features.refusal() {
        anyhow::bail!(why);
    }
    raise_nofile_limit(config.agent.max_connections);
    let cgroups = CgroupFs::discover(config.agent.cgroup_root.as_deref())
        .context("finding the cgroup2 mount")?;
    if let Some(dir) = config.agent.journal.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the journal directory {}", dir.display()))?;
    }
    // Credentials, keys, certificates, the signing key and host id (created at the first
    // start; the journal's segments are sealed with them), JWKS, decision keys, the
    // shipping secret: read by `run` before anything is attached (`preflight`).
    let super::preflight::Loaded {
        snapshot,
        host,
        approver_gid,
        verifier,
        decision_keys,
        shipper,
        budget,
    } = loaded;
    let Some((host_key, host_id, key_path)) = host else {
        anyhow::bail!("no journal signing key was prepared");
    };
    info!(
        key = %key_path.display(),
        fingerprint = %host_key.public().fingerprint(),
        host_id,
        "journal signing key"
    );
    if let Some(auditors) = &config.evidence.auditors {
        info!(
            recipients = %auditors.recipients().join(", "),
            "originals of masked values are sealed for the auditors"
        );
    }
    let journal_options = journal::JournalOptions {
        fsync: match config.agent.journal_fsync {
            config::JournalFsync::Group => journal::FsyncPolicy::Group,
            config::JournalFsync::Each => journal::FsyncPolicy::Each,
        },
        segments: Some(journal::SegmentOptions {
            key: Arc::new(host_key),
            host_id,
            max_bytes: config.evidence.segment_max_bytes,
            max_age: config.evidence.segment_max_age,
            checkpoint_interval: config.evidence.checkpoint_interval,
        }),
        auditors: config.evidence.auditors.clone(),
        ..journal::JournalOptions::default()
    };
    let journal = journal::open(&config.agent.journal, journal_options)
        .with_context(|| format!("opening the journal {}", config.agent.journal.display()))?;
    // Live streams to SIEMs: threads that only read the journal (see crate::stream);
    // their token and CA files are read now, before anything is attached.
    let streams = crate::stream::Streams::start(
        &config.streams,
        &config.agent.journal,
        &config.agent.state_dir,
        super::stream_format::make,
    )
    .context("starting the [[stream]] sinks")?;
    // Bind before attaching: if the port is taken, fail before redirecting anything.
    let listeners = proxy::bind(config.agent.listen_port).with_context(|| {
        format!(
            "binding the proxy on 127.0.0.1:{0} and [::1]:{0}",
            config.agent.listen_port
        )
    })?;
    // The approvals socket, also before attaching: a bad path fails the start.
    let approvals_socket = config.agent.approvals_socket.clone();
    let approvals_listener = approvals::server::bind(&approvals_socket, approver_gid)?;
    // Attestation: the issuers' JWKS files and the socket, before attaching too.
    let attest_socket = config.attest.socket.clone();
    let attest_listener = if config.attest.enabled() {
        Some(attest::server::bind(&attest_socket)?)
    } else {
        None
    };
    let attestor = Arc::new(attest::Attestor::new(verifier).with_state(&config.agent.state_dir));
    let registry = approvals_registry(
        &config,
        approvals_socket.clone(),
        journal.handle(),
        decision_keys,
    )?;
    // Grants, bindings and used tokens from before the restart, before anything is
    // served; each restoration is journaled (and a journal that cannot take it fails the
    // start, like any audit event it could not take).
    {
        let mut restored: Vec<crate::state::Restoration> = Vec::new();
        restored.extend(registry.restore());
        restored.extend(attestor.restore(std::time::SystemTime::now(), |p| cgroups.id_of(p)));
        let events: Vec<journal::Event> = restored
            .iter()
            .filter_map(crate::state::restored_event)
            .collect();
        if !events.is_empty() {
            journal
                .handle()
                .record_durably(&events)
                .await
                .context("journaling the restored state")?;
        }
    }
    // The decision endpoint, bound before attaching too (a taken port fails the start).
    let decision_listener = match config.approvals.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding [approvals] http_listen {addr}"))?,
        ),
        None => None,
    };
    // The metrics endpoint, bound before attaching too.
    let metrics_listener = match config.agent.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding [agent] metrics_listen {addr}"))?,
        ),
        None => None,
    };
    let fail_closed = config.agent.fail == FailMode::Closed;
    let mut interceptor = Interceptor::install(InstallOptions {
        pin_dir: config.agent.bpffs.clone(),
        cgroup_root: cgroups.root().to_path_buf(),
        fail_closed,
        proxy_port: config.agent.listen_port,
    })
    .context("attaching the kernel programs")?;
    apply(&mut interceptor, &config, &cgroups)?;
    // Lineage is an addition to the audit, not a condition of it: if its tracepoints
    // cannot attach, connections are still intercepted and the reason is logged.
    let mut lineage_off = None;
    let lineage = match features.lineage_unavailable() {
        Some(missing) if config.lineage.enabled => {
            warn!(
                missing,
                "process lineage is off: this kernel lacks what it needs; interception goes on"
            );
            lineage_off = Some(format!("this kernel lacks {missing}"));
            None
        }
        _ => crate::lineage::start(&mut interceptor, &config.lineage).unwrap_or_else(|e| {
            let why = format!("{:#}", anyhow::Error::from(e));
            error!(error = %why, "process lineage is unavailable");
            lineage_off = Some(why);
            None
        }),
    };
    // Shipping, retention, disk budget: the secret is loaded and the journal directory
    // measured before "ready", so a bad secret fails the start and an agent that starts
    // over budget refuses sessions from the first one.
    let shipper = shipper.map(|shipper| {
        shipper.measure_budget();
        Arc::new(shipper)
    });

    let host_netns = interceptor.host_netns();
    let shared = Arc::new(proxy::Shared {
        snapshot: RwLock::new(Arc::new(snapshot)),
        interceptor: Mutex::new(interceptor),
        cgroups,
        journal: journal.handle(),
        active: AtomicUsize::new(0),
        users: Mutex::new(HashMap::new()),
        cancel_keys: Mutex::new(HashMap::new()),
        approvals: Some(Arc::new(registry.clone())),
        lineage: lineage.clone(),
        budget,
        attest: Some(attestor.clone()),
        limits: Arc::new(proxy::WorkloadLimits::default()),
        containers: crate::identity::ContainerDirectory::new(
            crate::identity::ContainerDirectory::default_sockets(),
        ),
        host_netns,
    });
    {
        let c = shared.config();
        info!(
            mode = ?c.agent.mode,
            workloads = c.workloads.len(),
            targets = c.targets.len(),
            port = c.agent.listen_port,
            journal = %c.agent.journal.display(),
            fail_closed,
            "nhi-agent ready"
        );
    }
    {
        let c = shared.config();
        let _ = sdnotify::notify(&format!(
            "READY=1\nSTATUS=intercepting: {} workloads, {} targets, mode {:?}",
            c.workloads.len(),
            c.targets.len(),
            c.agent.mode
        ));
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let rescan = tokio::spawn(rescan_loop(shared.clone(), shutdown_rx.clone()));
    let lineage_on = lineage.is_some();
    let lineage_task = lineage.map(|l| tokio::spawn(l.run(shared.clone(), shutdown_rx.clone())));
    let registry_for_http = registry.clone();
    let last_reload = Arc::new(Mutex::new(None));
    let shipper_slot = Arc::new(Mutex::new(None));
    let attest_socket_now = Arc::new(Mutex::new(
        attest_listener.as_ref().map(|_| attest_socket.clone()),
    ));
    let status = crate::status::Sources {
        shared: shared.clone(),
        registry: registry.clone(),
        shipper: shipper_slot.clone(),
        started: std::time::SystemTime::now(),
        version: super::generate::version(),
        config_path: config_path.clone(),
        listeners: serde_json::json!({
            "proxy": [
                format!("127.0.0.1:{}", config.agent.listen_port),
                format!("[::1]:{}", config.agent.listen_port),
            ],
            "approvals_socket": approvals_socket.display().to_string(),
            "approvals_http": decision_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
            "metrics": metrics_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
        }),
        lineage_off: lineage_off.filter(|_| config.lineage.enabled),
        lineage_on,
        last_reload: last_reload.clone(),
        streams: streams.clone(),
        attest_socket: attest_socket_now.clone(),
    };
    // The shipper's passes run on blocking threads: an upload never holds up the proxy.
    let mut shipping = Shipping {
        shipper: shipper_slot.clone(),
        task: None,
        budget: shared.budget.clone(),
        shutdown: shutdown_rx.clone(),
    };
    shipping.replace(shipper);
    let start_attest: StartAttest = {
        let (shared, attestor, shutdown) = (shared.clone(), attestor.clone(), shutdown_rx.clone());
        let now = attest_socket_now.clone();
        Box::new(move |listener, socket: PathBuf| {
            info!(socket = %socket.display(), "attest socket ready");
            *now.lock().unwrap_or_else(|p| p.into_inner()) = Some(socket.clone());
            let task = tokio::spawn(attest::server::serve(
                listener,
                attest::server::Context {
                    attestor: attestor.clone(),
                    journal: shared.journal.clone(),
                    cgroup_id: {
                        let shared = shared.clone();
                        Arc::new(move |path| shared.cgroups.id_of(path))
                    },
                    workload_of: {
                        let shared = shared.clone();
                        Arc::new(move |cgroup, uid| {
                            let config = shared.config();
                            config
                                .workload_for(cgroup, uid)
                                .map(|w| w.display_name(cgroup))
                        })
                    },
                },
                shutdown.clone(),
            ));
            AttestServer {
                socket,
                task,
                now: now.clone(),
            }
        })
    };
    let attest_server = Arc::new(Mutex::new(
        attest_listener.map(|listener| start_attest(listener, attest_socket.clone())),
    ));
    let reloadable = Arc::new(Reloadable {
        registry: registry_for_http.clone(),
        streams: streams.clone(),
        shipping: Mutex::new(shipping),
        last: last_reload.clone(),
        attest: attest_server.clone(),
        start_attest,
    });
    let control = {
        let (shared, path, live) = (shared.clone(), config_path.clone(), reloadable.clone());
        approvals::server::Control {
            status: Box::new(move || status.collect()),
            reload: Box::new(move |by| {
                info!(by, "reload asked on the control socket");
                reload(&shared, &path, &live)
            }),
        }
    };
    let approvals_server = tokio::spawn(approvals::server::serve(
        approvals_listener,
        registry,
        approver_gid,
        Some(Arc::new(control)),
        shutdown_rx.clone(),
    ));
    info!(socket = %approvals_socket.display(), approver_gid, "approvals socket ready");
    let decision_server = decision_listener.map(|listener| {
        info!(addr = ?listener.local_addr().ok(), "approvals decision endpoint ready");
        tokio::spawn(approvals::http::serve(
            listener,
            registry_for_http.clone(),
            shutdown_rx.clone(),
        ))
    });
    let metrics_server = metrics_listener.map(|listener| {
        info!(addr = ?listener.local_addr().ok(), "metrics endpoint ready");
        let gauges: crate::metrics::server::GaugeSource = {
            let (shared, registry) = (shared.clone(), registry_for_http.clone());
            Arc::new(move || crate::metrics::Gauges {
                active_connections: shared.active.load(std::sync::atomic::Ordering::Relaxed) as u64,
                holds_pending: registry.list().len() as u64,
                journal_queue_depth: shared.journal.queue_depth(),
                journal_prelog_bytes: shared.journal.prelog_bytes(),
            })
        };
        tokio::spawn(crate::metrics::server::serve(
            listener,
            gauges,
            shutdown_rx.clone(),
        ))
    });
    // Grants expire on their own; the sweep journals each expiry when it happens.
    let sweeper = {
        let registry = registry_for_http.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                registry.sweep();
            }
        })
    };
    let watchdog = sdnotify::watchdog_interval().map(|interval| {
        info!(interval = ?interval, "feeding systemd's watchdog while the proxy and the journal writer are alive");
        tokio::spawn(watchdog_loop(shared.journal.clone(), interval))
    });
    let signals = tokio::spawn(signal_loop(
        shared.clone(),
        config_path,
        reloadable.clone(),
        shutdown_tx,
    ));
    // Container network namespaces: listeners opened as the kernel asks, handed to the
    // accept loops.
    let (ns_tx, ns_rx) = tokio::sync::mpsc::unbounded_channel();
    let netns_events = shared.interceptor().take_netns_events();
    let netns_server = netns_events.map(|events| {
        tokio::spawn(proxy::netns::run(
            shared.clone(),
            events,
            ns_tx,
            shutdown_rx.clone(),
        ))
    });
    proxy::serve(shared.clone(), listeners, ns_rx, shutdown_rx).await;
    if let Some(task) = netns_server {
        task.abort();
        let _ = task.await;
    }
    rescan.abort();
    signals.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    approvals_server.abort();
    if let Some(task) = lineage_task {
        // It drains the ring buffer once more on shutdown, before the journal closes.
        let _ = task.await;
    }
    if let Some(task) = reloadable
        .shipping
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .task
        .take()
    {
        task.abort();
    }
    sweeper.abort();
    streams.stop();
    if let Some(d) = decision_server {
        d.abort();
    }
    if let Some(m) = metrics_server {
        m.abort();
    }
    let _ = std::fs::remove_file(&approvals_socket);
    if let Some(server) = attest_server
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        server.stop();
    }

    let _ = sdnotify::notify("STATUS=stopping: closing the journal");
    shared.journal.flush().await.ok();
    tokio::task::spawn_blocking(move || journal.close())
        .await
        .context("closing the journal")??;
    let shared = Arc::into_inner(shared);
    if !fail_closed {
        if let Some(shared) = shared {
            let interceptor = shared
                .interceptor
                .into_inner()
                .unwrap_or_else(|p| p.into_inner());
            interceptor.detach();
            info!("programs detached (fail-open): connections are no longer intercepted");
        }
    } else {
        info!(
            "stopped; the programs stay attached (fail-closed): intercepted connections are refused \
             until an agent runs again (`nhi-agent detach` stops interception)"
        );
    }
    Ok(())
}

/// Puts `config` into the kernel maps. Cgroups first: while a target exists that the
/// kernel knows no cgroup classification for, every cgroup's connections to it would
/// be handed to the agent to classify.
fn apply(
    interceptor: &mut Interceptor,
    config: &Config,
    cgroups: &CgroupFs,
) -> Result<(), crate::ebpf::EbpfError> {
    interceptor.sync_cgroups(cgroup_map(config, cgroups))?;
    interceptor.sync_targets(config)
}

/// What the kernel should know about every cgroup that exists now.
pub fn cgroup_map(config: &Config, cgroups: &CgroupFs) -> HashMap<u64, CgroupPolicy> {
    let own = CgroupFs::cgroup_of_pid(std::process::id());
    cgroups
        .walk()
        .into_iter()
        .map(|(id, path)| {
            // The agent's own cgroup is never intercepted, whatever the patterns say.
            let policy = if own.as_deref() == Some(path.as_str()) {
                CgroupPolicy {
                    action: CgroupPolicy::BYPASS,
                    uid: CgroupPolicy::ANY_UID,
                }
            } else {
                ebpf::cgroup_policy(config, &path)
            };
            (id, policy)
        })
        .collect()
}

/// Keeps the kernel's cgroup map in step with the cgroup tree: new cgroups are
/// classified (the kernel also handles the ones it meets first, see agent-ebpf) and
/// removed ones forgotten.
async fn rescan_loop(shared: Arc<proxy::Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let interval = shared.config().agent.rescan_interval;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        rescan(&shared);
    }
}

fn rescan(shared: &proxy::Shared) {
    let config = shared.config();
    let wanted = cgroup_map(&config, &shared.cgroups);
    let mut interceptor = shared.interceptor.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = interceptor.sync_cgroups(wanted) {
        error!(error = %e, "cannot update the cgroup map");
    }
    drop(interceptor);
    // Claims are bound until their cgroup (the job) is removed.
    if let Some(attestor) = &shared.attest {
        let dropped = attestor.prune(|p| shared.cgroups.id_of(p));
        if dropped > 0 {
            info!(dropped, "attestations of removed cgroups dropped");
        }
    }
}

async fn signal_loop(
    shared: Arc<proxy::Shared>,
    config_path: PathBuf,
    live: Arc<Reloadable>,
    shutdown: watch::Sender<bool>,
) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                let _ = reload(&shared, &config_path, &live);
            }
        }
    }
    // systemd counts the stop from here: draining open connections is part of it.
    let _ = sdnotify::notify("STOPPING=1\nSTATUS=stopping: draining open connections");
    let _ = shutdown.send(true);
}

/// The approvals registry with what `[approvals]` configures: decision keys (read by
/// `preflight`, so a bad key fails the start), the webhook sender, the longest grant.
fn approvals_registry(
    config: &config::Config,
    socket: std::path::PathBuf,
    journal: crate::journal::JournalHandle,
    decision_keys: Option<approvals::token::DecisionKeys>,
) -> anyhow::Result<approvals::Registry> {
    let registry = approvals::Registry::new(socket)
        .with_journal(journal)
        .with_state(&config.agent.state_dir);
    let announcer = approvals_announcer(&config.approvals)?;
    registry.reconfigure(announcer, decision_keys, config.approvals.max_grant);
    Ok(registry)
}

/// What `[approvals]` makes of a registry: the webhook sender, the decision keys (read
/// now, so a bad key fails the start or the reload), the longest grant.
fn approvals_settings(
    a: &approvals::ApprovalsConfig,
) -> anyhow::Result<(
    Option<approvals::webhook::Announcer>,
    Option<approvals::token::DecisionKeys>,
    std::time::Duration,
)> {
    let keys = approvals::token::DecisionKeys::load(a)?;
    Ok((approvals_announcer(a)?, keys, a.max_grant))
}

/// The webhook sender `[approvals] webhook_url` asks for.
fn approvals_announcer(
    a: &approvals::ApprovalsConfig,
) -> anyhow::Result<Option<approvals::webhook::Announcer>> {
    a.webhook_url
        .as_ref()
        .map(|url| {
            approvals::webhook::Announcer::start(
                url.clone(),
                a.webhook_retries,
                std::time::Duration::from_secs(1),
            )
            .context("starting the approval webhook thread")
        })
        .transpose()
}

/// Shipping and retention as they run now; replaced when a reload changes
/// `[shipping]` or `[retention]`.
struct Shipping {
    /// Also read by `status`.
    shipper: Arc<Mutex<Option<Arc<crate::ship::Shipper>>>>,
    task: Option<tokio::task::JoinHandle<()>>,
    budget: crate::ship::Budget,
    shutdown: watch::Receiver<bool>,
}

impl Shipping {
    /// Runs `shipper` (none: shipping and retention off), stopping the one before.
    fn replace(&mut self, shipper: Option<Arc<crate::ship::Shipper>>) {
        if let Some(task) = self.task.take() {
            // A pass on a blocking thread finishes; the next one is the new shipper's
            // (`ship.lock` keeps them apart).
            task.abort();
        }
        if shipper.is_none() {
            // Nothing measures the journal directory any more: no budget applies.
            self.budget.update(0, None);
        }
        self.task = shipper
            .clone()
            .map(|s| tokio::spawn(s.run(self.shutdown.clone())));
        *self.shipper.lock().unwrap_or_else(|p| p.into_inner()) = shipper;
    }
}

/// What a reload changes besides the configuration snapshot.
struct Reloadable {
    registry: approvals::Registry,
    /// `[[stream]]`: started, stopped and restarted by name.
    streams: crate::stream::Streams,
    shipping: Mutex<Shipping>,
    last: Arc<Mutex<Option<crate::status::ReloadRecord>>>,
    /// The attest socket's server, while an `[[oidc_issuer]]` is configured.
    attest: Arc<Mutex<Option<AttestServer>>>,
    start_attest: StartAttest,
}

/// The attest socket's server: started when an `[[oidc_issuer]]` is configured (at start,
/// or by the reload that adds the first one or moves `[attest] socket`), stopped by the
/// reload that removes the last one.
struct AttestServer {
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
    /// What `status` shows.
    now: Arc<Mutex<Option<PathBuf>>>,
}

impl AttestServer {
    fn stop(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        if now.as_ref() == Some(&self.socket) {
            *now = None;
        }
    }
}

/// Serves a bound attest socket (needs the runtime: called at start and by reloads).
type StartAttest = Box<dyn Fn(tokio::net::UnixListener, PathBuf) -> AttestServer + Send + Sync>;

/// Raises the soft limit on open files to the hard limit: every proxied connection holds
/// two sockets (and two pipes while it splices), and the common soft default (1024) would
/// make accept fail with EMFILE after a few hundred connections. Warns when even the hard
/// limit is short of what `max_connections` needs.
fn raise_nofile_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(1024);
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard {
                if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    warn!(soft, hard, error = %e, "cannot raise the open-file limit");
                }
            }
            if hard < needed {
                warn!(
                    limit = hard,
                    needed,
                    max_connections,
                    "the open-file limit (RLIMIT_NOFILE) is below what max_connections needs; \
                     raise it (systemd: LimitNOFILE=) or lower max_connections"
                );
            }
        }
        Err(e) => warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Sends `WATCHDOG=1` every half `interval` while the proxy accepts and the journal
/// writer answers a flush within that half: an agent whose proxy loop died or whose
/// writer hangs is restarted by systemd (the pins keep refusing meanwhile) instead of
/// looking alive.
async fn watchdog_loop(journal: journal::JournalHandle, interval: std::time::Duration) {
    let half = interval / 2;
    let mut healthy = true;
    loop {
        tokio::time::sleep(half).await;
        let writer = match tokio::time::timeout(half, journal.flush()).await {
            Ok(Ok(())) | Ok(Err(journal::JournalError::FlushIncomplete { .. })) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer to a flush within {half:?}")),
        };
        let why = match (proxy::accepting(), writer) {
            (true, Ok(())) => None,
            (false, _) => Some("the proxy's accept loop is not running".to_string()),
            (true, Err(e)) => Some(format!("the journal writer is not answering: {e}")),
        };
        match why {
            None => {
                let _ = sdnotify::notify("WATCHDOG=1");
                if !healthy {
                    info!("healthy again; feeding the watchdog");
                    healthy = true;
                }
            }
            Some(why) => {
                if healthy {
                    error!(reason = %why, "not feeding systemd's watchdog");
                    let _ = sdnotify::notify(&format!("STATUS=unhealthy: {why}"));
                    healthy = false;
                }
            }
        }
    }
}

/// Reloads are one at a time, whether asked by SIGHUP or on the control socket.
static RELOADING: Mutex<()> = Mutex::new(());

/// Re-reads the configuration at `path`, logs and records the verdict (for `status`, the
/// metrics and `nhi-agent reload`), and tells systemd around it.
fn reload(
    shared: &proxy::Shared,
    path: &std::path::Path,
    live: &Reloadable,
) -> Result<String, String> {
    let _one = RELOADING.lock().unwrap_or_else(|p| p.into_inner());
    let _ = sdnotify::notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        sdnotify::monotonic_usec()
    ));
    let result = apply_reload(shared, path, live);
    match &result {
        Ok(what) => info!("{what}"),
        Err(why) => error!(
            error = %why,
            "reload rejected; the previous configuration stays in force"
        ),
    }
    crate::metrics::get().reload(result.is_ok());
    *live.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(crate::status::ReloadRecord {
        at: std::time::SystemTime::now(),
        result: result.clone(),
    });
    let _ = sdnotify::notify(&match &result {
        Ok(_) => "READY=1\nSTATUS=configuration reloaded".to_string(),
        Err(why) => format!("READY=1\nSTATUS=reload rejected: {why}"),
    });
    result
}

/// SIGHUP's work: a valid new config takes effect for new connections (what changed is
/// returned); an invalid one is rejected (the reason is returned) and the last good one
/// stays in force.
fn apply_reload(
    shared: &proxy::Shared,
    path: &std::path::Path,
    live: &Reloadable,
) -> Result<String, String> {
    let old = shared.config();
    let mut new = config::load(path).map_err(|e| e.to_string())?;
    let mut kept: Vec<&str> = Vec::new();
    // These are wired into sockets, pins and files at start; keep them.
    let a = &mut new.agent;
    let o = &old.agent;
    for (changed, key) in [
        (a.listen_port != o.listen_port, "listen_port"),
        (a.journal != o.journal, "journal"),
        (a.bpffs != o.bpffs, "bpffs"),
        (a.fail != o.fail, "fail"),
        (a.max_connections != o.max_connections, "max_connections"),
        (a.cgroup_root != o.cgroup_root, "cgroup_root"),
        (a.approvals_socket != o.approvals_socket, "approvals_socket"),
        (a.approver_group != o.approver_group, "approver_group"),
        (a.metrics_listen != o.metrics_listen, "metrics_listen"),
        (a.journal_fsync != o.journal_fsync, "journal_fsync"),
    ] {
        if changed {
            warn!(
                key,
                "changing this key needs a restart; keeping the running value"
            );
            kept.push(key);
        }
    }
    a.listen_port = o.listen_port;
    a.journal = o.journal.clone();
    a.bpffs = o.bpffs.clone();
    a.fail = o.fail;
    a.max_connections = o.max_connections;
    a.cgroup_root = o.cgroup_root.clone();
    a.journal_fsync = o.journal_fsync;
    a.approvals_socket = o.approvals_socket.clone();
    a.approver_group = o.approver_group.clone();
    a.metrics_listen = o.metrics_listen;
    let verifier = attest::load_issuers(&new.attest).map_err(|e| e.to_string())?;
    // The attest socket follows [[oidc_issuer]] and [attest] socket: bound now (a path
    // that cannot be bound rejects the reload), served once the snapshot is in force.
    let attest_changes = new.attest.enabled() != old.attest.enabled()
        || (new.attest.enabled() && new.attest.socket != old.attest.socket);
    let new_attest_socket = new.attest.socket.clone();
    // Moved: the new path is bound before the old one closes.
    let attest_listener = if attest_changes && new.attest.enabled() {
        Some(
            attest::server::bind(&new.attest.socket)
                .map_err(|e| format!("[attest] socket: {e}"))?,
        )
    } else {
        None
    };
    // The decision endpoint is a listener bound at start; the rest of [approvals] is
    // read now (a bad key rejects the reload) and applied with the snapshot.
    if new.approvals.http_listen != old.approvals.http_listen {
        warn!(
            key = "[approvals] http_listen",
            "changing this key needs a restart; keeping the running value"
        );
        new.approvals.http_listen = old.approvals.http_listen;
        kept.push("[approvals] http_listen");
    }
    let approvals = if new.approvals != old.approvals {
        Some(approvals_settings(&new.approvals).map_err(|e| format!("[approvals]: {e:#}"))?)
    } else {
        None
    };
    // The tracepoints are attached at start with these, and the exec reader masks argv
    // with the start's `argv_mask`; the sessions' cmdline keeps the same mask so both
    // stay alike until a restart.
    if new.lineage != old.lineage {
        warn!(
            key = "[lineage]",
            "changing this section needs a restart; keeping the running values"
        );
        new.lineage = old.lineage.clone();
        kept.push("[lineage]");
    }
    // [shipping] and [retention]: a new shipper (its secret read again now, so a rotated
    // secret is picked up and a bad one rejects the reload), swapped in with the snapshot.
    let shipper = if new.ship != old.ship || new.ship.is_active() {
        Some(if new.ship.is_active() {
            let s = crate::ship::Shipper::new(
                &new.ship,
                &new.agent.journal,
                &new.agent.state_dir,
                shared.budget.clone(),
            )
            .map_err(|e| format!("[shipping]/[retention]: {e}"))?
            .with_streams_opt(crate::stream::positions(&new.streams, &new.agent.state_dir));
            Some(Arc::new(s))
        } else {
            None
        })
    } else {
        None
    };
    if new.evidence != old.evidence {
        warn!("changing [evidence] needs a restart; keeping the running values");
        new.evidence = old.evidence.clone();
        kept.push("[evidence]");
    }
    let snapshot = proxy::Snapshot::build(Arc::new(new)).map_err(|e| format!("{e:#}"))?;
    {
        let mut i = shared.interceptor.lock().unwrap_or_else(|p| p.into_inner());
        apply(&mut i, &snapshot.config, &shared.cgroups)
    }
    .map_err(|e| format!("updating the kernel maps: {e}"))?;
    let (w, t) = (
        snapshot.config.workloads.len(),
        snapshot.config.targets.len(),
    );
    let stream_configs = snapshot.config.streams.clone();
    // The configuration and its runtime go into force together.
    shared.replace_snapshot(snapshot);
    live.streams.apply(&stream_configs);
    if let Some(attestor) = &shared.attest {
        attestor.set_verifier(verifier);
    }
    let mut what = format!("configuration reloaded: {w} workloads, {t} targets");
    if attest_changes {
        let mut slot = live.attest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = slot.take() {
            info!(socket = %server.socket.display(), "attest socket closed");
            what.push_str(&format!(
                "; attest socket {} closed",
                server.socket.display()
            ));
            server.stop();
        }
        if let Some(listener) = attest_listener {
            let server = (live.start_attest)(listener, new_attest_socket.clone());
            what.push_str(&format!(
                "; attest socket {} bound",
                server.socket.display()
            ));
            *slot = Some(server);
        }
    }
    if let Some((announcer, keys, max_grant)) = approvals {
        live.registry.reconfigure(announcer, keys, max_grant);
        what.push_str("; [approvals] applied");
    }
    if let Some(shipper) = shipper {
        let on = shipper.is_some();
        live.shipping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(shipper);
        what.push_str(if on {
            "; [shipping]/[retention] applied"
        } else {
            "; shipping and retention off"
        });
    }
    if !kept.is_empty() {
        what.push_str(&format!("; kept until a restart: {}", kept.join(", ")));
    }
    Ok(what)
}
