//! Redaction: secret values kept out of what a run leaves behind.
//!
//! A [`Redactor`] holds the secret values an attempt may know (its
//! environment's secrets, and every secret value the attempt read, which a
//! rotation may since have replaced) and masks each one, as written and as
//! it appears inside a JSON string, wherever the host stores text the task
//! produced: log lines and their fields, panic messages, errors, outputs,
//! metadata, stream chunks and the requests of durable fetches.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

/// What a secret value is replaced with (Trigger.dev's mask).
pub const MASK: &str = "<redacted>";
/// Values shorter than this are not redacted: masking every `1` or `on`
/// would garble every text while hiding nothing worth hiding.
pub const MIN_LEN: usize = 4;

/// The secret values to mask, shared by the host and the executor.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    patterns: Arc<RwLock<Vec<String>>>,
}

impl Redactor {
    /// A redactor for `values`.
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let redactor = Redactor::default();
        for value in values {
            redactor.add(&value);
        }
        redactor
    }

    /// Masks `value` from now on (and its JSON-escaped form, when that
    /// differs). Values under [`MIN_LEN`] bytes are ignored.
    pub fn add(&self, value: &str) {
        if value.len() < MIN_LEN {
            return;
        }
        let escaped = serde_json::to_string(value)
            .ok()
            .map(|quoted| quoted[1..quoted.len() - 1].to_string())
            .filter(|escaped| escaped != value);
        let mut patterns = self.patterns.write().unwrap_or_else(|p| p.into_inner());
        for pattern in std::iter::once(value.to_string()).chain(escaped) {
            if !patterns.contains(&pattern) {
                patterns.push(pattern);
            }
        }
        // Longest first, so a secret that contains another is masked whole.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.patterns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// `text` with every secret value masked.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let patterns = self.patterns.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Cow::Borrowed(text);
        for pattern in patterns.iter() {
            if out.contains(pattern.as_str()) {
                out = Cow::Owned(out.replace(pattern.as_str(), MASK));
            }
        }
        out
    }

    /// [`Redactor::redact`] of an owned string.
    pub fn redact_owned(&self, text: String) -> String {
        match self.redact(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(masked) => masked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_as_written_and_inside_json() {
        let redactor = Redactor::new(["sk_live_123".to_string(), "a\"quoted\"secret".to_string()]);
        assert_eq!(
            redactor.redact("Authorization: Bearer sk_live_123"),
            "Authorization: Bearer <redacted>"
        );
        let json = serde_json::json!({ "token": "a\"quoted\"secret" }).to_string();
        assert_eq!(redactor.redact(&json), r#"{"token":"<redacted>"}"#);
        assert!(matches!(redactor.redact("nothing here"), Cow::Borrowed(_)));
        // Short values are not masked; a longer secret holding a shorter
        // one is masked whole.
        redactor.add("abc");
        redactor.add("sk_live_123_and_more");
        assert_eq!(
            redactor.redact("abc sk_live_123_and_more"),
            "abc <redacted>"
        );
        assert!(Redactor::default().is_empty());
        assert_eq!(
            redactor.redact_owned("x sk_live_123".into()),
            "x <redacted>"
        );
    }
}
