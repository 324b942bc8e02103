//! The agent: two loops and a watchdog.
//!
//! - The **step loop** observes the local server, reads the instruction on
//!   its pod, takes one step at a time and publishes a report.
//! - The **lease loop** renews the member Lease with the latest report,
//!   every [`RENEW_INTERVAL`] and at once when the report changes, and moves
//!   the watchdog's deadline on every success. It runs beside the step loop,
//!   so a long step (a large clone, a slow promotion) never looks like a
//!   lost member.
//! - The **watchdog** ([`super::watchdog`]) kills the server when renewals
//!   stop, whatever the two loops are doing.
//!
//! Beside them, a loop of its own reads the figures only metrics want
//! ([`super::metrics::keep_stats`]); it waits on nobody and nobody on it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::process::Child;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::lease::{Holder, Renewal};
use super::marker::{Marker, MarkerError};
use super::metrics::{Identity, Metrics, Status};
use super::plan::{Action, Endpoint, Local, plan};
use super::probe::Health;
use super::server::{Observed, Server, Start};
use super::watchdog::{Watchdog, WatchdogError, boottime_ms};
use crate::contract::timing::{FENCE_AFTER, RENEW_INTERVAL, RENEW_TIMEOUT, TICK};
use crate::contract::{
    ArchiveReport, BackupOrder, BackupReport, BackupState, DataState, Desired, Epoch, Instruction, Millis,
    Report, ServerRole, SettingsReport, decode_backup_order, decode_report, encode_archive, encode_backup,
    encode_report, encode_settings, keys,
};

/// Who the agent is and where its server is reached.
#[derive(Clone, Debug)]
pub struct Options {
    pub member: String,
    pub namespace: String,
    /// host:port other members reach this server at.
    pub advertise: String,
    /// The uid of the pod the agent was started for; instructions on any
    /// other pod of the same name are not ours.
    pub pod_uid: Option<String>,
    /// Owner of files the agent writes beside the data (test beds run the
    /// agent as root and the server as its own user).
    pub run_as: Option<(u32, u32)>,
    /// This executable, which the watchdog runs as.
    pub binary: PathBuf,
    /// Where the kubelet's probes are answered.
    pub probe_address: SocketAddr,
    /// The settings file the pod was built with (`--config`); the files of
    /// later settings sit beside it (the ConfigMap's other keys).
    pub settings_file: Option<PathBuf>,
    /// The store the member belongs to and its kind, as the metrics say.
    pub store: String,
    pub kind: &'static str,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connecting to the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("installing the SIGTERM handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    Watchdog(#[from] WatchdogError),
    #[error("answering probes on {address}: {source}")]
    Probe {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why one step failed (it is retried on a later tick).
#[derive(Debug, thiserror::Error)]
enum StepError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Server(E),
    #[error(transparent)]
    Marker(#[from] MarkerError),
}

/// A report and the address other members reach the server at.
#[derive(Clone, Debug, PartialEq)]
struct Published {
    report: Report,
    address: String,
    settings: SettingsReport,
    archive: ArchiveReport,
    backup: Option<BackupReport>,
}

/// What the two loops share.
struct Shared {
    watchdog: Mutex<Watchdog>,
    /// The Lease is held: the watchdog's deadline is in the future, so the
    /// step loop may start a server.
    held: AtomicBool,
    /// Our pod is gone or is another pod of the same name: act on nothing,
    /// renew nothing.
    orphaned: AtomicBool,
    /// Labels and owner reference the Lease carries, from our pod.
    lease_metadata: Mutex<Option<(BTreeMap<String, String>, OwnerReference)>>,
    /// What the kubelet's probes are told.
    health: Arc<Health>,
    /// A step that must not be cut short is under way (a pg_rewind, a
    /// promotion): SIGTERM waits for it.
    critical: AtomicBool,
}

impl Shared {
    fn watchdog(&self) -> std::sync::MutexGuard<'_, Watchdog> {
        self.watchdog.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn wall_ms() -> Millis {
    Timestamp::now().as_millisecond().max(0) as u64
}

/// Run until SIGTERM; the server is stopped cleanly on the way out and the
/// Lease released, so the operator need not wait for it to go stale.
pub async fn run<S: Server + 'static>(options: Options, driver: S) -> Result<(), AgentError> {
    let probes = super::probe::bind(options.probe_address)
        .await
        .map_err(|source| AgentError::Probe { address: options.probe_address, source })?;
    crate::tls::client::install_default_provider();
    let client = Client::try_default().await.map_err(AgentError::Client)?;
    let shared = Arc::new(Shared {
        watchdog: Mutex::new(Watchdog::spawn(&options.binary)?),
        held: AtomicBool::new(false),
        orphaned: AtomicBool::new(false),
        lease_metadata: Mutex::new(None),
        health: Arc::new(Health::new()),
        critical: AtomicBool::new(false),
    });
    let metrics = Arc::new(Metrics::new(Identity {
        store: options.store.clone(),
        member: options.member.clone(),
        kind: options.kind,
    }));
    let probe_server = tokio::spawn(super::probe::serve(probes, shared.health.clone(), metrics.clone()));
    let driver = Arc::new(driver);
    let stats_loop = tokio::spawn(super::metrics::keep_stats(driver.clone(), metrics.clone()));
    let leases: Api<Lease> = Api::namespaced(client.clone(), &options.namespace);
    let (publish, published) = watch::channel(None);
    let lease_loop =
        tokio::spawn(keep_lease(Holder::new(leases.clone(), &options.member), published, shared.clone()));
    let marker_path = driver.marker_path();
    // The server starts with the pod's settings file: its key is in effect.
    let initial_settings = options.settings_file.as_deref().and_then(settings_key);
    let mut agent = Agent {
        pods: Api::namespaced(client, &options.namespace),
        leases,
        marker: Marker::read(&marker_path),
        marker_path,
        options,
        driver,
        shared: shared.clone(),
        metrics,
        publish,
        server: None,
        following: None,
        serving_primary: false,
        relaxed: None,
        instruction: None,
        upstream: None,
        last_position: None,
        wanted_settings: None,
        settings: SettingsReport { applied: initial_settings, refused: None },
        archive: ArchiveReport::default(),
        wanted_backup: None,
        backup: None,
        backup_report: None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AgentError::Signal)?;
    // A signal cuts a tick short (a server still starting is not waited
    // for), except a step that must finish (a pg_rewind, a promotion): a
    // pod deleted mid-rewind (a rolling update, a drain) leaves no data
    // directory half rewound.
    let critical = shared.clone();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(TICK) => {}
        }
        let tick = agent.tick();
        tokio::pin!(tick);
        let signalled = tokio::select! {
            () = &mut tick => false,
            _ = term.recv() => true,
            _ = tokio::signal::ctrl_c() => true,
        };
        if signalled {
            if critical.critical.load(Ordering::SeqCst) {
                info!("finishing the step under way before stopping");
                tick.await;
            }
            break;
        }
    }
    info!("stopping: the server first, then the lease");
    let _ = agent.stop().await;
    lease_loop.abort();
    stats_loop.abort();
    probe_server.abort();
    agent.release().await;
    Ok(())
}

struct Agent<S> {
    options: Options,
    /// Shared with the metrics loop, which only reads figures.
    driver: Arc<S>,
    pods: Api<Pod>,
    leases: Api<Lease>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    publish: watch::Sender<Option<Published>>,
    marker: Option<Marker>,
    marker_path: PathBuf,
    server: Option<Child>,
    following: Option<Endpoint>,
    /// The server ran as primary at the last report.
    serving_primary: bool,
    /// While running as primary: what `set_relaxed` last made it.
    relaxed: Option<bool>,
    /// The newest instruction accepted, and its upstream's endpoint.
    instruction: Option<Instruction>,
    upstream: Option<Endpoint>,
    /// The highest position this member's current history reached.
    last_position: Option<u64>,
    /// The settings key the pod asks for ([`keys::SETTINGS_ANNOTATION`]).
    wanted_settings: Option<String>,
    /// The settings the server runs with, and the last it refused.
    settings: SettingsReport,
    /// How WAL archiving went when the server last answered.
    archive: ArchiveReport,
    /// The base backup the pod asks for ([`keys::BACKUP_ANNOTATION`]).
    wanted_backup: Option<BackupOrder>,
    /// The base backup process under way, and the file it reports to.
    backup: Option<(Child, PathBuf)>,
    /// How the last base backup asked for went.
    backup_report: Option<BackupReport>,
}

impl<S: Server> Agent<S> {
    async fn tick(&mut self) {
        self.reap();
        self.keep_watchdog();
        self.read_instruction().await;
        let observed = self.observe().await;
        if self.server.is_some() && observed.is_none() {
            // Our server runs but does not answer: starting, hung, or it just
            // died (the next tick reaps it). Nothing is planned on a guess,
            // but a fence is carried out whatever the server's state.
            if self.told(Desired::Fenced) || self.shared.orphaned.load(Ordering::SeqCst) {
                warn!("fencing a server that does not answer");
                let _ = self.stop().await;
            }
            self.publish(None).await;
            return;
        }
        self.keep_lineage(observed.clone());
        let mut observed = observed;
        if let Some(action) = self.next_action(observed.clone()).await {
            info!(?action, instruction = ?self.instruction.as_ref().map(Instruction::encode), "acting");
            if let Err(err) = self.act(&action).await {
                warn!(%err, ?action, "step failed; retrying");
            }
            // The step changed the server: report what it is now.
            observed = self.observe().await;
        }
        if observed.is_some() && self.server.is_some() {
            self.keep_settings().await;
            self.keep_certificates().await;
            self.start_backup();
        }
        self.watch_backup().await;
        self.publish(observed).await;
    }

    /// Start the base backup the pod asks for, once: an order already
    /// reported on (running, done or failed) is not started again.
    fn start_backup(&mut self) {
        let Some(order) = self.wanted_backup.clone() else { return };
        if self.backup.is_some() || self.backup_report.as_ref().is_some_and(|r| r.id == order.id) {
            return;
        }
        let state = match self.driver.base_backup(&order) {
            Some((mut command, result)) => match command.kill_on_drop(true).spawn() {
                Ok(child) => {
                    info!(id = %order.id, "taking a base backup");
                    self.backup = Some((child, result));
                    BackupState::Running
                }
                Err(err) => BackupState::Failed { why: format!("starting the base backup: {err}") },
            },
            None => BackupState::Failed { why: "this server takes no base backups".into() },
        };
        self.backup_report = Some(BackupReport { id: order.id, state });
    }

    /// Collect the outcome of a base backup process that ended.
    async fn watch_backup(&mut self) {
        let Some((child, result)) = &mut self.backup else { return };
        let status = match child.try_wait() {
            Ok(None) => return,
            Ok(Some(status)) => status.to_string(),
            Err(err) => err.to_string(),
        };
        let id = self.backup_report.as_ref().map(|r| r.id.clone()).unwrap_or_default();
        let written = tokio::fs::read(&*result).await.ok();
        let report = written
            .and_then(|text| serde_json::from_slice::<BackupReport>(&text).ok())
            .filter(|r| r.id == id)
            .unwrap_or_else(|| BackupReport {
                id,
                state: BackupState::Failed { why: format!("the base backup process ended ({status})") },
            });
        match &report.state {
            BackupState::Failed { why } => warn!(id = %report.id, %why, "the base backup failed"),
            _ => info!(id = %report.id, "the base backup is complete"),
        }
        let _ = tokio::fs::remove_file(&*result).await;
        self.backup = None;
        self.backup_report = Some(report);
    }

    /// Load the settings the pod asks for into the running server, once
    /// their file is there (a kubelet projects a ConfigMap's new key within
    /// a minute). Refused settings are reported and not tried again.
    async fn keep_settings(&mut self) {
        let Some(key) = self.wanted_settings.clone() else { return };
        let refused = self.settings.refused.as_ref().is_some_and(|(k, _)| *k == key);
        if self.settings.applied.as_ref() == Some(&key) || refused {
            return;
        }
        let Some(dir) = self.options.settings_file.as_deref().and_then(std::path::Path::parent) else {
            return;
        };
        let file = dir.join(&key);
        if !file.exists() {
            return;
        }
        match self.driver.reload_settings(&file).await {
            Ok(Ok(())) => {
                info!(%key, "loaded new settings without a restart");
                self.settings = SettingsReport { applied: Some(key), refused: None };
            }
            Ok(Err(why)) => {
                warn!(%key, %why, "the server refused the new settings; keeping the old ones");
                self.settings.refused = Some((key, why));
            }
            Err(err) => warn!(%err, %key, "could not load the new settings; retrying"),
        }
    }

    /// Load a renewed server certificate (the kubelet projects the
    /// Secret's new contents within a minute) without a restart.
    async fn keep_certificates(&mut self) {
        match self.driver.refresh_certificates().await {
            Ok(true) => info!("loaded a renewed server certificate without a restart"),
            Ok(false) => {}
            Err(err) => warn!(%err, "could not load the renewed server certificate; retrying"),
        }
    }

    fn told(&self, desired: Desired) -> bool {
        self.instruction.as_ref().is_some_and(|i| i.desired == desired)
    }

    /// A server that exited is no longer ours to supervise.
    fn reap(&mut self) {
        if let Some(server) = self.server.as_mut()
            && let Ok(Some(status)) = server.try_wait()
        {
            warn!(%status, was_primary = self.serving_primary, "the server exited");
            self.server = None;
            self.following = None;
            self.relaxed = None;
            self.shared.watchdog().guard(None);
        }
    }

    /// A dead watchdog means an unguarded server: kill it, start another.
    fn keep_watchdog(&mut self) {
        let mut watchdog = self.shared.watchdog();
        if watchdog.alive() {
            return;
        }
        error!("the watchdog died: killing the server and starting a new watchdog");
        if let Some(pid) = self.server.as_ref().and_then(Child::id).and_then(|p| i32::try_from(p).ok()) {
            let _ = super::server::signal(-pid, libc::SIGKILL);
        }
        if let Err(err) = watchdog.respawn(&self.options.binary) {
            error!(%err, "could not start a new watchdog");
        }
    }

    /// Read our pod's instruction (ignoring anything older than what we
    /// saw) and resolve its upstream's address.
    async fn read_instruction(&mut self) {
        let pod = match tokio::time::timeout(RENEW_TIMEOUT, self.pods.get_opt(&self.options.member)).await {
            Ok(Ok(Some(pod))) => pod,
            Ok(Ok(None)) => return self.orphan("our pod no longer exists"),
            _ => return,
        };
        let uid = pod.uid().unwrap_or_default();
        if self.options.pod_uid.as_ref().is_some_and(|mine| *mine != uid) {
            return self.orphan("a pod of our name with another uid: not ours to serve");
        }
        self.remember_pod(&pod, uid);
        self.wanted_settings = pod.annotations().get(keys::SETTINGS_ANNOTATION).cloned();
        self.wanted_backup =
            pod.annotations().get(keys::BACKUP_ANNOTATION).and_then(|t| decode_backup_order(t));
        let Some(text) = pod.annotations().get(keys::INSTRUCTION_ANNOTATION) else { return };
        let instruction = match Instruction::parse(text) {
            Ok(i) => i,
            Err(err) => return warn!(%err, "ignoring the instruction"),
        };
        let seen = self.marker.as_ref().and_then(|m| m.seen).unwrap_or(0).max(self.epoch());
        if instruction.epoch < seen {
            warn!(epoch = instruction.epoch, seen, "ignoring an instruction older than one already seen");
        } else {
            // A fence (anything but "primary") since this member last served
            // as primary lets it serve again later; see `Local::served`.
            let fenced = instruction.desired != Desired::Primary
                && self.marker.as_ref().is_some_and(|m| m.served.is_some_and(|s| instruction.epoch > s));
            if instruction.epoch > seen || fenced {
                self.update_marker(|m| {
                    m.seen = Some(instruction.epoch);
                    if fenced {
                        m.served = None;
                    }
                });
            }
            self.instruction = Some(instruction);
        }
        self.upstream = match self.instruction.as_ref().and_then(|i| i.upstream.clone()) {
            Some(member) if member != self.options.member => self.endpoint(&member).await,
            _ => None,
        };
    }

    fn orphan(&mut self, why: &str) {
        if !self.shared.orphaned.swap(true, Ordering::SeqCst) {
            error!(why, "this agent no longer serves its member: fencing and renewing nothing");
        }
        self.instruction = None;
    }

    fn remember_pod(&self, pod: &Pod, uid: String) {
        let labels = pod
            .labels()
            .iter()
            .filter(|(k, _)| keys::LEASE_LABELS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod.name_any(),
            uid,
            ..OwnerReference::default()
        };
        *self.shared.lease_metadata.lock().unwrap_or_else(|p| p.into_inner()) = Some((labels, owner));
    }

    fn epoch(&self) -> Epoch {
        self.instruction.as_ref().map_or(0, |i| i.epoch)
    }

    /// Where `member`'s server is, and its lineage, from its Lease.
    async fn endpoint(&self, member: &str) -> Option<Endpoint> {
        let lease = tokio::time::timeout(RENEW_TIMEOUT, self.leases.get_opt(member)).await.ok()?.ok()??;
        let (report, address) = decode_report(lease.metadata.annotations.as_ref()?)?;
        let (host, port) = address.rsplit_once(':')?;
        Some(Endpoint {
            member: member.into(),
            host: host.into(),
            port: port.parse().ok()?,
            lineage: report.lineage,
        })
    }

    async fn observe(&mut self) -> Option<Observed> {
        self.server.as_ref()?;
        let observed = self.driver.observe().await.ok()?;
        self.last_position = self.last_position.max(Some(observed.position));
        if let Some(archive) = &observed.archive {
            self.archive = archive.clone();
        }
        Some(observed)
    }

    /// What the volume holds: the engine's files, refined by the marker.
    async fn data(&self, running: bool) -> DataState {
        let raw = self.driver.data_state().await;
        // A server that keeps nothing on disk lost its data when it stopped;
        // data prepared (initialised, cloned) but not yet served is intact.
        let ran = self.marker.as_ref().is_some_and(|m| m.ran);
        if raw == DataState::Empty || (!running && ran && !self.driver.keeps_data().await) {
            return DataState::Empty;
        }
        match &self.marker {
            Some(m) if m.primary => DataState::Primary,
            Some(_) => DataState::Standby,
            None => raw,
        }
    }

    /// The step to take, if the Lease is held and there is one to take.
    async fn next_action(&mut self, observed: Option<Observed>) -> Option<Action> {
        if !self.shared.held.load(Ordering::SeqCst) {
            return None;
        }
        let running = observed.is_some();
        let local = Local {
            data: self.data(running).await,
            running,
            in_recovery: observed.is_some_and(|o| o.replica),
            following: self.following.clone(),
            served: self.marker.as_ref().and_then(|m| m.served),
            relaxed: self.relaxed,
        };
        let action = match &self.instruction {
            Some(instruction) => plan(instruction, self.upstream.as_ref(), &local, &self.options.member),
            // No instruction we may act on: take no writes.
            None if running && !local.in_recovery => Action::Stop,
            None => Action::Wait("no instruction"),
        };
        (!matches!(action, Action::Wait(_))).then_some(action)
    }

    async fn act(&mut self, action: &Action) -> Result<(), StepError<S::Error>> {
        let epoch = self.epoch();
        match action {
            Action::Initialize => {
                self.driver.initialize().await.map_err(StepError::Server)?;
                // A new data set: what a predecessor served no longer matters
                // (the engine allows this only while no member holds data).
                self.last_position = None;
                let fresh =
                    Marker { primary: true, lineage: Some(epoch), served: None, ..self.marker_or_default() };
                self.set_marker(fresh)?;
            }
            Action::Clone(primary) => {
                // Server's, not Arc's Clone::clone_from.
                Server::clone_from(&*self.driver, primary).await.map_err(StepError::Server)?;
                self.adopt(primary)?;
            }
            Action::StartPrimary => {
                let child = self.driver.start(Start::Primary).await.map_err(StepError::Server)?;
                self.started(child, None);
                self.set_marker(Marker { primary: true, served: Some(epoch), ..self.marker_or_default() })?;
            }
            Action::StartStandby(primary) => {
                let child =
                    self.driver.start(Start::Replica(primary.as_ref())).await.map_err(StepError::Server)?;
                self.started(child, primary.clone());
                if let Some(primary) = primary {
                    self.follow_lineage(primary)?;
                }
            }
            Action::Promote => {
                // The marker first: a half-done promotion is then rewound
                // before this member follows anyone, which is safe.
                self.set_marker(Marker { primary: true, lineage: Some(epoch), ..self.marker_or_default() })?;
                self.driver.promote().await.map_err(StepError::Server)?;
                self.following = None;
                self.relaxed = Some(false);
                self.set_marker(Marker { served: Some(epoch), ..self.marker_or_default() })?;
            }
            Action::Stop => self.stop().await?,
            Action::Rewind(primary) => {
                {
                    let _rewinding = Critical::enter(&self.shared);
                    self.driver.rewind(primary).await.map_err(StepError::Server)?;
                }
                self.adopt(primary)?;
                let child =
                    self.driver.start(Start::Replica(Some(primary))).await.map_err(StepError::Server)?;
                self.started(child, Some(primary.clone()));
            }
            Action::Repoint(primary) => {
                self.driver.repoint(&mut self.server, Some(primary)).await.map_err(StepError::Server)?;
                self.following = Some(primary.clone());
                self.guard_server();
                self.follow_lineage(primary)?;
            }
            Action::Detach => {
                self.driver.repoint(&mut self.server, None).await.map_err(StepError::Server)?;
                self.following = None;
                self.guard_server();
            }
            Action::SetRelaxed(relaxed) => {
                self.driver.set_relaxed(*relaxed).await.map_err(StepError::Server)?;
                self.relaxed = Some(*relaxed);
            }
            Action::Wait(_) => {}
        }
        Ok(())
    }

    fn marker_or_default(&self) -> Marker {
        self.marker.clone().unwrap_or_default()
    }

    fn set_marker(&mut self, marker: Marker) -> Result<(), MarkerError> {
        marker.write(&self.marker_path, self.options.run_as)?;
        info!(marker = marker.encode().trim(), "marker updated");
        self.marker = Some(marker);
        Ok(())
    }

    fn update_marker(&mut self, change: impl FnOnce(&mut Marker)) {
        let mut marker = self.marker_or_default();
        change(&mut marker);
        if let Err(err) = self.set_marker(marker) {
            warn!(%err, "could not update the marker");
        }
    }

    /// This member's data is now a copy of `primary`'s history (a clone or
    /// a rewind): what it held before no longer counts.
    fn adopt(&mut self, primary: &Endpoint) -> Result<(), MarkerError> {
        self.last_position = None;
        let old = self.marker_or_default();
        self.set_marker(Marker {
            primary: false,
            lineage: primary.lineage.or(old.lineage),
            ran: false,
            ..old
        })
    }

    /// A mirror streaming from its upstream takes on the upstream's lineage
    /// once that is known (it was repointed before the upstream promoted).
    fn keep_lineage(&mut self, observed: Option<Observed>) {
        let streaming = observed.is_some_and(|o| o.replica && o.streaming);
        let upstream =
            self.upstream.clone().filter(|u| self.following.as_ref().is_some_and(|f| f.same_place(u)));
        if let Some(upstream) = upstream.filter(|_| streaming)
            && let Err(err) = self.follow_lineage(&upstream)
        {
            warn!(%err, "could not record the lineage");
        }
    }

    /// A standby that streams from `primary` holds a prefix of its history.
    fn follow_lineage(&mut self, primary: &Endpoint) -> Result<(), MarkerError> {
        let old = self.marker_or_default();
        if old.primary || primary.lineage.is_none() || primary.lineage <= old.lineage {
            return Ok(());
        }
        self.set_marker(Marker { lineage: primary.lineage, ..old })
    }

    fn started(&mut self, child: Child, following: Option<Endpoint>) {
        self.server = Some(child);
        self.following = following;
        self.relaxed = Some(false);
        self.guard_server();
        if !self.marker.as_ref().is_some_and(|m| m.ran) {
            self.update_marker(|m| m.ran = true);
        }
    }

    fn guard_server(&mut self) {
        let group = self.server.as_ref().and_then(Child::id);
        self.shared.watchdog().guard(group);
    }

    async fn stop(&mut self) -> Result<(), StepError<S::Error>> {
        if let Some(mut server) = self.server.take() {
            let last = self.driver.stop(&mut server).await.map_err(StepError::Server)?;
            self.last_position = self.last_position.max(last);
        }
        self.following = None;
        self.relaxed = None;
        self.shared.watchdog().guard(None);
        Ok(())
    }

    /// Hand the report to the lease loop.
    async fn publish(&mut self, observed: Option<Observed>) {
        let role = match (&self.server, &observed) {
            (Some(_), Some(o)) if o.replica => ServerRole::Mirror,
            (Some(_), Some(_)) => ServerRole::Primary,
            // Alive but not answering: a primary may still take writes, so it
            // is not reported stopped (which would let it count as fenced).
            (Some(_), None) if self.serving_primary => ServerRole::Primary,
            _ => ServerRole::Stopped,
        };
        self.serving_primary = role == ServerRole::Primary;
        self.shared.health.set_serving(observed.is_some());
        self.metrics.set_status(Status {
            up: observed.is_some(),
            role,
            epoch: self.epoch(),
            position: observed.as_ref().map(|o| o.position),
            told_primary: self.told(Desired::Primary),
            archive: observed.as_ref().and_then(|o| o.archive.clone()),
        });
        let data = self.data(observed.is_some()).await;
        let report = Report {
            at: wall_ms(),
            role,
            position: observed.as_ref().map(|o| o.position),
            last_position: self.last_position,
            acting_on: self.instruction.as_ref().map_or(Desired::Fenced, |i| i.desired),
            epoch: self.epoch(),
            streaming_from: observed
                .filter(|o| o.replica && o.streaming)
                .and_then(|_| self.following.as_ref().map(|f| f.member.clone())),
            data,
            lineage: self.marker.as_ref().and_then(|m| m.lineage),
        };
        let (address, settings) = (self.options.advertise.clone(), self.settings.clone());
        let (archive, backup) = (self.archive.clone(), self.backup_report.clone());
        let _ = self.publish.send(Some(Published { report, address, settings, archive, backup }));
    }

    /// Say, after a clean stop, that this agent will renew nothing more: the
    /// operator treats a released Lease like a revoked one, so a deleted
    /// pod's member is replaced without waiting for its Lease to go stale.
    /// A later agent of this member takes a new Lease and, by the marker,
    /// does not bring back a primary under an instruction it already served.
    async fn release(&mut self) {
        if self.server.is_some() || !self.shared.held.load(Ordering::SeqCst) {
            return;
        }
        let patch = serde_json::json!({ "spec": { "holderIdentity": null } });
        let (params, patch) = (kube::api::PatchParams::default(), kube::api::Patch::Merge(&patch));
        let release = self.leases.patch(&self.options.member, &params, &patch);
        match tokio::time::timeout(RENEW_TIMEOUT, release).await {
            Ok(Ok(_)) => info!("released the member lease"),
            _ => warn!("could not release the member lease; the operator will wait for it to go stale"),
        }
    }
}

/// Marks a step SIGTERM must wait for, while it lives.
struct Critical<'a>(&'a Shared);

impl<'a> Critical<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared.critical.store(true, Ordering::SeqCst);
        Critical(shared)
    }
}

impl Drop for Critical<'_> {
    fn drop(&mut self) {
        self.0.critical.store(false, Ordering::SeqCst);
    }
}

/// How long after the instructions change a changed position alone is sent
/// at once rather than with the next renewal.
const TRANSITION: std::time::Duration = std::time::Duration::from_secs(3);

/// The ConfigMap key of a settings file: its name.
fn settings_key(file: &std::path::Path) -> Option<String> {
    file.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// What changes in a report between renewals without being news.
fn significant(a: &Report, b: &Report) -> bool {
    let strip = |r: &Report| Report { at: 0, position: None, last_position: None, ..r.clone() };
    strip(a) != strip(b)
}

/// Renew the Lease with the latest report; move the watchdog's deadline on
/// success; on a lost Lease, kill the server before taking a new one.
async fn keep_lease(
    mut holder: Holder,
    mut published: watch::Receiver<Option<Published>>,
    shared: Arc<Shared>,
) {
    let mut last_sent: Option<Published> = None;
    // When the instructions last changed: for a moment after, a new
    // position is news too (a switchover waits for its target to report the
    // old primary's last position).
    let mut transition_at = tokio::time::Instant::now();
    // After a loss, only a report made after the fence is sent.
    let mut fresh_after: Millis = 0;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            changed = published.changed() => {
                if changed.is_err() {
                    return;
                }
                let news = match (&last_sent, &*published.borrow()) {
                    (Some(last), Some(now)) => {
                        if last.report.epoch != now.report.epoch {
                            transition_at = tokio::time::Instant::now();
                        }
                        let moving = last.report.position != now.report.position
                            && transition_at.elapsed() < TRANSITION;
                        significant(&last.report, &now.report)
                            || last.settings != now.settings
                            || last.archive != now.archive
                            || last.backup != now.backup
                            || moving
                    }
                    _ => true,
                };
                if !news {
                    continue;
                }
            }
        }
        next = tokio::time::Instant::now() + RENEW_INTERVAL;
        shared.health.round();
        if shared.orphaned.load(Ordering::SeqCst) {
            continue;
        }
        let Some(current) = published.borrow().clone() else { continue };
        if current.report.at <= fresh_after {
            continue;
        }
        let Some((labels, owner)) = shared.lease_metadata.lock().unwrap_or_else(|p| p.into_inner()).clone()
        else {
            continue;
        };
        let sent = boottime_ms();
        let mut annotations = encode_report(&current.report, &current.address);
        annotations.extend(encode_settings(&current.settings));
        annotations.extend(encode_archive(&current.archive));
        if let Some(backup) = &current.backup {
            annotations.extend(encode_backup(backup));
        }
        match holder.renew(annotations, labels, Some(owner)).await {
            Renewal::Renewed => {
                shared.watchdog().deadline(sent + FENCE_AFTER.as_millis() as u64);
                shared.held.store(true, Ordering::SeqCst);
                last_sent = Some(current);
            }
            Renewal::Lost(why) => {
                error!(why, "lost the member lease: killing the server before taking a new one");
                shared.held.store(false, Ordering::SeqCst);
                shared.watchdog().fence();
                holder.release();
                fresh_after = wall_ms();
                last_sent = None;
            }
            Renewal::Failed(why) => warn!(why, "could not renew the member lease"),
        }
    }
}
