//! AuthorizationPolicy on the inbound side, as Istio decides: CUSTOM (the provider's answer),
//! then DENY (any match denies), then ALLOW (when any ALLOW policy selects the workload, only a
//! match allows); AUDIT only records. Policies marked dry-run are decided apart and only
//! recorded. Every decision says which policy and rule made it.
//!
//! The control plane sends the policies that select this workload; `compile` builds two views
//! of them, for HTTP and for opaque TCP ([`rule::Protocol`]), once per configuration. Rules are
//! indexed by the exact principals and literal paths they require, so that a request is checked
//! against the rules that could match it rather than against all of them.

pub mod attributes;
pub mod matcher;
pub mod rule;

use std::sync::Arc;

use trellis_xds::config as pb;

use crate::FastMap;

pub use attributes::{Attributes, HttpAttributes, RequestAuth};
use pb::authz_policy::Action;
use rule::{Protocol, Rule};

/// A decision and what made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub by: DecidedBy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// No policy selects the workload (or none applies to this protocol).
    NoPolicy,
    /// The rule `rule` of policy `policy` (`namespace/name`) matched.
    Rule { policy: Arc<str>, rule: u32 },
    /// ALLOW policies select the workload and none matched.
    NoAllowMatched,
}

impl Decision {
    fn allow(by: DecidedBy) -> Decision {
        Decision { allowed: true, by }
    }

    fn deny(by: DecidedBy) -> Decision {
        Decision { allowed: false, by }
    }

    /// The policy for a metric label: `namespace/name`, or `none`.
    pub fn policy(&self) -> &str {
        match &self.by {
            DecidedBy::Rule { policy, .. } => policy,
            _ => "none",
        }
    }

    /// The rule for a metric label: its index, or empty.
    pub fn rule(&self) -> String {
        match &self.by {
            DecidedBy::Rule { rule, .. } => rule.to_string(),
            _ => String::new(),
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.allowed { "allowed" } else { "denied" };
        match &self.by {
            DecidedBy::NoPolicy => write!(f, "{verb}: no policy applies"),
            DecidedBy::Rule { policy, rule } => write!(f, "{verb} by {policy} rule {rule}"),
            DecidedBy::NoAllowMatched => write!(f, "{verb}: no ALLOW policy matched"),
        }
    }
}

/// A CUSTOM rule that matched: the provider must be asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomMatch {
    pub provider: Arc<str>,
    pub policy: Arc<str>,
    pub rule: u32,
}

/// The compiled policies of one workload.
#[derive(Debug, Default)]
pub struct Authorization {
    http: Views,
    tcp: Views,
}

/// Enforced and dry-run policies, for one protocol.
#[derive(Debug, Default)]
struct Views {
    enforced: Engine,
    dry_run: Option<Engine>,
}

#[derive(Debug, Default)]
struct Engine {
    custom: RuleSet,
    deny: RuleSet,
    allow: RuleSet,
    audit: RuleSet,
    /// An ALLOW policy selects the workload: what matches none is denied. True even when none of
    /// its rules survive for TCP (Istio: an ALLOW whose rules are all HTTP denies all TCP).
    any_allow: bool,
}

/// The rules of every policy of one action, in policy order, with an index of which could
/// match a given principal or path.
#[derive(Debug, Default)]
struct RuleSet {
    rules: Vec<Filed>,
    // foldhash, not SipHash: the keys come from the config, so a request cannot fill a bucket;
    // it only looks up, once per index and request.
    by_principal: FastMap<String, Vec<u32>>,
    by_path: FastMap<String, Vec<u32>>,
    by_path_prefix: FastMap<String, Vec<u32>>,
    prefix_lengths: Vec<usize>,
    unindexed: Vec<u32>,
}

#[derive(Debug)]
struct Filed {
    policy: Arc<str>,
    provider: Arc<str>,
    rule: Rule,
}

impl Authorization {
    pub fn compile(policies: &[pb::AuthzPolicy]) -> Result<Authorization, crate::config::ConfigError> {
        Ok(Authorization {
            http: Views::compile(policies, Protocol::Http)?,
            tcp: Views::compile(policies, Protocol::Tcp)?,
        })
    }

    /// No policy at all: nothing to check (the common case costs one branch).
    pub fn is_empty(&self) -> bool {
        self.http.enforced.is_empty() && self.http.dry_run.is_none()
    }

    fn views(&self, a: &Attributes<'_>) -> &Views {
        if a.http.is_some() { &self.http } else { &self.tcp }
    }

    /// The first CUSTOM rule that matches, if any: its provider decides first.
    pub fn custom(&self, a: &Attributes<'_>) -> Option<CustomMatch> {
        let filed = self.views(a).enforced.custom.first_match(a)?;
        Some(CustomMatch {
            provider: filed.provider.clone(),
            policy: filed.policy.clone(),
            rule: filed.rule.index,
        })
    }

    /// DENY, then ALLOW (CUSTOM is asked before, by the caller).
    pub fn decide(&self, a: &Attributes<'_>) -> Decision {
        self.views(a).enforced.decide(a)
    }

    /// The AUDIT rule that matches, if any (recorded, never deciding).
    pub fn audit(&self, a: &Attributes<'_>) -> Option<DecidedBy> {
        let filed = self.views(a).enforced.audit.first_match(a)?;
        Some(DecidedBy::Rule { policy: filed.policy.clone(), rule: filed.rule.index })
    }

    /// What the dry-run policies would decide, when there are any.
    pub fn dry_run(&self, a: &Attributes<'_>) -> Option<Decision> {
        self.views(a).dry_run.as_ref().map(|engine| engine.decide(a))
    }
}

impl Views {
    fn compile(
        policies: &[pb::AuthzPolicy],
        protocol: Protocol,
    ) -> Result<Views, crate::config::ConfigError> {
        let enforced = Engine::compile(policies.iter().enumerate().filter(|(_, p)| !p.dry_run), protocol)?;
        let dry_run = policies.iter().any(|p| p.dry_run);
        let dry_run = if dry_run {
            Some(Engine::compile(policies.iter().enumerate().filter(|(_, p)| p.dry_run), protocol)?)
        } else {
            None
        };
        Ok(Views { enforced, dry_run })
    }
}

impl Engine {
    fn compile<'a>(
        policies: impl Iterator<Item = (usize, &'a pb::AuthzPolicy)>,
        protocol: Protocol,
    ) -> Result<Engine, crate::config::ConfigError> {
        let mut engine = Engine::default();
        for (i, policy) in policies {
            let field = format!("authorization[{i}]");
            let bad = |field: String, message: String| crate::config::ConfigError { field, message };
            let action = Action::try_from(policy.action)
                .map_err(|_| bad(format!("{field}.action"), format!("unknown action {}", policy.action)))?;
            if action == Action::Custom && policy.provider.is_empty() {
                return Err(bad(format!("{field}.provider"), "a CUSTOM policy names its provider".into()));
            }
            let id: Arc<str> = format!("{}/{}", policy.namespace, policy.name).into();
            let provider: Arc<str> = policy.provider.as_str().into();
            let set = match action {
                Action::Allow => {
                    engine.any_allow = true;
                    &mut engine.allow
                }
                Action::Deny => &mut engine.deny,
                Action::Audit => &mut engine.audit,
                Action::Custom => &mut engine.custom,
            };
            for (j, rule) in policy.rules.iter().enumerate() {
                let rule_field = format!("{field}.rules[{j}]");
                if let Some(rule) =
                    Rule::compile(rule, &rule_field, action, protocol).map_err(|e| bad(rule_field, e))?
                {
                    set.push(Filed { policy: id.clone(), provider: provider.clone(), rule });
                }
            }
        }
        for set in [&mut engine.custom, &mut engine.deny, &mut engine.allow, &mut engine.audit] {
            set.index();
        }
        Ok(engine)
    }

    fn is_empty(&self) -> bool {
        !self.any_allow
            && self.deny.rules.is_empty()
            && self.custom.rules.is_empty()
            && self.audit.rules.is_empty()
    }

    fn decide(&self, a: &Attributes<'_>) -> Decision {
        if let Some(filed) = self.deny.first_match(a) {
            return Decision::deny(DecidedBy::Rule { policy: filed.policy.clone(), rule: filed.rule.index });
        }
        if !self.any_allow {
            return Decision::allow(DecidedBy::NoPolicy);
        }
        match self.allow.first_match(a) {
            Some(filed) => {
                Decision::allow(DecidedBy::Rule { policy: filed.policy.clone(), rule: filed.rule.index })
            }
            None => Decision::deny(DecidedBy::NoAllowMatched),
        }
    }
}

impl RuleSet {
    fn push(&mut self, filed: Filed) {
        self.rules.push(filed);
    }

    /// Files every rule under the principals or paths it requires; the rest are checked always.
    fn index(&mut self) {
        for (n, filed) in self.rules.iter().enumerate() {
            let n = n as u32;
            if let Some(principals) = rule::exact_principals(&filed.rule) {
                for p in principals {
                    self.by_principal.entry(p.to_owned()).or_default().push(n);
                }
            } else if let Some(paths) = rule::literal_paths(&filed.rule) {
                for (path, prefix) in paths {
                    let map = if prefix { &mut self.by_path_prefix } else { &mut self.by_path };
                    map.entry(path.to_owned()).or_default().push(n);
                }
            } else {
                self.unindexed.push(n);
            }
        }
        let mut lengths: Vec<usize> = self.by_path_prefix.keys().map(String::len).collect();
        lengths.sort_unstable();
        lengths.dedup();
        self.prefix_lengths = lengths;
        for list in self
            .by_principal
            .values_mut()
            .chain(self.by_path.values_mut())
            .chain(self.by_path_prefix.values_mut())
        {
            list.dedup();
        }
    }

    /// The first rule, in policy order, that matches.
    fn first_match(&self, a: &Attributes<'_>) -> Option<&Filed> {
        if self.rules.is_empty() {
            return None;
        }
        // Few rules: checking them all is cheaper than gathering candidates.
        if self.rules.len() <= 8 {
            return self.rules.iter().find(|f| f.rule.matches(a));
        }
        let mut best: Option<u32> = None;
        let mut consider = |list: &[u32]| {
            for &n in list {
                if best.is_some_and(|b| b <= n) {
                    // Lists are in rule order: nothing further in this one comes first.
                    break;
                }
                if self.rules[n as usize].rule.matches(a) {
                    best = Some(n);
                    break;
                }
            }
        };
        if let Some(list) = a.peer_principal.and_then(|p| self.by_principal.get(p)) {
            consider(list);
        }
        if let Some(http) = &a.http {
            if let Some(list) = self.by_path.get(http.path) {
                consider(list);
            }
            for &len in &self.prefix_lengths {
                if len > http.path.len() {
                    break;
                }
                if let Some(list) = http.path.get(..len).and_then(|prefix| self.by_path_prefix.get(prefix)) {
                    consider(list);
                }
            }
        }
        consider(&self.unindexed);
        best.map(|n| &self.rules[n as usize])
    }
}

#[cfg(test)]
mod tests;
