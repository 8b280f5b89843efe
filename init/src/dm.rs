//! Device-mapper: the buffers of its ioctls, built and read by hand, and the sequence that
//! creates a mapping (create, load a table, resume, read the status back) or undoes it.
//!
//! The layout of `struct dm_ioctl` (312 bytes) and `struct dm_target_spec` (40 bytes,
//! each followed by its NUL-terminated parameter string, padded to 8 bytes) is the
//! kernel's `include/uapi/linux/dm-ioctl.h`, interface version 4. Every command takes one
//! buffer: the header, then the command's data from `data_start`, `data_size` bytes in all;
//! the kernel writes its answer back into the same buffer. The ioctl itself goes through
//! [`System::dm_ioctl`], so this module is tested on any host and holds no `unsafe`.
//!
//! Targets are generic (a type and a parameter string): [`verity_params`] builds dm-verity's
//! and [`crypt_params`] dm-crypt's. A table carrying a key must be loaded with
//! [`DM_SECURE_DATA_FLAG`] (the kernel then wipes its copies) and the caller zeroes its own
//! buffer. This module never logs a table's parameters.

use std::fmt::Write as _;
use std::io;

use crate::sys::System;

/// `sizeof(struct dm_ioctl)`.
pub const DM_IOCTL_BYTES: usize = 312;
/// `sizeof(struct dm_target_spec)`.
pub const DM_TARGET_SPEC_BYTES: usize = 40;
/// `DM_NAME_LEN`: a device name, its NUL included.
pub const DM_NAME_LEN: usize = 128;
/// `DM_UUID_LEN`.
pub const DM_UUID_LEN: usize = 129;
/// `DM_MAX_TYPE_NAME`: a target type, its NUL included.
pub const DM_MAX_TYPE_NAME: usize = 16;
/// The interface version sent: major 4 (the only one), minor 0 (the kernel accepts any
/// minor up to its own).
pub const DM_VERSION: [u32; 3] = [4, 0, 0];
/// `DM_READONLY_FLAG`.
pub const DM_READONLY_FLAG: u32 = 1 << 0;
/// `DM_SUSPEND_FLAG`: with DM_DEV_SUSPEND, suspend; without, resume.
pub const DM_SUSPEND_FLAG: u32 = 1 << 1;
/// `DM_STATUS_TABLE_FLAG`: DM_TABLE_STATUS returns the table instead of the status.
pub const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
/// `DM_ACTIVE_PRESENT_FLAG`: the device has a live table.
pub const DM_ACTIVE_PRESENT_FLAG: u32 = 1 << 5;
/// `DM_BUFFER_FULL_FLAG`: the answer did not fit.
pub const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;
/// `DM_SECURE_DATA_FLAG`: the kernel wipes the buffers that held this table (keys).
pub const DM_SECURE_DATA_FLAG: u32 = 1 << 15;
/// Room left after the header for the kernel's answers (target status lines).
pub const ANSWER_ROOM_BYTES: usize = 16 * 1024;
/// A 512-byte sector, the unit of device-mapper's table lengths.
pub const SECTOR_BYTES: u64 = 512;

// Field offsets in `struct dm_ioctl`.
const OFF_VERSION: usize = 0;
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_FLAGS: usize = 28;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;
// Field offsets in `struct dm_target_spec`.
const SPEC_SECTOR_START: usize = 0;
const SPEC_LENGTH: usize = 8;
const SPEC_STATUS: usize = 16;
const SPEC_NEXT: usize = 20;
const SPEC_TARGET_TYPE: usize = 24;

/// The device-mapper commands init uses (`DM_*_CMD` in dm-ioctl.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmCommand {
    /// `DM_VERSION`: the kernel's interface version.
    Version,
    /// `DM_DEV_CREATE`: a device with no table.
    DevCreate,
    /// `DM_DEV_REMOVE`.
    DevRemove,
    /// `DM_DEV_SUSPEND`: suspend, or resume (which makes a loaded table live).
    DevSuspend,
    /// `DM_TABLE_LOAD`: a table into the inactive slot.
    TableLoad,
    /// `DM_TABLE_STATUS`: each target's status (or table).
    TableStatus,
}

impl DmCommand {
    /// The command's number.
    pub fn number(self) -> u32 {
        match self {
            DmCommand::Version => 0,
            DmCommand::DevCreate => 3,
            DmCommand::DevRemove => 4,
            DmCommand::DevSuspend => 6,
            DmCommand::TableLoad => 9,
            DmCommand::TableStatus => 12,
        }
    }

    /// The ioctl request: `_IOWR(0xfd, number, struct dm_ioctl)`.
    pub fn request(self) -> u32 {
        const IOC_READ_WRITE: u32 = 3;
        (IOC_READ_WRITE << 30) | ((DM_IOCTL_BYTES as u32) << 16) | (0xfd << 8) | self.number()
    }
}

/// One target of a table: `length_sectors` sectors from `start_sector`, mapped by
/// `target_type` with its parameter string.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// First sector of the mapped device this target covers.
    pub start_sector: u64,
    /// How many sectors.
    pub length_sectors: u64,
    /// `verity`, `crypt`, `linear`...
    pub target_type: String,
    /// The target's parameters, as `dmsetup table` prints them.
    pub params: String,
}

impl std::fmt::Debug for Target {
    // The parameters can hold a key: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("start_sector", &self.start_sector)
            .field("length_sectors", &self.length_sectors)
            .field("target_type", &self.target_type)
            .finish_non_exhaustive()
    }
}

/// What went wrong with a device-mapper request.
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    /// A name or target type that does not fit the kernel's fields.
    #[error("device-mapper: {0}")]
    Invalid(&'static str),
    /// The kernel refused a command.
    #[error("device-mapper {command:?} on {name:?} failed")]
    Ioctl {
        /// The command.
        command: DmCommand,
        /// The device.
        name: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The kernel's answer does not hold together.
    #[error("device-mapper answered a malformed buffer: {0}")]
    Malformed(&'static str),
    /// The kernel speaks another interface.
    #[error("device-mapper interface {0}.{1}.{2} is not version 4")]
    Version(u32, u32, u32),
}

/// A device number as device-mapper reports it (`huge_encode_dev`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevNumber {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DevNumber {
    /// Decodes the kernel's `new_encode_dev` layout of `dm_ioctl.dev`.
    pub fn decode(dev: u64) -> DevNumber {
        let dev = dev as u32;
        DevNumber {
            major: (dev & 0xfff00) >> 8,
            minor: (dev & 0xff) | ((dev >> 12) & 0xfff00),
        }
    }
}

/// The header fields of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The interface version the kernel reports.
    pub version: [u32; 3],
    /// `DM_*_FLAG`s.
    pub flags: u32,
    /// Number of targets (DM_TABLE_STATUS).
    pub target_count: u32,
    /// The device.
    pub dev: DevNumber,
}

/// One target's line from DM_TABLE_STATUS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetStatus {
    /// First sector.
    pub start_sector: u64,
    /// Length in sectors.
    pub length_sectors: u64,
    /// Target type.
    pub target_type: String,
    /// The status string (for verity: `V` verified so far, `C` a corruption was seen).
    pub status: String,
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().expect("four bytes"))
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(buf[at..at + 8].try_into().expect("eight bytes"))
}

/// Whether `name` is a device name device-mapper and `/dev/mapper/` accept: 1 to 127
/// bytes of letters, digits, `.`, `_` and `-`, not `.` or `..`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < DM_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Builds the buffer of one command on device `name` (empty for DM_VERSION) with
/// `targets` (DM_TABLE_LOAD only) and room for the kernel's answer.
pub fn request(name: &str, flags: u32, targets: &[Target]) -> Result<Vec<u8>, DmError> {
    if !name.is_empty() && !is_valid_name(name) {
        return Err(DmError::Invalid(
            "a device name of 1-127 letters, digits, . _ -",
        ));
    }
    let mut data = Vec::new();
    for target in targets {
        if target.target_type.is_empty()
            || target.target_type.len() >= DM_MAX_TYPE_NAME
            || !target.target_type.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(DmError::Invalid("a target type of 1-15 printable bytes"));
        }
        if target.params.as_bytes().contains(&0) {
            return Err(DmError::Invalid("a NUL in target parameters"));
        }
        let start = data.len();
        data.resize(start + DM_TARGET_SPEC_BYTES, 0);
        data.extend_from_slice(target.params.as_bytes());
        data.push(0);
        // The next spec starts 8-byte aligned.
        data.resize(data.len().next_multiple_of(8), 0);
        let spec = &mut data[start..];
        put_u64(spec, SPEC_SECTOR_START, target.start_sector);
        put_u64(spec, SPEC_LENGTH, target.length_sectors);
        let next = (data.len() - start) as u32;
        let spec = &mut data[start..];
        put_u32(spec, SPEC_NEXT, next);
        spec[SPEC_TARGET_TYPE..SPEC_TARGET_TYPE + target.target_type.len()]
            .copy_from_slice(target.target_type.as_bytes());
    }
    let data_size = DM_IOCTL_BYTES + data.len().max(ANSWER_ROOM_BYTES);
    let data_size_u32 =
        u32::try_from(data_size).map_err(|_| DmError::Invalid("a table over 4 GiB"))?;
    let mut buf = vec![0u8; data_size];
    for (i, part) in DM_VERSION.iter().enumerate() {
        put_u32(&mut buf, OFF_VERSION + 4 * i, *part);
    }
    put_u32(&mut buf, OFF_DATA_SIZE, data_size_u32);
    put_u32(&mut buf, OFF_DATA_START, DM_IOCTL_BYTES as u32);
    put_u32(&mut buf, OFF_TARGET_COUNT, targets.len() as u32);
    put_u32(&mut buf, OFF_FLAGS, flags);
    buf[OFF_NAME..OFF_NAME + name.len()].copy_from_slice(name.as_bytes());
    buf[DM_IOCTL_BYTES..DM_IOCTL_BYTES + data.len()].copy_from_slice(&data);
    Ok(buf)
}

/// Reads the header of an answer.
pub fn answer(buf: &[u8]) -> Result<Answer, DmError> {
    if buf.len() < DM_IOCTL_BYTES {
        return Err(DmError::Malformed("shorter than struct dm_ioctl"));
    }
    Ok(Answer {
        version: [get_u32(buf, 0), get_u32(buf, 4), get_u32(buf, 8)],
        flags: get_u32(buf, OFF_FLAGS),
        target_count: get_u32(buf, OFF_TARGET_COUNT),
        dev: DevNumber::decode(get_u64(buf, OFF_DEV)),
    })
}

/// Reads the targets of a DM_TABLE_STATUS answer. There, each spec's `next` counts from
/// the first spec, not from the current one.
pub fn target_statuses(buf: &[u8]) -> Result<Vec<TargetStatus>, DmError> {
    let header = answer(buf)?;
    if header.flags & DM_BUFFER_FULL_FLAG != 0 {
        return Err(DmError::Malformed("the status did not fit the buffer"));
    }
    let data_start = get_u32(buf, OFF_DATA_START) as usize;
    let data_size = (get_u32(buf, OFF_DATA_SIZE) as usize).min(buf.len());
    if data_start < DM_IOCTL_BYTES || data_start > data_size {
        return Err(DmError::Malformed("data_start outside the buffer"));
    }
    let data = &buf[data_start..data_size];
    let mut out = Vec::new();
    let mut at = 0usize;
    for _ in 0..header.target_count {
        let spec = data
            .get(at..at + DM_TARGET_SPEC_BYTES)
            .ok_or(DmError::Malformed("a target spec past the end"))?;
        let type_bytes = &spec[SPEC_TARGET_TYPE..SPEC_TARGET_TYPE + DM_MAX_TYPE_NAME];
        let type_end = type_bytes.iter().position(|&b| b == 0).unwrap_or(0);
        let text = &data[at + DM_TARGET_SPEC_BYTES..];
        let text_end = text
            .iter()
            .position(|&b| b == 0)
            .ok_or(DmError::Malformed("a status without its NUL"))?;
        out.push(TargetStatus {
            start_sector: get_u64(spec, SPEC_SECTOR_START),
            length_sectors: get_u64(spec, SPEC_LENGTH),
            target_type: String::from_utf8_lossy(&type_bytes[..type_end]).into_owned(),
            status: String::from_utf8_lossy(&text[..text_end]).into_owned(),
        });
        let _ = get_u32(spec, SPEC_STATUS);
        let next = get_u32(spec, SPEC_NEXT) as usize;
        if next <= at {
            break;
        }
        at = next;
    }
    Ok(out)
}

/// The parameters of a dm-verity target (format 1, no superblock): data and hash on
/// `device` (`MAJOR:MINOR`), the hash tree starting at hash block `hash_start_block`.
/// No optional arguments: a corrupt block then reads as EIO (the kernel's default), never
/// a restart or a panic.
pub fn verity_params(
    device: DevNumber,
    block_bytes: u32,
    data_blocks: u64,
    hash_start_block: u64,
    algorithm: &str,
    root: &[u8],
    salt: &[u8],
) -> String {
    let dev = format!("{}:{}", device.major, device.minor);
    format!(
        "1 {dev} {dev} {block_bytes} {block_bytes} {data_blocks} {hash_start_block} {algorithm} {} {}",
        hex(root),
        hex(salt)
    )
}

/// The parameters of a dm-crypt target: `cipher` (`aes-xts-plain64`) with `key`, IV offset
/// 0, on `device` from `offset_sectors`, in `sector_bytes` sectors. The string holds the key
/// in hex: load it with [`DM_SECURE_DATA_FLAG`] and drop it at once.
pub fn crypt_params(
    cipher: &str,
    key: &[u8],
    device: DevNumber,
    offset_sectors: u64,
    sector_bytes: u32,
) -> String {
    let mut params = format!(
        "{cipher} {} 0 {}:{} {offset_sectors}",
        hex(key),
        device.major,
        device.minor
    );
    if sector_bytes != SECTOR_BYTES as u32 {
        // One optional argument: the encryption sector size.
        let _ = write!(params, " 1 sector_size:{sector_bytes}");
    }
    params
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn run<S: System>(
    system: &S,
    command: DmCommand,
    name: &str,
    flags: u32,
    targets: &[Target],
) -> Result<Vec<u8>, DmError> {
    let mut buf = request(name, flags, targets)?;
    let result = system.dm_ioctl(command, &mut buf);
    if flags & DM_SECURE_DATA_FLAG != 0 {
        // Our copy of the table goes too, whatever the kernel said.
        let keep = DM_IOCTL_BYTES.min(buf.len());
        buf[keep..].fill(0);
    }
    result.map_err(|source| DmError::Ioctl {
        command,
        name: name.to_owned(),
        source,
    })?;
    Ok(buf)
}

/// Checks that the kernel speaks interface version 4.
pub fn check_version<S: System>(system: &S) -> Result<[u32; 3], DmError> {
    let buf = run(system, DmCommand::Version, "", 0, &[])?;
    let version = answer(&buf)?.version;
    if version[0] != DM_VERSION[0] {
        return Err(DmError::Version(version[0], version[1], version[2]));
    }
    Ok(version)
}

/// A live mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Its name (`/dev/mapper/<name>`).
    pub name: String,
    /// Its device number (`/dev/dm-<minor>`).
    pub dev: DevNumber,
    /// Each target's status right after it went live.
    pub status: Vec<TargetStatus>,
}

/// Creates device `name`, loads `targets`, resumes it (the table goes live) and reads its
/// status back. On any failure after the create, the device is removed again, so a failed
/// mapping leaves nothing behind. `flags` adds to the load (DM_READONLY_FLAG,
/// DM_SECURE_DATA_FLAG).
pub fn create<S: System>(
    system: &S,
    name: &str,
    targets: &[Target],
    flags: u32,
) -> Result<Mapping, DmError> {
    let created = run(
        system,
        DmCommand::DevCreate,
        name,
        flags & DM_READONLY_FLAG,
        &[],
    )?;
    let dev = answer(&created)?.dev;
    let live = (|| {
        run(system, DmCommand::TableLoad, name, flags, targets)?;
        let resumed = run(system, DmCommand::DevSuspend, name, 0, &[])?;
        if answer(&resumed)?.flags & DM_ACTIVE_PRESENT_FLAG == 0 {
            return Err(DmError::Malformed("the resumed device has no live table"));
        }
        let status = run(system, DmCommand::TableStatus, name, 0, &[])?;
        target_statuses(&status)
    })();
    match live {
        Ok(status) => Ok(Mapping {
            name: name.to_owned(),
            dev,
            status,
        }),
        Err(error) => {
            if let Err(undo) = remove(system, name) {
                tracing::warn!("cannot remove the failed mapping {name}: {undo}");
            }
            Err(error)
        }
    }
}

/// Removes device `name`.
pub fn remove<S: System>(system: &S, name: &str) -> Result<(), DmError> {
    run(system, DmCommand::DevRemove, name, 0, &[]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, FakeSystem};

    fn verity_target() -> Target {
        Target {
            start_sector: 0,
            length_sectors: 16,
            target_type: "verity".into(),
            params: verity_params(
                DevNumber {
                    major: 254,
                    minor: 16,
                },
                4096,
                2,
                2,
                "sha256",
                &[0xab; 32],
                &[0x01, 0x02],
            ),
        }
    }

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // _IOWR(0xfd, n, struct dm_ioctl) with sizeof == 312 (0x138).
        assert_eq!(DmCommand::Version.request(), 0xc138_fd00);
        assert_eq!(DmCommand::DevCreate.request(), 0xc138_fd03);
        assert_eq!(DmCommand::DevRemove.request(), 0xc138_fd04);
        assert_eq!(DmCommand::DevSuspend.request(), 0xc138_fd06);
        assert_eq!(DmCommand::TableLoad.request(), 0xc138_fd09);
        assert_eq!(DmCommand::TableStatus.request(), 0xc138_fd0c);
    }

    #[test]
    fn the_header_has_the_kernel_layout() {
        let buf = request("model0", DM_READONLY_FLAG, &[]).unwrap();
        assert_eq!(buf.len(), DM_IOCTL_BYTES + ANSWER_ROOM_BYTES);
        assert_eq!(&buf[0..12], &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(get_u32(&buf, 12) as usize, buf.len(), "data_size");
        assert_eq!(get_u32(&buf, 16), 312, "data_start");
        assert_eq!(get_u32(&buf, 20), 0, "target_count");
        assert_eq!(get_u32(&buf, 24), 0, "open_count");
        assert_eq!(get_u32(&buf, 28), 1, "flags");
        assert_eq!(get_u64(&buf, 40), 0, "dev");
        assert_eq!(&buf[48..54], b"model0");
        assert!(buf[54..48 + DM_NAME_LEN].iter().all(|&b| b == 0));
        // uuid (129 bytes) and data[7] follow the name, all zero.
        assert_eq!(48 + DM_NAME_LEN + DM_UUID_LEN + 7, DM_IOCTL_BYTES);
        assert!(buf[176..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_table_load_has_the_kernel_layout() {
        let target = verity_target();
        let buf = request("m", DM_READONLY_FLAG, std::slice::from_ref(&target)).unwrap();
        assert_eq!(get_u32(&buf, 20), 1, "target_count");
        let spec = &buf[DM_IOCTL_BYTES..];
        assert_eq!(get_u64(spec, 0), 0, "sector_start");
        assert_eq!(get_u64(spec, 8), 16, "length");
        assert_eq!(get_u32(spec, 16), 0, "status");
        assert_eq!(&spec[24..30], b"verity");
        assert!(spec[30..40].iter().all(|&b| b == 0));
        let params = target.params.as_bytes();
        assert_eq!(&spec[40..40 + params.len()], params);
        assert_eq!(spec[40 + params.len()], 0, "NUL-terminated");
        let next = get_u32(spec, 20) as usize;
        assert_eq!(next % 8, 0, "the next spec is 8-byte aligned");
        assert!(next > 40 + params.len() && next < 40 + params.len() + 1 + 8);
        assert_eq!(
            target.params,
            "1 254:16 254:16 4096 4096 2 2 sha256 \
             abababababababababababababababababababababababababababababababab 0102"
        );
    }

    #[test]
    fn two_targets_are_chained_by_relative_offsets() {
        let mut second = verity_target();
        second.start_sector = 16;
        second.target_type = "linear".into();
        second.params = "254:0 0".into();
        let buf = request("m", 0, &[verity_target(), second]).unwrap();
        let data = &buf[DM_IOCTL_BYTES..];
        let next = get_u32(data, 20) as usize;
        assert_eq!(get_u64(&data[next..], 0), 16);
        assert_eq!(&data[next + 24..next + 30], b"linear");
        assert_eq!(get_u32(&data[next..], 20), 48, "40 + \"254:0 0\\0\" = 48");
    }

    #[test]
    fn bad_names_and_types_are_refused_before_any_ioctl() {
        assert!(request("a/b", 0, &[]).is_err());
        assert!(request("..", 0, &[]).is_err());
        assert!(request(&"x".repeat(128), 0, &[]).is_err());
        assert!(request(&"x".repeat(127), 0, &[]).is_ok());
        let mut t = verity_target();
        t.target_type = "a-very-long-target".into();
        assert!(request("m", 0, &[t]).is_err());
        let mut t = verity_target();
        t.params.push('\0');
        assert!(request("m", 0, &[t]).is_err());
    }

    #[test]
    fn crypt_params_have_dm_crypts_order() {
        let params = crypt_params(
            "aes-xts-plain64",
            &[0x11; 64],
            DevNumber {
                major: 254,
                minor: 32,
            },
            4096,
            4096,
        );
        let words: Vec<&str> = params.split(' ').collect();
        assert_eq!(words[0], "aes-xts-plain64");
        assert_eq!(words[1], "11".repeat(64));
        assert_eq!(words[2..], ["0", "254:32", "4096", "1", "sector_size:4096"]);
        let plain = crypt_params(
            "aes-xts-plain64",
            &[0; 64],
            DevNumber { major: 8, minor: 0 },
            0,
            512,
        );
        assert!(plain.ends_with(" 0 8:0 0"));
    }

    #[test]
    fn device_numbers_decode_like_the_kernel() {
        // new_encode_dev(MKDEV(254, 0)) and MKDEV(253, 300).
        assert_eq!(
            DevNumber::decode(0xfe00),
            DevNumber {
                major: 254,
                minor: 0
            }
        );
        assert_eq!(
            DevNumber::decode(((300 & 0xff) | (253 << 8) | ((300 & !0xff) << 12)) as u64),
            DevNumber {
                major: 253,
                minor: 300
            }
        );
    }

    /// A status answer as the kernel writes it: `next` counted from the first spec.
    fn status_answer(lines: &[(&str, &str)]) -> Vec<u8> {
        let mut buf = request("m", 0, &[]).unwrap();
        let mut at = 0usize;
        for (i, (kind, status)) in lines.iter().enumerate() {
            let spec = &mut buf[DM_IOCTL_BYTES + at..];
            put_u64(spec, 0, (i * 8) as u64);
            put_u64(spec, 8, 8);
            spec[24..24 + kind.len()].copy_from_slice(kind.as_bytes());
            spec[40..40 + status.len()].copy_from_slice(status.as_bytes());
            let next = (at + 40 + status.len() + 1).next_multiple_of(8);
            put_u32(spec, 20, next as u32);
            at = next;
        }
        put_u32(&mut buf, OFF_TARGET_COUNT, lines.len() as u32);
        put_u32(&mut buf, OFF_FLAGS, DM_ACTIVE_PRESENT_FLAG);
        buf
    }

    #[test]
    fn status_answers_are_read_with_absolute_offsets() {
        let buf = status_answer(&[("verity", "V"), ("linear", "")]);
        let statuses = target_statuses(&buf).unwrap();
        assert_eq!(statuses.len(), 2);
        assert_eq!(statuses[0].target_type, "verity");
        assert_eq!(statuses[0].status, "V");
        assert_eq!(statuses[1].start_sector, 8);
        assert_eq!(statuses[1].target_type, "linear");
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        assert!(answer(&[0; 10]).is_err());
        let mut buf = status_answer(&[("verity", "V")]);
        put_u32(&mut buf, OFF_TARGET_COUNT, 5000);
        // Specs past the end: an error, or a short list, never a panic.
        let _ = target_statuses(&buf);
        let mut buf = status_answer(&[("verity", "V")]);
        put_u32(&mut buf, OFF_DATA_START, 1_000_000);
        assert!(target_statuses(&buf).is_err());
        let mut buf = status_answer(&[("verity", "V")]);
        put_u32(&mut buf, OFF_FLAGS, DM_BUFFER_FULL_FLAG);
        assert!(target_statuses(&buf).is_err());
    }

    #[test]
    fn create_loads_resumes_and_reads_the_status() {
        let system = FakeSystem::new();
        system.set_dm_answer(DmCommand::DevCreate, {
            let mut b = request("m", 0, &[]).unwrap();
            put_u64(&mut b, OFF_DEV, 0xfe03);
            b
        });
        system.set_dm_answer(DmCommand::DevSuspend, status_answer(&[]));
        system.set_dm_answer(DmCommand::TableStatus, status_answer(&[("verity", "V")]));
        let mapping = create(&system, "m", &[verity_target()], DM_READONLY_FLAG).unwrap();
        assert_eq!(
            mapping.dev,
            DevNumber {
                major: 254,
                minor: 3
            }
        );
        assert_eq!(mapping.status[0].status, "V");
        let commands: Vec<DmCommand> = system
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::DmIoctl { command, .. } => Some(command),
                _ => None,
            })
            .collect();
        assert_eq!(
            commands,
            [
                DmCommand::DevCreate,
                DmCommand::TableLoad,
                DmCommand::DevSuspend,
                DmCommand::TableStatus
            ]
        );
    }

    #[test]
    fn a_failed_load_removes_the_device() {
        let system = FakeSystem::new();
        system.fail_dm(DmCommand::TableLoad, libc::EINVAL);
        let error = create(&system, "m", &[verity_target()], DM_READONLY_FLAG).unwrap_err();
        assert!(matches!(
            error,
            DmError::Ioctl {
                command: DmCommand::TableLoad,
                ..
            }
        ));
        assert!(system.calls().contains(&Call::DmIoctl {
            command: DmCommand::DevRemove,
            name: "m".into()
        }));
    }

    #[test]
    fn a_secure_table_is_wiped_from_our_buffer() {
        let system = FakeSystem::new();
        let target = Target {
            start_sector: 0,
            length_sectors: 8,
            target_type: "crypt".into(),
            params: crypt_params(
                "aes-xts-plain64",
                &[0x5a; 64],
                DevNumber {
                    major: 254,
                    minor: 0,
                },
                0,
                4096,
            ),
        };
        let kept = run(
            &system,
            DmCommand::TableLoad,
            "s",
            DM_SECURE_DATA_FLAG,
            &[target],
        )
        .unwrap();
        // The kernel (here the fake) saw the key; the caller's copy is wiped after the call.
        assert!(system.last_dm_buffer().windows(8).any(|w| w == b"5a5a5a5a"));
        assert!(kept[DM_IOCTL_BYTES..].iter().all(|&b| b == 0));
    }
}
