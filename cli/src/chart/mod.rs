//! The Helm chart (charts/trellis), rendered in-process: the objects `trellis install` applies
//! and `trellis install --dry-run` prints are the ones `helm install` would create, from the same
//! templates and the same values.
//!
//! - The chart's files are embedded in the binary when it is built (build.rs), so an installed
//!   `trellis` needs no checkout.
//! - The templates are Go text/template, executed by the `gotmpl` crate (a port of Go's
//!   text/template); the Sprig and Helm functions the chart uses are implemented on top of it
//!   with Go's semantics (`funcs`, `engine`, `yaml`).
//! - Values are Helm's: the chart's values.yaml under the user's values — each `-f` file
//!   deep-merged in order, then each `--set` — maps merged key by key, lists replaced, a `null`
//!   deleting a default.
//! - Objects come out in Helm's order: the CRDs of crds/ first (Helm installs them before
//!   rendering), then the templates' objects sorted by kind as Helm installs them.
//!
//! The test cli/tests/chart_render.rs renders the chart with the values users change most and
//! parses every object strictly as its Kubernetes type; scripts/chart-crosscheck.sh compares this
//! renderer with one built on Go's own text/template, Sprig and go-yaml.

mod engine;
mod funcs;
pub mod order;
mod values;
mod yaml;

use std::path::PathBuf;
use std::sync::Arc;

use gotmpl::Value;

use funcs::Map;

/// What to render: Helm's release name and namespace, `-f` files and `--set` arguments.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    pub release_name: String,
    pub namespace: String,
    /// Values files (`-f`), merged in order: a later file wins.
    pub value_files: Vec<PathBuf>,
    /// `--set` arguments (`a.b=c`, `a=1,b=2`, `list={x,y}`), applied in order after the files.
    pub set: Vec<String>,
    /// Also return the CustomResourceDefinitions of crds/ (first, as Helm installs them).
    pub include_crds: bool,
}

/// One rendered object.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The chart file it comes from, e.g. "templates/trellisd.yaml" or "crds/istio-crds.yaml".
    pub source: String,
    pub object: serde_json::Value,
}

/// Why the chart could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// A `-f` file or `--set` argument is malformed.
    #[error("{origin}: {message}")]
    Value { origin: String, message: String },
    /// The release name or namespace is not one Kubernetes (or Helm) accepts.
    #[error("release {field} {value:?}: {message}")]
    Release { field: &'static str, value: String, message: String },
    /// A template refused the values (a `fail` in the chart, or a value of the wrong type).
    /// `origin` names the `--set` or `-f` that gave the value, when the message names a value
    /// one of them set.
    #[error("{}{template}: {message}", origin.as_ref().map(|o| format!("{o}: ")).unwrap_or_default())]
    Template { template: String, origin: Option<String>, message: String },
    /// A template rendered something that is not a Kubernetes object.
    #[error("{template}: document {document}: {message}")]
    Output { template: String, document: usize, message: String },
    /// The chart built into this binary is broken: a bug in Trellis, not in the values.
    #[error("the chart built into trellis is broken: {path}: {message}")]
    Chart { path: String, message: String },
}

/// The chart's files as embedded at build time: (path in the chart, text).
static FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/chart_files.rs"));

/// Renders the chart: the objects `helm install` would create, in the order it creates them.
pub fn render(options: &RenderOptions) -> Result<Vec<Manifest>, ChartError> {
    let chart = Chart::embedded()?;
    let rendered = render_templates(&chart, options)?;

    let mut manifests = Vec::new();
    if options.include_crds {
        for (path, text) in chart.files.iter().filter(|(p, _)| p.starts_with("crds/") && is_manifest_file(p))
        {
            for (kind, manifest) in parse_documents(path, text)? {
                if kind != "CustomResourceDefinition" {
                    return Err(ChartError::Chart {
                        path: path.to_string(),
                        message: format!("crds/ holds a {kind}: only CustomResourceDefinitions belong there"),
                    });
                }
                manifests.push(manifest);
            }
        }
    }
    let mut templated = Vec::new();
    for (source, text) in &rendered {
        // NOTES.txt is what `helm install` prints afterwards, not an object.
        if source.ends_with("NOTES.txt") {
            continue;
        }
        templated.extend(parse_documents(source, text)?);
    }
    order::sort_by_kind(&mut templated);
    manifests.extend(templated.into_iter().map(|(_, m)| m));
    Ok(manifests)
}

/// Each template's output before it is read as objects, by file ("templates/NOTES.txt"
/// included), in file order: what the cross-check with Go's text/template compares.
#[allow(dead_code)] // used by cli/tests/chart_render.rs
pub fn render_texts(options: &RenderOptions) -> Result<Vec<(String, String)>, ChartError> {
    render_templates(&Chart::embedded()?, options)
}

fn render_templates(chart: &Chart, options: &RenderOptions) -> Result<Vec<(String, String)>, ChartError> {
    validate_release(options)?;
    let user = values::user_values(&options.value_files, &options.set)
        .map_err(|(origin, message)| ChartError::Value { origin, message })?;
    let merged = values::coalesce(user.values.clone(), &chart.values);

    let mut top = Map::new();
    top.insert("Values".into(), Value::Map(Arc::new(merged)));
    top.insert("Release".into(), release(options));
    top.insert("Chart".into(), chart.metadata.clone());
    top.insert("Capabilities".into(), capabilities());

    let prefix = format!("{}/", chart.name);
    let templates: Vec<(String, &str)> = chart
        .files
        .iter()
        .filter(|(path, _)| path.starts_with("templates/"))
        .map(|(path, text)| (format!("{prefix}{path}"), *text))
        .collect();
    let rendered = engine::render(&templates, &format!("{prefix}templates"), &top).map_err(|e| {
        let template = e.template.strip_prefix(&prefix).unwrap_or(&e.template).to_owned();
        if e.broken {
            ChartError::Chart { path: template, message: e.message }
        } else {
            ChartError::Template {
                origin: attribute(&e.message, &user.origins),
                template,
                message: e.message,
            }
        }
    })?;
    Ok(rendered
        .into_iter()
        .map(|(name, text)| (name.strip_prefix(&prefix).unwrap_or(&name).to_owned(), text))
        .collect())
}

fn is_manifest_file(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml") || path.ends_with(".json")
}

/// The chart as embedded: its name, `.Chart`, its default values and its files.
struct Chart {
    name: String,
    metadata: Value,
    values: Map,
    files: &'static [(&'static str, &'static str)],
}

impl Chart {
    fn embedded() -> Result<Chart, ChartError> {
        let file = |path: &str| {
            FILES
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, text)| *text)
                .ok_or_else(|| ChartError::Chart { path: path.to_owned(), message: "missing".to_owned() })
        };
        let broken = |path: &str, message: String| ChartError::Chart { path: path.to_owned(), message };
        let chart_yaml: serde_json::Value =
            serde_saphyr::from_str(file("Chart.yaml")?).map_err(|e| broken("Chart.yaml", e.to_string()))?;
        let name = chart_yaml
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| broken("Chart.yaml", "no name".to_owned()))?
            .to_owned();
        let values = values::parse_values(file("values.yaml")?).map_err(|e| broken("values.yaml", e))?;
        Ok(Chart { name, metadata: chart_metadata(&chart_yaml), values, files: FILES })
    }
}

/// `.Chart`: Chart.yaml's fields under the names of Helm's Go struct (`Name`, `AppVersion`,
/// `APIVersion`, ...). Its strings stay strings: Helm reads Chart.yaml into typed fields.
fn chart_metadata(chart_yaml: &serde_json::Value) -> Value {
    let mut m = Map::new();
    if let Some(fields) = chart_yaml.as_object() {
        for (key, value) in fields {
            let name = match key.as_str() {
                "apiVersion" => "APIVersion".to_owned(),
                other => {
                    let mut chars = other.chars();
                    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
                }
            };
            let value = match value {
                serde_json::Value::Number(n) => Value::String(n.to_string().into()),
                other => values::from_yaml_value(other),
            };
            m.insert(name.into(), value);
        }
    }
    Value::Map(Arc::new(m))
}

fn release(options: &RenderOptions) -> Value {
    let mut m = Map::new();
    m.insert("Name".into(), Value::String(options.release_name.as_str().into()));
    m.insert("Namespace".into(), Value::String(options.namespace.as_str().into()));
    m.insert("Service".into(), Value::String("Helm".into()));
    m.insert("IsInstall".into(), Value::Bool(true));
    m.insert("IsUpgrade".into(), Value::Bool(false));
    m.insert("Revision".into(), Value::Int(1));
    Value::Map(Arc::new(m))
}

/// `.Capabilities`, as `helm template` gives it without a cluster (the Kubernetes version this
/// binary's API types are for).
fn capabilities() -> Value {
    let mut kube = Map::new();
    kube.insert("Version".into(), Value::String("v1.33.0".into()));
    kube.insert("Major".into(), Value::String("1".into()));
    kube.insert("Minor".into(), Value::String("33".into()));
    kube.insert("GitVersion".into(), Value::String("v1.33.0".into()));
    let mut m = Map::new();
    m.insert("KubeVersion".into(), Value::Map(Arc::new(kube)));
    Value::Map(Arc::new(m))
}

/// Helm's rules: a release name is a DNS subdomain of at most 53 characters (room for the
/// suffixes charts add); a namespace a DNS label.
fn validate_release(options: &RenderOptions) -> Result<(), ChartError> {
    let label = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    let name = &options.release_name;
    if name.len() > 53 || !name.split('.').all(label) {
        return Err(ChartError::Release {
            field: "name",
            value: name.clone(),
            message: "must be at most 53 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
                .to_owned(),
        });
    }
    let namespace = &options.namespace;
    if namespace.len() > 63 || !label(namespace) {
        return Err(ChartError::Release {
            field: "namespace",
            value: namespace.clone(),
            message: "must be at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
                .to_owned(),
        });
    }
    Ok(())
}

/// The `--set` or `-f` that gave the value a template's message names: the origin (the last one
/// wins, as in the merge) of the longest value path that appears in the message as a whole word.
fn attribute(message: &str, origins: &[values::Origin]) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for origin in origins.iter().rev() {
        for path in &origin.paths {
            if best.is_some_and(|(len, _)| len >= path.len()) {
                continue;
            }
            if contains_word(message, path) {
                best = Some((path.len(), &origin.label));
            }
        }
    }
    best.map(|(_, label)| label.to_owned())
}

fn contains_word(haystack: &str, word: &str) -> bool {
    let continues = |c: char| c.is_alphanumeric() || c == '_' || c == '[';
    haystack.match_indices(word).any(|(i, _)| {
        let before = haystack[..i].chars().next_back();
        let mut after = haystack[i + word.len()..].chars();
        let clear_before = !before.is_some_and(|c| continues(c) || c == '.');
        let clear_after = match after.next() {
            None => true,
            // A full stop ends the word; a dot followed by a name is a deeper key.
            Some('.') => !after.next().is_some_and(continues),
            Some(c) => !continues(c),
        };
        clear_before && clear_after
    })
}

/// Splits rendered text into YAML documents as Helm does (on `---` at the start of a line) and
/// reads each as a Kubernetes object: `(kind, manifest)`. Empty documents (and documents of
/// nothing but comments) are dropped.
fn parse_documents(source: &str, text: &str) -> Result<Vec<(String, Manifest)>, ChartError> {
    let mut out = Vec::new();
    for (index, doc) in split_documents(text).into_iter().enumerate() {
        let document = index + 1;
        let error = |message: String| ChartError::Output { template: source.to_owned(), document, message };
        let object: serde_json::Value =
            serde_saphyr::from_str(doc).map_err(|e| error(format!("not valid YAML: {e}")))?;
        if object.is_null() {
            continue;
        }
        let Some(fields) = object.as_object() else {
            return Err(error(
                "not a Kubernetes object (a YAML mapping with apiVersion and kind)".to_owned(),
            ));
        };
        let kind = fields.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_owned();
        let has_api_version =
            fields.get("apiVersion").and_then(|v| v.as_str()).is_some_and(|v| !v.is_empty());
        if kind.is_empty() || !has_api_version {
            return Err(error("an object needs apiVersion and kind".to_owned()));
        }
        out.push((kind, Manifest { source: source.to_owned(), object }));
    }
    Ok(out)
}

/// Helm's SplitManifests: separators are `---` at the start of the text or of a line (with the
/// whitespace around them); what is left, trimmed, is a document unless empty.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let text = text.trim();
    let mut start = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("---") {
        let at = search + found;
        let line_start = at == 0 || text[..at].ends_with('\n');
        if !line_start {
            search = at + 3;
            continue;
        }
        docs.push(text[start..at].trim());
        // The separator swallows the whitespace after it.
        let rest = &text[at + 3..];
        start = at + 3 + (rest.len() - rest.trim_start().len());
        search = start;
    }
    docs.push(text[start..].trim());
    docs.into_iter().filter(|d| !d.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn options() -> RenderOptions {
        RenderOptions {
            release_name: "trellis".into(),
            namespace: "trellis-system".into(),
            ..Default::default()
        }
    }

    fn render_with(set: &[&str]) -> Result<Vec<Manifest>, ChartError> {
        render(&RenderOptions { set: set.iter().map(|s| s.to_string()).collect(), ..options() })
    }

    #[test]
    fn splits_documents_as_helm() {
        assert_eq!(split_documents("a: 1\n---\nb: 2\n---   \n\n---\nc: 3---\n"), ["a: 1", "b: 2", "c: 3---"]);
        assert_eq!(split_documents("---\na: 1"), ["a: 1"]);
        assert_eq!(split_documents("  \n"), Vec::<&str>::new());
        assert_eq!(
            split_documents("a: \"x---y\"\n# c\n--- # next\nb: 1"),
            ["a: \"x---y\"\n# c", "# next\nb: 1"]
        );
    }

    #[test]
    fn renders_every_template_in_helm_order() {
        let manifests = render(&RenderOptions { include_crds: true, ..options() }).unwrap();
        let kinds: Vec<&str> = manifests.iter().map(|m| m.object["kind"].as_str().unwrap()).collect();
        let first_other = kinds.iter().position(|k| *k != "CustomResourceDefinition").unwrap();
        assert!(first_other > 0 && kinds[first_other..].iter().all(|k| *k != "CustomResourceDefinition"));
        assert_eq!(kinds.last(), Some(&"MutatingWebhookConfiguration"));
        assert!(manifests[first_other].source.starts_with("templates/"));
        assert_eq!(kinds[first_other], "PodDisruptionBudget");
    }

    #[test]
    fn a_malformed_set_names_the_argument() {
        let e = render_with(&["injector.replicaCount"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--set injector.replicaCount: key \"injector.replicaCount\" has no value (expected key=value)"
        );
    }

    #[test]
    fn a_rejected_value_names_its_set_argument() {
        let e = render_with(&["injector.replicaCount=abc"]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("--set injector.replicaCount=abc: templates/mutatingwebhook.yaml: "),
            "{text}"
        );
        assert!(text.contains("injector.replicaCount must be"), "{text}");
    }

    #[test]
    fn a_chart_fail_reaches_the_user() {
        let e = render_with(&["injector.failurePolicy=Sometimes"]).unwrap_err();
        let ChartError::Template { template, origin, message } = &e else { panic!("{e}") };
        assert_eq!(template, "templates/mutatingwebhook.yaml");
        assert_eq!(origin.as_deref(), Some("--set injector.failurePolicy=Sometimes"));
        assert!(
            message.contains("injector.failurePolicy must be \"Fail\" or \"Ignore\", got Sometimes"),
            "{message}"
        );
    }

    #[test]
    fn a_values_file_that_is_not_a_map_is_refused() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"- injector\n- cni\n").unwrap();
        let e =
            render(&RenderOptions { value_files: vec![file.path().to_owned()], ..options() }).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with(&format!("-f {}: ", file.path().display())), "{text}");
        assert!(text.contains("must be a map of values"), "{text}");

        let missing =
            render(&RenderOptions { value_files: vec!["/nonexistent/values.yaml".into()], ..options() });
        assert!(missing.unwrap_err().to_string().starts_with("-f /nonexistent/values.yaml: cannot read it"));
    }

    #[test]
    fn a_rejected_value_from_a_file_names_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"injector:\n  timeoutSeconds: 99\n").unwrap();
        let e =
            render(&RenderOptions { value_files: vec![file.path().to_owned()], ..options() }).unwrap_err();
        let ChartError::Template { origin, message, .. } = &e else { panic!("{e}") };
        assert_eq!(origin.as_deref(), Some(format!("-f {}", file.path().display()).as_str()));
        assert!(message.contains("injector.timeoutSeconds must be between 1 and 30, got 99"), "{message}");
    }

    #[test]
    fn bad_release_names_are_refused() {
        for (name, namespace) in
            [("Trellis", "ns"), ("a_b", "ns"), (&"x".repeat(54) as &str, "ns"), ("ok", "Bad"), ("ok", "")]
        {
            let e = render(&RenderOptions {
                release_name: name.into(),
                namespace: namespace.into(),
                ..options()
            });
            assert!(matches!(e, Err(ChartError::Release { .. })), "{name} {namespace}");
        }
    }

    #[test]
    fn attribution_prefers_the_longest_and_latest_path() {
        let origins = vec![
            values::Origin {
                label: "-f a.yaml".into(),
                paths: vec!["injector".into(), "injector.caBundle".into()],
            },
            values::Origin { label: "--set x".into(), paths: vec!["injector.caBundle".into()] },
            values::Origin { label: "--set y".into(), paths: vec!["cni.enabled".into()] },
        ];
        assert_eq!(attribute("injector.caBundle must be set", &origins).as_deref(), Some("--set x"));
        assert_eq!(attribute("injector.caBundleX must be set", &origins), None);
        assert_eq!(attribute("the injector must", &origins).as_deref(), Some("-f a.yaml"));
        assert_eq!(attribute("nothing here.", &origins), None);
    }
}
