//! Matrix products and dots over the engine's layouts: the tiling shared by every kernel,
//! the portable kernel, and the dispatch to the x86 ones.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use super::x86::{avx2, vnni};
use super::{Kernel, Q8_BLOCK, Q8Matrix, Weights, q4::Q4Row};

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

pub(super) type XRow<'a> = (&'a [i8], &'a [f32]);

/// Results of a tile of four weight rows by `T` tokens: `[token][row]`.
pub(super) type Tile<const T: usize> = [[f32; 4]; T];

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::TensorType;
    use crate::quant::{Q4Matrix, dequantize};

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
