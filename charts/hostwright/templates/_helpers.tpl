{{/*
Chart name, or nameOverride. Truncated to 63 characters (label value limit).
*/}}
{{- define "hostwright.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name for resources: fullnameOverride, else the release name, with the
chart name appended unless the release name already contains it.
*/}}
{{- define "hostwright.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "hostwright.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels every resource of the chart carries.
*/}}
{{- define "hostwright.labels" -}}
helm.sh/chart: {{ include "hostwright.chart" . }}
{{ include "hostwright.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hostwright
{{- end }}

{{/*
Labels that select the operator's pods; never change between upgrades.
*/}}
{{- define "hostwright.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hostwright.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's image reference.
*/}}
{{- define "hostwright.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The namespace the operator watches (`--namespace`): with scope=namespace,
watchNamespace or else the release namespace; with scope=cluster,
watchNamespace (empty: every namespace).
*/}}
{{- define "hostwright.watchNamespace" -}}
{{- if eq .Values.scope "namespace" }}
{{- .Values.watchNamespace | default .Release.Namespace }}
{{- else }}
{{- .Values.watchNamespace }}
{{- end }}
{{- end }}

{{/*
Name of the Role (and RoleBinding) of the controllers in the watched
namespace with scope=namespace; distinct from the leader-lease Role, which
shares its namespace when the operator watches its own.
*/}}
{{- define "hostwright.controllersRoleName" -}}
{{- printf "%s-controllers" (include "hostwright.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the read-only ClusterRole (and binding) of the cluster-scoped reads
with scope=namespace.
*/}}
{{- define "hostwright.clusterReadsName" -}}
{{- printf "%s-cluster-reads" (include "hostwright.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A bind address and port as one `--*-addr` value; an IPv6 address is
bracketed. Called with (list address port).
*/}}
{{- define "hostwright.hostPort" -}}
{{- $address := index . 0 }}
{{- if and (contains ":" $address) (not (hasPrefix "[" $address)) }}
{{- printf "[%s]:%v" $address (index . 1) }}
{{- else }}
{{- printf "%s:%v" $address (index . 1) }}
{{- end }}
{{- end }}

{{/*
Whether an address is a loopback one, which nothing outside the pod reaches.
*/}}
{{- define "hostwright.isLoopback" -}}
{{- $a := trimAll "[]" . }}
{{- if or (hasPrefix "127." $a) (eq $a "::1") (eq $a "localhost") }}true{{ end }}
{{- end }}

{{/*
Checks that the schema cannot express; fails the render with a clear message.
*/}}
{{- define "hostwright.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without a lease every replica would reconcile at once" }}
{{- end }}
{{- $healthOwn := and .Values.health.port (ne (int .Values.health.port) (int .Values.metrics.port)) }}
{{- if and (not $healthOwn) (include "hostwright.isLoopback" .Values.metrics.bindAddress) }}
{{- fail "metrics.bindAddress is a loopback address, which the kubelet's probes cannot reach: set health.port to serve /healthz and /readyz on a listener of their own" }}
{{- end }}
{{- if and $healthOwn (include "hostwright.isLoopback" .Values.health.bindAddress) }}
{{- fail "health.bindAddress is a loopback address, which the kubelet's probes cannot reach" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (include "hostwright.isLoopback" .Values.metrics.bindAddress) }}
{{- fail "serviceMonitor.enabled with a loopback metrics.bindAddress: Prometheus could not reach /metrics" }}
{{- end }}
{{- end }}
