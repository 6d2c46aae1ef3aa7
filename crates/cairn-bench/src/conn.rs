//! Connections to the cluster under test: `--conns` HTTP/2 channels spread
//! over the endpoints (or all to the leader with `--target-leader`, found
//! the way etcd's benchmark finds it: the endpoint whose Status names
//! itself as leader).
//!
//! A secured cluster is reached the way etcd's benchmark reaches one: TLS
//! under `--cacert` (and `--cert`/`--key` for a client certificate, whose
//! common name is the user under `--client-cert-auth`), and with `--user`
//! one `Authenticate` whose token every request then carries.

use anyhow::{bail, Context as _};
use cairn_api::etcdserverpb::auth_client::AuthClient;
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::{AuthenticateRequest, StatusRequest};
use tokio::sync::OnceCell;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use crate::args::{ConnArgs, Global};

/// A connection as the workloads use it: requests carry the token, if any.
pub type Chan = InterceptedService<Channel, Token>;

/// Puts the `--user`'s token into each request's metadata.
#[derive(Clone, Default)]
pub struct Token(Option<AsciiMetadataValue>);

impl Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// `host:port` or a URL, as a URL.
pub fn url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// The TLS connector for `g`'s files, if connections use TLS.
fn tls(g: &ConnArgs, endpoint: &str) -> anyhow::Result<Option<cairn_tls::Connector>> {
    if g.cacert.is_none() && !endpoint.starts_with("https://") {
        return Ok(None);
    }
    let Some(ca) = &g.cacert else {
        bail!("{endpoint}: TLS needs --cacert (the CA that signs the servers' certificates)");
    };
    let files = cairn_tls::TlsFiles {
        cert: g.cert.clone().unwrap_or_default(),
        key: g.key.clone().unwrap_or_default(),
        trusted_ca: Some(ca.clone()),
        ..Default::default()
    };
    Ok(Some(cairn_tls::Connector::new(cairn_tls::client_config(
        &files,
    )?)))
}

/// One new HTTP/2 connection to `endpoint` (TLS as `g` says), retried for
/// up to 10 s (a server that was just started may not listen yet).
async fn channel(g: &ConnArgs, endpoint: &str) -> anyhow::Result<Channel> {
    let tls = tls(g, endpoint)?;
    // With TLS the connector does the handshake: tonic sees http://.
    let plain = url(endpoint).replacen("https://", "http://", 1);
    let ep = Endpoint::from_shared(plain)?.tcp_nodelay(true);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = match &tls {
            Some(c) => ep.connect_with_connector(c.clone()).await,
            None => ep.connect().await,
        };
        match got {
            Ok(ch) => return Ok(ch),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("connecting to {endpoint}"))
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// The `--user`'s token, from one `Authenticate` per run (any member
/// accepts it).
async fn token(g: &ConnArgs, ch: &Channel) -> anyhow::Result<Token> {
    static TOKEN: OnceCell<Token> = OnceCell::const_new();
    let Some(user) = &g.user else {
        return Ok(Token(None));
    };
    TOKEN
        .get_or_try_init(|| async {
            let (name, password) = user
                .split_once(':')
                .context("--user must be name:password")?;
            let t = AuthClient::new(ch.clone())
                .authenticate(AuthenticateRequest {
                    name: name.into(),
                    password: password.into(),
                })
                .await
                .context("authenticating --user")?
                .into_inner()
                .token;
            Ok(Token(Some(t.parse().context("token is not ASCII")?)))
        })
        .await
        .cloned()
}

/// One new connection to `endpoint`, as `g`'s user.
pub async fn connect(g: &ConnArgs, endpoint: &str) -> anyhow::Result<Chan> {
    let ch = channel(g, endpoint).await?;
    let t = token(g, &ch).await?;
    Ok(InterceptedService::new(ch, t))
}

/// The endpoints requests go to: the leader alone, or all of them.
pub async fn targets(g: &Global) -> anyhow::Result<Vec<String>> {
    if g.conn.endpoints.is_empty() {
        bail!("no --endpoints");
    }
    if !g.target_leader {
        return Ok(g.conn.endpoints.clone());
    }
    for ep in &g.conn.endpoints {
        let Ok(ch) = connect(&g.conn, ep).await else {
            continue;
        };
        let Ok(s) = MaintenanceClient::new(ch).status(StatusRequest {}).await else {
            continue;
        };
        let s = s.into_inner();
        if s.header.is_some_and(|h| h.member_id == s.leader) {
            return Ok(vec![ep.clone()]);
        }
    }
    bail!("no endpoint reports itself as leader")
}

/// `g.conns` channels over the target endpoints, round-robin.
pub async fn channels(g: &Global) -> anyhow::Result<Vec<Chan>> {
    let eps = targets(g).await?;
    let mut out = Vec::new();
    for i in 0..g.conns.max(1) {
        out.push(connect(&g.conn, &eps[i % eps.len()]).await?);
    }
    Ok(out)
}
