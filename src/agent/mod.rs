//! `hostwright agent`: runs beside the database server in every member pod,
//! carries out what the failover engine decides, and reports back.
//!
//! - [`server`]: what the loop needs of a server, whatever the engine.
//! - [`postgres`]: the PostgreSQL driver (the server is the agent's child).
//! - [`plan`]: the next step towards the role the engine asked for (pure).
//! - [`report`]: the member Lease the agent renews and reports through.

pub mod plan;
pub mod postgres;
pub mod report;
pub mod run;
pub mod server;
