//! The acceptor's configuration: this member's certificate (re-read on
//! change), and under `--client-cert-auth` a verifier of client
//! certificates against the trusted CA bundle (re-read on change).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, ServerConfig};

use crate::files::{self, Reloading};
use crate::{suites, Error, TlsFiles};

/// Builds a server configuration; every file is loaded once now, so a bad
/// one fails at start.
///
/// Client certificates are demanded under `--client-cert-auth` **or**
/// whenever a trusted CA file is given — etcd's rule (its
/// `transport.TLSInfo` requires and verifies client certificates when it
/// has a CA), checked beside etcd 3.4 in `tests/compat/tls.py`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(suites::provider(files)?);
    let verifier: Arc<dyn ClientCertVerifier> = match &files.trusted_ca {
        Some(ca) => Arc::new(ReloadingClientVerifier::new(
            ca.clone(),
            provider.clone(),
            files.allowed_cn.clone(),
            files.allowed_hostname.clone(),
        )?),
        None if files.client_cert_auth => {
            return Err(Error::Config(
                "--client-cert-auth needs --trusted-ca-file".into(),
            ))
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&suites::versions(files)?)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(ReloadingCert::new(files)?));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// This member's certificate and key, re-read when either file changes.
#[derive(Debug)]
pub(crate) struct ReloadingCert(Reloading<Arc<CertifiedKey>>);

impl ReloadingCert {
    pub(crate) fn new(files: &TlsFiles) -> Result<Self, Error> {
        let paths = vec![files.cert.clone(), files.key.clone()];
        Ok(Self(Reloading::new(paths, |p| {
            Ok(Arc::new(files::certified_key(&p[0], &p[1])?))
        })?))
    }

    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        (*self.0.get()).clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Client certificates checked against the trusted CA bundle as it is on
/// disk now, and (`--peer-cert-allowed-cn`/`-hostname`) for their name.
#[derive(Debug)]
struct ReloadingClientVerifier(
    Reloading<Arc<dyn ClientCertVerifier>>,
    Option<String>,
    Option<String>,
);

impl ReloadingClientVerifier {
    fn new(
        ca: std::path::PathBuf,
        provider: Arc<rustls::crypto::CryptoProvider>,
        allowed_cn: Option<String>,
        allowed_hostname: Option<String>,
    ) -> Result<Self, Error> {
        let verifier = Reloading::new(vec![ca], move |p| {
            WebPkiClientVerifier::builder_with_provider(
                Arc::new(files::roots(&p[0])?),
                provider.clone(),
            )
            .build()
            .map_err(|e| Error::Config(format!("{}: {e}", p[0].display())))
        })?;
        Ok(Self(verifier, allowed_cn, allowed_hostname))
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: the bundle may change under us, and a client with one
    /// certificate sends it when the list is empty (Go, BoringSSL).
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .0
            .get()
            .verify_client_cert(end_entity, intermediates, now)?;
        let refuse = || {
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )
        };
        if let Some(cn) = &self.1 {
            if crate::common_name(end_entity).as_deref() != Some(cn.as_str()) {
                return Err(refuse());
            }
        }
        if let Some(host) = &self.2 {
            if !crate::names_host(end_entity, host) {
                return Err(refuse());
            }
        }
        Ok(verified)
    }

    crate::files::signatures_by_current!();
}
