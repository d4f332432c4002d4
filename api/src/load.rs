//! Reads Istio resources from multi-document YAML or JSON text.
//!
//! The text is cut into documents on `---` lines the way kubectl does, so one broken document
//! does not hide the others and every error can say which document and line it is about. Each
//! document is read twice: once loosely, to learn its `apiVersion`, `kind` and name, and once
//! into its typed resource, recording fields that no type knows (errors in strict mode,
//! warnings otherwise).

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::resource::{Document, Kind, Resource, ResourceId, UnreadKind, resolve_kind, unread_kind};

/// Larger inputs are refused outright: a config file of this size is a mistake or an attack.
pub const MAX_INPUT_BYTES: usize = 16 * 1024 * 1024;

/// One document's text and where it sits in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DocumentText<'a> {
    /// 1-based position among the non-empty documents of the file.
    pub index: usize,
    /// 1-based line of the file where the document's text starts.
    pub first_line: usize,
    pub text: &'a str,
}

/// Splits a YAML stream on separator lines: a line starting with `---` followed by nothing but
/// blanks or a comment. Documents holding only blanks and comments are skipped, as kubectl
/// skips them.
pub fn split_documents(text: &str) -> Vec<DocumentText<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (line_no, line) in (1usize..).zip(text.split_inclusive('\n')) {
        if is_separator(line) {
            push_document(&mut docs, &text[start..offset], start_line);
            start = offset + line.len();
            start_line = line_no + 1;
        }
        offset += line.len();
    }
    push_document(&mut docs, &text[start..], start_line);
    docs
}

fn push_document<'a>(docs: &mut Vec<DocumentText<'a>>, chunk: &'a str, first_line: usize) {
    if has_content(chunk) {
        docs.push(DocumentText { index: docs.len() + 1, first_line, text: chunk });
    }
}

fn is_separator(line: &str) -> bool {
    line.strip_prefix("---").is_some_and(|rest| {
        let rest = rest.trim();
        rest.is_empty() || rest.starts_with('#')
    })
}

fn has_content(chunk: &str) -> bool {
    chunk.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "..." && !t.starts_with('%')
    })
}

/// Why a document could not be turned into a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// The field the problem is in, as `spec.http[0].timeout`, when known.
    pub field: Option<String>,
    /// 1-based line in the file, when the parser knows it.
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)?;
        write_position(f, self.line, self.column)
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    /// An error about the input as a whole.
    pub fn whole(message: impl Into<String>) -> Self {
        LoadError { field: None, line: None, column: None, message: message.into() }
    }
}

/// Appends ` (line L, column C)` when the position is known.
pub(crate) fn write_position(
    f: &mut fmt::Formatter<'_>,
    line: Option<u64>,
    column: Option<u64>,
) -> fmt::Result {
    match (line, column) {
        (Some(line), Some(column)) => write!(f, " (line {line}, column {column})"),
        (Some(line), None) => write!(f, " (line {line})"),
        _ => Ok(()),
    }
}

/// The result of reading one document (or one item of a `kind: List`).
#[derive(Clone, Debug)]
pub struct LoadedDocument {
    pub index: usize,
    /// Position inside a `kind: List` document, 1-based.
    pub item: Option<usize>,
    pub first_line: usize,
    /// What the document says it is, as far as that could be read.
    pub id: Option<ResourceId>,
    pub outcome: Result<Document, LoadError>,
    /// Paths of fields no Trellis type knows, e.g. `spec.http[0].rout`.
    pub unknown_fields: Vec<String>,
    /// Set when the document is of a kind Trellis does not read but need not refuse (a
    /// Deployment, a WasmPlugin); `outcome` then says which kind it is.
    pub unread: Option<UnreadKind>,
}

/// Reads every document of a YAML or JSON text.
pub fn load_str(text: &str) -> Vec<LoadedDocument> {
    if text.len() > MAX_INPUT_BYTES {
        return vec![LoadedDocument {
            index: 1,
            item: None,
            first_line: 1,
            id: None,
            outcome: Err(LoadError {
                field: None,
                line: None,
                column: None,
                message: format!("input is {} bytes, at most {MAX_INPUT_BYTES} are read", text.len()),
            }),
            unknown_fields: Vec::new(),
            unread: None,
        }];
    }
    let mut out = Vec::new();
    for doc in split_documents(text) {
        load_document(doc, &mut out);
    }
    out
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { with_snippet: false }
}

fn load_document(doc: DocumentText<'_>, out: &mut Vec<LoadedDocument>) {
    let base = LoadedDocument {
        index: doc.index,
        item: None,
        first_line: doc.first_line,
        id: None,
        outcome: Err(LoadError { field: None, line: None, column: None, message: String::new() }),
        unknown_fields: Vec::new(),
        unread: None,
    };
    let loose: Value = match serde_saphyr::from_str_with_options(doc.text, yaml_options()) {
        Ok(v) => v,
        Err(e) => {
            out.push(LoadedDocument { outcome: Err(yaml_error(&e, None, doc.first_line)), ..base });
            return;
        }
    };
    let Value::Object(map) = &loose else {
        let message =
            format!("a document must be a mapping with apiVersion and kind, found {}", json_type(&loose));
        out.push(LoadedDocument {
            outcome: Err(LoadError { field: None, line: None, column: None, message }),
            ..base
        });
        return;
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind_name = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind_name == "List" && api_version == "v1" {
        load_list(&base, map.get("items"), out);
        return;
    }
    let id = Some(loose_id(&loose));
    let kind = match resolve_kind(api_version, kind_name) {
        Ok(k) => k,
        Err(e) => {
            let field = Some(if api_version.is_empty() { "apiVersion" } else { "kind" }.to_owned());
            let err = LoadError { field, line: None, column: None, message: e.to_string() };
            let unread = unread_kind(api_version, kind_name);
            out.push(LoadedDocument { id, outcome: Err(err), unread, ..base });
            return;
        }
    };
    let mut unknown = Vec::new();
    let outcome = if kind.spec_optional() && map.get("spec").is_none_or(Value::is_null) {
        // Istio reads a security policy without `spec` as one with an empty spec.
        decode_value(kind, &with_empty_spec(&loose), &mut unknown)
    } else {
        decode_yaml(kind, doc, &mut unknown)
    }
    .map(|resource| Document { api_version: api_version.to_owned(), resource });
    out.push(LoadedDocument { id, outcome, unknown_fields: unknown, ..base });
}

/// `kind: List` (what `kubectl get -o yaml` prints): each item is a document of its own.
fn load_list(base: &LoadedDocument, items: Option<&Value>, out: &mut Vec<LoadedDocument>) {
    let Some(Value::Array(items)) = items else {
        let err = LoadError {
            field: Some("items".into()),
            line: None,
            column: None,
            message: "a List needs an items array".into(),
        };
        out.push(LoadedDocument { outcome: Err(err), ..base.clone() });
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let api_version = item.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind_name = item.get("kind").and_then(Value::as_str).unwrap_or_default();
        let mut unknown = Vec::new();
        let outcome = resolve_kind(api_version, kind_name)
            .map_err(|e| LoadError {
                field: Some("kind".into()),
                line: None,
                column: None,
                message: e.to_string(),
            })
            .and_then(|kind| {
                if kind.spec_optional() && item.get("spec").is_none_or(Value::is_null) {
                    decode_value(kind, &with_empty_spec(item), &mut unknown)
                } else {
                    decode_value(kind, item, &mut unknown)
                }
            })
            .map(|resource| Document { api_version: api_version.to_owned(), resource });
        out.push(LoadedDocument {
            item: Some(i + 1),
            id: Some(loose_id(item)),
            outcome,
            unknown_fields: unknown,
            unread: unread_kind(api_version, kind_name),
            ..base.clone()
        });
    }
}

/// The document with `spec: {}` in place of a missing or null one.
pub fn with_empty_spec(value: &Value) -> Value {
    let mut value = value.clone();
    if let Some(map) = value.as_object_mut() {
        map.insert("spec".into(), Value::Object(serde_json::Map::new()));
    }
    value
}

fn loose_id(value: &Value) -> ResourceId {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let meta = value.get("metadata");
    ResourceId {
        kind: text(value.get("kind")).unwrap_or_default(),
        namespace: text(meta.and_then(|m| m.get("namespace"))),
        name: text(meta.and_then(|m| m.get("name"))).unwrap_or_default(),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "an empty document",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// Calls `$typed!(Variant)` for the variant of `$kind`.
macro_rules! dispatch {
    ($kind:expr, $typed:ident) => {
        match $kind {
            Kind::VirtualService => $typed!(VirtualService),
            Kind::DestinationRule => $typed!(DestinationRule),
            Kind::ServiceEntry => $typed!(ServiceEntry),
            Kind::WorkloadEntry => $typed!(WorkloadEntry),
            Kind::Sidecar => $typed!(Sidecar),
            Kind::Gateway => $typed!(Gateway),
            Kind::PeerAuthentication => $typed!(PeerAuthentication),
            Kind::AuthorizationPolicy => $typed!(AuthorizationPolicy),
            Kind::RequestAuthentication => $typed!(RequestAuthentication),
            Kind::EnvoyFilter => $typed!(EnvoyFilter),
            Kind::Telemetry => $typed!(Telemetry),
            Kind::Namespace => $typed!(Namespace),
        }
    };
}

/// Decodes straight from the YAML text, so that type errors carry line numbers.
fn decode_yaml(kind: Kind, doc: DocumentText<'_>, unknown: &mut Vec<String>) -> Result<Resource, LoadError> {
    macro_rules! typed {
        ($variant:ident) => {
            decode_yaml_as(doc, unknown).map(|r| Resource::$variant(Box::new(r)))
        };
    }
    dispatch!(kind, typed)
}

fn decode_value(kind: Kind, value: &Value, unknown: &mut Vec<String>) -> Result<Resource, LoadError> {
    macro_rules! typed {
        ($variant:ident) => {
            decode_value_as(value, unknown).map(|r| Resource::$variant(Box::new(r)))
        };
    }
    dispatch!(kind, typed)
}

fn decode_yaml_as<T: DeserializeOwned>(
    doc: DocumentText<'_>,
    unknown: &mut Vec<String>,
) -> Result<T, LoadError> {
    let mut all = Vec::new();
    let result = decode_yaml_text(doc.text, doc.first_line, &mut all);
    unknown.extend(all.into_iter().filter(|f| is_unknown_resource_field(f)));
    result
}

/// Decodes one YAML (or JSON) document into `T`, returning it with the paths of the fields `T`
/// does not know. For config files that are not Kubernetes resources (mesh config, the
/// `proxy.istio.io/config` annotation).
pub fn decode_single<T: DeserializeOwned>(text: &str) -> Result<(T, Vec<String>), LoadError> {
    let mut unknown = Vec::new();
    decode_yaml_text(text, 1, &mut unknown).map(|value| (value, unknown))
}

fn decode_yaml_text<T: DeserializeOwned>(
    text: &str,
    first_line: usize,
    unknown: &mut Vec<String>,
) -> Result<T, LoadError> {
    let mut failed_at: Option<String> = None;
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(), |de| {
        let mut note = |path: serde_ignored::Path<'_>| unknown.push(field_path(&path));
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut note)).map_err(|e| {
            failed_at = Some(e.path().to_string());
            e.into_inner()
        })
    });
    result.map_err(|e| yaml_error(&e, failed_at, first_line))
}

fn decode_value_as<T: DeserializeOwned>(value: &Value, unknown: &mut Vec<String>) -> Result<T, LoadError> {
    let mut note = |path: serde_ignored::Path<'_>| {
        let field = field_path(&path);
        if is_unknown_resource_field(&field) {
            unknown.push(field);
        }
    };
    serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut note)).map_err(|e| {
        LoadError {
            field: Some(e.path().to_string()),
            line: None,
            column: None,
            message: e.into_inner().to_string(),
        }
    })
}

/// Whether an ignored field is really unknown: the typed structs leave the envelope fields
/// (`apiVersion`, `kind`) to the loader, and `status` belongs to the API server.
fn is_unknown_resource_field(field: &str) -> bool {
    !matches!(field, "apiVersion" | "kind" | "status") && !field.starts_with("status.")
}

/// Writes a path as `spec.http[0].rout`, the way messages name fields.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let p = field_path(parent);
            if p.is_empty() { key.clone() } else { format!("{p}.{key}") }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            field_path(parent)
        }
    }
}

/// Longest message kept from the YAML library.
const MAX_MESSAGE_CHARS: usize = 200;

/// Turns a YAML error into one line: the message, the field, and the position in the whole
/// file (the parser counts from the start of the document).
fn yaml_error(e: &serde_saphyr::Error, field: Option<String>, first_line: usize) -> LoadError {
    let location = e.location().filter(|l| l.line() > 0);
    let mut message = e.without_snippet().to_string();
    if let Some(rest) = message.strip_prefix("error: ") {
        message = rest.to_owned();
    }
    // The parser writes its position at the start or at the end; we report our own.
    if message.starts_with("line ")
        && let Some(pos) = message.find(": ")
    {
        message = message[pos + 2..].to_owned();
    }
    if let Some(pos) = message.rfind(" at line ") {
        message.truncate(pos);
    }
    // Parser messages can quote the input; keep them to one short line.
    message = message.replace(['\n', '\r'], " ");
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push_str("...");
    }
    LoadError {
        // The root (".") or an unnamed map key ("?") names no field.
        field: field.filter(|f| !f.is_empty() && f != "." && !f.starts_with('?')),
        line: location.map(|l| l.line() + first_line as u64 - 1),
        column: location.map(|l| l.column()),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_kubectl() {
        let text = "# header\n---\na: 1\n--- # second\nb: 2\n---\n# only a comment\n---\nc: 3\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 3);
        assert_eq!((docs[0].index, docs[0].first_line, docs[0].text), (1, 3, "a: 1\n"));
        assert_eq!((docs[1].index, docs[1].first_line, docs[1].text), (2, 5, "b: 2\n"));
        assert_eq!((docs[2].index, docs[2].first_line, docs[2].text), (3, 9, "c: 3\n"));
        assert_eq!(
            split_documents("a: '---x'\n---x: 1\n").len(),
            1,
            "--- followed by text is not a separator"
        );
        assert!(split_documents("").is_empty());
        assert!(split_documents("---\n---\n").is_empty());
    }

    #[test]
    fn syntax_errors_carry_the_file_line() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: [1, 2\n";
        let docs = load_str(text);
        assert_eq!(docs.len(), 2);
        assert!(docs[0].outcome.is_ok());
        let err = docs[1].outcome.as_ref().unwrap_err();
        assert_eq!(err.line, Some(6), "{err}");
    }

    #[test]
    fn type_errors_name_the_field_and_line() {
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n      weight: ten\n";
        let docs = load_str(text);
        let err = docs[0].outcome.as_ref().unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.http[0].route[0].weight"), "{err}");
        assert_eq!(err.line, Some(10), "{err}");
        assert_eq!(docs[0].id.as_ref().map(ToString::to_string).as_deref(), Some("VirtualService r"));
    }

    #[test]
    fn unknown_fields_are_listed_with_paths() {
        let text = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: r, namespace: p}\nspec:\n  host: r\n  subsets:\n  - name: v1\n    lables: {a: b}\nstatus: {}\n";
        let docs = load_str(text);
        assert!(docs[0].outcome.is_ok());
        assert_eq!(docs[0].unknown_fields, vec!["spec.subsets[0].lables".to_owned()]);
    }

    #[test]
    fn lists_are_expanded() {
        let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}},
            {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "g"}, "spec": {"servers": 3}}
        ]}"#;
        let docs = load_str(text);
        assert_eq!(docs.len(), 2);
        assert!(docs[0].outcome.is_ok());
        assert_eq!(docs[1].item, Some(2));
        assert_eq!(docs[1].outcome.as_ref().unwrap_err().field.as_deref(), Some("spec.servers"));
    }

    #[test]
    fn non_mapping_documents_are_rejected() {
        let docs = load_str("- a\n- b\n");
        assert_eq!(
            docs[0].outcome.as_ref().unwrap_err().message,
            "a document must be a mapping with apiVersion and kind, found a sequence"
        );
    }
}
