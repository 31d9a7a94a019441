//! `max_body`: a declared length over the limit is refused before anything goes upstream; a
//! body without a length (chunked) is held back and counted, and released to the backend only
//! once it is complete and within the limit, so a backend never sees part of an oversized body.

use bytes::{Bytes, BytesMut};
use std::time::Duration;

/// How long a refused body may keep arriving so that the client can read the 413.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// What the declared `Content-Length` says about the limit.
pub enum Declared {
    Within,
    Over(u64),
    /// No length: a chunked (or h2) body that must be counted as it arrives.
    Unknown,
}

pub fn declared(content_length: Option<&[u8]>, limit: u64) -> Declared {
    match content_length
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(n) if n > limit => Declared::Over(n),
        Some(_) => Declared::Within,
        None => Declared::Unknown,
    }
}

/// A body being held back until it is complete.
pub struct Held {
    limit: u64,
    buf: BytesMut,
}

impl Held {
    pub fn new(limit: u64) -> Self {
        Held {
            limit,
            buf: BytesMut::new(),
        }
    }

    /// Takes one chunk; answers what to send upstream now, or `Err` when over the limit.
    pub fn push(&mut self, chunk: Option<Bytes>, end: bool) -> Result<Option<Bytes>, u64> {
        if let Some(c) = chunk {
            let total = self.buf.len() as u64 + c.len() as u64;
            if total > self.limit {
                return Err(total);
            }
            self.buf.extend_from_slice(&c);
        }
        // An empty chunk withholds; the whole body goes at the end.
        Ok(Some(if end {
            self.buf.split().freeze()
        } else {
            Bytes::new()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_until_the_end() {
        let mut h = Held::new(10);
        assert_eq!(
            h.push(Some(Bytes::from_static(b"abc")), false).unwrap(),
            Some(Bytes::new())
        );
        assert_eq!(
            h.push(Some(Bytes::from_static(b"def")), true).unwrap(),
            Some(Bytes::from_static(b"abcdef"))
        );
        assert_eq!(
            h.push(Some(Bytes::from(vec![0; 11])), false).unwrap_err(),
            11
        );
    }

    #[test]
    fn declared_lengths() {
        assert!(matches!(declared(Some(b"5"), 4), Declared::Over(5)));
        assert!(matches!(declared(Some(b"4"), 4), Declared::Within));
        assert!(matches!(declared(None, 4), Declared::Unknown));
    }
}
