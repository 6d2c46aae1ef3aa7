//! `cairn regions --endpoints E`: one line per data region, as the first
//! endpoint that answers sees it — ID, start and end key, epoch, leader,
//! voters, approximate size and write rate (`cairnpb.Regions/List`).
//! `cairn regions --endpoints E split KEY...` splits the region holding
//! each key at it (`cairnpb.Regions/Split`), then lists; `... merge
//! KEY...` merges the region holding each key into its left neighbour
//! (`cairnpb.Regions/Merge`), then lists.
//! Connects as `cairn bench` does (TLS files, `--user`).

use anyhow::Context as _;
use cairn_api::cairnpb::regions_client::RegionsClient;
use cairn_api::cairnpb::{RegionInfo, RegionListRequest, RegionMergeRequest, RegionSplitRequest};
use cairn_bench::args::ConnArgs;
use clap::{Args, Subcommand};

/// `cairn regions`.
#[derive(Args, Debug, Clone)]
pub struct RegionsArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    action: Option<RegionsAction>,
}

/// What to do besides listing.
#[derive(Subcommand, Debug, Clone)]
pub enum RegionsAction {
    /// Split the region holding each KEY at it (a key that already starts
    /// a region splits nothing), then list.
    Split {
        /// Keys to split at.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Merge the region holding each KEY into its left neighbour (a key
    /// in the first region merges nothing), then list.
    Merge {
        /// Keys of the regions to merge away.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

/// Splits if asked, then prints the listing.
pub async fn run(a: RegionsArgs) -> anyhow::Result<()> {
    let ep = a
        .conn
        .endpoints
        .first()
        .ok_or_else(|| anyhow::anyhow!("no --endpoints"))?;
    if let Some(RegionsAction::Merge { keys }) = &a.action {
        let mut client = RegionsClient::new(cairn_bench::conn::connect(&a.conn, ep).await?);
        for k in keys {
            let r = client
                .merge(RegionMergeRequest {
                    key: k.clone().into_bytes(),
                })
                .await
                .with_context(|| format!("merging the region of {k:?}"))?
                .into_inner();
            if r.source == 0 {
                eprintln!("{k:?} is in the first region: nothing to merge it into");
            } else {
                eprintln!("merged region {} into region {}", r.source, r.target);
            }
        }
    }
    if let Some(RegionsAction::Split { keys }) = &a.action {
        let mut client = RegionsClient::new(cairn_bench::conn::connect(&a.conn, ep).await?);
        for k in keys {
            let r = client
                .split(RegionSplitRequest {
                    key: k.clone().into_bytes(),
                })
                .await
                .with_context(|| format!("splitting at {k:?}"))?
                .into_inner();
            if r.child == 0 {
                eprintln!("{k:?} already starts region {}", r.region);
            } else {
                eprintln!(
                    "split region {} at {k:?}: region {} born",
                    r.region, r.child
                );
            }
        }
    }
    let mut last = None;
    for ep in &a.conn.endpoints {
        let listed = async {
            let ch = cairn_bench::conn::connect(&a.conn, ep).await?;
            let r = RegionsClient::new(ch)
                .list(RegionListRequest {})
                .await
                .with_context(|| format!("listing regions at {ep}"))?;
            anyhow::Ok(r.into_inner().regions)
        }
        .await;
        match listed {
            Ok(regions) => {
                print!("{}", table(&regions));
                return Ok(());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no --endpoints")))
}

/// The listing as an aligned table, one row per region.
fn table(regions: &[RegionInfo]) -> String {
    let mut rows = vec![[
        "ID", "START", "END", "EPOCH", "LEADER", "VOTERS", "SIZE", "WRITES/S",
    ]
    .map(String::from)];
    for r in regions {
        let voters: Vec<String> = r.voters.iter().map(|v| format!("{v:x}")).collect();
        rows.push([
            r.id.to_string(),
            key(&r.start, "(start)"),
            key(&r.end, "(end)"),
            r.epoch.to_string(),
            if r.leader == 0 {
                "-".into()
            } else {
                format!("{:x}", r.leader)
            },
            voters.join(","),
            size(r.approximate_bytes),
            format!("{:.1}", r.writes_per_second),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// A key as text, non-printable bytes escaped; `empty` names the empty key.
fn key(k: &[u8], empty: &str) -> String {
    if k.is_empty() {
        return empty.into();
    }
    k.iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// Bytes in the largest binary unit that keeps a whole number before the point.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_open_ends_escapes_keys_and_scales_sizes() {
        let t = table(&[
            RegionInfo {
                id: 1,
                start: Vec::new(),
                end: b"m\x01".to_vec(),
                epoch: 2,
                leader: 0xab,
                voters: vec![0xab, 0xcd],
                approximate_bytes: 3 << 20,
                writes_per_second: 12.25,
            },
            RegionInfo {
                id: 77,
                start: b"m\x01".to_vec(),
                end: Vec::new(),
                epoch: 2,
                leader: 0,
                voters: vec![0xab],
                approximate_bytes: 100,
                writes_per_second: 0.0,
            },
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("ID  START"), "{t}");
        let first: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            first,
            ["1", "(start)", "m\\x01", "2", "ab", "ab,cd", "3.0", "MiB", "12.2"]
        );
        let second: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            second,
            ["77", "m\\x01", "(end)", "2", "-", "ab", "100", "B", "0.0"]
        );
    }
}
