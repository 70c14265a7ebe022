//! Public access tokens: HS256 JWTs signed with an environment's secret key,
//! in the shape the official SDK makes and reads (issuer
//! `https://id.trigger.dev`, audience `https://api.trigger.dev`, `sub` the
//! environment, `pub: true`, `scopes`). Kiln mints them in `x-trigger-jwt`
//! headers and through `POST /api/v1/auth/public-tokens`; the SDK signs them
//! itself with keys of other shapes. Both verify the same way.

use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How long a token in an `x-trigger-jwt` header is valid, in seconds (the
/// SDK's default for the tokens it signs is 15 minutes; a run's handle is
/// kept longer).
pub(crate) const HEADER_TTL_SECS: u64 = 3_600;
/// The SDK's default lifetime for the tokens it asks for: 15 minutes.
pub(crate) const DEFAULT_TTL_SECS: u64 = 900;
/// The issuer the official SDK puts in and checks.
pub(crate) const ISSUER: &str = "https://id.trigger.dev";
/// The audience the official SDK puts in and checks.
pub(crate) const AUDIENCE: &str = "https://api.trigger.dev";

/// A public access token's claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// The environment the token belongs to.
    pub(crate) sub: String,
    /// Always true: a public token.
    #[serde(rename = "pub", default)]
    pub(crate) public: bool,
    /// What the token allows (`read:runs:run_...`, `trigger:tasks:my-task`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) scopes: Vec<String>,
    /// A one-time-use trigger token: it triggers once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) otu: bool,
    /// The id of the project key that minted the token: revoking the key
    /// revokes the token.
    #[serde(rename = "kilnKey", default, skip_serializing_if = "Option::is_none")]
    pub(crate) key_id: Option<String>,
    /// Expiry, Unix seconds.
    pub(crate) exp: u64,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) iat: Option<u64>,
    /// The issuer.
    #[serde(default)]
    pub(crate) iss: String,
    /// The audience.
    #[serde(default)]
    pub(crate) aud: String,
}

impl Claims {
    /// Claims for `scopes` in `environment`, valid for `ttl_secs` from `now_secs`.
    pub(crate) fn new(
        environment: &str,
        scopes: Vec<String>,
        now_secs: u64,
        ttl_secs: u64,
    ) -> Self {
        Claims {
            sub: environment.to_string(),
            public: true,
            scopes,
            otu: false,
            key_id: None,
            exp: now_secs.saturating_add(ttl_secs),
            iat: Some(now_secs),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        }
    }
}

/// Signs `claims` with `secret`.
pub(crate) fn encode(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// A token granting `scopes` for [`HEADER_TTL_SECS`].
pub(crate) fn sign(secret: &str, environment: &str, scopes: &[String], now_secs: u64) -> String {
    encode(
        secret,
        &Claims::new(environment, scopes.to_vec(), now_secs, HEADER_TTL_SECS),
    )
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused(pub(crate) String);

/// The claims of `token` if `secret` signed it, it has not expired, and it
/// is a public token with the SDK's issuer and audience.
pub(crate) fn verify(secret: &str, token: &str) -> Result<Claims, Refused> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| Refused(describe(e.kind())))?;
    if !data.claims.public {
        return Err(Refused("the token is not a public access token".into()));
    }
    Ok(data.claims)
}

/// The environment a token names, read without checking it (to find the
/// secrets that may have signed it).
pub(crate) fn unverified_subject(token: &str) -> Option<String> {
    use base64::Engine as _;
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("sub")?.as_str().map(str::to_string)
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => "the public access token has expired".into(),
        ErrorKind::InvalidSignature => "the public access token's signature is not valid".into(),
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
            "the public access token's issuer or audience is not Trigger.dev's".into()
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            format!("the public access token has no `{claim}` claim")
        }
        other => format!("the public access token is malformed ({other:?})"),
    }
}

/// The signature in a wait token's callback URL: HMAC-SHA256 of the token
/// id under the secret key, hex.
pub(crate) fn token_signature(secret: &str, token_id: &str) -> String {
    signature(secret, "waitpoint-callback", token_id)
}

/// The signature of a presigned packet URL: the method, the packet's path
/// and when the URL stops working, signed with the server's key.
pub(crate) fn packet_signature(secret: &str, method: &str, path: &str, expires_ms: u64) -> String {
    signature(secret, "packet", &format!("{method} {expires_ms} {path}"))
}

/// HMAC-SHA256 of `purpose:subject` under the server's key, in hex. The
/// purpose keeps a signature made for one use from serving another.
fn signature(secret: &str, purpose: &str, subject: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(purpose.as_bytes());
    mac.update(b":");
    mac.update(subject.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_verifies_with_its_key_only() {
        let now = jsonwebtoken::get_current_timestamp();
        let token = sign("k", "dev", &["read:runs:run_1".into()], now);
        assert_eq!(token.split('.').count(), 3);
        let claims = verify("k", &token).unwrap();
        assert_eq!(claims.scopes, vec!["read:runs:run_1".to_string()]);
        assert_eq!(claims.sub, "dev");
        assert_eq!(unverified_subject(&token).as_deref(), Some("dev"));
        assert!(verify("other", &token).unwrap_err().0.contains("signature"));
    }

    #[test]
    fn expired_private_and_foreign_tokens_are_refused() {
        let now = jsonwebtoken::get_current_timestamp();
        let expired = encode("k", &Claims::new("dev", vec![], now - 100, 10));
        assert!(verify("k", &expired).unwrap_err().0.contains("expired"));
        let mut private = Claims::new("dev", vec![], now, 60);
        private.public = false;
        assert!(verify("k", &encode("k", &private)).is_err());
        let mut foreign = Claims::new("dev", vec![], now, 60);
        foreign.iss = "https://example.com".into();
        assert!(verify("k", &encode("k", &foreign)).is_err());
        assert!(verify("k", "not.a.token").is_err());
    }
}
