//! Randomness from the operating system, for every token and key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// `N` random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The OS generator failing is not something to carry on from.
    if let Err(error) = getrandom::fill(&mut out) {
        panic!("the operating system's random generator failed: {error}");
    }
    out
}

/// An opaque token: `prefix` and 32 random bytes, base64url.
pub fn token(prefix: &str) -> String {
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes::<32>()))
}

/// The SHA-256 of a token, hex: what is stored instead of it.
pub fn digest(token: &str) -> String {
    let hash = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}
