//! What the injector needs to know besides the pod: mesh config, images, and switches that a
//! platform team sets once per cluster.

use trellis_api::mesh::MeshConfig;

use crate::selector::LabelSelector;

/// Images used when the chart or the command line does not name others.
pub const DEFAULT_PROXY_IMAGE: &str = concat!("ghcr.io/trellis-mesh/proxy:", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_PROXY_INIT_IMAGE: &str =
    concat!("ghcr.io/trellis-mesh/proxy-init:", env!("CARGO_PKG_VERSION"));

/// Names of what the injector adds; `istio-proxy` is kept so Istio tooling finds the proxy.
pub const PROXY_CONTAINER: &str = "istio-proxy";
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
