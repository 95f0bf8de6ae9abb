//! `kad bench all --plot FILE.svg`: the report drawn as a self-contained SVG (no plotting crate:
//! three panels of lines, axes and labels).
//!
//! 1. put latency, as cumulative distributions (log scale), ours and libp2p-kad's;
//! 2. get latency, the same;
//! 3. lookup hops (p50, p90, max) and RPCs against the simulated network size, 10 to 100,000.
//!
//! A series with its samples in the report is drawn as a full distribution; one that only has
//! its p50 and p90 (an older libp2p-bench output) as those two points.

use std::fmt::Write as _;

use serde_json::Value;

const W: f64 = 1300.0;
const H: f64 = 500.0;
const PANEL_W: f64 = 360.0;
const PANEL_H: f64 = 290.0;
const TOP: f64 = 60.0;
const COLORS: [&str; 5] = ["#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#ff7f0e"];

/// One line on a panel: a label and (x, y) points in data units.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    dashed: bool,
}

/// The empirical CDF of `samples`, as points.
fn cdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = samples
        .iter()
        .copied()
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, x)| (*x, (i + 1) as f64 / n))
        .collect()
}

/// A latency series for `op` (`put` or `get`) from one native network result.
fn latency(label: &str, r: &Value, op: &str) -> Option<Series> {
    let samples: Vec<f64> = r["samples"][format!("{op}_ms")]
        .as_array()
        .or_else(|| r[format!("{op}_ms_samples")].as_array())
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    if !samples.is_empty() {
        return Some(Series {
            label: label.to_owned(),
            points: cdf(&samples),
            dashed: false,
        });
    }
    let p50 = r[format!("{op}_ms_p50")].as_f64()?;
    let p90 = r[format!("{op}_ms_p90")].as_f64()?;
    Some(Series {
        label: format!("{label} (p50, p90 only)"),
        points: vec![(p50, 0.5), (p90, 0.9)],
        dashed: true,
    })
}

/// The whole picture.
pub(crate) fn svg(report: &Value) -> String {
    let native = &report["native"];
    let nets = [
        (
            "ours, UDP, all stores",
            &native["ours_udp_all_stores"]["result"],
        ),
        (
            "ours, UDP, first store",
            &native["ours_udp_first_store"]["result"],
        ),
        (
            "ours, QUIC, first store",
            &native["ours_quic_first_store"]["result"],
        ),
        (
            "libp2p-kad, QUIC, Quorum::One",
            &native["libp2p_kad_quic"]["result"],
        ),
    ];
    let nodes = nets
        .iter()
        .find_map(|(_, r)| r["nodes"].as_u64())
        .unwrap_or(0);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="16" text-anchor="middle">kad bench all: {nodes}-node loopback networks, and simulated lookups</text>
"#,
        W / 2.0
    );
    for (i, op) in ["put", "get"].iter().enumerate() {
        let series: Vec<Series> = nets
            .iter()
            .filter_map(|(label, r)| latency(label, r, op))
            .collect();
        panel(
            &mut out,
            40.0 + i as f64 * (PANEL_W + 60.0),
            &format!("{op} latency: share of operations done by x ms"),
            "ms (log scale)",
            "share",
            (0.0, 1.0),
            &series,
        );
    }
    let sim = report["sim"].as_array().cloned().unwrap_or_default();
    let pick = |key: &str| -> Vec<(f64, f64)> {
        sim.iter()
            .filter_map(|s| Some((s["nodes"].as_f64()?, s[key].as_f64()?)))
            .collect()
    };
    let hops = vec![
        Series {
            label: "hops p50".into(),
            points: pick("hops_p50"),
            dashed: false,
        },
        Series {
            label: "hops p90".into(),
            points: pick("hops_p90"),
            dashed: false,
        },
        Series {
            label: "hops max".into(),
            points: pick("hops_max"),
            dashed: true,
        },
    ];
    let top = hops
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        .ceil()
        + 1.0;
    panel(
        &mut out,
        40.0 + 2.0 * (PANEL_W + 60.0),
        "lookup hops against network size (simulated, ours)",
        "nodes (log scale)",
        "hops",
        (0.0, top),
        &hops,
    );
    out.push_str("</svg>\n");
    out
}

/// Draws one panel at `left`: axes, a log-scale x axis, ticks, the series and a legend.
fn panel(
    out: &mut String,
    left: f64,
    title: &str,
    x_label: &str,
    y_label: &str,
    (y0, y1): (f64, f64),
    series: &[Series],
) {
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    let (mut x0, mut x1) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        });
    if !x0.is_finite() {
        (x0, x1) = (1.0, 10.0);
    }
    x0 = 10f64.powf(x0.log10().floor());
    x1 = 10f64.powf(x1.log10().ceil());
    if x1 <= x0 {
        x1 = x0 * 10.0;
    }
    let sx = |x: f64| left + (x.log10() - x0.log10()) / (x1.log10() - x0.log10()) * PANEL_W;
    let sy = |y: f64| TOP + PANEL_H - (y - y0) / (y1 - y0) * PANEL_H;
    let bottom = TOP + PANEL_H;
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
        left + PANEL_W / 2.0,
        TOP - 12.0,
        esc(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>"##
    );
    // x ticks: the powers of ten.
    let mut ticks = Vec::new();
    let mut t = x0;
    while t <= x1 * 1.0001 {
        ticks.push(t);
        t *= 10.0;
    }
    for t in ticks {
        let x = sx(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{bottom}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            bottom + 16.0,
            num(t)
        );
    }
    // y ticks: whole numbers on a small whole range (hops), else quarters.
    let whole = y1 <= 12.0 && y1 == y1.round() && y1 - y0 > 1.0;
    let steps = if whole { (y1 - y0) as u32 } else { 4 };
    for i in 0..=steps {
        let v = y0 + (y1 - y0) * f64::from(i) / f64::from(steps);
        let y = sy(v);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            left + PANEL_W,
            left - 5.0,
            y + 4.0,
            num(v)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
        left + PANEL_W / 2.0,
        bottom + 34.0,
        esc(x_label),
        left - 30.0,
        TOP + PANEL_H / 2.0,
        left - 30.0,
        TOP + PANEL_H / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|(x, _)| x.is_finite() && *x > 0.0)
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            pts.join(" ")
        );
        if s.points.len() <= 12 {
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(out, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
            }
        }
        let ly = bottom + 52.0 + i as f64 * 15.0;
        let _ = writeln!(
            out,
            r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="3"{dash}/><text x="{}" y="{ly}">{}</text>"#,
            ly - 4.0,
            left + 22.0,
            ly - 4.0,
            left + 28.0,
            esc(&s.label)
        );
    }
}

fn num(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 || v == v.round() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else if v >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn draws_every_series_it_has_data_for() {
        let report = json!({
            "native": {
                "ours_udp_first_store": {"result": {"nodes": 100,
                    "samples": {"put_ms": [1.0, 2.0, 4.0], "get_ms": [0.3, 0.5]}}},
                "libp2p_kad_quic": {"result": {"put_ms_p50": 6.3, "put_ms_p90": 9.0,
                    "get_ms_p50": 0.46, "get_ms_p90": 0.9}},
            },
            "sim": [{"nodes": 10, "hops_p50": 1, "hops_p90": 1, "hops_max": 1},
                    {"nodes": 1000, "hops_p50": 2, "hops_p90": 3, "hops_max": 4}],
        });
        let s = svg(&report);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        // Two latency panels with two series each, and three hop series.
        assert_eq!(s.matches("<polyline").count(), 7, "{s}");
        assert!(s.contains("libp2p-kad, QUIC, Quorum::One (p50, p90 only)"));
        assert!(s.contains("100-node loopback networks"));
        assert_eq!(
            cdf(&[3.0, 1.0, 2.0, f64::NAN]),
            [(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)]
        );
    }
}
