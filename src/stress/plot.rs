//! `stress --plot FILE.svg`: one SVG with two panels over the thread counts run, throughput
//! (validations/s) on the left and p99 latency on the right, one line per design, both axes
//! logarithmic (naive and tokencache lie five orders of magnitude apart), and one legend
//! above both.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::Report;

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 760;
const FONT: &str = "sans-serif";

/// Each design's colour, the same in both panels and every run (the Okabe-Ito palette,
/// readable by colour-blind readers).
fn colour(design: &str) -> RGBColor {
    match design {
        "tokencache" => RGBColor(0, 114, 178),
        "dashmap" => RGBColor(230, 159, 0),
        "locked-debounce" => RGBColor(0, 158, 115),
        "background-saver" => RGBColor(204, 121, 167),
        "naive" => RGBColor(213, 94, 0),
        _ => RGBColor(86, 86, 86),
    }
}

/// Draws `reports` into the SVG file `path`, titled `title` and subtitled `subtitle`.
pub fn write(path: &Path, reports: &[Report], title: &str, subtitle: &str) -> Result<(), String> {
    draw(path, reports, title, subtitle)
        .map_err(|e| format!("could not draw the plot {}: {e}", path.display()))
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(path: &Path, reports: &[Report], title: &str, subtitle: &str) -> DrawResult {
    let mut designs: Vec<&'static str> = Vec::new();
    for report in reports {
        if !designs.contains(&report.design) {
            designs.push(report.design);
        }
    }
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(100);
    head.draw(&Text::new(
        title.to_string(),
        (20, 12),
        (FONT, 24).into_font().style(FontStyle::Bold),
    ))?;
    head.draw(&Text::new(subtitle.to_string(), (20, 42), (FONT, 15)))?;
    legend(&head, &designs, 72)?;

    let (left, right) = body.split_horizontally(WIDTH / 2);
    panel(
        &left,
        reports,
        &designs,
        "Throughput (higher is better)",
        "validations per second (log scale)",
        Report::ops_per_sec,
        &|v| tick(*v, &[(1e6, "M"), (1e3, "k"), (1.0, "")]),
    )?;
    panel(
        &right,
        reports,
        &designs,
        "p99 latency (lower is better)",
        "p99 latency of one validation (log scale)",
        |r| r.latency_ns(0.99) as f64,
        &|v| tick(*v, &[(1e9, " s"), (1e6, " ms"), (1e3, " µs"), (1.0, " ns")]),
    )?;
    root.present()?;
    Ok(())
}

/// One row of legend entries across the top, each a line, a dot and the design's name.
fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, designs: &[&str], y: i32) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let mut x = 20;
    for design in designs {
        let style = colour(design).stroke_width(3);
        area.draw(&PathElement::new(vec![(x, y), (x + 28, y)], style))?;
        area.draw(&Circle::new((x + 14, y), 4, colour(design).filled()))?;
        area.draw(&Text::new(design.to_string(), (x + 36, y - 8), (FONT, 16)))?;
        x += 36 + 9 * design.len() as i32 + 40;
    }
    Ok(())
}

/// A log-log chart of `value` over thread counts, one line per design.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    reports: &[Report],
    designs: &[&str],
    caption: &str,
    y_desc: &str,
    value: impl Fn(&Report) -> f64,
    y_format: &dyn Fn(&f64) -> String,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let mut counts: Vec<f64> = reports.iter().map(|r| r.threads as f64).collect();
    counts.sort_by(f64::total_cmp);
    counts.dedup();
    let values: Vec<f64> = reports.iter().map(&value).filter(|v| *v > 0.0).collect();
    let (low, high) = bounds(&values);
    let (first, last) = (counts.first().copied(), counts.last().copied());
    let x_range = (first.unwrap_or(1.0) / 1.5..last.unwrap_or(1.0) * 1.5)
        .log_scale()
        .with_key_points(counts.clone());
    let (bottom, top) = (low / 2.0, high * 2.0);
    let y_range = (bottom..top)
        .log_scale()
        .with_key_points(one_two_five(bottom, top));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 19))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_desc("validating threads (log scale)")
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(y_format)
        .axis_desc_style((FONT, 15))
        .label_style((FONT, 13))
        .light_line_style(BLACK.mix(0.04))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    for design in designs {
        let mut points: Vec<(f64, f64)> = reports
            .iter()
            .filter(|r| r.design == *design)
            .map(|r| (r.threads as f64, value(r)))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let colour = colour(design);
        chart.draw_series(LineSeries::new(points.clone(), colour.stroke_width(3)))?;
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 5, colour.filled())),
        )?;
    }
    Ok(())
}

/// Tick values 1, 2 and 5 times each power of ten from `low` to `high`, so that values
/// between two powers can be read off.
fn one_two_five(low: f64, high: f64) -> Vec<f64> {
    let first = low.log10().floor() as i32;
    let last = high.log10().ceil() as i32;
    (first..=last)
        .flat_map(|power| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(power)))
        .filter(|v| (low..=high).contains(v))
        .collect()
}

/// The smallest and largest of `values` (1 and 10 when there are none).
fn bounds(values: &[f64]) -> (f64, f64) {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(0.0, f64::max);
    if low.is_finite() && high > 0.0 {
        (low, high)
    } else {
        (1.0, 10.0)
    }
}

/// An axis label: `value` to 3 significant digits in the largest of `units` (scale, suffix)
/// it reaches, without trailing zeros: `2M`, `250k`, `1.5 µs`.
fn tick(value: f64, units: &[(f64, &str)]) -> String {
    if value <= 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let magnitude = 10f64.powi(value.log10().floor() as i32 - 2);
    let rounded = (value / magnitude).round() * magnitude;
    let (scale, suffix) = units
        .iter()
        .copied()
        .find(|(scale, _)| rounded >= *scale)
        .unwrap_or((1.0, ""));
    let text = format!("{:.2}", rounded / scale);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{suffix}")
}
