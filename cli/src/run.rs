//! `cloister run`: boots a built image under QEMU (KVM where a probe runs a guest, else
//! TCG), or prints the command with `--dry-run`. A simulated image (`cloister build --tee
//! simulated`) gets its expected measurements through fw_cfg. The box gets a vsock device
//! for the host channel (docs/vsock.md); `--detach` returns once the box says it is ready
//! there. Logic in `cloister_image::qemu`, `cloister_image::vsock` and
//! `cloister_image::expected`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use cloister_image::build;
use cloister_image::build::TeeChoice;
use cloister_image::progress::Progress;
use cloister_image::qemu::{
    self, Accelerator, Console, FwCfgFile, Launched, PortForward, RunSettings, TdxSettings,
};
use cloister_image::vsock::{self, Backend, RunState, VsockDevice};

/// The guest's HTTPS port (web-ui, image/services/web-ui.toml).
const GUEST_HTTPS_PORT: u16 = 443;
/// The host port web-ui's manifest names as the browsers' port (`--public-https-port`):
/// passkeys are bound to the origin `https://localhost:8443`.
const PUBLIC_HTTPS_PORT: u16 = 8443;

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
    /// The expected measurements.json to hand to the guest (fw_cfg
    /// `opt/cloister/measurements.json`) [default for a simulated image: computed from the
    /// image and the firmware, written to IMAGE/measurements.json].
    #[arg(long)]
    measurements: Option<PathBuf>,
    /// Print the QEMU command instead of running it.
    #[arg(long)]
    dry_run: bool,
    /// The box's vsock context id (unique on the host with the kernel's vhost-vsock).
    #[arg(long, default_value_t = vsock::GUEST_CID_DEFAULT)]
    guest_cid: u32,
    /// With --detach: seconds to wait for the box to say it is ready.
    #[arg(long, default_value_t = 900)]
    ready_timeout: u64,
}

/// The box's vsock device: the kernel's vhost-vsock where it opens, else the vhost-user
/// backend's sockets in the image folder. None for a TD without the kernel's (the vhost-user
/// backend needs the guest's memory shared, which a TD's is not).
fn plan_vsock(image: &Path, guest_cid: u32, tdx: bool) -> Option<VsockDevice> {
    if vsock::kernel_vhost_vsock_available() {
        Some(VsockDevice::Kernel { guest_cid })
    } else if tdx {
        None
    } else {
        Some(VsockDevice::VhostUser {
            socket: image.join(vsock::VHOST_USER_SOCKET),
            host_socket: image.join(vsock::HOST_SOCKET),
        })
    }
}

/// Starts the vhost-user backend when the plan needs one.
fn start_vsock(
    planned: Option<VsockDevice>,
    image: &Path,
    guest_cid: u32,
) -> anyhow::Result<(Option<VsockDevice>, Option<Backend>)> {
    match planned {
        Some(VsockDevice::VhostUser { .. }) => {
            let binary = vsock::find_backend(&build::default_cache_dir())?;
            let backend = vsock::start_backend(&binary, image, guest_cid)?;
            eprintln!(
                "host channel: {} (vhost-user; no {})",
                binary.display(),
                vsock::VHOST_VSOCK_DEVICE
            );
            Ok((Some(backend.device.clone()), Some(backend)))
        }
        other => Ok((other, None)),
    }
}

/// The TEE the image was built for, from its manifest.json (an image without one counts
/// as a production image).
fn image_tee(image: &std::path::Path) -> anyhow::Result<TeeChoice> {
    let path = image.join(build::MANIFEST);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            match value.get("tee").and_then(|t| t.as_str()) {
                None | Some("tdx") => Ok(TeeChoice::Tdx),
                Some("simulated") => Ok(TeeChoice::Simulated),
                Some(other) => bail!("{} names an unknown TEE {other:?}", path.display()),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TeeChoice::Tdx),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The pinned TDVF: `--firmware`, else `OVMF.fd` from the pinned `ovmf` package.
fn firmware(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(f) => Ok(f),
        None => {
            let source = build::find_source_root(&std::env::current_dir()?).context(
                "pass --firmware, or run from a Cloister checkout to use the pinned OVMF",
            )?;
            Ok(build::tdvf(
                &source,
                &build::default_cache_dir(),
                &Progress::stderr(),
            )?)
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cmdline = qemu::read_cmdline(&args.image).with_context(|| {
        format!(
            "no built image in {} (run `cloister build` first)",
            args.image.display()
        )
    })?;
    let tee = image_tee(&args.image)?;
    if tee == TeeChoice::Simulated && args.tdx {
        bail!(
            "this image was built with --tee simulated; a TD needs a production image \
             (`cloister build` without --tee simulated)"
        );
    }
    let measurements = match (args.measurements.clone(), tee) {
        (Some(file), _) => Some(file),
        (None, TeeChoice::Simulated) => {
            let file = args.image.join("measurements.json");
            let json = cloister_image::expected::measurements_json(
                &args.image,
                &firmware(args.firmware.clone())?,
                args.memory,
                args.cpus,
            )?;
            std::fs::write(&file, json)
                .with_context(|| format!("cannot write {}", file.display()))?;
            Some(file)
        }
        (None, TeeChoice::Tdx) => None,
    };
    let tdx = if args.tdx {
        Some(TdxSettings {
            firmware: firmware(args.firmware)?,
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
    let drives = build::model_drives(&args.image)?;
    let image = args.image.clone();
    let planned_vsock = plan_vsock(&image, args.guest_cid, args.tdx);
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
        fw_cfg: measurements
            .iter()
            .map(|file| FwCfgFile {
                name: qemu::MEASUREMENTS_FW_CFG_NAME.into(),
                file: file.clone(),
            })
            .collect(),
        drives,
    };
    if tee == TeeChoice::Simulated {
        eprintln!("{}", crate::build::SIMULATED_WARNING);
    }
    if args.dry_run {
        let vsock_args = planned_vsock
            .iter()
            .flat_map(|d| vsock::qemu_arguments(d, settings.memory_mib));
        let line: Vec<String> = std::iter::once(qemu::QEMU_BINARY.to_string())
            .chain(qemu::command_line(&settings))
            .chain(vsock_args)
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
    if let Some(m) = &measurements {
        eprintln!(
            "expected measurements: {} (fw_cfg {})",
            m.display(),
            qemu::MEASUREMENTS_FW_CFG_NAME
        );
    }
    if let Some(https) = settings.ports.iter().find(|p| p.guest == GUEST_HTTPS_PORT) {
        let when = if args.detach {
            "once this command returns"
        } else {
            "once the console says `supervisor: all services ready`"
        };
        println!(
            "Chat: https://localhost:{}/ {when} (a self-signed certificate; the owner's setup \
             code is on the console)",
            https.host
        );
        if https.host != PUBLIC_HTTPS_PORT {
            eprintln!(
                "note: passkeys are bound to https://localhost:{PUBLIC_HTTPS_PORT} (web-ui's \
                 --public-https-port in the image); sign-in fails through port {}",
                https.host
            );
        }
    }
    if planned_vsock.is_none() {
        eprintln!(
            "no host channel: a TD needs the kernel's {} (`cloister status` and `stop` will \
             not reach this box)",
            vsock::VHOST_VSOCK_DEVICE
        );
        if args.detach {
            bail!(
                "--detach waits for the box on the host channel, which this host cannot give a TD"
            );
        }
    }
    let (device, backend) = start_vsock(planned_vsock, &image, args.guest_cid)?;
    let backend_pid = backend.as_ref().map(|b| b.child.id());
    let vsock_args: Vec<String> = device
        .iter()
        .flat_map(|d| vsock::qemu_arguments(d, settings.memory_mib))
        .collect();
    if !args.detach
        && let Some(device) = &device
    {
        RunState {
            device: device.clone(),
            qemu_pid: None,
            backend_pid,
        }
        .write(&image)?;
    }
    let launched = qemu::launch(&binary, &settings, &vsock_args, args.detach);
    let launched = match launched {
        Ok(l) => l,
        Err(e) => {
            RunState::remove(&image);
            if let Some(b) = backend {
                b.stop();
            }
            return Err(e.into());
        }
    };
    match launched {
        Launched::Exited(status) => {
            RunState::remove(&image);
            if let Some(b) = backend {
                b.stop();
            }
            if !status.success() {
                bail!("QEMU exited with {status}");
            }
            Ok(())
        }
        Launched::Detached { pid_file } => {
            let log = match &settings.console {
                Console::File(log) => log.clone(),
                Console::Terminal => PathBuf::new(),
            };
            let device = device.context("no host channel")?;
            wait_until_ready(&image, device, &pid_file, backend, args.ready_timeout).with_context(
                || format!("the box did not come up (console in {})", log.display()),
            )?;
            println!(
                "The box is ready; QEMU runs in the background (pid in {}), console in {}. \
                 `cloister status` and `cloister stop` reach it.",
                pid_file.display(),
                log.display()
            );
            Ok(())
        }
    }
}

/// Records the detached box, then asks it over vsock until it is ready. When QEMU is gone,
/// the backend is stopped and the record removed; when the box is only late or a service
/// failed, both stay, for `cloister status` and `stop`.
fn wait_until_ready(
    image: &Path,
    device: VsockDevice,
    pid_file: &Path,
    backend: Option<Backend>,
    timeout_s: u64,
) -> anyhow::Result<()> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .with_context(|| format!("QEMU wrote no pid file {}", pid_file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", pid_file.display()))?;
    RunState {
        device: device.clone(),
        qemu_pid: Some(pid),
        backend_pid: backend.as_ref().map(|b| b.child.id()),
    }
    .write(image)?;
    eprintln!(
        "waiting for the box to say it is ready (vsock port {})",
        vsock::HOST_CHANNEL_VSOCK_PORT
    );
    let result = vsock::wait_ready(&device, Duration::from_secs(timeout_s), || {
        vsock::process_exists(pid)
    });
    match result {
        Ok(answer) => {
            for s in answer.services.unwrap_or_default() {
                eprintln!("  {}: {}", s.name, s.state);
            }
            Ok(())
        }
        Err(e @ vsock::VsockError::QemuExited) => {
            RunState::remove(image);
            if let Some(b) = backend {
                b.stop();
            }
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}
