//! Hostwright: a Kubernetes operator for highly available web hosting.

pub mod api;
