//! `security.istio.io`: PeerAuthentication and AuthorizationPolicy. Istio serves these at
//! `v1beta1` and `v1` (the group never had `v1alpha3`).

use std::collections::BTreeMap;

use kube::CustomResource;

use crate::networking::MatchLabelsSelector;
use crate::proto::{istio_enum, istio_message};

istio_enum! {
    /// `UNSET` inherits from the parent scope (namespace, then mesh; PERMISSIVE at the top).
    pub enum MtlsMode { Unset, Disable, Permissive, Strict }
}

istio_message! {
    pub struct MutualTls {
        pub mode: MtlsMode,
    }
}

istio_message! {
    #[derive(CustomResource)]
    #[kube(
        group = "security.istio.io",
        version = "v1",
        kind = "PeerAuthentication",
        namespaced,
        derive = "PartialEq",
        shortname = "pa",
        category = "istio-io",
        category = "security-istio-io"
    )]
    pub struct PeerAuthenticationSpec {
        pub selector: Option<MatchLabelsSelector>,
        pub mtls: Option<MutualTls>,
        /// Keys are workload (container) port numbers.
        pub port_level_mtls: BTreeMap<u32, MutualTls>,
    }
}

istio_enum! {
    pub enum AuthorizationAction { Allow, Deny, Audit, Custom }
}

istio_message! {
    /// Gateway-API style attachment (`targetRef`/`targetRefs`), the alternative to `selector`.
    pub struct PolicyTargetReference {
        pub group: String,
        pub kind: String,
        pub name: String,
        pub namespace: String,
    }
}

istio_message! {
    pub struct ExtensionProvider {
        pub name: String,
    }
}

istio_message! {
    #[derive(CustomResource)]
    #[kube(
        group = "security.istio.io",
        version = "v1",
        kind = "AuthorizationPolicy",
        namespaced,
        derive = "PartialEq",
        shortname = "ap",
        category = "istio-io",
        category = "security-istio-io"
    )]
    pub struct AuthorizationPolicySpec {
        pub selector: Option<MatchLabelsSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        pub target_refs: Vec<PolicyTargetReference>,
        pub rules: Vec<Rule>,
        pub action: AuthorizationAction,
        pub provider: Option<ExtensionProvider>,
    }
}

istio_message! {
    pub struct Rule {
        pub from: Vec<RuleFrom>,
        pub to: Vec<RuleTo>,
        pub when: Vec<Condition>,
    }
}

istio_message! {
    pub struct RuleFrom {
        pub source: Option<Source>,
    }
}

istio_message! {
    pub struct RuleTo {
        pub operation: Option<Operation>,
    }
}

istio_message! {
    pub struct Source {
        pub principals: Vec<String>,
        pub not_principals: Vec<String>,
        pub request_principals: Vec<String>,
        pub not_request_principals: Vec<String>,
        pub namespaces: Vec<String>,
        pub not_namespaces: Vec<String>,
        pub ip_blocks: Vec<String>,
        pub not_ip_blocks: Vec<String>,
        pub remote_ip_blocks: Vec<String>,
        pub not_remote_ip_blocks: Vec<String>,
        pub service_accounts: Vec<String>,
        pub not_service_accounts: Vec<String>,
    }
}

istio_message! {
    pub struct Operation {
        pub hosts: Vec<String>,
        pub not_hosts: Vec<String>,
        pub ports: Vec<String>,
        pub not_ports: Vec<String>,
        pub methods: Vec<String>,
        pub not_methods: Vec<String>,
        pub paths: Vec<String>,
        pub not_paths: Vec<String>,
    }
}

istio_message! {
    pub struct Condition {
        pub key: String,
        pub values: Vec<String>,
        pub not_values: Vec<String>,
    }
}
