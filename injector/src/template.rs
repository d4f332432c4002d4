//! The injection template: embedded at build time from `templates/`, or read from a directory
//! given with `--templates`. Rendering gives the typed pieces the injector places into the pod.
//!
//! Why a template and not Rust builders: platform teams change what is injected (images,
//! mounts, environment, security context) without rebuilding the injector, as they do with
//! Istio's templates. The pieces are parsed into Kubernetes types right after rendering, so a
//! broken template is caught at start-up by a test render, not on a user's pod.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Container, Volume};
use minijinja::Environment;

use crate::config::{PROXY_CONTAINER, REDIRECT_INIT_CONTAINER, VALIDATION_INIT_CONTAINER};
use serde::{Deserialize, Serialize};

/// Name of the template file, embedded or in the `--templates` directory.
pub const SIDECAR_TEMPLATE: &str = "sidecar.yaml";

const EMBEDDED_SIDECAR: &str = include_str!("../../templates/sidecar.yaml");

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read template {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("template {name} does not compile: {message}")]
    Compile { name: String, message: String },
    #[error("template {name} failed to render: {message}")]
    Render { name: String, message: String },
    #[error("template {name} rendered invalid sidecar pieces: {message}")]
    Output { name: String, message: String },
}

/// What a render produces.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarParts {
    /// The redirect (or, in CNI mode, validation) init container.
    pub init_container: Option<Container>,
    pub proxy: Container,
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

pub struct Templates {
    env: Environment<'static>,
    source: String,
    parsed: Mutex<HashMap<String, Arc<SidecarParts>>>,
    /// Names of containers and volumes these templates have produced: what re-injection may
    /// remove from a pod (see `is_ours`).
    produced: Mutex<BTreeSet<String>>,
}

/// Names the injector owns whatever the template says: its own, and those of Istio's injector
/// (a pod injected by Istio can be re-injected by Trellis). Either way only what the pod's
/// status annotation lists is removed.
const WELL_KNOWN_NAMES: [&str; 19] = [
    PROXY_CONTAINER,
    REDIRECT_INIT_CONTAINER,
    VALIDATION_INIT_CONTAINER,
    "istio-init",
    "istio-validation",
    "enable-core-dump",
    "workload-socket",
    "credential-socket",
    "workload-certs",
    "istio-envoy",
    "istio-data",
    "istio-podinfo",
    "istio-token",
    "istiod-ca-cert",
    "istio-ca-crl",
    "istio-certs",
    "custom-bootstrap-volume",
    "lightstep-certs",
    "gke-workload-certificate",
];

/// More distinct names than any template produces; a bound against a template that derives
/// names from pods.
const MAX_PRODUCED_NAMES: usize = 1024;

/// Rendered texts whose parse is kept. Pods of one workload revision render the same text, and
/// parsing YAML costs far more than rendering it; a few hundred distinct workloads starting at
/// once still fit.
const PARSED_CACHE_ENTRIES: usize = 256;

impl Templates {
    /// The templates built into the binary.
    pub fn embedded() -> Result<Self, TemplateError> {
        Self::from_source(EMBEDDED_SIDECAR.to_owned(), "embedded".to_owned())
    }

    /// Templates from a directory holding `sidecar.yaml`.
    pub fn from_dir(dir: &Path) -> Result<Self, TemplateError> {
        let path = dir.join(SIDECAR_TEMPLATE);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| TemplateError::Read { path: path.display().to_string(), source })?;
        Self::from_source(text, path.display().to_string())
    }

    fn from_source(text: String, source: String) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template_owned(SIDECAR_TEMPLATE, text)
            .map_err(|e| TemplateError::Compile { name: source.clone(), message: e.to_string() })?;
        Ok(Templates {
            env,
            source,
            parsed: Mutex::new(HashMap::new()),
            produced: Mutex::new(WELL_KNOWN_NAMES.iter().map(|n| n.to_string()).collect()),
        })
    }

    /// Where the templates came from (`embedded` or a file path), for logs.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn render(&self, values: &impl Serialize) -> Result<SidecarParts, TemplateError> {
        let name = || self.source.clone();
        let template = self
            .env
            .get_template(SIDECAR_TEMPLATE)
            .map_err(|e| TemplateError::Render { name: name(), message: e.to_string() })?;
        let text = template
            .render(minijinja::value::Serde(values))
            .map_err(|e| TemplateError::Render { name: name(), message: render_error(&e) })?;
        if let Some(parts) = self.cached(&text) {
            return Ok(SidecarParts::clone(&parts));
        }
        let parts: SidecarParts = serde_saphyr::from_str(&text)
            .map_err(|e| TemplateError::Output { name: name(), message: e.without_snippet().to_string() })?;
        self.record_names(&parts);
        self.remember(text, &parts);
        Ok(parts)
    }

    /// Whether a container or volume of this name is one the injector adds, and so may be
    /// removed when a pod is injected again. The pod's status annotation is written by whoever
    /// creates the pod; it is not trusted to name anything else.
    pub fn is_ours(&self, name: &str) -> bool {
        self.produced.lock().unwrap_or_else(|e| e.into_inner()).contains(name)
    }

    fn record_names(&self, parts: &SidecarParts) {
        let mut produced = self.produced.lock().unwrap_or_else(|e| e.into_inner());
        let names = parts
            .init_container
            .iter()
            .chain([&parts.proxy])
            .map(|c| &c.name)
            .chain(parts.volumes.iter().map(|v| &v.name));
        for name in names {
            if produced.len() < MAX_PRODUCED_NAMES && !produced.contains(name) {
                produced.insert(name.clone());
            }
        }
    }

    fn cached(&self, text: &str) -> Option<Arc<SidecarParts>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        let map = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        map.get(text).cloned()
    }

    fn remember(&self, text: String, parts: &SidecarParts) {
        let mut map = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= PARSED_CACHE_ENTRIES {
            map.clear();
        }
        map.insert(text, Arc::new(parts.clone()));
    }
}

/// minijinja's error with the template line, which is what a template author needs.
fn render_error(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("line {line}: {e}"),
        None => e.to_string(),
    }
}
