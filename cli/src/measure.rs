//! `cloister measure`: compute the launch measurements (MRTD, RTMR0..RTMR3) a TD booted
//! from an image will show, and write them with their events to `measurements.json`.
//! Reads the input files; the computation is `cloister_measurements::boot::measure`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cloister_measurements::boot::{self, AcpiTables, BootInputs, Edk2Profile, QemuProfile};

/// Compute the measurements of a Cloister image for one host profile.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image folder written by `cloister build`: vmlinuz, initramfs.cpio.zst, cmdline.
    #[arg(long)]
    image: PathBuf,
    /// The TDVF firmware passed to QEMU as -bios (OVMF.fd).
    #[arg(long)]
    ovmf: PathBuf,
    /// Guest memory, as QEMU's -m: 4G, 4096M or bytes.
    #[arg(long, default_value = "4G")]
    memory: String,
    /// vCPUs (recorded; they change RTMR0 through the ACPI tables).
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// QEMU version: 10.1 or later, or 8-tdx for the QEMU 8.x TDX fork.
    #[arg(long, default_value = "10.1")]
    qemu: String,
    /// edk2 release of the firmware: 202502 (Debian trixie) or 202505.
    #[arg(long, default_value = "202502")]
    edk2: String,
    /// Folder with QEMU's ACPI fw_cfg files for this host profile: table-loader, rsdp,
    /// tables (see docs/measurements.md). Without it RTMR0 is left out.
    #[arg(long)]
    acpi_tables: Option<PathBuf>,
    /// JSON list of RTMR3 runtime events (see docs/measurements.md).
    #[arg(long)]
    runtime_events: Option<PathBuf>,
    /// Where to write the result.
    #[arg(long, default_value = "measurements.json")]
    out: PathBuf,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Parses QEMU-style sizes: bytes, or a number with K, M, G or T (binary units).
fn parse_size(text: &str) -> anyhow::Result<u64> {
    let t = text.trim().trim_end_matches("iB").trim_end_matches('B');
    let (digits, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("bad size {text:?}: use 4G, 4096M or bytes"))?;
    n.checked_mul(1 << shift)
        .with_context(|| format!("size {text:?} is too large"))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let firmware = read(&args.ovmf)?;
    let kernel = read(&args.image.join("vmlinuz"))?;
    let initrd_path = args.image.join("initramfs.cpio.zst");
    let initrd = if initrd_path.exists() {
        Some(read(&initrd_path)?)
    } else {
        None
    };
    let cmdline_bytes = read(&args.image.join("cmdline"))?;
    let cmdline = String::from_utf8(cmdline_bytes).context("cmdline is not UTF-8")?;
    // The file ends with a newline; QEMU gets the line without it.
    let cmdline = cmdline.trim_end_matches(['\n', '\r']);
    if cmdline.contains('\n') {
        bail!("cmdline has more than one line");
    }
    // The command line carries each model disk's root hash; check the disks hold what it
    // names, so the measurement of the command line stands for the weights too.
    for disk in cloister_image::build::verify_model_disks(&args.image, cmdline)? {
        eprintln!(
            "model disk {} ({}): {} bytes, dm-verity root {} matches the command line",
            disk.file, disk.name, disk.verity.data_bytes, disk.verity.root
        );
    }
    let acpi_files = match &args.acpi_tables {
        Some(dir) => Some((
            read(&dir.join("table-loader"))?,
            read(&dir.join("rsdp"))?,
            read(&dir.join("tables"))?,
        )),
        None => None,
    };
    let runtime_events = match &args.runtime_events {
        Some(path) => boot::parse_runtime_events(&read(path)?)?,
        None => Vec::new(),
    };
    let inputs = BootInputs {
        firmware: &firmware,
        kernel: &kernel,
        initrd: initrd.as_deref(),
        cmdline,
        memory_size_bytes: parse_size(&args.memory)?,
        cpus: args.cpus,
        qemu: QemuProfile::parse(&args.qemu)?,
        edk2: Edk2Profile::parse(&args.edk2)?,
        acpi: acpi_files.as_ref().map(|(l, r, t)| AcpiTables {
            table_loader: l,
            rsdp: r,
            tables: t,
        }),
        runtime_events: &runtime_events,
    };
    let m = boot::measure(&inputs)?;
    std::fs::write(&args.out, m.to_json())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    for (name, value) in [
        ("mrtd", m.mrtd),
        ("rtmr0", m.rtmr0),
        ("rtmr1", m.rtmr1),
        ("rtmr2", m.rtmr2),
        ("rtmr3", m.rtmr3),
    ] {
        match value {
            Some(v) => println!("{name} {}", hex::encode(v)),
            None => println!("{name} (not computed: pass --acpi-tables for this host profile)"),
        }
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse_like_qemu() {
        assert_eq!(super::parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(super::parse_size("4096M").unwrap(), 4 << 30);
        assert_eq!(super::parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(super::parse_size("1048576").unwrap(), 1 << 20);
        assert!(super::parse_size("lots").is_err());
        assert!(super::parse_size("99999999999T").is_err());
    }
}
