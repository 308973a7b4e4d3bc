{{/* This chart's shim attachment (see shim-lib's _values.tpl): fills the dict given first,
       {{- $shim := dict }}{{- include "my-torchserve.shim" (list $shim $) }} */}}
{{- define "my-torchserve.shim" -}}
{{- $a := index . 0 }}
{{- $ := index . 1 }}
{{- $_ := set $a "values" (include "shim.values" $.Values.shim | fromYaml) }}
{{- $_ = set $a "context" $ }}
{{- $_ = set $a "name" (printf "%s-shim" $.Release.Name) }}
{{- end }}
