//! `flow worker SPEC.json`: one node attempt, as an executor's job runs it (a Slurm batch script
//! calls it with the driver's own binary). It runs the node, commits its outputs to the store
//! and writes the result file the driver reads; SIGTERM (`scancel`, a time limit) cancels it.

use flow_engine::exec::CancellationToken;
use flow_engine::exec::worker::run_worker;
use std::path::Path;

use super::{Failure, cancel_on_signals};

/// Runs the attempt; fails (exit 1) when the node did not succeed.
pub fn worker(spec: &Path) -> Result<(), Failure> {
    let runtime = super::runtime()?;
    let result = runtime.block_on(async {
        let cancel = CancellationToken::new();
        cancel_on_signals(vec![cancel.clone()], || {
            eprintln!("flow worker: cancelling the node…")
        });
        run_worker(&flow_nodes::library(), spec, cancel).await
    });
    let result = result.map_err(|e| Failure::Run(format!("error: {e}")))?;
    match (&result.error, result.cancelled) {
        (None, false) => Ok(()),
        (_, true) => Err(Failure::Cancelled(
            "flow worker: the node was cancelled".into(),
        )),
        (Some(error), false) => Err(Failure::Run(format!("error: the node failed: {error}"))),
    }
}
