//! HTTPRoutes: the one child whose kind a cluster may lack, as the Gateway
//! API is a set of CRDs installed apart from Kubernetes. The HTTPRoute watch
//! itself tells whether the kind is served, so a WebCluster asking for a
//! route on a cluster without it gets a condition, not an error loop, and
//! every WebCluster is looked at again when the kind appears or goes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use kube::api::{Api, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use super::{Claimant, Error, Scope, Shared};
use crate::resources::FIELD_MANAGER;
use crate::resources::subset::first_difference_owning;
use crate::resources::webcluster::{HTTP_ROUTE_OWNED_FIELDS, http_route_resource};

/// Plural of the kind, for messages and metric labels.
const RESOURCE: &str = "httproutes";

/// Whether HTTPRoutes can be used, as the HTTPRoute watch last found out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayApi {
    /// The first list has not answered yet.
    Unknown,
    /// Listed and cached: routes can be applied and pruned.
    Available,
    /// Listing failed for this reason (no CRDs, or no permission), in words.
    Unavailable(String),
}

/// The cached HTTPRoutes and whether the kind is served.
#[derive(Clone)]
pub struct Routes {
    store: Store<DynamicObject>,
    state: Arc<Mutex<GatewayApi>>,
    resource: ApiResource,
}

impl Routes {
    pub fn state(&self) -> GatewayApi {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wait until the first list has answered, whatever it said: a cluster
    /// without the Gateway API must not hold the operator's readiness back.
    pub async fn known(&self) {
        while self.state() == GatewayApi::Unknown {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The cached route `name` in `namespace`, if `owner_uid` controls it.
    pub fn owned(&self, namespace: &str, name: &str, owner_uid: &str) -> Option<Arc<DynamicObject>> {
        self.cached(namespace, name)
            .filter(|r| r.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == owner_uid))
    }

    fn cached(&self, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.store.get(&ObjectRef::new_with(name, self.resource.clone()).within(namespace))
    }
}

/// Watch the HTTPRoutes carrying `label_selector` in `scope`. Returns the
/// routes, their events (to wake the owners) and a stream that ticks
/// whenever the kind turns available or unavailable (to look at every
/// WebCluster again).
pub fn watch(
    scope: &Scope,
    label_selector: &str,
) -> (
    Routes,
    impl Stream<Item = Result<DynamicObject, watcher::Error>> + Send + 'static,
    impl Stream<Item = ()> + Send + 'static,
) {
    let resource = http_route_resource();
    let api: Api<DynamicObject> = match &scope.namespace {
        Some(ns) => Api::namespaced_with(scope.client.clone(), ns, &resource),
        None => Api::all_with(scope.client.clone(), &resource),
    };
    let writer = Writer::new(resource.clone());
    let routes =
        Routes { store: writer.as_reader(), state: Arc::new(Mutex::new(GatewayApi::Unknown)), resource };
    let (changed, changes) = mpsc::unbounded();
    let state = routes.state.clone();
    let events = watcher(api, scope.initial_list.config(Some(label_selector)))
        .default_backoff()
        .modify(crate::controllers::watch::trim)
        .reflect(writer)
        .inspect(move |event| {
            let next = match event {
                Ok(watcher::Event::InitDone) => GatewayApi::Available,
                Ok(_) => return,
                Err(err) => match unavailable(err) {
                    Some(why) => GatewayApi::Unavailable(why),
                    None => {
                        tracing::warn!(kind = "HTTPRoute", %err, "watch failed; retrying with backoff");
                        return;
                    }
                },
            };
            let mut current = state.lock().unwrap_or_else(|p| p.into_inner());
            if *current != next {
                match &next {
                    GatewayApi::Unavailable(why) => tracing::warn!("HTTPRoutes are not managed: {why}"),
                    _ => tracing::info!("the Gateway API is served: HTTPRoutes are managed"),
                }
                // At start-up every WebCluster is reconciled anyway.
                if *current != GatewayApi::Unknown {
                    let _ = changed.unbounded_send(());
                }
                *current = next;
            }
        })
        .applied_objects()
        // Said above, and retried by the watch's own backoff. Passed on, an
        // error would pause every trigger of the WebCluster controller (its
        // trigger backoff) each time the list of a missing kind fails: the
        // WebClusters' own watch would stall behind a kind they may not use.
        .filter(|event| std::future::ready(event.is_ok()));
    (routes, events, changes)
}

/// Why a failed list or watch means the kind cannot be used, if it does:
/// not served (404) or not permitted (403). Other failures are passing.
fn unavailable(err: &watcher::Error) -> Option<String> {
    let code = match err {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return None,
    };
    match code {
        404 => Some(
            "the Gateway API is not installed in this cluster (no gateway.networking.k8s.io/v1 HTTPRoute kind)"
                .into(),
        ),
        403 => Some(
            "the operator may not list and watch httproutes.gateway.networking.k8s.io (its ClusterRole lacks them)"
                .into(),
        ),
        _ => None,
    }
}

/// Apply the route when it is wanted and differs from the cached one;
/// delete the cached one when it is not wanted.
pub async fn apply_or_prune(
    shared: &Shared,
    desired: Option<&DynamicObject>,
    live: Option<Arc<DynamicObject>>,
) -> Result<(), Error> {
    let resource = http_route_resource();
    match (desired, live) {
        (Some(desired), live) => {
            let (name, namespace) = (desired.name_any(), desired.namespace().unwrap_or_default());
            let object = format!("{namespace}/{name}");
            let encode = |v: &DynamicObject| {
                serde_json::to_value(v)
                    .map_err(|source| Error::Encode { what: format!("{RESOURCE} {object}"), source })
            };
            let desired_json = encode(desired)?;
            if let Some(live) = live {
                match first_difference_owning(&desired_json, &encode(&live)?, HTTP_ROUTE_OWNED_FIELDS) {
                    None => return Ok(()),
                    Some(path) => {
                        tracing::debug!(resource = RESOURCE, %object, differs_at = %path, "applying")
                    }
                }
            }
            let api: Api<DynamicObject> = Api::namespaced_with(shared.client.clone(), &namespace, &resource);
            api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&desired_json))
                .await
                .map_err(|source| Error::Apply { resource: RESOURCE, object, source })?;
            shared.metrics.write(shared.controller, RESOURCE, "apply");
            Ok(())
        }
        (None, Some(unwanted)) => {
            let namespace = unwanted.namespace().unwrap_or_default();
            let api: Api<DynamicObject> = Api::namespaced_with(shared.client.clone(), &namespace, &resource);
            shared.delete_exactly(&api, RESOURCE, unwanted.meta()).await
        }
        (None, None) => Ok(()),
    }
}

/// Whether the route's name is held by another object than `owner`, in
/// words (see [`Shared::claimed`]).
pub async fn claimed(
    shared: &Shared,
    routes: &Routes,
    namespace: &str,
    name: &str,
    owner: &Claimant<'_>,
) -> Result<Option<String>, Error> {
    let holder = match routes.cached(namespace, name) {
        Some(cached) => owner.holder(cached.meta()),
        None => {
            let api: Api<DynamicObject> =
                Api::namespaced_with(shared.client.clone(), namespace, &routes.resource);
            let live = api.get_metadata_opt(name).await.map_err(|source| Error::Read {
                resource: RESOURCE,
                object: format!("{namespace}/{name}"),
                source,
            })?;
            live.and_then(|meta| owner.holder(&meta.metadata))
        }
    };
    Ok(holder.map(|who| format!("HTTPRoute {name} already belongs to {who}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("x", "y").with_code(code)))
    }

    #[test]
    fn a_missing_kind_or_a_missing_permission_makes_routes_unavailable_other_errors_pass() {
        let missing = unavailable(&watcher::Error::InitialListFailed(api_error(404))).unwrap();
        assert!(missing.contains("not installed"), "{missing}");
        let forbidden = unavailable(&watcher::Error::InitialListFailed(api_error(403))).unwrap();
        assert!(forbidden.contains("ClusterRole"), "{forbidden}");
        assert_eq!(unavailable(&watcher::Error::InitialListFailed(api_error(500))), None);
        assert_eq!(unavailable(&watcher::Error::NoResourceVersion), None);
    }
}
