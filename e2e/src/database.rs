//! Driving a DatabaseMirror from the outside, as its users do: through the
//! `-rw` and `-ro` Services' EndpointSlices (the servers listen on the
//! loopback twins of their pod IPs), with a writer that records every
//! acknowledged write and a probe that tries to write on every member.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use hostwright::controllers::members::{Replicated, StoreStatus};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::Client;
use kube::api::Api;
use tokio::task::JoinHandle;

use crate::testbed::{pod_address, ready_endpoints};
use crate::writer::Target;
pub use crate::writer::Writer;

/// How a user connects: the owner role of the credentials Secret, over TLS
/// verified against the store's CA for the `-rw` Service's name.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub user: String,
    pub password: String,
    pub database: String,
    /// The name the server's certificate is verified for (`host`).
    pub server_name: String,
    pub ca_pem: String,
}

impl Credentials {
    /// Read `<name>-credentials`.
    pub async fn read(client: &Client, namespace: &str, name: &str) -> Result<Self> {
        let secret = Api::<Secret>::namespaced(client.clone(), namespace)
            .get(&format!("{name}-credentials"))
            .await
            .context("the credentials Secret")?;
        Self::from_secret(&secret)
    }

    /// The owner's login from a credentials Secret.
    pub fn from_secret(secret: &Secret) -> Result<Self> {
        let data = secret.data.clone().unwrap_or_default();
        let get = |k: &str| -> Result<String> {
            let v = data.get(k).ok_or_else(|| anyhow!("credentials without {k}"))?;
            Ok(String::from_utf8(v.0.clone())?)
        };
        Ok(Self {
            user: get("username")?,
            password: get("password")?,
            database: get("database")?,
            server_name: get("host")?,
            ca_pem: get("ca.crt")?,
        })
    }

    /// Connect to the server at `host` (an address, or a name the
    /// certificate carries; port 5432) over TLS, giving up after two seconds.
    pub async fn connect(&self, host: &str) -> Result<tokio_postgres::Client> {
        let mut config = tokio_postgres::Config::new();
        config
            .port(5432)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.database)
            .connect_timeout(Duration::from_secs(1));
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => config.host(&self.server_name).hostaddr(ip),
            Err(_) => config.host(host),
        };
        let tls = hostwright::tls::client::postgres(&self.ca_pem)?;
        let (client, connection) = tokio::time::timeout(Duration::from_secs(2), config.connect(tls))
            .await
            .map_err(|_| anyhow!("connecting to {host} timed out"))??;
        tokio::spawn(connection);
        Ok(client)
    }
}

/// A connection to whatever the `<name>-rw` Service routes to. A Service's
/// EndpointSlice follows a relabelled pod a moment later, so this waits up
/// to ten seconds for a ready endpoint, as a reconnecting client would.
pub async fn connect_rw(
    client: &Client,
    namespace: &str,
    name: &str,
    creds: &Credentials,
) -> Result<tokio_postgres::Client> {
    let service = format!("{name}-rw");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let endpoints = ready_endpoints(client, namespace, &service).await?;
        match endpoints.first() {
            Some(host) => return creds.connect(host).await,
            None if Instant::now() >= deadline => return Err(anyhow!("{service} has no ready endpoint")),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Where this machine reaches a member's server (see [`pod_address`]).
pub async fn member_host(client: &Client, namespace: &str, member: &str) -> Result<String> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace).get(member).await?;
    pod_address(client, &pod).await.with_context(|| format!("reaching member {member}"))
}

/// Every member Ready, replicating and routed, for the current generation
/// (a DatabaseMirror or a SessionStore).
pub fn all_healthy<K: Replicated>(store: &K) -> bool {
    let Ok(members) = store.blueprint().map(|b| b.members.len()) else { return false };
    store.current_status().is_some_and(|s| {
        let r = s.replication();
        r.ready.as_deref() == Some(&format!("{members}/{members}"))
            && r.phase == Some(hostwright::api::common::StorePhase::Ready)
            && r.observed_generation == store.meta().generation
    })
}

/// The member taking writes, per status.
pub fn current_primary<K: Replicated>(store: &K) -> Option<String> {
    store.current_status().and_then(|s| s.replication().current_primary.clone())
}

/// The virtual IP of Service `service`: where a client in the cluster
/// connects, kube-proxy choosing a ready endpoint per connection.
pub async fn service_ip(client: &Client, namespace: &str, service: &str) -> Result<String> {
    let found = Api::<Service>::namespaced(client.clone(), namespace).get(service).await?;
    found
        .spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| ip != "None")
        .with_context(|| format!("{service} has no virtual IP"))
}

/// Rows `(id)` inserted through `<name>-rw`: what [`Writer`] writes to a
/// DatabaseMirror.
pub struct SqlTable {
    client: Client,
    namespace: String,
    name: String,
    creds: Credentials,
    insert: String,
    /// Connect to this virtual IP (kube-proxy) rather than following the
    /// Service's EndpointSlices.
    virtual_ip: Option<String>,
}

impl Target for SqlTable {
    type Connection = tokio_postgres::Client;

    async fn connect(&self) -> Result<tokio_postgres::Client> {
        match &self.virtual_ip {
            Some(ip) => self.creds.connect(ip).await,
            None => connect_rw(&self.client, &self.namespace, &self.name, &self.creds).await,
        }
    }

    async fn write(&self, db: &mut tokio_postgres::Client, id: i64) -> Result<()> {
        db.execute(&self.insert, &[&id]).await?;
        Ok(())
    }
}

impl Writer {
    /// Insert sequence numbers into `table` (`id bigint primary key`)
    /// through `<name>-rw`, recording every acknowledged one.
    pub fn start(client: Client, namespace: String, name: String, creds: Credentials, table: &str) -> Self {
        let insert = format!("INSERT INTO {table} (id) VALUES ($1)");
        Writer::run(SqlTable { client, namespace, name, creds, insert, virtual_ip: None })
    }

    /// Like [`Writer::start`], connecting to the `<name>-rw` Service's
    /// virtual IP, as a web server in the cluster does.
    pub async fn start_via_service_ip(
        client: Client,
        namespace: String,
        name: String,
        creds: Credentials,
        table: &str,
    ) -> Result<Self> {
        let virtual_ip = Some(service_ip(&client, &namespace, &format!("{name}-rw")).await?);
        let insert = format!("INSERT INTO {table} (id) VALUES ($1)");
        Ok(Writer::run(SqlTable { client, namespace, name, creds, insert, virtual_ip }))
    }
}

/// Acknowledged ids missing from `table` on the current primary.
pub async fn lost_writes(
    client: &Client,
    namespace: &str,
    name: &str,
    creds: &Credentials,
    table: &str,
    acked: &[i64],
) -> Result<Vec<i64>> {
    let db = connect_rw(client, namespace, name, creds).await?;
    let rows = db.query(&format!("SELECT id FROM {table}"), &[]).await?;
    let present: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(acked.iter().copied().filter(|id| !present.contains(id)).collect())
}

/// A write one member accepted, and when the attempt began and ended.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub member: String,
    pub start: Instant,
    pub end: Instant,
}

/// Tries to write on every member directly (not through a Service), all the
/// time and concurrently, and records every write a member accepted.
pub struct SplitBrainProbe {
    accepted: Arc<Mutex<Vec<Accepted>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SplitBrainProbe {
    /// `table` must exist on the primary (`member text, at timestamptz`).
    pub async fn start(
        client: &Client,
        namespace: &str,
        members: &[String],
        creds: &Credentials,
        table: &str,
    ) -> Result<Self> {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for member in members {
            member_host(client, namespace, member).await?;
            let (accepted, stop, creds, member) =
                (accepted.clone(), stop.clone(), creds.clone(), member.clone());
            let (client, namespace) = (client.clone(), namespace.to_string());
            let insert = format!("INSERT INTO {table} (member) VALUES ($1)");
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // Looked up again on every connection: a rolling update
                    // replaces the member's pod, and its address with it.
                    let host = member_host(&client, &namespace, &member).await;
                    let Ok(db) = async { creds.connect(&host?).await }.await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    // Accepting a write is the question, not whether a mirror confirmed it.
                    let _ = db
                        .batch_execute("SET synchronous_commit = local; SET statement_timeout = '1s'")
                        .await;
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        match db.execute(&insert, &[&member]).await {
                            Ok(_) => accepted.lock().unwrap_or_else(|p| p.into_inner()).push(Accepted {
                                member: member.clone(),
                                start,
                                end: Instant::now(),
                            }),
                            Err(e) if e.is_closed() => break,
                            Err(_) => {}
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
        Ok(Self { accepted, stop, tasks })
    }

    /// When `member` last accepted a probe write that began after `after`.
    pub fn last_accepted_by(&self, member: &str, after: Instant) -> Option<Instant> {
        let accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
        accepted.iter().filter(|a| a.member == member && a.start >= after).map(|a| a.end).max()
    }

    /// Stop probing; returns every pair of writes two different members
    /// accepted at overlapping moments (empty: never two writers).
    pub async fn stop(self) -> (usize, Vec<(Accepted, Accepted)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut all = self.accepted.lock().unwrap_or_else(|p| p.into_inner()).clone();
        all.sort_by_key(|a| a.start);
        let mut overlaps = Vec::new();
        for (i, a) in all.iter().enumerate() {
            for b in all[i + 1..].iter().take_while(|b| b.start < a.end) {
                if b.member != a.member {
                    overlaps.push((a.clone(), b.clone()));
                }
            }
        }
        (all.len(), overlaps)
    }
}
