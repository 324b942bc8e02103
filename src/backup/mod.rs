//! Backups of a DatabaseMirror in an S3-compatible object store: where each
//! file goes ([`layout`]), how the store is reached ([`store`]), and the
//! WAL archiving PostgreSQL runs the agent for ([`wal`]).

/// The object store client the agent uses, for tools and tests that read
/// what it wrote.
pub use object_store;

pub mod base;
pub mod gap;
pub mod layout;
pub mod store;
pub mod wal;

/// What can go wrong between an agent and the object store.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{name:?} is not a WAL file name PostgreSQL archives")]
    NotWalName { name: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the backup configuration {path}: {source}")]
    Config {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the object store at {endpoint}: {source}")]
    Open {
        endpoint: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{operation} {key}: {source}")]
    Store {
        operation: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "{key} already holds other content than {path} ({existing} bytes there, {local} here): \
         an archived WAL file is never overwritten"
    )]
    Conflict { key: String, path: String, existing: usize, local: usize },
}
