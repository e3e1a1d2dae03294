//! The PHC string form of a PBKDF2-SHA256 hash.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;

const ID: &str = "pbkdf2-sha256";
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;

/// PBKDF2-HMAC-SHA256 of `password` and `salt` over `iterations`, 32 bytes.
#[must_use]
pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    let mut out = [0_u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut out);
    out
}

/// A parsed `$pbkdf2-sha256$i=…,l=32$salt$hash`.
pub(crate) struct Phc {
    iterations: u32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl Phc {
    /// Hashes `password` with a fresh random salt.
    pub(crate) fn new(password: &[u8], iterations: u32) -> Result<Self, getrandom::Error> {
        let mut salt = [0_u8; SALT_LEN];
        getrandom::fill(&mut salt)?;
        let hash = derive(password, &salt, iterations).to_vec();
        Ok(Self {
            iterations,
            salt: salt.to_vec(),
            hash,
        })
    }

    /// Reads a stored PHC string; `None` when it is not one of ours.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let mut fields = s.strip_prefix('$')?.split('$');
        if fields.next()? != ID {
            return None;
        }
        let mut iterations = None;
        for param in fields.next()?.split(',') {
            match param.split_once('=')? {
                ("i", v) => iterations = v.parse::<u32>().ok().filter(|i| *i > 0),
                ("l", v) if v.parse::<usize>().ok()? == HASH_LEN => {}
                _ => return None,
            }
        }
        let salt = B64.decode(fields.next()?).ok()?;
        let hash = B64.decode(fields.next()?).ok()?;
        if fields.next().is_some() || hash.len() != HASH_LEN || salt.is_empty() {
            return None;
        }
        Some(Self {
            iterations: iterations?,
            salt,
            hash,
        })
    }

    pub(crate) fn iterations(&self) -> u32 {
        self.iterations
    }

    pub(crate) fn salt(&self) -> &[u8] {
        &self.salt
    }

    pub(crate) fn hash(&self) -> &[u8] {
        &self.hash
    }
}

impl fmt::Display for Phc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "${ID}$i={},l={HASH_LEN}${}${}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.hash)
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc7914_test_vector() {
        // RFC 7914 §11: PBKDF2-HMAC-SHA256, P="passwd", S="salt", c=1 (first 32 bytes).
        let out = derive(b"passwd", b"salt", 1);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    #[test]
    fn phc_round_trips() {
        let phc = Phc::new(b"pw", 1_000).unwrap();
        let text = phc.to_string();
        let back = Phc::parse(&text).unwrap();
        assert_eq!(back.iterations(), 1_000);
        assert_eq!(back.salt(), phc.salt());
        assert_eq!(back.hash(), phc.hash());
    }

    #[test]
    fn phc_refuses_foreign_and_broken_strings() {
        for bad in [
            "",
            "plain",
            "$argon2id$v=19$m=65536$c2FsdA$aGFzaA",
            "$pbkdf2-sha256$i=0,l=32$c2FsdA$aGFzaA",
            "$pbkdf2-sha256$i=10,l=32$c2FsdA$aGFzaA",
            "$pbkdf2-sha256$i=10,l=64$c2FsdA$aGFzaA",
            "$pbkdf2-sha256$x=1$c2FsdA$aGFzaA",
        ] {
            assert!(Phc::parse(bad).is_none(), "{bad}");
        }
    }
}
