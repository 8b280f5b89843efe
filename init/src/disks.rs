//! Model disks: each disk the kernel command line lists (`cloister.model=NAME:BYTES:ROOT`)
//! is found by its virtio serial, mapped read-only with dm-verity under the root hash the
//! command line carries, and its first block read as an early check. model-runner then
//! reads the weights from `/dev/mapper/NAME`, where every 4 KiB block is checked against
//! the tree on first read and a corrupt one reads as EIO.
//!
//! The serial is chosen by the host, so it only says where to look: a disk's content is
//! never read to find it, and nothing on it is trusted but through the root hash, which
//! the command line (measured into RTMR2) pins. A disk that is missing, ambiguous (two
//! disks with one serial) or fails the check is not mapped; boot goes on and the service
//! that needs it fails on its own, with the reason on the console.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cmdline::ModelDiskSpec;
use crate::dm::{self, DM_READONLY_FLAG, DevNumber, DmError, SECTOR_BYTES, Target};
use crate::sys::System;

/// Where the kernel lists block devices.
pub const SYS_BLOCK: &str = "/sys/block";
/// Where mappings are named (`/dev/mapper/NAME` links to `/dev/dm-N`).
pub const DEV_MAPPER: &str = "/dev/mapper";
/// How long init waits for the listed disks to appear after virtio_blk loads.
pub const DISK_WAIT_MAX_MS: u64 = 5_000;
/// Poll interval while waiting.
const DISK_POLL_MS: u64 = 50;
/// dm-verity's data and hash block size on model disks.
pub const VERITY_BLOCK_BYTES: u64 = 4096;
/// The salt of every model disk (the image crate's `verity::SALT`):
/// `cloister-model-verity-salt-v1` padded with zeros to 32 bytes.
pub const VERITY_SALT: [u8; 32] = *b"cloister-model-verity-salt-v1\0\0\0";
/// The hash algorithm.
pub const VERITY_HASH: &str = "sha256";
/// The largest sysfs attribute read.
const SYSFS_MAX_BYTES: usize = 256;

/// A virtio block device as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioDisk {
    /// `vda`, `vdb`...
    pub name: String,
    /// Its device number.
    pub dev: DevNumber,
}

/// Why a model disk was not mapped.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// No disk with the serial.
    #[error("no disk with serial {0} (is it attached?)")]
    Missing(String),
    /// Two disks claim the serial.
    #[error("{count} disks have serial {serial}; refusing to guess")]
    Ambiguous {
        /// The serial.
        serial: String,
        /// How many.
        count: usize,
    },
    /// device-mapper refused the mapping.
    #[error(transparent)]
    Dm(#[from] DmError),
    /// The first block does not verify: the disk is not the one the command line names.
    #[error("its first block does not verify against the root hash (wrong disk, or tampered)")]
    FirstBlock(#[source] std::io::Error),
    /// dm-verity reports a corruption.
    #[error("dm-verity reports corruption (status {0:?})")]
    Corrupt(String),
}

/// One mapped model disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedModel {
    /// The mapping's name.
    pub name: String,
    /// The disk it reads.
    pub disk: String,
    /// `/dev/mapper/NAME`.
    pub path: PathBuf,
}

fn parse_dev(text: &str) -> Option<DevNumber> {
    let (major, minor) = text.trim().split_once(':')?;
    Some(DevNumber {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

/// The virtio block devices by serial.
pub fn virtio_disks_by_serial(system: &impl System) -> BTreeMap<String, Vec<VirtioDisk>> {
    let mut out: BTreeMap<String, Vec<VirtioDisk>> = BTreeMap::new();
    let mut names = system.read_dir(Path::new(SYS_BLOCK)).unwrap_or_default();
    names.sort();
    for name in names.into_iter().filter(|n| n.starts_with("vd")) {
        let dir = Path::new(SYS_BLOCK).join(&name);
        let read = |attr: &str| {
            system
                .read_file(&dir.join(attr), SYSFS_MAX_BYTES)
                .ok()
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .trim_end_matches(['\n', '\0', ' '])
                        .to_owned()
                })
        };
        let (Some(serial), Some(dev)) = (read("serial"), read("dev").and_then(|d| parse_dev(&d)))
        else {
            continue;
        };
        out.entry(serial)
            .or_default()
            .push(VirtioDisk { name, dev });
    }
    out
}

/// The dm-verity table of a model disk on `dev`: the data area (`BYTES` rounded up to
/// 4 KiB), then the hash tree from the block after it.
pub fn verity_target(spec: &ModelDiskSpec, dev: DevNumber) -> Target {
    let data_blocks = spec.data_bytes.div_ceil(VERITY_BLOCK_BYTES);
    Target {
        start_sector: 0,
        length_sectors: data_blocks * (VERITY_BLOCK_BYTES / SECTOR_BYTES),
        target_type: "verity".into(),
        params: dm::verity_params(
            dev,
            VERITY_BLOCK_BYTES as u32,
            data_blocks,
            data_blocks,
            VERITY_HASH,
            &spec.root,
            &VERITY_SALT,
        ),
    }
}

/// Maps one model disk found among `disks`.
pub fn map_model_disk(
    system: &impl System,
    spec: &ModelDiskSpec,
    disks: &BTreeMap<String, Vec<VirtioDisk>>,
) -> Result<MappedModel, DiskError> {
    let serial = spec.serial();
    let disk = match disks.get(&serial).map(Vec::as_slice) {
        None | Some([]) => return Err(DiskError::Missing(serial)),
        Some([disk]) => disk,
        Some(many) => {
            return Err(DiskError::Ambiguous {
                serial,
                count: many.len(),
            });
        }
    };
    let mapping = dm::create(
        system,
        &spec.name,
        &[verity_target(spec, disk.dev)],
        DM_READONLY_FLAG,
    )?;
    let check = || {
        if let Some(bad) = mapping.status.iter().find(|s| s.status.starts_with('C')) {
            return Err(DiskError::Corrupt(bad.status.clone()));
        }
        let node = Path::new("/dev").join(format!("dm-{}", mapping.dev.minor));
        let mut block = vec![0u8; VERITY_BLOCK_BYTES as usize];
        system
            .read_at(&node, 0, &mut block)
            .map_err(DiskError::FirstBlock)
    };
    if let Err(error) = check() {
        if let Err(undo) = dm::remove(system, &spec.name) {
            tracing::warn!("cannot remove the mapping {}: {undo}", spec.name);
        }
        return Err(error);
    }
    let path = Path::new(DEV_MAPPER).join(&spec.name);
    if let Err(error) = system.symlink(Path::new(&format!("../dm-{}", mapping.dev.minor)), &path) {
        tracing::warn!("cannot link {}: {error}", path.display());
    }
    Ok(MappedModel {
        name: spec.name.clone(),
        disk: disk.name.clone(),
        path,
    })
}

/// Maps every model disk the command line lists, waiting up to `wait_ms` for the disks to
/// appear. Prints one console line per disk. Returns the mapped ones.
pub fn map_model_disks(
    system: &impl System,
    models: &[ModelDiskSpec],
    wait_ms: u64,
) -> Vec<MappedModel> {
    if models.is_empty() {
        return Vec::new();
    }
    if let Err(error) = dm::check_version(system) {
        system.console(&format!(
            "init: device-mapper unavailable, no model disk mapped: {error}"
        ));
        return Vec::new();
    }
    let deadline = system.boottime_ms().saturating_add(wait_ms);
    let mut disks = virtio_disks_by_serial(system);
    while !models.iter().all(|m| disks.contains_key(&m.serial())) && system.boottime_ms() < deadline
    {
        system.sleep_ms(DISK_POLL_MS);
        disks = virtio_disks_by_serial(system);
    }
    let mut mapped = Vec::new();
    for spec in models {
        match map_model_disk(system, spec, &disks) {
            Ok(model) => {
                system.console(&format!(
                    "init: model disk {} verified on {} ({})",
                    model.name,
                    model.disk,
                    model.path.display()
                ));
                mapped.push(model);
            }
            Err(error) => system.console(&format!(
                "init: model disk {} ({}) NOT mapped: {}",
                spec.name,
                spec.serial(),
                error_chain(&error)
            )),
        }
    }
    mapped
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::DmCommand;
    use crate::fake::{Call, FakeSystem};
    use crate::sys::Clock;

    fn spec(index: usize, name: &str, bytes: u64) -> ModelDiskSpec {
        ModelDiskSpec {
            index,
            name: name.into(),
            data_bytes: bytes,
            root: [0x5e; 32],
        }
    }

    fn add_disk(system: &FakeSystem, name: &str, serial: &str, dev: &str) {
        system.set_file(&format!("/sys/block/{name}/serial"), serial);
        system.set_file(&format!("/sys/block/{name}/dev"), format!("{dev}\n"));
    }

    /// A DM_DEV_CREATE answer naming /dev/dm-`minor`.
    fn created(minor: u32) -> Vec<u8> {
        let mut buf = dm::request("x", 0, &[]).unwrap();
        buf[40..48].copy_from_slice(&((253u64 << 8) | minor as u64).to_ne_bytes());
        buf
    }

    fn resumed() -> Vec<u8> {
        let mut buf = dm::request("x", 0, &[]).unwrap();
        buf[28..32].copy_from_slice(&dm::DM_ACTIVE_PRESENT_FLAG.to_ne_bytes());
        buf
    }

    fn machine() -> FakeSystem {
        let system = FakeSystem::new();
        system.set_dir("/sys/block", &["vda", "vdb", "loop0"]);
        // The model disk is the second one: found by serial, not by order.
        add_disk(&system, "vda", "something-else", "254:0");
        add_disk(&system, "vdb", "cloister-model-0", "254:16");
        system.set_dm_answer(DmCommand::DevCreate, created(0));
        system.set_dm_answer(DmCommand::DevSuspend, resumed());
        system.set_file("/dev/dm-0", vec![0u8; 4096]);
        system
    }

    #[test]
    fn the_verity_table_is_dm_veritys_format() {
        let target = verity_target(
            &spec(0, "m", 4096 * 129 - 3),
            DevNumber {
                major: 254,
                minor: 16,
            },
        );
        assert_eq!(target.length_sectors, 129 * 8);
        assert_eq!(
            target.params,
            format!(
                "1 254:16 254:16 4096 4096 129 129 sha256 {} {}",
                "5e".repeat(32),
                "636c6f69737465722d6d6f64656c2d7665726974792d73616c742d7631000000"
            )
        );
    }

    #[test]
    fn a_disk_is_found_by_serial_mapped_checked_and_linked() {
        let system = machine();
        let mapped = map_model_disks(&system, &[spec(0, "smol", 10_000)], 1000);
        assert_eq!(mapped.len(), 1, "{:?}", system.console_lines());
        assert_eq!(mapped[0].disk, "vdb");
        assert_eq!(mapped[0].path, Path::new("/dev/mapper/smol"));
        let calls = system.calls();
        assert!(calls.contains(&Call::ReadAt {
            path: "/dev/dm-0".into(),
            offset: 0,
            len: 4096
        }));
        assert!(calls.contains(&Call::Symlink {
            target: "../dm-0".into(),
            link: "/dev/mapper/smol".into()
        }));
        assert!(
            system
                .console_lines()
                .iter()
                .any(|l| l == "init: model disk smol verified on vdb (/dev/mapper/smol)")
        );
    }

    #[test]
    fn a_first_block_that_does_not_verify_removes_the_mapping() {
        let system = machine();
        system.fail_read("/dev/dm-0", libc::EIO);
        let mapped = map_model_disks(&system, &[spec(0, "smol", 10_000)], 1000);
        assert!(mapped.is_empty());
        let calls = system.calls();
        assert!(calls.contains(&Call::DmIoctl {
            command: DmCommand::DevRemove,
            name: "smol".into()
        }));
        assert!(!calls.iter().any(|c| matches!(c, Call::Symlink { .. })));
        let lines = system.console_lines();
        assert!(
            lines.iter().any(|l| l.starts_with("init: model disk smol (cloister-model-0) NOT mapped: its first block does not verify")),
            "{lines:?}"
        );
    }

    #[test]
    fn missing_and_ambiguous_disks_are_not_mapped_and_time_is_bounded() {
        let system = machine();
        add_disk(&system, "vdc", "cloister-model-1", "254:32");
        system.set_dir("/sys/block", &["vda", "vdb", "vdc", "vdd"]);
        add_disk(&system, "vdd", "cloister-model-1", "254:48");
        let start = system.boottime_ms();
        let mapped = map_model_disks(
            &system,
            &[spec(1, "twice", 10), spec(2, "absent", 10)],
            DISK_WAIT_MAX_MS,
        );
        assert!(mapped.is_empty());
        assert!(system.boottime_ms() - start >= DISK_WAIT_MAX_MS);
        assert!(system.boottime_ms() - start < DISK_WAIT_MAX_MS + 1000);
        let lines = system.console_lines().join("\n");
        assert!(
            lines.contains("2 disks have serial cloister-model-1"),
            "{lines}"
        );
        assert!(
            lines.contains("no disk with serial cloister-model-2"),
            "{lines}"
        );
        assert!(!system.calls().iter().any(|c| matches!(
            c,
            Call::DmIoctl {
                command: DmCommand::DevCreate,
                ..
            }
        )));
    }

    #[test]
    fn no_models_means_no_device_mapper_at_all() {
        let system = machine();
        assert!(map_model_disks(&system, &[], 1000).is_empty());
        assert!(system.calls().is_empty());
    }
}
