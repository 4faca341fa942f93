//! The `flow` command line.

mod cli;
mod commands;
mod progress;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    keep_large_allocations_in_the_heap();
    let cli = cli::Cli::parse();
    init_tracing(cli.verbose);
    let store = flow_engine::store::Store::at(cli.store.clone().unwrap_or_else(|| ".flow".into()));
    match commands::dispatch(cli.command, &store) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprint!("{}", failure.message_with_newline());
            failure.exit_code()
        }
    }
}

/// Tensor work allocates and frees buffers of a few to a few hundred MB per layer. glibc
/// serves those with fresh `mmap`s by default, so every one costs a page fault per 4 KiB page
/// and a zeroed page (7-14 % of reference scoring, measured with `flow bench logprobs`).
/// Serving blocks up to 256 MiB from the heap lets the next layer reuse the pages, and the
/// heap's free top goes back to the system only beyond 1 GiB, so the next training step finds
/// its buffers (a 64 MiB limit gave back the output layer's logits after every step and cost
/// 10-20 % of `flow bench dpo-step`). Tensor work's peak is unchanged (the freed blocks are
/// what the next allocation takes); the price is that a long-lived process (`flow schedule`)
/// may hold up to that much freed memory between runs, and `flow bench filter` peaks about
/// 50 MiB higher at 100,000 rows. `MALLOC_*` environment variables still win.
fn keep_large_allocations_in_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_user = |name: &str| std::env::var_os(name).is_some();
        // SAFETY: mallopt only changes glibc's allocation thresholds; called before any thread
        // exists, and with options and values glibc documents.
        unsafe {
            if !set_by_user("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
            }
            if !set_by_user("MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    }
}

/// tracing to stderr: warnings by default, `-v` info, `-vv` debug; `RUST_LOG` overrides. The
/// GPU runtimes' own logs are kept to `-vv`: probing devices (`auto`, a missing driver, wgpu's
/// adapters) makes them warn about every backend they try, and flow reports what matters.
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => {
            "warn,cubecl=off,cubecl_runtime=off,cubecl_server=off,cubecl_common=off,cubecl_cuda=off,cubecl_wgpu=off,burn_cubecl=off,wgpu_hal=off,wgpu_core=error,naga=error"
        }
        1 => {
            "info,cubecl=off,cubecl_runtime=off,cubecl_server=off,cubecl_common=off,cubecl_cuda=off,cubecl_wgpu=off,burn_cubecl=off,wgpu_hal=off,wgpu_core=error,naga=error"
        }
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
