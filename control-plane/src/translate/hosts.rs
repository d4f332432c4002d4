//! Host patterns as Istio writes them in `hosts`, `host` and Sidecar egress: an exact name,
//! `*.suffix`, or `*` for everything. Names are compared case-insensitively (DNS).

use std::cmp::Reverse;

/// Whether `pattern` covers `host`. A wildcard host (a ServiceEntry for `*.example.com`) is
/// covered by an equal or wider pattern.
pub fn matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => ends_with_ignore_case(host.strip_prefix('*').unwrap_or(host), suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Whether two patterns cover at least one common name.
pub fn overlap(a: &str, b: &str) -> bool {
    matches(a, b) || matches(b, a)
}

/// Sort key among patterns that match the same host: exact names first, then longer
/// (narrower) wildcards, as Envoy picks the most specific virtual host domain.
pub fn specificity(pattern: &str) -> (bool, Reverse<usize>) {
    (pattern.starts_with('*'), Reverse(pattern.len()))
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.is_char_boundary(s.len() - suffix.len())
        && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_istio_hosts() {
        for (pattern, host, want) in [
            ("*", "anything.example.com", true),
            ("reviews.shop.svc.cluster.local", "reviews.shop.svc.cluster.local", true),
            ("reviews.shop.svc.cluster.local", "REVIEWS.shop.svc.cluster.local", true),
            ("reviews.shop.svc.cluster.local", "ratings.shop.svc.cluster.local", false),
            ("*.shop.svc.cluster.local", "reviews.shop.svc.cluster.local", true),
            ("*.shop.svc.cluster.local", "reviews.other.svc.cluster.local", false),
            ("*.shop.svc.cluster.local", "shop.svc.cluster.local", false),
            ("*.example.com", "*.api.example.com", true),
            ("*.api.example.com", "*.example.com", false),
            ("a.example.com", "*.example.com", false),
            // Istio's partial wildcards are plain suffixes.
            ("*example.com", "api.example.com", true),
            ("*example.com", "myexample.com", true),
            ("*example.com", "*.example.com", true),
            ("*example.com", "example.org", false),
        ] {
            assert_eq!(matches(pattern, host), want, "{pattern} ~ {host}");
        }
        assert!(overlap("a.example.com", "*.example.com"));
        assert!(!overlap("a.example.com", "*.example.org"));
    }

    #[test]
    fn exact_names_are_more_specific_than_wildcards() {
        let mut patterns =
            vec!["*", "*.svc.cluster.local", "r.shop.svc.cluster.local", "*.shop.svc.cluster.local"];
        patterns.sort_by_key(|p| specificity(p));
        assert_eq!(
            patterns,
            ["r.shop.svc.cluster.local", "*.shop.svc.cluster.local", "*.svc.cluster.local", "*"]
        );
    }
}
