//! Checks on the URI parts a route carries in its rewrite and redirect. The control plane skips
//! a route that fails them; the proxy refuses a config that holds one. Either way no request
//! goes out with a malformed path or authority, and every redirect has a Location.

use crate::config as pb;

/// A rewrite or redirect value that is not what its field takes.
#[derive(Debug, PartialEq, Eq)]
pub struct BadUriPart {
    /// The field within the route, e.g. `redirect.uri`.
    pub field: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl std::fmt::Display for BadUriPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not {}", self.value, self.expected)
    }
}

/// Checks every URI part of the route's rewrite and redirect; the first bad one is the error.
pub fn check_route(route: &pb::Route) -> Result<(), BadUriPart> {
    let rewrite = route.rewrite.iter().flat_map(|r| {
        [("rewrite.uri", &r.uri, UriPart::Path), ("rewrite.authority", &r.authority, UriPart::Authority)]
    });
    let redirect = match &route.action {
        Some(pb::route::Action::Redirect(r)) => vec![
            ("redirect.uri", &r.uri, UriPart::Path),
            ("redirect.authority", &r.authority, UriPart::Authority),
            ("redirect.scheme", &r.scheme, UriPart::Scheme),
        ],
        _ => Vec::new(),
    };
    for (field, value, part) in rewrite.chain(redirect) {
        part.check(value).map_err(|expected| BadUriPart { field, value: value.clone(), expected })?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriPart {
    Path,
    Authority,
    Scheme,
}

impl UriPart {
    /// `Ok` for an empty value (unset) or a valid one; otherwise what the value should be.
    pub fn check(self, value: &str) -> Result<(), &'static str> {
        let valid = value.is_empty()
            || match self {
                UriPart::Path => value.starts_with('/') && http::uri::PathAndQuery::try_from(value).is_ok(),
                UriPart::Authority => http::uri::Authority::try_from(value).is_ok(),
                UriPart::Scheme => http::uri::Scheme::try_from(value).is_ok(),
            };
        if valid { Ok(()) } else { Err(self.expected()) }
    }

    fn expected(self) -> &'static str {
        match self {
            UriPart::Path => "a path starting with /",
            UriPart::Authority => "a host with an optional port",
            UriPart::Scheme => "a URI scheme",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::UriPart::{Authority, Path, Scheme};
    use super::{BadUriPart, check_route, pb};

    #[test]
    fn a_route_names_its_first_bad_part() {
        let redirect = |uri: &str, scheme: &str| pb::Route {
            action: Some(pb::route::Action::Redirect(pb::Redirect {
                uri: uri.into(),
                scheme: scheme.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(check_route(&redirect("/ok", "https")), Ok(()));
        let bad = check_route(&redirect("/ok", "ht tp")).unwrap_err();
        assert_eq!(
            bad,
            BadUriPart { field: "redirect.scheme", value: "ht tp".into(), expected: "a URI scheme" }
        );
        assert_eq!(bad.to_string(), "\"ht tp\" is not a URI scheme");
        let rewrite = pb::Route {
            rewrite: Some(pb::Rewrite { uri: "/".into(), authority: "a b".into() }),
            ..Default::default()
        };
        assert_eq!(check_route(&rewrite).unwrap_err().field, "rewrite.authority");
    }

    #[test]
    fn usual_values_pass_and_malformed_ones_say_what_they_should_be() {
        for (part, value) in [
            (Path, ""),
            (Path, "/"),
            (Path, "/v2/api?x=1"),
            (Authority, "reviews.shop:9080"),
            (Authority, "[::1]:80"),
            (Scheme, "https"),
        ] {
            assert_eq!(part.check(value), Ok(()), "{part:?} {value:?}");
        }
        for (part, value) in [
            (Path, "v2"),
            (Path, "/a b"),
            (Path, "/\n"),
            (Authority, "a b"),
            (Authority, "x/y"),
            (Scheme, "ht tp"),
        ] {
            assert!(part.check(value).is_err(), "{part:?} {value:?} passed");
        }
    }
}
