//! The syscall seam: every side effect PID 1 has on the machine goes through [`System`].
//!
//! The logic modules (mounts, modules, network, entropy, shutdown) are written against this
//! trait only. [`crate::linux::LinuxSystem`] is the real implementation; [`crate::fake`]
//! records calls so the logic is tested on any host. This module must never touch the
//! machine itself: it only names the operations.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// One `mount(2)` call: what to mount, where, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountRequest {
    /// The source (`proc`, `devtmpfs`, ...); virtual filesystems use their type name.
    pub source: String,
    /// Where to mount it.
    pub target: PathBuf,
    /// The filesystem type.
    pub fstype: String,
    /// `MS_*` flags.
    pub flags: MountFlags,
    /// Filesystem-specific options (`mode=0755`), empty for none.
    pub data: String,
}

/// The `MS_*` flags init uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountFlags {
    /// `MS_NOSUID`.
    pub nosuid: bool,
    /// `MS_NODEV`.
    pub nodev: bool,
    /// `MS_NOEXEC`.
    pub noexec: bool,
}

/// What `reboot(2)` should do at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    /// `LINUX_REBOOT_CMD_POWER_OFF`.
    PowerOff,
    /// `LINUX_REBOOT_CMD_RESTART`.
    Reboot,
}

/// The signals init sends to every process at shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGTERM: asks processes to exit.
    Terminate,
    /// SIGKILL: ends them.
    Kill,
}

/// What `waitpid(-1, WNOHANG)` in a loop found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reaped {
    /// How many children were reaped by this call.
    pub reaped: usize,
    /// Whether children remain (alive, or not yet reaped).
    pub children_left: bool,
}

/// Which random-number instructions the CPU advertises (CPUID).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuRandom {
    /// CPUID.01H:ECX bit 30.
    pub rdrand: bool,
    /// CPUID.(EAX=07H,ECX=0):EBX bit 18.
    pub rdseed: bool,
}

/// A monotonic clock that counts time spent suspended too (`CLOCK_BOOTTIME`).
pub trait Clock {
    /// Milliseconds since boot.
    fn boottime_ms(&self) -> u64;
}

/// A datagram channel to DHCP servers on one interface (UDP port 68 to port 67).
pub trait DhcpTransport {
    /// Sends one datagram to the limited broadcast address, port 67.
    fn send(&mut self, packet: &[u8]) -> io::Result<()>;
    /// Waits up to `timeout_ms` for one datagram. `Ok(None)` when the time ran out.
    /// Returns the datagram's length; a datagram longer than `buf` is reported with
    /// `buf.len() + 1` or more so the caller can reject it.
    fn recv(&mut self, buf: &mut [u8], timeout_ms: u64) -> io::Result<Option<usize>>;
}

/// Every operation PID 1 performs on the machine.
pub trait System: Clock {
    /// The DHCP channel this system opens.
    type Transport: DhcpTransport;

    /// Pauses the calling thread.
    fn sleep_ms(&self, ms: u64);
    /// Writes one line to the console (PID 1's stderr). Never fails: a lost line is lost.
    fn console(&self, line: &str);
    /// Makes sure fds 0, 1 and 2 are open, on `/dev/console` if they were not.
    fn ensure_console(&self) -> io::Result<()>;

    /// Reads a whole file, at most `max_bytes` of it.
    fn read_file(&self, path: &Path, max_bytes: usize) -> io::Result<Vec<u8>>;
    /// Creates or replaces a file.
    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()>;
    /// Names of the entries in a directory, unsorted.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// The target of a symbolic link.
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// `mkdir -p` with mode 0755.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates `link` pointing at `target`.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes at `offset` of a file or block device (`pread`).
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// One device-mapper ioctl on `/dev/mapper/control`. `buf` is the whole request
    /// (`struct dm_ioctl` and its data, built by [`crate::dm`]); the kernel's answer is
    /// written back into it.
    fn dm_ioctl(&self, command: crate::dm::DmCommand, buf: &mut [u8]) -> io::Result<()>;

    /// `mount(2)`.
    fn mount(&self, request: &MountRequest) -> io::Result<()>;
    /// `umount2(2)`, with `MNT_DETACH` when `detach`.
    fn unmount(&self, target: &Path, detach: bool) -> io::Result<()>;
    /// `mount(2)` with `MS_REMOUNT | MS_RDONLY`.
    fn remount_read_only(&self, target: &Path) -> io::Result<()>;

    /// `finit_module(2)`; `compressed` sets `MODULE_INIT_COMPRESSED_FILE`.
    fn load_module(&self, path: &Path, compressed: bool) -> io::Result<()>;

    /// `sethostname(2)`.
    fn set_hostname(&self, name: &str) -> io::Result<()>;
    /// Sets `IFF_UP` on an interface.
    fn interface_up(&self, interface: &str) -> io::Result<()>;
    /// Sets an interface's MTU.
    fn set_mtu(&self, interface: &str, mtu: u16) -> io::Result<()>;
    /// Gives an interface its IPv4 address and prefix (which adds the on-link route).
    fn set_ipv4_address(
        &self,
        interface: &str,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> io::Result<()>;
    /// Adds an IPv4 route through `interface`, via `gateway` or on-link when `None`.
    fn add_ipv4_route(
        &self,
        interface: &str,
        destination: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
    ) -> io::Result<()>;
    /// Opens a UDP socket on port 68 bound to `interface`, allowed to broadcast.
    fn open_dhcp_transport(&self, interface: &str) -> io::Result<Self::Transport>;

    /// `getrandom(GRND_NONBLOCK)`: `Ok(true)` when the kernel CRNG is ready now.
    fn crng_ready_now(&self) -> io::Result<bool>;
    /// Waits at most `timeout_ms` for the kernel CRNG (a blocking `getrandom`, which lets
    /// the kernel gather jitter entropy). `true` when it became ready in time.
    fn wait_for_crng(&self, timeout_ms: u64) -> bool;
    /// Fills `buf` from the kernel CRNG without blocking (for DHCP transaction ids).
    fn random_bytes(&self, buf: &mut [u8]) -> io::Result<()>;
    /// The CPU's random-number instructions, from CPUID.
    fn cpu_random(&self) -> CpuRandom;

    /// Blocks every signal in the calling thread. Helper threads of PID 1 call this first:
    /// a process-directed signal delivered to a thread with the default action is dropped
    /// for PID 1, and the supervisor would never see it.
    fn block_all_signals_in_this_thread(&self);
    /// `kill(-1, signal)`: every process but PID 1 and kernel threads.
    fn signal_all_processes(&self, signal: ShutdownSignal) -> io::Result<()>;
    /// Reaps every child that has exited, without blocking.
    fn reap_children(&self) -> io::Result<Reaped>;
    /// `sync(2)`.
    fn sync(&self);
    /// `reboot(LINUX_REBOOT_CMD_CAD_OFF)`: Ctrl-Alt-Del sends SIGINT to PID 1 (which the
    /// supervisor turns into an orderly reboot) instead of restarting at once.
    fn disable_ctrl_alt_del(&self) -> io::Result<()>;
    /// `reboot(2)`. Returns only on failure (or from a fake).
    fn reboot(&self, action: PowerAction) -> io::Result<()>;
}

/// Whether an I/O error carries the given errno.
pub fn is_errno(error: &io::Error, errno: i32) -> bool {
    error.raw_os_error() == Some(errno)
}
