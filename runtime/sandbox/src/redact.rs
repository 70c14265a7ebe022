//! Redaction: secret values kept out of what a run leaves behind.
//!
//! A [`Redactor`] holds the secret values an attempt may know (its
//! environment's secrets, and every secret value the attempt read, which a
//! rotation may since have replaced) and masks each one wherever the host
//! stores text the task produced: log lines and their fields, panic
//! messages, errors, outputs, metadata, stream chunks, and the requests and
//! responses of durable fetches. A value is masked as written, as it
//! appears inside a JSON string, percent-encoded (URLs, form bodies) and
//! base64-encoded (HTTP Basic credentials put the key first, so its
//! encoding starts the header's).

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine as _;
use std::borrow::Cow;
use std::sync::{Arc, RwLock};

/// What a secret value is replaced with (Trigger.dev's mask).
pub const MASK: &str = "<redacted>";
/// Values shorter than this are not redacted: masking every `1` or `on`
/// would garble every text while hiding nothing worth hiding.
pub const MIN_LEN: usize = 4;

/// Secrets shorter than this are not looked for base64-encoded: a short
/// encoding would match ordinary base64 text by chance.
const MIN_BASE64_LEN: usize = 12;

/// The secret values to mask, shared by the host and the executor.
#[derive(Clone, Default)]
pub struct Redactor {
    inner: Arc<RwLock<Patterns>>,
}

/// Every form of every secret, and one automaton that finds them all in a
/// single pass over a text (leftmost-longest, so a secret that holds
/// another is masked whole).
#[derive(Default)]
struct Patterns {
    forms: Vec<String>,
    finder: Finder,
}

/// How the forms are searched for.
#[derive(Default, Clone)]
enum Finder {
    /// There is nothing to mask.
    #[default]
    Nothing,
    /// One automaton for every form.
    Ready(AhoCorasick),
    /// The automaton could not be built (far more or larger secrets than an
    /// environment holds): every text is masked whole rather than stored
    /// with a secret in it.
    Broken,
}

impl Patterns {
    /// Adds the forms of `value`; false when there was nothing new.
    fn push(&mut self, value: &str) -> bool {
        if value.len() < MIN_LEN || self.forms.iter().any(|p| p == value) {
            return false;
        }
        for form in forms(value) {
            if !self.forms.contains(&form) {
                self.forms.push(form);
            }
        }
        true
    }

    /// Builds the automaton: a contiguous NFA, quick to build for the few
    /// dozen patterns an environment has and quick to search.
    fn build(&mut self) {
        self.finder = if self.forms.is_empty() {
            Finder::Nothing
        } else {
            match AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .build(&self.forms)
            {
                Ok(finder) => Finder::Ready(finder),
                Err(error) => {
                    tracing::error!(%error, "the secrets' patterns could not be compiled; masking every text whole");
                    Finder::Broken
                }
            }
        };
    }
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.inner.read().map(|p| p.forms.len()).unwrap_or(0);
        write!(f, "Redactor({count} patterns)")
    }
}

/// The forms a value takes in text a task produces.
fn forms(value: &str) -> Vec<String> {
    let mut forms = vec![value.to_string()];
    if let Ok(quoted) = serde_json::to_string(value) {
        forms.push(quoted[1..quoted.len() - 1].to_string());
    }
    // Percent-encoded as encoders differ: everything but letters and
    // digits; RFC 3986's unreserved set kept (`urlencoding`, most URL
    // builders); JavaScript's `encodeURIComponent`; and form encoding
    // (`+` for a space: query strings built by reqwest, HTML forms).
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    const URI_COMPONENT: &AsciiSet = &UNRESERVED
        .remove(b'!')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')')
        .remove(b'*');
    for set in [NON_ALPHANUMERIC, UNRESERVED, URI_COMPONENT] {
        forms.push(utf8_percent_encode(value, set).to_string());
    }
    forms.push(form_urlencoded::byte_serialize(value.as_bytes()).collect());
    if value.len() >= MIN_BASE64_LEN {
        // Only the characters that depend on the value's bytes alone.
        let whole = value.len() / 3 * 3;
        for engine in [
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            forms.push(engine.encode(&value.as_bytes()[..whole]));
        }
    }
    forms.sort();
    forms.dedup();
    forms
}

impl Redactor {
    /// A redactor for `values` (its automaton built once).
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut patterns = Patterns::default();
        for value in values {
            patterns.push(&value);
        }
        patterns.build();
        Redactor {
            inner: Arc::new(RwLock::new(patterns)),
        }
    }

    /// Every form of every value it masks (to give another process's
    /// redactor the same patterns, with [`Redactor::from_forms`]).
    pub fn forms(&self) -> Vec<String> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .forms
            .clone()
    }

    /// A redactor masking exactly `forms` (those [`Redactor::forms`] gave).
    pub fn from_forms(forms: Vec<String>) -> Self {
        let mut patterns = Patterns {
            forms,
            finder: Finder::Nothing,
        };
        patterns.build();
        Redactor {
            inner: Arc::new(RwLock::new(patterns)),
        }
    }

    /// A redactor of its own with the same patterns: what is added to one
    /// is not added to the other.
    pub fn fork(&self) -> Redactor {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        Redactor {
            inner: Arc::new(RwLock::new(Patterns {
                forms: inner.forms.clone(),
                finder: inner.finder.clone(),
            })),
        }
    }

    /// Masks `value` from now on, in each of its forms. Values under
    /// [`MIN_LEN`] bytes are ignored.
    pub fn add(&self, value: &str) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if inner.push(value) {
            inner.build();
        }
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .forms
            .is_empty()
    }

    /// `text` with every secret value masked.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        match &inner.finder {
            Finder::Ready(finder) if finder.is_match(text) => {
                let masks = vec![MASK; inner.forms.len()];
                Cow::Owned(finder.replace_all(text, &masks))
            }
            Finder::Broken if !text.is_empty() => Cow::Owned(MASK.to_string()),
            _ => Cow::Borrowed(text),
        }
    }

    /// `bytes` with every secret value masked, or `None` when none is in
    /// them (for bodies that are not UTF-8 text).
    pub fn redact_bytes(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        match &inner.finder {
            Finder::Ready(finder) if finder.is_match(bytes) => {
                let masks = vec![MASK.as_bytes(); inner.forms.len()];
                Some(finder.replace_all_bytes(bytes, &masks))
            }
            Finder::Broken if !bytes.is_empty() => Some(MASK.as_bytes().to_vec()),
            _ => None,
        }
    }

    /// A JSON document with every secret value masked inside its strings
    /// (and keys), so the document stays valid JSON whatever the secret
    /// looks like; text that is not JSON is masked as text.
    pub fn redact_json(&self, json: String) -> String {
        if self.is_empty() {
            return json;
        }
        match serde_json::from_str::<serde_json::Value>(&json) {
            Ok(mut value) => {
                if self.redact_value(&mut value) {
                    value.to_string()
                } else {
                    json
                }
            }
            Err(_) => self.redact_owned(json),
        }
    }

    /// Masks the strings of `value` in place; true when any changed.
    fn redact_value(&self, value: &mut serde_json::Value) -> bool {
        use serde_json::Value;
        match value {
            Value::String(text) => match self.redact(text) {
                Cow::Owned(masked) => {
                    *text = masked;
                    true
                }
                Cow::Borrowed(_) => false,
            },
            Value::Array(items) => {
                // Every item, not only up to the first that changed.
                let mut changed = false;
                for item in items.iter_mut() {
                    changed |= self.redact_value(item);
                }
                changed
            }
            Value::Object(map) => {
                let mut changed = false;
                let entries = std::mem::take(map);
                for (key, mut item) in entries {
                    changed |= self.redact_value(&mut item);
                    let key = match self.redact(&key) {
                        Cow::Owned(masked) => {
                            changed = true;
                            masked
                        }
                        Cow::Borrowed(_) => key,
                    };
                    map.insert(key, item);
                }
                changed
            }
            _ => false,
        }
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

    #[test]
    fn encoded_forms_and_bytes_are_masked_and_json_stays_json() {
        use base64::engine::general_purpose::STANDARD;
        let secret = "sk_live_ab/c+d=efgh";
        let redactor = Redactor::new([secret.to_string(), "4567".to_string()]);
        // HTTP Basic with the key as the user (Stripe's `-u sk_...:`).
        let basic = format!("Basic {}", STANDARD.encode(format!("{secret}:")));
        assert!(redactor.redact(&basic).contains(MASK), "{basic}");
        // As other encoders write it: `_`, `-`, `.` kept, `/` encoded.
        let url = "https://x/?k=sk_live_ab%2Fc%2Bd%3Defgh";
        assert_eq!(redactor.redact(url), "https://x/?k=<redacted>");
        let form = format!(
            "k={}",
            form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()
        );
        assert_eq!(redactor.redact(&form), "k=<redacted>");
        let mut body = vec![0xff, 0xfe];
        body.extend_from_slice(secret.as_bytes());
        let masked = redactor.redact_bytes(&body).unwrap();
        assert_eq!(&masked[2..], MASK.as_bytes());
        assert_eq!(redactor.redact_bytes(b"\xffnothing"), None);
        // A numeric secret leaves numbers alone and JSON valid.
        let json = r#"{"amount":1234567,"note":"card 4567","sk_live_ab/c+d=efgh":true}"#;
        assert_eq!(
            redactor.redact_json(json.to_string()),
            r#"{"amount":1234567,"note":"card <redacted>","<redacted>":true}"#
        );
        assert_eq!(
            redactor.redact_json("not json 4567".into()),
            "not json <redacted>"
        );
        assert!(!format!("{redactor:?}").contains(secret));
    }
}
