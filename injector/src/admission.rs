//! AdmissionReview in, AdmissionReview out. Pure: the server measures and counts around it.
//!
//! Client mistakes (not JSON, not an AdmissionReview, no request) are `BadRequest` and become
//! 400s; everything about the pod itself is answered inside a well-formed review: allowed with
//! a patch, allowed unchanged, or denied with a message naming the problem.

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::config::InjectorConfig;
use crate::decision::{InjectDecision, NamespaceInjection, SkipReason, decide};
use crate::inject::inject;
use crate::patch::pod_patch;
use crate::template::Templates;

const SUPPORTED_VERSIONS: [&str; 2] = ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(SkipReason),
    Denied,
    /// Not a pod creation: allowed without looking further.
    NotForUs,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Answers one AdmissionReview body. The response has the request's `uid` and `apiVersion`.
pub fn review(
    body: &[u8],
    config: &InjectorConfig,
    templates: &Templates,
) -> Result<(Vec<u8>, Outcome), BadRequest> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| BadRequest(format!("malformed AdmissionReview: {e}")))?;
    if !SUPPORTED_VERSIONS.contains(&review.types.api_version.as_str())
        || review.types.kind != "AdmissionReview"
    {
        return Err(BadRequest(format!(
            "expected kind AdmissionReview in {}, got {:?} in {:?}",
            SUPPORTED_VERSIONS.join(" or "),
            review.types.kind,
            review.types.api_version
        )));
    }
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| BadRequest("AdmissionReview has no request".to_owned()))?;
    let (response, outcome) = answer(&request, config, templates)?;
    let body = serde_json::to_vec(&response.into_review())
        .map_err(|e| BadRequest(format!("cannot encode the response: {e}")))?;
    Ok((body, outcome))
}

fn answer(
    request: &AdmissionRequest<DynamicObject>,
    config: &InjectorConfig,
    templates: &Templates,
) -> Result<(AdmissionResponse, Outcome), BadRequest> {
    let allowed = AdmissionResponse::from(request);
    let is_pod =
        request.kind.group.is_empty() && request.kind.kind == "Pod" && request.sub_resource.is_none();
    if !is_pod || request.operation != Operation::Create {
        return Ok((allowed, Outcome::NotForUs));
    }
    let object = request.object.as_ref().ok_or_else(|| BadRequest("request.object is missing".to_owned()))?;
    let pod: Pod = serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .map_err(|e| BadRequest(format!("request.object is not a valid Pod: {e}")))?;
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    // The webhook's selectors already chose this pod by its namespace label or its own label.
    match decide(&pod, &namespace, NamespaceInjection::Enabled, config) {
        InjectDecision::Skip(reason) => Ok((allowed, Outcome::Skipped(reason))),
        InjectDecision::Inject => match inject(&pod, &namespace, None, config, templates) {
            Ok(injected) => {
                let patch = pod_patch(&pod, &injected);
                let response = allowed
                    .with_patch(patch)
                    .map_err(|e| BadRequest(format!("cannot encode the patch: {e}")))?;
                Ok((response, Outcome::Injected))
            }
            Err(e) => Ok((allowed.deny(format!("trellis sidecar injection: {e}")), Outcome::Denied)),
        },
    }
}
