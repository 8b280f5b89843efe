//! `cloister doctor`: says whether and how this host can run the image (KVM, TDX, QEMU).
//! The probes live in `cloister_image::host`.

use std::path::PathBuf;

use cloister_image::qemu::{self, QEMU_INSTALL_HINT, TDX_QEMU_MIN};

/// Check whether this host can run the image, and how.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A built image whose kernel is booted under KVM for a few seconds, to prove KVM
    /// runs a real guest.
    #[arg(long, default_value = "target/cloister-image")]
    image: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let report = cloister_image::host::report();
    let vmlinuz = args.image.join(cloister_image::build::VMLINUZ);
    // The one-instruction guest first; when it ran, the image's own kernel.
    let (kvm, kernel_probe) = match (&report.kvm, qemu::find_qemu(), vmlinuz.is_file()) {
        (Ok(()), Ok(binary), true) => (qemu::probe_kvm_boot(&binary, &vmlinuz), true),
        (probe, ..) => (probe.clone().map_err(|e| e.to_string()), false),
    };
    match &kvm {
        Ok(()) if kernel_probe => println!("KVM:  usable (the image's kernel booted under KVM)"),
        Ok(()) => println!(
            "KVM:  a one-instruction guest ran; build the image to check a real kernel boots"
        ),
        Err(why) => {
            println!("KVM:  not usable ({why}); `cloister run` falls back to TCG, much slower")
        }
    }
    match &report.tdx {
        Ok(()) => println!("TDX:  supported by KVM (KVM_CAP_VM_TYPES has KVM_X86_TDX_VM)"),
        Err(why) => {
            println!("TDX:  not supported ({why}); `cloister run --tdx` will not boot here")
        }
    }
    match &report.qemu {
        Ok((a, b, c)) => {
            let tdx_ok = (*a, *b) >= TDX_QEMU_MIN;
            println!(
                "QEMU: {a}.{b}.{c}{}",
                if tdx_ok {
                    ""
                } else {
                    " (TDX guests need 10.1 or later)"
                }
            );
        }
        Err(why) => println!("QEMU: missing ({why}); install it with `{QEMU_INSTALL_HINT}`"),
    }
    let verdict = match (&kvm, &report.tdx, &report.qemu) {
        (_, _, Err(_)) => "cannot boot the image until QEMU is installed",
        (Ok(()), Ok(()), Ok(v)) if (v.0, v.1) >= TDX_QEMU_MIN => "can run the image as a TDX guest",
        (Ok(()), _, Ok(_)) => "can run the image under KVM (not as a TD)",
        (Err(_), _, Ok(_)) => "can run the image under TCG only (slow)",
    };
    println!("=> this host {verdict}");
    Ok(())
}
