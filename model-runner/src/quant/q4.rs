//! 4-bit weight rows kept as GGUF's Q4_0 and Q4_1 store them, with f32 scales and minimums.

use super::dequant::f16_at;
use super::{Q8_BLOCK, QuantError};
use crate::gguf::TensorType;

/// Rows of 4-bit values as GGUF's Q4_0 and Q4_1 store them (byte i of a block holds
/// element i in its low nibble and element i + 16 in its high one), with the block's scale
/// and minimum as f32: value = q * scale + min. Kept as loaded: no requantization, and half
/// the memory traffic of the 8-bit layout.
#[derive(Debug, Clone, Default)]
pub struct Q4Matrix {
    pub rows: usize,
    pub cols: usize,
    /// `rows * cols / 2` bytes.
    pub nibbles: Vec<u8>,
    pub scales: Vec<f32>,
    pub mins: Vec<f32>,
}

impl Q4Matrix {
    /// An empty matrix of `rows` x `cols`.
    pub fn with_shape(rows: usize, cols: usize) -> Result<Q4Matrix, QuantError> {
        if !cols.is_multiple_of(Q8_BLOCK) {
            return Err(QuantError::BadRowLength(cols));
        }
        Ok(Q4Matrix {
            rows,
            cols,
            nibbles: vec![0; rows * cols / 2],
            scales: vec![0.0; rows * cols / Q8_BLOCK],
            mins: vec![0.0; rows * cols / Q8_BLOCK],
        })
    }

    /// Copies row `row` from GGUF Q4_0 or Q4_1 blocks.
    pub fn set_row_from_gguf(
        &mut self,
        row: usize,
        kind: TensorType,
        bytes: &[u8],
    ) -> Result<(), QuantError> {
        let blocks = self.cols / Q8_BLOCK;
        let (block_bytes, data_at) = match kind {
            TensorType::Q4_0 => (18, 2),
            TensorType::Q4_1 => (20, 4),
            other => return Err(QuantError::Unsupported(other)),
        };
        if bytes.len() != blocks * block_bytes {
            return Err(QuantError::BadRowLength(self.cols));
        }
        for (i, b) in bytes.chunks_exact(block_bytes).enumerate() {
            let at = row * blocks + i;
            let d = f16_at(b, 0);
            self.scales[at] = d;
            self.mins[at] = if kind == TensorType::Q4_1 {
                f16_at(b, 2)
            } else {
                -8.0 * d
            };
            self.nibbles[at * 16..at * 16 + 16].copy_from_slice(&b[data_at..data_at + 16]);
        }
        Ok(())
    }

    pub(super) fn row(&self, r: usize) -> Q4Row<'_> {
        let n = self.cols / Q8_BLOCK;
        Q4Row {
            nibbles: &self.nibbles[r * n * 16..(r + 1) * n * 16],
            scales: &self.scales[r * n..(r + 1) * n],
            mins: &self.mins[r * n..(r + 1) * n],
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Q4Row<'a> {
    pub(super) nibbles: &'a [u8],
    pub(super) scales: &'a [f32],
    pub(super) mins: &'a [f32],
}
