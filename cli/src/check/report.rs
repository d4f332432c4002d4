//! The checks' results and how they are shown: a list by category with ✔/‼/✖ and hints, or
//! JSON shaped like `linkerd check -o json`.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    #[serde(rename = "success")]
    Passed,
    Warning,
    #[serde(rename = "error")]
    Failed,
    Skipped,
}

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    #[serde(skip)]
    pub category: &'static str,
    pub description: String,
    #[serde(rename = "result")]
    pub outcome: Outcome,
    /// What was found: the version, the counts, or what is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What to do about a failure or warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    pub fn passed(category: &'static str, description: &str, detail: impl Into<String>) -> Check {
        let detail = detail.into();
        Check {
            category,
            description: description.to_owned(),
            outcome: Outcome::Passed,
            detail: (!detail.is_empty()).then_some(detail),
            hint: None,
        }
    }

    pub fn failed(
        category: &'static str,
        description: &str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            category,
            description: description.to_owned(),
            outcome: Outcome::Failed,
            detail: Some(detail.into()),
            hint: Some(hint.into()).filter(|h: &String| !h.is_empty()),
        }
    }

    pub fn warning(
        category: &'static str,
        description: &str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check { outcome: Outcome::Warning, ..Check::failed(category, description, detail, hint) }
    }

    pub fn skipped(category: &'static str, description: &str, reason: impl Into<String>) -> Check {
        Check {
            category,
            description: description.to_owned(),
            outcome: Outcome::Skipped,
            detail: Some(reason.into()),
            hint: None,
        }
    }
}

/// True when no check failed (warnings and skips do not fail).
pub fn success(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.outcome != Outcome::Failed)
}

/// The categories in the order their first check came.
fn by_category(checks: &[Check]) -> Vec<(&'static str, Vec<&Check>)> {
    let mut categories: Vec<(&'static str, Vec<&Check>)> = Vec::new();
    for check in checks {
        match categories.iter_mut().find(|(name, _)| *name == check.category) {
            Some((_, list)) => list.push(check),
            None => categories.push((check.category, vec![check])),
        }
    }
    categories
}

pub fn text(checks: &[Check]) -> String {
    let mut out = String::new();
    for (category, list) in by_category(checks) {
        out.push_str(category);
        out.push('\n');
        out.push_str(&"-".repeat(category.chars().count()));
        out.push('\n');
        for check in list {
            let mark = match check.outcome {
                Outcome::Passed => "✔",
                Outcome::Warning => "‼",
                Outcome::Failed => "✖",
                Outcome::Skipped => "–",
            };
            match (&check.outcome, &check.detail) {
                (Outcome::Passed, Some(detail)) => {
                    out.push_str(&format!("{mark} {} ({detail})\n", check.description));
                }
                (Outcome::Skipped, Some(reason)) => {
                    out.push_str(&format!("{mark} {} (skipped: {reason})\n", check.description));
                }
                (_, detail) => {
                    out.push_str(&format!("{mark} {}\n", check.description));
                    for line in detail.iter().flat_map(|d| d.lines()) {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
            }
            if let Some(hint) = &check.hint {
                out.push_str(&format!("    hint: {hint}\n"));
            }
        }
        out.push('\n');
    }
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Failed).count();
    let warned = checks.iter().filter(|c| c.outcome == Outcome::Warning).count();
    if failed == 0 {
        let warnings =
            if warned > 0 { format!(" ({warned} warning{})", plural(warned)) } else { String::new() };
        out.push_str(&format!("Status check results are ✔{warnings}\n"));
    } else {
        out.push_str(&format!("Status check results are ✖: {failed} check{} failed\n", plural(failed)));
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    success: bool,
    categories: Vec<JsonCategory<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonCategory<'a> {
    category_name: &'a str,
    checks: Vec<&'a Check>,
}

pub fn json(checks: &[Check]) -> String {
    let report = JsonReport {
        success: success(checks),
        categories: by_category(checks)
            .into_iter()
            .map(|(category_name, checks)| JsonCategory { category_name, checks })
            .collect(),
    };
    let mut text =
        serde_json::to_string_pretty(&report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Check> {
        vec![
            Check::passed("kubernetes-api", "can query the Kubernetes API", "v1.33.0"),
            Check::failed(
                "trellis-webhook",
                "the webhook has a valid caBundle",
                "no caBundle\non two lines",
                "restart the injector",
            ),
            Check::warning(
                "trellis-identity",
                "the root certificate is not about to expire",
                "expires in 3 days",
                "",
            ),
            Check::skipped("trellis-data-plane", "every connected proxy is synced", "403 Forbidden"),
        ]
    }

    #[test]
    fn text_lists_checks_by_category_with_hints() {
        let text = text(&sample());
        let expected = "\
kubernetes-api
--------------
✔ can query the Kubernetes API (v1.33.0)

trellis-webhook
---------------
✖ the webhook has a valid caBundle
    no caBundle
    on two lines
    hint: restart the injector

trellis-identity
----------------
‼ the root certificate is not about to expire
    expires in 3 days

trellis-data-plane
------------------
– every connected proxy is synced (skipped: 403 Forbidden)

Status check results are ✖: 1 check failed
";
        assert_eq!(text, expected);
        assert!(!success(&sample()));
        let fine = &sample()[2..];
        assert!(success(fine));
        assert!(super::text(fine).ends_with("Status check results are ✔ (1 warning)\n"));
    }

    #[test]
    fn json_is_shaped_like_linkerds() {
        let value: serde_json::Value = serde_json::from_str(&json(&sample())).unwrap();
        assert_eq!(value["success"], false);
        assert_eq!(value["categories"][0]["categoryName"], "kubernetes-api");
        assert_eq!(value["categories"][0]["checks"][0]["result"], "success");
        assert_eq!(value["categories"][0]["checks"][0]["detail"], "v1.33.0");
        assert!(value["categories"][0]["checks"][0].get("hint").is_none());
        assert_eq!(value["categories"][1]["checks"][0]["result"], "error");
        assert_eq!(value["categories"][1]["checks"][0]["hint"], "restart the injector");
        assert_eq!(value["categories"][2]["checks"][0]["result"], "warning");
        assert_eq!(value["categories"][3]["checks"][0]["result"], "skipped");
    }
}
