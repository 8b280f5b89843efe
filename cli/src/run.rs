//! `cloister run`: boots a built image under QEMU (KVM where a probe runs a guest, else
//! TCG), or prints the command with `--dry-run`. Logic in `cloister_image::qemu`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use cloister_image::build;
use cloister_image::progress::Progress;
use cloister_image::qemu::{
    self, Accelerator, Console, Launched, PortForward, RunSettings, TdxSettings,
};

/// Boot the image in QEMU.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder holding the built image.
    #[arg(long, default_value = "target/cloister-image")]
    image: PathBuf,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Forward 127.0.0.1:HOST to guest port GUEST (`PORT` or `HOST:GUEST`; repeatable)
    /// [default: 8443:443 and 8080:80].
    #[arg(long = "port", value_name = "PORT")]
    ports: Vec<PortForward>,
    /// Run in the background, the serial console going to --log.
    #[arg(long)]
    detach: bool,
    /// Console log file for --detach.
    #[arg(long, default_value = "target/cloister-image/serial.log")]
    log: PathBuf,
    /// Boot as an Intel TDX guest (needs QEMU 10.1+ and a TDX host).
    #[arg(long)]
    tdx: bool,
    /// TDVF firmware for --tdx [default: OVMF.fd from the pinned ovmf package].
    #[arg(long)]
    firmware: Option<PathBuf>,
    /// Quote generation service socket for --tdx.
    #[arg(long, default_value = qemu::QGS_SOCKET_DEFAULT)]
    quote_socket: PathBuf,
    /// Print the QEMU command instead of running it.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cmdline = qemu::read_cmdline(&args.image).with_context(|| {
        format!(
            "no built image in {} (run `cloister build` first)",
            args.image.display()
        )
    })?;
    let tdx = if args.tdx {
        let firmware = match args.firmware {
            Some(f) => f,
            None => {
                let source = build::find_source_root(&std::env::current_dir()?).context(
                    "pass --firmware, or run from a Cloister checkout to use the pinned OVMF",
                )?;
                build::tdvf(&source, &build::default_cache_dir(), &Progress::stderr())?
            }
        };
        Some(TdxSettings {
            firmware,
            quote_socket: args.quote_socket,
        })
    } else {
        None
    };
    let qemu_binary = qemu::find_qemu();
    let (accelerator, why_tcg) = match (&qemu_binary, args.tdx) {
        (_, true) => (Accelerator::Kvm, None),
        (Ok(binary), false) => qemu::choose_accelerator(binary, &args.image.join(build::VMLINUZ)),
        (Err(_), false) => (Accelerator::Tcg, Some("QEMU is not installed".to_string())),
    };
    let settings = RunSettings {
        image: args.image,
        memory_mib: args.memory,
        cpus: args.cpus,
        ports: if args.ports.is_empty() {
            qemu::DEFAULT_PORTS.to_vec()
        } else {
            args.ports
        },
        accelerator,
        console: if args.detach {
            Console::File(args.log)
        } else {
            Console::Terminal
        },
        cmdline,
        tdx,
    };
    if args.dry_run {
        let line: Vec<String> = std::iter::once(qemu::QEMU_BINARY.to_string())
            .chain(qemu::command_line(&settings))
            .map(|a| qemu::shell_quote(&a))
            .collect();
        println!("{}", line.join(" "));
        return Ok(());
    }
    let binary = qemu_binary?;
    if settings.tdx.is_some() {
        let version = cloister_image::host::qemu_version().map_err(anyhow::Error::msg)?;
        if (version.0, version.1) < qemu::TDX_QEMU_MIN {
            bail!(
                "--tdx needs QEMU {}.{} or later; this is {}.{}.{}",
                qemu::TDX_QEMU_MIN.0,
                qemu::TDX_QEMU_MIN.1,
                version.0,
                version.1,
                version.2
            );
        }
    }
    if let Some(why) = why_tcg {
        eprintln!("KVM cannot run a guest here ({why}); using TCG, which is much slower");
    }
    for p in &settings.ports {
        eprintln!("forwarding 127.0.0.1:{} to guest port {}", p.host, p.guest);
    }
    match qemu::launch(&binary, &settings, args.detach)? {
        Launched::Exited(status) if status.success() => Ok(()),
        Launched::Exited(status) => bail!("QEMU exited with {status}"),
        Launched::Detached { pid_file } => {
            if let Console::File(log) = &settings.console {
                println!(
                    "QEMU runs in the background (pid in {}); console in {}",
                    pid_file.display(),
                    log.display()
                );
            }
            Ok(())
        }
    }
}
