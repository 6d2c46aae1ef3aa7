//! The generated Markdown: run facts, the targets of issue #4 with what was
//! measured against each, one table per workload family, charts, and the
//! footprint after loading keys.

use std::fmt::Write;

use super::model::{Model, Row, Side, Table};

fn mb(b: Option<f64>) -> String {
    b.map_or("–".into(), |b| format!("{:.0}", b / 1e6))
}

fn ops(s: &Option<Side>) -> String {
    s.as_ref()
        .map_or("–".into(), |s| format!("{:.0}", s.ops_per_sec))
}

fn lat(s: &Option<Side>) -> String {
    s.as_ref()
        .map_or("–".into(), |s| format!("{:.2} / {:.2}", s.p50, s.p99))
}

fn ratio(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("**{r:.2}×**"))
}

/// The whole generated section.
pub fn render(m: &Model, command: &str, charts: &[(String, String)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Latest comparison (generated)\n");
    let _ = writeln!(s, "Command: `{command}`\n");
    for (k, v) in &m.info {
        let _ = writeln!(s, "- {k}: {v}");
    }
    if let Some(f) = &m.fsync {
        let _ = writeln!(
            s,
            "- this disk's write+fdatasync latency (4 KiB, {} rounds): p50 {:.3} ms, p99 {:.3} ms",
            f.ok, f.latency_ms.p50, f.latency_ms.p99
        );
    }
    let _ = writeln!(
        s,
        "\nEvery figure is the median over rounds; runs alternate etcd, Cairn, etcd, Cairn… \
         Latencies are p50 / p99 in ms; RSS is the server's (summed over its nodes) right after the run.\n"
    );
    render_targets(&mut s, m);
    for t in &m.tables {
        render_table(&mut s, t, charts);
    }
    s
}

fn render_table(s: &mut String, t: &Table, charts: &[(String, String)]) {
    let footprint_only = t.rows.iter().all(|r| {
        [&r.etcd, &r.cairn]
            .iter()
            .all(|x| x.as_ref().is_none_or(|x| x.rounds == 0))
    });
    let _ = writeln!(s, "### {}\n", t.family);
    if footprint_only {
        let _ = writeln!(
            s,
            "| nodes | case | etcd RSS MB | Cairn RSS MB | Cairn/etcd RSS | etcd disk MB | Cairn disk MB | Cairn/etcd disk |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for r in &t.rows {
            let get = |x: &Option<Side>, f: fn(&Side) -> Option<f64>| x.as_ref().and_then(f);
            let (er, cr) = (
                get(&r.etcd, |x| x.rss_bytes),
                get(&r.cairn, |x| x.rss_bytes),
            );
            let (ed, cd) = (
                get(&r.etcd, |x| x.disk_bytes),
                get(&r.cairn, |x| x.disk_bytes),
            );
            let q = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if a > 0.0 => format!("**{:.2}×**", b / a),
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.nodes,
                r.case,
                mb(er),
                mb(cr),
                q(er, cr),
                mb(ed),
                mb(cd),
                q(ed, cd)
            );
        }
    } else {
        let _ = writeln!(
            s,
            "| nodes | case | etcd ops/s | Cairn ops/s | Cairn/etcd | etcd p50 / p99 | Cairn p50 / p99 | etcd RSS MB | Cairn RSS MB |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for r in &t.rows {
            let errs: u64 = [&r.etcd, &r.cairn]
                .iter()
                .filter_map(|x| x.as_ref().map(|x| x.errors))
                .sum();
            let _ = writeln!(
                s,
                "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} |",
                r.nodes,
                r.case,
                if errs > 0 {
                    format!(" ({errs} errors)")
                } else {
                    String::new()
                },
                ops(&r.etcd),
                ops(&r.cairn),
                ratio(r.ratio()),
                lat(&r.etcd),
                lat(&r.cairn),
                mb(r.etcd.as_ref().and_then(|x| x.rss_bytes)),
                mb(r.cairn.as_ref().and_then(|x| x.rss_bytes)),
            );
        }
    }
    for (family, link) in charts {
        if family == &t.family {
            let _ = writeln!(s, "\n![{family}: throughput vs clients]({link})");
        }
    }
    let _ = writeln!(s);
}

/// One target's verdict line.
struct Verdict {
    target: String,
    measured: String,
    met: Option<bool>,
}

fn throughput_target(m: &Model, family: &str, clients: &[u64], min: f64, p99: bool) -> Verdict {
    let rows: Vec<&Row> = m
        .table(family)
        .map(|t| {
            t.rows
                .iter()
                .filter(|r| clients.is_empty() || clients.contains(&r.clients))
                .collect()
        })
        .unwrap_or_default();
    let mut parts = Vec::new();
    let mut met = None;
    for r in rows {
        let Some(q) = r.ratio() else { continue };
        let mut ok = q >= min;
        let mut part = format!("{}n c={}: {q:.2}×", r.nodes, r.clients);
        if p99 {
            if let (Some(e), Some(c)) = (&r.etcd, &r.cairn) {
                ok &= c.p99 <= e.p99;
                let _ = write!(part, " (p99 {:.1} vs {:.1} ms)", c.p99, e.p99);
            }
        }
        met = Some(met.unwrap_or(true) && ok);
        parts.push(part);
    }
    let who = if clients.is_empty() {
        String::new()
    } else {
        format!(
            " at {} clients",
            clients
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        )
    };
    Verdict {
        target: format!(
            "{family} ≥ {min:.1}× etcd{who}{}",
            if p99 { ", p99 ≤ etcd's" } else { "" }
        ),
        measured: if parts.is_empty() {
            "not measured".into()
        } else {
            parts.join("; ")
        },
        met,
    }
}

fn render_targets(s: &mut String, m: &Model) {
    let mut v = vec![
        throughput_target(m, "put", &[50, 200], 2.0, true),
        throughput_target(m, "range-l", &[], 2.0, false),
        throughput_target(m, "range-s", &[], 2.0, false),
        throughput_target(m, "txn-put", &[], 2.0, false),
    ];
    // Single-client put latency against this machine's fsync.
    let fsync = m.fsync.as_ref().map(|f| f.latency_ms.p50);
    let singles: Vec<&Row> = m
        .table("put")
        .map(|t| t.rows.iter().filter(|r| r.clients == 1).collect())
        .unwrap_or_default();
    let mut parts = Vec::new();
    let mut met = None;
    if let Some(f) = fsync.filter(|f| *f > 0.0) {
        for r in singles {
            if let Some(c) = &r.cairn {
                let x = c.p50 / f;
                met = Some(met.unwrap_or(true) && x <= 3.0);
                parts.push(format!("{}n: p50 {:.2} ms = {x:.1}× fsync", r.nodes, c.p50));
            }
        }
    }
    v.push(Verdict {
        target: "single-client put p50 ≤ 3× fsync".into(),
        measured: if parts.is_empty() {
            "not measured".into()
        } else {
            parts.join("; ")
        },
        met,
    });
    // Memory after loading keys.
    let mut parts = Vec::new();
    let mut met = None;
    for r in m
        .table("load")
        .map(|t| t.rows.as_slice())
        .unwrap_or_default()
    {
        let e = r.etcd.as_ref().and_then(|x| x.rss_bytes);
        let c = r.cairn.as_ref().and_then(|x| x.rss_bytes);
        if let (Some(e), Some(c)) = (e, c) {
            let q = c / e;
            met = Some(met.unwrap_or(true) && q <= 0.5);
            parts.push(format!("{}n {}: {q:.2}×", r.nodes, r.case));
        }
    }
    v.push(Verdict {
        target: "RSS after loading keys ≤ 0.5× etcd".into(),
        measured: if parts.is_empty() {
            "not measured".into()
        } else {
            parts.join("; ")
        },
        met,
    });
    let _ = writeln!(
        s,
        "### Targets\n\n| target | measured | met |\n|---|---|---|"
    );
    for x in v {
        let met = match x.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(s, "| {} | {} | {} |", x.target, x.measured, met);
    }
    let _ = writeln!(s);
}
