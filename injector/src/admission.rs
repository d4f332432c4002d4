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

/// Just enough of a review to choose how to read the rest.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    api_version: String,
    kind: String,
    request: Option<EnvelopeRequest>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeRequest {
    kind: kube::core::GroupVersionKind,
    operation: Operation,
    sub_resource: Option<String>,
}

/// Answers one AdmissionReview body. The response has the request's `uid` and `apiVersion`.
pub fn review(
    body: &[u8],
    config: &InjectorConfig,
    templates: &Templates,
) -> Result<(Vec<u8>, Outcome), BadRequest> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| BadRequest(format!("malformed AdmissionReview: {e}")))?;
    if !SUPPORTED_VERSIONS.contains(&envelope.api_version.as_str()) || envelope.kind != "AdmissionReview" {
        return Err(BadRequest(format!(
            "expected kind AdmissionReview in {}, got {:?} in {:?}",
            SUPPORTED_VERSIONS.join(" or "),
            envelope.kind,
            envelope.api_version
        )));
    }
    let request = envelope.request.ok_or_else(|| BadRequest("AdmissionReview has no request".to_owned()))?;
    let pod_creation = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.sub_resource.is_none()
        && request.operation == Operation::Create;
    let response = if pod_creation {
        // Read the object straight into a Pod: one pass over the body.
        let review: AdmissionReview<Pod> = serde_json::from_slice(body)
            .map_err(|e| BadRequest(format!("request.object is not a valid Pod: {e}")))?;
        let request: AdmissionRequest<Pod> =
            review.try_into().map_err(|_| BadRequest("AdmissionReview has no request".to_owned()))?;
        answer_pod(&request, config, templates)?
    } else {
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
            .map_err(|e| BadRequest(format!("malformed AdmissionReview: {e}")))?;
        let request: AdmissionRequest<DynamicObject> =
            review.try_into().map_err(|_| BadRequest("AdmissionReview has no request".to_owned()))?;
        (AdmissionResponse::from(&request), Outcome::NotForUs)
    };
    let (response, outcome) = response;
    let body = serde_json::to_vec(&WireReview::from(&response))
        .map_err(|e| BadRequest(format!("cannot encode the response: {e}")))?;
    Ok((body, outcome))
}

/// The response as it goes on the wire. kube's `AdmissionResponse` serializes the patch as a
/// JSON array of byte values, which the API server accepts; Kubernetes documents (and Istio
/// sends) base64, a third of the size, which matters for an answer the API server waits on.
/// Everything else is taken from kube's response as it is.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<'a> {
    api_version: &'a str,
    kind: &'a str,
    response: WireResponse<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    uid: &'a str,
    allowed: bool,
    status: &'a kube::core::Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<k8s_openapi::ByteString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    audit_annotations: &'a std::collections::HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a Vec<String>>,
}

impl<'a> From<&'a AdmissionResponse> for WireReview<'a> {
    fn from(r: &'a AdmissionResponse) -> Self {
        WireReview {
            api_version: &r.types.api_version,
            kind: &r.types.kind,
            response: WireResponse {
                uid: &r.uid,
                allowed: r.allowed,
                status: &r.result,
                patch: r.patch.clone().map(k8s_openapi::ByteString),
                // `with_patch` is the only way a patch gets set, and it is always a JSONPatch.
                patch_type: r.patch.as_ref().map(|_| "JSONPatch"),
                audit_annotations: &r.audit_annotations,
                warnings: r.warnings.as_ref(),
            },
        }
    }
}

fn answer_pod(
    request: &AdmissionRequest<Pod>,
    config: &InjectorConfig,
    templates: &Templates,
) -> Result<(AdmissionResponse, Outcome), BadRequest> {
    let allowed = AdmissionResponse::from(request);
    let pod = request.object.as_ref().ok_or_else(|| BadRequest("request.object is missing".to_owned()))?;
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    // The webhook's selectors already chose this pod by its namespace label or its own label.
    match decide(pod, &namespace, NamespaceInjection::Enabled, config) {
        InjectDecision::Skip(reason) => Ok((allowed, Outcome::Skipped(reason))),
        InjectDecision::Inject => match inject(pod, &namespace, None, config, templates) {
            Ok(injected) => {
                let patch = pod_patch(pod, &injected);
                let response = allowed
                    .with_patch(patch)
                    .map_err(|e| BadRequest(format!("cannot encode the patch: {e}")))?;
                Ok((response, Outcome::Injected))
            }
            Err(e) => Ok((allowed.deny(format!("trellis sidecar injection: {e}")), Outcome::Denied)),
        },
    }
}
