//! API key secrets behind [`confab_ports::ApiKeySecrets`]: 32 bytes from
//! the operating system, base64url; stored as their SHA-256.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use confab_domain::{ApiKeyDigest, DomainError};
use confab_ports::ApiKeySecrets;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Mints and digests API key secrets.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeySecrets;

impl ApiKeySecrets for KeySecrets {
    fn mint(&self) -> Result<String, DomainError> {
        let mut bytes = [0_u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| DomainError::internal(format!("the system random source failed: {e}")))?;
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    fn digest(&self, secret: &str) -> ApiKeyDigest {
        let sum = Sha256::digest(secret.as_bytes());
        let hex = sum.iter().map(|b| format!("{b:02x}")).collect();
        ApiKeyDigest::from_trusted(hex)
    }

    fn matches(&self, secret: &str, digest: &ApiKeyDigest) -> bool {
        let computed = self.digest(secret);
        bool::from(
            computed
                .as_str()
                .as_bytes()
                .ct_eq(digest.as_str().as_bytes()),
        )
    }
}

#[cfg(test)]
mod tests {
    use confab_domain::{ApiKeyId, ApiKeyText};

    use super::*;

    #[test]
    fn a_minted_secret_makes_a_key_text_and_matches_its_digest_only() {
        let secrets = KeySecrets;
        let secret = secrets.mint().unwrap();
        let other = secrets.mint().unwrap();
        assert_ne!(secret, other, "fresh randomness each time");
        let text = ApiKeyText::new(ApiKeyId::generate(), secret.clone()).unwrap();
        assert_eq!(ApiKeyText::parse(&text.expose()), Some(text));
        let digest = secrets.digest(&secret);
        assert_eq!(digest.as_str().len(), 64);
        assert!(!digest.as_str().contains(&secret));
        assert!(secrets.matches(&secret, &digest));
        assert!(!secrets.matches(&other, &digest));
        assert!(!secrets.matches("", &digest));
        // The SHA-256 of "abc", as published.
        assert_eq!(
            secrets.digest("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
