{{/* securityContext of every shim container (proxy, ca, render-config). */}}
{{- define "shim.securityContext" -}}
runAsNonRoot: true
runAsUser: {{ int .values.uid }}
runAsGroup: {{ int .values.uid }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The pod's securityContext. fsGroup makes the volumes writable by shim's GID;
     OnRootMismatch skips the recursive chown of a volume whose root already has it, which on
     a persistent cache of many objects would otherwise run at every pod start. */}}
{{- define "shim.podSecurityContext" -}}
{{- if ne .values.shape "transparent" }}
# The transparent shape's iptables init container is the one root process; every other
# container sets runAsNonRoot itself.
runAsNonRoot: true
{{- end }}
fsGroup: {{ int .values.uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Seconds between SIGTERM and SIGKILL: the preStop delay, shim's own grace for transfers in
     flight (shutdownGrace), and 5 s to exit. */}}
{{- define "shim.terminationGracePeriodSeconds" -}}
{{- add (int .values.preStopDelay) (int (ceil .values.shutdownGrace)) 5 }}
{{- end }}

{{- define "shim.lib.probe" -}}
{{- $a := index . 0 }}
{{- $probe := index . 1 }}
{{- if include "shim.lib.adminLoopback" $a }}
# The admin listener is on the pod's loopback, out of the kubelet's reach: ask from inside.
exec:
  command:
    - python
    - -c
    - {{ printf "import urllib.request; urllib.request.urlopen('http://%s/healthz', timeout=%d)" (include "shim.lib.hostPort" (list $a.values.admin.address $a.values.ports.admin)) (int $probe.timeoutSeconds) | quote }}
{{- else }}
httpGet:
  path: /healthz
  port: admin
{{- end }}
periodSeconds: {{ $probe.periodSeconds }}
failureThreshold: {{ $probe.failureThreshold }}
timeoutSeconds: {{ $probe.timeoutSeconds }}
{{- end }}

{{/* Bytes the shim container writes to the node's disk through emptyDirs: the cache (when it
     is the default emptyDir or an emptyDir on disk), /tmp and confdir. Requested as
     ephemeral-storage so that the scheduler picks a node with that much room. */}}
{{- define "shim.lib.ephemeralBytes" -}}
{{- $v := .values }}
{{- $bytes := add (include "shim.lib.bytes" (list "256Mi" "tmp" true)) (include "shim.lib.bytes" (list "16Mi" "confdir" true)) }}
{{- if not .cacheClaim }}
{{- if not $v.cache.volume }}
{{- $bytes = add $bytes (include "shim.lib.bytes" (list $v.cache.sizeLimit "cache.sizeLimit" true)) }}
{{- else if and $v.cache.volume.emptyDir (ne (dig "medium" "" $v.cache.volume.emptyDir) "Memory") $v.cache.volume.emptyDir.sizeLimit }}
{{- $bytes = add $bytes (include "shim.lib.bytes" (list $v.cache.volume.emptyDir.sizeLimit "cache.volume.emptyDir.sizeLimit" true)) }}
{{- end }}
{{- end }}
{{- $bytes }}
{{- end }}

{{- define "shim.lib.resources" -}}
{{- $resources := deepCopy .values.resources }}
{{- $requests := default (dict) $resources.requests }}
{{- if not (hasKey $requests "ephemeral-storage") }}
{{- $_ := set $requests "ephemeral-storage" (printf "%dMi" (int (ceil (divf (include "shim.lib.ephemeralBytes" .) 1048576)))) }}
{{- end }}
{{- $_ := set $resources "requests" $requests }}
{{- toYaml $resources }}
{{- end }}

{{/* The shim proxy container, as one list item (a native sidecar or an ordinary container). */}}
{{- define "shim.lib.proxyContainer" -}}
{{- $v := .values }}
{{- $native := include "shim.lib.native" . }}
- name: shim
  {{- include "shim.lib.containerImage" (list . $v.image) | trim | nindent 2 }}
  {{- if $native }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "--config", "/etc/shim/shim.yaml"]
  env:
    - name: SHIM_CONFIG
      value: /etc/shim/shim.yaml
    {{- if $v.proxyAuth.username }}
    - name: {{ include "shim.lib.proxyAuthPasswordEnv" . }}
      valueFrom:
        secretKeyRef:
          name: {{ $v.proxyAuth.existingSecret }}
          key: {{ $v.proxyAuth.passwordKey }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.credentials.existingSecret }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  ports:
    {{- if eq $v.shape "sidecar" }}
    - name: proxy
      containerPort: {{ int $v.ports.proxy }}
      protocol: TCP
    {{- else if eq $v.shape "transparent" }}
    - name: transparent
      containerPort: {{ int $v.ports.transparent }}
      protocol: TCP
    {{- else }}
    - name: reverse
      containerPort: {{ int $v.ports.reverse }}
      protocol: TCP
    {{- end }}
    - name: admin
      containerPort: {{ int $v.ports.admin }}
      protocol: TCP
  startupProbe:
    {{- include "shim.lib.probe" (list . $v.probes.startup) | trim | nindent 4 }}
  readinessProbe:
    {{- include "shim.lib.probe" (list . $v.probes.readiness) | trim | nindent 4 }}
  livenessProbe:
    {{- include "shim.lib.probe" (list . $v.probes.liveness) | trim | nindent 4 }}
  {{- if $v.lifecycle }}
  lifecycle:
    {{- toYaml $v.lifecycle | nindent 4 }}
  {{- else if and (gt (int $v.preStopDelay) 0) (not $native) }}
  # Wait while the endpoints controller and kube-proxy stop sending new connections here, then
  # SIGTERM: shim refuses new requests and finishes those in flight (shutdownGrace). A native
  # sidecar needs no delay: it is stopped only after the pod's other containers have exited.
  lifecycle:
    preStop:
      exec:
        command: ["sleep", "{{ int $v.preStopDelay }}"]
  {{- end }}
  resources:
    {{- include "shim.lib.resources" . | trim | nindent 4 }}
  securityContext:
    {{- include "shim.securityContext" . | trim | nindent 4 }}
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
    {{- if include "shim.lib.adminTokenSecret" . }}
    - name: admin-token
      mountPath: {{ include "shim.lib.adminTokenDir" . }}
      readOnly: true
    {{- end }}
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The shim container for the pod's `containers:` (nothing when it is a native sidecar). */}}
{{- define "shim.sidecar.container" -}}
{{- if not (include "shim.lib.native" .) }}
{{- include "shim.lib.proxyContainer" . }}
{{- end }}
{{- end }}

{{/* The pod's shim init containers, in order: iptables (transparent), render-config (dfdaemon
     on the node's IP), shim-ca (the truststore), then shim itself when it is a native sidecar. */}}
{{- define "shim.sidecar.initContainers" -}}
{{- $v := .values }}
{{- $render := include "shim.lib.renderConfig" . }}
{{- if eq $v.shape "transparent" }}
# The only container with an added capability: NET_ADMIN (plus NET_RAW for the legacy backend,
# which opens a raw socket). It runs shim-redirect (deploy/netinit/shim-redirect in the netinit
# image): the SHIM_REDIRECT chain in the pod's own network namespace, then exits before any
# other container starts. Root because Kubernetes gives added capabilities only to UID 0.
- name: iptables
  {{- include "shim.lib.containerImage" (list . $v.netInitImage) | trim | nindent 2 }}
  command: ["shim-redirect"]
  env:
    - name: SHIM_REDIRECT_TO_PORT
      value: {{ int $v.ports.transparent | quote }}
    - name: SHIM_REDIRECT_PORTS
      value: {{ include "shim.lib.redirectPorts" . | quote }}
    - name: SHIM_REDIRECT_EXEMPT_UID
      value: {{ int $v.uid | quote }}
    - name: SHIM_REDIRECT_EXCLUDE_CIDRS
      value: {{ join "," $v.transparent.excludeCIDRs | quote }}
    - name: SHIM_REDIRECT_EXCLUDE_PORTS
      value: {{ join "," $v.transparent.excludePorts | quote }}
    - name: SHIM_REDIRECT_IPV6
      value: {{ toString $v.transparent.ipv6 | quote }}
    - name: SHIM_REDIRECT_IPTABLES
      value: {{ $v.transparent.iptables | quote }}
  resources:
    {{- toYaml $v.initResources | nindent 4 }}
  securityContext:
    runAsNonRoot: false
    runAsUser: 0
    runAsGroup: 0
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop:
        - ALL
      add:
        - NET_ADMIN
        {{- if eq $v.transparent.iptables "iptables-legacy" }}
        - NET_RAW
        {{- end }}
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    - name: xtables-run
      mountPath: /run
{{- end }}
{{- if $render }}
# Puts this node's IP into the config: the Dragonfly client DaemonSet (hostNetwork) listens
# for proxy requests on every node's own address.
- name: render-config
  {{- include "shim.lib.containerImage" (list . $v.image) | trim | nindent 2 }}
  command: ["python", "-c"]
  args:
    - |
      import os
      ip = os.environ["HOST_IP"]
      host = "[" + ip + "]" if ":" in ip else ip
      with open("/etc/shim-template/shim.yaml", encoding="utf-8") as src:
          text = src.read().replace("${HOST_IP}", host)
      with open("/etc/shim/shim.yaml", "w", encoding="utf-8") as dst:
          dst.write(text)
      print("dfdaemon host:", host)
  env:
    - name: HOST_IP
      valueFrom:
        fieldRef:
          fieldPath: status.hostIP
  resources:
    {{- toYaml $v.initResources | nindent 4 }}
  securityContext:
    {{- include "shim.securityContext" . | trim | nindent 4 }}
  volumeMounts:
    - name: config-template
      mountPath: /etc/shim-template
      readOnly: true
    - name: config
      mountPath: /etc/shim
{{- end }}
{{- if include "shim.lib.needsTrust" . }}
# Creates the interception CA in confdir (shared with the shim container only: it holds the
# private key) and writes shim-ca.pem + truststore.p12 into the trust volume, which the model
# server mounts read-only. Needs keytool, hence the JRE image. Its config (ca.yaml) holds
# confdir only, so no credentials reach this container.
- name: shim-ca
  {{- include "shim.lib.containerImage" (list . $v.caImage) | trim | nindent 2 }}
  args: ["ca", "--config", "/etc/shim/ca.yaml", "--out", "/etc/shim-trust"]
  env:
    - name: SHIM_CONFIG
      value: /etc/shim/ca.yaml
  resources:
    {{- toYaml $v.initResources | nindent 4 }}
  securityContext:
    {{- include "shim.securityContext" . | trim | nindent 4 }}
  volumeMounts:
    - name: {{ ternary "config-template" "config" (not (empty $render)) }}
      mountPath: /etc/shim
      readOnly: true
    - name: confdir
      mountPath: /var/lib/shim
    - name: trust
      mountPath: /etc/shim-trust
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- if include "shim.lib.native" . }}
{{ include "shim.lib.proxyContainer" . }}
{{- end }}
{{- end }}

{{/* The pod's shim volumes. */}}
{{- define "shim.sidecar.volumes" -}}
{{- $v := .values }}
{{- if include "shim.lib.renderConfig" . }}
- name: config-template
  configMap:
    name: {{ .name }}
- name: config
  emptyDir:
    sizeLimit: 1Mi
{{- else }}
- name: config
  configMap:
    name: {{ .name }}
{{- end }}
# The interception CA, private key included: mounted by shim containers only.
- name: confdir
  emptyDir:
    sizeLimit: 16Mi
{{- if include "shim.lib.needsTrust" . }}
# Public: shim-ca.pem and truststore.p12 for the model server's JVM.
- name: trust
  emptyDir:
    sizeLimit: 16Mi
{{- end }}
{{- if not .cacheClaim }}
- name: cache
  {{- if $v.cache.volume }}
  {{- toYaml $v.cache.volume | nindent 2 }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ $v.cache.sizeLimit }}
  {{- end }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- with include "shim.lib.adminTokenSecret" . }}
- name: admin-token
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: {{ $v.admin.token.key }}
        path: {{ $v.admin.token.key }}
{{- end }}
{{- if eq $v.shape "transparent" }}
- name: xtables-run
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
{{- end }}
