//! Minting public access tokens: `POST /api/v1/auth/public-tokens` (what the
//! official SDK calls with a `tr_<env>_sk_...` key, which it may not sign
//! with itself) and `POST /api/v1/auth/jwt/claims` (what it calls before
//! signing one itself with a key of another shape).

use super::access::Caller;
use super::{ApiError, Env};
use crate::jwt::{Claims, DEFAULT_TTL_SECS};
use axum::Json;
use axum::body::Bytes;
use axum::extract::Extension;
use serde::Deserialize;
use serde_json::{Value, json};

/// The longest a minted token may live: a year.
const MAX_TTL_SECS: u64 = 365 * 86_400;

/// `POST /api/v1/auth/jwt/claims`: the claims a token of this environment
/// carries besides its scopes and expiry.
pub(super) async fn claims(Extension(caller): Extension<Caller>) -> Json<Value> {
    Json(json!({ "sub": &*caller.environment, "pub": true }))
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "PublicTokenBody")]
pub(super) struct CreateBody {
    #[serde(default)]
    scopes: Vec<String>,
    /// A duration (`"1h"`), or when it expires as Unix seconds.
    expiration_time: Option<Value>,
    #[serde(default)]
    one_time_use: bool,
}

/// `POST /api/v1/auth/public-tokens` `{scopes, expirationTime?,
/// oneTimeUse?}` -> `{token}`.
pub(super) async fn create(
    Env(state): Env,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: CreateBody = super::json_body_or_default(&body)?;
    if body.scopes.is_empty() {
        return Err(ApiError::bad_request(
            "A public access token needs at least one scope, e.g. `read:runs:run_...`",
        ));
    }
    if let Some(bad) = body.scopes.iter().find(|s| !valid_scope(s)) {
        return Err(ApiError::bad_request(format!(
            "`{bad}` is not a scope like `read:runs:<run id>`, `read:tags:<tag>`, `trigger:tasks:<task>` or `write:waitpoints:<token id>`"
        )));
    }
    let now = kiln_types::Timestamp::now().as_millis() / 1000;
    let exp = expiry(body.expiration_time.as_ref(), now)?;
    let mut claims = Claims::new(&caller.environment, body.scopes, now, 0);
    claims.exp = exp;
    claims.otu = body.one_time_use;
    claims.key_id = caller.key_id.clone();
    Ok(Json(
        json!({ "token": crate::jwt::encode(&state.signing_secret, &claims) }),
    ))
}

/// `action:resource[:id]` with a known action, or `admin`.
fn valid_scope(scope: &str) -> bool {
    if scope == "admin" {
        return true;
    }
    let mut parts = scope.splitn(3, ':');
    let action = parts.next().unwrap_or_default();
    let resource = parts.next().unwrap_or_default();
    matches!(action, "read" | "write" | "trigger" | "batchTrigger")
        && !resource.is_empty()
        && parts.next().is_none_or(|id| !id.trim().is_empty())
}

/// When a token expires: `expirationTime` as a duration from now or Unix
/// seconds, the SDK's 15 minutes by default, a year at most.
fn expiry(given: Option<&Value>, now: u64) -> Result<u64, ApiError> {
    let exp = match given {
        None | Some(Value::Null) => now + DEFAULT_TTL_SECS,
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!("expirationTime `{n}` is not Unix seconds"))
        })?,
        Some(Value::String(text)) => {
            let ms = crate::duration::parse_ms(text)
                .map_err(|e| ApiError::bad_request(format!("expirationTime: {e}")))?;
            now.saturating_add(ms / 1000)
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "expirationTime `{other}` is neither a duration nor Unix seconds"
            )));
        }
    };
    if exp <= now {
        return Err(ApiError::bad_request("expirationTime is in the past"));
    }
    Ok(exp.min(now + MAX_TTL_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_expiry_are_checked() {
        assert!(valid_scope("read:runs:run_1"));
        assert!(valid_scope("read:runs"));
        assert!(valid_scope("admin"));
        assert!(!valid_scope("read"));
        assert!(!valid_scope("delete:runs:run_1"));
        assert!(!valid_scope("read:runs: "));
        assert_eq!(expiry(None, 100).unwrap(), 1_000);
        assert_eq!(expiry(Some(&json!("1h")), 100).unwrap(), 3_700);
        assert_eq!(expiry(Some(&json!(500)), 100).unwrap(), 500);
        assert!(expiry(Some(&json!(50)), 100).is_err());
        assert!(expiry(Some(&json!("soon")), 100).is_err());
    }
}
