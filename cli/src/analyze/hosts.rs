//! Host names as the mesh compares them: a short name is a Service in the namespace of the
//! resource that wrote it, a leading `*.` covers every name below, and `*` covers everything.

/// The DNS suffix of Kubernetes Services (Istio's default cluster domain).
pub const CLUSTER_SUFFIX: &str = "svc.cluster.local";

/// The name a host stands for, written in `namespace`: `reviews` is
/// `reviews.<namespace>.svc.cluster.local`; a name with a dot or a wildcard is taken as written.
pub fn fqdn(host: &str, namespace: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host.starts_with('*') || host.contains('.') {
        host
    } else {
        format!("{host}.{namespace}.{CLUSTER_SUFFIX}")
    }
}

/// Whether `pattern` covers `host`: the same name, `*`, or `*.suffix` above a name (or a
/// narrower wildcard) ending in `.suffix`.
pub fn covers(pattern: &str, host: &str) -> bool {
    if pattern == host || pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.trim_start_matches('*').ends_with(suffix) && host.len() > suffix.len(),
        None => false,
    }
}

/// Whether two hosts can name the same request: either covers the other.
pub fn overlap(a: &str, b: &str) -> bool {
    covers(a, b) || covers(b, a)
}

/// The namespace of a Kubernetes Service's name, `name.namespace.svc.cluster.local`.
pub fn service_namespace(fqdn: &str) -> Option<&str> {
    let rest = fqdn.strip_suffix(CLUSTER_SUFFIX)?.strip_suffix('.')?;
    let (name, namespace) = rest.rsplit_once('.')?;
    (!name.is_empty() && !name.contains('*') && !namespace.is_empty() && !namespace.contains('.'))
        .then_some(namespace)
}

/// Whether a resource in `owner_namespace` exported to `export_to` (Istio's `exportTo`: empty or
/// `*` for everyone, `.` for its own namespace, `~` for no one, else namespace names) is seen
/// from `namespace`.
pub fn visible(export_to: &[String], owner_namespace: &str, namespace: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|e| e == "*" || e == namespace || (e == "." && owner_namespace == namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_services_of_the_writing_namespace() {
        assert_eq!(fqdn("reviews", "shop"), "reviews.shop.svc.cluster.local");
        assert_eq!(fqdn("Reviews.other", "shop"), "reviews.other");
        assert_eq!(fqdn("*.example.com", "shop"), "*.example.com");
        assert_eq!(fqdn("*", "shop"), "*");
    }

    #[test]
    fn wildcards_cover_names_below_them() {
        assert!(covers("*", "a.b"));
        assert!(covers("*.example.com", "api.example.com"));
        assert!(covers("*.example.com", "*.eu.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("api.example.com", "*.example.com"));
        assert!(overlap("api.example.com", "*.example.com"));
        assert!(!overlap("a.example.com", "b.example.com"));
        assert!(covers("*.d", "*.productpage.d"));
    }

    #[test]
    fn service_namespaces() {
        assert_eq!(service_namespace("reviews.shop.svc.cluster.local"), Some("shop"));
        assert_eq!(service_namespace("*.shop.svc.cluster.local"), None);
        assert_eq!(service_namespace("shop.svc.cluster.local"), None);
        assert_eq!(service_namespace("api.example.com"), None);
    }

    #[test]
    fn export_to() {
        let list = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(visible(&[], "a", "b"));
        assert!(visible(&list(&["*"]), "a", "b"));
        assert!(visible(&list(&["."]), "a", "a"));
        assert!(!visible(&list(&["."]), "a", "b"));
        assert!(visible(&list(&["b"]), "a", "b"));
        assert!(!visible(&list(&["~"]), "a", "a"));
    }
}
