//! Edits of Istio YAML at the document level: the demo changes a few fields of some documents
//! (a WorkloadEntry's address in explicit mode, a VirtualService's weights for the canary) and
//! leaves every other document's text exactly as the user wrote it.

use serde_json::Value;
use trellis_api::load::split_documents;

/// Which document: kind, namespace ("default" when none is written) and name.
pub fn identity(doc: &Value) -> (String, String, String) {
    let text = |pointer: &str| doc.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_owned();
    let namespace = match text("/metadata/namespace") {
        ns if ns.is_empty() => "default".to_owned(),
        ns => ns,
    };
    (text("/kind"), namespace, text("/metadata/name"))
}

/// Applies `edit` to every document of `text`; documents it returns `false` for keep their
/// text. Returns the new text and how many documents changed.
pub fn edit_documents(
    text: &str,
    mut edit: impl FnMut(&mut Value) -> Result<bool, String>,
) -> Result<(String, usize), String> {
    let mut out = Vec::new();
    let mut changed = 0;
    for doc in split_documents(text) {
        let mut value: Value = serde_saphyr::from_str(doc.text)
            .map_err(|e| format!("doc {}: {}", doc.index, e.without_snippet()))?;
        if edit(&mut value)? {
            changed += 1;
            out.push(serde_saphyr::to_string(&value).map_err(|e| format!("doc {}: {e}", doc.index))?);
        } else {
            let mut original = doc.text.to_owned();
            if !original.ends_with('\n') {
                original.push('\n');
            }
            out.push(original);
        }
    }
    Ok((out.join("---\n"), changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_edited_documents_change() {
        let text = "# kept as written\nkind: A\nmetadata: {name: a}\n---\nkind: B\nmetadata: {name: b, namespace: x}\nspec: {n: 1}\n";
        let (out, changed) = edit_documents(text, |doc| {
            if identity(doc) == ("B".into(), "x".into(), "b".into()) {
                doc["spec"]["n"] = 2.into();
                return Ok(true);
            }
            Ok(false)
        })
        .unwrap();
        assert_eq!(changed, 1);
        assert!(out.starts_with("# kept as written\nkind: A\nmetadata: {name: a}\n---\n"), "{out}");
        let docs: Vec<Value> =
            split_documents(&out).iter().map(|d| serde_saphyr::from_str(d.text).unwrap()).collect();
        assert_eq!(docs[1]["spec"]["n"], 2);
        assert_eq!(identity(&docs[0]), ("A".into(), "default".into(), "a".into()));
    }

    #[test]
    fn unreadable_documents_are_named() {
        let err = edit_documents("a: 1\n---\n: : [\n", |_| Ok(false)).unwrap_err();
        assert!(err.starts_with("doc 2: "), "{err}");
    }
}
