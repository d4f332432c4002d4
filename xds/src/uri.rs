//! Checks on the URI parts a route carries in its rewrite and redirect. The control plane skips
//! a route that fails them; the proxy refuses a config that holds one. Either way no request
//! goes out with a malformed path or authority, and every redirect has a Location.

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
