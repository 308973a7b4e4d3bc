{{/* Names and labels. */}}
{{- define "shim.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shim.fullname" -}}
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

{{- define "shim.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shim.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "shim.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.shape }}
{{- end }}

{{- define "shim.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shim.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference: call with (list $image $context) */}}
{{- define "shim.imageRef" -}}
{{- $image := index . 0 }}
{{- $ctx := index . 1 }}
{{- printf "%s:%s" $image.repository (default $ctx.Chart.AppVersion $image.tag) }}
{{- end }}

{{/* What the shape needs. */}}
{{- define "shim.inPod" -}}
{{- if has .Values.shape (list "sidecar" "transparent") }}true{{ end }}
{{- end }}

{{/* The CA + truststore init step: the explicit proxy always intercepts https CONNECTs;
     the transparent shape only when 443 is redirected. */}}
{{- define "shim.needsTrust" -}}
{{- if or (eq .Values.shape "sidecar") (and (eq .Values.shape "transparent") .Values.transparent.https) }}true{{ end }}
{{- end }}

{{/* A pod needs one ordinary container: with no TorchServe (example or extraContainers)
     in it, shim is that container. */}}
{{- define "shim.nativeSidecar" -}}
{{- if and (include "shim.inPod" .) .Values.sidecar.native (or .Values.torchserve.enabled .Values.extraContainers) }}true{{ end }}
{{- end }}

{{- define "shim.renderConfig" -}}
{{- if and .Values.dfdaemon.enabled (eq .Values.dfdaemon.mode "hostIP") }}true{{ end }}
{{- end }}

{{- define "shim.dfdaemonURL" -}}
{{- if eq .Values.dfdaemon.mode "hostIP" }}
{{- /* ${HOST_IP} is replaced at pod start by the render-config init container. */}}
{{- printf "http://${HOST_IP}:%d" (int .Values.dfdaemon.port) }}
{{- else if eq .Values.dfdaemon.mode "address" }}
{{- required "dfdaemon.address is required with dfdaemon.mode=address" .Values.dfdaemon.address }}
{{- else }}
{{- fail (printf "dfdaemon.mode must be hostIP or address, not %q" .Values.dfdaemon.mode) }}
{{- end }}
{{- end }}

{{/* The environment variable holding the proxy_auth password (from proxyAuth.existingSecret). */}}
{{- define "shim.proxyAuthPasswordEnv" -}}
SHIM_PROXY_AUTH_PASSWORD
{{- end }}

{{/* shim.yaml. The values schema refuses the chart's own keys in extraConfig; merge only adds
     what extraConfig has beyond them (cache.zero_copy_hits, limits, headers...). */}}
{{- define "shim.config" -}}
{{- $cfg := dict
      "listen" (printf "127.0.0.1:%d" (int .Values.ports.proxy))
      "admin" (printf "0.0.0.0:%d" (int .Values.ports.admin))
      "confdir" "/var/lib/shim"
      "cache" (dict "dir" "/var/cache/shim" "max_size" .Values.cache.maxSize "min_free" .Values.cache.minFree)
      "buckets" .Values.buckets
      "passthrough" .Values.passthrough
      "shutdown_grace" .Values.shutdownGrace }}
{{- if eq .Values.shape "transparent" }}
{{- $_ := set $cfg "transparent" (printf "127.0.0.1:%d" (int .Values.ports.transparent)) }}
{{- end }}
{{- if eq .Values.shape "standalone" }}
{{- $_ := set $cfg "reverse" (printf "0.0.0.0:%d" (int .Values.ports.reverse)) }}
{{- end }}
{{- with .Values.clients }}
{{- $_ := set $cfg "clients" . }}
{{- end }}
{{- with .Values.proxyAuth.username }}
{{- $_ := set $cfg "proxy_auth" (dict "username" . "password_env" (include "shim.proxyAuthPasswordEnv" $)) }}
{{- end }}
{{- if .Values.dfdaemon.enabled }}
{{- $_ := set $cfg "dfdaemon" (merge (dict "url" (include "shim.dfdaemonURL" .)) (deepCopy .Values.dfdaemon.options)) }}
{{- end }}
{{- toYaml (merge $cfg (deepCopy .Values.extraConfig)) }}
{{- end }}

{{/* JAVA_TOOL_OPTIONS for the TorchServe JVM. For the sidecar it is exactly what
     `shim env --proxy 127.0.0.1:PORT --truststore /etc/shim-trust/truststore.p12` prints
     (tests/test_deploy.py compares them); the transparent shape keeps only timeouts and trust. */}}
{{- define "shim.javaToolOptions" -}}
{{- $opts := list }}
{{- if eq .Values.shape "sidecar" }}
{{- $port := int .Values.ports.proxy }}
{{- $opts = concat $opts (list
      "-Dhttp.proxyHost=127.0.0.1" (printf "-Dhttp.proxyPort=%d" $port)
      "-Dhttps.proxyHost=127.0.0.1" (printf "-Dhttps.proxyPort=%d" $port)
      (printf "-Dhttp.nonProxyHosts=%s" .Values.torchserve.nonProxyHosts)) }}
{{- end }}
{{- $opts = concat $opts (list
      (printf "-Dsun.net.client.defaultConnectTimeout=%d" (int .Values.torchserve.connectTimeoutMs))
      (printf "-Dsun.net.client.defaultReadTimeout=%d" (int .Values.torchserve.readTimeoutMs))) }}
{{- if include "shim.needsTrust" . }}
{{- $opts = concat $opts (list
      "-Djavax.net.ssl.trustStore=/etc/shim-trust/truststore.p12"
      "-Djavax.net.ssl.trustStorePassword=changeit"
      "-Djavax.net.ssl.trustStoreType=PKCS12") }}
{{- end }}
{{- with .Values.torchserve.extraJavaOptions }}
{{- $opts = append $opts . }}
{{- end }}
{{- join " " $opts }}
{{- end }}

{{/* The example TorchServe's config.properties. Management on loopback only and token
     authorization on: a registered URL is signed by shim and its archive executed by
     TorchServe, so registering must stay with whoever can reach the pod's loopback
     (kubectl port-forward) and holds the management key. gRPC listens on loopback too. */}}
{{- define "shim.torchserveLockedProperties" -}}
{{- $ts := .Values.torchserve }}
inference_address: {{ printf "http://0.0.0.0:%d" (int $ts.ports.inference) }}
management_address: {{ printf "http://127.0.0.1:%d" (int $ts.ports.management) }}
metrics_address: {{ printf "http://0.0.0.0:%d" (int $ts.ports.metrics) }}
grpc_inference_address: 127.0.0.1
grpc_management_address: 127.0.0.1
model_store: /home/model-server/model-store
disable_token_authorization: "false"
enable_model_api: "true"
{{- end }}

{{- define "shim.torchserveProperties" -}}
{{- $props := merge (include "shim.torchserveLockedProperties" . | fromYaml) (deepCopy .Values.torchserve.properties) }}
{{- range $key := keys $props | sortAlpha }}
{{ $key }}={{ index $props $key }}
{{- end }}
{{- end }}

{{/* The pod's grace after SIGTERM: shim's own grace for transfers in flight, plus time to exit. */}}
{{- define "shim.terminationGracePeriodSeconds" -}}
{{- add (int (ceil .Values.shutdownGrace)) 5 }}
{{- end }}

{{/* securityContext of every shim container (proxy, ca, render-config). */}}
{{- define "shim.securityContext" -}}
runAsNonRoot: true
runAsUser: {{ int .Values.uid }}
runAsGroup: {{ int .Values.uid }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The shim proxy container (a native sidecar or an ordinary container). */}}
{{- define "shim.proxyContainer" -}}
- name: shim
  image: {{ include "shim.imageRef" (list .Values.image .) | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if include "shim.nativeSidecar" . }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "--config", "/etc/shim/shim.yaml"]
  env:
    - name: SHIM_CONFIG
      value: /etc/shim/shim.yaml
    {{- if .Values.proxyAuth.username }}
    - name: {{ include "shim.proxyAuthPasswordEnv" . }}
      valueFrom:
        secretKeyRef:
          name: {{ .Values.proxyAuth.existingSecret }}
          key: {{ .Values.proxyAuth.passwordKey }}
    {{- end }}
  {{- with .Values.credentials.existingSecret }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  ports:
    {{- if eq .Values.shape "sidecar" }}
    - name: proxy
      containerPort: {{ int .Values.ports.proxy }}
      protocol: TCP
    {{- else if eq .Values.shape "transparent" }}
    - name: transparent
      containerPort: {{ int .Values.ports.transparent }}
      protocol: TCP
    {{- else }}
    - name: reverse
      containerPort: {{ int .Values.ports.reverse }}
      protocol: TCP
    {{- end }}
    - name: admin
      containerPort: {{ int .Values.ports.admin }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: {{ .Values.probes.startup.periodSeconds }}
    failureThreshold: {{ .Values.probes.startup.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
  readinessProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
    failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
    failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- include "shim.securityContext" . | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: /etc/shim
      readOnly: true
    - name: confdir
      mountPath: /var/lib/shim
    - name: cache
      mountPath: /var/cache/shim
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/* NOTES.txt: registering a model with the example TorchServe, whose management API listens on
     the pod's loopback and asks for the management key. Call with (list $ SCHEME). */}}
{{- define "shim.notesRegister" -}}
{{- $ := index . 0 }}
{{- $port := int $.Values.torchserve.ports.management }}
{{- if $.Values.torchserve.enabled }}
TorchServe's management API listens on the pod's 127.0.0.1 only, with token authorization;
port-forward to it and send the management key from the container's key_file.json (it
expires after an hour; TorchServe's API key in the same file makes a new one with
GET /token?type=management):
  POD=$(kubectl -n {{ $.Release.Namespace }} get pods -l app.kubernetes.io/instance={{ $.Release.Name }} -o jsonpath='{.items[0].metadata.name}')
  kubectl -n {{ $.Release.Namespace }} port-forward $POD {{ $port }}:{{ $port }} &
  TOKEN=$(kubectl -n {{ $.Release.Namespace }} exec $POD -c torchserve -- python -c 'import json; print(json.load(open("/home/model-server/key_file.json"))["management"]["key"])')
  curl -H "Authorization: Bearer $TOKEN" -X POST "http://127.0.0.1:{{ $port }}/models?url={{ index . 1 }}://BUCKET.s3.REGION.amazonaws.com/KEY.mar"
{{- else }}
  curl -X POST "http://127.0.0.1:{{ $port }}/models?url={{ index . 1 }}://BUCKET.s3.REGION.amazonaws.com/KEY.mar"
{{- end }}
{{- end }}
