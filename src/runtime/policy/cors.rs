//! CORS for a route: preflight `OPTIONS` answered by the proxy for allowed origins only, and
//! `Access-Control-*` headers on answers to allowed origins. Other origins get no CORS header.

use crate::config::{CorsConfig, HeaderKey};
use http::{HeaderMap, HeaderName, HeaderValue};

pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    methods: String,
    headers: Option<String>,
    expose: Option<String>,
    credentials: bool,
    max_age: Option<String>,
}

impl Cors {
    pub fn new(c: &CorsConfig) -> Cors {
        let join = |l: &[HeaderKey]| {
            (!l.is_empty()).then(|| {
                l.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        };
        Cors {
            any_origin: c.allow_origins.iter().any(|o| o == "*"),
            origins: c
                .allow_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            methods: c
                .allow_methods
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            headers: join(&c.allow_headers),
            expose: join(&c.expose_headers),
            credentials: c.allow_credentials,
            max_age: c.max_age.map(|d| d.get().as_secs().to_string()),
        }
    }

    /// The request's `Origin`, if this route allows it.
    pub fn allowed_origin<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = headers.get(http::header::ORIGIN)?;
        let text = origin.to_str().ok()?.to_ascii_lowercase();
        (self.any_origin || self.origins.contains(&text)).then_some(origin)
    }

    pub fn is_preflight(method: &http::Method, headers: &HeaderMap) -> bool {
        method == http::Method::OPTIONS
            && headers.contains_key(http::header::ORIGIN)
            && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Headers of the answer to an allowed preflight.
    pub fn preflight_headers(
        &self,
        origin: &HeaderValue,
        headers: &HeaderMap,
    ) -> Vec<(HeaderName, HeaderValue)> {
        use http::header::*;
        let mut out = self.common(origin);
        if let Ok(v) = HeaderValue::from_str(&self.methods) {
            out.push((ACCESS_CONTROL_ALLOW_METHODS, v));
        }
        let requested = headers.get(ACCESS_CONTROL_REQUEST_HEADERS).cloned();
        let allow = match &self.headers {
            Some(h) => HeaderValue::from_str(h).ok(),
            None => requested,
        };
        if let Some(v) = allow {
            out.push((ACCESS_CONTROL_ALLOW_HEADERS, v));
        }
        if let Some(v) = self
            .max_age
            .as_deref()
            .and_then(|m| HeaderValue::from_str(m).ok())
        {
            out.push((ACCESS_CONTROL_MAX_AGE, v));
        }
        out
    }

    /// Headers added to an ordinary answer for an allowed origin.
    pub fn response_headers(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = self.common(origin);
        if let Some(v) = self
            .expose
            .as_deref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            out.push((http::header::ACCESS_CONTROL_EXPOSE_HEADERS, v));
        }
        out
    }

    fn common(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = vec![
            (http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()),
            (http::header::VARY, HeaderValue::from_static("Origin")),
        ];
        if self.credentials {
            out.push((
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        out
    }
}
