//! TDX event logs: the CCEL ACPI table that points at the log, and the crypto-agile TCG
//! event log itself (a TCG_PCR_EVENT header, then TCG_PCR_EVENT2 records with SHA-384
//! digests). Parses, replays the records into RTMR values (MR index = RTMR index + 1; MR
//! index 0 is MRTD, which the log does not extend) and explains each record in words.
//!
//! Bytes in, values out: it must never read files or firmware tables itself, and never
//! panic on a malformed log.

use serde::Serialize;

use crate::register::{Digest48, Register, sha384};

/// Largest event log we parse. edk2 reserves 64 KiB to 256 KiB for the CCEL log area.
pub const EVENT_LOG_SIZE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Largest single event's data.
pub const EVENT_DATA_SIZE_MAX_BYTES: usize = 1024 * 1024;
/// Most events in one log.
pub const EVENT_COUNT_MAX: usize = 100_000;
/// Most digest algorithms one log may declare.
const ALGORITHM_COUNT_MAX: u32 = 16;

const TPM_ALG_SHA384: u16 = 0x000c;
const EV_NO_ACTION: u32 = 0x3;
const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const CCEL_SIGNATURE: &[u8; 4] = b"CCEL";
const CCEL_TABLE_BYTES: usize = 56;
const CC_TYPE_TDX: u8 = 2;

/// Why an event log or CCEL table was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventLogError {
    #[error("the event log is {0} bytes, more than the {EVENT_LOG_SIZE_MAX_BYTES} we accept")]
    TooLarge(usize),
    #[error("the event log ends inside {what} at offset {offset}")]
    Truncated { what: &'static str, offset: usize },
    #[error("the first event is not a TCG Spec ID event (\"Spec ID Event03\")")]
    NoSpecIdEvent,
    #[error("the log declares no SHA-384 digests, which TDX logs always have")]
    NoSha384,
    #[error("the log declares {0} digest algorithms, more than {ALGORITHM_COUNT_MAX}")]
    TooManyAlgorithms(u32),
    #[error(
        "event {index} uses digest algorithm {alg:#06x}, which the Spec ID event did not declare"
    )]
    UnknownAlgorithm { index: usize, alg: u16 },
    #[error("event {index} has {size} bytes of data, more than {EVENT_DATA_SIZE_MAX_BYTES}")]
    EventTooLarge { index: usize, size: usize },
    #[error("event {index} extends MR index {mr}; TDX logs use 0 (MRTD) to 4 (RTMR3)")]
    BadMrIndex { index: usize, mr: u32 },
    #[error("more than {EVENT_COUNT_MAX} events")]
    TooManyEvents,
    #[error("the CCEL table is {0} bytes; it must be at least 56")]
    CcelTooShort(usize),
    #[error("the table's signature is {0:?}, not CCEL")]
    NotCcel(String),
    #[error("the CCEL table's length field says {field}, the table has {len} bytes")]
    CcelLength { field: u32, len: usize },
    #[error("the CCEL table's checksum does not add up to zero")]
    CcelChecksum,
}

/// The CCEL ACPI table: where the firmware put the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CcelTable {
    pub revision: u8,
    /// 2 for TDX.
    pub cc_type: u8,
    pub cc_subtype: u8,
    /// Log area minimum length (bytes).
    pub log_area_min_len: u64,
    /// Log area start address (guest physical).
    pub log_area_start: u64,
}

impl CcelTable {
    /// Parses the CCEL table (as in `/sys/firmware/acpi/tables/CCEL`), checksum included.
    pub fn parse(bytes: &[u8]) -> Result<Self, EventLogError> {
        if bytes.len() < CCEL_TABLE_BYTES {
            return Err(EventLogError::CcelTooShort(bytes.len()));
        }
        if &bytes[0..4] != CCEL_SIGNATURE {
            return Err(EventLogError::NotCcel(
                String::from_utf8_lossy(&bytes[0..4]).into_owned(),
            ));
        }
        let len_field = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if len_field as usize != bytes.len() {
            return Err(EventLogError::CcelLength {
                field: len_field,
                len: bytes.len(),
            });
        }
        if bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) != 0 {
            return Err(EventLogError::CcelChecksum);
        }
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(a)
        };
        Ok(CcelTable {
            revision: bytes[8],
            cc_type: bytes[36],
            cc_subtype: bytes[37],
            log_area_min_len: u64_at(40),
            log_area_start: u64_at(48),
        })
    }

    /// Whether the table describes a TDX guest's log.
    pub fn is_tdx(&self) -> bool {
        self.cc_type == CC_TYPE_TDX
    }
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEvent {
    /// Position in the log, the Spec ID header being 0.
    pub index: usize,
    /// 0 = MRTD, 1..=4 = RTMR0..RTMR3.
    pub mr_index: u32,
    pub event_type: u32,
    /// The event type's name in the TCG PC Client spec (`EV_EFI_ACTION`).
    pub event_type_name: &'static str,
    /// The SHA-384 digest extended (absent for EV_NO_ACTION).
    #[serde(serialize_with = "crate::hex_opt")]
    pub sha384: Option<Digest48>,
    #[serde(serialize_with = "crate::hex_ser")]
    pub data: Vec<u8>,
    /// What the event is, in words, from its type and data.
    pub description: String,
    /// Whether the digest is the SHA-384 of the event data (true for most edk2 events;
    /// false where the data only names what was hashed, such as a kernel image).
    pub digest_is_hash_of_data: bool,
}

impl LogEvent {
    /// Which RTMR this event extends, if any.
    pub fn rtmr(&self) -> Option<usize> {
        match self.mr_index {
            1..=4 if self.event_type != EV_NO_ACTION => Some(self.mr_index as usize - 1),
            _ => None,
        }
    }
}

/// A parsed event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventLog {
    /// Digest algorithms the Spec ID event declares: (TPM_ALG id, size in bytes).
    pub algorithms: Vec<(u16, u16)>,
    pub events: Vec<LogEvent>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], EventLogError> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.bytes.get(self.pos..end).map(|s| (s, end))) {
            Some((s, end)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(EventLogError::Truncated {
                what,
                offset: self.pos,
            }),
        }
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, EventLogError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, EventLogError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn remaining(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }
}

impl EventLog {
    /// Parses a crypto-agile TCG event log, such as the CCEL log area. Parsing stops at the
    /// end of the bytes or where the unused part of a log area begins (all 0x00 or 0xFF).
    pub fn parse(bytes: &[u8]) -> Result<Self, EventLogError> {
        if bytes.len() > EVENT_LOG_SIZE_MAX_BYTES {
            return Err(EventLogError::TooLarge(bytes.len()));
        }
        let mut r = Reader { bytes, pos: 0 };
        // TCG_PCR_EVENT: the SHA-1-format header whose data is the Spec ID event.
        let _mr = r.u32("the header's MR index")?;
        let header_type = r.u32("the header's event type")?;
        let _sha1 = r.take(20, "the header's digest")?;
        let size = r.u32("the header's size")? as usize;
        let spec = r.take(size, "the Spec ID event")?;
        if header_type != EV_NO_ACTION || spec.len() < 16 || &spec[..16] != SPEC_ID_SIGNATURE {
            return Err(EventLogError::NoSpecIdEvent);
        }
        let mut s = Reader {
            bytes: spec,
            pos: 16,
        };
        let _platform_class = s.u32("the Spec ID platform class")?;
        let _version = s.take(4, "the Spec ID version")?;
        let count = s.u32("the Spec ID algorithm count")?;
        if count > ALGORITHM_COUNT_MAX {
            return Err(EventLogError::TooManyAlgorithms(count));
        }
        let mut algorithms = Vec::new();
        for _ in 0..count {
            algorithms.push((s.u16("an algorithm id")?, s.u16("a digest size")?));
        }
        if !algorithms
            .iter()
            .any(|&(a, n)| a == TPM_ALG_SHA384 && n == 48)
        {
            return Err(EventLogError::NoSha384);
        }

        let mut events = Vec::new();
        loop {
            let rest = r.remaining();
            if rest.len() < 8
                || rest[..8].iter().all(|&b| b == 0)
                || rest[..8].iter().all(|&b| b == 0xff)
            {
                break;
            }
            if events.len() >= EVENT_COUNT_MAX {
                return Err(EventLogError::TooManyEvents);
            }
            let index = events.len() + 1;
            let mr_index = r.u32("an event's MR index")?;
            if mr_index > 4 {
                return Err(EventLogError::BadMrIndex {
                    index,
                    mr: mr_index,
                });
            }
            let event_type = r.u32("an event's type")?;
            let digest_count = r.u32("an event's digest count")?;
            if digest_count > ALGORITHM_COUNT_MAX {
                return Err(EventLogError::TooManyAlgorithms(digest_count));
            }
            let mut sha384_digest = None;
            for _ in 0..digest_count {
                let alg = r.u16("a digest's algorithm")?;
                let Some(&(_, size)) = algorithms.iter().find(|(a, _)| *a == alg) else {
                    return Err(EventLogError::UnknownAlgorithm { index, alg });
                };
                let digest = r.take(size as usize, "a digest")?;
                if alg == TPM_ALG_SHA384 {
                    let mut d = [0u8; 48];
                    d.copy_from_slice(digest);
                    sha384_digest = Some(d);
                }
            }
            let size = r.u32("an event's data size")? as usize;
            if size > EVENT_DATA_SIZE_MAX_BYTES {
                return Err(EventLogError::EventTooLarge { index, size });
            }
            let data = r.take(size, "an event's data")?.to_vec();
            let digest_is_hash_of_data = sha384_digest == Some(sha384(&data));
            events.push(LogEvent {
                index,
                mr_index,
                event_type,
                event_type_name: event_type_name(event_type),
                sha384: sha384_digest,
                description: describe(event_type, &data),
                data,
                digest_is_hash_of_data,
            });
        }
        Ok(EventLog { algorithms, events })
    }

    /// Replays the log: RTMR0..RTMR3 as the TDX module holds them after these events.
    pub fn replay(&self) -> [Digest48; 4] {
        let mut regs = [Register::default(); 4];
        for e in &self.events {
            if let (Some(i), Some(d)) = (e.rtmr(), &e.sha384) {
                regs[i].extend(d);
            }
        }
        regs.map(|r| r.0)
    }
}

/// The TCG PC Client name of an event type.
pub fn event_type_name(t: u32) -> &'static str {
    match t {
        0x0 => "EV_PREBOOT_CERT",
        0x1 => "EV_POST_CODE",
        0x3 => "EV_NO_ACTION",
        0x4 => "EV_SEPARATOR",
        0x5 => "EV_ACTION",
        0x6 => "EV_EVENT_TAG",
        0x7 => "EV_S_CRTM_CONTENTS",
        0x8 => "EV_S_CRTM_VERSION",
        0x9 => "EV_CPU_MICROCODE",
        0xa => "EV_PLATFORM_CONFIG_FLAGS",
        0xb => "EV_TABLE_OF_DEVICES",
        0xc => "EV_COMPACT_HASH",
        0xd => "EV_IPL",
        0xe => "EV_IPL_PARTITION_DATA",
        0xf => "EV_NONHOST_CODE",
        0x10 => "EV_NONHOST_CONFIG",
        0x11 => "EV_NONHOST_INFO",
        0x12 => "EV_OMIT_BOOT_DEVICE_EVENTS",
        0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        0x8000_0006 => "EV_EFI_GPT_EVENT",
        0x8000_0007 => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        0x8000_000a => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000b => "EV_EFI_HANDOFF_TABLES2",
        0x8000_000c => "EV_EFI_VARIABLE_BOOT2",
        0x8000_0010 => "EV_EFI_HCRTM_EVENT",
        0x8000_00e0 => "EV_EFI_VARIABLE_AUTHORITY",
        0x8000_00e1 => "EV_EFI_SPDM_FIRMWARE_BLOB",
        0x8000_00e2 => "EV_EFI_SPDM_FIRMWARE_CONFIG",
        _ => "unknown",
    }
}

/// Printable ASCII of `data` up to its first NUL, if it is all printable.
fn ascii(data: &[u8]) -> Option<String> {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let text = &data[..end];
    (!text.is_empty()
        && text
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) || b == b'\n'))
    .then(|| String::from_utf8_lossy(text).trim_end().to_owned())
}

/// The name of a UEFI variable from UEFI_VARIABLE_DATA (GUID, name length in UTF-16
/// units, data length, name, data).
fn variable_name(data: &[u8]) -> Option<String> {
    let name_len = u64::from_le_bytes(data.get(16..24)?.try_into().ok()?);
    let name_bytes = usize::try_from(name_len).ok()?.checked_mul(2)?;
    let name = data.get(32..32usize.checked_add(name_bytes)?)?;
    let units: Vec<u16> = name
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

fn describe(event_type: u32, data: &[u8]) -> String {
    let kind = event_type_name(event_type);
    match event_type {
        0x8000_0001 | 0x8000_0002 | 0x8000_000c | 0x8000_00e0 => match variable_name(data) {
            Some(name) => format!("UEFI variable {name}"),
            None => "UEFI variable (unreadable name)".to_owned(),
        },
        0x4 => {
            if data.len() == 4 && data.iter().all(|&b| b == 0) {
                "separator".to_owned()
            } else if data == [0xff; 4] {
                "separator (error)".to_owned()
            } else {
                "separator".to_owned()
            }
        }
        0x8000_000a => {
            // UEFI_PLATFORM_FIRMWARE_BLOB2: description length, description, base, length.
            let text = data
                .first()
                .and_then(|&n| data.get(1..1 + n as usize))
                .and_then(ascii);
            match text {
                Some(t) => format!("firmware blob {t}"),
                None => "firmware blob".to_owned(),
            }
        }
        0x8000_0003 => format!(
            "boot services application ({} bytes of image path)",
            data.len()
        ),
        _ => match ascii(data) {
            Some(t) => t,
            None => match (event_type, data.len()) {
                (0x6, _) | (0xa, _) => format!("{kind} with {} bytes of binary data", data.len()),
                _ => kind.to_owned(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quote::Quote;

    const LOG: &[u8] = include_bytes!("../tests/data/go-tdx-guest/ccel/ccel_data.dat");
    const TABLE: &[u8] = include_bytes!("../tests/data/go-tdx-guest/ccel/ccel_table.dat");
    const QUOTE: &[u8] = include_bytes!("../tests/data/go-tdx-guest/ccel/cos-113-tdx-quote.dat");

    #[test]
    fn ccel_log_replays_to_the_rtmrs_of_the_quote_taken_beside_it() {
        let log = EventLog::parse(LOG).unwrap();
        let quote = Quote::parse(QUOTE).unwrap();
        assert_eq!(log.replay(), quote.report.rtmrs);
        // RTMR0..2 got events (firmware, GRUB, kernel); this guest left RTMR3 alone.
        for i in 0..3 {
            assert!(log.events.iter().any(|e| e.rtmr() == Some(i)), "RTMR{i}");
        }
    }

    #[test]
    fn ccel_table_points_at_a_tdx_log() {
        let t = CcelTable::parse(TABLE).unwrap();
        assert!(t.is_tdx());
        assert!(t.log_area_min_len >= LOG.len() as u64 / 2);
        assert_ne!(t.log_area_start, 0);
        let mut bad = TABLE.to_vec();
        bad[50] ^= 1;
        assert_eq!(CcelTable::parse(&bad), Err(EventLogError::CcelChecksum));
    }

    #[test]
    fn events_are_explained() {
        let log = EventLog::parse(LOG).unwrap();
        assert!(
            log.events
                .iter()
                .any(|e| e.description == "UEFI variable SecureBoot")
        );
        assert!(
            log.events
                .iter()
                .any(|e| e.event_type_name == "EV_SEPARATOR")
        );
        // Most edk2 events hash their own data; the check is computed, not assumed.
        assert!(log.events.iter().any(|e| e.digest_is_hash_of_data));
        assert!(log.events.iter().any(|e| !e.digest_is_hash_of_data));
    }

    #[test]
    fn changing_one_digest_byte_changes_exactly_one_register() {
        let log = EventLog::parse(LOG).unwrap();
        let good = log.replay();
        let mut tampered = log.clone();
        let e = tampered
            .events
            .iter_mut()
            .find(|e| e.rtmr() == Some(2))
            .unwrap();
        e.sha384.as_mut().unwrap()[0] ^= 1;
        let bad = tampered.replay();
        assert_eq!(good[0], bad[0]);
        assert_eq!(good[1], bad[1]);
        assert_ne!(good[2], bad[2]);
        assert_eq!(good[3], bad[3]);
    }

    #[test]
    fn truncations_of_the_log_are_errors_or_shorter_logs() {
        let whole = EventLog::parse(LOG).unwrap().events.len();
        // The log area after the last event is 0xFF filled.
        let end = LOG.len() - LOG.iter().rev().take_while(|&&b| b == 0xff).count();
        assert!(end < LOG.len());
        // Every length near the end and the start, then a stride through the rest (a
        // full sweep is quadratic: each parse hashes every event).
        let lengths = (0..200).chain(end - 200..end).chain((200..end).step_by(7));
        for len in lengths {
            if let Ok(log) = EventLog::parse(&LOG[..len]) {
                assert!(log.events.len() < whole, "length {len}");
            }
        }
        assert_eq!(EventLog::parse(&LOG[..end]).unwrap().events.len(), whole);
        assert!(EventLog::parse(&[0xff; 8]).is_err());
    }
}
