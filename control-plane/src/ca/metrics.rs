//! The CA's metrics, in trellisd's registry (served on 15014). The CSR counters carry Istio's
//! names (istiod's `citadel_server_*`), so existing dashboards find them; the Prometheus
//! encoding adds `_total` to every counter.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// The file (or Secret) that could not be used.
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    /// `file` or `configmap`.
    pub target: &'static str,
}

#[derive(Clone, Default)]
pub struct CaMetrics {
    pub csrs: Counter,
    pub issued: Counter,
    pub authentication_failures: Counter,
    pub csr_errors: Counter,
    pub sign_errors: Counter,
    /// A reload of CA material or of the token file that was refused (the last good one stays).
    pub reload_errors: Family<SourceLabel, Counter>,
    /// Writing the root certificate where workloads read it failed (retried).
    pub publish_errors: Family<TargetLabel, Counter>,
}

impl CaMetrics {
    pub fn new(registry: &mut Registry) -> CaMetrics {
        let metrics = CaMetrics::default();
        registry.register("citadel_server_csr_count", "CSRs received", metrics.csrs.clone());
        registry.register(
            "citadel_server_success_cert_issuance_count",
            "Certificates issued",
            metrics.issued.clone(),
        );
        registry.register(
            "citadel_server_authentication_failure_count",
            "CSRs refused because the caller could not be authenticated",
            metrics.authentication_failures.clone(),
        );
        registry.register(
            "citadel_server_csr_parsing_err_count",
            "CSRs refused as malformed (the CSR or the requested lifetime)",
            metrics.csr_errors.clone(),
        );
        registry.register(
            "citadel_server_csr_sign_err_count",
            "CSRs that could not be signed",
            metrics.sign_errors.clone(),
        );
        registry.register(
            "trellisd_ca_reload_errors",
            "Reloads of CA material or of the token file refused, by file or Secret",
            metrics.reload_errors.clone(),
        );
        registry.register(
            "trellisd_ca_root_publish_errors",
            "Failed writes of the root certificate, by target",
            metrics.publish_errors.clone(),
        );
        metrics
    }

    pub fn reload_error(&self, source: &str) {
        self.reload_errors.get_or_create(&SourceLabel { source: source.to_owned() }).inc();
    }

    pub fn publish_error(&self, target: &'static str) {
        self.publish_errors.get_or_create(&TargetLabel { target }).inc();
    }
}
