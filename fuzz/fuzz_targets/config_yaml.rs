//! Istio config YAML: what `trellis validate` and trellisd's file source read
//! (`trellis_api::check::check_text`, over `load::load_str` and `split_documents`).
//!
//! Properties: nothing panics; every document the checker accepts, written back out as JSON and
//! read again, is accepted again as the same resource.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_api::check::{UnknownFields, check_text};
use trellis_api::load::split_documents;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let docs = split_documents(text);
    for (i, doc) in docs.iter().enumerate() {
        assert_eq!(doc.index, i + 1);
    }
    let strict = check_text(text, UnknownFields::Reject);
    let lenient = check_text(text, UnknownFields::Warn);
    assert!(strict.accepted.len() <= lenient.accepted.len());
    for problem in &lenient.problems {
        let _ = problem.to_string();
    }
    for document in &lenient.accepted {
        let json = serde_json::to_string(&document.to_json()).expect("a resource serializes");
        let again = check_text(&json, UnknownFields::Reject);
        assert_eq!(
            again.accepted.len(),
            1,
            "{json}\nwas accepted, but not when written back: {:?}",
            again.problems
        );
        assert_eq!(again.accepted[0].resource, document.resource, "{json}");
    }
});
