//! The CUDA path (cargo feature `cuda`): the same llama-family forward pass as
//! [`Model::forward`](crate::model::Model::forward), over the same flat varlen batch, on an
//! NVIDIA GPU, with the KV cache in GPU memory in the same paged layout and with the same
//! block ids as the CPU [`KvStore`](crate::kv::KvStore).
//!
//! The driver and NVRTC libraries are loaded with `dlopen` when a GPU is asked for, so the
//! binary builds and runs without a CUDA toolkit; the kernels (`kernels.cu`) are compiled at
//! start-up for the device's compute capability. Weights are uploaded once, in the blocks the
//! CPU engine holds them in (4-bit blocks as GGUF stores them, or 8-bit ones), and
//! dequantized inside the matrix kernels. Only logits come back to the host: sampling stays
//! on the CPU. A missing driver, library or device is an error, never a panic and never a
//! silent fallback to the CPU. This module never sees text and logs no token ids.
//!
//! One file per object, as Firecracker's `vstate/` does it:
//! - `device`: one device with the kernels compiled for it ([`CudaDevice`]);
//! - `kv`: the paged KV cache in GPU memory ([`CudaKvStore`]);
//! - `weights`: a model's matrices uploaded in the CPU engine's blocks;
//! - `buffers`: the activation buffers a forward pass reuses;
//! - `launch`: the launches of the norm, quantize and matrix kernels;
//! - `trace`: copies of the stages back to the host, to compare with the CPU;
//! - `executor`: the forward pass over a flat batch ([`CudaModel`]);
//! - `reference`: the CPU's paged attention the GPU kernel is checked against.
#![allow(unsafe_code)]

mod buffers;
mod device;
mod executor;
mod kv;
mod launch;
mod reference;
mod trace;
mod weights;

use cudarc::driver::{CudaContext, DriverError};
use cudarc::nvrtc::{CompileOptions, Ptx};

pub use device::CudaDevice;
pub use executor::{CudaModel, FlatBatch};
pub use kv::CudaKvStore;
pub use reference::cpu_paged_attention;

use crate::model::ModelError;

/// The kernels' CUDA C source, compiled by NVRTC at start-up.
pub const KERNELS_SOURCE: &str = include_str!("kernels.cu");

/// Largest head dimension the attention kernel handles (it keeps a query head in registers).
pub const MAX_HEAD_DIM: usize = 256;
/// Tokens one matrix-kernel warp multiplies at once (`MM_TOKENS` in kernels.cu).
const MM_TOKENS: u32 = 8;
/// Weight rows per matrix-kernel thread block (`MM_WARPS` in kernels.cu).
const MM_WARPS: u32 = 4;
/// Query heads per attention thread block (one warp each).
const ATTENTION_HEADS_PER_BLOCK: u32 = 4;
const THREADS_PER_ROW_KERNEL: u32 = 256;

/// Why the GPU cannot be used, or failed.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error(
        "the NVIDIA driver library (libcuda.so) cannot be loaded: no NVIDIA driver on this machine"
    )]
    NoDriver,
    #[error(
        "the NVRTC library (libnvrtc.so) cannot be loaded: install the CUDA runtime compiler, or add its folder to LD_LIBRARY_PATH"
    )]
    NoNvrtc,
    #[error("no CUDA device {ordinal} (this machine has {count})")]
    NoDevice { ordinal: usize, count: usize },
    #[error("the CUDA driver failed: {0}")]
    Driver(#[from] DriverError),
    #[error("NVRTC could not compile the kernels for compute capability {arch}: {message}")]
    Compile { arch: String, message: String },
    #[error("the CUDA library panicked: {0}")]
    Panicked(String),
    #[error("the model's shape is not supported on the GPU: {0}")]
    Unsupported(String),
    #[error("the batch is inconsistent: {0}")]
    BadBatch(String),
}

impl From<CudaError> for ModelError {
    fn from(e: CudaError) -> ModelError {
        ModelError::Device(e.to_string())
    }
}

/// Runs `f`, turning a panic inside the CUDA bindings (they panic on a missing symbol) into
/// an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(CudaError::Panicked(
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".into()),
        )),
    }
}

/// How many CUDA devices this machine has; an error when the driver is missing.
pub fn device_count() -> Result<usize, CudaError> {
    // SAFETY: only tries to dlopen the driver library; nothing is called in it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    guarded(|| Ok(CudaContext::device_count()?.max(0) as usize))
}

fn compile(arch: &str) -> Result<Ptx, CudaError> {
    let opts = CompileOptions {
        // No fused multiply-adds: the CPU's arithmetic has none (see kernels.cu).
        options: vec![format!("--gpu-architecture={arch}"), "--fmad=false".into()],
        name: Some("kernels.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(KERNELS_SOURCE, opts).map_err(|e| CudaError::Compile {
        arch: arch.into(),
        message: e.to_string(),
    })
}

/// Compiles the kernels with NVRTC for `arch` (e.g. `compute_90`) without any device or
/// driver, returning the PTX text: checks the CUDA source where there is no GPU.
pub fn compile_kernels(arch: &str) -> Result<String, CudaError> {
    // SAFETY: only tries to dlopen the NVRTC library; nothing is called in it.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc);
    }
    guarded(|| Ok(compile(arch)?.to_src()))
}
