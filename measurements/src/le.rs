//! Little-endian integer fields read at an offset of outside bytes, shared by the firmware
//! (TDVF) and kernel (PE) parsers.
//!
//! A field past the end, or at an offset so large that its end overflows, is `None`: these
//! readers must never panic, whatever the offset. Pure; never I/O.

/// The `N` bytes at `at`, if they are all inside `b`.
fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    array(b, at).map(u16::from_le_bytes)
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    array(b, at).map(u32::from_le_bytes)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    array(b, at).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_little_endian_and_bounded() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(u16_at(&b, 0), Some(0x0201));
        assert_eq!(u32_at(&b, 1), Some(0x0504_0302));
        assert_eq!(u64_at(&b, 1), Some(0x0908_0706_0504_0302));
        // The last whole field fits; one byte further does not.
        assert_eq!(u16_at(&b, 7), Some(0x0908));
        assert_eq!(u16_at(&b, 8), None);
        assert_eq!(u64_at(&b, 2), None);
        assert_eq!(u32_at(&[], 0), None);
        // Offsets whose end overflows are refused, not a panic.
        for at in [usize::MAX, usize::MAX - 1, usize::MAX - 7] {
            assert_eq!(u16_at(&b, at), None);
            assert_eq!(u32_at(&b, at), None);
            assert_eq!(u64_at(&b, at), None);
        }
    }
}
