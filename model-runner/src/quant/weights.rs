//! A weight matrix in either of the layouts the kernels run on.

use super::{Q4Matrix, Q8_BLOCK, Q8Matrix};

/// A weight matrix in one of the layouts the kernels run on.
#[derive(Debug, Clone)]
pub enum Weights {
    Q8(Q8Matrix),
    Q4(Q4Matrix),
}

impl Weights {
    /// Dequantizes row `r` into `out`.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        match self {
            Weights::Q8(m) => m.row_f32(r, out),
            Weights::Q4(m) => {
                let row = m.row(r);
                for (i, (nib, o)) in row
                    .nibbles
                    .chunks_exact(16)
                    .zip(out.chunks_exact_mut(Q8_BLOCK))
                    .enumerate()
                {
                    let (d, mn) = (row.scales[i], row.mins[i]);
                    for k in 0..16 {
                        o[k] = f32::from(nib[k] & 0xf) * d + mn;
                        o[k + 16] = f32::from(nib[k] >> 4) * d + mn;
                    }
                }
            }
        }
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        match self {
            Weights::Q8(m) => m.rows,
            Weights::Q4(m) => m.rows,
        }
    }
}
