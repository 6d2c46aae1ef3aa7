//! etcd's TLS flags, and what they make: the client port's and the peer
//! port's server configurations and the peer dialer's client one.
//!
//! A port is TLS exactly when its URL is `https://` (as in etcd); an
//! `https://` URL without its certificate and key is an error at start, and
//! certificate files given for `http://` URLs are ignored with a warning.
//! `--cipher-suites`, `--tls-min-version` and `--tls-max-version` apply to
//! both ports.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use cairn_tls::TlsFiles;
use clap::Args;

/// etcd's TLS flags.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Client port: this member's certificate (PEM).
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// Client port: its private key (PEM).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Client port: CAs that sign client certificates.
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Client port: demand a client certificate signed by --trusted-ca-file.
    #[arg(long)]
    pub client_cert_auth: bool,
    /// Peer port: this member's certificate (presented both ways).
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer port: its private key.
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// Peer port: CAs that sign the members' peer certificates.
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Peer port: demand a certificate signed by --peer-trusted-ca-file from
    /// every peer that connects.
    #[arg(long)]
    pub peer_client_cert_auth: bool,
    /// Peer port: also require this common name in a peer's certificate.
    #[arg(long)]
    pub peer_cert_allowed_cn: Option<String>,
    /// Peer port: also require this host among a peer's certificate's names.
    #[arg(long)]
    pub peer_cert_allowed_hostname: Option<String>,
    /// Comma-separated TLS 1.2 cipher suites (Go's names); TLS 1.3's are
    /// always on.
    #[arg(long, default_value = "")]
    pub cipher_suites: String,
    /// Lowest TLS version accepted: TLS1.2 or TLS1.3.
    #[arg(long)]
    pub tls_min_version: Option<String>,
    /// Highest TLS version accepted: TLS1.2 or TLS1.3.
    #[arg(long)]
    pub tls_max_version: Option<String>,
}

impl TlsArgs {
    fn files(
        &self,
        cert: &Option<PathBuf>,
        key: &Option<PathBuf>,
        ca: &Option<PathBuf>,
        client_cert_auth: bool,
    ) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: cert.clone()?,
            key: key.clone()?,
            trusted_ca: ca.clone(),
            client_cert_auth,
            cipher_suites: crate::urls::list(&self.cipher_suites),
            min_version: self.tls_min_version.clone(),
            max_version: self.tls_max_version.clone(),
            allowed_cn: None,
            allowed_hostname: None,
        })
    }

    /// The client port's files, if given.
    pub fn client(&self) -> Option<TlsFiles> {
        self.files(
            &self.cert_file,
            &self.key_file,
            &self.trusted_ca_file,
            self.client_cert_auth,
        )
    }

    /// The peer port's files, if given.
    pub fn peer(&self) -> Option<TlsFiles> {
        let mut f = self.files(
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
            self.peer_client_cert_auth,
        )?;
        f.allowed_cn = self.peer_cert_allowed_cn.clone();
        f.allowed_hostname = self.peer_cert_allowed_hostname.clone();
        Some(f)
    }
}

/// The server configuration for listening on `urls` (`flag` names the
/// port's flags in errors): `Some` when they are `https://`.
pub fn server(
    urls: &[String],
    files: Option<TlsFiles>,
    flags: &str,
) -> anyhow::Result<Option<Arc<cairn_tls::ServerConfig>>> {
    let https = urls.iter().filter(|u| u.starts_with("https://")).count();
    if https == 0 {
        if files.is_some() {
            tracing::warn!("{flags} given but the URLs {urls:?} are http://: ignoring them");
        }
        return Ok(None);
    }
    if https != urls.len() {
        bail!("mixing http:// and https:// in {urls:?} is not supported");
    }
    let Some(files) = files else {
        bail!("TLS key/cert ({flags}) must be provided for {urls:?} with HTTPS scheme");
    };
    Ok(Some(
        cairn_tls::server_config(&files).with_context(|| format!("TLS for {urls:?}"))?,
    ))
}

/// The peer dialer's configuration, when peers are reached by `https://`.
pub fn peer_client(
    peer_urls: &[String],
    files: Option<TlsFiles>,
) -> anyhow::Result<Option<Arc<cairn_tls::ClientConfig>>> {
    if !peer_urls.iter().any(|u| u.starts_with("https://")) {
        return Ok(None);
    }
    let Some(files) = files else {
        bail!("TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer URLs with HTTPS scheme");
    };
    Ok(Some(
        cairn_tls::client_config(&files).context("TLS to peers")?,
    ))
}
