//! `max_body`: a declared length over the limit is refused before anything goes upstream; a
//! body without a length (chunked) is held back and counted, and released to the backend only
//! once it is complete and within the limit, so a backend never sees part of an oversized body.

use bytes::{Bytes, BytesMut};
use std::time::{Duration, Instant};

/// How long a refused body may keep arriving so that the client can read the 413.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// What the declared `Content-Length` says about the limit.
pub enum Declared {
    Within,
    Over(u64),
    /// No length: a chunked (or h2) body that must be counted as it arrives.
    Unknown,
}

/// The request's `Content-Length`, when it has a valid one.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn declared(headers: &http::HeaderMap, limit: u64) -> Declared {
    match content_length(headers) {
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

/// `edge.min_body_rate`: once the grace period is over, the body must have arrived at the
/// least rate on average since its head, or the request is answered 408. A trickle of a byte a
/// second is cut soon after the grace period; a slow but real upload keeps going.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    started: Instant,
    bytes_per_second: u64,
    grace: Duration,
}

impl Pace {
    pub fn new(started: Instant, bytes_per_second: u64, grace: Duration) -> Pace {
        Pace {
            started,
            bytes_per_second,
            grace,
        }
    }

    /// When `received` bytes stop being enough; `None` when the check is off.
    pub fn due(&self, received: u64) -> Option<Instant> {
        if self.bytes_per_second == 0 {
            return None;
        }
        let earned = Duration::from_secs_f64(received as f64 / self.bytes_per_second as f64);
        Some(self.started + earned.max(self.grace))
    }

    pub fn too_slow(&self, received: u64, now: Instant) -> bool {
        self.due(received).is_some_and(|due| now > due)
    }
}

/// Pingora replays at most this much of a request body to a backend (its retry buffer).
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// A body read before the backend is chosen.
pub enum PreRead {
    Body(Bytes),
    TooLarge,
    /// Larger than Pingora can replay, and without a `Content-Length` to plan for it.
    Unreplayable(Bytes),
    /// Not complete by the body deadline.
    TooSlow,
}

/// Reads the whole request body (at most `limit` bytes) so that the route can look into it.
///
/// Pingora forwards a pre-read body only from its retry buffer, which keeps at most 64 KiB.
/// So the buffer is armed only for the last 64 KiB of a body whose length is declared: the
/// proxy replays that tail once, and `request_body_filter` swaps in the whole body (see
/// [`Replay`]). A body without a length is buffered from its start, so it must fit.
pub async fn pre_read(
    session: &mut pingora::proxy::Session,
    limit: u64,
    deadline: Instant,
    pace: Pace,
) -> pingora::Result<PreRead> {
    let declared = content_length(&session.req_header().headers);
    if declared.is_some_and(|n| n > limit) {
        return Ok(PreRead::TooLarge);
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    let mut armed = false;
    loop {
        if !armed {
            let left = declared.map(|n| n.saturating_sub(session.body_bytes_read() as u64));
            if left.is_none_or(|l| l <= REPLAY_LIMIT) {
                session.enable_retry_buffering();
                armed = true;
            }
        }
        let received = session.body_bytes_read() as u64;
        let until = pace.due(received).map_or(deadline, |due| due.min(deadline));
        let Ok(read) = tokio::time::timeout_at(until.into(), session.read_request_body()).await
        else {
            return Ok(PreRead::TooSlow);
        };
        match read? {
            Some(chunk) => {
                buf.extend_from_slice(&chunk);
                if buf.len() as u64 > limit {
                    return Ok(PreRead::TooLarge);
                }
            }
            None => break,
        }
    }
    if declared.is_none() && buf.len() as u64 > REPLAY_LIMIT {
        return Ok(PreRead::Unreplayable(buf.freeze()));
    }
    Ok(PreRead::Body(buf.freeze()))
}

/// Puts a pre-read HTTP/1 request back on its connection, re-framed with a `Content-Length`,
/// as if the client had sent it that way: Pingora then reads head and body again from that
/// prefix and proxies them the normal way (filters, failover on connect, streaming).
pub async fn refeed_h1(session: &mut pingora::proxy::Session, body: Bytes) -> pingora::Result<()> {
    use bytes::BufMut;
    use pingora::protocols::http::ServerSession;
    use pingora::{Error, ErrorType::InternalError};

    let mut req = session.req_header().clone();
    req.remove_header(&http::header::TRANSFER_ENCODING);
    req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    let mut wire = BytesMut::with_capacity(body.len() + 1024);
    wire.put_slice(req.method.as_str().as_bytes());
    wire.put_u8(b' ');
    wire.put_slice(req.raw_path());
    wire.put_slice(if req.version == http::Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    req.header_to_h1_wire(&mut wire);
    wire.put_slice(b"\r\n");
    wire.put_slice(&body);

    // Make the old session hand its socket back instead of closing it.
    let old = session.as_downstream_mut();
    old.req_header_mut()
        .remove_header(&http::header::CONNECTION);
    old.set_keepalive(Some(0));
    old.set_keepalive_reuses_remaining(None);
    old.set_pipelining_enabled(true);
    let placeholder = ServerSession::new_http1(Box::new(std::io::Cursor::new(Vec::<u8>::new())));
    let old = std::mem::replace(session.as_downstream_mut(), placeholder);
    let reusable = old
        .finish()
        .await?
        .ok_or_else(|| Error::explain(InternalError, "the connection cannot be reused"))?;
    let (stream, rest) = reusable.into_parts();
    if let Some(rest) = rest {
        // Bytes of a request the client pipelined after this one.
        wire.put_slice(&rest);
    }
    let mut fresh = ServerSession::new_http1(stream);
    fresh.set_pipelined_prefix(wire);
    if !fresh.read_request().await? {
        return Error::e_explain(InternalError, "the re-framed request did not parse");
    }
    *session.as_downstream_mut() = fresh;
    Ok(())
}

/// A pre-read body, put back in place of the replayed tail.
pub struct Replay(pub Bytes);

impl Replay {
    pub fn apply(&self, body: &mut Option<Bytes>, end_of_stream: bool) {
        if end_of_stream {
            *body = Some(self.0.clone());
        } else if body.is_some() {
            // Nothing but the replayed tail comes this way; hold it back.
            *body = Some(Bytes::new());
        }
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
        let with = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from_static(v),
            );
            h
        };
        assert!(matches!(declared(&with("5"), 4), Declared::Over(5)));
        assert!(matches!(declared(&with("4"), 4), Declared::Within));
        assert!(matches!(declared(&with("x"), 4), Declared::Unknown));
        assert!(matches!(
            declared(&http::HeaderMap::new(), 4),
            Declared::Unknown
        ));
    }
}
