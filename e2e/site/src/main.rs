//! The demo site: what a hosting customer runs on a WebCluster.
//!
//! - `GET /login?user=NAME` creates a session in the SessionStore (confirmed
//!   by a replica with `WAIT`, as `durability: wait` promises) and sets the
//!   `sid` cookie.
//! - Every other page view writes a row to the DatabaseMirror and answers
//!   with its id (`X-View-Id`), so a client can later check that every
//!   acknowledged view is still there.
//! - `GET /healthz` answers while the process serves.
//! - SIGTERM stops accepting connections and finishes the requests in
//!   flight (the WebCluster's preStop hook has already taken the pod out
//!   of its Service by then).
//!
//! It reads `SESSION_STORE_URL` and `DATABASE_URL`, which a WebCluster with
//! `sessionStoreRef` and `databaseRef` puts in its pods' environment, and
//! `PORT` (default 8080) and `SITE_VERSION` (shown on every page).

mod pages;
mod stores;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{error, info};

/// Why the site could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("PORT {0:?} is not a port number")]
    Port(String),
    #[error(transparent)]
    Store(#[from] stores::StoreError),
    #[error("listening on {address}: {source}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            error!(%err, "the site stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), StartError> {
    let env = |name: &'static str| std::env::var(name).map_err(|_| StartError::Missing(name));
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let port: u16 = port.parse().map_err(|_| StartError::Port(port.clone()))?;
    let site = pages::Site {
        sessions: stores::Sessions::new(
            &env("SESSION_STORE_URL")?,
            &tls::ca_file("SESSION_STORE_CA_FILE", tls::SESSION_STORE_CA),
        )?,
        views: stores::Views::new(
            &env("DATABASE_URL")?,
            &tls::ca_file("DATABASE_CA_FILE", tls::DATABASE_CA),
        )?,
        version: std::env::var("SITE_VERSION").unwrap_or_else(|_| "1".into()),
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(StartError::Runtime)?;
    runtime.block_on(serve(SocketAddr::from(([0, 0, 0, 0], port)), Arc::new(site)))
}

async fn serve(address: SocketAddr, site: Arc<pages::Site>) -> Result<(), StartError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen { address, source })?;
    info!(%address, version = %site.version, "serving");
    axum::serve(listener, pages::router(site))
        .with_graceful_shutdown(terminated())
        .await
        .map_err(|source| StartError::Listen { address, source })?;
    info!("stopped: every request in flight was answered");
    Ok(())
}

/// Resolves on SIGTERM (the kubelet) or Ctrl-C.
async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            error!(%err, "cannot watch for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: finishing the requests in flight"),
        _ = tokio::signal::ctrl_c() => info!("interrupted"),
    }
}
