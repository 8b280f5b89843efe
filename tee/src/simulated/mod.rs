//! The simulated TEE (cargo feature `simulated`, off by default): NOT confidential.
//!
//! It stands in for a TDX trust domain on laptops and in tests. Its quotes are real TDX v4
//! quotes: the MRTD and RTMRs of a given `measurements.json`, the caller's report data, the
//! debug bit off, signed by an attestation key whose QE report is signed by a PCK
//! certificate, all under the development chain in `dev-chain/` whose root is named
//! "Cloister SIMULATED TDX root - NOT INTEL - not confidential". Its event log is a
//! CCEL-format TCG log built from the measurements' events, so it replays to the same RTMRs.
//!
//! Every private key of that chain is derived from a public label ([`dev_key`]): anyone can
//! forge these quotes, which is why measurements' verifier refuses the simulation root unless
//! the caller asks for it explicitly. This module must never be compiled into a production
//! image, and must never present its quotes as anything but simulated.

use cloister_measurements::quote::{Collateral, CollateralFiles, INTEL_QE_VENDOR_ID};
use cloister_measurements::{Digest48, Measurements, measurements::replay, sha384};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha256};

use crate::{Tee, TeeError, TeeKind};

/// The common name of the simulation root, which says what it is.
pub const ROOT_CA_NAME: &str = "Cloister SIMULATED TDX root - NOT INTEL - not confidential";

/// The mark every page and API answer carries when this backend is in use.
pub const SIMULATED_MARK: &str = "SIMULATED, not confidential";

/// The development chain and collateral, written by `make_dev_chain.py` (deterministic).
pub mod dev_chain {
    /// The simulation root (PEM). The same certificate, DER, is
    /// `cloister_measurements::quote::SIMULATION_ROOT_CA_DER`.
    pub const ROOT_CA_PEM: &[u8] = include_bytes!("dev-chain/root_ca.pem");
    /// PCK leaf, PCK platform CA, root: what a quote's certification data carries.
    pub const PCK_CHAIN_PEM: &[u8] = include_bytes!("dev-chain/pck_chain.pem");
    pub const PCK_CRL_ISSUER_CHAIN_PEM: &[u8] =
        include_bytes!("dev-chain/pck_crl_issuer_chain.pem");
    /// TCB signing certificate and root; it signs both the TCB info and the QE identity.
    pub const TCB_INFO_ISSUER_CHAIN_PEM: &[u8] =
        include_bytes!("dev-chain/tcb_info_issuer_chain.pem");
    pub const PCK_CRL_DER: &[u8] = include_bytes!("dev-chain/pck_crl.der");
    pub const ROOT_CA_CRL_DER: &[u8] = include_bytes!("dev-chain/root_ca_crl.der");
    pub const TCB_INFO_JSON: &[u8] = include_bytes!("dev-chain/tcb_info.json");
    pub const QE_IDENTITY_JSON: &[u8] = include_bytes!("dev-chain/qe_identity.json");
}

// The simulated platform. make_dev_chain.py writes the same values into the PCK certificate,
// the TCB info and the QE identity; the tests check that quotes verify UpToDate with them.
const CPU_SVN: [u8; 16] = [3, 3, 2, 2, 2, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0];
const PCE_SVN: u16 = 11;
const TEE_TCB_SVN: [u8; 16] = [3, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const QE_ISVSVN: u16 = 4;
const TD_QE_PRODID: u16 = 2;
/// SGX enclave attributes of the QE: INIT and MODE64BIT, not DEBUG.
const QE_ATTRIBUTES: [u8; 16] = [0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// TD attributes: SEPT_VE_DISABLE (bit 28), which verifiers require; DEBUG (bit 0) off.
const TD_ATTRIBUTES: u64 = 1 << 28;
const TD_ATTRIBUTE_DEBUG: u64 = 1;
/// XFAM of a TD with x87, SSE, AVX, AVX-512, PKRU, CET and AMX state enabled.
const XFAM: u64 = 0x0006_1ae7;

const QUOTE_VERSION: u16 = 4;
const ATTESTATION_KEY_ECDSA_P256: u16 = 2;
const TEE_TYPE_TDX: u32 = 0x81;
const CERT_DATA_PCK_CHAIN: u16 = 5;
const CERT_DATA_QE_REPORT: u16 = 6;
const QE_AUTH_DATA_BYTES: usize = 32;
const QE_REPORT_BYTES: usize = 384;

/// The development key named `label`: its scalar is SHA-256 of
/// `"Cloister SIMULATED TDX dev key: " + label`. Public by design; see the module docs.
pub fn dev_key(label: &str) -> SigningKey {
    let mut h = Sha256::new();
    h.update(b"Cloister SIMULATED TDX dev key: ");
    h.update(label.as_bytes());
    let scalar: [u8; 32] = h.finalize().into();
    // The labels in use give valid scalars; make_dev_chain.py asserts the same.
    SigningKey::from_slice(&scalar)
        .unwrap_or_else(|_| unreachable!("the dev key label {label:?} gives a scalar out of range"))
}

/// The 64-byte raw public key (x || y) of a P-256 key, as quotes carry it.
fn raw_public_key(key: &SigningKey) -> [u8; 64] {
    let point = key.verifying_key().to_sec1_point(false);
    let mut out = [0u8; 64];
    // An uncompressed SEC1 point is 0x04 || x || y.
    out.copy_from_slice(&point.as_bytes()[1..65]);
    out
}

fn sign(key: &SigningKey, message: &[u8]) -> [u8; 64] {
    let sig: Signature = key.sign(message);
    let mut out = [0u8; 64];
    out.copy_from_slice(&sig.to_bytes());
    out
}

fn label_hash32(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

/// The collateral that verifies simulated quotes: TCB info and QE identity signed by the
/// development TCB signing key, the CRLs and issuer chains of the development chain.
pub fn collateral() -> Result<Collateral, TeeError> {
    Collateral::from_files(CollateralFiles {
        tcb_info: dev_chain::TCB_INFO_JSON,
        qe_identity: dev_chain::QE_IDENTITY_JSON,
        pck_crl: dev_chain::PCK_CRL_DER,
        root_ca_crl: dev_chain::ROOT_CA_CRL_DER,
        pck_crl_issuer_chain: dev_chain::PCK_CRL_ISSUER_CHAIN_PEM,
        tcb_info_issuer_chain: dev_chain::TCB_INFO_ISSUER_CHAIN_PEM,
        qe_identity_issuer_chain: dev_chain::TCB_INFO_ISSUER_CHAIN_PEM,
    })
    .map_err(|e| TeeError::Invalid(format!("the development collateral: {e}")))
}

/// Made-up events for an example `measurements.json`: `count` events named "`label` i",
/// each extending the SHA-384 of "`label`/i". For tests and demonstrations: they stand for
/// no real firmware, kernel or command line.
pub fn example_events(label: &str, count: usize) -> Vec<cloister_measurements::Event> {
    (0..count)
        .map(|i| {
            cloister_measurements::Event::new(
                format!("{label} {i}"),
                &sha384(format!("{label}/{i}").as_bytes()),
            )
        })
        .collect()
}

/// An example `measurements.json`, as `cloister measure` writes one, for a simulated TD in
/// tests and demonstrations: MRTD is the SHA-384 of `firmware`, and RTMR0 to RTMR3 each hold
/// the [`example_events`] named by `rtmr_events` (label, count; a count of 0 leaves the
/// register's log empty), with each register the replay of its events, so that
/// [`SimulatedTee::new`] accepts it and its event log replays to the quote's RTMRs.
///
/// ```
/// let m = cloister_tee::simulated::example_measurements(
///     "firmware",
///     [("firmware configuration", 11), ("kernel", 3), ("command line and initrd", 2), ("runtime", 0)],
/// );
/// assert_eq!(m.events.rtmr1.len(), 3);
/// let tee = cloister_tee::simulated::SimulatedTee::new(m.to_json().as_bytes()).unwrap();
/// assert_eq!(tee.registers().1[1], m.rtmr1.unwrap());
/// ```
pub fn example_measurements(firmware: &str, rtmr_events: [(&str, usize); 4]) -> Measurements {
    let [rtmr0, rtmr1, rtmr2, rtmr3] =
        rtmr_events.map(|(label, count)| example_events(label, count));
    let mut m = Measurements {
        mrtd: Some(sha384(firmware.as_bytes())),
        rtmr0: replay(&rtmr0),
        rtmr1: replay(&rtmr1),
        rtmr2: replay(&rtmr2),
        rtmr3: replay(&rtmr3),
        ..Default::default()
    };
    m.events.rtmr0 = rtmr0;
    m.events.rtmr1 = rtmr1;
    m.events.rtmr2 = rtmr2;
    m.events.rtmr3 = rtmr3;
    m
}

/// Where a guest started by `cloister run` finds the measurements of its own image: the host
/// passes measurements.json through QEMU's fw_cfg as `opt/cloister/measurements.json`.
pub const FW_CFG_MEASUREMENTS_PATH: &str =
    "/sys/firmware/qemu_fw_cfg/by_name/opt/cloister/measurements.json/raw";

/// Largest measurements.json we read.
pub const MEASUREMENTS_SIZE_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// A stand-in TEE for laptops and tests; see the module documentation.
pub struct SimulatedTee {
    mrtd: Digest48,
    rtmrs: [Digest48; 4],
    event_log: Vec<u8>,
    collateral_json: Vec<u8>,
    debug: bool,
    attestation_key: SigningKey,
    /// The certification data after the attestation key: QE report, its signature, QE
    /// authentication data and the PCK chain. It binds the attestation key, not the quote.
    certification_data: Vec<u8>,
}

impl std::fmt::Debug for SimulatedTee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedTee")
            .field("mrtd", &hex::encode(self.mrtd))
            .field("debug", &self.debug)
            .finish_non_exhaustive()
    }
}

impl SimulatedTee {
    /// A simulated TD whose MRTD and RTMRs are those of `measurements_json` (as written by
    /// `cloister measure`). Each RTMR's events must replay to its stated value, since the
    /// simulated event log is built from them.
    pub fn new(measurements_json: &[u8]) -> Result<Self, TeeError> {
        let m = Measurements::from_json(measurements_json)
            .map_err(|e| TeeError::Invalid(format!("measurements.json: {e}")))?;
        let mrtd = m
            .mrtd
            .ok_or_else(|| TeeError::Invalid("measurements.json has no mrtd".into()))?;
        let events = [
            &m.events.rtmr0,
            &m.events.rtmr1,
            &m.events.rtmr2,
            &m.events.rtmr3,
        ];
        let stated = [m.rtmr0, m.rtmr1, m.rtmr2, m.rtmr3];
        let mut rtmrs = [[0u8; 48]; 4];
        for i in 0..4 {
            let replayed = replay(events[i]).ok_or_else(|| {
                TeeError::Invalid(format!(
                    "measurements.json: an rtmr{i} event digest is not 48 bytes of hex"
                ))
            })?;
            if let Some(value) = stated[i]
                && value != replayed
            {
                return Err(TeeError::Invalid(format!(
                    "measurements.json: rtmr{i} is {} but its {} events replay to {}; the \
                     simulated event log could not match the quote",
                    hex::encode(value),
                    events[i].len(),
                    hex::encode(replayed)
                )));
            }
            rtmrs[i] = replayed;
        }
        let event_log = build_event_log(&m)?;
        let collateral_json = collateral()?.to_json().into_bytes();
        let attestation_key = dev_key("attestation");
        let certification_data = certification_data(&attestation_key);
        Ok(Self {
            mrtd,
            rtmrs,
            event_log,
            collateral_json,
            debug: false,
            attestation_key,
            certification_data,
        })
    }

    /// [`SimulatedTee::new`] with the measurements.json at `path`, for example
    /// [`FW_CFG_MEASUREMENTS_PATH`].
    pub fn from_file(path: &std::path::Path) -> Result<Self, TeeError> {
        use std::io::Read;
        let io = |source| TeeError::Io {
            what: format!("read {}", path.display()),
            source,
        };
        let mut json = Vec::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MEASUREMENTS_SIZE_MAX_BYTES + 1)
            .read_to_end(&mut json)
            .map_err(|source| TeeError::Io {
                what: format!("read {}", path.display()),
                source,
            })?;
        if json.len() as u64 > MEASUREMENTS_SIZE_MAX_BYTES {
            return Err(TeeError::Invalid(format!(
                "{} is larger than {MEASUREMENTS_SIZE_MAX_BYTES} bytes",
                path.display()
            )));
        }
        Self::new(&json)
    }

    /// Sets the TD's DEBUG attribute in later quotes. Only for testing that verifiers
    /// refuse a debug TD.
    pub fn with_debug(mut self, debug: bool) -> Self {
        self.debug = debug;
        self
    }

    /// The MRTD and RTMR0..3 the quotes show.
    pub fn registers(&self) -> (Digest48, [Digest48; 4]) {
        (self.mrtd, self.rtmrs)
    }

    fn header_and_body(&self, report_data: &[u8; 64]) -> Vec<u8> {
        let mut q = Vec::with_capacity(48 + 584);
        // Header (48 bytes).
        q.extend_from_slice(&QUOTE_VERSION.to_le_bytes());
        q.extend_from_slice(&ATTESTATION_KEY_ECDSA_P256.to_le_bytes());
        q.extend_from_slice(&TEE_TYPE_TDX.to_le_bytes());
        q.extend_from_slice(&QE_ISVSVN.to_le_bytes());
        q.extend_from_slice(&PCE_SVN.to_le_bytes());
        q.extend_from_slice(&INTEL_QE_VENDOR_ID);
        // User data: the first bytes name the simulation to anyone reading the raw quote.
        let mut user_data = [0u8; 20];
        user_data[..20].copy_from_slice(b"CLOISTER-SIMULATED!!");
        q.extend_from_slice(&user_data);
        // TD report body 1.0 (584 bytes).
        q.extend_from_slice(&TEE_TCB_SVN);
        q.extend_from_slice(&sha384(b"Cloister SIMULATED TDX module (MRSEAM)"));
        q.extend_from_slice(&[0u8; 48]); // MRSIGNERSEAM: Intel's module signer is all zeros.
        q.extend_from_slice(&[0u8; 8]); // SEAMATTRIBUTES
        let attributes = TD_ATTRIBUTES | if self.debug { TD_ATTRIBUTE_DEBUG } else { 0 };
        q.extend_from_slice(&attributes.to_le_bytes());
        q.extend_from_slice(&XFAM.to_le_bytes());
        q.extend_from_slice(&self.mrtd);
        q.extend_from_slice(&[0u8; 48]); // MRCONFIGID
        q.extend_from_slice(&[0u8; 48]); // MROWNER
        q.extend_from_slice(&[0u8; 48]); // MROWNERCONFIG
        for r in &self.rtmrs {
            q.extend_from_slice(r);
        }
        q.extend_from_slice(report_data);
        q
    }
}

/// The QE report (384 bytes) of the simulated quoting enclave, whose report data binds
/// `attestation_key` as Intel's QE does: SHA-256(key || QE auth data), then 32 zero bytes.
fn qe_report(attestation_key: &[u8; 64], qe_auth_data: &[u8]) -> [u8; QE_REPORT_BYTES] {
    let mut r = Vec::with_capacity(QE_REPORT_BYTES);
    r.extend_from_slice(&CPU_SVN);
    r.extend_from_slice(&0u32.to_le_bytes()); // MISCSELECT
    r.extend_from_slice(&[0u8; 28]);
    r.extend_from_slice(&QE_ATTRIBUTES);
    r.extend_from_slice(&label_hash32(
        "Cloister SIMULATED TDX quoting enclave (MRENCLAVE)",
    ));
    r.extend_from_slice(&[0u8; 32]);
    r.extend_from_slice(&label_hash32(
        "Cloister SIMULATED TDX quoting enclave signer",
    ));
    r.extend_from_slice(&[0u8; 96]);
    r.extend_from_slice(&TD_QE_PRODID.to_le_bytes());
    r.extend_from_slice(&QE_ISVSVN.to_le_bytes());
    r.extend_from_slice(&[0u8; 60]);
    let mut h = Sha256::new();
    h.update(attestation_key);
    h.update(qe_auth_data);
    r.extend_from_slice(&h.finalize());
    r.extend_from_slice(&[0u8; 32]);
    let mut out = [0u8; QE_REPORT_BYTES];
    out.copy_from_slice(&r);
    out
}

/// Attestation key, then certification data type 6 (QE report certification data), whose
/// own certification data is type 5 (the PEM PCK chain).
fn certification_data(attestation_key: &SigningKey) -> Vec<u8> {
    let ak = raw_public_key(attestation_key);
    let auth: Vec<u8> = (0..QE_AUTH_DATA_BYTES as u8).collect();
    let report = qe_report(&ak, &auth);
    let report_sig = sign(&dev_key("pck"), &report);
    let mut inner = Vec::new();
    inner.extend_from_slice(&report);
    inner.extend_from_slice(&report_sig);
    inner.extend_from_slice(&(auth.len() as u16).to_le_bytes());
    inner.extend_from_slice(&auth);
    inner.extend_from_slice(&CERT_DATA_PCK_CHAIN.to_le_bytes());
    inner.extend_from_slice(&(dev_chain::PCK_CHAIN_PEM.len() as u32).to_le_bytes());
    inner.extend_from_slice(dev_chain::PCK_CHAIN_PEM);
    let mut out = Vec::new();
    out.extend_from_slice(&ak);
    out.extend_from_slice(&CERT_DATA_QE_REPORT.to_le_bytes());
    out.extend_from_slice(&(inner.len() as u32).to_le_bytes());
    out.extend_from_slice(&inner);
    out
}

const EV_NO_ACTION: u32 = 0x3;
const EV_EVENT_TAG: u32 = 0x6;
const TPM_ALG_SHA384: u16 = 0x000c;

/// A crypto-agile TCG event log as TDVF writes into the CCEL log area: the Spec ID header
/// (SHA-384 only), then one EV_EVENT_TAG record per measurements.json event, extending MR
/// index `rtmr + 1` with the event's digest. The data is the event's description, prefixed
/// with "SIMULATED: ", since a simulated TD measured nothing itself.
fn build_event_log(m: &Measurements) -> Result<Vec<u8>, TeeError> {
    let mut spec = Vec::new();
    spec.extend_from_slice(b"Spec ID Event03\0");
    spec.extend_from_slice(&0u32.to_le_bytes()); // platform class: client
    spec.extend_from_slice(&[0, 2, 0, 2]); // version 2.0, errata 0, UINTN of 8 bytes (2)
    spec.extend_from_slice(&1u32.to_le_bytes());
    spec.extend_from_slice(&TPM_ALG_SHA384.to_le_bytes());
    spec.extend_from_slice(&48u16.to_le_bytes());
    spec.push(0); // no vendor information
    let mut log = Vec::new();
    log.extend_from_slice(&0u32.to_le_bytes());
    log.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
    log.extend_from_slice(&[0u8; 20]);
    log.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    log.extend_from_slice(&spec);
    let registers = [
        &m.events.rtmr0,
        &m.events.rtmr1,
        &m.events.rtmr2,
        &m.events.rtmr3,
    ];
    for (rtmr, events) in registers.iter().enumerate() {
        for e in events.iter() {
            let digest: Digest48 = hex::decode(&e.digest)
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| {
                    TeeError::Invalid(format!(
                        "measurements.json: rtmr{rtmr} event {:?} has a digest that is not 48 \
                         bytes of hex",
                        e.what
                    ))
                })?;
            let data = format!("SIMULATED: {}", e.what).into_bytes();
            log.extend_from_slice(&(rtmr as u32 + 1).to_le_bytes());
            log.extend_from_slice(&EV_EVENT_TAG.to_le_bytes());
            log.extend_from_slice(&1u32.to_le_bytes());
            log.extend_from_slice(&TPM_ALG_SHA384.to_le_bytes());
            log.extend_from_slice(&digest);
            log.extend_from_slice(&(data.len() as u32).to_le_bytes());
            log.extend_from_slice(&data);
        }
    }
    Ok(log)
}

impl Tee for SimulatedTee {
    fn kind(&self) -> TeeKind {
        TeeKind::Simulated
    }

    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, TeeError> {
        let mut q = self.header_and_body(report_data);
        let signature = sign(&self.attestation_key, &q);
        let sig_data_len = 64 + self.certification_data.len();
        q.extend_from_slice(&(sig_data_len as u32).to_le_bytes());
        q.extend_from_slice(&signature);
        q.extend_from_slice(&self.certification_data);
        Ok(q)
    }

    fn event_log(&self) -> Result<Vec<u8>, TeeError> {
        Ok(self.event_log.clone())
    }

    fn collateral(&self) -> Result<Option<Vec<u8>>, TeeError> {
        Ok(Some(self.collateral_json.clone()))
    }
}
