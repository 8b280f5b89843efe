//! The kernel's PE/COFF Authenticode SHA-384, as edk2 computes it when it measures the
//! kernel it boots (DxeTpm2MeasureBootLib): headers without the checksum and the
//! certificate directory entry, then the sections sorted by file offset, then any trailing
//! data before the certificate table, with no padding.
//!
//! Also the setup-header patch QEMU before 10.0 applied to the kernel before edk2 saw it.
//!
//! Bytes in, digest out; never I/O, never a panic on a malformed file.

use sha2::{Digest, Sha384};

use crate::register::Digest48;

/// Largest kernel we hash.
pub const KERNEL_SIZE_MAX_BYTES: usize = 256 * 1024 * 1024;
/// Most sections a PE file may have (the PE format's own limit is 96 for images).
const SECTION_COUNT_MAX: usize = 96;
const SECURITY_DIRECTORY_INDEX: usize = 4;

/// Why a kernel file is not a PE image edk2 would measure.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeError {
    #[error("the file is {0} bytes, more than the {KERNEL_SIZE_MAX_BYTES} we accept")]
    TooLarge(usize),
    #[error("not a PE image: {0}")]
    NotPe(&'static str),
    #[error("malformed PE image: {0}")]
    Malformed(&'static str),
}

const FIELD_PAST_END: PeError = PeError::Malformed("a header field is past the end of the file");

fn u16_at(b: &[u8], at: usize) -> Result<u16, PeError> {
    crate::le::u16_at(b, at).ok_or(FIELD_PAST_END)
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, PeError> {
    crate::le::u32_at(b, at).ok_or(FIELD_PAST_END)
}
fn range(b: &[u8], start: usize, end: usize) -> Result<&[u8], PeError> {
    b.get(start..end)
        .ok_or(PeError::Malformed("a hashed range is outside the file"))
}

/// The Authenticode SHA-384 of a PE image, with edk2's rules.
pub fn authenticode_sha384(image: &[u8]) -> Result<Digest48, PeError> {
    if image.len() > KERNEL_SIZE_MAX_BYTES {
        return Err(PeError::TooLarge(image.len()));
    }
    if image.get(0..2) != Some(b"MZ") {
        return Err(PeError::NotPe("no MZ header"));
    }
    let pe = u32_at(image, 0x3c)? as usize;
    if image.get(pe..pe.saturating_add(4)) != Some(b"PE\0\0") {
        return Err(PeError::NotPe("no PE signature"));
    }
    let coff = pe + 4;
    let section_count = u16_at(image, coff + 2)? as usize;
    let optional_size = u16_at(image, coff + 16)? as usize;
    let opt = coff + 20;
    let (dirs_at, rva_count_at) = match u16_at(image, opt)? {
        0x10b => (opt + 96, opt + 92),
        0x20b => (opt + 112, opt + 108),
        _ => return Err(PeError::NotPe("unknown optional header magic")),
    };
    if section_count > SECTION_COUNT_MAX {
        return Err(PeError::Malformed("too many sections"));
    }
    let size_of_headers = u32_at(image, opt + 60)? as usize;
    let checksum_at = opt + 64;
    let rva_count = u32_at(image, rva_count_at)? as usize;
    let has_security_dir = rva_count > SECURITY_DIRECTORY_INDEX;
    let security_dir_at = dirs_at + 8 * SECURITY_DIRECTORY_INDEX;
    if opt + optional_size > size_of_headers || checksum_at + 4 > size_of_headers {
        return Err(PeError::Malformed("headers larger than SizeOfHeaders"));
    }

    let mut h = Sha384::new();
    h.update(range(image, 0, checksum_at)?);
    if has_security_dir {
        if security_dir_at + 8 > size_of_headers {
            return Err(PeError::Malformed("data directories past SizeOfHeaders"));
        }
        h.update(range(image, checksum_at + 4, security_dir_at)?);
        h.update(range(image, security_dir_at + 8, size_of_headers)?);
    } else {
        h.update(range(image, checksum_at + 4, size_of_headers)?);
    }
    let mut hashed = size_of_headers;

    let table = opt + optional_size;
    let mut sections = Vec::with_capacity(section_count);
    for i in 0..section_count {
        let s = table + 40 * i;
        let raw_size = u32_at(image, s + 16)? as usize;
        let raw_ptr = u32_at(image, s + 20)? as usize;
        if raw_size != 0 {
            sections.push((raw_ptr, raw_size));
        }
    }
    sections.sort_unstable_by_key(|&(ptr, _)| ptr);
    for (ptr, size) in sections {
        h.update(range(image, ptr, ptr.saturating_add(size))?);
        hashed = hashed
            .checked_add(size)
            .ok_or(PeError::Malformed("section sizes overflow"))?;
    }

    if image.len() > hashed {
        let cert_size = if has_security_dir {
            u32_at(image, security_dir_at + 4)? as usize
        } else {
            0
        };
        let end = image
            .len()
            .checked_sub(cert_size)
            .filter(|&end| end >= hashed)
            .ok_or(PeError::Malformed(
                "the certificate table overlaps the sections",
            ))?;
        h.update(range(image, hashed, end)?);
    }
    Ok(h.finalize().into())
}

/// The inputs QEMU before 10.0 used when it patched the kernel's setup header.
#[derive(Debug, Clone, Copy)]
pub struct SetupHeaderPatch {
    pub initrd_size_bytes: u32,
    pub memory_size_bytes: u64,
    /// QEMU reserves this much below the top of low memory for ACPI (0x28000 on q35).
    pub acpi_data_size_bytes: u32,
}

/// QEMU's reservation for ACPI data at the top of low memory on q35.
pub const QEMU_ACPI_DATA_SIZE_BYTES: u32 = 0x28000;

/// Applies the setup-header changes QEMU (before 10.0) made to a Linux kernel before it
/// handed it to the firmware: loader type, heap end, command line address and the initrd
/// address and size (Linux boot protocol, Documentation/arch/x86/boot.rst).
pub fn patch_setup_header(kernel: &[u8], p: SetupHeaderPatch) -> Result<Vec<u8>, PeError> {
    const HEADER_END: usize = 0x240;
    if kernel.len() < HEADER_END || kernel.get(0x202..0x206) != Some(b"HdrS") {
        return Err(PeError::NotPe("no Linux setup header (HdrS)"));
    }
    let mut k = kernel.to_vec();
    let protocol = u16::from_le_bytes([k[0x206], k[0x207]]);
    let loaded_high = k[0x211] & 0x01 != 0;
    let (real_addr, cmdline_addr): (u32, u32) = if protocol < 0x200 || !loaded_high {
        (0x9_0000, 0x9_a000)
    } else {
        (0x1_0000, 0x2_0000)
    };
    if protocol >= 0x200 {
        k[0x210] = 0xb0; // type_of_loader: QEMU
    }
    if protocol >= 0x201 {
        k[0x211] |= 0x80; // CAN_USE_HEAP
        let heap_end = cmdline_addr - real_addr - 0x200;
        k[0x224..0x228].copy_from_slice(&heap_end.to_le_bytes());
    }
    if protocol >= 0x202 {
        k[0x228..0x22c].copy_from_slice(&cmdline_addr.to_le_bytes());
    } else {
        k[0x20..0x22].copy_from_slice(&0xa33f_u16.to_le_bytes());
        let offset = (cmdline_addr - real_addr) as u16;
        k[0x22..0x24].copy_from_slice(&offset.to_le_bytes());
    }
    if p.initrd_size_bytes > 0 {
        if protocol < 0x200 {
            return Err(PeError::Malformed("the kernel is too old for an initrd"));
        }
        let mut initrd_max: u32 =
            if protocol >= 0x20c && u16::from_le_bytes([k[0x236], k[0x237]]) & 0x40 != 0 {
                u32::MAX
            } else if protocol >= 0x203 {
                match u32::from_le_bytes([k[0x22c], k[0x22d], k[0x22e], k[0x22f]]) {
                    0 => 0x37ff_ffff,
                    max => max,
                }
            } else {
                0x37ff_ffff
            };
        // q35: low memory ends at 2 GiB when the guest has 2.75 GiB or more, else at 2.75 GiB.
        let lowmem: u64 = if p.memory_size_bytes >= 0xb000_0000 {
            0x8000_0000
        } else {
            0xb000_0000
        };
        let below_4g = p.memory_size_bytes.min(lowmem) as u32;
        let available = below_4g
            .checked_sub(p.acpi_data_size_bytes)
            .ok_or(PeError::Malformed("the ACPI data does not fit in memory"))?;
        if initrd_max >= available {
            initrd_max = available - 1;
        }
        if p.initrd_size_bytes >= initrd_max {
            return Err(PeError::Malformed("the initrd does not fit in low memory"));
        }
        let initrd_addr = (initrd_max - p.initrd_size_bytes) & !4095;
        k[0x218..0x21c].copy_from_slice(&initrd_addr.to_le_bytes());
        k[0x21c..0x220].copy_from_slice(&p.initrd_size_bytes.to_le_bytes());
    }
    Ok(k)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::register::sha384;

    /// A minimal PE32+ image: headers (0x200), two sections, `trailing` extra bytes, and an
    /// optional certificate table of `cert` bytes at the end.
    pub(crate) fn synthetic_pe(trailing: usize, cert: usize) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[0..2].copy_from_slice(b"MZ");
        f[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        f[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        f[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        f[coff + 2..coff + 4].copy_from_slice(&2u16.to_le_bytes());
        f[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        f[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        f[opt + 60..opt + 64].copy_from_slice(&0x200u32.to_le_bytes());
        f[opt + 64..opt + 68].copy_from_slice(&0xdead_beefu32.to_le_bytes()); // checksum
        f[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let table = opt + 240;
        // Section 2 comes first in the table but second in the file.
        for (i, (ptr, size)) in [(0x400u32, 0x100u32), (0x200, 0x200)].iter().enumerate() {
            let s = table + 40 * i;
            f[s..s + 5].copy_from_slice(b".sect");
            f[s + 16..s + 20].copy_from_slice(&size.to_le_bytes());
            f[s + 20..s + 24].copy_from_slice(&ptr.to_le_bytes());
        }
        f.resize(0x500, 0);
        for (i, b) in f[0x200..0x500].iter_mut().enumerate() {
            *b = (i % 253) as u8 + 1;
        }
        f.extend((0..trailing).map(|i| (i % 7) as u8 + 0x40));
        if cert > 0 {
            let at = f.len() as u32;
            let sec = opt + 112 + 8 * 4;
            f[sec..sec + 4].copy_from_slice(&at.to_le_bytes());
            f[sec + 4..sec + 8].copy_from_slice(&(cert as u32).to_le_bytes());
            f.extend(std::iter::repeat_n(0xcc, cert));
        }
        f
    }

    #[test]
    fn digest_skips_checksum_and_certificates_but_hashes_trailing_data() {
        let plain = synthetic_pe(0, 0);
        let d = authenticode_sha384(&plain).unwrap();
        // By hand: everything but the checksum field (no cert dir content, no trailing data).
        let opt = 0x84 + 20;
        let mut expect = plain[..opt + 64].to_vec();
        expect.extend_from_slice(&plain[opt + 68..opt + 112 + 32]);
        expect.extend_from_slice(&plain[opt + 112 + 40..0x200]);
        expect.extend_from_slice(&plain[0x200..0x500]);
        assert_eq!(d, sha384(&expect));

        // The checksum does not count; the certificate table does not count.
        let mut other_checksum = plain.clone();
        other_checksum[opt + 64] ^= 0xff;
        assert_eq!(authenticode_sha384(&other_checksum).unwrap(), d);
        let signed = synthetic_pe(0, 64);
        assert_eq!(authenticode_sha384(&signed).unwrap(), d);

        // Trailing data counts, unpadded: 3 extra bytes give SHA-384 over exactly those.
        let trailing = synthetic_pe(3, 0);
        let mut expect3 = expect.clone();
        expect3.extend_from_slice(&trailing[0x500..0x503]);
        assert_eq!(authenticode_sha384(&trailing).unwrap(), sha384(&expect3));
        let trailing_signed = synthetic_pe(3, 64);
        assert_eq!(
            authenticode_sha384(&trailing_signed).unwrap(),
            sha384(&expect3)
        );
    }

    #[test]
    fn malformed_images_are_errors_not_panics() {
        let good = synthetic_pe(5, 16);
        for len in 0..good.len() {
            let _ = authenticode_sha384(&good[..len]);
        }
        for pos in 0..0x200 {
            for v in [0x00, 0xff, 0x80] {
                let mut f = good.clone();
                f[pos] = v;
                let _ = authenticode_sha384(&f);
            }
        }
        assert_eq!(
            authenticode_sha384(b"not a pe"),
            Err(PeError::NotPe("no MZ header"))
        );
    }

    #[test]
    fn setup_header_patch_moves_the_initrd_with_memory() {
        let mut k = vec![0u8; 0x1000];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        k[0x211] = 1;
        k[0x236..0x238].copy_from_slice(&0x40u16.to_le_bytes());
        let patch = |mem: u64| {
            patch_setup_header(
                &k,
                SetupHeaderPatch {
                    initrd_size_bytes: 0x10_0000,
                    memory_size_bytes: mem,
                    acpi_data_size_bytes: QEMU_ACPI_DATA_SIZE_BYTES,
                },
            )
            .unwrap()
        };
        let small = patch(1 << 30);
        let big = patch(8 << 30);
        assert_eq!(small[0x210], 0xb0);
        let addr = |k: &[u8]| u32::from_le_bytes(k[0x218..0x21c].try_into().unwrap());
        // 1 GiB: below 1 GiB minus the ACPI reserve, page aligned.
        assert_eq!(
            addr(&small),
            (0x4000_0000 - 0x28000 - 1 - 0x10_0000) & !4095
        );
        // 8 GiB: low memory ends at 2 GiB.
        assert_eq!(addr(&big), (0x8000_0000 - 0x28000 - 1 - 0x10_0000) & !4095);
        assert_eq!(
            u32::from_le_bytes(big[0x21c..0x220].try_into().unwrap()),
            0x10_0000
        );
    }
}
