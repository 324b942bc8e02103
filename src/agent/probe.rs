//! The agent's answers to the kubelet's probes ([`crate::contract::probes`]).
//!
//! Liveness is judged from the lease loop, not the step loop: a step may
//! legitimately take minutes (a large clone), while the lease loop comes
//! round every second whatever the step loop does. A frozen process answers
//! nothing at all, which the kubelet counts as a failure too.
//!
//! The same listener serves the member's metrics ([`super::metrics`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::metrics::Metrics;
use super::watchdog::boottime_ms;
use crate::contract::probes::{LIVENESS_PATH, METRICS_PATH, READINESS_PATH, STALE_AFTER};
use crate::telemetry::openmetrics_response;

/// What the probes report, written by the two loops.
#[derive(Debug)]
pub struct Health {
    /// `CLOCK_BOOTTIME` (ms) when the lease loop last came round.
    lease_round: AtomicU64,
    /// The server answered at the last report.
    serving: AtomicBool,
}

impl Health {
    pub fn new() -> Self {
        Health { lease_round: AtomicU64::new(boottime_ms()), serving: AtomicBool::new(false) }
    }

    /// The lease loop came round.
    pub fn round(&self) {
        self.lease_round.store(boottime_ms(), Ordering::SeqCst);
    }

    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    fn live_at(&self, now_ms: u64) -> bool {
        is_live(self.lease_round.load(Ordering::SeqCst), now_ms)
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a lease loop last seen at `round_ms` still counts as running.
fn is_live(round_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(round_ms) < STALE_AFTER.as_millis() as u64
}

fn status(ok: bool) -> (StatusCode, &'static str) {
    if ok { (StatusCode::OK, "ok\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "no\n") }
}

/// Bind the probe address; a port that cannot be bound is an error at start,
/// not a container the kubelet restarts for failed probes later.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

/// Answer probes and scrapes on `listener` for as long as the agent runs.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(METRICS_PATH, get(move || std::future::ready(openmetrics_response(metrics.render()))))
        .route(
            LIVENESS_PATH,
            get(|State(h): State<Arc<Health>>| async move { status(h.live_at(boottime_ms())) }),
        )
        .route(
            READINESS_PATH,
            get(|State(h): State<Arc<Health>>| async move { status(h.serving.load(Ordering::SeqCst)) }),
        )
        .with_state(health);
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_loop_is_live_until_it_has_missed_stale_after() {
        let stale = STALE_AFTER.as_millis() as u64;
        assert!(is_live(1_000, 1_000));
        assert!(is_live(1_000, 1_000 + stale - 1));
        assert!(!is_live(1_000, 1_000 + stale));
        // A round stamped after `now` was read (the other thread won) is live.
        assert!(is_live(2_000, 1_000));
    }

    #[tokio::test]
    async fn the_probes_answer_over_http() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let address = listener.local_addr().unwrap();
        let health = Arc::new(Health::new());
        let identity = super::super::metrics::Identity {
            store: "shop-db".into(),
            member: "shop-db-1".into(),
            kind: super::super::metrics::DATABASE_MIRROR,
        };
        tokio::spawn(serve(listener, health.clone(), Arc::new(Metrics::new(identity))));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let status = |answer: String| answer.lines().next().unwrap_or_default().to_string();
        assert!(status(get(LIVENESS_PATH).await).contains("200"));
        assert!(status(get(READINESS_PATH).await).contains("503"), "no server yet");
        health.set_serving(true);
        assert!(status(get(READINESS_PATH).await).contains("200"));
        let scraped = get(METRICS_PATH).await;
        assert!(status(scraped.clone()).contains("200"), "{scraped}");
        assert!(scraped.contains("\nhostwright_member_up{store=\"shop-db\""), "{scraped}");
        // A round at boot: the machine has been up longer than STALE_AFTER.
        health.lease_round.store(0, Ordering::SeqCst);
        assert!(status(get(LIVENESS_PATH).await).contains("503"), "a lease loop that stopped");
    }
}
