//! A listener's connections, after their TLS handshakes.
//!
//! The accept loop never waits on a client: each handshake runs in its own
//! task, which must see the first byte within [`FIRST_BYTE_DEADLINE`] and
//! finish within [`HANDSHAKE_DEADLINE`]; at most [`MAX_HANDSHAKES`] run at
//! once, and a connection arriving past that is closed at once (the bound
//! on what a flood of silent connections can take — it cannot stop the
//! loop from accepting). Finished handshakes go to the server as a
//! stream; failed ones are logged, as etcd logs "rejected connection".
//! A client that does not start with a TLS handshake (plain HTTP or h2c to
//! the TLS port) is closed without an answer, as etcd closes it (its
//! listener is a bare `tls.Listener`, not Go's HTTP server, which would
//! have answered 400).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

/// A server-side TLS connection.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// How long a client has to send its first byte.
const FIRST_BYTE_DEADLINE: Duration = Duration::from_secs(3);
/// How long a client has to finish its handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Handshakes in progress at once.
const MAX_HANDSHAKES: usize = 4096;

/// The connections of `listener` that completed a handshake under
/// `config`. Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<io::Result<TlsStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<io::Result<TlsStream>>,
) {
    let limit = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            a = listener.accept() => a,
        };
        let (tcp, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!("rejected connection from {from}: {MAX_HANDSHAKES} TLS handshakes already in progress");
            continue; // dropping `tcp` closes it
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_DEADLINE, handshake(&acceptor, tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(e)) => tracing::warn!("rejected connection from {from}: {e}"),
                Err(_) => {
                    tracing::warn!("rejected connection from {from}: TLS handshake timed out")
                }
            }
        });
    }
}

async fn handshake(acceptor: &TlsAcceptor, tcp: TcpStream) -> io::Result<TlsStream> {
    tcp.set_nodelay(true)?;
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(FIRST_BYTE_DEADLINE, tcp.peek(&mut first))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no TLS handshake began"))??;
    if peeked == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if first[0] != 0x16 {
        // Say why in the log; the client just sees the connection close.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "first record does not look like a TLS handshake",
        ));
    }
    acceptor.accept(tcp).await
}
