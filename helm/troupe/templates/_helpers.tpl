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
through its headless Service. With tls.enabled every gRPC address is https:// (the processes
refuse an http:// address when TLS is on, and the reverse).
*/}}
{{- define "troupe.scheme" -}}
{{- ternary "https" "http" .Values.tls.enabled }}
{{- end }}

{{- define "troupe.coordinatorUrl" -}}
{{- printf "%s://%s-coordinator.%s.svc:50051" (include "troupe.scheme" .) (include "troupe.fullname" .) .Release.Namespace }}
{{- end }}

{{/*
The address a learner advertises: its pod's stable DNS name through its headless Service.
Call with (dict "ctx" $ "learner" <an entry of troupe.learners>).
*/}}
{{- define "troupe.learnerAdvertiseUrl" -}}
{{- $name := .learner.name }}
{{- printf "%s://%s-0.%s.%s.svc:50052" (include "troupe.scheme" .ctx) $name $name .ctx.Release.Namespace }}
{{- end }}

{{/*
The learners, one per learner.policies entry, as a JSON list of {policy, name, multi} (read it
with `include "troupe.learners" . | fromJsonArray`). One policy keeps the single-learner names
(<fullname>-learner, selector without a policy label), so a single-policy release upgrades in
place; several get <fullname>-learner-<policy> each, the policy lower-cased with "_" as "-" (a
DNS label), and troupe.dev/policy in their selectors. Fails when a name would exceed 52
characters (a StatefulSet's pods carry "<name>-<10 characters>" in a 63-character label), when
two policies have the same DNS form, and when learner.policies disagrees with run.config's
[policies] (troupe.checkPolicies).
*/}}
{{- define "troupe.learners" -}}
{{- include "troupe.checkPolicies" . }}
{{- $fullname := include "troupe.fullname" . }}
{{- $policies := .Values.learner.policies }}
{{- $multi := gt (len $policies) 1 }}
{{- $seen := dict }}
{{- $out := list }}
{{- range $policies }}
{{- $name := printf "%s-learner" $fullname }}
{{- if $multi }}
{{- $name = printf "%s-learner-%s" $fullname (. | lower | replace "_" "-") }}
{{- end }}
{{- if hasKey $seen $name }}
{{- fail (printf "learner.policies: %q and %q both make the learner name %s (names are lower-cased, _ as -): rename one" (get $seen $name) . $name) }}
{{- end }}
{{- if gt (len $name) 52 }}
{{- fail (printf "learner.policies: the learner of policy %q would be named %s, %d characters (at most 52): shorten fullnameOverride or the policy's name" . $name (len $name)) }}
{{- end }}
{{- $_ := set $seen $name . }}
{{- $out = append $out (dict "policy" . "name" $name "multi" $multi) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
learner.policies against the run config's [policies] table (docs/CONFIG.md): mapping "shared"
(the default) has the one policy `default`; "map" the names in policies.names; "per_agent" one
per agent, named by the agent ids (which the chart cannot know, so it only refuses `default`).
A policy without a learner never gets a version, and actors wait for every policy's first one.
*/}}
{{- define "troupe.checkPolicies" -}}
{{- $policies := .Values.learner.policies }}
{{- $table := "" }}
{{- $parts := regexSplit "(?m)^\\s*\\[policies\\]\\s*(#.*)?$" .Values.run.config 2 }}
{{- if gt (len $parts) 1 }}
{{- $table = regexReplaceAll "(?m)#.*$" (regexSplit "(?m)^\\s*\\[" (index $parts 1) 2 | first) "" }}
{{- end }}
{{- $mapping := regexFind "(?m)^\\s*mapping\\s*=\\s*[\"'][a-z_]*[\"']" $table | regexFind "[a-z_]*[\"']$" | trimSuffix "\"" | trimSuffix "'" | default "shared" }}
{{- if eq $mapping "shared" }}
{{- if ne (toJson $policies) (toJson (list "default")) }}
{{- fail (printf "learner.policies: run.config's [policies] mapping is \"shared\" (the default): one policy, default; set learner.policies to [default], not %v" $policies) }}
{{- end }}
{{- else if eq $mapping "per_agent" }}
{{- if has "default" $policies }}
{{- fail "learner.policies: run.config's [policies] mapping is \"per_agent\": one policy per agent, named by its id (e.g. [agent_0, agent_1] for a two-agent env), and none named default" }}
{{- end }}
{{- else if eq $mapping "map" }}
{{- $names := list }}
{{- $list := regexFind "(?s)(^|\\n)\\s*names\\s*=\\s*\\[[^\\]]*\\]" $table }}
{{- range regexFindAll "[\"'][^\"']*[\"']" (regexReplaceAll "(?s)^.*?\\[" $list "") -1 }}
{{- $names = append $names (trimAll "\"'" .) }}
{{- end }}
{{- if ne (toJson (sortAlpha $names)) (toJson (sortAlpha $policies)) }}
{{- fail (printf "learner.policies: run.config's [policies] mapping is \"map\" with names %v: set learner.policies to those, one learner each, not %v" $names $policies) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Selector labels of one learner: the component's, plus troupe.dev/policy when the chart runs
several learners (a single one keeps the selector it always had: selectors are immutable).
Call with (dict "ctx" $ "learner" <an entry of troupe.learners>).
*/}}
{{- define "troupe.learnerSelectorLabels" -}}
{{ include "troupe.selectorLabels" (dict "ctx" .ctx "component" "learner") }}
{{- if .learner.multi }}
troupe.dev/policy: {{ .learner.policy | quote }}
{{- end }}
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
Native gRPC probes (grpc.health.v1) on the process's plain-text health port (--health-listen:
the kubelet's gRPC probes cannot speak TLS, so they never target the gRPC port): startup and
liveness on the service "" (the process is alive), readiness on the component's service.
Call with (dict "port" 50054 "service" "troupe.v1.Coordinator" "probes" .Values.coordinator.probes).
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
The /tmp emptyDir (the root filesystem is read-only) and the optional TLS and token Secrets,
each component given only the keys it needs (other keys in the Secrets, e.g. a CA's key,
reach no pod):
  TLS Secret (tls.crt, tls.key, ca.crt): the coordinator, the replay process and the learner all
    three; actors only ca.crt, plus tls.crt and tls.key with tls.clientAuth (they present a
    certificate then);
  token Secret (actor, learner, evaluator, admin): the coordinator and the replay process every
    role's token (they accept them all: replay's Insert actor and learner, Sample and
    UpdatePriorities learner, TableInfo every role; admin everything); the learner its own and
    the actors' (it accepts actors' streams and keys the actor-binding secrets with its own); an
    actor only its own.
Call with (dict "ctx" $ "component" "coordinator").
*/}}
{{- define "troupe.commonVolumes" -}}
{{- $values := .ctx.Values -}}
- name: tmp
  emptyDir: {}
{{- if $values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required when tls.enabled" $values.tls.secretName }}
    defaultMode: 0440
    items:
      - key: ca.crt
        path: ca.crt
    {{- if or (ne .component "actor") $values.tls.clientAuth }}
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
    {{- end }}
{{- end }}
{{- if $values.auth.enabled }}
- name: tokens
  secret:
    secretName: {{ required "auth.secretName is required when auth.enabled" $values.auth.secretName }}
    defaultMode: 0440
    items:
      {{- range get (dict "coordinator" (list "actor" "learner" "evaluator" "admin") "replay" (list "actor" "learner" "evaluator" "admin") "learner" (list "actor" "learner") "actor" (list "actor")) .component }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
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
TLS and token settings as TROUPE_* variables, pointing at the Secrets' files mounted above.
Servers (coordinator, replay, learner) present tls.crt/tls.key and check callers' tokens against
/etc/troupe/tokens; clients (learner, actor) verify servers against ca.crt and send their
own role's token. tls.clientAuth turns on mutual TLS everywhere; tls.serverName is the name
clients verify in the servers' certificate instead of the host they dial.
Call with (dict "ctx" $ "component" "coordinator").
*/}}
{{- define "troupe.securityEnv" -}}
{{- $values := .ctx.Values }}
{{- $server := has .component (list "coordinator" "replay" "learner") }}
{{- $client := has .component (list "learner" "actor") }}
{{- if $values.tls.enabled }}
- name: TROUPE_TLS_CA
  value: /etc/troupe/tls/ca.crt
{{- if or $server $values.tls.clientAuth }}
- name: TROUPE_TLS_CERT
  value: /etc/troupe/tls/tls.crt
- name: TROUPE_TLS_KEY
  value: /etc/troupe/tls/tls.key
{{- end }}
{{- if $values.tls.clientAuth }}
- name: TROUPE_TLS_CLIENT_AUTH
  value: "true"
{{- end }}
{{- if and $client $values.tls.serverName }}
- name: TROUPE_TLS_SERVER_NAME
  value: {{ $values.tls.serverName | quote }}
{{- end }}
{{- end }}
{{- if $values.auth.enabled }}
{{- if $server }}
- name: TROUPE_TOKENS_DIR
  value: /etc/troupe/tokens
{{- end }}
{{- if $client }}
- name: TROUPE_TOKEN_FILE
  value: /etc/troupe/tokens/{{ .component }}
{{- end }}
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

{{/*
The replay service (docs/DEPLOY.md, "Placing replay"). Inside the coordinator (--role all) unless
replay.separate: then <fullname>-replay runs `coordinator --role replay` on ports of its own.
*/}}
{{- define "troupe.replayUrl" -}}
{{- if .Values.replay.separate }}
{{- printf "%s://%s-replay.%s.svc:50056" (include "troupe.scheme" .) (include "troupe.fullname" .) .Release.Namespace }}
{{- else }}
{{- include "troupe.coordinatorUrl" . }}
{{- end }}
{{- end }}

{{/*
The chart's replay Redis shards (replay.shards), as a JSON list of {name, shard} (read it with
`include "troupe.replayShards" . | fromJsonArray`): <fullname>-replay-redis-<i> for shard i.
Fails when a name would exceed 52 characters (a StatefulSet's pods carry
"<name>-<10 characters>" in a 63-character label).
*/}}
{{- define "troupe.replayShards" -}}
{{- $fullname := include "troupe.fullname" . }}
{{- $out := list }}
{{- range $i := until (int .Values.replay.shards) }}
{{- $name := printf "%s-replay-redis-%d" $fullname $i }}
{{- if gt (len $name) 52 }}
{{- fail (printf "replay.shards: shard %d would be named %s, %d characters (at most 52): shorten fullnameOverride" $i $name (len $name)) }}
{{- end }}
{{- $out = append $out (dict "name" $name "shard" (toString $i)) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The replay tables' Redis URLs (--replay-redis-url, in this order: the shard numbers): the
chart's shards, then replay.redisUrls. Empty: replay uses the coordinator's Redis
(TROUPE_REDIS_URL). As a JSON list.
*/}}
{{- define "troupe.replayRedisUrls" -}}
{{- $urls := list }}
{{- range include "troupe.replayShards" . | fromJsonArray }}
{{- $urls = append $urls (printf "redis://%s.%s.svc:6379" .name $.Release.Namespace) }}
{{- end }}
{{- $seen := dict }}
{{- range concat $urls .Values.replay.redisUrls }}
{{- if hasKey $seen . }}
{{- fail (printf "replay: the Redis URL %s is listed twice (replay.redisUrls and the chart's shards): each shard once" .) }}
{{- end }}
{{- $_ := set $seen . true }}
{{- end }}
{{- toJson (concat $urls .Values.replay.redisUrls) }}
{{- end }}

{{/*
--replay-redis-url URL, once per shard, for the process that serves replay, when replay has
Redis of its own.
*/}}
{{- define "troupe.replayRedisUrlArgs" -}}
{{- range include "troupe.replayRedisUrls" . | fromJsonArray }}
- --replay-redis-url
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Selector labels of a Redis StatefulSet: the component's, plus troupe.dev/shard for a replay
shard. Call with (dict "ctx" $ "component" "redis" "shard" "").
*/}}
{{- define "troupe.redisSelectorLabels" -}}
{{ include "troupe.selectorLabels" (dict "ctx" .ctx "component" .component) }}
{{- if .shard }}
troupe.dev/shard: {{ .shard | quote }}
{{- end }}
{{- end }}

{{/*
A Redis StatefulSet on the official image with an append-only file under /data: the chart's
Redis (component redis) and each replay shard (component replay-redis). Call with (dict "ctx" $
"name" NAME "component" "redis" "shard" "" "values" <settings: appendfsync, persistence,
extraArgs, resources, pod labels and annotations, scheduling> "holds" "The policy versions").
*/}}
{{- define "troupe.redisStatefulSet" -}}
{{- $ctx := .ctx }}
{{- $values := .values }}
{{- $image := $ctx.Values.redis.image }}
{{- $selector := dict "ctx" $ctx "component" .component "shard" .shard }}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ .name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "troupe.labels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
    {{- with .shard }}
    troupe.dev/shard: {{ . | quote }}
    {{- end }}
spec:
  replicas: 1
  serviceName: {{ .name }}
  selector:
    matchLabels:
      {{- include "troupe.redisSelectorLabels" $selector | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "troupe.labels" (dict "ctx" $ctx "component" .component) | nindent 8 }}
        {{- with .shard }}
        troupe.dev/shard: {{ . | quote }}
        {{- end }}
        {{- with $values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $values.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- include "troupe.podCommon" $ctx | nindent 6 }}
      {{- with include "troupe.scheduling" $values | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      containers:
        - name: redis
          image: {{ printf "%s:%s" $image.repository $image.tag }}
          imagePullPolicy: {{ $image.pullPolicy }}
          command:
            - redis-server
          # {{ .holds }} survive a restart in the append-only file under /data.
          args:
            - --appendonly
            - "yes"
            - --appendfsync
            - {{ $values.appendfsync | default "everysec" }}
            {{- with $values.extraArgs }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: redis
              containerPort: 6379
              protocol: TCP
          # LOADING (replaying the append-only file) is alive but not ready.
          livenessProbe:
            exec:
              command:
                - sh
                - -c
                - 'case "$(redis-cli -h 127.0.0.1 -p 6379 ping)" in PONG|LOADING*) exit 0 ;; *) exit 1 ;; esac'
            initialDelaySeconds: 10
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 6
          readinessProbe:
            exec:
              command:
                - sh
                - -c
                - 'test "$(redis-cli -h 127.0.0.1 -p 6379 ping)" = PONG'
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 3
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $ctx.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: data
              mountPath: /data
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir: {}
        {{- if not $values.persistence.enabled }}
        - name: data
          emptyDir: {}
        {{- end }}
  {{- if $values.persistence.enabled }}
  volumeClaimTemplates:
    - apiVersion: v1
      kind: PersistentVolumeClaim
      metadata:
        name: data
        labels:
          {{- include "troupe.redisSelectorLabels" $selector | nindent 10 }}
        {{- with $values.persistence.annotations }}
        annotations:
          {{- toYaml . | nindent 10 }}
        {{- end }}
      spec:
        accessModes:
          {{- toYaml $values.persistence.accessModes | nindent 10 }}
        {{- with $values.persistence.storageClass }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ $values.persistence.size }}
  {{- end }}
{{- end }}

{{/*
The ClusterIP Service of a Redis StatefulSet. Call as troupe.redisStatefulSet (name, component,
shard).
*/}}
{{- define "troupe.redisService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ .name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "troupe.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
    {{- with .shard }}
    troupe.dev/shard: {{ . | quote }}
    {{- end }}
spec:
  type: ClusterIP
  selector:
    {{- include "troupe.redisSelectorLabels" (dict "ctx" .ctx "component" .component "shard" .shard) | nindent 4 }}
  ports:
    - name: redis
      port: 6379
      targetPort: redis
      protocol: TCP
      appProtocol: redis
{{- end }}
