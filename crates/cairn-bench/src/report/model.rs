//! Results grouped into tables and rows: one table per `family` tag, one
//! row per (nodes, case), each side (etcd, Cairn) the median over rounds.

use std::collections::BTreeMap;

use crate::stats::RunResult;

/// One system's figures in one row (medians over rounds).
#[derive(Debug, Clone, Default)]
pub struct Side {
    pub rounds: usize,
    pub ops_per_sec: f64,
    pub p50: f64,
    pub p99: f64,
    pub errors: u64,
    /// RSS after the run, when a footprint was recorded.
    pub rss_bytes: Option<f64>,
    pub disk_bytes: Option<f64>,
}

/// One row: a case on a cluster size, both systems.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub nodes: u32,
    pub case: String,
    pub clients: u64,
    pub etcd: Option<Side>,
    pub cairn: Option<Side>,
}

impl Row {
    /// Cairn/etcd throughput.
    pub fn ratio(&self) -> Option<f64> {
        let (e, c) = (self.etcd.as_ref()?, self.cairn.as_ref()?);
        (e.ops_per_sec > 0.0).then(|| c.ops_per_sec / e.ops_per_sec)
    }
}

/// One table: every row of a family.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub family: String,
    pub rows: Vec<Row>,
}

/// Everything the report shows.
#[derive(Debug, Default)]
pub struct Model {
    pub tables: Vec<Table>,
    /// The fsync record, if the run measured one.
    pub fsync: Option<RunResult>,
    /// Free-form facts from `info` records (etcd version, CPU, …).
    pub info: BTreeMap<String, String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn side(runs: &[&RunResult], prints: &[&RunResult]) -> Side {
    let num = |r: &RunResult, k: &str| r.extra.get(k).and_then(|v| v.as_f64());
    let rss: Vec<f64> = prints.iter().filter_map(|r| num(r, "rss_bytes")).collect();
    let disk: Vec<f64> = prints.iter().filter_map(|r| num(r, "disk_bytes")).collect();
    Side {
        rounds: runs.len(),
        ops_per_sec: median(runs.iter().map(|r| r.ops_per_sec).collect()),
        p50: median(runs.iter().map(|r| r.latency_ms.p50).collect()),
        p99: median(runs.iter().map(|r| r.latency_ms.p99).collect()),
        errors: runs.iter().map(|r| r.error_count()).sum(),
        rss_bytes: (!rss.is_empty()).then(|| median(rss)),
        disk_bytes: (!disk.is_empty()).then(|| median(disk)),
    }
}

impl Model {
    /// Groups `runs` by their tags.
    pub fn from_runs(runs: &[RunResult]) -> Self {
        let tag = |r: &RunResult, k: &str| r.tags.get(k).cloned().unwrap_or_default();
        let mut m = Model::default();
        // (family, nodes, case) -> system -> (runs, footprints)
        type Key = (String, u32, String);
        /// Per system: the runs and the footprints taken after them.
        type BySystem<'a> = BTreeMap<String, (Vec<&'a RunResult>, Vec<&'a RunResult>)>;
        let mut groups: BTreeMap<Key, BySystem> = BTreeMap::new();
        let mut clients: BTreeMap<Key, u64> = BTreeMap::new();
        for r in runs {
            match r.workload.as_str() {
                "fsync" => {
                    m.fsync = Some(r.clone());
                    continue;
                }
                "info" => {
                    for (k, v) in &r.tags {
                        m.info.insert(k.clone(), v.clone());
                    }
                    continue;
                }
                _ => {}
            }
            let family = tag(r, "family");
            if family.is_empty() {
                continue;
            }
            let key = (family, tag(r, "nodes").parse().unwrap_or(1), tag(r, "case"));
            let entry = groups
                .entry(key.clone())
                .or_default()
                .entry(tag(r, "system"))
                .or_default();
            if r.workload == "footprint" {
                entry.1.push(r);
            } else {
                entry.0.push(r);
                if let Some(c) = r.params.get("clients").and_then(|v| v.as_u64()) {
                    clients.insert(key, c);
                }
            }
        }
        let mut tables: BTreeMap<String, Table> = BTreeMap::new();
        for ((family, nodes, case), systems) in groups {
            let pick = |s: &str| systems.get(s).map(|(runs, prints)| side(runs, prints));
            let row = Row {
                nodes,
                clients: clients
                    .get(&(family.clone(), nodes, case.clone()))
                    .copied()
                    .unwrap_or(0),
                case,
                etcd: pick("etcd"),
                cairn: pick("cairn"),
            };
            let t = tables.entry(family.clone()).or_insert_with(|| Table {
                family,
                rows: Vec::new(),
            });
            t.rows.push(row);
        }
        for t in tables.values_mut() {
            t.rows
                .sort_by(|a, b| (a.nodes, a.clients, &a.case).cmp(&(b.nodes, b.clients, &b.case)));
        }
        m.tables = tables.into_values().collect();
        m
    }

    /// The table of `family`, if any.
    pub fn table(&self, family: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.family == family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(system: &str, family: &str, case: &str, clients: u64, ops: f64) -> RunResult {
        let mut r = RunResult {
            workload: "put".into(),
            ops_per_sec: ops,
            ..Default::default()
        };
        for (k, v) in [
            ("system", system),
            ("family", family),
            ("case", case),
            ("nodes", "1"),
        ] {
            r.tags.insert(k.into(), v.into());
        }
        r.params.insert("clients".into(), clients.into());
        r
    }

    #[test]
    fn rows_take_medians_over_rounds_and_ratios() {
        let runs = vec![
            run("etcd", "put", "put c=50", 50, 100.0),
            run("cairn", "put", "put c=50", 50, 150.0),
            run("etcd", "put", "put c=50", 50, 300.0),
            run("cairn", "put", "put c=50", 50, 250.0),
            run("etcd", "put", "put c=50", 50, 200.0),
            run("cairn", "put", "put c=50", 50, 600.0),
            run("etcd", "put", "put c=1", 1, 10.0),
        ];
        let m = Model::from_runs(&runs);
        let t = m.table("put").unwrap();
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[0].clients, 1);
        assert!(t.rows[0].ratio().is_none(), "no cairn side");
        let r = &t.rows[1];
        assert_eq!(r.etcd.as_ref().unwrap().ops_per_sec, 200.0);
        assert_eq!(r.cairn.as_ref().unwrap().ops_per_sec, 250.0);
        assert_eq!(r.ratio(), Some(1.25));
    }
}
