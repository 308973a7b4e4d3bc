{{/* The shim version whose images the templates default to: this chart's appVersion. */}}
{{- define "shim.lib.appVersion" -}}
0.1.0
{{- end }}

{{/* Defaults of the shim settings, the same keys and values as the shim chart's values.yaml
     (tests/test_deploy.py compares them). A chart that includes this library keeps its shim
     settings under one key (e.g. `shim:`) and names only what it changes. */}}
{{- define "shim.lib.defaults" -}}
shape: sidecar
image: {registry: "", repository: shim, tag: "", digest: "", pullPolicy: IfNotPresent}
caImage: {registry: "", repository: shim-ca, tag: "", digest: "", pullPolicy: IfNotPresent}
netInitImage: {registry: "", repository: shim-netinit, tag: "", digest: "", pullPolicy: IfNotPresent}
uid: 10001
ports: {proxy: 8790, admin: 8791, transparent: 8792, reverse: 8793}
admin:
  address: 127.0.0.1
  token: {existingSecret: "", key: token, create: false}
buckets: []
passthrough: none
clients: []
proxyAuth: {username: "", existingSecret: "", passwordKey: password}
shutdownGrace: 25
preStopDelay: 5
cache: {maxSize: 18GiB, minFree: 1GiB, sizeLimit: 20Gi, volume: {}}
extraConfig: {}
dfdaemon: {enabled: false, mode: hostIP, port: 4001, address: "", options: {}}
credentials: {existingSecret: ""}
sidecar: {native: true}
transparent:
  https: false
  extraPorts: []
  excludePorts: []
  excludeCIDRs: []
  ipv6: auto
  iptables: iptables
resources:
  requests: {cpu: 250m, memory: 256Mi}
  limits: {cpu: "2", memory: 1Gi}
initResources:
  requests: {cpu: 50m, memory: 64Mi}
  limits: {cpu: 500m, memory: 512Mi}
probes:
  startup: {periodSeconds: 2, failureThreshold: 60, timeoutSeconds: 3}
  readiness: {periodSeconds: 10, failureThreshold: 3, timeoutSeconds: 3}
  liveness: {periodSeconds: 20, failureThreshold: 3, timeoutSeconds: 5}
extraEnv: []
extraVolumeMounts: []
lifecycle: {}
{{- end }}

{{/* The shim settings given (a map, e.g. .Values.shim) over the defaults, as YAML:
       {{- $shim := include "shim.values" .Values.shim | fromYaml }} */}}
{{- define "shim.values" -}}
{{- toYaml (mergeOverwrite (include "shim.lib.defaults" . | fromYaml) (deepCopy (default (dict) .))) }}
{{- end }}

{{/* Every template below takes one dict, here called the attachment:
       values   the shim settings (all keys: .Values of the shim chart, or "shim.values")
       context  the including chart's top context ($): Release, Capabilities, Values.global
       name     the prefix of the objects the templates refer to: the ConfigMap `name` holds
                shim.yaml (shim.configData), the admin token Secret is `name`-admin-token
       native   optional, default values.sidecar.native: shim as a native sidecar (an init
                container with restartPolicy: Always) rather than an ordinary container
       cacheClaim optional: the size of a volumeClaimTemplate named "cache" (a StatefulSet)
                that holds the cache, which the pod's volumes then leave out */}}

{{- define "shim.lib.native" -}}
{{- if and (ne .values.shape "standalone") (ternary .native .values.sidecar.native (hasKey . "native")) }}true{{ end }}
{{- end }}

{{/* The CA + truststore init step: the explicit proxy always intercepts https CONNECTs;
     the transparent shape only when 443 is redirected. */}}
{{- define "shim.lib.needsTrust" -}}
{{- $v := .values }}
{{- if or (eq $v.shape "sidecar") (and (eq $v.shape "transparent") $v.transparent.https) }}true{{ end }}
{{- end }}

{{- define "shim.lib.renderConfig" -}}
{{- if and .values.dfdaemon.enabled (eq .values.dfdaemon.mode "hostIP") }}true{{ end }}
{{- end }}

{{- define "shim.lib.adminLoopback" -}}
{{- if has .values.admin.address (list "127.0.0.1" "::1" "localhost") }}true{{ end }}
{{- end }}

{{/* The admin token Secret's name, or nothing without a token. */}}
{{- define "shim.lib.adminTokenSecret" -}}
{{- $token := .values.admin.token }}
{{- if $token.existingSecret }}{{ $token.existingSecret }}
{{- else if $token.create }}{{ printf "%s-admin-token" .name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Destination ports the transparent shape redirects. */}}
{{- define "shim.lib.redirectPorts" -}}
{{- $v := .values }}
{{- join "," (concat (list 80) (ternary (list 443) (list) $v.transparent.https) $v.transparent.extraPorts) }}
{{- end }}
