//! `flow bench`: throughput and peak memory of tensor work (numbers for notes, never tests).

use flow_model::arch::Family;
use flow_model::bench::{
    BenchRun, BenchShape, bench_config, bench_dpo_step, bench_logprobs, set_threads,
};
use flow_nodes::compute::{DeviceSpec, Precision};

use super::{Failure, print_json};
use crate::cli::{BenchCommand, BenchShapeArgs, FilterBenchArgs};

fn shape(args: &BenchShapeArgs) -> Result<BenchShape, Failure> {
    if args.seq < 2 || args.pairs == 0 || args.heads == 0 {
        return Err(Failure::Input(
            "error: --seq must be at least 2, --pairs and --heads at least 1".into(),
        ));
    }
    let family = Family::from_model_type(&args.architecture).ok_or_else(|| {
        Failure::Input(format!(
            "error: unknown --architecture `{}`: flow implements {}",
            args.architecture,
            Family::supported()
        ))
    })?;
    let shape = BenchShape {
        family,
        hidden: args.hidden,
        intermediate: args.intermediate,
        layers: args.layers,
        heads: args.heads,
        kv_heads: args.kv_heads,
        vocab: args.vocab,
        pairs: args.pairs,
        seq: args.seq,
        repeats: args.repeats,
    };
    bench_config(&shape)
        .validate()
        .map_err(|e| Failure::Input(format!("error: {e}")))?;
    Ok(shape)
}

/// The device, precision and training options of a benchmark.
fn run_options(args: &BenchShapeArgs) -> Result<BenchRun, Failure> {
    let input = |e: String| Failure::Input(format!("error: {e}"));
    let device = DeviceSpec::try_from(args.device.clone()).map_err(input)?;
    let dtype: Precision = serde_json::from_value(serde_json::Value::String(args.dtype.clone()))
        .map_err(|_| {
            input(format!(
                "invalid --dtype `{}`: expected f32 or bf16",
                args.dtype
            ))
        })?;
    Ok(BenchRun {
        // A device that is not there (no driver, bf16 on wgpu) fails the run, as in `flow exec`.
        device: device
            .resolve(dtype)
            .map_err(|e| Failure::Run(format!("error: {}", e.message)))?,
        dtype: dtype.compute_dtype(),
        lora_r: args.lora_r,
        gradient_checkpointing: args.gradient_checkpointing,
    })
}

/// Runs a benchmark and prints its numbers.
pub fn bench(what: BenchCommand) -> Result<(), Failure> {
    match what {
        BenchCommand::Filter(args) => bench_filter(&args),
        BenchCommand::DpoStep(args) => {
            let shape = shape(&args)?;
            set_threads(args.threads).map_err(|e| Failure::Input(format!("error: {e}")))?;
            let run = run_options(&args)?;
            let result =
                bench_dpo_step(&shape, &run).map_err(|e| Failure::Run(format!("error: {e}")))?;
            if args.json {
                print_json(&result);
            } else {
                println!(
                    "dpo-step ({}): {:.0} tokens/s ({:.3} s per step of {} pairs × 2 × {} tokens), peak RSS {:.0} MiB, {} threads",
                    args.architecture,
                    result.tokens_per_s,
                    result.step_s,
                    shape.pairs,
                    shape.seq,
                    result.peak_rss_mib,
                    result.threads
                );
            }
            Ok(())
        }
        BenchCommand::Logprobs(args) => {
            let shape = shape(&args)?;
            set_threads(args.threads).map_err(|e| Failure::Input(format!("error: {e}")))?;
            let result = bench_logprobs(&shape, &run_options(&args)?)
                .map_err(|e| Failure::Run(format!("error: {e}")))?;
            if args.json {
                print_json(&result);
            } else {
                println!(
                    "logprobs ({}): {:.0} tokens/s ({:.3} s per batch of {} sequences × {} tokens), peak RSS {:.0} MiB, {} threads",
                    args.architecture,
                    result.tokens_per_s,
                    result.batch_s,
                    2 * shape.pairs,
                    shape.seq,
                    result.peak_rss_mib,
                    result.threads
                );
            }
            Ok(())
        }
    }
}

fn bench_filter(args: &FilterBenchArgs) -> Result<(), Failure> {
    set_threads(args.threads).map_err(|e| Failure::Input(format!("error: {e}")))?;
    let dir = tempfile::tempdir().map_err(|e| Failure::Run(format!("error: {e}")))?;
    let result = flow_nodes::dataset::filter::bench_filter(args.rows, dir.path())
        .map_err(|e| Failure::Run(format!("error: {e}")))?;
    if args.json {
        print_json(&result);
    } else {
        println!(
            "filter: {:.0} rows/s ({} rows in, {} kept), peak RSS {:.0} MiB, {} threads",
            result.rows_per_s, result.rows, result.rows_out, result.peak_rss_mib, result.threads
        );
    }
    Ok(())
}
