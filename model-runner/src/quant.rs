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
#![allow(unsafe_code)]

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

/// Converts an IEEE half-precision value to f32.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise the mantissa.
            let mut e = 127 - 15 + 1;
            let mut m = mant;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Dequantizes `out.len()` elements of type `kind` from `bytes` into `out`.
/// `bytes` must hold exactly those elements (the caller sliced one row).
pub fn dequantize(kind: TensorType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let (per_block, block_bytes) = kind.block_layout().ok_or(QuantError::Unsupported(kind))?;
    let (per_block, block_bytes) = (per_block as usize, block_bytes as usize);
    if !out.len().is_multiple_of(per_block) || bytes.len() != out.len() / per_block * block_bytes {
        return Err(QuantError::BadRowLength(out.len()));
    }
    for (b, y) in bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(per_block))
    {
        match kind {
            TensorType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            TensorType::F16 => y[0] = f16_at(b, 0),
            TensorType::Q4_0 => {
                let d = f16_at(b, 0);
                for i in 0..16 {
                    y[i] = (f32::from(b[2 + i] & 0xf) - 8.0) * d;
                    y[i + 16] = (f32::from(b[2 + i] >> 4) - 8.0) * d;
                }
            }
            TensorType::Q4_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for i in 0..16 {
                    y[i] = f32::from(b[4 + i] & 0xf) * d + m;
                    y[i + 16] = f32::from(b[4 + i] >> 4) * d + m;
                }
            }
            TensorType::Q8_0 => {
                let d = f16_at(b, 0);
                for i in 0..32 {
                    y[i] = f32::from(b[2 + i] as i8) * d;
                }
            }
            TensorType::Q4K => dequantize_q4k(b, y),
            TensorType::Q6K => dequantize_q6k(b, y),
            TensorType::Other(_) => return Err(QuantError::Unsupported(kind)),
        }
    }
    Ok(())
}

/// Q4_K: 256 elements in 8 groups of 32, each group with a 6-bit scale and a 6-bit minimum
/// packed into 12 bytes, under one f16 super-scale and one f16 super-minimum.
fn dequantize_q4k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    let scale_min = |j: usize| -> (f32, f32) {
        let (sc, m) = if j < 4 {
            (scales[j] & 63, scales[j + 4] & 63)
        } else {
            (
                (scales[j + 4] & 0xf) | ((scales[j - 4] >> 6) << 4),
                (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
            )
        };
        (f32::from(sc), f32::from(m))
    };
    for chunk in 0..4 {
        let (s1, m1) = scale_min(2 * chunk);
        let (s2, m2) = scale_min(2 * chunk + 1);
        let q = &qs[32 * chunk..32 * chunk + 32];
        let out = &mut y[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            out[l] = d * s1 * f32::from(q[l] & 0xf) - dmin * m1;
            out[l + 32] = d * s2 * f32::from(q[l] >> 4) - dmin * m2;
        }
    }
}

/// Q6_K: 256 elements of 6 bits (low 4 bits in `ql`, high 2 in `qh`), 16 signed 8-bit
/// scales, one f16 super-scale at the end.
fn dequantize_q6k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let out = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0xf) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |k: usize| f32::from(sc[k] as i8);
            out[l] = d * s(is) * q1 as f32;
            out[l + 32] = d * s(is + 2) * q2 as f32;
            out[l + 64] = d * s(is + 4) * q3 as f32;
            out[l + 96] = d * s(is + 6) * q4 as f32;
        }
    }
}

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
    fn row_sums(&self, r: usize) -> &[f32] {
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

    fn row(&self, r: usize) -> Q4Row<'_> {
        let n = self.cols / Q8_BLOCK;
        Q4Row {
            nibbles: &self.nibbles[r * n * 16..(r + 1) * n * 16],
            scales: &self.scales[r * n..(r + 1) * n],
            mins: &self.mins[r * n..(r + 1) * n],
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Q4Row<'a> {
    nibbles: &'a [u8],
    scales: &'a [f32],
    mins: &'a [f32],
}

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

/// The dot-product kernel chosen for this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    /// AVX2 + FMA: integer dots with `maddubs` + `madd`.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 + FMA + AVX-VNNI: integer dots with one `vpdpbusd` per block.
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
}

impl Kernel {
    /// The fastest kernel this CPU runs, detected at run time. `CLOISTER_MATMUL_KERNEL`
    /// (`portable`, `avx2`) forces a slower one (to compare, or to rule a SIMD kernel out).
    pub fn detect() -> Kernel {
        let forced = std::env::var("CLOISTER_MATMUL_KERNEL").unwrap_or_default();
        if forced == "portable" {
            return Kernel::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                if forced != "avx2" && std::is_x86_feature_detected!("avxvnni") {
                    return Kernel::AvxVnni;
                }
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Every kernel this CPU can run, the portable one first (for tests and comparisons).
    pub fn available() -> Vec<Kernel> {
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                all.push(Kernel::Avx2);
                if std::is_x86_feature_detected!("avxvnni") {
                    all.push(Kernel::AvxVnni);
                }
            }
        }
        all
    }
}

/// Dot products of weight rows `rows` with every token row of `x`, written transposed:
/// `out[(j - rows.start) * x.rows + t] = dot(w row j, x row t)`. Threads each take a
/// disjoint range of rows, so each owns a contiguous piece of `out`.
pub fn matmul_rows(
    kernel: Kernel,
    w: &Weights,
    x: &Q8Matrix,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    match w {
        Weights::Q8(w) => matmul_rows_with(
            x,
            rows,
            out,
            |j| w.row(j),
            |r, xs, _| q8_tile(kernel, r, xs),
        ),
        Weights::Q4(w) => matmul_rows_with(
            x,
            rows,
            out,
            |j| w.row(j),
            |r, xs, ss| q4_tile(kernel, r, xs, ss),
        ),
    }
}

type XRow<'a> = (&'a [i8], &'a [f32]);

/// Results of a tile of four weight rows by `T` tokens: `[token][row]`.
type Tile<const T: usize> = [[f32; 4]; T];

/// The loop shared by every layout: four weight rows at a time, so each activation block is
/// loaded once for four dots, and two tokens at a time, so each (unpacked) weight block
/// serves two activations. A lone token goes through the same kernel with `T = 1`, a lone
/// row as four copies of itself: every (row, token) gets the same operations in the same
/// order whatever the tile, so results are equal bit for bit whatever the batch.
fn matmul_rows_with<R: Copy>(
    x: &Q8Matrix,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
    row: impl Fn(usize) -> R,
    tile: impl Fn([R; 4], &[XRow], &[&[f32]]) -> Tile<2>,
) {
    let tokens = x.rows;
    let empty: &[f32] = &[];
    let sums = |t: usize| {
        if x.block_sums.is_empty() {
            empty
        } else {
            x.row_sums(t)
        }
    };
    let mut j = rows.start;
    while j < rows.end {
        let base = (j - rows.start) * tokens;
        let n = (rows.end - j).min(4);
        let w = [0, 1, 2, 3].map(|k| row(j + k.min(n - 1)));
        let mut t = 0;
        while t + 2 <= tokens {
            let d = tile(w, &[x.row(t), x.row(t + 1)], &[sums(t), sums(t + 1)]);
            for (u, du) in d.into_iter().enumerate() {
                for (k, v) in du.into_iter().take(n).enumerate() {
                    out[base + k * tokens + t + u] = v;
                }
            }
            t += 2;
        }
        if t < tokens {
            let d = tile(w, &[x.row(t)], &[sums(t)])[0];
            for (k, v) in d.into_iter().take(n).enumerate() {
                out[base + k * tokens + t] = v;
            }
        }
        j += n;
    }
}

/// Four 8-bit weight rows by one or two tokens (`xs.len()`); unused results are zero.
fn q8_tile(kernel: Kernel, w: [XRow; 4], xs: &[XRow]) -> Tile<2> {
    let mut out = [[0.0; 4]; 2];
    match (kernel, xs) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Kernel::Avx2 is only constructed after detecting AVX2 and FMA.
        (Kernel::Avx2, &[a]) => out[0] = unsafe { avx2::q8_tile::<1>(w, [a]) }[0],
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Kernel::Avx2, &[a, b]) => out = unsafe { avx2::q8_tile::<2>(w, [a, b]) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Kernel::AvxVnni is only constructed after detecting AVX2, FMA and AVX-VNNI.
        (Kernel::AvxVnni, &[a]) => out[0] = unsafe { vnni::q8_tile::<1>(w, [a]) }[0],
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Kernel::AvxVnni, &[a, b]) => out = unsafe { vnni::q8_tile::<2>(w, [a, b]) },
        _ => {
            for (u, &x) in xs.iter().enumerate() {
                out[u] = w.map(|r| dot_q8_portable(r, x));
            }
        }
    }
    out
}

/// Four 4-bit weight rows by one or two tokens (`xs.len()`); unused results are zero.
fn q4_tile(kernel: Kernel, w: [Q4Row; 4], xs: &[XRow], sums: &[&[f32]]) -> Tile<2> {
    let mut out = [[0.0; 4]; 2];
    match (kernel, xs, sums) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Kernel::Avx2 is only constructed after detecting AVX2 and FMA.
        (Kernel::Avx2, &[a], &[s]) => out[0] = unsafe { avx2::q4_tile::<1>(w, [a], [s]) }[0],
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Kernel::Avx2, &[a, b], &[s, t]) => out = unsafe { avx2::q4_tile::<2>(w, [a, b], [s, t]) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Kernel::AvxVnni is only constructed after detecting AVX2, FMA and AVX-VNNI.
        (Kernel::AvxVnni, &[a], &[s]) => out[0] = unsafe { vnni::q4_tile::<1>(w, [a], [s]) }[0],
        #[cfg(target_arch = "x86_64")]
        (Kernel::AvxVnni, &[a, b], &[s, t]) => {
            // SAFETY: as above.
            out = unsafe { vnni::q4_tile::<2>(w, [a, b], [s, t]) }
        }
        _ => {
            for (u, (&x, &s)) in xs.iter().zip(sums).enumerate() {
                out[u] = w.map(|r| dot_q4_portable(r, x, s));
            }
        }
    }
    out
}

/// One dot product of two 8-bit rows (the same result as inside a tile).
pub fn dot(kernel: Kernel, a: XRow, b: XRow) -> f32 {
    q8_tile(kernel, [a; 4], &[b])[0][0]
}

/// sum over blocks of (scale_w * scale_x * sum(q_w * q_x)) + sum over blocks of
/// (min_w * sum(x)).
fn dot_q4_portable(a: Q4Row, b: XRow, sums: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (i, nib) in a.nibbles.chunks_exact(16).enumerate() {
        let x = &b.0[i * Q8_BLOCK..(i + 1) * Q8_BLOCK];
        let mut s = 0i32;
        for (k, &byte) in nib.iter().enumerate() {
            s += i32::from(byte & 0xf) * i32::from(x[k])
                + i32::from(byte >> 4) * i32::from(x[k + 16]);
        }
        acc += s as f32 * (a.scales[i] * b.1[i]);
    }
    acc + dot_f32_portable(a.mins, sums)
}

fn dot_q8_portable(a: XRow, b: XRow) -> f32 {
    let mut acc = 0.0f32;
    for ((qa, qb), (&sa, &sb)) in
        a.0.chunks_exact(Q8_BLOCK)
            .zip(b.0.chunks_exact(Q8_BLOCK))
            .zip(a.1.iter().zip(b.1))
    {
        let s: i32 = qa
            .iter()
            .zip(qb)
            .map(|(&x, &y)| i32::from(x) * i32::from(y))
            .sum();
        acc += s as f32 * (sa * sb);
    }
    acc
}

fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `sum(a[i] * b[i])` in f32 (attention scores).
pub fn dot_f32(kernel: Kernel, a: &[f32], b: &[f32]) -> f32 {
    match kernel {
        Kernel::Portable => dot_f32_portable(a, b),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: both SIMD kernels are only constructed after detecting AVX2 and FMA.
        Kernel::Avx2 | Kernel::AvxVnni => unsafe { avx2::dot_f32(a, b) },
    }
}

/// `y += alpha * x` in f32 (attention's weighted values).
pub fn axpy_f32(kernel: Kernel, alpha: f32, x: &[f32], y: &mut [f32]) {
    match kernel {
        Kernel::Portable => y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: both SIMD kernels are only constructed after detecting AVX2 and FMA.
        Kernel::Avx2 | Kernel::AvxVnni => unsafe { avx2::axpy_f32(alpha, x, y) },
    }
}

/// The x86 kernels, written once and compiled for two feature sets: `$idot` is the integer
/// dot of 32 unsigned by 32 signed bytes into eight i32 lanes.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_kernels {
    ($module:ident, $features:literal, |$u:ident, $s:ident| $idot:expr) => {
        #[allow(dead_code)] // each copy uses only some of the helpers
        mod $module {
            //! Every function here requires the module's CPU features; callers check.
            use std::arch::x86_64::*;

            use super::{Q4Row, Q8_BLOCK, Tile, XRow};

            #[inline]
            #[target_feature(enable = $features)]
            fn idot($u: __m256i, $s: __m256i) -> __m256i {
                $idot
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub(super) fn hsum(v: __m256) -> f32 {
                let lo = _mm256_castps256_ps128(v);
                let hi = _mm256_extractf128_ps(v, 1);
                let s = _mm_add_ps(lo, hi);
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                _mm_cvtss_f32(s)
            }

            /// 32 bytes at `p`.
            ///
            /// # Safety
            /// `p` points at 32 readable bytes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load32(p: *const i8) -> __m256i {
                // SAFETY: per this function's contract.
                unsafe { _mm256_loadu_si256(p as *const __m256i) }
            }

            /// The 32 unsigned nibbles of a 4-bit block (elements 0..16 from the low
            /// nibbles, 16..32 from the high ones), one per byte.
            ///
            /// # Safety
            /// `p` points at 16 readable bytes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn unpack_nibbles(p: *const u8) -> __m256i {
                // SAFETY: per this function's contract.
                let packed = unsafe { _mm_loadu_si128(p as *const __m128i) };
                let low = _mm_set1_epi8(0x0f);
                let lo = _mm_and_si128(packed, low);
                let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
                _mm256_set_m128i(hi, lo)
            }

            /// `sum(a[i] * b[i])` over f32, eight lanes then a scalar tail.
            #[target_feature(enable = $features)]
            pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
                let n = a.len().min(b.len());
                let mut acc = _mm256_setzero_ps();
                let mut i = 0;
                while i + 8 <= n {
                    // SAFETY: i + 8 <= n, the length of both slices.
                    let (x, y) = unsafe {
                        (
                            _mm256_loadu_ps(a.as_ptr().add(i)),
                            _mm256_loadu_ps(b.as_ptr().add(i)),
                        )
                    };
                    acc = _mm256_fmadd_ps(x, y, acc);
                    i += 8;
                }
                let mut s = hsum(acc);
                while i < n {
                    s += a[i] * b[i];
                    i += 1;
                }
                s
            }

            /// `y += alpha * x`.
            #[target_feature(enable = $features)]
            pub(super) fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
                let n = x.len().min(y.len());
                let a = _mm256_set1_ps(alpha);
                let mut i = 0;
                while i + 8 <= n {
                    // SAFETY: i + 8 <= n, the length of both slices.
                    unsafe {
                        let v = _mm256_loadu_ps(x.as_ptr().add(i));
                        let o = _mm256_loadu_ps(y.as_ptr().add(i));
                        _mm256_storeu_ps(y.as_mut_ptr().add(i), _mm256_fmadd_ps(a, v, o));
                    }
                    i += 8;
                }
                while i < n {
                    y[i] += alpha * x[i];
                    i += 1;
                }
            }

            /// Four 8-bit rows by `T` tokens. `maddubs`/`vpdpbusd` take unsigned x signed,
            /// so the weight's sign moves onto the activation; values lie in [-127, 127], so
            /// pairwise i16 sums never saturate.
            ///
            /// # Safety
            /// Every row holds as many blocks as the tokens' rows.
            #[target_feature(enable = $features)]
            #[allow(clippy::needless_range_loop)] // k and u index parallel arrays
            pub(super) unsafe fn q8_tile<const T: usize>(w: [XRow; 4], x: [XRow; T]) -> Tile<T> {
                let blocks = x[0].1.len();
                let mut acc = [[_mm256_setzero_ps(); 4]; T];
                for i in 0..blocks {
                    let mut xv = [_mm256_setzero_si256(); T];
                    let mut xs = [_mm256_setzero_ps(); T];
                    for u in 0..T {
                        // SAFETY: every row holds `blocks * 32` bytes.
                        xv[u] = unsafe { load32(x[u].0.as_ptr().add(i * Q8_BLOCK)) };
                        xs[u] = _mm256_set1_ps(x[u].1[i]);
                    }
                    for k in 0..4 {
                        // SAFETY: as above.
                        let wv = unsafe { load32(w[k].0.as_ptr().add(i * Q8_BLOCK)) };
                        let ws = _mm256_set1_ps(w[k].1[i]);
                        let wabs = _mm256_sign_epi8(wv, wv);
                        for u in 0..T {
                            let p = _mm256_cvtepi32_ps(idot(wabs, _mm256_sign_epi8(xv[u], wv)));
                            acc[u][k] = _mm256_fmadd_ps(p, _mm256_mul_ps(ws, xs[u]), acc[u][k]);
                        }
                    }
                }
                let mut out = [[0.0f32; 4]; T];
                for u in 0..T {
                    for k in 0..4 {
                        out[u][k] = hsum(acc[u][k]);
                    }
                }
                out
            }

            /// Four 4-bit rows by `T` tokens: each weight block is unpacked once for every
            /// token; the weights' minimum enters through the activations' block sums.
            ///
            /// # Safety
            /// Every row holds as many blocks as the tokens' rows; `sums` one per block.
            #[target_feature(enable = $features)]
            #[allow(clippy::needless_range_loop)] // k and u index parallel arrays
            pub(super) unsafe fn q4_tile<const T: usize>(
                w: [Q4Row; 4],
                x: [XRow; T],
                sums: [&[f32]; T],
            ) -> Tile<T> {
                let blocks = x[0].1.len();
                let mut acc = [[_mm256_setzero_ps(); 4]; T];
                for i in 0..blocks {
                    let mut xv = [_mm256_setzero_si256(); T];
                    let mut xs = [_mm256_setzero_ps(); T];
                    for u in 0..T {
                        // SAFETY: every activation row holds `blocks * 32` bytes.
                        xv[u] = unsafe { load32(x[u].0.as_ptr().add(i * Q8_BLOCK)) };
                        xs[u] = _mm256_set1_ps(x[u].1[i]);
                    }
                    for k in 0..4 {
                        // SAFETY: every 4-bit row holds `blocks * 16` bytes.
                        let wv = unsafe { unpack_nibbles(w[k].nibbles.as_ptr().add(i * 16)) };
                        let ws = _mm256_set1_ps(w[k].scales[i]);
                        for u in 0..T {
                            let p = _mm256_cvtepi32_ps(idot(wv, xv[u]));
                            acc[u][k] = _mm256_fmadd_ps(p, _mm256_mul_ps(ws, xs[u]), acc[u][k]);
                        }
                    }
                }
                let mut out = [[0.0f32; 4]; T];
                for u in 0..T {
                    for k in 0..4 {
                        out[u][k] = hsum(acc[u][k]) + dot_f32(w[k].mins, sums[u]);
                    }
                }
                out
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
x86_kernels!(avx2, "avx2,fma", |u, s| _mm256_madd_epi16(
    _mm256_maddubs_epi16(u, s),
    _mm256_set1_epi16(1)
));
#[cfg(target_arch = "x86_64")]
x86_kernels!(vnni, "avx2,fma,avxvnni", |u, s| _mm256_dpbusd_avx_epi32(
    _mm256_setzero_si256(),
    u,
    s
));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn q4_1_dequantizes_with_scale_and_minimum() {
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&0x4000u16.to_le_bytes()); // d = 2
        b[2..4].copy_from_slice(&0xbc00u16.to_le_bytes()); // m = -1
        b[4] = 0x31; // element 0 = 1, element 16 = 3
        let mut y = [0.0f32; 32];
        dequantize(TensorType::Q4_1, &b, &mut y).unwrap();
        assert_eq!(y[0], 1.0);
        assert_eq!(y[16], 5.0);
        assert_eq!(y[1], -1.0);
    }

    #[test]
    fn a_wrong_length_is_an_error() {
        let mut y = [0.0f32; 32];
        assert_eq!(
            dequantize(TensorType::Q8_0, &[0u8; 33], &mut y),
            Err(QuantError::BadRowLength(32))
        );
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn q8_dot_is_close_to_the_float_dot_on_every_kernel() {
        let cols = 576;
        let a = pseudo_random(cols * 5, 1);
        let b = pseudo_random(cols, 2);
        let mut w = Q8Matrix::with_shape(5, cols).unwrap();
        w.quantize_from(&a, 5);
        let mut x = Q8Matrix::with_shape(1, cols).unwrap();
        x.quantize_from(&b, 1);
        for kernel in Kernel::available() {
            let mut out = vec![0.0; 5];
            matmul_rows(kernel, &Weights::Q8(w.clone()), &x, 0..5, &mut out);
            let mut x3 = Q8Matrix::with_shape(3, cols).unwrap();
            let three: Vec<f32> =
                [pseudo_random(cols, 4), b.clone(), pseudo_random(cols, 6)].concat();
            x3.quantize_from(&three, 3);
            let mut out3 = vec![0.0; 15];
            matmul_rows(kernel, &Weights::Q8(w.clone()), &x3, 0..5, &mut out3);
            for r in 0..5 {
                assert_eq!(
                    out3[r * 3 + 1],
                    out[r],
                    "{kernel:?}: batching changed row {r}"
                );
                let exact: f32 = a[r * cols..(r + 1) * cols]
                    .iter()
                    .zip(&b)
                    .map(|(p, q)| p * q)
                    .sum();
                assert!(
                    (out[r] - exact).abs() < 0.05,
                    "{kernel:?} row {r}: {} vs {exact}",
                    out[r]
                );
                // The 4-row path and the 1-row path agree exactly.
                assert_eq!(out[r], dot(kernel, w.row(r), x.row(0)));
            }
        }
    }

    #[test]
    fn q4_rows_match_their_dequantized_values_on_every_kernel() {
        let (rows, cols) = (6, 64);
        let mut gguf = Vec::new();
        let mut state = 7u32;
        for _ in 0..rows * cols / 32 {
            gguf.extend_from_slice(&0x2c00u16.to_le_bytes()); // d = 1/16
            gguf.extend_from_slice(&0xb800u16.to_le_bytes()); // m = -0.5
            for _ in 0..16 {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                gguf.push((state >> 16) as u8);
            }
        }
        let mut q4 = Q4Matrix::with_shape(rows, cols).unwrap();
        let row_bytes = cols / 32 * 20;
        for r in 0..rows {
            q4.set_row_from_gguf(
                r,
                TensorType::Q4_1,
                &gguf[r * row_bytes..(r + 1) * row_bytes],
            )
            .unwrap();
        }
        let w = Weights::Q4(q4);
        let xf = pseudo_random(cols, 3);
        let mut x = Q8Matrix::with_shape(1, cols).unwrap();
        x.quantize_from(&xf, 1);
        // Three tokens: a pair and a remainder must give what one token alone gives.
        let mut x3 = Q8Matrix::with_shape(3, cols).unwrap();
        let three: Vec<f32> = [pseudo_random(cols, 9), xf.clone(), pseudo_random(cols, 5)].concat();
        x3.quantize_from(&three, 3);
        for kernel in Kernel::available() {
            let mut out = vec![0.0; rows];
            matmul_rows(kernel, &w, &x, 0..rows, &mut out);
            let mut out3 = vec![0.0; rows * 3];
            matmul_rows(kernel, &w, &x3, 0..rows, &mut out3);
            for r in 0..rows {
                assert_eq!(
                    out3[r * 3 + 1],
                    out[r],
                    "{kernel:?}: batching changed row {r}"
                );
                let mut wf = vec![0.0; cols];
                w.row_f32(r, &mut wf);
                let mut expect = vec![0.0; cols];
                dequantize(
                    TensorType::Q4_1,
                    &gguf[r * row_bytes..(r + 1) * row_bytes],
                    &mut expect,
                )
                .unwrap();
                assert_eq!(wf, expect, "row {r} dequantizes as GGUF does");
                let exact: f32 = wf.iter().zip(&xf).map(|(a, b)| a * b).sum();
                assert!(
                    (out[r] - exact).abs() < 0.05,
                    "{kernel:?} row {r}: {} vs {exact}",
                    out[r]
                );
            }
        }
    }
    /// Random 4-bit rows straight from GGUF Q4_1 bytes (random scales and minimums too).
    fn random_q4(rows: usize, cols: usize, seed: u32) -> Q4Matrix {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 8) as u16
        };
        let mut m = Q4Matrix::with_shape(rows, cols).unwrap();
        for r in 0..rows {
            let mut gguf = Vec::new();
            for _ in 0..cols / 32 {
                // Exponent bits kept small: scales in about [2^-8, 2^-4], either sign for m.
                gguf.extend_from_slice(&(0x1c00 + next() % 0x1000).to_le_bytes());
                gguf.extend_from_slice(
                    &((0x1c00 + next() % 0x1000) | (next() & 0x8000)).to_le_bytes(),
                );
                for _ in 0..16 {
                    gguf.push(next() as u8);
                }
            }
            m.set_row_from_gguf(r, TensorType::Q4_1, &gguf).unwrap();
        }
        m
    }

    #[test]
    fn simd_kernels_equal_the_portable_one_on_random_blocks() {
        let kernels = Kernel::available();
        eprintln!("kernels on this CPU: {kernels:?}");
        for (case, &(rows, cols, tokens)) in [
            (9, 576, 5),
            (4, 1536, 2),
            (7, 64, 1),
            (1, 96, 3),
            (13, 576, 8),
        ]
        .iter()
        .enumerate()
        {
            let seed = case as u32 * 17;
            // Activations with a wide range of magnitudes across blocks.
            let xf: Vec<f32> = pseudo_random(tokens * cols, seed + 1)
                .iter()
                .enumerate()
                .map(|(i, v)| v * (1 + (i / 32) % 7) as f32 * 3.0)
                .collect();
            let mut x = Q8Matrix::with_shape(tokens, cols).unwrap();
            x.quantize_from(&xf, tokens);
            let mut w8 = Q8Matrix::with_shape(rows, cols).unwrap();
            w8.quantize_from(&pseudo_random(rows * cols, seed + 2), rows);
            let weights = [
                Weights::Q8(w8),
                Weights::Q4(random_q4(rows, cols, seed + 3)),
            ];
            for w in &weights {
                let mut expect = vec![0.0; rows * tokens];
                matmul_rows(Kernel::Portable, w, &x, 0..rows, &mut expect);
                for &kernel in &kernels[1..] {
                    let mut got = vec![f32::NAN; rows * tokens];
                    matmul_rows(kernel, w, &x, 0..rows, &mut got);
                    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
                        // Same integers; only the order of the float additions differs.
                        assert!(
                            (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                            "{kernel:?} case {case} element {i}: {g} vs portable {e}"
                        );
                    }
                    // A sub-range of rows gives the same values as the whole matrix.
                    if rows > 5 {
                        let mut part = vec![0.0; (rows - 5) * tokens];
                        matmul_rows(kernel, w, &x, 5..rows, &mut part);
                        assert_eq!(part, got[5 * tokens..], "{kernel:?} case {case}");
                    }
                }
            }
        }
        for &kernel in &kernels[1..] {
            for n in [64, 61, 7] {
                let a = pseudo_random(n, 11);
                let b = pseudo_random(n, 12);
                let d = dot_f32(kernel, &a, &b);
                let e = dot_f32(Kernel::Portable, &a, &b);
                assert!((d - e).abs() < 1e-5, "{kernel:?} dot_f32 {n}: {d} vs {e}");
                let mut y = pseudo_random(n, 13);
                let mut y0 = y.clone();
                axpy_f32(kernel, 0.3, &a, &mut y);
                axpy_f32(Kernel::Portable, 0.3, &a, &mut y0);
                for (p, q) in y.iter().zip(&y0) {
                    assert!((p - q).abs() < 1e-6, "{kernel:?} axpy {n}");
                }
            }
        }
    }
}
