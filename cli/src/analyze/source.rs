//! Reading files (or standard input) into the model: the Istio kinds through the loader that
//! `trellis validate` uses, the Kubernetes kinds the checks need (Services, Pods and their
//! controllers) loosely. A document that is not YAML is an input error (the analysis would be
//! of part of the input); an Istio document the schema refuses is a finding (IST0106), and the
//! checks go on without it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use trellis_api::load::{load_str, split_documents};
use trellis_api::resource::UnreadKind;

use super::finding::{Finding, SCHEMA_VALIDATION_ERROR};
use super::model::{Mesh, Origin, Subject};

/// The files that `paths` name: directories searched (recursively, in a stable order) for
/// .yaml, .yml and .json files; `-` is standard input. Problems are returned as messages.
pub fn expand(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<String>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" || !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut found = Vec::new();
        if let Err(e) = walk(path, &mut found) {
            errors.push(format!("{}: {e}", path.display()));
        } else if found.is_empty() {
            errors.push(format!("{}: no .yaml, .yml or .json files found", path.display()));
        }
        found.sort();
        files.extend(found);
    }
    (files, errors)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json") {
            found.push(path);
        }
    }
    Ok(())
}

/// Adds the documents of `text` (read from `file`, or from the cluster when `file` is `None`)
/// to the model. Schema problems become findings; documents that cannot be read at all are
/// returned as messages naming the file, the document and the line.
pub fn add_text(mesh: &mut Mesh, text: &str, file: Option<&str>, findings: &mut Vec<Finding>) -> Vec<String> {
    let documents = split_documents(text);
    let mut loose: BTreeMap<usize, Option<Value>> = BTreeMap::new();
    let mut errors = Vec::new();
    for loaded in load_str(text) {
        let origin = file.map(|f| Origin { file: f.to_owned(), doc: loaded.index, item: loaded.item });
        match (loaded.outcome, loaded.id, loaded.unread) {
            (Ok(document), _, _) => mesh.add_resource(document.resource, origin),
            (Err(_), Some(_), Some(UnreadKind::NotIstio)) => {
                let value = loose.entry(loaded.index).or_insert_with(|| {
                    documents.get(loaded.index - 1).and_then(|d| serde_saphyr::from_str::<Value>(d.text).ok())
                });
                let value = match (value.as_ref(), loaded.item) {
                    (Some(v), Some(item)) => v["items"].get(item.wrapping_sub(1)),
                    (v, None) => v,
                    (None, _) => None,
                };
                if let Some(value) = value {
                    mesh.add_kube_object(value, origin);
                }
            }
            (Err(_), Some(_), Some(UnreadKind::IstioIgnored)) => {}
            (Err(e), Some(id), None) => {
                let subject = Subject {
                    kind: id.kind.clone(),
                    namespace: id.namespace.clone(),
                    name: id.name.clone(),
                    origin,
                };
                findings.push(Finding::new(
                    SCHEMA_VALIDATION_ERROR,
                    &subject,
                    format!("not read: {e}"),
                    "correct it (`trellis validate` explains); the checks went on without it",
                ));
            }
            (Err(e), None, _) => {
                let place = file.unwrap_or("the cluster");
                errors.push(format!("{place}: doc {}: {e}", loaded.index));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_sorted_into_the_model() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a}, spec: {selector: {app: a}}}\n- {apiVersion: v1, kind: Pod, metadata: {name: a-1, labels: {app: a}}, spec: {containers: [{name: app}]}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec: {host: a, subsets: [{name: v1, labels: {version: v1}}]}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad}\nspec: {hosts: [a], http: [{route: [{destination: {host: a}, weight: ten}]}]}\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: w}\n";
        let mut mesh = Mesh::new("istio-system");
        let mut findings = Vec::new();
        let errors = add_text(&mut mesh, text, Some("in.yaml"), &mut findings);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((mesh.services.len(), mesh.workloads.len(), mesh.destination_rules.len()), (1, 1, 1));
        assert_eq!(
            mesh.workloads[0].subject.origin,
            Some(Origin { file: "in.yaml".into(), doc: 1, item: Some(2) })
        );
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].code, "IST0106");
        assert!(findings[0].message.contains("weight"), "{}", findings[0].message);
    }

    #[test]
    fn unreadable_documents_name_the_document_and_line() {
        let mut mesh = Mesh::new("istio-system");
        let mut findings = Vec::new();
        let errors = add_text(&mut mesh, "a: 1\n---\nkind: [1, 2\n", Some("x.yaml"), &mut findings);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("x.yaml: doc 2: "), "{errors:?}");
        assert!(errors[0].contains("line 3"), "{errors:?}");
        assert_eq!(findings.len(), 1, "a mapping without apiVersion is a schema problem: {findings:?}");
    }

    #[test]
    fn hostile_documents_are_passed_over_or_named() {
        let text = "apiVersion: v1\nkind: List\nitems: 5\n---\napiVersion: v1\nkind: List\nitems: [x, 7, {kind: Service}]\n---\napiVersion: v1\nkind: Service\nmetadata: [1]\nspec: [1, 2]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: 3}\nspec: {containers: x, hostNetwork: yes}\n---\n&a [*a]\n";
        let mut mesh = Mesh::new("istio-system");
        let mut findings = Vec::new();
        let errors = add_text(&mut mesh, text, Some("h.yaml"), &mut findings);
        // The List without items and the alias loop cannot be read; the rest is read loosely.
        assert!(errors.iter().all(|e| e.starts_with("h.yaml: doc ")), "{errors:?}");
        assert!(mesh.workloads.iter().all(|w| w.spec.containers.is_empty()));
        assert!(mesh.services.iter().all(|s| s.spec.ports.is_empty() && s.name.is_empty()));
    }
}
