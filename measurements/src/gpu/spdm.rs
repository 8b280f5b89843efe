//! The GPU's attestation report: an SPDM 1.1 GET_MEASUREMENTS request followed by the
//! signed response (DMTF DSP0274 1.1, sections 10.11 and 10.11.1), as NVIDIA's driver returns
//! it from `nvmlDeviceGetConfComputeGpuAttestationReport`.
//!
//! Layout (all integers little-endian):
//! - request, 37 bytes: version 0x11, code 0xE0, param1 (bit 0: signature requested), param2
//!   (measurement operation, 0xFF for all), nonce (32), slot id (1);
//! - response: version 0x11, code 0x60, param1, param2 (slot id), number of blocks (1),
//!   measurement record length (3), the record, the responder's nonce (32), opaque data length
//!   (2), opaque data, then the signature (96 bytes, raw r‖s of ECDSA P-384).
//!
//! A measurement block is {index, specification (1 = DMTF), size (2), DMTF value type (1),
//! value size (2), value}. The opaque data is a list of {type (2), size (2), value}.
//!
//! Nothing here trusts a length it reads: every length is checked against what is left, and
//! the report as a whole against [`REPORT_SIZE_MAX_BYTES`].

use std::collections::BTreeMap;

/// Size of the GET_MEASUREMENTS request that precedes the response.
pub const REQUEST_SIZE_BYTES: usize = 37;
/// Size of the signature at the end of the response (ECDSA P-384, raw r‖s).
pub const SIGNATURE_SIZE_BYTES: usize = 96;
/// Largest report accepted. An H100 report is 4,117 bytes, a Blackwell one about 4,100; an
/// NVSwitch report is larger but under 8 KiB.
pub const REPORT_SIZE_MAX_BYTES: usize = 64 * 1024;
/// Size of the nonces in the request and the response.
pub const NONCE_SIZE_BYTES: usize = 32;

const SPDM_VERSION_1_1: u8 = 0x11;
const GET_MEASUREMENTS: u8 = 0xE0;
const MEASUREMENTS: u8 = 0x60;

/// Opaque data types NVIDIA's driver puts in the response (from NVIDIA's public verifiers).
pub mod opaque {
    pub const DRIVER_VERSION: u16 = 3;
    pub const GPU_INFO: u16 = 4;
    pub const VBIOS_VERSION: u16 = 6;
    pub const NVDEC0_STATUS: u16 = 11;
    pub const MSRSCNT: u16 = 12;
    pub const CPRINFO: u16 = 13;
    pub const BOARD_ID: u16 = 14;
    pub const CHIP_SKU: u16 = 15;
    pub const CHIP_SKU_MOD: u16 = 16;
    pub const PROJECT: u16 = 17;
    pub const PROJECT_SKU: u16 = 18;
    pub const PROJECT_SKU_MOD: u16 = 19;
    pub const FWID: u16 = 20;
    pub const PROTECTED_PCIE_STATUS: u16 = 21;
    pub const SWITCH_PDI: u16 = 22;
    pub const OPAQUE_DATA_VERSION: u16 = 34;
    pub const FEATURE_FLAG: u16 = 36;
}

/// Why a report could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpdmError {
    #[error("the report is {0} bytes, more than the {REPORT_SIZE_MAX_BYTES} accepted")]
    TooLarge(usize),
    #[error("the report ends early: {0}")]
    Truncated(&'static str),
    #[error(
        "the request is not SPDM 1.1 GET_MEASUREMENTS (version {version:#04x}, code {code:#04x})"
    )]
    BadRequest { version: u8, code: u8 },
    #[error("the response is not SPDM 1.1 MEASUREMENTS (version {version:#04x}, code {code:#04x})")]
    BadResponse { version: u8, code: u8 },
    #[error("the measurement record has {found} blocks where the header says {declared}")]
    BlockCount { declared: u8, found: usize },
    #[error("measurement block {0} appears twice")]
    DuplicateBlock(u8),
    #[error("measurement block {index} is malformed: {why}")]
    BadBlock { index: u8, why: &'static str },
    #[error("opaque field {0} appears twice")]
    DuplicateOpaque(u16),
    #[error("{0} bytes follow the signature")]
    TrailingBytes(usize),
}

/// One measurement block of the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementBlock {
    /// The block's index as the GPU numbers it (from 1; RIMs number from 0).
    pub index: u8,
    /// The measurement specification (1: DMTF).
    pub specification: u8,
    /// The DMTF value type (bit 7: raw bit stream rather than digest).
    pub value_type: u8,
    /// The measurement (48 bytes, SHA-384, on NVIDIA GPUs).
    pub value: Vec<u8>,
}

/// A parsed report. The byte ranges keep the signed region exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The whole report, as given.
    pub bytes: Vec<u8>,
    /// Request fields.
    pub request_param1: u8,
    pub request_param2: u8,
    /// The requester's nonce (bytes 4..36): what freshness is checked against.
    pub request_nonce: [u8; NONCE_SIZE_BYTES],
    pub request_slot: u8,
    /// Response header fields.
    pub spdm_version: u8,
    pub response_code: u8,
    pub param1: u8,
    pub param2: u8,
    pub number_of_blocks: u8,
    pub measurement_record_length: usize,
    /// Measurement blocks by index (1-based), in index order.
    pub blocks: BTreeMap<u8, MeasurementBlock>,
    /// The responder's nonce.
    pub response_nonce: [u8; NONCE_SIZE_BYTES],
    pub opaque_length: usize,
    /// Opaque fields by type, in type order.
    pub opaque: BTreeMap<u16, Vec<u8>>,
    /// The signature (raw r‖s).
    pub signature: [u8; SIGNATURE_SIZE_BYTES],
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SpdmError> {
        let end = self.at.checked_add(n).ok_or(SpdmError::Truncated(what))?;
        let out = self
            .bytes
            .get(self.at..end)
            .ok_or(SpdmError::Truncated(what))?;
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, SpdmError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, SpdmError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u24(&mut self, what: &'static str) -> Result<usize, SpdmError> {
        let b = self.take(3, what)?;
        Ok(usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], SpdmError> {
        let b = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }
}

impl Report {
    /// Parses a report (request ‖ response, signature included).
    pub fn parse(bytes: &[u8]) -> Result<Self, SpdmError> {
        if bytes.len() > REPORT_SIZE_MAX_BYTES {
            return Err(SpdmError::TooLarge(bytes.len()));
        }
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8("request version")?;
        let code = r.u8("request code")?;
        if version != SPDM_VERSION_1_1 || code != GET_MEASUREMENTS {
            return Err(SpdmError::BadRequest { version, code });
        }
        let request_param1 = r.u8("request param1")?;
        let request_param2 = r.u8("request param2")?;
        let request_nonce = r.array::<NONCE_SIZE_BYTES>("request nonce")?;
        let request_slot = r.u8("request slot")?;

        let spdm_version = r.u8("response version")?;
        let response_code = r.u8("response code")?;
        if spdm_version != SPDM_VERSION_1_1 || response_code != MEASUREMENTS {
            return Err(SpdmError::BadResponse {
                version: spdm_version,
                code: response_code,
            });
        }
        let param1 = r.u8("response param1")?;
        let param2 = r.u8("response param2")?;
        let number_of_blocks = r.u8("number of blocks")?;
        let measurement_record_length = r.u24("measurement record length")?;
        let record = r.take(measurement_record_length, "measurement record")?;
        let blocks = parse_blocks(record, number_of_blocks)?;
        let response_nonce = r.array::<NONCE_SIZE_BYTES>("response nonce")?;
        let opaque_length = usize::from(r.u16("opaque data length")?);
        let opaque_bytes = r.take(opaque_length, "opaque data")?;
        let opaque = parse_opaque(opaque_bytes)?;
        let signature = r.array::<SIGNATURE_SIZE_BYTES>("signature")?;
        if r.at != bytes.len() {
            return Err(SpdmError::TrailingBytes(bytes.len() - r.at));
        }
        Ok(Self {
            bytes: bytes.to_vec(),
            request_param1,
            request_param2,
            request_nonce,
            request_slot,
            spdm_version,
            response_code,
            param1,
            param2,
            number_of_blocks,
            measurement_record_length,
            blocks,
            response_nonce,
            opaque_length,
            opaque,
            signature,
        })
    }

    /// The bytes the signature covers: request ‖ response without the signature.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - SIGNATURE_SIZE_BYTES]
    }

    /// An opaque field's value.
    pub fn opaque_field(&self, kind: u16) -> Option<&[u8]> {
        self.opaque.get(&kind).map(Vec::as_slice)
    }

    /// The driver version (opaque type 3), a NUL-terminated ASCII string.
    pub fn driver_version(&self) -> Option<String> {
        self.opaque_field(opaque::DRIVER_VERSION).map(c_string)
    }

    /// The VBIOS version (opaque type 6) as NVIDIA writes it: bytes 3.2.1.0.4 in upper-case
    /// hex, for example `96.00.5E.00.01`.
    pub fn vbios_version(&self) -> Option<String> {
        let v = self.opaque_field(opaque::VBIOS_VERSION)?;
        if v.len() < 5 {
            return None;
        }
        Some(format!(
            "{:02X}.{:02X}.{:02X}.{:02X}.{:02X}",
            v[3], v[2], v[1], v[0], v[4]
        ))
    }

    /// The NVDEC0 status byte (opaque type 11): 0xAA enabled, 0x55 disabled.
    pub fn nvdec0_status(&self) -> Option<u8> {
        self.opaque_field(opaque::NVDEC0_STATUS)
            .and_then(|v| v.first().copied())
    }

    /// The opaque data version (type 34), little-endian.
    pub fn opaque_data_version(&self) -> Option<u64> {
        self.opaque_field(opaque::OPAQUE_DATA_VERSION)
            .and_then(le_u64)
    }

    /// The feature flag (type 36), little-endian: 0 multi-GPU passthrough, 1 single GPU,
    /// 2 protected PCIe (NVIDIA's `OpaqueDataFeatureFlag`).
    pub fn feature_flag(&self) -> Option<u64> {
        self.opaque_field(opaque::FEATURE_FLAG).and_then(le_u64)
    }

    /// The MSRSCNT field (type 12): little-endian u32 counters, one per measurement.
    pub fn msrscnt(&self) -> Option<Vec<u32>> {
        let v = self.opaque_field(opaque::MSRSCNT)?;
        if v.len() % 4 != 0 {
            return None;
        }
        Some(
            v.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
}

/// A NUL-terminated string, lossily decoded.
fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn le_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 8 {
        return None;
    }
    let mut b = [0u8; 8];
    b[..v.len()].copy_from_slice(v);
    Some(u64::from_le_bytes(b))
}

fn parse_blocks(record: &[u8], declared: u8) -> Result<BTreeMap<u8, MeasurementBlock>, SpdmError> {
    let mut r = Reader {
        bytes: record,
        at: 0,
    };
    let mut blocks = BTreeMap::new();
    while r.at < record.len() {
        let index = r.u8("measurement block index")?;
        let specification = r.u8("measurement specification")?;
        let size = usize::from(r.u16("measurement size")?);
        let body = r.take(size, "measurement block")?;
        if size < 3 {
            return Err(SpdmError::BadBlock {
                index,
                why: "shorter than its DMTF header",
            });
        }
        let value_type = body[0];
        let value_size = usize::from(u16::from_le_bytes([body[1], body[2]]));
        if value_size != size - 3 {
            return Err(SpdmError::BadBlock {
                index,
                why: "the value size disagrees with the block size",
            });
        }
        let block = MeasurementBlock {
            index,
            specification,
            value_type,
            value: body[3..].to_vec(),
        };
        if blocks.insert(index, block).is_some() {
            return Err(SpdmError::DuplicateBlock(index));
        }
    }
    if blocks.len() != usize::from(declared) {
        return Err(SpdmError::BlockCount {
            declared,
            found: blocks.len(),
        });
    }
    Ok(blocks)
}

fn parse_opaque(bytes: &[u8]) -> Result<BTreeMap<u16, Vec<u8>>, SpdmError> {
    let mut r = Reader { bytes, at: 0 };
    let mut fields = BTreeMap::new();
    while r.at < bytes.len() {
        let kind = r.u16("opaque field type")?;
        let size = usize::from(r.u16("opaque field size")?);
        let value = r.take(size, "opaque field value")?;
        if fields.insert(kind, value.to_vec()).is_some() {
            return Err(SpdmError::DuplicateOpaque(kind));
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Vec<u8> {
        let mut v = vec![0x11, 0xE0, 1, 0xFF];
        v.extend([7u8; 32]);
        v.push(0);
        v.extend([0x11, 0x60, 0, 0, 1]);
        let block = {
            let mut b = vec![1u8, 1, 51, 0, 1, 48, 0];
            b.extend([9u8; 48]);
            b
        };
        v.extend([block.len() as u8, 0, 0]);
        v.extend(&block);
        v.extend([8u8; 32]);
        v.extend([6u8, 0]);
        v.extend([3u8, 0, 2, 0, b'5', 0]);
        v.extend([0u8; 96]);
        v
    }

    #[test]
    fn parses_a_minimal_report() {
        let r = Report::parse(&minimal()).unwrap();
        assert_eq!(r.request_nonce, [7u8; 32]);
        assert_eq!(r.blocks[&1].value, vec![9u8; 48]);
        assert_eq!(r.driver_version().as_deref(), Some("5"));
        assert_eq!(r.signed_bytes().len(), minimal().len() - 96);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = minimal();
        for n in 0..full.len() {
            assert!(Report::parse(&full[..n]).is_err(), "{n}");
        }
        let mut long = full.clone();
        long.push(0);
        assert_eq!(Report::parse(&long), Err(SpdmError::TrailingBytes(1)));
    }

    #[test]
    fn block_count_and_sizes_are_enforced() {
        let mut v = minimal();
        v[37 + 4] = 2;
        assert!(matches!(
            Report::parse(&v),
            Err(SpdmError::BlockCount { .. })
        ));
        let mut v = minimal();
        v[37 + 8 + 5] = 47; // value size
        assert!(matches!(Report::parse(&v), Err(SpdmError::BadBlock { .. })));
    }
}
