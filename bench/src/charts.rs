//! SVG charts of one run (`--charts DIR`): the paired ratio against tower-sessions of every
//! coatcheck row, the middleware's latency percentiles, and the growth curves of the scale
//! part. The tables record what they print here; `write` draws it all at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::BoxErr;

#[derive(Default)]
struct Data {
    /// (row label, paired ratio against tower-sessions).
    ratios: Vec<(String, f64)>,
    /// Table title → (contender, p50 µs, p99 µs).
    latencies: BTreeMap<String, Vec<(String, u32, u32)>>,
    /// Chart file stem → (title, x label, y label, series name → points).
    growth: BTreeMap<&'static str, Growth>,
}

struct Growth {
    title: &'static str,
    x: &'static str,
    y: &'static str,
    series: BTreeMap<String, Vec<(f64, f64)>>,
}

static DATA: Mutex<Option<Data>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Data) -> T) -> T {
    let mut guard = DATA.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Data::default))
}

/// A coatcheck row's paired ratio against its tower-sessions contender.
pub fn ratio(label: String, value: f64) {
    if value.is_finite() {
        with(|d| d.ratios.push((label, value)));
    }
}

/// A contender's p50 and p99 in the table `title`.
pub fn latency(title: &str, contender: &str, p50: u32, p99: u32) {
    with(|d| {
        d.latencies
            .entry(title.to_owned())
            .or_default()
            .push((contender.to_owned(), p50, p99))
    });
}

/// One point of a growth curve (`chart`: the file stem).
pub fn point(
    chart: &'static str,
    (title, x_label, y_label): (&'static str, &'static str, &'static str),
    series: &str,
    x: f64,
    y: f64,
) {
    with(|d| {
        d.growth
            .entry(chart)
            .or_insert_with(|| Growth {
                title,
                x: x_label,
                y: y_label,
                series: BTreeMap::new(),
            })
            .series
            .entry(series.to_owned())
            .or_default()
            .push((x, y))
    });
}

const PALETTE: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// Draws every chart with data into `dir`; the files written.
pub fn write(dir: &Path) -> Result<Vec<PathBuf>, BoxErr> {
    std::fs::create_dir_all(dir)?;
    let data = with(std::mem::take);
    let mut written = Vec::new();
    if !data.ratios.is_empty() {
        let path = dir.join("ratio-vs-tower-sessions.svg");
        bars(
            &path,
            "Throughput against tower-sessions (paired ratio; 1.0 = even)",
            &data.ratios,
        )?;
        written.push(path);
    }
    for (title, rows) in &data.latencies {
        let stem: String = title
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
            .split('-')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        let path = dir.join(format!("latency-{stem}.svg"));
        percentiles(&path, title, rows)?;
        written.push(path);
    }
    for (stem, growth) in &data.growth {
        let path = dir.join(format!("{stem}.svg"));
        curves(&path, growth)?;
        written.push(path);
    }
    Ok(written)
}

/// Horizontal bars, one per row, with the even line (1.0) and the target (1.5) marked.
fn bars(path: &Path, title: &str, rows: &[(String, f64)]) -> Result<(), BoxErr> {
    let height = 90 + 24 * rows.len() as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = rows.iter().map(|r| r.1).fold(1.6, f64::max) * 1.05;
    let n = rows.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(520)
        .build_cartesian_2d(0f64..max, (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => rows.get(*i).map(|r| r.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("× tower-sessions")
        .draw()?;
    chart.draw_series(rows.iter().enumerate().map(|(i, (_, v))| {
        let color = if *v >= 1.0 { PALETTE[2] } else { PALETTE[3] };
        Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (*v, SegmentValue::Exact(i + 1)),
            ],
            color.mix(0.8).filled(),
        )
    }))?;
    for (x, color) in [(1.0, BLACK), (1.5, PALETTE[0])] {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, SegmentValue::Exact(0)), (x, SegmentValue::Exact(n))],
            color.stroke_width(1),
        )))?;
    }
    root.present()?;
    Ok(())
}

/// p50 and p99 per contender (log scale, µs).
fn percentiles(path: &Path, title: &str, rows: &[(String, u32, u32)]) -> Result<(), BoxErr> {
    let height = 90 + 30 * rows.len() as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = rows.iter().map(|r| f64::from(r.2)).fold(10.0, f64::max) * 2.0;
    let n = rows.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{title}: latency p50 (light) and p99 (dark)"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(380)
        .build_cartesian_2d((1f64..max).log_scale(), (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => rows.get(*i).map(|r| r.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("µs (log scale)")
        .draw()?;
    for (i, (_, p50, p99)) in rows.iter().enumerate() {
        let (p50, p99) = (f64::from((*p50).max(1)), f64::from((*p99).max(1)));
        chart.draw_series([
            Rectangle::new(
                [
                    (1.0, SegmentValue::Exact(i)),
                    (p99, SegmentValue::Exact(i + 1)),
                ],
                PALETTE[0].mix(0.9).filled(),
            ),
            Rectangle::new(
                [
                    (1.0, SegmentValue::Exact(i)),
                    (p50, SegmentValue::Exact(i + 1)),
                ],
                PALETTE[0].mix(0.35).filled(),
            ),
        ])?;
    }
    root.present()?;
    Ok(())
}

/// One line per series, log-log.
fn curves(path: &Path, g: &Growth) -> Result<(), BoxErr> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let points = || g.series.values().flatten();
    let (x0, x1) = points().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = points().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (x0, y0) = (x0.max(1e-9) / 1.5, y0.max(1e-9) / 1.5);
    let mut chart = ChartBuilder::on(&root)
        .caption(g.title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1 * 1.5).log_scale(), (y0..y1 * 1.5).log_scale())?;
    chart.configure_mesh().x_desc(g.x).y_desc(g.y).draw()?;
    for (k, (name, pts)) in g.series.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
