//! WAL archiving as PostgreSQL asks for it: `archive_command` pushes one
//! file, `restore_command` fetches one. A pushed file is written only if
//! its key is free (a conditional put), so an archived file is never
//! overwritten; a push of the same bytes again (PostgreSQL retries a push
//! whose answer it did not see, and after a failover a mirror may push what
//! the old primary already had) succeeds without writing.

use std::path::Path;

use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::{BackupError, layout};

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Uploaded,
    /// The same bytes were archived already.
    AlreadyArchived,
}

/// What a fetch found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetched {
    Restored,
    /// Not in the archive: the end of the archived WAL, or a file
    /// PostgreSQL only tries (a history file of a timeline to come).
    Missing,
}

/// Archive the WAL file at `source` as `name`.
pub async fn push(
    store: &dyn ObjectStore,
    prefix: &str,
    source: &Path,
    name: &str,
) -> Result<Pushed, BackupError> {
    let key = layout::wal_key(prefix, name)?;
    let bytes = tokio::fs::read(source)
        .await
        .map_err(|source_err| BackupError::Read { path: source.display().to_string(), source: source_err })?;
    let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
    match store.put_opts(&key, PutPayload::from(bytes.clone()), options).await {
        Ok(_) => Ok(Pushed::Uploaded),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let existing = get(store, &key).await?.unwrap_or_default();
            match existing == bytes {
                true => Ok(Pushed::AlreadyArchived),
                false => Err(BackupError::Conflict {
                    key: key.to_string(),
                    path: source.display().to_string(),
                    existing: existing.len(),
                    local: bytes.len(),
                }),
            }
        }
        Err(err) => Err(BackupError::Store { operation: "uploading", key: key.to_string(), source: err }),
    }
}

/// Restore the archived WAL file `name` to `destination` (written whole
/// under a temporary name first, so PostgreSQL never reads half a file).
pub async fn fetch(
    store: &dyn ObjectStore,
    prefix: &str,
    name: &str,
    destination: &Path,
) -> Result<Fetched, BackupError> {
    let key = layout::wal_key(prefix, name)?;
    let Some(bytes) = get(store, &key).await? else { return Ok(Fetched::Missing) };
    let partial = destination.with_extension("hostwright-partial");
    let write_error = |source| BackupError::Write { path: destination.display().to_string(), source };
    tokio::fs::write(&partial, &bytes).await.map_err(write_error)?;
    tokio::fs::rename(&partial, destination).await.map_err(write_error)?;
    Ok(Fetched::Restored)
}

/// The object's bytes, None when there is none.
async fn get(
    store: &dyn ObjectStore,
    key: &object_store::path::Path,
) -> Result<Option<Vec<u8>>, BackupError> {
    let error = |source| BackupError::Store { operation: "downloading", key: key.to_string(), source };
    match store.get(key).await {
        Ok(found) => Ok(Some(found.bytes().await.map_err(error)?.to_vec())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(err) => Err(error(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn segment(dir: &Path, name: &str, fill: u8) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![fill; 1024]).unwrap();
        path
    }

    #[tokio::test]
    async fn a_pushed_file_is_never_overwritten_and_the_same_bytes_again_are_fine() {
        let dir = tempdir();
        let store = InMemory::new();
        let name = "000000010000000000000001";
        let file = segment(&dir, name, 1);
        assert_eq!(push(&store, "db", &file, name).await.unwrap(), Pushed::Uploaded);
        assert_eq!(push(&store, "db", &file, name).await.unwrap(), Pushed::AlreadyArchived);
        let other = segment(&dir, "other", 2);
        let refused = push(&store, "db", &other, name).await.unwrap_err();
        assert!(matches!(refused, BackupError::Conflict { .. }), "{refused}");
        let restored = dir.join("restored");
        assert_eq!(fetch(&store, "db", name, &restored).await.unwrap(), Fetched::Restored);
        assert_eq!(std::fs::read(&restored).unwrap(), vec![1; 1024], "the first bytes, untouched");
        assert_eq!(
            fetch(&store, "db", "000000010000000000000002", &restored).await.unwrap(),
            Fetched::Missing
        );
        assert!(push(&store, "db", &file, "../../x").await.is_err(), "only WAL names become keys");
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hostwright-wal-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
