//! Key-pair authentication: a JWT signed with the user's RSA private key.
//!
//! Snowflake checks `iss` = `ACCOUNT.USER.SHA256:<fingerprint>`, where the
//! fingerprint is the base64 SHA-256 of the public key (DER, SubjectPublicKeyInfo)
//! registered for the user, and `sub` = `ACCOUNT.USER`; tokens live at most an hour.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::RsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::SnowflakeError;

#[derive(Serialize)]
struct Claims {
    iss: String,
    sub: String,
    iat: i64,
    exp: i64,
}

/// The account part Snowflake expects in claims: upper case, without region or cloud suffixes.
fn account_for_claims(account: &str) -> String {
    account
        .split('.')
        .next()
        .unwrap_or(account)
        .to_ascii_uppercase()
}

/// `SHA256:<base64>` of the public key matching `private_key_pem`.
pub fn public_key_fingerprint(private_key_pem: &str) -> Result<String, SnowflakeError> {
    let key = RsaPrivateKey::from_pkcs8_pem(private_key_pem)
        .map_err(|e| SnowflakeError::Key(format!("not a PKCS#8 PEM RSA private key: {e}")))?;
    let der = key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| SnowflakeError::Key(e.to_string()))?;
    let digest = Sha256::digest(der.as_bytes());
    Ok(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    ))
}

/// A fresh login token for `user` in `account`, valid for 59 minutes.
pub fn token(account: &str, user: &str, private_key_pem: &str) -> Result<String, SnowflakeError> {
    let qualified = format!(
        "{}.{}",
        account_for_claims(account),
        user.to_ascii_uppercase()
    );
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        iss: format!("{qualified}.{}", public_key_fingerprint(private_key_pem)?),
        sub: qualified,
        iat: now,
        exp: now + 59 * 60,
    };
    let key = EncodingKey::from_rsa_pem(private_key_pem.as_bytes())
        .map_err(|e| SnowflakeError::Key(e.to_string()))?;
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key)
        .map_err(|e| SnowflakeError::Key(e.to_string()))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};

    use super::*;

    #[derive(serde::Deserialize)]
    struct Decoded {
        iss: String,
        sub: String,
        iat: i64,
        exp: i64,
    }

    #[test]
    fn tokens_are_signed_by_the_key_and_name_its_fingerprint() {
        let mut rng = rsa::rand_core::OsRng;
        let key = RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let jwt = token("myorg-acct.eu-central-1", "loader", &pem).unwrap();

        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let decoding = DecodingKey::from_rsa_pem(public_pem.as_bytes()).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<Decoded>(&jwt, &decoding, &validation)
            .unwrap()
            .claims;
        assert_eq!(claims.sub, "MYORG-ACCT.LOADER");
        let fingerprint = public_key_fingerprint(&pem).unwrap();
        assert_eq!(claims.iss, format!("MYORG-ACCT.LOADER.{fingerprint}"));
        assert!(fingerprint.starts_with("SHA256:") && fingerprint.len() == 7 + 44);
        assert!(claims.exp - claims.iat <= 3600);
    }

    #[test]
    fn a_key_that_is_not_pem_is_refused_with_the_reason() {
        let error = token("a", "u", "not a key").unwrap_err();
        assert!(error.to_string().contains("PKCS#8"), "{error}");
    }
}
