//! `X-Request-ID`: keep a sane one from the client, else make a new one.

use http::HeaderMap;

pub const HEADER: &str = "x-request-id";

/// The client's id if it is 1–128 characters of `[A-Za-z0-9._:-]`, else a fresh UUID.
pub fn pick(headers: &HeaderMap) -> String {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
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
        assert_eq!(pick(&HeaderMap::new()).len(), 36);
    }
}
