//! One hosted site's stores on the local cluster, for data-path tests: a
//! throwaway namespace, an operator watching it, and the test bed running a
//! real server and agent behind every member pod.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use hostwright::api::common::condition_type::READY;
use hostwright::api::{DatabaseMirror, DatabaseMirrorSpec, SessionStore, SessionStoreSpec};
use hostwright::controllers::members::{Replicated, StoreStatus};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::database::{Credentials, all_healthy, connect_rw, current_primary, lost_writes};
use crate::operator::Operator;
use crate::sessions::{self, Sessions};
use crate::testbed::Testbed;
use crate::writer::Writer;
use crate::{TestNamespace, client, wait_for};

/// How long a data-path test waits for one thing to happen.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The data-path tests of one test binary share two cores: one at a time,
/// so a slow neighbour cannot starve an agent past its lease.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A namespace with an operator and a test bed of its own.
pub struct Site {
    pub client: Client,
    pub ns: TestNamespace,
    pub testbed: Testbed,
    pub operator: Operator,
}

impl Site {
    /// Start a site in a new namespace named after `prefix`.
    pub async fn start(prefix: &str) -> Result<Self> {
        Self::start_with(prefix, &[]).await
    }

    /// [`Site::start`] with an operator of these settings.
    pub async fn start_with(prefix: &str, operator_env: &[(&str, &str)]) -> Result<Self> {
        for (path, what) in [
            ("/usr/lib/postgresql/15/bin/postgres", "PostgreSQL 15"),
            ("/usr/bin/redis-server", "redis-server"),
        ] {
            if !std::path::Path::new(path).exists() {
                bail!("{what} is not installed (make deps)");
            }
        }
        let client = client().await?;
        let ns = TestNamespace::create(&client, prefix, &[]).await?;
        let operator = Operator::start_with(&client, &ns.name, "solo", operator_env).await?;
        let root = std::env::temp_dir().join("hostwright-e2e").join(&ns.name);
        let testbed = Testbed::start(client.clone(), Some(ns.name.clone()), root).await?;
        Ok(Self { client, ns, testbed, operator })
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        self.ns.api()
    }

    /// Create a DatabaseMirror from its spec in YAML.
    pub async fn database(&self, name: &str, spec: &str) -> Result<()> {
        let spec: DatabaseMirrorSpec = serde_yaml::from_str(spec)?;
        self.api::<DatabaseMirror>().create(&PostParams::default(), &DatabaseMirror::new(name, spec)).await?;
        Ok(())
    }

    /// Create a SessionStore from its spec in YAML.
    pub async fn sessions(&self, name: &str, spec: &str) -> Result<()> {
        let spec: SessionStoreSpec = serde_yaml::from_str(spec)?;
        self.api::<SessionStore>().create(&PostParams::default(), &SessionStore::new(name, spec)).await?;
        Ok(())
    }

    /// Merge `spec` into the object's spec.
    pub async fn patch_spec<K: Replicated>(&self, name: &str, spec: serde_json::Value) -> Result<()> {
        self.api::<K>().patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec }))).await?;
        Ok(())
    }

    /// Wait until the object satisfies `cond`.
    pub async fn wait<K: Replicated>(
        &self,
        name: &str,
        what: &str,
        cond: impl Fn(&K) -> bool + Send + Clone + 'static,
    ) -> Result<K> {
        wait_for(&self.api::<K>(), name, TIMEOUT, what, move |o: Option<&K>| o.is_some_and(&cond)).await
    }

    /// Wait until every member is healthy and streaming.
    pub async fn healthy<K: Replicated>(&self, name: &str) -> Result<K> {
        self.wait(name, "every member healthy and streaming", all_healthy).await
    }

    /// The owner's login of a DatabaseMirror.
    pub async fn credentials(&self, name: &str) -> Result<Credentials> {
        Credentials::read(&self.client, &self.ns.name, name).await
    }

    /// A superuser session on `member` (see [`Testbed::superuser`]).
    pub async fn superuser(&self, member: &str) -> Result<tokio_postgres::Client> {
        self.testbed.superuser(member).await
    }

    /// Close the current WAL segment on `member`; its name.
    pub async fn switch_wal(&self, member: &str) -> Result<String> {
        self.testbed.switch_wal(member).await
    }

    /// The machine of DatabaseMirror `name`'s primary `primary` fails: wait
    /// for another member to take over, bring the machine back, and wait
    /// until every member is healthy again. The new primary.
    pub async fn lose_primary_machine(&self, name: &str, primary: &str) -> Result<String> {
        self.testbed.kill_member(primary).await?;
        let old = primary.to_string();
        let promoted = self
            .wait::<DatabaseMirror>(name, "a new primary", move |d| {
                current_primary(d).is_some_and(|p| p != old)
            })
            .await?;
        let new_primary = current_primary(&promoted).context("the new primary")?;
        self.testbed.revive(primary)?;
        self.healthy::<DatabaseMirror>(name).await?;
        Ok(new_primary)
    }

    /// Run `statement` on a DatabaseMirror's primary, through `<name>-rw`.
    pub async fn sql(&self, name: &str, statement: &str) -> Result<Vec<tokio_postgres::Row>> {
        let creds = self.credentials(name).await?;
        let db = connect_rw(&self.client, &self.ns.name, name, &creds).await?;
        Ok(db.query(statement, &[]).await?)
    }
}

/// The Ready condition's reason of a store.
pub fn ready_reason<K: Replicated>(store: &K) -> Option<String> {
    let status = store.current_status()?;
    hostwright::conditions::find(&status.replication().conditions, READY).map(|c| c.reason.clone())
}

/// A condition's (status, reason) of a store.
pub fn condition<K: Replicated>(store: &K, type_: &str) -> Option<(String, String)> {
    let status = store.current_status()?;
    hostwright::conditions::find(&status.replication().conditions, type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// `status.replication.failover.failoverCount`.
pub fn failovers<K: Replicated>(store: &K) -> i64 {
    store.current_status().map_or(0, |s| s.replication().failover.failover_count)
}

/// Writes to a site's two stores through their Services at once: rows into
/// a new table `acked` of a DatabaseMirror, sessions confirmed by a replica
/// of a SessionStore. For trials that count what a change to the stores
/// lost.
pub struct StoreLoad {
    database: String,
    creds: Credentials,
    rows: Writer,
    sessions: Sessions,
    session_writes: Writer,
}

/// What a [`StoreLoad`] had acknowledged, and what of it is missing.
#[derive(Debug)]
pub struct LoadTally {
    pub rows: usize,
    pub rows_lost: Vec<i64>,
    pub sessions: usize,
    pub sessions_lost: Vec<i64>,
}

impl StoreLoad {
    pub async fn start(site: &Site, database: &str, session_store: &str) -> Result<Self> {
        let creds = site.credentials(database).await?;
        connect_rw(&site.client, &site.ns.name, database, &creds)
            .await?
            .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
            .await?;
        let rows =
            Writer::start(site.client.clone(), site.ns.name.clone(), database.into(), creds.clone(), "acked");
        let target = Sessions {
            client: site.client.clone(),
            namespace: site.ns.name.clone(),
            name: session_store.into(),
            login: sessions::login(&site.client, &site.ns.name, session_store).await?,
            confirm: true,
        };
        let session_writes = Writer::run(target.clone());
        Ok(Self { database: database.into(), creds, rows, sessions: target, session_writes })
    }

    /// Stop writing; count what was acknowledged and look for each of it.
    pub async fn stop(self, site: &Site) -> Result<LoadTally> {
        let acked = self.rows.stop().await;
        let confirmed = self.session_writes.stop().await;
        let rows_lost =
            lost_writes(&site.client, &site.ns.name, &self.database, &self.creds, "acked", &acked).await?;
        let sessions_lost = self.sessions.lost(&confirmed).await?;
        Ok(LoadTally { rows: acked.len(), rows_lost, sessions: confirmed.len(), sessions_lost })
    }
}

impl LoadTally {
    /// Something was acknowledged, and none of it is lost.
    pub fn ensure_nothing_lost(&self) -> Result<()> {
        anyhow::ensure!(self.rows > 0 && self.sessions > 0, "no writes were acknowledged: {self:?}");
        anyhow::ensure!(self.rows_lost.is_empty(), "acknowledged rows lost: {:?}", self.rows_lost);
        anyhow::ensure!(self.sessions_lost.is_empty(), "confirmed sessions lost: {:?}", self.sessions_lost);
        Ok(())
    }
}

impl std::fmt::Display for LoadTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rows acknowledged, {} lost; {} sessions confirmed, {} lost",
            self.rows,
            self.rows_lost.len(),
            self.sessions,
            self.sessions_lost.len()
        )
    }
}
