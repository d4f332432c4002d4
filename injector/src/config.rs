//! What the injector needs to know besides the pod: mesh config, images, and switches that a
//! platform team sets once per cluster.

use trellis_api::mesh::MeshConfig;

use crate::selector::LabelSelector;

/// Images used when the chart or the command line does not name others.
pub const DEFAULT_PROXY_IMAGE: &str = concat!("ghcr.io/trellis-mesh/proxy:", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_PROXY_INIT_IMAGE: &str =
    concat!("ghcr.io/trellis-mesh/proxy-init:", env!("CARGO_PKG_VERSION"));

/// Names of what the injector adds.
pub use trellis_api::annotations::names::PROXY_CONTAINER;
pub const REDIRECT_INIT_CONTAINER: &str = "trellis-init";
pub const VALIDATION_INIT_CONTAINER: &str = "trellis-validation";

/// The proxy's user and group: its own traffic is never redirected.
pub const PROXY_UID: i64 = 1337;

#[derive(Clone, Debug)]
pub struct InjectorConfig {
    pub mesh: MeshConfig,
    pub proxy_image: String,
    pub proxy_init_image: String,
    /// Program the redirect with the CNI plugin instead of a privileged init container.
    pub cni_mode: bool,
    /// Run the proxy as a native sidecar (an init container with `restartPolicy: Always`).
    pub native_sidecars: bool,
    /// Pods matching any of these are never injected.
    pub never_inject: Vec<LabelSelector>,
    /// Pods matching any of these are injected even without the pod label (when their namespace
    /// reached the webhook).
    pub always_inject: Vec<LabelSelector>,
    /// Revision recorded in the status annotation.
    pub revision: String,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        InjectorConfig {
            mesh: MeshConfig::default(),
            proxy_image: DEFAULT_PROXY_IMAGE.to_owned(),
            proxy_init_image: DEFAULT_PROXY_INIT_IMAGE.to_owned(),
            cni_mode: false,
            native_sidecars: true,
            never_inject: Vec::new(),
            always_inject: Vec::new(),
            revision: "default".to_owned(),
        }
    }
}

/// The flags that shape injection, shared by `trellis-injector` and `trellis inject`.
#[derive(Clone, Debug, clap::Args)]
pub struct InjectionFlags {
    /// Directory with a sidecar.yaml template replacing the embedded one.
    #[arg(long)]
    pub templates: Option<std::path::PathBuf>,
    /// Mesh config (YAML): trust domain, proxy defaults.
    #[arg(long)]
    pub mesh_config: Option<std::path::PathBuf>,
    /// Leave the redirect to the CNI plugin: no privileged init container.
    #[arg(long)]
    pub cni_mode: bool,
    /// Run the proxy as a native sidecar (Kubernetes 1.29+).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecars: bool,
    #[arg(long, default_value = DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    #[arg(long, default_value = DEFAULT_PROXY_INIT_IMAGE)]
    pub proxy_init_image: String,
    /// Never inject pods matching this label selector (repeatable).
    #[arg(long = "never-inject-selector")]
    pub never_inject: Vec<LabelSelector>,
    /// Inject pods matching this label selector even without the pod label (repeatable).
    #[arg(long = "always-inject-selector")]
    pub always_inject: Vec<LabelSelector>,
}

impl InjectionFlags {
    /// Reads the mesh config and templates the flags name, and checks that injecting a sample
    /// pod works, so a broken setup fails here rather than on a user's pod.
    pub fn load(&self) -> Result<(InjectorConfig, crate::template::Templates), String> {
        let mesh = match &self.mesh_config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let (mesh, unknown) =
                    MeshConfig::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                for field in unknown {
                    tracing::warn!(%field, "unknown mesh config field ignored");
                }
                let problems = mesh.validate();
                if !problems.is_empty() {
                    return Err(format!("{}: {}", path.display(), problems.join("; ")));
                }
                mesh
            }
            None => MeshConfig::default(),
        };
        let templates = match &self.templates {
            Some(dir) => crate::template::Templates::from_dir(dir),
            None => crate::template::Templates::embedded(),
        }
        .map_err(|e| e.to_string())?;
        let config = InjectorConfig {
            mesh,
            proxy_image: self.proxy_image.clone(),
            proxy_init_image: self.proxy_init_image.clone(),
            cni_mode: self.cni_mode,
            native_sidecars: self.native_sidecars,
            never_inject: self.never_inject.clone(),
            always_inject: self.always_inject.clone(),
            ..InjectorConfig::default()
        };
        crate::inject::self_test(&config, &templates)
            .map_err(|e| format!("the injection template does not work: {e}"))?;
        Ok((config, templates))
    }
}
