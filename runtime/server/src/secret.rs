//! The server's API key: `KILN_SECRET_KEY`, or one generated once and kept in
//! the data directory.

use rand::Rng;
use std::path::Path;

const ALPHANUMERIC: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A new key in Trigger.dev's development format: `tr_dev_sk_` and 24
/// alphanumerics.
pub fn generate_secret_key() -> String {
    generate_key_with("tr_dev_sk_")
}

/// A new key: `prefix` and 24 alphanumerics.
pub(crate) fn generate_key_with(prefix: &str) -> String {
    format!("{prefix}{}", random_alphanumeric(24))
}

/// An environment's signing secret (callback and packet URLs, public
/// tokens): 43 alphanumerics, about 256 bits.
pub(crate) fn generate_signing_secret() -> String {
    random_alphanumeric(43)
}

/// A project reference: `proj_` and 20 lowercase alphanumerics.
pub(crate) fn generate_project_ref() -> String {
    format!("proj_{}", random_alphanumeric(20).to_ascii_lowercase())
}

/// How a key is named where it must not be shown: `key_` and the start of
/// its SHA-256.
pub(crate) fn key_id(key: &str) -> String {
    use sha2::Digest;
    format!(
        "key_{}",
        &hex::encode(sha2::Sha256::digest(key.as_bytes()))[..16]
    )
}

/// A key shown without its secret part: its prefix, its first four
/// characters and an ellipsis.
pub(crate) fn masked(key: &str) -> String {
    let shown = key.rfind("_sk_").map_or(4, |i| i + 4 + 4);
    format!("{}…", key.chars().take(shown).collect::<String>())
}

pub(crate) fn random_alphanumeric(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHANUMERIC[rng.random_range(0..ALPHANUMERIC.len())] as char)
        .collect()
}

/// Whether `key` has the shape of a Trigger.dev secret key.
pub fn is_secret_key(key: &str) -> bool {
    let Some(rest) = ["tr_dev_sk_", "tr_stg_sk_", "tr_prod_sk_", "tr_preview_sk_"]
        .iter()
        .find_map(|p| key.strip_prefix(p))
    else {
        return false;
    };
    rest.len() == 24 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The key in `<data_dir>/secret-key`, created if missing. Returns the key and
/// whether it was just generated.
pub(crate) fn load_or_create(data_dir: &Path) -> std::io::Result<(String, bool)> {
    let path = data_dir.join("secret-key");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok((text.trim().to_string(), false)),
        _ => {
            let key = generate_secret_key();
            std::fs::write(&path, format!("{key}\n"))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok((key, true))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_official_shape() {
        for _ in 0..20 {
            assert!(is_secret_key(&generate_secret_key()));
        }
        assert!(!is_secret_key("tr_dev_sk_short"));
        assert!(!is_secret_key("sk_0123456789abcdefghijklmn"));
    }
}
