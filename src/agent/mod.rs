//! `hostwright agent`: runs beside the database server in every member pod,
//! carries out what the failover engine decides, and reports back.
//!
//! - [`server`]: what the loop needs of a server, whatever the engine.
//! - [`postgres`]: the PostgreSQL driver (the server is the agent's child).
//! - [`redis`]: the Redis driver (likewise; roles switch in place).
//! - [`plan`]: the next step towards the role the engine asked for (pure).
//! - [`report`]: the member Lease the agent renews and reports through.

pub mod plan;
pub mod postgres;
pub mod redis;
pub mod report;
pub mod run;
pub mod server;
