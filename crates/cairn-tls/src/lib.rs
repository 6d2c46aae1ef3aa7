//! # cairn-tls: TLS for the client and peer ports, as etcd configures it
//!
//! etcd's TLS model, on rustls (ring; no OpenSSL, no aws-lc):
//! - a port is TLS when its URL is `https://`; it presents `--cert-file`
//!   and `--key-file` ([`TlsFiles`]);
//! - a port with `--trusted-ca-file` demands a client certificate that
//!   chains to it (mutual TLS) — with or without `--client-cert-auth`, as
//!   etcd does; without a CA file no certificate is asked for;
//! - `--cipher-suites` (Go's names) narrows TLS 1.2's suites; TLS 1.3's are
//!   fixed, as in Go; `--tls-min-version`/`--tls-max-version` pick from TLS
//!   1.2 and 1.3 (rustls speaks nothing older);
//! - certificates, keys and CA bundles are **re-read when they change on
//!   disk** ([`files`]): every handshake looks at the files' stamps (size,
//!   mtime, inode) and reloads on a change, so rotation needs no restart, as
//!   etcd reloads per handshake. A file that fails to load (half written)
//!   leaves the last good one in use and is tried again next handshake.
//!
//! [`server_config`] builds the acceptor's configuration (ALPN `h2` and
//! `http/1.1`: gRPC and the JSON gateway share the port), [`incoming`] turns
//! a listener into a stream of finished handshakes (each handshake in its
//! own task under a deadline, so a slow or silent client holds up nobody;
//! plain HTTP to a TLS port is closed unanswered, as etcd does). [`client_config`] and [`Connector`] are the peer side:
//! a member dials its peers presenting its peer certificate and checks
//! theirs against the peer CA. [`pki`] makes a throwaway CA and
//! certificates (`cairn dev --tls`, `cairn certs`).
//!
//! What this does not do: revocation lists, OCSP, and etcd's
//! `--cert-allowed-cn`/`--auto-tls`.

mod client;
mod connect;
pub mod files;
mod incoming;
pub mod pki;
mod server;
mod suites;

use std::path::PathBuf;

pub use client::client_config;
pub use connect::Connector;
pub use incoming::{incoming, TlsStream};
pub use rustls::{ClientConfig, ServerConfig};
pub use server::server_config;

/// The TLS files and options of one port (etcd's `--cert-file` group, or
/// the `--peer-` group).
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// `--cert-file`: this member's certificate chain (PEM).
    pub cert: PathBuf,
    /// `--key-file`: its private key (PEM).
    pub key: PathBuf,
    /// `--trusted-ca-file`: CAs that sign the other side's certificates.
    pub trusted_ca: Option<PathBuf>,
    /// `--client-cert-auth`: demand a client certificate.
    pub client_cert_auth: bool,
    /// `--cipher-suites`: Go's names; empty means rustls' defaults.
    pub cipher_suites: Vec<String>,
    /// `--tls-min-version` (`TLS1.2` or `TLS1.3`).
    pub min_version: Option<String>,
    /// `--tls-max-version`.
    pub max_version: Option<String>,
    /// `--peer-cert-allowed-cn`: a client certificate must also have this
    /// common name.
    pub allowed_cn: Option<String>,
    /// `--peer-cert-allowed-hostname`: a client certificate must also name
    /// this host (DNS or IP subject alternative name).
    pub allowed_hostname: Option<String>,
}

/// Everything that can go wrong setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the configuration (say, a key that does not match
    /// its certificate).
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// An option etcd would refuse too.
    #[error("{0}")]
    Config(String),
    /// Making a certificate failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Whether a DER certificate names `host` among its subject alternative
/// names (a DNS name, compared without case, or an IP address).
pub fn names_host(cert: &[u8], host: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return false;
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return false;
    };
    let ip: Option<std::net::IpAddr> = host.parse().ok();
    san.value.general_names.iter().any(|n| match n {
        GeneralName::DNSName(d) => d.eq_ignore_ascii_case(host),
        GeneralName::IPAddress(b) => match (ip, b.len()) {
            (Some(std::net::IpAddr::V4(v4)), 4) => v4.octets() == **b,
            (Some(std::net::IpAddr::V6(v6)), 16) => v6.octets() == **b,
            _ => false,
        },
        _ => false,
    })
}

/// The subject's common name in a DER certificate (the user of a
/// verified client certificate under `--client-cert-auth`, as in etcd);
/// `None` if it has none or does not parse.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The crypto provider every Cairn TLS config uses: ring's.
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
