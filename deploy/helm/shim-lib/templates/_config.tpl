{{/* The environment variable holding the proxy_auth password (from proxyAuth.existingSecret). */}}
{{- define "shim.lib.proxyAuthPasswordEnv" -}}
SHIM_PROXY_AUTH_PASSWORD
{{- end }}

{{/* Where the admin token Secret is mounted, and the file shim.yaml's admin_token_file names. */}}
{{- define "shim.lib.adminTokenDir" -}}
/var/run/secrets/shim-admin
{{- end }}

{{- define "shim.lib.hostPort" -}}
{{- $host := index . 0 }}
{{- if contains ":" $host }}{{ $host = printf "[%s]" $host }}{{ end }}
{{- printf "%s:%d" $host (int (index . 1)) }}
{{- end }}

{{- define "shim.lib.dfdaemonURL" -}}
{{- $d := .values.dfdaemon }}
{{- if eq $d.mode "hostIP" }}
{{- /* ${HOST_IP} is replaced at pod start by the render-config init container. */}}
{{- printf "http://${HOST_IP}:%d" (int $d.port) }}
{{- else if eq $d.mode "address" }}
{{- required "dfdaemon.address is required with dfdaemon.mode=address" $d.address }}
{{- else }}
{{- fail (printf "dfdaemon.mode must be hostIP or address, not %q" $d.mode) }}
{{- end }}
{{- end }}

{{/* shim.yaml of the attachment. The keys written here are refused in extraConfig
     (shim.validate); merge only adds what extraConfig has beyond them. */}}
{{- define "shim.config" -}}
{{- $v := .values }}
{{- $cfg := dict
      "listen" (printf "127.0.0.1:%d" (int $v.ports.proxy))
      "admin" (include "shim.lib.hostPort" (list $v.admin.address $v.ports.admin))
      "confdir" "/var/lib/shim"
      "cache" (dict "dir" "/var/cache/shim" "max_size" $v.cache.maxSize "min_free" $v.cache.minFree)
      "buckets" $v.buckets
      "passthrough" $v.passthrough
      "shutdown_grace" $v.shutdownGrace }}
{{- if eq $v.shape "transparent" }}
{{- $_ := set $cfg "transparent" (printf "127.0.0.1:%d" (int $v.ports.transparent)) }}
{{- end }}
{{- if eq $v.shape "standalone" }}
{{- $_ := set $cfg "reverse" (printf "0.0.0.0:%d" (int $v.ports.reverse)) }}
{{- end }}
{{- with $v.clients }}
{{- $_ := set $cfg "clients" . }}
{{- end }}
{{- with $v.proxyAuth.username }}
{{- $_ := set $cfg "proxy_auth" (dict "username" . "password_env" (include "shim.lib.proxyAuthPasswordEnv" $)) }}
{{- end }}
{{- if include "shim.lib.adminTokenSecret" . }}
{{- $_ := set $cfg "admin_token_file" (printf "%s/%s" (include "shim.lib.adminTokenDir" .) $v.admin.token.key) }}
{{- end }}
{{- if $v.dfdaemon.enabled }}
{{- $_ := set $cfg "dfdaemon" (merge (dict "url" (include "shim.lib.dfdaemonURL" .)) (deepCopy $v.dfdaemon.options)) }}
{{- end }}
{{- toYaml (merge $cfg (deepCopy $v.extraConfig)) }}
{{- end }}

{{/* The `data:` entries of the attachment's ConfigMap (named as the attachment's `name`):
     shim.yaml, and ca.yaml for `shim ca`, which needs confdir only (no credentials). */}}
{{- define "shim.configData" -}}
shim.yaml: |
  # shim config for the {{ .values.shape }} shape, rendered by the shim-lib templates.
  {{- if include "shim.lib.renderConfig" . }}
  # ${HOST_IP} is replaced with the node's IP (status.hostIP) by the render-config init container.
  {{- end }}
  {{- include "shim.config" . | trim | nindent 2 }}
ca.yaml: |
  confdir: /var/lib/shim
{{- end }}

{{/* The Secret holding the admin token when admin.token.create is set: a random token made
     once and kept on upgrades (lookup; `helm template` has no cluster and makes a new one). */}}
{{- define "shim.adminToken.secret" -}}
{{- $v := .values }}
{{- if and $v.admin.token.create (not $v.admin.token.existingSecret) }}
{{- $name := include "shim.lib.adminTokenSecret" . }}
{{- $ns := .context.Release.Namespace }}
{{- $existing := lookup "v1" "Secret" $ns $name }}
apiVersion: v1
kind: Secret
metadata:
  name: {{ $name }}
  namespace: {{ $ns }}
  annotations:
    # Kept when the release is uninstalled and reinstalled: scripts holding it keep working.
    helm.sh/resource-policy: keep
type: Opaque
data:
  {{- if and $existing (hasKey $existing.data $v.admin.token.key) }}
  {{ $v.admin.token.key }}: {{ index $existing.data $v.admin.token.key }}
  {{- else }}
  {{ $v.admin.token.key }}: {{ randAlphaNum 48 | b64enc }}
  {{- end }}
{{- end }}
{{- end }}

{{/* JAVA_TOOL_OPTIONS for the model server's JVM (TorchServe downloads with
     java.net.HttpURLConnection, which ignores HTTP_PROXY). Sidecar shape: exactly what
     `shim env --proxy 127.0.0.1:PORT --truststore /etc/shim-trust/truststore.p12` prints
     (tests/test_deploy.py compares them); transparent: timeouts and trust only.
     The attachment may carry `client`: connectTimeoutMs, readTimeoutMs, nonProxyHosts,
     extraJavaOptions (defaults 30000, 300000, "localhost|127.*|[::1]", ""). */}}
{{- define "shim.javaToolOptions" -}}
{{- $v := .values }}
{{- $client := mergeOverwrite (dict "connectTimeoutMs" 30000 "readTimeoutMs" 300000 "nonProxyHosts" "localhost|127.*|[::1]" "extraJavaOptions" "") (deepCopy (default (dict) .client)) }}
{{- $opts := list }}
{{- if eq $v.shape "sidecar" }}
{{- $port := int $v.ports.proxy }}
{{- $opts = concat $opts (list
      "-Dhttp.proxyHost=127.0.0.1" (printf "-Dhttp.proxyPort=%d" $port)
      "-Dhttps.proxyHost=127.0.0.1" (printf "-Dhttps.proxyPort=%d" $port)
      (printf "-Dhttp.nonProxyHosts=%s" $client.nonProxyHosts)) }}
{{- end }}
{{- $opts = concat $opts (list
      (printf "-Dsun.net.client.defaultConnectTimeout=%d" (int $client.connectTimeoutMs))
      (printf "-Dsun.net.client.defaultReadTimeout=%d" (int $client.readTimeoutMs))) }}
{{- if include "shim.lib.needsTrust" . }}
{{- $opts = concat $opts (list
      "-Djavax.net.ssl.trustStore=/etc/shim-trust/truststore.p12"
      "-Djavax.net.ssl.trustStorePassword=changeit"
      "-Djavax.net.ssl.trustStoreType=PKCS12") }}
{{- end }}
{{- with $client.extraJavaOptions }}
{{- $opts = append $opts . }}
{{- end }}
{{- join " " $opts }}
{{- end }}

{{/* For the model server's container: its `env` entry and `volumeMounts` entries (the shim CA
     truststore, read-only; nothing when the shape needs no trust). */}}
{{- define "shim.client.env" -}}
- name: JAVA_TOOL_OPTIONS
  value: {{ include "shim.javaToolOptions" . | quote }}
{{- end }}

{{- define "shim.client.volumeMounts" -}}
{{- if include "shim.lib.needsTrust" . }}
- name: trust
  mountPath: /etc/shim-trust
  readOnly: true
{{- end }}
{{- end }}
