//! The real [`System`]: Linux syscalls through `rustix`, and `libc` for the few it lacks
//! (interface and route ioctls, `SO_BINDTODEVICE`, `kill(-1)`, the signal mask).
//!
//! This is the only module of the crate with `unsafe` code; each block says why it holds.
//! It holds no policy: every decision is made by the logic modules above it.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rustix::io::Errno;
use rustix::mount::{MountFlags as RustixMountFlags, UnmountFlags};
use rustix::net::{AddressFamily, SocketType, ipproto, sockopt};
use rustix::rand::GetRandomFlags;

use crate::dm::DmCommand;
use crate::sys::{
    Clock, CpuRandom, DhcpTransport, MountRequest, PowerAction, Reaped, ShutdownSignal, System,
};

/// `MODULE_INIT_COMPRESSED_FILE` from `<linux/module.h>`: the kernel decompresses the
/// module itself (Linux 6.2 and later, with `CONFIG_MODULE_DECOMPRESS`).
const MODULE_INIT_COMPRESSED_FILE: i32 = 4;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;

/// device-mapper's control node, which devtmpfs creates when dm-mod loads.
const DM_CONTROL_PATH: &str = "/dev/mapper/control";

/// The machine itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinuxSystem;

impl Clock for LinuxSystem {
    fn boottime_ms(&self) -> u64 {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let secs = u64::try_from(now.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
        secs * 1000 + nanos / 1_000_000
    }
}

/// `struct rtentry` from `<linux/route.h>`, for `SIOCADDRT`. Declared here because the
/// `libc` crate has it only for some C libraries; the kernel's layout is the same for all.
#[repr(C)]
struct KernelRouteEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr_ipv4(address: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain C structs with no invalid bit
    // patterns; the kernel reads this sockaddr as a sockaddr_in because sa_family is AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn interface_request(interface: &str) -> io::Result<libc::ifreq> {
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: ifreq is a plain C struct (a name array and a union of integers, sockaddrs and
    // one pointer); all zeroes is a valid value for every member.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = *byte as libc::c_char;
    }
    Ok(request)
}

fn ioctl_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket(
        AddressFamily::INET,
        SocketType::DGRAM,
        None,
    )?)
}

/// Runs one socket ioctl whose argument is `arg`.
fn socket_ioctl<T>(socket: &OwnedFd, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: `socket` is an open socket; `request` is one of the SIOC* requests this module
    // uses, each of which takes a pointer to exactly the type `T` the caller passes (ifreq or
    // rtentry), valid and writable for the duration of the call.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), request as _, arg as *mut T) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn bind_to_device(socket: &OwnedFd, interface: &str) -> io::Result<()> {
    let name = interface.as_bytes();
    let len = libc::socklen_t::try_from(name.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
    // SAFETY: `name` points to `len` readable bytes for the duration of the call, and
    // SO_BINDTODEVICE takes an interface name of that length (no NUL needed).
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            len,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A UDP socket on `0.0.0.0:port`, bound to one interface (`SO_BINDTODEVICE`) and allowed
/// to broadcast: it sends and receives on that link before the link has an address.
pub fn udp_socket_on_interface(interface: &str, port: u16) -> io::Result<UdpSocket> {
    let socket = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, Some(ipproto::UDP))?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    sockopt::set_socket_broadcast(&socket, true)?;
    bind_to_device(&socket, interface)?;
    rustix::net::bind(&socket, &SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
    Ok(UdpSocket::from(socket))
}

/// A UDP socket on port 68 bound to one interface.
#[derive(Debug)]
pub struct LinuxDhcpTransport {
    socket: UdpSocket,
}

impl DhcpTransport for LinuxDhcpTransport {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let server = SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_SERVER_PORT);
        self.socket.send_to(packet, server).map(drop)
    }

    fn recv(&mut self, buf: &mut [u8], timeout_ms: u64) -> io::Result<Option<usize>> {
        self.socket
            .set_read_timeout(Some(Duration::from_millis(timeout_ms.max(1))))?;
        loop {
            match self.socket.recv(buf) {
                Ok(len) => return Ok(Some(len)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn block_all_signals() {
    // SAFETY: `set` is a local sigset_t that sigfillset initialises before use;
    // pthread_sigmask only changes the calling thread's mask and reads `set`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

impl System for LinuxSystem {
    type Transport = LinuxDhcpTransport;

    fn sleep_ms(&self, ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }

    fn console(&self, line: &str) {
        let mut stderr = io::stderr().lock();
        let _ = writeln!(stderr, "{line}");
    }

    fn ensure_console(&self) -> io::Result<()> {
        let closed = |fd: std::os::fd::BorrowedFd<'_>| rustix::io::fcntl_getfd(fd).is_err();
        let missing = [
            closed(io::stdin().as_fd()),
            closed(io::stdout().as_fd()),
            closed(io::stderr().as_fd()),
        ];
        if !missing.contains(&true) {
            return Ok(());
        }
        let console = rustix::fs::open(
            "/dev/console",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY,
            rustix::fs::Mode::empty(),
        )?;
        if missing[0] {
            rustix::stdio::dup2_stdin(&console)?;
        }
        if missing[1] {
            rustix::stdio::dup2_stdout(&console)?;
        }
        if missing[2] {
            rustix::stdio::dup2_stderr(&console)?;
        }
        Ok(())
    }

    fn read_file(&self, path: &Path, max_bytes: usize) -> io::Result<Vec<u8>> {
        let mut contents = Vec::new();
        let limit = u64::try_from(max_bytes).unwrap_or(u64::MAX);
        File::open(path)?.take(limit).read_to_end(&mut contents)?;
        Ok(contents)
    }

    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        fs::write(path, contents)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        fs::read_dir(path)?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        fs::read_link(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        File::open(path)?.read_exact_at(buf, offset)
    }

    fn dm_ioctl(&self, command: DmCommand, buf: &mut [u8]) -> io::Result<()> {
        // The kernel copies `data_size` bytes from the buffer and writes its answer within
        // them: refuse a buffer that claims more than it has.
        let claimed = buf
            .get(12..16)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("four bytes")) as usize);
        if buf.len() < crate::dm::DM_IOCTL_BYTES || claimed.is_none_or(|n| n > buf.len()) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let control = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(DM_CONTROL_PATH)?;
        // SAFETY: `buf` is a live, exclusively borrowed buffer of at least `data_size`
        // bytes (checked above), which is all the kernel reads or writes for a dm ioctl
        // (dm-ioctl.h: data_size is the total size of the buffer passed in); the fd is
        // open for the whole call.
        let result = unsafe {
            libc::ioctl(
                control.as_raw_fd(),
                command.request() as _,
                buf.as_mut_ptr(),
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn mount(&self, request: &MountRequest) -> io::Result<()> {
        let mut flags = RustixMountFlags::empty();
        flags.set(RustixMountFlags::NOSUID, request.flags.nosuid);
        flags.set(RustixMountFlags::NODEV, request.flags.nodev);
        flags.set(RustixMountFlags::NOEXEC, request.flags.noexec);
        let data = CString::new(request.data.as_str())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in mount options"))?;
        let data = (!request.data.is_empty()).then_some(data.as_c_str());
        Ok(rustix::mount::mount(
            request.source.as_str(),
            &request.target,
            request.fstype.as_str(),
            flags,
            data,
        )?)
    }

    fn unmount(&self, target: &Path, detach: bool) -> io::Result<()> {
        let flags = if detach {
            UnmountFlags::DETACH
        } else {
            UnmountFlags::empty()
        };
        Ok(rustix::mount::unmount(target, flags)?)
    }

    fn remount_read_only(&self, target: &Path) -> io::Result<()> {
        Ok(rustix::mount::mount_remount(
            target,
            RustixMountFlags::RDONLY,
            "",
        )?)
    }

    fn load_module(&self, path: &Path, compressed: bool) -> io::Result<()> {
        let file = File::open(path)?;
        let flags = if compressed {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        Ok(rustix::system::finit_module(&file, c"", flags)?)
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        Ok(rustix::system::sethostname(name.as_bytes())?)
    }

    fn interface_up(&self, interface: &str) -> io::Result<()> {
        let socket = ioctl_socket()?;
        let mut request = interface_request(interface)?;
        socket_ioctl(&socket, libc::SIOCGIFFLAGS as _, &mut request)?;
        // SAFETY: SIOCGIFFLAGS just filled the union's flags member.
        let flags = unsafe { request.ifr_ifru.ifru_flags };
        request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        socket_ioctl(&socket, libc::SIOCSIFFLAGS as _, &mut request)
    }

    fn set_mtu(&self, interface: &str, mtu: u16) -> io::Result<()> {
        let socket = ioctl_socket()?;
        let mut request = interface_request(interface)?;
        request.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        socket_ioctl(&socket, libc::SIOCSIFMTU as _, &mut request)
    }

    fn set_ipv4_address(
        &self,
        interface: &str,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> io::Result<()> {
        let socket = ioctl_socket()?;
        let mut request = interface_request(interface)?;
        request.ifr_ifru.ifru_addr = sockaddr_ipv4(address);
        socket_ioctl(&socket, libc::SIOCSIFADDR as _, &mut request)?;
        let mask = Ipv4Addr::from(crate::dhcp::packet::prefix_mask(prefix_len));
        request.ifr_ifru.ifru_netmask = sockaddr_ipv4(mask);
        socket_ioctl(&socket, libc::SIOCSIFNETMASK as _, &mut request)
    }

    fn add_ipv4_route(
        &self,
        interface: &str,
        destination: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        let socket = ioctl_socket()?;
        let device = CString::new(interface)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
        let mut flags = libc::RTF_UP;
        if gateway.is_some() {
            flags |= libc::RTF_GATEWAY;
        }
        if prefix_len == 32 {
            flags |= libc::RTF_HOST;
        }
        let mut route = KernelRouteEntry {
            rt_pad1: 0,
            rt_dst: sockaddr_ipv4(destination),
            rt_gateway: sockaddr_ipv4(gateway.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            rt_genmask: sockaddr_ipv4(crate::dhcp::packet::prefix_mask(prefix_len).into()),
            rt_flags: flags,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            // The kernel only reads the name; `device` outlives the ioctl below.
            rt_dev: device.as_ptr().cast_mut(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        socket_ioctl(&socket, libc::SIOCADDRT as _, &mut route)
    }

    fn open_dhcp_transport(&self, interface: &str) -> io::Result<LinuxDhcpTransport> {
        let socket =
            rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, Some(ipproto::UDP))?;
        sockopt::set_socket_reuseaddr(&socket, true)?;
        sockopt::set_socket_broadcast(&socket, true)?;
        bind_to_device(&socket, interface)?;
        rustix::net::bind(
            &socket,
            &SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DHCP_CLIENT_PORT),
        )?;
        Ok(LinuxDhcpTransport {
            socket: UdpSocket::from(socket),
        })
    }

    fn crng_ready_now(&self) -> io::Result<bool> {
        let mut byte = [0u8; 1];
        match rustix::rand::getrandom(&mut byte, GetRandomFlags::NONBLOCK) {
            Ok(_) => Ok(true),
            Err(Errno::AGAIN) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    fn wait_for_crng(&self, timeout_ms: u64) -> bool {
        let (sender, receiver) = mpsc::channel();
        // A blocking getrandom makes the kernel gather jitter entropy; it runs on its own
        // thread so boot can give up waiting. The thread ends when the CRNG is ready.
        let spawned = std::thread::Builder::new()
            .name("crng-wait".into())
            .spawn(move || {
                block_all_signals();
                let mut byte = [0u8; 1];
                let ready = rustix::rand::getrandom(&mut byte, GetRandomFlags::empty()).is_ok();
                let _ = sender.send(ready);
            });
        if spawned.is_err() {
            return false;
        }
        receiver
            .recv_timeout(Duration::from_millis(timeout_ms))
            .unwrap_or(false)
    }

    fn random_bytes(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            filled += rustix::rand::getrandom(&mut buf[filled..], GetRandomFlags::NONBLOCK)?;
        }
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    fn cpu_random(&self) -> CpuRandom {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        let max_leaf = __cpuid(0).eax;
        let rdrand = __cpuid(1).ecx & (1 << 30) != 0;
        let rdseed = max_leaf >= 7 && __cpuid_count(7, 0).ebx & (1 << 18) != 0;
        CpuRandom { rdrand, rdseed }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn cpu_random(&self) -> CpuRandom {
        CpuRandom::default()
    }

    fn block_all_signals_in_this_thread(&self) {
        block_all_signals();
    }

    fn signal_all_processes(&self, signal: ShutdownSignal) -> io::Result<()> {
        let signal = match signal {
            ShutdownSignal::Terminate => libc::SIGTERM,
            ShutdownSignal::Kill => libc::SIGKILL,
        };
        // SAFETY: kill(2) takes plain integers and touches no memory of ours. Pid -1 means
        // every process this one may signal except itself (PID 1) and kernel threads.
        let result = unsafe { libc::kill(-1, signal) };
        if result == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        // ESRCH: there was nobody left to signal.
        if error.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(error)
        }
    }

    fn reap_children(&self) -> io::Result<Reaped> {
        let mut reaped = 0;
        loop {
            match rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG) {
                Ok(Some(_)) => reaped += 1,
                Ok(None) => {
                    return Ok(Reaped {
                        reaped,
                        children_left: true,
                    });
                }
                Err(Errno::CHILD) => {
                    return Ok(Reaped {
                        reaped,
                        children_left: false,
                    });
                }
                Err(Errno::INTR) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    fn sync(&self) {
        rustix::fs::sync();
    }

    fn disable_ctrl_alt_del(&self) -> io::Result<()> {
        Ok(rustix::system::reboot(
            rustix::system::RebootCommand::CadOff,
        )?)
    }

    fn reboot(&self, action: PowerAction) -> io::Result<()> {
        let command = match action {
            PowerAction::PowerOff => rustix::system::RebootCommand::PowerOff,
            PowerAction::Reboot => rustix::system::RebootCommand::Restart,
        };
        Ok(rustix::system::reboot(command)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_entry_has_the_kernel_layout() {
        // struct rtentry is 120 bytes on 64-bit Linux (<linux/route.h>).
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<KernelRouteEntry>(), 120);
        assert_eq!(std::mem::size_of::<libc::sockaddr>(), 16);
    }

    #[test]
    fn interface_names_are_checked_before_any_ioctl() {
        assert!(interface_request("eth0").is_ok());
        assert!(interface_request("").is_err());
        assert!(interface_request(&"e".repeat(libc::IFNAMSIZ)).is_err());
        assert!(interface_request("et\0h").is_err());
        let request = interface_request("eth0").unwrap();
        assert_eq!(
            request.ifr_name[..5],
            [b'e' as libc::c_char, b't' as _, b'h' as _, b'0' as _, 0]
        );
    }

    #[test]
    fn sockaddr_carries_the_address_in_network_order() {
        let sockaddr = sockaddr_ipv4(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(i32::from(sockaddr.sa_family), libc::AF_INET);
        // sa_data: 2 bytes of port, then the address.
        let data: Vec<u8> = sockaddr.sa_data[..6].iter().map(|b| *b as u8).collect();
        assert_eq!(data, [0, 0, 10, 0, 2, 15]);
    }

    #[test]
    fn read_file_stops_at_the_limit() {
        let dir = std::env::temp_dir().join(format!("cloister-init-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big");
        fs::write(&path, [7u8; 100]).unwrap();
        assert_eq!(LinuxSystem.read_file(&path, 10).unwrap(), [7u8; 10]);
        assert_eq!(LinuxSystem.read_file(&path, 1000).unwrap().len(), 100);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exited_children_are_reaped() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        drop(child);
        let start = LinuxSystem.boottime_ms();
        let mut reaped = 0;
        loop {
            let result = LinuxSystem.reap_children().unwrap();
            reaped += result.reaped;
            if !result.children_left || LinuxSystem.boottime_ms() - start > 10_000 {
                break;
            }
            LinuxSystem.sleep_ms(10);
        }
        assert!(reaped >= 1, "child {pid} was not reaped");
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn clock_and_crng_answer_without_blocking() {
        let before = LinuxSystem.boottime_ms();
        LinuxSystem.sleep_ms(20);
        assert!(LinuxSystem.boottime_ms() >= before + 20);
        // The build machine booted long ago: its CRNG is ready.
        assert!(LinuxSystem.crng_ready_now().unwrap());
        assert!(LinuxSystem.wait_for_crng(1_000));
        let mut bytes = [0u8; 32];
        LinuxSystem.random_bytes(&mut bytes).unwrap();
        assert_ne!(bytes, [0u8; 32]);
    }
}
