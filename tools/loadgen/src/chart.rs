//! The latency-against-offered-load chart of a sweep, as a self-contained SVG
//! (no plotting dependency): p50, p99 and p99.9 on a logarithmic axis, with the
//! 30 ms / 4,000 msg/s target marked.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use serde_json::Value;

use crate::report::{Report, format_number};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

struct Series<'a> {
    name: &'a str,
    key: &'a str,
    color: &'a str,
    dash: &'a str,
}

const SERIES: [Series<'static>; 3] = [
    Series {
        name: "p50",
        key: "p50_ms",
        color: "#1f77b4",
        dash: "",
    },
    Series {
        name: "p99",
        key: "p99_ms",
        color: "#ff7f0e",
        dash: "",
    },
    Series {
        name: "p99.9",
        key: "p999_ms",
        color: "#7f7f7f",
        dash: "6 4",
    },
];

pub fn latency_svg(report: &Report) -> Result<String> {
    let Some(points) = report.details.get("points").and_then(Value::as_array) else {
        bail!("not a sweep report (no details.points)");
    };
    let rows: Vec<(f64, [f64; 3])> = points
        .iter()
        .filter_map(|p| {
            let x = p["offered_per_sec"].as_f64()?;
            let mut ys = [0.0; 3];
            for (y, s) in ys.iter_mut().zip(&SERIES) {
                *y = p["latency"][s.key].as_f64()?;
            }
            Some((x, ys))
        })
        .collect();
    if rows.is_empty() {
        bail!("the sweep has no points");
    }
    Ok(render(report, &rows))
}

fn render(report: &Report, rows: &[(f64, [f64; 3])]) -> String {
    let x_max = nice_ceiling(rows.iter().map(|r| r.0).fold(4000.0, f64::max));
    let y_values = rows.iter().flat_map(|r| r.1).filter(|v| *v > 0.0);
    let y_min_raw = y_values.clone().fold(f64::INFINITY, f64::min).min(30.0);
    let y_max_raw = y_values.fold(0.0, f64::max).max(30.0);
    let lo = y_min_raw.log10().floor();
    let hi = y_max_raw.log10().ceil().max(lo + 1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / x_max * plot_w;
    let sy = |y: f64| {
        let v = y.max(10f64.powf(lo)).log10();
        TOP + plot_h - (v - lo) / (hi - lo) * plot_h
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let pairs = report
        .params
        .get("pairs")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="15" font-weight="bold">Parley messaging: latency (send → receiveMessage) against offered load</text>"#,
        LEFT
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="38" fill="#555">{pairs} pairs; server and load generator on one {}-CPU machine; {}; load average {:.2}</text>"##,
        LEFT,
        report.env.cpus,
        escape(&report.started_at),
        report.env.loadavg_before[0]
    );

    // Grid and axes.
    let decades = (hi - lo) as i32;
    for d in 0..=decades {
        let value = 10f64.powf(lo + f64::from(d));
        let y = sy(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            format_number(value)
        );
        for m in 2..10 {
            let minor = value * f64::from(m);
            if minor.log10() < hi {
                let y = sy(minor);
                let _ = writeln!(
                    svg,
                    r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#f2f2f2"/>"##,
                    LEFT + plot_w
                );
            }
        }
    }
    let step = nice_step(x_max);
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let px = sx(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            svg,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + plot_h + 18.0,
            format_number(x)
        );
        x += step;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered load (messages per second)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 18.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">latency (ms, log scale)</text>"#,
        TOP + plot_h / 2.0
    );

    // Target: p99 ≤ 30 ms at ≥ 4,000 msg/s.
    let ty = sy(30.0);
    let tx = sx(4000.0);
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#d62728" stroke-dasharray="3 3"/>"##,
        LEFT + plot_w
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{tx:.1}" y1="{TOP}" x2="{tx:.1}" y2="{:.1}" stroke="#d62728" stroke-dasharray="3 3"/>"##,
        TOP + plot_h
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#d62728">target: p99 ≤ 30 ms at ≥ 4,000 msg/s</text>"##,
        LEFT + plot_w - 4.0,
        ty + 14.0
    );

    // Series.
    for (i, series) in SERIES.iter().enumerate() {
        let path: Vec<String> = rows
            .iter()
            .map(|(x, ys)| format!("{:.1},{:.1}", sx(*x), sy(ys[i])))
            .collect();
        let dash = if series.dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{}""#, series.dash)
        };
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            path.join(" "),
            series.color
        );
        for (x, ys) in rows {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                sx(*x),
                sy(ys[i]),
                series.color
            );
        }
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/>"#,
            lx + 24.0,
            series.color
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 30.0,
            ly + 4.0,
            series.name
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A round number (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k) at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    let magnitude = 10f64.powf(value.log10().floor());
    for m in [1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if m * magnitude >= value {
            return m * magnitude;
        }
    }
    10.0 * magnitude
}

/// A tick step giving 4 to 10 ticks up to `max`.
fn nice_step(max: f64) -> f64 {
    let raw = max / 8.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * magnitude >= raw {
            return m * magnitude;
        }
    }
    10.0 * magnitude
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Env;
    use serde_json::json;

    #[test]
    fn axes_are_rounded() {
        assert_eq!(nice_ceiling(4100.0), 5000.0);
        assert_eq!(nice_ceiling(8100.0), 10000.0);
        assert_eq!(nice_ceiling(6000.0), 6000.0);
        assert_eq!(nice_ceiling(12000.0), 12500.0);
        assert_eq!(nice_ceiling(2000.0), 2000.0);
        assert_eq!(nice_step(10000.0), 2000.0);
        assert_eq!(nice_step(12500.0), 2000.0);
        assert_eq!(nice_step(5000.0), 1000.0);
    }

    #[test]
    fn a_sweep_becomes_an_svg_with_every_point() {
        let point = |x: f64, p50: f64| json!({"offered_per_sec": x, "latency": {"p50_ms": p50, "p99_ms": p50 * 4.0, "p999_ms": p50 * 9.0}});
        let report = Report {
            scenario: "sweep".into(),
            command: String::new(),
            base_url: String::new(),
            started_at: "2030-01-01T00:00:00Z".into(),
            finished_at: String::new(),
            env: Env::default(),
            params: json!({"pairs": 100}),
            figures: vec![],
            targets: vec![],
            details: json!({"points": [point(500.0, 1.2), point(1000.0, 1.5), point(4000.0, 9.0)]}),
            notes: vec![],
        };
        let svg = latency_svg(&report).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        // 3 series × 3 points.
        assert_eq!(svg.matches("<circle").count(), 9);
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("100 pairs"));
        let mut not_sweep = report.clone();
        not_sweep.details = json!({});
        assert!(latency_svg(&not_sweep).is_err());
    }
}
