//! `hostwright agent`: runs beside the database server in every member pod,
//! carries out what the failover engine decides, and reports back.

pub mod postgres;
