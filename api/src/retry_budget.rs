//! Retry budgets: Trellis's own setting, beyond Istio's API (Linkerd's and Finagle's idea).
//! Retries to a destination are limited to a share of its recent requests — by default 20 %,
//! plus 10 retries per second, over a 10 s window — so that a failing service deep in a call
//! chain does not see its load multiplied by every hop's retries.
//!
//! Budgets are on by default. The mesh config's `retryBudget` (a Trellis field, not one of
//! Istio's MeshConfig) changes them mesh-wide; a DestinationRule's annotations change them for
//! its host (every subset and port):
//!
//! | annotation | value |
//! |---|---|
//! | `retry-budget.trellis.io/enabled` | `"true"` or `"false"` |
//! | `retry-budget.trellis.io/retry-ratio` | retries per request, 0 to 1000 (`"0.2"`) |
//! | `retry-budget.trellis.io/min-retries-per-second` | 0 to 2147483647 (`"10"`) |
//! | `retry-budget.trellis.io/ttl` | the window, 1s to 60s (`"10s"`) |
//!
//! A value left out comes from the mesh config, else from the default. Setting a value turns the
//! budget on for the host even where the mesh turned budgets off, unless `enabled` is `"false"`.
//! A ratio and a minimum of 0 allow no retries at all; to lift the limit, use
//! `enabled: "false"`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::primitives::parse_go_duration;

pub const PREFIX: &str = "retry-budget.trellis.io/";
pub const ENABLED: &str = "retry-budget.trellis.io/enabled";
pub const RETRY_RATIO: &str = "retry-budget.trellis.io/retry-ratio";
pub const MIN_RETRIES_PER_SECOND: &str = "retry-budget.trellis.io/min-retries-per-second";
pub const TTL: &str = "retry-budget.trellis.io/ttl";
/// Every annotation above.
pub const ANNOTATIONS: &[&str] = &[ENABLED, RETRY_RATIO, MIN_RETRIES_PER_SECOND, TTL];

/// Finagle's bounds, which Linkerd and tower keep.
pub const MAX_RETRY_RATIO: f64 = 1000.0;
pub const MIN_TTL: Duration = Duration::from_secs(1);
pub const MAX_TTL: Duration = Duration::from_secs(60);
pub const MAX_MIN_RETRIES_PER_SECOND: u32 = i32::MAX as u32;

/// A budget's values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// Retries per request: 0.2 lets one request in five be retried.
    pub retry_ratio: f64,
    /// Retries allowed on top of the ratio, per second of the window.
    pub min_retries_per_second: u32,
    /// How long a request counts towards the budget.
    pub ttl: Duration,
}

/// Linkerd's defaults.
pub const DEFAULT: RetryBudget =
    RetryBudget { retry_ratio: 0.2, min_retries_per_second: 10, ttl: Duration::from_secs(10) };

/// Whether a budget applies, and with which values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetSetting {
    pub enabled: bool,
    pub budget: RetryBudget,
}

impl Default for BudgetSetting {
    fn default() -> Self {
        BudgetSetting { enabled: true, budget: DEFAULT }
    }
}

impl BudgetSetting {
    /// The budget, when it applies.
    pub fn effective(self) -> Option<RetryBudget> {
        self.enabled.then_some(self.budget)
    }
}

/// What one level (the mesh config, a DestinationRule) says about the budget; unset fields
/// leave the level below as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BudgetOverrides {
    pub enabled: Option<bool>,
    pub retry_ratio: Option<f64>,
    pub min_retries_per_second: Option<u32>,
    pub ttl: Option<Duration>,
}

impl BudgetOverrides {
    /// These settings over `base`: a value set turns the budget on unless `enabled` says no.
    pub fn apply(&self, base: BudgetSetting) -> BudgetSetting {
        let sets_a_value =
            self.retry_ratio.is_some() || self.min_retries_per_second.is_some() || self.ttl.is_some();
        BudgetSetting {
            enabled: self.enabled.unwrap_or(base.enabled || sets_a_value),
            budget: RetryBudget {
                retry_ratio: self.retry_ratio.unwrap_or(base.budget.retry_ratio),
                min_retries_per_second: self
                    .min_retries_per_second
                    .unwrap_or(base.budget.min_retries_per_second),
                ttl: self.ttl.unwrap_or(base.budget.ttl),
            },
        }
    }

    /// A DestinationRule's `retry-budget.trellis.io/*` annotations, and the problems of those
    /// that cannot be read, each as (annotation, message). Annotations under other prefixes are
    /// not looked at; an unknown one under this prefix is a problem (a typo would otherwise
    /// drop the setting without a word).
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
    ) -> (BudgetOverrides, Vec<(String, String)>) {
        let mut out = BudgetOverrides::default();
        let mut problems = Vec::new();
        for (key, value) in annotations.iter().filter(|(k, _)| k.starts_with(PREFIX)) {
            let result = match key.as_str() {
                ENABLED => parse_enabled(value).map(|v| out.enabled = Some(v)),
                RETRY_RATIO => parse_retry_ratio(value).map(|v| out.retry_ratio = Some(v)),
                MIN_RETRIES_PER_SECOND => {
                    parse_min_retries_per_second(value).map(|v| out.min_retries_per_second = Some(v))
                }
                TTL => parse_ttl(value).map(|v| out.ttl = Some(v)),
                _ => Err(format!("unknown retry budget annotation; known: {}", ANNOTATIONS.join(", "))),
            };
            if let Err(message) = result {
                problems.push((key.clone(), message));
            }
        }
        (out, problems)
    }
}

/// How a bad value is echoed: a bounded prefix.
fn shown(value: &str) -> String {
    let cut: String = value.chars().take(64).collect();
    format!("{cut:?}")
}

pub fn parse_enabled(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{} is not \"true\" or \"false\"", shown(value))),
    }
}

pub fn parse_retry_ratio(value: &str) -> Result<f64, String> {
    let ratio: f64 = value.trim().parse().map_err(|_| format!("{} is not a number", shown(value)))?;
    check_retry_ratio(ratio)?;
    Ok(ratio)
}

pub fn check_retry_ratio(ratio: f64) -> Result<(), String> {
    if (0.0..=MAX_RETRY_RATIO).contains(&ratio) {
        Ok(())
    } else {
        Err(format!(
            "{ratio} is not a ratio between 0 and {MAX_RETRY_RATIO} (0.2: one retry per five requests)"
        ))
    }
}

pub fn parse_min_retries_per_second(value: &str) -> Result<u32, String> {
    let n: i64 = value.trim().parse().map_err(|_| format!("{} is not a whole number", shown(value)))?;
    check_min_retries_per_second(n)
}

pub fn check_min_retries_per_second(n: i64) -> Result<u32, String> {
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_MIN_RETRIES_PER_SECOND)
        .ok_or_else(|| format!("{n} is not between 0 and {MAX_MIN_RETRIES_PER_SECOND}"))
}

pub fn parse_ttl(value: &str) -> Result<Duration, String> {
    check_ttl(parse_go_duration(value.trim())?)
}

pub fn check_ttl(ttl: Duration) -> Result<Duration, String> {
    if (MIN_TTL..=MAX_TTL).contains(&ttl) {
        Ok(ttl)
    } else {
        Err(format!("{ttl:?} is not between 1s and 60s"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn annotations_override_what_they_set() {
        let (o, problems) = BudgetOverrides::from_annotations(&annotations(&[
            (RETRY_RATIO, "0.5"),
            (TTL, "30s"),
            ("other.example.com/x", "not ours"),
        ]));
        assert!(problems.is_empty(), "{problems:?}");
        let setting = o.apply(BudgetSetting::default());
        assert_eq!(
            setting.effective(),
            Some(RetryBudget { retry_ratio: 0.5, min_retries_per_second: 10, ttl: Duration::from_secs(30) })
        );
        // A value turns the budget on where the mesh turned it off; `enabled: false` wins.
        let off = BudgetSetting { enabled: false, budget: DEFAULT };
        assert!(o.apply(off).enabled);
        assert!(BudgetOverrides::default().apply(off).effective().is_none());
        let (disabled, _) =
            BudgetOverrides::from_annotations(&annotations(&[(ENABLED, "false"), (RETRY_RATIO, "0.5")]));
        assert_eq!(disabled.apply(BudgetSetting::default()).effective(), None);
    }

    #[test]
    fn bad_annotations_are_named_and_echoed() {
        let (o, problems) = BudgetOverrides::from_annotations(&annotations(&[
            (ENABLED, "yes"),
            (RETRY_RATIO, "-0.1"),
            (MIN_RETRIES_PER_SECOND, "ten"),
            (TTL, "2m"),
            ("retry-budget.trellis.io/ratio", "0.2"),
        ]));
        assert_eq!(o, BudgetOverrides::default(), "nothing bad is taken");
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [ENABLED, MIN_RETRIES_PER_SECOND, "retry-budget.trellis.io/ratio", RETRY_RATIO, TTL]
        );
        let messages: Vec<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
        assert!(messages[0].contains("\"yes\""), "{messages:?}");
        assert!(messages[2].contains("unknown") && messages[2].contains(RETRY_RATIO), "{messages:?}");
        assert!(messages[3].contains("between 0 and 1000"), "{messages:?}");
        assert!(messages[4].contains("between 1s and 60s"), "{messages:?}");
        for bad in ["NaN", "inf", "1e9", ""] {
            assert!(parse_retry_ratio(bad).is_err(), "{bad}");
        }
        assert!(parse_min_retries_per_second("-1").is_err());
        assert!(parse_min_retries_per_second("4294967296").is_err());
        assert_eq!(parse_min_retries_per_second("0"), Ok(0));
        assert!(parse_ttl("500ms").is_err() && parse_ttl("1s").is_ok() && parse_ttl("60s").is_ok());
    }
}
