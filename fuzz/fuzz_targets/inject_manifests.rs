//! Manifest streams given to `trellis inject` (`trellis_injector::manual::inject_manifests`):
//! multi-document YAML or JSON of Pods, Deployments, CronJobs and anything else.
//!
//! Properties: nothing panics; injecting the output again changes nothing (idempotence, which
//! is also what makes re-running `trellis inject` on its own output safe).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use trellis_injector::config::InjectorConfig;
use trellis_injector::manual::inject_manifests;
use trellis_injector::template::Templates;

fn templates() -> &'static Templates {
    static TEMPLATES: OnceLock<Templates> = OnceLock::new();
    TEMPLATES.get_or_init(|| Templates::embedded().expect("the embedded templates load"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = InjectorConfig::default();
    let Ok(once) = inject_manifests(text, &config, templates()) else { return };
    let twice = inject_manifests(&once, &config, templates())
        .unwrap_or_else(|e| panic!("the output does not inject again: {e}\n{once}"));
    assert_eq!(twice, once, "injecting the output again changed it");
});
