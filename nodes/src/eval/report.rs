//! The files `evaluate` writes: `eval.json`, `report.md`, a self-contained `report.html` (plots
//! inlined) and the SVG plots: `eval_bars.svg` (policy vs reference), `reward_margins.svg`
//! (histogram of held-out reward margins) and `training_curves.svg` (when training metrics are given).

use super::results::{EvalReport, ModelScores, MtBenchResults};
use flow_engine::node::NodeError;
use plotters::prelude::*;
use std::fmt::Write;
use std::path::Path;

/// Writes every report file into `dir`.
pub fn write(dir: &Path, report: &EvalReport, metrics: Option<&Path>) -> Result<(), NodeError> {
    let json = serde_json::to_string_pretty(report).map_err(|e| NodeError::new(e.to_string()))?;
    std::fs::write(dir.join("eval.json"), json)?;
    let mut plots = vec![("eval_bars.svg", "Policy vs reference")];
    draw_bars(&dir.join("eval_bars.svg"), &bars(report))?;
    draw_histogram(&dir.join("reward_margins.svg"), &report.preference.margins)?;
    plots.push((
        "reward_margins.svg",
        "Held-out reward margins (chosen − rejected)",
    ));
    if let Some(metrics) = metrics
        .map(|m| m.join("metrics.jsonl"))
        .filter(|m| m.is_file())
    {
        super::curves::draw(&metrics, &dir.join("training_curves.svg"))?;
        plots.push(("training_curves.svg", "Training curves"));
    }
    let tables = tables(report);
    let mut md = format!("# Evaluation report\n\n{}\n", tables);
    for (file, title) in &plots {
        let _ = writeln!(md, "## {title}\n\n![{title}]({file})\n");
    }
    std::fs::write(dir.join("report.md"), md)?;
    std::fs::write(dir.join("report.html"), html(dir, &tables, &plots)?)?;
    Ok(())
}

/// `(label, policy, reference)` for every score both models have on a 0–1 scale.
fn bars(report: &EvalReport) -> Vec<(String, f64, f64)> {
    let mut bars = vec![
        (
            // The reference's implicit reward is zero for every pair: chance.
            "reward accuracy".to_string(),
            report.preference.reward_accuracy,
            0.5,
        ),
        (
            "win rate".to_string(),
            report.policy.win_rate,
            report.reference.win_rate,
        ),
        (
            "win rate per token".to_string(),
            report.policy.win_rate_per_token,
            report.reference.win_rate_per_token,
        ),
    ];
    for (task, policy) in &report.policy.tasks {
        let reference = report.reference.tasks.get(task);
        for (metric, &value) in &policy.metrics {
            let baseline = reference.and_then(|r| r.get(metric)).unwrap_or(f64::NAN);
            bars.push((format!("{task} {metric}"), value, baseline));
        }
    }
    bars
}

fn row(out: &mut String, name: &str, policy: f64, reference: f64) {
    let _ = writeln!(out, "| {name} | {policy:.4} | {reference:.4} |");
}

/// The report's tables in Markdown (also rendered into the HTML).
fn tables(report: &EvalReport) -> String {
    let p = &report.preference;
    let mut out = format!(
        "## Held-out preferences\n\n{} pairs ({} skipped), β = {}. The reference's implicit reward is zero for every pair, so its reward accuracy is chance (0.5).\n\n| metric | value |\n|---|---|\n",
        p.pairs, p.skipped, p.beta
    );
    for (name, value) in [
        ("reward accuracy (`rewards/accuracies`)", p.reward_accuracy),
        ("reward margin (`rewards/margins`)", p.reward_margin),
        ("chosen reward (`rewards/chosen`)", p.reward_chosen),
        ("rejected reward (`rewards/rejected`)", p.reward_rejected),
    ] {
        let _ = writeln!(out, "| {name} | {value:.4} |");
    }
    out.push_str("\n## Policy vs reference\n\n| metric | policy | reference |\n|---|---|---|\n");
    let (pol, rf): (&ModelScores, &ModelScores) = (&report.policy, &report.reference);
    row(
        &mut out,
        "win rate as a preference classifier (summed log-probs)",
        pol.win_rate,
        rf.win_rate,
    );
    row(
        &mut out,
        "win rate per token (length-normalised)",
        pol.win_rate_per_token,
        rf.win_rate_per_token,
    );
    row(
        &mut out,
        "mean log-prob per token, chosen",
        pol.logps_chosen,
        rf.logps_chosen,
    );
    row(
        &mut out,
        "mean log-prob per token, rejected",
        pol.logps_rejected,
        rf.logps_rejected,
    );
    row(
        &mut out,
        "perplexity of chosen completions",
        pol.perplexity,
        rf.perplexity,
    );
    for (task, scores) in &pol.tasks {
        let reference = rf.tasks.get(task);
        for (metric, &value) in &scores.metrics {
            let definition = scores.definitions.get(metric).map_or("", String::as_str);
            row(
                &mut out,
                &format!("{task} ({}): {metric} — {definition}", scores.setting()),
                value,
                reference.and_then(|r| r.get(metric)).unwrap_or(f64::NAN),
            );
        }
    }
    if let Some(mt) = &report.mt_bench {
        mt_bench_table(&mut out, mt);
    }
    if let Some(judge) = &report.judge {
        let _ = writeln!(
            out,
            "\n## LLM judge\n\n`{}` preferred the policy's answer in {} of {} valid verdicts (win rate {}; {} invalid).",
            judge.model,
            judge.wins,
            judge.wins + judge.losses,
            judge
                .win_rate
                .map_or("– (no valid verdict)".into(), |w| format!("{w:.4}")),
            judge.invalid
        );
    }
    if !report.samples.is_empty() {
        out.push_str("\n## Samples\n\n| prompt | policy (greedy) | reference (greedy) | policy (sampled) | reference (sampled) |\n|---|---|---|---|---|\n");
        for s in &report.samples {
            let cells = [
                &s.prompt,
                &s.policy.greedy,
                &s.reference.greedy,
                &s.policy.sampled,
                &s.reference.sampled,
            ];
            let cells: Vec<String> = cells.iter().map(|c| table_cell(c)).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
    }
    out
}

/// Text that fits one Markdown table cell.
fn table_cell(text: &str) -> String {
    text.trim().replace('|', "\\|").replace('\n', " ")
}

/// A self-contained page: the tables and every plot inlined.
fn html(dir: &Path, tables: &str, plots: &[(&str, &str)]) -> Result<String, NodeError> {
    let mut body = String::new();
    for line in tables.lines() {
        body.push_str(&markdown_line(line));
        body.push('\n');
    }
    body.push_str("</table>\n");
    for (file, title) in plots {
        let svg = std::fs::read_to_string(dir.join(file))?;
        let svg = svg.trim_start_matches(|c| c != '<').to_string();
        let svg = match svg.find("<svg") {
            Some(i) => svg[i..].to_string(),
            None => svg,
        };
        let _ = writeln!(body, "<h2>{}</h2>\n<figure>{svg}</figure>", escape(title));
    }
    Ok(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>flow evaluation report</title>\n<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}figure{{margin:0}}</style></head>\n<body><h1>Evaluation report</h1>\n{body}</body></html>\n"
    ))
}

/// One line of the tables' Markdown as HTML (headings, paragraphs and table rows only).
fn markdown_line(line: &str) -> String {
    if let Some(title) = line.strip_prefix("## ") {
        return format!("</table><h2>{}</h2><table>", escape(title));
    }
    if line.starts_with("|---") {
        return String::new();
    }
    if let Some(cells) = line.strip_prefix('|') {
        let cells: Vec<String> = cells
            .trim_end_matches('|')
            .split('|')
            .map(|c| format!("<td>{}</td>", escape(c.trim()).replace('`', "")))
            .collect();
        return format!("<tr>{}</tr>", cells.join(""));
    }
    if line.trim().is_empty() {
        return String::new();
    }
    format!("<p>{}</p>", escape(line))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn plot_error(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> NodeError + '_ {
    move |e| NodeError::new(format!("{}: {e}", path.display()))
}

/// Grouped bars: policy (blue) and reference (grey) per score.
fn draw_bars(path: &Path, bars: &[(String, f64, f64)]) -> Result<(), NodeError> {
    let fail = plot_error(path);
    let root = SVGBackend::new(path, (720, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("policy (blue) vs reference (grey)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..bars.len() as f64, 0.0..1.0f64)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(|e| fail(&e))?;
    let rects = bars
        .iter()
        .enumerate()
        .flat_map(|(i, (_, policy, reference))| {
            let x = i as f64;
            [
                Rectangle::new([(x + 0.15, 0.0), (x + 0.5, *policy)], BLUE.filled()),
                Rectangle::new(
                    [(x + 0.5, 0.0), (x + 0.85, *reference)],
                    RGBColor(150, 150, 150).filled(),
                ),
            ]
        });
    chart.draw_series(rects).map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

/// A histogram of reward margins, with the zero line.
fn draw_histogram(path: &Path, values: &[f64]) -> Result<(), NodeError> {
    let fail = plot_error(path);
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let (lo, hi) = finite
        .iter()
        .fold((0.0f64, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = (hi - lo).max(1e-6);
    let bins = 20;
    let width = span / bins as f64;
    let mut counts = vec![0usize; bins];
    for v in &finite {
        counts[(((v - lo) / width) as usize).min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let root = SVGBackend::new(path, (720, 320)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("reward margin per held-out pair", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(lo..(lo + span), 0.0..top * 1.1)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("β · (log-ratio chosen − log-ratio rejected)")
        .y_desc("pairs")
        .draw()
        .map_err(|e| fail(&e))?;
    let rects = counts.iter().enumerate().map(|(i, &c)| {
        let x = lo + i as f64 * width;
        let color = if x + width / 2.0 > 0.0 { BLUE } else { RED };
        Rectangle::new([(x, 0.0), (x + width, c as f64)], color.mix(0.7).filled())
    });
    chart.draw_series(rects).map_err(|e| fail(&e))?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (0.0, top * 1.1)], BLACK))
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

/// MT-Bench's means, policy vs reference, as the German models' cards report them.
fn mt_bench_table(out: &mut String, mt: &MtBenchResults) {
    let _ = writeln!(
        out,
        "\n## MT-Bench\n\n{} questions, judge `{}` (FastChat single-answer grading, ratings 1–10; replies without a rating left out: {} policy, {} reference).\n\n| mean rating | policy | reference |\n|---|---|---|",
        mt.questions, mt.judge, mt.policy.invalid, mt.reference.invalid
    );
    let cell = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
    let (p, r) = (&mt.policy, &mt.reference);
    for (name, policy, reference) in [
        ("average (all turns)", p.average, r.average),
        ("first turn", p.first_turn, r.first_turn),
        ("second turn", p.second_turn, r.second_turn),
    ] {
        let _ = writeln!(out, "| {name} | {} | {} |", cell(policy), cell(reference));
    }
    for (category, value) in &p.categories {
        let reference = r.categories.get(category).copied();
        let _ = writeln!(
            out,
            "| {category} | {} | {} |",
            cell(Some(*value)),
            cell(reference)
        );
    }
}
