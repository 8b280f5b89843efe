//! Network bring-up: the hostname, the loopback interface, and the first virtio NIC with
//! DHCPv4 or a static address from the kernel command line; then keeping the lease.
//!
//! Network failures are never fatal: the box goes on without a network (the console and
//! vsock still work) and says so. This module never picks a NIC that is not virtio.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::cmdline::{BootOptions, NetworkMode, StaticIpv4};
use crate::dhcp::client::{DhcpClient, DhcpError, Lease, RenewOutcome, RetryPolicy};
use crate::dhcp::packet::{ClientIdentity, prefix_mask};
use crate::sys::{System, is_errno};

/// Where interfaces are listed.
pub const SYS_CLASS_NET: &str = "/sys/class/net";
/// The resolver configuration init writes.
pub const RESOLV_CONF_PATH: &str = "/etc/resolv.conf";
/// The static host table init writes when the image has none.
pub const HOSTS_PATH: &str = "/etc/hosts";
/// Where the current DHCP lease is recorded.
pub const LEASE_RECORD_PATH: &str = "/run/cloister/dhcp-lease";
/// How long to wait for the virtio NIC to appear after its module loaded.
pub const NIC_WAIT_MAX_MS: u64 = 5_000;
/// How often to look for it meanwhile.
pub const NIC_POLL_INTERVAL_MS: u64 = 50;
/// The wait between renewal attempts that got no answer, at most.
pub const RENEW_RETRY_MAX_MS: u64 = 60_000;
/// The wait before trying again after a failed acquisition.
pub const REACQUIRE_DELAY_MS: u64 = 30_000;
/// The smallest MTU accepted from DHCP (RFC 2132 says 68; IPv4 needs 576 to reassemble).
pub const MTU_MIN: u16 = 576;

/// One route to install.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination network.
    pub destination: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Next hop, or `None` when on-link.
    pub gateway: Option<Ipv4Addr>,
}

/// An interface's IPv4 configuration, from a lease or the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Config {
    /// The address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Routes beyond the on-link prefix, in install order.
    pub routes: Vec<RouteSpec>,
    /// DNS servers for /etc/resolv.conf.
    pub dns_servers: Vec<Ipv4Addr>,
    /// The search domain.
    pub search_domain: Option<String>,
    /// The MTU, when the network says so.
    pub mtu: Option<u16>,
}

fn in_subnet(address: Ipv4Addr, network: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = prefix_mask(prefix_len);
    u32::from(address) & mask == u32::from(network) & mask
}

/// Routes for a default gateway. A gateway outside the prefix (clouds hand out /32
/// addresses) first gets a host route on the link, then the default route.
fn gateway_routes(address: Ipv4Addr, prefix_len: u8, gateway: Ipv4Addr) -> Vec<RouteSpec> {
    let mut routes = Vec::new();
    if !in_subnet(gateway, address, prefix_len) {
        routes.push(RouteSpec {
            destination: gateway,
            prefix_len: 32,
            gateway: None,
        });
    }
    routes.push(RouteSpec {
        destination: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
        gateway: Some(gateway),
    });
    routes
}

impl Ipv4Config {
    /// From `cloister.ip=ADDR/PREFIX[,GATEWAY]` and `cloister.dns=`.
    pub fn from_static(config: StaticIpv4, dns_servers: &[Ipv4Addr]) -> Self {
        let routes = config
            .gateway
            .map(|g| gateway_routes(config.address, config.prefix_len, g))
            .unwrap_or_default();
        Self {
            address: config.address,
            prefix_len: config.prefix_len,
            routes,
            dns_servers: dns_servers.to_vec(),
            search_domain: None,
            mtu: None,
        }
    }

    /// From a DHCP lease. Classless static routes (option 121) replace the routers, as
    /// RFC 3442 requires; `cloister.dns=` replaces the lease's DNS servers.
    pub fn from_lease(lease: &Lease, dns_override: &[Ipv4Addr]) -> Self {
        let routes = if lease.classless_routes.is_empty() {
            lease
                .routers
                .first()
                .map(|g| gateway_routes(lease.address, lease.prefix_len, *g))
                .unwrap_or_default()
        } else {
            // Host routes without a gateway first, so later gateways are reachable.
            let mut routes: Vec<RouteSpec> = lease
                .classless_routes
                .iter()
                .map(|r| RouteSpec {
                    destination: r.destination,
                    prefix_len: r.prefix_len,
                    gateway: (!r.router.is_unspecified()).then_some(r.router),
                })
                .collect();
            routes.sort_by_key(|r| r.gateway.is_some());
            routes
        };
        let dns_servers = if dns_override.is_empty() {
            lease.dns_servers.clone()
        } else {
            dns_override.to_vec()
        };
        Self {
            address: lease.address,
            prefix_len: lease.prefix_len,
            routes,
            dns_servers,
            search_domain: lease.domain_name.clone().filter(|d| is_plain_domain(d)),
            mtu: lease.mtu.filter(|m| *m >= MTU_MIN),
        }
    }

    /// The /etc/resolv.conf text.
    pub fn resolv_conf(&self) -> String {
        let mut text = String::from("# written by cloister-init\n");
        for server in &self.dns_servers {
            text.push_str(&format!("nameserver {server}\n"));
        }
        if let Some(domain) = &self.search_domain {
            text.push_str(&format!("search {domain}\n"));
        }
        text
    }
}

/// Whether a domain from DHCP is safe to put in resolv.conf (no spaces or newlines).
fn is_plain_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Applies a configuration to an interface. Returns how many steps failed.
pub fn apply_config(system: &impl System, interface: &str, config: &Ipv4Config) -> usize {
    let mut failures = 0;
    if let Some(mtu) = config.mtu
        && let Err(error) = system.set_mtu(interface, mtu)
    {
        tracing::warn!(interface, mtu, "cannot set MTU: {error}");
        failures += 1;
    }
    if let Err(error) = system.set_ipv4_address(interface, config.address, config.prefix_len) {
        tracing::error!(interface, address = %config.address, "cannot set address: {error}");
        return failures + 1;
    }
    for route in &config.routes {
        match system.add_ipv4_route(
            interface,
            route.destination,
            route.prefix_len,
            route.gateway,
        ) {
            Ok(()) => {}
            Err(error) if is_errno(&error, libc::EEXIST) => {}
            Err(error) => {
                tracing::error!(interface, ?route, "cannot add route: {error}");
                failures += 1;
            }
        }
    }
    if !config.dns_servers.is_empty()
        && let Err(error) =
            system.write_file(Path::new(RESOLV_CONF_PATH), config.resolv_conf().as_bytes())
    {
        tracing::error!("cannot write {RESOLV_CONF_PATH}: {error}");
        failures += 1;
    }
    failures
}

/// Parses a MAC address as sysfs writes it (`52:54:00:12:34:56`).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn read_trimmed(system: &impl System, path: &Path) -> Option<String> {
    let bytes = system.read_file(path, 4096).ok()?;
    Some(String::from_utf8_lossy(&bytes).trim().to_owned())
}

/// The virtio NIC with the lowest ifindex, if one is present now.
pub fn first_virtio_nic(system: &impl System) -> Option<String> {
    let base = PathBuf::from(SYS_CLASS_NET);
    let names = system.read_dir(&base).ok()?;
    names
        .into_iter()
        .filter(|name| name != "lo")
        .filter(|name| {
            system
                .read_link(&base.join(name).join("device/driver"))
                .is_ok_and(|driver| driver.file_name().is_some_and(|n| n == "virtio_net"))
        })
        .filter_map(|name| {
            let index = read_trimmed(system, &base.join(&name).join("ifindex"))?;
            Some((index.parse::<u32>().ok()?, name))
        })
        .min()
        .map(|(_, name)| name)
}

/// Waits up to [`NIC_WAIT_MAX_MS`] for a virtio NIC to appear.
pub fn wait_for_virtio_nic(system: &impl System) -> Option<String> {
    let deadline_ms = system.boottime_ms() + NIC_WAIT_MAX_MS;
    loop {
        if let Some(nic) = first_virtio_nic(system) {
            return Some(nic);
        }
        if system.boottime_ms() >= deadline_ms {
            return None;
        }
        system.sleep_ms(NIC_POLL_INTERVAL_MS);
    }
}

/// A DHCP client with its socket and current lease, handed to the lease keeper.
#[derive(Debug)]
pub struct DhcpSession<T> {
    /// The interface.
    pub interface: String,
    /// The client (keeps its transaction-id sequence).
    pub client: DhcpClient,
    /// Its socket.
    pub transport: T,
    /// The lease in force.
    pub lease: Lease,
    /// `cloister.dns=` servers, which override the lease's.
    pub dns_override: Vec<Ipv4Addr>,
}

/// What network bring-up did.
#[derive(Debug)]
pub struct NetworkReport<T> {
    /// The NIC configured, if any.
    pub interface: Option<String>,
    /// Its configuration, when one was applied.
    pub config: Option<Ipv4Config>,
    /// The DHCP session, when the address came from DHCP.
    pub dhcp: Option<DhcpSession<T>>,
}

impl<T> NetworkReport<T> {
    fn without(interface: Option<String>) -> Self {
        Self {
            interface,
            config: None,
            dhcp: None,
        }
    }
}

/// Writes /etc/hosts (localhost and the box's own name on loopback) unless the image
/// brought one, so `localhost` and the hostname resolve without DNS.
fn write_hosts_if_missing(system: &impl System, hostname: &str) {
    if system.read_file(Path::new(HOSTS_PATH), 1).is_ok() {
        return;
    }
    let hosts = format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{hostname}\n");
    if let Err(error) = system.write_file(Path::new(HOSTS_PATH), hosts.as_bytes()) {
        tracing::warn!("cannot write {HOSTS_PATH}: {error}");
    }
}

fn xid_seed(system: &impl System) -> u32 {
    let mut bytes = [0u8; 4];
    match system.random_bytes(&mut bytes) {
        Ok(()) => u32::from_ne_bytes(bytes),
        // Without the CRNG, boot time still differs from boot to boot.
        Err(_) => u32::try_from(system.boottime_ms() & u64::from(u32::MAX)).unwrap_or(1),
    }
}

fn record_lease(system: &impl System, lease: &Lease) {
    if let Err(error) =
        system.write_file(Path::new(LEASE_RECORD_PATH), lease.to_record().as_bytes())
    {
        tracing::warn!("cannot record the lease in {LEASE_RECORD_PATH}: {error}");
    }
}

/// Sets the hostname, brings up lo and the first virtio NIC, and configures it.
pub fn bring_up<S: System>(system: &S, options: &BootOptions) -> NetworkReport<S::Transport> {
    if let Err(error) = system.set_hostname(options.hostname()) {
        tracing::error!(
            hostname = options.hostname(),
            "cannot set hostname: {error}"
        );
    }
    write_hosts_if_missing(system, options.hostname());
    // Bringing lo up makes the kernel add 127.0.0.1/8 itself.
    if let Err(error) = system.interface_up("lo") {
        tracing::error!("cannot bring up lo: {error}");
    }
    if options.network == NetworkMode::Off {
        tracing::info!("network off (cloister.ip=off)");
        return NetworkReport::without(None);
    }
    let Some(interface) = wait_for_virtio_nic(system) else {
        tracing::error!("no virtio NIC found; going on without a network");
        return NetworkReport::without(None);
    };
    if let Err(error) = system.interface_up(&interface) {
        tracing::error!(interface, "cannot bring the NIC up: {error}");
        return NetworkReport::without(Some(interface));
    }
    match options.network {
        NetworkMode::Static(config) => {
            let config = Ipv4Config::from_static(config, &options.dns);
            apply_config(system, &interface, &config);
            tracing::info!(interface, address = %config.address, prefix = config.prefix_len, "static address");
            NetworkReport {
                interface: Some(interface),
                config: Some(config),
                dhcp: None,
            }
        }
        NetworkMode::Dhcp => match run_dhcp(system, &interface, options) {
            Ok(session) => {
                let config = Ipv4Config::from_lease(&session.lease, &options.dns);
                apply_config(system, &interface, &config);
                record_lease(system, &session.lease);
                tracing::info!(
                    interface,
                    address = %config.address,
                    prefix = config.prefix_len,
                    lease_s = ?session.lease.lease_time_s,
                    "DHCP lease"
                );
                NetworkReport {
                    interface: Some(interface),
                    config: Some(config),
                    dhcp: Some(session),
                }
            }
            Err(error) => {
                tracing::error!(
                    interface,
                    "DHCP failed, going on without an address: {error}"
                );
                NetworkReport::without(Some(interface))
            }
        },
        NetworkMode::Off => NetworkReport::without(Some(interface)),
    }
}

fn run_dhcp<S: System>(
    system: &S,
    interface: &str,
    options: &BootOptions,
) -> Result<DhcpSession<S::Transport>, DhcpError> {
    let mac_path = Path::new(SYS_CLASS_NET).join(interface).join("address");
    let mac = read_trimmed(system, &mac_path)
        .and_then(|t| parse_mac(&t))
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no MAC address in sysfs")
        })?;
    let identity = ClientIdentity {
        mac,
        hostname: Some(options.hostname().to_owned()),
    };
    let mut client = DhcpClient::new(identity, RetryPolicy::default(), xid_seed(system));
    let mut transport = system.open_dhcp_transport(interface)?;
    let lease = client.acquire(&mut transport, system)?;
    Ok(DhcpSession {
        interface: interface.to_owned(),
        client,
        transport,
        lease,
        dns_override: options.dns.clone(),
    })
}

/// Blocks until the lease is renewed (or replaced), then applies and records the result.
/// Sleeps until T1, renews; with no answer, retries until the lease runs out, then starts
/// over with DISCOVER. Returns `false` for an infinite lease (nothing to keep).
pub fn keep_lease_once<S: System>(system: &S, session: &mut DhcpSession<S::Transport>) -> bool {
    let Some(renew_at_ms) = session.lease.renew_at_ms() else {
        return false;
    };
    let now_ms = system.boottime_ms();
    if now_ms < renew_at_ms {
        system.sleep_ms(renew_at_ms - now_ms);
    }
    let expires_at_ms = session.lease.expires_at_ms().unwrap_or(u64::MAX);
    loop {
        let outcome = session
            .client
            .renew(&mut session.transport, system, &session.lease);
        match outcome {
            Ok(RenewOutcome::Extended(lease)) => {
                let moved = lease.address != session.lease.address;
                session.lease = lease;
                if moved {
                    let config = Ipv4Config::from_lease(&session.lease, &session.dns_override);
                    apply_config(system, &session.interface, &config);
                }
                record_lease(system, &session.lease);
                tracing::info!(lease_s = ?session.lease.lease_time_s, "DHCP lease renewed");
                return true;
            }
            Ok(RenewOutcome::Refused) => {
                tracing::warn!("DHCP server refused the renewal; asking again from scratch");
                break;
            }
            Ok(RenewOutcome::NoAnswer) | Err(_) => {
                let now_ms = system.boottime_ms();
                if now_ms >= expires_at_ms {
                    tracing::warn!("DHCP lease ran out without a renewal");
                    break;
                }
                system.sleep_ms(((expires_at_ms - now_ms) / 2).clamp(1_000, RENEW_RETRY_MAX_MS));
            }
        }
    }
    loop {
        match session.client.acquire(&mut session.transport, system) {
            Ok(lease) => {
                session.lease = lease;
                let config = Ipv4Config::from_lease(&session.lease, &session.dns_override);
                apply_config(system, &session.interface, &config);
                record_lease(system, &session.lease);
                return true;
            }
            Err(error) => {
                tracing::error!("DHCP failed again: {error}");
                system.sleep_ms(REACQUIRE_DELAY_MS);
            }
        }
    }
}

/// Keeps the lease for as long as the box runs, on its own thread.
pub fn spawn_lease_keeper<S>(system: S, mut session: DhcpSession<S::Transport>)
where
    S: System + Send + 'static,
    S::Transport: Send + 'static,
{
    let spawned = std::thread::Builder::new()
        .name("dhcp-lease".into())
        .spawn(move || {
            system.block_all_signals_in_this_thread();
            while keep_lease_once(&system, &mut session) {}
        });
    if let Err(error) = spawned {
        tracing::error!("cannot start the DHCP lease keeper: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::client::tests_support::reply;
    use crate::dhcp::packet::{ClasslessRoute, DhcpPacket, MessageType};
    use crate::fake::{Call, FakeSystem};
    use crate::sys::Clock;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    fn with_nics() -> FakeSystem {
        let system = FakeSystem::new();
        system.set_dir(SYS_CLASS_NET, &["lo", "eth1", "eth0", "dummy0"]);
        for (name, index, driver) in [("eth0", "2", "virtio_net"), ("eth1", "3", "virtio_net")] {
            system.set_link(
                &format!("{SYS_CLASS_NET}/{name}/device/driver"),
                &format!("../../../bus/virtio/drivers/{driver}"),
            );
            system.set_file(
                &format!("{SYS_CLASS_NET}/{name}/ifindex"),
                format!("{index}\n"),
            );
            system.set_file(
                &format!("{SYS_CLASS_NET}/{name}/address"),
                "52:54:00:12:34:56\n",
            );
        }
        system.set_link(&format!("{SYS_CLASS_NET}/dummy0/device/driver"), "e1000");
        system.set_file(&format!("{SYS_CLASS_NET}/dummy0/ifindex"), "1");
        system
    }

    fn answer(kind: MessageType) -> crate::fake::ServerStep {
        Box::new(move |request: &DhcpPacket| vec![reply(request, kind, SERVER, OFFERED)])
    }

    #[test]
    fn picks_the_virtio_nic_with_the_lowest_index() {
        assert_eq!(first_virtio_nic(&with_nics()).as_deref(), Some("eth0"));
        assert_eq!(
            parse_mac("52:54:00:12:34:56\n"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
    }

    #[test]
    fn missing_nic_is_waited_for_then_given_up() {
        let system = FakeSystem::new();
        let report = bring_up(&system, &BootOptions::default());
        assert!(report.interface.is_none());
        assert!(system.boottime_ms() >= NIC_WAIT_MAX_MS);
        assert!(system.calls().contains(&Call::InterfaceUp("lo".into())));
    }

    #[test]
    fn dhcp_bring_up_configures_address_route_and_dns() {
        let system = with_nics();
        system.push_server_step(answer(MessageType::Offer));
        system.push_server_step(answer(MessageType::Ack));
        let (options, _) = crate::cmdline::parse_cmdline("cloister.hostname=box1");
        let report = bring_up(&system, &options);
        assert_eq!(report.interface.as_deref(), Some("eth0"));
        assert!(report.dhcp.is_some());
        let calls = system.calls();
        let net: Vec<_> = calls
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Call::SetHostname(_)
                        | Call::InterfaceUp(_)
                        | Call::SetAddress { .. }
                        | Call::AddRoute { .. }
                        | Call::OpenDhcp(_)
                )
            })
            .cloned()
            .collect();
        assert_eq!(
            net,
            [
                Call::SetHostname("box1".into()),
                Call::InterfaceUp("lo".into()),
                Call::InterfaceUp("eth0".into()),
                Call::OpenDhcp("eth0".into()),
                Call::SetAddress {
                    interface: "eth0".into(),
                    address: OFFERED,
                    prefix_len: 24
                },
                Call::AddRoute {
                    interface: "eth0".into(),
                    destination: Ipv4Addr::UNSPECIFIED,
                    prefix_len: 0,
                    gateway: Some(SERVER)
                },
            ]
        );
        let resolv = String::from_utf8(system.file(RESOLV_CONF_PATH).unwrap()).unwrap();
        assert!(resolv.contains("nameserver 10.0.2.3\n"));
        let record = String::from_utf8(system.file(LEASE_RECORD_PATH).unwrap()).unwrap();
        assert!(record.contains("ADDRESS=10.0.2.15/24"));
        assert!(record.contains("LEASE_TIME_S=86400"));
        // The DISCOVER carried the NIC's MAC and the hostname.
        let discover = &system.sent_packets()[0];
        assert_eq!(discover.mac(), Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(discover.hostname.as_deref(), Some("box1"));
    }

    #[test]
    fn dhcp_failure_leaves_the_box_up_without_an_address() {
        let system = with_nics();
        let report = bring_up(&system, &BootOptions::default());
        assert_eq!(report.interface.as_deref(), Some("eth0"));
        assert!(report.dhcp.is_none() && report.config.is_none());
        assert!(
            !system
                .calls()
                .iter()
                .any(|c| matches!(c, Call::SetAddress { .. }))
        );
    }

    #[test]
    fn nic_that_will_not_come_up_gets_no_dhcp() {
        let system = with_nics();
        system.fail_net("up", "eth0", libc::ENODEV);
        let report = bring_up(&system, &BootOptions::default());
        assert_eq!(report.interface.as_deref(), Some("eth0"));
        assert!(
            !system
                .calls()
                .iter()
                .any(|c| matches!(c, Call::OpenDhcp(_)))
        );
    }

    #[test]
    fn failed_route_does_not_stop_dns() {
        let system = with_nics();
        system.fail_net("route", "eth0", libc::ENETUNREACH);
        let (options, _) = crate::cmdline::parse_cmdline(
            "cloister.ip=10.1.0.2/24,10.1.0.1 cloister.dns=10.1.0.53",
        );
        bring_up(&system, &options);
        assert!(system.file(RESOLV_CONF_PATH).is_some());
    }

    #[test]
    fn hosts_file_is_written_only_when_missing() {
        let system = with_nics();
        let (options, _) = crate::cmdline::parse_cmdline("cloister.ip=off cloister.hostname=box7");
        bring_up(&system, &options);
        let hosts = String::from_utf8(system.file(HOSTS_PATH).unwrap()).unwrap();
        assert!(hosts.contains("127.0.0.1\tlocalhost\n"));
        assert!(hosts.contains("127.0.1.1\tbox7\n"));

        let system = with_nics();
        system.set_file(HOSTS_PATH, "10.0.0.1 from-the-image\n");
        bring_up(&system, &options);
        assert_eq!(
            system.file(HOSTS_PATH).unwrap(),
            b"10.0.0.1 from-the-image\n"
        );
    }

    #[test]
    fn static_address_from_the_command_line() {
        let system = with_nics();
        let (options, _) = crate::cmdline::parse_cmdline(
            "cloister.ip=192.168.1.10/24,192.168.1.1 cloister.dns=9.9.9.9",
        );
        bring_up(&system, &options);
        let calls = system.calls();
        assert!(!calls.iter().any(|c| matches!(c, Call::OpenDhcp(_))));
        assert!(calls.contains(&Call::SetAddress {
            interface: "eth0".into(),
            address: Ipv4Addr::new(192, 168, 1, 10),
            prefix_len: 24
        }));
        assert!(calls.contains(&Call::AddRoute {
            interface: "eth0".into(),
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Some(Ipv4Addr::new(192, 168, 1, 1))
        }));
        let resolv = String::from_utf8(system.file(RESOLV_CONF_PATH).unwrap()).unwrap();
        assert!(resolv.contains("nameserver 9.9.9.9\n"));
    }

    #[test]
    fn network_off_only_brings_up_lo() {
        let system = with_nics();
        let (options, _) = crate::cmdline::parse_cmdline("cloister.ip=off");
        bring_up(&system, &options);
        let ups: Vec<_> = system
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::InterfaceUp(_)))
            .collect();
        assert_eq!(ups, [Call::InterfaceUp("lo".into())]);
    }

    #[test]
    fn gateway_outside_a_slash_32_gets_a_host_route_first() {
        let config = Ipv4Config::from_static(
            StaticIpv4 {
                address: Ipv4Addr::new(10, 128, 0, 5),
                prefix_len: 32,
                gateway: Some(Ipv4Addr::new(10, 128, 0, 1)),
            },
            &[],
        );
        assert_eq!(
            config.routes,
            [
                RouteSpec {
                    destination: Ipv4Addr::new(10, 128, 0, 1),
                    prefix_len: 32,
                    gateway: None
                },
                RouteSpec {
                    destination: Ipv4Addr::UNSPECIFIED,
                    prefix_len: 0,
                    gateway: Some(Ipv4Addr::new(10, 128, 0, 1))
                },
            ]
        );
    }

    #[test]
    fn classless_routes_replace_routers_and_bad_mtu_and_domain_are_dropped() {
        let system = with_nics();
        system.push_server_step(answer(MessageType::Offer));
        system.push_server_step(answer(MessageType::Ack));
        let mut transport = system.open_dhcp_transport("eth0").unwrap();
        let mut client = DhcpClient::new(
            ClientIdentity {
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                hostname: None,
            },
            RetryPolicy::default(),
            1,
        );
        let mut lease = client.acquire(&mut transport, &system).unwrap();
        lease.classless_routes = vec![
            ClasslessRoute {
                destination: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                router: Ipv4Addr::new(10, 0, 9, 1),
            },
            ClasslessRoute {
                destination: Ipv4Addr::new(10, 0, 9, 1),
                prefix_len: 32,
                router: Ipv4Addr::UNSPECIFIED,
            },
        ];
        lease.mtu = Some(100);
        lease.domain_name = Some("evil\nnameserver 6.6.6.6".into());
        let config = Ipv4Config::from_lease(&lease, &[]);
        assert_eq!(config.routes[0].gateway, None);
        assert_eq!(config.routes[1].gateway, Some(Ipv4Addr::new(10, 0, 9, 1)));
        assert!(!config.routes.iter().any(|r| r.gateway == Some(SERVER)));
        assert_eq!(config.mtu, None);
        assert_eq!(config.search_domain, None);
        assert!(!config.resolv_conf().contains("6.6.6.6"));
    }

    fn session(system: &FakeSystem) -> DhcpSession<crate::fake::FakeTransport> {
        system.push_server_step(answer(MessageType::Offer));
        system.push_server_step(answer(MessageType::Ack));
        run_dhcp(system, "eth0", &BootOptions::default()).unwrap()
    }

    #[test]
    fn lease_keeper_renews_at_t1() {
        let system = with_nics();
        let mut session = session(&system);
        system.push_server_step(answer(MessageType::Ack));
        assert!(keep_lease_once(&system, &mut session));
        assert_eq!(session.lease.obtained_at_ms, 43_200_000);
        let renewal = system.sent_packets().pop().unwrap();
        assert_eq!(renewal.ciaddr, OFFERED);
        assert!(system.file(LEASE_RECORD_PATH).is_some());
    }

    #[test]
    fn lease_keeper_starts_over_after_a_nak() {
        let system = with_nics();
        let mut session = session(&system);
        system.push_server_step(answer(MessageType::Nak));
        system.push_server_step(answer(MessageType::Offer));
        system.push_server_step(answer(MessageType::Ack));
        assert!(keep_lease_once(&system, &mut session));
        let kinds: Vec<_> = system
            .sent_packets()
            .iter()
            .map(|p| p.message_type)
            .collect();
        assert_eq!(
            kinds[2..],
            [
                Some(MessageType::Request),
                Some(MessageType::Discover),
                Some(MessageType::Request)
            ]
        );
        let addresses = system
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::SetAddress { .. }))
            .count();
        assert_eq!(
            addresses, 1,
            "run_dhcp alone does not configure; the keeper did once"
        );
    }

    #[test]
    fn lease_keeper_retries_silence_until_expiry_then_rediscovers() {
        let system = with_nics();
        let mut session = session(&system);
        let expires = session.lease.expires_at_ms().unwrap();
        // A server that ignores renewals but answers a fresh DISCOVER.
        system.set_server_fallback(Box::new(|request: &DhcpPacket| {
            match (request.message_type, request.ciaddr.is_unspecified()) {
                (Some(MessageType::Discover), _) => {
                    vec![reply(request, MessageType::Offer, SERVER, OFFERED)]
                }
                (Some(MessageType::Request), true) => {
                    vec![reply(request, MessageType::Ack, SERVER, OFFERED)]
                }
                _ => Vec::new(),
            }
        }));
        assert!(keep_lease_once(&system, &mut session));
        assert!(system.boottime_ms() >= expires);
        assert!(session.lease.obtained_at_ms >= expires);
        let sent = system.sent_packets();
        let renewals = sent.iter().filter(|p| !p.ciaddr.is_unspecified()).count();
        assert!(renewals > 10, "only {renewals} renewal attempts");
        assert_eq!(
            sent[sent.len() - 2].message_type,
            Some(MessageType::Discover)
        );
    }

    #[test]
    fn infinite_lease_needs_no_keeper() {
        let system = with_nics();
        let mut session = session(&system);
        session.lease.lease_time_s = None;
        assert!(!keep_lease_once(&system, &mut session));
    }
}
