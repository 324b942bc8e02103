//! The WebCluster controller: read the references, build the children,
//! apply what differs, delete what is no longer wanted, report status.

pub mod gateway;
pub mod status;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tracing::{Instrument, info_span};

pub use super::Scope;
use super::compact::Compact;
use super::invalid::{self, DeserializeGuard};
use super::watch::{Feed, NoReader, Watches};
use super::{
    Claimant, Error, RESYNC, Shared, cached, cached_compact, filled, jittered, live_compact, owned_child,
};
use crate::api::common::condition_type::READY;
use crate::api::{DatabaseMirror, SessionStore, WebCluster};
use crate::conditions;
use crate::resources::webcluster::{
    INGRESS_OWNED_FIELDS, NETWORK_POLICY_OWNED_FIELDS, WebClusterChildren, build,
};
use crate::resources::{FIELD_MANAGER, labels};
use crate::telemetry::objects;
use gateway::{GatewayApi, Routes};
use status::{Reference, References};

const CONTROLLER: &str = "webcluster";

/// Caches of everything a WebCluster reconcile reads. Children are read
/// from here, never fetched, so a resync costs no API calls.
pub struct Caches {
    /// Compact: one of each per site, the bulk of what the operator holds.
    pub deployments: Store<Compact<Deployment>>,
    pub services: Store<Compact<Service>>,
    pub pdbs: Store<Compact<PodDisruptionBudget>>,
    pub autoscalers: Store<HorizontalPodAutoscaler>,
    pub ingresses: Store<Ingress>,
    pub network_policies: Store<NetworkPolicy>,
    /// HTTPRoutes, and whether the cluster serves the kind at all.
    pub routes: Routes,
    /// Referenced stores; one that cannot be decoded is a reference that is
    /// not Ready, not a cache that never fills.
    pub session_stores: Store<DeserializeGuard<SessionStore>>,
    pub database_mirrors: Store<DeserializeGuard<DatabaseMirror>>,
}

/// The WebCluster controller's context.
pub struct Context {
    pub shared: Shared,
    pub caches: Caches,
    /// Every cache has been filled once. Until then a reconcile would take a
    /// child it has not seen yet for a missing one and re-apply it.
    pub caches_ready: std::sync::atomic::AtomicBool,
}

/// The shared watches this controller reads.
pub struct Feeds {
    web_clusters: Feed<DeserializeGuard<WebCluster>>,
    session_stores: Feed<DeserializeGuard<SessionStore>>,
    database_mirrors: Feed<DeserializeGuard<DatabaseMirror>>,
}

impl Feeds {
    pub fn take(watches: &Watches) -> Result<Self, NoReader> {
        Ok(Feeds {
            web_clusters: watches.web_clusters.feed()?,
            session_stores: watches.session_stores.feed()?,
            database_mirrors: watches.database_mirrors.feed()?,
        })
    }
}

/// Run the WebCluster controller until `shutdown` resolves.
pub async fn run(
    scope: Scope,
    feeds: Feeds,
    shared: Shared,
    concurrency: u16,
    ready: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let children =
        format!("app.kubernetes.io/managed-by={},app.kubernetes.io/name=webcluster", labels::MANAGED_BY);
    let (deployments, deployment_events) = cached_compact::<Deployment>(&scope, Some(&children));
    let (services, service_events) = cached_compact::<Service>(&scope, Some(&children));
    let (pdbs, pdb_events) = cached_compact::<PodDisruptionBudget>(&scope, Some(&children));
    let (autoscalers, autoscaler_events) = cached::<HorizontalPodAutoscaler>(&scope, Some(&children));
    let (ingresses, ingress_events) = cached::<Ingress>(&scope, Some(&children));
    let (network_policies, network_policy_events) = cached::<NetworkPolicy>(&scope, Some(&children));
    let (routes, route_events, gateway_api_changes) = gateway::watch(&scope, &children);
    let Feeds { web_clusters, session_stores, database_mirrors } = feeds;
    let (session_store_events, session_stores) = (session_stores.events, session_stores.store);
    let (database_mirror_events, database_mirrors) = (database_mirrors.events, database_mirrors.store);
    let (web_cluster_events, web_clusters) = (web_clusters.events, web_clusters.store);
    let controller = Controller::for_shared_stream(web_cluster_events, web_clusters.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    let by_session_store =
        referrers(web_clusters.clone(), |wc| wc.spec.session_store_ref.as_ref().map(|r| r.name.clone()));
    let by_database =
        referrers(web_clusters.clone(), |wc| wc.spec.database_ref.as_ref().map(|r| r.name.clone()));

    let context = Arc::new(Context {
        shared,
        caches: Caches {
            deployments: deployments.clone(),
            services: services.clone(),
            pdbs: pdbs.clone(),
            autoscalers: autoscalers.clone(),
            ingresses: ingresses.clone(),
            network_policies: network_policies.clone(),
            routes: routes.clone(),
            session_stores: session_stores.clone(),
            database_mirrors: database_mirrors.clone(),
        },
        caches_ready: std::sync::atomic::AtomicBool::new(false),
    });

    let controller = controller
        .owns_stream(deployment_events)
        .owns_stream(service_events)
        .owns_stream(pdb_events)
        .owns_stream(autoscaler_events)
        .owns_stream(ingress_events)
        .owns_stream(network_policy_events)
        .owns_stream_with(route_events, crate::resources::webcluster::http_route_resource())
        // The Gateway API appeared or went: WebClusters asking for routes
        // are waiting for it (or must now say it is gone).
        .reconcile_all_on(gateway_api_changes)
        .watches_shared_stream(session_store_events, by_session_store)
        .watches_shared_stream(database_mirror_events, by_database)
        .graceful_shutdown_on(shutdown);

    // Reconciles wait (requeue) until every cache is filled, so they never
    // see a half-empty world; /readyz turns ready at the same moment.
    let caches_ready = {
        let web_clusters = web_clusters.clone();
        let context = context.clone();
        async move {
            futures::join!(
                filled(&web_clusters),
                filled(&deployments),
                filled(&services),
                filled(&pdbs),
                filled(&autoscalers),
                filled(&ingresses),
                filled(&network_policies),
                routes.known(),
                filled(&session_stores),
                filled(&database_mirrors),
            );
            context.caches_ready.store(true, std::sync::atomic::Ordering::Release);
            ready();
        }
    };
    tokio::spawn(caches_ready);

    let metrics = context.shared.metrics.clone();
    controller
        .run(reconcile, error_policy, context)
        .for_each(move |result| {
            super::settle(&metrics, &WebCluster::kind(&()), result);
            std::future::ready(())
        })
        .await;
}

/// Maps a changed SessionStore or DatabaseMirror to the WebClusters that refer to it.
fn referrers<K>(
    web_clusters: Store<DeserializeGuard<WebCluster>>,
    referenced: impl Fn(&WebCluster) -> Option<String> + Send + Sync + 'static,
) -> impl Fn(Arc<K>) -> Vec<ObjectRef<DeserializeGuard<WebCluster>>> + Send + Sync + 'static
where
    K: Resource,
{
    move |obj: Arc<K>| {
        let (name, namespace) = (obj.name_any(), obj.namespace());
        web_clusters
            .state()
            .iter()
            .filter(|guard| {
                invalid::decoded(guard).is_ok_and(|wc| {
                    wc.namespace() == namespace && referenced(wc).as_deref() == Some(name.as_str())
                })
            })
            .map(|guard| ObjectRef::from_obj(guard.as_ref()))
            .collect()
    }
}

async fn reconcile(guard: Arc<DeserializeGuard<WebCluster>>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.caches_ready.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(Action::requeue(std::time::Duration::from_millis(200)));
    }
    let wc = match invalid::decoded(&guard) {
        Ok(wc) => wc,
        Err(bad) => return invalid::report::<WebCluster>(&ctx.shared, bad).await,
    };
    let namespace = wc.namespace().unwrap_or_default();
    let name = wc.name_any();
    let span = info_span!("reconcile", controller = CONTROLLER, namespace = %namespace, name = %name);
    let _timer = ctx.shared.metrics.reconcile_started(CONTROLLER);
    let key = format!("{namespace}/{name}");
    let result = reconcile_inner(wc, &ctx, &namespace).instrument(span).await;
    if result.is_ok() {
        ctx.shared.backoff.succeeded(&key);
    }
    result
}

async fn reconcile_inner(wc: &WebCluster, ctx: &Context, namespace: &str) -> Result<Action, Error> {
    let name = wc.name_any();
    let uid = wc.uid().unwrap_or_default();
    let caches = &ctx.caches;
    let live_deployment = live_compact(&caches.deployments, namespace, &name, &uid);
    let mut references = resolve_references(wc, caches, namespace);
    let gateway_api = caches.routes.state();
    references.conflict = claims(wc, ctx, namespace, &gateway_api).await?;
    references.gateway_unavailable = match (&gateway_api, wants_route(wc)) {
        (_, false) | (GatewayApi::Available, true) => None,
        (GatewayApi::Unknown, true) => Some("the Gateway API has not been looked up yet".into()),
        (GatewayApi::Unavailable(why), true) => Some(why.clone()),
    };

    // Paused, or waiting for a reference: existing children keep serving untouched.
    let applied = match (wc.spec.paused, references.wiring()) {
        (false, Ok(wiring)) => {
            apply_children(wc, ctx, namespace, &wiring, live_deployment.clone(), &gateway_api).await?
        }
        _ => None,
    };
    let deployment = applied.or_else(|| live_deployment.as_deref().cloned());

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new_status = status::compute(wc, deployment.as_ref(), &references, &now);
    let samples = objects::web_cluster(wc, &new_status);
    ctx.shared.metrics.objects.publish(WebCluster::kind(&()), namespace, &name, samples);
    let old_status = wc.status.clone().unwrap_or_default();
    if old_status != new_status {
        let api: Api<WebCluster> = Api::namespaced(ctx.shared.client.clone(), namespace);
        let patch = serde_json::json!({
            "apiVersion": "hostwright.io/v1alpha1",
            "kind": "WebCluster",
            "status": new_status,
        });
        api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(|source| Error::Status { object: format!("{namespace}/{name}"), source })?;
        ctx.shared.metrics.write(CONTROLLER, "webclusters/status", "apply");
        for event in status::status_events(&old_status, &new_status) {
            ctx.shared.event(wc, event.type_, event.reason, event.action, event.note).await;
        }
    }
    Ok(Action::requeue(jittered(RESYNC)))
}

/// Apply every child that differs from its cached copy and delete the
/// optional ones no longer wanted. Returns the Deployment if it was applied.
async fn apply_children(
    wc: &WebCluster,
    ctx: &Context,
    namespace: &str,
    wiring: &crate::resources::webcluster::Wiring,
    live_deployment: Option<Arc<Deployment>>,
    gateway_api: &GatewayApi,
) -> Result<Option<Deployment>, Error> {
    let (name, uid) = (wc.name_any(), wc.uid().unwrap_or_default());
    let caches = &ctx.caches;
    let children =
        build(wc, wiring).map_err(|source| Error::Build { object: format!("{namespace}/{name}"), source })?;
    // Exhaustive on purpose: a new child must be applied (or pruned) here.
    let WebClusterChildren {
        deployment,
        service,
        pod_disruption_budget,
        autoscaler,
        ingress,
        http_route,
        network_policy,
    } = children;

    // Events describe the change, so they are published only when it is applied.
    let planned = status::apply_events(live_deployment.as_deref(), &deployment);
    let applied = ctx.shared.apply(&deployment, live_deployment.as_ref()).await?;
    if applied.is_some() {
        for event in planned {
            ctx.shared.event(wc, event.type_, event.reason, event.action, event.note).await;
        }
    }
    let live_service = live_compact(&caches.services, namespace, &name, &uid);
    ctx.shared.apply(&service, live_service.as_ref()).await?;
    let live_budget = live_compact(&caches.pdbs, namespace, &name, &uid);
    ctx.shared.apply(&pod_disruption_budget, live_budget.as_ref()).await?;
    let live_autoscaler = owned_child(&caches.autoscalers, namespace, &name, &uid);
    ctx.shared.apply_or_prune(autoscaler.as_ref(), live_autoscaler).await?;
    let live_ingress = owned_child(&caches.ingresses, namespace, &name, &uid);
    ctx.shared.apply_or_prune_owning(ingress.as_ref(), live_ingress, INGRESS_OWNED_FIELDS).await?;
    let live_policy = owned_child(&caches.network_policies, namespace, &name, &uid);
    ctx.shared
        .apply_or_prune_owning(network_policy.as_ref(), live_policy, NETWORK_POLICY_OWNED_FIELDS)
        .await?;
    // Without the kind there is nothing to apply or prune; the status says so.
    if *gateway_api == GatewayApi::Available {
        let live_route = caches.routes.owned(namespace, &name, &uid);
        gateway::apply_or_prune(&ctx.shared, http_route.as_ref(), live_route).await?;
    }
    Ok(applied)
}

/// The first name of a child that another object holds (a SessionStore's
/// Service of the same name, say), in words.
async fn claims(
    wc: &WebCluster,
    ctx: &Context,
    namespace: &str,
    gateway_api: &GatewayApi,
) -> Result<Option<String>, Error> {
    let (name, uid) = (wc.name_any(), wc.uid().unwrap_or_default());
    let owner = Claimant { uid: &uid, app: CONTROLLER, instance: &name };
    let caches = &ctx.caches;
    let shared = &ctx.shared;
    let mut taken = vec![
        shared.claimed_compact(&caches.deployments, namespace, &name, &owner).await?,
        shared.claimed_compact(&caches.services, namespace, &name, &owner).await?,
        shared.claimed_compact(&caches.pdbs, namespace, &name, &owner).await?,
    ];
    if wc.spec.autoscaling.is_some() {
        taken.push(shared.claimed(&caches.autoscalers, namespace, &name, &owner).await?);
    }
    if !wc.spec.hosts.is_empty() && wc.spec.gateway.is_none() {
        taken.push(shared.claimed(&caches.ingresses, namespace, &name, &owner).await?);
    }
    if wc.spec.network_policy.is_some() {
        taken.push(shared.claimed(&caches.network_policies, namespace, &name, &owner).await?);
    }
    if wants_route(wc) && *gateway_api == GatewayApi::Available {
        taken.push(gateway::claimed(shared, &caches.routes, namespace, &name, &owner).await?);
    }
    Ok(taken.into_iter().flatten().next())
}

/// The spec asks for an HTTPRoute.
fn wants_route(wc: &WebCluster) -> bool {
    wc.spec.gateway.is_some() && !wc.spec.hosts.is_empty()
}

fn resolve_references(wc: &WebCluster, caches: &Caches, namespace: &str) -> References {
    let state = |status: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]>,
                 secret: String| {
        let conditions = status.unwrap_or_default();
        if conditions::is_true(conditions, READY) {
            Reference::Ready { secret }
        } else {
            let message = conditions::find(conditions, READY)
                .map_or_else(|| "no status reported yet".to_string(), |c| c.message.clone());
            Reference::NotReady { message }
        }
    };
    let session_store = wc.spec.session_store_ref.as_ref().map(|r| {
        let found = caches.session_stores.get(&ObjectRef::new(&r.name).within(namespace));
        let reference = match found.as_deref().map(invalid::decoded) {
            None => Reference::NotFound,
            Some(Err(bad)) => Reference::NotReady { message: format!("it cannot be read: {}", bad.error) },
            Some(Ok(s)) => state(
                s.status.as_ref().map(|st| st.replication.conditions.as_slice()),
                crate::resources::sessionstore::connection_name(s),
            ),
        };
        (r.name.clone(), reference)
    });
    let database = wc.spec.database_ref.as_ref().map(|r| {
        let found = caches.database_mirrors.get(&ObjectRef::new(&r.name).within(namespace));
        let reference = match found.as_deref().map(invalid::decoded) {
            None => Reference::NotFound,
            Some(Err(bad)) => Reference::NotReady { message: format!("it cannot be read: {}", bad.error) },
            Some(Ok(d)) => state(
                d.status.as_ref().map(|st| st.replication.conditions.as_slice()),
                crate::resources::databasemirror::credentials_name(d),
            ),
        };
        (r.name.clone(), reference)
    });
    References { session_store, database, conflict: None, gateway_unavailable: None }
}

fn error_policy(wc: Arc<DeserializeGuard<WebCluster>>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.shared.retry_after(wc.as_ref(), error)
}
