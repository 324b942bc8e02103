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
Checks that the schema cannot express; fails the render with a clear message.
*/}}
{{- define "hostwright.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without a lease every replica would reconcile at once" }}
{{- end }}
{{- end }}
