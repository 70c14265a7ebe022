//! Public access tokens: HS256 JWTs signed with the secret key, returned in
//! `x-trigger-jwt` so the official SDK never has to sign one itself.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a public access token is valid, in seconds.
const TTL_SECS: u64 = 3_600;

/// A token granting `scopes` (e.g. `read:runs:run_...`).
pub(crate) fn sign(secret: &str, environment: &str, scopes: &[String], now_secs: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "sub": environment,
        "pub": true,
        "scopes": scopes,
        "iat": now_secs,
        "exp": now_secs + TTL_SECS,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return signing_input,
    };
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
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
    fn tokens_are_three_parts_with_the_scopes() {
        let token = sign("k", "dev", &["read:runs:run_1".into()], 10);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["scopes"][0], "read:runs:run_1");
        assert_eq!(claims["exp"], 3_610);
        assert_ne!(token, sign("other", "dev", &["read:runs:run_1".into()], 10));
    }
}
