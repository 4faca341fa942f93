//! Stand-in for `cubecl-llvm` 0.11.3 (see `VENDORED.md`): the items `cubecl-cuda` 0.11.3 names,
//! with their published signatures, and no LLVM. flow's CUDA builds compile kernels with NVRTC
//! (`cubecl-cuda/cpp`); the LLVM compiler here refuses every kernel with a compilation error.

use core::fmt;

use cubecl_core::ir::nvidia::SmArch;
use cubecl_core::prelude::KernelDefinition;
use cubecl_environment::backtrace::BackTrace;
use cubecl_runtime::compiler::CompilationError;
use cubecl_runtime::kernel::BufferIOAttr;

/// What `compile` says: the one message a caller of the LLVM backend sees.
pub const NO_LLVM: &str = "no LLVM backend in this build: flow compiles CUDA kernels with NVRTC \
                           (cubecl-cuda's `cpp` feature)";

/// The PTX version chosen for a driver (`cubecl_llvm::nvptx::ptx_version`).
pub mod nvptx {
    /// The PTX ISA version emitted for the installed driver.
    pub mod ptx_version {
        use core::fmt;

        /// A PTX ISA version, as the NVPTX target feature spells it: 8.7 is `87`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct PtxVersion(u32);

        impl PtxVersion {
            /// The newest version a driver of CUDA `driver` loads, as `cuDriverGetVersion`
            /// reports it (12.8 is `12080`); `None` below CUDA 10.0. The published table, since
            /// `cubecl-cuda` also names its kernel cache after it.
            pub fn for_driver(driver: i32) -> Option<Self> {
                DRIVER_PTX
                    .iter()
                    .find(|(first_driver, _)| driver >= *first_driver)
                    .map(|(_, ptx)| Self(*ptx))
            }
        }

        impl fmt::Display for PtxVersion {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "ptx{}", self.0)
            }
        }

        /// The first CUDA release to load each PTX version, newest first (as published).
        const DRIVER_PTX: &[(i32, u32)] = &[
            (13030, 93),
            (13020, 92),
            (13010, 91),
            (13000, 90),
            (12090, 88),
            (12080, 87),
            (12050, 85),
            (12040, 84),
            (12030, 83),
            (12020, 82),
            (12010, 81),
            (12000, 80),
            (11080, 78),
            (11070, 77),
            (11060, 76),
            (11050, 75),
            (11040, 74),
            (11030, 73),
            (11020, 72),
            (11010, 71),
            (11000, 70),
            (10020, 65),
            (10010, 64),
            (10000, 63),
        ];
    }
}

/// Device features narrowed to what the LLVM backend lowers (`cubecl_llvm::shared`).
pub mod shared {
    /// `GpuTarget` and `restrict_features`.
    pub mod lowered_features {
        use cubecl_core::ir::DeviceProperties;

        /// The GPU target a device's features are narrowed for.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum GpuTarget {
            /// NVIDIA GPUs through NVPTX.
            Nvptx,
        }

        /// Narrows `props` for the LLVM backend. `cubecl-cuda` calls it only when that backend
        /// is selected; no kernel compiles then (see [`crate::NO_LLVM`]), so nothing is taken
        /// away.
        pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {}
    }
}

/// The target an LLVM compiler lowers to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LlvmTarget {
    /// The host CPU.
    #[default]
    Cpu,
    /// NVIDIA GPUs.
    Nvptx,
}

/// The LLVM/pliron kernel compiler; here it refuses every kernel.
#[derive(Clone, Debug, Default)]
pub struct PlironCompiler {
    /// What it would lower to.
    pub target: LlvmTarget,
}

/// The published options, field for field as `cubecl-cuda` fills them.
#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    /// AMD architecture (unused; `()` stands for the real crate's `GfxArch`).
    pub arch: Option<()>,
    /// NVPTX architecture.
    pub sm_arch: Option<SmArch>,
    /// PTX version to emit.
    pub ptx_version: Option<nvptx::ptx_version::PtxVersion>,
    /// Pass scalars and static metadata in the kernel parameter block.
    pub grid_constants: bool,
}

/// A compiled PTX module (never produced here).
#[derive(Clone, Debug)]
pub struct NvptxModule {
    /// NUL-terminated PTX assembly.
    pub ptx: Vec<core::ffi::c_char>,
    /// Kernel entry point symbol.
    pub entrypoint: String,
    /// IR for logging and cache keys.
    pub ir: String,
    /// Shared memory required per launch, in bytes.
    pub shared_memory_size: usize,
    /// Buffer access modes in binding order.
    pub io: Vec<BufferIOAttr>,
}

/// A compiled kernel artifact.
#[derive(Clone, Debug)]
pub enum PlironArtifact {
    /// The published crate's host JIT engine: never made here (it cannot be constructed), kept
    /// so that cubecl-cuda's `match` on artifacts has the variants it was written for.
    Jit(std::convert::Infallible),
    /// PTX for the CUDA driver.
    NvptxCode(NvptxModule),
}

impl PlironCompiler {
    /// Always the error [`NO_LLVM`]: this build has no LLVM.
    pub fn compile(
        &mut self,
        _kernel: KernelDefinition,
        _options: &PlironOptions,
    ) -> Result<PlironArtifact, CompilationError> {
        Err(CompilationError::Generic {
            reason: NO_LLVM.to_string(),
            backtrace: BackTrace::capture(),
        })
    }

    /// The language tag of the published compiler.
    pub fn lang_tag(&self) -> &'static str {
        match self.target {
            LlvmTarget::Cpu => "mlir",
            LlvmTarget::Nvptx => "llvm",
        }
    }
}

impl fmt::Display for NvptxModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.ir)
    }
}
