//! Launches of the kernels the forward pass runs on the activation buffers: RMS norm,
//! 8-bit quantization of activations, and the matrix products over either weight layout.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg};

use super::buffers::{Activations, Buffers, Target, buf};
use super::device::Kernels;
use super::trace::{Trace, snap_q8};
use super::weights::GpuMatrix;
use super::{CudaError, MM_TOKENS, MM_WARPS, THREADS_PER_ROW_KERNEL};
use crate::quant::Q8_BLOCK;

pub(super) fn cfg_rows(n: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn norm(
    st: &Arc<CudaStream>,
    k: &Kernels,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    rows: &CudaView<'_, i32>,
    use_rows: bool,
    out: &mut CudaSlice<f32>,
    n: usize,
    d: usize,
    eps: f32,
) -> Result<(), CudaError> {
    let (ur, di) = (i32::from(use_rows), d as i32);
    let mut l = st.launch_builder(&k.rms_norm);
    l.arg(x)
        .arg(w)
        .arg(rows)
        .arg(&ur)
        .arg(out)
        .arg(&di)
        .arg(&eps);
    // SAFETY: matches rms_norm; `rows` (when used) holds n row indices below the batch size.
    unsafe { l.launch(cfg_rows(n, THREADS_PER_ROW_KERNEL)) }?;
    Ok(())
}

/// Quantizes the first `len` values of `from` into the 8-bit activation buffers, and records
/// them under `name` when tracing.
pub(super) fn quantize_activations(
    st: &Arc<CudaStream>,
    k: &Kernels,
    b: &mut Buffers,
    from: Activations,
    len: usize,
    trace: &mut Trace,
    name: &str,
) -> Result<(), CudaError> {
    let x = match from {
        Activations::Normed => buf(&mut b.normed),
        Activations::Attention => buf(&mut b.attn),
        Activations::SwiGlu => buf(&mut b.act),
    };
    quantize(
        st,
        k,
        x,
        buf(&mut b.xq),
        buf(&mut b.xs),
        buf(&mut b.xsum),
        len,
    )?;
    snap_q8(st, trace, name, b, len)
}

/// Quantizes the first `len` values of `x` (a whole number of 32-value blocks).
fn quantize(
    st: &Arc<CudaStream>,
    k: &Kernels,
    x: &CudaSlice<f32>,
    q: &mut CudaSlice<i8>,
    s: &mut CudaSlice<f32>,
    sums: &mut CudaSlice<f32>,
    len: usize,
) -> Result<(), CudaError> {
    let blocks = (len / Q8_BLOCK) as i64;
    let cfg = LaunchConfig {
        grid_dim: ((len as u32).div_ceil(THREADS_PER_ROW_KERNEL), 1, 1),
        block_dim: (THREADS_PER_ROW_KERNEL, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = st.launch_builder(&k.quantize_q8);
    l.arg(x).arg(q).arg(s).arg(sums).arg(&blocks);
    // SAFETY: matches quantize_q8; every buffer holds `len` values (or len / 32 blocks).
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// `target[t][j] (+)= dot(w row j, xq row t)` for the `n` quantized rows in the buffers.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    st: &Arc<CudaStream>,
    k: &Kernels,
    w: &GpuMatrix,
    cols: usize,
    b: &mut Buffers,
    n: usize,
    target: Target,
    out_off: usize,
    accumulate: bool,
) -> Result<(), CudaError> {
    let rows = w.rows();
    let out = match target {
        Target::Qkv => buf(&mut b.qkv),
        Target::X => buf(&mut b.x),
        Target::GateUp => buf(&mut b.gate_up),
        Target::Logits => buf(&mut b.logits),
    };
    let cfg = LaunchConfig {
        grid_dim: (
            (rows as u32).div_ceil(MM_WARPS),
            (n as u32).div_ceil(MM_TOKENS),
            1,
        ),
        block_dim: (32 * MM_WARPS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (ri, ci, ni, stride, off, acc) = (
        rows as i32,
        cols as i32,
        n as i32,
        rows as i32,
        out_off as i32,
        i32::from(accumulate),
    );
    let (xq, xs, xsum) = (
        b.xq.as_ref().expect("allocated"),
        b.xs.as_ref().expect("allocated"),
        b.xsum.as_ref().expect("allocated"),
    );
    match w {
        GpuMatrix::Q8 {
            quants,
            scales,
            cols: wc,
            ..
        } => {
            debug_assert_eq!(*wc, cols);
            let mut l = st.launch_builder(&k.matmul_q8);
            l.arg(quants)
                .arg(scales)
                .arg(&ri)
                .arg(&ci)
                .arg(xq)
                .arg(xs)
                .arg(&ni)
                .arg(out)
                .arg(&stride)
                .arg(&off)
                .arg(&acc);
            // SAFETY: matches matmul_q8; the weights hold rows x cols, the activations n x
            // cols, the output n rows of `rows` values.
            unsafe { l.launch(cfg) }?;
        }
        GpuMatrix::Q4 {
            nibbles,
            scales,
            mins,
            cols: wc,
            ..
        } => {
            debug_assert_eq!(*wc, cols);
            let mut l = st.launch_builder(&k.matmul_q4);
            l.arg(nibbles)
                .arg(scales)
                .arg(mins)
                .arg(&ri)
                .arg(&ci)
                .arg(xq)
                .arg(xs)
                .arg(xsum)
                .arg(&ni)
                .arg(out)
                .arg(&stride)
                .arg(&off)
                .arg(&acc);
            // SAFETY: as for matmul_q8, plus per-block minimums and activation sums.
            unsafe { l.launch(cfg) }?;
        }
    }
    Ok(())
}
