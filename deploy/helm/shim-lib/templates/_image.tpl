{{/* An image reference, REGISTRY/REPOSITORY:TAG@DIGEST: call with
       (dict "image" .Values.image "global" .Values.global)
     registry: the image's own, else global.imageRegistry, else none (the runtime's default);
     tag: the image's, else this library's appVersion; digest (sha256:...) pins the content,
     the tag then only tells people which version it is. */}}
{{- define "shim.image" -}}
{{- $image := .image }}
{{- $registry := default (dig "imageRegistry" "" (default (dict) .global)) $image.registry }}
{{- $ref := $image.repository }}
{{- with $registry }}{{ $ref = printf "%s/%s" (trimSuffix "/" .) $ref }}{{ end }}
{{- $ref = printf "%s:%s" $ref (default (include "shim.lib.appVersion" .) (toString (default "" $image.tag))) }}
{{- with $image.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end }}
{{- $ref }}
{{- end }}

{{/* `image:` and `imagePullPolicy:` of a container of the attachment: (list ATTACHMENT IMAGE) */}}
{{- define "shim.lib.containerImage" -}}
{{- $a := index . 0 }}
{{- $image := index . 1 }}
image: {{ include "shim.image" (dict "image" $image "global" $a.context.Values.global) | quote }}
imagePullPolicy: {{ $image.pullPolicy }}
{{- end }}
