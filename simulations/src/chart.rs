//! The report's chart: concurrency by class over time, as a self-contained SVG.
//!
//! Classes are stacked areas (each bucket's peak, lowest class at the bottom), the pools' total
//! configured capacity is a dashed step line, with a time axis, a concurrency axis, a legend
//! and a title. Pure string building with fixed formatting: a report always draws the same
//! bytes.

use std::fmt::Write as _;

use crate::report::Report;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 48.0;
/// Fill colours, lowest class first (a colour-blind-safe palette); more classes cycle.
const COLOURS: [&str; 6] = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948"];
const CAPACITY_COLOUR: &str = "#d62728";

/// Escapes text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" step for about `ticks` ticks over `0..max` (1, 2 or 5 times a power of ten).
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(1e-9);
    let power = 10f64.powf(raw.log10().floor());
    let fraction = raw / power;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

/// The time unit that reads best at this span: seconds, minutes or hours.
fn time_unit(span_ms: f64) -> (f64, &'static str) {
    if span_ms <= 2.0 * 60_000.0 {
        (1_000.0, "s")
    } else if span_ms <= 3.0 * 3_600_000.0 {
        (60_000.0, "m")
    } else {
        (3_600_000.0, "h")
    }
}

/// A time label in the span's unit; a fraction of the unit keeps one decimal (`1.5h`), so
/// neighbouring ticks never read the same.
fn time_label(ms: f64, span_ms: f64) -> String {
    let (unit_ms, unit) = time_unit(span_ms);
    let value = ms / unit_ms;
    if (value - value.round()).abs() < 1e-6 { format!("{value:.0}{unit}") } else { format!("{value:.1}{unit}") }
}

pub fn svg(report: &Report) -> String {
    let timeline = &report.timeline;
    let buckets = timeline.capacity.len().max(1);
    let span_ms = (buckets as f64) * timeline.bucket_ms.max(1) as f64;
    // Lowest class first: it sits at the bottom of the stack.
    let classes: Vec<(&String, &Vec<u32>)> = timeline.classes.iter().map(|s| (&s.class, &s.peaks)).collect();
    // Stacked tops per bucket, lowest class first.
    let mut tops: Vec<Vec<f64>> = Vec::with_capacity(classes.len());
    let mut running = vec![0.0f64; buckets];
    for (_, series) in &classes {
        for (bucket, total) in running.iter_mut().enumerate() {
            *total += f64::from(series.get(bucket).copied().unwrap_or(0));
        }
        tops.push(running.clone());
    }
    let peak_stack = running.iter().copied().fold(0.0, f64::max);
    let peak_capacity = timeline.capacity.iter().copied().max().unwrap_or(0) as f64;
    let y_step = nice_step(peak_stack.max(peak_capacity).max(1.0) * 1.1, 5.0);
    let y_max = (peak_stack.max(peak_capacity).max(1.0) * 1.1 / y_step).ceil() * y_step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |bucket: f64| LEFT + bucket / buckets as f64 * plot_w;
    let y = |value: f64| TOP + plot_h - value / y_max * plot_h;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0}" height="{HEIGHT:.0}" viewBox="0 0 {WIDTH:.0} {HEIGHT:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!("{} (seed {}): concurrent calls by class", report.scenario, report.seed);
    let _ = writeln!(out, r#"<text x="{LEFT:.0}" y="22" font-size="15" font-weight="bold">{}</text>"#, escape(&title));

    // Grid and the concurrency axis.
    let mut value = 0.0;
    while value <= y_max + 1e-9 {
        let at = y(value);
        let _ = writeln!(out, r##"<line x1="{LEFT:.1}" y1="{at:.1}" x2="{:.1}" y2="{at:.1}" stroke="#e5e5e5"/>"##, LEFT + plot_w);
        let _ = writeln!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{value:.0}</text>"#, LEFT - 6.0, at + 4.0);
        value += y_step;
    }
    let _ = writeln!(
        out,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">concurrent calls</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );

    // Stacked areas, highest class drawn first so lower ones sit on top of nothing.
    for (index, top) in tops.iter().enumerate().rev() {
        let below = if index == 0 { vec![0.0; buckets] } else { tops[index - 1].clone() };
        let mut path = String::new();
        for (bucket, value) in top.iter().enumerate() {
            let verb = if bucket == 0 { 'M' } else { 'L' };
            let _ = write!(path, "{verb}{:.1},{:.1} L{:.1},{:.1} ", x(bucket as f64), y(*value), x(bucket as f64 + 1.0), y(*value));
        }
        for (bucket, value) in below.iter().enumerate().rev() {
            let _ = write!(path, "L{:.1},{:.1} L{:.1},{:.1} ", x(bucket as f64 + 1.0), y(*value), x(bucket as f64), y(*value));
        }
        let colour = COLOURS[index % COLOURS.len()];
        let _ = writeln!(out, r#"<path d="{}Z" fill="{colour}" fill-opacity="0.85" stroke="none"/>"#, path.trim_end());
    }

    // Capacity: a dashed step line.
    let mut points = String::new();
    for (bucket, capacity) in timeline.capacity.iter().enumerate() {
        let level = y(f64::from(*capacity));
        let _ = write!(points, "{:.1},{level:.1} {:.1},{level:.1} ", x(bucket as f64), x(bucket as f64 + 1.0));
    }
    let _ = writeln!(
        out,
        r#"<polyline points="{}" fill="none" stroke="{CAPACITY_COLOUR}" stroke-width="2" stroke-dasharray="6 4"/>"#,
        points.trim_end()
    );

    // The time axis.
    let _ = writeln!(
        out,
        r#"<line x1="{LEFT:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h
    );
    let _ = writeln!(out, r#"<line x1="{LEFT:.1}" y1="{TOP:.1}" x2="{LEFT:.1}" y2="{:.1}" stroke="black"/>"#, TOP + plot_h);
    // Ticks at a nice step of the label's unit (every 30 min reads 0.5h, 1h, …).
    let unit_ms = time_unit(span_ms).0;
    let t_step = nice_step(span_ms / unit_ms, 8.0) * unit_ms;
    let mut t = 0.0;
    while t <= span_ms + 1e-9 {
        let at = LEFT + t / span_ms * plot_w;
        let _ =
            writeln!(out, r#"<line x1="{at:.1}" y1="{:.1}" x2="{at:.1}" y2="{:.1}" stroke="black"/>"#, TOP + plot_h, TOP + plot_h + 5.0);
        let _ = writeln!(out, r#"<text x="{at:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, TOP + plot_h + 18.0, time_label(t, span_ms));
        t += t_step;
    }
    let _ = writeln!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">simulated time</text>"#, LEFT + plot_w / 2.0, HEIGHT - 8.0);

    // Legend.
    let legend_x = LEFT + plot_w + 16.0;
    let mut legend_y = TOP + 8.0;
    let _ = writeln!(out, r#"<text x="{legend_x:.1}" y="{legend_y:.1}" font-weight="bold">legend</text>"#);
    for (index, (name, _)) in classes.iter().enumerate().rev() {
        legend_y += 20.0;
        let colour = COLOURS[index % COLOURS.len()];
        let _ = writeln!(out, r#"<rect x="{legend_x:.1}" y="{:.1}" width="14" height="14" fill="{colour}"/>"#, legend_y - 11.0);
        let _ = writeln!(out, r#"<text x="{:.1}" y="{legend_y:.1}">{}</text>"#, legend_x + 20.0, escape(name));
    }
    legend_y += 20.0;
    let _ = writeln!(
        out,
        r#"<line x1="{legend_x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{CAPACITY_COLOUR}" stroke-width="2" stroke-dasharray="6 4"/>"#,
        legend_y - 4.0,
        legend_x + 14.0,
        legend_y - 4.0
    );
    let _ = writeln!(out, r#"<text x="{:.1}" y="{legend_y:.1}">capacity</text>"#, legend_x + 20.0);
    let verdict = if report.passed { "invariants: all passed" } else { "invariants: FAILED" };
    let _ = writeln!(out, r#"<text x="{legend_x:.1}" y="{:.1}">{verdict}</text>"#, legend_y + 28.0);
    let _ = writeln!(out, r#"<text x="{legend_x:.1}" y="{:.1}">digest</text>"#, legend_y + 46.0);
    let _ =
        writeln!(out, r#"<text x="{legend_x:.1}" y="{:.1}" font-family="monospace">{}</text>"#, legend_y + 62.0, escape(&report.digest));
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(1_000.0, 5.0), 200.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(nice_step(3_600_000.0, 8.0), 500_000.0);
    }

    #[test]
    fn labels_pick_a_unit_by_span() {
        assert_eq!(time_label(30_000.0, 60_000.0), "30s");
        assert_eq!(time_label(600_000.0, 3_600_000.0), "10m");
        assert_eq!(time_label(7_200_000.0, 86_400_000.0), "2h");
        assert_eq!(time_label(5_400_000.0, 14_400_000.0), "1.5h");
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
