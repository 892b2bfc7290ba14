{{/*
Chart name, truncated to 63 characters (DNS label limit).
*/}}
{{- define "troupe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name alone when it already contains the chart
name. Truncated to 40 characters: a StatefulSet's pods carry a controller-revision-hash label
"<statefulset>-<10 characters>", which must stay within 63, so "<fullname>-learner" must stay
within 52.
*/}}
{{- define "troupe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "troupe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource. Call with (dict "ctx" $ "component" "learner"); component may be "".
*/}}
{{- define "troupe.labels" -}}
helm.sh/chart: {{ include "troupe.chart" .ctx }}
{{ include "troupe.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: troupe
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels (immutable on Deployments and StatefulSets: keep them to these).
Call with (dict "ctx" $ "component" "learner").
*/}}
{{- define "troupe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "troupe.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
Pod labels: the resource labels, the run label (relabeled into the `run` label of every metric)
and the component's podLabels. Call with (dict "ctx" $ "component" "learner" "values" .Values.learner).
*/}}
{{- define "troupe.podLabels" -}}
{{ include "troupe.labels" . }}
troupe.dev/run: {{ include "troupe.runName" .ctx | quote }}
{{- with .values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The run name: the run config's top-level `name`, which must agree with run.name when both are
set; run.name when the config has none; else "troupe" (the coordinator's default).
Top-level keys are the ones before the first [table] header.
*/}}
{{- define "troupe.configRunName" -}}
{{- $top := regexSplit "(?m)^\\s*\\[" .Values.run.config 2 | first }}
{{- $line := regexFind "(?m)^\\s*name\\s*=\\s*[\"'][^\"']*[\"']" $top }}
{{- if $line }}
{{- regexReplaceAll "^\\s*name\\s*=\\s*[\"']([^\"']*)[\"']$" $line "${1}" }}
{{- end }}
{{- end }}

{{- define "troupe.runName" -}}
{{- $fromConfig := include "troupe.configRunName" . }}
{{- if and $fromConfig .Values.run.name (ne $fromConfig .Values.run.name) }}
{{- fail (printf "run.name %q differs from the name %q in run.config: set one or make them agree" .Values.run.name $fromConfig) }}
{{- end }}
{{- $name := $fromConfig | default .Values.run.name | default "troupe" }}
{{- if or (gt (len $name) 63) (not (regexMatch "^[A-Za-z0-9_-]+$" $name)) }}
{{- fail (printf "run name %q: letters, digits, - and _, at most 63 (it is the troupe.dev/run label)" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{/*
The run config as mounted: run.config, with `name = "<run.name>"` put first when it has no
top-level name of its own.
*/}}
{{- define "troupe.runConfig" -}}
{{- if and .Values.run.name (not (include "troupe.configRunName" .)) }}
{{- printf "name = %q\n" .Values.run.name }}
{{- end }}
{{- .Values.run.config }}
{{- end }}

{{/*
Images. Tags default to the chart's appVersion.
*/}}
{{- define "troupe.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "troupe.actorImage" -}}
{{- printf "%s:%s" .Values.actor.image.repository (.Values.actor.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "troupe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "troupe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Addresses. Services are named <fullname>-<component>; the learner's pod has a stable DNS name
through its headless Service.
*/}}
{{- define "troupe.coordinatorUrl" -}}
{{- printf "http://%s-coordinator.%s.svc:50051" (include "troupe.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "troupe.learnerAdvertiseUrl" -}}
{{- $fullname := include "troupe.fullname" . }}
{{- printf "http://%s-learner-0.%s-learner.%s.svc:50052" $fullname $fullname .Release.Namespace }}
{{- end }}

{{- define "troupe.redisUrl" -}}
{{- printf "redis://%s-redis.%s.svc:6379" (include "troupe.fullname" .) .Release.Namespace }}
{{- end }}

{{/*
Pod annotations of a Troupe process: the config checksum (pods roll when the run config
changes), the prometheus.io/* scrape hints and the component's podAnnotations.
Call with (dict "ctx" $ "port" 9100 "values" .Values.coordinator).
*/}}
{{- define "troupe.podAnnotations" -}}
checksum/config: {{ include (print .ctx.Template.BasePath "/configmap.yaml") .ctx | sha256sum }}
{{- if .ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The environment every Troupe process shares.
*/}}
{{- define "troupe.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/*
Native gRPC probes (grpc.health.v1) on the process's gRPC port: startup and liveness on the
service "" (the process is alive), readiness on the component's service.
Call with (dict "port" 50051 "service" "troupe.v1.Coordinator" "probes" .Values.coordinator.probes).
*/}}
{{- define "troupe.grpcProbes" -}}
startupProbe:
  grpc:
    port: {{ .port }}
    service: ""
  {{- toYaml .probes.startup | nindent 2 }}
livenessProbe:
  grpc:
    port: {{ .port }}
    service: ""
  {{- toYaml .probes.liveness | nindent 2 }}
readinessProbe:
  grpc:
    port: {{ .port }}
    service: {{ .service | quote }}
  {{- toYaml .probes.readiness | nindent 2 }}
{{- end }}

{{/*
The /tmp emptyDir (the root filesystem is read-only) and the optional TLS and token Secrets.
*/}}
{{- define "troupe.commonVolumes" -}}
- name: tmp
  emptyDir: {}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required when tls.enabled" .Values.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- if .Values.auth.enabled }}
- name: tokens
  secret:
    secretName: {{ required "auth.secretName is required when auth.enabled" .Values.auth.secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "troupe.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/troupe/tls
  readOnly: true
{{- end }}
{{- if .Values.auth.enabled }}
- name: tokens
  mountPath: /etc/troupe/tokens
  readOnly: true
{{- end }}
{{- end }}

{{/*
Pod-level settings every workload shares.
*/}}
{{- define "troupe.podCommon" -}}
serviceAccountName: {{ include "troupe.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/*
Scheduling settings of a component. Call with the component's values.
*/}}
{{- define "troupe.scheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Where the coordinator finds Redis: the chart's Redis, an existing Secret, or externalRedis.url.
*/}}
{{- define "troupe.redisUrlEnv" -}}
- name: TROUPE_REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ include "troupe.redisUrl" . | quote }}
{{- else if .Values.externalRedis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.existingSecretKey }}
{{- else }}
  value: {{ required "externalRedis.url or externalRedis.existingSecret is required when redis.enabled=false" .Values.externalRedis.url | quote }}
{{- end }}
{{- end }}
