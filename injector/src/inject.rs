//! Pod in, meshed pod out: the pure heart of the injector, shared by the webhook and by
//! `trellis inject`.
//!
//! Steps: undo an earlier injection (so injecting twice gives the same pod), read the pod's
//! annotations into effective settings (every invalid one is reported), rewrite app probes and
//! hooks, render the template, place what it rendered, and label and annotate the pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use serde::Serialize;
use serde_json::Value;
use trellis_api::annotations::{
    self, AnnotationError, ReadinessAnnotations, SidecarStatus, TrafficAnnotations, names,
};
use trellis_api::mesh::ProxyConfig;

use crate::config::{InjectorConfig, PROXY_CONTAINER, PROXY_UID};
use crate::redirect::{MetadataSwitches, Redirect};
use crate::template::{SidecarParts, TemplateError, Templates};
use crate::{probes, prometheus_merge, resources};

const DEFAULT_STATUS_PORT: u16 = 15020;

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{}", join(.0))]
    InvalidAnnotations(Vec<AnnotationError>),
    #[error("{0}")]
    Template(#[from] TemplateError),
    #[error("{0}")]
    Conflict(String),
}

fn join(errors: &[AnnotationError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// The pod's annotations, read into what the injector acts on.
struct PodSettings {
    redirect: Redirect,
    readiness: ReadinessAnnotations,
    proxy_config: ProxyConfig,
    status_port: u16,
    rewrite_probes: bool,
    /// Point the pod's `prometheus.io/*` annotations at the status port (see `prometheus_merge`).
    merge_metrics: bool,
    native: bool,
    proxy_image: Option<String>,
    log_level: Option<String>,
    component_log_level: Option<String>,
    resources: Value,
}

/// Injects the sidecar into `pod`. `workload` names the owning workload when known (manual
/// injection of a Deployment); otherwise it is derived from the pod as Istio does.
pub fn inject(
    pod: &Pod,
    namespace: &str,
    workload: Option<&str>,
    config: &InjectorConfig,
    templates: &Templates,
) -> Result<Pod, InjectError> {
    let mut pod = pod.clone();
    strip_previous_injection(&mut pod, templates);
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let settings = read_settings(&annotations, config)?;
    let spec = pod.spec.get_or_insert_with(PodSpec::default);

    let probers = if settings.rewrite_probes && settings.status_port != 0 {
        probes::rewrite(spec, settings.status_port)
    } else {
        BTreeMap::new()
    };
    let workload_name = workload.map(str::to_owned).unwrap_or_else(|| workload_name(&pod));
    let values = TemplateValues::new(&pod, namespace, &workload_name, &settings, &probers, config);
    let hold = values.hold_application;
    let mut parts = templates.render(&values)?;
    add_pod_facts(&mut parts.proxy, &values.proxy.pod_facts);
    add_proxy_metadata(&mut parts.proxy, &settings.proxy_config);
    let status = place(&mut pod, parts, settings.native, hold)?;
    label_and_annotate(&mut pod, &settings, status, config, &workload_name);
    if settings.merge_metrics {
        merge_metrics(&mut pod, settings.status_port);
    }
    Ok(pod)
}

/// Injects a small sample pod, so a broken template or config stops the injector at start-up
/// instead of denying users' pods.
pub fn self_test(config: &InjectorConfig, templates: &Templates) -> Result<(), InjectError> {
    let sample: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "self-test", "labels": {"app": "self-test"}},
        "spec": {"containers": [{
            "name": "app",
            "image": "app",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}}
        }]}
    }))
    .map_err(|e| InjectError::Conflict(e.to_string()))?;
    inject(&sample, "default", None, config, templates).map(drop)
}

// ---------------------------------------------------------------------------------------------
// Reading the pod

fn read_settings(
    annotations: &BTreeMap<String, String>,
    config: &InjectorConfig,
) -> Result<PodSettings, InjectError> {
    use names::annotation as ann;
    let mut errors = Vec::new();
    let traffic = TrafficAnnotations::from_annotations(annotations).unwrap_or_else(|e| {
        errors.extend(e);
        TrafficAnnotations::default()
    });
    let readiness = ReadinessAnnotations::from_annotations(annotations).unwrap_or_else(|e| {
        errors.extend(e);
        ReadinessAnnotations::default()
    });
    let mut get = |name: &str, parse: &dyn Fn(&str) -> Result<(), AnnotationError>| {
        if let Some(value) = annotations.get(name)
            && let Err(e) = parse(value)
        {
            errors.push(e);
        }
    };
    // Validate the free-form annotations; their values are read below.
    get(ann::PROXY_IMAGE, &|v| annotations::parse_image(v).map(drop));
    get(ann::LOG_LEVEL, &|v| annotations::parse_log_level(v).map(drop));
    get(ann::COMPONENT_LOG_LEVEL, &|v| annotations::parse_component_log_levels(v).map(drop));
    let flag = |name: &str, default: bool, errors: &mut Vec<AnnotationError>| match annotations.get(name) {
        None => default,
        Some(v) => annotations::parse_bool(name, v).unwrap_or_else(|e| {
            errors.push(e);
            default
        }),
    };
    let rewrite_probes = flag(ann::REWRITE_APP_HTTP_PROBERS, true, &mut errors);
    let merge_metrics =
        flag(ann::PROMETHEUS_MERGE_METRICS, config.mesh.enable_prometheus_merge(), &mut errors);
    let native = flag(ann::NATIVE_SIDECAR, config.native_sidecars, &mut errors);
    let mut proxy_config = config.mesh.proxy_config().clone();
    if let Some(v) = annotations.get(ann::PROXY_CONFIG) {
        match annotations::parse_proxy_config(v) {
            Ok(pod_config) => proxy_config.merge_from(&pod_config),
            Err(e) => errors.push(e),
        }
    }
    // One status port for the probes we rewrite, the redirect exclusions and the proxy itself:
    // the annotation wins over the proxy config, and the proxy learns it from PROXY_CONFIG.
    let status_port = match annotations.get(ann::STATUS_PORT) {
        Some(v) => annotations::parse_status_port(v).unwrap_or_else(|e| {
            errors.push(e);
            DEFAULT_STATUS_PORT
        }),
        None => proxy_config.status_port().unwrap_or(DEFAULT_STATUS_PORT),
    };
    proxy_config.status_port = Some(i32::from(status_port));
    let mode = traffic.interception_mode.unwrap_or_else(|| proxy_config.interception_mode());
    // The pod's own proxy config names the switch when it sets it; otherwise it came from the
    // mesh's defaultConfig.
    let pod_metadata = annotations
        .get(ann::PROXY_CONFIG)
        .and_then(|v| annotations::parse_proxy_config(v).ok())
        .map(|c| c.proxy_metadata)
        .unwrap_or_default();
    let source = |key: &str| match pod_metadata.contains_key(key) {
        true => format!("{} proxyMetadata.{key}", ann::PROXY_CONFIG),
        false => format!("meshConfig.defaultConfig.proxyMetadata.{key}"),
    };
    let switches = MetadataSwitches::read(&proxy_config.proxy_metadata, &source).unwrap_or_else(|e| {
        errors.extend(e);
        MetadataSwitches::default()
    });
    let resources = resources::proxy_resources(annotations).unwrap_or_else(|e| {
        errors.extend(e);
        Value::Null
    });
    if !errors.is_empty() {
        return Err(InjectError::InvalidAnnotations(errors));
    }
    Ok(PodSettings {
        resources,
        redirect: Redirect { traffic, mode, status_port, switches },
        readiness,
        proxy_config,
        status_port,
        rewrite_probes,
        // Without a status port there is nobody to scrape the app and serve its metrics.
        merge_metrics: merge_metrics && status_port != 0,
        native,
        proxy_image: annotations.get(ann::PROXY_IMAGE).cloned(),
        log_level: annotations.get(ann::LOG_LEVEL).cloned(),
        component_log_level: annotations.get(ann::COMPONENT_LOG_LEVEL).cloned(),
    })
}

/// The workload a pod belongs to, the way Istio names it: a ReplicaSet's pods belong to its
/// Deployment (the pod-template-hash suffix removed), a CronJob's Job to the CronJob. The same
/// rule names the pod in trellisd's workload table (`trellis_api::workload`), so that the
/// proxy's own metric labels and its peers' agree.
fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let controller = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    let hash = meta.labels.as_ref().and_then(|l| l.get("pod-template-hash")).map(String::as_str);
    trellis_api::workload::workload_name(
        meta.name.as_deref(),
        meta.generate_name.as_deref(),
        controller.map(|o| trellis_api::workload::Owner { kind: &o.kind, name: &o.name }),
        hash,
    )
}

// ---------------------------------------------------------------------------------------------
// Idempotence

/// Removes what an earlier injection added (as listed in its status annotation) and restores
/// the app probes it rewrote, so the rest of `inject` sees the pod as the user wrote it.
fn strip_previous_injection(pod: &mut Pod, templates: &Templates) {
    let Some(status) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(names::annotation::SIDECAR_STATUS))
        .and_then(|v| SidecarStatus::parse(v).ok())
    else {
        return;
    };
    let Some(spec) = pod.spec.as_mut() else { return };
    let added = |name: &String, list: &[String]| list.contains(name) && templates.is_ours(name);
    let old_proxy = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == PROXY_CONTAINER)
        .cloned();
    if let Some(probers) = old_proxy.as_ref().and_then(app_probers_of) {
        probes::restore(spec, &probers);
    }
    if let (Some(old_proxy), Some(annotations)) = (&old_proxy, pod.metadata.annotations.as_mut()) {
        prometheus_merge::restore(annotations, old_proxy);
    }
    if let Some(inits) = spec.init_containers.as_mut() {
        inits.retain(|c| !added(&c.name, &status.init_containers));
    }
    spec.containers.retain(|c| !added(&c.name, &status.containers));
    if let Some(volumes) = spec.volumes.as_mut() {
        volumes.retain(|v| !added(&v.name, &status.volumes));
    }
    if let Some(a) = pod.metadata.annotations.as_mut() {
        a.remove(names::annotation::SIDECAR_STATUS);
    }
}

/// Points the pod's scrape annotations at the status port and tells the proxy where the app's
/// own metrics are.
fn merge_metrics(pod: &mut Pod, status_port: u16) {
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let Some(env) = prometheus_merge::apply(annotations, status_port) else { return };
    let proxy = pod.spec.as_mut().and_then(|spec| {
        spec.init_containers
            .iter_mut()
            .flatten()
            .chain(&mut spec.containers)
            .find(|c| c.name == PROXY_CONTAINER)
    });
    if let Some(proxy) = proxy {
        let vars = proxy.env.get_or_insert_with(Vec::new);
        vars.retain(|e| e.name != env.name);
        vars.push(env);
    }
}

fn app_probers_of(proxy: &Container) -> Option<BTreeMap<String, Value>> {
    let env = proxy.env.as_ref()?.iter().find(|e| e.name == probes::APP_PROBERS_ENV)?;
    serde_json::from_str(env.value.as_deref()?).ok()
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Everything the template sees.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TemplateValues<'a> {
    pod: &'a Pod,
    namespace: &'a str,
    service_account: &'a str,
    workload_name: &'a str,
    native_sidecar: bool,
    cni_mode: bool,
    hold_application: bool,
    proxy: ProxyValues,
    redirect: Option<RedirectValues>,
    mesh: MeshValues,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxyValues {
    image: String,
    init_image: String,
    uid: i64,
    status_port: u16,
    discovery_address: String,
    config_json: String,
    interception_mode: &'static str,
    /// Set on the proxy by the injector, not by the template (see `add_pod_facts`); visible to
    /// templates that want them all the same.
    #[serde(flatten)]
    pod_facts: PodFacts,
    log_level: Option<String>,
    component_log_level: Option<String>,
    resources: Value,
    readiness: ReadinessValues,
}

/// What the proxy must know about this pod: who it is, which containers and ports it fronts,
/// and the app probes it runs.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodFacts {
    workload_name: String,
    app_containers: String,
    pod_ports: String,
    app_probers: Option<String>,
}

/// Adds the pod facts to the proxy's environment, replacing any the template set itself.
fn add_pod_facts(proxy: &mut Container, facts: &PodFacts) {
    let env = proxy.env.get_or_insert_with(Vec::new);
    let mut set = |name: &str, value: &str| {
        env.retain(|e| e.name != name);
        env.push(EnvVar { name: name.to_owned(), value: Some(value.to_owned()), value_from: None });
    };
    set("ISTIO_META_WORKLOAD_NAME", &facts.workload_name);
    set("ISTIO_META_APP_CONTAINERS", &facts.app_containers);
    set("ISTIO_META_POD_PORTS", &facts.pod_ports);
    if let Some(probers) = &facts.app_probers {
        set(probes::APP_PROBERS_ENV, probers);
    }
}

/// The proxy config's `proxyMetadata` as the proxy's environment, as Istio's template writes
/// it (after everything else, so that a pod's metadata wins over a variable of the same name):
/// feature switches such as `ISTIO_META_DNS_CAPTURE` and `ISTIO_META_DNS_AUTO_ALLOCATE` are read
/// from the environment by the proxy.
fn add_proxy_metadata(proxy: &mut Container, proxy_config: &ProxyConfig) {
    let env = proxy.env.get_or_insert_with(Vec::new);
    for (name, value) in &proxy_config.proxy_metadata {
        env.retain(|e| &e.name != name);
        env.push(EnvVar { name: name.clone(), value: Some(value.clone()), value_from: None });
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReadinessValues {
    initial_delay_seconds: i32,
    period_seconds: i32,
    failure_threshold: i32,
}

#[derive(Serialize)]
struct RedirectValues {
    args: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MeshValues {
    trust_domain: String,
}

impl<'a> TemplateValues<'a> {
    fn new(
        pod: &'a Pod,
        namespace: &'a str,
        workload_name: &'a str,
        settings: &PodSettings,
        probers: &BTreeMap<String, Value>,
        config: &InjectorConfig,
    ) -> Self {
        let spec = pod.spec.as_ref();
        let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        let ports: Vec<&k8s_openapi::api::core::v1::ContainerPort> =
            containers.iter().flat_map(|c| c.ports.iter().flatten()).collect();
        let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
        let redirect = settings.redirect.is_on().then(|| RedirectValues { args: settings.redirect.args() });
        TemplateValues {
            pod,
            namespace,
            service_account: spec.and_then(|s| s.service_account_name.as_deref()).unwrap_or("default"),
            workload_name,
            native_sidecar: settings.native,
            cni_mode: config.cni_mode,
            hold_application: settings.proxy_config.hold_application_until_proxy_starts(),
            proxy: ProxyValues {
                image: settings.proxy_image.clone().unwrap_or_else(|| config.proxy_image.clone()),
                init_image: config.proxy_init_image.clone(),
                uid: PROXY_UID,
                status_port: settings.status_port,
                discovery_address: settings.proxy_config.discovery_address().to_owned(),
                config_json: serde_json::to_string(&settings.proxy_config).unwrap_or_default(),
                interception_mode: settings.redirect.mode.as_str(),
                pod_facts: PodFacts {
                    workload_name: workload_name.to_owned(),
                    app_containers: names.join(","),
                    pod_ports: serde_json::to_string(&ports).unwrap_or_default(),
                    app_probers: (!probers.is_empty())
                        .then(|| serde_json::to_string(probers).unwrap_or_default()),
                },
                log_level: settings.log_level.clone(),
                component_log_level: settings.component_log_level.clone(),
                resources: settings.resources.clone(),
                readiness: ReadinessValues {
                    initial_delay_seconds: settings.readiness.initial_delay_seconds.unwrap_or(1),
                    period_seconds: settings.readiness.period_seconds.unwrap_or(2),
                    failure_threshold: settings.readiness.failure_threshold.unwrap_or(30),
                },
            },
            redirect,
            mesh: MeshValues { trust_domain: config.mesh.trust_domain().to_owned() },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Placing and recording

/// Puts the rendered pieces into the pod and returns the status annotation that lists them.
fn place(pod: &mut Pod, parts: SidecarParts, native: bool, hold: bool) -> Result<SidecarStatus, InjectError> {
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    let SidecarParts { init_container, mut proxy, volumes } = parts;
    let mut status = SidecarStatus::default();

    let taken = |name: &str, spec: &PodSpec| {
        spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| c.name == name)
    };
    for c in init_container.iter().chain(std::iter::once(&proxy)) {
        if taken(&c.name, spec) {
            return Err(InjectError::Conflict(format!(
                "the pod already has a container named {:?}, which the sidecar needs",
                c.name
            )));
        }
    }
    let existing_volumes = spec.volumes.get_or_insert_with(Vec::new);
    for v in &volumes {
        if existing_volumes.iter().any(|e| e.name == v.name) {
            return Err(InjectError::Conflict(format!(
                "the pod already has a volume named {:?}, which the sidecar needs",
                v.name
            )));
        }
    }
    status.volumes = volumes.iter().map(|v| v.name.clone()).collect();
    existing_volumes.extend(volumes);

    let mut front: Vec<Container> = Vec::new();
    if let Some(init) = init_container {
        status.init_containers.push(init.name.clone());
        front.push(init);
    }
    if native {
        // A native sidecar must restart with the pod; without this it would block every
        // container after it, whatever a custom template says.
        proxy.restart_policy = Some("Always".to_owned());
        status.init_containers.push(proxy.name.clone());
        front.push(proxy);
    } else {
        proxy.restart_policy = None;
        status.containers.push(proxy.name.clone());
        if hold {
            spec.containers.insert(0, proxy);
        } else {
            spec.containers.push(proxy);
        }
    }
    let inits = spec.init_containers.get_or_insert_with(Vec::new);
    inits.splice(0..0, front);
    if inits.is_empty() {
        spec.init_containers = None;
    }
    Ok(status)
}

fn label_and_annotate(
    pod: &mut Pod,
    settings: &PodSettings,
    mut status: SidecarStatus,
    config: &InjectorConfig,
    workload: &str,
) {
    use names::{annotation as ann, label};
    let meta = &mut pod.metadata;
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    // Istio's rules, shared with trellisd's workload table and the proxy's own labels.
    let canonical_name = trellis_api::workload::canonical_service(labels, workload);
    let canonical_revision = trellis_api::workload::canonical_revision(labels);
    labels.insert(label::TLS_MODE.to_owned(), label::TLS_MODE_ISTIO.to_owned());
    labels.entry(label::CANONICAL_NAME.to_owned()).or_insert(canonical_name);
    labels.entry(label::CANONICAL_REVISION.to_owned()).or_insert(canonical_revision);

    let app_container =
        pod.spec.as_ref().and_then(|s| s.containers.iter().find(|c| c.name != PROXY_CONTAINER));
    let app_container = app_container.map(|c| c.name.clone());
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if let Some(app) = app_container {
        annotations.entry(ann::DEFAULT_CONTAINER.to_owned()).or_insert(app);
    }
    if config.cni_mode {
        // The CNI plugin programs the redirect from these, exactly as proxy-init would. All are
        // written, empty ones too: an empty include list means "capture nothing", which an
        // absent annotation would not say.
        annotations.insert(ann::INTERCEPTION_MODE.to_owned(), settings.redirect.mode.as_str().to_owned());
        if settings.redirect.is_on() {
            for (annotation, value) in settings.redirect.cni_annotations() {
                annotations.insert(annotation.to_owned(), value);
            }
        }
    }
    status.revision = config.revision.clone();
    annotations.insert(ann::SIDECAR_STATUS.to_owned(), status.to_json());
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;

    #[test]
    fn workload_names_follow_owners() {
        let pod = |v: Value| -> Pod { serde_json::from_value(v).unwrap() };
        let rs = pod(serde_json::json!({"metadata": {
            "generateName": "reviews-v1-7d9f8c6b5-",
            "labels": {"pod-template-hash": "7d9f8c6b5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-7d9f8c6b5", "uid": "x", "controller": true}]
        }}));
        assert_eq!(workload_name(&rs), "reviews-v1");
        let job = pod(serde_json::json!({"metadata": {
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "nightly-28911520", "uid": "x", "controller": true}]
        }}));
        assert_eq!(workload_name(&job), "nightly");
        let bare = pod(serde_json::json!({"metadata": {"generateName": "worker-"}}));
        assert_eq!(workload_name(&bare), "worker");
        let hand_made = pod(serde_json::json!({"metadata": {
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "migrate-2", "uid": "x", "controller": true}]
        }}));
        assert_eq!(workload_name(&hand_made), "migrate-2", "only CronJob timestamps are stripped");
    }

    fn pod_with(annotations: Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app",
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}
        }))
        .unwrap()
    }

    fn env_of(pod: &Pod, name: &str) -> Option<String> {
        let spec = pod.spec.as_ref()?;
        let proxy = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .find(|c| c.name == PROXY_CONTAINER)?;
        proxy.env.iter().flatten().find(|e| e.name == name)?.value.clone()
    }

    #[test]
    fn one_status_port_for_probes_redirect_and_proxy() {
        let templates = Templates::embedded().unwrap();
        let config = InjectorConfig::default();
        for annotations in [
            serde_json::json!({"status.sidecar.istio.io/port": "15030"}),
            serde_json::json!({"proxy.istio.io/config": "statusPort: 15030"}),
        ] {
            let pod = inject(&pod_with(annotations.clone()), "default", None, &config, &templates).unwrap();
            let spec = pod.spec.as_ref().unwrap();
            let probe = spec.containers[0].liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(probe.port, IntOrString::Int(15030), "{annotations}");
            let proxy_config: Value = serde_json::from_str(&env_of(&pod, "PROXY_CONFIG").unwrap()).unwrap();
            assert_eq!(proxy_config["statusPort"], 15030, "{annotations}");
            let init = &spec.init_containers.as_ref().unwrap()[0];
            assert!(init.args.as_ref().unwrap().join(" ").contains("-d 15090,15021,15030"), "{annotations}");
        }
    }

    #[test]
    fn cni_mode_states_capture_nothing_and_interception_explicitly() {
        let templates = Templates::embedded().unwrap();
        let config = InjectorConfig { cni_mode: true, ..InjectorConfig::default() };
        let pod = pod_with(serde_json::json!({"traffic.sidecar.istio.io/includeInboundPorts": ""}));
        let injected = inject(&pod, "default", None, &config, &templates).unwrap();
        let a = injected.metadata.annotations.as_ref().unwrap();
        assert_eq!(a.get("traffic.sidecar.istio.io/includeInboundPorts").map(String::as_str), Some(""));
        assert_eq!(a.get("sidecar.istio.io/interceptionMode").map(String::as_str), Some("REDIRECT"));
        let none = pod_with(serde_json::json!({"proxy.istio.io/config": "interceptionMode: NONE"}));
        let injected = inject(&none, "default", None, &config, &templates).unwrap();
        let a = injected.metadata.annotations.as_ref().unwrap();
        assert_eq!(a.get("sidecar.istio.io/interceptionMode").map(String::as_str), Some("NONE"));
    }

    fn proxy_of(pod: &Pod) -> &Container {
        let spec = pod.spec.as_ref().unwrap();
        spec.init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .find(|c| c.name == PROXY_CONTAINER)
            .unwrap()
    }

    fn redirect_args_of(pod: &Pod) -> String {
        let spec = pod.spec.as_ref().unwrap();
        spec.init_containers.as_ref().unwrap()[0].args.as_ref().unwrap().join(" ")
    }

    #[test]
    fn the_mesh_can_turn_dns_capture_on_for_every_pod() {
        let templates = Templates::embedded().unwrap();
        let mut config = InjectorConfig::default();
        let (mesh, _) = trellis_api::mesh::MeshConfig::from_yaml(
            "defaultConfig:\n  proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: \"true\"\n    ISTIO_META_DNS_AUTO_ALLOCATE: \"true\"\n",
        )
        .unwrap();
        config.mesh = mesh;
        let pod = inject(&pod_with(serde_json::json!({})), "default", None, &config, &templates).unwrap();
        assert!(redirect_args_of(&pod).ends_with("--capture-dns"), "{}", redirect_args_of(&pod));
        assert_eq!(env_of(&pod, "ISTIO_META_DNS_CAPTURE").as_deref(), Some("true"));
        assert_eq!(env_of(&pod, "ISTIO_META_DNS_AUTO_ALLOCATE").as_deref(), Some("true"));
        // A pod can turn it off again.
        let off = serde_json::json!({"proxy.istio.io/config": "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"false\"\n"});
        let pod = inject(&pod_with(off), "default", None, &config, &templates).unwrap();
        assert!(!redirect_args_of(&pod).contains("--capture-dns"));
        assert_eq!(env_of(&pod, "ISTIO_META_DNS_CAPTURE").as_deref(), Some("false"));
    }

    #[test]
    fn a_bad_dns_switch_names_where_it_came_from() {
        let templates = Templates::embedded().unwrap();
        let mut config = InjectorConfig::default();
        let (mesh, _) = trellis_api::mesh::MeshConfig::from_yaml(
            "defaultConfig:\n  proxyMetadata:\n    ISTIO_AGENT_DUAL_STACK: maybe\n",
        )
        .unwrap();
        config.mesh = mesh;
        let error =
            inject(&pod_with(serde_json::json!({})), "default", None, &config, &templates).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"annotation meshConfig.defaultConfig.proxyMetadata.ISTIO_AGENT_DUAL_STACK: invalid value "maybe": expected true or false"#
        );
        // And the injector refuses to start with such a mesh config, rather than deny pods.
        assert!(self_test(&config, &templates).is_err());
    }

    #[test]
    fn kubevirt_interfaces_under_istios_newer_name_win() {
        let templates = Templates::embedded().unwrap();
        let annotations = serde_json::json!({
            "traffic.sidecar.istio.io/kubevirtInterfaces": "net1",
            "istio.io/reroute-virtual-interfaces": "k6t-eth0",
        });
        let pod =
            inject(&pod_with(annotations), "default", None, &InjectorConfig::default(), &templates).unwrap();
        assert!(redirect_args_of(&pod).ends_with("-k k6t-eth0"), "{}", redirect_args_of(&pod));
    }

    #[test]
    fn tproxy_reaches_the_redirect_the_proxy_and_the_cni_plugin() {
        let templates = Templates::embedded().unwrap();
        for annotations in [
            serde_json::json!({"sidecar.istio.io/interceptionMode": "TPROXY"}),
            serde_json::json!({"proxy.istio.io/config": "interceptionMode: TPROXY"}),
        ] {
            let pod = inject(
                &pod_with(annotations.clone()),
                "default",
                None,
                &InjectorConfig::default(),
                &templates,
            )
            .unwrap();
            assert!(redirect_args_of(&pod).contains("-m TPROXY"), "{annotations}");
            assert_eq!(env_of(&pod, "ISTIO_META_INTERCEPTION_MODE").as_deref(), Some("TPROXY"));
            // IP_TRANSPARENT takes NET_ADMIN; the proxy's group keeps its traffic out of the redirect.
            let security = proxy_of(&pod).security_context.as_ref().unwrap();
            assert_eq!(security.run_as_user, Some(0));
            assert_eq!(security.run_as_group, Some(1337));
            let caps = security.capabilities.as_ref().unwrap();
            assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_owned()][..]));
        }
        let cni = InjectorConfig { cni_mode: true, ..InjectorConfig::default() };
        let pod = pod_with(serde_json::json!({"sidecar.istio.io/interceptionMode": "TPROXY"}));
        let injected = inject(&pod, "default", None, &cni, &templates).unwrap();
        let a = injected.metadata.annotations.as_ref().unwrap();
        assert_eq!(a.get("sidecar.istio.io/interceptionMode").map(String::as_str), Some("TPROXY"));
        assert!(redirect_args_of(&injected).starts_with("validate "), "{}", redirect_args_of(&injected));
        // REDIRECT keeps the proxy unprivileged.
        let plain =
            inject(&pod_with(serde_json::json!({})), "default", None, &InjectorConfig::default(), &templates)
                .unwrap();
        let security = proxy_of(&plain).security_context.as_ref().unwrap();
        assert_eq!((security.run_as_user, security.run_as_non_root), (Some(1337), Some(true)));
    }

    #[test]
    fn the_status_annotation_cannot_remove_other_containers_or_volumes() {
        let templates = Templates::embedded().unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "annotations": {
                "sidecar.istio.io/status": r#"{"initContainers":["vault-agent-init"],"containers":["app"],"volumes":["audit-log"]}"#
            }},
            "spec": {
                "initContainers": [{"name": "vault-agent-init", "image": "vault"}],
                "containers": [{"name": "app", "image": "app"}],
                "volumes": [{"name": "audit-log", "emptyDir": {}}]
            }
        }))
        .unwrap();
        let injected = inject(&pod, "default", None, &InjectorConfig::default(), &templates).unwrap();
        let spec = injected.spec.as_ref().unwrap();
        let inits: Vec<&str> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(inits, ["trellis-init", "istio-proxy", "vault-agent-init"]);
        assert_eq!(spec.containers[0].name, "app");
        assert!(spec.volumes.iter().flatten().any(|v| v.name == "audit-log"));
    }

    #[test]
    fn the_mesh_can_turn_metrics_merging_off_and_a_pod_back_on() {
        let templates = Templates::embedded().unwrap();
        let mut config = InjectorConfig::default();
        config.mesh.enable_prometheus_merge = Some(false);
        let app = serde_json::json!({"prometheus.io/port": "9090"});
        let pod = inject(&pod_with(app), "default", None, &config, &templates).unwrap();
        let a = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(a.get("prometheus.io/port").map(String::as_str), Some("9090"));
        assert_eq!(env_of(&pod, "ISTIO_PROMETHEUS_ANNOTATIONS"), None);
        let opted_in =
            serde_json::json!({"prometheus.io/port": "9090", "prometheus.istio.io/merge-metrics": "true"});
        let pod = inject(&pod_with(opted_in), "default", None, &config, &templates).unwrap();
        let a = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(a.get("prometheus.io/port").map(String::as_str), Some("15020"));
        assert_eq!(
            env_of(&pod, "ISTIO_PROMETHEUS_ANNOTATIONS").as_deref(),
            Some(r#"{"scrape":"","path":"","port":"9090"}"#)
        );
    }

    #[test]
    fn without_a_status_port_nothing_is_merged() {
        let templates = Templates::embedded().unwrap();
        let app = serde_json::json!({"prometheus.io/port": "9090", "status.sidecar.istio.io/port": "0"});
        let pod = inject(&pod_with(app), "default", None, &InjectorConfig::default(), &templates).unwrap();
        let a = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(a.get("prometheus.io/port").map(String::as_str), Some("9090"));
        assert!(!a.contains_key("prometheus.io/path"));
    }
}
