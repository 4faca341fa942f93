//! Progress on stderr: one line per running node (indicatif) on a terminal, one line per
//! finished node otherwise, nothing extra with `--json`.

use flow_engine::exec::Observer;
use flow_engine::node::ProgressSink;
use flow_engine::store::record::{NodeRecord, NodeStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

/// Shows a run's progress.
pub struct ProgressUi {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
    /// One bar per running transfer, by `node/item`.
    transfers: Mutex<HashMap<String, ProgressBar>>,
    quiet: bool,
}

impl ProgressUi {
    /// Bars on a terminal; plain lines otherwise; only messages when `quiet`.
    pub fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let multi =
            (tty && !quiet).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        ProgressUi {
            multi,
            bars: Mutex::new(HashMap::new()),
            transfers: Mutex::new(HashMap::new()),
            quiet,
        }
    }

    /// Prints a message above the bars.
    pub fn message(&self, text: &str) {
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// Clears the bars.
    pub fn finish(&self) {
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
    }

    fn line(&self, text: String) {
        if !self.quiet {
            self.message(&text);
        }
    }
}

impl ProgressSink for ProgressUi {
    fn progress(&self, node: &str, done: u64, total: u64) {
        if let Some(bar) = self.bars.lock().expect("bars lock").get(node) {
            if total > 0 && bar.length() != Some(total) {
                bar.set_length(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix:20} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
            }
            bar.set_position(done);
        }
    }

    fn transfer(&self, node: &str, item: &str, done: u64, total: u64) {
        let Some(multi) = &self.multi else { return };
        let key = format!("{node}/{item}");
        let mut transfers = self.transfers.lock().expect("transfers lock");
        let bar = transfers.entry(key.clone()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "  {prefix:20} {msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(node.to_string());
            bar.set_message(item.to_string());
            bar
        });
        bar.set_position(done);
        if total > 0 && done >= total {
            bar.finish_and_clear();
            transfers.remove(&key);
        }
    }
}

impl Observer for ProgressUi {
    fn node_started(&self, id: &str, reasons: &[String]) {
        let Some(multi) = &self.multi else { return };
        let bar = multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:20} {msg} {elapsed}")
                .expect("valid template"),
        );
        bar.set_prefix(id.to_string());
        bar.set_message(reasons.join("; "));
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars
            .lock()
            .expect("bars lock")
            .insert(id.to_string(), bar);
    }

    fn node_waiting(&self, id: &str, why: &str) {
        self.line(format!("⧗ {id}: {why}"));
    }

    fn node_retrying(&self, id: &str, attempt: u32, delay: Duration, error: &str) {
        self.line(format!(
            "↻ {id}: attempt {attempt} failed ({error}); retrying in {delay:.1?}"
        ));
    }

    fn node_finished(&self, record: &NodeRecord) {
        if let Some(bar) = self.bars.lock().expect("bars lock").remove(&record.id) {
            bar.finish_and_clear();
        }
        let seconds = record.duration_ms as f64 / 1000.0;
        let text = match record.status {
            NodeStatus::Cached => format!("= {} cached", record.id),
            NodeStatus::Succeeded => format!(
                "✓ {} ran in {seconds:.2}s ({})",
                record.id,
                record.reasons.join("; ")
            ),
            NodeStatus::Failed => format!("✗ {} failed after {seconds:.2}s", record.id),
            NodeStatus::Skipped => format!(
                "- {} skipped: {}",
                record.id,
                record.error.as_deref().unwrap_or_default()
            ),
            NodeStatus::Cancelled => format!("✗ {} cancelled", record.id),
            NodeStatus::Pending | NodeStatus::Running => return,
        };
        self.line(text);
    }
}
