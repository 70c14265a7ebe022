//! Kiln example: `approval`, a human in the loop through a wait token.
//!
//! The task drafts a post, creates a wait token and waits on it: the run is
//! suspended, holding nothing, until a reviewer approves or rejects the
//! draft (a backend completes the token, or the reviewer's browser POSTs to
//! the token's callback URL), or until the review times out.
//!
//! ```text
//! kiln trigger draft-approval --payload '{"title":"Launch day","body":"We ship today."}'
//! kiln runs get run_...        # the log line holds the token id and its URL
//! curl -X POST -H 'content-type: application/json' -d '{"approved":true}' <url>
//! ```

use kiln_sdk::wait::{self, TokenOptions};
use kiln_sdk::{Context, TaskError, task};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A draft to review.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Draft {
    /// The post's title.
    pub title: String,
    /// Its text.
    pub body: String,
    /// How long the reviewer has (`"1h"`, `"2d"`; a day by default).
    #[serde(default)]
    pub review_timeout: Option<String>,
}

/// What the reviewer sends.
#[derive(Debug, Deserialize)]
pub struct Review {
    /// Publish or not.
    pub approved: bool,
    /// Why.
    #[serde(default)]
    pub comment: Option<String>,
}

/// How the review ended.
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Decision {
    /// Approved and published.
    Published {
        /// The published post's slug.
        slug: String,
        /// The reviewer's comment.
        comment: Option<String>,
    },
    /// Rejected.
    Rejected {
        /// The reviewer's comment.
        comment: Option<String>,
    },
    /// Nobody reviewed it in time.
    Expired,
}

/// Drafts a post and waits for a human to approve it.
#[task(id = "draft-approval")]
pub async fn draft_approval(payload: Draft, ctx: &Context) -> Result<Decision, TaskError> {
    let token = wait::create_token(TokenOptions {
        timeout: Some(payload.review_timeout.unwrap_or_else(|| "1d".into())),
        tags: vec!["approval".into()],
        ..Default::default()
    })
    .await?;
    ctx.log.info(
        "review requested",
        &[
            ("title", &payload.title),
            ("token", &token.id),
            ("url", &token.url),
        ],
    );
    Ok(match wait::for_token::<Review>(token.id).await? {
        Ok(Review {
            approved: true,
            comment,
        }) => {
            let slug: String = payload
                .title
                .to_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            ctx.log.info(
                "published",
                &[
                    ("slug", &slug),
                    (
                        "words",
                        &payload.body.split_whitespace().count().to_string(),
                    ),
                ],
            );
            Decision::Published { slug, comment }
        }
        Ok(Review {
            approved: false,
            comment,
        }) => Decision::Rejected { comment },
        Err(_) => Decision::Expired,
    })
}

kiln_sdk::bundle!(draft_approval);
