{{/* What the values schema cannot say: combinations that cannot work or would expose shim.
     Included once, from workload.yaml; each refusal names the value to change. The refusals of
     the shim settings themselves are shim-lib's (shim.validate). */}}
{{- define "shim.chart.validate" -}}
{{- $a := dict }}
{{- include "shim.attachment" (list $a .) }}
{{- include "shim.validate" $a }}
{{- $v := .Values }}
{{- if and (eq $v.shape "transparent") $v.torchserve.enabled (eq (int $v.torchserve.securityContext.runAsUser) (int $v.uid)) }}
{{- fail "torchserve.securityContext.runAsUser must differ from uid: the transparent redirect exempts that UID" }}
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
{{- if and $v.standalone.persistence.enabled $v.cache.volume }}
{{- fail "standalone.persistence.enabled gives each replica its own cache claim: leave cache.volume empty" }}
{{- end }}
{{- else if $v.standalone.persistence.enabled }}
{{- fail (printf "standalone.persistence is for the standalone shape; the %s shape's cache lives as long as its pod (cache.volume takes an ephemeral claim)" $v.shape) }}
{{- end }}
{{- if and (eq $v.shape "sidecar") $v.torchserve.enabled $v.proxyAuth.username }}
{{- fail "proxyAuth cannot work with the example TorchServe: its JVM sends no proxy credentials; leave proxyAuth empty (the sidecar listens on 127.0.0.1)" }}
{{- end }}
{{- /* One persistentVolumeClaim for the whole Deployment. */}}
{{- $replicas := int (ternary $v.standalone.replicas $v.workload.replicas (eq $v.shape "standalone")) }}
{{- if and $v.cache.volume.persistentVolumeClaim (gt $replicas 1) }}
{{- fail (printf "cache.volume.persistentVolumeClaim is one volume for the whole Deployment, which cannot serve %d replicas: a ReadWriteOnce volume attaches to one node, and a cache directory belongs to one shim process. Use replicas=1, an ephemeral volumeClaimTemplate (one volume per pod), or standalone.persistence (a StatefulSet, one claim per replica)" $replicas) }}
{{- end }}
{{- /* Metrics: the scrapers need the admin listener on the pod's address. */}}
{{- if and $v.metrics.enabled (include "shim.lib.adminLoopback" $a) }}
{{- fail (printf "metrics.enabled needs the admin listener on the pod's address: set admin.address=0.0.0.0 (it is on %s, which scrapers cannot reach; state-changing admin calls still need admin.token)" $v.admin.address) }}
{{- end }}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled (the Service it selects)" }}
{{- end }}
{{- if and $v.metrics.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) }}
{{- fail "metrics.serviceMonitor.enabled: the cluster has no monitoring.coreos.com/v1 ServiceMonitor (install the Prometheus Operator's CRDs first, or pass --api-versions monitoring.coreos.com/v1/ServiceMonitor to helm template)" }}
{{- end }}
{{- $pdb := $v.podDisruptionBudget }}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" }}
{{- end }}
{{- end }}
