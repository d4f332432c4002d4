//! SPIFFE identities as Istio writes them: `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.

use std::fmt;

/// A workload's identity: which service account of which namespace, in which trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeError {
    #[error("{0:?}: not a spiffe:// URI")]
    Scheme(String),
    #[error("{0:?}: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    Shape(String),
    #[error("{value:?}: {part} {text:?} has a character not allowed there")]
    Character { value: String, part: &'static str, text: String },
}

const PREFIX: &str = "spiffe://";

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<SpiffeId, SpiffeError> {
        let id = SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        };
        id.check(&id.to_string())?;
        Ok(id)
    }

    /// Parses Istio's five-segment form; anything else (another path, a query, a port) is an
    /// error naming the value.
    pub fn parse(uri: &str) -> Result<SpiffeId, SpiffeError> {
        let rest = uri.strip_prefix(PREFIX).ok_or_else(|| SpiffeError::Scheme(uri.to_owned()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [trust_domain, "ns", namespace, "sa", service_account] = parts[..] else {
            return Err(SpiffeError::Shape(uri.to_owned()));
        };
        let id = SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        };
        id.check(uri)?;
        Ok(id)
    }

    fn check(&self, value: &str) -> Result<(), SpiffeError> {
        // Trust domains are lower-case host-like names (Istio turns '@' into '.'); the path
        // segments are Kubernetes names, which never need escaping.
        let domain_ok =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_');
        let segment_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        for (part, text, ok) in [
            ("trust domain", &self.trust_domain, &domain_ok as &dyn Fn(char) -> bool),
            ("namespace", &self.namespace, &segment_ok),
            ("service account", &self.service_account, &segment_ok),
        ] {
            if text.is_empty() || text.len() > 253 || !text.chars().all(ok) {
                return Err(SpiffeError::Character { value: value.to_owned(), part, text: text.clone() });
            }
        }
        Ok(())
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

/// Istio's normalisation of a configured trust domain: '@' becomes '.'.
pub fn normalize_trust_domain(domain: &str) -> String {
    domain.replace('@', ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_istio_form() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/catalog").unwrap();
        assert_eq!(id.namespace, "shop");
        assert_eq!(id.service_account, "catalog");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/catalog");
    }

    #[test]
    fn refuses_other_shapes_naming_the_value() {
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/sa/a/ns/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://Cluster.Local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a b/sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "",
        ] {
            let err = SpiffeId::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn trust_domain_normalisation() {
        assert_eq!(normalize_trust_domain("foo@bar"), "foo.bar");
    }
}
