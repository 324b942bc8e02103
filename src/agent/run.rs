//! The agent loop: observe the local server, read the instruction on the
//! pod, take one step, report on the member Lease; and fence the server
//! when the Lease cannot be renewed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use tokio::process::Child;
use tracing::{info, warn};

use super::plan::{Action, DataState, Endpoint, Local, plan};
use super::report::{self, LEASE_SECONDS, SELF_FENCE_AFTER_MS};
use super::server::{Server, Start};
use crate::failover::{Desired, Report, ServerRole};
use crate::resources::members::{DESIRED_ROLE_ANNOTATION, MEMBER_LABEL};

/// Annotation on a member's pod naming the member writes are routed to.
pub const PRIMARY_ANNOTATION: &str = "hostwright.io/primary";
const FIELD_MANAGER: &str = "hostwright-agent";
const INTERVAL: Duration = Duration::from_millis(300);
/// Every API call of a tick is bounded, so a hung API server cannot delay
/// the self-fencing check past the lease.
const API_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Who the agent is and where its server is reached.
#[derive(Clone, Debug)]
pub struct Options {
    pub member: String,
    pub namespace: String,
    /// host:port other members reach this server at.
    pub advertise: String,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connecting to the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("installing the SIGTERM handler: {0}")]
    Signal(#[source] std::io::Error),
}

struct Agent<S> {
    options: Options,
    server_driver: S,
    pods: Api<Pod>,
    leases: Api<Lease>,
    server: Option<Child>,
    following: Option<String>,
    /// The server was running as primary at the last report.
    serving_primary: bool,
    /// See [`Local::crashed_primary`].
    crashed_primary: bool,
    last_renewal: tokio::time::Instant,
    /// Labels and owner reference the Lease carries, from our pod: the
    /// operator watches member Leases by label, and the Lease goes when the
    /// pod goes.
    lease_metadata: Option<(BTreeMap<String, String>, OwnerReference)>,
}

/// Pod labels copied onto the member Lease.
const LEASE_LABELS: &[&str] = &["app.kubernetes.io/name", "app.kubernetes.io/instance", MEMBER_LABEL];

fn now_ms() -> u64 {
    report::millis(Timestamp::now())
}

/// Run until SIGTERM; the server is stopped cleanly on the way out.
pub async fn run<S: Server>(options: Options, server: S) -> Result<(), AgentError> {
    let client = Client::try_default().await.map_err(AgentError::Client)?;
    let mut agent = Agent {
        pods: Api::namespaced(client.clone(), &options.namespace),
        leases: Api::namespaced(client, &options.namespace),
        options,
        server_driver: server,
        server: None,
        following: None,
        serving_primary: false,
        crashed_primary: false,
        last_renewal: tokio::time::Instant::now(),
        lease_metadata: None,
    };
    // A former primary whose data did not survive (a Redis without
    // persistence, its container restarted) waits for the operator as a
    // crashed primary does: started as primary on its own it would hand its
    // replicas an empty data set.
    if agent.server_driver.data_state().await == DataState::Primary && !agent.server_driver.keeps_data().await
    {
        warn!("former primary without its data: waiting for the operator before starting");
        agent.crashed_primary = true;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AgentError::Signal)?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(INTERVAL) => agent.tick().await,
        }
    }
    let _ = agent.stop().await;
    Ok(())
}

impl<S: Server> Agent<S> {
    async fn tick(&mut self) {
        // A server that exited is no longer ours to supervise.
        if let Some(server) = self.server.as_mut()
            && let Ok(Some(status)) = server.try_wait()
        {
            warn!(%status, was_primary = self.serving_primary, "the database server exited");
            self.crashed_primary |= self.serving_primary;
            self.server = None;
            self.following = None;
        }
        let instruction = self.instruction().await;
        if instruction.as_ref().is_some_and(|(d, _)| *d != Desired::Primary) {
            // The operator has decided; the latch has done its job.
            self.crashed_primary = false;
        }
        let (local, position) = self.observe().await;
        if self.server.is_some() && !local.running {
            // Our server runs but does not answer: starting, hung, or it just
            // died (the next tick reaps it). Nothing is planned on a guess, but
            // a fence is carried out whatever the server's state.
            if instruction.as_ref().is_some_and(|(d, _)| *d == Desired::Fenced) {
                warn!("fencing a server that does not answer");
                let _ = self.stop().await;
            }
            let acting_on = instruction.map_or(Desired::Fenced, |(d, _)| d);
            // Not answering: no position (observed just now) to report.
            self.report(acting_on, position).await;
            return;
        }
        let mut position = position;
        if let Some((desired, primary)) = &instruction {
            let action = plan(*desired, primary.as_ref(), &local, &self.options.member);
            if !matches!(action, Action::Wait(_)) {
                info!(?action, ?desired, "acting");
                if let Err(err) = self.act(&action).await {
                    warn!(%err, ?action, "step failed; retrying");
                }
                // The step changed the server: report what it is now.
                position = self.position().await;
            }
        }
        let acting_on = instruction.map_or(Desired::Fenced, |(d, _)| d);
        self.report(acting_on, position).await;
    }

    /// (is a replica, replication position) while our server answers.
    async fn position(&self) -> Option<(bool, u64)> {
        match &self.server {
            Some(_) => self.server_driver.position().await.ok(),
            None => None,
        }
    }

    /// The instruction on our pod, and where the primary is.
    async fn instruction(&mut self) -> Option<(Desired, Option<Endpoint>)> {
        let pod = tokio::time::timeout(API_TIMEOUT, self.pods.get(&self.options.member)).await.ok()?.ok()?;
        if let Some(uid) = pod.uid() {
            let labels = pod
                .labels()
                .iter()
                .filter(|(k, _)| LEASE_LABELS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let owner = OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod.name_any(),
                uid,
                ..OwnerReference::default()
            };
            self.lease_metadata = Some((labels, owner));
        }
        let annotations = pod.annotations();
        let desired = report::parse_desired(annotations.get(DESIRED_ROLE_ANNOTATION)?)?;
        let primary = match annotations.get(PRIMARY_ANNOTATION) {
            Some(member) if !member.is_empty() => self.endpoint(member).await,
            _ => None,
        };
        Some((desired, primary))
    }

    /// Where `member`'s server is, from its Lease.
    async fn endpoint(&self, member: &str) -> Option<Endpoint> {
        let lease = tokio::time::timeout(API_TIMEOUT, self.leases.get(member)).await.ok()?.ok()?;
        let (reported, expired) = report::decode(&lease, now_ms());
        let (_, address) = reported.filter(|_| !expired)?;
        let (host, port) = address.rsplit_once(':')?;
        Some(Endpoint { member: member.into(), host: host.into(), port: port.parse().ok()? })
    }

    /// Our server as it is now, and its position (asked once per tick: the
    /// report reuses it unless a step changed the server).
    async fn observe(&self) -> (Local, Option<(bool, u64)>) {
        let data = self.server_driver.data_state().await;
        let position = self.position().await;
        let local = Local {
            data,
            running: position.is_some(),
            in_recovery: position.is_some_and(|(in_recovery, _)| in_recovery),
            following: self.following.clone(),
            crashed_primary: self.crashed_primary,
        };
        (local, position)
    }

    async fn act(&mut self, action: &Action) -> Result<(), S::Error> {
        let driver = &self.server_driver;
        match action {
            Action::Initdb => driver.initialize().await?,
            Action::Clone(primary) => driver.clone_from(primary).await?,
            Action::StartPrimary => {
                self.server = Some(driver.start(Start::Primary).await?);
                self.following = None;
            }
            Action::StartStandby(primary) => {
                self.server = Some(driver.start(Start::Replica(primary.as_ref())).await?);
                self.following = primary.as_ref().map(|p| p.member.clone());
            }
            Action::Promote => {
                driver.promote().await?;
                self.following = None;
            }
            Action::Stop => self.stop().await?,
            Action::Rewind(primary) => {
                // Start as a replica right away: after a clean switchover
                // PostgreSQL's rewind has nothing to do and leaves the data
                // looking like a primary's, which would ask for a rewind again.
                driver.rewind(primary).await?;
                self.server = Some(driver.start(Start::Replica(Some(primary))).await?);
                self.following = Some(primary.member.clone());
            }
            Action::Repoint(primary) => {
                driver.repoint(&mut self.server, primary).await?;
                self.following = Some(primary.member.clone());
            }
            Action::Wait(_) => {}
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), S::Error> {
        if let Some(mut server) = self.server.take() {
            self.server_driver.stop(&mut server).await?;
        }
        self.following = None;
        Ok(())
    }

    /// Renew the member Lease with a fresh report; fence the server when
    /// renewals have failed for too long.
    async fn report(&mut self, acting_on: Desired, position: Option<(bool, u64)>) {
        let (role, position) = match (&self.server, position) {
            (Some(_), Some((true, p))) => (ServerRole::Mirror, Some(p)),
            (Some(_), Some((false, p))) => (ServerRole::Primary, Some(p)),
            // Alive but not answering: a primary may still take writes, so it
            // is not reported stopped (which would let it count as fenced).
            (Some(_), None) if self.serving_primary => (ServerRole::Primary, None),
            _ => (ServerRole::Stopped, None),
        };
        self.serving_primary = role == ServerRole::Primary && self.server.is_some();
        let now = Timestamp::now();
        let report = Report { at: report::millis(now), role, position, acting_on };
        let lease = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(self.options.member.clone()),
                annotations: Some(report::encode(&report, &self.options.advertise)),
                labels: self.lease_metadata.as_ref().map(|(labels, _)| labels.clone()),
                owner_references: self.lease_metadata.as_ref().map(|(_, owner)| vec![owner.clone()]),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.options.member.clone()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                renew_time: Some(MicroTime(now)),
                ..LeaseSpec::default()
            }),
        };
        let mut patch = serde_json::to_value(&lease).unwrap_or_default();
        patch["apiVersion"] = "coordination.k8s.io/v1".into();
        patch["kind"] = "Lease".into();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let apply = Patch::Apply(&patch);
        let renewal =
            tokio::time::timeout(API_TIMEOUT, self.leases.patch(&self.options.member, &params, &apply));
        match renewal.await.map_err(|_| "timed out".to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
            Ok(_) => self.last_renewal = tokio::time::Instant::now(),
            Err(err) => {
                let stale = self.last_renewal.elapsed() >= Duration::from_millis(SELF_FENCE_AFTER_MS);
                warn!(%err, stale, "could not renew the member lease");
                if stale && role == ServerRole::Primary {
                    warn!("fencing: stopping the server before the lease can expire");
                    let _ = self.stop().await;
                }
            }
        }
    }
}
