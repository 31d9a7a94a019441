//! `listeners[].tls.acme`: certificates from an ACME CA (RFC 8555), such as Let's Encrypt.

use super::units::Dur;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// A certificate for `domains`, ordered from `directory`, kept under `server.state_dir` and
/// renewed before it ends. Until the first one is issued the listener's other certificates
/// serve (or, with none, a self-signed one for the domains).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// DNS names the certificate is for (no wildcards: neither challenge can prove them).
    pub domains: Vec<String>,
    /// The account's contact, for the CA's expiry notices.
    #[serde(default)]
    pub email: Option<String>,
    /// The CA's ACME directory URL.
    #[serde(default = "lets_encrypt")]
    pub directory: String,
    /// How the CA checks that this proxy answers for the domains: `tls-alpn-01` on this
    /// listener, or `http-01` on a plaintext HTTP listener (port 80 for a public CA).
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// Renew this long before the certificate ends; default a third of its life.
    #[serde(default)]
    pub renew_before: Option<Dur>,
    /// One more CA (PEM) for the directory's HTTPS certificate, trusted beside the system's
    /// roots and for the ACME directory only (private ACME servers).
    #[serde(default)]
    pub directory_ca: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, JsonSchema)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "http-01")]
    Http01,
}

fn lets_encrypt() -> String {
    LETS_ENCRYPT.to_string()
}

/// Whether `name` is a DNS name a CA can issue for by http-01 or tls-alpn-01.
pub fn is_acme_domain(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    name.len() <= 253 && name.parse::<std::net::IpAddr>().is_err() && name.split('.').all(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(listeners: &str) -> Vec<String> {
        let text = format!("version: 1\nlisteners:\n{listeners}");
        crate::config::problems_in(&text)
    }

    #[test]
    fn acme_needs_names_an_https_directory_and_for_http01_a_plaintext_listener() {
        let tls = |acme: &str| {
            format!("  - {{name: s, listen: \"127.0.0.1:8443\", tls: {{acme: {acme}}}}}\n")
        };
        assert_eq!(problems(&tls("{domains: [a.test]}")), Vec::<String>::new());
        for (acme, at, says) in [
            ("{domains: []}", "tls.acme.domains", "list the names"),
            (
                "{domains: [\"*.a.test\"]}",
                "tls.acme.domains[0]",
                "no wildcards",
            ),
            (
                "{domains: [a.test], directory: \"http://ca/dir\"}",
                "tls.acme.directory",
                "https://",
            ),
            (
                "{domains: [a.test], email: nobody}",
                "tls.acme.email",
                "email address",
            ),
            (
                "{domains: [a.test], renew_before: 0s}",
                "tls.acme.renew_before",
                "more than 0",
            ),
            (
                "{domains: [a.test], challenge: http-01}",
                "tls.acme.challenge",
                "plaintext HTTP listener",
            ),
            (
                "{domains: [a.test], challenge: dns-01}",
                "tls.acme.challenge",
                "unknown variant",
            ),
        ] {
            let found = problems(&tls(acme));
            assert!(
                found.iter().any(|p| p.contains(at) && p.contains(says)),
                "{acme}: {found:?}"
            );
        }
        let twice = format!(
            "{}{}",
            tls("{domains: [a.test]}"),
            tls("{domains: [b.test, a.test]}").replace(
                "name: s, listen: \"127.0.0.1:8443\"",
                "name: t, listen: \"127.0.0.1:8444\""
            )
        );
        assert!(
            problems(&twice)
                .iter()
                .any(|p| p.contains("listeners[1].tls.acme.domains[1]")
                    && p.contains("more than one listener")),
            "{:?}",
            problems(&twice)
        );
        let plain = "  - {name: p, listen: \"127.0.0.1:8080\", redirect_to_https: 8443}\n";
        let http01 = format!("{plain}{}", tls("{domains: [a.test], challenge: http-01}"));
        assert_eq!(problems(&http01), Vec::<String>::new());
    }

    #[test]
    fn acme_domains_are_lowercase_dns_names() {
        assert!(is_acme_domain("api.example.com"));
        assert!(is_acme_domain("localhost"));
        assert!(!is_acme_domain("*.example.com"));
        assert!(!is_acme_domain("API.example.com"));
        assert!(!is_acme_domain("127.0.0.1"));
        assert!(!is_acme_domain("a..b"));
        assert!(!is_acme_domain("-a.b"));
        assert!(!is_acme_domain(""));
    }
}
