//! PEM files, loaded once and re-read when they change on disk.
//!
//! [`Reloading`] keeps the last value built from a set of files together
//! with the files' stamps (length, mtime, inode). [`Reloading::get`] looks
//! at the stamps — a `stat` per file, cheap enough per handshake — and
//! rebuilds when one changed. A rebuild that fails (a certificate half
//! written during rotation, a key that no longer matches) keeps serving the
//! previous value, logs why, and is retried on the next call.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// One file's identity at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
    })
}

type Build<T> = dyn Fn(&[PathBuf]) -> Result<T, Error> + Send + Sync;

/// A value built from files, rebuilt when they change.
pub struct Reloading<T> {
    paths: Vec<PathBuf>,
    build: Box<Build<T>>,
    current: Mutex<(Vec<Option<Stamp>>, Arc<T>)>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("paths", &self.paths)
            .finish()
    }
}

impl<T> Reloading<T> {
    /// Builds the first value now (so a bad file fails at start).
    pub fn new(
        paths: Vec<PathBuf>,
        build: impl Fn(&[PathBuf]) -> Result<T, Error> + Send + Sync + 'static,
    ) -> Result<Self, Error> {
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let value = Arc::new(build(&paths)?);
        Ok(Self {
            paths,
            build: Box::new(build),
            current: Mutex::new((stamps, value)),
        })
    }

    /// The value for the files as they are now.
    pub fn get(&self) -> Arc<T> {
        let stamps: Vec<Option<Stamp>> = self.paths.iter().map(|p| stamp(p)).collect();
        let mut cur = self.current.lock();
        if cur.0 != stamps {
            match (self.build)(&self.paths) {
                Ok(v) => {
                    tracing::info!(files = ?self.paths, "TLS files changed on disk: reloaded");
                    *cur = (stamps, Arc::new(v));
                }
                Err(e) => {
                    // Keep the old value; try again once the files change again.
                    tracing::warn!(
                        "TLS files changed but did not load, keeping the previous ones: {e}"
                    );
                    cur.0 = stamps;
                }
            }
        }
        cur.1.clone()
    }
}

/// The signature checks of a verifier that wraps a [`Reloading`] one
/// (`self.0`): each asks the verifier for the files as they are now.
macro_rules! signatures_by_current {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.0.get().verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.0.get().verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.get().supported_verify_schemes()
        }
    };
}
pub(crate) use signatures_by_current;

/// The certificates in a PEM file (at least one).
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let io = |e: rustls::pki_types::pem::Error| Error::Pem {
        path: path.to_owned(),
        what: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| match e {
            rustls::pki_types::pem::Error::Io(source) => Error::Io {
                path: path.to_owned(),
                source,
            },
            e => io(e),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(source) => Error::Io {
            path: path.to_owned(),
            source,
        },
        e => Error::Pem {
            path: path.to_owned(),
            what: format!("no usable private key ({e})"),
        },
    })
}

/// A certificate chain with its key, checked to match.
pub fn certified_key(cert: &Path, key_file: &Path) -> Result<rustls::sign::CertifiedKey, Error> {
    let chain = certs(cert)?;
    let key = key(key_file)?;
    rustls::sign::CertifiedKey::from_der(chain, key, &crate::provider()).map_err(|e| {
        Error::Config(format!(
            "{} and {} do not make a key pair: {e}",
            cert.display(),
            key_file.display()
        ))
    })
}

/// A root store of every certificate in a CA bundle.
pub fn roots(path: &Path) -> Result<rustls::RootCertStore, Error> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(|e| Error::Pem {
            path: path.to_owned(),
            what: format!("not a CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, "1").unwrap();
        let r = Reloading::new(vec![p.clone()], |ps| {
            let s = std::fs::read_to_string(&ps[0]).unwrap();
            s.trim()
                .parse::<u32>()
                .map_err(|e| Error::Config(e.to_string()))
        })
        .unwrap();
        assert_eq!(*r.get(), 1);
        std::fs::write(&p, "22").unwrap();
        assert_eq!(*r.get(), 22);
        std::fs::write(&p, "not a number").unwrap();
        assert_eq!(
            *r.get(),
            22,
            "a file that does not load keeps the last good value"
        );
        std::fs::write(&p, "333").unwrap();
        assert_eq!(*r.get(), 333);
    }
}
