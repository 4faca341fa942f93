//! The `cuda` build compiles kernels with NVRTC: cubecl-cuda's `cpp` feature makes the CUDA C++
//! backend the default, and the LLVM backend is the stand-in of `vendor/cubecl-llvm`, which
//! refuses to compile. Losing `cpp` (a dependency change) would make every kernel fail at run
//! time on a GPU; this test makes it fail here, where no GPU is needed. The patched cubecl-cuda
//! (`vendor/cubecl-cuda`) keeps f32 matrix products off TF32 by default.
#![cfg(feature = "cuda")]

use cubecl_cuda::compiler::{CudaBackend, CudaCompiler};

#[test]
fn nvrtc_is_the_default_cuda_compiler() {
    assert_eq!(CudaBackend::default(), CudaBackend::Cpp);
    assert!(matches!(CudaCompiler::default(), CudaCompiler::Cpp(_)));
}

#[test]
fn the_lock_has_no_llvm_download() {
    // What made `--features cuda` need network: cubecl-llvm's LLVM bundle and its bindings.
    let lock = workspace_lock();
    for package in ["tracel-llvm-bundler", "llvm-sys", "pliron-llvm"] {
        assert!(
            !lock.contains(&format!("name = \"{package}\"")),
            "Cargo.lock has {package}: is vendor/cubecl-llvm still patched in?"
        );
    }
    assert!(lock.contains("name = \"cubecl-llvm\"\nversion = \"0.11.3\"\ndependencies"));
}

#[test]
fn f32_matmuls_stay_f32_unless_tf32_is_asked_for() {
    // vendor/cubecl-cuda (VENDORED.md): TF32 is advertised only with CUBECL_CUDA_TF32=1, so
    // `dtype: f32` reproduces transformers on NVIDIA GPUs as it does elsewhere.
    let lock = workspace_lock();
    assert!(
        lock.contains("name = \"cubecl-cuda\"\nversion = \"0.11.3\"\ndependencies"),
        "cubecl-cuda must come from vendor/cubecl-cuda (a registry package names its source)"
    );
    if std::env::var_os("CUBECL_CUDA_TF32").is_none() {
        assert!(!cubecl_cuda::tf32_allowed());
    }
}

/// The workspace's `Cargo.lock`.
fn workspace_lock() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .expect("the workspace lock")
}
