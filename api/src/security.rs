//! `security.istio.io`: PeerAuthentication, AuthorizationPolicy and RequestAuthentication. Istio
//! serves these at `v1beta1` and `v1` (the group never had `v1alpha3`).

use std::collections::BTreeMap;

use kube::CustomResource;

use crate::networking::MatchLabelsSelector;
use crate::primitives::GoDuration;
use crate::proto::{istio_enum, istio_message};

/// The annotation that makes an ALLOW or DENY AuthorizationPolicy decided and recorded but not
/// enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

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
        #[schemars(extend("minProperties" = 1, "x-kubernetes-validations" = [{
            "rule": "self.all(key, 0 < int(key) && int(key) <= 65535)",
            "message": "port must be between 1-65535",
        }]))]
        pub port_level_mtls: PortLevelMtls,
    }
}

/// `portLevelMtls`: the mode of each workload port, and whether the field was written at all.
/// Istio's schema refuses an empty map (`portLevelMtls: {}`), which a plain map could not tell
/// from an absent field. It reads as the map it holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortLevelMtls {
    pub ports: BTreeMap<u32, MutualTls>,
    /// The document had the field, possibly empty.
    pub written: bool,
}

impl std::ops::Deref for PortLevelMtls {
    type Target = BTreeMap<u32, MutualTls>;

    fn deref(&self) -> &Self::Target {
        &self.ports
    }
}

impl<'a> IntoIterator for &'a PortLevelMtls {
    type Item = (&'a u32, &'a MutualTls);
    type IntoIter = std::collections::btree_map::Iter<'a, u32, MutualTls>;

    fn into_iter(self) -> Self::IntoIter {
        self.ports.iter()
    }
}

impl From<BTreeMap<u32, MutualTls>> for PortLevelMtls {
    fn from(ports: BTreeMap<u32, MutualTls>) -> Self {
        let written = !ports.is_empty();
        PortLevelMtls { ports, written }
    }
}

impl serde::Serialize for PortLevelMtls {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.ports.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for PortLevelMtls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(PortLevelMtls { ports: BTreeMap::deserialize(deserializer)?, written: true })
    }
}

impl schemars::JsonSchema for PortLevelMtls {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PortLevelMtls".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <BTreeMap<u32, MutualTls> as schemars::JsonSchema>::json_schema(generator)
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
        /// `<namespace>/<name>`, or `<name>` in the policy's namespace; no wildcards.
        pub service_accounts: Vec<String>,
        pub not_service_accounts: Vec<String>,
        /// The trust domain of the peer's SPIFFE ID.
        pub trust_domains: Vec<String>,
        pub not_trust_domains: Vec<String>,
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

impl AuthorizationPolicySpec {
    /// Attached to gateways or waypoints (`targetRef`/`targetRefs`): sidecars ignore it.
    pub fn has_target_ref(&self) -> bool {
        self.target_ref.is_some() || !self.target_refs.is_empty()
    }
}

/// The `istio.io/dry-run` annotation, read as Go's `strconv.ParseBool` reads it (as Istio
/// does): `None` when absent, `Err` with the value when it is not a boolean.
pub fn dry_run(annotations: Option<&BTreeMap<String, String>>) -> Option<Result<bool, String>> {
    let value = annotations?.get(DRY_RUN_ANNOTATION)?;
    Some(match value.as_str() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(other.to_owned()),
    })
}

istio_message! {
    #[derive(CustomResource)]
    #[kube(
        group = "security.istio.io",
        version = "v1",
        kind = "RequestAuthentication",
        namespaced,
        derive = "PartialEq",
        shortname = "ra",
        category = "istio-io",
        category = "security-istio-io"
    )]
    pub struct RequestAuthenticationSpec {
        pub selector: Option<MatchLabelsSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        pub target_refs: Vec<PolicyTargetReference>,
        /// Each rule validates the tokens of one issuer.
        pub jwt_rules: Vec<JwtRule>,
    }
}

impl RequestAuthenticationSpec {
    /// Attached to gateways or waypoints (`targetRef`/`targetRefs`): sidecars ignore it.
    pub fn has_target_ref(&self) -> bool {
        self.target_ref.is_some() || !self.target_refs.is_empty()
    }
}

istio_message! {
    /// Istio's `JWTRule`.
    pub struct JwtRule {
        /// Must equal the token's `iss`.
        pub issuer: String,
        /// Any of these in the token's `aud`; none: no audience check.
        pub audiences: Vec<String>,
        /// Where the JSON Web Key Set is fetched (by the control plane) when `jwks` is empty.
        pub jwks_uri: String,
        /// The JSON Web Key Set, inline; wins over `jwksUri`.
        pub jwks: String,
        /// Where the token is read; none of the three: `Authorization: Bearer`, then the
        /// `access_token` query parameter.
        pub from_headers: Vec<JwtHeader>,
        pub from_params: Vec<String>,
        pub from_cookies: Vec<String>,
        /// Keep the token in the request once verified (default: it is removed).
        pub forward_original_token: bool,
        /// The verified payload, base64url JSON, in this header.
        pub output_payload_to_header: String,
        pub output_claim_to_headers: Vec<ClaimToHeader>,
        /// Claims whose string value is split on spaces for authorization.
        pub space_delimited_claims: Vec<String>,
        /// How long fetching `jwksUri` may take (default 5s).
        pub timeout: Option<GoDuration>,
        /// Newer Istio: whether a token must be present. Read, not enforced by Trellis.
        pub presence: Option<String>,
    }
}

istio_message! {
    pub struct JwtHeader {
        pub name: String,
        /// The value must start with this, which is removed (`"Bearer "`).
        pub prefix: String,
    }
}

istio_message! {
    pub struct ClaimToHeader {
        pub header: String,
        pub claim: String,
    }
}
