//! The expected launch measurements of a built image, as `cloister measure` computes them
//! (cloister-measurements' `boot::measure`), for `cloister run` to hand to a simulated
//! image through fw_cfg: its simulated TEE reports them and web-ui publishes them. It
//! only reads the image and the firmware; it never decides whether a TEE is real.

use std::path::Path;

use cloister_measurements::boot::{self, AcpiTables, BootInputs, Edk2Profile, QemuProfile};

use crate::ImageError;
use crate::build::{CMDLINE, INITRAMFS, VMLINUZ};

/// The host profile the measurements are computed for: the QEMU and edk2 releases a TDX
/// host runs the image with (docs/measurements.md).
pub const QEMU_PROFILE: &str = "10.1";
/// The edk2 release of the pinned `ovmf` package.
pub const EDK2_PROFILE: &str = "202502";

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|source| ImageError::Io {
        what: format!("reading {}", path.display()),
        source,
    })
}

/// `measurements.json` for the image in `image` booted as a TD from `firmware` (TDVF)
/// with `memory_mib` MiB and `cpus` vCPUs, for a SIMULATED TEE: MRTD, RTMR0..RTMR3 with
/// their events. RTMR0 depends on the host's ACPI tables, which no simulation has: it is
/// computed with three empty ACPI files (a "simulated host" profile, whose events say so),
/// so that every register has a value the simulated quote and the verifier agree on.
/// A TDX host publishes its RTMR0 from its own tables instead (docs/measurements.md).
pub fn measurements_json(
    image: &Path,
    firmware: &Path,
    memory_mib: u32,
    cpus: u32,
) -> Result<String, ImageError> {
    let firmware = read(firmware)?;
    let kernel = read(&image.join(VMLINUZ))?;
    let initrd = read(&image.join(INITRAMFS))?;
    let cmdline = String::from_utf8(read(&image.join(CMDLINE))?)
        .map_err(|_| ImageError::Boot(format!("{CMDLINE} is not UTF-8")))?;
    let cmdline = cmdline.trim_end_matches(['\n', '\r']);
    let fail = |e: boot::MeasureError| ImageError::Boot(format!("measuring the image: {e}"));
    let inputs = BootInputs {
        firmware: &firmware,
        kernel: &kernel,
        initrd: Some(&initrd),
        cmdline,
        memory_size_bytes: u64::from(memory_mib) << 20,
        cpus,
        qemu: QemuProfile::parse(QEMU_PROFILE).map_err(fail)?,
        edk2: Edk2Profile::parse(EDK2_PROFILE).map_err(fail)?,
        acpi: Some(AcpiTables {
            table_loader: &[],
            rsdp: &[],
            tables: &[],
        }),
        runtime_events: &[],
    };
    Ok(boot::measure(&inputs).map_err(fail)?.to_json())
}
