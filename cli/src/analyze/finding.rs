//! A finding: what is wrong across resources, how bad, which resources, and how to fix it.
//! Codes are Istio's analyzer codes (`istioctl analyze`, Istio's `messages.yaml`) where one
//! means the same thing, so that documentation and habits carry over; checks Istio does not
//! have use Trellis codes (`TRL…`).

use std::fmt;

use serde::Serialize;

use super::model::Subject;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        })
    }
}

/// A kind of finding: its code, name and level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub name: &'static str,
    pub level: Level,
}

const fn code(code: &'static str, name: &'static str, level: Level) -> Code {
    Code { code, name, level }
}

pub const REFERENCED_RESOURCE_NOT_FOUND: Code = code("IST0101", "ReferencedResourceNotFound", Level::Error);
pub const POD_MISSING_PROXY: Code = code("IST0103", "PodMissingProxy", Level::Warning);
pub const SCHEMA_VALIDATION_ERROR: Code = code("IST0106", "SchemaValidationError", Level::Error);
pub const CONFLICTING_MESH_GATEWAY_HOSTS: Code =
    code("IST0109", "ConflictingMeshGatewayVirtualServiceHosts", Level::Error);
pub const MTLS_POLICY_CONFLICT: Code = code("IST0113", "MTLSPolicyConflict", Level::Error);
pub const NO_MATCHING_WORKLOADS: Code = code("IST0127", "NoMatchingWorkloadsFound", Level::Warning);
pub const NO_SERVER_CERT_VERIFICATION_DESTINATION: Code =
    code("IST0128", "NoServerCertificateVerificationDestinationLevel", Level::Warning);
pub const NO_SERVER_CERT_VERIFICATION_PORT: Code =
    code("IST0129", "NoServerCertificateVerificationPortLevel", Level::Warning);
pub const UNREACHABLE_RULE: Code = code("IST0130", "VirtualServiceUnreachableRule", Level::Warning);
pub const INEFFECTIVE_MATCH: Code = code("IST0131", "VirtualServiceIneffectiveMatch", Level::Info);
pub const SUBSET_SELECTS_NO_PODS: Code =
    code("IST0173", "DestinationRuleSubsetNotSelectPods", Level::Warning);
pub const HTTP_RULE_ON_TCP_PORT: Code =
    code("TRL0001", "AuthorizationPolicyHttpFieldsOnTcpPort", Level::Warning);
pub const SIDECAR_HIDES_DESTINATION: Code = code("TRL0002", "SidecarHidesRoutedHost", Level::Warning);
pub const GATEWAY_HOST_WITHOUT_ROUTE: Code =
    code("TRL0003", "GatewayHostWithoutVirtualService", Level::Warning);
pub const GATEWAY_ROUTES_SHADOWED: Code = code("TRL0004", "GatewayVirtualServiceShadowed", Level::Warning);

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub name: &'static str,
    pub level: Level,
    /// The resources involved; the first is the one the finding is about (never empty: only
    /// [`Finding::new`] makes findings).
    resources: Vec<Subject>,
    pub message: String,
    /// What would fix it.
    pub fix: String,
}

impl Finding {
    pub fn new(code: Code, subject: &Subject, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            code: code.code,
            name: code.name,
            level: code.level,
            resources: vec![subject.clone()],
            message: message.into(),
            fix: fix.into(),
        }
    }

    /// Adds a resource involved, once.
    pub fn with(mut self, related: &Subject) -> Finding {
        if !self.resources.contains(related) {
            self.resources.push(related.clone());
        }
        self
    }

    pub fn subject(&self) -> &Subject {
        &self.resources[0] // see `resources`
    }
}

impl fmt::Display for Finding {
    /// `Error [IST0101] (VirtualService shop/reviews (f.yaml doc 2)) message`, then the other
    /// resources and the fix on their own lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] ({}) {}", self.level, self.code, self.subject(), self.message)?;
        for related in &self.resources[1..] {
            write!(f, "\n    involves {related}")?;
        }
        if !self.fix.is_empty() {
            write!(f, "\n    fix: {}", self.fix)?;
        }
        Ok(())
    }
}
