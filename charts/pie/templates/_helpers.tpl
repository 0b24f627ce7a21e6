{{/* pie's chart helpers. Object names are <fullname>-controller etc., so the release "pie"
gets deploy/'s names (pie-controller, pie-probe, ...). */}}

{{/* The chart's name, or nameOverride. */}}
{{- define "pie.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name: fullnameOverride, else the release name when it already
contains the chart's name, else <release>-<name>. 40 characters at most, so that
"<fullname>-controller-leader-election" stays a valid name. */}}
{{- define "pie.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "pie.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "pie.controllerName" -}}
{{- printf "%s-controller" (include "pie.fullname" .) -}}
{{- end -}}

{{/* Labels every object gets. */}}
{{- define "pie.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pie
{{- end -}}

{{/* The controller's selector labels (the Deployment, Service, PDB, VMServiceScrape, affinity). */}}
{{- define "pie.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pie.name" . }}-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of the controller's objects. */}}
{{- define "pie.controllerLabels" -}}
{{ include "pie.commonLabels" . }}
app.kubernetes.io/name: {{ include "pie.name" . }}-controller
{{- end -}}

{{- define "pie.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "pie.controllerName" .) -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false (the ServiceAccount the controller runs as)" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pie.probeServiceAccountName" -}}
{{- if .Values.probeServiceAccount.create -}}
{{- .Values.probeServiceAccount.name | default (printf "%s-probe" (include "pie.fullname" .)) -}}
{{- else -}}
{{- required "probeServiceAccount.name is required when probeServiceAccount.create is false (the ServiceAccount probe Pods run as)" .Values.probeServiceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The controller's image: image.reference, else repository:tag (tag defaults to appVersion).
topolvm/pie's own image cannot run pie: pie.required refuses it with a message rather than
leave a crashing Pod. */}}
{{- define "pie.image" -}}
{{- if .Values.image.reference -}}
{{- .Values.image.reference -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/* The probe Pods' image (pie-agent): agent.image.*, else derived from the controller's. */}}
{{- define "pie.agentImage" -}}
{{- $a := .Values.agent.image -}}
{{- if $a.reference -}}
{{- $a.reference -}}
{{- else if $a.repository -}}
{{- printf "%s:%s" $a.repository ($a.tag | default .Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- else if .Values.image.reference -}}
{{- fail "agent.image.repository (or agent.image.reference) is required when image.reference is set: the probe Pods' pie-agent image cannot be derived from a full reference" -}}
{{- else if hasSuffix "/pie-controller" .Values.image.repository -}}
{{- printf "%s/pie-agent:%s" (trimSuffix "/pie-controller" .Values.image.repository) ($a.tag | default .Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- else -}}
{{- fail (printf "agent.image.repository is required: image.repository %s does not end in /pie-controller, so the probe Pods' pie-agent image cannot be derived from it" .Values.image.repository) -}}
{{- end -}}
{{- end -}}

{{- define "pie.controllerURL" -}}
{{- .Values.controller.url | default (printf "http://%s.%s.svc:%v" (include "pie.controllerName" .) .Release.Namespace .Values.service.results.port) -}}
{{- end -}}

{{- define "pie.replicas" -}}
{{- if .Values.remoteWrite.buffer.persistence.enabled -}}1{{- else -}}{{ .Values.replicaCount }}{{- end -}}
{{- end -}}

{{/* The two required values, and no topolvm/pie image, checked first by every template that
renders the controller. */}}
{{- define "pie.required" -}}
{{- if regexMatch "(^|/)topolvm/pie([:@]|$)" (.Values.image.reference | default .Values.image.repository) -}}
{{- fail (printf "image: %s is topolvm/pie's image, which cannot run pie; remove image.repository/image.reference from your values (default: ghcr.io/pie-rs/pie-controller) or point them at pie-controller in your registry" (.Values.image.reference | default .Values.image.repository)) -}}
{{- end -}}
{{- $_ := required "remoteWrite.url is required: the Prometheus remote-write URL pie pushes to, e.g. --set remoteWrite.url=http://victoria-metrics.monitoring.svc:8428/api/v1/write" .Values.remoteWrite.url -}}
{{- if hasKey .Values.externalLabels "cluster" -}}
{{- fail "externalLabels.cluster: the cluster label is the value cluster (required); remove it from externalLabels" -}}
{{- end -}}
{{- $_ := required "cluster is required: the value of the cluster label on every series, e.g. --set cluster=prod-eu-1" .Values.cluster -}}
{{- end -}}
