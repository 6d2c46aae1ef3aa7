//! etcd's `--cipher-suites` and `--tls-min/max-version` on rustls.
//!
//! etcd passes Go's suite names to `crypto/tls`, which applies them to TLS
//! 1.2 only (TLS 1.3's suites are not configurable in Go). So a list keeps
//! TLS 1.3's suites and exactly the listed TLS 1.2 ones; a name rustls does
//! not implement (CBC, RSA key exchange, 3DES — suites Go also calls
//! insecure) is refused at start, as etcd refuses an unknown name.

use rustls::crypto::CryptoProvider;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use crate::{Error, TlsFiles};

/// Go's name for a rustls suite (`TLS13_AES_128_GCM_SHA256` is Go's
/// `TLS_AES_128_GCM_SHA256`; Go writes the ChaCha suites with and without
/// `_SHA256`).
fn matches(suite: &SupportedCipherSuite, name: &str) -> bool {
    let ours = format!("{:?}", suite.suite());
    let go = ours.replacen("TLS13_", "TLS_", 1);
    name == ours || name == go || format!("{name}_SHA256") == go
}

/// The provider narrowed to the configured TLS 1.2 suites.
pub fn provider(files: &TlsFiles) -> Result<CryptoProvider, Error> {
    let mut p = crate::provider();
    if files.cipher_suites.is_empty() {
        return Ok(p);
    }
    for name in &files.cipher_suites {
        if !p.cipher_suites.iter().any(|s| matches(s, name)) {
            return Err(Error::Config(format!(
                "unexpected TLS cipher suite {name:?} (supported: {})",
                p.cipher_suites
                    .iter()
                    .filter(|s| s.version() == &rustls::version::TLS12)
                    .map(|s| format!("{:?}", s.suite()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    p.cipher_suites.retain(|s| {
        s.version() == &rustls::version::TLS13 || files.cipher_suites.iter().any(|n| matches(s, n))
    });
    Ok(p)
}

fn version(name: &str) -> Result<u8, Error> {
    match name {
        "TLS1.2" => Ok(2),
        "TLS1.3" => Ok(3),
        "TLS1.0" | "TLS1.1" => Err(Error::Config(format!(
            "--tls-min-version {name}: not supported (Cairn speaks TLS 1.2 and 1.3)"
        ))),
        other => Err(Error::Config(format!(
            "unexpected TLS version {other:?} (want TLS1.2 or TLS1.3)"
        ))),
    }
}

/// The protocol versions between `--tls-min-version` and `--tls-max-version`.
pub fn versions(files: &TlsFiles) -> Result<Vec<&'static SupportedProtocolVersion>, Error> {
    let min = files
        .min_version
        .as_deref()
        .map(version)
        .transpose()?
        .unwrap_or(2);
    let max = files
        .max_version
        .as_deref()
        .map(version)
        .transpose()?
        .unwrap_or(3);
    if min > max {
        return Err(Error::Config(
            "--tls-min-version is above --tls-max-version".into(),
        ));
    }
    let mut v = Vec::new();
    if min <= 3 && max >= 3 {
        v.push(&rustls::version::TLS13);
    }
    if min <= 2 {
        v.push(&rustls::version::TLS12);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_names_select_tls12_suites_and_keep_tls13() {
        let f = TlsFiles {
            cipher_suites: vec![
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into(),
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305".into(),
            ],
            ..Default::default()
        };
        let p = provider(&f).unwrap();
        let tls12: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .collect();
        assert_eq!(tls12.len(), 2);
        assert!(p
            .cipher_suites
            .iter()
            .any(|s| s.version() == &rustls::version::TLS13));
    }

    #[test]
    fn unknown_suites_and_versions_are_refused() {
        let f = TlsFiles {
            cipher_suites: vec!["TLS_RSA_WITH_RC4_128_SHA".into()],
            ..Default::default()
        };
        assert!(provider(&f)
            .unwrap_err()
            .to_string()
            .contains("unexpected TLS cipher suite"));
        let f = TlsFiles {
            min_version: Some("TLS1.0".into()),
            ..Default::default()
        };
        assert!(versions(&f).is_err());
        let f = TlsFiles {
            min_version: Some("TLS1.3".into()),
            ..Default::default()
        };
        assert_eq!(versions(&f).unwrap().len(), 1);
    }
}
