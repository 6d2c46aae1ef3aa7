//! The dialing side (a member calling its peers): present this member's
//! peer certificate, check the peer's against the peer CA bundle — both
//! re-read when they change on disk.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};

use crate::files::{self, Reloading};
use crate::server::ReloadingCert;
use crate::{suites, Error, TlsFiles};

/// Builds a client configuration from the `--peer-` files (or a client
/// tool's `--cacert --cert --key`): the CA bundle is required (servers are
/// checked, never trusted blindly); with no certificate path, none is
/// presented.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(suites::provider(files)?);
    let ca = files
        .trusted_ca
        .clone()
        .ok_or_else(|| Error::Config("TLS to peers needs --peer-trusted-ca-file".into()))?;
    let verifier = ReloadingServerVerifier::new(ca, provider.clone())?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&suites::versions(files)?)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    // A client (not a member) may come without a certificate of its own.
    let mut cfg = if files.cert.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        builder.with_client_cert_resolver(Arc::new(ClientCert(ReloadingCert::new(files)?)))
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct ClientCert(ReloadingCert);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Server certificates checked (chain and name) by webpki against the
/// CA bundle as it is on disk now.
#[derive(Debug)]
struct ReloadingServerVerifier(Reloading<Arc<WebPkiServerVerifier>>);

impl ReloadingServerVerifier {
    fn new(
        ca: std::path::PathBuf,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, Error> {
        Ok(Self(Reloading::new(vec![ca], move |p| {
            WebPkiServerVerifier::builder_with_provider(
                Arc::new(files::roots(&p[0])?),
                provider.clone(),
            )
            .build()
            .map_err(|e| Error::Config(format!("{}: {e}", p[0].display())))
        })?))
    }
}

impl ServerCertVerifier for ReloadingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .get()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    crate::files::signatures_by_current!();
}
