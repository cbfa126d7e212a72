{{/* Chart name, truncated to 63 characters. */}}
{{- define "hcs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; "hcs" for a release called hcs. */}}
{{- define "hcs.fullname" -}}
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

{{- define "hcs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hcs.labels" -}}
helm.sh/chart: {{ include "hcs.chart" . }}
app.kubernetes.io/name: {{ include "hcs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hcs
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include "hcs.selectorLabels" (list . "webhook") */}}
{{- define "hcs.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "hcs.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Labels of one component's objects: include "hcs.componentLabels" (list . "webhook") */}}
{{- define "hcs.componentLabels" -}}
{{ include "hcs.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "hcs.nodeAgent.name" -}}{{ include "hcs.fullname" . }}-node-agent{{- end }}
{{- define "hcs.allocator.name" -}}{{ include "hcs.fullname" . }}-allocator{{- end }}
{{- define "hcs.webhook.name" -}}{{ include "hcs.fullname" . }}-webhook{{- end }}
{{- define "hcs.webhook.secret" -}}{{ include "hcs.fullname" . }}-webhook-tls{{- end }}
{{- define "hcs.allocator.secret" -}}{{ include "hcs.fullname" . }}-allocator-tls{{- end }}

{{/*
Caller identity towards the allocator's gRPC API (docs/operations.md, "Allocator API access"): a bound,
projected ServiceAccount token for the allocator's audience (the kubelet rotates it) and the CA that signed
the allocator's serving certificate (only ca.crt of its Secret is projected). Mounted at
/var/run/secrets/hcs-allocator in the node agents and, with capacitySource=allocator, the webhook.
*/}}
{{- define "hcs.allocator.authDir" -}}/var/run/secrets/hcs-allocator{{- end }}
{{- define "hcs.allocator.authVolume" -}}
- name: allocator-auth
  projected:
    sources:
      - serviceAccountToken:
          audience: {{ .Values.scheduler.auth.audience | quote }}
          expirationSeconds: {{ .Values.scheduler.auth.tokenExpirationSeconds }}
          path: token
      - secret:
          name: {{ include "hcs.allocator.secret" . }}
          items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{/* Secret with the HMAC key of hcs.io/assignment records (hcs/records.py). */}}
{{- define "hcs.records.secret" -}}{{ .Values.records.existingSecret | default (printf "%s-record-key" (include "hcs.fullname" .)) }}{{- end }}

{{- define "hcs.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "hcs.kubeSchedulerImage" -}}
{{- $i := .Values.scheduler.kubeScheduler.image -}}
{{- printf "%s:%s" $i.repository $i.tag }}
{{- end }}

{{/* Which request paths are on. */}}
{{- define "hcs.devicePluginOn" -}}
{{- if has .Values.mode (list "devicePlugin" "both") }}true{{ end }}
{{- end }}
{{- define "hcs.draOn" -}}
{{- if has .Values.mode (list "dra" "both") }}true{{ end }}
{{- end }}

{{/* The webhook's cluster-wide mode (hcs webhook --mode values). */}}
{{- define "hcs.webhook.mode" -}}
{{- if .Values.webhook.mode }}{{ .Values.webhook.mode }}
{{- else if eq .Values.mode "dra" }}dra
{{- else }}device-plugin
{{- end }}
{{- end }}

{{/* The allocator's leader Service: selects only the replica holding the Lease (the allocator labels its
own pod hcs.io/allocator-leader=true), so the extender's and the node agents' calls never reach a standby. */}}
{{- define "hcs.allocator.host" -}}
{{- printf "%s-leader.%s.svc.%s" (include "hcs.allocator.name" .) .Release.Namespace .Values.global.clusterDomain }}
{{- end }}

{{/* Whether the webhook certificate comes from cert-manager. */}}
{{- define "hcs.webhook.certManager" -}}
{{- $cm := .Values.webhook.certManager -}}
{{- if or $cm.enabled (and $cm.autoDetect (.Capabilities.APIVersions.Has "cert-manager.io/v1")) }}true{{ end }}
{{- end }}

{{- define "hcs.serviceAccountName" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%s" (include "hcs.fullname" $ctx) (index . 1) }}
{{- end }}

{{/* Checks that fail the render with a message naming the value. */}}
{{- define "hcs.validate" -}}
{{- if not (has .Values.mode (list "devicePlugin" "dra" "both")) }}
{{- fail (printf "values: mode is %q; use devicePlugin, dra or both" (toString .Values.mode)) }}
{{- end }}
{{- if not (has .Values.webhook.failurePolicy (list "Fail" "Ignore")) }}
{{- fail (printf "values: webhook.failurePolicy is %q; use Fail or Ignore" (toString .Values.webhook.failurePolicy)) }}
{{- end }}
{{- if and .Values.webhook.mode (not (has .Values.webhook.mode (list "device-plugin" "dra"))) }}
{{- fail (printf "values: webhook.mode is %q; use \"\", device-plugin or dra" .Values.webhook.mode) }}
{{- end }}
{{- if and .Values.scheduler.enabled (gt (int .Values.scheduler.replicas) 1) (not .Values.scheduler.leaderElection.enabled) }}
{{- fail "values: scheduler.replicas > 1 needs scheduler.leaderElection.enabled=true (two active schedulers would bind pods twice)" }}
{{- end }}
{{- if and .Values.nodeAgent.enabled .Values.nodeAgent.dra.rollingUpdate (ne .Values.mode "dra") }}
{{- fail (printf "values: nodeAgent.dra.rollingUpdate=true needs mode=dra (mode is %q): it runs the old and the new node-agent pod side by side, and the device plugin's socket in the kubelet's device-plugins dir has one fixed name the two pods would fight over; set mode=dra or nodeAgent.dra.rollingUpdate=false" (toString .Values.mode)) }}
{{- end }}
{{- end }}

{{/* CEL: a pod UPDATE the webhook must see (hcs/webhook/manifests.py POD_UPDATE_MATTERS). */}}
{{- define "hcs.webhook.podUpdateMatters" -}}
request.?subResource.orValue('') == 'ephemeralcontainers'{{ if not .Values.records.admissionPolicy }} || object.metadata.?annotations[?'hcs.io/assignment'].orValue('') != oldObject.metadata.?annotations[?'hcs.io/assignment'].orValue('') || object.metadata.?annotations[?'hcs.io/assignment-signature'].orValue('') != oldObject.metadata.?annotations[?'hcs.io/assignment-signature'].orValue(''){{ end }}
{{- end }}
