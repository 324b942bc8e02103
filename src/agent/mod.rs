//! `hostwright agent`: runs beside the database server in every member pod,
//! carries out what the failover engine decides, and reports back.
//!
//! - [`run`]: the step loop and the lease loop.
//! - [`server`]: what the loop needs of a server, whatever the engine.
//! - [`postgres`]: the PostgreSQL driver (the server is the agent's child).
//! - [`redis`]: the Redis driver (likewise; roles switch in place).
//! - [`plan`]: the next step towards what the engine asked (pure).
//! - [`lease`]: the member Lease, renewed by compare-and-swap.
//! - [`watchdog`]: the process that kills the server when renewals stop.
//! - [`marker`]: what the agent keeps beside the data.
//! - [`certificates`]: the server's TLS files, reinstalled when renewed.
//! - [`probe`]: the answers to the kubelet's liveness and readiness probes.
//! - [`archive`]: the WAL archiving commands PostgreSQL runs.
//! - [`metrics`]: what the agent serves to Prometheus beside the probes.
//!
//! What the agent and the operator share (keys, encodings, timings) is in
//! [`crate::contract`].

pub mod archive;
pub mod base_backup;
pub mod certificates;
pub mod lease;
pub mod marker;
pub mod metrics;
pub mod plan;
pub mod postgres;
pub mod probe;
pub mod redis;
pub mod run;
pub mod server;
pub mod watchdog;
