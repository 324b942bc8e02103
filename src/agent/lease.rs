//! The agent's side of its member Lease: acquire it, renew it with a
//! compare-and-swap on its resourceVersion, and notice when the operator
//! revoked it.
//!
//! The operator revokes a Lease by deleting it on the condition that it
//! still has the resourceVersion it saw go stale. Every renewal is an
//! update conditional on the resourceVersion of the agent's own last write,
//! so after a revocation no renewal can succeed: the agent gets "not found"
//! (or a conflict), kills its server through the watchdog, and only then
//! takes a new Lease. See [`crate::contract::timing`].

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use crate::contract::timing::{LEASE, RENEW_TIMEOUT};

/// What a renewal attempt came to.
#[derive(Debug)]
pub enum Renewal {
    /// The Lease now carries the report.
    Renewed,
    /// The Lease is no longer ours (revoked, deleted, or taken): the server
    /// must be stopped before a new one is taken.
    Lost(String),
    /// The API did not answer in time or refused for another reason; the
    /// watchdog's deadline was not moved.
    Failed(String),
}

/// Who holds a member Lease, and how its metadata is filled.
pub struct Holder {
    leases: Api<Lease>,
    name: String,
    /// This agent process: a Lease holder is one incarnation, so a Lease a
    /// predecessor held is taken over, not mistaken for ours.
    identity: String,
    /// The resourceVersion of our last successful write; None: not held.
    held: Option<String>,
}

impl Holder {
    pub fn new(leases: Api<Lease>, member: &str) -> Self {
        let nonce: u32 = rand::random();
        Self { leases, name: member.to_string(), identity: format!("{member}/{nonce:08x}"), held: None }
    }

    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Forget the Lease (after a loss): the next renewal takes a new one.
    pub fn release(&mut self) {
        self.held = None;
    }

    /// Write `annotations` (the report) and `labels`/`owner` on the Lease,
    /// taking it first if it is not held. Bounded by [`RENEW_TIMEOUT`].
    pub async fn renew(
        &mut self,
        annotations: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
        owner: Option<OwnerReference>,
    ) -> Renewal {
        match tokio::time::timeout(RENEW_TIMEOUT, self.write(annotations, labels, owner)).await {
            Ok(renewal) => renewal,
            Err(_) => Renewal::Failed(format!("no answer within {RENEW_TIMEOUT:?}")),
        }
    }

    async fn write(
        &mut self,
        annotations: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
        owner: Option<OwnerReference>,
    ) -> Renewal {
        let mut lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                annotations: Some(annotations),
                labels: Some(labels),
                owner_references: owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(LEASE.as_secs() as i32),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..LeaseSpec::default()
            }),
        };
        let params = PostParams { field_manager: Some("hostwright-agent".into()), ..PostParams::default() };
        let result = match &self.held {
            Some(version) => {
                lease.metadata.resource_version = Some(version.clone());
                self.leases.replace(&self.name, &params, &lease).await
            }
            None => match self.leases.get_opt(&self.name).await {
                // A Lease left by a predecessor (a restarted agent, an
                // earlier pod of this name) is taken over.
                Ok(Some(existing)) => {
                    lease.metadata.resource_version = existing.metadata.resource_version;
                    self.leases.replace(&self.name, &params, &lease).await
                }
                Ok(None) => self.leases.create(&params, &lease).await,
                Err(err) => return Renewal::Failed(err.to_string()),
            },
        };
        match result {
            Ok(written) => {
                self.held = written.metadata.resource_version;
                Renewal::Renewed
            }
            Err(kube::Error::Api(e)) if self.held.is_some() && e.code == 404 => {
                self.held = None;
                Renewal::Lost("the lease was revoked".into())
            }
            Err(kube::Error::Api(e)) if self.held.is_some() && e.code == 409 => {
                // Our previous write may have succeeded after its answer
                // timed out: then the Lease is still ours, one version on.
                match self.leases.get_opt(&self.name).await {
                    Ok(Some(current))
                        if current.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                            == Some(self.identity.as_str()) =>
                    {
                        self.held = current.metadata.resource_version;
                        Renewal::Failed("raced with our own earlier write".into())
                    }
                    Ok(_) => {
                        self.held = None;
                        Renewal::Lost("the lease was revoked or taken".into())
                    }
                    Err(err) => Renewal::Failed(err.to_string()),
                }
            }
            Err(err) => Renewal::Failed(err.to_string()),
        }
    }
}
