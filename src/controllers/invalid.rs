//! Objects the operator cannot decode. Every controller watches its kind
//! through [`DeserializeGuard`], so one object that fails to decode (stored
//! before a schema rule existed, or edited past it) is reported on its own
//! status and waits for a change, while every other object of the kind is
//! reconciled as usual: kube decodes a list page as a whole, and without the
//! guard one bad object would stall its whole kind.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

pub use kube::core::DeserializeGuard;

use super::{Error, Shared};
use crate::api::common::condition_type::{DEGRADED, READY};
use crate::conditions::{self, Observed};
use crate::resources::FIELD_MANAGER;

/// Reason of the conditions an undecodable object gets.
pub const REASON: &str = "InvalidSpec";

/// Say on the object's status why it cannot be reconciled (once: a
/// repeated reconcile writes nothing), publish an Event, and wait for the
/// object to change.
pub async fn report<K>(shared: &Shared, invalid: &InvalidObject) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
{
    let namespace = invalid.metadata.namespace.clone().unwrap_or_default();
    let name = invalid.metadata.name.clone().unwrap_or_default();
    let object = format!("{namespace}/{name}");
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(shared.client.clone(), &namespace, &resource);
    let live = api.get(&name).await.map_err(|source| Error::Status { object: object.clone(), source })?;
    let previous: Vec<Condition> = live
        .data
        .pointer("/status/conditions")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let message = format!(
        "the operator cannot read this object ({}); fix the spec — nothing is changed until then",
        invalid.error
    );
    let generation = invalid.metadata.generation;
    let observed = vec![
        Observed::new(READY, false, REASON, message.clone()),
        Observed::new(DEGRADED, true, REASON, message.clone()),
    ];
    let new = conditions::merge(&previous, observed, generation, &Time(Timestamp::now()));
    let unchanged = new.iter().all(|c| {
        conditions::find(&previous, &c.type_)
            .is_some_and(|p| p.status == c.status && p.reason == c.reason && p.message == c.message)
    });
    let kept = previous.iter().filter(|p| p.type_ != READY && p.type_ != DEGRADED).cloned();
    let all: Vec<Condition> = new.into_iter().chain(kept).collect();
    // Nothing but the conditions is known of an object that cannot be read.
    let samples = crate::telemetry::objects::conditions(&all).collect();
    shared.metrics.objects.publish(K::kind(&()), &namespace, &name, samples);
    if !unchanged {
        let patch = serde_json::json!({ "status": { "conditions": all, "observedGeneration": generation } });
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        api.patch_status(&name, &params, &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Status { object: object.clone(), source })?;
        tracing::warn!(%object, error = %invalid.error, "cannot decode the object; reported on its status");
        let reference = live.object_ref(&resource);
        shared.event_on(&reference, EventType::Warning, REASON, "Decode", message).await;
    }
    Ok(Action::await_change())
}

/// The decoded object, or the error that kept it from decoding.
pub fn decoded<K>(guard: &DeserializeGuard<K>) -> Result<&K, &InvalidObject> {
    guard.0.as_ref()
}

/// `namespace/name` of a guarded object, for logs and backoff keys.
pub fn key<K: Resource>(guard: &DeserializeGuard<K>) -> String {
    format!("{}/{}", guard.namespace().unwrap_or_default(), guard.name_any())
}
