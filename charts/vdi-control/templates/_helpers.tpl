{{- define "vdi.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "vdi.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vdi.labels" -}}
{{ include "vdi.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "vdi.secretName" -}}
{{- if .Values.secrets.existingSecret -}}{{ .Values.secrets.existingSecret }}{{- else -}}{{ include "vdi.fullname" . }}{{- end -}}
{{- end -}}

{{- define "vdi.callbackUrl" -}}
{{- if .Values.callbackUrl -}}{{ .Values.callbackUrl }}{{- else -}}{{ printf "http://%s.%s.svc:8081" (include "vdi.fullname" .) .Release.Namespace }}{{- end -}}
{{- end -}}

{{- define "vdi.env" -}}
- name: VDI_SHUTDOWN_GRACE_S
  value: {{ .Values.shutdownGraceSeconds | quote }}
- name: VDI_NAMESPACE
  value: {{ .Values.sessions.namespace | quote }}
- name: VDI_CLUSTER
  value: kubernetes
- name: VDI_BASE_DOMAIN
  value: {{ .Values.sessions.baseDomain | quote }}
- name: VDI_INGRESS_API_VERSION
  value: {{ .Values.sessions.ingressApiVersion | quote }}
{{- if .Values.sessions.tlsSecretName }}
- name: VDI_TLS_SECRET_NAME
  value: {{ .Values.sessions.tlsSecretName | quote }}
{{- end }}
{{- if .Values.sessions.imagePullSecret }}
- name: VDI_IMAGE_PULL_SECRET
  value: {{ .Values.sessions.imagePullSecret | quote }}
{{- end }}
- name: VDI_CALLBACK_URL
  value: {{ include "vdi.callbackUrl" . | quote }}
# the agents' callbacks alone: the only port of the control plane session pods may reach
- name: VDI_AGENT_PORT
  value: "8081"
- name: VDI_TURN_HOST
  value: {{ .Values.turn.host | quote }}
- name: VDI_TURN_PORT
  value: {{ .Values.turn.port | quote }}
{{- if .Values.turn.hosts }}
- name: VDI_TURN_HOSTS
  value: {{ join "," .Values.turn.hosts | quote }}
{{- end }}
# orders bootstrap-token configurations: an older rollout's pod changes no token
- name: VDI_BOOTSTRAP_GENERATION
  value: {{ .Release.Revision | quote }}
- name: VDI_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: VDI_MAX_SESSIONS_PER_USER
  value: {{ .Values.maxSessionsPerUser | quote }}
{{- range $name := list "VDI_SECRET_KEY" "VDI_TURN_SECRET" "VDI_DATABASE_URL" }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "vdi.secretName" $ }}
      key: {{ $name }}
{{- end }}
- name: VDI_BOOTSTRAP_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "vdi.secretName" . }}
      key: VDI_BOOTSTRAP_TOKEN
      optional: true
{{- if .Values.audit.webhookUrl }}
- name: VDI_AUDIT_WEBHOOK_URL
  value: {{ .Values.audit.webhookUrl | quote }}
- name: VDI_AUDIT_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "vdi.secretName" . }}
      key: VDI_AUDIT_WEBHOOK_SECRET
{{- end }}
{{- end -}}

{{- define "vdi.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The monitoring.coreos.com/v1 CRDs (prometheus-operator) are there, or the values say to
assume them (a render that sees no cluster: helm template, Argo CD). */}}
{{- define "vdi.hasMonitoringCRDs" -}}
{{- if or (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") .Values.prometheus.assumeCRDs -}}true{{- end -}}
{{- end -}}

{{/* The scrape job's label, as prometheus-operator names it: the Service's name for a
ServiceMonitor, <namespace>/<name> for a PodMonitor. */}}
{{- define "vdi.metricsJob" -}}
{{- if .Values.prometheus.rules.job -}}{{ .Values.prometheus.rules.job }}{{- else if .Values.prometheus.podmonitor.enabled -}}{{ printf "%s/%s" .Release.Namespace (include "vdi.fullname" .) }}{{- else -}}{{ include "vdi.fullname" . }}{{- end -}}
{{- end -}}
