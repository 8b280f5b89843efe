//! A fake [`System`] that records every call, for unit tests on any host.
//!
//! Its clock moves only when the code under test sleeps or waits, so timeout paths run
//! instantly and deterministically. Its DHCP transport answers with replies a test builds
//! from real DHCP packets. It must never touch the real machine.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::dhcp::packet::DhcpPacket;
use crate::dm::DmCommand;
use crate::sys::{
    Clock, CpuRandom, DhcpTransport, MountRequest, PowerAction, Reaped, ShutdownSignal, System,
};

/// One recorded side effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    EnsureConsole,
    WriteFile(PathBuf, Vec<u8>),
    CreateDir(PathBuf),
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    Mount(MountRequest),
    Unmount {
        target: PathBuf,
        detach: bool,
    },
    RemountReadOnly(PathBuf),
    LoadModule {
        path: PathBuf,
        compressed: bool,
    },
    SetHostname(String),
    InterfaceUp(String),
    SetMtu(String, u16),
    SetAddress {
        interface: String,
        address: Ipv4Addr,
        prefix_len: u8,
    },
    AddRoute {
        interface: String,
        destination: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
    },
    OpenDhcp(String),
    WaitForCrng(u64),
    BlockSignals,
    Signal(ShutdownSignal),
    Sync,
    Reboot(PowerAction),
    DisableCtrlAltDel,
    DmIoctl {
        command: DmCommand,
        name: String,
    },
    ReadAt {
        path: PathBuf,
        offset: u64,
        len: usize,
    },
}

/// How a fake DHCP server answers one client datagram: the replies it sends back.
pub type ServerStep = Box<dyn FnMut(&DhcpPacket) -> Vec<Vec<u8>> + Send>;

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    console: Vec<String>,
    now_ms: u64,
    files: HashMap<PathBuf, Vec<u8>>,
    dirs: HashMap<PathBuf, Vec<String>>,
    links: HashMap<PathBuf, PathBuf>,
    failures: HashMap<(&'static str, PathBuf), i32>,
    crng_ready_now: bool,
    crng_ready_after_wait: bool,
    cpu: CpuRandom,
    children_obeying_term: usize,
    children_ignoring_term: usize,
    zombies: usize,
    server_steps: VecDeque<ServerStep>,
    server_fallback: Option<ServerStep>,
    pending_replies: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    dm_answers: HashMap<DmCommand, Vec<u8>>,
    dm_failures: HashMap<DmCommand, i32>,
    last_dm_buffer: Vec<u8>,
}

/// The fake system. Clones share one state.
#[derive(Clone, Default)]
pub struct FakeSystem {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FakeSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSystem").finish_non_exhaustive()
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl FakeSystem {
    pub fn new() -> Self {
        let system = Self::default();
        system.lock().crng_ready_now = true;
        system
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, call: Call) {
        self.lock().calls.push(call);
    }

    fn failure(&self, operation: &'static str, path: &Path) -> io::Result<()> {
        match self.lock().failures.get(&(operation, path.to_path_buf())) {
            Some(code) => Err(errno(*code)),
            None => Ok(()),
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }
    pub fn console_lines(&self) -> Vec<String> {
        self.lock().console.clone()
    }
    pub fn set_file(&self, path: &str, contents: impl Into<Vec<u8>>) {
        self.lock()
            .files
            .insert(PathBuf::from(path), contents.into());
    }
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.lock().files.get(Path::new(path)).cloned()
    }
    pub fn set_dir(&self, path: &str, entries: &[&str]) {
        let entries = entries.iter().map(|e| (*e).to_owned()).collect();
        self.lock().dirs.insert(PathBuf::from(path), entries);
    }
    pub fn set_link(&self, path: &str, target: &str) {
        self.lock()
            .links
            .insert(PathBuf::from(path), PathBuf::from(target));
    }
    fn fail(&self, operation: &'static str, path: &str, code: i32) {
        self.lock()
            .failures
            .insert((operation, PathBuf::from(path)), code);
    }
    pub fn fail_mount(&self, target: &str, code: i32) {
        self.fail("mount", target, code);
    }
    pub fn fail_unmount(&self, target: &str, code: i32) {
        self.fail("unmount", target, code);
    }
    pub fn fail_module(&self, path: &str, code: i32) {
        self.fail("module", path, code);
    }
    /// Makes a network operation on an interface fail ("up", "address", "route", "dhcp").
    pub fn fail_net(&self, operation: &'static str, interface: &str, code: i32) {
        self.fail(operation, interface, code);
    }
    pub fn fail_reboot(&self, code: i32) {
        self.fail("reboot", "", code);
    }
    pub fn set_crng(&self, ready_now: bool, ready_after_wait: bool) {
        let mut state = self.lock();
        state.crng_ready_now = ready_now;
        state.crng_ready_after_wait = ready_after_wait;
    }
    pub fn set_cpu_random(&self, cpu: CpuRandom) {
        self.lock().cpu = cpu;
    }
    /// Children that exit on SIGTERM, and children that only SIGKILL ends.
    pub fn set_children(&self, obeying_term: usize, ignoring_term: usize) {
        let mut state = self.lock();
        state.children_obeying_term = obeying_term;
        state.children_ignoring_term = ignoring_term;
    }
    /// Queues how the fake DHCP server answers the next client datagram.
    pub fn push_server_step(&self, step: ServerStep) {
        self.lock().server_steps.push_back(step);
    }
    /// How the fake server answers once the queued steps are used up.
    pub fn set_server_fallback(&self, step: ServerStep) {
        self.lock().server_fallback = Some(step);
    }
    /// Every datagram the client sent, parsed.
    pub fn sent_packets(&self) -> Vec<DhcpPacket> {
        self.lock()
            .sent
            .iter()
            .filter_map(|p| DhcpPacket::parse(p).ok())
            .collect()
    }
    pub fn advance_ms(&self, ms: u64) {
        self.lock().now_ms += ms;
    }
    /// The buffer the fake kernel writes back for a device-mapper command (the request's
    /// own bytes when none is set).
    pub fn set_dm_answer(&self, command: DmCommand, answer: Vec<u8>) {
        self.lock().dm_answers.insert(command, answer);
    }
    pub fn fail_dm(&self, command: DmCommand, code: i32) {
        self.lock().dm_failures.insert(command, code);
    }
    /// The last device-mapper buffer as the fake kernel received it.
    pub fn last_dm_buffer(&self) -> Vec<u8> {
        self.lock().last_dm_buffer.clone()
    }
    pub fn fail_read(&self, path: &str, code: i32) {
        self.fail("read", path, code);
    }
}

impl Clock for FakeSystem {
    fn boottime_ms(&self) -> u64 {
        self.lock().now_ms
    }
}

/// The fake DHCP channel: sends go to the scripted server, replies come back in order.
#[derive(Debug)]
pub struct FakeTransport {
    system: FakeSystem,
}

impl DhcpTransport for FakeTransport {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let request =
            DhcpPacket::parse(packet).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut state = self.system.lock();
        state.sent.push(packet.to_vec());
        let replies = match state.server_steps.pop_front() {
            Some(mut step) => step(&request),
            None => match state.server_fallback.as_mut() {
                Some(step) => step(&request),
                None => Vec::new(),
            },
        };
        state.pending_replies.extend(replies);
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8], timeout_ms: u64) -> io::Result<Option<usize>> {
        let mut state = self.system.lock();
        match state.pending_replies.pop_front() {
            Some(reply) => {
                let n = reply.len().min(buf.len());
                buf[..n].copy_from_slice(&reply[..n]);
                Ok(Some(reply.len()))
            }
            None => {
                state.now_ms += timeout_ms;
                Ok(None)
            }
        }
    }
}

impl System for FakeSystem {
    type Transport = FakeTransport;

    fn sleep_ms(&self, ms: u64) {
        self.advance_ms(ms);
    }
    fn console(&self, line: &str) {
        self.lock().console.push(line.to_owned());
    }
    fn ensure_console(&self) -> io::Result<()> {
        self.record(Call::EnsureConsole);
        Ok(())
    }
    fn read_file(&self, path: &Path, max_bytes: usize) -> io::Result<Vec<u8>> {
        match self.lock().files.get(path) {
            Some(contents) => Ok(contents[..contents.len().min(max_bytes)].to_vec()),
            None => Err(errno(libc::ENOENT)),
        }
    }
    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        self.record(Call::WriteFile(path.to_path_buf(), contents.to_vec()));
        self.lock()
            .files
            .insert(path.to_path_buf(), contents.to_vec());
        Ok(())
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.lock()
            .dirs
            .get(path)
            .cloned()
            .ok_or_else(|| errno(libc::ENOENT))
    }
    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        self.lock()
            .links
            .get(path)
            .cloned()
            .ok_or_else(|| errno(libc::ENOENT))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.record(Call::CreateDir(path.to_path_buf()));
        Ok(())
    }
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.record(Call::ReadAt {
            path: path.to_path_buf(),
            offset,
            len: buf.len(),
        });
        self.failure("read", path)?;
        let state = self.lock();
        let contents = state.files.get(path).ok_or_else(|| errno(libc::ENOENT))?;
        let start = usize::try_from(offset).map_err(|_| errno(libc::EINVAL))?;
        let end = start
            .checked_add(buf.len())
            .ok_or_else(|| errno(libc::EINVAL))?;
        let bytes = contents.get(start..end).ok_or_else(|| errno(libc::EIO))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
    fn dm_ioctl(&self, command: DmCommand, buf: &mut [u8]) -> io::Result<()> {
        let name_end = buf[48..176].iter().position(|&b| b == 0).unwrap_or(128);
        let name = String::from_utf8_lossy(&buf[48..48 + name_end]).into_owned();
        self.record(Call::DmIoctl { command, name });
        let mut state = self.lock();
        state.last_dm_buffer = buf.to_vec();
        if let Some(code) = state.dm_failures.get(&command) {
            return Err(errno(*code));
        }
        if let Some(answer) = state.dm_answers.get(&command) {
            let n = answer.len().min(buf.len());
            buf[..n].copy_from_slice(&answer[..n]);
        }
        Ok(())
    }
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.record(Call::Symlink {
            target: target.to_path_buf(),
            link: link.to_path_buf(),
        });
        Ok(())
    }
    fn mount(&self, request: &MountRequest) -> io::Result<()> {
        self.record(Call::Mount(request.clone()));
        self.failure("mount", &request.target)
    }
    fn unmount(&self, target: &Path, detach: bool) -> io::Result<()> {
        self.record(Call::Unmount {
            target: target.to_path_buf(),
            detach,
        });
        if detach {
            Ok(())
        } else {
            self.failure("unmount", target)
        }
    }
    fn remount_read_only(&self, target: &Path) -> io::Result<()> {
        self.record(Call::RemountReadOnly(target.to_path_buf()));
        Ok(())
    }
    fn load_module(&self, path: &Path, compressed: bool) -> io::Result<()> {
        self.record(Call::LoadModule {
            path: path.to_path_buf(),
            compressed,
        });
        self.failure("module", path)
    }
    fn set_hostname(&self, name: &str) -> io::Result<()> {
        self.record(Call::SetHostname(name.to_owned()));
        Ok(())
    }
    fn interface_up(&self, interface: &str) -> io::Result<()> {
        self.record(Call::InterfaceUp(interface.to_owned()));
        self.failure("up", Path::new(interface))
    }
    fn set_mtu(&self, interface: &str, mtu: u16) -> io::Result<()> {
        self.record(Call::SetMtu(interface.to_owned(), mtu));
        Ok(())
    }
    fn set_ipv4_address(
        &self,
        interface: &str,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> io::Result<()> {
        self.record(Call::SetAddress {
            interface: interface.to_owned(),
            address,
            prefix_len,
        });
        self.failure("address", Path::new(interface))
    }
    fn add_ipv4_route(
        &self,
        interface: &str,
        destination: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        self.record(Call::AddRoute {
            interface: interface.to_owned(),
            destination,
            prefix_len,
            gateway,
        });
        self.failure("route", Path::new(interface))
    }
    fn open_dhcp_transport(&self, interface: &str) -> io::Result<FakeTransport> {
        self.record(Call::OpenDhcp(interface.to_owned()));
        self.failure("dhcp", Path::new(interface))?;
        Ok(FakeTransport {
            system: self.clone(),
        })
    }
    fn crng_ready_now(&self) -> io::Result<bool> {
        Ok(self.lock().crng_ready_now)
    }
    fn wait_for_crng(&self, timeout_ms: u64) -> bool {
        self.record(Call::WaitForCrng(timeout_ms));
        let mut state = self.lock();
        if state.crng_ready_after_wait {
            state.now_ms += 1;
            state.crng_ready_now = true;
            true
        } else {
            state.now_ms += timeout_ms;
            false
        }
    }
    fn random_bytes(&self, buf: &mut [u8]) -> io::Result<()> {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = u8::try_from(i % 256)
                .unwrap_or(0)
                .wrapping_mul(37)
                .wrapping_add(11);
        }
        Ok(())
    }
    fn cpu_random(&self) -> CpuRandom {
        self.lock().cpu
    }
    fn block_all_signals_in_this_thread(&self) {
        self.record(Call::BlockSignals);
    }
    fn signal_all_processes(&self, signal: ShutdownSignal) -> io::Result<()> {
        self.record(Call::Signal(signal));
        let mut state = self.lock();
        match signal {
            ShutdownSignal::Terminate => {
                state.zombies += state.children_obeying_term;
                state.children_obeying_term = 0;
            }
            ShutdownSignal::Kill => {
                state.zombies += state.children_obeying_term + state.children_ignoring_term;
                state.children_obeying_term = 0;
                state.children_ignoring_term = 0;
            }
        }
        Ok(())
    }
    fn reap_children(&self) -> io::Result<Reaped> {
        let mut state = self.lock();
        let reaped = std::mem::take(&mut state.zombies);
        let children_left = state.children_obeying_term + state.children_ignoring_term > 0;
        Ok(Reaped {
            reaped,
            children_left,
        })
    }
    fn sync(&self) {
        self.record(Call::Sync);
    }
    fn disable_ctrl_alt_del(&self) -> io::Result<()> {
        self.record(Call::DisableCtrlAltDel);
        Ok(())
    }
    fn reboot(&self, action: PowerAction) -> io::Result<()> {
        self.record(Call::Reboot(action));
        self.failure("reboot", Path::new(""))
    }
}
