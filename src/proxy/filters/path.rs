//! One normalised path for routing, every policy, the access log and the backend.
//!
//! A path that means the same resource must look the same to every matcher, or a policy on
//! `/private/` is walked around with `/public/../private/`, `/public/%2e%2e/private/` or
//! `//private/`. This does what nginx and Envoy's `normalize_path` do, once, before routing:
//! unreserved percent-escapes are decoded (other escapes keep their meaning, with upper-case
//! hex), `.` and `..` segments are resolved as RFC 3986 §5.2.4 says (a `..` above the root is
//! refused rather than clamped: no honest client sends one), and repeated slashes are merged.
//! An encoded `/` or `\` and a raw `\` are refused by default: a backend may decode them into
//! separators that no policy here saw.

pub use crate::config::EscapedSlashes;
use std::borrow::Cow;

#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

/// Why a path cannot be normalised; each is answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("a '..' segment goes above the root")]
    AboveRoot,
    #[error("invalid percent-encoding")]
    BadEscape,
    #[error("an encoded or raw backslash or an encoded slash (edge.escaped_slashes: reject)")]
    EscapedSlash,
    #[error("a control character in the path")]
    Control,
    #[error("a '.' or '..' segment with ';' parameters")]
    DotParams,
}

/// The normalised form of `path` (the part of the target before `?`); borrowed when the path
/// is already normal, which is the common case and allocates nothing.
pub fn normalize(path: &str, rules: Rules) -> Result<Cow<'_, str>, BadPath> {
    if path == "*" {
        // `OPTIONS *`: no resource, nothing to resolve.
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    if is_normal(path.as_bytes(), rules)? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path.as_bytes(), rules)?;
    resolve_segments(&decoded, rules.merge_slashes).map(Cow::Owned)
}

/// A quick scan: true when nothing in the path needs changing; errors for bytes that are
/// never allowed.
fn is_normal(path: &[u8], rules: Rules) -> Result<bool, BadPath> {
    let mut normal = true;
    let mut prev = 0u8;
    for (i, &b) in path.iter().enumerate() {
        match b {
            0..=0x1f | 0x7f => return Err(BadPath::Control),
            b'%' => normal = false,
            b'\\' if rules.escaped_slashes == EscapedSlashes::Reject => {
                return Err(BadPath::EscapedSlash)
            }
            b'/' if prev == b'/' && rules.merge_slashes => normal = false,
            b'.' if prev == b'/' => {
                let rest = &path[i..];
                if rest == b"."
                    || rest == b".."
                    || rest.starts_with(b"./")
                    || rest.starts_with(b"../")
                    || rest.starts_with(b".;")
                    || rest.starts_with(b"..;")
                {
                    normal = false;
                }
            }
            _ => {}
        }
        prev = b;
    }
    Ok(normal)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes `%XX` of unreserved characters, upper-cases the hex of the rest.
fn decode_unreserved(path: &[u8], rules: Rules) -> Result<String, BadPath> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(BadPath::BadEscape);
        };
        let value = hi << 4 | lo;
        if value < 0x20 || value == 0x7f {
            // Decoded by a backend, `%00` or `%0A` ends strings and splits lines.
            return Err(BadPath::Control);
        }
        if matches!(value, b'/' | b'\\') && rules.escaped_slashes == EscapedSlashes::Reject {
            return Err(BadPath::EscapedSlash);
        }
        if is_unreserved(value) {
            out.push(value);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend([b'%', HEX[usize::from(hi)], HEX[usize::from(lo)]]);
        }
        i += 3;
    }
    // Only ASCII was decoded, so the bytes are as valid UTF-8 as the input was.
    String::from_utf8(out).map_err(|_| BadPath::BadEscape)
}

/// Removes `.` and `..` segments (and, when merging, empty ones); a trailing slash stays.
fn resolve_segments(path: &str, merge_slashes: bool) -> Result<String, BadPath> {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if matches!(segment.split(';').next(), Some("." | "..")) && segment.contains(';') {
            // `..;/` is a parent step to Tomcat, Jetty and Spring: never pass it on.
            return Err(BadPath::DotParams);
        }
        match segment {
            "." => {}
            ".." => {
                kept.pop().ok_or(BadPath::AboveRoot)?;
            }
            "" if merge_slashes && !last => continue,
            s => {
                kept.push(s);
                continue;
            }
        }
        if last {
            // `/a/.` and `/a/b/..` name a directory: they keep the slash.
            kept.push("");
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STRICT: Rules = Rules {
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Reject,
    };

    fn norm(p: &str) -> Result<String, BadPath> {
        normalize(p, STRICT).map(Cow::into_owned)
    }

    #[test]
    fn traversal_tricks_are_resolved() {
        assert_eq!(norm("/public/../private/x").as_deref(), Ok("/private/x"));
        assert_eq!(
            norm("/public/%2e%2e/private/x").as_deref(),
            Ok("/private/x")
        );
        assert_eq!(norm("/public/.%2E/private/x").as_deref(), Ok("/private/x"));
        assert_eq!(norm("//private/x").as_deref(), Ok("/private/x"));
        assert_eq!(norm("/a/./b/.").as_deref(), Ok("/a/b/"));
        assert_eq!(norm("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(norm("/%7euser/%41").as_deref(), Ok("/~user/A"));
        assert_eq!(norm("/a%3fb%3Ac").as_deref(), Ok("/a%3Fb%3Ac"));
        assert_eq!(norm("/a/..."), Ok("/a/...".into()));
    }

    #[test]
    fn refusals() {
        assert_eq!(norm("/../x"), Err(BadPath::AboveRoot));
        assert_eq!(norm("/a/%2e%2e/%2e%2e"), Err(BadPath::AboveRoot));
        assert_eq!(norm("/public/..%2fprivate/x"), Err(BadPath::EscapedSlash));
        assert_eq!(norm("/a%5Cb"), Err(BadPath::EscapedSlash));
        assert_eq!(norm("/a\\b"), Err(BadPath::EscapedSlash));
        assert_eq!(norm("/a%zz"), Err(BadPath::BadEscape));
        assert_eq!(norm("/a%4"), Err(BadPath::BadEscape));
        assert_eq!(norm("/a\tb"), Err(BadPath::Control));
        assert_eq!(norm("a/b"), Err(BadPath::NotAbsolute));
        assert_eq!(norm("/public/..;/private"), Err(BadPath::DotParams));
        assert_eq!(norm("/public/.;x=1/private"), Err(BadPath::DotParams));
        assert_eq!(norm("/public/%2e%2e;/private"), Err(BadPath::DotParams));
        assert_eq!(norm("/file.txt%00.php"), Err(BadPath::Control));
        assert_eq!(norm("/a%0d%0ab"), Err(BadPath::Control));
        assert_eq!(norm("/a;b/c").as_deref(), Ok("/a;b/c"));
    }

    #[test]
    fn keep_and_no_merge() {
        let keep = Rules {
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Keep,
        };
        let n = |p| normalize(p, keep).map(Cow::into_owned);
        assert_eq!(n("/a%2fb").as_deref(), Ok("/a%2Fb"));
        assert_eq!(n("/a//b").as_deref(), Ok("/a//b"));
        assert_eq!(n("/a//../b").as_deref(), Ok("/a/b"));
    }

    /// RFC 3986 §5.2.4 written out as its input/output-buffer loop, after decoding every
    /// unreserved escape and merging slashes; a `..` with nothing to remove is an error.
    fn reference(path: &str) -> Option<String> {
        let bytes = path.as_bytes();
        let mut decoded = String::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let h = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                let v = u8::from_str_radix(h, 16).ok()?;
                if v == b'/' || v == b'\\' || v < 0x20 || v == 0x7f || h.starts_with('+') {
                    return None;
                }
                if is_unreserved(v) {
                    decoded.push(char::from(v));
                } else {
                    decoded.push_str(&format!("%{:02X}", v));
                }
                i += 3;
            } else {
                if bytes[i] == b'\\' || bytes[i] < 0x20 || bytes[i] == 0x7f {
                    return None;
                }
                decoded.push(char::from(bytes[i]));
                i += 1;
            }
        }
        while decoded.contains("//") {
            decoded = decoded.replace("//", "/");
        }
        let mut input = decoded.as_str().to_string();
        let mut output = String::new();
        while !input.is_empty() {
            if input.starts_with("/./") {
                input = input[2..].to_string();
            } else if input == "/." {
                input = "/".into();
            } else if input.starts_with("/../") || input == "/.." {
                if output.is_empty() {
                    return None;
                }
                input = if input == "/.." {
                    "/".into()
                } else {
                    input[3..].to_string()
                };
                let cut = output.rfind('/').unwrap_or(0);
                output.truncate(cut);
            } else {
                let rest = &input[1..];
                let end = rest.find('/').map_or(input.len(), |e| e + 1);
                output.push_str(&input[..end]);
                input = input[end..].to_string();
            }
        }
        Some(output)
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2E%2e".to_string()),
            Just(".%2e".to_string()),
            Just("%2f".to_string()),
            Just("%5c".to_string()),
            Just("%zz".to_string()),
            Just("%".to_string()),
            Just("\\".to_string()),
            Just("%41%7e%20".to_string()),
            "[a-zA-Z0-9._~-]{1,6}",
            "[a-z%0-9A-F]{1,6}",
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        (prop::collection::vec(segment(), 0..8), any::<bool>()).prop_map(|(segs, trailing)| {
            let mut p = format!("/{}", segs.join("/"));
            if trailing {
                p.push('/');
            }
            p
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn idempotent_and_clean(p in path()) {
            if let Ok(once) = norm(&p) {
                let twice = norm(&once);
                prop_assert_eq!(twice.as_deref(), Ok(once.as_str()));
                prop_assert!(!once.contains("//"), "{} -> {}", p, once);
                prop_assert!(once.starts_with('/'));
                for s in once.split('/') {
                    prop_assert!(s != "." && s != "..", "{} -> {}", p, once);
                }
            }
        }

        #[test]
        fn agrees_with_the_reference(p in path()) {
            prop_assert_eq!(norm(&p).ok(), reference(&p), "{}", p);
        }
    }
}
