//! The activation buffers of a forward pass, grown to the largest batch seen and reused, and
//! the names of the ones a kernel reads or writes.

use cudarc::driver::CudaSlice;

/// Activation buffers, grown to the largest batch seen and then reused.
#[derive(Default)]
pub(super) struct Buffers {
    pub(super) tokens: usize,
    pub(super) x: Option<CudaSlice<f32>>,
    pub(super) normed: Option<CudaSlice<f32>>,
    pub(super) qkv: Option<CudaSlice<f32>>,
    pub(super) attn: Option<CudaSlice<f32>>,
    pub(super) gate_up: Option<CudaSlice<f32>>,
    pub(super) act: Option<CudaSlice<f32>>,
    pub(super) xq: Option<CudaSlice<i8>>,
    pub(super) xs: Option<CudaSlice<f32>>,
    pub(super) xsum: Option<CudaSlice<f32>>,
    pub(super) logits_rows: usize,
    pub(super) logits: Option<CudaSlice<f32>>,
}

pub(super) fn buf<T>(b: &mut Option<CudaSlice<T>>) -> &mut CudaSlice<T> {
    b.as_mut()
        .expect("buffers are allocated by ensure_buffers before use")
}

#[derive(Clone, Copy)]
pub(super) enum Target {
    Qkv,
    X,
    GateUp,
    Logits,
}

/// Which buffer of activations is quantized for the next matrix product.
#[derive(Clone, Copy)]
pub(super) enum Activations {
    /// A norm's output.
    Normed,
    /// The attention's output.
    Attention,
    /// SwiGLU's output.
    SwiGlu,
}
