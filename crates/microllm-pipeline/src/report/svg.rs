//! Inline SVG charts for the HTML report: line charts (per-layer series, curves) and a
//! scatter with its Pareto front. Hand-written SVG, no scripts and no fonts to fetch, so the
//! page renders anywhere without a network. Every point carries a `<title>` (a tooltip).

use std::fmt::Write as _;

use super::escape;

const W: f64 = 640.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A named series of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// An axis mapping data to pixels.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    from: f64,
    to: f64,
    /// Integer data (block indices): ticks on whole numbers.
    integer: bool,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64> + Clone, log: bool, from: f64, to: f64) -> Self {
        let integer = !log && values.clone().all(|v| v.fract() == 0.0);
        let (mut lo, mut hi) = values
            .filter(|v| v.is_finite() && (!log || *v > 0.0))
            .map(|v| if log { v.log10() } else { v })
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo < 1e-12 {
            let pad = if lo.abs() > 1e-12 {
                lo.abs() * 0.05
            } else {
                0.5
            };
            lo -= pad;
            hi += pad;
        }
        Self {
            lo,
            hi,
            log,
            from,
            to,
            integer,
        }
    }

    fn map(&self, v: f64) -> Option<f64> {
        if !v.is_finite() || (self.log && v <= 0.0) {
            return None;
        }
        let v = if self.log { v.log10() } else { v };
        Some(self.from + (v - self.lo) / (self.hi - self.lo) * (self.to - self.from))
    }

    /// Five tick values with their labels.
    fn ticks(&self) -> Vec<(f64, String)> {
        let mut ticks: Vec<(f64, String)> = (0..5)
            .map(|i| {
                let t = self.lo + (self.hi - self.lo) * i as f64 / 4.0;
                let v = if self.log { 10f64.powf(t) } else { t };
                let v = if self.integer { v.round() } else { v };
                (v, format_number(v))
            })
            .collect();
        ticks.dedup_by(|a, b| a.1 == b.1);
        ticks
    }
}

/// A number for an axis label: short, without trailing noise.
pub fn format_number(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn frame(out: &mut String, title: &str, x_label: &str, y_label: &str, x: &Axis, y: &Axis) {
    let _ = write!(
        out,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" aria-label="{t}"><title>{t}</title><text x="{cx}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{t}</text>"#,
        t = escape(title),
        cx = (LEFT + W - RIGHT) / 2.0,
    );
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
    let _ = write!(
        out,
        r##"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        x1 - x0,
        y0 - y1
    );
    for (v, label) in y.ticks() {
        if let Some(py) = y.map(v) {
            let _ = write!(
                out,
                r##"<line x1="{x0}" x2="{x1}" y1="{py:.1}" y2="{py:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end" font-size="10">{label}</text>"##,
                x0 - 4.0,
                py + 3.0
            );
        }
    }
    for (v, label) in x.ticks() {
        if let Some(px) = x.map(v) {
            let _ = write!(
                out,
                r#"<text x="{px:.1}" y="{}" text-anchor="middle" font-size="10">{label}</text>"#,
                y0 + 14.0
            );
        }
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="11">{}</text><text transform="translate(14 {}) rotate(-90)" text-anchor="middle" font-size="11">{}</text>"#,
        (x0 + x1) / 2.0,
        H - 6.0,
        escape(x_label),
        (y0 + y1) / 2.0,
        escape(y_label)
    );
}

fn legend(out: &mut String, names: &[&str]) {
    for (i, n) in names.iter().enumerate() {
        let y = TOP + 12.0 + 16.0 * i as f64;
        let _ = write!(
            out,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}" font-size="11">{}</text>"#,
            W - RIGHT + 12.0,
            y - 9.0,
            COLORS[i % COLORS.len()],
            W - RIGHT + 26.0,
            y,
            escape(n)
        );
    }
}

/// A line chart of `series` (points joined in order), optionally with a log-scale y axis.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter().copied());
    let x = Axis::new(all().map(|p| p.0), false, LEFT + 8.0, W - RIGHT - 8.0);
    let y = Axis::new(all().map(|p| p.1), log_y, H - BOTTOM - 6.0, TOP + 6.0);
    let mut out = String::new();
    frame(&mut out, title, x_label, y_label, &x, &y);
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64, f64, f64)> = s
            .points
            .iter()
            .filter_map(|&(a, b)| Some((x.map(a)?, y.map(b)?, a, b)))
            .collect();
        let path = pts
            .iter()
            .map(|(px, py, ..)| format!("{px:.1},{py:.1}"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = write!(
            out,
            r#"<polyline class="series" points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>"#
        );
        for (px, py, a, b) in pts {
            let _ = write!(
                out,
                r#"<circle cx="{px:.1}" cy="{py:.1}" r="2.5" fill="{color}"><title>{}: {} = {}</title></circle>"#,
                escape(&s.name),
                format_number(a),
                format_number(b)
            );
        }
    }
    legend(
        &mut out,
        &series.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
    );
    out.push_str("</svg>");
    out
}

/// Labelled points, the Pareto-optimal ones (no other point is at least as small in both
/// coordinates and smaller in one) highlighted and joined.
pub fn pareto_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(String, f64, f64)],
) -> String {
    let x = Axis::new(
        points.iter().map(|p| p.1),
        false,
        LEFT + 8.0,
        W - RIGHT - 8.0,
    );
    let y = Axis::new(
        points.iter().map(|p| p.2),
        false,
        H - BOTTOM - 6.0,
        TOP + 6.0,
    );
    let mut out = String::new();
    frame(&mut out, title, x_label, y_label, &x, &y);
    let front = pareto_front(&points.iter().map(|p| (p.1, p.2)).collect::<Vec<_>>());
    let mut on_front: Vec<&(String, f64, f64)> = front.iter().map(|&i| &points[i]).collect();
    on_front.sort_by(|a, b| a.1.total_cmp(&b.1));
    let path = on_front
        .iter()
        .filter_map(|p| Some(format!("{:.1},{:.1}", x.map(p.1)?, y.map(p.2)?)))
        .collect::<Vec<_>>()
        .join(" ");
    let _ = write!(
        out,
        r#"<polyline class="front" points="{path}" fill="none" stroke="{}" stroke-width="1.5" stroke-dasharray="4 3"/>"#,
        COLORS[1]
    );
    for (i, (label, a, b)) in points.iter().enumerate() {
        let (Some(px), Some(py)) = (x.map(*a), y.map(*b)) else {
            continue;
        };
        let best = front.contains(&i);
        let _ = write!(
            out,
            r#"<circle class="point" cx="{px:.1}" cy="{py:.1}" r="{}" fill="{}"><title>{}: {} = {}, {} = {}{}</title></circle><text x="{:.1}" y="{:.1}" font-size="9">{}</text>"#,
            if best { 5.0 } else { 3.5 },
            if best { COLORS[1] } else { COLORS[0] },
            escape(label),
            escape(x_label),
            format_number(*a),
            escape(y_label),
            format_number(*b),
            if best { " (Pareto-optimal)" } else { "" },
            px + 6.0,
            py - 4.0,
            escape(label)
        );
    }
    legend(&mut out, &["variant", "Pareto front"]);
    out.push_str("</svg>");
    out
}

/// Indices of the points no other point dominates (smaller is better in both coordinates).
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| {
            let (a, b) = points[i];
            a.is_finite()
                && b.is_finite()
                && !points
                    .iter()
                    .enumerate()
                    .any(|(j, &(c, d))| j != i && c <= a && d <= b && (c < a || d < b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_is_the_undominated_points() {
        let pts = [(1.0, 10.0), (2.0, 5.0), (3.0, 6.0), (4.0, 1.0), (2.0, 5.0)];
        // (3, 6) is dominated by (2, 5); the two equal points do not dominate each other.
        assert_eq!(pareto_front(&pts), vec![0, 1, 3, 4]);
    }

    #[test]
    fn charts_are_svg_with_every_point() {
        let s = Series {
            name: "q_proj".into(),
            points: vec![(0.0, 1e-3), (1.0, 2e-3), (2.0, 0.0)],
        };
        let svg = line_chart("error", "block", "error", &[s], true);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // The zero cannot go on a log axis and is left out, not drawn at infinity.
        assert_eq!(svg.matches("<circle").count(), 2);
        let p = pareto_chart(
            "front",
            "MB",
            "ppl",
            &[("a".into(), 1.0, 3.0), ("b".into(), 2.0, 1.0)],
        );
        assert_eq!(p.matches("class=\"point\"").count(), 2);
    }
}
