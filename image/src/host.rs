//! What this host can do: whether KVM really runs a guest (a tiny real-mode guest that
//! executes `hlt`), whether KVM offers TDX VMs, and which QEMU is installed. KVM is reached
//! through rust-vmm's `kvm-ioctls` (the crate Firecracker and Cloud Hypervisor build on;
//! Firecracker's `vstate/kvm.rs` is the model): no ioctl number or register offset is
//! written here. It must never leave a VM behind, and never claim KVM works from the mere
//! presence of `/dev/kvm`.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kvm_bindings::{
    KVM_API_VERSION, KVM_CAP_VM_TYPES, KVM_X86_TDX_VM, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit};

use crate::qemu::{QEMU_BINARY, parse_version};

/// Guest-physical address of the probe's one page of code.
const PROBE_GUEST_ADDR: u64 = 0x1000;
const PAGE_BYTES: usize = 4096;
/// `hlt`.
const HLT_OPCODE: u8 = 0xf4;

/// Why a KVM probe failed. Each message names the step; the kernel's errno is part of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvmProbeError {
    /// The device could not be opened (absent, or no permission).
    #[error("cannot open {}: {errno}", path.display())]
    Open {
        path: PathBuf,
        errno: kvm_ioctls::Error,
    },
    /// The device answered with an API version KVM never had (it is not KVM).
    #[error("{} answers KVM API version {version}, not {KVM_API_VERSION}: it is not KVM", path.display())]
    ApiVersion { path: PathBuf, version: i32 },
    /// A KVM call failed.
    #[error("{call}: {errno}")]
    Call {
        call: &'static str,
        errno: kvm_ioctls::Error,
    },
    /// The probe guest stopped for another reason than its `hlt`.
    #[error("the probe guest exited with {exit}, not HLT")]
    UnexpectedExit { exit: String },
    /// KVM cannot create TD VMs: `KVM_CAP_VM_TYPES` lacks `KVM_X86_TDX_VM`.
    #[error("KVM offers VM types {types:#x}, without TDX (bit {KVM_X86_TDX_VM})")]
    NoTdx { types: u32 },
}

/// What `cloister doctor` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    /// Ok when a guest ran under KVM, else why not.
    pub kvm: Result<(), KvmProbeError>,
    /// Ok when KVM can create TD VMs, else why not.
    pub tdx: Result<(), KvmProbeError>,
    /// QEMU's version, or why it is unusable.
    pub qemu: Result<(u32, u32, u32), String>,
}

/// Opens KVM at `dev` and checks it speaks the one KVM API there has ever been.
fn open_kvm(dev: &Path) -> Result<Kvm, KvmProbeError> {
    let open_error = |errno| KvmProbeError::Open {
        path: dev.to_owned(),
        errno,
    };
    let path = CString::new(dev.as_os_str().as_bytes())
        .map_err(|_| open_error(kvm_ioctls::Error::new(libc::EINVAL)))?;
    let kvm = Kvm::new_with_path(&path).map_err(open_error)?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION as i32 {
        return Err(KvmProbeError::ApiVersion {
            path: dev.to_owned(),
            version,
        });
    }
    Ok(kvm)
}

/// The probe guest's memory: one page-aligned page holding `hlt`.
#[repr(C, align(4096))]
struct GuestPage([u8; PAGE_BYTES]);

/// Runs a one-instruction guest (`hlt` in real mode) under KVM at `dev`.
pub fn probe_kvm(dev: &Path) -> Result<(), KvmProbeError> {
    let call = |call| move |errno| KvmProbeError::Call { call, errno };
    let kvm = open_kvm(dev)?;
    // Declared before the VM so that it outlives it: locals drop in reverse order.
    let mut page = Box::new(GuestPage([0; PAGE_BYTES]));
    page.0[0] = HLT_OPCODE;
    let vm = kvm.create_vm().map_err(call("KVM_CREATE_VM"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: PROBE_GUEST_ADDR,
        memory_size: PAGE_BYTES as u64,
        userspace_addr: page.0.as_mut_ptr() as u64,
    };
    // SAFETY: the region is one page we own, page-aligned by `GuestPage`'s alignment, and it
    // lives until after `vm` (declared before it, so dropped after it): the guest never sees
    // freed memory. Nothing else in this process reads or writes the page meanwhile.
    unsafe { vm.set_user_memory_region(region) }.map_err(call("KVM_SET_USER_MEMORY_REGION"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(call("KVM_CREATE_VCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(call("KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(call("KVM_SET_SREGS"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: PROBE_GUEST_ADDR,
        // Bit 1 of RFLAGS is always set.
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(call("KVM_SET_REGS"))?;
    match vcpu.run().map_err(call("KVM_RUN"))? {
        VcpuExit::Hlt => Ok(()),
        other => Err(KvmProbeError::UnexpectedExit {
            exit: format!("{other:?}"),
        }),
    }
}

/// Whether KVM at `dev` can create TD VMs (`KVM_CAP_VM_TYPES` has `KVM_X86_TDX_VM`).
pub fn probe_tdx(dev: &Path) -> Result<(), KvmProbeError> {
    let kvm = open_kvm(dev)?;
    let types = tdx_vm_types(kvm.check_extension_raw(KVM_CAP_VM_TYPES.into()));
    if types & (1 << KVM_X86_TDX_VM) != 0 {
        Ok(())
    } else {
        Err(KvmProbeError::NoTdx { types })
    }
}

/// The VM-type mask from `KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES)`: a kernel that predates the
/// capability answers 0, and an error (negative) means no types beyond the default either.
fn tdx_vm_types(answer: i32) -> u32 {
    u32::try_from(answer).unwrap_or(0)
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
    fn a_missing_kvm_device_is_an_open_error_naming_it() {
        let err = probe_kvm(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(
            matches!(&err, KvmProbeError::Open { path, errno } if path == Path::new("/nonexistent/kvm") && errno.errno() == libc::ENOENT),
            "{err:?}"
        );
        assert!(err.to_string().contains("/nonexistent/kvm"), "{err}");
        assert!(matches!(
            probe_tdx(Path::new("/nonexistent/kvm")),
            Err(KvmProbeError::Open { .. })
        ));
    }

    #[test]
    fn a_device_that_is_not_kvm_fails_on_the_api_version() {
        // /dev/null opens, but KVM_GET_API_VERSION is not an ioctl it knows.
        for probe in [probe_kvm, probe_tdx] {
            let err = probe(Path::new("/dev/null")).unwrap_err();
            assert!(
                matches!(&err, KvmProbeError::ApiVersion { version, .. } if *version < 0),
                "{err:?}"
            );
            assert!(err.to_string().contains("it is not KVM"), "{err}");
        }
    }

    #[test]
    fn the_vm_type_mask_has_tdx_only_when_its_bit_is_set() {
        assert_eq!(tdx_vm_types(-1), 0);
        assert_eq!(tdx_vm_types(0), 0);
        // KVM_X86_DEFAULT_VM and KVM_X86_SW_PROTECTED_VM: no TD.
        assert_eq!(tdx_vm_types(0b11) & (1 << KVM_X86_TDX_VM), 0);
        assert_ne!(tdx_vm_types(0b10_0001) & (1 << KVM_X86_TDX_VM), 0);
        let no_tdx = KvmProbeError::NoTdx { types: 0b11 };
        assert_eq!(
            no_tdx.to_string(),
            "KVM offers VM types 0x3, without TDX (bit 5)"
        );
    }

    /// On a host with /dev/kvm (this one: it opens, and may or may not run guests), the
    /// probes get past opening it and report what KVM itself said.
    #[test]
    fn the_real_device_is_opened_and_answers() {
        let dev = Path::new("/dev/kvm");
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev)
            .is_err()
        {
            eprintln!("SKIPPED: no usable /dev/kvm on this host");
            return;
        }
        match probe_kvm(dev) {
            Ok(()) => {}
            Err(e) => assert!(
                matches!(
                    e,
                    KvmProbeError::Call { .. } | KvmProbeError::UnexpectedExit { .. }
                ),
                "{e:?}"
            ),
        }
        match probe_tdx(dev) {
            Ok(()) => {}
            Err(e) => assert!(matches!(e, KvmProbeError::NoTdx { .. }), "{e:?}"),
        }
    }
}
