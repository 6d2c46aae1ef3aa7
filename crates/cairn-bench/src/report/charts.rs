//! PNG charts (plotters, bitmap backend): throughput against clients, one
//! line per system and cluster size, on a log-scaled clients axis. Text is
//! drawn with `ab_glyph` from a TrueType font found on the machine (DejaVu
//! Sans, Debian's `fonts-dejavu-core`), so the build needs no C library.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use super::model::Table;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers the first font found as plotters' `sans-serif` (once).
fn font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONT_PATHS
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or("no DejaVuSans.ttf found (apt-get install fonts-dejavu-core)")?;
        let bytes: &'static [u8] = Box::leak(
            std::fs::read(path)
                .map_err(|e| e.to_string())?
                .into_boxed_slice(),
        );
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "font is not a valid TrueType file".to_string())
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// Draws `t` if it has rows at two or more client counts; returns the file.
pub fn throughput_vs_clients(t: &Table, dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let mut clients: Vec<u64> = t.rows.iter().map(|r| r.clients).collect();
    clients.sort_unstable();
    clients.dedup();
    if clients.len() < 2 {
        return Ok(None);
    }
    font()?;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut nodes: Vec<u32> = t.rows.iter().map(|r| r.nodes).collect();
    nodes.sort_unstable();
    nodes.dedup();
    for n in &nodes {
        for (name, pick) in [("etcd", 0), ("Cairn", 1)] {
            let pts: Vec<(f64, f64)> = t
                .rows
                .iter()
                .filter(|r| r.nodes == *n)
                .filter_map(|r| {
                    let side = if pick == 0 { &r.etcd } else { &r.cairn };
                    side.as_ref()
                        .map(|s| (r.clients.max(1) as f64, s.ops_per_sec))
                })
                .collect();
            if !pts.is_empty() {
                series.push((
                    format!("{name}, {n} node{}", if *n == 1 { "" } else { "s" }),
                    pts,
                ));
            }
        }
    }
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(1.0, f64::max)
        * 1.15;
    let xmax = *clients.last().expect("two or more") as f64 * 1.3;
    let path = dir.join(format!("{}.png", t.family));
    {
        let root = BitMapBackend::new(&path, (800, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: throughput vs clients", t.family),
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((0.8f64..xmax).log_scale(), 0f64..ymax)?;
        chart
            .configure_mesh()
            .x_desc("clients")
            .y_desc("ops/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (name, pts) in &series {
            // etcd in warm colours, thin; Cairn in cool colours, thick.
            let etcd = name.starts_with("etcd");
            let one = name.contains(" 1 node");
            let color = match (etcd, one) {
                (true, true) => RGBColor(220, 40, 40),
                (true, false) => RGBColor(240, 150, 20),
                (false, true) => RGBColor(30, 80, 220),
                (false, false) => RGBColor(20, 150, 60),
            };
            let dashed = etcd;
            chart
                .draw_series(LineSeries::new(
                    pts.clone(),
                    color.stroke_width(if dashed { 1 } else { 3 }),
                ))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(Some(path))
}
