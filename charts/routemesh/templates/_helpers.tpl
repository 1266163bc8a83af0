{{/* Labels every object of the chart carries. */}}
{{- define "routemesh.labels" -}}
app.kubernetes.io/name: routemesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The operator pods' selector. */}}
{{- define "routemesh.selector" -}}
app.kubernetes.io/name: routemesh
app.kubernetes.io/component: operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "routemesh.image" -}}
{{ .image.repository }}:{{ default .appVersion .image.tag }}
{{- end -}}
