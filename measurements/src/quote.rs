//! TDX quotes: parsing (versions 4 and 5, TD report body 1.0 and 1.5, signature data, QE
//! report, certification data with the PCK chain) and verification against collateral the
//! caller passes in, at a "now" the caller passes in.
//!
//! The cryptographic checks (attestation-key signature, QE report signature and its binding
//! to the attestation key, PCK chain to the pinned Intel SGX Root CA, CRLs, QE identity, TCB
//! level matching) are delegated to `dcap-qvl`. This module parses the quote itself too, so
//! that the verdict names every field in our words, and so that a malformed quote is
//! rejected with a precise reason before any crypto runs.
//!
//! It must never read files, the clock or the network: bytes and a time come in, a verdict
//! or an error comes out.

use dcap_qvl::QuoteCollateralV3;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Digest48;
use crate::measurements::Measurements;

/// Intel SGX Root CA (DER), the trust anchor of every PCK chain, TCB info and QE identity.
/// SHA-256 44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3.
pub const INTEL_SGX_ROOT_CA_DER: &[u8] = include_bytes!("intel_sgx_root_ca.der");

/// The root of Cloister's SIMULATED TDX development chain (DER), named "Cloister SIMULATED
/// TDX root - NOT INTEL - not confidential". Its private key is public (derived from a label,
/// see cloister-tee's `simulated` module): a quote that chains to it proves nothing. It is
/// trusted only when the caller asks for it with [`VerifyOptions::accept_simulated`].
/// Written by tee/src/simulated/make_dev_chain.py.
pub const SIMULATION_ROOT_CA_DER: &[u8] = include_bytes!("cloister_simulated_root_ca.der");

/// The QE vendor ID of Intel's quoting enclave, which verifiers require in the quote header.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];

/// Largest quote we parse: real ones are about 5 KB (the PCK chain dominates).
pub const QUOTE_SIZE_MAX_BYTES: usize = 64 * 1024;
/// Largest collateral item (one CRL, one JSON document, one PEM chain).
pub const COLLATERAL_ITEM_SIZE_MAX_BYTES: usize = 1024 * 1024;

const HEADER_BYTES: usize = 48;
const TD_REPORT_10_BYTES: usize = 584;
const TD_REPORT_15_BYTES: usize = 648;
const QE_REPORT_BYTES: usize = 384;
const TEE_TYPE_TDX: u32 = 0x81;
const ATTESTATION_KEY_ECDSA_P256: u16 = 2;
const CERT_DATA_QE_REPORT: u16 = 6;
const CERT_DATA_PCK_CHAIN: u16 = 5;
/// TD attribute bit 0: the TD runs in debug mode (the host can read its memory).
const TD_ATTRIBUTE_DEBUG: u64 = 1;

/// Why a quote or its collateral was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuoteError {
    #[error("the quote is {len} bytes, more than the {max} we accept")]
    TooLarge { len: usize, max: usize },
    #[error("the quote ends early: {what} needs bytes up to offset {needed}, it has {len}")]
    Truncated {
        what: &'static str,
        needed: usize,
        len: usize,
    },
    #[error("quote version {0} is not a TDX quote version (4 or 5)")]
    UnsupportedVersion(u16),
    #[error("TEE type {0:#x} is not TDX (0x81)")]
    NotTdx(u32),
    #[error("attestation key type {0} is not ECDSA P-256 (2)")]
    UnsupportedKeyType(u16),
    #[error("version 5 body type {0} is not a TD report (2 for TDX 1.0, 3 for TDX 1.5)")]
    UnsupportedBodyType(u16),
    #[error("version 5 body size {size} does not match body type {body_type}")]
    BodySizeMismatch { body_type: u16, size: u32 },
    #[error("certification data type {0} is not a QE report (6)")]
    UnsupportedCertificationData(u16),
    #[error("the QE report's certification data is type {0}, not a PCK certificate chain (5)")]
    NoPckChain(u16),
    #[error("collateral: {0}")]
    Collateral(String),
    #[error("verification failed: {0}")]
    Verification(String),
    #[error(
        "the quote is signed by the Cloister SIMULATION root (development keys anyone can use, \
         NOT Intel): it is not evidence of a TDX trust domain and nothing in it is confidential; \
         it is accepted only when simulation is explicitly allowed"
    )]
    SimulatedRoot,
}

/// The fixed-size TD report body that a quote signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TdReport {
    /// `1.0` (584 bytes) or `1.5` (648 bytes, adds TEE_TCB_SVN2 and MRSERVICETD).
    pub body_version: &'static str,
    #[serde(serialize_with = "crate::hex_ser")]
    pub tee_tcb_svn: [u8; 16],
    #[serde(serialize_with = "crate::hex_ser")]
    pub mrseam: Digest48,
    #[serde(serialize_with = "crate::hex_ser")]
    pub mrsignerseam: Digest48,
    #[serde(serialize_with = "crate::hex_ser")]
    pub seam_attributes: [u8; 8],
    /// TD attributes, little-endian as in the report; bit 0 is DEBUG.
    pub td_attributes: u64,
    /// Extended features the TD may use (XSAVE feature mask), little-endian.
    pub xfam: u64,
    #[serde(serialize_with = "crate::hex_ser")]
    pub mrtd: Digest48,
    #[serde(serialize_with = "crate::hex_ser")]
    pub mrconfigid: Digest48,
    #[serde(serialize_with = "crate::hex_ser")]
    pub mrowner: Digest48,
    #[serde(serialize_with = "crate::hex_ser")]
    pub mrownerconfig: Digest48,
    #[serde(serialize_with = "crate::hex48_array4")]
    pub rtmrs: [Digest48; 4],
    #[serde(serialize_with = "crate::hex_ser")]
    pub report_data: [u8; 64],
    /// TDX 1.5 only.
    #[serde(
        serialize_with = "crate::hex_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// TDX 1.5 only.
    #[serde(
        serialize_with = "crate::hex_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub mrservicetd: Option<Digest48>,
}

impl TdReport {
    /// Whether the DEBUG attribute is set: such a TD's memory is readable by the host.
    pub fn debug(&self) -> bool {
        self.td_attributes & TD_ATTRIBUTE_DEBUG != 0
    }
}

/// A parsed TDX quote. Nothing in it is trusted until [`verify`] says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub version: u16,
    pub qe_vendor_id: [u8; 16],
    pub report: TdReport,
    /// The bytes the attestation key signs: header and body (for v5, with its type and size).
    pub signed_len: usize,
    /// ECDSA P-256 signature (r || s) over the signed bytes.
    pub signature: [u8; 64],
    /// The attestation public key (x || y).
    pub attestation_key: [u8; 64],
    /// The quoting enclave's report; its report data binds the attestation key.
    pub qe_report: [u8; QE_REPORT_BYTES],
    pub qe_report_signature: [u8; 64],
    pub qe_auth_data: Vec<u8>,
    /// PEM certificates: PCK leaf, platform or processor CA, root.
    pub pck_chain_pem: Vec<u8>,
    /// Unsigned bytes after the signature data (padding of the buffer the quote came in).
    pub trailing_bytes: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], QuoteError> {
        let end = self.pos.checked_add(n).ok_or(QuoteError::Truncated {
            what,
            needed: usize::MAX,
            len: self.bytes.len(),
        })?;
        let out = self.bytes.get(self.pos..end).ok_or(QuoteError::Truncated {
            what,
            needed: end,
            len: self.bytes.len(),
        })?;
        self.pos = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], QuoteError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, QuoteError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, QuoteError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, QuoteError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
}

fn parse_td_report(r: &mut Reader<'_>, tdx15: bool) -> Result<TdReport, QuoteError> {
    let tee_tcb_svn = r.array("TEE_TCB_SVN")?;
    let mrseam = r.array("MRSEAM")?;
    let mrsignerseam = r.array("MRSIGNERSEAM")?;
    let seam_attributes = r.array("SEAMATTRIBUTES")?;
    let td_attributes = r.u64("TDATTRIBUTES")?;
    let xfam = r.u64("XFAM")?;
    let mrtd = r.array("MRTD")?;
    let mrconfigid = r.array("MRCONFIGID")?;
    let mrowner = r.array("MROWNER")?;
    let mrownerconfig = r.array("MROWNERCONFIG")?;
    let rtmrs = [
        r.array("RTMR0")?,
        r.array("RTMR1")?,
        r.array("RTMR2")?,
        r.array("RTMR3")?,
    ];
    let report_data = r.array("REPORTDATA")?;
    let (tee_tcb_svn2, mrservicetd) = if tdx15 {
        (
            Some(r.array("TEE_TCB_SVN2")?),
            Some(r.array("MRSERVICETD")?),
        )
    } else {
        (None, None)
    };
    Ok(TdReport {
        body_version: if tdx15 { "1.5" } else { "1.0" },
        tee_tcb_svn,
        mrseam,
        mrsignerseam,
        seam_attributes,
        td_attributes,
        xfam,
        mrtd,
        mrconfigid,
        mrowner,
        mrownerconfig,
        rtmrs,
        report_data,
        tee_tcb_svn2,
        mrservicetd,
    })
}

impl Quote {
    /// Parses a TDX quote (version 4 or 5). Checks structure only, no signature.
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        if bytes.len() > QUOTE_SIZE_MAX_BYTES {
            return Err(QuoteError::TooLarge {
                len: bytes.len(),
                max: QUOTE_SIZE_MAX_BYTES,
            });
        }
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u16("version")?;
        let key_type = r.u16("attestation key type")?;
        let tee_type = r.u32("TEE type")?;
        let _qe_svn_and_pce_svn = r.take(4, "reserved")?;
        let qe_vendor_id = r.array("QE vendor ID")?;
        let _user_data = r.take(20, "user data")?;
        debug_assert_eq!(r.pos, HEADER_BYTES);
        if version != 4 && version != 5 {
            return Err(QuoteError::UnsupportedVersion(version));
        }
        if tee_type != TEE_TYPE_TDX {
            return Err(QuoteError::NotTdx(tee_type));
        }
        if key_type != ATTESTATION_KEY_ECDSA_P256 {
            return Err(QuoteError::UnsupportedKeyType(key_type));
        }
        let report = if version == 4 {
            parse_td_report(&mut r, false)?
        } else {
            let body_type = r.u16("body type")?;
            let size = r.u32("body size")?;
            let tdx15 = match body_type {
                2 => false,
                3 => true,
                other => return Err(QuoteError::UnsupportedBodyType(other)),
            };
            let expected = if tdx15 {
                TD_REPORT_15_BYTES
            } else {
                TD_REPORT_10_BYTES
            };
            if size as usize != expected {
                return Err(QuoteError::BodySizeMismatch { body_type, size });
            }
            parse_td_report(&mut r, tdx15)?
        };
        let signed_len = r.pos;
        let sig_data_len = r.u32("signature data length")? as usize;
        let sig_data = r.take(sig_data_len, "signature data")?;
        // Real quotes arrive in fixed-size buffers (the CCEL sample is 8000 bytes): bytes
        // after the signature data are not signed and are ignored, as Intel's QVL does.
        let trailing_bytes = bytes.len() - r.pos;
        let mut s = Reader {
            bytes: sig_data,
            pos: 0,
        };
        let signature = s.array("quote signature")?;
        let attestation_key = s.array("attestation key")?;
        let cert_type = s.u16("certification data type")?;
        let cert_len = s.u32("certification data size")? as usize;
        if cert_type != CERT_DATA_QE_REPORT {
            return Err(QuoteError::UnsupportedCertificationData(cert_type));
        }
        let mut c = Reader {
            bytes: s.take(cert_len, "certification data")?,
            pos: 0,
        };
        let qe_report = c.array("QE report")?;
        let qe_report_signature = c.array("QE report signature")?;
        let auth_len = c.u16("QE authentication data size")? as usize;
        let qe_auth_data = c.take(auth_len, "QE authentication data")?.to_vec();
        let inner_type = c.u16("PCK certification data type")?;
        let inner_len = c.u32("PCK certification data size")? as usize;
        if inner_type != CERT_DATA_PCK_CHAIN {
            return Err(QuoteError::NoPckChain(inner_type));
        }
        let pck_chain_pem = c.take(inner_len, "PCK certificate chain")?.to_vec();
        Ok(Quote {
            version,
            qe_vendor_id,
            report,
            signed_len,
            signature,
            attestation_key,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            pck_chain_pem,
            trailing_bytes,
        })
    }
}

/// The collateral Intel's PCS (or a PCCS) serves for one platform, as the caller fetched it.
#[derive(Debug, Clone)]
pub struct Collateral {
    inner: QuoteCollateralV3,
}

#[derive(Deserialize)]
struct TcbInfoResponse<'a> {
    #[serde(rename = "tcbInfo", borrow)]
    tcb_info: &'a RawValue,
    signature: String,
}

#[derive(Deserialize)]
struct QeIdentityResponse<'a> {
    #[serde(rename = "enclaveIdentity", borrow)]
    enclave_identity: &'a RawValue,
    signature: String,
}

fn check_item_size(name: &str, bytes: &[u8]) -> Result<(), QuoteError> {
    if bytes.len() > COLLATERAL_ITEM_SIZE_MAX_BYTES {
        return Err(QuoteError::Collateral(format!(
            "{name} is {} bytes, more than {COLLATERAL_ITEM_SIZE_MAX_BYTES}",
            bytes.len()
        )));
    }
    Ok(())
}

fn utf8(name: &str, bytes: &[u8]) -> Result<String, QuoteError> {
    check_item_size(name, bytes)?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| QuoteError::Collateral(format!("{name} is not UTF-8")))
}

/// The raw PCS responses that make up the collateral, each exactly as served.
#[derive(Debug, Clone, Copy)]
pub struct CollateralFiles<'a> {
    /// `GET /tdx/certification/v4/tcb` body: `{"tcbInfo":{...},"signature":"hex"}`.
    pub tcb_info: &'a [u8],
    /// `GET /tdx/certification/v4/qe/identity` body: `{"enclaveIdentity":{...},"signature":"hex"}`.
    pub qe_identity: &'a [u8],
    /// PCK CRL (DER).
    pub pck_crl: &'a [u8],
    /// Intel SGX Root CA CRL (DER).
    pub root_ca_crl: &'a [u8],
    /// PEM issuer chains from the response headers (signing certificate, then root).
    pub pck_crl_issuer_chain: &'a [u8],
    pub tcb_info_issuer_chain: &'a [u8],
    pub qe_identity_issuer_chain: &'a [u8],
}

impl Collateral {
    /// Builds the collateral from the PCS responses. Signatures are checked by [`verify`].
    pub fn from_files(files: CollateralFiles<'_>) -> Result<Self, QuoteError> {
        check_item_size("tcb_info.json", files.tcb_info)?;
        check_item_size("qe_identity.json", files.qe_identity)?;
        check_item_size("pck_crl.der", files.pck_crl)?;
        check_item_size("root_ca_crl.der", files.root_ca_crl)?;
        let tcb: TcbInfoResponse<'_> = serde_json::from_slice(files.tcb_info)
            .map_err(|e| QuoteError::Collateral(format!("tcb_info.json: {e}")))?;
        let qe: QeIdentityResponse<'_> = serde_json::from_slice(files.qe_identity)
            .map_err(|e| QuoteError::Collateral(format!("qe_identity.json: {e}")))?;
        let tcb_info_signature = hex::decode(&tcb.signature)
            .map_err(|e| QuoteError::Collateral(format!("tcb_info.json signature: {e}")))?;
        let qe_identity_signature = hex::decode(&qe.signature)
            .map_err(|e| QuoteError::Collateral(format!("qe_identity.json signature: {e}")))?;
        Ok(Collateral {
            inner: QuoteCollateralV3 {
                pck_crl_issuer_chain: utf8("pck_crl_issuer_chain.pem", files.pck_crl_issuer_chain)?,
                root_ca_crl: files.root_ca_crl.to_vec(),
                pck_crl: files.pck_crl.to_vec(),
                tcb_info_issuer_chain: utf8(
                    "tcb_info_issuer_chain.pem",
                    files.tcb_info_issuer_chain,
                )?,
                tcb_info: tcb.tcb_info.get().to_owned(),
                tcb_info_signature,
                qe_identity_issuer_chain: utf8(
                    "qe_identity_issuer_chain.pem",
                    files.qe_identity_issuer_chain,
                )?,
                qe_identity: qe.enclave_identity.get().to_owned(),
                qe_identity_signature,
                pck_certificate_chain: None,
            },
        })
    }
}

impl Collateral {
    /// Serializes the collateral as one JSON document (dcap-qvl's `QuoteCollateralV3`
    /// layout, byte fields in hex): the form a box serves beside its quote.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.inner).unwrap_or_default()
    }

    /// Reads the JSON document [`Collateral::to_json`] writes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, QuoteError> {
        check_item_size("collateral JSON", bytes)?;
        let inner: QuoteCollateralV3 = serde_json::from_slice(bytes)
            .map_err(|e| QuoteError::Collateral(format!("collateral JSON: {e}")))?;
        Ok(Collateral { inner })
    }
}

/// The platform's TCB status as Intel's TCB info rates it, after merging the QE's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TcbStatus {
    UpToDate,
    SWHardeningNeeded,
    ConfigurationNeeded,
    ConfigurationAndSWHardeningNeeded,
    OutOfDate,
    OutOfDateConfigurationNeeded,
    TDRelaunchAdvised,
    TDRelaunchAdvisedConfigurationNeeded,
    /// No level of the TCB info covers the platform's SVNs (Intel QVL calls this
    /// TCB_NOT_SUPPORTED): every signature verified, but the TCB cannot be rated.
    NoMatchingTcbLevel,
}

impl TcbStatus {
    fn from_dcap(status: dcap_qvl::TcbStatus) -> Result<Self, QuoteError> {
        use dcap_qvl::TcbStatus as D;
        Ok(match status {
            D::UpToDate => Self::UpToDate,
            D::SWHardeningNeeded => Self::SWHardeningNeeded,
            D::ConfigurationNeeded => Self::ConfigurationNeeded,
            D::ConfigurationAndSWHardeningNeeded => Self::ConfigurationAndSWHardeningNeeded,
            D::OutOfDate => Self::OutOfDate,
            D::OutOfDateConfigurationNeeded => Self::OutOfDateConfigurationNeeded,
            D::TDRelaunchAdvised => Self::TDRelaunchAdvised,
            D::TDRelaunchAdvisedConfigurationNeeded => Self::TDRelaunchAdvisedConfigurationNeeded,
            D::Revoked => {
                return Err(QuoteError::Verification(
                    "the platform TCB is revoked".into(),
                ));
            }
        })
    }
}

/// The root a verified quote chains to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustRoot {
    /// Intel's SGX Root CA ([`INTEL_SGX_ROOT_CA_DER`]): a real TDX platform signed it.
    Intel,
    /// Cloister's development root ([`SIMULATION_ROOT_CA_DER`]): a simulated TEE, NOT
    /// confidential. Only ever the answer when [`VerifyOptions::accept_simulated`] is set.
    Simulated,
}

impl TrustRoot {
    /// The root certificate (DER).
    pub fn certificate_der(self) -> &'static [u8] {
        match self {
            Self::Intel => INTEL_SGX_ROOT_CA_DER,
            Self::Simulated => SIMULATION_ROOT_CA_DER,
        }
    }
}

/// How [`verify_with_options`] chooses its trust anchors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Also accept quotes that chain to the simulation root. Off by default; for
    /// development and tests only. The verdict then says [`TrustRoot::Simulated`] and
    /// carries a warning.
    pub accept_simulated: bool,
}

/// The warning a verdict under the simulation root carries.
pub const SIMULATED_WARNING: &str = "SIMULATED: signed by the Cloister development root, NOT \
    Intel; this is not a TDX trust domain and nothing it holds is confidential";

/// What a verified quote says: who signed it is settled (see `trust_root`), what it shows is here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The root the quote chains to. Anything but [`TrustRoot::Intel`] is not confidential.
    pub trust_root: TrustRoot,
    /// Set, loudly, when `trust_root` is not Intel's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<&'static str>,
    pub quote_version: u16,
    pub tcb_status: TcbStatus,
    /// Intel security advisories (INTEL-SA-xxxxx) that apply to the platform's TCB level.
    pub advisory_ids: Vec<String>,
    /// Whether the TD runs in debug mode (TD attribute bit 0).
    pub debug: bool,
    pub td: TdReport,
}

/// Verifies a quote against collateral at `now_unix_s` (seconds since the Unix epoch).
///
/// Every signature must hold and chain to [`INTEL_SGX_ROOT_CA_DER`], with no certificate
/// revoked or expired at `now`. A quote whose TCB matches no level of the TCB info is still
/// returned, with [`TcbStatus::NoMatchingTcbLevel`]; a revoked TCB is an error. The verdict
/// says nothing about whether the measurements are the expected ones: see [`Verdict::check`].
///
/// A quote that chains to the simulation root instead is rejected with
/// [`QuoteError::SimulatedRoot`]; see [`verify_with_options`] to accept it.
pub fn verify(
    quote_bytes: &[u8],
    collateral: &Collateral,
    now_unix_s: u64,
) -> Result<Verdict, QuoteError> {
    verify_with_options(
        quote_bytes,
        collateral,
        now_unix_s,
        &VerifyOptions::default(),
    )
}

/// [`verify`], with the trust anchors chosen by `options`: Intel's root always, the
/// simulation root only with `accept_simulated`. Without it, a quote that verifies under the
/// simulation root is rejected with [`QuoteError::SimulatedRoot`], so that the reason is
/// plain.
pub fn verify_with_options(
    quote_bytes: &[u8],
    collateral: &Collateral,
    now_unix_s: u64,
    options: &VerifyOptions,
) -> Result<Verdict, QuoteError> {
    let intel = verify_with_root(quote_bytes, collateral, now_unix_s, TrustRoot::Intel);
    let Err(intel_error) = intel else {
        return intel;
    };
    if matches!(intel_error, QuoteError::Verification(_)) {
        // Only a chain failure can mean "another root": parse errors stand as they are.
        match verify_with_root(quote_bytes, collateral, now_unix_s, TrustRoot::Simulated) {
            Ok(verdict) if options.accept_simulated => return Ok(verdict),
            Ok(_) => return Err(QuoteError::SimulatedRoot),
            Err(_) => {}
        }
    }
    Err(intel_error)
}

/// Verifies against exactly one root.
fn verify_with_root(
    quote_bytes: &[u8],
    collateral: &Collateral,
    now_unix_s: u64,
    root: TrustRoot,
) -> Result<Verdict, QuoteError> {
    let quote = Quote::parse(quote_bytes)?;
    let warning = (root == TrustRoot::Simulated).then_some(SIMULATED_WARNING);
    let verifier = dcap_qvl::verify::QuoteVerifier::new(root.certificate_der().to_vec())
        // Debug TDs are reported in the verdict and rejected by `Verdict::check`.
        .allow_debug(true);
    match verifier.verify(quote_bytes, &collateral.inner, now_unix_s) {
        Ok(report) => Ok(Verdict {
            trust_root: root,
            warning,
            quote_version: quote.version,
            tcb_status: parse_status_name(&report.status)?,
            advisory_ids: report.advisory_ids,
            debug: quote.report.debug(),
            td: quote.report,
        }),
        Err(e) => {
            // dcap-qvl =0.7.1 matches the TCB level only after every signature and chain
            // check has passed (verify_impl, step 8), so this error means "signed by Intel,
            // but the TCB cannot be rated". The version pin in Cargo.toml guards the order.
            if e.root_cause().to_string() == "No matching TCB level found" {
                return Ok(Verdict {
                    trust_root: root,
                    warning,
                    quote_version: quote.version,
                    tcb_status: TcbStatus::NoMatchingTcbLevel,
                    advisory_ids: Vec::new(),
                    debug: quote.report.debug(),
                    td: quote.report,
                });
            }
            Err(QuoteError::Verification(format!("{e:#}")))
        }
    }
}

/// Reads dcap-qvl's merged status, which it hands out by name only.
fn parse_status_name(name: &str) -> Result<TcbStatus, QuoteError> {
    let status: dcap_qvl::TcbStatus =
        serde_json::from_value(serde_json::Value::String(name.to_owned()))
            .map_err(|_| QuoteError::Verification(format!("unknown TCB status {name:?}")))?;
    TcbStatus::from_dcap(status)
}

/// What the verifier of a quote expects to see in it.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// Registers that must match; a register absent here is not checked.
    pub measurements: Option<Measurements>,
    /// The 64 bytes of report data the TD must have bound (nonce, key hashes).
    pub report_data: Option<[u8; 64]>,
    /// TCB statuses accepted besides `UpToDate`.
    pub accepted_tcb_statuses: Vec<TcbStatus>,
    /// Accept a debug TD. Never for production.
    pub allow_debug: bool,
    /// Accept a verdict under the simulation root. Never for production.
    pub accept_simulated: bool,
}

/// One way in which a verified quote differs from what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub field: String,
    pub expected: String,
    pub actual: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: expected {}, the quote has {}",
            self.field, self.expected, self.actual
        )
    }
}

impl Verdict {
    /// Compares the verdict with the expectations; returns every mismatch (empty: accept).
    pub fn check(&self, expected: &Expectations) -> Vec<Mismatch> {
        let mut out = Vec::new();
        if self.trust_root != TrustRoot::Intel && !expected.accept_simulated {
            out.push(Mismatch {
                field: "trust_root".into(),
                expected: "intel".into(),
                actual: "simulated (the Cloister development root, NOT Intel: not confidential)"
                    .into(),
            });
        }
        if self.tcb_status != TcbStatus::UpToDate
            && !expected.accepted_tcb_statuses.contains(&self.tcb_status)
        {
            out.push(Mismatch {
                field: "tcb_status".into(),
                expected: "UpToDate".into(),
                actual: format!("{:?}", self.tcb_status),
            });
        }
        if self.debug && !expected.allow_debug {
            out.push(Mismatch {
                field: "td_attributes.debug".into(),
                expected: "off".into(),
                actual: "on (the host can read the TD's memory)".into(),
            });
        }
        if let Some(rd) = &expected.report_data
            && rd != &self.td.report_data
        {
            out.push(Mismatch {
                field: "report_data".into(),
                expected: hex::encode(rd),
                actual: hex::encode(self.td.report_data),
            });
        }
        if let Some(m) = &expected.measurements {
            let actual = [
                ("mrtd", &self.td.mrtd),
                ("rtmr0", &self.td.rtmrs[0]),
                ("rtmr1", &self.td.rtmrs[1]),
                ("rtmr2", &self.td.rtmrs[2]),
                ("rtmr3", &self.td.rtmrs[3]),
            ];
            for (name, value) in actual {
                if let Some(want) = m.register(name)
                    && want != value
                {
                    out.push(Mismatch {
                        field: name.into(),
                        expected: hex::encode(want),
                        actual: hex::encode(value),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &[u8] = include_bytes!("../tests/data/go-tdx-guest/tdx_prod_quote_SPR_E4.dat");
    const V5: &[u8] = include_bytes!("../tests/data/go-tdx-guest/quote_v5_sample.dat");
    /// 2023-07-01T01:00:00Z: inside the validity of the v4 quote's collateral.
    pub(crate) const NOW_2023_07_01: u64 = 1_688_173_200;

    macro_rules! collateral {
        ($dir:literal) => {
            Collateral::from_files(CollateralFiles {
                tcb_info: include_bytes!(concat!(
                    "../tests/data/go-tdx-guest/",
                    $dir,
                    "/tcb_info.json"
                )),
                qe_identity: include_bytes!(concat!(
                    "../tests/data/go-tdx-guest/",
                    $dir,
                    "/qe_identity.json"
                )),
                pck_crl: include_bytes!(concat!(
                    "../tests/data/go-tdx-guest/",
                    $dir,
                    "/pck_crl.der"
                )),
                root_ca_crl: include_bytes!(concat!(
                    "../tests/data/go-tdx-guest/",
                    $dir,
                    "/root_ca_crl.der"
                )),
                pck_crl_issuer_chain: include_bytes!(concat!(
                    "../tests/data/go-tdx-guest/",
                    $dir,
                    "/pck_crl_issuer_chain.pem"
                )),
                tcb_info_issuer_chain: include_bytes!(concat!(
                    "../tests/data/go-tdx-guest/",
                    $dir,
                    "/tcb_info_issuer_chain.pem"
                )),
                qe_identity_issuer_chain: include_bytes!(concat!(
                    "../tests/data/go-tdx-guest/",
                    $dir,
                    "/qe_identity_issuer_chain.pem"
                )),
            })
            .unwrap()
        };
    }
    pub(crate) fn collateral_v4() -> Collateral {
        collateral!("collateral-v4")
    }

    #[test]
    fn v4_quote_parses_into_its_parts() {
        let q = Quote::parse(V4).unwrap();
        assert_eq!(q.version, 4);
        assert_eq!(q.report.body_version, "1.0");
        assert_eq!(q.signed_len, 48 + 584);
        assert_eq!(
            q.pck_chain_pem
                .windows(27)
                .filter(|w| w == b"-----BEGIN CERTIFICATE-----")
                .count(),
            3
        );
        // The QE report's data binds the attestation key: SHA-256(key || auth data) in its first half.
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, q.attestation_key);
        sha2::Digest::update(&mut h, &q.qe_auth_data);
        let bound: [u8; 32] = sha2::Digest::finalize(h).into();
        assert_eq!(&q.qe_report[320..352], &bound);
    }

    #[test]
    fn v5_quote_parses_with_its_body_type() {
        let q = Quote::parse(V5).unwrap();
        assert_eq!(q.version, 5);
        let body_type = u16::from_le_bytes([V5[48], V5[49]]);
        assert_eq!(
            q.report.body_version,
            if body_type == 3 { "1.5" } else { "1.0" }
        );
        assert_eq!(q.report.mrservicetd.is_some(), body_type == 3);
        assert_eq!(
            q.signed_len,
            48 + 6 + if body_type == 3 { 648 } else { 584 }
        );
    }

    #[test]
    fn truncated_or_extended_quotes_are_errors() {
        for len in [0, 1, 47, 48, 631, 632, 635, 700, V4.len() - 40] {
            assert!(Quote::parse(&V4[..len]).is_err(), "length {len}");
        }
        // The sample carries 39 unsigned bytes after its signature data, as padding does.
        assert_eq!(Quote::parse(V4).unwrap().trailing_bytes, 39);
    }

    #[test]
    fn v4_quote_verifies_and_reports_no_matching_tcb_level() {
        let v = verify(V4, &collateral_v4(), NOW_2023_07_01).unwrap();
        assert_eq!(v.quote_version, 4);
        assert_eq!(v.tcb_status, TcbStatus::NoMatchingTcbLevel);
        assert_eq!(v.td, Quote::parse(V4).unwrap().report);
        // A verdict with no matching TCB level is never acceptable by default.
        assert!(
            v.check(&Expectations::default())
                .iter()
                .any(|m| m.field == "tcb_status")
        );
    }

    #[test]
    fn v4_quote_fails_once_its_collateral_expired() {
        const NOW_2053: u64 = 2_635_000_000;
        let err = verify(V4, &collateral_v4(), NOW_2053).unwrap_err();
        assert!(matches!(err, QuoteError::Verification(_)), "{err}");
    }

    #[test]
    fn v4_quote_fails_before_its_collateral_was_issued() {
        const NOW_2020: u64 = 1_590_000_000;
        assert!(verify(V4, &collateral_v4(), NOW_2020).is_err());
    }

    #[test]
    fn v4_quote_fails_with_another_platforms_tcb_info() {
        let err = verify(V4, &collateral!("collateral-v5"), NOW_2023_07_01).unwrap_err();
        assert!(matches!(err, QuoteError::Verification(_)), "{err}");
    }

    #[test]
    fn tampered_collateral_fails() {
        let good = include_bytes!("../tests/data/go-tdx-guest/collateral-v4/tcb_info.json");
        let text = std::str::from_utf8(good).unwrap().replacen(
            "\"tcbEvaluationDataNumber\":15",
            "\"tcbEvaluationDataNumber\":16",
            1,
        );
        assert_ne!(text.as_bytes(), good);
        let c = Collateral::from_files(CollateralFiles {
            tcb_info: text.as_bytes(),
            qe_identity: include_bytes!(
                "../tests/data/go-tdx-guest/collateral-v4/qe_identity.json"
            ),
            pck_crl: include_bytes!("../tests/data/go-tdx-guest/collateral-v4/pck_crl.der"),
            root_ca_crl: include_bytes!("../tests/data/go-tdx-guest/collateral-v4/root_ca_crl.der"),
            pck_crl_issuer_chain: include_bytes!(
                "../tests/data/go-tdx-guest/collateral-v4/pck_crl_issuer_chain.pem"
            ),
            tcb_info_issuer_chain: include_bytes!(
                "../tests/data/go-tdx-guest/collateral-v4/tcb_info_issuer_chain.pem"
            ),
            qe_identity_issuer_chain: include_bytes!(
                "../tests/data/go-tdx-guest/collateral-v4/qe_identity_issuer_chain.pem"
            ),
        })
        .unwrap();
        assert!(verify(V4, &c, NOW_2023_07_01).is_err());
    }

    #[test]
    fn every_single_byte_flip_in_the_signed_region_fails() {
        let collateral = collateral_v4();
        let signed_len = Quote::parse(V4).unwrap().signed_len;
        let mut q = V4.to_vec();
        let started = std::time::Instant::now();
        for pos in 0..signed_len {
            q[pos] ^= 0x01;
            let r = verify(&q, &collateral, NOW_2023_07_01);
            assert!(r.is_err(), "flipping byte {pos} still verifies: {r:?}");
            q[pos] ^= 0x01;
        }
        eprintln!("{signed_len} flips in {:?}", started.elapsed());
    }

    #[test]
    fn attestation_key_signs_exactly_the_parsed_signed_region() {
        use p256::ecdsa::signature::Verifier;
        use p256::ecdsa::{Signature, VerifyingKey};
        let cos = include_bytes!("../tests/data/go-tdx-guest/ccel/cos-113-tdx-quote.dat");
        for bytes in [V4, V5, &cos[..]] {
            let q = Quote::parse(bytes).unwrap();
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(&q.attestation_key);
            let key = VerifyingKey::from_sec1_bytes(&sec1).unwrap();
            let sig = Signature::from_slice(&q.signature).unwrap();
            assert!(
                key.verify(&bytes[..q.signed_len], &sig).is_ok(),
                "v{}",
                q.version
            );
            assert!(key.verify(&bytes[..q.signed_len - 1], &sig).is_err());
        }
    }

    #[test]
    fn collateral_survives_a_json_round_trip() {
        let json = collateral_v4().to_json();
        let back = Collateral::from_json(json.as_bytes()).unwrap();
        let v = verify(V4, &back, NOW_2023_07_01).unwrap();
        assert_eq!(v.tcb_status, TcbStatus::NoMatchingTcbLevel);
        assert!(Collateral::from_json(b"{}").is_err());
    }

    #[test]
    fn an_intel_quote_chains_to_intel_whether_or_not_simulation_is_accepted() {
        for accept_simulated in [false, true] {
            let options = VerifyOptions { accept_simulated };
            let v = verify_with_options(V4, &collateral_v4(), NOW_2023_07_01, &options).unwrap();
            assert_eq!(v.trust_root, TrustRoot::Intel);
            assert_eq!(v.warning, None);
            assert!(
                !v.check(&Expectations::default())
                    .iter()
                    .any(|m| m.field == "trust_root")
            );
        }
        // A broken Intel quote stays an Intel verification error, not a simulation one.
        let mut q = V4.to_vec();
        q[200] ^= 1;
        let options = VerifyOptions {
            accept_simulated: true,
        };
        let err = verify_with_options(&q, &collateral_v4(), NOW_2023_07_01, &options).unwrap_err();
        assert!(matches!(err, QuoteError::Verification(_)), "{err}");
    }

    #[test]
    fn the_simulation_root_is_named_as_such_and_is_not_intels() {
        let name = b"Cloister SIMULATED TDX root - NOT INTEL - not confidential";
        assert!(
            SIMULATION_ROOT_CA_DER
                .windows(name.len())
                .any(|w| w == name)
        );
        assert_ne!(SIMULATION_ROOT_CA_DER, INTEL_SGX_ROOT_CA_DER);
        assert_eq!(TrustRoot::Intel.certificate_der(), INTEL_SGX_ROOT_CA_DER);
    }

    #[test]
    fn root_ca_is_intels() {
        let fp = <sha2::Sha256 as sha2::Digest>::digest(INTEL_SGX_ROOT_CA_DER);
        assert_eq!(
            hex::encode(fp),
            "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
        );
    }
}
