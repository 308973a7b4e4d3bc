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

{{/* What the shape needs. */}}
{{- define "shim.inPod" -}}
{{- if has .Values.shape (list "sidecar" "transparent") }}true{{ end }}
{{- end }}

{{/* A pod needs one ordinary container: with no TorchServe (example or extraContainers)
     in it, shim is that container. */}}
{{- define "shim.nativeSidecar" -}}
{{- if and (include "shim.inPod" .) .Values.sidecar.native (or .Values.torchserve.enabled .Values.extraContainers) }}true{{ end }}
{{- end }}

{{/* The standalone shape with a persistent cache: a StatefulSet, one claim per replica. */}}
{{- define "shim.statefulSet" -}}
{{- if and (eq .Values.shape "standalone") .Values.standalone.persistence.enabled }}true{{ end }}
{{- end }}

{{/* The shim-lib attachment of this release: fills the dict given as the first element,
       {{- $a := dict }}{{- include "shim.attachment" (list $a $) }}
     (a template returns text only; the dict carries the context through). */}}
{{- define "shim.attachment" -}}
{{- $a := index . 0 }}
{{- $ := index . 1 }}
{{- $_ := set $a "values" $.Values }}
{{- $_ = set $a "context" $ }}
{{- $_ = set $a "name" (include "shim.fullname" $) }}
{{- $_ = set $a "native" (not (empty (include "shim.nativeSidecar" $))) }}
{{- if include "shim.statefulSet" $ }}
{{- $_ = set $a "cacheClaim" $.Values.standalone.persistence.size }}
{{- end }}
{{- $_ = set $a "client" (pick $.Values.torchserve "connectTimeoutMs" "readTimeoutMs" "nonProxyHosts" "extraJavaOptions") }}
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
