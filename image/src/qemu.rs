//! The QEMU command lines that boot an image: TCG or KVM for development, and the TDX
//! line for QEMU 10.1 or later (tdx-guest object with a quote-generation socket, q35 with
//! `kernel_irqchip=split`, TDVF as `-bios`). It only builds argument lists and parses
//! versions; it must never decide on KVM without the host probe in [`crate::host`].

use std::path::{Path, PathBuf};

use crate::build::{CMDLINE, INITRAMFS, VMLINUZ};

/// The QEMU binary for x86-64 guests.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// How to get it on Debian.
pub const QEMU_INSTALL_HINT: &str = "apt-get install qemu-system-x86";
/// Oldest QEMU that boots a TD whose RTMR1 matches the published measurements.
pub const TDX_QEMU_MIN: (u32, u32) = (10, 1);
/// Default socket of Intel's quote generation service on a TDX host.
pub const QGS_SOCKET_DEFAULT: &str = "/var/run/tdx-qgs/qgs.socket";
/// The CPU a TCG guest gets: x86-64 with SSE4.2, and AES-NI and PCLMULQDQ, which the
/// aesni-intel module needs; no AVX. TCG emulates each AVX2 instruction with a call into
/// QEMU, so the guest's model runs faster on its SSE-only code: SmolLM2-135M's prompt
/// processing under TCG was 4.6 tokens/s this way against 0.2 with `-cpu max`, where it
/// picks its AVX2 kernels (`qemu-x86_64 -cpu ...` on the `generate` example, docs/image.md).
pub const TCG_CPU: &str = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+aes,+pclmulqdq";

/// How the guest's CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// Hardware virtualization.
    Kvm,
    /// QEMU's software emulation (slow, works everywhere).
    Tcg,
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    /// This terminal (stdin and stdout).
    Terminal,
    /// A log file.
    File(PathBuf),
}

/// A host port on 127.0.0.1 forwarded to a guest TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    /// Port on 127.0.0.1.
    pub host: u16,
    /// Port inside the guest.
    pub guest: u16,
}

impl std::str::FromStr for PortForward {
    type Err = String;

    /// `PORT` (same on both sides) or `HOST:GUEST`.
    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{p:?} is not a TCP port (1-65535)"))
        };
        match s.split_once(':') {
            Some((host, guest)) => Ok(Self {
                host: port(host)?,
                guest: port(guest)?,
            }),
            None => Ok(Self {
                host: port(s)?,
                guest: port(s)?,
            }),
        }
    }
}

/// The web ports of the box forwarded by default: 127.0.0.1:8443 to 443, :8080 to 80.
pub const DEFAULT_PORTS: [PortForward; 2] = [
    PortForward {
        host: 8443,
        guest: 443,
    },
    PortForward {
        host: 8080,
        guest: 80,
    },
];

/// TDX-only settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxSettings {
    /// TDVF (`OVMF.fd` from the pinned `ovmf` package).
    pub firmware: PathBuf,
    /// Unix socket of the quote generation service.
    pub quote_socket: PathBuf,
}

/// The fw_cfg name under which `cloister run` passes the expected measurements; the guest
/// reads them from [`MEASUREMENTS_GUEST_PATH`] once the `qemu_fw_cfg` module is loaded.
pub const MEASUREMENTS_FW_CFG_NAME: &str = "opt/cloister/measurements.json";
/// Where the guest sees the file named [`MEASUREMENTS_FW_CFG_NAME`].
pub const MEASUREMENTS_GUEST_PATH: &str =
    "/sys/firmware/qemu_fw_cfg/by_name/opt/cloister/measurements.json/raw";

/// A host file passed to the guest through QEMU's firmware configuration device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwCfgFile {
    /// Its name, `opt/...` (QEMU reserves other names).
    pub name: String,
    /// The host file.
    pub file: PathBuf,
}

/// A raw disk image attached as a virtio block device. The guest finds it by `serial`
/// (`/sys/block/vdX/serial`), never by its place on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// The host file.
    pub file: PathBuf,
    /// The virtio serial the guest sees (at most 20 bytes).
    pub serial: String,
    /// Attach it read-only (model disks).
    pub read_only: bool,
}

/// Escapes a value for QEMU's `key=value,...` option syntax (a comma is doubled).
fn qemu_option_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// Everything a boot needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    /// Folder with `vmlinuz`, `initramfs.cpio.zst` and `cmdline`.
    pub image: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Forwarded ports.
    pub ports: Vec<PortForward>,
    /// KVM or TCG (ignored for TDX, which is always KVM).
    pub accelerator: Accelerator,
    /// Serial console.
    pub console: Console,
    /// Kernel command line (read from the image's `cmdline`).
    pub cmdline: String,
    /// Present for a TD.
    pub tdx: Option<TdxSettings>,
    /// Files for the guest's `/sys/firmware/qemu_fw_cfg/by_name/`.
    pub fw_cfg: Vec<FwCfgFile>,
    /// Disks, in the order they are put on the bus.
    pub drives: Vec<Drive>,
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The QEMU arguments (without the binary) for `settings`.
pub fn command_line(settings: &RunSettings) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    match &settings.tdx {
        Some(tdx) => {
            let object = serde_json::json!({
                "qom-type": "tdx-guest",
                "id": "tdx0",
                "quote-generation-socket": { "type": "unix", "path": path(&tdx.quote_socket) },
            });
            push(&["-accel", "kvm", "-cpu", "host"]);
            push(&[
                "-machine",
                "q35,kernel_irqchip=split,confidential-guest-support=tdx0,hpet=off",
            ]);
            push(&["-object", &object.to_string()]);
            push(&["-bios", &path(&tdx.firmware)]);
        }
        None => match settings.accelerator {
            Accelerator::Kvm => push(&["-accel", "kvm", "-cpu", "host", "-machine", "q35"]),
            Accelerator::Tcg => push(&["-accel", "tcg", "-cpu", TCG_CPU, "-machine", "q35"]),
        },
    }
    push(&[
        "-m",
        &settings.memory_mib.to_string(),
        "-smp",
        &settings.cpus.to_string(),
    ]);
    push(&["-kernel", &path(&settings.image.join(VMLINUZ))]);
    push(&["-initrd", &path(&settings.image.join(INITRAMFS))]);
    push(&["-append", &settings.cmdline]);
    let mut netdev = String::from("user,id=net0");
    for p in &settings.ports {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", p.host, p.guest));
    }
    push(&["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0"]);
    push(&[
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-pci,rng=rng0",
    ]);
    for f in &settings.fw_cfg {
        push(&[
            "-fw_cfg",
            &format!(
                "name={},file={}",
                qemu_option_value(&f.name),
                qemu_option_value(&path(&f.file))
            ),
        ]);
    }
    for (i, drive) in settings.drives.iter().enumerate() {
        let read_only = if drive.read_only { ",readonly=on" } else { "" };
        push(&[
            "-drive",
            &format!(
                "file={},if=none,id=disk{i},format=raw{read_only}",
                qemu_option_value(&path(&drive.file))
            ),
            "-device",
            &format!(
                "virtio-blk-pci,drive=disk{i},serial={}",
                qemu_option_value(&drive.serial)
            ),
        ]);
    }
    match &settings.console {
        Console::Terminal => push(&["-serial", "mon:stdio"]),
        Console::File(log) => push(&["-serial", &format!("file:{}", path(log))]),
    }
    args
}

/// Reads the image's command line file.
pub fn read_cmdline(image: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(image.join(CMDLINE))?
        .trim_end()
        .to_string())
}

/// Quotes an argument for a shell, for `--dry-run`.
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The version in `qemu-system-x86_64 --version` output, e.g. `(7, 2, 22)`.
pub fn parse_version(output: &str) -> Option<(u32, u32, u32)> {
    let rest = output.split("version ").nth(1)?;
    let version = rest.split_whitespace().next()?;
    let mut parts = version
        .split(['.', '-', '('])
        .map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Finds the QEMU binary on `PATH`, or says how to install it.
pub fn find_qemu() -> Result<PathBuf, crate::ImageError> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(QEMU_BINARY))
        .find(|p| p.is_file())
        .ok_or_else(|| crate::ImageError::Tool {
            tool: QEMU_BINARY.into(),
            detail: "not found on PATH".into(),
            install: QEMU_INSTALL_HINT.into(),
        })
}

/// How long the KVM boot probe waits for the kernel's first line.
pub const KVM_BOOT_PROBE_TIMEOUT_MS: u64 = 8_000;

/// Boots `vmlinuz` under KVM (no initrd) and waits for the kernel's banner on the serial
/// console. Opening /dev/kvm and running one instruction is not enough: on some nested
/// hosts KVM runs that but fails ("emulation failure") in a real kernel.
pub fn probe_kvm_boot(qemu: &Path, vmlinuz: &Path) -> Result<(), String> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(qemu)
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args([
            "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "256",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .args([
            "-append",
            "console=ttyS0 panic=-1",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", qemu.display()))?;
    let mut stdout = child.stdout.take().ok_or("no QEMU stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(13).any(|w| w == b"Linux version") {
                let _ = tx.send(());
                return;
            }
        }
    });
    let booted = rx
        .recv_timeout(std::time::Duration::from_millis(KVM_BOOT_PROBE_TIMEOUT_MS))
        .is_ok();
    let _ = child.kill();
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if booted {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .next()
            .unwrap_or("no kernel output")
            .to_string();
        Err(format!(
            "a kernel under KVM printed nothing in {KVM_BOOT_PROBE_TIMEOUT_MS} ms ({first})"
        ))
    }
}

/// Picks KVM when both host probes ran a guest (one instruction, then the image's
/// kernel), else TCG, with the reason for TCG.
pub fn choose_accelerator(qemu: &Path, vmlinuz: &Path) -> (Accelerator, Option<String>) {
    let probe = crate::host::probe_kvm(Path::new("/dev/kvm"))
        .map_err(|e| e.to_string())
        .and_then(|()| probe_kvm_boot(qemu, vmlinuz));
    match probe {
        Ok(()) => (Accelerator::Kvm, None),
        Err(why) => (Accelerator::Tcg, Some(why)),
    }
}

/// A QEMU started by [`launch`].
#[derive(Debug)]
pub enum Launched {
    /// QEMU ran in the foreground and exited with this status.
    Exited(std::process::ExitStatus),
    /// QEMU daemonized; its pid is in this file.
    Detached {
        /// The pid file.
        pid_file: PathBuf,
    },
}

/// Starts QEMU: in the foreground with the console on this terminal, or detached
/// (`-daemonize`) with the console in the settings' log file. `extra` follows the settings'
/// arguments (the vsock device, [`crate::vsock::qemu_arguments`]).
pub fn launch(
    qemu: &Path,
    settings: &RunSettings,
    extra: &[String],
    detach: bool,
) -> Result<Launched, crate::ImageError> {
    let mut args = command_line(settings);
    args.extend_from_slice(extra);
    let io = |what: &str| {
        let what = what.to_string();
        move |source| crate::ImageError::Io { what, source }
    };
    if detach {
        let Console::File(log) = &settings.console else {
            return Err(crate::ImageError::Boot(
                "a detached boot needs a log file for the console".into(),
            ));
        };
        let pid_file = log.with_extension("pid");
        args.extend([
            "-daemonize".to_string(),
            "-pidfile".to_string(),
            path(&pid_file),
        ]);
        let status = std::process::Command::new(qemu)
            .args(&args)
            .status()
            .map_err(io("starting QEMU"))?;
        if !status.success() {
            return Err(crate::ImageError::Boot(format!(
                "QEMU failed to start ({status})"
            )));
        }
        Ok(Launched::Detached { pid_file })
    } else {
        let status = std::process::Command::new(qemu)
            .args(&args)
            .status()
            .map_err(io("running QEMU"))?;
        Ok(Launched::Exited(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RunSettings {
        RunSettings {
            image: PathBuf::from("/img"),
            memory_mib: 1024,
            cpus: 2,
            ports: vec!["8443:443".parse().unwrap(), "9000".parse().unwrap()],
            accelerator: Accelerator::Tcg,
            console: Console::File(PathBuf::from("/tmp/serial.log")),
            cmdline: "console=ttyS0 panic=-1".into(),
            tdx: None,
            fw_cfg: Vec::new(),
            drives: Vec::new(),
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn the_tcg_cpu_has_aes_ni_and_no_avx() {
        let features: Vec<&str> = TCG_CPU.split(',').collect();
        assert!(features.contains(&"+aes"));
        assert!(!TCG_CPU.contains("avx") && features[0] != "max");
    }

    #[test]
    fn tcg_boot_uses_direct_kernel_boot_and_forwards_to_localhost_only() {
        let args = command_line(&settings());
        assert_eq!(after(&args, "-accel"), ["tcg"]);
        assert_eq!(after(&args, "-cpu"), [TCG_CPU]);
        assert_eq!(after(&args, "-kernel"), ["/img/vmlinuz"]);
        assert_eq!(after(&args, "-initrd"), ["/img/initramfs.cpio.zst"]);
        assert_eq!(after(&args, "-append"), ["console=ttyS0 panic=-1"]);
        assert_eq!(
            after(&args, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:8443-:443,hostfwd=tcp:127.0.0.1:9000-:9000"]
        );
        assert_eq!(after(&args, "-serial"), ["file:/tmp/serial.log"]);
        assert!(
            !args.iter().any(|a| a == "-bios"),
            "SeaBIOS, the default, for plain boots"
        );
        assert!(args.iter().any(|a| a == "-no-reboot"));
    }

    #[test]
    fn fw_cfg_files_reach_the_guest_with_commas_escaped() {
        let mut s = settings();
        assert!(!command_line(&s).iter().any(|a| a == "-fw_cfg"));
        s.fw_cfg.push(FwCfgFile {
            name: MEASUREMENTS_FW_CFG_NAME.into(),
            file: PathBuf::from("/img/a,b/measurements.json"),
        });
        let args = command_line(&s);
        assert_eq!(
            after(&args, "-fw_cfg"),
            ["name=opt/cloister/measurements.json,file=/img/a,,b/measurements.json"]
        );
        assert!(MEASUREMENTS_GUEST_PATH.contains(MEASUREMENTS_FW_CFG_NAME));
    }

    #[test]
    fn model_disks_are_read_only_virtio_disks_with_their_serials() {
        let mut s = settings();
        assert!(!command_line(&s).iter().any(|a| a == "-drive"));
        s.drives = vec![
            Drive {
                file: PathBuf::from("/img/model-0.img"),
                serial: "cloister-model-0".into(),
                read_only: true,
            },
            Drive {
                file: PathBuf::from("/img/a,b.img"),
                serial: "other".into(),
                read_only: false,
            },
        ];
        let args = command_line(&s);
        assert_eq!(
            after(&args, "-drive"),
            [
                "file=/img/model-0.img,if=none,id=disk0,format=raw,readonly=on",
                "file=/img/a,,b.img,if=none,id=disk1,format=raw"
            ]
        );
        assert_eq!(
            after(&args, "-device")
                .into_iter()
                .filter(|d| d.starts_with("virtio-blk"))
                .collect::<Vec<_>>(),
            [
                "virtio-blk-pci,drive=disk0,serial=cloister-model-0",
                "virtio-blk-pci,drive=disk1,serial=other"
            ]
        );
    }

    #[test]
    fn kvm_boot_uses_the_host_cpu() {
        let mut s = settings();
        s.accelerator = Accelerator::Kvm;
        s.console = Console::Terminal;
        let args = command_line(&s);
        assert_eq!(after(&args, "-accel"), ["kvm"]);
        assert_eq!(after(&args, "-cpu"), ["host"]);
        assert_eq!(after(&args, "-serial"), ["mon:stdio"]);
    }

    #[test]
    fn tdx_boot_has_the_td_object_split_irqchip_and_tdvf() {
        let mut s = settings();
        s.tdx = Some(TdxSettings {
            firmware: PathBuf::from("/fw/OVMF.fd"),
            quote_socket: PathBuf::from(QGS_SOCKET_DEFAULT),
        });
        let args = command_line(&s);
        assert_eq!(after(&args, "-accel"), ["kvm"], "a TD always runs on KVM");
        assert_eq!(after(&args, "-bios"), ["/fw/OVMF.fd"]);
        let machine = after(&args, "-machine")[0];
        assert!(machine.starts_with("q35,"), "{machine}");
        assert!(machine.contains("kernel_irqchip=split"), "{machine}");
        assert!(
            machine.contains("confidential-guest-support=tdx0"),
            "{machine}"
        );
        let object: serde_json::Value = serde_json::from_str(after(&args, "-object")[0]).unwrap();
        assert_eq!(object["qom-type"], "tdx-guest");
        assert_eq!(object["id"], "tdx0");
        assert_eq!(object["quote-generation-socket"]["type"], "unix");
        assert_eq!(
            object["quote-generation-socket"]["path"],
            QGS_SOCKET_DEFAULT
        );
    }

    #[test]
    fn ports_parse_and_reject_nonsense() {
        assert_eq!(
            "80".parse::<PortForward>(),
            Ok(PortForward {
                host: 80,
                guest: 80
            })
        );
        assert_eq!(
            "8080:80".parse::<PortForward>(),
            Ok(PortForward {
                host: 8080,
                guest: 80
            })
        );
        assert!("0".parse::<PortForward>().is_err());
        assert!("70000".parse::<PortForward>().is_err());
        assert!("a:b".parse::<PortForward>().is_err());
    }

    #[test]
    fn dry_run_quoting_survives_a_shell() {
        assert_eq!(shell_quote("-m"), "-m");
        assert_eq!(
            shell_quote("console=ttyS0 panic=-1"),
            "'console=ttyS0 panic=-1'"
        );
        assert_eq!(shell_quote("{\"a\":'b'}"), r#"'{"a":'\''b'\''}'"#);
    }

    #[test]
    fn qemu_versions_parse() {
        let v = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright";
        assert_eq!(parse_version(v), Some((7, 2, 22)));
        assert_eq!(
            parse_version("QEMU emulator version 10.1.0\n"),
            Some((10, 1, 0))
        );
        assert_eq!(
            parse_version("QEMU emulator version 9.2\n"),
            Some((9, 2, 0))
        );
        assert_eq!(parse_version("nothing"), None);
    }
}
