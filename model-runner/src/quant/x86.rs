//! The x86 kernels (AVX2 + FMA, and AVX-VNNI), the only `unsafe` code of the weight
//! formats: every function requires its module's CPU features, which callers check through
//! [`Kernel`](super::Kernel).
#![allow(unsafe_code)]

/// The x86 kernels, written once and compiled for two feature sets: `$idot` is the integer
/// dot of 32 unsigned by 32 signed bytes into eight i32 lanes.
macro_rules! x86_kernels {
    ($module:ident, $features:literal, |$u:ident, $s:ident| $idot:expr) => {
        #[allow(dead_code)] // each copy uses only some of the helpers
        pub(super) mod $module {
            //! Every function here requires the module's CPU features; callers check.
            use std::arch::x86_64::*;

            use crate::quant::Q8_BLOCK;
            use crate::quant::matmul::{Tile, XRow};
            use crate::quant::q4::Q4Row;

            #[inline]
            #[target_feature(enable = $features)]
            fn idot($u: __m256i, $s: __m256i) -> __m256i {
                $idot
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub(in crate::quant) fn hsum(v: __m256) -> f32 {
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
            pub(in crate::quant) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
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
            pub(in crate::quant) fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
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
            pub(in crate::quant) unsafe fn q8_tile<const T: usize>(
                w: [XRow; 4],
                x: [XRow; T],
            ) -> Tile<T> {
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
            pub(in crate::quant) unsafe fn q4_tile<const T: usize>(
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

x86_kernels!(avx2, "avx2,fma", |u, s| _mm256_madd_epi16(
    _mm256_maddubs_epi16(u, s),
    _mm256_set1_epi16(1)
));
x86_kernels!(vnni, "avx2,fma,avxvnni", |u, s| _mm256_dpbusd_avx_epi32(
    _mm256_setzero_si256(),
    u,
    s
));
