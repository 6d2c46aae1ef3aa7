//! `cairn certs`: a throwaway CA and certificates for trying a secured
//! cluster (see `cairn_tls::pki`); production clusters use their own CA.

use std::path::PathBuf;

use clap::Args;

/// Options of `cairn certs`.
#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Directory for `ca.pem` and the certificates (made if absent; a CA
    /// already there signs the new certificates).
    #[arg(long, default_value = "./cairn-certs")]
    pub dir: PathBuf,
    /// Hosts (IP addresses or DNS names) the certificates are valid for.
    #[arg(long, default_value = "127.0.0.1,::1,localhost")]
    pub hosts: String,
    /// Leave the subject's common name out (a client certificate that
    /// names no user; files are still named after NAME).
    #[arg(long)]
    pub no_cn: bool,
    /// Common names, one certificate each (`NAME.pem`, `NAME-key.pem`); a
    /// client certificate's name is its user under `--client-cert-auth`.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Issues the certificates and prints where they are.
pub fn run(a: CertsArgs) -> anyhow::Result<()> {
    let hosts = crate::urls::list(&a.hosts);
    for name in &a.names {
        let issued = cairn_tls::pki::issue_as(&a.dir, name, &hosts, !a.no_cn)?;
        println!("{name}: {} {}", issued.cert.display(), issued.key.display());
    }
    println!("CA: {}", cairn_tls::pki::ca_path(&a.dir).display());
    Ok(())
}
