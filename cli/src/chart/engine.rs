//! The template set: every file of templates/ parsed by `gotmpl` (Go's text/template, ported)
//! into one set, as Helm does, with Sprig's functions and Helm's own (`include`, `tpl`,
//! `toYaml`, `fromYaml`, `toJson`, `required`, `fail`), then each file that is not a partial
//! (`_*.tpl`) executed with its own `.Template`.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use gotmpl::parse::{Expr, ListNode, Node, PipeNode};
use gotmpl::{FuncMap, Template, Value};

use super::funcs::{self, Map, error, message, string_arg};
use super::yaml;

/// Nested `include`s allowed (Helm allows 1000 per name; a chart needs a handful, and every
/// level costs stack).
const MAX_INCLUDE_DEPTH: usize = 64;

/// Go's text/template builtins, which `gotmpl` provides.
const BUILTINS: &[&str] = &[
    "and", "or", "not", "len", "index", "slice", "print", "printf", "println", "call", "eq", "ne", "lt",
    "le", "gt", "ge", "html", "js", "urlquery",
];

/// A failure, and the template it happened in.
#[derive(Debug)]
pub(super) struct EngineError {
    pub template: String,
    pub message: String,
    /// The template itself is broken (it does not parse, or calls a function nobody defines),
    /// rather than refusing the values it was given.
    pub broken: bool,
}

/// Renders the templates (`(name, text)`, names as Helm's: `trellis/templates/x.yaml`) with
/// `top` (`.Values`, `.Release`, `.Chart`, `.Capabilities`), each with its `.Template`.
/// Returns each non-partial template's output, in name order.
pub(super) fn render(
    templates: &[(String, &str)],
    base_path: &str,
    top: &Map,
) -> Result<Vec<(String, String)>, EngineError> {
    let slot: Arc<OnceLock<Template>> = Arc::new(OnceLock::new());
    let funcs = functions(Arc::downgrade(&slot));

    let mut set = Template::new("").funcs(funcs.clone());
    for (name, text) in templates {
        let parsed = Template::new(name)
            .funcs(funcs.clone())
            .parse(&keep_text_after_comments(text))
            .map_err(|e| EngineError { template: name.clone(), message: e.to_string(), broken: true })?;
        check_functions(name, &parsed, &funcs)?;
        for defined in parsed.templates() {
            if let Some(tree) = parsed.lookup(defined) {
                set = set.add_parse_tree(defined, tree.clone());
            }
        }
    }
    let set = slot.get_or_init(|| set);

    let mut out = Vec::new();
    for (name, _) in templates {
        let file = name.rsplit('/').next().unwrap_or(name);
        if file.starts_with('_') {
            continue;
        }
        let mut data = top.clone();
        let mut template = Map::new();
        template.insert("Name".into(), Value::String(name.as_str().into()));
        template.insert("BasePath".into(), Value::String(base_path.into()));
        data.insert("Template".into(), Value::Map(Arc::new(template)));
        let text = match set.lookup(name) {
            Some(_) => set
                .execute_template_to_string(name, &Value::Map(Arc::new(data)))
                .map_err(|e| EngineError { template: name.clone(), message: message(&e), broken: false })?,
            // A file with nothing but definitions and comments renders nothing.
            None => String::new(),
        };
        // Helm's engine drops the "<no value>" that Go prints for a missing value.
        out.push((name.clone(), text.replace("<no value>", "")));
    }
    Ok(out)
}

/// gotmpl 0.6 trims the whitespace after a comment that trims only before itself
/// (`{{- /* ... */}}`) as well; Go keeps it. An empty action (`{{""}}`) right after such a
/// comment leaves gotmpl no whitespace to trim, so the output is Go's.
fn keep_text_after_comments(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("{{-") {
        let open = search + found;
        let after_marker = &text[open + 3..];
        search = open + 3;
        // Go's trim marker is "-" and one space; a comment must follow it at once.
        let Some(comment) = after_marker.strip_prefix([' ', '\t', '\r', '\n']) else { continue };
        if !comment.starts_with("/*") {
            continue;
        }
        let Some(end) = comment[2..].find("*/") else { break };
        let close = open + 3 + 1 + 2 + end + 2;
        search = close;
        if text[close..].starts_with("}}") {
            out.push_str(&text[copied..close + 2]);
            out.push_str("{{\"\"}}");
            copied = close + 2;
            search = copied;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Sprig's functions and Helm's. `include` and `tpl` reach the template set through `slot`,
/// filled once every file is parsed (weakly, so that the set does not own itself).
fn functions(slot: Weak<OnceLock<Template>>) -> FuncMap {
    let mut f = funcs::sprig();
    let depth = Arc::new(AtomicUsize::new(0));

    let include_slot = slot.clone();
    f.insert(
        "include".to_owned(),
        Arc::new(move |args: &[Value]| {
            if args.len() != 2 {
                return Err(error(format!("wrong number of args for include: want 2 got {}", args.len())));
            }
            let name = string_arg("include", args, 0)?;
            let slot = include_slot.upgrade().ok_or_else(|| error("include: the template set is gone"))?;
            let set = slot.get().ok_or_else(|| error("include: called before the templates were parsed"))?;
            if depth.fetch_add(1, Ordering::SeqCst) >= MAX_INCLUDE_DEPTH {
                depth.fetch_sub(1, Ordering::SeqCst);
                return Err(error(format!(
                    "include {name:?}: more than {MAX_INCLUDE_DEPTH} nested includes (does a template include itself?)"
                )));
            }
            let result = set.execute_template_to_string(name, &args[1]);
            depth.fetch_sub(1, Ordering::SeqCst);
            result.map(|s| Value::String(s.into())).map_err(|e| error(format!("in {name:?}: {}", message(&e))))
        }),
    );

    f.insert(
        "tpl".to_owned(),
        Arc::new(move |args: &[Value]| {
            if args.len() != 2 {
                return Err(error(format!("wrong number of args for tpl: want 2 got {}", args.len())));
            }
            let text = string_arg("tpl", args, 0)?;
            let slot = slot.upgrade().ok_or_else(|| error("tpl: the template set is gone"))?;
            let set = slot.get().ok_or_else(|| error("tpl: called before the templates were parsed"))?;
            let parsed = set.clone().parse(text).map_err(|e| error(format!("tpl: {e}")))?;
            let out =
                parsed.execute_to_string(&args[1]).map_err(|e| error(format!("tpl: {}", message(&e))))?;
            Ok(Value::String(out.replace("<no value>", "").into()))
        }),
    );

    f.insert(
        "toYaml".to_owned(),
        Arc::new(|args: &[Value]| {
            let v = args.first().ok_or_else(|| error("wrong number of args for toYaml: want 1 got 0"))?;
            // Helm renders "" when marshalling fails, and drops the final newline.
            let text = yaml::to_yaml(v).unwrap_or_default();
            Ok(Value::String(text.strip_suffix('\n').unwrap_or(&text).into()))
        }),
    );
    f.insert(
        "fromYaml".to_owned(),
        Arc::new(|args: &[Value]| Ok(yaml::from_yaml(string_arg("fromYaml", args, 0)?))),
    );
    f.insert(
        "toJson".to_owned(),
        Arc::new(|args: &[Value]| {
            let v = args.first().ok_or_else(|| error("wrong number of args for toJson: want 1 got 0"))?;
            Ok(Value::String(yaml::to_json(v).unwrap_or_default().into()))
        }),
    );
    f
}

/// Go refuses, when parsing, a template that calls a function that does not exist; the ported
/// engine only notices when the call runs. Check every call up front, so that a function this
/// renderer lacks is found whatever the values, not only when a branch is taken.
fn check_functions(name: &str, parsed: &Template, funcs: &FuncMap) -> Result<(), EngineError> {
    let mut used = BTreeSet::new();
    for defined in parsed.templates() {
        if let Some(tree) = parsed.lookup(defined) {
            walk_list(tree, &mut used);
        }
    }
    match used.into_iter().find(|f| !funcs.contains_key(f.as_str()) && !BUILTINS.contains(&f.as_str())) {
        None => Ok(()),
        Some(missing) => Err(EngineError {
            template: name.to_owned(),
            message: format!(
                "function {missing:?} is not defined (trellis's chart renderer does not implement it)"
            ),
            broken: true,
        }),
    }
}

fn walk_list(list: &ListNode, used: &mut BTreeSet<String>) {
    for node in &list.nodes {
        walk_node(node, used);
    }
}

fn walk_node(node: &Node, used: &mut BTreeSet<String>) {
    match node {
        Node::List(list) => walk_list(list, used),
        Node::Action(action) => walk_pipe(&action.pipe, used),
        Node::If(branch) | Node::Range(branch) | Node::With(branch) => {
            walk_pipe(&branch.pipe, used);
            walk_list(&branch.body, used);
            if let Some(otherwise) = &branch.else_body {
                walk_list(otherwise, used);
            }
        }
        Node::Template(t) => {
            if let Some(pipe) = &t.pipe {
                walk_pipe(pipe, used);
            }
        }
        Node::Define(d) => walk_list(&d.body, used),
        Node::Text(_) | Node::Break(_) | Node::Continue(_) => {}
    }
}

fn walk_pipe(pipe: &PipeNode, used: &mut BTreeSet<String>) {
    for command in &pipe.commands {
        for arg in &command.args {
            walk_expr(arg, used);
        }
    }
}

fn walk_expr(expr: &Expr, used: &mut BTreeSet<String>) {
    match expr {
        Expr::Identifier(_, name) => {
            used.insert(name.to_string());
        }
        Expr::Pipe(_, pipe) => walk_pipe(pipe, used),
        Expr::Chain(_, inner, _) => walk_expr(inner, used),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(files: &[(&str, &str)], values: &str) -> Result<Vec<(String, String)>, EngineError> {
        let templates: Vec<(String, &str)> =
            files.iter().map(|(n, t)| (format!("c/templates/{n}"), *t)).collect();
        let mut top = Map::new();
        top.insert(
            "Values".into(),
            Value::Map(Arc::new(super::super::values::parse_values(values).unwrap())),
        );
        render(&templates, "c/templates", &top)
    }

    #[test]
    fn include_reaches_every_file_and_pipes() {
        let out = run(
            &[
                ("_helpers.tpl", r#"{{- define "name" -}}{{ .Values.name | default "x" }}{{- end -}}"#),
                (
                    "a.yaml",
                    r#"name: {{ include "name" . | upper | quote }}
from: {{ .Template.Name }}
other: {{ include (print $.Template.BasePath "/b.yaml") . | trim }}"#,
                ),
                ("b.yaml", "b: {{ .Values.name }}"),
            ],
            "name: app\n",
        )
        .unwrap();
        assert_eq!(out[0].1, "name: \"APP\"\nfrom: c/templates/a.yaml\nother: b: app");
        assert_eq!(out[1].1, "b: app");
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn set_and_merge_return_the_changed_dict() {
        let out = run(
            &[(
                "a.yaml",
                r#"{{- $d := dict "a" 1 -}}
{{- $d = set $d "b" 2 -}}
{{- $d = merge $d (dict "a" 9 "c" 3) -}}
{{- range $k, $v := $d }}{{ $k }}={{ $v }} {{ end -}}
{{ toYaml $d }}"#,
            )],
            "",
        )
        .unwrap();
        assert_eq!(out[0].1, "a=1 b=2 c=3 a: 1\nb: 2\nc: 3");
    }

    #[test]
    fn missing_values_print_nothing_and_fail_stops_with_its_message() {
        let out = run(&[("a.yaml", "x: {{ .Values.nothing }}")], "").unwrap();
        assert_eq!(out[0].1, "x: ");
        let e = run(
            &[
                ("_h.tpl", r#"{{ define "check" }}{{ fail "values.x must be set" }}{{ end }}"#),
                ("a.yaml", r#"{{ include "check" . }}"#),
            ],
            "",
        )
        .unwrap_err();
        assert_eq!(e.template, "c/templates/a.yaml");
        assert_eq!(e.message, "in \"check\": values.x must be set");
        assert!(!e.broken);
    }

    #[test]
    fn unknown_functions_and_bad_syntax_are_found_before_running() {
        let e = run(&[("a.yaml", "{{ if false }}{{ lookup \"v1\" }}{{ end }}")], "").unwrap_err();
        assert!(e.broken && e.message.contains("\"lookup\""), "{e:?}");
        let e = run(&[("a.yaml", "{{ if }}")], "").unwrap_err();
        assert!(e.broken && e.message.contains("a.yaml"), "{e:?}");
    }

    #[test]
    fn self_inclusion_is_an_error_not_a_crash() {
        let e = run(
            &[
                ("_h.tpl", r#"{{ define "loop" }}{{ include "loop" . }}{{ end }}"#),
                ("a.yaml", r#"{{ include "loop" . }}"#),
            ],
            "",
        )
        .unwrap_err();
        assert!(e.message.contains("nested includes"), "{e:?}");
    }

    #[test]
    fn comments_trim_as_in_go() {
        // What Go's text/template renders for each (go 1.19).
        for (source, go) in [
            ("{{- 1 }}\n{{- /* c */}}\nX", "1\nX"),
            ("A\n{{- /* c */}}\nX", "A\nX"),
            ("A\n{{- /* c */ -}}\nX", "AX"),
            ("A\n{{/* c */}}\nX", "A\n\nX"),
            ("{{- /* c */}}\nX", "\nX"),
            ("{{- /* c\nmulti */}}\nX", "\nX"),
            ("{{- /* a */}}\n{{- /* b */}}\n{{- 2 -}}\n{{- /* c */}}  Y", "2  Y"),
            ("{{-/* not a trim marker */}}", ""),
        ] {
            let out = run(&[("a.yaml", source)], "").map(|o| o[0].1.clone());
            if source.starts_with("{{-/*") {
                assert!(out.is_err(), "{source:?}");
            } else {
                assert_eq!(out.unwrap(), go, "{source:?}");
            }
        }
    }

    #[test]
    fn tpl_renders_values_as_templates() {
        let out = run(&[("a.yaml", r#"{{ tpl .Values.t . }}"#)], "t: \"{{ .Values.n }}-x\"\nn: 5\n").unwrap();
        assert_eq!(out[0].1, "5-x");
    }
}
