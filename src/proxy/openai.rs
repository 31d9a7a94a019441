//! The OpenAI-compatible side of a route (`openai: true`): reading the request's model,
//! answering `/v1/models`, OpenAI-shaped errors, and token usage read from answers as they
//! stream past.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{json, Value};

/// The fields of a request body the gateway looks at.
#[derive(Deserialize)]
struct RequestFields {
    model: Option<String>,
    max_tokens: Option<serde_json::Number>,
    max_completion_tokens: Option<serde_json::Number>,
    max_output_tokens: Option<serde_json::Number>,
}

/// The most tokens a request says it may generate, if it says.
pub fn max_tokens_of(body: &[u8]) -> Option<u64> {
    let f: RequestFields = serde_json::from_slice(body).ok()?;
    [f.max_tokens, f.max_completion_tokens, f.max_output_tokens]
        .into_iter()
        .flatten()
        .find_map(|n| n.as_u64())
}

/// The `model` of a JSON request body, or why there is none (for a 400).
pub fn model_of(body: &[u8]) -> Result<String, &'static str> {
    let fields: RequestFields =
        serde_json::from_slice(body).map_err(|_| "the request body is not a JSON object")?;
    match fields.model {
        Some(m) if !m.trim().is_empty() => Ok(m),
        _ => Err("the request body has no \"model\""),
    }
}

/// The body with its `model` replaced (an alias resolved, a fallback taken).
pub fn with_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    v.as_object_mut()?
        .insert("model".into(), Value::String(model.to_string()));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// The beginning of the request's prompt, for `affinity: {key: prompt_prefix}`: each
/// message's role and text in order (or `prompt`), cut at `limit` bytes. Requests that share
/// a system prompt or a conversation's history begin the same.
pub fn prompt_prefix(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(limit.min(4096));
    let mut push = |text: &str| {
        let room = limit.saturating_sub(out.len());
        let cut = floor_char_boundary(text, room);
        out.extend_from_slice(&text.as_bytes()[..cut]);
        out.len() < limit
    };
    if let Some(messages) = v.get("messages").and_then(Value::as_array) {
        'messages: for m in messages {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("");
            if !push(role) || !push("\u{1e}") {
                break;
            }
            for text in content_texts(m.get("content")) {
                if !push(text) {
                    break 'messages;
                }
            }
            if !push("\u{1f}") {
                break;
            }
        }
    } else {
        match v.get("prompt") {
            Some(Value::String(p)) => {
                push(p);
            }
            Some(Value::Array(items)) => {
                if let Some(Value::String(p)) = items.first() {
                    push(p);
                }
            }
            _ => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The text of a message's `content`: a string, or the `text` of its parts.
fn content_texts(content: Option<&Value>) -> Vec<&str> {
    match content {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    }
}

fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0)
}

/// The body with `stream_options.include_usage: true` added, when it asks for a stream
/// without usage: budgets count what the final usage chunk reports. `None` when the body
/// needs no change.
pub fn ask_for_usage(body: &[u8]) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    if !obj.get("stream").is_some_and(truthy) {
        return None;
    }
    let options = obj.entry("stream_options").or_insert_with(|| json!({}));
    if !options.is_object() {
        *options = json!({});
    }
    let options = options.as_object_mut()?;
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return None;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// Whether a `stream` value turns streaming on, as lenient backends read it (`1`, `"true"`).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !matches!(s.as_str(), "" | "0" | "false" | "False"),
        _ => true,
    }
}

/// Removes from a stream what `ask_for_usage` made the backend add: the final chunk with
/// the usage (empty `choices`) and the `"usage": null` of every other chunk. Other events
/// pass byte for byte; only an event not yet complete is held.
#[derive(Default)]
pub struct UsageHider {
    partial: BytesMut,
    /// How far `partial` is known to hold no event end.
    scanned: usize,
}

impl UsageHider {
    /// The part of the stream the client gets for `chunk`; `end` flushes what is held.
    pub fn filter(&mut self, chunk: &[u8], end: bool) -> Bytes {
        self.partial.extend_from_slice(chunk);
        let mut out = BytesMut::with_capacity(self.partial.len());
        while let Some(len) = event_len(&self.partial, self.scanned) {
            self.scanned = 0;
            let event = self.partial.split_to(len);
            match rewrite_event(&event) {
                Some(Some(changed)) => out.extend_from_slice(&changed),
                Some(None) => {}
                None => out.extend_from_slice(&event),
            }
        }
        // The last two bytes may start an event end that the next chunk completes.
        self.scanned = self.partial.len().saturating_sub(2);
        if end || self.partial.len() > SSE_LINE_LIMIT {
            out.extend_from_slice(&self.partial.split());
            self.scanned = 0;
        }
        out.freeze()
    }
}

/// The length of the first complete SSE event (through its blank line: `\n\n`, `\n\r\n`),
/// looking from `from` on; one pass.
fn event_len(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(at) = buf.get(i..)?.iter().position(|b| *b == b'\n') {
        let nl = i + at;
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => return Some(nl + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// `None`: pass the event as it is; `Some(None)`: drop it; `Some(Some(bytes))`: send these.
fn rewrite_event(event: &[u8]) -> Option<Option<Bytes>> {
    let text = std::str::from_utf8(event).ok()?;
    let data = text.trim().strip_prefix("data:")?.trim();
    if !data.contains("\"usage\"") {
        return None;
    }
    let mut v: Value = serde_json::from_str(data).ok()?;
    let obj = v.as_object_mut()?;
    let usage = obj.get("usage")?;
    let no_choices = obj
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|c| c.is_empty());
    if !usage.is_null() && no_choices {
        return Some(None);
    }
    // `"usage": null` on every chunk, or the usage some engines put on the last content chunk.
    obj.remove("usage");
    Some(Some(Bytes::from(format!("data: {v}\n\n"))))
}

/// The `/v1/models` list.
pub fn models_list(models: &[String], owner: &str) -> Bytes {
    let data: Vec<Value> = models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    Bytes::from(json!({"object": "list", "data": data}).to_string())
}

/// `{"error":{"message","type","code"}}` for an answer the proxy gives itself; `kind`
/// overrides the type the status implies.
pub fn error_body(status: u16, message: &str, code: Option<&str>, kind: Option<&str>) -> Bytes {
    let (default_kind, default_code) = match status {
        400 | 404 | 405 | 411 | 413 => ("invalid_request_error", None),
        401 => ("invalid_request_error", Some("invalid_api_key")),
        403 => ("permission_error", Some("forbidden")),
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        504 => ("server_error", Some("timeout")),
        _ => ("server_error", None),
    };
    Bytes::from(
        json!({"error": {"message": message, "type": kind.unwrap_or(default_kind), "code": code.or(default_code)}})
            .to_string(),
    )
}

/// Token counts of one answer.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

/// `usage` of a chat or completions answer (`prompt_tokens`, `completion_tokens`), or of a
/// Responses API answer or its `response.completed` event (`input_tokens`, `output_tokens`).
fn usage_of(v: &Value) -> Option<Usage> {
    let u = v
        .get("usage")
        .filter(|u| !u.is_null())
        .or_else(|| v.get("response")?.get("usage"))
        .filter(|u| u.is_object())?;
    let count = |a: &str, b: &str| {
        u.get(a)
            .or_else(|| u.get(b))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Some(Usage {
        prompt: count("prompt_tokens", "input_tokens"),
        completion: count("completion_tokens", "output_tokens"),
    })
}

/// Reads `usage` out of an answer without holding the answer back: SSE is scanned line by
/// line (only a partial line is kept), a JSON answer is copied up to a bound and parsed at
/// its end.
pub enum UsageScanner {
    Sse {
        partial: BytesMut,
        found: Option<Usage>,
    },
    Json {
        copy: BytesMut,
        too_big: bool,
    },
}

/// The largest JSON answer copied to read its usage.
const JSON_COPY_LIMIT: usize = 4 << 20;
/// The longest SSE line kept while waiting for its end.
const SSE_LINE_LIMIT: usize = 1 << 20;

impl UsageScanner {
    pub fn for_content_type(content_type: Option<&str>) -> Option<UsageScanner> {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            Some(UsageScanner::Sse {
                partial: BytesMut::new(),
                found: None,
            })
        } else if ct.starts_with("application/json") {
            Some(UsageScanner::Json {
                copy: BytesMut::new(),
                too_big: false,
            })
        } else {
            None
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            UsageScanner::Sse { partial, found } => {
                partial.extend_from_slice(chunk);
                while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                    let line = partial.split_to(end + 1);
                    if let Some(u) = sse_usage(&line) {
                        *found = Some(u);
                    }
                }
                if partial.len() > SSE_LINE_LIMIT {
                    partial.clear();
                }
            }
            UsageScanner::Json { copy, too_big } => {
                if !*too_big {
                    if copy.len() + chunk.len() > JSON_COPY_LIMIT {
                        *too_big = true;
                        copy.clear();
                    } else {
                        copy.extend_from_slice(chunk);
                    }
                }
            }
        }
    }

    pub fn finish(self) -> Option<Usage> {
        match self {
            UsageScanner::Sse { partial, found } => sse_usage(&partial).or(found),
            UsageScanner::Json { copy, too_big } => {
                if too_big {
                    return None;
                }
                serde_json::from_slice::<Value>(&copy)
                    .ok()
                    .as_ref()
                    .and_then(usage_of)
            }
        }
    }
}

fn sse_usage(line: &[u8]) -> Option<Usage> {
    let line = std::str::from_utf8(line).ok()?.trim();
    let data = line.strip_prefix("data:")?.trim();
    if !data.contains("\"usage\"") {
        return None;
    }
    let v: Value = serde_json::from_str(data).ok()?;
    usage_of(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_model() {
        assert_eq!(model_of(br#"{"model":"m1","messages":[]}"#).unwrap(), "m1");
        assert!(model_of(b"not json").is_err());
        assert!(model_of(br#"{"messages":[]}"#).is_err());
        assert!(model_of(br#"[1,2]"#).is_err());
    }

    #[test]
    fn finds_usage_in_sse_split_anywhere() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        for cut in [1, 5, 40, 90, stream.len() - 3] {
            let mut s = UsageScanner::for_content_type(Some("text/event-stream")).unwrap();
            s.feed(&stream[..cut]);
            s.feed(&stream[cut..]);
            assert_eq!(
                s.finish(),
                Some(Usage {
                    prompt: 7,
                    completion: 3
                }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn prompt_prefixes_agree_on_shared_beginnings() {
        let system = "You are a helpful assistant. ".repeat(20);
        let turn = |extra: &str| {
            let v = json!({"model": "m", "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": extra}]});
            serde_json::to_vec(&v).unwrap()
        };
        let a = prompt_prefix(&turn("first question"), 256).unwrap();
        let b = prompt_prefix(&turn("another question"), 256).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 256);
        let long = prompt_prefix(&turn("first question"), 100_000).unwrap();
        let other = prompt_prefix(&turn("another question"), 100_000).unwrap();
        assert_ne!(long, other);
        let p = prompt_prefix(br#"{"model":"m","prompt":"Once upon a time"}"#, 4).unwrap();
        assert_eq!(p, b"Once");
        assert!(prompt_prefix(br#"{"model":"m"}"#, 10).is_none());
        // Never cut inside a character.
        let v = json!({"model": "m", "prompt": "ééé"});
        let p = prompt_prefix(&serde_json::to_vec(&v).unwrap(), 3).unwrap();
        assert_eq!(p, "é".as_bytes());
    }

    #[test]
    fn usage_is_asked_for_only_when_a_stream_lacks_it() {
        let asked = ask_for_usage(br#"{"model":"m","stream":true}"#).unwrap();
        let v: Value = serde_json::from_slice(&asked).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(ask_for_usage(br#"{"model":"m"}"#).is_none());
        assert!(ask_for_usage(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
        )
        .is_none());
    }

    #[test]
    fn the_added_usage_is_hidden_wherever_the_stream_is_cut() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut h = UsageHider::default();
            let mut out = h.filter(&stream[..cut], false).to_vec();
            out.extend_from_slice(&h.filter(&stream[cut..], true));
            let text = String::from_utf8(out).unwrap();
            assert_eq!(
                text, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn finds_usage_in_json() {
        let mut s = UsageScanner::for_content_type(Some("application/json")).unwrap();
        s.feed(br#"{"usage":{"prompt_tokens":2,"#);
        s.feed(br#""completion_tokens":5}}"#);
        assert_eq!(
            s.finish(),
            Some(Usage {
                prompt: 2,
                completion: 5
            })
        );
    }

    #[test]
    fn error_shape() {
        let v: Value = serde_json::from_slice(&error_body(
            404,
            "no such model",
            Some("model_not_found"),
            None,
        ))
        .unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "no such model");
    }
}
