//! TDVF (OVMF built for TDX): the metadata that tells the host which parts of the firmware
//! file go where in the TD's memory, and the MRTD those parts produce.
//!
//! The firmware ends with the OVMF GUIDed table (its footer GUID 48 bytes before the end);
//! one entry of it gives the offset of the TDX metadata descriptor ("TDVF", version 1,
//! then 32-byte section records). MRTD is one SHA-384 stream over the records the TDX
//! module writes for TDH.MEM.PAGE.ADD (128 bytes: "MEM.PAGE.ADD", the GPA at byte 16) and
//! TDH.MR.EXTEND (128 bytes: "MR.EXTEND", the GPA at byte 16, then 256 bytes of content).
//!
//! Bytes in, digests out; never I/O, never a panic on a malformed file.

use serde::Serialize;
use sha2::{Digest, Sha384};

use crate::le;
use crate::register::{Digest48, sha384};

/// Largest firmware file we accept (OVMF images are 2 to 4 MiB; 8 MiB for split builds).
pub const FIRMWARE_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Most sections one descriptor may list (real ones have 4 to 8).
pub const SECTION_COUNT_MAX: u32 = 64;
/// Largest memory one section may ask for (real sections are at most a few MiB).
pub const SECTION_MEMORY_SIZE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// A TD's private memory is added 4 KiB at a time.
pub const PAGE_SIZE_BYTES: u64 = 4096;
/// TDH.MR.EXTEND measures 256 bytes at a time.
const MR_EXTEND_CHUNK_BYTES: usize = 256;

/// The OVMF table footer GUID 96b582de-1fb2-45f7-baea-a366c55a082d, in its on-disk byte order.
const TABLE_FOOTER_GUID: [u8; 16] = guid_bytes(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// The TDX metadata offset entry, e47a6535-984a-4798-865e-4685a7bf8ec2.
const TDX_METADATA_OFFSET_GUID: [u8; 16] = guid_bytes(
    0xe47a_6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);
/// The table footer entry ends 32 bytes before the end of the file (the reset vector follows).
const BYTES_AFTER_TABLE_FOOTER: usize = 32;
/// An entry ends with its length (u16) and its GUID.
const TABLE_ENTRY_TRAILER_BYTES: usize = 18;
const SECTION_RECORD_BYTES: usize = 32;

/// The on-disk form of a GUID: the first three fields little-endian.
pub const fn guid_bytes(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Why a firmware file was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TdvfError {
    #[error("the firmware is {0} bytes, more than the {FIRMWARE_SIZE_MAX_BYTES} we accept")]
    TooLarge(usize),
    #[error("no OVMF table footer GUID 48 bytes before the end: not an OVMF image")]
    NoTableFooter,
    #[error("the OVMF table is malformed: {0}")]
    BadTable(&'static str),
    #[error("the OVMF table has no TDX metadata entry: this firmware does not support TDX")]
    NoTdxMetadata,
    #[error("the TDX metadata descriptor is malformed: {0}")]
    BadDescriptor(String),
}

/// What a section of the firmware holds (TDVF spec, "TDVF_SECTION type").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SectionType {
    /// Boot firmware volume: the code, measured into MRTD.
    Bfv,
    /// Configuration firmware volume: the UEFI variable store, measured into RTMR0.
    Cfv,
    /// Where the host writes the TD HOB (memory map), measured into RTMR0.
    TdHob,
    /// Temporary memory the firmware uses before it has a memory map.
    TempMem,
    PermMem,
    Payload,
    PayloadParam,
}

/// One section record of the TDX metadata descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Section {
    /// Offset of the section's bytes in the firmware file (0 for memory-only sections).
    pub data_offset: u32,
    pub raw_data_size: u32,
    /// Guest physical address.
    pub memory_address: u64,
    pub memory_data_size: u64,
    pub section_type: SectionType,
    /// Bit 0: MR.EXTEND the content into MRTD. Bit 1: PAGE.AUG (added later, unmeasured).
    pub attributes: u32,
}

impl Section {
    pub const ATTRIBUTE_MR_EXTEND: u32 = 1;
    pub const ATTRIBUTE_PAGE_AUG: u32 = 2;

    pub fn mr_extend(&self) -> bool {
        self.attributes & Self::ATTRIBUTE_MR_EXTEND != 0
    }
    pub fn page_aug(&self) -> bool {
        self.attributes & Self::ATTRIBUTE_PAGE_AUG != 0
    }
    fn pages(&self) -> u64 {
        self.memory_data_size / PAGE_SIZE_BYTES
    }
}

/// The order in which the host adds and measures the firmware's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PageOrder {
    /// Upstream QEMU 10.1 and later (KVM_TDX_INIT_MEM_REGION): for each page, PAGE.ADD
    /// then its 16 MR.EXTENDs.
    OnePass,
    /// The QEMU 8.x TDX fork: for each section, PAGE.ADD every page, then MR.EXTEND every page.
    TwoPassPerSection,
}

/// A parsed TDVF image: the firmware bytes and the sections its metadata lists.
#[derive(Debug, Clone)]
pub struct Tdvf<'a> {
    firmware: &'a [u8],
    pub sections: Vec<Section>,
}

/// Finds an entry of the OVMF GUIDed table at the end of a firmware image.
pub fn find_table_entry<'a>(firmware: &'a [u8], guid: &[u8; 16]) -> Result<&'a [u8], TdvfError> {
    let len = firmware.len();
    let footer_end = len
        .checked_sub(BYTES_AFTER_TABLE_FOOTER)
        .ok_or(TdvfError::NoTableFooter)?;
    let footer_guid_start = footer_end.checked_sub(16).ok_or(TdvfError::NoTableFooter)?;
    if firmware.get(footer_guid_start..footer_end) != Some(&TABLE_FOOTER_GUID[..]) {
        return Err(TdvfError::NoTableFooter);
    }
    // The footer's length covers the whole table, the footer entry included.
    let total = footer_guid_start
        .checked_sub(2)
        .and_then(|at| le::u16_at(firmware, at))
        .ok_or(TdvfError::NoTableFooter)? as usize;
    let mut remaining = total
        .checked_sub(TABLE_ENTRY_TRAILER_BYTES)
        .ok_or(TdvfError::BadTable("the table is shorter than its footer"))?;
    let mut end = footer_end - TABLE_ENTRY_TRAILER_BYTES;
    if remaining > end {
        return Err(TdvfError::BadTable("the table is longer than the file"));
    }
    while remaining >= TABLE_ENTRY_TRAILER_BYTES {
        let entry_len = le::u16_at(firmware, end - TABLE_ENTRY_TRAILER_BYTES)
            .ok_or(TdvfError::BadTable("entry"))? as usize;
        if entry_len < TABLE_ENTRY_TRAILER_BYTES || entry_len > remaining {
            return Err(TdvfError::BadTable("an entry's length is out of range"));
        }
        if firmware.get(end - 16..end) == Some(&guid[..]) {
            return Ok(&firmware[end - entry_len..end - TABLE_ENTRY_TRAILER_BYTES]);
        }
        end -= entry_len;
        remaining -= entry_len;
    }
    Err(TdvfError::NoTdxMetadata)
}

impl<'a> Tdvf<'a> {
    /// Parses the TDX metadata of an OVMF image and checks every section against the file.
    pub fn parse(firmware: &'a [u8]) -> Result<Self, TdvfError> {
        if firmware.len() > FIRMWARE_SIZE_MAX_BYTES {
            return Err(TdvfError::TooLarge(firmware.len()));
        }
        let bad = |s: &str| TdvfError::BadDescriptor(s.to_owned());
        let entry = find_table_entry(firmware, &TDX_METADATA_OFFSET_GUID)?;
        let from_end = entry
            .len()
            .checked_sub(4)
            .and_then(|at| le::u32_at(entry, at))
            .ok_or(TdvfError::BadTable("the TDX metadata entry is too short"))?
            as usize;
        let at = firmware
            .len()
            .checked_sub(from_end)
            .ok_or_else(|| bad("its offset is before the start of the file"))?;
        if firmware.get(at..at + 4) != Some(b"TDVF") {
            return Err(bad("no TDVF signature"));
        }
        let length = le::u32_at(firmware, at + 4).ok_or_else(|| bad("truncated"))?;
        let version = le::u32_at(firmware, at + 8).ok_or_else(|| bad("truncated"))?;
        let count = le::u32_at(firmware, at + 12).ok_or_else(|| bad("truncated"))?;
        if version != 1 {
            return Err(TdvfError::BadDescriptor(format!(
                "version {version}, only 1 is known"
            )));
        }
        if count > SECTION_COUNT_MAX {
            return Err(TdvfError::BadDescriptor(format!(
                "{count} sections, more than {SECTION_COUNT_MAX}"
            )));
        }
        if length as usize != 16 + SECTION_RECORD_BYTES * count as usize {
            return Err(TdvfError::BadDescriptor(format!(
                "length {length} does not fit {count} sections"
            )));
        }
        let mut sections = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let r = at + 16 + SECTION_RECORD_BYTES * i;
            let rec = firmware
                .get(r..r + SECTION_RECORD_BYTES)
                .ok_or_else(|| bad("a section record runs past the end of the file"))?;
            let section_type = match le::u32_at(rec, 24).unwrap_or(u32::MAX) {
                0 => SectionType::Bfv,
                1 => SectionType::Cfv,
                2 => SectionType::TdHob,
                3 => SectionType::TempMem,
                4 => SectionType::PermMem,
                5 => SectionType::Payload,
                6 => SectionType::PayloadParam,
                t => {
                    return Err(TdvfError::BadDescriptor(format!(
                        "section {i} has type {t}"
                    )));
                }
            };
            let s = Section {
                data_offset: le::u32_at(rec, 0).unwrap_or_default(),
                raw_data_size: le::u32_at(rec, 4).unwrap_or_default(),
                memory_address: le::u64_at(rec, 8).unwrap_or_default(),
                memory_data_size: le::u64_at(rec, 16).unwrap_or_default(),
                section_type,
                attributes: le::u32_at(rec, 28).unwrap_or_default(),
            };
            check_section(firmware.len(), i, &s)?;
            sections.push(s);
        }
        Ok(Tdvf { firmware, sections })
    }

    /// The bytes of a section as stored in the file.
    pub fn section_bytes(&self, s: &Section) -> &'a [u8] {
        let start = s.data_offset as usize;
        // `check_section` proved the range is inside the file.
        self.firmware
            .get(start..start + s.raw_data_size as usize)
            .unwrap_or_default()
    }

    /// MRTD: the TDX module's SHA-384 over the page-add and extend records of every section.
    pub fn mrtd(&self, order: PageOrder) -> Digest48 {
        let mut h = Sha384::new();
        for s in &self.sections {
            match order {
                PageOrder::OnePass => {
                    for page in 0..s.pages() {
                        self.page_add(&mut h, s, page);
                        self.mr_extend(&mut h, s, page);
                    }
                }
                PageOrder::TwoPassPerSection => {
                    for page in 0..s.pages() {
                        self.page_add(&mut h, s, page);
                    }
                    for page in 0..s.pages() {
                        self.mr_extend(&mut h, s, page);
                    }
                }
            }
        }
        h.finalize().into()
    }

    fn page_add(&self, h: &mut Sha384, s: &Section, page: u64) {
        if s.page_aug() {
            return;
        }
        let mut record = [0u8; 128];
        record[..12].copy_from_slice(b"MEM.PAGE.ADD");
        let gpa = s.memory_address + page * PAGE_SIZE_BYTES;
        record[16..24].copy_from_slice(&gpa.to_le_bytes());
        h.update(record);
    }

    fn mr_extend(&self, h: &mut Sha384, s: &Section, page: u64) {
        if !s.mr_extend() {
            return;
        }
        let content = self.section_bytes(s);
        let page_start = (page * PAGE_SIZE_BYTES) as usize;
        for chunk in 0..(PAGE_SIZE_BYTES as usize / MR_EXTEND_CHUNK_BYTES) {
            let offset = page_start + chunk * MR_EXTEND_CHUNK_BYTES;
            let mut record = [0u8; 128];
            record[..9].copy_from_slice(b"MR.EXTEND");
            let gpa = s.memory_address + offset as u64;
            record[16..24].copy_from_slice(&gpa.to_le_bytes());
            h.update(record);
            // Bytes past the raw data are the zeroes of the rest of the page.
            let mut data = [0u8; MR_EXTEND_CHUNK_BYTES];
            if let Some(src) = content.get(offset..) {
                let n = src.len().min(MR_EXTEND_CHUNK_BYTES);
                data[..n].copy_from_slice(&src[..n]);
            }
            h.update(data);
        }
    }

    /// The first section of a type.
    pub fn section(&self, t: SectionType) -> Option<&Section> {
        self.sections.iter().find(|s| s.section_type == t)
    }

    /// SHA-384 of the CFV (the variable store as shipped), the digest of RTMR0's CFV event.
    pub fn cfv_digest(&self) -> Option<Digest48> {
        self.section(SectionType::Cfv)
            .map(|s| sha384(self.section_bytes(s)))
    }
}

fn check_section(file_len: usize, i: usize, s: &Section) -> Result<(), TdvfError> {
    let fail = |why: &str| Err(TdvfError::BadDescriptor(format!("section {i}: {why}")));
    if !s.memory_address.is_multiple_of(PAGE_SIZE_BYTES)
        || !s.memory_data_size.is_multiple_of(PAGE_SIZE_BYTES)
    {
        return fail("memory address or size not page aligned");
    }
    if s.memory_data_size > SECTION_MEMORY_SIZE_MAX_BYTES {
        return fail("more memory than a firmware section needs");
    }
    if s.memory_address.checked_add(s.memory_data_size).is_none() {
        return fail("memory range overflows");
    }
    if u64::from(s.raw_data_size) > s.memory_data_size {
        return fail("more file bytes than memory");
    }
    if (s.data_offset as usize).saturating_add(s.raw_data_size as usize) > file_len {
        return fail("its bytes run past the end of the file");
    }
    if s.mr_extend() && s.page_aug() {
        return fail("both MR.EXTEND and PAGE.AUG");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small TDVF-shaped image: two sections, a table with the metadata entry.
    pub(crate) fn synthetic_firmware() -> Vec<u8> {
        let mut fw = vec![0u8; 0x6000];
        // Code at 0x1000..0x3000 in the file, loaded at 0xffff_e000.
        for (i, b) in fw[0x1000..0x3000].iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        // Descriptor at 0x100: 2 sections.
        let d = 0x100;
        fw[d..d + 4].copy_from_slice(b"TDVF");
        fw[d + 4..d + 8].copy_from_slice(&(16u32 + 64).to_le_bytes());
        fw[d + 8..d + 12].copy_from_slice(&1u32.to_le_bytes());
        fw[d + 12..d + 16].copy_from_slice(&2u32.to_le_bytes());
        let rec =
            |fw: &mut [u8], at: usize, off: u32, raw: u32, gpa: u64, size: u64, t: u32, a: u32| {
                fw[at..at + 4].copy_from_slice(&off.to_le_bytes());
                fw[at + 4..at + 8].copy_from_slice(&raw.to_le_bytes());
                fw[at + 8..at + 16].copy_from_slice(&gpa.to_le_bytes());
                fw[at + 16..at + 24].copy_from_slice(&size.to_le_bytes());
                fw[at + 24..at + 28].copy_from_slice(&t.to_le_bytes());
                fw[at + 28..at + 32].copy_from_slice(&a.to_le_bytes());
            };
        rec(&mut fw, d + 16, 0x1000, 0x2000, 0xffff_e000, 0x2000, 0, 1);
        rec(&mut fw, d + 48, 0, 0, 0x80_0000, 0x3000, 3, 0);
        // Table: [metadata entry: u32 offset-from-end, len 22, guid][footer: len, guid][32 bytes].
        let len = fw.len();
        let footer_end = len - 32;
        fw[footer_end - 16..footer_end].copy_from_slice(&TABLE_FOOTER_GUID);
        fw[footer_end - 18..footer_end - 16].copy_from_slice(&(18u16 + 22).to_le_bytes());
        let e_end = footer_end - 18;
        fw[e_end - 16..e_end].copy_from_slice(&TDX_METADATA_OFFSET_GUID);
        fw[e_end - 18..e_end - 16].copy_from_slice(&22u16.to_le_bytes());
        fw[e_end - 22..e_end - 18].copy_from_slice(&((len - d) as u32).to_le_bytes());
        fw
    }

    #[test]
    fn synthetic_image_parses_and_orders_differ() {
        let fw = synthetic_firmware();
        let t = Tdvf::parse(&fw).unwrap();
        assert_eq!(t.sections.len(), 2);
        assert_eq!(t.sections[0].section_type, SectionType::Bfv);
        assert!(t.sections[0].mr_extend());
        let one = t.mrtd(PageOrder::OnePass);
        let two = t.mrtd(PageOrder::TwoPassPerSection);
        assert_ne!(one, two);

        // Recompute one pass by hand: the stream is every record in order, nothing else.
        let mut stream = Vec::new();
        let add = |stream: &mut Vec<u8>, gpa: u64| {
            let mut r = [0u8; 128];
            r[..12].copy_from_slice(b"MEM.PAGE.ADD");
            r[16..24].copy_from_slice(&gpa.to_le_bytes());
            stream.extend_from_slice(&r);
        };
        for page in 0..2u64 {
            add(&mut stream, 0xffff_e000 + page * 4096);
            for c in 0..16u64 {
                let mut r = [0u8; 128];
                r[..9].copy_from_slice(b"MR.EXTEND");
                r[16..24].copy_from_slice(&(0xffff_e000 + page * 4096 + c * 256).to_le_bytes());
                stream.extend_from_slice(&r);
                let off = 0x1000 + (page * 4096 + c * 256) as usize;
                stream.extend_from_slice(&fw[off..off + 256]);
            }
        }
        for page in 0..3u64 {
            add(&mut stream, 0x80_0000 + page * 4096);
        }
        assert_eq!(one, sha384(&stream));

        // A byte of the code changes MRTD; a byte outside every section does not.
        let mut changed = fw.clone();
        changed[0x1800] ^= 1;
        assert_ne!(Tdvf::parse(&changed).unwrap().mrtd(PageOrder::OnePass), one);
        let mut outside = fw.clone();
        outside[0x3800] ^= 1;
        assert_eq!(Tdvf::parse(&outside).unwrap().mrtd(PageOrder::OnePass), one);
    }

    #[test]
    fn malformed_images_are_errors() {
        let fw = synthetic_firmware();
        assert_eq!(
            Tdvf::parse(&fw[..100]).unwrap_err(),
            TdvfError::NoTableFooter
        );
        let mut no_footer = fw.clone();
        let n = no_footer.len();
        no_footer[n - 40] ^= 1;
        assert_eq!(
            Tdvf::parse(&no_footer).unwrap_err(),
            TdvfError::NoTableFooter
        );
        let mut bad_sig = fw.clone();
        bad_sig[0x100] = b'X';
        assert!(matches!(
            Tdvf::parse(&bad_sig),
            Err(TdvfError::BadDescriptor(_))
        ));
        // Found by the fuzzer: a file that is nothing but the footer GUID and 32 bytes.
        let mut tiny = TABLE_FOOTER_GUID.to_vec();
        tiny.extend_from_slice(&[0; 32]);
        assert_eq!(Tdvf::parse(&tiny).unwrap_err(), TdvfError::NoTableFooter);
        let mut past_end = fw.clone();
        past_end[0x100 + 16 + 4..0x100 + 16 + 8].copy_from_slice(&0x9000u32.to_le_bytes());
        assert!(matches!(
            Tdvf::parse(&past_end),
            Err(TdvfError::BadDescriptor(_))
        ));
        // Every single-byte change in the table and descriptor is an error or a valid parse.
        for pos in (0x100..0x150).chain(n - 80..n) {
            for v in [0u8, 0xff, 0x7f] {
                let mut f = fw.clone();
                f[pos] = v;
                if let Ok(t) = Tdvf::parse(&f)
                    && t.sections.iter().map(|s| s.memory_data_size).sum::<u64>() < 0x10_0000
                {
                    let _ = t.mrtd(PageOrder::OnePass);
                }
            }
        }
    }
}
