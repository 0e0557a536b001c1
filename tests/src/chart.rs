//! Small line charts as a PNG (plotters' bitmap backend, text drawn with a TrueType font read
//! from the system: DejaVu Sans, Debian's `fonts-dejavu-core`): the scale benchmark's curves
//! and the dashboard's panels over an attack, for a reader without Grafana.

use std::path::Path;

use anyhow::{anyhow, Context as _};
use plotters::{
    prelude::*,
    style::{register_font, FontStyle},
};

/// Where the text's font comes from (`cargo xtask setup` installs it).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One line of a panel.
pub struct Series {
    pub label: String,
    /// (x, y); x in the panel's unit (seconds since the start, sources, entries …).
    pub points: Vec<(f64, f64)>,
}

/// One small chart.
pub struct Panel {
    pub title: String,
    /// What the y axis counts (shown beside the title).
    pub unit: String,
    /// A logarithmic x axis (for points spread over decades: 1 … 1,000,000 sources).
    pub log_x: bool,
    pub series: Vec<Series>,
}

fn ensure_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT).map_err(|e| format!("cannot read the chart font {FONT}: {e}"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| format!("{FONT} is not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `panels` as a grid of small line charts (three a row) under `title` into a PNG.
pub fn small_multiples(path: &Path, title: &str, panels: &[Panel]) -> anyhow::Result<()> {
    ensure_font()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let cols = 3usize.min(panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    let (w, h) = (420 * cols as u32, 60 + 300 * rows as u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 24).into_font())
        .map_err(|e| anyhow!("{e}"))?;
    let areas = root.split_evenly((rows, cols));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        draw_panel(panel, area).with_context(|| format!("panel {}", panel.title))?;
    }
    root.present()
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

fn draw_panel(panel: &Panel, area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> anyhow::Result<()> {
    let points = panel.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.1 };
    let caption = if panel.unit.is_empty() {
        panel.title.clone()
    } else {
        format!("{} ({})", panel.title, panel.unit)
    };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 15).into_font())
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(52);
    let style = |c: &RGBColor| c.stroke_width(2);
    if panel.log_x {
        let mut chart = builder
            .build_cartesian_2d((x0.max(1.0)..x1.max(2.0)).log_scale(), 0f64..y1)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_labels(5)
            .label_style(("sans-serif", 11).into_font())
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (i, s) in panel.series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style(&c)).point_size(3))
                .map_err(|e| anyhow!("{e}"))?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        }
        legend(&mut chart)?;
    } else {
        let mut chart = builder
            .build_cartesian_2d(x0..x1, 0f64..y1)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_labels(5)
            .label_style(("sans-serif", 11).into_font())
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (i, s) in panel.series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style(&c)))
                .map_err(|e| anyhow!("{e}"))?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        }
        legend(&mut chart)?;
    }
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(chart: &mut ChartContext<'a, DB, CT>) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 11).into_font())
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))
}
