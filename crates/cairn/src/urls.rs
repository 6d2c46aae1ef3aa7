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
        .ok_or_else(|| anyhow!("URL {url:?} must start with http:// or https://"))?;
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

/// A Go-style duration (`10m`, `5s`, `250ms`, `1h`) as etcd's flags take it.
pub fn duration(s: &str) -> anyhow::Result<std::time::Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("duration {s:?} has no number"))?;
    let ms = match unit {
        "" | "s" => n * 1000,
        "ms" => n,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        other => return Err(anyhow!("duration {s:?}: unknown unit {other:?}")),
    };
    Ok(std::time::Duration::from_millis(ms))
}
