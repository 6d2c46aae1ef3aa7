//! etcd-style URL lists (`http://127.0.0.1:2379,http://...`) to socket addresses.

use std::net::SocketAddr;

use anyhow::{anyhow, Context};

/// Splits a comma-separated URL list.
pub fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

/// The socket address of a URL like `http://127.0.0.1:2379`.
pub fn socket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| anyhow!("URL {url:?} must start with http:// (TLS is not supported yet)"))?;
    let hostport = rest.trim_end_matches('/');
    let hostport = if let Some(p) = hostport.strip_prefix("localhost:") {
        format!("127.0.0.1:{p}")
    } else {
        hostport.to_string()
    };
    hostport
        .parse()
        .with_context(|| format!("URL {url:?} is not host:port"))
}
