//! Real handshakes over loopback: mutual TLS accepted and refused, plain
//! HTTP answered, certificates rotated on disk without a restart.

use std::sync::Arc;

use cairn_tls::{pki, TlsFiles};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;

struct Setup {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    server: TlsFiles,
}

/// With `client_cert_auth` false there is no CA either: etcd asks for
/// client certificates whenever it has a trusted CA file.
fn setup(client_cert_auth: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let s = pki::issue(&d, "server", &pki::local_hosts()).unwrap();
    pki::issue(&d, "alice", &[]).unwrap();
    Setup {
        server: TlsFiles {
            cert: s.cert,
            key: s.key,
            trusted_ca: client_cert_auth.then(|| pki::ca_path(&d)),
            client_cert_auth,
            ..Default::default()
        },
        dir: d,
        _dir: dir,
    }
}

/// Serves echo-one-byte over TLS; returns the address.
async fn serve(files: &TlsFiles) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mut conns = cairn_tls::incoming(l, cairn_tls::server_config(files).unwrap());
    tokio::spawn(async move {
        while let Some(Ok(mut c)) = conns.next().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                if c.read_exact(&mut b).await.is_ok() {
                    let _ = c.write_all(&b).await;
                }
            });
        }
    });
    addr
}

/// A client round trip; `Err` with the reason when refused.
async fn talk(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    me: Option<&str>,
    dir: &std::path::Path,
) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in cairn_tls::files::certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let cfg = match me {
        Some(name) => {
            let chain = cairn_tls::files::certs(&dir.join(format!("{name}.pem"))).unwrap();
            let key = cairn_tls::files::key(&dir.join(format!("{name}-key.pem"))).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"x").await.map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
    let certs = s.get_ref().1.peer_certificates().unwrap();
    Ok(certs[0].to_vec())
}

#[tokio::test]
async fn mutual_tls_admits_signed_clients_only() {
    let s = setup(true);
    let addr = serve(&s.server).await;
    let ca = pki::ca_path(&s.dir);
    talk(addr, &ca, Some("alice"), &s.dir)
        .await
        .expect("a signed client is admitted");
    let e = talk(addr, &ca, None, &s.dir).await.unwrap_err();
    assert!(
        e.contains("CertificateRequired") || e.contains("certificate"),
        "{e}"
    );

    // A certificate from another CA is refused; and the client refuses a
    // server it cannot check.
    let other = tempfile::tempdir().unwrap();
    pki::issue(other.path(), "mallory", &[]).unwrap();
    talk(addr, &ca, Some("mallory"), other.path())
        .await
        .unwrap_err();
    let e = talk(addr, &pki::ca_path(other.path()), None, &s.dir)
        .await
        .unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[test]
fn a_certificates_common_name_is_read() {
    let s = setup(true);
    let alice = cairn_tls::files::certs(&s.dir.join("alice.pem")).unwrap();
    assert_eq!(cairn_tls::common_name(&alice[0]).as_deref(), Some("alice"));
    assert_eq!(cairn_tls::common_name(b"not a certificate"), None);
}

#[tokio::test]
async fn without_client_cert_auth_no_certificate_is_asked() {
    let s = setup(false);
    let addr = serve(&s.server).await;
    talk(addr, &pki::ca_path(&s.dir), None, &s.dir)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_trusted_ca_alone_demands_client_certificates_as_etcd_does() {
    let mut s = setup(false);
    s.server.trusted_ca = Some(pki::ca_path(&s.dir));
    let addr = serve(&s.server).await;
    talk(addr, &pki::ca_path(&s.dir), None, &s.dir)
        .await
        .unwrap_err();
    talk(addr, &pki::ca_path(&s.dir), Some("alice"), &s.dir)
        .await
        .unwrap();
}

#[tokio::test]
async fn plain_http_is_closed_unanswered_as_etcd_does() {
    let s = setup(false);
    let addr = serve(&s.server).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tcp.read_to_end(&mut reply).await;
    assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));
}

#[tokio::test]
async fn an_allowed_name_narrows_who_may_connect() {
    let mut s = setup(true);
    pki::issue(
        &s.dir,
        "peer1",
        &["10.1.2.3".to_string(), "peer1.example".to_string()],
    )
    .unwrap();
    s.server.allowed_cn = Some("peer1".into());
    let addr = serve(&s.server).await;
    let ca = pki::ca_path(&s.dir);
    talk(addr, &ca, Some("peer1"), &s.dir)
        .await
        .expect("the allowed name");
    talk(addr, &ca, Some("alice"), &s.dir).await.unwrap_err();
    s.server.allowed_cn = None;
    s.server.allowed_hostname = Some("peer1.example".into());
    let addr = serve(&s.server).await;
    talk(addr, &ca, Some("peer1"), &s.dir)
        .await
        .expect("the allowed host");
    talk(addr, &ca, Some("alice"), &s.dir).await.unwrap_err();
    let peer1 = cairn_tls::files::certs(&s.dir.join("peer1.pem")).unwrap();
    assert!(cairn_tls::names_host(&peer1[0], "10.1.2.3"));
    assert!(cairn_tls::names_host(&peer1[0], "PEER1.example"));
    assert!(!cairn_tls::names_host(&peer1[0], "10.1.2.4"));
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_restart() {
    let s = setup(true);
    let addr = serve(&s.server).await;
    let ca = pki::ca_path(&s.dir);
    let before = talk(addr, &ca, Some("alice"), &s.dir).await.unwrap();
    // Rotate: a new key and certificate for the server, same CA.
    pki::issue(&s.dir, "server", &pki::local_hosts()).unwrap();
    let after = talk(addr, &ca, Some("alice"), &s.dir).await.unwrap();
    assert_ne!(before, after, "the new certificate is presented");
    assert_eq!(
        after,
        cairn_tls::files::certs(&s.server.cert).unwrap()[0].to_vec()
    );
}
