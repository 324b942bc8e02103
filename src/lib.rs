//! Hostwright: a Kubernetes operator for highly available web hosting.

pub mod agent;
pub mod api;
pub mod backup;
pub mod client;
pub mod conditions;
pub mod contract;
pub mod controllers;
pub mod failover;
pub mod memory;
pub mod plugin;
pub mod resources;
pub mod run;
pub mod telemetry;
pub mod tls;
