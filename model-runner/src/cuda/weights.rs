//! A model's matrices on the GPU, uploaded once in the blocks the CPU engine holds them in.

use cudarc::driver::CudaSlice;

use super::{CudaDevice, CudaError};
use crate::quant::Weights;

/// A weight matrix on the GPU, in the CPU engine's blocks.
pub(super) enum GpuMatrix {
    Q8 {
        rows: usize,
        cols: usize,
        quants: CudaSlice<i8>,
        scales: CudaSlice<f32>,
    },
    Q4 {
        rows: usize,
        cols: usize,
        nibbles: CudaSlice<u8>,
        scales: CudaSlice<f32>,
        mins: CudaSlice<f32>,
    },
}

impl GpuMatrix {
    pub(super) fn upload(dev: &CudaDevice, w: &Weights) -> Result<GpuMatrix, CudaError> {
        Ok(match w {
            Weights::Q8(m) => GpuMatrix::Q8 {
                rows: m.rows,
                cols: m.cols,
                quants: dev.upload(&m.quants)?,
                scales: dev.upload(&m.scales)?,
            },
            Weights::Q4(m) => GpuMatrix::Q4 {
                rows: m.rows,
                cols: m.cols,
                nibbles: dev.upload(&m.nibbles)?,
                scales: dev.upload(&m.scales)?,
                mins: dev.upload(&m.mins)?,
            },
        })
    }

    pub(super) fn rows(&self) -> usize {
        match self {
            GpuMatrix::Q8 { rows, .. } | GpuMatrix::Q4 { rows, .. } => *rows,
        }
    }
}

pub(super) struct GpuLayer {
    pub(super) attn_norm: CudaSlice<f32>,
    pub(super) qkv: GpuMatrix,
    pub(super) qkv_bias: Option<CudaSlice<f32>>,
    pub(super) wo: GpuMatrix,
    pub(super) ffn_norm: CudaSlice<f32>,
    pub(super) gate_up: GpuMatrix,
    pub(super) down: GpuMatrix,
}
