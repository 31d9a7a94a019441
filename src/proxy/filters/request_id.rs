//! `X-Request-ID`: keep a sane one from the client, else make a new one.

use http::{HeaderMap, HeaderValue};

pub const HEADER: &str = "x-request-id";

/// The client's id if it is 1–128 characters of `[A-Za-z0-9._:-]`, else a fresh UUID. A
/// header value, since it goes into the upstream request and the answer: the client's shares
/// the parsed head's bytes, and a new one is formatted on the stack and copied once.
pub fn pick(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(HEADER)
        .filter(|v| v.to_str().is_ok_and(is_sane))
        .cloned()
        .unwrap_or_else(fresh)
}

/// The id as text for logs (always ASCII: [`pick`] makes no other).
pub fn text(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or_default()
}

fn fresh() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn is_sane(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_only() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, "abc-123".parse().unwrap());
        assert_eq!(pick(&h), "abc-123");
        h.insert(HEADER, "has space".parse().unwrap());
        assert_ne!(pick(&h), "has space");
        let fresh = pick(&HeaderMap::new());
        assert_eq!(text(&fresh).len(), 36);
        assert!(uuid::Uuid::parse_str(text(&fresh)).is_ok());
        h.insert(HEADER, HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        assert_eq!(text(&pick(&h)).len(), 36);
    }
}
