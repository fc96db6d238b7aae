//! Secrets at rest (MFA seeds, signing keys) are sealed with AES-256-GCM
//! under a versioned data key: `[version][nonce(12)][ciphertext+tag]`. The
//! highest version seals; every listed version opens, so a key rotates by
//! adding a version and re-sealing at leisure. Each sealed value is bound
//! to what it belongs to (the associated data), so a sealed value copied to
//! another row does not open.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Data keys that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key list is malformed.
    #[error("data keys: {0}")]
    Keys(String),
    /// A sealed value does not open (wrong key, tampered, or another row's).
    #[error("a sealed value does not open: {0}")]
    Open(&'static str),
}

/// The data keys.
pub struct Keyring {
    keys: BTreeMap<u8, Aes256Gcm>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// Parses `VERSION:BASE64[,VERSION:BASE64…]` (32-byte keys, versions 1–255).
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let mut keys = BTreeMap::new();
        for (index, entry) in text.split([',', '\n']).map(str::trim).enumerate() {
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let (version, key) = entry.split_once(':').ok_or_else(|| {
                SealError::Keys(format!("entry {}: expected VERSION:BASE64", index + 1))
            })?;
            let version: u8 = version
                .trim()
                .parse()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| {
                    SealError::Keys(format!("entry {}: the version must be 1 to 255", index + 1))
                })?;
            let bytes = STANDARD
                .decode(key.trim())
                .map_err(|_| SealError::Keys(format!("key version {version}: not valid base64")))?;
            if bytes.len() != 32 {
                return Err(SealError::Keys(format!(
                    "key version {version}: {} bytes, expected 32",
                    bytes.len()
                )));
            }
            let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes));
            if keys.insert(version, cipher).is_some() {
                return Err(SealError::Keys(format!(
                    "key version {version} is listed twice"
                )));
            }
        }
        if keys.is_empty() {
            return Err(SealError::Keys("no key is listed".into()));
        }
        Ok(Self { keys })
    }

    /// A new key list with one random key, version 1 (for `data-key` and `--dev`).
    pub fn generate() -> String {
        format!("1:{}", STANDARD.encode(crate::random::bytes::<32>()))
    }

    /// Seals `plain`, bound to `context`.
    pub fn seal(&self, plain: &[u8], context: &[u8]) -> Vec<u8> {
        let Some((version, cipher)) = self.keys.last_key_value() else {
            return Vec::new();
        };
        let nonce = crate::random::bytes::<12>();
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + 12 + sealed.len());
        out.push(*version);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`Keyring::seal`] sealed with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::Open("empty"))?;
        if rest.len() < 12 + 16 {
            return Err(SealError::Open("too short"));
        }
        let cipher = self.keys.get(&version).ok_or(SealError::Open(
            "sealed with a key version no longer listed",
        ))?;
        let (nonce, body) = rest.split_at(12);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context,
                },
            )
            .map_err(|_| SealError::Open("wrong key, tampered, or sealed for another row"))
    }

    /// Whether `sealed` was sealed with an older version than the current one.
    pub fn is_stale(&self, sealed: &[u8]) -> bool {
        let newest = self.keys.last_key_value().map(|(v, _)| *v);
        sealed.first().copied() != newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_under_any_listed_version_and_only_in_their_context() {
        let old = Keyring::parse(&Keyring::generate()).unwrap();
        let sealed = old.seal(b"seed", b"user-1");
        assert_eq!(old.open(&sealed, b"user-1").unwrap(), b"seed");
        assert!(old.open(&sealed, b"user-2").is_err());

        let old_text = Keyring::generate();
        let new_key = Keyring::generate().replace("1:", "2:");
        let both = Keyring::parse(&format!("{old_text},{new_key}")).unwrap();
        let first = Keyring::parse(&old_text).unwrap();
        let sealed_by_1 = first.seal(b"seed", b"ctx");
        assert_eq!(both.open(&sealed_by_1, b"ctx").unwrap(), b"seed");
        assert!(both.is_stale(&sealed_by_1));
        let sealed_by_2 = both.seal(b"seed", b"ctx");
        assert_eq!(sealed_by_2[0], 2);
        assert!(!both.is_stale(&sealed_by_2));
        assert!(first.open(&sealed_by_2, b"ctx").is_err());

        let mut tampered = sealed_by_2.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(both.open(&tampered, b"ctx").is_err());
    }

    #[test]
    fn bad_key_lists_are_refused_with_the_reason() {
        for (text, expected) in [
            ("", "no key"),
            ("1:abc", "not valid base64"),
            ("1:AAAA", "3 bytes"),
            ("0:AAAA", "1 to 255"),
            ("nokey", "VERSION:BASE64"),
        ] {
            let error = Keyring::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
