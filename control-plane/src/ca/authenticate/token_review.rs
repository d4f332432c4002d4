//! Kubernetes mode: the API server says whose token it is (a TokenReview, as istiod does),
//! for the audience `istio-ca` — a token minted for another audience (another service's, or
//! the pod's default API token when audiences are enforced) is refused, and so is an expired
//! or revoked one (the review answers "not authenticated").

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use super::{AuthError, refuse};

/// A review that takes longer is given up: the workload retries.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TokenReviewer {
    reviews: Api<TokenReview>,
    audience: String,
}

impl TokenReviewer {
    pub fn new(client: kube::Client, audience: &str) -> TokenReviewer {
        TokenReviewer { reviews: Api::all(client), audience: audience.to_owned() }
    }

    /// The user name the API server gives the token.
    pub async fn review(&self, token: &str) -> Result<String, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, self.reviews.create(&PostParams::default(), &review))
                .await
                .map_err(|_| {
                    AuthError::Unavailable(format!("token review: no answer within {REVIEW_TIMEOUT:?}"))
                })?
                // The API server could not be asked (down, or trellisd may not create reviews):
                // not the caller's fault, and worth a retry.
                .map_err(|e| AuthError::Unavailable(format!("token review: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "no reason given".into());
            return Err(refuse(format!("token review: not authenticated: {why}")));
        }
        // An API server that knows audiences answers with those the token is valid for;
        // older ones answer none, having checked nothing more.
        if let Some(audiences) = status.audiences.filter(|a| !a.is_empty())
            && !audiences.contains(&self.audience)
        {
            return Err(refuse(format!(
                "token review: the token is for {audiences:?}, not {:?}",
                self.audience
            )));
        }
        status
            .user
            .and_then(|u| u.username)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| refuse("token review: authenticated, but no user name"))
    }
}
