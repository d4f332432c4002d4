//! AdmissionReview bodies, as the API server POSTs them to the injector's `/inject`
//! (`trellis_injector::admission::review`).
//!
//! Properties: nothing panics; an answer always carries the request's uid; when the pod is
//! injected, the JSONPatch applied to the pod as submitted gives exactly the pod `inject` makes.
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use trellis_injector::admission::{Outcome, review};
use trellis_injector::config::InjectorConfig;
use trellis_injector::inject::inject;
use trellis_injector::template::Templates;

fn templates() -> &'static Templates {
    static TEMPLATES: OnceLock<Templates> = OnceLock::new();
    TEMPLATES.get_or_init(|| Templates::embedded().expect("the embedded templates load"))
}

fuzz_target!(|data: &[u8]| {
    // Both proxy layouts: a native sidecar, and a plain container (CNI mode, no init container).
    let config = if data.len() % 2 == 0 {
        InjectorConfig::default()
    } else {
        InjectorConfig { native_sidecars: false, cni_mode: true, ..InjectorConfig::default() }
    };
    let Ok((body, outcome)) = review(data, &config, templates()) else { return };
    let answer: Value = serde_json::from_slice(&body).expect("the answer is JSON");
    // Not always JSON: serde skips fields no type knows without checking their UTF-8, and so
    // answers a body with bad bytes in an unknown field (harmless; the API server sends JSON).
    let Ok(request) = serde_json::from_slice::<Value>(data) else { return };
    assert_eq!(answer["response"]["uid"], request["request"]["uid"]);
    if outcome != Outcome::Injected {
        return;
    }
    // What the API server holds: the pod as its model reads it.
    let pod: Pod =
        serde_json::from_value(request["request"]["object"].clone()).expect("an injected pod is a pod");
    if has_duplicate_names(&pod) {
        // The API server refuses such a pod whatever the patch; names are how the patch aims.
        return;
    }
    let namespace = request["request"]["namespace"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    let injected = inject(&pod, &namespace, None, &config, templates()).expect("review injected it");
    let patch: ByteString =
        serde_json::from_value(answer["response"]["patch"].clone()).expect("a base64 patch");
    let patch: json_patch::Patch = serde_json::from_slice(&patch.0).expect("a JSONPatch");
    let mut patched = serde_json::to_value(&pod).unwrap();
    json_patch::patch(&mut patched, &patch)
        .unwrap_or_else(|e| panic!("the patch does not apply: {e}\n{patch:?}"));
    let patched: Pod = serde_json::from_value(patched).expect("the patched pod is a pod");
    assert_eq!(patched, injected, "the patch does not make the injected pod");
});

fn has_duplicate_names(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let mut containers = HashSet::new();
    let mut volumes = HashSet::new();
    let all = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    !all.map(|c| c.name.as_str()).all(|n| containers.insert(n))
        || !spec.volumes.iter().flatten().map(|v| v.name.as_str()).all(|n| volumes.insert(n))
}
