//! `training_curves.svg`: loss, reward margins and reward accuracies over steps (training in
//! blue, evaluation in red), drawn with plotters' SVG backend from `metrics.jsonl`.

use flow_engine::node::NodeError;
use plotters::prelude::*;
use std::path::Path;

/// One panel: a metric's training series and its `eval_` series.
struct Panel {
    title: &'static str,
    train: Vec<(f64, f64)>,
    eval: Vec<(f64, f64)>,
}

/// The panels of the chart, in order; a panel without data is left out.
const METRICS: [(&str, &str); 3] = [
    ("loss", "loss"),
    ("rewards/margins", "reward margin"),
    ("rewards/accuracies", "reward accuracy"),
];

fn series(records: &[serde_json::Value], key: &str) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// Draws the chart of `metrics.jsonl` into `svg`.
pub fn draw(metrics: &Path, svg: &Path) -> Result<(), NodeError> {
    let text = std::fs::read_to_string(metrics)?;
    let records: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let panels: Vec<Panel> = METRICS
        .iter()
        .map(|(key, title)| Panel {
            title,
            train: series(&records, key),
            eval: series(&records, &format!("eval_{key}")),
        })
        .filter(|p| !p.train.is_empty() || !p.eval.is_empty())
        .collect();
    let height = 260 * panels.len().max(1) as u32;
    let root = SVGBackend::new(svg, (720, height)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| NodeError::new(format!("{}: {e}", svg.display()));
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (panel, area) in panels.iter().zip(&areas) {
        draw_panel(panel, area).map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw_panel(panel: &Panel, area: &Area) -> Result<(), Box<dyn std::error::Error>> {
    let points = panel.train.iter().chain(&panel.eval);
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + pad))?;
    chart.configure_mesh().x_desc("step").draw()?;
    chart
        .draw_series(LineSeries::new(panel.train.iter().copied(), &BLUE))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if !panel.eval.is_empty() {
        chart
            .draw_series(LineSeries::new(panel.eval.iter().copied(), &RED))?
            .label("eval")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}
