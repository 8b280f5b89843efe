//! Weight formats: turning GGUF's quantized blocks into f32, and the engine's own 8-bit
//! layout with the dot-product kernels that run on it.
//!
//! At load every matrix is requantized to [`Q8Matrix`] (blocks of 32 signed bytes with one
//! f32 scale), and activations are quantized the same way just before each matrix multiply.
//! The dot product of two such rows is then integer work, which AVX2 does 32 lanes at a time.
//! The kernel is chosen once at run time from the CPU's features; the binary is never built
//! for a specific CPU. A given row's dot product always takes the same path and the same
//! order of additions, whatever the batch around it: batching must never change a result.
//! The SIMD kernels are the only `unsafe` code here, each call guarded by feature detection.
//!
//! One file per object:
//! - `dequant`: GGUF's block formats (F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) into f32;
//! - `q8`: the engine's 8-bit rows ([`Q8Matrix`]) and the quantizers that fill them;
//! - `q4`: 4-bit rows kept as GGUF stores them ([`Q4Matrix`]);
//! - `weights`: a weight matrix in either layout ([`Weights`]);
//! - `kernel`: which dot-product kernel this CPU runs ([`Kernel`]);
//! - `matmul`: the tiled matrix products and dots, with the portable kernel;
//! - `x86`: the AVX2 and AVX-VNNI kernels (the only `unsafe` code).

mod dequant;
mod kernel;
mod matmul;
mod q4;
mod q8;
mod weights;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use dequant::{dequantize, f16_to_f32};
pub use kernel::Kernel;
pub use matmul::{axpy_f32, dot, dot_f32, matmul_rows};
pub use q4::Q4Matrix;
pub use q8::{Q8Matrix, quantize_activation_row, quantize_row};
pub use weights::Weights;

use crate::gguf::TensorType;

/// Elements per block of the engine's 8-bit layout.
pub const Q8_BLOCK: usize = 32;

/// Why a tensor could not be turned into numbers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("tensor type {0:?} is not supported")]
    Unsupported(TensorType),
    #[error("row length {0} is not a multiple of the block size")]
    BadRowLength(usize),
}
