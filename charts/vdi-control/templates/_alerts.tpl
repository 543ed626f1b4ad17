{{/* The alerts of the PrometheusRule (templates/monitoring.yaml). Gauges read from the
database are the same on every replica: aggregated with max. Counters are per replica: summed.
Each alert's runbook is a section of docs/operations.md ("Alerts"). Annotations are static
text (no $value), so that `promtool test rules` (tests/deploy/test_alerts.py) checks them whole. */}}
{{- define "vdi.alertGroups" -}}
{{- $job := include "vdi.metricsJob" . -}}
{{- $r := .Values.prometheus.rules -}}
{{- $runbook := $r.runbookUrl | default "docs/operations.md" -}}
groups:
  - name: vdi-control
    rules:
      - alert: VdiSessionStartSlow
        expr: histogram_quantile(0.95, sum by (le) (rate(vdi_session_start_seconds_bucket{job="{{ $job }}"}[15m]))) > {{ $r.startP95TargetSeconds }}
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: "Time to desktop p95 over {{ $r.startP95TargetSeconds }} s for 15 minutes"
          runbook_url: "{{ $runbook }}#vdisessionstartslow"
      - alert: VdiSessionFailures
        expr: sum by (reason) (increase(vdi_session_failures_total{job="{{ $job }}"}[15m])) > {{ $r.failuresPer15m }}
        for: 1m
        labels:
          severity: warning
        annotations:
          summary: "More than {{ $r.failuresPer15m }} sessions failed in 15 minutes with one reason"
          runbook_url: "{{ $runbook }}#vdisessionfailures"
      - alert: VdiAgentLostSpike
        expr: sum(increase(vdi_session_failures_total{job="{{ $job }}", reason="AGENT_LOST"}[10m])) > {{ $r.agentLostPer10m }}
        labels:
          severity: critical
        annotations:
          summary: "More than {{ $r.agentLostPer10m }} running sessions lost their agent in 10 minutes"
          runbook_url: "{{ $runbook }}#vdiagentlostspike"
      - alert: VdiReconcilerStalled
        expr: max(vdi_reconciler_oldest_due_seconds{job="{{ $job }}"}) > {{ $r.reconcilerStalledSeconds }}
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: "Reconciler work has been due for over {{ $r.reconcilerStalledSeconds }} s"
          runbook_url: "{{ $runbook }}#vdireconcilerstalled"
      - alert: VdiWarmPoolEmpty
        expr: (max by (template) (vdi_pool_members{job="{{ $job }}", state="ready"}) == 0) and on (template) (max by (template) (vdi_pool_size{job="{{ $job }}"}) > 0)
        for: {{ $r.warmPoolEmptyFor }}
        labels:
          severity: warning
        annotations:
          summary: "A warm pool has had no ready member for {{ $r.warmPoolEmptyFor }}"
          runbook_url: "{{ $runbook }}#vdiwarmpoolempty"
      - alert: VdiCapacityWaitTooLong
        expr: max(vdi_capacity_wait_oldest_seconds{job="{{ $job }}"}) > {{ $r.capacityWaitSeconds }}
        for: 2m
        labels:
          severity: warning
        annotations:
          summary: "A session has waited over {{ $r.capacityWaitSeconds }} s for GPU, CPU or memory"
          runbook_url: "{{ $runbook }}#vdicapacitywaittoolong"
      - alert: VdiDatabaseUnreachable
        expr: max(vdi_database_up{job="{{ $job }}"}) == 0
        for: 2m
        labels:
          severity: critical
        annotations:
          summary: "No replica can read the database"
          runbook_url: "{{ $runbook }}#vdidatabaseunreachable"
      - alert: VdiNoReadyReplica
        expr: (sum(vdi_ready{job="{{ $job }}"}) or vector(0)) == 0
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: "No vdi-control replica is ready (or none is scraped)"
          runbook_url: "{{ $runbook }}#vdinoreadyreplica"
{{- end -}}
