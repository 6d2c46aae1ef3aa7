//! The peer dialer for tonic: TCP (Nagle off), then a TLS handshake under
//! this member's client configuration, checking the peer's certificate
//! against the URL's host.
//!
//! The dialer keeps its own connect timeout, over the TCP connect and the
//! handshake both. Set on the endpoint instead (`Endpoint::connect_timeout`),
//! tonic wraps a custom connector's timeout outside its connect error and
//! the call fails as `Unknown` "transport error", which callers cannot tell
//! from a failure after the request went out. Ours fails as hyper's own
//! connector does, "tcp connect error: ... timed out", inside the connect
//! error: `Unavailable`, nothing sent, safe to send elsewhere.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A `tower` connector making TLS connections (for
/// `Endpoint::connect_with_connector_lazy`, with an `http://` URL: the
/// connector, not tonic, does the TLS).
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    timeout: Duration,
}

impl Connector {
    /// A connector under `config`, giving up on a connection not made
    /// (TCP and TLS handshake) within [`Connector::DEFAULT_TIMEOUT`].
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self {
            tls: TlsConnector::from(config),
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// How long a connection may take when no other limit is given.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// The same connector, giving up on a connection not made within
    /// `timeout` (use this, not the endpoint's connect timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let bad =
                |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
            let host = uri.host().ok_or_else(|| bad("no host"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
            let name = ServerName::try_from(host.clone()).map_err(|_| bad("bad host name"))?;
            // Named as hyper names it: callers tell "nothing was sent"
            // from this text, with TLS or without.
            let failed = |e: io::Error| io::Error::new(e.kind(), format!("tcp connect error: {e}"));
            let connect = async {
                let tcp = TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(failed)?;
                tcp.set_nodelay(true)?;
                tls.connect(name, tcp).await
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(stream) => Ok(TokioIo::new(stream?)),
                Err(_) => Err(failed(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out after {timeout:?}"),
                ))),
            }
        })
    }
}
