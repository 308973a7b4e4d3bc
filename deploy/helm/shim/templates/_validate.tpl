{{/* What the values schema cannot say: combinations that cannot work or would expose shim.
     Included once, from deployment.yaml; each refusal names the value to change. */}}
{{- define "shim.validate" -}}
{{- $v := .Values }}
{{- if not (has $v.shape (list "sidecar" "transparent" "standalone")) }}
{{- fail (printf "shape must be sidecar, transparent or standalone, not %q" $v.shape) }}
{{- end }}
{{- if and (include "shim.nativeSidecar" .) (semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail "sidecar.native needs Kubernetes 1.29+ (native sidecar containers); set sidecar.native=false" }}
{{- end }}
{{- if and (eq $v.shape "transparent") $v.torchserve.enabled (eq (int $v.torchserve.securityContext.runAsUser) (int $v.uid)) }}
{{- fail "torchserve.securityContext.runAsUser must differ from uid: the transparent redirect exempts that UID" }}
{{- end }}
{{- /* shim.yaml keys the chart writes: set with its own values, never overridden silently. */}}
{{- $owned := dict "listen" "ports.proxy" "admin" "ports.admin" "transparent" "shape and ports.transparent" "reverse" "shape and ports.reverse" "confdir" "nothing (the chart's volume)" "buckets" "buckets" "dfdaemon" "dfdaemon" "passthrough" "passthrough" "clients" "clients" "proxy_auth" "proxyAuth" "shutdown_grace" "shutdownGrace" }}
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
{{- range $key := keys (include "shim.torchserveLockedProperties" . | fromYaml) }}
{{- if hasKey $v.torchserve.properties $key }}
{{- fail (printf "torchserve.properties.%s is the chart's: the example TorchServe keeps its management API on 127.0.0.1 with token authorization; bring your own container (extraContainers) to run it otherwise" $key) }}
{{- end }}
{{- end }}
{{- /* The standalone shape: a signing proxy on 0.0.0.0. */}}
{{- if eq $v.shape "standalone" }}
{{- if not $v.clients }}
{{- fail "standalone: set clients to the networks (CIDRs) of the model servers allowed to download through shim, e.g. clients={10.244.0.0/16}: the reverse listener binds 0.0.0.0, and shim refuses to start it without an allow-list" }}
{{- end }}
{{- if and $v.networkPolicy.enabled (not $v.networkPolicy.allowFrom) }}
{{- fail "standalone: networkPolicy.allowFrom must list at least one peer (e.g. a podSelector for your TorchServe pods): an empty list admits nobody to the reverse port" }}
{{- end }}
{{- if and (eq $v.standalone.service.type "LoadBalancer") (not $v.standalone.service.loadBalancerSourceRanges) }}
{{- fail "standalone.service.type=LoadBalancer: set standalone.service.loadBalancerSourceRanges to the client networks (CIDRs) the load balancer may admit; without it anyone who reaches the load balancer downloads objects signed with shim's credentials" }}
{{- end }}
{{- end }}
{{- /* proxy_auth: only for clients that can send credentials. */}}
{{- if or $v.proxyAuth.username $v.proxyAuth.existingSecret }}
{{- if not (and $v.proxyAuth.username $v.proxyAuth.existingSecret) }}
{{- fail "proxyAuth needs both username and existingSecret (the Secret holding the password under proxyAuth.passwordKey)" }}
{{- end }}
{{- if eq $v.shape "transparent" }}
{{- fail "proxyAuth cannot work in the transparent shape: redirected clients do not know there is a proxy and send no credentials" }}
{{- end }}
{{- if and (eq $v.shape "sidecar") $v.torchserve.enabled }}
{{- fail "proxyAuth cannot work with the example TorchServe: its JVM sends no proxy credentials; leave proxyAuth empty (the sidecar listens on 127.0.0.1)" }}
{{- end }}
{{- end }}
{{- /* The cache volume. */}}
{{- $replicas := int (ternary $v.standalone.replicas $v.workload.replicas (eq $v.shape "standalone")) }}
{{- if and $v.cache.volume.persistentVolumeClaim (gt $replicas 1) }}
{{- fail (printf "cache.volume.persistentVolumeClaim is one volume for the whole Deployment, which cannot serve %d replicas: a ReadWriteOnce volume attaches to one node, and a cache directory belongs to one shim process. Use replicas=1, or an ephemeral volumeClaimTemplate (one volume per pod)" $replicas) }}
{{- end }}
{{- $volumeSize := include "shim.cacheVolumeSize" . }}
{{- if $volumeSize }}
{{- $max := include "shim.bytes" (list $v.cache.maxSize "cache.maxSize" false) }}
{{- $size := include "shim.bytes" (list $volumeSize "the cache volume's size" true) }}
{{- if gt (float64 $max) (float64 $size) }}
{{- fail (printf "cache.maxSize (%s) is above the cache volume's size (%s): shim would fill the volume before its cap evicts anything. Lower cache.maxSize or enlarge the volume" $v.cache.maxSize $volumeSize) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The cache volume's size where the values say it: the emptyDir's sizeLimit, or the
     storage request of an ephemeral claim. Empty when unknown (an existing PVC, hostPath...). */}}
{{- define "shim.cacheVolumeSize" -}}
{{- $volume := .Values.cache.volume }}
{{- if not $volume }}
{{- .Values.cache.sizeLimit }}
{{- else if $volume.emptyDir }}
{{- $volume.emptyDir.sizeLimit }}
{{- else if $volume.ephemeral }}
{{- dig "volumeClaimTemplate" "spec" "resources" "requests" "storage" "" $volume.ephemeral }}
{{- end }}
{{- end }}

{{/* Bytes in a size, as a decimal string: call with (list SIZE WHAT KUBERNETES). KUBERNETES
     true reads a Kubernetes quantity (20Gi, 500M: case-sensitive suffixes), false a shim size
     (18GiB, 500MB: any case, as pydantic's ByteSize). */}}
{{- define "shim.bytes" -}}
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
