{{/*
Fixed names. The injector finds its webhook configuration by name (--webhook-config-name) and
the certificate it generates is for the Service's DNS name, so these are not derived from the
release name.
*/}}
{{- define "trellis.injector.name" -}}
trellis-injector
{{- end -}}

{{- define "trellis.webhookConfigName" -}}
trellis-sidecar-injector
{{- end -}}

{{- define "trellis.meshConfigMapName" -}}
trellis-mesh
{{- end -}}

{{- define "trellis.templatesConfigMapName" -}}
trellis-injector-templates
{{- end -}}

{{/* The CNI node agent's ServiceAccount, ClusterRole and ClusterRoleBinding. */}}
{{- define "trellis.cni.name" -}}
trellis-cni
{{- end -}}

{{/* The CNI node agent's DaemonSet (Istio's is istio-cni-node). */}}
{{- define "trellis.cni.nodeName" -}}
trellis-cni-node
{{- end -}}

{{/* Where the node's CNI directories are mounted in the agent's container. */}}
{{- define "trellis.cni.mountedBinDir" -}}
/host/opt/cni/bin
{{- end -}}

{{- define "trellis.cni.mountedConfDir" -}}
/host/etc/cni/net.d
{{- end -}}

{{/* Where the serving certificate lives in the injector container (Secret or emptyDir). */}}
{{- define "trellis.injector.certDir" -}}
/etc/trellis/injector-certs
{{- end -}}

{{/* chart label value: name-version */}}
{{- define "trellis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "trellis.labels" -}}
helm.sh/chart: {{ include "trellis.chart" . }}
app.kubernetes.io/part-of: trellis
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector of the injector pods. Deployment selectors are immutable: keep this stable. */}}
{{- define "trellis.injector.selectorLabels" -}}
app: trellis-injector
app.kubernetes.io/name: trellis-injector
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on the injector's objects. */}}
{{- define "trellis.injector.labels" -}}
{{ include "trellis.labels" . }}
app: trellis-injector
app.kubernetes.io/name: trellis-injector
app.kubernetes.io/component: sidecar-injector
{{- end -}}

{{/* Selector of the CNI agent pods. DaemonSet selectors are immutable: keep this stable. */}}
{{- define "trellis.cni.selectorLabels" -}}
app: trellis-cni-node
app.kubernetes.io/name: trellis-cni-node
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on the CNI agent's objects. */}}
{{- define "trellis.cni.labels" -}}
{{ include "trellis.labels" . }}
app: trellis-cni-node
app.kubernetes.io/name: trellis-cni-node
app.kubernetes.io/component: cni
{{- end -}}

{{/*
Namespaces the CNI plugin never programs: cni.excludeNamespaces plus the release namespace,
without duplicates or empty entries, comma-separated (EXCLUDE_NAMESPACES).
*/}}
{{- define "trellis.cni.excludeNamespaces" -}}
{{- $namespaces := list -}}
{{- range (.Values.cni.excludeNamespaces | default list) -}}
{{- $namespaces = append $namespaces (toString . | trim) -}}
{{- end -}}
{{- $namespaces = append $namespaces .Release.Namespace -}}
{{- $namespaces | compact | uniq | join "," -}}
{{- end -}}

{{/*
An image reference. Call with
  (dict "root" $ "image" .Values.injector.image "name" "injector")
repository: image.repository, else "<global.hub>/<name>";
then "@<image.digest>" when a digest is set, else ":<image.tag | global.tag | appVersion>".
*/}}
{{- define "trellis.image" -}}
{{- $global := .root.Values.global -}}
{{- $image := .image | default (dict) -}}
{{- $repository := $image.repository | default (printf "%s/%s" (trimSuffix "/" $global.hub) .name) -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repository $image.digest -}}
{{- else -}}
{{- $tag := $image.tag | default $global.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $repository (toString $tag) -}}
{{- end -}}
{{- end -}}

{{/*
The webhook's caBundle in "secret" mode: injector.caBundle as base64, accepting a raw PEM too.
Empty when not set.
*/}}
{{- define "trellis.injector.caBundle" -}}
{{- $ca := .Values.injector.caBundle | default "" | toString | trim -}}
{{- if hasPrefix "-----BEGIN" $ca -}}
{{- printf "%s\n" $ca | b64enc -}}
{{- else -}}
{{- $ca | nospace -}}
{{- end -}}
{{- end -}}

{{/*
The mesh config as a dict: meshConfig values with the release-dependent defaults filled in.
Rendered by mesh-configmap.yaml with toYaml.
Dicts are changed by assigning what `set` returns (`$d = set $d ...`), never through `$_ :=`:
the same under Helm, where `set` changes the dict in place and returns it, and under the
renderer built into `trellis install`, where dicts are values.
*/}}
{{- define "trellis.meshConfig" -}}
{{- $mesh := deepCopy (.Values.meshConfig | default (dict)) -}}
{{- $mesh = set $mesh "rootNamespace" ($mesh.rootNamespace | default .Release.Namespace) -}}
{{- $proxy := $mesh.defaultConfig | default (dict) -}}
{{- $proxy = set $proxy "discoveryAddress" ($proxy.discoveryAddress | default (printf "trellisd.%s.svc:15012" .Release.Namespace)) -}}
{{- $mesh = set $mesh "defaultConfig" $proxy -}}
{{- toYaml $mesh -}}
{{- end -}}

{{/*
Checks the values that a typo would otherwise turn into a broken webhook or CNI agent. Renders
nothing; fails the install with a message naming the value.
*/}}
{{- define "trellis.validate" -}}
{{- range $key := list "injector" "controlPlane" -}}
{{- $replicas := toString (index $.Values $key "replicaCount") -}}
{{- if not (regexMatch "^[0-9]+$" $replicas) -}}
{{- fail (printf "%s.replicaCount must be a whole number of replicas, got %q" $key $replicas) -}}
{{- end -}}
{{- end -}}
{{- $injector := .Values.injector -}}
{{- $mode := $injector.certificate.mode -}}
{{- if not (has $mode (list "self-managed" "secret")) -}}
{{- fail (printf "injector.certificate.mode must be \"self-managed\" or \"secret\", got %v" $mode) -}}
{{- end -}}
{{- if eq $mode "secret" -}}
{{- if not $injector.certificate.secretName -}}
{{- fail "injector.certificate.secretName must be set when injector.certificate.mode is \"secret\"" -}}
{{- end -}}
{{- if and (not $injector.caBundle) (not (hasKey ($injector.webhookAnnotations | default (dict)) "cert-manager.io/inject-ca-from")) -}}
{{- fail "injector.caBundle must be set (base64 of the PEM CA that signed the injector's serving certificate) when injector.certificate.mode is \"secret\", unless injector.webhookAnnotations has cert-manager.io/inject-ca-from" -}}
{{- end -}}
{{- end -}}
{{- if not (has $injector.failurePolicy (list "Fail" "Ignore")) -}}
{{- fail (printf "injector.failurePolicy must be \"Fail\" or \"Ignore\", got %v" $injector.failurePolicy) -}}
{{- end -}}
{{- $timeout := int $injector.timeoutSeconds -}}
{{- if or (lt $timeout 1) (gt $timeout 30) -}}
{{- fail (printf "injector.timeoutSeconds must be between 1 and 30, got %v" $injector.timeoutSeconds) -}}
{{- end -}}
{{- range $name, $text := $injector.templates -}}
{{- if not (kindIs "string" $text) -}}
{{- fail (printf "injector.templates.%s must be the template's text (a string), got a %s" $name (kindOf $text)) -}}
{{- end -}}
{{- end -}}
{{- $ca := .Values.controlPlane.ca | default (dict) -}}
{{- range $key := list "workloadCertTTL" "maxWorkloadCertTTL" -}}
{{- $ttl := toString (index $ca $key | default "") -}}
{{- if not (regexMatch "^([0-9]+(\\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$" $ttl) -}}
{{- fail (printf "controlPlane.ca.%s must be a duration such as 24h or 90m, got %q" $key $ttl) -}}
{{- end -}}
{{- end -}}
{{- $cni := .Values.cni -}}
{{- if $cni.enabled -}}
{{- /* hostPath mounts and the paths the plugin opens on the node must be absolute. */ -}}
{{- range $key := list "binDir" "confDir" -}}
{{- if not (hasPrefix "/" (toString (index $cni $key | default ""))) -}}
{{- fail (printf "cni.%s must be an absolute path on the node, got %q" $key (toString (index $cni $key | default ""))) -}}
{{- end -}}
{{- end -}}
{{- if and $cni.logFile (not (hasPrefix "/" (toString $cni.logFile))) -}}
{{- fail (printf "cni.logFile must be empty or an absolute path on the node, got %q" (toString $cni.logFile)) -}}
{{- end -}}
{{- if not (kindIs "slice" ($cni.excludeNamespaces | default list)) -}}
{{- fail (printf "cni.excludeNamespaces must be a list of namespace names, got a %s" (kindOf $cni.excludeNamespaces)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
What both webhooks of mutatingwebhook.yaml share. In self-managed mode caBundle is left out
rather than set to "": the injector patches it, and a field the chart never sets is one that
`helm upgrade` never resets.
*/}}
{{- define "trellis.webhook.common" -}}
{{- $injector := .Values.injector -}}
{{- $caBundle := include "trellis.injector.caBundle" . -}}
clientConfig:
  service:
    name: {{ include "trellis.injector.name" . }}
    namespace: {{ .Release.Namespace }}
    path: /inject
    port: 443
  {{- if and (eq $injector.certificate.mode "secret") $caBundle }}
  caBundle: {{ $caBundle | quote }}
  {{- end }}
rules:
  - operations: ["CREATE"]
    apiGroups: [""]
    apiVersions: ["v1"]
    resources: ["pods"]
    scope: Namespaced
sideEffects: None
admissionReviewVersions: ["v1"]
failurePolicy: {{ $injector.failurePolicy }}
matchPolicy: Equivalent
reinvocationPolicy: IfNeeded
timeoutSeconds: {{ int $injector.timeoutSeconds }}
{{- end -}}
