//! A throwaway certificate authority and certificates for trying a secured
//! cluster (`cairn dev --tls`, `cairn certs`) — not for production, where
//! an organisation's own CA issues the certificates.
//!
//! A directory holds `ca.pem`/`ca-key.pem` (made on first use) and one
//! `NAME.pem`/`NAME-key.pem` pair per certificate issued, with the
//! subject's common name `NAME` (the user under `--client-cert-auth` with
//! auth on, as in etcd) and the given hosts as subject alternative names.
//! Every certificate may serve and dial (server and client auth usages),
//! as a member's peer certificate must. Keys are ECDSA P-256, written
//! owner-readable only; certificates are valid from yesterday for ten
//! years.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::Error;

/// The CA's common name: fixed text and a digest of its public key, so
/// two throwaway CAs never share a name (a verifier would pick the wrong
/// one's key) and the name can be rebuilt from the key file alone.
fn ca_name(key: &KeyPair) -> String {
    let mut h: u64 = 0xcbf29ce484222325; // FNV-1a
    for b in key.public_key_raw() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    format!("Cairn throwaway CA {h:016x}")
}

/// Where a certificate and its key were written.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// The CA certificate's path in `dir`.
pub fn ca_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

fn validity(p: &mut CertificateParams) {
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(86_400)).into();
    p.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
}

fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca_name(key));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), Error> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

/// The CA of `dir`, made if the directory has none.
fn ca(dir: &Path) -> Result<Issuer<'static, KeyPair>, Error> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key_path = dir.join("ca-key.pem");
    if key_path.exists() {
        let pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        // The issuer is the CA's name and key: the same as when it was made.
        let key = KeyPair::from_pem(&pem)?;
        return Ok(Issuer::new(ca_params(&key), key));
    }
    let key = KeyPair::generate()?;
    let mut params = ca_params(&key);
    validity(&mut params);
    let cert = params.self_signed(&key)?;
    write(&key_path, &key.serialize_pem(), true)?;
    write(&ca_path(dir), &cert.pem(), false)?;
    Ok(Issuer::new(params, key))
}

/// Issues `NAME.pem`/`NAME-key.pem` in `dir` for common name `name` and
/// `hosts` (IP addresses or DNS names), signed by the directory's CA.
pub fn issue(dir: &Path, name: &str, hosts: &[String]) -> Result<Issued, Error> {
    issue_as(dir, name, hosts, true)
}

/// [`issue`], with the common name left out when `common_name` is false
/// (a client certificate that names no user: etcd's gateway refuses a
/// certificate with a common name while auth is on, so a gateway client
/// that logs in with a password needs one without).
pub fn issue_as(
    dir: &Path,
    name: &str,
    hosts: &[String],
    common_name: bool,
) -> Result<Issued, Error> {
    let issuer = ca(dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    let mut dn = DistinguishedName::new();
    if common_name {
        dn.push(DnType::CommonName, name);
    }
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    let cert = params.signed_by(&key, &issuer)?;
    let issued = Issued {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    write(&issued.key, &key.serialize_pem(), true)?;
    write(&issued.cert, &cert.pem(), false)?;
    Ok(issued)
}

/// The hosts a local dev certificate names.
pub fn local_hosts() -> Vec<String> {
    vec!["127.0.0.1".into(), "::1".into(), "localhost".into()]
}
