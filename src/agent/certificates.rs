//! The server's certificate, key and CA as the server reads them: copies of
//! the files of the store's TLS Secret (mounted read-only into the pod),
//! private to the server's user as PostgreSQL insists, installed anew when
//! the operator renews the certificate so the server can load it without a
//! restart.
//!
//! The certificate and key get a new name each time (`tls-<hash>.crt`):
//! the server switches from one complete pair to the next, never reads a
//! certificate beside the previous key. The CA keeps its name: replication
//! connection strings point at it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::contract::keys::tls as files;

/// Where the copies go and whose they are.
#[derive(Clone, Debug)]
pub struct Certificates {
    /// The mounted Secret (`--tls-dir`).
    pub source: PathBuf,
    /// A directory private to the pod (the server's run directory).
    pub dir: PathBuf,
    /// Owner of the copies when the agent runs as root (test beds).
    pub run_as: Option<(u32, u32)>,
    installed: Arc<Mutex<Option<Installed>>>,
}

/// Files the server is (to be) configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Hash of the three sources: what was copied.
    pub(crate) version: String,
}

impl Certificates {
    pub fn new(source: PathBuf, dir: PathBuf, run_as: Option<(u32, u32)>) -> Self {
        Self { source, dir, run_as, installed: Arc::default() }
    }

    /// The files last installed.
    pub fn installed(&self) -> Option<Installed> {
        self.installed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forget what was installed, so the next [`Certificates::refresh`]
    /// installs again: the server did not take the files.
    pub fn forget(&self) {
        *self.installed.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// notAfter (unix seconds) of the certificate installed, which the
    /// server serves; None before one is installed or when unreadable.
    pub fn expiry(&self) -> Option<i64> {
        let installed = self.installed()?;
        not_after(&std::fs::read_to_string(installed.cert).ok()?)
    }

    /// Where the CA copy is (whether or not installed yet).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("tls-ca.crt")
    }

    /// Copy the mounted files when they differ from the installed ones.
    /// Ok(Some(new)) when new files were installed (the server should load
    /// them), Ok(None) when nothing changed. The files of the previous
    /// version are removed only after the next refresh, so a server still
    /// reading them until its reload never finds them gone.
    pub fn refresh(&self) -> std::io::Result<Option<Installed>> {
        let read = |name: &str| std::fs::read(self.source.join(name));
        let (cert, key, ca) = (read(files::CERT)?, read(files::KEY)?, read(files::CA)?);
        let version = fingerprint(&[&cert, &key, &ca]);
        let previous = self.installed();
        if previous.as_ref().is_some_and(|p| p.version == version && p.cert.exists()) {
            return Ok(None);
        }
        let installed = Installed {
            cert: self.dir.join(format!("tls-{version}.crt")),
            key: self.dir.join(format!("tls-{version}.key")),
            ca: self.ca_path(),
            version,
        };
        for (path, contents) in [(&installed.key, &key), (&installed.cert, &cert), (&installed.ca, &ca)] {
            write_private(path, contents, self.run_as)?;
        }
        self.remove_older_than(previous.as_ref(), &installed);
        *self.installed.lock().unwrap_or_else(|p| p.into_inner()) = Some(installed.clone());
        Ok(Some(installed))
    }

    /// Remove versions other than `previous` and `current`.
    fn remove_older_than(&self, previous: Option<&Installed>, current: &Installed) {
        let keep: Vec<&Path> = [Some(current), previous]
            .into_iter()
            .flatten()
            .flat_map(|i| [i.cert.as_path(), i.key.as_path()])
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let versioned = name.starts_with("tls-") && (name.ends_with(".crt") || name.ends_with(".key"));
            if versioned && path != self.ca_path() && !keep.contains(&path.as_path()) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// notAfter (unix seconds) of the first certificate in `pem`.
pub fn not_after(pem: &str) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(pem.parse_x509().ok()?.validity().not_after.timestamp())
}

/// A short name for the contents (only compared within this process).
fn fingerprint(parts: &[&[u8]]) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    parts.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Write `path` atomically, mode 0600, owned by `run_as` when given.
fn write_private(path: &Path, contents: &[u8], run_as: Option<(u32, u32)>) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mount(dir: &Path, cert: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(files::CERT), cert).unwrap();
        std::fs::write(dir.join(files::KEY), format!("key of {cert}")).unwrap();
        std::fs::write(dir.join(files::CA), "ca").unwrap();
    }

    #[test]
    fn a_new_certificate_is_installed_under_a_new_name_and_old_ones_go() {
        let root = std::env::temp_dir().join(format!("hw-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (source, dir) = (root.join("mounted"), root.join("run"));
        std::fs::create_dir_all(&dir).unwrap();
        mount(&source, "one");
        let certs = Certificates::new(source.clone(), dir.clone(), None);
        let first = certs.refresh().unwrap().expect("installed");
        assert_eq!(std::fs::read_to_string(&first.cert).unwrap(), "one");
        assert_eq!(std::fs::metadata(&first.key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(certs.refresh().unwrap(), None, "unchanged: nothing to do");

        mount(&source, "two");
        let second = certs.refresh().unwrap().expect("renewed");
        assert_ne!(second.cert, first.cert);
        assert_eq!(second.ca, first.ca, "the CA keeps its name");
        assert!(first.cert.exists(), "the previous pair stays until the next refresh");
        mount(&source, "three");
        certs.refresh().unwrap().expect("renewed again");
        assert!(!first.cert.exists() && !first.key.exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_expiry_is_the_certificates_not_after() {
        let now = std::time::SystemTime::now();
        let ca = crate::tls::new_authority("test CA", now).unwrap();
        let lifetime = std::time::Duration::from_secs(3600);
        let issued = crate::tls::issue_server(&ca, &["db.example".into()], now, lifetime).unwrap();
        let facts = crate::tls::inspect(&issued.cert_pem, &ca.cert_pem).unwrap();
        assert_eq!(not_after(&issued.cert_pem), Some(facts.not_after));
        assert_eq!(not_after("not a certificate"), None);
    }
}
