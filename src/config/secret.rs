//! Keys in the file: the ones clients present (route and admin keys), and the one sent to
//! a backend. Their `Debug` form never shows the secret.

use sha2::{Digest, Sha256};
use std::fmt;

/// A key a caller must present: the key itself, or `sha256:<64 hex digits>` of it so the
/// file need not hold the secret. Compared by its SHA-256 digest.
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Secret {
    written: String,
    digest: [u8; 32],
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, String> {
        let digest = match text.strip_prefix("sha256:") {
            Some(hex) => hex::decode(hex)
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or("sha256: must be followed by 64 hex digits")?,
            None => Sha256::digest(text.as_bytes()).into(),
        };
        Ok(Secret {
            written: text.to_string(),
            digest,
        })
    }

    /// The SHA-256 of the key.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// How many characters the key has, when the file holds the key itself (not a digest):
    /// how guessable it is.
    pub fn plain_chars(&self) -> Option<usize> {
        (!self.written.starts_with("sha256:")).then(|| self.written.chars().count())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

text_value!(Secret);

/// The key sent to a backend, already in the `Authorization: Bearer KEY` form it is sent in.
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Bearer {
    written: String,
    header: http::HeaderValue,
}

impl Bearer {
    pub fn parse(text: &str) -> Result<Bearer, String> {
        let header = http::HeaderValue::from_str(&format!("Bearer {text}"))
            .map_err(|_| "not usable in a header".to_string())?;
        Ok(Bearer {
            written: text.to_string(),
            header,
        })
    }

    /// `Bearer KEY`, the `Authorization` value.
    pub fn header(&self) -> &http::HeaderValue {
        &self.header
    }
}

impl fmt::Display for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bearer(…)")
    }
}

text_value!(Bearer);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_hashed_keys_have_the_same_digest() {
        let key = "k".repeat(20);
        let hashed = format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())));
        let (a, b) = (Secret::parse(&key), Secret::parse(&hashed));
        assert_eq!(
            a.as_ref().map(Secret::digest),
            b.as_ref().map(Secret::digest)
        );
        assert_eq!(a.map(|s| s.plain_chars()), Ok(Some(20)));
        assert_eq!(b.map(|s| s.plain_chars()), Ok(None));
        for bad in ["sha256:", "sha256:abc", &format!("{hashed}00"), "sha256:zz"] {
            assert!(Secret::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(format!("{:?}", Secret::parse(&key)), "Ok(Secret(…))");
    }

    #[test]
    fn bearer() {
        let b = Bearer::parse("sk-123").expect("key");
        assert_eq!(b.header(), "Bearer sk-123");
        assert!(Bearer::parse("a\nb").is_err());
    }
}
