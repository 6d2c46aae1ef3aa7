//! Secured mode: the same tests, on the cluster a careful operator runs.
//!
//! With `CAIRN_TEST_SECURED=1` in the environment (or after [`enable`], as
//! `cairn torture --secured` calls), every cluster this crate starts —
//! in-process or `cairn serve` processes — is secured as
//! `docs/security.md` tells an operator to secure one:
//!
//! - TLS on the client port, with client certificates required (a trusted
//!   CA; etcd's `--client-cert-auth`);
//! - TLS on the peer port under a *separate* peer CA, both ways;
//! - auth enabled: user `root` with the `root` role, before any test
//!   request.
//!
//! Every client this crate makes ([`channel`], [`connect`], and the
//! helpers built on them) then dials with TLS and presents a certificate
//! whose common name is `root`: the user under client-certificate auth, as
//! in etcd. So a test runs unchanged, every request it makes goes through
//! the TLS handshake and the access check of its RPC, and every peer
//! message through the peer handshake and membership check. Tests of auth
//! itself (which create their own users) run in plain mode only.
//!
//! The certificates are made once per process with the throwaway CA of
//! [`cairn_tls::pki`] in a temporary directory that lives as long as the
//! process.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cairn_api::etcdserverpb::auth_client::AuthClient;
use cairn_api::etcdserverpb::{
    AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, AuthenticateRequest,
};
use cairn_tls::pki as certs;
use cairn_tls::{ClientConfig, ServerConfig, TlsFiles};
use tonic::transport::{Channel, Endpoint};

/// The environment variable that turns secured mode on for a test run.
pub const ENV: &str = "CAIRN_TEST_SECURED";

/// The user every secured client is (its certificate's common name).
pub const USER: &str = "root";

/// The certificates and TLS configurations of secured mode.
pub struct Pki {
    /// Client-port CA, server certificate and the `root` client certificate.
    pub client_dir: PathBuf,
    /// Peer CA and the members' peer certificate (separate from the client CA).
    pub peer_dir: PathBuf,
    /// The client port's server configuration.
    pub client_server: Arc<ServerConfig>,
    /// The peer port's server configuration.
    pub peer_server: Arc<ServerConfig>,
    /// How members dial each other.
    pub peer_client: Arc<ClientConfig>,
    /// How test clients dial members (as `root`).
    pub client: Arc<ClientConfig>,
    _dir: tempfile::TempDir,
}

static MODE: OnceLock<Option<Pki>> = OnceLock::new();

/// Turns secured mode on for the rest of this process. Panics if a cluster
/// was already started in plain mode.
pub fn enable() {
    let on = MODE.get_or_init(|| Some(make()));
    assert!(
        on.is_some(),
        "secured mode enabled after plain clusters ran"
    );
}

/// Secured mode's certificates, or `None` in plain mode.
pub fn pki() -> Option<&'static Pki> {
    MODE.get_or_init(|| {
        let on = std::env::var(ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        on.then(make)
    })
    .as_ref()
}

/// True in secured mode.
pub fn is_on() -> bool {
    pki().is_some()
}

/// The files of one port's TLS: certificate `name` of `dir`, its CA.
pub fn files(dir: &std::path::Path, name: &str) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
        trusted_ca: Some(certs::ca_path(dir)),
        client_cert_auth: true,
        ..TlsFiles::default()
    }
}

fn make() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir for certificates");
    let client_dir = dir.path().join("client");
    let peer_dir = dir.path().join("peer");
    let hosts = certs::local_hosts();
    certs::issue(&client_dir, "server", &hosts).expect("server certificate");
    certs::issue(&client_dir, USER, &[]).expect("client certificate");
    certs::issue(&peer_dir, "peer", &hosts).expect("peer certificate");
    let server = files(&client_dir, "server");
    let peer = files(&peer_dir, "peer");
    Pki {
        client_server: cairn_tls::server_config(&server).expect("client port TLS"),
        peer_server: cairn_tls::server_config(&peer).expect("peer port TLS"),
        peer_client: cairn_tls::client_config(&peer).expect("peer dialing TLS"),
        client: cairn_tls::client_config(&files(&client_dir, USER)).expect("client TLS"),
        client_dir,
        peer_dir,
        _dir: dir,
    }
}

/// `http://addr` or `https://addr`, by mode (for URLs a member advertises).
pub fn url(addr: &str) -> String {
    match pki() {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    }
}

/// An endpoint for member client address `addr` (`host:port`); configure
/// it, then open it with [`lazy`] or [`connect`].
pub fn endpoint(addr: &str) -> Endpoint {
    // The URI stays http://: in secured mode the connector does the TLS.
    Endpoint::from_shared(format!("http://{addr}")).expect("valid address")
}

/// A channel to `addr`, connected on first use: [`endpoint`] with a 2 s
/// connect timeout and a 15 s request timeout.
pub fn channel(addr: &str) -> Channel {
    let ep = endpoint(addr).timeout(Duration::from_secs(15));
    // Secured, the connector's own 2 s: an endpoint's connect timeout
    // would turn a connection never made into tonic's `Unknown`.
    lazy(if is_on() {
        ep
    } else {
        ep.connect_timeout(Duration::from_secs(2))
    })
}

/// Opens `ep` on first use, with TLS as `root` in secured mode.
pub fn lazy(ep: Endpoint) -> Channel {
    match pki() {
        Some(p) => ep.connect_with_connector_lazy(cairn_tls::Connector::new(p.client.clone())),
        None => ep.connect_lazy(),
    }
}

/// Opens `ep` now, with TLS as `root` in secured mode.
pub async fn connect(ep: Endpoint) -> Result<Channel, tonic::transport::Error> {
    match pki() {
        Some(p) => {
            ep.connect_with_connector(cairn_tls::Connector::new(p.client.clone()))
                .await
        }
        None => ep.connect().await,
    }
}

/// The TLS flags of `cairn serve` in secured mode (empty in plain mode).
pub fn serve_args() -> Vec<String> {
    let Some(p) = pki() else {
        return Vec::new();
    };
    let path = |d: &std::path::Path, f: &str| d.join(f).display().to_string();
    vec![
        "--cert-file".into(),
        path(&p.client_dir, "server.pem"),
        "--key-file".into(),
        path(&p.client_dir, "server-key.pem"),
        "--trusted-ca-file".into(),
        path(&p.client_dir, "ca.pem"),
        "--client-cert-auth".into(),
        "--peer-cert-file".into(),
        path(&p.peer_dir, "peer.pem"),
        "--peer-key-file".into(),
        path(&p.peer_dir, "peer-key.pem"),
        "--peer-trusted-ca-file".into(),
        path(&p.peer_dir, "ca.pem"),
        "--peer-client-cert-auth".into(),
    ]
}

/// In secured mode, turns auth on through member `addr`: user `root`
/// (with a password, as etcd requires one for auth enable's checks to be
/// meaningful) granted the `root` role, then `AuthEnable`; retried while
/// the cluster elects. Checks that a password login works too. Does
/// nothing in plain mode.
pub async fn enable_auth(addr: &str) {
    if !is_on() {
        return;
    }
    let mut a = AuthClient::new(channel(addr));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut step = 0;
    while step < 3 {
        let r = match step {
            0 => a
                .user_add(AuthUserAddRequest {
                    name: USER.into(),
                    password: "secured".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            1 => a
                .user_grant_role(AuthUserGrantRoleRequest {
                    user: USER.into(),
                    role: "root".into(),
                })
                .await
                .map(drop),
            _ => a.auth_enable(AuthEnableRequest {}).await.map(drop),
        };
        match r {
            Ok(()) => step += 1,
            // A retry after an answer that was lost: the step was done.
            Err(s) if s.message().contains("already exists") => step += 1,
            Err(s) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "secured mode: enabling auth failed at step {step}: {s}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let token = a
        .authenticate(AuthenticateRequest {
            name: USER.into(),
            password: "secured".into(),
        })
        .await
        .expect("secured mode: root logs in with its password")
        .into_inner()
        .token;
    assert!(!token.is_empty(), "secured mode: no token");
}

/// True (after saying so) when secured mode is on: for tests that set up
/// auth or TLS themselves, and so run in plain mode only.
pub fn skipped(test: &str) -> bool {
    let on = is_on();
    if on {
        eprintln!("{test}: plain mode only (it sets up auth itself); skipped in secured mode");
    }
    on
}
