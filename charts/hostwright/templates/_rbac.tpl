{{/*
RBAC rules, shared by the cluster-wide and the namespaced install so both
grant exactly the same verbs. Every rule says which code uses it; add a rule
(with the reason) when a controller starts using a new resource or verb, and
update e2e/tests/chart.rs, which pins them. No wildcards.
*/}}

{{/*
What the controllers do to namespaced objects: a ClusterRole with
scope=cluster, a Role in the watched namespace with scope=namespace.
*/}}
{{- define "hostwright.namespacedRules" -}}
# Watch the hosted-site resources the controllers reconcile (Controller::new
# and the WebCluster controller's store caches); `get` reads an object back
# after a status write lost a race (members/mod.rs write_status) and before
# reporting one that cannot be decoded (controllers/invalid.rs).
- apiGroups: [hostwright.io]
  resources: [webclusters, sessionstores, databasemirrors]
  verbs: [get, list, watch]
# Report progress and conditions; status is written only through the
# status subresource (server-side apply, or a merge patch for an
# undecodable object), never the spec.
- apiGroups: [hostwright.io]
  resources: [webclusters/status, sessionstores/status, databasemirrors/status]
  verbs: [patch]
# A WebCluster's web servers (webcluster/mod.rs): server-side apply (patch,
# and create for a new object), watch the owned Deployments. `get`: before
# creating a child, whether another object (a user's Deployment, another
# site's Service) already holds its name, which is refused, not taken over
# (Shared::claimed). Never deleted by the operator: the garbage collector
# removes it with its WebCluster.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# Services in front of web servers, session stores and databases; applied,
# watched and name-checked like the Deployments, never deleted (owner
# references do that).
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
# PodDisruptionBudgets that keep `tolerate` failures survivable during
# drains, for web tiers and store members; never deleted by the operator.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch]
# HorizontalPodAutoscalers for WebClusters with spec.autoscaling; deleted
# when autoscaling is removed (Shared::apply_or_prune).
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
# Ingresses for WebClusters with spec.hosts; deleted when hosts are removed
# (Shared::apply_or_prune).
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [get, list, watch, create, patch, delete]
# NetworkPolicies isolating each site's web tier and stores: read by name
# (get), server-side applied (create, patch), owned and watched (list,
# watch), pruned when no longer wanted (delete).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
# Gateway API HTTPRoutes for WebCluster hosts, with the same life cycle as
# the NetworkPolicies.
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, list, watch, create, patch, delete]
# cert-manager Certificates, for stores whose spec names an issuer: read and
# applied by name in the store's reconcile (no watch), deleted when the spec
# goes back to the operator's own CA.
- apiGroups: [cert-manager.io]
  resources: [certificates]
  verbs: [get, create, patch, delete]
# DatabaseMirror and SessionStore members: one pod each (members/reconcile.rs:
# created by server-side apply, relabelled by a merge patch as the failover
# engine routes them, deleted one at a time by a rolling update or when
# `mirrors` shrinks). `get`: the name check, and granted on to the members'
# agents in their Role (a Role may only grant what its creator holds).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
# Member data volumes (members/reconcile.rs, members/volumes.rs): created
# once, their owner reference patched to follow storage.deleteOnRemoval,
# their request patched to grow with storage.size, deleted with a removed
# member when deleteOnRemoval says so.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, delete]
# Server settings rendered from the template, and the agents'
# ServiceAccount: applied, watched, name-checked; never deleted.
- apiGroups: [""]
  resources: [configmaps, serviceaccounts]
  verbs: [get, list, watch, create, patch]
# Credentials: generated once and read back so they are never regenerated
# (the operator watches only Secrets labelled as its own, and reads one the
# cache does not show yet); `get` reads the Secret an external SessionStore
# names. Never updated nor deleted.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
# The agents' Role and RoleBinding (get pods; get, create, patch and update
# their member Leases): applied, watched, name-checked.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch]
# Member Leases the agents renew with their reports: watched by the failover
# engine, read again when the cache shows one stale, and revoked (a delete
# conditional on the version that went stale) before a member that stopped
# renewing is replaced. `create`, `patch` and `update` are what the agents'
# Role grants them, which the operator may grant only as it holds them; the
# operator's own leader Lease needs get, create and patch (kube-lease-manager).
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, patch, update, delete]
# Events for every step a controller takes (kube's Recorder: create, and
# patch to bump the count of a repeated event).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/*
Reads of cluster-scoped objects: these exist only at the cluster scope, so
no Role can grant them. Read-only, and switched off with clusterReads=false
(the operator then runs with --cluster-reads=false and does without them).
*/}}
{{- define "hostwright.clusterReadRules" -}}
# Whether a member volume's StorageClass allows expansion, read only when
# storage.size grows (members/volumes.rs).
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [get]
# Cordoned nodes: a drain of the primary's node makes the store switch
# over to a mirror elsewhere (the node watch in members/mod.rs). Read only,
# trimmed to each node's name and spec in the cache.
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
{{- end }}
