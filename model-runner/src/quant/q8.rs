//! The engine's 8-bit layout: rows of 32-value blocks of signed bytes with one f32 scale,
//! for requantized weights and for activations, and the quantizers that fill it.

use super::{Q8_BLOCK, QuantError};

/// Rows of values in the engine's 8-bit layout: each row is `cols / 32` blocks, each block
/// 32 signed bytes in [-127, 127] and one f32 scale.
#[derive(Debug, Clone, Default)]
pub struct Q8Matrix {
    pub rows: usize,
    pub cols: usize,
    /// `rows * cols` quantized values, row-major.
    pub quants: Vec<i8>,
    /// `rows * cols / 32` scales, row-major.
    pub scales: Vec<f32>,
    /// Per block, the sum of its dequantized values; filled only for activations (the
    /// 4-bit kernels need it for the weights' minimum).
    pub block_sums: Vec<f32>,
}

impl Q8Matrix {
    /// An empty matrix with room for `rows` x `cols`.
    pub fn with_shape(rows: usize, cols: usize) -> Result<Q8Matrix, QuantError> {
        if !cols.is_multiple_of(Q8_BLOCK) {
            return Err(QuantError::BadRowLength(cols));
        }
        Ok(Q8Matrix {
            rows,
            cols,
            quants: vec![0; rows * cols],
            scales: vec![0.0; rows * cols / Q8_BLOCK],
            block_sums: Vec::new(),
        })
    }

    /// Reshapes for `rows` rows, keeping the allocation when it is big enough.
    pub fn resize_rows(&mut self, rows: usize) {
        self.rows = rows;
        self.quants.resize(rows * self.cols, 0);
        self.scales.resize(rows * self.cols / Q8_BLOCK, 0.0);
    }

    /// Quantizes row `row` from `x` (length `cols`).
    pub fn set_row(&mut self, row: usize, x: &[f32]) {
        let cols = self.cols;
        quantize_row(
            x,
            &mut self.quants[row * cols..(row + 1) * cols],
            &mut self.scales[row * cols / Q8_BLOCK..(row + 1) * cols / Q8_BLOCK],
        );
    }

    /// Quantizes every row of `x` (`rows * cols` values, row-major) into this matrix, with
    /// block sums (as activations).
    pub fn quantize_from(&mut self, x: &[f32], rows: usize) {
        let cols = self.cols;
        for (r, (q, s, sums)) in self.activation_rows(rows).into_iter().enumerate() {
            quantize_activation_row(&x[r * cols..(r + 1) * cols], q, s, sums);
        }
    }

    /// Reshapes for `rows` activation rows and hands out each row's (values, scales, block
    /// sums), to be filled by [`quantize_activation_row`], possibly on several threads.
    pub fn activation_rows(&mut self, rows: usize) -> Vec<(&mut [i8], &mut [f32], &mut [f32])> {
        self.resize_rows(rows);
        let blocks = self.cols / Q8_BLOCK;
        self.block_sums.resize(rows * blocks, 0.0);
        if self.cols == 0 {
            return Vec::new();
        }
        self.quants
            .chunks_exact_mut(self.cols)
            .zip(self.scales.chunks_exact_mut(blocks))
            .zip(self.block_sums.chunks_exact_mut(blocks))
            .map(|((q, s), b)| (q, s, b))
            .collect()
    }

    /// Row `r`'s per-block sums (activations only).
    pub(super) fn row_sums(&self, r: usize) -> &[f32] {
        let n = self.cols / Q8_BLOCK;
        &self.block_sums[r * n..(r + 1) * n]
    }

    /// Row `r`'s quantized values and scales.
    pub fn row(&self, r: usize) -> (&[i8], &[f32]) {
        let c = self.cols;
        (
            &self.quants[r * c..(r + 1) * c],
            &self.scales[r * c / Q8_BLOCK..(r + 1) * c / Q8_BLOCK],
        )
    }

    /// Dequantizes row `r` into `out`.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let (q, s) = self.row(r);
        for ((ob, qb), &d) in out
            .chunks_exact_mut(Q8_BLOCK)
            .zip(q.chunks_exact(Q8_BLOCK))
            .zip(s)
        {
            for (o, &v) in ob.iter_mut().zip(qb) {
                *o = f32::from(v) * d;
            }
        }
    }
}

/// Quantizes one row `x` into 8-bit values `q` and per-block scales `s`.
pub fn quantize_row(x: &[f32], q: &mut [i8], s: &mut [f32]) {
    for ((xb, qb), sb) in x
        .chunks_exact(Q8_BLOCK)
        .zip(q.chunks_exact_mut(Q8_BLOCK))
        .zip(s.iter_mut())
    {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (qv, &xv) in qb.iter_mut().zip(xb) {
            // Round half away from zero with a truncating cast: `f32::round` is a libm call.
            let v = xv * inv;
            *qv = (v + 0.5f32.copysign(v)).clamp(-127.0, 127.0) as i8;
        }
        *sb = d;
    }
}

/// Quantizes one activation row `x` into `q` and `s`, and stores each block's sum of
/// dequantized values in `sums` (the 4-bit kernels' minimum term needs it).
pub fn quantize_activation_row(x: &[f32], q: &mut [i8], s: &mut [f32], sums: &mut [f32]) {
    quantize_row(x, q, s);
    for ((qb, &d), sum) in q.chunks_exact(Q8_BLOCK).zip(s.iter()).zip(sums.iter_mut()) {
        let t: i32 = qb.iter().map(|&v| i32::from(v)).sum();
        *sum = t as f32 * d;
    }
}
