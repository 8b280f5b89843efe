//! The Intel TDX backend: the TD report through `/dev/tdx_guest`, quotes through
//! configfs-tsm, and the event log from the CCEL ACPI table.
//!
//! It must never fall back to anything else: outside a TD every call is an error that says so.

use std::path::PathBuf;

use crate::{Tee, TeeError, TeeKind};

/// Where the kernel's interfaces live; tests point them into a temporary folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxPaths {
    /// The TDX guest device (`/dev/tdx_guest`).
    pub device: PathBuf,
    /// configfs-tsm's report folder (`/sys/kernel/config/tsm/report`).
    pub tsm_report: PathBuf,
    /// The CCEL ACPI table header (`/sys/firmware/acpi/tables/CCEL`).
    pub ccel_table: PathBuf,
    /// The CCEL log area (`/sys/firmware/acpi/tables/data/CCEL`).
    pub ccel_data: PathBuf,
}

impl Default for TdxPaths {
    fn default() -> Self {
        Self {
            device: "/dev/tdx_guest".into(),
            tsm_report: "/sys/kernel/config/tsm/report".into(),
            ccel_table: "/sys/firmware/acpi/tables/CCEL".into(),
            ccel_data: "/sys/firmware/acpi/tables/data/CCEL".into(),
        }
    }
}

/// A TDX trust domain, seen from inside.
#[derive(Debug)]
pub struct TdxTee {
    paths: TdxPaths,
    collateral: Option<Vec<u8>>,
}

impl TdxTee {
    /// Opens the TDX guest interfaces at their standard paths.
    pub fn open() -> Result<Self, TeeError> {
        Self::open_at(TdxPaths::default())
    }

    /// Opens the TDX guest interfaces at the given paths.
    pub fn open_at(paths: TdxPaths) -> Result<Self, TeeError> {
        if !paths.device.exists() {
            return Err(TeeError::NotAvailable(format!(
                "no {}: this is not a TDX guest",
                paths.device.display()
            )));
        }
        Ok(Self {
            paths,
            collateral: None,
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
}

impl Tee for TdxTee {
    fn kind(&self) -> TeeKind {
        TeeKind::Tdx
    }

    fn quote(&self, _report_data: &[u8; 64]) -> Result<Vec<u8>, TeeError> {
        Err(TeeError::NotAvailable(
            "TDX quotes are not implemented yet".into(),
        ))
    }

    fn event_log(&self) -> Result<Vec<u8>, TeeError> {
        Err(TeeError::NotAvailable(
            "the CCEL event log is not implemented yet".into(),
        ))
    }

    fn collateral(&self) -> Result<Option<Vec<u8>>, TeeError> {
        Ok(self.collateral.clone())
    }
}
