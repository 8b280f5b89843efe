//! QUIC variable-length integers (RFC 9000 section 16), the chunk length prefix of chunked
//! Oblivious HTTP. Decoding never panics: it reports "need more bytes" or a value.

/// The largest value a varint can hold (62 bits).
pub(crate) const VARINT_MAX: u64 = (1 << 62) - 1;

/// Appends the shortest encoding of `value` (which must be at most [`VARINT_MAX`]; larger
/// values are clamped, and no caller here passes one).
pub(crate) fn encode(value: u64, out: &mut Vec<u8>) {
    let value = value.min(VARINT_MAX);
    if value < (1 << 6) {
        out.push(value as u8);
    } else if value < (1 << 14) {
        out.extend_from_slice(&((value as u16) | 0x4000).to_be_bytes());
    } else if value < (1 << 30) {
        out.extend_from_slice(&((value as u32) | 0x8000_0000).to_be_bytes());
    } else {
        out.extend_from_slice(&(value | 0xc000_0000_0000_0000).to_be_bytes());
    }
}

/// Decodes one varint at the start of `bytes`: `Some((value, bytes used))`, or `None` when
/// `bytes` is too short to hold it yet.
pub(crate) fn decode(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let length = 1usize << (first >> 6);
    let encoded = bytes.get(..length)?;
    let mut value = u64::from(first & 0x3f);
    for byte in &encoded[1..] {
        value = (value << 8) | u64::from(*byte);
    }
    Some((value, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_every_width_boundary() {
        for value in [0, 63, 64, 16383, 16384, (1 << 30) - 1, 1 << 30, VARINT_MAX] {
            let mut out = Vec::new();
            encode(value, &mut out);
            assert_eq!(decode(&out), Some((value, out.len())), "value {value}");
            assert_eq!(decode(&out[..out.len() - 1]), None, "truncated {value}");
        }
    }

    #[test]
    fn decodes_rfc9000_examples() {
        // RFC 9000 appendix A.1.
        assert_eq!(decode(&[0x25]), Some((37, 1)));
        assert_eq!(decode(&[0x40, 0x25]), Some((37, 2)));
        assert_eq!(decode(&[0x7b, 0xbd]), Some((15293, 2)));
        assert_eq!(decode(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(
            decode(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(decode(&[]), None);
    }
}
