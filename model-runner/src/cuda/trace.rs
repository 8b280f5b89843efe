//! Copies of a forward pass's stages back to the host when tracing, under the names and in
//! the layout the CPU's trace uses, to find where the two paths part.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::CudaError;
use super::buffers::Buffers;
use crate::quant::Q8_BLOCK;

pub(super) type Trace = Option<Vec<(String, Vec<f32>)>>;

/// Records the first `len` values of `src` under `name` when tracing.
pub(super) fn snap(
    st: &Arc<CudaStream>,
    trace: &mut Trace,
    name: &str,
    src: &Option<CudaSlice<f32>>,
    len: usize,
) -> Result<(), CudaError> {
    if let (Some(t), Some(src)) = (trace.as_mut(), src) {
        let mut host = vec![0.0f32; len];
        st.memcpy_dtoh(&src.slice(..len), &mut host)?;
        st.synchronize()?;
        t.push((name.to_owned(), host));
    }
    Ok(())
}

/// Records the 8-bit activations of `len` values (quants, scales, block sums) when tracing,
/// as the CPU's trace does.
pub(super) fn snap_q8(
    st: &Arc<CudaStream>,
    trace: &mut Trace,
    name: &str,
    b: &Buffers,
    len: usize,
) -> Result<(), CudaError> {
    let (Some(t), Some(xq)) = (trace.as_mut(), &b.xq) else {
        return Ok(());
    };
    let mut q = vec![0i8; len];
    st.memcpy_dtoh(&xq.slice(..len), &mut q)?;
    st.synchronize()?;
    t.push((
        format!("{name}.q8"),
        q.iter().map(|&v| f32::from(v)).collect(),
    ));
    snap(
        st,
        trace,
        &format!("{name}.q8_scales"),
        &b.xs,
        len / Q8_BLOCK,
    )?;
    snap(
        st,
        trace,
        &format!("{name}.q8_sums"),
        &b.xsum,
        len / Q8_BLOCK,
    )
}
