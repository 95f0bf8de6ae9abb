//! `kad bench all --plot FILE.svg`: the report drawn as an SVG with the `plotters` crate, in
//! three panels:
//!
//! 1. put latency, as cumulative distributions (log scale), ours and libp2p-kad's;
//! 2. get latency, the same;
//! 3. lookup hops (p50, p90, max) against the simulated network size, 10 to 100,000.
//!
//! A series with its samples in the report is drawn as a full distribution; one that only has
//! its p50 and p90 (an older libp2p-bench output) as those two points, dashed.

use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

const W: u32 = 1300;
const H: u32 = 500;
const COLORS: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0xff, 0x7f, 0x0e),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn = Result<(), Box<dyn std::error::Error>>;

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
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (W, H)).into_drawing_area();
        if let Err(e) = draw(&root, report) {
            tracing::warn!("plot: {e}");
        }
        let _ = root.present();
    }
    out
}

fn draw(root: &Area<'_>, report: &Value) -> Drawn {
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
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("kad bench all: {nodes}-node loopback networks, and simulated lookups"),
        ("sans-serif", 16),
    )?;
    let panels = root.split_evenly((1, 3));
    for (i, op) in ["put", "get"].iter().enumerate() {
        let series: Vec<Series> = nets
            .iter()
            .filter_map(|(label, r)| latency(label, r, op))
            .collect();
        panel(
            &panels[i],
            &format!("{op} latency: share of operations done by x ms"),
            "ms (log scale)",
            "share",
            0.0..1.0,
            &series,
        )?;
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
        &panels[2],
        "lookup hops against network size (simulated, ours)",
        "nodes (log scale)",
        "hops",
        0.0..top,
        &hops,
    )
}

/// Draws one panel: a log-scale x axis over whole powers of ten, the series and a legend.
fn panel(
    area: &Area<'_>,
    title: &str,
    x_label: &str,
    y_label: &str,
    y: Range<f64>,
    series: &[Series],
) -> Drawn {
    let (mut x0, mut x1) = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(|x| x.is_finite() && *x > 0.0)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    if !x0.is_finite() {
        (x0, x1) = (1.0, 10.0);
    }
    x0 = 10f64.powf(x0.log10().floor());
    x1 = 10f64.powf(x1.log10().ceil());
    if x1 <= x0 {
        x1 = x0 * 10.0;
    }
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 13))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .build_cartesian_2d((x0..x1).log_scale(), y)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|v| num(*v))
        .y_label_formatter(&|v| num(*v))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let style = color.stroke_width(2);
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, _)| x.is_finite() && *x > 0.0)
            .collect();
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(points.clone(), 5, 3, style))?
        } else {
            chart.draw_series(LineSeries::new(points.clone(), style))?
        };
        drawn.label(s.label.as_str()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
        });
        if points.len() <= 12 {
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
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
        assert!(
            s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
            "{s}"
        );
        // Two latency panels with two series each, three hop series: every legend entry.
        for label in [
            "ours, UDP, first store",
            "libp2p-kad, QUIC, Quorum::One (p50, p90 only)",
            "hops p50",
            "hops p90",
            "hops max",
        ] {
            assert!(s.contains(label), "{label} missing");
        }
        assert_eq!(s.matches("\nours, UDP, first store\n").count(), 2, "{s}");
        assert!(s.contains("100-node loopback networks"));
        assert!(s.contains("<circle"), "the few-point series are marked");
        assert_eq!(
            cdf(&[3.0, 1.0, 2.0, f64::NAN]),
            [(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)]
        );
    }
}
