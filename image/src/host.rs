//! What this host can do: whether KVM really runs a guest (a tiny real-mode guest that
//! executes `hlt`), whether KVM offers TDX VMs, and which QEMU is installed. These are
//! the only raw ioctls of the crate. It must never leave a VM or a mapping behind, and
//! never claim KVM works from the mere presence of `/dev/kvm`.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Command;

use crate::qemu::{QEMU_BINARY, parse_version};

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_CHECK_EXTENSION: libc::c_ulong = 0xAE03;
const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
const KVM_SET_REGS: libc::c_ulong = 0x4090_AE82;
const KVM_GET_SREGS: libc::c_ulong = 0x8138_AE83;
const KVM_SET_SREGS: libc::c_ulong = 0x4138_AE84;
const KVM_RUN: libc::c_ulong = 0xAE80;
/// The only KVM API version there has ever been.
const KVM_API_VERSION: libc::c_int = 12;
/// `KVM_CAP_VM_TYPES`: a bit mask of the VM types KVM can create.
const KVM_CAP_VM_TYPES: libc::c_ulong = 235;
/// `KVM_X86_TDX_VM`, the bit of a TD in that mask.
const KVM_X86_TDX_VM: u32 = 5;
/// `KVM_EXIT_HLT`.
const KVM_EXIT_HLT: u32 = 5;
/// Size of `struct kvm_sregs` and `struct kvm_regs` on x86-64.
const KVM_SREGS_BYTES: usize = 312;
const KVM_REGS_BYTES: usize = 144;
/// Guest-physical address of the probe's one page of code.
const PROBE_GUEST_ADDR: u64 = 0x1000;
const PAGE_BYTES: usize = 4096;

/// What `cloister doctor` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    /// Ok when a guest ran under KVM, else why not.
    pub kvm: Result<(), String>,
    /// Ok when KVM can create TD VMs, else why not.
    pub tdx: Result<(), String>,
    /// QEMU's version, or why it is unusable.
    pub qemu: Result<(u32, u32, u32), String>,
}

fn ioctl(fd: RawFd, request: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<libc::c_int> {
    // SAFETY: every request passed here either takes an integer argument or a pointer to
    // a buffer the caller owns, of the size the request encodes; the kernel checks fds.
    let rc = unsafe { libc::ioctl(fd, request, arg) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn open_kvm(dev: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("cannot open {}: {e}", dev.display()))
}

fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful KVM ioctl that creates a new fd,
    // and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A page of anonymous memory, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(len: usize, fd: Option<RawFd>) -> std::io::Result<Self> {
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED, fd),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a fresh mapping at an address of the kernel's choosing; no existing
        // memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(Self { ptr, len })
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and no reference into the
        // mapping outlives `self`.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// Runs a one-instruction guest (`hlt` in real mode) under KVM at `dev`.
pub fn probe_kvm(dev: &Path) -> Result<(), String> {
    let kvm = open_kvm(dev)?;
    let version = ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0).map_err(|e| e.to_string())?;
    if version != KVM_API_VERSION {
        return Err(format!("unexpected KVM API version {version}"));
    }
    let vm =
        owned(ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0).map_err(|e| format!("KVM_CREATE_VM: {e}"))?);
    let memory = Mapping::new(PAGE_BYTES, None).map_err(|e| format!("mmap: {e}"))?;
    // SAFETY: the mapping is PAGE_BYTES long and writable; one byte is written.
    unsafe { *(memory.ptr as *mut u8) = 0xf4 }; // hlt
    let mut region = [0u8; 32];
    region[8..16].copy_from_slice(&PROBE_GUEST_ADDR.to_ne_bytes());
    region[16..24].copy_from_slice(&(PAGE_BYTES as u64).to_ne_bytes());
    region[24..32].copy_from_slice(&(memory.ptr as u64).to_ne_bytes());
    ioctl(
        vm.as_raw_fd(),
        KVM_SET_USER_MEMORY_REGION,
        region.as_ptr() as libc::c_ulong,
    )
    .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let vcpu = owned(
        ioctl(vm.as_raw_fd(), KVM_CREATE_VCPU, 0).map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?,
    );
    let run_size = ioctl(kvm.as_raw_fd(), KVM_GET_VCPU_MMAP_SIZE, 0).map_err(|e| e.to_string())?;
    let run = Mapping::new(run_size as usize, Some(vcpu.as_raw_fd()))
        .map_err(|e| format!("mmap kvm_run: {e}"))?;
    let mut sregs = [0u8; KVM_SREGS_BYTES];
    ioctl(
        vcpu.as_raw_fd(),
        KVM_GET_SREGS,
        sregs.as_mut_ptr() as libc::c_ulong,
    )
    .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    // cs is the first kvm_segment: base (u64) at 0, selector (u16) at 12.
    sregs[0..8].copy_from_slice(&0u64.to_ne_bytes());
    sregs[12..14].copy_from_slice(&0u16.to_ne_bytes());
    ioctl(
        vcpu.as_raw_fd(),
        KVM_SET_SREGS,
        sregs.as_ptr() as libc::c_ulong,
    )
    .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = [0u8; KVM_REGS_BYTES];
    regs[16 * 8..17 * 8].copy_from_slice(&PROBE_GUEST_ADDR.to_ne_bytes()); // rip
    regs[17 * 8..18 * 8].copy_from_slice(&2u64.to_ne_bytes()); // rflags, bit 1 always set
    ioctl(
        vcpu.as_raw_fd(),
        KVM_SET_REGS,
        regs.as_ptr() as libc::c_ulong,
    )
    .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    ioctl(vcpu.as_raw_fd(), KVM_RUN, 0).map_err(|e| format!("KVM_RUN: {e}"))?;
    // SAFETY: kvm_run is at least a page; exit_reason is the u32 at offset 8.
    let exit_reason = unsafe { *((run.ptr as *const u8).add(8) as *const u32) };
    if exit_reason == KVM_EXIT_HLT {
        Ok(())
    } else {
        Err(format!(
            "the probe guest exited with reason {exit_reason}, not HLT"
        ))
    }
}

/// Whether KVM at `dev` can create TD VMs (`KVM_CAP_VM_TYPES` has `KVM_X86_TDX_VM`).
pub fn probe_tdx(dev: &Path) -> Result<(), String> {
    let kvm = open_kvm(dev)?;
    let types =
        ioctl(kvm.as_raw_fd(), KVM_CHECK_EXTENSION, KVM_CAP_VM_TYPES).map_err(|e| e.to_string())?;
    if (types as u32) & (1 << KVM_X86_TDX_VM) != 0 {
        Ok(())
    } else {
        Err(format!(
            "KVM offers VM types {types:#x}, without TDX (bit {KVM_X86_TDX_VM})"
        ))
    }
}

/// The installed QEMU's version.
pub fn qemu_version() -> Result<(u32, u32, u32), String> {
    let out = Command::new(QEMU_BINARY)
        .arg("--version")
        .output()
        .map_err(|e| {
            format!(
                "{QEMU_BINARY} not found ({e}); install it with `{}`",
                crate::qemu::QEMU_INSTALL_HINT
            )
        })?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| format!("{QEMU_BINARY} --version printed no version"))
}

/// Everything `cloister doctor` checks.
pub fn report() -> HostReport {
    let dev = Path::new("/dev/kvm");
    HostReport {
        kvm: probe_kvm(dev),
        tdx: probe_tdx(dev),
        qemu: qemu_version(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_kvm_device_is_reported_not_a_panic() {
        let err = probe_kvm(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(err.contains("/nonexistent/kvm"), "{err}");
        assert!(probe_tdx(Path::new("/nonexistent/kvm")).is_err());
    }

    #[test]
    fn a_file_that_is_not_kvm_fails_the_probe() {
        let err = probe_kvm(Path::new("/dev/null")).unwrap_err();
        assert!(!err.is_empty());
    }
}
