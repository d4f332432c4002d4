//! Load and validate in one step: what `trellis validate` reports and what a config source uses
//! to decide which documents to accept.

use std::fmt;

use serde::Serialize;

use crate::load::{LoadedDocument, load_str};
use crate::resource::{Document, ResourceId, UnreadKind};
use crate::validate::{Severity, validate};

/// How unknown fields are treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownFields {
    /// Reported as warnings; the document is still accepted (Istio's default leniency).
    #[default]
    Warn,
    /// Reported as errors (`--strict`).
    Reject,
}

/// One problem in one document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// 1-based document number in the text.
    pub doc: usize,
    /// 1-based item number inside a `kind: List` document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
    /// 1-based line in the text, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceId>,
    pub severity: Severity,
    /// Field path (`spec.http[1].route`); empty when the problem is the document as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "doc {}", self.doc)?;
        if let Some(item) = self.item {
            write!(f, " item {item}")?;
        }
        f.write_str(": ")?;
        if let Some(id) = self.resource.as_ref().filter(|id| !id.kind.is_empty()) {
            write!(f, "{id}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)?;
        crate::load::write_position(f, self.line, self.column)
    }
}

/// The outcome of checking a text.
#[derive(Clone, Debug, Default)]
pub struct Checked {
    /// Documents without errors, in order.
    pub accepted: Vec<Document>,
    pub problems: Vec<Problem>,
    /// Number of documents (and List items) read.
    pub documents: usize,
}

impl Checked {
    pub fn errors(&self) -> usize {
        self.problems.iter().filter(|p| p.severity == Severity::Error).count()
    }

    pub fn warnings(&self) -> usize {
        self.problems.len() - self.errors()
    }
}

/// Loads every document of `text`, validates each, and sorts them into accepted documents and
/// problems.
pub fn check_text(text: &str, unknown: UnknownFields) -> Checked {
    let mut checked = Checked::default();
    for loaded in load_str(text) {
        checked.documents += 1;
        check_document(loaded, unknown, &mut checked);
    }
    // Gateway API documents load as another project's kinds (passed over); read them here.
    if text.len() <= crate::load::MAX_INPUT_BYTES && text.contains(crate::gateway_api::GROUP) {
        for doc in crate::load::split_documents(text) {
            if doc.text.contains(crate::gateway_api::GROUP) {
                checked.problems.extend(crate::gateway_api::check_document(
                    doc.index,
                    doc.first_line,
                    doc.text,
                ));
            }
        }
    }
    checked
}

fn check_document(loaded: LoadedDocument, unknown: UnknownFields, out: &mut Checked) {
    let problem = |severity, field: String, message: String, line, column| Problem {
        doc: loaded.index,
        item: loaded.item,
        line,
        column,
        resource: loaded.id.clone(),
        severity,
        field,
        message,
    };
    let document = match loaded.outcome {
        Ok(document) => document,
        Err(_) if loaded.unread == Some(UnreadKind::NotIstio) => return,
        Err(_) if loaded.unread == Some(UnreadKind::IstioIgnored) => {
            let kind = loaded.id.as_ref().map_or("", |id| id.kind.as_str());
            let message = format!(
                "Trellis does not read Istio's {kind} resources: this one is accepted but has no effect"
            );
            out.problems.push(problem(Severity::Warning, "kind".into(), message, None, None));
            return;
        }
        Err(ref e) => {
            let field = e.field.clone().unwrap_or_default();
            out.problems.push(problem(Severity::Error, field, e.message.clone(), e.line, e.column));
            return;
        }
    };
    let mut has_error = false;
    let unknown_severity = match unknown {
        UnknownFields::Warn => Severity::Warning,
        UnknownFields::Reject => Severity::Error,
    };
    for field in &loaded.unknown_fields {
        has_error |= unknown_severity == Severity::Error;
        out.problems.push(problem(unknown_severity, field.clone(), "unknown field".into(), None, None));
    }
    for finding in validate(&document.resource) {
        has_error |= finding.severity == Severity::Error;
        out.problems.push(problem(finding.severity, finding.field, finding.message, None, None));
    }
    if !has_error {
        out.accepted.push(document);
    }
}
