{{/* Refusals of what the attachment's values cannot do: include "shim.validate" once from
     a template of the including chart. Each message names the value to change. */}}
{{- define "shim.validate" -}}
{{- $v := .values }}
{{- if not (has $v.shape (list "sidecar" "transparent" "standalone")) }}
{{- fail (printf "shape must be sidecar, transparent or standalone, not %q" $v.shape) }}
{{- end }}
{{- if and (include "shim.lib.native" .) (semverCompare "<1.29.0-0" .context.Capabilities.KubeVersion.Version) }}
{{- fail "sidecar.native needs Kubernetes 1.29+ (native sidecar containers); set sidecar.native=false" }}
{{- end }}
{{- /* shim.yaml keys written by the templates: set with their own values, never overridden silently. */}}
{{- $owned := dict "listen" "ports.proxy" "admin" "admin.address and ports.admin" "admin_token" "admin.token" "admin_token_file" "admin.token" "transparent" "shape and ports.transparent" "reverse" "shape and ports.reverse" "confdir" "nothing (the chart's volume)" "buckets" "buckets" "dfdaemon" "dfdaemon" "passthrough" "passthrough" "clients" "clients" "proxy_auth" "proxyAuth" "shutdown_grace" "shutdownGrace" }}
{{- range $key := keys $v.extraConfig | sortAlpha }}
{{- if hasKey $owned $key }}
{{- fail (printf "extraConfig.%s is written by the chart: set %s instead" $key (index $owned $key)) }}
{{- end }}
{{- end }}
{{- $ownedCache := dict "dir" "nothing (the chart's volume)" "max_size" "cache.maxSize" "min_free" "cache.minFree" }}
{{- range $key := keys (default (dict) $v.extraConfig.cache) | sortAlpha }}
{{- if hasKey $ownedCache $key }}
{{- fail (printf "extraConfig.cache.%s is written by the chart: set %s instead" $key (index $ownedCache $key)) }}
{{- end }}
{{- end }}
{{- /* proxy_auth: both halves. */}}
{{- if or $v.proxyAuth.username $v.proxyAuth.existingSecret }}
{{- if not (and $v.proxyAuth.username $v.proxyAuth.existingSecret) }}
{{- fail "proxyAuth needs both username and existingSecret (the Secret holding the password under proxyAuth.passwordKey)" }}
{{- end }}
{{- if eq $v.shape "transparent" }}
{{- fail "proxyAuth cannot work in the transparent shape: redirected clients do not know there is a proxy and send no credentials" }}
{{- end }}
{{- end }}
{{- /* The transparent redirect: its ports and exclusions become iptables arguments. */}}
{{- range $port := concat $v.transparent.extraPorts $v.transparent.excludePorts }}
{{- if not (regexMatch "^[0-9]{1,5}(:[0-9]{1,5})?$" (toString $port)) }}
{{- fail (printf "transparent.extraPorts and excludePorts take ports or ranges FIRST:LAST, not %q" (toString $port)) }}
{{- end }}
{{- end }}
{{- range $cidr := $v.transparent.excludeCIDRs }}
{{- if not (regexMatch "^[0-9A-Fa-f.:]+/[0-9]{1,3}$" $cidr) }}
{{- fail (printf "transparent.excludeCIDRs takes CIDRs such as 10.96.0.0/12 or fd00::/8, not %q" $cidr) }}
{{- end }}
{{- end }}
{{- /* The admin token. */}}
{{- if and $v.admin.token.create $v.admin.token.existingSecret }}
{{- fail "admin.token: set existingSecret or create, not both" }}
{{- end }}
{{- /* The cache volume. */}}
{{- $volumeSize := include "shim.lib.cacheVolumeSize" . }}
{{- if $volumeSize }}
{{- $max := include "shim.lib.bytes" (list $v.cache.maxSize "cache.maxSize" false) }}
{{- $size := include "shim.lib.bytes" (list $volumeSize "the cache volume's size" true) }}
{{- if gt (float64 $max) (float64 $size) }}
{{- fail (printf "cache.maxSize (%s) is above the cache volume's size (%s): shim would fill the volume before its cap evicts anything. Lower cache.maxSize or enlarge the volume" $v.cache.maxSize $volumeSize) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The cache volume's size where the values say it: the claim template's (`cacheSize` of the
     attachment, a StatefulSet), the emptyDir's sizeLimit, or the storage request of an
     ephemeral claim. Empty when unknown (an existing PVC, hostPath...). */}}
{{- define "shim.lib.cacheVolumeSize" -}}
{{- $volume := .values.cache.volume }}
{{- if .cacheClaim }}
{{- .cacheClaim }}
{{- else if not $volume }}
{{- .values.cache.sizeLimit }}
{{- else if $volume.emptyDir }}
{{- $volume.emptyDir.sizeLimit }}
{{- else if $volume.ephemeral }}
{{- dig "volumeClaimTemplate" "spec" "resources" "requests" "storage" "" $volume.ephemeral }}
{{- end }}
{{- end }}

{{/* Bytes in a size, as a decimal string: call with (list SIZE WHAT KUBERNETES). KUBERNETES
     true reads a Kubernetes quantity (20Gi, 500M: case-sensitive suffixes), false a shim size
     (18GiB, 500MB: any case, as pydantic's ByteSize). */}}
{{- define "shim.lib.bytes" -}}
{{- $text := trim (toString (index . 0)) }}
{{- $what := index . 1 }}
{{- $pattern := ternary "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$" "^[0-9]+(\\.[0-9]+)? ?([A-Za-z]+)?$" (index . 2) }}
{{- if not (regexMatch $pattern $text) }}
{{- fail (printf "%s: cannot read %q as a size; write it like %s" $what $text (ternary "50Gi" "18GiB" (index . 2))) }}
{{- end }}
{{- $number := regexReplaceAll "^([0-9.]+) ?([A-Za-z]*)$" $text "${1}" }}
{{- $unit := regexReplaceAll "^([0-9.]+) ?([A-Za-z]*)$" $text "${2}" }}
{{- $units := dict }}
{{- if index . 2 }}
{{- $units = dict "" 1 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 "Ei" 1152921504606846976 }}
{{- else }}
{{- $units = dict "" 1 "b" 1 "kb" 1e3 "mb" 1e6 "gb" 1e9 "tb" 1e12 "pb" 1e15 "eb" 1e18 "kib" 1024 "mib" 1048576 "gib" 1073741824 "tib" 1099511627776 "pib" 1125899906842624 "eib" 1152921504606846976 }}
{{- $unit = lower $unit }}
{{- end }}
{{- if not (hasKey $units $unit) }}
{{- fail (printf "%s: unknown unit %q in %q; write it like %s" $what $unit $text (ternary "50Gi" "18GiB" (index . 2))) }}
{{- end }}
{{- printf "%.0f" (mulf (float64 $number) (index $units $unit)) }}
{{- end }}
