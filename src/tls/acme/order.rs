//! One certificate order, start to end, through `instant-acme`: the account (created once,
//! then restored from the state directory), the challenges answered by the listeners, the
//! CSR and the chain.

use super::challenges::Challenges;
use super::files::{write_private, Files};
use crate::config::{AcmeChallenge, AcmeConfig};
use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier,
    NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a CA gets to validate the challenges, then to issue.
const VALIDATION: Duration = Duration::from_secs(120);
/// A whole order, account to chain: the client has no timeouts of its own, and a CA that
/// stops answering must not stop renewal for good.
const ORDER: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub(super) enum OrderError {
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    #[error("cannot keep the ACME account in {path}: {why}")]
    Account { path: String, why: String },
    #[error("the CA offers no {0} challenge for {1}")]
    NoChallenge(&'static str, String),
    #[error("the order ended {status}: {why}")]
    Failed { status: String, why: String },
    #[error("cannot make the tls-alpn-01 certificate: {0}")]
    ChallengeCertificate(String),
    #[error("the CA did not finish the order within {0:?}")]
    Timeout(Duration),
    #[error("directory_ca {0}")]
    DirectoryCa(String),
}

impl OrderError {
    /// The CA no longer knows the stored account (a test CA that restarted, say).
    pub(super) fn account_unknown(&self) -> bool {
        matches!(self, OrderError::Acme(instant_acme::Error::Api(p))
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
    }
}

/// A chain and its private key, both PEM.
pub(super) struct Issued {
    pub(super) chain: String,
    pub(super) key: String,
}

/// Everything one listener's orders need.
pub(super) struct Orderer {
    pub(super) acme: AcmeConfig,
    pub(super) files: Files,
    /// The config file's folder: a relative `directory_ca` is taken from there.
    pub(super) base: Option<PathBuf>,
    pub(super) challenges: Arc<Challenges>,
}

impl Orderer {
    /// Orders a certificate for the listener's domains and waits (bounded) until it is issued.
    pub(super) async fn order(&self) -> Result<Issued, OrderError> {
        tokio::time::timeout(ORDER, self.order_unbounded())
            .await
            .unwrap_or(Err(OrderError::Timeout(ORDER)))
    }

    async fn order_unbounded(&self) -> Result<Issued, OrderError> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = self
            .acme
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut answered = Answered {
            challenges: &self.challenges,
            tokens: Vec::new(),
            domains: Vec::new(),
        };
        self.prove_and_finish(&mut order, &mut answered).await
    }

    async fn prove_and_finish(
        &self,
        order: &mut Order,
        answered: &mut Answered<'_>,
    ) -> Result<Issued, OrderError> {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let (kind, name) = match self.acme.challenge {
                AcmeChallenge::Http01 => (ChallengeType::Http01, "http-01"),
                AcmeChallenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
            };
            let domain = authz.identifier().to_string();
            let mut challenge = authz
                .challenge(kind)
                .ok_or_else(|| OrderError::NoChallenge(name, domain.clone()))?;
            let key_authorization = challenge.key_authorization();
            match self.acme.challenge {
                AcmeChallenge::Http01 => {
                    self.challenges
                        .add_http01(&challenge.token, key_authorization.as_str());
                    answered.tokens.push(challenge.token.clone());
                }
                AcmeChallenge::TlsAlpn01 => {
                    let key = super::alpn::challenge_certificate(
                        &domain,
                        key_authorization.digest().as_ref(),
                    )?;
                    self.challenges.add_tls_alpn01(&domain, key);
                    answered.domains.push(domain.clone());
                }
            }
            challenge.set_ready().await?;
        }
        let retries = RetryPolicy::new().timeout(VALIDATION);
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            return Err(failed(order, status));
        }
        let key = order.finalize().await?;
        let chain = order.poll_certificate(&retries).await?;
        Ok(Issued { chain, key })
    }

    /// The stored account, or a new one (then stored).
    async fn account(&self) -> Result<Account, OrderError> {
        let path = &self.files.account;
        let keep = |why: String| OrderError::Account {
            path: path.display().to_string(),
            why,
        };
        if let Ok(bytes) = std::fs::read(path) {
            let credentials: AccountCredentials =
                serde_json::from_slice(&bytes).map_err(|e| keep(e.to_string()))?;
            return Ok(self.builder()?.from_credentials(credentials).await?);
        }
        let contact = self.acme.email.as_ref().map(|e| format!("mailto:{e}"));
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = self
            .builder()?
            .create(&new, self.acme.directory.clone(), None)
            .await?;
        let json = serde_json::to_vec(&credentials).map_err(|e| keep(e.to_string()))?;
        write_private(path, &json).map_err(|e| keep(e.to_string()))?;
        log::info!("acme: account created at {}", self.acme.directory);
        Ok(account)
    }

    /// Forgets the stored account, so that the next order creates one.
    pub(super) fn forget_account(&self) {
        let _ = std::fs::remove_file(&self.files.account);
    }

    /// The system's roots, plus `directory_ca` when the config names one.
    fn builder(&self) -> Result<AccountBuilder, OrderError> {
        let Some(ca) = &self.acme.directory_ca else {
            return Ok(Account::builder()?);
        };
        let roots = directory_roots(&crate::tls::from_config_folder(self.base.as_deref(), ca))?;
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::backend::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| OrderError::DirectoryCa(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, instant_acme::BodyWrapper<bytes::Bytes>>(https);
        Ok(Account::builder_with_http(Box::new(client)))
    }
}

/// The answers an order gave; forgotten when it ends, however it ends (a timeout drops it).
struct Answered<'a> {
    challenges: &'a Challenges,
    tokens: Vec<String>,
    domains: Vec<String>,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.challenges.remove(&self.tokens, &self.domains);
    }
}

/// Why an order did not become ready: the order's problem, else its challenges'.
fn failed(order: &mut Order, status: OrderStatus) -> OrderError {
    let state = order.state();
    let mut why: Vec<String> = state.error.iter().map(|p| p.to_string()).collect();
    for authz in &state.authorizations {
        let Some(a) = &authz.state else { continue };
        for c in &a.challenges {
            if let Some(p) = &c.error {
                why.push(format!("{}: {p}", a.identifier()));
            }
        }
    }
    OrderError::Failed {
        status: format!("{status:?}").to_lowercase(),
        why: if why.is_empty() {
            "the CA gave no reason".into()
        } else {
            why.join("; ")
        },
    }
}

/// The system's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` included) and the CA in `ca_file`.
fn directory_roots(ca_file: &Path) -> Result<rustls::RootCertStore, OrderError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Err(e) = pingora::tls::load_platform_certs_incl_env_into_store(&mut roots) {
        log::warn!("acme: the system's CA certificates: {e}; trusting directory_ca alone");
    }
    for cert in read_ca(ca_file)? {
        roots
            .add(cert)
            .map_err(|e| OrderError::DirectoryCa(format!("{}: {e}", ca_file.display())))?;
    }
    Ok(roots)
}

/// The PEM certificates in `ca_file`, at least one.
pub(super) fn read_ca(
    ca_file: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, OrderError> {
    let bad = |why: String| OrderError::DirectoryCa(format!("{}: {why}", ca_file.display()));
    let pem = std::fs::read(ca_file).map_err(|e| bad(e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".into()));
    }
    Ok(certs)
}
