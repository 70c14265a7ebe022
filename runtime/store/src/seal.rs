//! Sealing: what Kiln keeps encrypted at rest.
//!
//! Environment variables and snapshot layers (a waiting guest's memory,
//! which holds whatever secrets the task read) are sealed with the server's
//! master key before they reach the store, so a copy of the store alone
//! reveals neither. The key lives outside the store: a file in the data
//! directory or `KILN_MASTER_KEY` (see the server's `master_key` module).
//!
//! The cipher is ChaCha20-Poly1305 from `ring` (already in Kiln's tree for
//! TLS and JWTs), with a random 96-bit nonce per message. A sealed value is
//! `nonce || ciphertext || tag`; the associated data binds it to what it is
//! (an environment variable's name, a layer's key), so a sealed value moved
//! to another record does not open.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The length of a master key, in bytes.
pub const KEY_LEN: usize = 32;
/// What sealing adds to a value: the nonce and the tag.
pub const OVERHEAD: usize = NONCE_LEN + 16;

/// Why a sealed value does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a sealed value does not open with this server's master key (wrong key, or damaged)")]
pub struct OpenError;

/// Why a value could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealing failed: the system's random source gave no nonce")]
pub struct SealError;

/// The server's master key.
pub struct SealKey {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .unwrap_or_else(|_| unreachable!("a 32-byte key fits ChaCha20-Poly1305"));
        SealKey {
            key: LessSafeKey::new(unbound),
            random: SystemRandom::new(),
        }
    }

    /// 32 fresh random bytes for a new key.
    pub fn generate() -> Result<[u8; KEY_LEN], String> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| "the system's random source failed".to_string())?;
        Ok(bytes)
    }

    /// Seals `plain`, bound to `context`. Fails closed: without a fresh
    /// random nonce nothing is sealed.
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| SealError)?;
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let mut body = out.split_off(NONCE_LEN);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut body,
            )
            .unwrap_or_else(|_| unreachable!("sealing fails only past 256 GiB"));
        out.extend_from_slice(&body);
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens what [`SealKey::seal`] made with the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < OVERHEAD {
            return Err(OpenError);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut body,
            )
            .map_err(|_| OpenError)?;
        let len = plain.len();
        body.truncate(len);
        Ok(body)
    }
}

/// What the check value seals: opening it proves the key is the store's.
const CHECK: &[u8] = b"kiln master key check";

impl crate::Store {
    /// Whether a master key has sealed this store's values before (its
    /// check value is there).
    pub fn sealed_before(&self) -> Result<bool, String> {
        self.backend
            .get(crate::layout::SEAL_CHECK)
            .map(|v| v.is_some())
            .map_err(|e| e.to_string())
    }

    /// Checks that this store's master key is the one its sealed values
    /// were sealed with (a sealed check value, written on first use), so a
    /// server started with another key refuses to start rather than failing
    /// every variable read and dropping every snapshot.
    pub async fn verify_seal_key(&self) -> Result<(), String> {
        let key = self.seal_key().map_err(|e| e.to_string())?;
        match self.backend.get(crate::layout::SEAL_CHECK).map_err(|e| e.to_string())? {
            Some(sealed) => match key.open(crate::layout::SEAL_CHECK, &sealed) {
                Ok(plain) if plain == CHECK => Ok(()),
                _ => Err(
                    "the master key is not the one this store's variables and snapshots were sealed with"
                        .into(),
                ),
            },
            None => {
                let sealed = key
                    .seal(crate::layout::SEAL_CHECK, CHECK)
                    .map_err(|e| e.to_string())?;
                self.backend
                    .commit(vec![crate::Op::Put(crate::layout::SEAL_CHECK.to_vec(), sealed)])
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let key = SealKey::from_bytes(&[7; KEY_LEN]);
        let sealed = key.seal(b"envvar/STRIPE_KEY", b"sk_live_123456").unwrap();
        assert_eq!(sealed.len(), 14 + OVERHEAD);
        assert!(
            !sealed.windows(14).any(|w| w == b"sk_live_123456"),
            "the plain text is not in the sealed bytes"
        );
        assert_eq!(
            key.open(b"envvar/STRIPE_KEY", &sealed).unwrap(),
            b"sk_live_123456"
        );
        assert_eq!(key.open(b"envvar/OTHER", &sealed), Err(OpenError));
        let other = SealKey::from_bytes(&[8; KEY_LEN]);
        assert_eq!(other.open(b"envvar/STRIPE_KEY", &sealed), Err(OpenError));
        let mut damaged = sealed.clone();
        damaged[NONCE_LEN] ^= 1;
        assert_eq!(key.open(b"envvar/STRIPE_KEY", &damaged), Err(OpenError));
        assert_eq!(key.open(b"x", b"short"), Err(OpenError));
        assert_ne!(
            key.seal(b"c", b"same").unwrap(),
            key.seal(b"c", b"same").unwrap(),
            "every seal has its own nonce"
        );
        assert_eq!(key.open(b"c", &key.seal(b"c", b"").unwrap()).unwrap(), b"");
    }

    #[tokio::test]
    async fn a_store_refuses_a_master_key_it_was_not_sealed_with() {
        let backend = std::sync::Arc::new(crate::MemoryBackend::new());
        let first = crate::Store::new(backend.clone())
            .sealed(std::sync::Arc::new(SealKey::from_bytes(&[1; KEY_LEN])));
        first.verify_seal_key().await.unwrap();
        first.verify_seal_key().await.unwrap();
        let other = crate::Store::new(backend)
            .sealed(std::sync::Arc::new(SealKey::from_bytes(&[2; KEY_LEN])));
        assert!(other.verify_seal_key().await.is_err());
    }
}
