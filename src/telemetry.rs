//! Logs, metrics and the health endpoints.
//!
//! One HTTP listener serves `/metrics` (Prometheus text), `/healthz` (the
//! process is alive) and `/readyz` (a standby is ready at once; the leader
//! once its caches are filled), so a rolling update of the operator itself
//! never waits on leadership. The health endpoints may get a listener of
//! their own (`--health-addr`), so `/metrics` can stay on a loopback address
//! while the kubelet probes the pod's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub mod objects;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Install the global tracing subscriber; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).init(),
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().flatten_event(true)).init(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub controller: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
}

/// The operator's Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    pub reconciliations: Family<ControllerLabels, Counter>,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Family<ControllerLabels, Histogram>,
    /// Every write the operator sends to the API server (apply, delete, status).
    pub writes: Family<WriteLabels, Counter>,
    pub leader: Gauge,
    /// Completed failovers and switchovers.
    pub failovers: Family<ControllerLabels, Counter>,
    /// From the primary judged lost (or the switchover asked) to the new
    /// primary taking writes.
    pub failover_duration: Family<ControllerLabels, Histogram>,
    /// What each reconciled object's status says (see [`objects`]).
    pub objects: Arc<objects::ObjectMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hostwright");
        let reconciliations = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        let writes = Family::<WriteLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register("reconciliations", "Reconciles run", reconciliations.clone());
        registry.register("reconcile_errors", "Reconciles that failed, by error kind", failures.clone());
        registry.register("reconcile_duration_seconds", "Time spent in one reconcile", duration.clone());
        registry.register(
            "api_writes",
            "Writes sent to the API server, by resource and verb",
            writes.clone(),
        );
        registry.register("leader", "1 while this process holds the leader lease", leader.clone());
        let failovers = Family::<ControllerLabels, Counter>::default();
        let failover_duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0])
        });
        registry.register("failovers", "Completed failovers and switchovers", failovers.clone());
        registry.register(
            "failover_duration_seconds",
            "From the primary judged lost (or a switchover asked) to the new primary taking writes",
            failover_duration.clone(),
        );
        let objects = Arc::new(objects::ObjectMetrics::default());
        registry.register_collector(Box::new(objects.clone()));
        Self {
            registry,
            reconciliations,
            failures,
            duration,
            writes,
            leader,
            failovers,
            failover_duration,
            objects,
        }
    }
}

impl Metrics {
    /// Time one reconcile and count it.
    pub fn reconcile_started(self: &Arc<Self>, controller: &'static str) -> ReconcileTimer {
        self.reconciliations.get_or_create(&ControllerLabels { controller }).inc();
        ReconcileTimer { metrics: self.clone(), controller, start: std::time::Instant::now() }
    }

    pub fn write(&self, controller: &'static str, resource: &'static str, verb: &'static str) {
        self.writes.get_or_create(&WriteLabels { controller, resource, verb }).inc();
    }

    pub fn failure(&self, controller: &'static str, error: &'static str) {
        self.failures.get_or_create(&ErrorLabels { controller, error }).inc();
    }

    fn render(&self) -> Result<String, std::fmt::Error> {
        render(&self.registry)
    }
}

/// Every series of `registry` in OpenMetrics text.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// A scrape's answer: the rendered text, or 500 when it could not be
/// rendered. The operator and the agents answer alike.
pub fn openmetrics_response(rendered: Result<String, std::fmt::Error>) -> axum::response::Response {
    match rendered {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Observes the reconcile duration when dropped.
pub struct ReconcileTimer {
    metrics: Arc<Metrics>,
    controller: &'static str,
    start: std::time::Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        let labels = ControllerLabels { controller: self.controller };
        self.metrics.duration.get_or_create(&labels).observe(self.start.elapsed().as_secs_f64());
    }
}

/// Shared state behind the HTTP endpoints.
#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
}

/// Which endpoints one listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// `/metrics`, `/healthz` and `/readyz`: the default, one listener.
    All,
    /// `/metrics` alone, beside a health listener of its own.
    Metrics,
    /// `/healthz` and `/readyz` alone.
    Health,
}

impl Endpoints {
    fn router(self, health: Health) -> Router {
        let mut app = Router::new();
        if self != Endpoints::Health {
            app = app.route("/metrics", get(metrics));
        }
        if self != Endpoints::Metrics {
            app = app.route("/healthz", get(|| async { "ok" })).route("/readyz", get(readyz));
        }
        app.with_state(health)
    }

    fn paths(self) -> &'static str {
        match self {
            Endpoints::All => "/metrics, /healthz and /readyz",
            Endpoints::Metrics => "/metrics",
            Endpoints::Health => "/healthz and /readyz",
        }
    }
}

/// Serve `endpoints` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Health,
    endpoints: Endpoints,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving {}", endpoints.paths());
    }
    axum::serve(listener, endpoints.router(health)).with_graceful_shutdown(shutdown).await
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    openmetrics_response(health.metrics.render())
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The status code of `GET path` on `addr`.
    async fn status_of(addr: std::net::SocketAddr, path: &str) -> u16 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("writes");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("reads");
        response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).expect("a status line")
    }

    async fn listen(endpoints: Endpoints) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("an address");
        let health = Health { metrics: Arc::new(Metrics::default()), ready: Arc::new(AtomicBool::new(true)) };
        tokio::spawn(serve(listener, health, endpoints, std::future::pending()));
        addr
    }

    #[tokio::test]
    async fn each_listener_serves_only_its_endpoints() {
        let all = listen(Endpoints::All).await;
        let metrics = listen(Endpoints::Metrics).await;
        let health = listen(Endpoints::Health).await;
        for path in ["/metrics", "/healthz", "/readyz"] {
            assert_eq!(status_of(all, path).await, 200, "{path} on the one listener");
        }
        assert_eq!(status_of(metrics, "/metrics").await, 200);
        assert_eq!(status_of(metrics, "/healthz").await, 404, "health is not on the metrics listener");
        assert_eq!(status_of(metrics, "/readyz").await, 404);
        assert_eq!(status_of(health, "/healthz").await, 200);
        assert_eq!(status_of(health, "/readyz").await, 200);
        assert_eq!(status_of(health, "/metrics").await, 404, "metrics are not on the health listener");
    }
}
