//! GGUF's quantized block formats turned into f32, for loading and for the reference
//! paths: the layouts as GGUF stores them, read byte by byte with no `unsafe`.

use super::QuantError;
use crate::gguf::TensorType;

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

pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
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
}
