//! The launch measurements of a Cloister image: MRTD and RTMR0..RTMR3 as a TD will show
//! them, computed from the build outputs (firmware, kernel, initrd, command line), the host
//! profile (QEMU version, memory, vCPUs, ACPI tables) and our runtime events. Each register
//! comes with the list of events behind it. The algorithms are specified in
//! docs/measurements.md.
//!
//! No I/O: every input is bytes or numbers, so the same code runs in a browser as wasm.

use serde::{Deserialize, Serialize};

use crate::measurements::{Event, Events, Measurements, replay};
use crate::pe::{self, PeError, SetupHeaderPatch};
use crate::register::{Digest48, sha384};
use crate::tdvf::{PageOrder, SectionType, Tdvf, TdvfError, guid_bytes};

/// Longest kernel command line we measure (Linux's x86 COMMAND_LINE_SIZE is 2048).
pub const CMDLINE_SIZE_MAX_BYTES: usize = 64 * 1024;
/// Most runtime events in one file.
pub const RUNTIME_EVENT_COUNT_MAX: usize = 4096;
/// Most bytes of one runtime event's data.
pub const RUNTIME_EVENT_DATA_SIZE_MAX_BYTES: usize = 1024 * 1024;
/// Domain separation for RTMR3 events: the digest is SHA-384 of this, the name, a NUL
/// byte and the data.
pub const RUNTIME_EVENT_DOMAIN: &[u8] = b"cloister-rtmr3-event/1\0";

/// Why measurements could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("firmware: {0}")]
    Firmware(#[from] TdvfError),
    #[error("kernel: {0}")]
    Kernel(#[from] PeError),
    #[error("unknown QEMU version {0:?}: use 10.1 (or later) or 8-tdx (the QEMU 8.x TDX fork)")]
    UnknownQemu(String),
    #[error("unknown edk2 profile {0:?}: use 202502 or 202505")]
    UnknownEdk2(String),
    #[error("the firmware has no {0:?} section")]
    MissingSection(SectionType),
    #[error("the command line is {0} bytes, more than {CMDLINE_SIZE_MAX_BYTES}")]
    CmdlineTooLong(usize),
    #[error("the initrd is {0} bytes: QEMU passes its size as 32 bits")]
    InitrdTooLarge(usize),
    #[error("runtime events: {0}")]
    RuntimeEvents(String),
    #[error("memory size {0} bytes is not a positive multiple of 1 MiB")]
    BadMemorySize(u64),
}

/// Which QEMU starts the TD: it decides the MRTD page order and whether the kernel's setup
/// header is patched before edk2 measures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QemuProfile {
    /// Upstream QEMU 10.1 or later: one pass page by page, the kernel measured as on disk.
    Upstream10_1,
    /// The QEMU 8.x TDX fork (Ubuntu/CentOS TDX stacks): two passes per section, and the
    /// setup header patched with the initrd address before the kernel is measured.
    Tdx8Fork,
}

impl QemuProfile {
    /// Parses `10.1`, `10.2`, `11.0` ... or `8-tdx` / `8.2-tdx`.
    pub fn parse(text: &str) -> Result<Self, MeasureError> {
        let t = text.trim();
        if t.starts_with("8") && t.ends_with("-tdx") {
            return Ok(QemuProfile::Tdx8Fork);
        }
        let mut parts = t.split('.');
        let major: u32 = parts
            .next()
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| MeasureError::UnknownQemu(text.to_owned()))?;
        let minor: u32 = match parts.next() {
            Some(m) => m
                .parse()
                .map_err(|_| MeasureError::UnknownQemu(text.to_owned()))?,
            None => 0,
        };
        if (major, minor) >= (10, 1) {
            Ok(QemuProfile::Upstream10_1)
        } else {
            Err(MeasureError::UnknownQemu(text.to_owned()))
        }
    }

    fn page_order(self) -> PageOrder {
        match self {
            QemuProfile::Upstream10_1 => PageOrder::OnePass,
            QemuProfile::Tdx8Fork => PageOrder::TwoPassPerSection,
        }
    }
}

/// Which edk2 release the firmware is built from: it decides RTMR0's event list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Edk2Profile {
    /// edk2-stable202502 (Debian trixie's ovmf 2025.02): 13 RTMR0 events.
    Stable202502,
    /// edk2-stable202505 and later: 17 RTMR0 events.
    Stable202505,
}

impl Edk2Profile {
    pub fn parse(text: &str) -> Result<Self, MeasureError> {
        match text.trim() {
            "202502" | "2025.02" => Ok(Edk2Profile::Stable202502),
            "202505" | "2025.05" => Ok(Edk2Profile::Stable202505),
            other => Err(MeasureError::UnknownEdk2(other.to_owned())),
        }
    }
}

/// The three fw_cfg files QEMU builds its ACPI tables from; edk2 measures each as it reads
/// it ("ACPI DATA"). They depend on the QEMU version, the machine type, memory, vCPUs and
/// devices.
#[derive(Debug, Clone, Copy)]
pub struct AcpiTables<'a> {
    /// fw_cfg `etc/table-loader`.
    pub table_loader: &'a [u8],
    /// fw_cfg `etc/acpi/rsdp`.
    pub rsdp: &'a [u8],
    /// fw_cfg `etc/acpi/tables`.
    pub tables: &'a [u8],
}

/// One RTMR3 event as Cloister extends it at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeEvent {
    /// What is measured ("config", "model"), printable ASCII.
    pub name: String,
    /// The measured bytes, as UTF-8 text ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// ... or as hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hex: Option<String>,
}

/// The digest Cloister extends RTMR3 with for an event: SHA-384 of
/// `RUNTIME_EVENT_DOMAIN || name || 0x00 || data`.
pub fn runtime_event_digest(name: &str, data: &[u8]) -> Digest48 {
    let mut bytes = Vec::with_capacity(RUNTIME_EVENT_DOMAIN.len() + name.len() + 1 + data.len());
    bytes.extend_from_slice(RUNTIME_EVENT_DOMAIN);
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(data);
    sha384(&bytes)
}

/// Parses a runtime-events file (a JSON list of [`RuntimeEvent`]).
pub fn parse_runtime_events(json: &[u8]) -> Result<Vec<RuntimeEvent>, MeasureError> {
    let events: Vec<RuntimeEvent> =
        serde_json::from_slice(json).map_err(|e| MeasureError::RuntimeEvents(e.to_string()))?;
    if events.len() > RUNTIME_EVENT_COUNT_MAX {
        return Err(MeasureError::RuntimeEvents(format!(
            "{} events, more than {RUNTIME_EVENT_COUNT_MAX}",
            events.len()
        )));
    }
    Ok(events)
}

/// Everything the launch measurements depend on.
#[derive(Debug, Clone)]
pub struct BootInputs<'a> {
    /// The OVMF/TDVF image passed as `-bios`.
    pub firmware: &'a [u8],
    /// The kernel passed as `-kernel` (a PE/EFI-stub bzImage).
    pub kernel: &'a [u8],
    /// The initrd passed as `-initrd`, if any.
    pub initrd: Option<&'a [u8]>,
    /// The command line passed as `-append`.
    pub cmdline: &'a str,
    pub memory_size_bytes: u64,
    pub cpus: u32,
    pub qemu: QemuProfile,
    pub edk2: Edk2Profile,
    /// Without them RTMR0 is not computed (it is published per host profile).
    pub acpi: Option<AcpiTables<'a>>,
    pub runtime_events: &'a [RuntimeEvent],
}

/// Computes MRTD and RTMR0..RTMR3 with their events.
pub fn measure(inputs: &BootInputs<'_>) -> Result<Measurements, MeasureError> {
    if inputs.memory_size_bytes == 0 || !inputs.memory_size_bytes.is_multiple_of(1 << 20) {
        return Err(MeasureError::BadMemorySize(inputs.memory_size_bytes));
    }
    let tdvf = Tdvf::parse(inputs.firmware)?;
    let order = inputs.qemu.page_order();
    let mrtd = tdvf.mrtd(order);
    let mut events = Events {
        mrtd: vec![
            Event::new("TDVF pages added and measured by the TDX module", &mrtd)
                .input("firmware_sha256", sha256_hex(inputs.firmware))
                .input("page_order", format!("{order:?}"))
                .input("sections", tdvf.sections.len().to_string()),
        ],
        rtmr1: rtmr1_events(inputs)?,
        rtmr2: rtmr2_events(inputs.cmdline, inputs.initrd)?,
        rtmr3: rtmr3_events(inputs.runtime_events)?,
        ..Default::default()
    };
    let rtmr0 = match &inputs.acpi {
        Some(acpi) => {
            events.rtmr0 = rtmr0_events(&tdvf, inputs, acpi)?;
            replay(&events.rtmr0)
        }
        None => None,
    };
    Ok(Measurements {
        mrtd: Some(mrtd),
        rtmr0,
        rtmr1: replay(&events.rtmr1),
        rtmr2: replay(&events.rtmr2),
        rtmr3: replay(&events.rtmr3),
        events,
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// EFI action strings edk2 measures into RTMR1 around the kernel's start.
const EFI_ACTION_CALLING_BOOT_OPTION: &str = "Calling EFI Application from Boot Option";
const EFI_ACTION_EXIT_BOOT_SERVICES: &str = "Exit Boot Services Invocation";
const EFI_ACTION_EXIT_BOOT_SERVICES_OK: &str = "Exit Boot Services Returned with Success";
/// EV_SEPARATOR's data: a 32-bit zero.
const SEPARATOR: [u8; 4] = [0; 4];

fn rtmr1_events(inputs: &BootInputs<'_>) -> Result<Vec<Event>, MeasureError> {
    let (kernel_digest, how) = match inputs.qemu {
        QemuProfile::Upstream10_1 => (pe::authenticode_sha384(inputs.kernel)?, "as on disk"),
        QemuProfile::Tdx8Fork => {
            let initrd_size = match inputs.initrd {
                Some(i) => {
                    u32::try_from(i.len()).map_err(|_| MeasureError::InitrdTooLarge(i.len()))?
                }
                None => 0,
            };
            let patched = pe::patch_setup_header(
                inputs.kernel,
                SetupHeaderPatch {
                    initrd_size_bytes: initrd_size,
                    memory_size_bytes: inputs.memory_size_bytes,
                    acpi_data_size_bytes: pe::QEMU_ACPI_DATA_SIZE_BYTES,
                },
            )?;
            (
                pe::authenticode_sha384(&patched)?,
                "after QEMU's setup-header patch",
            )
        }
    };
    Ok(vec![
        Event::new("kernel Authenticode SHA-384", &kernel_digest)
            .input("kernel_sha256", sha256_hex(inputs.kernel))
            .input("kernel_bytes", inputs.kernel.len().to_string())
            .input("measured", how),
        Event::new(
            format!("EFI action \"{EFI_ACTION_CALLING_BOOT_OPTION}\""),
            &sha384(EFI_ACTION_CALLING_BOOT_OPTION.as_bytes()),
        ),
        Event::new("separator", &sha384(&SEPARATOR)),
        Event::new(
            format!("EFI action \"{EFI_ACTION_EXIT_BOOT_SERVICES}\""),
            &sha384(EFI_ACTION_EXIT_BOOT_SERVICES.as_bytes()),
        ),
        Event::new(
            format!("EFI action \"{EFI_ACTION_EXIT_BOOT_SERVICES_OK}\""),
            &sha384(EFI_ACTION_EXIT_BOOT_SERVICES_OK.as_bytes()),
        ),
    ])
}

/// The bytes edk2 measures for the command line: UTF-16LE, `" initrd=initrd"` appended
/// when there is an initrd, and a terminating NUL.
pub fn measured_cmdline(cmdline: &str, has_initrd: bool) -> Vec<u8> {
    let mut text = cmdline.to_owned();
    if has_initrd {
        text.push_str(" initrd=initrd");
    }
    let mut out: Vec<u8> = text.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    out.extend_from_slice(&[0, 0]);
    out
}

/// RTMR2's events: the command line, then the initrd.
pub fn rtmr2_events(cmdline: &str, initrd: Option<&[u8]>) -> Result<Vec<Event>, MeasureError> {
    if cmdline.len() > CMDLINE_SIZE_MAX_BYTES {
        return Err(MeasureError::CmdlineTooLong(cmdline.len()));
    }
    let measured = measured_cmdline(cmdline, initrd.is_some());
    let mut events = vec![
        Event::new("kernel command line (UTF-16LE)", &sha384(&measured)).input("cmdline", cmdline),
    ];
    if let Some(initrd) = initrd {
        events.push(
            // The digest is the SHA-384 of the file itself, so it names the file too.
            Event::new("initrd (SHA-384 of the file)", &sha384(initrd))
                .input("initrd_bytes", initrd.len().to_string()),
        );
    }
    Ok(events)
}

fn rtmr3_events(runtime: &[RuntimeEvent]) -> Result<Vec<Event>, MeasureError> {
    let mut out = Vec::with_capacity(runtime.len());
    for e in runtime {
        if e.name.is_empty() || !e.name.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(MeasureError::RuntimeEvents(format!(
                "event name {:?} must be printable ASCII without spaces",
                e.name
            )));
        }
        let data = match (&e.text, &e.data_hex) {
            (Some(t), None) => t.as_bytes().to_vec(),
            (None, Some(h)) => hex::decode(h)
                .map_err(|err| MeasureError::RuntimeEvents(format!("{}: {err}", e.name)))?,
            _ => {
                return Err(MeasureError::RuntimeEvents(format!(
                    "{}: give exactly one of text and data_hex",
                    e.name
                )));
            }
        };
        if data.len() > RUNTIME_EVENT_DATA_SIZE_MAX_BYTES {
            return Err(MeasureError::RuntimeEvents(format!(
                "{}: {} bytes, more than {RUNTIME_EVENT_DATA_SIZE_MAX_BYTES}",
                e.name,
                data.len()
            )));
        }
        out.push(
            Event::new(
                format!("runtime event {}", e.name),
                &runtime_event_digest(&e.name, &data),
            )
            .input("name", e.name.clone())
            .input("data_sha256", sha256_hex(&data)),
        );
    }
    Ok(out)
}

// ---- RTMR0 ----

/// EFI_GLOBAL_VARIABLE 8be4df61-93ca-11d2-aa0d-00e098032b8c.
const EFI_GLOBAL_VARIABLE: [u8; 16] = guid_bytes(
    0x8be4_df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);
/// EFI_IMAGE_SECURITY_DATABASE_GUID d719b2cb-3d3a-4596-a3bc-dad00e67656f (db, dbx).
const EFI_IMAGE_SECURITY_DATABASE: [u8; 16] = guid_bytes(
    0xd719_b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);
/// The OVMF DXE firmware volume, 7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1.
const OVMF_DXE_FV: [u8; 16] = guid_bytes(
    0x7cb8_bdc9,
    0xf8eb,
    0x4f34,
    [0xaa, 0xea, 0x3e, 0xe4, 0xaf, 0x65, 0x16, 0xa1],
);
/// MdeModulePkg UiApp (the front page, "EFI Firmware Setup"), 462caa21-7614-4503-836e-8ab6f4662331.
const UIAPP_FILE: [u8; 16] = guid_bytes(
    0x462c_aa21,
    0x7614,
    0x4503,
    [0x83, 0x6e, 0x8a, 0xb6, 0xf4, 0x66, 0x23, 0x31],
);
/// MdeModulePkg BootManagerMenuApp, eec25bdc-67f2-4d95-b1d5-f81b2039d11d.
const BOOT_MANAGER_MENU_FILE: [u8; 16] = guid_bytes(
    0xeec2_5bdc,
    0x67f2,
    0x4d95,
    [0xb1, 0xd5, 0xf8, 0x1b, 0x20, 0x39, 0xd1, 0x1d],
);
/// LOAD_OPTION_ACTIVE | LOAD_OPTION_CATEGORY_APP.
const LOAD_OPTION_ACTIVE_APP: u32 = 0x101;
/// ... | LOAD_OPTION_HIDDEN.
const LOAD_OPTION_ACTIVE_HIDDEN_APP: u32 = 0x109;
/// EV_EFI_VARIABLE_AUTHORITY digest that edk2-stable202505 OVMF logs once during BDS with
/// Secure Boot off. A captured constant, from dstack-mr (Dstack-TEE/dstack, dstack-mr/src/tdvf.rs).
const EDK2_202505_VARIABLE_AUTHORITY: &str = "fb66919801f1dfc9c4c273b6a739380790cb0fd3cb706a42f6ac050510ebc8618e7fba53a1564522f5c6f0dc9e1f41a6";
/// QEMU's fw_cfg `bootorder` for a direct kernel boot on q35 (fw_cfg DMA on): one option ROM.
const QEMU_BOOTORDER_DIRECT_KERNEL: &[u8] = b"/rom@genroms/linuxboot_dma.bin\0";

/// UEFI_VARIABLE_DATA: the bytes edk2 measures for a Secure Boot variable.
pub fn uefi_variable_data(guid: &[u8; 16], name: &str, data: &[u8]) -> Vec<u8> {
    let name16: Vec<u16> = name.encode_utf16().collect();
    let mut out = Vec::with_capacity(32 + name16.len() * 2 + data.len());
    out.extend_from_slice(guid);
    out.extend_from_slice(&(name16.len() as u64).to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    for u in name16 {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// EFI_LOAD_OPTION for an application inside the OVMF DXE volume.
pub fn fv_load_option(attributes: u32, description: &str, file: &[u8; 16]) -> Vec<u8> {
    let mut path = Vec::new();
    for (subtype, guid) in [(7u8, &OVMF_DXE_FV), (6u8, file)] {
        // MEDIA_DEVICE_PATH (4): PIWG firmware volume (7) or firmware file (6), 20 bytes.
        path.extend_from_slice(&[4, subtype, 20, 0]);
        path.extend_from_slice(guid);
    }
    path.extend_from_slice(&[0x7f, 0xff, 4, 0]); // end of device path
    let mut out = Vec::new();
    out.extend_from_slice(&attributes.to_le_bytes());
    out.extend_from_slice(&(path.len() as u16).to_le_bytes());
    for u in description.encode_utf16().chain([0]) {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out.extend_from_slice(&path);
    out
}

const EFI_RESOURCE_SYSTEM_MEMORY: u8 = 0;
const EFI_RESOURCE_MEMORY_UNACCEPTED: u8 = 7;
/// PRESENT | INITIALIZED | TESTED.
const RESOURCE_ATTRIBUTES: u32 = 7;
const GIB_2: u64 = 0x8000_0000;
const GIB_4: u64 = 0x1_0000_0000;
/// q35 keeps 2.75 GiB below 4 GiB unless the guest has that much or more.
const Q35_SPLIT_MIN_MEMORY_BYTES: u64 = 0xb000_0000;

/// The TD HOB QEMU writes for TDVF: a PHIT HOB, then one resource HOB per memory range,
/// the TD_HOB and TEMP_MEM sections accepted, the rest unaccepted, with q35's split of
/// memory at 2 GiB when the guest has 2.75 GiB or more.
pub fn td_hob(tdvf: &Tdvf<'_>, memory_size_bytes: u64) -> Result<Vec<u8>, MeasureError> {
    let hob_section = tdvf
        .section(SectionType::TdHob)
        .ok_or(MeasureError::MissingSection(SectionType::TdHob))?;
    let mut accepted: Vec<(u64, u64)> = tdvf
        .sections
        .iter()
        .filter(|s| matches!(s.section_type, SectionType::TdHob | SectionType::TempMem))
        .map(|s| (s.memory_address, s.memory_address + s.memory_data_size))
        .filter(|(a, b)| a < b && *b <= memory_size_bytes)
        .collect();
    accepted.sort_unstable();
    // Walk [0, memory) in address order: accepted ranges, and the gaps between them.
    let mut ranges: Vec<(bool, u64, u64)> = Vec::new();
    let mut cursor = 0u64;
    for (start, end) in accepted {
        let start = start.max(cursor);
        if start >= end {
            continue;
        }
        if start > cursor {
            ranges.push((false, cursor, start));
        }
        ranges.push((true, start, end));
        cursor = end;
    }
    let last = (cursor, memory_size_bytes);

    let mut hob = Vec::new();
    // PHIT HOB: type 1, length 56, version 9; EfiEndOfHobList is patched in below.
    hob.extend_from_slice(&1u16.to_le_bytes());
    hob.extend_from_slice(&56u16.to_le_bytes());
    hob.extend_from_slice(&[0; 4]);
    hob.extend_from_slice(&9u32.to_le_bytes());
    hob.extend_from_slice(&[0; 4 + 8 * 5]);
    let mut resource = |kind: u8, start: u64, len: u64| {
        hob.extend_from_slice(&3u16.to_le_bytes());
        hob.extend_from_slice(&48u16.to_le_bytes());
        hob.extend_from_slice(&[0; 4]);
        hob.extend_from_slice(&[0; 16]); // owner GUID
        hob.extend_from_slice(&u32::from(kind).to_le_bytes());
        hob.extend_from_slice(&RESOURCE_ATTRIBUTES.to_le_bytes());
        hob.extend_from_slice(&start.to_le_bytes());
        hob.extend_from_slice(&len.to_le_bytes());
    };
    for &(is_accepted, start, end) in &ranges {
        let kind = if is_accepted {
            EFI_RESOURCE_SYSTEM_MEMORY
        } else {
            EFI_RESOURCE_MEMORY_UNACCEPTED
        };
        resource(kind, start, end - start);
    }
    let (last_start, last_end) = last;
    if last_end > last_start {
        if memory_size_bytes >= Q35_SPLIT_MIN_MEMORY_BYTES {
            if last_start < GIB_2 {
                resource(
                    EFI_RESOURCE_MEMORY_UNACCEPTED,
                    last_start,
                    GIB_2 - last_start,
                );
            }
            if last_end > GIB_2 {
                resource(EFI_RESOURCE_MEMORY_UNACCEPTED, GIB_4, last_end - GIB_2);
            }
        } else {
            resource(
                EFI_RESOURCE_MEMORY_UNACCEPTED,
                last_start,
                last_end - last_start,
            );
        }
    }
    // EfiEndOfHobList: the address just past the list and its 8-byte end HOB.
    let end_of_list = hob_section.memory_address + hob.len() as u64 + 8;
    hob[48..56].copy_from_slice(&end_of_list.to_le_bytes());
    Ok(hob)
}

fn rtmr0_events(
    tdvf: &Tdvf<'_>,
    inputs: &BootInputs<'_>,
    acpi: &AcpiTables<'_>,
) -> Result<Vec<Event>, MeasureError> {
    let hob = td_hob(tdvf, inputs.memory_size_bytes)?;
    let cfv = tdvf
        .cfv_digest()
        .ok_or(MeasureError::MissingSection(SectionType::Cfv))?;
    let mem = inputs.memory_size_bytes.to_string();
    let td_hob_event = Event::new("TD HOB (memory map from the host)", &sha384(&hob))
        .input("memory_bytes", mem)
        .input("hob_bytes", hob.len().to_string());
    let cfv_event = Event::new("CFV (the firmware's variable store as shipped)", &cfv);
    let secure_boot_vars = [
        (&EFI_GLOBAL_VARIABLE, "SecureBoot"),
        (&EFI_GLOBAL_VARIABLE, "PK"),
        (&EFI_GLOBAL_VARIABLE, "KEK"),
        (&EFI_IMAGE_SECURITY_DATABASE, "db"),
        (&EFI_IMAGE_SECURITY_DATABASE, "dbx"),
    ]
    .map(|(guid, name)| {
        Event::new(
            format!("Secure Boot variable {name} (empty)"),
            &sha384(&uefi_variable_data(guid, name, &[])),
        )
    });
    let acpi_events = [
        ("ACPI DATA etc/table-loader", acpi.table_loader),
        ("ACPI DATA etc/acpi/rsdp", acpi.rsdp),
        ("ACPI DATA etc/acpi/tables", acpi.tables),
    ]
    .map(|(what, bytes)| {
        Event::new(what, &sha384(bytes))
            .input("bytes", bytes.len().to_string())
            .input("cpus", inputs.cpus.to_string())
    });
    let separator = Event::new("separator", &sha384(&SEPARATOR));

    let mut events = vec![td_hob_event, cfv_event];
    match inputs.edk2 {
        Edk2Profile::Stable202502 => {
            events.extend(secure_boot_vars);
            events.push(separator);
            events.extend(acpi_events);
            events.push(Event::new(
                "UEFI variable BootOrder [0000]",
                &sha384(&0u16.to_le_bytes()),
            ));
            events.push(Event::new(
                "UEFI variable Boot0000 (UiApp)",
                &sha384(&fv_load_option(
                    LOAD_OPTION_ACTIVE_HIDDEN_APP,
                    "UiApp",
                    &UIAPP_FILE,
                )),
            ));
        }
        Edk2Profile::Stable202505 => {
            events.push(Event::new(
                "fw_cfg BootMenu (0: no boot menu)",
                &sha384(&0u16.to_le_bytes()),
            ));
            events.push(Event::new(
                "fw_cfg bootorder (direct kernel boot)",
                &sha384(QEMU_BOOTORDER_DIRECT_KERNEL),
            ));
            events.extend(secure_boot_vars);
            events.push(separator);
            events.extend(acpi_events);
            let mut authority = [0u8; 48];
            hex::decode_to_slice(EDK2_202505_VARIABLE_AUTHORITY, &mut authority)
                .unwrap_or_default();
            events.push(Event::new(
                "EV_EFI_VARIABLE_AUTHORITY (captured)",
                &authority,
            ));
            let order: Vec<u8> = [0u16, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
            events.push(Event::new(
                "UEFI variable BootOrder [0000, 0001]",
                &sha384(&order),
            ));
            events.push(Event::new(
                "UEFI variable Boot0000 (BootManagerMenuApp)",
                &sha384(&fv_load_option(
                    LOAD_OPTION_ACTIVE_HIDDEN_APP,
                    "BootManagerMenuApp",
                    &BOOT_MANAGER_MENU_FILE,
                )),
            ));
            events.push(Event::new(
                "UEFI variable Boot0001 (EFI Firmware Setup)",
                &sha384(&fv_load_option(
                    LOAD_OPTION_ACTIVE_APP,
                    "EFI Firmware Setup",
                    &UIAPP_FILE,
                )),
            ));
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::EventLog;

    const COS_LOG: &[u8] = include_bytes!("../tests/data/go-tdx-guest/ccel/ccel_data.dat");

    fn cos_event(description: &str) -> crate::eventlog::LogEvent {
        EventLog::parse(COS_LOG)
            .unwrap()
            .events
            .into_iter()
            .find(|e| e.description == description)
            .unwrap()
    }

    #[test]
    fn variable_data_layout_matches_a_real_log() {
        // COS 113's SecureBoot variable holds one zero byte; ours has the same layout.
        let e = cos_event("UEFI variable SecureBoot");
        assert_eq!(
            e.data,
            uefi_variable_data(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[0])
        );
        assert_eq!(e.sha384, Some(sha384(&e.data)));
    }

    #[test]
    fn boot0000_of_edk2_202502_matches_a_real_log() {
        // The UiApp boot option is the same in COS 113's firmware: its digest is in the log.
        let e = cos_event("UEFI variable Boot0000");
        let option = fv_load_option(LOAD_OPTION_ACTIVE_HIDDEN_APP, "UiApp", &UIAPP_FILE);
        assert_eq!(e.sha384, Some(sha384(&option)));
        // The log's data is UEFI_VARIABLE_DATA around the same option.
        assert_eq!(
            e.data,
            uefi_variable_data(&EFI_GLOBAL_VARIABLE, "Boot0000", &option)
        );
    }

    #[test]
    fn boot_actions_and_separator_match_a_real_log() {
        let log = EventLog::parse(COS_LOG).unwrap();
        let action = log
            .events
            .iter()
            .find(|e| e.description == EFI_ACTION_CALLING_BOOT_OPTION)
            .unwrap();
        assert_eq!(
            action.sha384,
            Some(sha384(EFI_ACTION_CALLING_BOOT_OPTION.as_bytes()))
        );
        let sep = log
            .events
            .iter()
            .find(|e| e.event_type_name == "EV_SEPARATOR")
            .unwrap();
        assert_eq!(sep.sha384, Some(sha384(&SEPARATOR)));
    }

    #[test]
    fn cmdline_is_utf16le_with_initrd_marker_and_nul() {
        let m = measured_cmdline("console=ttyS0", true);
        let text = "console=ttyS0 initrd=initrd";
        assert_eq!(m.len(), text.len() * 2 + 2);
        assert_eq!(&m[..4], &[b'c', 0, b'o', 0]);
        assert_eq!(&m[m.len() - 2..], &[0, 0]);
        assert_eq!(measured_cmdline("a", false), vec![b'a', 0, 0, 0]);
    }

    #[test]
    fn qemu_and_edk2_profiles_parse() {
        assert_eq!(
            QemuProfile::parse("10.1").unwrap(),
            QemuProfile::Upstream10_1
        );
        assert_eq!(
            QemuProfile::parse("11.0.2").unwrap(),
            QemuProfile::Upstream10_1
        );
        assert_eq!(
            QemuProfile::parse("8.2-tdx").unwrap(),
            QemuProfile::Tdx8Fork
        );
        assert!(QemuProfile::parse("10.0").is_err());
        assert!(QemuProfile::parse("7.2").is_err());
        assert_eq!(
            Edk2Profile::parse("202502").unwrap(),
            Edk2Profile::Stable202502
        );
        assert!(Edk2Profile::parse("202311").is_err());
    }

    #[test]
    fn runtime_events_are_domain_separated_and_ordered() {
        let a = runtime_event_digest("config", b"x");
        assert_ne!(a, runtime_event_digest("confi", b"gx"));
        assert_ne!(a, sha384(b"x"));
        let events = parse_runtime_events(
            br#"[{"name":"config","text":"x"},{"name":"model","data_hex":"00ff"}]"#,
        )
        .unwrap();
        let out = rtmr3_events(&events).unwrap();
        assert_eq!(out[0].digest, hex::encode(a));
        assert_eq!(
            out[1].digest,
            hex::encode(runtime_event_digest("model", &[0, 0xff]))
        );
        assert!(
            rtmr3_events(&[RuntimeEvent {
                name: "bad name".into(),
                text: Some(String::new()),
                data_hex: None
            }])
            .is_err()
        );
        assert!(parse_runtime_events(b"{}").is_err());
    }

    #[test]
    fn whole_measurement_of_synthetic_inputs_is_consistent() {
        let fw = crate::tdvf::tests::synthetic_firmware();
        let kernel = crate::pe::tests::synthetic_pe(10, 0);
        let initrd = vec![7u8; 5000];
        let inputs = BootInputs {
            firmware: &fw,
            kernel: &kernel,
            initrd: Some(&initrd),
            cmdline: "console=ttyS0",
            memory_size_bytes: 2 << 30,
            cpus: 2,
            qemu: QemuProfile::Upstream10_1,
            edk2: Edk2Profile::Stable202502,
            acpi: None,
            runtime_events: &[],
        };
        let m = measure(&inputs).unwrap();
        assert_eq!(m.rtmr0, None, "no ACPI tables, no RTMR0");
        assert_eq!(m.events.rtmr1.len(), 5);
        assert_eq!(m.events.rtmr2.len(), 2);
        assert_eq!(m.events.rtmr2[1].digest, hex::encode(sha384(&initrd)));
        assert_eq!(m.rtmr3, Some([0u8; 48]));
        // The JSON round-trips.
        assert_eq!(Measurements::from_json(m.to_json().as_bytes()).unwrap(), m);
    }
}
