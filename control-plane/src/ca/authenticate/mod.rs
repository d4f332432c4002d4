//! Who is asking for a certificate: the caller's service account, from the bearer token in the
//! request's `authorization` metadata. Never from the CSR — a workload could name anyone there.
//!
//! Two ways to check a token: a static token file (`--token-auth-file`, Kubernetes' format), or
//! the Kubernetes API's TokenReview with the audience `istio-ca`.

mod token_file;
mod token_review;

use tonic::metadata::MetadataMap;

pub use token_file::{TokenFile, parse_token_file};
pub use token_review::TokenReviewer;

use super::metrics::CaMetrics;

/// The longest bearer token accepted. Projected service-account tokens are about a kilobyte;
/// the bound keeps a caller from making trellisd (or the API server) handle megabytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Kubernetes' user name for a service account: `system:serviceaccount:<namespace>:<name>`.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The caller is not who a certificate may be issued to (gRPC UNAUTHENTICATED).
    #[error("authentication failed: {0}")]
    Unauthenticated(String),
    /// The token could not be checked right now (gRPC UNAVAILABLE: the client retries).
    #[error("cannot check the token: {0}")]
    Unavailable(String),
}

fn refuse(message: impl Into<String>) -> AuthError {
    AuthError::Unauthenticated(message.into())
}

/// The configured way to check tokens.
pub enum Authenticator {
    /// Neither a token file nor Kubernetes: every request is refused, saying why.
    Nothing,
    File(TokenFile),
    /// Boxed: a kube client is large, and the enum is made once.
    Kubernetes(Box<TokenReviewer>),
}

impl Authenticator {
    /// A token file, read now (an error here is a start-up error) and followed for changes.
    pub fn file(path: std::path::PathBuf, metrics: CaMetrics) -> Result<Authenticator, String> {
        Ok(Authenticator::File(TokenFile::load(path, metrics)?))
    }

    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, AuthError> {
        let user = match self {
            Authenticator::Nothing => {
                return Err(refuse(
                    "this CA has no way to check tokens (start trellisd with --token-auth-file or --kubernetes)",
                ));
            }
            Authenticator::File(file) => file.user(bearer_token(metadata)?)?,
            Authenticator::Kubernetes(reviewer) => reviewer.review(bearer_token(metadata)?).await?,
        };
        service_account(&user)
    }
}

/// The token of `authorization: Bearer <token>`.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let mut values = metadata.get_all("authorization").iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(match metadata.get("authorization") {
            None => refuse("no authorization metadata: send `authorization: Bearer <service-account token>`"),
            Some(_) => refuse("more than one authorization value"),
        });
    };
    let text = value.to_str().map_err(|_| refuse("the authorization value is not ASCII text"))?;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(refuse("the authorization value is not `Bearer <token>`"));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(refuse("empty bearer token"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(refuse(format!("bearer token of {} bytes, more than {MAX_TOKEN_BYTES}", token.len())));
    }
    Ok(token)
}

/// The service account a Kubernetes user name stands for; other users get no certificate.
pub fn service_account(user: &str) -> Result<Caller, AuthError> {
    let not_one = || {
        refuse(format!("user {user:?} is not a service account (system:serviceaccount:<namespace>:<name>)"))
    };
    let rest = user.strip_prefix(SERVICE_ACCOUNT_PREFIX).ok_or_else(not_one)?;
    let (namespace, name) = rest.split_once(':').ok_or_else(not_one)?;
    if namespace.is_empty() || name.is_empty() || name.contains(':') {
        return Err(not_one());
    }
    Ok(Caller { namespace: namespace.to_owned(), service_account: name.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for v in values {
            map.append("authorization", v.parse().unwrap());
        }
        map
    }

    #[test]
    fn bearer_tokens_are_read_and_everything_else_refused() {
        assert_eq!(bearer_token(&with(&["Bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&with(&["bearer  abc "])), Ok("abc"));
        for (values, says) in [
            (&[][..], "no authorization metadata"),
            (&["Bearer a", "Bearer b"][..], "more than one"),
            (&["Basic YTpi"][..], "not `Bearer <token>`"),
            (&["Bearer"][..], "empty bearer token"),
            (&["Bearer    "][..], "empty bearer token"),
        ] {
            let err = bearer_token(&with(values)).unwrap_err();
            assert!(err.to_string().contains(says), "{values:?}: {err}");
        }
        let long = format!("Bearer {}", "x".repeat(MAX_TOKEN_BYTES + 1));
        assert!(bearer_token(&with(&[&long])).unwrap_err().to_string().contains("more than 16384"));
    }

    #[test]
    fn only_service_accounts_are_callers() {
        assert_eq!(
            service_account("system:serviceaccount:shop:web"),
            Ok(Caller { namespace: "shop".into(), service_account: "web".into() })
        );
        for user in [
            "alice",
            "system:serviceaccount:shop",
            "system:serviceaccount::web",
            "system:serviceaccount:shop:",
            "system:serviceaccount:a:b:c",
            "system:node:n1",
        ] {
            let err = service_account(user).unwrap_err();
            assert!(err.to_string().contains("is not a service account"), "{user}: {err}");
        }
    }
}
