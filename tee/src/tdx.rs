//! The Intel TDX backend: the TD report through `/dev/tdx_guest`, quotes through
//! configfs-tsm, and the event log from the CCEL ACPI table.
//!
//! Every path is injectable ([`TdxPaths`]) so that tests run the same code against a folder
//! laid out like the kernel's. It must never fall back to anything else: outside a TD every
//! call is an error that says so.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cloister_measurements::eventlog::CcelTable;

use crate::{Tee, TeeError, TeeKind};

/// Bytes of REPORTDATA in a TD report and a quote.
pub const REPORT_DATA_BYTES: usize = 64;
/// Bytes of a TDREPORT_STRUCT.
pub const TD_REPORT_BYTES: usize = 1024;
/// Largest quote we read from configfs-tsm's outblob; real ones are about 5 KB.
pub const QUOTE_SIZE_MAX_BYTES: usize = 64 * 1024;
/// Largest CCEL log area we read; edk2 reserves 64 KiB to 256 KiB.
pub const EVENT_LOG_SIZE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// The configfs-tsm provider of TDX guests.
const TSM_PROVIDER_TDX: &str = "tdx_guest";

/// Where the kernel's interfaces live; tests point them into a temporary folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxPaths {
    /// The TDX guest device (`/dev/tdx_guest`).
    pub device: PathBuf,
    /// configfs-tsm's report folder (`/sys/kernel/config/tsm/report`).
    pub tsm_report: PathBuf,
    /// The name of this process's report entry under `tsm_report`; created on the first
    /// quote (an existing entry is reused) and removed when the [`TdxTee`] is dropped.
    pub report_entry: String,
    /// The CCEL ACPI table (`/sys/firmware/acpi/tables/CCEL`).
    pub ccel_table: PathBuf,
    /// The CCEL log area (`/sys/firmware/acpi/tables/data/CCEL`).
    pub ccel_data: PathBuf,
}

impl Default for TdxPaths {
    fn default() -> Self {
        Self {
            device: "/dev/tdx_guest".into(),
            tsm_report: "/sys/kernel/config/tsm/report".into(),
            report_entry: format!("cloister-{}", std::process::id()),
            ccel_table: "/sys/firmware/acpi/tables/CCEL".into(),
            ccel_data: "/sys/firmware/acpi/tables/data/CCEL".into(),
        }
    }
}

/// The fields of a TDREPORT_STRUCT (1024 bytes) the guest may want to show. The report is
/// MACed for the local platform only; a remote party needs a quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReport0 {
    pub report_data: [u8; REPORT_DATA_BYTES],
    pub td_attributes: u64,
    pub xfam: u64,
    pub mrtd: [u8; 48],
    pub rtmrs: [[u8; 48]; 4],
    /// The whole structure, as the TDX module wrote it.
    pub raw: Vec<u8>,
}

impl TdReport0 {
    /// Reads the fields out of a TDREPORT_STRUCT: REPORTMACSTRUCT (256 bytes, report data at
    /// 128), TEE_TCB_INFO (239) and 17 reserved bytes, then TDINFO at 512 (attributes, XFAM,
    /// MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0..3).
    pub fn parse(raw: &[u8]) -> Result<Self, TeeError> {
        if raw.len() != TD_REPORT_BYTES {
            return Err(TeeError::Protocol(format!(
                "a TD report is {TD_REPORT_BYTES} bytes, this one {}",
                raw.len()
            )));
        }
        let at = |offset: usize, n: usize| &raw[offset..offset + n];
        let u64_at = |offset: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(at(offset, 8));
            u64::from_le_bytes(b)
        };
        let d48 = |offset: usize| {
            let mut b = [0u8; 48];
            b.copy_from_slice(at(offset, 48));
            b
        };
        let mut report_data = [0u8; REPORT_DATA_BYTES];
        report_data.copy_from_slice(at(128, REPORT_DATA_BYTES));
        const TDINFO: usize = 512;
        const RTMR0: usize = TDINFO + 16 + 4 * 48;
        Ok(Self {
            report_data,
            td_attributes: u64_at(TDINFO),
            xfam: u64_at(TDINFO + 8),
            mrtd: d48(TDINFO + 16),
            rtmrs: [
                d48(RTMR0),
                d48(RTMR0 + 48),
                d48(RTMR0 + 96),
                d48(RTMR0 + 144),
            ],
            raw: raw.to_vec(),
        })
    }
}

/// A TDX trust domain, seen from inside.
#[derive(Debug)]
pub struct TdxTee {
    paths: TdxPaths,
    collateral: Option<Vec<u8>>,
    /// One quote at a time through our report entry; configfs-tsm's generation counter
    /// catches anyone else writing to it.
    entry_lock: Mutex<bool>,
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TeeError {
    let what = what.into();
    move |source| TeeError::Io { what, source }
}

/// Reads a whole file, refusing more than `max` bytes.
fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>, TeeError> {
    let file = std::fs::File::open(path).map_err(io_error(format!("open {}", path.display())))?;
    let mut out = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(io_error(format!("read {}", path.display())))?;
    if out.len() > max {
        return Err(TeeError::Protocol(format!(
            "{} holds more than {max} bytes",
            path.display()
        )));
    }
    Ok(out)
}

fn read_generation(path: &Path) -> Result<u64, TeeError> {
    let text = read_bounded(path, 64)?;
    String::from_utf8_lossy(&text).trim().parse().map_err(|_| {
        TeeError::Protocol(format!(
            "{} does not hold a number: {:?}",
            path.display(),
            String::from_utf8_lossy(&text)
        ))
    })
}

impl TdxTee {
    /// Opens the TDX guest interfaces at their standard paths.
    pub fn open() -> Result<Self, TeeError> {
        Self::open_at(TdxPaths::default())
    }

    /// Opens the TDX guest interfaces at the given paths. Fails, saying why, when the
    /// machine is not a TDX guest.
    pub fn open_at(paths: TdxPaths) -> Result<Self, TeeError> {
        if !paths.device.exists() {
            return Err(TeeError::NotAvailable(format!(
                "no {}: this is not a TDX guest (or its kernel lacks the tdx_guest driver)",
                paths.device.display()
            )));
        }
        if paths.report_entry.is_empty()
            || paths.report_entry.contains('/')
            || paths.report_entry.starts_with('.')
        {
            return Err(TeeError::Invalid(format!(
                "report entry name {:?} is not a plain folder name",
                paths.report_entry
            )));
        }
        Ok(Self {
            paths,
            collateral: None,
            entry_lock: Mutex::new(false),
        })
    }

    /// Collateral (measurements' `Collateral` JSON) to hand out with quotes, e.g. uploaded by
    /// the owner or fetched from Intel's service by the caller.
    pub fn with_collateral(mut self, collateral_json: Vec<u8>) -> Self {
        self.collateral = Some(collateral_json);
        self
    }

    /// The paths in use.
    pub fn paths(&self) -> &TdxPaths {
        &self.paths
    }

    /// The TD report (TDREPORT0) over `report_data`, from the TDX module through
    /// `/dev/tdx_guest`. Only the local platform can check its MAC; remote parties need
    /// [`Tee::quote`].
    pub fn td_report(&self, report_data: &[u8; REPORT_DATA_BYTES]) -> Result<TdReport0, TeeError> {
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.paths.device)
            .map_err(io_error(format!("open {}", self.paths.device.display())))?;
        let raw = ioctl::get_report0(&device, report_data)
            .map_err(io_error("TDX_CMD_GET_REPORT0 on the TDX guest device"))?;
        TdReport0::parse(&raw)
    }

    fn entry(&self) -> PathBuf {
        self.paths.tsm_report.join(&self.paths.report_entry)
    }

    /// Creates (or reuses) our report entry under configfs-tsm.
    fn ensure_entry(&self, created: &mut bool) -> Result<PathBuf, TeeError> {
        let entry = self.entry();
        if *created {
            return Ok(entry);
        }
        if !self.paths.tsm_report.is_dir() {
            return Err(TeeError::NotAvailable(format!(
                "no {}: quotes need configfs-tsm (a kernel with CONFIG_TSM_REPORTS and \
                 configfs mounted on /sys/kernel/config) and a quote generation service \
                 on the host",
                self.paths.tsm_report.display()
            )));
        }
        match std::fs::create_dir(&entry) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists && entry.is_dir() => {}
            Err(e) => return Err(io_error(format!("create {}", entry.display()))(e)),
        }
        let provider_path = entry.join("provider");
        if provider_path.exists() {
            let provider = read_bounded(&provider_path, 256)?;
            let provider = String::from_utf8_lossy(&provider).trim().to_owned();
            if provider != TSM_PROVIDER_TDX {
                return Err(TeeError::NotAvailable(format!(
                    "configfs-tsm's provider is {provider:?}, not {TSM_PROVIDER_TDX:?}: this \
                     is not a TDX guest"
                )));
            }
        }
        *created = true;
        Ok(entry)
    }
}

impl Drop for TdxTee {
    fn drop(&mut self) {
        let created = self.entry_lock.get_mut().map(|c| *c).unwrap_or(false);
        if created {
            // Best effort: configfs removes the entry's attributes with it.
            let _ = std::fs::remove_dir(self.entry());
        }
    }
}

impl Tee for TdxTee {
    fn kind(&self) -> TeeKind {
        TeeKind::Tdx
    }

    /// Asks configfs-tsm for a quote: write the report data to `inblob`, read the quote from
    /// `outblob`, and check through `generation` that nobody else wrote in between (it must
    /// have gone up by exactly one, our write).
    fn quote(&self, report_data: &[u8; REPORT_DATA_BYTES]) -> Result<Vec<u8>, TeeError> {
        let mut created = self
            .entry_lock
            .lock()
            .map_err(|_| TeeError::Protocol("a previous quote request panicked".into()))?;
        let entry = self.ensure_entry(&mut created)?;
        let generation_path = entry.join("generation");
        let before = read_generation(&generation_path)?;
        let inblob = entry.join("inblob");
        // No create: configfs makes the attribute with the entry; a missing one is an error.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&inblob)
            .map_err(io_error(format!("open {}", inblob.display())))?;
        file.write_all(report_data)
            .map_err(io_error(format!("write {}", inblob.display())))?;
        drop(file);
        let outblob = entry.join("outblob");
        let quote = read_bounded(&outblob, QUOTE_SIZE_MAX_BYTES)?;
        let after = read_generation(&generation_path)?;
        if after != before.wrapping_add(1) {
            return Err(TeeError::Protocol(format!(
                "configfs-tsm's generation went from {before} to {after} around our request: \
                 another writer used {}; the quote may not carry our report data",
                entry.display()
            )));
        }
        if quote.is_empty() {
            return Err(TeeError::Protocol(format!(
                "{} is empty: the host's quote generation service did not answer",
                outblob.display()
            )));
        }
        Ok(quote)
    }

    /// The CCEL log area, after checking that the CCEL table describes a TDX log.
    fn event_log(&self) -> Result<Vec<u8>, TeeError> {
        let table_path = &self.paths.ccel_table;
        if !table_path.exists() {
            return Err(TeeError::NotAvailable(format!(
                "no {}: the firmware published no CCEL table (not a TDX guest, or a TDVF \
                 without the confidential computing event log)",
                table_path.display()
            )));
        }
        let table = read_bounded(table_path, 4096)?;
        let table = CcelTable::parse(&table)
            .map_err(|e| TeeError::Protocol(format!("{}: {e}", table_path.display())))?;
        if !table.is_tdx() {
            return Err(TeeError::NotAvailable(format!(
                "the CCEL table is for confidential computing type {}, not TDX (2)",
                table.cc_type
            )));
        }
        read_bounded(&self.paths.ccel_data, EVENT_LOG_SIZE_MAX_BYTES)
    }

    fn collateral(&self) -> Result<Option<Vec<u8>>, TeeError> {
        Ok(self.collateral.clone())
    }
}

/// The one ioctl of the TDX guest device.
#[allow(unsafe_code)]
mod ioctl {
    use std::os::fd::AsRawFd;

    use super::{REPORT_DATA_BYTES, TD_REPORT_BYTES};

    /// `struct tdx_report_req` of linux/include/uapi/linux/tdx-guest.h.
    #[repr(C)]
    struct TdxReportReq {
        reportdata: [u8; REPORT_DATA_BYTES],
        tdreport: [u8; TD_REPORT_BYTES],
    }

    /// `_IOWR('T', 1, struct tdx_report_req)`: direction read|write (3) in bits 30-31, the
    /// struct size (1088) in bits 16-29, type 'T' in bits 8-15, number 1.
    const TDX_CMD_GET_REPORT0: u64 =
        (3 << 30) | ((std::mem::size_of::<TdxReportReq>() as u64) << 16) | ((b'T' as u64) << 8) | 1;

    pub fn get_report0(
        device: &std::fs::File,
        report_data: &[u8; REPORT_DATA_BYTES],
    ) -> std::io::Result<Vec<u8>> {
        let mut req = Box::new(TdxReportReq {
            reportdata: *report_data,
            tdreport: [0u8; TD_REPORT_BYTES],
        });
        // SAFETY: the fd is open for the call's duration; `req` is a valid, exclusively
        // borrowed `struct tdx_report_req` that the kernel reads and writes within its size,
        // which the request number encodes.
        let rc = unsafe {
            libc::ioctl(
                device.as_raw_fd(),
                TDX_CMD_GET_REPORT0 as _,
                &mut *req as *mut TdxReportReq,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(req.tdreport.to_vec())
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn request_number_is_the_kernels() {
            // _IOWR('T', 1, struct tdx_report_req) with a 1088-byte struct.
            assert_eq!(super::TDX_CMD_GET_REPORT0, 0xc440_5401);
        }
    }
}
