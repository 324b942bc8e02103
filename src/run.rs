//! `hostwright run`: the operator process.
//!
//! Several replicas may run; they elect a leader over a Lease and only the
//! leader runs the controllers, so only one process ever writes. A standby
//! is ready (and serves metrics) while it waits. On SIGTERM the leader
//! finishes in-flight reconciles and releases the lease so a standby takes
//! over at once; if it loses the lease it exits, and Kubernetes restarts it
//! as a standby with fresh caches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::{DatabaseMirror, SessionStore};
use crate::controllers::events::Events;
use crate::controllers::watch::{InitialList, Watches};
use crate::controllers::{Scope, Shared, members, webcluster};
use crate::resources::FIELD_MANAGER;
use crate::telemetry::{self, Endpoints, Health, Metrics};

/// Lease validity: a crashed leader is replaced after at most this long.
const LEASE_SECONDS: u64 = 15;
/// The leader renews this long before its lease would expire.
const LEASE_GRACE_SECONDS: u64 = 5;

/// Settings of the operator process (flags of `hostwright run`).
#[derive(Clone, Debug)]
pub struct Options {
    pub metrics_addr: SocketAddr,
    /// A listener of its own for /healthz and /readyz; None (or the metrics
    /// address): the metrics listener serves them.
    pub health_addr: Option<SocketAddr>,
    /// Read the cluster-scoped Nodes and StorageClasses. Off for an install
    /// whose RBAC grants no cluster-wide read: cordons are then not watched
    /// and a volume resize is attempted without looking at its class.
    pub cluster_reads: bool,
    pub leader_elect: bool,
    pub lease_name: String,
    /// Namespace of the Lease; the client's default namespace when unset.
    pub lease_namespace: Option<String>,
    pub identity: String,
    /// Watch one namespace only; all namespaces when unset.
    pub namespace: Option<String>,
    pub concurrency: u16,
    /// How caches are first filled: streamed, paged, or asked of the server.
    pub initial_list: InitialList,
    /// Image with `hostwright agent`, run beside every database server.
    /// What the stores' children are built with.
    pub stores: crate::controllers::members::StoreSettings,
}

/// Why the operator stopped other than by a clean shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("connecting to the Kubernetes API: {0}")]
    Client(#[from] crate::client::ClientError),
    #[error("leader election over Lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("lost the leader lease; exiting so a fresh process can stand by")]
    LostLeadership,
    #[error("leader election stopped unexpectedly")]
    LeaseTaskEnded,
    #[error("starting the shared watches: {0}")]
    Watch(#[from] crate::controllers::watch::NoReader),
    #[error("serving metrics or health endpoints on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A shutdown signal every part of the process can wait on.
#[derive(Clone)]
struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    fn on_signals() -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("shutdown requested");
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Run the operator until SIGTERM/SIGINT (Ok) or a fatal error.
pub async fn run(options: Options) -> Result<(), RunError> {
    crate::tls::client::install_default_provider();
    let client = crate::client::infer().await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = Shutdown::on_signals();

    let health = Health { metrics: metrics.clone(), ready: ready.clone() };
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|source| RunError::Serve { addr, source })
    };
    let separate = options.health_addr.filter(|h| *h != options.metrics_addr);
    let metrics_endpoints = if separate.is_some() { Endpoints::Metrics } else { Endpoints::All };
    let listener = bind(options.metrics_addr).await?;
    let mut servers = vec![tokio::spawn(telemetry::serve(
        listener,
        health.clone(),
        metrics_endpoints,
        shutdown.clone().wait(),
    ))];
    if let Some(addr) = separate {
        let listener = bind(addr).await?;
        servers.push(tokio::spawn(telemetry::serve(
            listener,
            health,
            Endpoints::Health,
            shutdown.clone().wait(),
        )));
    }

    let result = if options.leader_elect {
        run_as_candidate(&options, client, metrics, ready, shutdown).await
    } else {
        run_controllers(&options, client, metrics, ready.clone(), shutdown.clone().wait()).await
    };
    for server in servers {
        server.abort();
    }
    result
}

async fn run_as_candidate(
    options: &Options,
    client: Client,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let namespace = options.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let lease_error =
        |source| RunError::Lease { namespace: namespace.clone(), name: options.lease_name.clone(), source };
    let manager = LeaseManagerBuilder::new(client.clone(), &options.lease_name)
        .with_namespace(&namespace)
        .with_identity(&options.identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .with_field_manager(format!("{FIELD_MANAGER}-leader-election"))
        .build()
        .await
        .map_err(lease_error)?;
    let (mut leader, lease_task) = manager.watch().await;
    // A standby is healthy and ready: it serves metrics and waits.
    ready.store(true, Ordering::Relaxed);
    info!(identity = %options.identity, lease = %format!("{namespace}/{}", options.lease_name), "waiting for leadership");

    let became_leader = tokio::select! {
        r = leader.wait_for(|is_leader| *is_leader) => r.is_ok(),
        () = shutdown.clone().wait() => false,
    };
    if !became_leader {
        drop(leader);
        let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
        return if *shutdown.0.borrow() { Ok(()) } else { Err(RunError::LeaseTaskEnded) };
    }

    info!(identity = %options.identity, "became leader; starting controllers");
    metrics.leader.set(1);
    let mut lost = leader.clone();
    let outcome = tokio::select! {
        stopped = run_controllers(options, client, metrics.clone(), ready, shutdown.clone().wait()) => stopped,
        _ = lost.wait_for(|is_leader| !*is_leader) => Err(RunError::LostLeadership),
    };
    metrics.leader.set(0);
    // Only the leader publishes per-object series: a former one would freeze them.
    metrics.objects.clear();
    if let Err(err) = &outcome {
        error!(%err, "stopping");
    }
    // Closing the channel makes the lease task release the lease, so a
    // standby takes over now instead of after the lease expires.
    drop(leader);
    drop(lost);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!("released the leader lease"),
        Ok(Ok(Err(err))) => {
            warn!(%err, "could not release the leader lease; it expires on its own")
        }
        Ok(Err(err)) => warn!(%err, "leader election task failed"),
        Err(_) => warn!("timed out releasing the leader lease; it expires on its own"),
    }
    outcome
}

async fn run_controllers(
    options: &Options,
    client: Client,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RunError> {
    let initial_list = options.initial_list.resolve(&client, options.namespace.as_deref()).await;
    info!(
        ?initial_list,
        "caches are filled by {}",
        match initial_list {
            InitialList::Streaming => "streamed initial lists",
            _ => "paged lists",
        }
    );
    let scope = Scope {
        client: client.clone(),
        namespace: options.namespace.clone(),
        cluster_reads: options.cluster_reads,
        initial_list,
    };
    // Every reader of a shared watch is taken before the watch starts.
    let watches = Watches::new();
    let (web_feeds, database_feeds, session_feeds) = (
        webcluster::Feeds::take(&watches)?,
        members::Feeds::<DatabaseMirror>::take(&watches)?,
        members::Feeds::<SessionStore>::take(&watches)?,
    );
    let watching = watches.drive(&scope);
    let events = Arc::new(Events::new(client.clone(), &options.identity));
    let web = Shared::new(client.clone(), metrics.clone(), events.clone(), "webcluster");
    let database = Shared::new(client.clone(), metrics.clone(), events.clone(), "databasemirror");
    let sessions = Shared::new(client, metrics, events.clone(), "sessionstore");
    // Ready once every controller has filled its caches.
    let (web_ready, database_ready, sessions_ready) =
        (tokio::sync::oneshot::channel(), tokio::sync::oneshot::channel(), tokio::sync::oneshot::channel());
    tokio::spawn(async move {
        let _ = tokio::join!(web_ready.1, database_ready.1, sessions_ready.1);
        info!("caches filled; reconciling");
        ready.store(true, Ordering::Relaxed);
    });
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let controllers = futures::future::join3(
        webcluster::run(
            scope.clone(),
            web_feeds,
            web,
            options.concurrency,
            move || {
                let _ = web_ready.0.send(());
            },
            shutdown.clone(),
        ),
        members::run::<DatabaseMirror>(
            scope.clone(),
            database_feeds,
            database,
            options.stores.clone(),
            options.concurrency,
            move || {
                let _ = database_ready.0.send(());
            },
            shutdown.clone(),
        ),
        members::run::<SessionStore>(
            scope,
            session_feeds,
            sessions,
            options.stores.clone(),
            options.concurrency,
            move || {
                let _ = sessions_ready.0.send(());
            },
            shutdown,
        ),
    );
    // The watches and the recorder's renewal run for as long as the controllers do.
    tokio::select! {
        _ = controllers => {}
        () = watching => {}
        () = events.keep_renewing() => {}
    }
    info!("controllers stopped");
    Ok(())
}
