//! What a WebCluster's status says, and which Events to publish, computed
//! from what was observed. Pure: no I/O, so every phase and reason is a test.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use crate::api::common::condition_type::{DEGRADED, PROGRESSING, READY};
use crate::api::webcluster::{WebCluster, WebClusterPhase, WebClusterStatus};
use crate::conditions::{self, Observed};
use crate::resources::labels::selector_string;
use crate::resources::webcluster::{CONTAINER, Wiring, selector_labels};

/// What became of one reference (`sessionStoreRef` or `databaseRef`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// Ready; its connection details are in this Secret.
    Ready { secret: String },
    /// No object of that name in the namespace.
    NotFound,
    /// Exists but is not Ready (yet); the message says why.
    NotReady { message: String },
}

/// The resolved references of one WebCluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    /// (name, state) of `sessionStoreRef`, when set.
    pub session_store: Option<(String, Reference)>,
    /// (name, state) of `databaseRef`, when set.
    pub database: Option<(String, Reference)>,
    /// A child's name belongs to another object (in words): nothing is applied.
    pub conflict: Option<String>,
    /// `gateway` asks for an HTTPRoute the cluster cannot take (no Gateway
    /// API, or no permission), in words. Every other child is still applied.
    pub gateway_unavailable: Option<String>,
}

/// Why the web tier cannot be (re)built right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub reason: &'static str,
    pub message: String,
}

impl References {
    /// The Secrets to wire into the pods, or why they cannot be wired yet.
    /// Until every reference is Ready the Deployment is left as it is, so
    /// running servers keep serving and new ones never start half-configured.
    pub fn wiring(&self) -> Result<Wiring, Blocked> {
        if let Some(conflict) = &self.conflict {
            return Err(Blocked {
                reason: "NameConflict",
                message: format!("{conflict}: this WebCluster cannot use that name; rename one of the two"),
            });
        }
        let resolve = |r: &Option<(String, Reference)>,
                       kind: &str,
                       not_found: &'static str,
                       not_ready: &'static str| {
            match r {
                None => Ok(None),
                Some((_, Reference::Ready { secret })) => Ok(Some(secret.clone())),
                Some((name, Reference::NotFound)) => Err(Blocked {
                    reason: not_found,
                    message: format!("{kind} {name:?} does not exist in this namespace"),
                }),
                Some((name, Reference::NotReady { message })) => Err(Blocked {
                    reason: not_ready,
                    message: format!("{kind} {name:?} is not Ready: {message}"),
                }),
            }
        };
        Ok(Wiring {
            session_secret: resolve(
                &self.session_store,
                "SessionStore",
                "SessionStoreNotFound",
                "SessionStoreNotReady",
            )?,
            database_secret: resolve(
                &self.database,
                "DatabaseMirror",
                "DatabaseMirrorNotFound",
                "DatabaseMirrorNotReady",
            )?,
        })
    }
}

/// Ready's reason while `gateway` asks for an HTTPRoute the cluster cannot take.
pub const GATEWAY_API_UNAVAILABLE: &str = "GatewayAPIUnavailable";

/// What the Deployment says about the web servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Servers {
    /// Pods of every revision.
    replicas: i32,
    ready: i32,
    updated: i32,
    available: i32,
    /// The Deployment controller has seen the Deployment's latest spec.
    observed: bool,
    /// The rollout made no progress within its deadline.
    stuck: bool,
    /// Image of the Deployment's current pod template.
    image: Option<String>,
    /// `spec.replicas` of the Deployment.
    desired: i32,
}

impl Servers {
    fn of(deployment: &Deployment) -> Self {
        let status = deployment.status.clone().unwrap_or_default();
        let spec = deployment.spec.as_ref();
        let stuck = status.conditions.unwrap_or_default().iter().any(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
        Servers {
            replicas: status.replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            observed: status.observed_generation >= deployment.metadata.generation,
            stuck,
            image: deployment_image(deployment),
            desired: spec.and_then(|s| s.replicas).unwrap_or(1),
        }
    }

    /// Every desired server runs the current template, is available, and no
    /// old server is left.
    fn rolled_out(&self) -> bool {
        self.observed
            && self.updated >= self.desired
            && self.available >= self.desired
            && self.replicas == self.updated
    }
}

/// Image of the web container in a Deployment's pod template.
pub fn deployment_image(deployment: &Deployment) -> Option<String> {
    let pod = deployment.spec.as_ref()?.template.spec.as_ref()?;
    pod.containers.iter().find(|c| c.name == CONTAINER)?.image.clone()
}

/// The status a WebCluster should have, given its live Deployment (if any)
/// and its references. Conditions keep their transition times from `wc`'s
/// current status when unchanged, so an idle resync computes an equal status.
pub fn compute(
    wc: &WebCluster,
    deployment: Option<&Deployment>,
    references: &References,
    now: &Time,
) -> WebClusterStatus {
    let old = wc.status.clone().unwrap_or_default();
    let desired = wc.spec.replicas;
    let generation = wc.metadata.generation;
    let servers = deployment.map(Servers::of);
    let blocked = references.wiring().err();
    let s = servers.clone().unwrap_or_default();
    let rolled_out = servers.is_some() && s.rolled_out() && s.desired == desired;
    let serving_before = old.image.is_some();

    let ready = match (&blocked, &servers) {
        (Some(b), _) => Observed::new(READY, false, b.reason, b.message.clone()),
        (None, _) if references.gateway_unavailable.is_some() => Observed::new(
            READY,
            false,
            GATEWAY_API_UNAVAILABLE,
            format!(
                "spec.gateway asks for an HTTPRoute, but {}; the web servers and their Service run, the hosts are \
                 not routed",
                references.gateway_unavailable.clone().unwrap_or_default()
            ),
        ),
        (None, None) => Observed::new(READY, false, "Creating", "the web servers are being created"),
        (None, Some(_)) if rolled_out && s.ready >= desired => Observed::new(
            READY,
            true,
            "AllServersReady",
            format!("{}/{desired} web servers ready and up to date", s.ready),
        ),
        (None, Some(_)) => Observed::new(
            READY,
            false,
            "ServersNotReady",
            format!("{}/{desired} web servers ready, {}/{desired} up to date", s.ready, s.updated),
        ),
    };

    let progressing = if wc.spec.paused {
        Observed::new(PROGRESSING, false, "Paused", "spec.paused is set: children are left as they are")
    } else if servers.is_none() {
        Observed::new(PROGRESSING, true, "Creating", "creating the Deployment")
    } else if s.stuck {
        Observed::new(
            PROGRESSING,
            false,
            "ProgressDeadlineExceeded",
            format!("the rollout made no progress: {}/{desired} servers run the new template", s.updated),
        )
    } else if rolled_out {
        Observed::new(
            PROGRESSING,
            false,
            "RolloutComplete",
            format!("all {desired} web servers run {}", s.image.clone().unwrap_or_default()),
        )
    } else if s.updated < s.replicas || s.updated < desired && s.replicas >= desired {
        Observed::new(PROGRESSING, true, "RollingOut", format!("{}/{desired} web servers updated", s.updated))
    } else {
        Observed::new(PROGRESSING, true, "Scaling", format!("{} web servers, {desired} desired", s.replicas))
    };

    let degraded = if s.stuck {
        Observed::new(
            DEGRADED,
            true,
            "RolloutStuck",
            format!(
                "the new template never became ready ({}/{desired} updated); {} servers keep serving",
                s.updated, s.ready
            ),
        )
    } else if servers.is_some() && serving_before && s.ready < desired {
        Observed::new(
            DEGRADED,
            true,
            "InsufficientReadyServers",
            format!("{}/{desired} web servers ready", s.ready),
        )
    } else {
        Observed::new(DEGRADED, false, "AsDesired", format!("{}/{desired} web servers ready", s.ready))
    };

    let phase = if wc.spec.paused {
        WebClusterPhase::Paused
    } else if servers.is_none() {
        WebClusterPhase::Pending
    } else if s.stuck && s.ready == 0 {
        WebClusterPhase::Failed
    } else if degraded.status {
        WebClusterPhase::Degraded
    } else if blocked.is_some() || references.gateway_unavailable.is_some() {
        WebClusterPhase::Pending
    } else if ready.status {
        WebClusterPhase::Ready
    } else {
        WebClusterPhase::Progressing
    };

    WebClusterStatus {
        observed_generation: generation,
        replicas: s.replicas,
        ready_replicas: s.ready,
        updated_replicas: s.updated,
        available_replicas: s.available,
        selector: Some(selector_string(&selector_labels(wc))),
        image: if rolled_out { s.image.clone() } else { old.image.clone() },
        phase: Some(phase),
        conditions: conditions::merge(&old.conditions, vec![ready, progressing, degraded], generation, now),
    }
}

pub use crate::controllers::Planned;

/// Events for what applying `desired` over `live` is about to change.
pub fn apply_events(live: Option<&Deployment>, desired: &Deployment) -> Vec<Planned> {
    let Some(live) = live else {
        return vec![Planned {
            type_: EventType::Normal,
            reason: "Created",
            action: "Create",
            note: format!("created Deployment {} for the web servers", desired.name_any()),
        }];
    };
    let mut events = Vec::new();
    let (from, to) = (Servers::of(live).desired, Servers::of(desired).desired);
    if from != to {
        events.push(Planned {
            type_: EventType::Normal,
            reason: "Scaled",
            action: "Scale",
            note: format!("scaled web servers from {from} to {to}"),
        });
    }
    let (old_image, new_image) = (deployment_image(live), deployment_image(desired));
    if old_image != new_image {
        events.push(Planned {
            type_: EventType::Normal,
            reason: "RolloutStarted",
            action: "Rollout",
            note: format!(
                "rolling out {} (was {}), surge first, never below {to} ready servers",
                new_image.unwrap_or_default(),
                old_image.unwrap_or_default()
            ),
        });
    }
    events
}

/// Events for what changed between two statuses.
pub fn status_events(old: &WebClusterStatus, new: &WebClusterStatus) -> Vec<Planned> {
    let mut events = Vec::new();
    if new.image.is_some() && new.image != old.image {
        events.push(Planned {
            type_: EventType::Normal,
            reason: "RolloutFinished",
            action: "Rollout",
            note: format!(
                "all {} web servers run {}",
                new.updated_replicas,
                new.image.clone().unwrap_or_default()
            ),
        });
    }
    let was_degraded = conditions::is_true(&old.conditions, DEGRADED);
    if let Some(c) = conditions::find(&new.conditions, DEGRADED) {
        if c.status == "True" && !was_degraded {
            events.push(Planned {
                type_: EventType::Warning,
                reason: "Degraded",
                action: "Observe",
                note: c.message.clone(),
            });
        } else if c.status == "False" && was_degraded {
            events.push(Planned {
                type_: EventType::Normal,
                reason: "Recovered",
                action: "Observe",
                note: c.message.clone(),
            });
        }
    }
    let old_ready_reason = conditions::find(&old.conditions, READY).map(|c| c.reason.as_str());
    if let Some(c) = conditions::find(&new.conditions, READY) {
        let reference_problem = c.reason.ends_with("NotFound") || c.reason.ends_with("NotReady");
        if reference_problem && old_ready_reason != Some(c.reason.as_str()) && c.reason != "ServersNotReady" {
            events.push(Planned {
                type_: EventType::Warning,
                reason: "ReferenceUnresolved",
                action: "Resolve",
                note: c.message.clone(),
            });
        }
        if c.reason == GATEWAY_API_UNAVAILABLE && old_ready_reason != Some(GATEWAY_API_UNAVAILABLE) {
            events.push(Planned {
                type_: EventType::Warning,
                reason: GATEWAY_API_UNAVAILABLE,
                action: "Route",
                note: c.message.clone(),
            });
        }
    }
    events
}

#[cfg(test)]
mod tests;
